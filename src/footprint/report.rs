//! `hindsight footprint …`: the footprints as the topics hold them, read by the CLI without a
//! running proxy, and the operators' decisions published to the control topic (every replica
//! applies them within a second).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::book::{Book, Decision, Entry};
use super::decide::Mode;
use super::path::PathId;
use super::FootprintError;
use crate::audit::alert::rfc3339;
use crate::audit::compacted;
use crate::audit::kafka::{KafkaSink, SinkConfig};
use crate::control::Control;

/// Read `<prefix>.footprints` and the control topic's decisions to their ends.
pub async fn load(cfg: &SinkConfig, timeout: Duration) -> Result<Book, FootprintError> {
    let book = Arc::new(Mutex::new(Book::default()));
    let prefix = &cfg.topic_prefix;
    let decisions = follow_to_end(
        cfg,
        &format!("{prefix}.{}", crate::audit::kafka::CONTROL),
        timeout,
    )
    .await?;
    let entries = follow_to_end(
        cfg,
        &format!("{prefix}.{}", crate::audit::kafka::FOOTPRINTS),
        timeout,
    )
    .await?;
    let mut b = book.lock().unwrap_or_else(|e| e.into_inner());
    // Decisions in the order they were made (an approval after a forget stands, a forget
    // after an approval removes it), then the entries: a forget keeps out every record whose
    // status was decided before it, whichever topic is read first.
    for (key, value) in decisions {
        let Some(id) = key
            .strip_prefix("path/")
            .and_then(|k| k.parse::<PathId>().ok())
        else {
            continue;
        };
        if let Ok(d) = serde_json::from_slice::<Decision>(&value) {
            b.decide(id, d);
        }
    }
    for (key, value) in entries {
        if let (Ok(id), Ok(e)) = (
            key.parse::<PathId>(),
            serde_json::from_slice::<Entry>(&value),
        ) {
            b.merge(id, e);
        }
    }
    Ok(std::mem::take(&mut *b))
}

/// Every record of a compacted topic up to its end at the start (none if it does not exist).
async fn follow_to_end(
    cfg: &SinkConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(String, Vec<u8>)>, FootprintError> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    let handler = Box::new(move |k: &[u8], v: Option<&[u8]>| {
        if let Some(v) = v {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
        }
    });
    let follow =
        compacted::follow(cfg, topic, handler).map_err(|source| FootprintError::Follow {
            topic: topic.to_string(),
            source,
        })?;
    if !follow.wait_caught_up(timeout).await {
        return Err(FootprintError::NotLoaded {
            topic: topic.to_string(),
            timeout,
            brokers: cfg.brokers.join(","),
        });
    }
    drop(follow);
    let out = std::mem::take(&mut *got.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(out)
}

/// Which entries to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub application: Option<String>,
    /// Only paths first seen at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
}

pub fn select<'a>(book: &'a Book, f: &Filter) -> Vec<&'a Entry> {
    book.entries()
        .into_iter()
        .filter(|e| {
            f.application
                .as_ref()
                .is_none_or(|a| &e.actor.application == a)
        })
        .filter(|e| f.since_ms.is_none_or(|t| e.first_seen_ms >= t))
        .collect()
}

/// Readable lines, grouped by actor.
pub fn render(entries: &[&Entry]) -> String {
    let mut out = String::new();
    let mut last = None;
    for e in entries {
        if last != Some(&e.actor) {
            out.push_str(&format!(
                "application {:?}  user {:?}  database {:?}\n",
                e.actor.application, e.actor.user, e.actor.database
            ));
            last = Some(&e.actor);
        }
        let tags = match (&e.controller, &e.action) {
            (None, None) => String::new(),
            (c, a) => format!(
                "  [{}#{}]",
                c.as_deref().unwrap_or("-"),
                a.as_deref().unwrap_or("-")
            ),
        };
        out.push_str(&format!(
            "  {}  {:<10}  {}  ×{}  first {}  last {}{tags}\n      {}\n",
            e.id,
            e.status.label(),
            e.path.describe(),
            e.total(),
            rfc3339(e.first_seen_ms),
            rfc3339(e.last_seen_ms),
            e.example
        ));
    }
    if entries.is_empty() {
        out.push_str("(no write paths)\n");
    }
    out
}

/// Approve path `id` (it must be in the footprints): known on every replica from now on.
pub async fn approve(cfg: &SinkConfig, id: &str, by: &str) -> Result<Entry, FootprintError> {
    let book = load(cfg, cfg.publish_timeout).await?;
    let pid: PathId = id.parse().map_err(FootprintError::Invalid)?;
    let entry =
        book.get(pid)
            .map(|s| s.entry.clone())
            .ok_or_else(|| FootprintError::UnknownPath {
                id: id.to_string(),
                prefix: cfg.topic_prefix.clone(),
            })?;
    let d = Decision::Approved {
        actor: entry.actor.clone(),
        path: entry.path.clone(),
        by: by.to_string(),
        at_ms: now_ms(),
    };
    decide(cfg, pid, &d).await?;
    Ok(entry)
}

/// Forget path `id`: the next sighting is new again.
pub async fn forget(cfg: &SinkConfig, id: &str) -> Result<(), FootprintError> {
    let pid: PathId = id.parse().map_err(FootprintError::Invalid)?;
    decide(cfg, pid, &Decision::Forgotten { at_ms: now_ms() }).await
}

/// Publish a decision to the control topic.
pub async fn decide(cfg: &SinkConfig, id: PathId, d: &Decision) -> Result<(), FootprintError> {
    let control = Control::new(Arc::new(KafkaSink::connect(cfg.clone()).await?));
    let v = serde_json::to_value(d).expect("JSON serialises");
    control.publish("path", &id.to_string(), Some(&v)).await?;
    Ok(())
}

/// Switch `application`'s mode on every replica (`None`: back to the configured mode).
pub async fn set_mode(
    cfg: &SinkConfig,
    application: &str,
    mode: Option<Mode>,
) -> Result<(), FootprintError> {
    let control = Control::new(Arc::new(KafkaSink::connect(cfg.clone()).await?));
    let v = mode.map(|m| serde_json::json!({ "mode": m.label(), "at_ms": now_ms() }));
    control.publish("mode", application, v.as_ref()).await?;
    Ok(())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time given by an operator: RFC 3339 (`2026-12-04T10:00:00Z`), a date (`2026-12-04`), or
/// milliseconds since the epoch.
pub fn parse_time(t: &str) -> Result<i64, String> {
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    let full = if t.len() == 10 {
        format!("{t}T00:00:00Z")
    } else {
        t.to_string()
    };
    humantime::parse_rfc3339_weak(full.trim_end_matches('Z'))
        .map(|st| {
            st.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
        .map_err(|e| format!("{t:?} is not a time ({e}); use e.g. 2026-12-04T10:00:00Z, 2026-12-04 or milliseconds since the epoch"))
}
