//! `hindsight restore` as a library function: plan (or load a reviewed plan), report, write
//! the SQL script / JSON plan, and apply when asked. The CLI only maps flags onto
//! [`Command`]; tests call [`execute`] directly.

use std::io::Write;
use std::path::PathBuf;

use super::apply::{self, ApplyOptions};
use super::log::{LogOpener, LogSource};
use super::plan::Plan;
use super::progress::Progress;
use super::run::{self, Request};
use super::{report, RestoreError};

/// Everything `hindsight restore` was asked to do.
#[derive(Debug, Clone)]
pub struct Command {
    pub log: LogSource,
    /// Reads the log: the topics ([`LogOpener::kafka`]) or, from `hindsight-history`, the
    /// archive.
    pub open_log: LogOpener,
    /// Connection string of the database to restore (directly, or through the proxy so the
    /// restore is itself audited).
    pub target: String,
    pub request: Request,
    /// Apply (default: dry run).
    pub apply: bool,
    pub options: ApplyOptions,
    /// Write the exact SQL script here.
    pub sql_out: Option<PathBuf>,
    /// Write the plan as JSON here.
    pub plan_out: Option<PathBuf>,
    /// Apply this reviewed plan (from `--plan-out`) instead of planning again.
    pub apply_plan: Option<PathBuf>,
}

/// What happened, for the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Dry run without conflicts.
    Planned,
    /// Dry run with conflicts (exit code 3).
    PlannedWithConflicts(usize),
    Applied(apply::Applied),
}

impl Outcome {
    /// Documented exit code: 0 done, 3 conflicts.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::PlannedWithConflicts(_) => 3,
            _ => 0,
        }
    }
}

fn write_file(path: &PathBuf, text: &str) -> Result<(), RestoreError> {
    std::fs::write(path, text).map_err(|source| RestoreError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

/// Run the command; the report goes to `out`, progress to `progress`.
pub async fn execute(
    cmd: &Command,
    out: &mut dyn Write,
    progress: &Progress,
) -> Result<Outcome, RestoreError> {
    let io = |source| RestoreError::Io {
        what: "writing the report".into(),
        source,
    };
    if cmd.apply_plan.is_none() && cmd.request.as_of.is_none() && cmd.request.selection.is_empty() {
        return Err(RestoreError::NoSelection);
    }
    let mut client = run::connect(&cmd.target).await?;
    let plan: Plan = match &cmd.apply_plan {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| RestoreError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| RestoreError::Io {
                what: format!("reading {}", path.display()),
                source: std::io::Error::other(format!("not a hindsight restore plan: {e}")),
            })?
        }
        None => run::plan(&client, &cmd.open_log, &cmd.log, &cmd.request, progress).await?,
    };
    write!(out, "{}", report::render(&plan)).map_err(io)?;
    if let Some(p) = &cmd.sql_out {
        write_file(p, &apply::script(&plan, &cmd.options))?;
    }
    if let Some(p) = &cmd.plan_out {
        write_file(
            p,
            &serde_json::to_string_pretty(&plan).expect("plan serialises"),
        )?;
    }
    if !cmd.apply && cmd.apply_plan.is_none() {
        let n = plan.conflicts();
        return Ok(if n > 0 {
            Outcome::PlannedWithConflicts(n)
        } else {
            Outcome::Planned
        });
    }
    let applied = apply::apply(&mut client, &plan, &cmd.options, progress).await?;
    writeln!(
        out,
        "\nrestored: {} row(s) reverted, {} conflict(s) skipped, {} unchanged",
        applied.reverted, applied.skipped_conflicts, applied.unchanged
    )
    .map_err(io)?;
    if !applied.kept_conflicting.is_empty() {
        writeln!(
            out,
            "left alone (conflicting columns of rows otherwise restored): {}",
            applied.kept_conflicting.join("; ")
        )
        .map_err(io)?;
    }
    Ok(Outcome::Applied(applied))
}
