//! The PostgreSQL frontend/backend protocol, as bytes.
//!
//! This layer knows message *framing* and the handful of message bodies the proxy must read or
//! write itself. It does not know sessions, sockets or SQL. Everything here works on borrowed
//! byte slices so the relay can inspect a frame and then forward the original bytes untouched.

pub mod backend;
pub mod error_response;
pub mod frame;
pub mod frontend;
pub mod startup;

pub use frame::{FrameError, Header, HEADER_LEN};
