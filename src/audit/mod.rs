//! Audit records and where they go.
//!
//! - `event` — the records (Debezium-compatible change events, transaction BEGIN/END records).
//! - `kafka` — the Kafka sink: publish a transaction's records and wait for every acknowledgement.

pub mod event;
pub mod kafka;
