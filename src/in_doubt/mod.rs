//! Self-healing of in-doubt transactions: a BEGIN on `<prefix>.transaction` whose END never
//! came (the proxy that wrote it was killed, or lost its server or broker connection, between
//! publishing the events and publishing the END).
//!
//! One thread reads every partition of the transaction topic (assigned, not subscribed: a
//! killed replica must not hold partitions in a group until its session times out) from the
//! offsets committed under the group id `hindsight-in-doubt.<prefix>`, and tracks open BEGINs
//! ([`decide::Tracker`]); committed offsets never pass the oldest open BEGIN, so a restart
//! sees it again. Every replica reads everything; two replicas may both close a BEGIN, with
//! the same outcome. Every `interval` a
//! task takes the BEGINs that are due ([`decide::Tracker::due`]: old enough, partition read to
//! its end, not this process's own live transaction), asks `txid_status(txId)` on the upstream
//! and publishes the missing END with `commit_status` (`committed`, `aborted`, or `unknown`
//! when the server no longer knows the txid or there is none) and a `resolution` saying how
//! ([`decide::end_for`]). "in progress" is asked again next time.
//!
//! A BEGIN may then get two ENDs (this one, and the writer's own if it was only slow); both
//! say the same, except that an `unknown` END of a statement without txid can precede its
//! writer's real END (only after `in_doubt.unknown_after`).

pub mod decide;
pub mod error;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::audit::event::TransactionRecord;
use crate::audit::in_flight::InFlight;
use crate::audit::kafka::{KafkaSink, Record};
use crate::telemetry::events::Event;
use crate::telemetry::Metrics;
use decide::{Asked, Due, Policy, Tracker};
pub use error::InDoubtError;

/// What the healer needs besides the sink.
pub struct Settings {
    /// The upstream database to ask (`in_doubt.database`, parsed).
    pub database: crate::pgconn::Target,
    pub interval: Duration,
    pub policy: Policy,
    /// This replica's name, written into each END's `resolution.resolver`.
    pub resolver: String,
}

/// What the reading thread shares with the resolving task.
#[derive(Default)]
struct State {
    tracker: Tracker,
    /// Next offset to read, per assigned partition.
    positions: BTreeMap<i32, i64>,
    /// Partition ends when last asked.
    highs: BTreeMap<i32, i64>,
}

impl State {
    fn caught_up(&self, p: i32) -> bool {
        match (self.positions.get(&p), self.highs.get(&p)) {
            (Some(at), Some(high)) => at >= high,
            (None, Some(high)) => *high == 0,
            _ => false,
        }
    }
}

/// A running healer; dropping it stops the thread and the task.
pub struct Healer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    task: tokio::task::JoinHandle<()>,
    state: Arc<Mutex<State>>,
}

impl Healer {
    /// Start reading the transaction topic and resolving what is due.
    pub fn start(
        settings: Settings,
        sink: Arc<KafkaSink>,
        in_flight: Arc<InFlight>,
        metrics: Metrics,
    ) -> Result<Healer, InDoubtError> {
        let topic = sink.transaction_topic();
        let consumer = consumer(sink.config())?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, halt, every) = (Arc::clone(&state), Arc::clone(&stop), settings.interval);
        let t = topic.clone();
        let thread = std::thread::Builder::new()
            .name("in-doubt".into())
            .spawn(move || {
                if let Some(starts) = assign(&consumer, &t, &halt) {
                    // Reading starts there: a first record past it is a hole too.
                    lock(&st).positions = starts;
                    read(consumer, &st, &halt, every)
                }
            })
            .expect("a thread can be started");
        let resolver = Resolver {
            settings,
            sink,
            in_flight,
            metrics,
            state: Arc::clone(&state),
            client: None,
            topic,
            incarnation: None,
        };
        let task = tokio::spawn(resolver.run());
        Ok(Healer {
            stop,
            thread: Some(thread),
            task,
            state,
        })
    }

    /// Stop reading and resolving (the proxy is shutting down); the thread ends within a poll.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }

    /// BEGINs without END currently tracked.
    pub fn open_count(&self) -> usize {
        lock(&self.state).tracker.len()
    }
}

