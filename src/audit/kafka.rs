//! The Kafka sink: publishes a transaction's audit records and reports success only once the
//! brokers have acknowledged every one of them (`acks=all`, idempotent producer), so the caller
//! can hold COMMIT until then.
//!
//! Topics are `<prefix>.<schema>.<table>` per table and `<prefix>.transaction` for BEGIN/END
//! records. Missing topics are created through the Admin API (Kafka clusters, and tansu, often
//! do not auto-create), or, when creation is disabled, reported by name.
//!
//! This module knows nothing about sessions or PostgreSQL: it moves bytes to topics.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::oneshot;

/// Where and how audit records are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// First part of every topic name: `<prefix>.<schema>.<table>`, `<prefix>.transaction`.
    pub topic_prefix: String,
    /// Which topic a table's change events go to: `"table"` (default), one topic per table,
    /// `<prefix>.<schema>.<table>`; or `"database"`, every table of a database in one topic,
    /// `<prefix>.changes-<database>` (Debezium's topic-routing transform does the same). A
    /// transaction's records then touch two partitions (the transaction topic's and its
    /// database's) instead of one per table, so each COMMIT waits for fewer produce requests
    /// (librdkafka sends one partition per request), and concurrent COMMITs share requests
    /// (`max.in.flight.requests.per.connection` defaults to 1 under this routing): measured
    /// against per-table topics, +32 % captured commits per second at 1 client and +12–33 % at 8,
    /// with less CPU per transaction in hindsight and the broker (BENCHMARKS.md). Per-row order
    /// is kept (the key names table and row). Events name their table exactly in
    /// `source` either way, and each END lists the topic of every table it touched; restore
    /// and the history read both layouts, also mixed over time.
    pub topic_routing: TopicRouting,
    /// Create missing topics through the Admin API. When false, a missing topic is an error
    /// that names it.
    pub create_topics: bool,
    /// Partitions of topics hindsight creates.
    pub partitions: i32,
    /// Replication factor of topics hindsight creates.
    pub replication_factor: i32,
    /// Largest record hindsight publishes, in bytes (one change event: both images of a row).
    /// A transaction with a larger one is rolled back with HS001, never committed unrecorded.
    /// Sets the producer's `message.max.bytes` and the `max.message.bytes` of topics hindsight
    /// creates; the brokers' own limit (`message.max.bytes`, 1 MB by default on Apache Kafka)
    /// must allow it for topics created otherwise. Default 4 MiB.
    pub max_message_bytes: usize,
    /// How long a transaction's records may take to be acknowledged before the transaction
    /// is rolled back.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Extra librdkafka properties (TLS, SASL, …), passed through unchanged, e.g.
    /// `"security.protocol" = "SASL_SSL"`. `enable.idempotence` and `acks` cannot be weakened.
    /// `max.in.flight.requests.per.connection` (default 2, or 1 with `topic_routing =
    /// "database"`, see [`TopicRouting::default_in_flight`]) may be 1 to 5: librdkafka sends one
    /// partition per request, so 5 pipelines a transaction's topics; fewer let concurrent
    /// transactions' records share requests (group commit) — brokers serve one connection's
    /// requests one after another (tansu, and Kafka too), so pipelining saves only the network's
    /// round trips. Measured on per-table topics at 8 clients: 1 and 2 gave +29–41 % commits
    /// per second and 32–38 % less of hindsight's CPU per transaction than 5; at 1 client 5 %
    /// (2) and 9 % (1) fewer commits per second (BENCHMARKS.md) — measure before changing it.
    pub librdkafka: BTreeMap<String, String>,
    /// Refuse to start when the brokers do not answer at start (the behaviour before 0.x).
    /// Default false: the proxy starts anyway, serves reads, refuses writes with HS001 until
    /// the brokers answer (reported on `/readyz` and `hindsight_broker_reachable`), so a
    /// broker outage during a restart does not take every application's reads down.
    pub require_at_start: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            brokers: Vec::new(),
            topic_prefix: "hindsight".into(),
            topic_routing: TopicRouting::Table,
            create_topics: true,
            partitions: 1,
            replication_factor: 1,
            max_message_bytes: MAX_MESSAGE_BYTES,
            publish_timeout: Duration::from_secs(10),
            librdkafka: BTreeMap::new(),
            require_at_start: false,
        }
    }
}

