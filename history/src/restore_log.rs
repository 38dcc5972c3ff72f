//! The history store as restore's audit log: `hindsight restore --history STORE`.
//!
//! Every change is handed to the planner as it was read from its topic — the same event, key,
//! partition and offset — so a plan from the archive is the plan from the topics, for
//! incidents older than the topics' retention. The archive's RESOLVED decisions count as
//! outcomes, as the END records they stand in for.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use hindsight::audit::event::{ChangeEvent, ChangeKey, CommitStatus, Row, Source, TxPosition};
use hindsight::restore::log::{
    wanted_table_topic, AuditLog, LogSource, LoggedChange, Range, TxInfo,
};
use hindsight::restore::progress::Progress;
use hindsight::restore::RestoreError;
use serde_json::{Map, Value};
use tokio::runtime::Handle;

use crate::output::batch_rows;
use crate::query::{lit, Session};
use crate::record::op_of;
use crate::HistoryError;

/// The archive, read as restore reads the topics.
pub struct HistoryLog {
    session: Session,
    ranges: Vec<Range>,
    /// The `table_name` partition of each change topic (to prune the scan of a range).
    partitions: HashMap<String, Vec<String>>,
    handle: Handle,
}

fn err(e: HistoryError) -> RestoreError {
    RestoreError::History(e.to_string())
}

