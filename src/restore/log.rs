//! Reading the audit log back: the transaction records and the change events on the audit
//! topics, from the oldest retained offset up to the end as it was when reading started,
//! streamed to a callback (a restore keeps only what its plan needs), and read again by offset
//! range for the few changes a second pass asks for.
//!
//! Knows the topic layout and the record formats; nothing about plans or databases.
//!
//! [`AuditLog`] is what planning reads; [`LogReader`] reads it from the topics. The history
//! archive (`hindsight-history`) implements it too, with each record's original topic,
//! partition and offset, so a restore from the archive plans exactly as one from the topics.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::progress::Progress;
use super::RestoreError;
use crate::audit::event::{ChangeEvent, ChangeKey, CommitStatus, Op, TransactionRecord, TxStatus};

/// One change event as read, with where it was read from.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    pub event: ChangeEvent,
    pub key: ChangeKey,
    /// The topic it was read from (its table's, or its database's).
    pub topic: String,
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

/// Offsets `from..to` of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

impl Range {
    fn len(&self) -> u64 {
        (self.to - self.from).max(0) as u64
    }
}

/// The audit log as a restore reads it: every method may block (run it off the async runtime).
pub trait AuditLog: Send {
    /// Every retained range of the change topics (of the tables the source asks for).
    fn table_ranges(&self) -> Vec<Range>;
    /// Every transaction record, by transaction id.
    fn transactions(&self, progress: &Progress) -> Result<HashMap<String, TxInfo>, RestoreError>;
    /// Each row change (c/u/d/t) in `ranges`, in offset order per partition.
    fn changes(
        &self,
        ranges: &[Range],
        progress: &Progress,
        visit: &mut dyn FnMut(LoggedChange) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError>;
}

/// Opens the log a restore reads: the topics ([`LogOpener::kafka`]) or an archive of them.
#[derive(Clone)]
pub struct LogOpener(std::sync::Arc<OpenFn>);

type OpenFn = dyn Fn(&LogSource) -> Result<Box<dyn AuditLog>, RestoreError> + Send + Sync;

impl LogOpener {
    /// Read the audit topics on the brokers of the [`LogSource`].
    pub fn kafka() -> Self {
        Self::new(|src| Ok(Box::new(LogReader::open(src)?)))
    }

    pub fn new(
        open: impl Fn(&LogSource) -> Result<Box<dyn AuditLog>, RestoreError> + Send + Sync + 'static,
    ) -> Self {
        LogOpener(std::sync::Arc::new(open))
    }

    pub fn open(&self, src: &LogSource) -> Result<Box<dyn AuditLog>, RestoreError> {
        (self.0)(src)
    }
}

impl std::fmt::Debug for LogOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogOpener")
    }
}

/// The audit topics as they were when reading started.
pub struct LogReader {
    consumer: BaseConsumer,
    transactions: Vec<Range>,
    tables: Vec<Range>,
    timeout: Duration,
}

/// Whether topic `rest` (the name after `<prefix>.`) may hold changes `src` reads: a table's
/// topic named by the selection (any table's without one), or a database's topic, which may
/// hold any table's (`kafka.topic_routing = "database"`; its events are selected one by one).
pub fn wanted_table_topic(src: &LogSource, rest: &str) -> bool {
    use crate::audit::kafka::{is_change_topic, is_database_topic};
    is_change_topic(rest)
        && (src.tables.is_empty()
            || is_database_topic(rest)
            || src
                .tables
                .iter()
                .any(|w| w == rest || rest.ends_with(&format!(".{w}"))))
}

impl LogReader {
    /// Connect and note the retained offsets of every audit topic.
    pub fn open(src: &LogSource) -> Result<Self, RestoreError> {
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
        let (mut transactions, mut tables) = (Vec::new(), Vec::new());
        for t in meta.topics() {
            let name = t.name();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let into = if rest == "transaction" {
                &mut transactions
            } else if wanted_table_topic(src, rest) {
                &mut tables
            } else {
                continue;
            };
            for p in t.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(name, p.id(), src.timeout)
                    .map_err(RestoreError::kafka("reading topic offsets"))?;
                if high > low {
                    into.push(Range {
                        topic: name.to_string(),
                        partition: p.id(),
                        from: low,
                        to: high,
                    });
                }
            }
        }
        Ok(LogReader {
            consumer,
            transactions,
            tables,
            timeout: src.timeout,
        })
    }
}

