//! Audit records and where they go.
//!
//! - `event` — the records (Debezium-compatible change events, transaction BEGIN/END records).

pub mod event;
