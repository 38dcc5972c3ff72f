//! Turning a committed-to-be transaction's captured changes into audit records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::audit::event::{
    ChangeEvent, ChangeKey, CommitStatus, DataCollection, Image, Op, Row, Source,
    TransactionRecord, TxPosition, TxStatus,
};
use crate::audit::kafka::Record;
use crate::statement::Kind;

use super::txn::{Change, GateMark};

pub use crate::audit::kafka::STATEMENTS;

/// Schema, name and key columns of a table, from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    /// Primary key, else replica identity index, else a unique NOT NULL index (see
    /// [`catalog_query`]); empty if the table has none (the whole row identifies it).
    pub key: Vec<String>,
    /// User triggers on the table: they may change rows hindsight does not see.
    pub triggers: Vec<String>,
    /// Tables whose foreign keys cascade (CASCADE / SET NULL / SET DEFAULT) from this one.
    pub cascades_to: Vec<String>,
}

/// Session facts every event carries.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_id: String,
    pub user: String,
    pub database: String,
    pub client_addr: String,
    pub topic_prefix: String,
    /// kafka.topic_routing: the topic of each table's events.
    pub topic_routing: crate::audit::kafka::TopicRouting,
    /// capture.max_statement_bytes: longer statement texts are cut in events.
    pub statement_limit: usize,
    /// The process's in-flight transactions (in-doubt healing leaves them alone).
    pub in_flight: std::sync::Arc<crate::audit::in_flight::InFlight>,
}

/// The statement text an event carries: normalised (literals out) for a redacted table, cut
/// at `limit` bytes with a note saying so. A bulk loader's INSERT of several megabytes would
/// otherwise be copied into each of its rows' events, past the brokers' message size: every
/// such transaction refused. The fingerprint still identifies the whole statement.
pub(crate) fn statement_text(text: &str, redacted: bool, limit: usize) -> String {
    let full = if redacted {
        pg_query::normalize(text)
            .map(|n| crate::wire::client_text::display(&n).into_owned())
            .unwrap_or_else(|_| "(statement withheld: redacted table)".into())
    } else {
        crate::wire::client_text::display(text).into_owned()
    };
    if full.len() <= limit {
        return full;
    }
    let mut cut = limit;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{} … [statement cut at {cut} of {} bytes (capture.max_statement_bytes); its fingerprint identifies it]",
        &full[..cut],
        full.len()
    )
}

/// One query giving the transaction id and, for each table oid, its schema, name and key
/// (primary key, else the replica identity index, else the narrowest immediate unique index on
/// NOT NULL columns without predicate or expressions; key columns only, not INCLUDE ones)
/// (one row with only the transaction id when there are no tables: statement-level events).
/// Run inside the transaction, right before COMMIT.
pub fn catalog_query(oids: &[u32], form: super::image_sql::Form) -> String {
    let list: Vec<String> = oids.iter().map(u32::to_string).collect();
    let key = "(SELECT coalesce(json_agg(a.attname ORDER BY k.ord), '[]'::json)::text FROM pg_index i \
            CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
          WHERE i.indrelid = c.oid AND k.ord <= i.indnkeyatts AND i.indexrelid = (SELECT i2.indexrelid FROM pg_index i2 \
            WHERE i2.indrelid = c.oid AND (i2.indisprimary OR i2.indisreplident \
              OR (i2.indisunique AND i2.indimmediate AND i2.indpred IS NULL AND i2.indexprs IS NULL \
                  AND NOT EXISTS (SELECT 1 FROM pg_attribute n2 WHERE n2.attrelid = i2.indrelid \
                                  AND n2.attnum = ANY((i2.indkey::int2[])[0:i2.indnkeyatts - 1]) AND NOT n2.attnotnull))) \
            ORDER BY i2.indisprimary DESC, i2.indisreplident DESC, i2.indnkeyatts, i2.indexrelid LIMIT 1))";
    let triggers = "(SELECT coalesce(json_agg(t.tgname ORDER BY t.tgname), '[]'::json)::text FROM pg_trigger t \
          WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)";
    let cascades =
        "(SELECT coalesce(json_agg(DISTINCT rn.nspname || '.' || rc.relname), '[]'::json)::text \
          FROM pg_constraint f JOIN pg_class rc ON rc.oid = f.conrelid \
          JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
          WHERE f.contype = 'f' AND f.confrelid = c.oid \
            AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd')))";
    // Names in the form images take (hex of UTF-8 outside UTF-8 sessions): exact in every
    // client_encoding, and the key's column names then match the images' keys.
    let names: Vec<String> = ["n.nspname", "c.relname", key, triggers, cascades]
        .into_iter()
        .map(|n| form.name(n))
        .collect();
    format!(
        "SELECT x.txid, c.oid::int8::text, {} \
         FROM (SELECT pg_current_xact_id_if_assigned()::text) AS x(txid) \
         LEFT JOIN (pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace) \
           ON c.oid = ANY('{{{}}}'::oid[])",
        names.join(", "),
        list.join(",")
    )
}

