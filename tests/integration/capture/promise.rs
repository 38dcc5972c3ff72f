//! The core promise: before/after images of committed work, nothing for rolled-back work, side
//! effects marked, redaction before publishing, the table cache following DDL.

use super::*;

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

/// Rows changed by triggers are not captured: the events say so, naming what may have changed.
/// Rows a cascading foreign key changes are (see `cascades`): the parent's event is not marked.
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
    assert!(
        ev[0]["source"].get("side_effects").is_none(),
        "the cascade to note is captured: {:#}",
        ev[0]
    );
    let note = read_topic(format!("{prefix}.public.note"), 1).await;
    assert_eq!(note[0]["op"], "d");
    assert_eq!(note[0]["source"]["cascade"]["parent_key"]["bfkey"], 5);
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

/// `capture_catalog_queries_total` on the proxy's /metrics.
async fn catalog_queries(proxy: &hindsight::proxy::Running) -> u64 {
    metric(proxy, "hindsight_capture_catalog_queries_total").await
}

/// One metric's value on the proxy's /metrics.
async fn metric(proxy: &hindsight::proxy::Running, name: &str) -> u64 {
    let url = format!("http://{}/metrics", proxy.admin_addr);
    let (_, metrics) = crate::robustness::http_get(&url).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// The transaction id a captured row brings is the server's own, in both protocols: after a
/// first write that changes no row, and after a write rolled back to a savepoint (the
/// top-level transaction keeps its id). And with the table cached, the COMMIT asks the server
/// nothing before publishing (the catalog query count stays put).
async fn the_transaction_id_comes_with_the_rows(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "txid").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    // Warm the table cache.
    c.simple_query("UPDATE brieff SET bfso = 'warm' WHERE bfkey = 9")
        .await
        .unwrap();
    let queries = catalog_queries(&proxy).await;
    let mut want = Vec::new();
    for round in 0..2 {
        c.batch_execute("BEGIN").await.unwrap();
        if round == 0 {
            c.simple_query("UPDATE brieff SET bfso = 'none' WHERE false")
                .await
                .unwrap();
            c.simple_query("SAVEPOINT s; UPDATE brieff SET bfso = 'gone' WHERE bfkey = 1; ROLLBACK TO SAVEPOINT s")
                .await
                .unwrap();
            c.simple_query("UPDATE brieff SET bfso = 'kept' WHERE bfkey = 2")
                .await
                .unwrap();
        } else {
            c.execute(
                "UPDATE brieff SET bfso = $1 WHERE bfkey = $2",
                &[&"none", &-1i32],
            )
            .await
            .unwrap();
            c.execute(
                "UPDATE brieff SET bfso = $1 WHERE bfkey = $2",
                &[&"kept", &3i32],
            )
            .await
            .unwrap();
        }
        let txid: String = c
            .query_one("SELECT pg_current_xact_id()::text", &[])
            .await
            .unwrap()
            .get(0);
        c.batch_execute("COMMIT").await.unwrap();
        want.push(txid.parse::<i64>().unwrap());
    }
    assert_eq!(
        catalog_queries(&proxy).await,
        queries,
        "a COMMIT asked the catalog although its table was cached and its rows brought the id"
    );
    // Each captured COMMIT's wait beyond the acknowledgement is measured (observed when the
    // server's answer reaches hindsight, which may be just after the client has it).
    let after_ack = "hindsight_capture_commit_after_ack_seconds_count";
    let mut measured = metric(&proxy, after_ack).await;
    for _ in 0..40 {
        if measured >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        measured = metric(&proxy, after_ack).await;
    }
    assert_eq!(measured, 3, "{after_ack}: the warm-up and the two COMMITs");
    let events = read_topic(format!("{prefix}.public.brieff"), 3).await;
    let got: Vec<i64> = events[1..]
        .iter()
        .map(|e| e["source"]["txId"].as_i64().unwrap())
        .collect();
    assert_eq!(got, want, "{events:#?}");
    let tx = read_topic(format!("{prefix}.transaction"), 6).await;
    let begins: Vec<i64> = tx
        .iter()
        .filter(|r| r["status"] == "BEGIN")
        .skip(1)
        .map(|r| r["txId"].as_i64().unwrap())
        .collect();
    assert_eq!(begins, want, "{tx:#?}");
    proxy.shutdown().await;
}

on_both!(
    table_cache_follows_ddl_through_the_proxy,
    incident_update_is_captured_with_before_values,
    transactions_publish_only_committed_work,
    side_effects_are_marked_uncaptured,
    the_transaction_id_comes_with_the_rows
);
