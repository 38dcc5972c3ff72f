//! The flags of `hindsight restore`, shared by `hindsight` and `hindsight-history` (whose
//! `restore --history` reads the archive instead of the topics): clap types and their mapping
//! onto [`Command`], nothing else.

use std::path::PathBuf;

use clap::Args;

use super::apply::ApplyOptions;
use super::command::Command;
use super::log::{LogOpener, LogSource};
use super::plan::ConflictPolicy;
use super::run;
use super::selection::Selection;

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Kafka brokers, HOST:PORT[,…].
    #[arg(long, value_delimiter = ',', required_unless_present = "history")]
    pub kafka_brokers: Vec<String>,
    /// Read the changes from this history store (`hindsight archive`) instead of the topics:
    /// for incidents older than the topics' retention. No broker is needed.
    #[arg(long)]
    pub history: Option<String>,
    /// Topic prefix the proxy publishes under.
    #[arg(long, default_value = "hindsight")]
    pub topic_prefix: String,
    /// Database to restore: postgres://… or "host=… dbname=…" (directly, or through the
    /// proxy so that the restore is itself audited).
    #[arg(long, required = true)]
    pub target: String,
    /// Select changes of this PostgreSQL transaction id (repeatable).
    #[arg(long)]
    pub txid: Vec<i64>,
    /// Select changes of this hindsight transaction id (`<session>:<n>`, repeatable).
    #[arg(long)]
    pub transaction: Vec<String>,
    /// Select changes made at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<i64>,
    /// Select changes made before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<i64>,
    /// Select changes made by sessions with this application_name (repeatable).
    #[arg(long)]
    pub application: Vec<String>,
    /// Select changes made by this database user (repeatable).
    #[arg(long)]
    pub user: Vec<String>,
    /// Select changes whose statement carried this sqlcommenter tag, KEY=VALUE (repeatable; all must match).
    #[arg(long, value_parser = parse_tag)]
    pub tag: Vec<(String, String)>,
    /// Select changes to this table, schema.table (repeatable).
    #[arg(long)]
    pub table: Vec<String>,
    /// Select changes to the row with this key, as JSON: '{"bfkey": 7}' (repeatable).
    #[arg(long, value_parser = parse_key)]
    pub key: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Select this event (`<transaction id>/<n>`, as the plan shows them; repeatable).
    #[arg(long)]
    pub event: Vec<String>,
    /// Select changes a gate rule in audit (dry-run) mode flagged (repeatable).
    #[arg(long)]
    pub rule: Vec<String>,
    /// Reconstruct --table as of this time (RFC 3339) by undoing every change committed after it.
    #[arg(long, value_parser = parse_time, requires = "table")]
    pub as_of: Option<i64>,
    /// With --as-of: write the reconstruction into this new table instead of the table itself.
    #[arg(long, requires = "as_of")]
    pub into: Option<String>,
    /// Apply the plan (default: dry run).
    #[arg(long)]
    pub apply: bool,
    /// Apply a plan written earlier with --plan-out (exactly what was reviewed).
    #[arg(long, conflicts_with = "apply")]
    pub apply_plan: Option<PathBuf>,
    /// Revert the rows without conflicts and leave conflicting rows alone.
    #[arg(long)]
    pub skip_conflicts: bool,
    /// Revert conflicting rows too and do not refuse when rows changed since the plan.
    #[arg(long)]
    pub force: bool,
    /// How conflicts are decided: `column` (a three-way merge per column: only a column both
    /// the selection and a later change set, to different values, conflicts) or `row` (any
    /// later change to the row outside the selection makes the whole row a conflict).
    #[arg(long, value_enum, default_value = "column")]
    pub conflicts: ConflictsArg,
    /// Write the exact SQL script to this file.
    #[arg(long)]
    pub sql_out: Option<PathBuf>,
    /// Write the plan as JSON to this file.
    #[arg(long)]
    pub plan_out: Option<PathBuf>,
    /// Give up reading the topics after this long without progress.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ConflictsArg {
    Column,
    Row,
}

pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2026-11-22T10:00:00Z)"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

pub fn parse_key(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    serde_json::from_str(s)
        .map_err(|e| format!("{s:?}: expected a JSON object of key columns ({e})"))
}

impl RestoreArgs {
    /// The command these flags ask for, reading the topics (`hindsight-history` replaces
    /// [`Command::open_log`] with the archive's reader).
    pub fn into_command(self) -> Command {
        let a = self;
        let request = run::Request {
            selection: Selection {
                txids: a.txid,
                transactions: a.transaction,
                since_ms: a.since,
                until_ms: a.until,
                applications: a.application,
                users: a.user,
                tags: a.tag,
                tables: if a.as_of.is_some() {
                    Vec::new()
                } else {
                    a.table.clone()
                },
                keys: a.key,
                events: a.event,
                rules: a.rule,
            },
            as_of: a.as_of.map(|ms| run::AsOf {
                ms,
                table: a.table.first().cloned().unwrap_or_default(),
            }),
            policy: match a.conflicts {
                ConflictsArg::Column => ConflictPolicy::Column,
                ConflictsArg::Row => ConflictPolicy::Row,
            },
        };
        Command {
            log: LogSource {
                brokers: a.kafka_brokers,
                topic_prefix: a.topic_prefix,
                librdkafka: Vec::new(),
                tables: a.table,
                timeout: a.timeout,
            },
            open_log: LogOpener::kafka(),
            target: a.target,
            request,
            apply: a.apply,
            options: ApplyOptions {
                skip_conflicts: a.skip_conflicts,
                force: a.force,
                tag: format!("restore-{}", std::process::id()),
                into: a.into,
            },
            sql_out: a.sql_out,
            plan_out: a.plan_out,
            apply_plan: a.apply_plan,
        }
    }
}
