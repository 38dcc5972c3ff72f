//! `hindsight archive`: consume every audit topic of a prefix into the store, exactly once.
//!
//! One loop: fill a batch (up to `batch_max_records`, or `batch_max_wait`), convert it, append
//! its rows to the two tables, each commit carrying the offsets it consumed; then, between
//! batches, look for new topics and resolve transactions left in doubt. librdkafka keeps
//! fetching into its own queue while a batch is being written, so the broker and the store work
//! side by side. Partitions are assigned by hand from the offsets in the store; nothing is
//! committed to the consumer group (its lag is not a measure of the archive).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::record::{self, Archived, EventRow, RawRecord, TopicKind, TxRow};
use crate::resolve::{InDoubt, Resolver};
use crate::store::{Open, PartitionOffset, Store};
use crate::HistoryError;

/// Everything the archive needs to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub store: String,
    pub name: String,
    pub brokers: Vec<String>,
    pub topic_prefix: String,
    pub librdkafka: Vec<(String, String)>,
    pub batch_max_records: usize,
    pub batch_max_wait: Duration,
    pub resolve_database: Option<String>,
    pub resolve_after: Duration,
    pub topic_refresh: Duration,
    pub until: Until,
    /// Serve `/metrics` and `/healthz` here.
    pub admin_listen: Option<std::net::SocketAddr>,
}

/// When the archive stops by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Never: it follows the topics until it is stopped (the Deployment).
    Stopped,
    /// Once every partition is archived up to where it ended when the archive started
    /// (`--once`: a catch-up run, for tests, benchmarks and cron).
    CaughtUp,
}

/// What one run archived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub transaction_records: u64,
    pub unreadable: u64,
    pub resolved: u64,
    pub commits: u64,
}

/// A batch being filled: rows per table and the next offset of every partition it read.
#[derive(Default)]
struct Batch {
    events: Vec<EventRow>,
    transactions: Vec<TxRow>,
    next: BTreeMap<(String, i32), i64>,
    records: usize,
}

impl Batch {
    fn add(&mut self, prefix: &str, raw: RawRecord) {
        self.next
            .insert((raw.topic.clone(), raw.partition), raw.offset + 1);
        self.records += 1;
        match record::convert(prefix, raw) {
            Archived::Event(e) => self.events.push(*e),
            Archived::Tx(t) => self.transactions.push(t),
        }
    }

    /// The offsets of the partitions of one table's topics.
    fn offsets(&self, prefix: &str, transactions: bool) -> Vec<PartitionOffset> {
        self.next
            .iter()
            .filter(|((t, _), _)| {
                (record::topic_kind(prefix, t) == Some(TopicKind::Transaction)) == transactions
            })
            .map(|((topic, partition), next)| PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                next: *next,
            })
            .collect()
    }
}

fn consumer(o: &Options) -> Result<StreamConsumer, HistoryError> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", o.brokers.join(","))
        .set("group.id", &o.name)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "262144")
        .set("fetch.message.max.bytes", "67108864");
    for (k, v) in &o.librdkafka {
        cfg.set(k, v);
    }
    cfg.create()
        .map_err(HistoryError::kafka("creating a consumer"))
}

/// The archive's state between batches.
struct Archive {
    o: Options,
    store: Store,
    consumer: std::sync::Arc<StreamConsumer>,
    /// Partitions assigned, with the high watermark they had when first seen (for `--once`).
    assigned: HashMap<(String, i32), i64>,
    /// Next offset to read per partition (what is committed, then what was consumed).
    position: HashMap<(String, i32), i64>,
    resolver: Resolver,
    totals: Totals,
    last_refresh: Instant,
    /// Transaction records read while completing a batch, for the next one.
    carry: Vec<RawRecord>,
    metrics: std::sync::Arc<Metrics>,
}

/// How long completing a batch may wait for events the brokers already hold.
const COMPLETE_WITHIN: Duration = Duration::from_secs(60);

/// The topics of an END's data collections: the topic each names, or for records that name
/// none (before `kafka.topic_routing`, in-doubt ENDs) the topic of its `schema.table` or
/// `statements`.
fn collection_topics(prefix: &str, data_collections_json: &str) -> Vec<String> {
    let list: Vec<hindsight::audit::event::DataCollection> =
        serde_json::from_str(data_collections_json).unwrap_or_default();
    list.into_iter()
        .map(|d| match (d.topic, d.data_collection.split_once('.')) {
            (Some(topic), _) => topic,
            (None, _) if d.data_collection == hindsight::audit::kafka::STATEMENTS => {
                format!("{prefix}.{}", d.data_collection)
            }
            (None, Some((schema, table))) => {
                hindsight::audit::kafka::table_topic(prefix, schema, table)
            }
            (None, None) => format!("{prefix}.{}", d.data_collection),
        })
        .collect()
}

