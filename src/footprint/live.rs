//! The live footprints of one proxy: the book, the modes, and their topics. The capture client
//! asks [`Footprints::observe`] before each write runs (a lookup of its paths: read lock, hash,
//! atomics) and [`Footprints::observe_nulls`] at COMMIT; news (a path never seen) is recorded
//! and published at once, alerts go to `<prefix>.alerts` and the webhook off the statement's
//! path, counts and last sightings are published every `flush_interval`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::alerts::{build, AlertFacts};
use super::book::{Book, Decision, Entry, Status};
use super::decide::{self, Mode, Modes, Outcome};
use super::path::{self, Actor, ActorRef, Path, PathId};
use super::webhook::Webhook;
use crate::audit::alert::{Alert, AlertKind};
use crate::audit::compacted::{self, Follow};
use crate::audit::kafka::{KafkaSink, Record};
use crate::control::Subscriber;
use crate::statement::{Kind, Write};
use crate::telemetry::events::Event;
use crate::telemetry::Metrics;

/// One write as the footprints see it, before it runs.
pub struct WriteFacts<'a> {
    pub actor: ActorRef<'a>,
    pub kind: Kind,
    pub writes: &'a [Write],
    pub fingerprint: &'a str,
    pub tags: &'a BTreeMap<String, String>,
    /// The statement, already redacted like events' statements (only read for news).
    pub example: &'a dyn Fn() -> String,
}

/// The outcome for a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    Pass,
    /// `enforce`: the statement takes a path outside the footprint.
    Refuse(Refusal),
}

/// Why a statement was refused, for the client's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub id: PathId,
    pub application: String,
    pub path: String,
}

/// A nulled column seen at COMMIT: table, column, the first row's before value and key, and
/// how many rows.
pub struct Nulled {
    pub table: String,
    pub column: String,
    pub before: serde_json::Value,
    pub key: serde_json::Value,
    pub rows: u64,
}

/// Settings of the live footprints (from `[footprints]`).
pub struct Settings {
    pub replica: String,
    pub modes: Modes,
    pub flush_interval: Duration,
    pub load_timeout: Duration,
}