/// Which topic a table's change events go to (see [`SinkConfig::topic_routing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicRouting {
    /// `<prefix>.<schema>.<table>` ([`table_topic`]).
    Table,
    /// `<prefix>.changes-<database>` ([`database_topic`]).
    Database,
}

impl TopicRouting {
    /// `max.in.flight.requests.per.connection` unless `kafka.librdkafka` sets it. Per table, 2:
    /// a transaction's tables two at a time, and a concurrent COMMIT's records join the next
    /// request of a partition (at 4 and 8 clients +8 % and +32 % commits per second, 9 % and
    /// 34 % less of hindsight's CPU per transaction than 5; 5 % fewer commits per second at 1
    /// client; 1 groups a little more at 8 clients and loses 9 % at 1). Per database, 1: a transaction's
    /// changes are one partition, and while one request is in flight the records of every
    /// COMMIT that arrives meanwhile wait and share the next (group commit) — measured against
    /// 5 on the same routing: 1.5× the commits per second and half of hindsight's CPU per
    /// transaction at 4 and 8 clients, the same at 1 (BENCHMARKS.md).
    pub fn default_in_flight(self) -> &'static str {
        match self {
            TopicRouting::Table => "2",
            TopicRouting::Database => "1",
        }
    }

    /// The topic of a change of `schema.table` in `database`.
    pub fn topic(self, prefix: &str, database: &str, schema: &str, table: &str) -> String {
        match self {
            TopicRouting::Table => table_topic(prefix, schema, table),
            TopicRouting::Database => database_topic(prefix, database),
        }
    }
}

/// Properties that guarantee what the sink promises; configuration may not override them.
const FIXED: [(&str, &str); 2] = [("enable.idempotence", "true"), ("acks", "all")];

/// Default [`SinkConfig::max_message_bytes`]: large TOASTed values (documents, images in bytea)
/// are common in legacy databases, and a write must not be refused just for being big. Not
/// more by default: tansu 0.6 was seen to acknowledge a 6 MB record and then never return it
/// to consumers (records up to ~5 MB read back fine); raise it only for brokers that serve it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// How long a publish waits before queueing again when librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(2);

/// In-flight requests per broker connection: the idempotent producer keeps order only up to 5.
const MAX_IN_FLIGHT: &str = "max.in.flight.requests.per.connection";

/// Why records could not be published. Every message names the brokers or topics concerned.
#[derive(Debug, Error)]
pub enum SinkError {
    #[error("kafka: no brokers configured (set kafka.brokers or --kafka-brokers HOST:PORT)")]
    NoBrokers,
    #[error("kafka: librdkafka refused the configuration: {0}")]
    Config(KafkaError),
    #[error("kafka: property {key:?} cannot be set in kafka.librdkafka: hindsight requires {key}={required} for its delivery guarantee")]
    FixedProperty { key: String, required: String },
    #[error("kafka: brokers {brokers} unreachable within {timeout:?}: {source} (check kafka.brokers and that the broker is running)")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        source: KafkaError,
    },
    #[error("kafka: brokers {brokers} have not answered since hindsight started ({seconds} s ago; last error: {error}); writes are refused until they do (check kafka.brokers and that the broker is running)")]
    NotReached {
        brokers: String,
        seconds: u64,
        error: String,
    },
    #[error("kafka: topics missing and kafka.create_topics is false: {topics:?} (create them, or enable kafka.create_topics)")]
    TopicsMissing { topics: Vec<String> },
    #[error("kafka: creating topic {topic:?} failed: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("kafka: delivery to {topic:?} failed: {source}")]
    Delivery { topic: String, source: KafkaError },
    #[error("kafka: the broker {brokers} answered a retried record to {topic:?} with \"duplicate sequence number\" and no offset, so it cannot be shown to be stored; the transaction is not committed (retry it; if this repeats without network faults, the broker's idempotence is broken)")]
    Unconfirmed { topic: String, brokers: String },
    #[error("kafka: {pending} of {total} records not acknowledged within {timeout:?} (brokers {brokers}; if they are up, a transaction this large may need a longer kafka.publish_timeout)")]
    Timeout {
        pending: usize,
        total: usize,
        timeout: Duration,
        brokers: String,
    },
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The records of one [`KafkaSink::publish`] call still unacknowledged. The delivery callback
/// counts them down and wakes the publishing task once — when the last one is acknowledged or
/// the first one fails — rather than once per record: every wake-up is a switch between
/// librdkafka's thread and the runtime's, and a transaction has several records.
struct Batch {
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<BatchOutcome>>>,
}

