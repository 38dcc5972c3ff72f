//! One Kafka record of the audit topics → one archive row. Pure: no I/O, total over any bytes
//! (a record hindsight cannot read is kept as an `unreadable` row with its bytes and the
//! reason, never dropped).

use hindsight::audit::event::{ChangeEvent, ChangeKey, Op, Row, TransactionRecord, TxStatus};
use hindsight::audit::kafka::STATEMENTS;
use hindsight::restore::plan::changed_columns;

/// A record as consumed, with where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The broker's timestamp of the record (ms), for rows that carry no time of their own.
    pub timestamp_ms: Option<i64>,
}

/// Where a row came from: the topic, partition and offset of its record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Provenance {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One row of the `events` table: every field of a change event's envelope as a column.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// `schema.table` (partition column); `(statements)` for statement-level events,
    /// `(unreadable)` for records that are not hindsight events.
    pub table_name: String,
    /// UTC day of `ts_ms`, `YYYY-MM-DD` (partition column).
    pub day: String,
    /// `c u d t r blocked ddl opaque`, or `unreadable`.
    pub op: String,
    /// When the statement ran (ms since the epoch).
    pub ts_ms: i64,
    /// When hindsight produced the event.
    pub event_ts_ms: i64,
    pub db: String,
    pub schema_name: String,
    pub relation: String,
    pub tx_id: Option<i64>,
    pub transaction_id: String,
    pub total_order: i64,
    pub data_collection_order: i64,
    /// The row's key as JSON (`{"bfkey":7}`).
    pub key_json: String,
    /// The key as a string that sorts like the key (see [`key_sort`]); equal keys, equal strings.
    pub key_sort: String,
    /// For an update that changed the key: the key before it ([`key_sort`] form).
    pub old_key_sort: Option<String>,
    pub before_json: Option<String>,
    pub after_json: Option<String>,
    pub changed_columns: Vec<String>,
    pub user_name: String,
    pub application_name: String,
    pub client_addr: String,
    pub statement: String,
    pub fingerprint: String,
    /// sqlcommenter tags as a JSON object.
    pub tags_json: String,
    pub session_id: String,
    pub statement_seq: i64,
    pub side_effects: Option<String>,
    pub side_effect_tables: Vec<String>,
    pub blocked_by: Option<String>,
    pub dry_run_rule: Option<String>,
    pub redacted: bool,
    /// `source.cascade` as JSON: the foreign key, referenced table and row whose change
    /// cascaded to this row.
    pub cascade_json: Option<String>,
    pub snapshot: String,
    pub version: String,
    pub connector: String,
    /// The topic prefix the proxy published under (`source.name`).
    pub topic_prefix: String,
    pub at: Provenance,
    /// Set on `unreadable` rows only: why, and the record's bytes.
    pub unreadable: Option<Unreadable>,
}

/// A record that is not a hindsight event, kept as it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// One row of the `transactions` table: a BEGIN or END record, or the archive's own RESOLVED
/// decision for a transaction whose END never came.
#[derive(Debug, Clone, PartialEq)]
pub struct TxRow {
    pub id: String,
    /// `BEGIN`, `END` or `RESOLVED`.
    pub status: String,
    pub tx_id: Option<i64>,
    pub event_count: i64,
    /// `[{"data_collection": …, "event_count": n}]`.
    pub data_collections_json: String,
    pub ts_ms: i64,
    /// `committed` / `aborted` (END and RESOLVED); none on BEGIN.
    pub commit_status: Option<String>,
    /// On RESOLVED rows: how the outcome was decided (`txid_status() = committed`, …).
    pub resolution: Option<String>,
    /// None on RESOLVED rows (the archive wrote them, no record did).
    pub at: Option<Provenance>,
}

/// What a record becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Archived {
    Event(Box<EventRow>),
    Tx(TxRow),
}

/// Which audit topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Transaction,
    Statements,
    Table,
}

/// The kind of `topic` under `prefix`; `None` if it is not an audit topic of that prefix.
pub fn topic_kind(prefix: &str, topic: &str) -> Option<TopicKind> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('.')?;
    Some(match rest {
        "transaction" => TopicKind::Transaction,
        _ if rest == STATEMENTS => TopicKind::Statements,
        _ if hindsight::audit::kafka::is_change_topic(rest) => TopicKind::Table,
        _ => return None,
    })
}

