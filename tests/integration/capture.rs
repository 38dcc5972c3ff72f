//! Capture end to end: writes through hindsight (simple query protocol) against real PostgreSQL
//! 15 and 18, audit records read back from the real broker.

use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{self, Pg};

use harness::read_topic_json as read_topic;

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
    use super::differential::normalise;
    use super::wire_client::describe_frames;
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

/// The incident: a leaked code path sets a column to NULL on 18 rows in autocommit. Every row's
/// previous value must be on the topic, with who/what/which request.
async fn incident_update_is_captured_with_before_values(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "incident").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let msgs = c
        .simple_query("UPDATE brieff SET bfso = NULL WHERE bfkey <= 18 /*controller='certification',action='update'*/")
        .await
        .unwrap();
    assert_eq!(tags(&msgs), vec![18], "client sees the same command tag");
    assert!(
        rows(&msgs).is_empty(),
        "no rows leak to a client that asked for none"
    );
    let events = read_topic(format!("{prefix}.public.brieff"), 18).await;
    assert_eq!(events.len(), 18, "one event per changed row: {events:#?}");
    for e in &events {
        let key = e["before"]["bfkey"].as_i64().unwrap();
        assert_eq!(e["op"], "u");
        assert_eq!(e["before"]["bfso"], format!("rep{key}"), "{e}");
        assert!(e["after"]["bfso"].is_null(), "{e}");
        assert_eq!(
            e["after"]["amount"].to_string(),
            format!("{:.2}", key as f64 * 1.25),
            "numeric exact: {e}"
        );
        assert_eq!(e["after"]["f"], "NaN");
        assert_eq!(e["source"]["tags"]["controller"], "certification");
        assert_eq!(e["source"]["user"], "postgres");
        assert_eq!(e["source"]["db"], db.as_str());
        assert_eq!(e["source"]["table"], "brieff");
        assert!(e["source"]["txId"].as_i64().is_some(), "{e}");
        assert!(e["source"]["statement"]
            .as_str()
            .unwrap()
            .starts_with("UPDATE brieff SET bfso = NULL"));
    }
    validate("change-event", &events);
    let tx = read_topic(format!("{prefix}.transaction"), 2).await;
    validate("transaction", &tx);
    assert_eq!(tx.len(), 2, "BEGIN and END: {tx:#?}");
    assert_eq!(tx[0]["status"], "BEGIN");
    assert_eq!(tx[0]["event_count"], 18);
    assert_eq!(tx[1]["status"], "END");
    assert_eq!(tx[1]["commit_status"], "committed");
    // `hindsight tail` shows the same changes readably.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hindsight"))
        .args([
            "tail",
            "--kafka-brokers",
            &harness::kafka_brokers(),
            "--topic-prefix",
            &prefix,
        ])
        .args([
            "--table",
            "public.brieff",
            "--from-beginning",
            "--max",
            "18",
            "--idle-timeout",
            "20s",
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.matches("Z UPDATE public.brieff {\"bfkey\":").count(),
        18,
        "each line starts with a UTC time and shows the row key: {text}"
    );
    assert!(
        text.contains("UPDATE public.brieff {\"bfkey\":7} by postgres"),
        "{text}"
    );
    assert!(text.contains("bfso: \"rep7\" → null"), "{text}");
    assert!(
        text.contains("[action=update controller=certification]"),
        "{text}"
    );
    // And the write did commit.
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    let n = harness::count(&direct, "SELECT count(*) FROM brieff WHERE bfso IS NULL").await;
    assert_eq!(n, 18);
    proxy.shutdown().await;
}

/// Rolled-back work publishes nothing; ROLLBACK TO SAVEPOINT drops exactly what followed it;
/// the client's own RETURNING rows arrive without hindsight's columns.
async fn transactions_publish_only_committed_work(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "txn").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("DELETE FROM brieff WHERE bfkey = 1")
        .await
        .unwrap();
    c.simple_query("ROLLBACK").await.unwrap();

    c.simple_query("BEGIN").await.unwrap();
    let ins = c
        .simple_query("INSERT INTO brieff (bfkey, bfso) VALUES (100, 'new') RETURNING bfkey, bfso")
        .await
        .unwrap();
    assert_eq!(
        rows(&ins),
        vec![vec![Some("100".to_string()), Some("new".to_string())]]
    );
    c.simple_query("SAVEPOINT a").await.unwrap();
    c.simple_query("DELETE FROM brieff WHERE bfkey = 2")
        .await
        .unwrap();
    c.simple_query("ROLLBACK TO SAVEPOINT a").await.unwrap();
    let del = c
        .simple_query("DELETE FROM brieff WHERE bfkey = 3")
        .await
        .unwrap();
    assert_eq!(tags(&del), vec![1]);
    // A failing statement inside the transaction aborts it, exactly as without hindsight.
    let err = c
        .simple_query("UPDATE brieff SET bfkey = 4 WHERE bfkey = 5")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"));
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"));
    c.simple_query("ROLLBACK").await.unwrap();

    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("INSERT INTO brieff (bfkey, bfso) VALUES (100, 'new')")
        .await
        .unwrap();
    c.simple_query("SAVEPOINT a").await.unwrap();
    c.simple_query("DELETE FROM brieff WHERE bfkey = 2")
        .await
        .unwrap();
    c.simple_query("ROLLBACK TO SAVEPOINT a").await.unwrap();
    c.simple_query("DELETE FROM brieff WHERE bfkey = 3")
        .await
        .unwrap();
    c.simple_query("COMMIT").await.unwrap();

    let events = read_topic(format!("{prefix}.public.brieff"), 2).await;
    let summary: Vec<(String, Value)> = events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["after"]["bfkey"].clone().max_null(&e["before"]["bfkey"]),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("c".to_string(), Value::from(100)),
            ("d".to_string(), Value::from(3))
        ],
        "only the committed transaction's surviving changes: {events:#?}"
    );
    assert_eq!(events[1]["transaction"]["total_order"], 2);
    assert_eq!(
        events[0]["transaction"]["id"],
        events[1]["transaction"]["id"]
    );
    proxy.shutdown().await;
}

trait MaxNull {
    fn max_null(self, other: &Value) -> Value;
}
impl MaxNull for Value {
    fn max_null(self, other: &Value) -> Value {
        if self.is_null() {
            other.clone()
        } else {
            self
        }
    }
}

/// If the audit records cannot be published the write must not commit, and the client is
/// told why (SQLSTATE HS001).
async fn unpublishable_write_is_rolled_back(pg: Pg) {
    let db = harness::fresh_db(pg, "nopub").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'kept')",
        )
        .await
        .unwrap();
    let prefix = harness::random_prefix("nopub");
    let proxy = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = prefix;
        c.kafka.create_topics = false; // and nobody created them
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let err = c
        .simple_query("UPDATE t SET v = 'lost' WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"), "{err:?}");
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(
        msg.contains("rolled back") && msg.contains("topics missing"),
        "{msg}"
    );
    // The session is usable and nothing was written.
    let v = c
        .simple_query("SELECT v FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(rows(&v), vec![vec![Some("kept".to_string())]]);
    let v: String = direct
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "kept");
    // Same inside an explicit transaction: COMMIT fails with HS001 and nothing commits.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("UPDATE t SET v = 'lost' WHERE id = 1")
        .await
        .unwrap();
    let err = c.simple_query("COMMIT").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"));
    let v: String = direct
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "kept");
    assert!(
        c.simple_query("SELECT 1").await.is_ok(),
        "session is idle again after the failed COMMIT"
    );
    // A schema change whose record cannot be published does not run (either protocol).
    let err = c.simple_query("DROP TABLE t").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"), "{err:?}");
    let err = c.execute("DROP TABLE t", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"), "{err:?}");
    let n = harness::count(&direct, "SELECT count(*) FROM t").await;
    assert_eq!(n, 1, "the table is still there");
    proxy.shutdown().await;
}

/// DDL and statements whose row changes hindsight cannot see (DO, CALL) are each recorded as a
/// statement-level event on `<prefix>.statements`: outside a transaction block before they
/// run (END says whether they succeeded), inside one with the transaction's other events.
async fn ddl_and_opaque_statements_are_recorded(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "stmt_events").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("CREATE TABLE t2 (id int PRIMARY KEY) /*controller='migrations'*/")
        .await
        .unwrap();
    c.simple_query("DO $$BEGIN UPDATE brieff SET bfso = 'by-do' WHERE bfkey = 1; END$$")
        .await
        .unwrap();
    let err = c
        .simple_query("CREATE TABLE brieff (x int)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("42P07"),
        "the server's own error"
    );
    // Statements that refuse to run in a transaction block still run (not wrapped).
    c.simple_query("CREATE INDEX CONCURRENTLY t2_idx ON t2 (id)")
        .await
        .unwrap();
    // Inside a transaction: only what commits is recorded.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("ALTER TABLE t2 ADD COLUMN gone text")
        .await
        .unwrap();
    c.simple_query("ROLLBACK").await.unwrap();
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("ALTER TABLE t2 ADD COLUMN v text")
        .await
        .unwrap();
    c.execute(
        "UPDATE brieff SET bfso = 'in-tx' WHERE bfkey = $1",
        &[&2i32],
    )
    .await
    .unwrap();
    c.simple_query("COMMIT").await.unwrap();
    // Extended protocol, autocommit and in a transaction.
    c.execute(
        "CREATE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM t2 $$",
        &[],
    )
    .await
    .unwrap();
    c.execute("CALL p()", &[]).await.unwrap();
    // A schema change the server would run in an implicit transaction of its own, in a query
    // string that also controls the transaction, is refused.
    let err = c
        .simple_query("DROP TABLE t2; BEGIN; COMMIT")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS002"), "{err:?}");
    let events = read_topic(format!("{prefix}.statements"), 7).await;
    validate("change-event", &events);
    let got = statements(&events);
    let want = [
        ("ddl", "CREATE TABLE t2 (id int PRIMARY KEY)"),
        (
            "opaque",
            "DO $$BEGIN UPDATE brieff SET bfso = 'by-do' WHERE bfkey = 1; END$$",
        ),
        ("ddl", "CREATE TABLE brieff (x int)"),
        ("ddl", "CREATE INDEX CONCURRENTLY t2_idx ON t2 (id)"),
        ("ddl", "ALTER TABLE t2 ADD COLUMN v text"),
        (
            "ddl",
            "CREATE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM t2 $$",
        ),
        ("opaque", "CALL p()"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want, "{events:#?}");
    assert_eq!(events[0]["source"]["table"], "t2");
    assert_eq!(events[0]["source"]["tags"]["controller"], "migrations");
    assert!(
        events[4]["source"]["txId"].is_i64(),
        "in-transaction DDL carries its txid"
    );
    // The ALTER and the UPDATE are one transaction.
    let rows = read_topic(format!("{prefix}.public.brieff"), 1).await;
    assert_eq!(rows[0]["transaction"]["id"], events[4]["transaction"]["id"]);
    // END records: the failed CREATE TABLE is aborted, the others committed.
    let tx = read_topic(format!("{prefix}.transaction"), 14).await;
    validate("transaction", &tx);
    let end_of = |id: &Value| end_status(&tx, id);
    assert_eq!(end_of(&events[0]["transaction"]["id"]), "committed");
    assert_eq!(end_of(&events[2]["transaction"]["id"]), "aborted");
    assert_eq!(end_of(&events[6]["transaction"]["id"]), "committed");
    proxy.shutdown().await;
}

/// Writes hindsight cannot capture yet are refused, not run unaudited.
async fn uncapturable_writes_are_refused_not_run(pg: Pg) {
    let (db, _prefix, proxy) = setup(pg, "refuse").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let err = c
        .simple_query("EXPLAIN ANALYZE DELETE FROM brieff WHERE bfkey = 1")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS002"), "{err:?}");
    // Text the parser cannot read but that may write is refused on a server newer than the
    // parser's grammar, not relayed unaudited (`parser_may_lag`); PostgreSQL 18's one such
    // write syntax, RETURNING WITH (OLD AS …), is now read (`pg18_syntax`): on 15 it is the
    // server's own syntax error, at the client's position.
    if pg.major() < 18 {
        let err = c
            .simple_query(
                "UPDATE brieff SET bfso = NULL WHERE bfkey = 1 RETURNING WITH (OLD AS o) o.bfso",
            )
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{err:?}");
        assert_eq!(
            err.as_db_error().and_then(|e| e.position()),
            Some(&tokio_postgres::error::ErrorPosition::Original(57)),
            "{err:?}"
        );
    }
    // A plain syntax error in a read is still the server's own.
    let err = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{err:?}");
    // So is one in a write, on every server (PostgreSQL 18 is asked to describe the text;
    // the server's error was once replaced by HS002 there), in both protocols.
    for sql in [
        "delete from;",
        "INSERT INTO brieff VALUES (1) brieff",
        "SELECT 5 ; SELECT 6 + ; DELETE FROM brieff",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("42601"),
            "{sql}: {err:?}"
        );
        let err = c.execute(sql, &[]).await.unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("42601"),
            "{sql}: {err:?}"
        );
    }
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    let n = harness::count(
        &direct,
        "SELECT count(*) FROM brieff WHERE bfso IS NOT NULL",
    )
    .await;
    assert_eq!(n, 25, "nothing was written");
    let n: i64 = c
        .query_one("SELECT count(*) FROM brieff WHERE bfkey > $1", &[&0i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 25, "reads through the extended protocol keep working");
    proxy.shutdown().await;
}

/// The extended protocol (tokio-postgres prepares every statement): parameters, prepared
/// once and executed many times, the client's RETURNING rows, binary results, autocommit and
/// explicit transactions.
async fn extended_protocol_writes_are_captured(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "extended").await;
    let mut c = harness::connect(proxy.addr, "postgres", &db).await;
    let insert = c
        .prepare("INSERT INTO brieff (bfkey, bfso) VALUES ($1, $2) RETURNING bfkey, bfso")
        .await
        .unwrap();
    for k in 200..205i32 {
        let row = c.query_one(&insert, &[&k, &format!("x{k}")]).await.unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            k,
            "binary result columns of the client intact"
        );
        assert_eq!(row.get::<_, String>(1), format!("x{k}"));
    }
    let n = c
        .execute("DELETE FROM brieff WHERE bfkey = $1", &[&200i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let tx = c.transaction().await.unwrap();
    tx.execute("DELETE FROM brieff WHERE bfkey = $1", &[&201i32])
        .await
        .unwrap();
    tx.execute("INSERT INTO brieff (bfkey) VALUES ($1)", &[&300i32])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // UPDATE (PostgreSQL < 18: a companion pre-read statement with the same parameters).
    let n = c
        .execute("UPDATE brieff SET bfso = NULL WHERE bfkey <= $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(n, 3);
    // A parameter that only the SET list uses, prepared once and run twice in a transaction
    // (the companion portal is re-bound), then closed.
    let set = c
        .prepare("UPDATE brieff SET bfso = $1 WHERE bfkey = $2")
        .await
        .unwrap();
    let tx = c.transaction().await.unwrap();
    assert_eq!(tx.execute(&set, &[&"v4", &4i32]).await.unwrap(), 1);
    assert_eq!(tx.execute(&set, &[&"v5", &5i32]).await.unwrap(), 1);
    tx.commit().await.unwrap();
    drop(set);
    assert_eq!(c.execute(&insert, &[&206i32, &"y"]).await.unwrap(), 1);
    let want = 5 + 1 + 2 + 3 + 2 + 1;
    let events = read_topic(format!("{prefix}.public.brieff"), want).await;
    assert_eq!(events.len(), want, "{events:#?}");
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["c", "c", "c", "c", "c", "d", "d", "c", "u", "u", "u", "u", "u", "c"]
    );
    assert_eq!(events[5]["before"]["bfso"], "x200");
    assert_eq!(
        events[6]["transaction"]["id"], events[7]["transaction"]["id"],
        "one transaction"
    );
    assert_eq!(events[8]["before"]["bfso"], "rep1");
    assert!(events[8]["after"]["bfso"].is_null());
    assert_eq!(events[11]["before"]["bfkey"], 4);
    assert_eq!(events[11]["before"]["bfso"], "rep4");
    assert_eq!(events[11]["after"]["bfso"], "v4");
    assert_eq!(events[12]["before"]["bfso"], "rep5");
    assert_eq!(events[12]["after"]["bfso"], "v5");
    assert_eq!(
        events[11]["transaction"]["id"], events[12]["transaction"]["id"],
        "one transaction"
    );
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    let n = harness::count(&direct, "SELECT count(*) FROM brieff WHERE bfkey >= 200").await;
    assert_eq!(n, 5, "202, 203, 204, 206 and 300 committed");
    proxy.shutdown().await;
}

/// Regression: a COMMIT sent through the extended protocol (unnamed portal, as pgbench -M
/// prepared and tokio-postgres `execute("COMMIT")` do) failed with "portal \"\" does not exist":
/// hindsight's catalog lookup went as a simple Query mid-batch, which drops the unnamed portal.
async fn extended_commit_keeps_the_clients_unnamed_portal(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "extcommit").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.execute("BEGIN", &[]).await.unwrap();
    c.execute(
        "INSERT INTO brieff (bfkey, bfso) VALUES ($1, 'in tx')",
        &[&900i32],
    )
    .await
    .unwrap();
    c.execute("COMMIT", &[])
        .await
        .expect("COMMIT through the extended protocol");
    let events = read_topic(format!("{prefix}.public.brieff"), 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["after"]["bfso"], "in tx");
    proxy.shutdown().await;
}