/// Every record acknowledged, or the first that was not.
type BatchOutcome = Result<(), Unacked>;

/// Why a record of a [`Batch`] does not count as stored.
enum Unacked {
    /// librdkafka reported the delivery failed: the topic and its error.
    Failed(String, KafkaError),
    /// librdkafka reported success without an offset. It does so only when the broker
    /// answered a retry with DUPLICATE_SEQUENCE_NUMBER, i.e. "an earlier send was stored",
    /// which the broker may say without having stored it: tansu 0.6.0 advances a producer's
    /// sequence before it writes the batch, so a send cut off between the two is never stored
    /// and its retry is "a duplicate" (the chaos suite's lost commits). Apache Kafka answers a
    /// retry of one of the last five batches with the original offset, so this is rare there.
    NoOffset(String),
}

impl Batch {
    fn finish(&self, outcome: BatchOutcome) {
        let sender = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = sender {
            let _ = tx.send(outcome);
        }
    }
}

/// Routes librdkafka's delivery reports to their [`Batch`].
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Batch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Batch>) {
        match result {
            Ok(message) if message.offset() < 0 => {
                batch.finish(Err(Unacked::NoOffset(message.topic().to_string())));
            }
            Ok(message) => {
                tracing::debug!(
                    target: "hindsight::audit::delivery",
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    key = %String::from_utf8_lossy(message.key().unwrap_or_default()),
                    "acknowledged"
                );
                if batch.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    batch.finish(Ok(()));
                }
            }
            Err((error, message)) => {
                batch.finish(Err(Unacked::Failed(
                    message.topic().to_string(),
                    error.clone(),
                )));
            }
        }
    }
}

/// Whether the brokers have answered since the sink was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Not yet: every publish fails at once with [`SinkError::NotReached`] (instead of
    /// waiting `publish_timeout` each), and compacted topics asked for are created later.
    NotYet {
        since: std::time::Instant,
        error: String,
    },
    /// They answered (later outages show as publish failures, not here).
    Reached,
}

/// A producer plus the set of topics known to exist.
pub struct KafkaSink {
    cfg: SinkConfig,
    brokers: String,
    /// Replaced when librdkafka reports a fatal error (see [`KafkaSink::renew_if_fatal`]).
    producer: std::sync::RwLock<ThreadedProducer<Deliveries>>,
    /// What the producer was made from, to make another.
    client: ClientConfig,
    /// How many times the producer was replaced: a failure renews only the producer it saw.
    generation: std::sync::atomic::AtomicU64,
    admin: AdminClient<DefaultClientContext>,
    known_topics: Mutex<HashSet<String>>,
    reach: tokio::sync::watch::Sender<Reach>,
    /// Compacted topics asked for before the brokers answered: created when they do.
    pending_compacted: Mutex<Vec<String>>,
}

impl KafkaSink {
    /// Build the producer and check, within `publish_timeout`, that the brokers answer.
    /// Fails here, with the broker list in the message, rather than at the first write.
    pub async fn connect(cfg: SinkConfig) -> Result<Self, SinkError> {
        let sink = Self::new(cfg)?;
        let timeout = sink.cfg.publish_timeout;
        sink.try_reach(timeout).await?;
        Ok(sink)
    }