fn text(row: &Map<String, Value>, k: &str) -> String {
    row.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn int(row: &Map<String, Value>, k: &str) -> Option<i64> {
    row.get(k).and_then(Value::as_i64)
}

impl HistoryLog {
    /// Open the store at `location` for the tables `src` asks for. Blocks: call it off the
    /// async runtime (restore does).
    pub fn open(location: &str, src: &LogSource) -> Result<Self, RestoreError> {
        let handle = Handle::current();
        let session = handle.block_on(Session::open(location)).map_err(err)?;
        let rows = handle
            .block_on(collect(
                &session,
                "SELECT kafka_topic, kafka_partition, table_name, min(kafka_offset) AS lo, \
                   max(kafka_offset) + 1 AS hi FROM events WHERE op IN ('c', 'u', 'd', 't') \
                 GROUP BY kafka_topic, kafka_partition, table_name",
            ))
            .map_err(err)?;
        let prefix = format!("{}.", src.topic_prefix);
        let mut spans: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
        let mut partitions: HashMap<String, Vec<String>> = HashMap::new();
        for r in rows {
            let topic = text(&r, "kafka_topic");
            let Some(rest) = topic.strip_prefix(&prefix) else {
                continue;
            };
            if !wanted_table_topic(src, rest) {
                continue;
            }
            let part = int(&r, "kafka_partition").unwrap_or(0) as i32;
            let (lo, hi) = (int(&r, "lo").unwrap_or(0), int(&r, "hi").unwrap_or(0));
            let span = spans.entry((topic.clone(), part)).or_insert((lo, hi));
            *span = (span.0.min(lo), span.1.max(hi));
            partitions
                .entry(topic)
                .or_default()
                .push(text(&r, "table_name"));
        }
        let ranges = spans
            .into_iter()
            .map(|((topic, partition), (from, to))| Range {
                topic,
                partition,
                from,
                to,
            })
            .collect();
        Ok(HistoryLog {
            session,
            ranges,
            partitions,
            handle,
        })
    }
}

async fn collect(session: &Session, q: &str) -> Result<Vec<Map<String, Value>>, HistoryError> {
    let mut out = Vec::new();
    for b in session.sql(q).await? {
        out.extend(batch_rows(&b)?);
    }
    Ok(out)
}

impl AuditLog for HistoryLog {
    fn table_ranges(&self) -> Vec<Range> {
        self.ranges.clone()
    }

    fn transactions(&self, progress: &Progress) -> Result<HashMap<String, TxInfo>, RestoreError> {
        let rows = self
            .handle
            .block_on(collect(
                &self.session,
                "SELECT id, status, tx_id, ts_ms, commit_status FROM transactions",
            ))
            .map_err(err)?;
        progress.phase("reading transaction records", rows.len() as u64);
        let mut out: HashMap<String, TxInfo> = HashMap::new();
        for r in rows {
            progress.advance(1);
            let info = out.entry(text(&r, "id")).or_default();
            info.txid = info.txid.or(int(&r, "tx_id"));
            let outcome = match text(&r, "commit_status").as_str() {
                "committed" => Some(CommitStatus::Committed),
                "aborted" => Some(CommitStatus::Aborted),
                "unknown" => Some(CommitStatus::Unknown),
                _ => None,
            };
            match text(&r, "status").as_str() {
                "BEGIN" => info.ts_ms = int(&r, "ts_ms").unwrap_or(0),
                "END" => info.outcome = outcome,
                _ => info.outcome = info.outcome.or(outcome),
            }
        }
        progress.finish();
        Ok(out)
    }

    fn changes(
        &self,
        ranges: &[Range],
        progress: &Progress,
        visit: &mut dyn FnMut(LoggedChange) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError> {
        for r in ranges {
            let parts: Vec<String> = self
                .partitions
                .get(&r.topic)
                .map(|p| p.iter().map(|t| lit(t)).collect())
                .unwrap_or_default();
            let prune = if parts.is_empty() {
                String::new()
            } else {
                format!("table_name IN ({}) AND ", parts.join(", "))
            };
            let q = format!(
                "SELECT * FROM events WHERE {prune}kafka_topic = {} AND kafka_partition = {} \
                   AND kafka_offset >= {} AND kafka_offset < {} AND op IN ('c', 'u', 'd', 't') \
                 ORDER BY kafka_offset",
                lit(&r.topic),
                r.partition,
                r.from,
                r.to
            );
            self.handle
                .block_on(self.stream(&q, progress, visit))
                .map_err(|e| match e {
                    Streamed::History(e) => err(e),
                    Streamed::Visit(e) => e,
                })?;
        }
        Ok(())
    }
}

enum Streamed {
    History(HistoryError),
    Visit(RestoreError),
}

impl HistoryLog {
    async fn stream(
        &self,
        q: &str,
        progress: &Progress,
        visit: &mut dyn FnMut(LoggedChange) -> Result<(), RestoreError>,
    ) -> Result<(), Streamed> {
        let mut s = self.session.stream(q).await.map_err(Streamed::History)?;
        while let Some(batch) = s.next().await {
            let batch = batch.map_err(|e| Streamed::History(HistoryError::from(e)))?;
            for row in batch_rows(&batch).map_err(Streamed::History)? {
                progress.advance(1);
                let change = logged_change(&row).map_err(Streamed::History)?;
                visit(change).map_err(Streamed::Visit)?;
            }
        }
        Ok(())
    }
}

fn image(row: &Map<String, Value>, k: &str) -> Result<Option<Row>, HistoryError> {
    match row.get(k) {
        Some(Value::String(s)) => {
            serde_json::from_str(s)
                .map(Some)
                .map_err(|e| HistoryError::Corrupt {
                    store: String::new(),
                    what: format!("column {k}"),
                    detail: e.to_string(),
                })
        }
        _ => Ok(None),
    }
}

/// The change event an archived row was made from.
pub fn logged_change(row: &Map<String, Value>) -> Result<LoggedChange, HistoryError> {
    let op_text = text(row, "op");
    let op = op_of(&op_text).ok_or_else(|| HistoryError::Corrupt {
        store: String::new(),
        what: "column op".into(),
        detail: format!("unknown op {op_text:?}"),
    })?;
    let strings = |k: &str| -> Vec<String> {
        row.get(k)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    };
    let opt = |k: &str| row.get(k).and_then(Value::as_str).map(str::to_string);
    let key: Row = serde_json::from_str(&text(row, "key_json")).unwrap_or_default();
    // Kept since `cascade_json` was added; rows archived before read NULL.
    let cascade = opt("cascade_json")
        .map(|j| serde_json::from_str(&j))
        .transpose()
        .map_err(|e| HistoryError::Corrupt {
            store: String::new(),
            what: "column cascade_json".into(),
            detail: e.to_string(),
        })?;
    let source = Source {
        version: text(row, "version"),
        connector: text(row, "connector"),
        name: text(row, "topic_prefix"),
        ts_ms: int(row, "ts_ms").unwrap_or(0),
        snapshot: text(row, "snapshot"),
        db: text(row, "db"),
        schema: text(row, "schema_name"),
        table: text(row, "relation"),
        tx_id: int(row, "tx_id"),
        user: text(row, "user_name"),
        application_name: text(row, "application_name"),
        client_addr: text(row, "client_addr"),
        statement: text(row, "statement"),
        fingerprint: text(row, "fingerprint"),
        tags: serde_json::from_str(&text(row, "tags_json")).unwrap_or_default(),
        session_id: text(row, "session_id"),
        statement_seq: int(row, "statement_seq").unwrap_or(0) as u64,
        side_effects: opt("side_effects"),
        side_effect_tables: strings("side_effect_tables"),
        blocked_by: opt("blocked_by"),
        dry_run_rule: opt("dry_run_rule"),
        redacted: row
            .get("redacted")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        cascade,
    };
    let table = format!("{}.{}", source.schema, source.table);
    Ok(LoggedChange {
        event: ChangeEvent {
            before: image(row, "before_json")?,
            after: image(row, "after_json")?,
            op,
            ts_ms: int(row, "event_ts_ms").unwrap_or(0),
            transaction: TxPosition {
                id: text(row, "transaction_id"),
                total_order: int(row, "total_order").unwrap_or(0) as u64,
                data_collection_order: int(row, "data_collection_order").unwrap_or(0) as u64,
            },
            source,
        },
        key: ChangeKey { table, key },
        topic: text(row, "kafka_topic"),
        partition: int(row, "kafka_partition").unwrap_or(0) as i32,
        offset: int(row, "kafka_offset").unwrap_or(0),
    })
}
