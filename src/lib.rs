//! hindsight: a PostgreSQL wire-protocol proxy that makes every write recoverable and
//! attributable. See ARCHITECTURE.md for the map of this crate.

pub mod audit;
pub mod capture;
pub mod config;
pub mod control;
pub mod fault;
pub mod footprint;
pub mod gates;
pub mod in_doubt;
pub mod pgconn;
pub mod proxy;
pub mod restore;
pub mod signals;
pub mod statement;
pub mod telemetry;
pub mod tls;
pub mod wire;