/// Convert one record of an audit topic of `prefix`.
pub fn convert(prefix: &str, raw: RawRecord) -> Archived {
    let at = Provenance {
        topic: raw.topic.clone(),
        partition: raw.partition,
        offset: raw.offset,
    };
    match topic_kind(prefix, &raw.topic) {
        Some(TopicKind::Transaction) => {
            match raw
                .payload
                .as_deref()
                .map(serde_json::from_slice::<TransactionRecord>)
            {
                Some(Ok(r)) => Archived::Tx(tx_row(r, at)),
                Some(Err(e)) => unreadable(raw, at, format!("not a transaction record: {e}")),
                None => unreadable(raw, at, "a record without a value".into()),
            }
        }
        Some(TopicKind::Statements) | Some(TopicKind::Table) => event(raw, at),
        None => unreadable(raw, at, "not an audit topic of this prefix".into()),
    }
}

fn event(raw: RawRecord, at: Provenance) -> Archived {
    let Some(payload) = raw.payload.as_deref() else {
        return unreadable(raw, at, "a record without a value".into());
    };
    let ev = match serde_json::from_slice::<ChangeEvent>(payload) {
        Ok(ev) => ev,
        Err(e) => return unreadable(raw, at, format!("not a change event: {e}")),
    };
    let key = match raw.key.as_deref().map(serde_json::from_slice::<ChangeKey>) {
        Some(Ok(k)) => Some(k),
        // Statement-level events are keyed by their transaction, not by a row.
        _ if matches!(ev.op, Op::Ddl | Op::Opaque) => None,
        Some(Err(e)) => return unreadable(raw, at, format!("key is not a change key: {e}")),
        None => return unreadable(raw, at, "a change event without a key".into()),
    };
    Archived::Event(Box::new(event_row(ev, key, at)))
}

/// The columns of a change event.
pub fn event_row(ev: ChangeEvent, key: Option<ChangeKey>, at: Provenance) -> EventRow {
    let s = ev.source;
    let statement_level = matches!(ev.op, Op::Ddl | Op::Opaque);
    let table_name = if statement_level || s.table.is_empty() {
        STATEMENTS_PARTITION.to_string()
    } else {
        format!("{}.{}", s.schema, s.table)
    };
    let key_row = key.map(|k| k.key).unwrap_or_default();
    let cols: Vec<String> = key_row.keys().cloned().collect();
    let old_key_sort = ev
        .before
        .as_ref()
        .filter(|_| ev.op == Op::Update)
        .map(|b| hindsight::audit::event::key_of(b, &cols))
        .filter(|old| *old != key_row)
        .map(|old| key_sort(&old));
    let text = |r: &Option<Row>| r.as_ref().map(|r| serde_json::to_string(r).expect("JSON"));
    EventRow {
        table_name,
        day: day_of(s.ts_ms),
        op: op_name(ev.op).to_string(),
        ts_ms: s.ts_ms,
        event_ts_ms: ev.ts_ms,
        db: s.db,
        schema_name: s.schema,
        relation: s.table,
        tx_id: s.tx_id,
        transaction_id: ev.transaction.id,
        total_order: ev.transaction.total_order as i64,
        data_collection_order: ev.transaction.data_collection_order as i64,
        key_json: serde_json::to_string(&key_row).expect("JSON"),
        key_sort: key_sort(&key_row),
        old_key_sort,
        changed_columns: if statement_level {
            Vec::new()
        } else {
            changed_columns(ev.before.as_ref(), ev.after.as_ref())
        },
        before_json: text(&ev.before),
        after_json: text(&ev.after),
        user_name: s.user,
        application_name: s.application_name,
        client_addr: s.client_addr,
        statement: s.statement,
        fingerprint: s.fingerprint,
        tags_json: serde_json::to_string(&s.tags).expect("JSON"),
        session_id: s.session_id,
        statement_seq: s.statement_seq as i64,
        side_effects: s.side_effects,
        side_effect_tables: s.side_effect_tables,
        blocked_by: s.blocked_by,
        dry_run_rule: s.dry_run_rule,
        redacted: s.redacted,
        cascade_json: s
            .cascade
            .as_ref()
            .map(|c| serde_json::to_string(c).expect("JSON")),
        snapshot: s.snapshot,
        version: s.version,
        connector: s.connector,
        topic_prefix: s.name,
        at,
        unreadable: None,
    }
}

/// Partition of statement-level events (DDL, opaque statements).
pub const STATEMENTS_PARTITION: &str = "(statements)";
/// Partition of records that are not hindsight events.
pub const UNREADABLE_PARTITION: &str = "(unreadable)";