/// Regression: on PostgreSQL < 18 an UPDATE whose WHERE fails (here a type error) failed in
/// hindsight's pre-read, whose error was swallowed: the client got neither error nor tag.
async fn failing_autocommit_write_returns_the_servers_error(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "failing").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    for sql in [
        "UPDATE brieff SET bfso = NULL WHERE bfso <= 3",
        "UPDATE brieff SET bfkey = 2 WHERE bfkey = 1",
        "DELETE FROM brieff WHERE nosuchcolumn = 1",
        "INSERT INTO brieff (bfkey) VALUES (1)",
    ] {
        let want = direct.simple_query(sql).await.unwrap_err();
        let got = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(got.code(), want.code(), "{sql}: {got:?} vs {want:?}");
        assert_eq!(
            got.as_db_error().map(|e| e.message()),
            want.as_db_error().map(|e| e.message()),
            "{sql}"
        );
        assert!(
            c.simple_query("SELECT 1").await.is_ok(),
            "session usable after {sql}"
        );
    }
    let events = read_topic(format!("{prefix}.public.brieff"), 0).await;
    assert!(
        events.is_empty(),
        "failed statements publish nothing: {events:#?}"
    );
    proxy.shutdown().await;
}

/// PostgreSQL 18: upsert and MERGE are captured with exact before images.
#[tokio::test]
async fn pg18_upsert_and_merge_are_captured() {
    let pg = Pg::V18;
    let (db, prefix, proxy) = setup(pg, "upsert").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let m = c
        .simple_query("INSERT INTO brieff (bfkey, bfso) VALUES (1, 'up'), (500, 'fresh') ON CONFLICT (bfkey) DO UPDATE SET bfso = excluded.bfso")
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![2]);
    let m = c
        .simple_query(
            "INSERT INTO brieff (bfkey, bfso) VALUES (2, 'ignored') ON CONFLICT DO NOTHING",
        )
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![0]);
    let m = c
        .simple_query(
            "MERGE INTO brieff b USING (VALUES (3, 'merged'), (4, NULL)) AS s(k, v) ON b.bfkey = s.k \
             WHEN MATCHED AND s.v IS NULL THEN DELETE WHEN MATCHED THEN UPDATE SET bfso = s.v",
        )
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![2]);
    let events = read_topic(format!("{prefix}.public.brieff"), 4).await;
    validate("change-event", &events);
    let summary = changes(&events, "bfso");
    assert_eq!(
        summary,
        vec![
            ("u".into(), "rep1".into(), "up".into()),
            ("c".into(), Value::Null, "fresh".into()),
            ("u".into(), "rep3".into(), "merged".into()),
            ("d".into(), "rep4".into(), Value::Null),
        ],
        "{events:#?}"
    );
    proxy.shutdown().await;
}

/// Regression: PostgreSQL 18's `RETURNING WITH (OLD AS o, NEW AS n)`, which hindsight's parser
/// (PostgreSQL 17's grammar) cannot read, was refused with HS002. The clause is now blanked for
/// the parser and capture names the rows by the client's aliases: the client sees what it
/// would directly (rows, errors with positions, both protocols), the events have exact images.
#[tokio::test]
async fn pg18_returning_with_aliases_was_refused() {
    use super::differential::{cat, send};
    use super::wire_client::*;
    let pg = Pg::V18;
    let (db, prefix, proxy) = setup(pg, "retwith").await;
    let (db2, direct) = direct_twin(pg, "retwith").await;
    let steps = vec![
        send(query("UPDATE brieff SET bfso = 'u1' WHERE bfkey = 1 RETURNING WITH (OLD AS o, NEW AS n) o.bfso, n.bfso, o.bfso IS DISTINCT FROM n.bfso AS changed")),
        send(query("DELETE FROM brieff WHERE bfkey = 2 RETURNING WITH (OLD AS \"old row\") \"old row\".bfkey, new.bfkey")),
        send(query("INSERT INTO brieff (bfkey, bfso) VALUES (3, 'up3'), (300, 'new300') ON CONFLICT (bfkey) DO UPDATE SET bfso = excluded.bfso RETURNING WITH (new AS after) old.bfso, after.bfso")),
        send(query("MERGE INTO brieff b USING (VALUES (4, 'm4')) s(k, v) ON b.bfkey = s.k WHEN MATCHED THEN UPDATE SET bfso = s.v RETURNING WITH (OLD AS o) merge_action(), o.bfso, new.bfso")),
        send(query("WITH u AS (UPDATE brieff SET bfso = 'cte5' WHERE bfkey = 5 RETURNING WITH (OLD AS o) o.bfso AS was) SELECT was FROM u")),
        send(cat(&[
            parse("", "UPDATE brieff SET bfso = $2 WHERE bfkey = $1 RETURNING WITH (OLD AS o, NEW AS n) o.bfso, n.bfso", &[23, 25]),
            bind("", "", 0, &[Some(b"6"), Some(b"ext6")], 0),
            describe(b'P', ""),
            execute("", 0),
            sync(),
        ])),
        // The server's own errors, at the client's positions.
        send(query("UPDATE brieff SET bfso = 'x' WHERE bfkey = 7 RETURNING WITH (nonsuch AS x) *")),
        send(query("UPDATE brieff SET bfso = 'x' WHERE bfkey = 7 RETURNING WITH (OLD AS o) old.bfso")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 7).await;
    validate("change-event", &events);
    assert_eq!(
        changes(&events, "bfso"),
        vec![
            ("u".into(), "rep1".into(), "u1".into()),
            ("d".into(), "rep2".into(), Value::Null),
            ("u".into(), "rep3".into(), "up3".into()),
            ("c".into(), Value::Null, "new300".into()),
            ("u".into(), "rep4".into(), "m4".into()),
            ("u".into(), "rep5".into(), "cte5".into()),
            ("u".into(), "rep6".into(), "ext6".into()),
        ],
        "{events:#?}"
    );
    let setup_conn = harness::connect(pg.addr(), "postgres", &db).await;
    assert_same_brieff(&setup_conn, &direct).await;
    proxy.shutdown().await;
}

/// Regression: a query string holding PostgreSQL 18-only DDL that hindsight's parser
/// (PostgreSQL 17's grammar) cannot read — here a VIRTUAL generated column — was relayed
/// unread: the writes beside it ran uncaptured and the schema change had no event. Now its
/// statements are read one by one (`statement::unparsed`): the writes are captured, the
/// schema changes recorded, a syntax error is still the server's own (nothing runs), and a
/// function body with `;` inside is not cut. Both protocols; replies equal to a direct run.
#[tokio::test]
async fn pg18_only_ddl_let_the_writes_beside_it_through_uncaptured() {
    use super::differential::{cat, send};
    use super::wire_client::*;
    let pg = Pg::V18;
    let (db, prefix, proxy) = setup(pg, "unparsed").await;
    let (db2, _direct) = direct_twin(pg, "unparsed").await;
    let ext = |sql: &str| {
        send(cat(&[
            parse("", sql, &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
        ]))
    };
    let steps = vec![
        send(query("CREATE TABLE vg (k int PRIMARY KEY, b int GENERATED ALWAYS AS (k * 2) VIRTUAL); INSERT INTO vg VALUES (1), (2)")),
        send(query("BEGIN")),
        send(query("ALTER TABLE vg ADD COLUMN c int GENERATED ALWAYS AS (k * 3) VIRTUAL; UPDATE vg SET k = k + 10 WHERE k = 1 RETURNING *")),
        send(query("COMMIT")),
        // A syntax error in the unreadable statement: the server's, at the client's position;
        // the INSERT before it does not run.
        send(query("INSERT INTO vg VALUES (3); CREATE TABLE bad (a int GENERATED ALWAYS AS (1) VIRTUAL oops)")),
        // … also at the end of a statement ("at or near ";"", as in the whole string).
        send(query("INSERT INTO vg VALUES (3); DROP TABLE; SELECT 1")),
        ext("ALTER TABLE vg ADD COLUMN d int GENERATED ALWAYS AS (k * 4) VIRTUAL"),
        ext("ALTER TABLE vg ADD COLUMN e int GENERATED ALWAYS AS (1) VIRTUAL oops"),
        // Parsed, but refused at Parse by the server (no such table): no event either.
        ext("CREATE TABLE ctas AS SELECT * FROM nosuch"),
        send(query("CREATE FUNCTION vg_add(n int) RETURNS void LANGUAGE sql BEGIN ATOMIC INSERT INTO vg (k) VALUES (n); INSERT INTO vg (k) VALUES (n + 1); END; \
                     ALTER TABLE vg ADD COLUMN f int GENERATED ALWAYS AS (k) VIRTUAL; DELETE FROM vg WHERE k = 2")),
        // The function body is stored as the client wrote it.
        send(query("SELECT pg_get_functiondef('vg_add'::regproc)")),
        send(query("SELECT * FROM vg ORDER BY k")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.statements"), 5).await;
    validate("change-event", &events);
    let got: Vec<String> = statements(&events)
        .into_iter()
        .map(|(op, text)| format!("{op}: {}", &text[..text.len().min(30)]))
        .collect();
    assert_eq!(
        got,
        vec![
            "ddl: CREATE TABLE vg (k int PRIMARY",
            "ddl: ALTER TABLE vg ADD COLUMN c in",
            "ddl: ALTER TABLE vg ADD COLUMN d in",
            "ddl: CREATE FUNCTION vg_add(n int) ",
            "ddl: ALTER TABLE vg ADD COLUMN f in",
        ],
        "{events:#?}"
    );
    assert_eq!(events[0]["source"]["table"], "vg", "{events:#?}");
    // Regression (a statement event's END record was left out): the ALTER whose Parse the
    // server refused has no event; every transaction that has one has its END.
    let tx = read_topic(format!("{prefix}.transaction"), 8).await;
    validate("transaction", &tx);
    for e in &events {
        assert_eq!(end_status(&tx, &e["transaction"]["id"]), "committed");
    }
    let rows = read_topic(format!("{prefix}.public.vg"), 4).await;
    validate("change-event", &rows);
    let image = |v: &Value| {
        ["k", "b", "c"]
            .iter()
            .map(|c| v[c].to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let got: Vec<String> = rows
        .iter()
        .map(|e| {
            format!(
                "{} {} -> {}",
                e["op"].as_str().unwrap(),
                image(&e["before"]),
                image(&e["after"])
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            "c null,null,null -> 1,2,null",
            "c null,null,null -> 2,4,null",
            "u 1,2,3 -> 11,22,33",
            "d 2,4,6 -> null,null,null",
        ],
        "{rows:#?}"
    );
    // The ALTER and the UPDATE of the explicit transaction are one transaction.
    assert_eq!(rows[2]["transaction"]["id"], events[1]["transaction"]["id"]);
    proxy.shutdown().await;
}

/// PostgreSQL 15 (no MERGE RETURNING): MERGE is captured from a locking pre-read of the rows
/// its join matches and a post-read that follows each to its latest version and finds the new
/// rows — exact before/after pairs, also when the update makes the ON condition false, and
/// inserted rows that condition does not match, by their listed columns' values. A MERGE whose
/// changes cannot all be found (an inserted row neither finds) cannot commit; a MERGE rolled back to a savepoint publishes nothing.
#[tokio::test]
async fn pg15_merge_is_captured_from_a_pre_read_and_a_post_read() {
    let pg = Pg::V15;
    let (db, prefix, proxy) = setup(pg, "merge15").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    let merge = "MERGE INTO brieff b USING (VALUES (3, 'merged'), (4, NULL), (5, 'skip'), (600, 'new')) AS s(k, v) \
                 ON b.bfkey = s.k AND b.bfso LIKE 'rep%' \
                 WHEN MATCHED AND s.v IS NULL THEN DELETE \
                 WHEN MATCHED AND s.v = 'skip' THEN DO NOTHING \
                 WHEN MATCHED THEN UPDATE SET bfso = s.v \
                 WHEN NOT MATCHED THEN INSERT (bfkey, bfso) VALUES (s.k, s.v)";
    let m = c.simple_query(merge).await.unwrap();
    assert_eq!(tags(&m), vec![3]);
    // A rolled-back MERGE (to a savepoint) publishes nothing; one after it in the same
    // transaction does.
    c.batch_execute("BEGIN; SAVEPOINT a").await.unwrap();
    let m = c
        .simple_query("MERGE INTO brieff b USING (VALUES (6)) AS s(k) ON b.bfkey = s.k WHEN MATCHED THEN UPDATE SET bfso = 'rolled back'")
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![1]);
    c.batch_execute("ROLLBACK TO SAVEPOINT a").await.unwrap();
    let m = c
        .simple_query("MERGE INTO brieff AS b USING brieff AS s ON b.bfkey = s.bfkey AND s.bfkey = 7 WHEN MATCHED THEN UPDATE SET bfso = s.bfso || '+'")
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![1]);
    c.batch_execute("COMMIT").await.unwrap();
    // Regression (merge_locked_rows_it_did_not_change): the pre-read locked every row the join
    // matched — a MERGE into pg_class locked all of it and deadlocked concurrent DDL. Rows no
    // acting clause takes stay unlocked.
    c.batch_execute("BEGIN").await.unwrap();
    let m = c
        .simple_query("MERGE INTO brieff b USING (VALUES (11), (12)) AS s(k) ON b.bfkey = s.k WHEN MATCHED AND b.bfkey = 11 THEN UPDATE SET bfso = bfso")
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![1]);
    let free = direct
        .simple_query("SELECT 1 FROM brieff WHERE bfkey = 12 FOR UPDATE NOWAIT")
        .await;
    assert!(free.is_ok(), "row 12 was locked by the pre-read: {free:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // An error in the MERGE is the client's, at its position.
    let err = c
        .simple_query("MERGE INTO brieff b USING (VALUES (8)) AS s(k) ON b.bfkey = s.k WHEN MATCHED THEN UPDATE SET bfso = s.nope")
        .await
        .unwrap_err();
    let want = direct
        .simple_query("MERGE INTO brieff b USING (VALUES (8)) AS s(k) ON b.bfkey = s.k WHEN MATCHED THEN UPDATE SET bfso = s.nope")
        .await
        .unwrap_err();
    let pos = |e: &tokio_postgres::Error| {
        e.as_db_error()
            .map(|d| (d.message().to_string(), format!("{:?}", d.position())))
    };
    assert_eq!(pos(&err), pos(&want));
    // … also when hindsight's pre-read raises it, in the client's USING or ON (both protocols).
    for sql in [
        "MERGE INTO brieff b USING (SELECT * FROM brieff x WHERE b.bfkey > x.bfkey) s ON b.bfkey = s.bfkey WHEN MATCHED THEN DELETE",
        "MERGE INTO brieff b USING (VALUES (8)) AS s(k) ON b.bfkey = s.nope WHEN MATCHED THEN DELETE",
        "UPDATE brieff b SET bfso = 'x' FROM (VALUES (8)) AS s(k) WHERE b.bfkey = s.nope",
    ] {
        let want = direct.simple_query(sql).await.unwrap_err();
        let got = c.simple_query(sql).await.unwrap_err();
        assert_eq!(pos(&got), pos(&want), "{sql}");
        assert!(want.as_db_error().unwrap().position().is_some(), "{sql}");
        let got = c.execute(sql, &[]).await.unwrap_err();
        let want = direct.execute(sql, &[]).await.unwrap_err();
        assert_eq!(pos(&got), pos(&want), "extended: {sql}");
    }
    // The inserted row does not meet the ON condition, and the INSERT lists no columns to find
    // it by: hindsight cannot find it, so the MERGE does not commit.
    let err = c
        .simple_query("MERGE INTO brieff b USING (VALUES (900)) AS s(k) ON b.bfkey = s.k WHEN NOT MATCHED THEN INSERT VALUES (s.k + 1000, 'lost')")
        .await
        .unwrap_err();
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("MERGE into brieff: hindsight found 0 updated, 0 deleted and 0 inserted rows, but the MERGE reported 1 rows"), "{msg}");
    let left = direct
        .query_one("SELECT count(*) FROM brieff WHERE bfkey = 1900", &[])
        .await
        .unwrap();
    assert_eq!(left.get::<_, i64>(0), 0, "the refused MERGE did not commit");
    // The extended protocol, with parameters, prepared once and executed twice (the companion
    // pre-read and post-read are bound to the same values).
    let st = c
        .prepare("MERGE INTO brieff b USING (VALUES ($1::int, $2::text)) AS s(k, v) ON b.bfkey = s.k WHEN MATCHED THEN UPDATE SET bfso = s.v WHEN NOT MATCHED THEN INSERT (bfkey, bfso) VALUES (s.k, s.v)")
        .await
        .unwrap();
    assert_eq!(c.execute(&st, &[&10i32, &"ten"]).await.unwrap(), 1);
    assert_eq!(
        c.execute(&st, &[&700i32, &"seven hundred"]).await.unwrap(),
        1
    );
    // PostgreSQL 17 syntax reaches the server unchanged: its own syntax error.
    let err = c
        .simple_query("MERGE INTO brieff b USING (VALUES (1)) AS s(k) ON b.bfkey = s.k WHEN NOT MATCHED BY SOURCE THEN DELETE")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR),
        "{err}"
    );
    let shown = c.simple_query("SHOW hindsight.merge_rows").await.unwrap();
    assert_eq!(
        rows(&shown),
        vec![vec![Some(String::new())]],
        "the setting is emptied"
    );
    let events = read_topic(format!("{prefix}.public.brieff"), 6).await;
    validate("change-event", &events);
    let mut summary = changes(&events, "bfso");
    summary[..3].sort_by_key(|(op, ..)| op.clone());
    assert_eq!(
        summary,
        vec![
            ("c".into(), Value::Null, "new".into()),
            ("d".into(), "rep4".into(), Value::Null),
            ("u".into(), "rep3".into(), "merged".into()),
            ("u".into(), "rep7".into(), "rep7+".into()),
            ("u".into(), "rep10".into(), "ten".into()),
            ("c".into(), Value::Null, "seven hundred".into()),
        ],
        "{events:#?}"
    );
    assert_eq!(events[3]["before"]["bfkey"], 7);
    proxy.shutdown().await;
}

/// Regression: before PostgreSQL 18, `UPDATE … WHERE CURRENT OF cursor` failed with "syntax
/// error at or near OF" (its locking pre-read cannot use the cursor). Its before image is now
/// stored by one of its SET expressions; the replies equal a direct run's, both protocols, and
/// the events carry exact before/after values. A SET of only untyped literals is refused.
async fn update_where_current_of_failed_with_a_syntax_error(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "curof").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.batch_execute("BEGIN; DECLARE cur CURSOR FOR SELECT * FROM brieff WHERE bfkey >= 5 ORDER BY bfkey FOR UPDATE")
        .await
        .unwrap();
    c.simple_query("FETCH 1 FROM cur").await.unwrap();
    let m = c
        .simple_query("UPDATE brieff SET bfso = bfso || '+cursor', amount = 1 WHERE CURRENT OF cur RETURNING bfkey, bfso")
        .await
        .unwrap();
    assert_eq!(
        rows(&m),
        vec![vec![Some("5".into()), Some("rep5+cursor".into())]]
    );
    c.simple_query("FETCH 1 FROM cur").await.unwrap();
    let n = c
        .execute(
            "UPDATE brieff SET bfso = upper(bfso) WHERE CURRENT OF cur",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    c.batch_execute("COMMIT").await.unwrap();
    let events = read_topic(format!("{prefix}.public.brieff"), 2).await;
    validate("change-event", &events);
    assert_eq!(
        changes(&events, "bfso"),
        vec![
            ("u".into(), "rep5".into(), "rep5+cursor".into()),
            ("u".into(), "rep6".into(), "REP6".into()),
        ],
        "{events:#?}"
    );
    assert_eq!(events[0]["before"]["amount"], 6.25);
    if pg == Pg::V15 {
        c.batch_execute(
            "BEGIN; DECLARE cur CURSOR FOR SELECT * FROM brieff FOR UPDATE; FETCH 1 FROM cur",
        )
        .await
        .unwrap();
        let err = c
            .simple_query("UPDATE brieff SET bfso = 'lit' WHERE CURRENT OF cur")
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("HS002"), "{err}");
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    proxy.shutdown().await;
}

/// Regression: `COPY t FROM '/server/file'` in autocommit told the client `COPY n` and then
/// rolled the rows back (hindsight waited for a CopyDone that a server-side COPY never sends).
/// Both protocols, autocommit and in a transaction; the rows are there and recorded.
async fn copy_from_a_server_file_was_rolled_back_after_reporting_success(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "copyfile").await;
    let path = std::env::temp_dir().join(format!("hs_copy_{:08x}.txt", rand::random::<u32>()));
    std::fs::write(&path, "300\tfile\n301\tfile\n").unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&path, perms).unwrap();
    let file = path.display().to_string();
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let m = c
        .simple_query(&format!("COPY brieff (bfkey, bfso) FROM '{file}'"))
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![2]);
    let n = c
        .execute(
            &format!("COPY brieff (bfkey, bfso) FROM '{file}' WHERE bfkey > 300"),
            &[],
        )
        .await;
    // Duplicate key 301: the extended COPY fails like it would directly, nothing half-done.
    assert_eq!(
        n.unwrap_err().code().map(|c| c.code()),
        Some("23505"),
        "duplicate key"
    );
    c.simple_query("DELETE FROM brieff WHERE bfkey = 301")
        .await
        .unwrap();
    c.simple_query("BEGIN").await.unwrap();
    let tx_rows = c
        .execute(
            &format!("COPY brieff (bfkey, bfso) FROM '{file}' WHERE bfkey > 300"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tx_rows, 1);
    c.simple_query("COMMIT").await.unwrap();
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    let n = harness::count(&direct, "SELECT count(*) FROM brieff WHERE bfso = 'file'").await;
    assert_eq!(n, 2, "the copied rows were committed");
    let ev = read_topic(format!("{prefix}.public.brieff"), 4).await;
    let ops: Vec<(Value, Value)> = ev
        .iter()
        .map(|e| (e["op"].clone(), e["after"]["bfkey"].clone()))
        .collect();
    assert_eq!(
        ops,
        [
            ("c".into(), 300.into()),
            ("c".into(), 301.into()),
            ("d".into(), Value::Null),
            ("c".into(), 301.into())
        ]
    );
    let _ = std::fs::remove_file(&path);
    proxy.shutdown().await;
}

