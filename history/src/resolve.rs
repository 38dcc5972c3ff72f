//! Transactions in doubt: a BEGIN whose END never came (hindsight stopped between COMMIT and
//! publishing END). They never count as committed on their own. Once the transaction topic is
//! archived to its end and the BEGIN is older than `resolve_after`, the archive asks the
//! database (`txid_status()`), and archives the answer as a RESOLVED row. A transaction the
//! database cannot decide (no txid, or too old for `txid_status`) stays in doubt, listed by
//! `history in-doubt`; nothing is dropped.

use std::collections::HashMap;
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Int64Type;

use crate::query::Session;
use crate::record::TxRow;
use crate::store::Store;
use crate::HistoryError;

/// What is known of one open transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub tx_id: Option<i64>,
    pub begin_ts_ms: i64,
}

/// Transactions with a BEGIN and neither END nor RESOLVED, by id.
#[derive(Debug, Clone, Default)]
pub struct InDoubt(pub HashMap<String, Open>);

impl InDoubt {
    /// The open transactions in the store now.
    pub async fn load(store: &Store) -> Result<Self, HistoryError> {
        let session = Session::open_store(store).await?;
        let batches = session
            .sql(
                "SELECT id, max(tx_id) AS tx_id, min(ts_ms) AS ts_ms FROM transactions \
                 GROUP BY id \
                 HAVING sum(CASE WHEN status = 'BEGIN' THEN 1 ELSE 0 END) > 0 \
                    AND sum(CASE WHEN status <> 'BEGIN' THEN 1 ELSE 0 END) = 0",
            )
            .await?;
        let mut out = HashMap::new();
        for b in batches {
            let ids = b.column(0).as_string::<i32>();
            let txids = b.column(1).as_primitive::<Int64Type>();
            let ts = b.column(2).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.insert(
                    ids.value(i).to_string(),
                    Open {
                        tx_id: (!txids.is_null(i)).then(|| txids.value(i)),
                        begin_ts_ms: ts.value(i),
                    },
                );
            }
        }
        Ok(InDoubt(out))
    }
}

/// Decides in-doubt transactions with `txid_status()`.
pub struct Resolver {
    database: Option<String>,
    after: Duration,
    open: InDoubt,
    client: Option<tokio_postgres::Client>,
    /// When each undecidable transaction was last asked about (asked again after `after`).
    asked: HashMap<String, i64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Resolver {
    pub fn new(database: Option<String>, after: Duration, open: InDoubt) -> Self {
        Resolver {
            database,
            after,
            open,
            client: None,
            asked: HashMap::new(),
        }
    }

    /// Follow the transaction records as they are archived.
    pub fn saw(&mut self, t: &TxRow) {
        if t.status == "BEGIN" {
            self.open.0.entry(t.id.clone()).or_insert(Open {
                tx_id: t.tx_id,
                begin_ts_ms: t.ts_ms,
            });
        } else {
            self.open.0.remove(&t.id);
            self.asked.remove(&t.id);
        }
    }

    /// Open transactions old enough to ask about, and not asked about lately.
    fn candidates(&self) -> Vec<(String, Open)> {
        let cutoff = now_ms() - self.after.as_millis() as i64;
        self.open
            .0
            .iter()
            .filter(|(id, o)| {
                o.begin_ts_ms <= cutoff && self.asked.get(*id).is_none_or(|at| *at <= cutoff)
            })
            .map(|(id, o)| (id.clone(), o.clone()))
            .collect()
    }

    /// Transactions open now (BEGIN without END or RESOLVED).
    pub fn open_count(&self) -> usize {
        self.open.0.len()
    }

    pub fn has_candidates(&self) -> bool {
        self.database.is_some() && !self.candidates().is_empty()
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, HistoryError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let conn = self.database.clone().unwrap_or_default();
            let client = hindsight::pgconn::connect_as(&conn, "hindsight-archive")
                .await
                .map_err(HistoryError::connect(
                    "archive.resolve_database (check the connection string)",
                ))?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// Ask about every candidate; the decided ones as RESOLVED rows. A database that cannot be
    /// reached is logged and asked again later: the transactions stay in doubt meanwhile.
    pub async fn resolve(&mut self) -> Result<Vec<TxRow>, HistoryError> {
        let candidates = self.candidates();
        if self.database.is_none() || candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::new();
        for (id, open) in candidates {
            self.asked.insert(id.clone(), now_ms());
            let Some(txid) = open.tx_id else { continue };
            let status = match self.client().await {
                Ok(c) => hindsight::restore::db::txid_status(c, txid).await,
                Err(e) => {
                    tracing::warn!(error = %e, "archive: cannot resolve in-doubt transactions now");
                    return Ok(rows);
                }
            };
            match status {
                Ok(Some(s)) if s == "committed" || s == "aborted" => {
                    rows.push(resolved(&id, txid, &s));
                    self.open.0.remove(&id);
                }
                Ok(other) => tracing::warn!(
                    transaction = %id, txid, status = ?other,
                    "archive: txid_status() cannot decide this transaction; it stays in doubt"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "archive: txid_status() failed; will retry");
                    self.client = None;
                }
            }
        }
        Ok(rows)
    }
}

/// The RESOLVED row for a transaction the database decided.
pub fn resolved(id: &str, txid: i64, status: &str) -> TxRow {
    TxRow {
        id: id.to_string(),
        status: "RESOLVED".into(),
        tx_id: Some(txid),
        event_count: 0,
        data_collections_json: "[]".into(),
        ts_ms: now_ms(),
        commit_status: Some(status.to_string()),
        resolution: Some(format!("txid_status({txid}) = {status}")),
        at: None,
    }
}
