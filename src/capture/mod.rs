//! Capture: the before and after image of every row a write changes, taken inside the client's
//! own transaction and published before it commits.
//!
//! - `rewrite` — adds RETURNING capture columns (and, before PostgreSQL 18, a locking pre-read).
//! - `cte` — data-modifying CTEs: every write of the statement captured through a wrapper query.
//! - `merge` — MERGE before PostgreSQL 18: a pre-read, counted clauses and a post-read.
//! - `copy` — COPY … FROM through a temporary stage table and a captured INSERT … SELECT.
//! - `copy_out` — `COPY (write RETURNING …) TO`: the write in a CTE that keeps its images for a
//!   post-read.
//! - `cascade` — rows foreign-key cascades change: the catalog's keys, the reads around a DELETE.
//! - `functions` — which functions may write when a query calls them (those queries are opaque).
//! - `tables` — schema, name and key of captured tables, cached per database.
//! - `rows` — strips capture columns off RowDescription/DataRow before the client sees them.
//! - `expect` — what the reply router expects of each step of a captured write (guard,
//!   pre-read, main, post-read): the one place a step becomes a `router::Unit`.
//! - `bound` — a simple-protocol write sent as a statement prepared once, its numbers bound.
//! - `positions` — where a forwarded error's position points in the client's text.
//! - `router` — the queue of expected replies; routes each server frame.
//! - `client` — the client side: rewrites, holds COMMIT, publishes, refuses what it cannot capture.
//! - `txn` — the open transaction's captured changes, with savepoints.
//! - `publish` — catalog lookup and the audit records built from the changes.
//! - `redact` — PII redaction (drop, mask, keyed hash) of images before they leave the process.

pub mod bound;
pub mod cascade;
pub mod client;
pub mod copy;
pub mod copy_out;
pub mod cte;
pub mod expect;
pub mod functions;
pub mod image_sql;
pub mod merge;
pub mod positions;
pub mod publish;
pub mod redact;
pub mod rewrite;
pub mod router;
pub mod rows;
pub mod tables;
pub mod txn;