/// Regression: a write through a view failed with `column v.tableoid does not exist` (or, with
/// an INSTEAD rule, "cannot perform INSERT RETURNING"), an error PostgreSQL itself would not
/// raise. Writes to views and to relations with rules now run unchanged and are recorded as
/// opaque statements (both protocols; a SET search_path in between is followed).
async fn writes_through_views_failed_with_missing_tableoid(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "views").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE VIEW auto_v AS SELECT bfkey, bfso FROM brieff WHERE bfkey < 100;
             CREATE VIEW ruled_v AS SELECT bfkey, bfso FROM brieff;
             CREATE RULE ruled_ins AS ON INSERT TO ruled_v DO INSTEAD
               INSERT INTO brieff (bfkey, bfso) VALUES (NEW.bfkey, NEW.bfso);
             CREATE SCHEMA other; CREATE TABLE other.auto_v (bfkey int PRIMARY KEY, bfso text);",
        )
        .await
        .unwrap();
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let m = c
        .simple_query("UPDATE auto_v SET bfso = 'via view' WHERE bfkey = 1")
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![1]);
    let n = c
        .execute(
            "INSERT INTO ruled_v (bfkey, bfso) VALUES ($1, 'via rule')",
            &[&200i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // The same name now resolves to a table: captured row by row again.
    c.simple_query("SET search_path = other, public")
        .await
        .unwrap();
    c.simple_query("INSERT INTO auto_v VALUES (7, 'table')")
        .await
        .unwrap();
    assert_eq!(
        harness::count(
            &direct,
            "SELECT count(*) FROM brieff WHERE bfso IN ('via view', 'via rule')"
        )
        .await,
        2
    );
    let st = read_topic(format!("{prefix}.statements"), 2).await;
    let got: Vec<(Value, Value)> = st
        .iter()
        .map(|e| (e["op"].clone(), e["source"]["statement"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "opaque".into(),
                "UPDATE auto_v SET bfso = 'via view' WHERE bfkey = 1".into()
            ),
            (
                "opaque".into(),
                "INSERT INTO ruled_v (bfkey, bfso) VALUES ($1, 'via rule')".into()
            ),
        ]
    );
    let rows = read_topic(format!("{prefix}.other.auto_v"), 1).await;
    assert_eq!(rows[0]["after"]["bfso"], "table");
    proxy.shutdown().await;
}

/// INSERT … ON CONFLICT on every server: DO NOTHING records only the inserted rows; DO UPDATE
/// records updated rows with their before image (before PostgreSQL 18 read in RETURNING with
/// the statement's own snapshot) and inserted ones as creates — both protocols, an alias, and
/// the client's own RETURNING rows untouched, and a constraint-name target.
async fn upsert_is_captured(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "upsert_all").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let m = c
        .simple_query("INSERT INTO brieff AS b (bfkey, bfso) VALUES (1, 'up'), (500, 'fresh') ON CONFLICT (bfkey) DO UPDATE SET bfso = excluded.bfso || b.bfso")
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![2]);
    let m = c
        .simple_query("INSERT INTO brieff (bfkey, bfso) VALUES (2, 'ignored'), (501, 'new') ON CONFLICT DO NOTHING")
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![1]);
    let rows = c
        .query(
            "INSERT INTO brieff (bfkey, bfso) VALUES ($1, $2) ON CONFLICT (bfkey) DO UPDATE SET bfso = excluded.bfso RETURNING bfkey, bfso",
            &[&3i32, &"ext"],
        )
        .await
        .unwrap();
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(3, "ext".to_string())]);
    let n = c
        .execute(
            "INSERT INTO brieff (bfkey, bfso) VALUES ($1, $2) ON CONFLICT (bfkey) DO NOTHING",
            &[&500i32, &"x"],
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    let by_name = c
        .simple_query("INSERT INTO brieff (bfkey, bfso) VALUES (4, 'named') ON CONFLICT ON CONSTRAINT brieff_pkey DO UPDATE SET bfso = excluded.bfso")
        .await;
    let mut want: Vec<(String, Value, Value)> = vec![
        ("u".into(), "rep1".into(), "uprep1".into()),
        ("c".into(), Value::Null, "fresh".into()),
        ("c".into(), Value::Null, "new".into()),
        ("u".into(), "rep3".into(), "ext".into()),
    ];
    by_name.unwrap();
    want.push(("u".into(), "rep4".into(), "named".into()));
    // Regression: into a partitioned table the upsert failed with "cannot retrieve a system
    // column in this context" (routed rows carry no xmax).
    c.batch_execute(
        "CREATE TABLE pt (a int PRIMARY KEY, b text) PARTITION BY LIST (a);
         CREATE TABLE pt_1 PARTITION OF pt FOR VALUES IN (1, 2);
         INSERT INTO pt VALUES (1, 'one');",
    )
    .await
    .unwrap();
    let m = c
        .simple_query("INSERT INTO pt VALUES (1, 'uno'), (2, 'dos') ON CONFLICT (a) DO UPDATE SET b = excluded.b")
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![2]);
    let pt = read_topic(format!("{prefix}.public.pt_1"), 3).await;
    let got: Vec<(Value, Value)> = pt[1..]
        .iter()
        .map(|e| (e["before"]["b"].clone(), e["after"]["b"].clone()))
        .collect();
    assert_eq!(
        got,
        [("one".into(), "uno".into()), (Value::Null, "dos".into())]
    );
    let events = read_topic(format!("{prefix}.public.brieff"), want.len()).await;
    validate("change-event", &events);
    let got = changes(&events, "bfso");
    assert_eq!(got, want, "{events:#?}");
    proxy.shutdown().await;
}

/// Rows changed by triggers or cascading foreign keys are not captured (yet): the events say so,
/// naming what may have changed.
async fn side_effects_are_marked_uncaptured(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "sidefx").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE TABLE note (id int PRIMARY KEY, bfkey int REFERENCES brieff ON DELETE CASCADE);
             INSERT INTO note VALUES (1, 5);
             CREATE TABLE plain (id int PRIMARY KEY);
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
             CREATE TRIGGER audit_touch BEFORE INSERT ON plain FOR EACH ROW EXECUTE FUNCTION touch();",
        )
        .await
        .unwrap();
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("DELETE FROM brieff WHERE bfkey = 5")
        .await
        .unwrap();
    c.simple_query("INSERT INTO brieff (bfkey) VALUES (77)")
        .await
        .unwrap();
    c.simple_query("INSERT INTO plain VALUES (1)")
        .await
        .unwrap();
    let ev = read_topic(format!("{prefix}.public.brieff"), 2).await;
    assert_eq!(ev[0]["op"], "d");
    assert_eq!(ev[0]["source"]["side_effects"], "uncaptured", "{:#}", ev[0]);
    assert_eq!(
        ev[0]["source"]["side_effect_tables"],
        serde_json::json!(["public.note"])
    );
    assert!(
        ev[1]["source"].get("side_effects").is_none(),
        "an insert cascades nothing: {:#}",
        ev[1]
    );
    let ev = read_topic(format!("{prefix}.public.plain"), 1).await;
    assert_eq!(
        ev[0]["source"]["side_effect_tables"],
        serde_json::json!(["trigger audit_touch on public.plain"])
    );
    validate("change-event", &ev);
    proxy.shutdown().await;
}

