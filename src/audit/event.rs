//! The audit records hindsight publishes, in Debezium's change-event envelope so that existing
//! Debezium consumers read them unchanged; hindsight's own facts (who, from where, which
//! statement, which request) are extra fields in `source`, which Debezium consumers ignore.
//!
//! Row images are JSON objects of column name → value as PostgreSQL's `to_jsonb` renders it
//! (numbers stay exact, NaN/Infinity and types without a JSON form become strings in
//! PostgreSQL's text format), so `jsonb_populate_record` turns them back into the exact row.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A row image: column name → value.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// A row image as PostgreSQL rendered it (`to_jsonb`'s text), kept as that text from the
/// server's DataRow to the published event: nothing parses it unless it needs values from it
/// (the key, a gate's row rule, redaction, footprints). The text costs what the server sent;
/// a parsed [`Row`] costs several times that, per value, for as long as the transaction is
/// open. Valid JSON and an object, checked when made.
#[derive(Debug, Clone)]
pub struct Image(Box<serde_json::value::RawValue>);

impl Image {
    /// `text` as an image, if it is a JSON object.
    pub fn from_json(text: String) -> Result<Image, String> {
        if !text.starts_with('{') {
            return Err(format!(
                "row image is not a JSON object: {}",
                text.chars().take(80).collect::<String>()
            ));
        }
        serde_json::value::RawValue::from_string(text)
            .map(Image)
            .map_err(|e| format!("row image is not JSON: {e}"))
    }

    /// The image of a parsed row.
    pub fn from_row(row: &Row) -> Image {
        Image(serde_json::value::to_raw_value(row).expect("a JSON map serialises"))
    }

    /// The image's JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Parse the whole image.
    pub fn row(&self) -> Row {
        serde_json::from_str(self.json()).expect("an image is a JSON object (checked when made)")
    }

    /// The key columns' values (the whole row when the table has no key; see [`key_of`]),
    /// parsing only those columns' values.
    pub fn key(&self, key: &[String]) -> Row {
        if key.is_empty() {
            return self.row();
        }
        let fields = Fields::of(self.json(), key);
        key.iter()
            .map(|k| {
                let value = fields
                    .get(k)
                    .and_then(|raw| serde_json::from_str(raw.get()).ok())
                    .unwrap_or(serde_json::Value::Null);
                (k.clone(), value)
            })
            .collect()
    }

    /// [`Image::key`] as JSON text (a map key).
    pub fn key_json(&self, key: &[String]) -> String {
        serde_json::to_string(&self.key(key)).unwrap_or_default()
    }

    /// A copy changed by `edit` on its parsed row (redaction).
    pub fn edited(&self, edit: impl FnOnce(&mut Row)) -> Image {
        let mut row = self.row();
        edit(&mut row);
        Image::from_row(&row)
    }
}

/// The same JSON object, whatever the spacing (PostgreSQL's text has spaces, serde_json's none).
impl PartialEq for Image {
    fn eq(&self, other: &Image) -> bool {
        self.json() == other.json() || self.row() == other.row()
    }
}

impl Default for Image {
    /// `{}`.
    fn default() -> Image {
        Image::from_row(&Row::new())
    }
}

impl Serialize for Image {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Read as the text it is (restore's plan files), and refused unless it is an object.
impl<'de> Deserialize<'de> for Image {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Image, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        match raw.get().starts_with('{') {
            true => Ok(Image(raw)),
            false => Err(serde::de::Error::custom(format!(
                "a row image must be a JSON object, not {}",
                raw.get().chars().take(80).collect::<String>()
            ))),
        }
    }
}

/// Some of an image's top-level fields, their values unparsed (see [`Image::key`]).
struct Fields<'a>(BTreeMap<String, &'a serde_json::value::RawValue>);

impl<'a> Fields<'a> {
    /// The fields of `json` (an object) named in `wanted`.
    fn of(json: &'a str, wanted: &[String]) -> Fields<'a> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(json);
        Fields(Wanted(wanted).deserialize(&mut de).unwrap_or_default())
    }

    fn get(&self, name: &str) -> Option<&&'a serde_json::value::RawValue> {
        self.0.get(name)
    }
}

