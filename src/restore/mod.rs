//! Restore: put rows back the way they were before a selection of captured changes, from the
//! audit topics — with a dry run by default, conflict detection against the live rows, and one
//! atomic apply that re-checks (and locks) every row it touches first.
//!
//! - `log` — streams the audit topics (change events and transaction records).
//! - `selection` — which changes to revert.
//! - `plan` — row histories → per-row target / expected state / action (pure).
//! - `merge` — conflicts: a three-way merge per column of each row (pure).
//! - `progress` — a progress bar on a terminal, plain lines elsewhere.
//! - `db` — catalog facts, `txid_status`, the current (locked) rows.
//! - `sql` — the statements, as reviewable text.
//! - `run` — planning end to end (log + database → [`plan::Plan`]).
//! - `apply` — ordering for foreign keys, the SQL script, and the transaction that applies it.
//! - `report` — the readable dry-run report.

pub mod apply;
pub mod cli;
pub mod command;
pub mod db;
pub mod log;
pub mod merge;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod selection;
pub mod sql;

use thiserror::Error;

/// Why a restore did not (completely) happen. Each names what to do about it.
#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("restore: {what}: {source} (check --kafka-brokers and that the brokers are up)")]
    Kafka {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("restore: {what}: {source}")]
    Db {
        what: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("restore: the target database: {0} (check --target)")]
    Connect(#[from] crate::pgconn::PgConnError),
    #[error("restore: the audit topics did not deliver everything up to their end offsets in time ({0}); nothing was planned")]
    LogIncomplete(String),
    #[error("restore: reading the history store: {0}")]
    History(String),
    #[error("restore: unreadable record on {topic} at offset {offset}: not a hindsight change event; nothing was planned")]
    Unreadable { topic: String, offset: i64 },
    #[error("restore: select what to revert (--txid, --transaction, --since/--until, --application, --user, --tag, --table, --key, --event, --rule, or --as-of)")]
    NoSelection,
    #[error("restore: {0} row(s) conflict with changes made since; nothing was applied (review the plan; --skip-conflicts restores everything that does not conflict, --force overwrites)")]
    Conflicts(usize),
    #[error("restore: the database changed since the plan was made ({0}); nothing was applied — plan again")]
    Drift(String),
    #[error(
        "restore: {statement} changed {count} rows instead of 1; the transaction was rolled back"
    )]
    Unexpected { statement: String, count: u64 },
    #[error("restore: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl RestoreError {
    fn kafka(what: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| RestoreError::Kafka { what, source }
    }

    fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| RestoreError::Db { what, source }
    }

    /// The process exit code documented for this outcome.
    pub fn exit_code(&self) -> u8 {
        match self {
            RestoreError::NoSelection => 2,
            RestoreError::Conflicts(_) => 3,
            RestoreError::Drift(_) | RestoreError::Unexpected { .. } => 4,
            _ => 1,
        }
    }
}