/// PII is redacted before it leaves the process: dropped, masked or keyed-hashed.
#[tokio::test]
async fn redaction_applies_before_publishing() {
    use hindsight::capture::redact::{RedactAction, RedactRule};
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "redact").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute("CREATE TABLE users (id int PRIMARY KEY, email text, ssn text, name text)")
        .await
        .unwrap();
    let prefix = harness::random_prefix("redact");
    let p = prefix.clone();
    let proxy = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = p;
        c.capture.redact_key = "test-key".into();
        c.capture.redact = vec![
            RedactRule {
                table: "public.users".into(),
                columns: vec!["ssn".into()],
                action: RedactAction::Drop,
            },
            RedactRule {
                table: "users".into(),
                columns: vec!["name".into()],
                action: RedactAction::Mask,
            },
            RedactRule {
                table: "users".into(),
                columns: vec!["email".into()],
                action: RedactAction::Hash,
            },
        ];
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("INSERT INTO users VALUES (1, 'ann@example.com', '123-45-6789', 'Ann')")
        .await
        .unwrap();
    c.simple_query("UPDATE users SET name = 'Anna' WHERE id = 1")
        .await
        .unwrap();
    let raw = harness::read_topic_raw(format!("{prefix}.public.users"), 2).await;
    assert_eq!(raw.len(), 2);
    for (key, payload) in &raw {
        let text = String::from_utf8_lossy(payload);
        for secret in ["ann@example.com", "123-45-6789", "Ann"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(!String::from_utf8_lossy(key).contains("ann@"));
        let e: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(e["after"]["name"], "****");
        assert!(e["after"].get("ssn").is_none());
        assert!(e["after"]["email"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:"));
        assert_eq!(e["after"]["id"], 1, "other columns untouched");
        assert!(
            e["source"]["statement"].as_str().unwrap().contains("$1"),
            "constants replaced: {e}"
        );
    }
    proxy.shutdown().await;
}

/// TRUNCATE records the before image of every removed row (op "t"), and is refused above
/// capture.truncate_row_limit with HS003 and nothing removed.
async fn truncate_is_captured_within_its_row_limit(pg: Pg) {
    let db = harness::fresh_db(pg, "truncate").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE TABLE small (id int PRIMARY KEY, v text); INSERT INTO small SELECT g, 'v' || g FROM generate_series(1, 5) g;
             CREATE TABLE big (id int PRIMARY KEY); INSERT INTO big SELECT generate_series(1, 11);
             CREATE TABLE parent (id int PRIMARY KEY); INSERT INTO parent VALUES (1), (2);
             CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent); INSERT INTO child VALUES (10, 1), (11, 2);
             CREATE TABLE grandchild (id int PRIMARY KEY, c int REFERENCES child); INSERT INTO grandchild VALUES (100, 10);
             CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (7);",
        )
        .await
        .unwrap();
    let prefix = harness::random_prefix("truncate");
    let p = prefix.clone();
    let proxy = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = p;
        c.capture.truncate_row_limit = 10;
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let err = c.simple_query("TRUNCATE big").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS003"), "{err:?}");
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("more than 10 rows"));
    let n = harness::count(&direct, "SELECT count(*) FROM big").await;
    assert_eq!(n, 11, "nothing removed");
    // The same through the extended protocol, in autocommit and in a transaction (which the
    // refusal aborts, as any failed statement would).
    let err = c.execute("TRUNCATE big", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS003"), "{err:?}");
    c.simple_query("BEGIN").await.unwrap();
    let err = c.execute("TRUNCATE big", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS003"), "{err:?}");
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"), "{err:?}");
    c.simple_query("ROLLBACK").await.unwrap();
    let n = harness::count(&direct, "SELECT count(*) FROM big").await;
    assert_eq!(n, 11, "nothing removed");
    c.simple_query("TRUNCATE small").await.unwrap();
    let n = harness::count(&direct, "SELECT count(*) FROM small").await;
    assert_eq!(n, 0);
    let ev = read_topic(format!("{prefix}.public.small"), 5).await;
    assert_eq!(ev.len(), 5, "{ev:#?}");
    validate("change-event", &ev);
    let mut ids: Vec<i64> = ev
        .iter()
        .map(|e| e["before"]["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert!(ev
        .iter()
        .all(|e| e["op"] == "t" && e["after"].is_null() && e["before"]["v"].is_string()));
    // The row limit counts every table a TRUNCATE empties.
    let err = c.simple_query("TRUNCATE small, big").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS003"), "{err:?}");
    // CASCADE: every table reached through foreign keys is recorded, in one transaction
    // with the table named (and the other table of the list). Extended protocol.
    c.execute("TRUNCATE parent, other CASCADE", &[])
        .await
        .unwrap();
    let mut all = Vec::new();
    for (table, n) in [("parent", 2), ("child", 2), ("grandchild", 1), ("other", 1)] {
        let ev = read_topic(format!("{prefix}.public.{table}"), n).await;
        assert_eq!(ev.len(), n, "{table}: {ev:#?}");
        assert!(ev.iter().all(|e| e["op"] == "t"), "{ev:#?}");
        all.extend(ev);
    }
    let tx = &all[0]["transaction"]["id"];
    assert!(
        all.iter().all(|e| e["transaction"]["id"] == *tx),
        "one transaction"
    );
    assert_eq!(all[3]["before"], serde_json::json!({"id": 11, "p": 2}));
    for table in ["parent", "child", "grandchild", "other"] {
        let n = harness::count(&direct, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(n, 0, "{table} emptied");
    }
    proxy.shutdown().await;
}

/// `COPY … FROM STDIN` and TRUNCATE through the extended protocol (tokio-postgres' `copy_in`
/// and `execute`): captured like the simple-query forms, in autocommit and in transactions; a
/// COPY that fails or is rolled back writes and publishes nothing; a prepared COPY runs twice.
async fn extended_copy_and_truncate_are_captured(pg: Pg) {
    use futures_util::{pin_mut, SinkExt};
    let (db, prefix, proxy) = setup(pg, "xcopy").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute("CREATE TABLE small (id int PRIMARY KEY, v text); INSERT INTO small VALUES (1, 'a'), (2, 'b');")
        .await
        .unwrap();
    let mut c = harness::connect(proxy.addr, "postgres", &db).await;
    // Autocommit, CSV, named columns.
    let sink = c
        .copy_in::<_, &'static [u8]>("COPY brieff (bfkey, bfso) FROM STDIN WITH (FORMAT csv)")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(b"200,x\n201,\"y,z\"\n").await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    // Bad input: the server's error; nothing written; the session goes on.
    let sink = c
        .copy_in::<_, &'static [u8]>("COPY brieff (bfkey, bfso) FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(b"202\tok\nnot-a-number\tbad\n").await.unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22P02"), "{err:?}");
    // In a transaction: one prepared COPY (with WHERE) run twice, then COMMIT.
    let tx = c.transaction().await.unwrap();
    let stmt = tx
        .prepare("COPY brieff (bfkey, bfso) FROM STDIN WHERE bfkey > 250")
        .await
        .unwrap();
    for data in [&b"240\tlow\n260\thigh\n"[..], &b"270\thigher\n"[..]] {
        let sink = tx.copy_in::<_, &'static [u8]>(&stmt).await.unwrap();
        pin_mut!(sink);
        sink.send(data).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1, "WHERE applies");
    }
    tx.commit().await.unwrap();
    // Rolled back: nothing published.
    let tx = c.transaction().await.unwrap();
    let sink = tx
        .copy_in::<_, &'static [u8]>("COPY brieff (bfkey) FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(b"300\n").await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    tx.rollback().await.unwrap();
    // TRUNCATE, prepared and executed.
    assert_eq!(c.execute("TRUNCATE small", &[]).await.unwrap(), 0);
    let events = read_topic(format!("{prefix}.public.brieff"), 4).await;
    validate("change-event", &events);
    let got: Vec<(Value, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["op"].clone(),
                e["after"]["bfkey"].clone(),
                e["after"]["bfso"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("c".into(), 200.into(), "x".into()),
            ("c".into(), 201.into(), "y,z".into()),
            ("c".into(), 260.into(), "high".into()),
            ("c".into(), 270.into(), "higher".into()),
        ]
    );
    assert_eq!(
        events[2]["transaction"]["id"],
        events[3]["transaction"]["id"]
    );
    let ev = read_topic(format!("{prefix}.public.small"), 2).await;
    let before: Vec<Value> = ev.iter().map(|e| e["before"].clone()).collect();
    assert_eq!(
        before,
        [
            serde_json::json!({"id": 1, "v": "a"}),
            serde_json::json!({"id": 2, "v": "b"})
        ]
    );
    assert!(ev.iter().all(|e| e["op"] == "t"));
    let n = harness::count(&direct, "SELECT count(*) FROM brieff WHERE bfkey >= 200").await;
    assert_eq!(n, 4, "exactly the committed rows");
    assert_eq!(
        harness::count(&direct, "SELECT count(*) FROM small").await,
        0
    );
    proxy.shutdown().await;
}

/// Regression: JDBC (autocommit off) sends `BEGIN` and the first write in one extended batch,
/// before a single Sync. hindsight did not know a transaction block was open (no
/// ReadyForQuery yet), opened its own and committed the client's transaction at the Sync.
/// The replies must be byte-for-byte those of a direct connection, and nothing is published
/// until the client's COMMIT.
async fn begin_and_write_in_one_extended_batch_stays_the_clients_transaction(pg: Pg) {
    use super::differential::{cat, run, send};
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "jdbc_batch").await;
    let steps = [
        send(cat(&[
            parse("", "BEGIN", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            parse("", "UPDATE brieff SET bfso = $1 WHERE bfkey = $2", &[]),
            bind("", "", 0, &[Some(b"jdbc"), Some(b"7")], 0),
            execute("", 0),
            sync(),
        ])),
        send(query("SELECT bfso FROM brieff WHERE bfkey = 7")),
        send(cat(&[
            parse("", "COMMIT", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
        ])),
    ];
    let mut through = run(proxy.addr, &db, 0, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["before"]["bfso"], "rep7");
    assert_eq!(events[0]["after"]["bfso"], "jdbc");
    let mut direct = run(pg.addr(), &db, 0, &steps).await;
    assert_same_replies(&mut through, &mut direct);
    proxy.shutdown().await;
}

/// COPY … FROM STDIN is captured (staged, then a captured INSERT … SELECT) while the client
/// sees byte-for-byte what a direct connection shows: CopyInResponse, `COPY n`, errors about
/// bad input with their `COPY brieff, line N` context, transaction state.
async fn copy_from_stdin_is_captured(pg: Pg) {
    use super::differential::{cat, normalise, run, send, Step, Until};
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "copy").await;
    let (db2, direct) = direct_twin(pg, "copy").await;
    let generated =
        "ALTER TABLE brieff ADD COLUMN twice int GENERATED ALWAYS AS (bfkey * 2) STORED";
    direct.batch_execute(generated).await.unwrap();
    harness::connect(pg.addr(), "postgres", &db)
        .await
        .batch_execute(generated)
        .await
        .unwrap();
    let copy = |sql: &str| Step::Send(query(sql), Until::Tag(b'G'));
    let steps = [
        copy("COPY brieff (bfkey, bfso, amount) FROM STDIN WITH (FORMAT csv)"),
        send(cat(&[
            copy_data(b"100,a,1.50\n101,\"b,c\",\n"),
            copy_done(),
        ])),
        // Bad input: the server's error, context line included, and nothing written.
        copy("COPY brieff FROM STDIN"),
        send(cat(&[
            copy_data(b"102\tok\t1\tNaN\t{}\nx\ty\n"),
            copy_done(),
        ])),
        // A duplicate key (raised by the INSERT from the stage).
        copy("COPY brieff (bfkey) FROM STDIN"),
        send(cat(&[copy_data(b"1\n"), copy_done()])),
        // In a transaction, with a WHERE clause, then COMMIT.
        send(query("BEGIN")),
        copy("COPY brieff (bfkey, bfso) FROM STDIN WHERE bfkey > 150"),
        send(cat(&[copy_data(b"140\tlow\n160\thigh\n"), copy_done()])),
        send(query("COMMIT")),
        // CopyFail from the client.
        copy("COPY brieff (bfkey) FROM STDIN"),
        send(cat(&[copy_data(b"170\n"), copy_fail("client gave up")])),
        // A COPY that fails before it starts: no CopyDone will come; the session is idle.
        send(query("COPY brieff FROM STDIN WITH (FORMAT nonsense)")),
        send(query("SELECT count(*) FROM brieff")),
        // The WHERE is PostgreSQL's to judge as a COPY WHERE (regression: it ran as the stage
        // INSERT's WHERE, so a generated column or a subquery there was accepted), and its
        // errors come with the COPY's line.
        send(query("COPY brieff (bfkey) FROM STDIN WHERE twice > 10")),
        send(query(
            "COPY brieff (bfkey) FROM STDIN WHERE brieff IS NOT NULL",
        )),
        send(query(
            "COPY brieff (bfkey) FROM STDIN WHERE bfkey IN (SELECT 1)",
        )),
        copy("COPY brieff (bfkey) FROM STDIN WHERE 1 / (bfkey - 180) > 0"),
        send(cat(&[copy_data(b"181\n180\n"), copy_done()])),
    ];
    let mut through = run(proxy.addr, &db, 0, &steps).await;
    let mut plain = run(pg.addr(), &db2, 0, &steps).await;
    for (i, (a, b)) in through.iter_mut().zip(plain.iter_mut()).enumerate().skip(1) {
        normalise(a);
        normalise(b);
        if i == 6 {
            // Documented difference: a constraint violation is raised by the INSERT from the
            // stage, so it lacks the `COPY brieff, line N` context; every other field matches.
            let (ea, eb) = (&a[0], &b[0]);
            for code in [b'S', b'C', b'M', b'D', b's', b't', b'n'] {
                assert_eq!(field(ea, code), field(eb, code), "field {}", code as char);
            }
            assert_eq!(field(eb, b'W').as_deref(), Some("COPY brieff, line 1"));
            assert_eq!(field(ea, b'W'), None);
            assert_eq!(a[1..], b[1..], "ReadyForQuery");
            continue;
        }
        assert_eq!(
            describe_frames(a),
            describe_frames(b),
            "step {i}: through hindsight vs direct"
        );
    }
    let events = read_topic(format!("{prefix}.public.brieff"), 3).await;
    assert_eq!(events.len(), 3, "{events:#?}");
    validate("change-event", &events);
    assert!(events
        .iter()
        .all(|e| e["op"] == "c" && e["before"].is_null()));
    assert_eq!(events[0]["after"]["bfkey"], 100);
    assert_eq!(events[0]["after"]["amount"], 1.5);
    assert_eq!(events[1]["after"]["bfso"], "b,c");
    assert!(events[1]["after"]["amount"].is_null());
    assert_eq!(events[2]["after"]["bfso"], "high");
    assert_eq!(
        events[0]["source"]["statement"],
        "COPY brieff (bfkey, bfso, amount) FROM STDIN WITH (FORMAT csv)"
    );
    let through_db = harness::connect(pg.addr(), "postgres", &db).await;
    let dump = "SELECT string_agg(format('%s|%s|%s', bfkey, bfso, amount), ';' ORDER BY bfkey) FROM brieff";
    let a: String = through_db.query_one(dump, &[]).await.unwrap().get(0);
    let b: String = direct.query_one(dump, &[]).await.unwrap().get(0);
    assert_eq!(a, b, "same table contents through hindsight and directly");
    proxy.shutdown().await;
}

/// Regression: errors the server reports with a position (`P`) pointed into hindsight's
/// rewritten query string (`BEGIN;` and pre-reads in front), not the client's text.
async fn error_positions_point_into_the_clients_text(pg: Pg) {
    use super::differential::{run, send};
    use super::wire_client::*;
    let (db, _prefix, proxy) = setup(pg, "errpos").await;
    let steps = [
        send(query("UPDATE brieff SET nope = 1 WHERE bfkey = 1")),
        send(query("INSERT INTO brieff (bfkey, nope) VALUES (1, 2)")),
        send(query(
            "SELECT 1;\n  DELETE FROM brieff WHERE bfkey = 'x'::int",
        )),
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 1 + 'a' WHERE bfkey = 1")),
        send(query("ROLLBACK")),
        // Regression (whole_string_syntax_error_warned_no_transaction): a write hindsight's
        // parser reads but the server's grammar rejects (PostgreSQL 17 syntax on 15) failed
        // with the position in hindsight's string and an extra WARNING "there is no
        // transaction in progress" (hindsight committed a transaction that never began).
        send(query("SELECT 1;\n  UPDATE brieff SET bfso = JSON_VALUE(jsonb '{\"a\": \"x\"}', '$.a' RETURNING text) WHERE bfkey = 2")),
        send(query("SELECT bfso FROM brieff WHERE bfkey = 2")),
        // … also in a transaction block, where hindsight opens no transaction of its own: the
        // error lost its position (regression whole_string_syntax_error_in_a_block_lost_its_position).
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 'y' WHERE bfkey = 3;\n  UPDATE brieff SET bfso = JSON_VALUE(jsonb '{\"a\": \"x\"}', '$.a' RETURNING text) WHERE bfkey = 2")),
        send(query("ROLLBACK")),
    ];
    let mut through = run(proxy.addr, &db, 0, &steps).await;
    let mut plain = run(pg.addr(), &db, 0, &steps).await;
    assert_same_replies(&mut through, &mut plain);
    proxy.shutdown().await;
}

/// Every built-in type round-trips exactly: `jsonb_populate_record` of a published image gives
/// back the row, text for text, for the after image of an INSERT (simple protocol) and the
/// before and after images of an UPDATE (extended protocol; before PostgreSQL 18 through the
/// companion pre-read). Includes a large TOASTed value. `json` (not jsonb) values are recorded
/// as equal JSON, normalised like jsonb (documented), so the one here is in normal form.
async fn every_builtin_type_round_trips(pg: Pg) {
    let db = harness::fresh_db(pg, "types").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE DOMAIN posint AS int CHECK (VALUE > 0);
             CREATE TYPE pair AS (a int, b text);
             CREATE TABLE alltypes (
               id int PRIMARY KEY, n numeric, n_nan numeric, n_inf numeric, f8 float8, f8_inf float8,
               f8_ninf float8, f4 float4, i8 bigint, i2 smallint, ts timestamp, tstz timestamptz,
               d date, tm time, ttz timetz, iv interval, b bytea, arr int[], tarr text[],
               j json, jb jsonb, u uuid, ip inet, net cidr, mac macaddr, m money, bits bit(4),
               vb varbit, e mood, dom posint, comp pair, r int4range, tr tstzrange, big text,
               flag boolean, ch char(3), x xml, pt point, tsv tsvector, o oid, nul text)",
        )
        .await
        .unwrap();
    let prefix = harness::random_prefix("types");
    let p = prefix.clone();
    let proxy = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = p;
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query(
        "INSERT INTO alltypes VALUES (1, 12345678901234567890.123456789012345678, 'NaN', '-Infinity',
           'NaN', 'Infinity', '-Infinity', 1.17549435e-38, 9223372036854775807, -32768,
           '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+05:30', '4713-01-01 BC',
           '23:59:59.999999', '12:00+14', '1 year 2 mons -3 days 04:05:06.000007',
           '\\x00ff5c27', ARRAY[1, NULL, 3], ARRAY['a,b', 'c\"d', NULL, ''],
           '{\"a\": [1, 2.50], \"b\": null}', '{\"k\": [1e400, \"\\u00e9\"]}',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2001:db8::1/64', '10.0.0.0/8', '08:00:2b:01:02:03',
           '1234.56', B'1010', B'10110111', 'ok', 42, ROW(1, 'x\"y'), '[1,10)',
           '[2024-01-01 00:00+00,infinity)', repeat('toast ', 60000) || 'end', true, 'ab',
           '<a b=\"1\">t</a>', '(1.5,-2)', 'fat cats ate', 4294967295, NULL)",
    )
    .await
    .unwrap();
    let row = "SELECT t::text FROM alltypes t WHERE id = 1";
    let inserted: String = direct.query_one(row, &[]).await.unwrap().get(0);
    c.execute(
        "UPDATE alltypes SET n = n + 1, big = big || $2, e = 'happy', nul = '' WHERE id = $1",
        &[&1i32, &"more"],
    )
    .await
    .unwrap();
    let updated: String = direct.query_one(row, &[]).await.unwrap().get(0);
    assert_ne!(inserted, updated);
    let ev = read_topic(format!("{prefix}.public.alltypes"), 2).await;
    assert_eq!(ev.len(), 2);
    for (what, image, want) in [
        ("INSERT after", &ev[0]["after"], &inserted),
        ("UPDATE before", &ev[1]["before"], &inserted),
        ("UPDATE after", &ev[1]["after"], &updated),
    ] {
        let got: String = direct
            .query_one(
                "SELECT jsonb_populate_record(NULL::alltypes, $1::text::jsonb)::text",
                &[&image.to_string()],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            got == *want,
            "{what}: image does not give back the row\n got: {:.400}\nwant: {:.400}",
            got,
            want
        );
    }
    // A row too large for one Kafka message (kafka.max_message_bytes, 4 MiB) is refused, not
    // committed unrecorded.
    let err = c
        .simple_query("INSERT INTO alltypes (id, big) VALUES (2, repeat('y', 4300000))")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"), "{err:?}");
    let n = harness::count(&direct, "SELECT count(*) FROM alltypes WHERE id = 2").await;
    assert_eq!(n, 0);
    proxy.shutdown().await;
}

/// Primary-key changes keep both images. Before PostgreSQL 18 an UPDATE reads each row's
/// before image in the statement itself (exact pairs), in its WHERE or, with a FROM list, in a
/// SET expression. One whose SET has nothing typed to wrap gets the pre-read, whose rows are
/// paired with the UPDATE's by key, which the UPDATE changes: one row is paired anyway, several
/// are published as delete + insert (as Debezium does), so no image is lost.
async fn primary_key_changes_keep_both_images(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "pkchange").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("UPDATE brieff SET bfkey = 1003 WHERE bfkey = 3")
        .await
        .unwrap();
    c.execute(
        "UPDATE brieff SET bfkey = bfkey + 2000, bfso = 'moved' WHERE bfkey IN (4, 5)",
        &[],
    )
    .await
    .unwrap();
    // With a FROM list that matches row 6 twice (updated once).
    c.simple_query(
        "UPDATE brieff b SET bfkey = b.bfkey + 3000 FROM (VALUES (6), (7), (6)) v(k) WHERE b.bfkey = v.k",
    )
    .await
    .unwrap();
    // Only an untyped literal assigned: before 18, the pre-read.
    c.simple_query("UPDATE brieff b SET bfkey = '3008' FROM (VALUES (8)) v(k) WHERE b.bfkey = v.k")
        .await
        .unwrap();
    c.simple_query(
        "UPDATE brieff b SET bfso = 'pre-read' FROM (VALUES (9), (10)) v(k) WHERE b.bfkey = v.k",
    )
    .await
    .unwrap();
    let ev = read_topic(format!("{prefix}.public.brieff"), 8).await;
    assert_eq!(ev[0]["op"], "u");
    assert_eq!(ev[0]["before"]["bfkey"], 3);
    assert_eq!(ev[0]["after"]["bfkey"], 1003);
    let pairs = |events: &[Value]| {
        let mut seen: Vec<(Option<i64>, Option<i64>)> = events
            .iter()
            .map(|e| (e["before"]["bfkey"].as_i64(), e["after"]["bfkey"].as_i64()))
            .collect();
        seen.sort();
        seen
    };
    assert_eq!(
        pairs(&ev[1..3]),
        [(Some(4), Some(2004)), (Some(5), Some(2005))]
    );
    assert!(ev[1..3].iter().all(|e| e["op"] == "u"));
    assert_eq!(
        pairs(&ev[3..5]),
        [(Some(6), Some(3006)), (Some(7), Some(3007))]
    );
    assert_eq!(pairs(&ev[5..6]), [(Some(8), Some(3008))]);
    assert_eq!(pairs(&ev[6..]), [(Some(9), Some(9)), (Some(10), Some(10))]);
    assert!(ev.iter().all(|e| e["op"] == "u"), "{ev:#?}");
    assert!(ev[6..]
        .iter()
        .all(|e| e["before"]["bfso"] != "pre-read" && e["after"]["bfso"] == "pre-read"));
    proxy.shutdown().await;
}