/// Run the archive until `stop` is cancelled (or, with [`Until::CaughtUp`], until caught up).
pub async fn run(o: Options, stop: CancellationToken) -> Result<Totals, HistoryError> {
    if o.brokers.is_empty() {
        return Err(HistoryError::Usage(
            "archive: no brokers (set kafka.brokers or --kafka-brokers HOST:PORT)".into(),
        ));
    }
    let store = Store::open(&o.store, Open::CreateIfMissing).await?;
    let in_doubt = InDoubt::load(&store).await?;
    let resolver = Resolver::new(o.resolve_database.clone(), o.resolve_after, in_doubt);
    let metrics = std::sync::Arc::new(Metrics::new());
    if let Some(addr) = o.admin_listen {
        crate::metrics::serve(addr, metrics.clone(), stop.clone()).await?;
    }
    let mut a = Archive {
        metrics,
        consumer: std::sync::Arc::new(consumer(&o)?),
        store,
        assigned: HashMap::new(),
        position: HashMap::new(),
        resolver,
        totals: Totals::default(),
        last_refresh: Instant::now(),
        carry: Vec::new(),
        o,
    };
    a.discover().await?;
    tracing::info!(
        store = %a.o.store, prefix = %a.o.topic_prefix, partitions = a.assigned.len(),
        "archive: started"
    );
    while !stop.is_cancelled() {
        let batch = a.fill(&stop).await?;
        a.write(batch).await?;
        a.between_batches().await?;
        if a.o.until == Until::CaughtUp && a.caught_up() {
            break;
        }
    }
    tracing::info!(totals = ?a.totals, "archive: stopped");
    Ok(a.totals)
}