    /// Build the producer without contacting the brokers: [`Reach::NotYet`] until
    /// [`KafkaSink::try_reach`] succeeds. Only configuration errors fail here.
    pub fn new(cfg: SinkConfig) -> Result<Self, SinkError> {
        if cfg.brokers.is_empty() {
            return Err(SinkError::NoBrokers);
        }
        let brokers = cfg.brokers.join(",");
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &brokers);
        client.set(
            "message.timeout.ms",
            cfg.publish_timeout.as_millis().to_string(),
        );
        client.set("linger.ms", "0");
        client.set("message.max.bytes", cfg.max_message_bytes.to_string());
        for (k, v) in &cfg.librdkafka {
            if let Some((_, required)) = FIXED.iter().find(|(f, _)| f == k) {
                if v != required {
                    return Err(SinkError::FixedProperty {
                        key: k.clone(),
                        required: required.to_string(),
                    });
                }
            }
            if k == MAX_IN_FLIGHT && !matches!(v.parse::<u32>(), Ok(1..=5)) {
                return Err(SinkError::FixedProperty {
                    key: k.clone(),
                    required: "1 to 5".into(),
                });
            }
            client.set(k, v);
        }
        for (k, v) in FIXED {
            client.set(k, v);
        }
        if !cfg.librdkafka.contains_key(MAX_IN_FLIGHT) {
            client.set(MAX_IN_FLIGHT, cfg.topic_routing.default_in_flight());
        }
        let producer: ThreadedProducer<Deliveries> = client
            .create_with_context(Deliveries)
            .map_err(SinkError::Config)?;
        let admin: AdminClient<DefaultClientContext> =
            client.create().map_err(SinkError::Config)?;
        let (reach, _) = tokio::sync::watch::channel(Reach::NotYet {
            since: std::time::Instant::now(),
            error: "not tried yet".into(),
        });
        Ok(KafkaSink {
            known_topics: Mutex::new(HashSet::new()),
            cfg,
            brokers,
            producer: std::sync::RwLock::new(producer),
            client,
            generation: std::sync::atomic::AtomicU64::new(0),
            admin,
            reach,
            pending_compacted: Mutex::new(Vec::new()),
        })
    }

    /// Ask the brokers for their topics (within `timeout`). The first success turns the sink
    /// [`Reach::Reached`] and creates the compacted topics asked for until then.
    pub async fn try_reach(&self, timeout: Duration) -> Result<(), SinkError> {
        match self.refresh_topics_within(timeout).await {
            Ok(()) => {
                if self.reach.send_replace(Reach::Reached) != Reach::Reached {
                    let pending = std::mem::take(&mut *lock(&self.pending_compacted));
                    for topic in pending {
                        if let Err(e) = self.ensure_compacted(&topic).await {
                            tracing::error!(%topic, error = %e, "creating a compacted topic after the brokers answered failed");
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.reach.send_modify(|r| {
                    if let Reach::NotYet { error, .. } = r {
                        *error = e.to_string();
                    }
                });
                Err(e)
            }
        }
    }

    /// Whether the brokers answered since the sink was made (a receiver that sees changes).
    pub fn reach(&self) -> tokio::sync::watch::Receiver<Reach> {
        self.reach.subscribe()
    }

    pub fn is_reached(&self) -> bool {
        *self.reach.borrow() == Reach::Reached
    }

    /// [`SinkError::NotReached`] while the brokers have not answered yet.
    fn check_reached(&self) -> Result<(), SinkError> {
        match &*self.reach.borrow() {
            Reach::Reached => Ok(()),
            Reach::NotYet { since, error } => Err(SinkError::NotReached {
                brokers: self.brokers.clone(),
                seconds: since.elapsed().as_secs(),
                error: error.clone(),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &SinkConfig {
        &self.cfg
    }

    /// `<prefix>.<schema>.<table>` (see [`table_topic`]).
    pub fn table_topic(&self, schema: &str, table: &str) -> String {
        table_topic(&self.cfg.topic_prefix, schema, table)
    }

    /// The topic of a change of `schema.table` in `database`, by `kafka.topic_routing`.
    pub fn change_topic(&self, database: &str, schema: &str, table: &str) -> String {
        self.cfg
            .topic_routing
            .topic(&self.cfg.topic_prefix, database, schema, table)
    }

    /// `<prefix>.transaction`.
    pub fn transaction_topic(&self) -> String {
        format!("{}.transaction", self.cfg.topic_prefix)
    }

    /// Read the broker's topic list into the known set (also the reachability check).
    async fn refresh_topics(&self) -> Result<(), SinkError> {
        self.refresh_topics_within(self.cfg.publish_timeout).await
    }

    async fn refresh_topics_within(&self, timeout: Duration) -> Result<(), SinkError> {
        let producer = self.producer();
        let metadata =
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
                .await
                .expect("metadata task does not panic")
                .map_err(|source| SinkError::Unreachable {
                    brokers: self.brokers.clone(),
                    timeout,
                    source,
                })?;
        let mut known = self.known();
        for t in metadata.topics() {
            if t.error().is_none() {
                known.insert(t.name().to_string());
            }
        }
        Ok(())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        lock(&self.known_topics)
    }

    /// Make sure every topic exists: create the missing ones, or fail naming them.
    pub async fn ensure_topics<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), SinkError> {
        let missing: Vec<String> = {
            let known = self.known();
            let mut m: Vec<String> = topics
                .into_iter()
                .filter(|t| !known.contains(*t))
                .map(str::to_string)
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if missing.is_empty() {
            return Ok(());
        }
        if !self.cfg.create_topics {
            // Someone may have created them since we last looked.
            self.refresh_topics().await?;
            let known = self.known();
            let still: Vec<String> = missing.into_iter().filter(|t| !known.contains(t)).collect();
            return if still.is_empty() {
                Ok(())
            } else {
                Err(SinkError::TopicsMissing { topics: still })
            };
        }
        let max_message = self.cfg.max_message_bytes.to_string();
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.cfg.partitions,
                    TopicReplication::Fixed(self.cfg.replication_factor),
                )
                .set("max.message.bytes", &max_message)
            })
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(self.cfg.publish_timeout));
        let results = self
            .admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|e| SinkError::CreateTopic {
                topic: missing.join(","),
                reason: e.to_string(),
            })?;
        let mut known = self.known();
        for r in results {
            match r {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(topic = %name, "kafka topic ready");
                    known.insert(name);
                }
                Err((topic, code)) => {
                    return Err(SinkError::CreateTopic {
                        topic,
                        reason: code.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Make sure a compacted topic exists (one partition: its records keep one order for every
    /// reader; `cleanup.policy=compact`: the latest record per key is kept for good).
    pub async fn ensure_compacted(&self, topic: &str) -> Result<(), SinkError> {
        if self.known().contains(topic) {
            return Ok(());
        }
        if let Err(e) = self.check_reached() {
            let mut pending = lock(&self.pending_compacted);
            if !pending.iter().any(|t| t == topic) {
                pending.push(topic.to_string());
            }
            return Err(e);
        }
        if !self.cfg.create_topics {
            return self.ensure_topics([topic]).await;
        }
        let new = NewTopic::new(
            topic,
            1,
            TopicReplication::Fixed(self.cfg.replication_factor),
        )
        .set("cleanup.policy", "compact");
        let opts = AdminOptions::new().request_timeout(Some(self.cfg.publish_timeout));
        let results =
            self.admin
                .create_topics([&new], &opts)
                .await
                .map_err(|e| SinkError::CreateTopic {
                    topic: topic.to_string(),
                    reason: e.to_string(),
                })?;
        for r in results {
            match r {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    self.known().insert(name);
                }
                Err((topic, code)) => {
                    return Err(SinkError::CreateTopic {
                        topic,
                        reason: code.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    fn producer(&self) -> ThreadedProducer<Deliveries> {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failed publish: if librdkafka reports a fatal error (an idempotent producer
    /// fenced or out of sequence, seen with tansu after the network to it was cut), the
    /// producer can never deliver again; make a new one, so one broker hiccup does not refuse
    /// every later write until hindsight restarts. What the old one held was not acknowledged:
    /// those transactions were rolled back, or their END is healed (see `in_doubt`).
    /// Only what librdkafka itself declares fatal: a per-record ProducerFenced that it does not
    /// (tansu answers so after a network cut) leaves the producer in place, and writes are
    /// refused (HS001) until hindsight restarts. Renewing on those too was tried, and the chaos
    /// suite then saw an acknowledged commit with no event at all right after a renewal: until
    /// that is understood, refusing is the safe side.
    fn renew_if_fatal(&self, generation: u64) {
        let Some((code, reason)) = self.producer().client().fatal_error() else {
            return;
        };
        let mut slot = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return; // another failed publish renewed it already
        }
        match self.client.create_with_context(Deliveries) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *slot, fresh);
                self.generation.fetch_add(1, Ordering::AcqRel);
                drop(slot);
                // Dropping purges what it holds (failing those publishes) and waits up to
                // 500 ms: not on the runtime's threads.
                std::thread::spawn(move || drop(old));
                tracing::error!(?code, %reason, brokers = %self.brokers, "kafka producer hit a fatal error; replaced it with a new one");
            }
            Err(e) => {
                tracing::error!(?code, %reason, error = %e, "kafka producer hit a fatal error and a new one could not be made; retrying at the next publish");
            }
        }
    }

    /// TEST ONLY: make librdkafka raise a fatal error on the current producer (what a fenced
    /// idempotent producer raises), through its own test hook `rd_kafka_test_fatal_error`.
    #[doc(hidden)]
    pub fn inject_fatal_error_for_tests(&self) {
        let producer = self.producer();
        let reason =
            std::ffi::CString::new("hindsight test: injected fatal error").expect("no NUL");
        // SAFETY: the pointer is the live producer's handle (held by `producer` for the call);
        // librdkafka copies the reason.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_PRODUCER_FENCED,
                reason.as_ptr(),
            );
        }
    }

    /// Publish `records` and wait until the brokers acknowledged all of them, or fail.
    /// Records with the same topic and key keep their order (one partition, idempotent producer).
    pub async fn publish(&self, records: &[Record]) -> Result<(), SinkError> {
        let generation = self.generation.load(Ordering::Acquire);
        let outcome = self.publish_once(records).await;
        if outcome.is_err() {
            self.renew_if_fatal(generation);
        }
        outcome
    }

    async fn publish_once(&self, records: &[Record]) -> Result<(), SinkError> {
        self.check_reached()?;
        self.ensure_topics(records.iter().map(|r| r.topic.as_str()))
            .await?;
        if records.is_empty() {
            return Ok(());
        }
        let total = records.len();
        let (tx, rx) = oneshot::channel();
        let batch = Arc::new(Batch {
            remaining: AtomicUsize::new(total),
            done: Mutex::new(Some(tx)),
        });
        let deadline = tokio::time::Instant::now() + self.cfg.publish_timeout;
        let producer = self.producer();
        for r in records {
            let mut record = BaseRecord::with_opaque_to(&r.topic, Arc::clone(&batch))
                .key(&r.key)
                .payload(&r.payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    // librdkafka's queue (`queue.buffering.max.messages`, 100,000 by default)
                    // is full: a large transaction waits for room as the broker acknowledges
                    // what is queued, rather than fail for being large.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        record = back;
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        return Err(SinkError::Timeout {
                            pending: batch.remaining.load(Ordering::Acquire),
                            total,
                            timeout: self.cfg.publish_timeout,
                            brokers: self.brokers.clone(),
                        });
                    }
                    Err((source, _)) => {
                        // Records already queued still go out; the caller fails the
                        // transaction (its END record says so).
                        return Err(SinkError::Delivery {
                            topic: r.topic.clone(),
                            source,
                        });
                    }
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(Unacked::Failed(topic, source)))) => {
                Err(SinkError::Delivery { topic, source })
            }
            Ok(Ok(Err(Unacked::NoOffset(topic)))) => Err(SinkError::Unconfirmed {
                topic,
                brokers: self.brokers.clone(),
            }),
            Ok(Err(_dropped)) => Err(SinkError::Delivery {
                topic: records[0].topic.clone(),
                source: KafkaError::Canceled,
            }),
            Err(_) => Err(SinkError::Timeout {
                pending: batch.remaining.load(Ordering::Acquire),
                total,
                timeout: self.cfg.publish_timeout,
                brokers: self.brokers.clone(),
            }),
        }
    }

    /// Wait for anything still queued (used on shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer().flush(timeout);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Topic suffix (and data collection name) of statement-level events (DDL, opaque).
pub const STATEMENTS: &str = "statements";

/// Topic suffixes of hindsight's own compacted and alert topics (`<prefix>.footprints`,
/// `<prefix>.control`, `<prefix>.alerts`): not change topics.
pub const FOOTPRINTS: &str = "footprints";
pub const CONTROL: &str = "control";
pub const ALERTS: &str = "alerts";

/// The start of a database's change topic after `<prefix>.` ([`database_topic`]).
pub const DATABASE_TOPIC: &str = "changes-";

/// Whether `rest` (a topic name after `<prefix>.`) holds row change events: a table's topic
/// (always `<schema>.<table>`, so it holds a dot) or a database's (`changes-<database>`, with
/// no dot); `transaction`, `statements` and the control topics are neither.
pub fn is_change_topic(rest: &str) -> bool {
    rest.contains('.') || is_database_topic(rest)
}

/// Whether `rest` (a topic name after `<prefix>.`) is a database's change topic: it may hold
/// any table's events.
pub fn is_database_topic(rest: &str) -> bool {
    rest.starts_with(DATABASE_TOPIC) && !rest.contains('.')
}

/// The topic of every change event of `database` under [`TopicRouting::Database`]:
/// `<prefix>.changes-<database>`, characters Kafka does not allow (and dots, which would make
/// it look like a table's topic) replaced by `_`.
pub fn database_topic(prefix: &str, database: &str) -> String {
    let name: String = database
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    format!("{prefix}.{DATABASE_TOPIC}{name}")
}

/// The topic of a table's change events: `<prefix>.<schema>.<table>`, with every character
/// Kafka does not allow in a topic name (only ASCII letters, digits, `.`, `_` and `-`) replaced
/// by `_`, as Debezium does. PostgreSQL allows any name (`"Order Details"`, `"größe"`), and
/// Kafka refuses to create a topic named so — every write to such a table would be refused.
/// Two tables may then share a topic; each event names its table exactly in `source`.
pub fn table_topic(prefix: &str, schema: &str, table: &str) -> String {
    let legal = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
                _ => '_',
            })
            .collect()
    };
    format!("{prefix}.{}.{}", legal(schema), legal(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_topics_are_change_topics_and_never_look_like_a_tables() {
        assert_eq!(database_topic("hs", "shop"), "hs.changes-shop");
        assert_eq!(
            database_topic("hs", "my.db größe"),
            "hs.changes-my_db_gr__e"
        );
        for rest in [
            "changes-shop",
            "changes-my_db_gr__e",
            "public.orders",
            "changes.x",
        ] {
            assert!(is_change_topic(rest), "{rest}");
        }
        for rest in [
            "transaction",
            STATEMENTS,
            FOOTPRINTS,
            CONTROL,
            ALERTS,
            "changes",
        ] {
            assert!(!is_change_topic(rest), "{rest}");
        }
        assert!(is_database_topic("changes-shop"));
        assert!(!is_database_topic("changes.shop"));
        assert_eq!(
            TopicRouting::Database.topic("hs", "shop", "public", "orders"),
            "hs.changes-shop"
        );
        assert_eq!(
            TopicRouting::Table.topic("hs", "shop", "public", "orders"),
            "hs.public.orders"
        );
    }

    #[test]
    fn table_topics_hold_only_what_kafka_allows() {
        assert_eq!(table_topic("hs", "public", "brieff"), "hs.public.brieff");
        assert_eq!(
            table_topic("hs", "Sales Dept", "Order Details"),
            "hs.Sales_Dept.Order_Details"
        );
        assert_eq!(
            table_topic("hs", "public", "größe/名簿"),
            "hs.public.gr__e___"
        );
    }
}
