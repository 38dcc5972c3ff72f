//! Audit records and where they go.
//!
//! - `event` — the records (Debezium-compatible change events, transaction BEGIN/END records).
//! - `kafka` — the Kafka sink: publish a transaction's records and wait for every acknowledgement.
//! - `alert` — alert records (`<prefix>.alerts`): new write paths, first nullings.
//! - `compacted` — following a compacted topic (footprints, control) from its beginning.
//! - `in_flight` — transactions this process published a BEGIN for and has not closed yet.
//! - `tail` — `hindsight tail`: follow the topics and print changes readably.

pub mod alert;
pub mod compacted;
pub mod event;
pub mod in_flight;
pub mod kafka;
pub mod tail;
