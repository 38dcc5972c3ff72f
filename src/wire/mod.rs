//! The PostgreSQL frontend/backend protocol, as bytes.
//!
//! This layer knows message *framing* and the handful of message bodies the proxy must read or
//! write itself. It does not know sessions, sockets or SQL. Everything here works on borrowed
//! byte slices so the relay can inspect a frame and then forward the original bytes untouched.
//! `client_text` is the exception that proves it: SQL text and row images in a `client_encoding`
//! that need not be UTF-8, decoded so that the bytes sent back are exactly the client's.
//! `inspect` is the contract between the relay's pumps and an inspector of frames (capture).

pub mod backend;
pub mod client_text;
pub mod error_response;
pub mod frame;
pub mod frontend;
pub mod inspect;
pub mod startup;

pub use frame::{FrameError, Header, HEADER_LEN};
