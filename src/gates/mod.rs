//! Gates: refuse writes that rules and feature flags do not allow, and take one application's
//! (user's, table's, database's) writes out of service at runtime.
//!
//! - `rules` — the rules file format and its compiled form.
//! - `flags` — feature flags (global, per actor, stable percentage).
//! - `guard` — CEL value guards over one changed row.
//! - `killswitch` — read-only switches.
//! - `decide` — evaluation order and verdicts (pure).
//! - `engine` — live state: reload on change / SIGHUP, runtime flags and kill switches
//!   (persisted), metrics.
//!
//! The capture client calls `engine::Gates::statement` before a write runs and
//! `engine::Gates::row` on every captured row at COMMIT; the admin API changes flags and kill
//! switches. This module knows nothing about the wire protocol.

pub mod decide;
pub mod engine;
pub mod explain;
pub mod flags;
pub mod guard;
pub mod killswitch;
pub mod rules;

use thiserror::Error;

/// Why rules could not be loaded or a runtime change was refused.
#[derive(Debug, Error)]
pub enum GateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}:{line}: rule \"{rule}\": {message}")]
    Rule {
        origin: String,
        line: usize,
        rule: String,
        message: String,
    },
    #[error("{path}: not a hindsight gates state file ({message}); fix or delete it")]
    State { path: String, message: String },
    #[error("no flag named {0:?} in the rules file (flags are declared there as [flags.NAME])")]
    UnknownFlag(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Control(#[from] Box<crate::control::ControlError>),
}