impl Archive {
    /// Look for audit topics and partitions not assigned yet; assign them from the store's
    /// offsets (or from the beginning).
    async fn discover(&mut self) -> Result<(), HistoryError> {
        self.last_refresh = Instant::now();
        let found = self.list_partitions().await?;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), high) in found {
            if self.assigned.contains_key(&(topic.clone(), partition)) {
                continue;
            }
            let tx =
                record::topic_kind(&self.o.topic_prefix, &topic) == Some(TopicKind::Transaction);
            let next = self
                .store
                .next_offset(&self.o.name, &topic, partition, tx)
                .await?;
            let offset = next.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(&topic, partition, offset)
                .map_err(HistoryError::kafka("assigning partitions"))?;
            self.position
                .insert((topic.clone(), partition), next.unwrap_or(0));
            self.assigned.insert((topic, partition), high);
        }
        if tpl.count() > 0 {
            self.consumer
                .incremental_assign(&tpl)
                .map_err(HistoryError::kafka("assigning partitions"))?;
        }
        Ok(())
    }

    /// Every partition of the prefix's audit topics, with its high watermark.
    async fn list_partitions(&self) -> Result<Vec<((String, i32), i64)>, HistoryError> {
        let consumer = self.consumer.clone();
        let prefix = self.o.topic_prefix.clone();
        let known = self.assigned.clone();
        let timeout = Duration::from_secs(10);
        tokio::task::spawn_blocking(move || {
            let client = consumer.client();
            let meta = client
                .fetch_metadata(None, timeout)
                .map_err(HistoryError::kafka("listing topics"))?;
            let mut out = Vec::new();
            for t in meta.topics() {
                if record::topic_kind(&prefix, t.name()).is_none() {
                    continue;
                }
                for p in t.partitions() {
                    let at = (t.name().to_string(), p.id());
                    let high = match known.get(&at) {
                        Some(h) => *h,
                        None => {
                            client
                                .fetch_watermarks(t.name(), p.id(), timeout)
                                .map_err(HistoryError::kafka("reading topic offsets"))?
                                .1
                        }
                    };
                    out.push((at, high));
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| HistoryError::Usage(format!("archive: topic listing task failed: {e}")))?
    }

    /// The next record, or `None` at `deadline`, on `stop`, or after a failed read (logged).
    async fn next_record(
        &self,
        deadline: tokio::time::Instant,
        stop: &CancellationToken,
    ) -> Result<Option<RawRecord>, HistoryError> {
        let msg = tokio::select! {
            m = self.consumer.recv() => m,
            _ = tokio::time::sleep_until(deadline) => return Ok(None),
            _ = stop.cancelled() => return Ok(None),
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                // librdkafka reconnects by itself; a daemon waits for the brokers to come back.
                tracing::warn!(error = %e, "archive: reading the audit topics failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(None);
            }
        };
        Ok(Some(RawRecord {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            timestamp_ms: msg.timestamp().to_millis(),
        }))
    }

    /// Records until the batch is full, `batch_max_wait` passed, or `stop`; then, if it holds
    /// an END, the events that END covers (see [`Archive::complete`]).
    async fn fill(&mut self, stop: &CancellationToken) -> Result<Batch, HistoryError> {
        let mut batch = Batch::default();
        for raw in std::mem::take(&mut self.carry) {
            batch.add(&self.o.topic_prefix, raw);
        }
        let deadline = tokio::time::Instant::now() + self.o.batch_max_wait;
        while batch.records < self.o.batch_max_records {
            match self.next_record(deadline, stop).await? {
                Some(raw) => batch.add(&self.o.topic_prefix, raw),
                None => break,
            }
        }
        if batch.transactions.iter().any(|t| t.status == "END") {
            self.complete(&mut batch, stop).await?;
            if stop.is_cancelled() {
                // Stopped while completing: its ENDs' events may not all be read, and written
                // an END would be visible before its events. Nothing of it is written (the
                // store's offsets do not move); the next run reads it again.
                return Ok(Batch::default());
            }
        }
        Ok(batch)
    }

    /// An END must not become visible before its transaction's events: they were published
    /// before it, so they are below every event partition's end as it is now. Read on to those
    /// ends (new tables' topics assigned first); transaction records read meanwhile wait for
    /// the next batch (their own events may lie beyond these ends).
    async fn complete(
        &mut self,
        batch: &mut Batch,
        stop: &CancellationToken,
    ) -> Result<(), HistoryError> {
        let prefix = self.o.topic_prefix.clone();
        let named: Vec<String> = batch
            .transactions
            .iter()
            .flat_map(|t| collection_topics(&prefix, &t.data_collections_json))
            .collect();
        if named
            .iter()
            .any(|t| !self.assigned.keys().any(|(a, _)| a == t))
        {
            self.discover().await?;
        }
        let targets = self.event_partition_ends().await?;
        let behind = |b: &Batch, pos: &HashMap<(String, i32), i64>| -> bool {
            targets.iter().any(|(at, end)| {
                b.next.get(at).or_else(|| pos.get(at)).copied().unwrap_or(0) < *end
            })
        };
        let deadline = tokio::time::Instant::now() + COMPLETE_WITHIN;
        while behind(batch, &self.position) {
            let Some(raw) = self.next_record(deadline, stop).await? else {
                if stop.is_cancelled() {
                    return Ok(());
                }
                if tokio::time::Instant::now() < deadline {
                    continue;
                }
                return Err(HistoryError::Usage(format!(
                    "archive: the brokers did not deliver the event topics up to their ends within {COMPLETE_WITHIN:?}; \
                     nothing of this batch was written (check the brokers)"
                )));
            };
            if record::topic_kind(&prefix, &raw.topic) == Some(TopicKind::Transaction) {
                self.carry.push(raw);
            } else {
                batch.add(&prefix, raw);
            }
        }
        Ok(())
    }

    /// The current end offset of every assigned event (non-transaction) partition.
    async fn event_partition_ends(&self) -> Result<Vec<((String, i32), i64)>, HistoryError> {
        let prefix = &self.o.topic_prefix;
        let parts: Vec<(String, i32)> = self
            .assigned
            .keys()
            .filter(|(t, _)| record::topic_kind(prefix, t) != Some(TopicKind::Transaction))
            .cloned()
            .collect();
        self.ends(parts).await
    }

    /// The current end offset of each of `parts`.
    async fn ends(
        &self,
        parts: Vec<(String, i32)>,
    ) -> Result<Vec<((String, i32), i64)>, HistoryError> {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || {
            parts
                .into_iter()
                .map(|(t, p)| {
                    let (_, high) = consumer
                        .fetch_watermarks(&t, p, Duration::from_secs(10))
                        .map_err(HistoryError::kafka("reading topic offsets"))?;
                    Ok(((t, p), high))
                })
                .collect()
        })
        .await
        .map_err(|e| HistoryError::Usage(format!("archive: offset task failed: {e}")))?
    }

    /// Append the batch: events first, then transaction records (an END never lands before
    /// events consumed with it).
    async fn write(&mut self, batch: Batch) -> Result<(), HistoryError> {
        if batch.records == 0 {
            return Ok(());
        }
        let prefix = self.o.topic_prefix.clone();
        let name = self.o.name.clone();
        if !batch.events.is_empty() {
            let timer = self.metrics.commit_seconds.start_timer();
            let offsets = batch.offsets(&prefix, false);
            self.store
                .append_events(&name, &batch.events, &offsets)
                .await?;
            self.committed(timer);
        }
        if !batch.transactions.is_empty() {
            let timer = self.metrics.commit_seconds.start_timer();
            let offsets = batch.offsets(&prefix, true);
            self.store
                .append_transactions(&name, &batch.transactions, &offsets)
                .await?;
            self.committed(timer);
        }
        for t in &batch.transactions {
            self.resolver.saw(t);
        }
        let unreadable = batch
            .events
            .iter()
            .filter(|e| e.unreadable.is_some())
            .count() as u64;
        self.totals.unreadable += unreadable;
        self.totals.events += batch.events.len() as u64 - unreadable;
        self.totals.transaction_records += batch.transactions.len() as u64;
        self.metrics.unreadable.inc_by(unreadable);
        self.metrics
            .events
            .inc_by(batch.events.len() as u64 - unreadable);
        self.metrics
            .transaction_records
            .inc_by(batch.transactions.len() as u64);
        self.metrics.in_doubt.set(self.resolver.open_count() as i64);
        for (at, next) in &batch.next {
            self.position.insert(at.clone(), *next);
        }
        tracing::info!(
            events = batch.events.len(),
            transaction_records = batch.transactions.len(),
            unreadable,
            total_events = self.totals.events,
            "archive: committed a batch"
        );
        Ok(())
    }

    /// New topics every `topic_refresh`; in-doubt transactions once the transaction topic is
    /// archived to its end.
    async fn between_batches(&mut self) -> Result<(), HistoryError> {
        if self.last_refresh.elapsed() >= self.o.topic_refresh {
            if let Err(e) = self.discover().await {
                // The brokers may be briefly away; the next refresh tries again.
                tracing::warn!(error = %e, "archive: looking for new topics failed; will retry");
            } else if let Ok(lag) = self.lag().await {
                self.metrics.lag_records.set(lag);
            }
        }
        if self.transactions_archived_to_end().await {
            let rows = self.resolver.resolve().await?;
            if !rows.is_empty() {
                let name = self.o.name.clone();
                self.store.append_transactions(&name, &rows, &[]).await?;
                self.totals.resolved += rows.len() as u64;
                self.totals.commits += 1;
                self.metrics.resolved.inc_by(rows.len() as u64);
                self.metrics.commits.inc();
                self.metrics.in_doubt.set(self.resolver.open_count() as i64);
            }
        }
        Ok(())
    }

    /// Whether every transaction-topic partition is archived up to its current end.
    async fn transactions_archived_to_end(&self) -> bool {
        if !self.resolver.has_candidates() {
            return false;
        }
        let consumer = self.consumer.clone();
        let parts: Vec<((String, i32), i64)> = self
            .position
            .iter()
            .filter(|((t, _), _)| {
                record::topic_kind(&self.o.topic_prefix, t) == Some(TopicKind::Transaction)
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        tokio::task::spawn_blocking(move || {
            parts.iter().all(|((t, p), next)| {
                consumer
                    .fetch_watermarks(t, *p, Duration::from_secs(5))
                    .is_ok_and(|(_, high)| *next >= high)
            })
        })
        .await
        .unwrap_or(false)
    }

    /// Records on the assigned partitions not archived yet.
    async fn lag(&self) -> Result<i64, HistoryError> {
        let ends = self.ends(self.position.keys().cloned().collect()).await?;
        Ok(ends
            .iter()
            .map(|(at, high)| (high - self.position.get(at).copied().unwrap_or(0)).max(0))
            .sum())
    }

    /// Count one commit to the store.
    fn committed(&mut self, timer: prometheus::HistogramTimer) {
        timer.observe_duration();
        self.totals.commits += 1;
        self.metrics.commits.inc();
    }

    /// Every partition archived up to where it ended when it was first seen.
    fn caught_up(&self) -> bool {
        self.assigned
            .iter()
            .all(|(at, high)| self.position.get(at).copied().unwrap_or(0) >= *high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_names_the_topics_of_its_tables() {
        let list = r#"[{"data_collection":"public.brieff","event_count":2},
                       {"data_collection":"Sales Dept.Order Details","event_count":1},
                       {"data_collection":"statements","event_count":1}]"#;
        assert_eq!(
            collection_topics("hs", list),
            [
                "hs.public.brieff",
                "hs.Sales_Dept.Order_Details",
                "hs.statements"
            ]
        );
        assert!(collection_topics("hs", "not json").is_empty());
    }

    #[test]
    fn an_end_that_names_its_topics_is_taken_at_its_word() {
        let list = r#"[{"data_collection":"public.brieff","event_count":2,"topic":"hs.changes-shop"},
                       {"data_collection":"public.other","event_count":1}]"#;
        assert_eq!(
            collection_topics("hs", list),
            ["hs.changes-shop", "hs.public.other"]
        );
    }
}