fn unreadable(raw: RawRecord, at: Provenance, reason: String) -> Archived {
    let ts = raw.timestamp_ms.unwrap_or(0);
    Archived::Event(Box::new(EventRow {
        table_name: UNREADABLE_PARTITION.into(),
        day: day_of(ts),
        op: "unreadable".into(),
        ts_ms: ts,
        event_ts_ms: ts,
        db: String::new(),
        schema_name: String::new(),
        relation: String::new(),
        tx_id: None,
        transaction_id: String::new(),
        total_order: 0,
        data_collection_order: 0,
        key_json: String::new(),
        key_sort: String::new(),
        old_key_sort: None,
        before_json: None,
        after_json: None,
        changed_columns: Vec::new(),
        user_name: String::new(),
        application_name: String::new(),
        client_addr: String::new(),
        statement: String::new(),
        fingerprint: String::new(),
        tags_json: "{}".into(),
        session_id: String::new(),
        statement_seq: 0,
        side_effects: None,
        side_effect_tables: Vec::new(),
        blocked_by: None,
        dry_run_rule: None,
        redacted: false,
        cascade_json: None,
        snapshot: String::new(),
        version: String::new(),
        connector: String::new(),
        topic_prefix: String::new(),
        at,
        unreadable: Some(Unreadable {
            reason,
            key: raw.key,
            payload: raw.payload,
        }),
    }))
}

fn tx_row(r: TransactionRecord, at: Provenance) -> TxRow {
    TxRow {
        status: match r.status {
            TxStatus::Begin => "BEGIN",
            TxStatus::End => "END",
        }
        .into(),
        id: r.id,
        tx_id: r.tx_id,
        event_count: r.event_count as i64,
        data_collections_json: serde_json::to_string(&r.data_collections).expect("JSON"),
        ts_ms: r.ts_ms,
        commit_status: r.commit_status.map(|c| commit_name(c).to_string()),
        resolution: r.resolution.as_ref().map(resolution_text),
        at: Some(at),
    }
}

/// An END's in-doubt resolution as the `resolution` column shows it.
fn resolution_text(r: &hindsight::audit::event::Resolution) -> String {
    use hindsight::audit::event::ResolvedBy;
    let how = match r.by {
        ResolvedBy::TxidStatus => format!(
            "txid_status() = {}",
            r.txid_status.as_deref().unwrap_or("null")
        ),
        ResolvedBy::TxidUnknownToServer => "txid_status() = null (txid too old)".into(),
        ResolvedBy::NoTxid => "no txid to ask about".into(),
        ResolvedBy::TxidInFuture => "txid in the future (lost in a server crash)".into(),
        ResolvedBy::LostInCrash => "txid not durable before a server crash".into(),
        ResolvedBy::TxidReissued => {
            "txid handed out again to a later transaction after a server crash".into()
        }
        ResolvedBy::ServerRestarted => format!(
            "txid_status() = {} after a server restart that may have reused the txid",
            r.txid_status.as_deref().unwrap_or("null")
        ),
    };
    format!("in-doubt healing by {}: {how}", r.resolver)
}

pub fn commit_name(c: hindsight::audit::event::CommitStatus) -> &'static str {
    match c {
        hindsight::audit::event::CommitStatus::Committed => "committed",
        hindsight::audit::event::CommitStatus::Aborted => "aborted",
        hindsight::audit::event::CommitStatus::Unknown => "unknown",
    }
}

/// Debezium's name of an op, as the events carry it.
pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Truncate => "t",
        Op::Read => "r",
        Op::Blocked => "blocked",
        Op::Ddl => "ddl",
        Op::Opaque => "opaque",
    }
}

/// The op named `name` (the inverse of [`op_name`]).
pub fn op_of(name: &str) -> Option<Op> {
    Some(match name {
        "c" => Op::Create,
        "u" => Op::Update,
        "d" => Op::Delete,
        "t" => Op::Truncate,
        "r" => Op::Read,
        "blocked" => Op::Blocked,
        "ddl" => Op::Ddl,
        "opaque" => Op::Opaque,
        _ => return None,
    })
}

/// UTC day of a time in ms, `YYYY-MM-DD`.
pub fn day_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// A key as a string that sorts like the key and is equal exactly when the keys are: columns
/// in name order, separated by U+0001; integers as 20 digits offset by 2^63 (so negative ones
/// sort first); other numbers by their float value's sortable bits, then their exact text;
/// strings as they are; null as empty; anything else as its JSON.
pub fn key_sort(key: &Row) -> String {
    let mut cols: Vec<(&String, &serde_json::Value)> = key.iter().collect();
    cols.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::new();
    for (i, (_, v)) in cols.into_iter().enumerate() {
        if i > 0 {
            out.push('\u{1}');
        }
        sortable(v, &mut out);
    }
    out
}

