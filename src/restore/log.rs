//! Reading the audit log back: every change event and transaction record on the audit topics,
//! from the oldest retained offset up to the end as it was when reading started.
//!
//! Knows the topic layout and the record formats; nothing about plans or databases.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::RestoreError;
use crate::audit::event::{ChangeEvent, ChangeKey, CommitStatus, Op, TransactionRecord, TxStatus};

/// One change event as read, with where it was read from.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    pub event: ChangeEvent,
    pub key: ChangeKey,
    pub partition: i32,
    pub offset: i64,
}

impl LoggedChange {
    /// Stable id of the event: `<transaction id>/<position in the transaction>`.
    pub fn id(&self) -> String {
        format!(
            "{}/{}",
            self.event.transaction.id, self.event.transaction.total_order
        )
    }

    /// `schema.table`.
    pub fn table(&self) -> String {
        format!("{}.{}", self.event.source.schema, self.event.source.table)
    }
}

/// What the transaction records say about one transaction.
#[derive(Debug, Clone, Default)]
pub struct TxInfo {
    /// PostgreSQL transaction id, if one was assigned.
    pub txid: Option<i64>,
    /// From the END record; `None`: no END was published (hindsight stopped in between).
    pub outcome: Option<CommitStatus>,
    /// When hindsight published the transaction's records (right before COMMIT).
    pub ts_ms: i64,
}

/// Everything read from the audit topics.
#[derive(Debug, Default)]
pub struct AuditLog {
    /// Row changes (c/u/d/t), per table topic in offset order.
    pub changes: Vec<LoggedChange>,
    pub transactions: HashMap<String, TxInfo>,
}

/// Where to read from.
#[derive(Debug, Clone)]
pub struct LogSource {
    pub brokers: Vec<String>,
    pub topic_prefix: String,
    /// Extra librdkafka properties (TLS/SASL to the brokers).
    pub librdkafka: Vec<(String, String)>,
    /// Only these tables' topics (`schema.table`); empty = every table.
    pub tables: Vec<String>,
    /// Give up when the brokers do not answer within this long.
    pub timeout: Duration,
}

/// Read the whole retained log (up to the end offsets seen at the start).
pub fn read(src: &LogSource) -> Result<AuditLog, RestoreError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", src.brokers.join(","))
        .set(
            "group.id",
            format!("hindsight-restore-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (k, v) in &src.librdkafka {
        cfg.set(k, v);
    }
    let consumer: BaseConsumer = cfg
        .create()
        .map_err(RestoreError::kafka("creating a consumer"))?;
    let meta = consumer
        .fetch_metadata(None, src.timeout)
        .map_err(RestoreError::kafka("listing topics"))?;
    let prefix = format!("{}.", src.topic_prefix);
    let tx_topic = format!("{}transaction", prefix);
    let mut assignment = TopicPartitionList::new();
    // (topic, partition) → end offset to read up to.
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for t in meta.topics() {
        let name = t.name();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let wanted = name == tx_topic
            || (rest != crate::capture::publish::STATEMENTS
                && (src.tables.is_empty()
                    || src
                        .tables
                        .iter()
                        .any(|w| w == rest || rest.ends_with(&format!(".{w}")))));
        if !wanted {
            continue;
        }
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(name, p.id(), src.timeout)
                .map_err(RestoreError::kafka("reading topic offsets"))?;
            if high > low {
                assignment
                    .add_partition_offset(name, p.id(), Offset::Offset(low))
                    .map_err(RestoreError::kafka("assigning partitions"))?;
                ends.insert((name.to_string(), p.id()), high);
            }
        }
    }
    let mut log = AuditLog::default();
    if ends.is_empty() {
        return Ok(log);
    }
    consumer
        .assign(&assignment)
        .map_err(RestoreError::kafka("assigning partitions"))?;
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            if last_progress.elapsed() > src.timeout {
                let missing: Vec<String> = ends.keys().map(|(t, p)| format!("{t}[{p}]")).collect();
                return Err(RestoreError::LogIncomplete(missing.join(", ")));
            }
            continue;
        };
        let msg = msg.map_err(RestoreError::kafka("reading the audit topics"))?;
        last_progress = Instant::now();
        let at = (msg.topic().to_string(), msg.partition());
        if let Some(end) = ends.get(&at) {
            if msg.offset() + 1 >= *end {
                ends.remove(&at);
            }
        }
        let Some(payload) = msg.payload() else {
            continue;
        };
        if msg.topic() == tx_topic {
            let Ok(r) = serde_json::from_slice::<TransactionRecord>(payload) else {
                continue;
            };
            let info = log.transactions.entry(r.id.clone()).or_default();
            info.txid = info.txid.or(r.tx_id);
            match r.status {
                TxStatus::Begin => info.ts_ms = r.ts_ms,
                TxStatus::End => info.outcome = r.commit_status,
            }
            continue;
        }
        let (Ok(event), Some(Ok(key))) = (
            serde_json::from_slice::<ChangeEvent>(payload),
            msg.key().map(serde_json::from_slice::<ChangeKey>),
        ) else {
            return Err(RestoreError::Unreadable {
                topic: msg.topic().to_string(),
                offset: msg.offset(),
            });
        };
        if matches!(
            event.op,
            Op::Create | Op::Update | Op::Delete | Op::Truncate
        ) {
            log.changes.push(LoggedChange {
                event,
                key,
                partition: msg.partition(),
                offset: msg.offset(),
            });
        }
    }
    Ok(log)
}