impl Drop for Healer {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn consumer(cfg: &crate::audit::kafka::SinkConfig) -> Result<BaseConsumer, InDoubtError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", cfg.brokers.join(","))
        .set(
            "group.id",
            format!("hindsight-in-doubt.{}", cfg.topic_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("fetch.wait.max.ms", "200");
    for (k, v) in &cfg.librdkafka {
        client.set(k, v);
    }
    client.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
    let consumer: BaseConsumer = client.create().map_err(InDoubtError::Kafka)?;
    Ok(consumer)
}

/// Assign every partition of `topic` from its committed offset (else the beginning), once the
/// brokers list it and answer for the committed offsets. Returns where reading starts in the
/// partitions that have a committed offset (`None`: stopped first). Knowing it, the reader
/// checks its first record too: a broker that hands out a later record first (seen with tansu
/// 0.6.0 under faults, see [`Holes`]) would otherwise move the committed offset past a BEGIN
/// never seen (the chaos suite's BEGIN left open for good, 2026-12-06).
fn assign(consumer: &BaseConsumer, topic: &str, stop: &AtomicBool) -> Option<BTreeMap<i32, i64>> {
    while !stop.load(Ordering::Relaxed) {
        let partitions = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .ok()
            .and_then(|md| {
                let t = md.topics().iter().find(|t| t.name() == topic)?;
                (t.error().is_none() && !t.partitions().is_empty())
                    .then(|| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            });
        if let Some(ps) = partitions {
            match start_offsets(consumer, topic, &ps) {
                Ok((tpl, starts)) => match consumer.assign(&tpl) {
                    Ok(()) => return Some(starts),
                    Err(e) => {
                        tracing::warn!(error = %e, "in-doubt healing: assigning the transaction topic failed; retrying")
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "in-doubt healing: reading the committed offsets failed; retrying")
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    None
}

/// How many offsets before the group's committed offset a replica starts reading. tansu 0.6.0
/// (memory storage) keeps a partition's record batches whole: a fetch from an offset inside a
/// batch hands out the batches after it, and nothing at all inside the last batch, whose
/// high watermark it reports as the batch's first offset + 1. A committed offset is an open
/// BEGIN's (see [`decide::Tracker::commit_offsets`]), often in the middle of a batch; the next
/// replica, starting there, never read that BEGIN, which stayed open for good (the chaos
/// suite, 2026-12-06 and 2026-12-07). Reading from before it gets the whole batch, and what
/// comes before the committed offset is harmless to read again: each BEGIN there has its END
/// there too (the committed offset never passes an open BEGIN), and an END whose BEGIN was
/// not read again closes nothing.
const REREAD_BEFORE_COMMITTED: i64 = 4096;

/// The group's committed offsets of `partitions`: the assignment (from [`REREAD_BEFORE_COMMITTED`]
/// before each committed offset, else the beginning) and the committed ones by partition.
fn start_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> rdkafka::error::KafkaResult<(TopicPartitionList, BTreeMap<i32, i64>)> {
    let mut ask = TopicPartitionList::new();
    for p in partitions {
        ask.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(ask, Duration::from_secs(2))?;
    let mut tpl = TopicPartitionList::new();
    let mut starts = BTreeMap::new();
    for e in committed.elements() {
        let from = match e.offset() {
            Offset::Offset(at) => {
                starts.insert(e.partition(), at);
                Offset::Offset((at - REREAD_BEFORE_COMMITTED).max(0))
            }
            _ => Offset::Beginning,
        };
        tpl.add_partition_offset(topic, e.partition(), from)?;
    }
    Ok((tpl, starts))
}

/// How many times a hole in the transaction topic's offsets is read again before it is taken
/// as it is (see [`Holes`]).
const HOLE_RETRIES: u32 = 5;

/// How far before a hole each try reads again from (see [`Holes::read_again`]).
const HOLE_BACKOFF: [i64; HOLE_RETRIES as usize] = [0, 1, 16, 256, 4096];

/// Offsets the transaction topic skipped while this replica read it. The topic has no control
/// records and no compaction, so a hole means the broker handed out a later record before an
/// earlier one was readable (seen with tansu 0.6.0 under faults): reading on would move the
/// committed offset past a BEGIN never seen, which then stays open forever. The reader goes
/// back before the hole, a bounded number of times, with a pause, before it gives up on it
/// (and says so). Each try starts further back ([`HOLE_BACKOFF`]): tansu 0.6.0 serves a fetch
/// from the first record batch that *starts* at or after the offset asked for, so a record in
/// the middle of a batch is never handed out by a fetch from its own offset (the chaos suite's
/// BEGINs left open for good, 2026-12-06: the committed offset was such a record); reading from
/// an earlier offset gets the whole batch. Records before the hole are read again harmlessly
/// (a BEGIN already open stays one entry, an END closes what it closes).
#[derive(Default)]
struct Holes {
    /// Per partition: the first missing offset and how many times it was read again.
    seen: HashMap<i32, (i64, u32)>,
}

impl Holes {
    /// Whether the record at `offset`, read after `next` was expected, is not taken in now,
    /// and the offset to read again from (further before `next` each try).
    fn read_again(&mut self, partition: i32, next: Option<i64>, offset: i64) -> Option<i64> {
        let next = next.filter(|n| offset > *n)?;
        let tries = match self.seen.get(&partition) {
            Some((at, tries)) if *at == next => *tries,
            _ => 0,
        };
        if tries >= HOLE_RETRIES {
            tracing::warn!(partition, missing_from = next, missing_to = offset - 1, "in-doubt healing: the transaction topic still skips these offsets; reading on (a BEGIN among them would stay open)");
            self.seen.remove(&partition);
            return None;
        }
        tracing::warn!(
            partition,
            missing_from = next,
            missing_to = offset - 1,
            tries,
            "in-doubt healing: the transaction topic skipped offsets; reading them again"
        );
        self.seen.insert(partition, (next, tries + 1));
        Some((next - HOLE_BACKOFF[tries as usize]).max(0))
    }
}

/// The reading thread: every record into the tracker; every `every`, partition ends fetched,
/// revoked partitions dropped and offsets committed.
fn read(consumer: BaseConsumer, state: &Mutex<State>, stop: &AtomicBool, every: Duration) {
    let mut last = std::time::Instant::now() - every;
    let mut holes = Holes::default();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                let next = lock(state).positions.get(&m.partition()).copied();
                if let Some(from) = holes.read_again(m.partition(), next, m.offset()) {
                    let at = Offset::Offset(from);
                    std::thread::sleep(Duration::from_millis(200));
                    if let Err(e) =
                        consumer.seek(m.topic(), m.partition(), at, Duration::from_secs(2))
                    {
                        tracing::debug!(error = %e, "in-doubt healing: seeking back failed; retrying");
                    }
                    continue;
                }
                let mut st = lock(state);
                st.positions.insert(m.partition(), m.offset() + 1);
                match m.payload().map(serde_json::from_slice::<TransactionRecord>) {
                    Some(Ok(r)) => st.tracker.on_record(m.partition(), m.offset(), r),
                    _ => tracing::warn!(partition = m.partition(), offset = m.offset(), "in-doubt healing: a transaction-topic record that is not a transaction record; skipped"),
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "in-doubt healing: reading the transaction topic failed; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if last.elapsed() >= every {
            last = std::time::Instant::now();
            housekeeping(&consumer, state);
        }
    }
}

fn housekeeping(consumer: &BaseConsumer, state: &Mutex<State>) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let assigned: Vec<(String, i32)> = assignment
        .elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    let mut highs = BTreeMap::new();
    for (topic, p) in &assigned {
        if let Ok((_, high)) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(2)) {
            highs.insert(*p, high);
        }
    }
    let commit = {
        let mut st = lock(state);
        let keep: HashSet<i32> = assigned.iter().map(|(_, p)| *p).collect();
        st.tracker.retain_partitions(&keep);
        st.positions.retain(|p, _| keep.contains(p));
        st.highs = highs;
        st.tracker.commit_offsets(&st.positions)
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in &assigned {
        if let Some(at) = commit.get(p) {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*at));
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "in-doubt healing: committing offsets failed; retrying");
        }
    }
}

/// The resolving task.
struct Resolver {
    settings: Settings,
    sink: Arc<KafkaSink>,
    in_flight: Arc<InFlight>,
    metrics: Metrics,
    state: Arc<Mutex<State>>,
    client: Option<tokio_postgres::Client>,
    topic: String,
    /// How the server last started, as last seen.
    incarnation: Option<decide::Incarnation>,
}

impl Resolver {
    async fn run(mut self) {
        let mut topic_ready = false;
        loop {
            tokio::time::sleep(self.settings.interval).await;
            if !self.sink.is_reached() {
                continue;
            }
            if !topic_ready {
                // The group's subscription needs the topic to exist.
                topic_ready = self.sink.ensure_topics([self.topic.as_str()]).await.is_ok();
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "in-doubt healing: will retry");
                self.client = None;
            }
        }
    }

    /// Resolve what is due now. A BEGIN that cannot be decided this time (the server does not
    /// answer) does not hold up the others.
    async fn round(&mut self) -> Result<(), InDoubtError> {
        let now = crate::audit::event::now_ms();
        let due = {
            let st = lock(&self.state);
            let in_flight = &self.in_flight;
            st.tracker.due(
                now,
                &self.settings.policy,
                |id| in_flight.contains(id),
                |p| st.caught_up(p),
            )
        };
        if due.is_empty() {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let st = lock(&self.state);
                tracing::debug!(open = st.tracker.len(), positions = ?st.positions, highs = ?st.highs, "in-doubt healing: nothing due");
            }
            return Ok(());
        }
        let incarnation = self.incarnation().await?;
        for d in due {
            let (open, asked) = match d {
                Due::Ask(open, txid) => {
                    match self.ask(open.begin.ts_ms, txid, &incarnation).await {
                        Ok(asked) => (open, asked),
                        Err(e) if self.client.as_ref().is_some_and(|c| !c.is_closed()) => {
                            tracing::warn!(id = %open.begin.id, error = %e, "in-doubt healing: cannot decide this transaction now; will retry");
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Due::Unknown(open) => (open, Asked::NotAsked),
                Due::Reissued(open) => (open, Asked::Reissued),
            };
            let Some(end) =
                decide::end_for(&open.begin, asked.clone(), &self.settings.resolver, now)
            else {
                tracing::debug!(id = %open.begin.id, ?asked, "in-doubt healing: still in progress on the server; asking again later");
                continue;
            };
            self.publish(end).await?;
        }
        Ok(())
    }

    /// What to make of a BEGIN's txid, given how the server last started (see
    /// [`decide::check`]).
    async fn ask(
        &mut self,
        begin_ts_ms: i64,
        txid: i64,
        now: &decide::Incarnation,
    ) -> Result<Asked, InDoubtError> {
        let check = decide::check(begin_ts_ms, txid, now);
        if check == decide::Check::LostInCrash {
            return Ok(Asked::LostInCrash);
        }
        let status = match self.txid_status(txid).await {
            Ok(s) => s,
            // "transaction ID … is in the future" (SQLSTATE 22023): never durable.
            Err(InDoubtError::TxidStatus { source, .. })
                if source.code()
                    == Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE) =>
            {
                return Ok(Asked::InFuture)
            }
            Err(e) => return Err(e),
        };
        Ok(match (check, status) {
            (decide::Check::DistrustCommitted, Some(s)) if s == "committed" => {
                Asked::Unverifiable(s)
            }
            (_, s) => Asked::Answer(s),
        })
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, InDoubtError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(crate::pgconn::connect_to(&self.settings.database).await?);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// The server's start time and what its latest checkpoint says (see
    /// [`decide::Incarnation::observe`]), merged with what was seen of the same start before.
    async fn incarnation(&mut self) -> Result<decide::Incarnation, InDoubtError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT (extract(epoch FROM pg_postmaster_start_time()) * 1000)::int8, \
                        (extract(epoch FROM c.checkpoint_time) * 1000)::int8, c.next_xid::text \
                 FROM pg_control_checkpoint() c",
                &[],
            )
            .await
            .map_err(InDoubtError::Incarnation)?;
        let next: String = row.get(2);
        let next_txid = next
            .split_once(':')
            .and_then(|(epoch, xid)| {
                Some((epoch.parse::<i64>().ok()? << 32) | xid.parse::<i64>().ok()?)
            })
            .unwrap_or(i64::MAX);
        let seen =
            decide::Incarnation::observe(row.get(0), row.get(1), next_txid).merge(self.incarnation);
        self.incarnation = Some(seen);
        Ok(seen)
    }

    async fn txid_status(&mut self, txid: i64) -> Result<Option<String>, InDoubtError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT txid_status($1::int8)", &[&txid])
            .await
            .map_err(|source| InDoubtError::TxidStatus { txid, source })?;
        Ok(row.get(0))
    }

    async fn publish(&mut self, end: TransactionRecord) -> Result<(), InDoubtError> {
        let record = Record {
            topic: self.topic.clone(),
            key: end.id.clone().into_bytes(),
            payload: serde_json::to_vec(&end).expect("JSON"),
        };
        self.sink
            .publish(&[record])
            .await
            .map_err(InDoubtError::Publish)?;
        lock(&self.state).tracker.close(&end.id);
        let how = match &end.resolution {
            Some(r) => format!(
                "{:?} ({})",
                r.by,
                r.txid_status.as_deref().unwrap_or("null")
            ),
            None => String::new(),
        };
        Event::InDoubtResolved {
            id: &end.id,
            tx_id: end.tx_id,
            outcome: end.commit_status.map_or("none", |c| c.name()),
            how: &how,
        }
        .emit(&self.metrics);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hole_is_read_again_a_bounded_number_of_times() {
        let mut h = Holes::default();
        // No hole: the next offset, or the first record read where nothing was committed.
        assert_eq!(h.read_again(0, Some(5), 5), None);
        assert_eq!(h.read_again(0, None, 9), None);
        // Reading starts at the committed offset (`assign`), so a first record past it is a
        // hole: the BEGIN left open for good in the chaos run of 2026-12-06 was the committed
        // offset's record, and the replica's first record read was the one after it.
        // tansu then hands out the record after it from that offset every time: the second try
        // reads from before it.
        let mut first = Holes::default();
        assert_eq!(first.read_again(0, Some(49_007), 49_008), Some(49_007));
        assert_eq!(first.read_again(0, Some(49_007), 49_008), Some(49_006));
        // Each try from further back, never before 0.
        let froms: Vec<_> = (0..HOLE_RETRIES)
            .map(|_| h.read_again(0, Some(5), 7))
            .collect();
        assert_eq!(froms, [Some(5), Some(4), Some(0), Some(0), Some(0)]);
        assert_eq!(
            h.read_again(0, Some(5), 7),
            None,
            "given up after {HOLE_RETRIES} tries"
        );
        // A new hole starts counting again.
        assert_eq!(h.read_again(0, Some(8), 10), Some(8));
    }
}
