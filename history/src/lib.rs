//! hindsight's history: the audit topics archived into Delta Lake tables, and the questions an
//! incident or an auditor asks of them.
//!
//! A separate crate (and binary, `hindsight-history`) so that the proxy never links the query
//! engine: DataFusion and delta-rs are the largest part of the build, and none of it belongs on
//! the write path. It depends on `hindsight` (the library) for the record formats and restore.
//!
//! Layers, top to bottom:
//! - `main.rs` — the CLI, thin.
//! - [`archive`] — the long-running consumer: topics → batches → store commits, in-doubt
//!   resolution; [`metrics`] — its Prometheus endpoint. [`snapshot`] — a table's current rows as `op: "r"` events.
//! - [`ask`] — one question end to end (the CLI wraps it).
//! - [`questions`] — each compliance question as one SQL query over the store (pure text),
//!   [`output`] — rendering results as text, JSON or CSV; [`restore_log`] — the store as
//!   restore's [`hindsight::restore::log::AuditLog`].
//! - [`query`] — a DataFusion session with the tables and views registered.
//! - [`store`] — the two Delta tables: create, append with offsets, read offsets.
//! - [`batch`] (rows → Arrow) and [`record`] (Kafka record → row, pure), [`schema`].

pub mod archive;
pub mod ask;
pub mod batch;
pub mod chain;
pub mod error;
pub mod functions;
pub mod metrics;
pub mod output;
pub mod query;
pub mod questions;
pub mod record;
pub mod resolve;
pub mod restore_log;
pub mod schema;
pub mod serve;
pub mod snapshot;
pub mod store;

pub use error::HistoryError;