/// The transaction id alone, when every changed table is cached (same row shape as
/// [`catalog_query`], without a table).
pub const TXID_QUERY: &str =
    "SELECT pg_current_xact_id_if_assigned()::text, NULL, NULL, NULL, NULL, NULL, NULL";

/// Parse the rows of [`catalog_query`]: `(txid, oid → table)`.
pub fn parse_catalog(
    rows: &[Vec<Option<Vec<u8>>>],
    form: super::image_sql::Form,
) -> (Option<i64>, HashMap<u32, TableInfo>) {
    let ascii = |v: &Option<Vec<u8>>| {
        v.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let text = |v: &Option<Vec<u8>>| {
        v.as_deref().map(|b| match form {
            super::image_sql::Form::Jsonb => String::from_utf8_lossy(b).into_owned(),
            super::image_sql::Form::Hex => super::rows::decode_name(b),
        })
    };
    let mut txid = None;
    let mut tables = HashMap::new();
    for r in rows {
        if r.len() < 7 {
            continue;
        }
        txid = ascii(&r[0]).and_then(|t| t.parse().ok());
        let Some(oid) = ascii(&r[1]).and_then(|t| t.parse().ok()) else {
            continue;
        };
        let list = |i: usize| -> Vec<String> {
            text(&r[i])
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default()
        };
        let (key, triggers, cascades_to) = (list(4), list(5), list(6));
        tables.insert(
            oid,
            TableInfo {
                schema: text(&r[2]).unwrap_or_default(),
                name: text(&r[3]).unwrap_or_default(),
                key,
                triggers,
                cascades_to,
            },
        );
    }
    (txid, tables)
}

/// Pair pre-read before images with the after images of the same UPDATE, by key.
///
/// A statement's pre-read rows come before its UPDATE rows in the buffer (with, for a
/// data-modifying WITH statement, the rows of its other writes between or after them): the
/// paired changes take the place of the statement's last UPDATE row. Rows whose key
/// the UPDATE changed (and rows of tables without a key, whose "key" is the whole row) cannot be
/// paired by key: one such row on each side is paired; several are published as a delete of
/// the old row and an insert of the new one — what Debezium does for key changes — so no image
/// is lost. Locked rows the UPDATE did not change (no unpaired after image left) produce no
/// event.
pub fn pair_pre_reads(changes: Vec<Change>, tables: &HashMap<u32, TableInfo>) -> Vec<Change> {
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, c) in changes.iter().enumerate() {
        if c.stmt.shape.pre_read {
            last.insert(c.stmt.seq, i);
        }
    }
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    let mut groups: HashMap<u64, Vec<Change>> = HashMap::new();
    for (i, c) in changes.into_iter().enumerate() {
        if !c.stmt.shape.pre_read {
            out.push(c);
            continue;
        }
        let seq = c.stmt.seq;
        groups.entry(seq).or_default().push(c);
        if last.get(&seq) == Some(&i) {
            let group = groups.remove(&seq).unwrap_or_default();
            pair_statement(group, tables, &mut out);
        }
    }
    out
}