/// Reads an object keeping only the named fields, without parsing any value.
struct Wanted<'w>(&'w [String]);

impl<'de> serde::de::DeserializeSeed<'de> for Wanted<'_> {
    type Value = BTreeMap<String, &'de serde_json::value::RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Wanted<'_> {
    type Value = BTreeMap<String, &'de serde_json::value::RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a row image (a JSON object)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            let raw: &'de serde_json::value::RawValue = map.next_value()?;
            if self.0.iter().any(|w| *w == name) {
                out.insert(name.into_owned(), raw);
            }
        }
        Ok(out)
    }
}

/// A field name, borrowed from the text unless it holds escapes.
struct Name<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// What happened to the row (Debezium's `op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Insert (create).
    #[serde(rename = "c")]
    Create,
    #[serde(rename = "u")]
    Update,
    #[serde(rename = "d")]
    Delete,
    /// A row removed by TRUNCATE (`before` holds it).
    #[serde(rename = "t")]
    Truncate,
    /// A row as a snapshot read it (`hindsight archive snapshot`): `after` holds it. Not a
    /// change: it gives history a starting point for rows that never changed since.
    #[serde(rename = "r")]
    Read,
    /// A write a gate refused; `before`/`after` are what would have changed.
    #[serde(rename = "blocked")]
    Blocked,
    /// A schema change (CREATE/ALTER/DROP/…): a statement-level event on
    /// `<prefix>.statements`, no row images.
    #[serde(rename = "ddl")]
    Ddl,
    /// A statement whose row changes hindsight cannot see (DO, CALL, EXECUTE, unknown
    /// statements): a statement-level event on `<prefix>.statements`, no row images.
    #[serde(rename = "opaque")]
    Opaque,
}

/// Where a cascaded row's change comes from (`source.cascade`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeSource {
    /// The foreign key constraint's name.
    pub constraint: String,
    /// The referenced table, `schema.name`.
    pub parent_table: String,
    /// The referenced row's key: the referenced columns and their values.
    pub parent_key: serde_json::Value,
}

/// Debezium's `source` block plus hindsight's attribution fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// hindsight's version.
    pub version: String,
    /// Always `"hindsight"` (Debezium: `"postgresql"`).
    pub connector: String,
    /// The topic prefix (Debezium: the logical server name).
    pub name: String,
    /// When the statement ran (milliseconds since the epoch).
    pub ts_ms: i64,
    /// `"false"` for live changes, `"true"` for snapshot reads (`op: "r"`).
    pub snapshot: String,
    pub db: String,
    pub schema: String,
    pub table: String,
    /// PostgreSQL transaction id (`pg_current_xact_id()`), when the transaction has one.
    #[serde(rename = "txId")]
    pub tx_id: Option<i64>,
    /// Database user of the session.
    pub user: String,
    /// `application_name` of the session at the time of the statement.
    pub application_name: String,
    /// Client address as hindsight saw it (`ip:port`).
    pub client_addr: String,
    /// The statement as the client sent it (without its sqlcommenter comment).
    pub statement: String,
    /// pg_query fingerprint of the statement (equal for statements differing only in constants).
    pub fingerprint: String,
    /// sqlcommenter tags of the statement (`controller`, `action`, `traceparent`, …).
    pub tags: BTreeMap<String, String>,
    /// hindsight's id of the client session (unique per proxy process start).
    pub session_id: String,
    /// Number of the statement within the session (1-based).
    pub statement_seq: u64,
    /// `"uncaptured"` when triggers or cascading foreign keys may have changed rows in other
    /// tables that this event does not cover; those tables are in `side_effect_tables`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub side_effects: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub side_effect_tables: Vec<String>,
    /// For `blocked` events: the rule that refused the write.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub blocked_by: Option<String>,
    /// A gate rule in audit (dry-run) mode that would have refused this change.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dry_run_rule: Option<String>,
    /// The images went through PII redaction: they are not the data, and restore refuses them.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub redacted: bool,
    /// The foreign key whose ON DELETE action changed this row (the statement's cascade).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cascade: Option<CascadeSource>,
}