pub struct Footprints {
    replica: String,
    book: RwLock<Book>,
    modes: RwLock<Modes>,
    sink: Arc<KafkaSink>,
    topic: String,
    alerts_topic: String,
    webhook: Option<Webhook>,
    metrics: Metrics,
    /// The footprints topic was read to its end once: until then nothing is alerted or refused
    /// (every path would look new).
    loaded: AtomicBool,
    follow: Mutex<Option<Follow>>,
    /// Entries whose publication failed, retried at the next flush.
    unpublished: Arc<Mutex<Vec<Entry>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Footprints {
    /// Follow `<prefix>.footprints` (waiting up to `load_timeout` for what it holds) and start
    /// the flush task.
    pub async fn start(
        settings: Settings,
        sink: Arc<KafkaSink>,
        webhook: Option<Webhook>,
        metrics: Metrics,
    ) -> Arc<Footprints> {
        let prefix = sink.config().topic_prefix.clone();
        let me = Arc::new(Footprints {
            replica: settings.replica,
            book: RwLock::new(Book::default()),
            modes: RwLock::new(settings.modes),
            topic: format!("{prefix}.{}", crate::audit::kafka::FOOTPRINTS),
            alerts_topic: format!("{prefix}.{}", crate::audit::kafka::ALERTS),
            sink,
            webhook,
            metrics,
            loaded: AtomicBool::new(false),
            follow: Mutex::new(None),
            unpublished: Arc::default(),
        });
        me.follow(settings.load_timeout).await;
        let weak = Arc::downgrade(&me);
        let every = settings.flush_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = weak.upgrade() else { return };
                if lock(&me.follow).is_none() {
                    return;
                }
                me.flush().await;
            }
        });
        me
    }

    async fn follow(self: &Arc<Self>, wait: Duration) {
        if let Err(e) = self.sink.ensure_compacted(&self.topic).await {
            tracing::warn!(topic = %self.topic, error = %e, "footprints topic not ready; following it anyway");
        }
        let weak = Arc::downgrade(self);
        let handler = Box::new(move |key: &[u8], payload: Option<&[u8]>| {
            let Some(me) = weak.upgrade() else { return };
            me.on_record(key, payload);
        });
        let follow = match compacted::follow(self.sink.config(), &self.topic, handler) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(topic = %self.topic, error = %e, "cannot follow the footprints topic; footprints stay off");
                return;
            }
        };
        if follow.wait_caught_up(wait).await {
            self.loaded.store(true, Ordering::Relaxed);
            tracing::info!(paths = self.read().len(), "footprints loaded");
        } else {
            tracing::warn!(topic = %self.topic, ?wait, "footprints not loaded yet (brokers slow or down): no alerts or refusals until they are");
            let me = Arc::downgrade(self);
            let mut rx = follow.ready();
            tokio::spawn(async move {
                let _ = rx.wait_for(|c| *c).await;
                if let Some(me) = me.upgrade() {
                    me.loaded.store(true, Ordering::Relaxed);
                    tracing::info!("footprints loaded");
                }
            });
        }
        *lock(&self.follow) = Some(follow);
    }

    fn on_record(&self, key: &[u8], payload: Option<&[u8]>) {
        let Some(id) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.parse::<PathId>().ok())
        else {
            tracing::warn!(key = %String::from_utf8_lossy(key), "footprints record with a key that is not a path id; ignored");
            return;
        };
        match payload.map(serde_json::from_slice::<Entry>) {
            Some(Ok(e)) => {
                self.write().merge(id, e);
            }
            Some(Err(e)) => {
                tracing::warn!(%id, error = %e, "unreadable footprints record; ignored")
            }
            None => {}
        }
    }

    /// The subscribers of the control topic's `path/` and `mode/` records.
    pub fn subscribers(self: &Arc<Self>) -> Vec<(&'static str, Subscriber)> {
        let me = Arc::downgrade(self);
        let paths: Subscriber = Box::new(move |name, value| {
            let Some(me) = me.upgrade() else { return };
            let (Ok(id), Some(v)) = (name.parse::<PathId>(), value) else {
                return;
            };
            match serde_json::from_value::<Decision>(v) {
                Ok(d) => me.write().decide(id, d),
                Err(e) => tracing::warn!(%id, error = %e, "unreadable footprint decision; ignored"),
            }
        });
        let me = Arc::downgrade(self);
        let modes: Subscriber = Box::new(move |app, value| {
            let Some(me) = me.upgrade() else { return };
            let mode = value
                .as_ref()
                .and_then(|v| v.get("mode"))
                .and_then(|m| m.as_str())
                .and_then(Mode::parse);
            let mut modes = me.modes.write().unwrap_or_else(|e| e.into_inner());
            match mode {
                Some(m) => modes.switched.insert(app.to_string(), m),
                None => modes.switched.remove(app),
            };
        });
        vec![("path", paths), ("mode", modes)]
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Book> {
        self.book.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Book> {
        self.book.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// The mode in force for `application` now.
    pub fn mode(&self, application: &str) -> Mode {
        let first = self.read().app_first_seen(application);
        let modes = self.modes.read().unwrap_or_else(|e| e.into_inner());
        decide::mode_for(&modes, application, first, now_ms())
    }

    /// Every application's mode (configured, switched, and those with a footprint).
    pub fn modes(&self) -> BTreeMap<String, Mode> {
        let mut apps: Vec<String> = self
            .read()
            .entries()
            .iter()
            .map(|e| e.actor.application.clone())
            .collect();
        {
            let m = self.modes.read().unwrap_or_else(|e| e.into_inner());
            apps.extend(m.configured.keys().cloned());
            apps.extend(m.switched.keys().cloned());
        }
        apps.into_iter()
            .map(|a| (a.clone(), self.mode(&a)))
            .collect()
    }

    /// A write about to run: look up its paths; record, alert or refuse what is new.
    pub fn observe(&self, f: &WriteFacts) -> Sighting {
        if !self.is_loaded() {
            return Sighting::Pass;
        }
        let now = now_ms();
        let mode = self.mode(f.actor.application);
        let news = sightings(&self.read(), f, mode, now);
        if news.is_empty() {
            return Sighting::Pass;
        }
        self.record_news(f, mode, now, news)
    }

    fn record_news(&self, f: &WriteFacts, mode: Mode, now: i64, news: Vec<News>) -> Sighting {
        let actor = f.actor.owned();
        let example = (f.example)();
        let mut refusal = None;
        for News { id, path, outcome } in news {
            let (status, alert) = match outcome {
                Outcome::Quiet => continue,
                Outcome::Learn => (Status::Learned, false),
                Outcome::Alert => (Status::Unapproved, true),
                Outcome::Refuse { first } => (Status::Unapproved, first),
            };
            if let Outcome::Refuse { .. } = outcome {
                refusal.get_or_insert(Refusal {
                    id,
                    application: actor.application.clone(),
                    path: path.describe(),
                });
                self.metrics
                    .footprint_refusals
                    .with_label_values(&[&actor.application, path.table()])
                    .inc();
            }
            let entry = self.entry(id, &actor, &path, status, now, &example, f.tags);
            self.publish_entry(entry);
            if alert {
                let a = build(AlertFacts {
                    kind: AlertKind::NewWritePath,
                    id,
                    actor: &actor,
                    path: &path,
                    example: &example,
                    tags: f.tags,
                    ts_ms: now,
                    mode: mode.label(),
                    replica: &self.replica,
                });
                self.raise(a);
            }
        }
        match refusal {
            Some(r) => Sighting::Refuse(r),
            None => Sighting::Pass,
        }
    }

    /// Record a new path in the book (counted once) and return its entry.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        id: PathId,
        actor: &Actor,
        path: &Path,
        status: Status,
        now: i64,
        example: &str,
        tags: &BTreeMap<String, String>,
    ) -> Entry {
        let entry = Entry {
            id: id.to_string(),
            actor: actor.clone(),
            path: path.clone(),
            status,
            status_ms: now,
            first_seen_ms: now,
            last_seen_ms: now,
            counts: [(self.replica.clone(), 1)].into(),
            example: example.to_string(),
            controller: tags.get("controller").cloned(),
            action: tags.get("action").cloned(),
        };
        let mut book = self.write();
        // Refused only when a forget is dated after `now` (another host's clock ahead).
        book.merge(id, entry.clone());
        book.get(id).map(|s| s.entry.clone()).unwrap_or(entry)
    }

    /// At COMMIT: columns this transaction set from non-NULL to NULL. Alerts (in `alert` and
    /// `enforce` mode) when the actor never did that to the column; never refuses.
    pub fn observe_nulls(
        &self,
        actor: ActorRef,
        tags: &BTreeMap<String, String>,
        example: &str,
        nulled: Vec<Nulled>,
    ) {
        if !self.is_loaded() || nulled.is_empty() {
            return;
        }
        let now = now_ms();
        let mode = self.mode(actor.application);
        for n in nulled {
            let id = path::nulls_id(actor, &n.table, &n.column);
            let known = {
                let book = self.read();
                let (known, slot) = book.known(id, actor, &n.table);
                if let Some(s) = slot {
                    s.hit(now);
                }
                known
            };
            let outcome = match decide::sight(mode, known) {
                Outcome::Refuse { first } => (first).then_some(Outcome::Alert),
                o => Some(o),
            };
            let (status, alert) = match outcome {
                None | Some(Outcome::Quiet) => continue,
                Some(Outcome::Learn) => (Status::Learned, false),
                Some(_) => (Status::Unapproved, true),
            };
            let owned = actor.owned();
            let path = Path::Nulls {
                table: n.table.clone(),
                column: n.column.clone(),
            };
            let entry = self.entry(id, &owned, &path, status, now, example, tags);
            self.publish_entry(entry);
            if alert {
                let mut a = build(AlertFacts {
                    kind: AlertKind::Nulling,
                    id,
                    actor: &owned,
                    path: &path,
                    example,
                    tags,
                    ts_ms: now,
                    mode: mode.label(),
                    replica: &self.replica,
                });
                a.before = Some(n.before);
                a.key = Some(n.key);
                a.rows = Some(n.rows);
                self.raise(a);
            }
        }
    }

    /// WARN line and metric now; the alerts topic and the webhook in the background.
    fn raise(&self, alert: Alert) {
        Event::FootprintAlert { alert: &alert }.emit(&self.metrics);
        if let Some(w) = &self.webhook {
            w.send(alert.webhook_body());
        }
        let record = Record {
            topic: self.alerts_topic.clone(),
            key: alert.path_id.clone().into_bytes(),
            payload: serde_json::to_vec(&alert).expect("JSON serialises"),
        };
        let sink = Arc::clone(&self.sink);
        tokio::spawn(async move {
            if let Err(e) = sink.publish(&[record]).await {
                tracing::error!(error = %e, "alert not published to the alerts topic (it was logged)");
            }
        });
    }

    fn publish_entry(&self, entry: Entry) {
        let sink = Arc::clone(&self.sink);
        let record = self.record(&entry);
        let unpublished = Arc::clone(&self.unpublished);
        tokio::spawn(async move {
            if let Err(e) = sink.publish(&[record]).await {
                tracing::warn!(error = %e, "footprint not published yet; retried at the next flush");
                lock(&unpublished).push(entry);
            }
        });
    }

    fn record(&self, e: &Entry) -> Record {
        Record {
            topic: self.topic.clone(),
            key: e.id.clone().into_bytes(),
            payload: serde_json::to_vec(e).expect("JSON serialises"),
        }
    }

    /// Publish what changed since the last flush (and what failed before).
    pub async fn flush(&self) {
        let mut entries = std::mem::take(&mut *lock(&self.unpublished));
        entries.extend(self.write().fold(&self.replica));
        if entries.is_empty() {
            return;
        }
        let records: Vec<Record> = entries.iter().map(|e| self.record(e)).collect();
        if let Err(e) = self.sink.publish(&records).await {
            tracing::warn!(error = %e, entries = entries.len(), "footprint counts not published; retried at the next flush");
            lock(&self.unpublished).extend(entries);
        }
    }

    /// Stop following (the proxy is shutting down); the flush task ends too.
    pub async fn stop(&self) {
        self.flush().await;
        lock(&self.follow).take();
    }
}

/// A path of a statement that is not simply counted.
#[derive(Debug)]
pub struct News {
    pub id: PathId,
    pub path: Path,
    pub outcome: Outcome,
}

/// The hot path, pure over the book: each path a write takes, looked up (and counted when
/// known); what is not quiet in `mode` is returned.
pub fn sightings(book: &Book, f: &WriteFacts, mode: Mode, now: i64) -> Vec<News> {
    let mut news = Vec::new();
    let mut look = |table: &str, op: &str, columns: &[&str]| {
        let id = path::write_id(f.actor, table, op, columns, f.fingerprint);
        let (known, slot) = book.known(id, f.actor, table);
        if let Some(s) = slot {
            s.hit(now);
        }
        let outcome = decide::sight(mode, known);
        if outcome != Outcome::Quiet {
            news.push(News {
                id,
                path: write_path(table, op, columns, f.fingerprint),
                outcome,
            });
        }
    };
    if f.writes.is_empty() {
        look("", f.kind.label(), &[]);
    }
    for w in f.writes {
        let mut cols: Vec<&str> = w.columns.iter().map(String::as_str).collect();
        cols.sort_unstable();
        cols.dedup();
        look(&w.table.to_string(), w.kind.label(), &cols);
    }
    news
}

fn write_path(table: &str, op: &str, columns: &[&str], fingerprint: &str) -> Path {
    Path::Write {
        table: table.to_string(),
        operation: op.to_string(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        fingerprint: fingerprint.to_string(),
    }
}