/// [`pair_pre_reads`] for the rows of one statement.
fn pair_statement(group: Vec<Change>, tables: &HashMap<u32, TableInfo>, out: &mut Vec<Change>) {
    let key_cols = |oid: u32| tables.get(&oid).map(|t| t.key.clone()).unwrap_or_default();
    // Several locked rows can have the same "key" (tables without one): a queue per key.
    let mut waiting: HashMap<(u32, String), std::collections::VecDeque<Change>> = HashMap::new();
    let mut befores_order: Vec<(u32, String)> = Vec::new();
    let mut afters: Vec<Change> = Vec::new();
    for c in group {
        match (&c.before, &c.after) {
            (Some(b), None) => {
                let k = (c.table_oid, b.key_json(&key_cols(c.table_oid)));
                befores_order.push(k.clone());
                waiting.entry(k).or_default().push_back(c);
            }
            _ => afters.push(c),
        }
    }
    let mut unpaired: Vec<Change> = Vec::new();
    for a in afters {
        let Some(after) = &a.after else { continue };
        let k = (a.table_oid, after.key_json(&key_cols(a.table_oid)));
        match waiting.get_mut(&k).and_then(|q| q.pop_front()) {
            Some(b) => out.push(Change {
                before: b.before,
                ..a
            }),
            None => unpaired.push(a),
        }
    }
    if unpaired.is_empty() {
        return;
    }
    let left: Vec<Change> = befores_order
        .iter()
        .filter_map(|k| waiting.get_mut(k).and_then(|q| q.pop_front()))
        .collect();
    if left.len() == 1 && unpaired.len() == 1 {
        let b = left.into_iter().next().expect("one");
        let a = unpaired.into_iter().next().expect("one");
        out.push(Change {
            before: b.before,
            ..a
        });
        return;
    }
    out.extend(left);
    out.extend(unpaired);
}

pub use crate::audit::event::{key_json, key_of};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The records to publish before COMMIT: BEGIN on the transaction topic, then one change event
/// per row on its table's topic. Returns them with the END record to publish afterwards.
pub fn build(
    session: &SessionInfo,
    tx_seq: u64,
    txid: Option<i64>,
    changes: Vec<Change>,
    tables: &HashMap<u32, TableInfo>,
    redactor: &super::redact::Redactor,
) -> (Vec<Record>, TransactionRecord) {
    let mut changes = changes;
    redact_images(&mut changes, tables, redactor);
    let mut b = Builder {
        session,
        txid,
        id: format!("{}:{}", session.session_id, tx_seq),
        now: now_ms(),
        redactor,
        per_table: BTreeMap::new(),
        text_of: None,
    };
    let count = changes.len() as u64;
    let mut out = Vec::with_capacity(changes.len() + 1);
    out.push(Record {
        topic: format!("{}.transaction", session.topic_prefix),
        key: b.id.clone().into_bytes(),
        payload: Vec::new(), // BEGIN: filled once the per-table counts are known.
    });
    // Each change is consumed as its record is made: its images move into the event, and
    // the transaction is not held twice over.
    for (i, c) in changes.into_iter().enumerate() {
        out.push(b.event(i as u64 + 1, c, tables));
    }
    let begin = b.record(TxStatus::Begin, None, count);
    out[0].payload = serde_json::to_vec(&begin).expect("serialise");
    (
        out,
        b.record(TxStatus::End, Some(CommitStatus::Committed), count),
    )
}

/// What `build` carries from one change to the next.
struct Builder<'a> {
    session: &'a SessionInfo,
    txid: Option<i64>,
    /// The transaction's id in events: `session:sequence`.
    id: String,
    now: i64,
    redactor: &'a super::redact::Redactor,
    /// Events per collection so far, and the topic they went to.
    per_table: BTreeMap<String, Collected>,
    /// The last statement's text as events carry it, made once per statement (its rows are
    /// consecutive), not once per row.
    text_of: Option<StatementText>,
}

/// One collection's events in a transaction so far.
struct Collected {
    events: u64,
    topic: String,
}

/// A statement's text as its events carry it (redacted or not).
struct StatementText {
    stmt: Arc<super::txn::StatementCtx>,
    redacted: bool,
    text: String,
}