/// Debezium's `transaction` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxPosition {
    /// Transaction id: `"<session_id>:<n>"` (unique even for transactions without a txid).
    pub id: String,
    /// Position of this event among all events of the transaction (1-based).
    pub total_order: u64,
    /// Position among the transaction's events for the same table (1-based).
    pub data_collection_order: u64,
}

/// One changed row: the message value on `<prefix>.<schema>.<table>`. Read back with its images
/// parsed ([`Row`]); published with them as captured ([`Image`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent<I = Row> {
    pub before: Option<I>,
    pub after: Option<I>,
    pub source: Source,
    pub op: Op,
    /// When hindsight produced the event.
    pub ts_ms: i64,
    pub transaction: TxPosition,
}

/// The message key of a change event: the table and the row's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeKey {
    /// `schema.table`.
    pub table: String,
    /// Key columns → values (primary key, else replica identity / unique index, else the
    /// whole row image).
    pub key: Row,
}

/// BEGIN or END of a transaction, on the `<prefix>.transaction` topic (Debezium's
/// transaction metadata topic, plus the commit outcome).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionRecord {
    /// `BEGIN` or `END`.
    pub status: TxStatus,
    /// Same as `transaction.id` in the change events.
    pub id: String,
    /// PostgreSQL transaction id, when one was assigned.
    #[serde(rename = "txId")]
    pub tx_id: Option<i64>,
    /// Number of change events in the transaction (both records carry it).
    pub event_count: u64,
    /// Events per table.
    pub data_collections: Vec<DataCollection>,
    pub ts_ms: i64,
    /// On END: whether the server committed. Absent on BEGIN.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub commit_status: Option<CommitStatus>,
    /// On an END that in-doubt healing published (the proxy that wrote the BEGIN stopped
    /// before its END): how the outcome was decided. Absent on the proxy's own records.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resolution: Option<Resolution>,
}

/// How an in-doubt transaction's END was decided (see `crate::in_doubt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// What decided it.
    pub by: ResolvedBy,
    /// What `txid_status(txId)` answered (`committed`, `aborted`), when it was asked and
    /// answered; `null` when the server no longer knew the txid.
    pub txid_status: Option<String>,
    /// The hindsight replica that resolved it.
    pub resolver: String,
    /// When the BEGIN was published (the END's own `ts_ms` is when it was resolved).
    pub begin_ts_ms: i64,
}