/// A query that calls a function which may write (a user-defined VOLATILE function) is an
/// opaque statement: recorded on `<prefix>.statements` like DO and CALL, in both protocols;
/// STABLE functions are not; a function created through the proxy counts at once, also in the
/// query string that creates it.
async fn queries_calling_writing_functions_are_opaque(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "fn_calls").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE FUNCTION bump(k int) RETURNS int LANGUAGE sql AS $$ UPDATE brieff SET bfso = 'bumped' WHERE bfkey = k RETURNING bfkey $$;
             CREATE FUNCTION peek(k int) RETURNS text STABLE LANGUAGE sql AS $$ SELECT bfso FROM brieff WHERE bfkey = k $$;",
        )
        .await
        .unwrap();
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("SELECT bump(1)").await.unwrap();
    let row = c.query_one("SELECT bump($1)", &[&2i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2, "the client's rows are untouched");
    c.simple_query("SELECT peek(1)").await.unwrap();
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("SELECT bump(3)").await.unwrap();
    c.simple_query("ROLLBACK").await.unwrap();
    c.simple_query("CREATE FUNCTION bump2(k int) RETURNS void LANGUAGE sql AS $$ DELETE FROM brieff WHERE bfkey = k $$")
        .await
        .unwrap();
    c.simple_query("SELECT bump2(4)").await.unwrap();
    // Regression (a function created in the same query string was not in the catalog list
    // yet, so the query calling it ran as a plain read, unrecorded): the backfill pattern of
    // migrations.
    c.simple_query("CREATE FUNCTION backfill() RETURNS void LANGUAGE sql AS $$ UPDATE brieff SET bfso = 'filled' WHERE bfkey = 5 $$; SELECT backfill(); DROP FUNCTION backfill()")
        .await
        .unwrap();
    let events = read_topic(format!("{prefix}.statements"), 7).await;
    let got = statements(&events);
    let want: Vec<(String, String)> = [
        ("opaque", "SELECT bump(1)"),
        ("opaque", "SELECT bump($1)"),
        ("ddl", "CREATE FUNCTION bump2(k int) RETURNS void LANGUAGE sql AS $$ DELETE FROM brieff WHERE bfkey = k $$"),
        ("opaque", "SELECT bump2(4)"),
        ("ddl", "CREATE FUNCTION backfill() RETURNS void LANGUAGE sql AS $$ UPDATE brieff SET bfso = 'filled' WHERE bfkey = 5 $$"),
        ("opaque", "SELECT backfill()"),
        ("ddl", "DROP FUNCTION backfill()"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want, "{events:#?}");
    proxy.shutdown().await;
}

/// Regression: on PostgreSQL < 18 the pre-read of `UPDATE public.t …` locked with
/// `FOR UPDATE OF "public"."t"`, which PostgreSQL refuses ("FOR UPDATE must specify unqualified
/// relation names"): the client got an error for a valid UPDATE. Both protocols, with and
/// without an alias.
async fn update_of_schema_qualified_table_was_refused_on_old_servers(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "qualified").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("UPDATE public.brieff SET bfso = 'q1' WHERE bfkey = 1")
        .await
        .unwrap();
    c.execute(
        "UPDATE public.brieff AS b SET bfso = $1 WHERE b.bfkey = $2",
        &[&"q2", &2i32],
    )
    .await
    .unwrap();
    let ev = read_topic(format!("{prefix}.public.brieff"), 2).await;
    let got: Vec<(Value, Value, Value)> = ev
        .iter()
        .map(|e| {
            (
                e["before"]["bfso"].clone(),
                e["after"]["bfso"].clone(),
                e["op"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("rep1".into(), "q1".into(), "u".into()),
            ("rep2".into(), "q2".into(), "u".into())
        ]
    );
    proxy.shutdown().await;
}

/// Table facts (name, key) are cached across transactions and sessions; DDL through the proxy
/// drops them at once: a primary key added to a keyless table keys the very next event.
async fn table_cache_follows_ddl_through_the_proxy(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "tcache").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.batch_execute(
        "CREATE TABLE nokey (id int NOT NULL, v text); INSERT INTO nokey VALUES (1, 'a'), (2, 'b');
         CREATE TABLE uq (code text NOT NULL, alt text, v text, UNIQUE (alt), UNIQUE (code) INCLUDE (v));
         INSERT INTO uq VALUES ('x', 'y', 'z');",
    )
    .await
    .unwrap();
    // Twice: the second lookup is a cache hit, and must say the same.
    c.simple_query("UPDATE nokey SET v = 'a1' WHERE id = 1")
        .await
        .unwrap();
    c.simple_query("UPDATE nokey SET v = 'a2' WHERE id = 1")
        .await
        .unwrap();
    let other = harness::connect(proxy.addr, "postgres", &db).await;
    other
        .batch_execute("ALTER TABLE nokey ADD PRIMARY KEY (id)")
        .await
        .unwrap();
    c.simple_query("UPDATE nokey SET v = 'b1' WHERE id = 2")
        .await
        .unwrap();
    let keys = harness::read_topic_raw(format!("{prefix}.public.nokey"), 5).await;
    let keys: Vec<Value> = keys
        .iter()
        .map(|(k, _)| serde_json::from_slice::<Value>(k).unwrap()["key"].clone())
        .collect();
    // INSERTs and the first two UPDATEs: no key, the whole row identifies it.
    assert_eq!(keys[2]["id"], 1, "{keys:#?}");
    assert_eq!(keys[2]["v"], "a1", "{keys:#?}");
    assert_eq!(keys[3]["v"], "a2", "{keys:#?}");
    // After the DDL: the primary key alone.
    assert_eq!(keys[4], serde_json::json!({"id": 2}), "{keys:#?}");
    // No primary key: a unique index on NOT NULL columns identifies the row (its key columns,
    // not INCLUDE ones; the unique index on a nullable column does not count).
    let keys = harness::read_topic_raw(format!("{prefix}.public.uq"), 1).await;
    let key = serde_json::from_slice::<Value>(&keys[0].0).unwrap()["key"].clone();
    assert_eq!(key, serde_json::json!({"code": "x"}));
    proxy.shutdown().await;
}

/// Regression: a query string that mixed writes with transaction control (`psql -c "BEGIN;
/// UPDATE …; COMMIT"`) was refused with HS002. It now runs in parts — each COMMIT only after its
/// transaction's records are acknowledged — and the client sees byte for byte what a direct
/// connection shows: one reply stream and one ReadyForQuery, the rest of the string skipped
/// after an error (also a failing COMMIT), savepoints and rollbacks inside the string honoured.
async fn transaction_control_mixed_with_writes_in_one_query_string_was_refused(pg: Pg) {
    use super::differential::send;
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "segments").await;
    let (db2, direct) = direct_twin(pg, "segments").await;
    let ddl = "CREATE TABLE parent (id int PRIMARY KEY);
               CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)";
    direct.batch_execute(ddl).await.unwrap();
    let setup_conn = harness::connect(pg.addr(), "postgres", &db).await;
    setup_conn.batch_execute(ddl).await.unwrap();
    let steps = [
        // One transaction, with the client's own RETURNING.
        send(query("BEGIN; UPDATE brieff SET bfso = 'seg1' WHERE bfkey = 1; INSERT INTO brieff (bfkey, bfso) VALUES (100, 'new') RETURNING bfkey; COMMIT")),
        // Rolled back inside the string: nothing published.
        send(query("BEGIN; UPDATE brieff SET bfso = 'gone' WHERE bfkey = 2; ROLLBACK; SELECT bfso FROM brieff WHERE bfkey = 2")),
        // A savepoint rolled back; a read after the COMMIT.
        send(query("BEGIN; UPDATE brieff SET bfso = 'kept' WHERE bfkey = 3; SAVEPOINT s; UPDATE brieff SET bfso = 'undone' WHERE bfkey = 4; ROLLBACK TO SAVEPOINT s; COMMIT; SELECT bfso FROM brieff WHERE bfkey IN (3, 4) ORDER BY bfkey")),
        // An error skips the rest of the string and leaves the transaction aborted.
        send(query("BEGIN; UPDATE brieff SET bfso = 'x' WHERE bfkey = 5; SELECT 1/0; UPDATE brieff SET bfso = 'never' WHERE bfkey = 6; COMMIT")),
        send(query("ROLLBACK")),
        // Two transactions in one string.
        send(query("BEGIN; UPDATE brieff SET bfso = 'two-a' WHERE bfkey = 7; COMMIT; BEGIN; DELETE FROM brieff WHERE bfkey = 8; COMMIT")),
        // The COMMIT itself fails (deferred foreign key): what follows it is skipped.
        send(query("BEGIN; INSERT INTO child VALUES (1, 42); COMMIT; SELECT 'skipped'")),
        // Left open by the string, committed by the next query.
        send(query("SELECT 1; BEGIN; UPDATE brieff SET bfso = 'open' WHERE bfkey = 10")),
        send(query("COMMIT")),
        // A COMMIT among reads, of changes made by an earlier query. (Regression: the read
        // fast path let `SELECT 1; COMMIT` through, and the changes were never published.)
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 'pend' WHERE bfkey = 11")),
        send(query("SELECT 1; COMMIT; SELECT 2")),
        // Writes outside a block, in the implicit transactions the server gives a string up to
        // each COMMIT and to its end (regression: refused with HS002); after an error the
        // implicit transaction is rolled back, and the session is idle again.
        send(query("UPDATE brieff SET bfso = 'imp-a' WHERE bfkey = 13; COMMIT; UPDATE brieff SET bfso = 'imp-b' WHERE bfkey = 14")),
        send(query("INSERT INTO brieff (bfkey, bfso) VALUES (101, 'x'); COMMIT; UPDATE brieff SET bfso = 'never' WHERE bfkey = 15; SELECT 1/0")),
        send(query("SELECT 1; UPDATE brieff SET bfso = 'imp-c' WHERE bfkey = 16 RETURNING bfkey; COMMIT; SELECT 2")),
        send(query("SELECT bfso FROM brieff WHERE bfkey IN (13, 14, 15, 16) ORDER BY bfkey")),
        // Ended by ROLLBACK (the server warns), or by COMMIT/ROLLBACK AND CHAIN (the server
        // refuses those there): nothing of it is published.
        send(query("UPDATE brieff SET bfso = 'rolled' WHERE bfkey = 17; ROLLBACK; SELECT bfso FROM brieff WHERE bfkey = 17")),
        send(query("INSERT INTO brieff (bfkey) VALUES (102); COMMIT; INSERT INTO brieff (bfkey) VALUES (103); COMMIT AND CHAIN")),
        send(query("UPDATE brieff SET bfso = 'chained' WHERE bfkey = 18; ROLLBACK AND CHAIN; SELECT 1")),
        send(query("SELECT bfkey, bfso FROM brieff WHERE bfkey IN (17, 18, 102, 103) ORDER BY bfkey")),
        // After a ROLLBACK of the client's block, a new implicit transaction.
        send(query("BEGIN; UPDATE brieff SET bfso = 'rb' WHERE bfkey = 19; ROLLBACK; UPDATE brieff SET bfso = 'after-rb' WHERE bfkey = 20")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 13).await;
    validate("change-event", &events);
    let want: Vec<(String, Value, Value)> = vec![
        ("u".into(), "rep1".into(), "seg1".into()),
        ("c".into(), Value::Null, "new".into()),
        ("u".into(), "rep3".into(), "kept".into()),
        ("u".into(), "rep7".into(), "two-a".into()),
        ("d".into(), "rep8".into(), Value::Null),
        ("u".into(), "rep10".into(), "open".into()),
        ("u".into(), "rep11".into(), "pend".into()),
        ("u".into(), "rep13".into(), "imp-a".into()),
        ("u".into(), "rep14".into(), "imp-b".into()),
        ("c".into(), Value::Null, "x".into()),
        ("u".into(), "rep16".into(), "imp-c".into()),
        ("c".into(), Value::Null, Value::Null),
        ("u".into(), "rep20".into(), "after-rb".into()),
    ];
    assert_eq!(changes(&events, "bfso"), want, "{events:#?}");
    assert_eq!(
        events[0]["transaction"]["id"], events[1]["transaction"]["id"],
        "one transaction"
    );
    assert_ne!(
        events[3]["transaction"]["id"],
        events[4]["transaction"]["id"]
    );
    // The child row's event was published before its COMMIT failed: its END says so.
    let child = read_topic(format!("{prefix}.public.child"), 1).await;
    let tx = read_topic(format!("{prefix}.transaction"), 26).await;
    validate("transaction", &tx);
    let end_of = |id: &Value| end_status(&tx, id);
    assert_eq!(end_of(&child[0]["transaction"]["id"]), "aborted");
    for e in &events {
        assert_eq!(end_of(&e["transaction"]["id"]), "committed", "{e:#}");
    }
    // Both databases end up the same.
    assert_same_brieff(&setup_conn, &direct).await;
    // Still refused: in such an implicit transaction, a BEGIN (the server makes the implicit
    // transaction a block) or a savepoint (the server refuses it there, hindsight's own BEGIN
    // would not).
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    for tail in ["BEGIN; COMMIT", "SAVEPOINT s"] {
        let err = c
            .simple_query(&format!(
                "UPDATE brieff SET bfso = 'pre' WHERE bfkey = 12; {tail}"
            ))
            .await
            .unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("HS002"),
            "{tail}: {err:?}"
        );
    }
    let row = c
        .query_one("SELECT bfso FROM brieff WHERE bfkey = 12", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "rep12",
        "the refused string did not run"
    );
    proxy.shutdown().await;
}

/// Regression: the END record was published, `committed`, as soon as the events were
/// acknowledged — before the COMMIT reached the server. A COMMIT that then failed (here a
/// deferred foreign key) left an END saying `committed` for a transaction that never
/// committed. END now follows the server's answer, in every way a transaction ends: the
/// client's COMMIT (simple and extended) and hindsight's own around an autocommit write
/// (simple and extended).
async fn end_record_said_committed_before_the_commit_failed(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "end_outcome").await;
    harness::connect(pg.addr(), "postgres", &db)
        .await
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
             INSERT INTO parent VALUES (1)",
        )
        .await
        .unwrap();
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let fk = |r: Result<_, tokio_postgres::Error>| {
        let err = r.expect_err("the deferred foreign key fails at COMMIT");
        assert_eq!(err.code().map(|c| c.code()), Some("23503"), "{err:?}");
    };
    // The client's COMMIT, simple protocol.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("INSERT INTO child VALUES (1, 42)")
        .await
        .unwrap();
    fk(c.simple_query("COMMIT").await.map(drop));
    // The client's COMMIT, extended protocol.
    c.simple_query("BEGIN").await.unwrap();
    c.execute("INSERT INTO child VALUES (2, 43)", &[])
        .await
        .unwrap();
    fk(c.execute("COMMIT", &[]).await.map(drop));
    // Autocommit writes: hindsight's own COMMIT fails (SET CONSTRAINTS cannot help here, the
    // constraint is deferred to the end of hindsight's transaction).
    fk(c.simple_query("INSERT INTO child VALUES (3, 44)")
        .await
        .map(drop));
    fk(c.execute("INSERT INTO child VALUES (4, 45)", &[])
        .await
        .map(drop));
    // And one that commits, for contrast.
    c.execute("INSERT INTO child VALUES (5, 1)", &[])
        .await
        .unwrap();
    let events = read_topic(format!("{prefix}.public.child"), 5).await;
    let tx = read_topic(format!("{prefix}.transaction"), 10).await;
    let end_of = |id: &Value| end_status(&tx, id);
    let got: Vec<(Value, Value)> = events
        .iter()
        .map(|e| (e["after"]["id"].clone(), end_of(&e["transaction"]["id"])))
        .collect();
    let want: Vec<(Value, Value)> = vec![
        (1.into(), "aborted".into()),
        (2.into(), "aborted".into()),
        (3.into(), "aborted".into()),
        (4.into(), "aborted".into()),
        (5.into(), "committed".into()),
    ];
    assert_eq!(got, want, "{tx:#?}");
    let n = harness::count(&c, "SELECT count(*) FROM child").await;
    assert_eq!(n, 1);
    proxy.shutdown().await;
}

/// Regression: a row whose event was larger than 1 MB (librdkafka's default `message.max.bytes`)
/// made its transaction fail with HS001 — large TOASTed values (documents in text or bytea) are
/// ordinary in legacy databases. The limit is now `kafka.max_message_bytes` (4 MiB): a 1.5 MB
/// value (an UPDATE event of 3 MB: both images) is captured exactly.
async fn large_toasted_row_was_refused_over_one_megabyte(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "big_row").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("CREATE TABLE doc (id int PRIMARY KEY, body text, blob bytea)")
        .await
        .unwrap();
    // Random-looking content so that TOAST compression does not shrink it away.
    let body: String = (0..1_500_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    c.execute(
        "INSERT INTO doc VALUES (1, $1, decode(md5($1), 'hex'))",
        &[&body],
    )
    .await
    .unwrap();
    c.simple_query("UPDATE doc SET body = upper(body) WHERE id = 1")
        .await
        .unwrap();
    let events = read_topic(format!("{prefix}.public.doc"), 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["after"]["body"].as_str().unwrap(), body);
    assert_eq!(events[1]["before"]["body"].as_str().unwrap(), body);
    assert_eq!(
        events[1]["after"]["body"].as_str().unwrap(),
        body.to_uppercase()
    );
    proxy.shutdown().await;
}