impl Builder<'_> {
    /// The change event of `c`, the `total_order`-th of the transaction.
    fn event(&mut self, total_order: u64, c: Change, tables: &HashMap<u32, TableInfo>) -> Record {
        let fallback = TableInfo {
            schema: c.stmt.shape.table.schema.clone(),
            name: c.stmt.shape.table.name.clone(),
            key: Vec::new(),
            triggers: Vec::new(),
            cascades_to: Vec::new(),
        };
        let t = tables.get(&c.table_oid).unwrap_or(&fallback);
        let collection = if c.is_statement() {
            STATEMENTS.to_string()
        } else {
            format!("{}.{}", t.schema, t.name)
        };
        let topic = if c.is_statement() {
            format!("{}.{STATEMENTS}", self.session.topic_prefix)
        } else {
            self.session.topic_routing.topic(
                &self.session.topic_prefix,
                &self.session.database,
                &t.schema,
                &t.name,
            )
        };
        let collected = self
            .per_table
            .entry(collection.clone())
            .or_insert_with(|| Collected {
                events: 0,
                topic: topic.clone(),
            });
        collected.events += 1;
        let data_collection_order = collected.events;
        let mark = c.gate.clone().or_else(|| c.stmt.gate.mark.clone());
        let op = op_of(&c, mark.as_ref());
        let key = ChangeKey {
            table: if c.is_statement() {
                c.stmt.shape.table.to_string()
            } else {
                collection.clone()
            },
            key: match c.after.as_ref().or(c.before.as_ref()) {
                Some(image) => image.key(&t.key),
                None => Row::new(),
            },
        };
        let side_effects = side_effects_of(t, &collection, op, c.stmt.shape.cascade.as_deref());
        let source = self.source(&c, t, side_effects, mark);
        let ev = ChangeEvent::<Image> {
            before: c.before,
            after: c.after,
            source,
            op,
            ts_ms: self.now,
            transaction: TxPosition {
                id: self.id.clone(),
                total_order,
                data_collection_order,
            },
        };
        Record {
            topic,
            key: key.to_bytes(),
            payload: serde_json::to_vec(&ev).expect("events serialise"),
        }
    }

    /// Where the change came from: server, table, session, statement, gate.
    fn source(
        &mut self,
        c: &Change,
        t: &TableInfo,
        side_effects: Vec<String>,
        mark: Option<GateMark>,
    ) -> Source {
        let redacted = self.redactor.covers(&t.schema, &t.name);
        let session = self.session;
        Source {
            version: env!("CARGO_PKG_VERSION").into(),
            connector: "hindsight".into(),
            name: session.topic_prefix.clone(),
            ts_ms: c.stmt.ts_ms,
            snapshot: "false".into(),
            db: session.database.clone(),
            schema: t.schema.clone(),
            table: t.name.clone(),
            tx_id: self.txid,
            user: session.user.clone(),
            application_name: c.stmt.application_name.clone(),
            client_addr: session.client_addr.clone(),
            statement: self.statement_text(&c.stmt, redacted),
            fingerprint: c.stmt.fingerprint.clone(),
            tags: c.stmt.tags.clone(),
            session_id: session.session_id.clone(),
            statement_seq: c.stmt.seq,
            side_effects: (!side_effects.is_empty()).then(|| "uncaptured".to_string()),
            side_effect_tables: side_effects,
            blocked_by: match &mark {
                Some(GateMark::Blocked(r)) => Some(r.clone()),
                _ => None,
            },
            dry_run_rule: match &mark {
                Some(GateMark::WouldBlock(r)) => Some(r.clone()),
                _ => None,
            },
            redacted,
            cascade: c
                .cascade
                .as_deref()
                .map(|o| crate::audit::event::CascadeSource {
                    constraint: o.constraint.clone(),
                    parent_table: o.parent_table.clone(),
                    parent_key: o.parent_key.clone(),
                }),
        }
    }

    /// The statement's text as events carry it, made once per statement.
    fn statement_text(&mut self, stmt: &Arc<super::txn::StatementCtx>, redacted: bool) -> String {
        if let Some(t) = &self.text_of {
            if Arc::ptr_eq(&t.stmt, stmt) && t.redacted == redacted {
                return t.text.clone();
            }
        }
        let text = statement_text(&stmt.text, redacted, self.session.statement_limit);
        self.text_of = Some(StatementText {
            stmt: Arc::clone(stmt),
            redacted,
            text: text.clone(),
        });
        text
    }

    /// The transaction's BEGIN or END record, over `count` events.
    fn record(
        &self,
        status: TxStatus,
        commit_status: Option<CommitStatus>,
        count: u64,
    ) -> TransactionRecord {
        TransactionRecord {
            status,
            id: self.id.clone(),
            tx_id: self.txid,
            event_count: count,
            data_collections: self
                .per_table
                .iter()
                .map(|(k, v)| DataCollection {
                    data_collection: k.clone(),
                    event_count: v.events,
                    topic: Some(v.topic.clone()),
                })
                .collect(),
            ts_ms: self.now,
            commit_status,
            resolution: None,
        }
    }
}