fn sortable(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Null => {}
        Value::Bool(b) => out.push(if *b { '1' } else { '0' }),
        Value::Number(n) => match n.as_i64() {
            Some(i) => out.push_str(&format!("{:020}", (i as i128 + (1i128 << 63)) as u128)),
            None => {
                let f = n.as_f64().unwrap_or(0.0);
                let bits = f.to_bits();
                let ordered = if f.is_sign_negative() {
                    !bits
                } else {
                    bits | (1 << 63)
                };
                out.push_str(&format!("~{ordered:016x}:{n}"));
            }
        },
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: serde_json::Value) -> Row {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn key_sort_orders_like_the_key() {
        let keys = [-5i64, -1, 0, 7, 10, 100, i64::MAX];
        let sorted: Vec<String> = keys
            .iter()
            .map(|k| key_sort(&row(json!({"k": k}))))
            .collect();
        let mut again = sorted.clone();
        again.sort();
        assert_eq!(sorted, again);
        let floats = [-2.5f64, -0.5, 0.25, 1.5, 1e10];
        let s: Vec<String> = floats
            .iter()
            .map(|k| key_sort(&row(json!({"k": k}))))
            .collect();
        let mut t = s.clone();
        t.sort();
        assert_eq!(s, t);
        // Column order in the map does not matter; the values do.
        assert_eq!(
            key_sort(&row(json!({"a": 1, "b": "x"}))),
            key_sort(&row(json!({"b": "x", "a": 1})))
        );
        assert_ne!(
            key_sort(&row(json!({"a": 1}))),
            key_sort(&row(json!({"a": 2})))
        );
    }

    #[test]
    fn topics_are_classified_by_prefix() {
        assert_eq!(
            topic_kind("hs", "hs.transaction"),
            Some(TopicKind::Transaction)
        );
        assert_eq!(
            topic_kind("hs", "hs.statements"),
            Some(TopicKind::Statements)
        );
        assert_eq!(topic_kind("hs", "hs.public.brieff"), Some(TopicKind::Table));
        assert_eq!(topic_kind("hs", "hs.changes-shop"), Some(TopicKind::Table));
        assert_eq!(topic_kind("hs", "hs.footprints"), None);
        assert_eq!(topic_kind("hs", "hsx.public.brieff"), None);
        assert_eq!(topic_kind("hs", "other.public.brieff"), None);
    }

    #[test]
    fn garbage_is_kept_as_unreadable_with_its_bytes() {
        let raw = RawRecord {
            topic: "hs.public.t".into(),
            partition: 0,
            offset: 9,
            key: Some(b"k".to_vec()),
            payload: Some(b"\xff not json".to_vec()),
            timestamp_ms: Some(86_400_000),
        };
        let Archived::Event(e) = convert("hs", raw) else {
            panic!("expected an event row");
        };
        assert_eq!(e.op, "unreadable");
        assert_eq!(e.day, "1970-01-02");
        assert_eq!(e.at.offset, 9);
        let u = e.unreadable.unwrap();
        assert!(u.reason.contains("not a change event"), "{}", u.reason);
        assert_eq!(u.payload.unwrap(), b"\xff not json");
    }

    #[test]
    fn a_key_change_records_the_old_key() {
        let ev = json!({
            "before": {"id": 1, "v": "a"}, "after": {"id": 2, "v": "a"},
            "source": {"version": "0", "connector": "hindsight", "name": "hs", "ts_ms": 5,
                "snapshot": "false", "db": "d", "schema": "public", "table": "t", "txId": 9,
                "user": "u", "application_name": "app", "client_addr": "1.2.3.4:5",
                "statement": "UPDATE t SET id = 2", "fingerprint": "f", "tags": {},
                "session_id": "s", "statement_seq": 1},
            "op": "u", "ts_ms": 6,
            "transaction": {"id": "s:1", "total_order": 1, "data_collection_order": 1}
        });
        let raw = RawRecord {
            topic: "hs.public.t".into(),
            partition: 0,
            offset: 1,
            key: Some(br#"{"table":"public.t","key":{"id":2}}"#.to_vec()),
            payload: Some(serde_json::to_vec(&ev).unwrap()),
            timestamp_ms: None,
        };
        let Archived::Event(e) = convert("hs", raw) else {
            panic!("expected an event row");
        };
        assert_eq!(e.table_name, "public.t");
        assert_eq!(e.key_sort, key_sort(&row(json!({"id": 2}))));
        assert_eq!(e.old_key_sort, Some(key_sort(&row(json!({"id": 1})))));
        assert_eq!(e.changed_columns, vec!["id".to_string()]);
    }
}
