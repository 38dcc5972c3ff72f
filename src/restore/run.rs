//! Planning a restore end to end: read the log, keep committed transactions (resolving those
//! without an END record with `txid_status()`), build row plans for the selection, and compare
//! them with the rows in the database now.

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::Client;

use super::log::{AuditLog, LogSource};
use super::plan::{self, Plan};
use super::selection::Selection;
use super::{db, sql, RestoreError};
use crate::audit::event::CommitStatus;

/// What to restore.
#[derive(Debug, Clone)]
pub struct Request {
    pub selection: Selection,
    /// Reconstruct `table` as of this time (ms since the epoch) instead: every change committed
    /// after it is selected.
    pub as_of: Option<AsOf>,
}

#[derive(Debug, Clone)]
pub struct AsOf {
    pub ms: i64,
    /// `schema.table`.
    pub table: String,
}

/// Connect to the target database (`postgres://…` or `host=… …`).
pub async fn connect(target: &str) -> Result<Client, RestoreError> {
    let mut cfg: tokio_postgres::Config = target.parse().map_err(RestoreError::Connect)?;
    if cfg.get_application_name().is_none() {
        cfg.application_name("hindsight-restore");
    }
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(RestoreError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "restore: database connection ended");
        }
    });
    Ok(client)
}

/// Read the audit log (blocking Kafka reads run off the async runtime).
pub async fn read_log(src: LogSource) -> Result<AuditLog, RestoreError> {
    tokio::task::spawn_blocking(move || super::log::read(&src))
        .await
        .map_err(|e| RestoreError::Io {
            what: "reading the audit log".into(),
            source: std::io::Error::other(e),
        })?
}

/// Build the plan for `req` from `log` and the database behind `client`.
pub async fn plan(client: &Client, log: &AuditLog, req: &Request) -> Result<Plan, RestoreError> {
    let mut selection = req.selection.clone();
    if let Some(as_of) = &req.as_of {
        selection.tables = vec![as_of.table.clone()];
        selection.transactions = log
            .transactions
            .iter()
            .filter(|(_, t)| t.ts_ms > as_of.ms)
            .map(|(id, _)| id.clone())
            .collect();
        if selection.transactions.is_empty() {
            selection.transactions.push("(none after --as-of)".into());
        }
    } else if selection.is_empty() {
        return Err(RestoreError::NoSelection);
    }
    let selected_tx: HashSet<&str> = log
        .changes
        .iter()
        .filter(|c| selection.matches(c))
        .map(|c| c.event.transaction.id.as_str())
        .collect();
    let mut committed = HashSet::new();
    let mut in_doubt = Vec::new();
    for (id, t) in &log.transactions {
        match t.outcome {
            Some(CommitStatus::Committed) => {
                committed.insert(id.clone());
            }
            Some(CommitStatus::Aborted) => {}
            None => {
                let status = match t.txid {
                    Some(x) => db::txid_status(client, x).await?,
                    None => None,
                };
                if status.as_deref() == Some("committed") {
                    committed.insert(id.clone());
                } else if selected_tx.contains(id.as_str()) {
                    in_doubt.push(format!(
                        "{id} (txId {}: {})",
                        t.txid.map_or("none".into(), |x| x.to_string()),
                        status.unwrap_or_else(|| "unknown".into())
                    ));
                }
            }
        }
    }
    let mut tables: Vec<String> = log
        .changes
        .iter()
        .filter(|c| selection.matches(c))
        .map(|c| c.table())
        .collect();
    tables.sort();
    tables.dedup();
    let metas = db::table_meta(client, &tables).await?;
    let (mut rows, redacted) = plan::build(log, &selection, &committed, &metas);
    check(client, &metas, &mut rows, None, false).await?;
    plan::decide_conflicts(&mut rows);
    in_doubt.sort();
    Ok(Plan {
        tables: metas,
        rows,
        in_doubt,
        redacted,
    })
}

/// Read the current state of `rows` (optionally from a copy named `into` instead of each
/// table, and optionally locking them).
pub async fn check<C: tokio_postgres::GenericClient>(
    client: &C,
    metas: &BTreeMap<String, plan::TableMeta>,
    rows: &mut [plan::RowPlan],
    into: Option<&str>,
    lock: bool,
) -> Result<(), RestoreError> {
    for (table, meta) in metas {
        let relation = match into {
            Some(i) => i.to_string(),
            None => sql::quote_table(&meta.schema, &meta.name),
        };
        let mut mine: Vec<&mut plan::RowPlan> =
            rows.iter_mut().filter(|r| r.table == *table).collect();
        db::read_actual(client, meta, &relation, &mut mine, lock).await?;
    }
    Ok(())
}