/// What decided an in-doubt transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedBy {
    /// `txid_status()` on the upstream server said committed or aborted.
    TxidStatus,
    /// The server no longer knows the txid (too old): `commit_status` is `unknown`.
    TxidUnknownToServer,
    /// The BEGIN had no txid (a statement announced outside a transaction, whose
    /// process stopped before it ended): `commit_status` is `unknown`.
    NoTxid,
    /// `txid_status()` said the txid is in the future: the server crashed before the
    /// transaction's first WAL record was durable, so it never committed (`aborted`).
    TxidInFuture,
    /// The server crashed and recovered after the BEGIN, and the txid is at or past the first
    /// txid after recovery: it never committed (`aborted`), and the txid may since belong to
    /// another transaction, so `txid_status()` is not asked.
    LostInCrash,
    /// The server restarted after the BEGIN, it cannot be told whether that was a crash that
    /// lost the txid (which may then belong to another transaction), and `txid_status()` said
    /// committed: `commit_status` is `unknown`.
    ServerRestarted,
    /// A later BEGIN carries the same txid: the server crashed after this BEGIN, lost the
    /// transaction before it was durable and handed the txid out again (`aborted`; not
    /// asked, `txid_status()` would describe the other transaction).
    TxidReissued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TxStatus {
    Begin,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitStatus {
    Committed,
    Aborted,
    /// Only on ENDs that in-doubt healing published: the outcome cannot be known (see
    /// [`ResolvedBy`]). Never counts as committed.
    Unknown,
}

impl CommitStatus {
    /// As the records spell it.
    pub fn name(self) -> &'static str {
        match self {
            CommitStatus::Committed => "committed",
            CommitStatus::Aborted => "aborted",
            CommitStatus::Unknown => "unknown",
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCollection {
    /// `schema.table`.
    pub data_collection: String,
    pub event_count: u64,
    /// The topic its events went to (`kafka.topic_routing`). Absent in records from before
    /// 0.x and in in-doubt ENDs: then its table's topic, `<prefix>.<schema>.<table>`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub topic: Option<String>,
}

impl ChangeKey {
    /// Kafka message key bytes (JSON; stable field order, so equal keys hash to one partition).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serialising a JSON map cannot fail")
    }
}

/// The key columns' values of `row` (the whole row when the table has no key).
pub fn key_of(row: &Row, key: &[String]) -> Row {
    if key.is_empty() {
        return row.clone();
    }
    key.iter()
        .map(|k| {
            (
                k.clone(),
                row.get(k).cloned().unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

/// [`key_of`] as JSON text (a map key).
pub fn key_json(row: &Row, key: &[String]) -> String {
    serde_json::to_string(&key_of(row, key)).unwrap_or_default()
}

/// Milliseconds since the epoch as an RFC 3339 UTC time with milliseconds
/// (`2026-12-04T10:00:00.123Z`), for people reading records.
pub fn utc(ts_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_keep_the_servers_text_and_give_keys_as_parsed_rows_did() {
        let text = r#"{"a": 1.50, "b\"q": "x\ny", "id": 7, "nested": {"z": [1, 2]}}"#;
        let image = Image::from_json(text.to_string()).unwrap();
        assert_eq!(image.json(), text);
        let row = image.row();
        for key in [
            vec!["id".to_string()],
            vec!["b\"q".to_string(), "a".to_string()],
            vec!["nested".to_string(), "missing".to_string()],
            vec![],
        ] {
            assert_eq!(image.key(&key), key_of(&row, &key), "{key:?}");
            assert_eq!(image.key_json(&key), key_json(&row, &key));
        }
        assert_eq!(image.key(&["a".into()])["a"].to_string(), "1.50");
        // The event carries the text as it is.
        let ev: ChangeEvent<Image> = ChangeEvent {
            before: None,
            after: Some(image.clone()),
            source: sample_source(),
            op: Op::Create,
            ts_ms: 0,
            transaction: TxPosition {
                id: "s:1".into(),
                total_order: 1,
                data_collection_order: 1,
            },
        };
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains(&format!("\"after\":{text}")), "{json}");
        let back: ChangeEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back.after, Some(row.clone()));
        assert_eq!(Image::from_row(&row), image);
        for bad in ["[1]", "{", "\"x\"", ""] {
            assert!(Image::from_json(bad.to_string()).is_err(), "{bad}");
        }
    }

    fn sample_source() -> Source {
        Source {
            version: "0.1.0".into(),
            connector: "hindsight".into(),
            name: "hindsight".into(),
            ts_ms: 1,
            snapshot: "false".into(),
            db: "demo".into(),
            schema: "public".into(),
            table: "brieff".into(),
            tx_id: Some(7),
            user: "app".into(),
            application_name: "web".into(),
            client_addr: "127.0.0.1:5000".into(),
            statement: "UPDATE brieff SET bfso = NULL".into(),
            fingerprint: "ab".into(),
            tags: BTreeMap::new(),
            session_id: "s1".into(),
            statement_seq: 3,
            side_effects: None,
            side_effect_tables: vec![],
            blocked_by: None,
            dry_run_rule: None,
            redacted: false,
            cascade: None,
        }
    }

    #[test]
    fn envelope_has_debeziums_field_names() {
        let ev = ChangeEvent {
            before: Some(Row::from_iter([("bfso".into(), "A".into())])),
            after: Some(Row::from_iter([("bfso".into(), serde_json::Value::Null)])),
            source: sample_source(),
            op: Op::Update,
            ts_ms: 2,
            transaction: TxPosition {
                id: "s1:1".into(),
                total_order: 1,
                data_collection_order: 1,
            },
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["op"], "u");
        assert_eq!(v["source"]["txId"], 7);
        assert_eq!(v["transaction"]["total_order"], 1);
        assert!(v["after"]["bfso"].is_null());
        let back: ChangeEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }
}
