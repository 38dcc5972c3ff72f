//! `hindsight tail`: follow the audit topics and print each change readably (or as JSON).

use std::io::Write;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};
use thiserror::Error;

use super::event::{ChangeEvent, Op};

/// What to follow and what to show.
#[derive(Debug, Clone)]
pub struct TailOptions {
    pub brokers: Vec<String>,
    pub topic_prefix: String,
    /// Only these tables (`schema.table` or `table`); empty = all.
    pub tables: Vec<String>,
    /// Only changes made by sessions with this application_name.
    pub application: Option<String>,
    /// Print each event as one JSON line instead of the readable form.
    pub json: bool,
    /// Start at the oldest retained event instead of new ones only.
    pub from_beginning: bool,
    /// Stop after this many printed events.
    pub max: Option<usize>,
    /// Stop after this long without a new event (None: follow forever).
    pub idle_timeout: Option<Duration>,
    /// Also show the alerts of `<prefix>.alerts` (new write paths, first nullings) inline.
    pub alerts: bool,
}

#[derive(Debug, Error)]
pub enum TailError {
    #[error("tail: kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("tail: writing output: {0}")]
    Io(#[from] std::io::Error),
}

/// Follow the topics, printing to `out`; returns the number of events printed.
pub fn run(opts: &TailOptions, out: &mut impl Write) -> Result<usize, TailError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", opts.brokers.join(","))
        .set("group.id", format!("hindsight-tail-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "2000")
        .set(
            "auto.offset.reset",
            if opts.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        )
        .create()?;
    let pattern = format!("^{}\\..*", regex_escape(&opts.topic_prefix));
    consumer.subscribe(&[pattern.as_str()])?;
    let alerts_topic = format!("{}.{}", opts.topic_prefix, super::kafka::ALERTS);
    let statements_topic = format!("{}.{}", opts.topic_prefix, super::kafka::STATEMENTS);
    let mut printed = 0;
    let mut idle_since = std::time::Instant::now();
    loop {
        if opts.max.is_some_and(|m| printed >= m) {
            return Ok(printed);
        }
        if opts.idle_timeout.is_some_and(|t| idle_since.elapsed() > t) {
            return Ok(printed);
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            // No audit topic exists yet (nothing was written through the proxy): keep waiting.
            Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            )) => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(payload) = msg.payload() else {
            continue;
        };
        if msg.topic() == alerts_topic {
            if opts.alerts && show_alert(opts, payload, out)? {
                idle_since = std::time::Instant::now();
                printed += 1;
            }
            continue;
        }
        let rest = msg.topic()[opts.topic_prefix.len()..].trim_start_matches('.');
        if msg.topic() != statements_topic && !super::kafka::is_change_topic(rest) {
            continue;
        }
        let Ok(ev) = serde_json::from_slice::<ChangeEvent>(payload) else {
            writeln!(
                out,
                "(unreadable record on {} at offset {})",
                msg.topic(),
                msg.offset()
            )?;
            continue;
        };
        if !wanted(opts, &ev) {
            continue;
        }
        idle_since = std::time::Instant::now();
        if opts.json {
            out.write_all(payload)?;
            writeln!(out)?;
        } else {
            let key = msg.key().and_then(row_key);
            writeln!(out, "{}", render(&ev, key.as_deref()))?;
        }
        out.flush()?;
        printed += 1;
    }
}

fn wanted(opts: &TailOptions, ev: &ChangeEvent) -> bool {
    let qualified = format!("{}.{}", ev.source.schema, ev.source.table);
    (opts.tables.is_empty()
        || opts
            .tables
            .iter()
            .any(|t| *t == qualified || *t == ev.source.table))
        && opts
            .application
            .as_ref()
            .is_none_or(|a| *a == ev.source.application_name)
}

/// Print one alert if the filters want it; `Ok(false)` if not (or unreadable: alerts are
/// hindsight's own records, a reader of another version may not know one).
fn show_alert(opts: &TailOptions, payload: &[u8], out: &mut impl Write) -> std::io::Result<bool> {
    let Ok(a) = serde_json::from_slice::<crate::audit::alert::Alert>(payload) else {
        return Ok(false);
    };
    let table_ok = opts.tables.is_empty()
        || opts
            .tables
            .iter()
            .any(|t| *t == a.table || t.ends_with(&format!(".{}", a.table)));
    if !table_ok
        || opts
            .application
            .as_ref()
            .is_some_and(|x| *x != a.application)
    {
        return Ok(false);
    }
    if opts.json {
        out.write_all(payload)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{} ALERT {}\n    statement: {}\n    approve: {}",
            a.time,
            a.headline(),
            a.example,
            a.approve
        )?;
    }
    out.flush()?;
    Ok(true)
}

/// The row's key from a change record's message key (`{"table": …, "key": {…}}`).
fn row_key(message_key: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(message_key).ok()?;
    v.get("key").map(|k| k.to_string())
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

/// One readable line — UTC time, operation, table, row key (the record's key), who, where
/// from, transaction, tags — plus one line per changed column.
pub fn render(ev: &ChangeEvent, key: Option<&str>) -> String {
    let op = match ev.op {
        Op::Create => "INSERT",
        Op::Update => "UPDATE",
        Op::Delete => "DELETE",
        Op::Truncate => "TRUNCATE",
        Op::Read => "SNAPSHOT",
        Op::Blocked => "BLOCKED",
        Op::Ddl => "DDL",
        Op::Opaque => "OPAQUE",
    };
    let s = &ev.source;
    let tags: Vec<String> = s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut line = format!(
        "{} {op} {}.{}{} by {} app={} from {} tx={}{}",
        super::event::utc(s.ts_ms),
        s.schema,
        s.table,
        key.filter(|k| !k.is_empty())
            .map(|k| format!(" {k}"))
            .unwrap_or_default(),
        s.user,
        if s.application_name.is_empty() {
            "-"
        } else {
            &s.application_name
        },
        s.client_addr,
        ev.transaction.id,
        if tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", tags.join(" "))
        }
    );
    if matches!(ev.op, Op::Ddl | Op::Opaque) {
        line.push_str(&format!("\n    statement: {}", s.statement));
    }
    let empty = serde_json::Map::new();
    let before = ev.before.as_ref().unwrap_or(&empty);
    let after = ev.after.as_ref().unwrap_or(&empty);
    let mut cols: Vec<&String> = before.keys().chain(after.keys()).collect();
    cols.sort();
    cols.dedup();
    for c in cols {
        let (b, a) = (before.get(c), after.get(c));
        if b != a {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("∅".to_string(), |v| v.to_string());
            line.push_str(&format!("\n    {c}: {} → {}", show(b), show(a)));
        }
    }
    line
}
