//! Control state shared by every replica in front of one database: feature flags, kill
//! switches, footprint approvals and modes, as records of the compacted topic
//! `<prefix>.control` that every replica follows.
//!
//! A change is acknowledged to the operator only once the brokers have it
//! ([`Control::publish`]); every replica (the one that published it too) applies it when it
//! reads it back, within a poll interval (100 ms). Keys are `<kind>/<name>`; the owner of a kind
//! (the gates for `flag/` and `kill/`, footprints for `path/` and `mode/`) registers a
//! [`Subscriber`] for it. This module knows nothing of what the values mean.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use crate::audit::compacted::{self, Follow};
use crate::audit::kafka::{KafkaSink, Record, SinkError};

/// Why a control change could not be made.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control topic {topic}: {source} (the change was not made; retry when the brokers are reachable)")]
    Publish { topic: String, source: SinkError },
    #[error("control topic {topic}: cannot follow it: {source}")]
    Follow {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
}

/// Receives the records of one key kind: the key after `<kind>/`, and the value (`None` when
/// the record is a deletion).
pub type Subscriber = Box<dyn Fn(&str, Option<serde_json::Value>) + Send + Sync>;

/// The control topic of one proxy.
pub struct Control {
    sink: Arc<KafkaSink>,
    topic: String,
    follow: Mutex<Option<Follow>>,
}

impl Control {
    pub fn new(sink: Arc<KafkaSink>) -> Arc<Control> {
        let topic = format!(
            "{}.{}",
            sink.config().topic_prefix,
            crate::audit::kafka::CONTROL
        );
        Arc::new(Control {
            sink,
            topic,
            follow: Mutex::new(None),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publish `kind/name` = `value` (`None`: delete) and wait for the brokers' acknowledgement.
    pub async fn publish(
        &self,
        kind: &str,
        name: &str,
        value: Option<&serde_json::Value>,
    ) -> Result<(), ControlError> {
        let err = |source| ControlError::Publish {
            topic: self.topic.clone(),
            source,
        };
        self.sink.ensure_compacted(&self.topic).await.map_err(err)?;
        let payload = match value {
            Some(v) => serde_json::to_vec(v).expect("JSON serialises"),
            None => b"null".to_vec(),
        };
        let record = Record {
            topic: self.topic.clone(),
            key: format!("{kind}/{name}").into_bytes(),
            payload,
        };
        self.sink.publish(&[record]).await.map_err(err)
    }

    /// Start following; each record goes to the subscriber of its kind. Waits up to `wait`
    /// for the records already in the topic (`false` if that timed out: the replica then
    /// starts from its local caches and catches up when the brokers answer).
    pub async fn start(
        &self,
        subscribers: Vec<(&'static str, Subscriber)>,
        wait: Duration,
    ) -> Result<bool, ControlError> {
        if let Err(e) = self.sink.ensure_compacted(&self.topic).await {
            tracing::warn!(topic = %self.topic, error = %e, "control topic not ready; following it anyway");
        }
        let handler = Box::new(move |key: &[u8], payload: Option<&[u8]>| {
            let key = String::from_utf8_lossy(key);
            let Some((kind, name)) = key.split_once('/') else {
                tracing::warn!(%key, "control record with a key hindsight does not know; ignored");
                return;
            };
            let value = payload
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .filter(|v| !v.is_null());
            match subscribers.iter().find(|(k, _)| *k == kind) {
                Some((_, s)) => s(name, value),
                None => tracing::debug!(%key, "control record of a kind this replica does not use"),
            }
        });
        let follow =
            compacted::follow(self.sink.config(), &self.topic, handler).map_err(|source| {
                ControlError::Follow {
                    topic: self.topic.clone(),
                    source,
                }
            })?;
        let caught_up = follow.wait_caught_up(wait).await;
        *self.follow.lock().unwrap_or_else(|e| e.into_inner()) = Some(follow);
        Ok(caught_up)
    }

    /// Stop following (the proxy is shutting down).
    pub fn stop(&self) {
        self.follow.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