/// Apply the redaction rules to every image of `changes`, by its table's name (the
/// statement's own name for a table the catalog did not give).
fn redact_images(
    changes: &mut [Change],
    tables: &HashMap<u32, TableInfo>,
    redactor: &super::redact::Redactor,
) {
    if redactor.is_empty() {
        return;
    }
    for c in changes {
        let (schema, name) = tables
            .get(&c.table_oid)
            .map(|t| (t.schema.clone(), t.name.clone()))
            .unwrap_or_else(|| {
                (
                    c.stmt.shape.table.schema.clone(),
                    c.stmt.shape.table.name.clone(),
                )
            });
        if !redactor.covers(&schema, &name) {
            continue;
        }
        for image in [&mut c.before, &mut c.after].into_iter().flatten() {
            *image = image.edited(|row| redactor.apply(&schema, &name, row));
        }
    }
}

/// A change's operation, from its images, its statement's kind and the gates' mark.
fn op_of(c: &Change, mark: Option<&GateMark>) -> Op {
    match (&c.before, &c.after) {
        _ if matches!(mark, Some(GateMark::Blocked(_))) => Op::Blocked,
        (None, Some(_)) => Op::Create,
        (Some(_), None) if c.stmt.shape.kind == Kind::Truncate => Op::Truncate,
        (Some(_), None) => Op::Delete,
        (Some(_), Some(_)) => Op::Update,
        (None, None) if c.stmt.shape.kind == Kind::Ddl => Op::Ddl,
        (None, None) => Op::Opaque,
    }
}

/// What may have changed rows this event does not cover: the table's user triggers, and for
/// an update or delete the tables its foreign keys' actions reach — less those whose rows the
/// statement's cascade reads captured (`cascade`).
fn side_effects_of(
    t: &TableInfo,
    collection: &str,
    op: Op,
    captured: Option<&super::cascade::Plan>,
) -> Vec<String> {
    let mut side_effects: Vec<String> = t
        .triggers
        .iter()
        .map(|n| format!("trigger {n} on {collection}"))
        .collect();
    let covered = |table: &str| match (captured, op) {
        (Some(plan), Op::Delete | Op::Update) => plan
            .considered
            .iter()
            .any(|(schema, name)| format!("{schema}.{name}") == table),
        _ => false,
    };
    if matches!(op, Op::Update | Op::Delete) {
        side_effects.extend(t.cascades_to.iter().filter(|c| !covered(c)).cloned());
    }
    side_effects
}

/// The END record as a Kafka record.
pub fn end_record(session: &SessionInfo, end: &TransactionRecord) -> Record {
    Record {
        topic: format!("{}.transaction", session.topic_prefix),
        key: end.id.clone().into_bytes(),
        payload: serde_json::to_vec(end).expect("serialise"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_text_is_cut_at_a_character_boundary_with_a_note() {
        assert_eq!(
            statement_text("UPDATE t SET a = 1", false, 100),
            "UPDATE t SET a = 1"
        );
        // 'é' is two bytes: a cut at 5 would split the third one.
        let cut = statement_text("ééééé", false, 5);
        assert_eq!(
            cut,
            "éé … [statement cut at 4 of 10 bytes (capture.max_statement_bytes); its fingerprint identifies it]"
        );
        // Redacted tables get the normalised text (no literals), cut the same way.
        assert_eq!(
            statement_text("UPDATE t SET a = 'secret'", true, 100),
            "UPDATE t SET a = $1"
        );
    }
}