impl AuditLog for LogReader {
    fn table_ranges(&self) -> Vec<Range> {
        self.tables.clone()
    }

    fn transactions(&self, progress: &Progress) -> Result<HashMap<String, TxInfo>, RestoreError> {
        let mut out: HashMap<String, TxInfo> = HashMap::new();
        let ranges = self.transactions.clone();
        progress.phase("reading transaction records", total(&ranges));
        self.scan(&ranges, progress, &mut |msg| {
            let Some(r) = msg
                .payload()
                .and_then(|p| serde_json::from_slice::<TransactionRecord>(p).ok())
            else {
                return Ok(());
            };
            let info = out.entry(r.id.clone()).or_default();
            info.txid = info.txid.or(r.tx_id);
            match r.status {
                TxStatus::Begin => info.ts_ms = r.ts_ms,
                TxStatus::End => info.outcome = r.commit_status,
            }
            Ok(())
        })?;
        progress.finish();
        Ok(out)
    }

    /// A record that is not a change event stops the read with [`RestoreError::Unreadable`].
    fn changes(
        &self,
        ranges: &[Range],
        progress: &Progress,
        visit: &mut dyn FnMut(LoggedChange) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError> {
        self.scan(ranges, progress, &mut |msg| {
            let Some(payload) = msg.payload() else {
                return Ok(());
            };
            let (Ok(event), Some(Ok(key))) = (
                serde_json::from_slice::<ChangeEvent>(payload),
                msg.key().map(serde_json::from_slice::<ChangeKey>),
            ) else {
                return Err(RestoreError::Unreadable {
                    topic: msg.topic().to_string(),
                    offset: msg.offset(),
                });
            };
            match event.op {
                Op::Create | Op::Update | Op::Delete | Op::Truncate => visit(LoggedChange {
                    event,
                    key,
                    topic: msg.topic().to_string(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                }),
                Op::Read | Op::Blocked | Op::Ddl | Op::Opaque => Ok(()),
            }
        })
    }
}

impl LogReader {
    /// Read `ranges` to their ends, handing each message to `visit`.
    fn scan(
        &self,
        ranges: &[Range],
        progress: &Progress,
        visit: &mut dyn FnMut(&BorrowedMessage) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError> {
        let mut ends: HashMap<(String, i32), i64> = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for r in ranges.iter().filter(|r| r.to > r.from) {
            assignment
                .add_partition_offset(&r.topic, r.partition, Offset::Offset(r.from))
                .map_err(RestoreError::kafka("assigning partitions"))?;
            ends.insert((r.topic.clone(), r.partition), r.to);
        }
        if ends.is_empty() {
            return Ok(());
        }
        self.consumer
            .assign(&assignment)
            .map_err(RestoreError::kafka("assigning partitions"))?;
        let mut last_progress = Instant::now();
        while !ends.is_empty() {
            let Some(msg) = self.consumer.poll(Duration::from_millis(200)) else {
                if last_progress.elapsed() > self.timeout {
                    let missing: Vec<String> =
                        ends.keys().map(|(t, p)| format!("{t}[{p}]")).collect();
                    return Err(RestoreError::LogIncomplete(missing.join(", ")));
                }
                continue;
            };
            let msg = msg.map_err(RestoreError::kafka("reading the audit topics"))?;
            last_progress = Instant::now();
            let at = (msg.topic().to_string(), msg.partition());
            let Some(end) = ends.get(&at).copied() else {
                continue;
            };
            if msg.offset() + 1 >= end {
                ends.remove(&at);
            }
            if msg.offset() < end {
                progress.advance(1);
                visit(&msg)?;
            }
        }
        self.consumer
            .unassign()
            .map_err(RestoreError::kafka("releasing partitions"))?;
        Ok(())
    }
}

/// The number of offsets in `ranges`.
pub fn total(ranges: &[Range]) -> u64 {
    ranges.iter().map(Range::len).sum()
}
