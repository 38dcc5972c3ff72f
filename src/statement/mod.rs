//! Statement analysis: what a SQL text does, before it reaches the server.
//!
//! - `fast_path` — a byte scan that recognises texts that certainly only read (no parse).
//! - `analysis` — the real PostgreSQL grammar (`parser`) into the closed `Kind` enum, with every
//!   table written.
//! - `cache` — analyses by text, and by shape (`shape`: texts that differ only in constants), shared
//!   by all sessions.
//! - `sqlcommenter` — request tags from the statement's trailing comment.
//! - `leading_keyword` — the first keyword, for the `statements_total` metric only.
//! - `parser` — the one door to libpg_query (PostgreSQL 18's grammar): parse, tokens, fingerprint.
//! - `pg18_syntax` — the names a `RETURNING WITH (OLD AS …, NEW AS …)` gives the two rows.
//! - `binding` — which numbers of a write can go as parameters of a statement prepared once.
//! - `unparsed` — a text the parser cannot read whole, cut into statements read one by one.

pub mod analysis;
pub mod binding;
pub mod cache;
pub mod fast_path;
pub mod leading_keyword;
pub mod parser;
pub mod pg18_syntax;
pub mod quoting;
pub mod shape;
pub mod sqlcommenter;
pub mod unparsed;

pub use analysis::{analyze, Analysis, AnalysisError, Kind, TableName, TxControl, Write};
pub use cache::AnalysisCache;
pub use leading_keyword::{classify, KeywordClass};
