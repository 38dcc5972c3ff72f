//! Capture end to end: writes through hindsight (both protocols) against real PostgreSQL
//! 15 and 18, audit records read back from the real broker. This file holds the helpers; the
//! tests are split by topic:
//! - `refusals` — refusals: what cannot be captured (HS002) or recorded (HS001) does not run or
//!   does not commit, and the client is told why.
//! - `protocols` — both protocols: extended-protocol batches, pipelines, portals and deferred
//!   Executes, transaction control mixed with writes, error positions.
//! - `encodings` — encodings and types: client encodings other than UTF-8, prepared statements
//!   across an encoding change, every built-in type.
//! - `large` — large transactions: toasted rows, more than the producer queue or the message
//!   size, capture.max_transaction_bytes.
//! - `kinds` — statement kinds: upsert, MERGE, TRUNCATE, COPY, data-modifying CTEs, views and
//!   writing functions, PostgreSQL 18 syntax, key changes.
//! - `cascades` — rows foreign-key cascades change: their own exact events, both protocols.
//! - `promise` — the core promise: before/after images of committed work, nothing for rolled-back
//!   work, side effects marked, redaction before publishing, the table cache following DDL.

use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{self, Pg};

use harness::read_topic_json as read_topic;

mod cascades;
mod encodings;
mod kinds;
mod large;
mod promise;
mod protocols;
mod refusals;

/// Validate records against the JSON Schema shipped in schema/ (what consumers are promised).
pub fn validate(name: &str, records: &[Value]) {
    let path = format!("{}/schema/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for r in records {
        let errors: Vec<String> = validator
            .iter_errors(r)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{name} record does not match {path}: {errors:#?}\n{r:#}"
        );
        // The schema must be able to fail: an unknown member is rejected.
        let mut bad = r.clone();
        bad["unexpected"] = Value::from(1);
        assert!(!validator.is_valid(&bad), "{path} accepts unknown members");
    }
}

/// The legacy-style table every capture test starts with.
const BRIEFF: &str = "CREATE TABLE brieff (bfkey int PRIMARY KEY, bfso text, amount numeric(12,2), f float8, tags text[]);
     INSERT INTO brieff SELECT g, 'rep' || g, g * 1.25, 'NaN', ARRAY['a', 'b'] FROM generate_series(1, 25) g;";

async fn setup(pg: Pg, label: &str) -> (String, String, hindsight::proxy::Running) {
    let db = harness::fresh_db(pg, label).await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct.batch_execute(BRIEFF).await.unwrap();
    let (prefix, proxy) = harness::capturing_proxy(pg, label, |_| {}).await;
    (db, prefix, proxy)
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

fn tags(msgs: &[SimpleQueryMessage]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

/// `(op, before[column], after[column])` of each event: what most assertions compare.
fn changes(events: &[Value], column: &str) -> Vec<(String, Value, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["before"][column].clone(),
                e["after"][column].clone(),
            )
        })
        .collect()
}

/// Every step's replies (after the first: start-up) equal through hindsight and directly, once
/// normalised (process ids, secret keys).
fn assert_same_replies(
    through: &mut [Vec<super::wire_client::Frame>],
    direct: &mut [Vec<super::wire_client::Frame>],
) {
    use crate::differential::normalise;
    use crate::wire_client::describe_frames;
    for (i, (a, b)) in through
        .iter_mut()
        .zip(direct.iter_mut())
        .enumerate()
        .skip(1)
    {
        normalise(a);
        normalise(b);
        assert_eq!(
            describe_frames(a),
            describe_frames(b),
            "step {i}: through hindsight vs direct"
        );
    }
}

/// Zero the table OIDs in RowDescriptions: the same table has another OID in another database.
fn zero_table_oids(steps: &mut [Vec<super::wire_client::Frame>]) {
    for f in steps.iter_mut().flatten().filter(|f| f[0] == b'T') {
        let count = u16::from_be_bytes([f[5], f[6]]);
        let mut at = 7;
        for _ in 0..count {
            at += f[at..].iter().position(|b| *b == 0).expect("field name") + 1;
            f[at..at + 4].fill(0);
            at += 18;
        }
    }
}

/// The direct side of a differential test: a database of its own with the same starting data
/// (`BRIEFF`), as `(name, connection)`.
async fn direct_twin(pg: Pg, label: &str) -> (String, tokio_postgres::Client) {
    let db = harness::fresh_db(pg, &format!("{label}_direct")).await;
    let c = harness::connect(pg.addr(), "postgres", &db).await;
    c.batch_execute(BRIEFF).await.unwrap();
    (db, c)
}

/// Run `steps` through hindsight (`proxy`, database `db`) and directly (database `twin`): the
/// replies must be equal step by step (table OIDs zeroed: the two databases differ).
async fn assert_same_as_direct(
    pg: Pg,
    proxy: std::net::SocketAddr,
    db: &str,
    twin: &str,
    steps: &[super::differential::Step],
) {
    let mut through = super::differential::run(proxy, db, 0, steps).await;
    let mut plain = super::differential::run(pg.addr(), twin, 0, steps).await;
    zero_table_oids(&mut through);
    zero_table_oids(&mut plain);
    assert_same_replies(&mut through, &mut plain);
}

/// Run `sql` directly in each of `dbs` (a database under test and its direct twin).
async fn execute_in(pg: Pg, dbs: [&str; 2], sql: &str) {
    for d in dbs {
        harness::connect(pg.addr(), "postgres", d)
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} in {d}: {e:?}"));
    }
}

/// Both databases' `brieff` tables hold the same rows (through hindsight and direct).
async fn assert_same_brieff(mine: &tokio_postgres::Client, theirs: &tokio_postgres::Client) {
    let dump = "SELECT string_agg(format('%s', b), ';' ORDER BY bfkey) FROM brieff b";
    let a: String = mine.query_one(dump, &[]).await.unwrap().get(0);
    let b: String = theirs.query_one(dump, &[]).await.unwrap().get(0);
    assert_eq!(a, b);
}

/// The `commit_status` of the END record of transaction `id` among the records `tx`.
fn end_status(tx: &[Value], id: &Value) -> Value {
    tx.iter()
        .find(|r| r["status"] == "END" && r["id"] == *id)
        .unwrap_or_else(|| panic!("no END for {id}: {tx:#?}"))["commit_status"]
        .clone()
}

/// `(op, statement)` of each statement-level event.
fn statements(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["source"]["statement"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
