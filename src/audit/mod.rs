//! Audit records and where they go.
//!
//! - `event` — the records (Debezium-compatible change events, transaction BEGIN/END records).
//! - `kafka` — the Kafka sink: publish a transaction's records and wait for every acknowledgement.
//! - `tail` — `hindsight tail`: follow the topics and print changes readably.

pub mod compacted;
pub mod event;
pub mod kafka;
pub mod tail;