/// Data-modifying CTEs (any write in a WITH clause was refused with HS002): every write of the
/// statement is captured, whatever the statement itself is (SELECT, INSERT with or without
/// RETURNING), in both protocols; the client sees exactly what a direct connection shows
/// (rows, RowDescription, command tags, errors with their positions).
async fn data_modifying_ctes_are_captured(pg: Pg) {
    use super::differential::{cat, send};
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "wcte").await;
    let (db2, direct) = direct_twin(pg, "wcte").await;
    // A table whose DELETE a rule replaces (it cannot take capture columns).
    let ruled = "CREATE TABLE y (a int); INSERT INTO y VALUES (1);
                 CREATE RULE y_rule AS ON DELETE TO y DO INSTEAD INSERT INTO y VALUES (42) RETURNING *";
    direct.batch_execute(ruled).await.unwrap();
    harness::connect(pg.addr(), "postgres", &db)
        .await
        .batch_execute(ruled)
        .await
        .unwrap();
    let moved = "WITH d AS (DELETE FROM brieff WHERE bfkey = $1 RETURNING bfkey, bfso) \
                 INSERT INTO brieff (bfkey, bfso) SELECT bfkey + 500, bfso FROM d RETURNING bfkey";
    let mut steps = vec![
        // The statement writes without returning rows; its CTE's columns are `*`.
        send(query("WITH d AS (DELETE FROM brieff WHERE bfkey IN (1, 2) RETURNING *) INSERT INTO brieff (bfkey, bfso) SELECT bfkey + 100, bfso FROM d")),
        // A SELECT over the written rows, columns renamed, in an explicit transaction.
        send(query("BEGIN")),
        send(query("WITH i(k, label) AS (INSERT INTO brieff (bfkey, bfso) VALUES (200, 'two hundred'), (201, NULL) RETURNING bfkey, bfso) SELECT label, k, k * 2 AS twice FROM i ORDER BY k DESC")),
        send(query("COMMIT")),
        // The statement's own RETURNING, a CTE that is not referenced, a plain CTE.
        send(query("WITH x AS (SELECT 3 AS k), gone AS (DELETE FROM brieff WHERE bfkey = 4), d AS (DELETE FROM brieff WHERE bfkey IN (SELECT k FROM x) RETURNING bfkey) INSERT INTO brieff (bfkey, bfso) SELECT bfkey + 300, 'moved' FROM d RETURNING bfkey, bfso")),
        // A write to a relation with rules makes the statement opaque: it runs unchanged.
        // (Regression: "could not find replacement targetlist entry for attno -6".)
        send(query("WITH t AS (DELETE FROM y RETURNING *) SELECT * FROM t")),
        // Rolled back: nothing published.
        send(query("BEGIN; WITH d AS (DELETE FROM brieff WHERE bfkey = 9 RETURNING *) SELECT count(*) FROM d; ROLLBACK")),
        // The server's own error, where the client's text has it.
        send(query("WITH d AS (DELETE FROM nosuch RETURNING *) SELECT * FROM d")),
        // Extended protocol: parameters, Describe, text then binary results.
        send(cat(&[
            parse("m", moved, &[23]),
            describe(b'S', "m"),
            bind("", "m", 0, &[Some(b"5")], 0),
            describe(b'P', ""),
            execute("", 0),
            bind("", "m", 0, &[Some(b"6")], 1),
            execute("", 0),
            sync(),
        ])),
        // A row limit: the rows come at once (hindsight must read every image).
        send(cat(&[
            parse("", "WITH d AS (DELETE FROM brieff WHERE bfkey IN (10, 11) RETURNING bfkey) SELECT bfkey FROM d ORDER BY bfkey", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
        ])),
        // An UPDATE in a WITH clause (before 18: a locking pre-read of its rows first), in both
        // protocols.
        send(query("WITH u AS (UPDATE brieff SET bfso = 'upd' || bfkey WHERE bfkey IN (15, 16) RETURNING bfkey, bfso) INSERT INTO brieff (bfkey, bfso) SELECT bfkey + 600, bfso FROM u")),
        send(cat(&[
            parse("", "WITH u AS (UPDATE brieff SET bfso = $2 WHERE bfkey = $1 RETURNING bfkey) SELECT bfkey FROM u", &[23, 25]),
            bind("", "", 0, &[Some(b"17"), Some(b"via extended")], 0),
            execute("", 0),
            sync(),
        ])),
        // Two UPDATEs in one statement, and an UPDATE joining the rows a CTE deleted (before
        // 18 each stores its before images in its WHERE or a SET expression; regression:
        // both were refused with HS002, "several UPDATEs" and "an UPDATE that reads a CTE that
        // writes" in a data-modifying WITH statement).
        send(query("WITH a AS (UPDATE brieff SET bfso = 'two-a' WHERE bfkey = 22) UPDATE brieff SET bfso = 'two-b' || bfkey WHERE bfkey = 23")),
        send(query("WITH d AS (DELETE FROM brieff WHERE bfkey = 25 RETURNING bfkey) UPDATE brieff b SET bfso = b.bfso || '+' || d.bfkey FROM d WHERE b.bfkey = d.bfkey - 1 RETURNING b.bfso")),
        // Upserts (DO UPDATE) in a WITH clause and as the statement itself.
        send(query("WITH u AS (INSERT INTO brieff (bfkey, bfso) VALUES (18, 'up18'), (700, 'new700') ON CONFLICT (bfkey) DO UPDATE SET bfso = excluded.bfso RETURNING bfkey) SELECT count(*) FROM u")),
        send(query("WITH d AS (DELETE FROM brieff WHERE bfkey = 20 RETURNING bfkey) INSERT INTO brieff (bfkey, bfso) SELECT bfkey + 1, 'up21' FROM d ON CONFLICT (bfkey) DO UPDATE SET bfso = excluded.bfso WHERE brieff.bfkey > 0 RETURNING bfso")),
        // An error in the client's extended statement: its Parse fails as it would directly.
        send(cat(&[
            parse("", "WITH d AS (DELETE FROM nosuch RETURNING *) SELECT * FROM d", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
        ])),
    ];
    if pg.major() >= 18 {
        // UPDATE and MERGE need RETURNING old/new.
        steps.push(send(query("WITH u AS (UPDATE brieff SET bfso = 'upd' WHERE bfkey = 12 RETURNING bfkey) MERGE INTO brieff t USING u ON t.bfkey = u.bfkey + 1 WHEN MATCHED THEN UPDATE SET bfso = 'merged'")));
    }
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let mut want: Vec<(String, Value, Value)> = vec![
        ("d".into(), 1.into(), Value::Null),
        ("d".into(), 2.into(), Value::Null),
        ("c".into(), Value::Null, 101.into()),
        ("c".into(), Value::Null, 102.into()),
        ("c".into(), Value::Null, 200.into()),
        ("c".into(), Value::Null, 201.into()),
        ("d".into(), 4.into(), Value::Null),
        ("d".into(), 3.into(), Value::Null),
        ("c".into(), Value::Null, 303.into()),
        ("d".into(), 5.into(), Value::Null),
        ("c".into(), Value::Null, 505.into()),
        ("d".into(), 6.into(), Value::Null),
        ("c".into(), Value::Null, 506.into()),
        ("d".into(), 10.into(), Value::Null),
        ("d".into(), 11.into(), Value::Null),
        ("u".into(), 15.into(), 15.into()),
        ("u".into(), 16.into(), 16.into()),
        ("c".into(), Value::Null, 615.into()),
        ("c".into(), Value::Null, 616.into()),
        ("u".into(), 17.into(), 17.into()),
        ("u".into(), 18.into(), 18.into()),
        ("c".into(), Value::Null, 700.into()),
        ("d".into(), 20.into(), Value::Null),
        ("u".into(), 21.into(), 21.into()),
        ("u".into(), 22.into(), 22.into()),
        ("u".into(), 23.into(), 23.into()),
        ("d".into(), 25.into(), Value::Null),
        ("u".into(), 24.into(), 24.into()),
    ];
    if pg.major() >= 18 {
        want.push(("u".into(), 12.into(), 12.into()));
        want.push(("u".into(), 13.into(), 13.into()));
    }
    let events = read_topic(format!("{prefix}.public.brieff"), want.len()).await;
    validate("change-event", &events);
    let mut got = changes(&events, "bfkey");
    // The order of rows within one write is the server's; compare per statement.
    got.sort_by_key(|(op, b, a)| (events_order(op), b.to_string(), a.to_string()));
    want.sort_by_key(|(op, b, a)| (events_order(op), b.to_string(), a.to_string()));
    assert_eq!(got, want, "{events:#?}");
    let moved_from = events
        .iter()
        .find(|e| e["before"]["bfkey"] == 1)
        .expect("the DELETE of 1");
    assert_eq!(moved_from["before"]["bfso"], "rep1", "full before image");
    let moved_to = events
        .iter()
        .find(|e| e["after"]["bfkey"] == 101)
        .expect("the INSERT of 101");
    assert_eq!(moved_to["after"]["bfso"], "rep1");
    assert_eq!(
        moved_from["transaction"]["id"], moved_to["transaction"]["id"],
        "one statement, one transaction"
    );
    assert!(
        events.iter().position(|e| e["before"]["bfkey"] == 1)
            < events.iter().position(|e| e["after"]["bfkey"] == 101),
        "the WITH list's writes come first"
    );
    let updated = events.iter().find(|e| e["after"]["bfkey"] == 17).unwrap();
    assert_eq!(updated["before"]["bfso"], "rep17");
    assert_eq!(updated["after"]["bfso"], "via extended");
    for (key, before, after) in [(18, "rep18", "up18"), (21, "rep21", "up21")] {
        let upserted = events.iter().find(|e| e["after"]["bfkey"] == key).unwrap();
        assert_eq!(upserted["before"]["bfso"], before, "{upserted:#}");
        assert_eq!(upserted["after"]["bfso"], after, "{upserted:#}");
    }
    for (key, before, after) in [
        (22, "rep22", "two-a"),
        (23, "rep23", "two-b23"),
        (24, "rep24", "rep24+25"),
    ] {
        let updated = events.iter().find(|e| e["after"]["bfkey"] == key).unwrap();
        assert_eq!(updated["before"]["bfso"], before, "{updated:#}");
        assert_eq!(updated["after"]["bfso"], after, "{updated:#}");
    }
    let updated = events.iter().find(|e| e["after"]["bfkey"] == 15).unwrap();
    assert_eq!(updated["before"]["bfso"], "rep15");
    assert_eq!(updated["after"]["bfso"], "upd15");
    if pg.major() >= 18 {
        let merged = events.iter().find(|e| e["after"]["bfkey"] == 13).unwrap();
        assert_eq!(merged["before"]["bfso"], "rep13");
        assert_eq!(merged["after"]["bfso"], "merged");
    }
    // Both databases end up the same.
    let setup_conn = harness::connect(pg.addr(), "postgres", &db).await;
    assert_same_brieff(&setup_conn, &direct).await;
    // Among other statements, a statement the server cannot describe before the others ran
    // (it may depend on them) is refused, with the server's reason; nothing runs.
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let err = c
        .simple_query("DELETE FROM brieff WHERE bfkey = 14; WITH d AS (DELETE FROM nosuch RETURNING *) SELECT * FROM d")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS002"), "{err:?}");
    let msg = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        msg.as_deref()
            .unwrap_or_default()
            .contains("\"nosuch\" does not exist"),
        "{msg:?}"
    );
    assert_eq!(
        harness::count(&c, "SELECT count(*) FROM brieff WHERE bfkey = 14").await,
        1
    );
    if pg.major() < 18 {
        // Still refused before 18: an UPDATE that reads the rows of a CTE that writes (its
        // pre-read cannot run apart from the statement).
        let c = harness::connect(proxy.addr, "postgres", &db).await;
        let err = c
            .simple_query("WITH d AS (DELETE FROM brieff WHERE bfkey = 18 RETURNING bfkey) UPDATE brieff SET bfso = 'x' WHERE bfkey IN (SELECT bfkey + 1 FROM d)")
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("HS002"), "{err:?}");
    }
    proxy.shutdown().await;
}

/// Regression: `COPY (DELETE/UPDATE/INSERT … RETURNING …) TO` was refused with HS002 (the write's
/// rows go out as COPY data, where capture columns cannot ride along). The write now runs in a
/// CTE of the COPY's query that keeps its images in the server for a post-read: the client gets
/// the COPY data byte for byte (text, CSV with a header, binary), the events exact images.
async fn copy_of_a_writes_returning_rows_was_refused(pg: Pg) {
    use super::differential::{cat, send};
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "copyout").await;
    let (db2, direct) = direct_twin(pg, "copyout").await;
    let mut steps = vec![
        send(query("COPY (DELETE FROM brieff WHERE bfkey IN (1, 2) RETURNING bfkey, bfso) TO STDOUT")),
        send(query("COPY (UPDATE brieff SET bfso = bfso || E'\\t!' WHERE bfkey = 3 RETURNING *) TO STDOUT (FORMAT csv, HEADER)")),
        send(query("COPY (INSERT INTO brieff (bfkey, bfso, amount) VALUES (100, 'a', 1.5), (101, NULL, NULL) RETURNING bfkey, bfso, bfkey) TO STDOUT (FORMAT binary)")),
        send(query("COPY (INSERT INTO brieff (bfkey, bfso) VALUES (4, 'up4'), (102, 'new') ON CONFLICT (bfkey) DO UPDATE SET bfso = excluded.bfso RETURNING bfkey) TO STDOUT")),
        // Rolled back: nothing published.
        send(query("BEGIN")),
        send(query("COPY (DELETE FROM brieff WHERE bfkey = 5 RETURNING bfkey) TO STDOUT")),
        send(query("ROLLBACK")),
        // The server's error, at the client's position; nothing returned.
        send(query("COPY (DELETE FROM brieff WHERE nope = 6 RETURNING bfkey) TO STDOUT")),
        send(query("COPY (DELETE FROM brieff WHERE bfkey = 7 RETURNING bfkey) TO STDOUT (FORMAT nosuch)")),
        // No RETURNING: the server's own refusal.
        send(query("COPY (DELETE FROM brieff WHERE bfkey = 7) TO STDOUT")),
        // No rows.
        send(query("COPY (DELETE FROM brieff WHERE bfkey = 999 RETURNING bfkey) TO STDOUT")),
        // Extended protocol.
        send(cat(&[
            parse("", "COPY (UPDATE brieff SET bfso = 'ext' WHERE bfkey = 8 RETURNING bfso) TO STDOUT", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
        ])),
    ];
    if pg.major() >= 18 {
        steps.push(send(query("COPY (MERGE INTO brieff b USING (VALUES (9, 'm9')) s(k, v) ON b.bfkey = s.k WHEN MATCHED THEN UPDATE SET bfso = s.v RETURNING merge_action(), b.bfkey) TO STDOUT")));
    }
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let mut want: Vec<(String, Value, Value)> = vec![
        ("d".into(), "rep1".into(), Value::Null),
        ("d".into(), "rep2".into(), Value::Null),
        ("u".into(), "rep3".into(), "rep3\t!".into()),
        ("c".into(), Value::Null, "a".into()),
        ("c".into(), Value::Null, Value::Null),
        ("u".into(), "rep4".into(), "up4".into()),
        ("c".into(), Value::Null, "new".into()),
        ("u".into(), "rep8".into(), "ext".into()),
    ];
    if pg.major() >= 18 {
        want.push(("u".into(), "rep9".into(), "m9".into()));
    }
    let events = read_topic(format!("{prefix}.public.brieff"), want.len()).await;
    validate("change-event", &events);
    let mut got = changes(&events, "bfso");
    got.sort_by_key(|(op, b, a)| (events_order(op), b.to_string(), a.to_string()));
    want.sort_by_key(|(op, b, a)| (events_order(op), b.to_string(), a.to_string()));
    assert_eq!(got, want, "{events:#?}");
    let setup_conn = harness::connect(pg.addr(), "postgres", &db).await;
    assert_same_brieff(&setup_conn, &direct).await;
    if pg.major() < 18 {
        // Before 18 an UPDATE with a FROM list assigning only literals needs the locking
        // pre-read, which cannot run apart from the COPY: refused, not run.
        let c = harness::connect(proxy.addr, "postgres", &db).await;
        let err = c
            .simple_query("COPY (UPDATE brieff b SET bfso = 'x' FROM (VALUES (10)) v(k) WHERE b.bfkey = v.k RETURNING b.bfkey) TO STDOUT")
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("HS002"), "{err:?}");
    }
    proxy.shutdown().await;
}

/// Deletes sort before creates before updates (for comparing events statement by statement).
fn events_order(op: &str) -> u8 {
    match op {
        "d" => 0,
        "c" => 1,
        _ => 2,
    }
}

/// Regression: a write with RETURNING executed with a row limit (as JDBC does with a fetch
/// size) was suspended after the limit; the write had run in full, but the images of the
/// rows the client never fetched never reached hindsight, and the transaction committed with
/// changes unrecorded. The portal now runs without the limit: every row comes back at once.
async fn row_limited_execute_left_changes_unrecorded(pg: Pg) {
    use super::differential::{cat, run, send};
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "maxrows").await;
    let steps = [send(cat(&[
        parse(
            "",
            "DELETE FROM brieff WHERE bfkey <= 3 RETURNING bfkey",
            &[],
        ),
        bind("", "", 0, &[], 0),
        execute("", 1),
        sync(),
    ]))];
    let replies = run(proxy.addr, &db, 0, &steps).await;
    let tags: Vec<u8> = replies[1].iter().map(|f| f[0]).collect();
    assert_eq!(tags, b"12DDDCZ", "{}", describe_frames(&replies[1]));
    let events = read_topic(format!("{prefix}.public.brieff"), 3).await;
    assert_eq!(
        changes(&events, "bfkey"),
        (1..=3)
            .map(|k| ("d".to_string(), Value::from(k), Value::Null))
            .collect::<Vec<_>>()
    );
    proxy.shutdown().await;
}

