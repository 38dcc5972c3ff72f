//! Following a compacted topic (`<prefix>.footprints`, `<prefix>.control`): every record from
//! the oldest one kept, in order, then new ones as they arrive, handed to a callback on a
//! thread of its own. `caught_up` turns true once every record that existed when following
//! started was handed over, so a replica can load the shared state before it serves.
//!
//! Knows nothing of what the records mean.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::kafka::SinkConfig;

/// How long one poll waits; also how soon a stopped follower notices.
const POLL: Duration = Duration::from_millis(100);

/// A running follower; dropping it stops the thread.
pub struct Follow {
    caught_up: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follow {
    /// Wait until the records present at the start were handed over, up to `timeout`.
    /// `false` when it timed out (the brokers are unreachable or slow).
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let mut rx = self.caught_up.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A receiver that turns true once caught up.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.caught_up.clone()
    }

    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }
}

impl Drop for Follow {
    /// Stops the thread and waits for it (at most one poll, 100 ms), so that its consumer is
    /// closed when this returns: a caller that deletes topics next must not race it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The owner may be dropped by the follower's own callback: never join oneself.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// One record: its key and its payload (`None`: a tombstone).
pub type Handler = Box<dyn FnMut(&[u8], Option<&[u8]>) + Send>;

/// Follow partition 0 of `topic` (compacted topics have one) from its beginning.
pub fn follow(
    cfg: &SinkConfig,
    topic: &str,
    handler: Handler,
) -> Result<Follow, rdkafka::error::KafkaError> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", cfg.brokers.join(","))
        .set(
            "group.id",
            format!("hindsight-follow-{topic}-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in &cfg.librdkafka {
        client.set(k, v);
    }
    client.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
    let consumer: BaseConsumer = client.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let (tx, rx) = watch::channel(false);
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let topic = topic.to_string();
    let thread = std::thread::Builder::new()
        .name(format!("follow-{topic}"))
        .spawn(move || run(consumer, &topic, handler, &tx, &stopping))
        .expect("a thread can be started");
    Ok(Follow {
        caught_up: rx,
        stop,
        thread: Some(thread),
    })
}

/// The end offset at the start, asked until the brokers answer (or the follower stops).
fn start_end(consumer: &BaseConsumer, topic: &str, stop: &AtomicBool) -> Option<i64> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(2)) {
            Ok((_, high)) => return Some(high),
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot read the end of a shared-state topic; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn run(
    consumer: BaseConsumer,
    topic: &str,
    mut handler: Handler,
    caught_up: &watch::Sender<bool>,
    stop: &AtomicBool,
) {
    let Some(end) = start_end(&consumer, topic, stop) else {
        return;
    };
    if end <= 0 {
        let _ = caught_up.send(true);
    }
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(POLL) {
            None => {}
            Some(Ok(m)) => {
                handler(m.key().unwrap_or_default(), m.payload());
                if m.offset() + 1 >= end && !*caught_up.borrow() {
                    let _ = caught_up.send(true);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(topic, error = %e, "reading a shared-state topic failed; retrying");
                std::thread::sleep(POLL);
            }
        }
    }
}
