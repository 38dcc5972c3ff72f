//! The relay proxy: accepts client connections, negotiates the startup phase, connects each
//! session to the upstream server and relays the protocol in both directions.
//!
//! This module knows sockets, TLS and sessions. It does not know SQL semantics (see
//! `statement`) and never changes what a client receives, except where documented: the
//! SCRAM `-PLUS` mechanism is withheld from TLS-terminated clients, and hindsight's own
//! ErrorResponses for problems PostgreSQL would never see (bad frames, unreachable upstream).

pub mod admin;
pub mod cancel;
pub mod relay;
pub mod server;
pub mod session;
pub mod stream;
pub mod upstream;

pub use server::{launch, Running};