/// Regression: a pipeline whose DDL statement failed (`CREATE INDEX CONCURRENTLY` inside the
/// pipeline's implicit transaction, as psql's `\startpipeline` sends it) hung the session, or
/// handed the client the rows of hindsight's own catalog query. The DDL's Execute waits while
/// its statement event is published; its error arrived before the rest of the pipeline was
/// read, and the replies expected for those messages — which the server skips up to the
/// Sync — were never dropped.
async fn messages_after_a_failed_deferred_execute_waited_for_replies_forever(pg: Pg) {
    use super::differential::{cat, send};
    use super::wire_client::*;
    let (db, _prefix, proxy) = setup(pg, "pipefail").await;
    let (db2, _direct) = direct_twin(pg, "pipefail").await;
    let pipeline = |sql: &str| {
        cat(&[
            parse("", sql, &[]),
            bind("", "", 0, &[], 0),
            describe(b'P', ""),
            execute("", 0),
        ])
    };
    let steps = [
        send(cat(&[
            pipeline("SELECT 1"),
            pipeline("CREATE INDEX CONCURRENTLY brieff_bfso ON brieff (bfso)"),
            pipeline("SELECT 2"),
            pipeline("UPDATE brieff SET bfso = 'skipped' WHERE bfkey = 1"),
            sync(),
        ])),
        send(query("SELECT 'after'")),
        send(query(
            "UPDATE brieff SET bfso = 'done' WHERE bfkey = 2 RETURNING bfso",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    proxy.shutdown().await;
}

/// Regression: a pipeline that writes, then BEGINs (psql `\startpipeline`; the server turns the
/// implicit transaction into the BEGIN's), got "there is already a transaction in progress"
/// about the transaction hindsight opened for the batch, and "there is no transaction in
/// progress" from hindsight's COMMIT after the client's ROLLBACK.
async fn begin_inside_a_pipeline_warned_about_hindsights_own_transaction(pg: Pg) {
    use super::differential::{cat, send};
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "pipebegin").await;
    let (db2, _direct) = direct_twin(pg, "pipebegin").await;
    let stmt = |sql: &str| cat(&[parse("", sql, &[]), bind("", "", 0, &[], 0), execute("", 0)]);
    let steps = [
        send(cat(&[
            stmt("UPDATE brieff SET bfso = 'gone1' WHERE bfkey = 1"),
            stmt("BEGIN"),
            stmt("UPDATE brieff SET bfso = 'gone2' WHERE bfkey = 2"),
            stmt("ROLLBACK"),
            sync(),
        ])),
        send(cat(&[
            stmt("UPDATE brieff SET bfso = 'kept3' WHERE bfkey = 3"),
            stmt("BEGIN"),
            stmt("UPDATE brieff SET bfso = 'kept4' WHERE bfkey = 4"),
            stmt("COMMIT"),
            sync(),
        ])),
        send(query(
            "SELECT bfso FROM brieff WHERE bfkey <= 4 ORDER BY bfkey",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 2).await;
    let want: Vec<(String, Value, Value)> = vec![
        ("u".into(), "rep3".into(), "kept3".into()),
        ("u".into(), "rep4".into(), "kept4".into()),
    ];
    assert_eq!(changes(&events, "bfso"), want, "{events:#?}");
    proxy.shutdown().await;
}

/// Regression: before PostgreSQL 18, an upsert whose arbiter is a partial unique index failed
/// with "more than one row returned by a subquery used as an expression" when rows outside the
/// index shared its key (capture looked the updated row up with a scalar subquery). Also the
/// targets that used to be refused before 18: an expression, `ON CONSTRAINT` (both
/// protocols), a WHERE stronger than the index's (the row is found by its key alone), a
/// constraint that does not exist and DO UPDATE without a target (the server's own errors),
/// error positions in a DO UPDATE's WHERE and RETURNING (hindsight inserts text before them).
/// Replies equal a direct run's.
async fn upsert_on_a_partial_unique_index_failed_with_more_than_one_row(pg: Pg) {
    use super::differential::{cat, send};
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "upsert_partial").await;
    let (db2, direct) = direct_twin(pg, "upsert_partial").await;
    let ddl =
        "CREATE TABLE acct (id int CONSTRAINT acct_id UNIQUE, email text, active bool, n int);
               CREATE UNIQUE INDEX acct_active ON acct (lower(email)) WHERE active;
               INSERT INTO acct VALUES (1, 'a', false, 0), (2, 'a', true, 0), (3, 'A', false, 0);";
    direct.batch_execute(ddl).await.unwrap();
    harness::connect(pg.addr(), "postgres", &db)
        .await
        .batch_execute(ddl)
        .await
        .unwrap();
    let upsert = "INSERT INTO acct VALUES (4, 'A', true, 1) ON CONFLICT (lower(email)) WHERE active DO UPDATE SET n = acct.n + 1";
    let steps = [
        // Updates id 2 (ids 1 and 3 share the key outside the index); then a plain insert.
        send(query(upsert)),
        send(query("INSERT INTO acct VALUES (5, 'b', true, 1) ON CONFLICT (lower(email)) WHERE active DO UPDATE SET n = 99 RETURNING id, n")),
        // A stronger WHERE than the index's: the conflicting row (n < 0) fails it.
        send(query("BEGIN; SAVEPOINT s; UPDATE acct SET n = -5 WHERE id = 2; INSERT INTO acct VALUES (6, 'a', true, 1) ON CONFLICT (lower(email)) WHERE active AND n >= 0 DO UPDATE SET n = 100; COMMIT")),
        send(query("INSERT INTO acct AS x VALUES (1, 'z', true, 7) ON CONFLICT ON CONSTRAINT acct_id DO UPDATE SET n = x.n + 10 RETURNING *")),
        send(cat(&[
            parse("", "INSERT INTO acct AS x VALUES ($1, 'z', false, 0) ON CONFLICT ON CONSTRAINT acct_id DO UPDATE SET n = x.n + 1", &[23]),
            bind("", "", 0, &[Some(&b"3"[..])], 0),
            execute("", 0),
            sync(),
        ])),
        send(query("INSERT INTO acct VALUES (1) ON CONFLICT ON CONSTRAINT no_such DO UPDATE SET n = 0")),
        send(query("SELECT 1; INSERT INTO acct VALUES (1) ON CONFLICT DO UPDATE SET n = 0")),
        // Errors point into the client's text, past what hindsight inserts into it.
        send(query("SELECT 1; INSERT INTO acct VALUES (1) ON CONFLICT (id) DO UPDATE SET n = 1 WHERE acct.nope > 0")),
        send(query("INSERT INTO acct VALUES (1) ON CONFLICT (id) DO UPDATE SET n = 1 WHERE acct.n > 0 RETURNING nope")),
        send(cat(&[
            parse("", "INSERT INTO acct VALUES (1) ON CONFLICT (id) DO UPDATE SET n = 1 RETURNING nope", &[]),
            sync(),
        ])),
        send(query("SELECT id, email, active, n FROM acct ORDER BY id")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.acct"), 6).await;
    validate("change-event", &events);
    let got: Vec<(String, Value, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["after"]["id"].clone(),
                e["before"]["n"].clone(),
                e["after"]["n"].clone(),
            )
        })
        .collect();
    let want: Vec<(String, Value, Value, Value)> = vec![
        ("u".into(), 2.into(), 0.into(), 1.into()),
        ("c".into(), 5.into(), Value::Null, 1.into()),
        ("u".into(), 2.into(), 1.into(), (-5).into()),
        ("u".into(), 2.into(), (-5).into(), 100.into()),
        ("u".into(), 1.into(), 0.into(), 10.into()),
        ("u".into(), 3.into(), 0.into(), 1.into()),
    ];
    assert_eq!(got, want, "{events:#?}");
    proxy.shutdown().await;
}

/// Regression: before PostgreSQL 18, an upsert that waited for a concurrent transaction's
/// update of its row recorded the row as the statement's snapshot saw it, not the version it
/// replaced (the hot-counter pattern: `n` went 2 → 3, the event said 1 → 3). The before image
/// now comes from the row ON CONFLICT locked.
async fn upsert_before_image_was_stale_after_a_concurrent_update(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "upsert_race").await;
    let first = harness::connect(proxy.addr, "postgres", &db).await;
    let second = std::sync::Arc::new(harness::connect(proxy.addr, "postgres", &db).await);
    let monitor = harness::connect(pg.addr(), "postgres", &db).await;
    first
        .batch_execute(
            "CREATE TABLE ctr (k text PRIMARY KEY, n int); INSERT INTO ctr VALUES ('x', 1)",
        )
        .await
        .unwrap();
    // The same race for an UPDATE (before 18: its before image is stored by its WHERE, which
    // PostgreSQL evaluates again on the version it waited for).
    for bump in [
        "INSERT INTO ctr VALUES ('x', 1) ON CONFLICT (k) DO UPDATE SET n = ctr.n + 1",
        "UPDATE ctr SET n = n + 1 WHERE k = 'x'",
    ] {
        first.batch_execute("BEGIN").await.unwrap();
        first.batch_execute(bump).await.unwrap();
        let c = std::sync::Arc::clone(&second);
        let waiting = tokio::spawn(async move { c.batch_execute(bump).await });
        // The second statement has taken its snapshot and waits for the first's row lock.
        let mut blocked = false;
        for _ in 0..200 {
            let n: i64 = monitor
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%ctr%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n > 0 {
                blocked = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            blocked,
            "the second statement never waited for the first: {bump}"
        );
        first.batch_execute("COMMIT").await.unwrap();
        waiting.await.unwrap().unwrap();
    }
    let n: i32 = monitor
        .query_one("SELECT n FROM ctr", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    let events = read_topic(format!("{prefix}.public.ctr"), 5).await;
    let got: Vec<(Value, Value)> = events
        .iter()
        .map(|e| (e["before"]["n"].clone(), e["after"]["n"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (Value::Null, 1.into()),
            (1.into(), 2.into()),
            (2.into(), 3.into()),
            (3.into(), 4.into()),
            (4.into(), 5.into())
        ],
        "{events:#?}"
    );
    proxy.shutdown().await;
}

/// Regression (a LATIN1 client's data was changed on the way): hindsight read the client's SQL
/// text as UTF-8, lossily, and sent its rewrite with U+FFFD where the client had written
/// `'caf\xE9'` — the row stored was not the one the client wrote. Now a session whose
/// client_encoding is not UTF-8 has its text taken byte for byte (`wire::client_text`): the
/// server gets exactly the client's bytes, the replies are the direct run's, and the images
/// are exact. In a SQL_ASCII database, bytes that are not UTF-8 have no characters: a write
/// whose image holds them is not committed unrecorded (HS001); UTF-8 content is recorded.
async fn latin1_text_was_rewritten_lossily(pg: Pg) {
    use super::differential::{cat, send};
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "latin1").await;
    let (db2, _direct) = direct_twin(pg, "latin1").await;
    let mut parse_latin1 = Vec::new();
    parse_latin1.extend_from_slice(
        b"\0UPDATE brieff SET bfso = bfso || ' \xe0 ' || $1 WHERE bfkey = 3\0\0\x01\0\0\0\x19",
    );
    let steps = vec![
        send(query("SET client_encoding = 'LATIN1'")),
        send(raw_query(b"INSERT INTO brieff (bfkey, bfso) VALUES (100, 'caf\xe9')")),
        send(raw_query(b"UPDATE brieff SET bfso = 'na\xefve' WHERE bfkey = 1 RETURNING bfso")),
        send(raw_query(b"BEGIN; DELETE FROM brieff WHERE bfso = 'caf\xe9'; COMMIT")),
        send(cat(&[
            msg(b'P', &parse_latin1),
            bind("", "", 0, &[Some(b"d\xe9j\xe0")], 0),
            execute("", 0),
            sync(),
        ])),
        send(query("SET client_encoding = 'WIN1252'")),
        send(raw_query(b"INSERT INTO brieff (bfkey, bfso) VALUES (101, '\x80 \x9c')")),
        // An error's position in a LATIN1 text: one character per byte.
        send(raw_query(b"UPDATE brieff SET bfso = '\xe9\xe9' WHERE nosuch = 1")),
        send(query("SELECT bfkey, bfso, octet_length(bfso) FROM brieff WHERE bfkey IN (1, 3, 100, 101) ORDER BY 1")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 5).await;
    validate("change-event", &events);
    assert_eq!(
        changes(&events, "bfso"),
        vec![
            ("c".into(), Value::Null, "café".into()),
            ("u".into(), "rep1".into(), "naïve".into()),
            ("d".into(), "café".into(), Value::Null),
            ("u".into(), "rep3".into(), "rep3 à déjà".into()),
            ("c".into(), Value::Null, "€ œ".into()),
        ],
        "{events:#?}"
    );
    assert_eq!(
        events[0]["source"]["statement"],
        "INSERT INTO brieff (bfkey, bfso) VALUES (100, 'caf\\xE9')"
    );
    // Names the server returns in the session's encoding (regression: read lossily, they made
    // hindsight's own SQL name columns that do not exist): a COPY into a table whose columns
    // are not ASCII (the stage is built from the catalog's names), a data-modifying WITH whose
    // client RETURNING names them, and the key of the events.
    let ddl = "CREATE TABLE mass (schlüssel int PRIMARY KEY, größe text)";
    execute_in(pg, [&db, &db2], ddl).await;
    let steps = vec![
        send(query("SET client_encoding = 'LATIN1'")),
        super::differential::Step::Send(
            raw_query(b"COPY mass FROM STDIN"),
            super::differential::Until::Tag(b'G'),
        ),
        send(cat(&[copy_data(b"1\tgro\xdf\n2\t\xe9t\xe9\n"), copy_done()])),
        send(raw_query(b"WITH d AS (DELETE FROM mass WHERE schl\xfcssel = 2 RETURNING gr\xf6\xdfe) SELECT * FROM d")),
        send(raw_query(b"UPDATE mass SET schl\xfcssel = 3 WHERE gr\xf6\xdfe = 'gro\xdf'")),
        send(query("SELECT * FROM mass ORDER BY 1")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let records = harness::read_topic_raw(format!("{prefix}.public.mass"), 4).await;
    let got: Vec<(String, String)> = records
        .iter()
        .map(|(k, v)| {
            let e: Value = serde_json::from_slice(v).unwrap();
            (
                String::from_utf8_lossy(k).into_owned(),
                format!("{} {} -> {}", e["op"], e["before"], e["after"]),
            )
        })
        .collect();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got[0].1.contains(r#"{"größe":"groß","schlüssel":1}"#),
        "{got:#?}"
    );
    assert!(got[1].1.contains(r#""größe":"été""#), "{got:#?}");
    assert!(
        got[0].0.contains("schlüssel"),
        "the key names the key column: {got:#?}"
    );
    // A SQL_ASCII database: bytes without defined characters. Stored as sent when it commits;
    // a write whose image holds them cannot be recorded exactly, so it does not commit.
    let ascii = format!("{db}_ascii");
    harness::connect(pg.addr(), "postgres", &db)
        .await
        .batch_execute(&format!(
            "CREATE DATABASE {ascii} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    harness::connect(pg.addr(), "postgres", &ascii)
        .await
        .batch_execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&startup("postgres", &ascii, 0)).await;
    c.until_ready(1).await;
    c.send(&query("SET client_encoding = 'SQL_ASCII'")).await;
    c.until_ready(1).await;
    c.send(&raw_query(b"INSERT INTO t VALUES (1, 'caf\xe9')"))
        .await;
    let got = c.until_ready(1).await;
    let err = got
        .iter()
        .find(|f| f[0] == b'E')
        .unwrap_or_else(|| panic!("no error: {}", describe_frames(&got)));
    assert_eq!(
        sqlstate(err).as_deref(),
        Some("HS001"),
        "{}",
        describe_frames(&got)
    );
    assert!(
        field(err, b'M').unwrap_or_default().contains("0xE9"),
        "{}",
        describe_frames(&got)
    );
    c.send(&raw_query(b"INSERT INTO t VALUES (2, 'plain')"))
        .await;
    c.until_ready(1).await;
    // Bytes that are UTF-8 (what most applications store in a SQL_ASCII database) are
    // recorded as the characters they spell (before: refused like the rest).
    c.send(&raw_query(b"INSERT INTO t VALUES (3, 'caf\xc3\xa9')"))
        .await;
    let got = c.until_ready(1).await;
    assert!(
        !got.iter().any(|f| f[0] == b'E'),
        "{}",
        describe_frames(&got)
    );
    let events = read_topic(format!("{prefix}.public.t"), 2).await;
    assert_eq!(
        changes(&events, "v"),
        vec![
            ("c".into(), Value::Null, "plain".into()),
            ("c".into(), Value::Null, "café".into()),
        ]
    );
    let rows: Vec<(i32, i32)> = harness::connect(pg.addr(), "postgres", &ascii)
        .await
        .query("SELECT k, octet_length(v) FROM t ORDER BY k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(2, 5), (3, 5)]);
    proxy.shutdown().await;
}

/// Regression: a session whose client_encoding is not UTF-8 got its row images in that encoding.
/// A row holding a character the encoding lacks (a Chinese name in a row a LATIN1 client
/// updates) made the server fail the client's statement, which directly succeeds: capture
/// changed the outcome. And writes in encodings hindsight had no table for (WIN1251, EUC_JP,
/// LATIN2, …) were refused with HS001. Images now leave the server as hex of UTF-8, converted
/// by the server: these writes run as they do directly and are recorded exactly, whatever the
/// client's encoding or `bytea_output`.
async fn latin1_write_failed_on_a_row_holding_characters_latin1_lacks(pg: Pg) {
    use super::differential::send;
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "enc_lacks").await;
    let (db2, _direct) = direct_twin(pg, "enc_lacks").await;
    let seed = "INSERT INTO brieff (bfkey, bfso) VALUES (200, '中文 € Привет')";
    execute_in(pg, [&db, &db2], seed).await;
    let steps = vec![
        // The encoding changes in the same query string, before the server reports it.
        send(query(
            "SET client_encoding = 'LATIN1'; UPDATE brieff SET amount = 0 WHERE bfkey = 200",
        )),
        send(query("UPDATE brieff SET amount = 1 WHERE bfkey = 200")),
        // Every capture path's images: MERGE (its post-read before 18), a data-modifying WITH,
        // COPY (write RETURNING) TO, and below TRUNCATE.
        send(query("MERGE INTO brieff b USING (SELECT 200 AS k) s ON b.bfkey = s.k WHEN MATCHED THEN UPDATE SET amount = 2")),
        send(query("WITH w AS (UPDATE brieff SET amount = 3 WHERE bfkey = 200 RETURNING bfkey) SELECT * FROM w")),
        send(query("COPY (UPDATE brieff SET amount = amount + 1 WHERE bfkey = 200 RETURNING bfkey) TO STDOUT")),
        send(query("DELETE FROM brieff WHERE bfkey = 200")),
        send(query("SET client_encoding = 'WIN1251'")),
        send(raw_query(
            b"INSERT INTO brieff (bfkey, bfso) VALUES (300, '\xcf\xf0\xe8\xe2\xe5\xf2')",
        )),
        send(query("SET client_encoding = 'EUC_JP'")),
        send(raw_query(
            b"INSERT INTO brieff (bfkey, bfso) VALUES (301, '\xc6\xfc\xcb\xdc') RETURNING bfso",
        )),
        send(query("SET bytea_output = 'escape'")),
        send(query("UPDATE brieff SET bfso = 'x' WHERE bfkey = 301")),
        send(query(
            "SELECT bfkey, bfso, octet_length(bfso) FROM brieff WHERE bfkey >= 200 ORDER BY 1",
        )),
        send(query("SET client_encoding = 'LATIN1'")),
        send(query("TRUNCATE brieff")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let mut events = read_topic(format!("{prefix}.public.brieff"), 36).await;
    validate("change-event", &events);
    let truncated = events.split_off(9);
    assert_eq!(truncated.len(), 27, "{truncated:#?}");
    assert!(truncated.iter().all(|e| e["op"] == "t"));
    assert!(truncated.iter().any(|e| e["before"]["bfso"] == "Привет"));
    let amounts: Vec<String> = events[..5]
        .iter()
        .map(|e| e["after"]["amount"].to_string())
        .collect();
    assert_eq!(amounts, ["0.00", "1.00", "2.00", "3.00", "4.00"]);
    assert_eq!(
        changes(&events, "bfso"),
        vec![
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("d".into(), "中文 € Привет".into(), Value::Null),
            ("c".into(), Value::Null, "Привет".into()),
            ("c".into(), Value::Null, "日本".into()),
            ("u".into(), "日本".into(), "x".into()),
        ],
        "{events:#?}"
    );
    // Names the catalog gives in the session's encoding (before: shown as `\xNN` in events in
    // any encoding but UTF8, LATIN1 and WIN1252), and the key they name. The topic holds only
    // what Kafka allows in a topic name.
    let ddl = "CREATE TABLE \"名簿 Liste\" (番号 int PRIMARY KEY, 名前 text)";
    execute_in(pg, [&db, &db2], ddl).await;
    let steps = vec![
        send(query("SET client_encoding = 'EUC_JP'")),
        send(raw_query(
            b"INSERT INTO \"\xcc\xbe\xca\xed Liste\" VALUES (7, '\xbb\xb3\xc5\xc4')",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let records = harness::read_topic_raw(format!("{prefix}.public.___Liste"), 1).await;
    assert_eq!(records.len(), 1);
    let e: Value = serde_json::from_slice(&records[0].1).unwrap();
    assert_eq!(e["source"]["table"], "名簿 Liste");
    assert_eq!(e["after"], serde_json::json!({"番号": 7, "名前": "山田"}));
    let key = String::from_utf8_lossy(&records[0].0).into_owned();
    assert!(key.contains("番号") && key.contains('7'), "{key}");
    proxy.shutdown().await;
}

/// A statement prepared in a UTF-8 session built its row images as jsonb, which the server sends
/// in the client's encoding of the moment. After `SET client_encoding = 'LATIN1'`, executing it
/// on a row holding `中文` failed (the server cannot send that in LATIN1), where it succeeds
/// directly; and LATIN1 bytes that happen to be valid UTF-8 (`Ã©` is C3 A9, UTF-8 for `é`) were
/// recorded as other text, silently. The same held inside one pipeline, for a write parsed after
/// its SET before the server reports the new encoding (at the Sync). Such statements are now
/// prepared again with hex images; one whose text is not ASCII (it cannot be sent again as is)
/// is refused with HS002.
async fn prepared_write_recorded_wrong_text_after_client_encoding_changed(pg: Pg) {
    use super::differential::{cat, run, send};
    use super::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "enc_stale").await;
    let (db2, _direct) = direct_twin(pg, "enc_stale").await;
    let seed = "INSERT INTO brieff (bfkey, bfso) VALUES (200, '中文 € Привет'), (201, 'x')";
    execute_in(pg, [&db, &db2], seed).await;
    let update = "UPDATE brieff SET bfso = $1 WHERE bfkey = $2";
    let run_upd = |value: &'static [u8], key: &'static [u8]| {
        send(cat(&[
            bind("", "upd", 0, &[Some(value), Some(key)], 0),
            execute("", 0),
            sync(),
        ]))
    };
    let steps = vec![
        send(cat(&[parse("upd", update, &[25, 23]), sync()])),
        send(query("SET client_encoding = 'LATIN1'")),
        run_upd(b"\xc3\xa9", b"201"),
        run_upd(b"caf\xe9", b"200"),
        send(query("SET client_encoding = 'UTF8'")),
        // One pipeline: the SET, then a write parsed before the server reports WIN1251.
        send(cat(&[
            parse("", "SET client_encoding = 'WIN1251'", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            parse("", update, &[25, 23]),
            bind(
                "",
                "",
                0,
                &[Some(b"\xcf\xf0\xe8\xe2\xe5\xf2"), Some(b"201")],
                0,
            ),
            execute("", 0),
            sync(),
        ])),
        send(query(
            "SELECT bfkey, encode(convert_to(bfso, 'UTF8'), 'hex') FROM brieff ORDER BY 1",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 3).await;
    validate("change-event", &events);
    assert_eq!(
        changes(&events, "bfso"),
        vec![
            ("u".into(), "x".into(), "Ã©".into()),
            ("u".into(), "中文 € Привет".into(), "café".into()),
            ("u".into(), "Ã©".into(), "Привет".into()),
        ],
        "{events:#?}"
    );
    // Not ASCII: refused at its Bind, with the reason; nothing runs up to the Sync.
    let lit = "UPDATE brieff SET bfso = 'ü' || $1 WHERE bfkey = $2";
    let steps = vec![
        send(cat(&[parse("lit", lit, &[25, 23]), sync()])),
        send(query("SET client_encoding = 'LATIN1'")),
        send(cat(&[
            bind("", "lit", 0, &[Some(b"1"), Some(b"201")], 0),
            execute("", 0),
            sync(),
        ])),
        send(query(
            "SELECT octet_length(bfso) FROM brieff WHERE bfkey = 201",
        )),
    ];
    let replies = run(proxy.addr, &db, 0, &steps).await;
    let refused = &replies[3];
    assert_eq!(
        sqlstate(&refused[0]).as_deref(),
        Some("HS002"),
        "{}",
        describe_frames(refused)
    );
    assert!(
        field(&refused[0], b'M').unwrap().contains("\"lit\""),
        "{}",
        describe_frames(refused)
    );
    assert_eq!(
        refused.len(),
        2,
        "the error, then ReadyForQuery: {}",
        describe_frames(refused)
    );
    let after = describe_frames(&replies[4]);
    assert!(after.contains("12"), "still Привет, 12 bytes: {after}");
    proxy.shutdown().await;
}

/// A database with table `bulk (id int PRIMARY KEY, v text)` holding `rows` rows of `value`
/// (SQL over `g`), and a capturing proxy configured by `tweak`: the large-transaction tests.
async fn bulk_setup(
    pg: Pg,
    label: &str,
    rows: u32,
    value: &str,
    tweak: impl FnOnce(&mut hindsight::config::Config),
) -> (
    String,
    String,
    hindsight::proxy::Running,
    tokio_postgres::Client,
) {
    let db = harness::fresh_db(pg, label).await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(&format!(
            "CREATE TABLE bulk (id int PRIMARY KEY, v text);
             INSERT INTO bulk SELECT g, {value} FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    let (prefix, proxy) = harness::capturing_proxy(pg, label, tweak).await;
    (db, prefix, proxy, direct)
}

/// Regression: a transaction that changed more rows than librdkafka's queue holds
/// (`queue.buffering.max.messages`, 100,000 by default) was rolled back with "QueueFull" and a
/// hint to retry when the broker is reachable — a bulk UPDATE of 300,000 rows could never
/// commit through hindsight. Publishing now waits for room as the broker acknowledges. Here
/// the queue holds 100 records and one autocommit UPDATE changes 3,000 rows.
async fn transaction_larger_than_the_producer_queue_failed_with_queue_full(pg: Pg) {
    let (db, prefix, proxy, _direct) = bulk_setup(pg, "queuefull", 3000, "'v' || g", |c| {
        c.kafka
            .librdkafka
            .insert("queue.buffering.max.messages".into(), "100".into());
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let n = c
        .execute("UPDATE bulk SET v = v || '!'", &[])
        .await
        .unwrap();
    assert_eq!(n, 3000);
    let events = read_topic(format!("{prefix}.public.bulk"), 3000).await;
    assert_eq!(events.len(), 3000);
    assert!(events.iter().all(|e| e["op"] == "u"));
    let mut ids: Vec<i64> = events
        .iter()
        .map(|e| e["after"]["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=3000).collect::<Vec<_>>());
    assert_eq!(
        events[0]["after"]["v"].as_str().unwrap(),
        format!("v{}!", events[0]["after"]["id"])
    );
    proxy.shutdown().await;
}

/// Regression: every row's event carries its statement's text, so a bulk loader's INSERT of
/// several megabytes (here 100 rows of 44 KB, 4.4 MB of SQL) made each event larger
/// than `kafka.max_message_bytes` (4 MiB): the transaction was refused with HS001, where it
/// runs directly. Events now carry at most `capture.max_statement_bytes` (64 KiB) of it, with a
/// note giving its length; the fingerprint identifies the whole statement.
async fn bulk_insert_larger_than_the_message_size_was_refused(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "bulk_sql").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let rows: Vec<String> = (1..=100)
        .map(|i| format!("({}, '{}')", 1000 + i, "é".repeat(22_000)))
        .collect();
    let sql = format!(
        "INSERT INTO brieff (bfkey, bfso) VALUES {}",
        rows.join(", ")
    );
    assert!(sql.len() > 4_400_000);
    let done = c.simple_query(&sql).await.unwrap();
    assert_eq!(tags(&done), vec![100]);
    let events = read_topic(format!("{prefix}.public.brieff"), 100).await;
    assert_eq!(events.len(), 100);
    let statement = events[0]["source"]["statement"].as_str().unwrap();
    assert!(statement.starts_with("INSERT INTO brieff (bfkey, bfso) VALUES (1001, 'éé"));
    let cut = (0..=65536)
        .rev()
        .find(|&i| sql.is_char_boundary(i))
        .unwrap();
    let note = format!(
        "[statement cut at {cut} of {} bytes (capture.max_statement_bytes)",
        sql.len()
    );
    assert!(
        statement.contains(&note),
        "{}",
        &statement[statement.len() - 200..]
    );
    assert!(statement.len() < 66_000);
    assert!(events.iter().all(|e| e["source"]["statement"] == statement));
    assert_eq!(
        events[99]["after"]["bfso"].as_str().unwrap(),
        "é".repeat(22_000)
    );
    validate("change-event", &events[..5]);
    proxy.shutdown().await;
}

/// A transaction whose captured rows exceed capture.max_transaction_bytes cannot commit: its
/// rows would be held in hindsight's memory until COMMIT, and one huge UPDATE would take the
/// proxy — every application's connection — down with it. It is rolled back with HS003,
/// in both protocols, autocommit or in a block; nothing is published; the database is
/// unchanged. A transaction under the limit commits.
async fn transaction_over_max_transaction_bytes_is_rolled_back_with_hs003(pg: Pg) {
    let (db, prefix, proxy, direct) = bulk_setup(pg, "txnlimit", 500, "repeat('v', 100)", |c| {
        // About 50 rows' worth of images (each UPDATE row sends two of ~110 bytes).
        c.capture.max_transaction_bytes = 12_000;
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let over = "UPDATE bulk SET v = v || '!'";
    let check = |e: tokio_postgres::Error, what: &str| {
        let e = e
            .as_db_error()
            .unwrap_or_else(|| panic!("{what}: {e:?}"))
            .clone();
        assert_eq!(e.code().code(), "HS003", "{what}: {e:?}");
        assert!(
            e.message()
                .contains("capture.max_transaction_bytes (12000 bytes"),
            "{what}: {e:?}"
        );
    };
    check(
        c.simple_query(over).await.unwrap_err(),
        "simple, autocommit",
    );
    check(
        c.execute(over, &[]).await.unwrap_err(),
        "extended, autocommit",
    );
    c.batch_execute("BEGIN; UPDATE bulk SET v = 'small' WHERE id = 1")
        .await
        .unwrap();
    c.simple_query(over).await.unwrap();
    check(
        c.simple_query("COMMIT").await.unwrap_err(),
        "in a block, at COMMIT",
    );
    let changed: i64 = direct
        .query_one("SELECT count(*) FROM bulk WHERE v <> repeat('v', 100)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, 0, "nothing committed");
    // Under the limit: captured as always, and the only event on the topic.
    c.simple_query("UPDATE bulk SET v = 'ok' WHERE id < 11")
        .await
        .unwrap();
    let events = read_topic(format!("{prefix}.public.bulk"), 10).await;
    assert_eq!(
        events.len(),
        10,
        "nothing published for the refused transactions"
    );
    assert!(events.iter().all(|e| e["after"]["v"] == "ok"));
    proxy.shutdown().await;
}

/// A role that may write to a table but not read it: capture reads the rows back, so its
/// writes fail through hindsight with the server's own "permission denied" (documented: roles
/// need SELECT on the tables they write; hindsight's log says what to grant). The error is the
/// one a role without the write privilege gets directly, untouched; nothing is published.
/// With SELECT granted the writes are captured.
async fn write_only_roles_need_select_on_the_tables_they_write(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "writeonly").await;
    let role = format!("hs_wo_{:08x}", rand::random::<u32>());
    let admin = harness::connect(pg.addr(), "postgres", &db).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT INSERT, UPDATE, DELETE ON brieff TO {role}"
        ))
        .await
        .unwrap();
    let direct = harness::connect(pg.addr(), &role, &db).await;
    let c = harness::connect(proxy.addr, &role, &db).await;
    let denied = "permission denied for table brieff";
    for sql in [
        "INSERT INTO brieff (bfkey) VALUES (100)",
        "UPDATE brieff SET bfso = 'x'",
        "DELETE FROM brieff",
    ] {
        for err in [
            c.simple_query(sql).await.unwrap_err(),
            c.execute(sql, &[]).await.unwrap_err(),
        ] {
            let e = err
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: {err:?}"));
            assert_eq!((e.code().code(), e.message()), ("42501", denied), "{sql}");
            assert_eq!(e.hint(), None, "{sql}: the server's error as it is");
        }
        // Directly, in a transaction rolled back, the same role may run it.
        direct.batch_execute("BEGIN").await.unwrap();
        direct.simple_query(sql).await.unwrap();
        direct.batch_execute("ROLLBACK").await.unwrap();
    }
    admin
        .batch_execute(&format!("GRANT SELECT ON brieff TO {role}"))
        .await
        .unwrap();
    c.simple_query("UPDATE brieff SET bfso = 'granted' WHERE bfkey = 2")
        .await
        .unwrap();
    let events = read_topic(format!("{prefix}.public.brieff"), 1).await;
    assert_eq!(events.len(), 1, "nothing published for the refused writes");
    assert_eq!(events[0]["after"]["bfso"], "granted");
    drop((c, direct));
    proxy.shutdown().await;
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON brieff FROM {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
}

on_both!(
    latin1_text_was_rewritten_lossily,
    latin1_write_failed_on_a_row_holding_characters_latin1_lacks,
    prepared_write_recorded_wrong_text_after_client_encoding_changed,
    transaction_larger_than_the_producer_queue_failed_with_queue_full,
    transaction_over_max_transaction_bytes_is_rolled_back_with_hs003,
    bulk_insert_larger_than_the_message_size_was_refused,
    write_only_roles_need_select_on_the_tables_they_write,
    copy_of_a_writes_returning_rows_was_refused,
    update_where_current_of_failed_with_a_syntax_error,
    upsert_before_image_was_stale_after_a_concurrent_update,
    upsert_on_a_partial_unique_index_failed_with_more_than_one_row,
    begin_inside_a_pipeline_warned_about_hindsights_own_transaction,
    messages_after_a_failed_deferred_execute_waited_for_replies_forever,
    row_limited_execute_left_changes_unrecorded,
    data_modifying_ctes_are_captured,
    large_toasted_row_was_refused_over_one_megabyte,
    transaction_control_mixed_with_writes_in_one_query_string_was_refused,
    end_record_said_committed_before_the_commit_failed,
    update_of_schema_qualified_table_was_refused_on_old_servers,
    table_cache_follows_ddl_through_the_proxy,
    extended_copy_and_truncate_are_captured,
    upsert_is_captured,
    writes_through_views_failed_with_missing_tableoid,
    copy_from_a_server_file_was_rolled_back_after_reporting_success,
    incident_update_is_captured_with_before_values,
    transactions_publish_only_committed_work,
    unpublishable_write_is_rolled_back,
    uncapturable_writes_are_refused_not_run,
    extended_protocol_writes_are_captured,
    failing_autocommit_write_returns_the_servers_error,
    extended_commit_keeps_the_clients_unnamed_portal,
    side_effects_are_marked_uncaptured,
    truncate_is_captured_within_its_row_limit,
    begin_and_write_in_one_extended_batch_stays_the_clients_transaction,
    ddl_and_opaque_statements_are_recorded,
    copy_from_stdin_is_captured,
    error_positions_point_into_the_clients_text,
    every_builtin_type_round_trips,
    primary_key_changes_keep_both_images,
    queries_calling_writing_functions_are_opaque
);
