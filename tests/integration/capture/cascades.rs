//! Foreign-key cascades: the rows an ON DELETE action changes get exact events of their own
//! (`source.cascade`), in both protocols, and replaying the events reproduces the tables.

use std::collections::BTreeMap;

use super::*;

/// `table`'s rows as JSON, by the value of its column `key` (as text).
async fn snapshot(c: &tokio_postgres::Client, table: &str, key: &str) -> BTreeMap<String, Value> {
    let q = format!("SELECT t.{key}::text, to_jsonb(t) FROM {table} t");
    c.query(q.as_str(), &[])
        .await
        .unwrap_or_else(|e| panic!("{q}: {e:?}"))
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, Value>(1)))
        .collect()
}

/// Apply change events to a table's rows (keyed by column `key`), in order.
fn replay(
    mut rows: BTreeMap<String, Value>,
    events: &[Value],
    key: &str,
) -> BTreeMap<String, Value> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for e in events {
        if let Some(before) = e["before"].as_object() {
            rows.remove(&text(&before[key]));
        }
        if e["after"].is_object() {
            rows.insert(text(&e["after"][key]), e["after"].clone());
        }
    }
    rows
}

/// The events of `table`'s topic, expecting `n`, with what the replay of them must give.
async fn assert_replayed(
    direct: &tokio_postgres::Client,
    prefix: &str,
    table: &str,
    key: &str,
    start: BTreeMap<String, Value>,
    n: usize,
) -> Vec<Value> {
    let events = read_topic(format!("{prefix}.public.{table}"), n).await;
    assert_eq!(events.len(), n, "{table}: {events:#?}");
    validate("change-event", &events);
    let now = snapshot(direct, table, key).await;
    assert_eq!(
        replay(start, &events, key),
        now,
        "{table}: replaying {events:#?}"
    );
    events
}

const FAMILY: &str = "
    CREATE TABLE representatives (rid int PRIMARY KEY, bfkey int REFERENCES brieff ON DELETE CASCADE, name text);
    CREATE TABLE rep_notes (nid int PRIMARY KEY, rid int REFERENCES representatives ON DELETE CASCADE, body text);
    CREATE TABLE memo (mid int PRIMARY KEY, bfkey int REFERENCES brieff ON DELETE SET NULL);
    CREATE TABLE flag (fid int PRIMARY KEY, bfkey int DEFAULT 1 REFERENCES brieff ON DELETE SET DEFAULT);
    INSERT INTO representatives SELECT g, g % 5 + 2, 'r' || g FROM generate_series(1, 20) g;
    INSERT INTO rep_notes SELECT g, g % 20 + 1, 'n' || g FROM generate_series(1, 40) g;
    INSERT INTO memo SELECT g, g % 5 + 2 FROM generate_series(1, 10) g;
    INSERT INTO flag SELECT g, g % 5 + 2 FROM generate_series(1, 10) g;";

/// A DELETE whose rows are referenced two levels deep (CASCADE, then CASCADE) and by SET NULL
/// and SET DEFAULT keys: every changed row has its own event naming the key and the parent,
/// in the same transaction, through a simple query and a prepared statement.
async fn cascades_have_exact_events_in_both_protocols(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "cascade").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct.batch_execute(FAMILY).await.unwrap();
    let start: Vec<_> = [
        ("representatives", "rid"),
        ("rep_notes", "nid"),
        ("memo", "mid"),
        ("flag", "fid"),
    ]
    .into_iter()
    .collect();
    let mut before = Vec::new();
    for (t, k) in &start {
        before.push(snapshot(&direct, t, k).await);
    }
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let m = c
        .simple_query("DELETE FROM brieff WHERE bfkey IN (2, 3)")
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![2]);
    let n = c
        .execute("DELETE FROM brieff b WHERE b.bfkey = $1", &[&4i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    // brieff 2, 3, 4: representatives with bfkey in (2, 3, 4): 4 each of 20.
    let reps = assert_replayed(
        &direct,
        &prefix,
        "representatives",
        "rid",
        before[0].clone(),
        12,
    )
    .await;
    assert!(reps.iter().all(|e| e["op"] == "d"), "{reps:#?}");
    let cascade = &reps[0]["source"]["cascade"];
    assert_eq!(
        cascade["constraint"], "representatives_bfkey_fkey",
        "{:#}",
        reps[0]
    );
    assert_eq!(cascade["parent_table"], "public.brieff");
    assert_eq!(cascade["parent_key"]["bfkey"], reps[0]["before"]["bfkey"]);
    // Each representative has 2 notes.
    let notes = assert_replayed(&direct, &prefix, "rep_notes", "nid", before[1].clone(), 24).await;
    assert_eq!(
        notes[0]["source"]["cascade"]["parent_table"],
        "public.representatives"
    );
    let memo = assert_replayed(&direct, &prefix, "memo", "mid", before[2].clone(), 6).await;
    assert!(
        memo.iter()
            .all(|e| e["op"] == "u" && e["after"]["bfkey"].is_null()),
        "{memo:#?}"
    );
    let flag = assert_replayed(&direct, &prefix, "flag", "fid", before[3].clone(), 6).await;
    assert!(
        flag.iter()
            .all(|e| e["op"] == "u" && e["after"]["bfkey"] == 1),
        "{flag:#?}"
    );
    // The parents' events no longer say something went uncaptured, and every event of a
    // statement shares its transaction.
    let parents = read_topic(format!("{prefix}.public.brieff"), 3).await;
    for p in &parents {
        assert!(p["source"].get("side_effects").is_none(), "{p:#}");
    }
    let first_tx = &parents[0]["transaction"]["id"];
    assert_eq!(reps[0]["transaction"]["id"], *first_tx);
    assert_eq!(
        reps.last().unwrap()["transaction"]["id"],
        parents[2]["transaction"]["id"]
    );
    proxy.shutdown().await;
}

/// A self-referencing table (a tree) and a composite key into a partitioned table: the whole
/// subtree and every line in every partition get events; the statement's own rows and the
/// cascade's in the same table are told apart.
async fn trees_composite_keys_and_partitions_cascade_exactly(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "cascade_tree").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE TABLE tree (id int PRIMARY KEY, parent int REFERENCES tree ON DELETE CASCADE);
             INSERT INTO tree VALUES (1, NULL), (2, 1), (3, 1), (4, 2), (5, 4), (6, NULL), (7, 6);
             CREATE TABLE orders (a int, b int, PRIMARY KEY (a, b));
             INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 4) g;
             CREATE TABLE lines (id int, a int, b int, FOREIGN KEY (a, b) REFERENCES orders ON DELETE CASCADE) PARTITION BY RANGE (id);
             CREATE TABLE lines_1 PARTITION OF lines FOR VALUES FROM (0) TO (100);
             CREATE TABLE lines_2 PARTITION OF lines FOR VALUES FROM (100) TO (200);
             INSERT INTO lines SELECT g, g % 4 + 1, (g % 4 + 1) * 10 FROM generate_series(1, 199, 7) g;",
        )
        .await
        .unwrap();
    let tree_start = snapshot(&direct, "tree", "id").await;
    let l1 = snapshot(&direct, "lines_1", "id").await;
    let l2 = snapshot(&direct, "lines_2", "id").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    // The tree: one subtree by a simple query, the other by a prepared statement.
    c.simple_query("DELETE FROM tree WHERE id = 1")
        .await
        .unwrap();
    c.execute("DELETE FROM tree WHERE id = $1", &[&6i32])
        .await
        .unwrap();
    let events = assert_replayed(&direct, &prefix, "tree", "id", tree_start, 7).await;
    let cascaded = events
        .iter()
        .filter(|e| e["source"].get("cascade").is_some())
        .count();
    assert_eq!(
        cascaded, 5,
        "the statements' own rows have no cascade: {events:#?}"
    );
    // The composite key into partitions: a prepared statement, then a simple query.
    c.execute(
        "DELETE FROM orders WHERE a = $1 AND b = $2",
        &[&2i32, &20i32],
    )
    .await
    .unwrap();
    c.simple_query("DELETE FROM orders WHERE (a, b) = (3, 30)")
        .await
        .unwrap();
    let n1 = l1.values().filter(|r| r["a"] == 2 || r["a"] == 3).count();
    let n2 = l2.values().filter(|r| r["a"] == 2 || r["a"] == 3).count();
    assert!(n1 > 0 && n2 > 0, "the data reaches both partitions");
    let e1 = assert_replayed(&direct, &prefix, "lines_1", "id", l1, n1).await;
    assert_replayed(&direct, &prefix, "lines_2", "id", l2, n2).await;
    assert_eq!(
        e1[0]["source"]["cascade"]["parent_key"],
        serde_json::json!({"a": 2, "b": 20})
    );
    assert!(e1
        .iter()
        .any(|e| e["source"]["cascade"]["parent_key"] == serde_json::json!({"a": 3, "b": 30})));
    proxy.shutdown().await;
}

/// A writer inserting children of the rows being deleted while the DELETE runs: whatever the
/// interleaving, the transaction either commits with an event for every row its cascade
/// removed, or fails (HS001) and changes nothing — never a removed row without its event.
async fn concurrent_child_writers_never_lose_an_event(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "cascade_race").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute("CREATE TABLE kid (id serial PRIMARY KEY, bfkey int REFERENCES brieff ON DELETE CASCADE);")
        .await
        .unwrap();
    let writer_db = db.clone();
    let addr = pg.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let writer = tokio::spawn(async move {
        let w = harness::connect(addr, "postgres", &writer_db).await;
        let mut k = 0i32;
        let mut inserted = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            k = k % 20 + 1;
            // Fails once the parent is gone; that is the point.
            if let Ok(r) = w
                .query_one("INSERT INTO kid (bfkey) VALUES ($1) RETURNING id", &[&k])
                .await
            {
                inserted.push(r.get::<_, i32>(0));
            }
        }
        inserted
    });
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let mut committed = 0;
    for k in 1..=20i32 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        match c
            .execute("DELETE FROM brieff WHERE bfkey = $1", &[&k])
            .await
        {
            Ok(_) => committed += 1,
            Err(e) => assert!(format!("{e:?}").contains("HS001"), "{e:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let inserted = writer.await.unwrap();
    assert!(
        committed > 0 && !inserted.is_empty(),
        "{committed} {}",
        inserted.len()
    );
    // Every kid that was inserted and is gone has exactly one delete event, and no kid still
    // there has one.
    let left: Vec<i32> = direct
        .query("SELECT id FROM kid", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let gone: Vec<i32> = inserted
        .iter()
        .copied()
        .filter(|i| !left.contains(i))
        .collect();
    let kids = read_topic(format!("{prefix}.public.kid"), gone.len()).await;
    let mut seen: Vec<i32> = kids
        .iter()
        .map(|e| {
            assert_eq!(e["op"], "d", "{e:#}");
            e["before"]["id"].as_i64().unwrap() as i32
        })
        .collect();
    seen.sort_unstable();
    let mut want = gone.clone();
    want.sort_unstable();
    assert_eq!(
        seen, want,
        "every removed kid has one event ({committed} deletes committed)"
    );
    proxy.shutdown().await;
}

/// ON UPDATE CASCADE of a key, and an ON UPDATE SET NULL on another: the referencing rows'
/// new values have their own events (simple query and prepared statement); an UPDATE that
/// does not touch a referenced column reads nothing and sets nothing off.
async fn key_updates_cascade_exactly(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "cascade_upd").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "ALTER TABLE brieff ADD COLUMN code text UNIQUE;
             UPDATE brieff SET code = 'c' || bfkey;
             CREATE TABLE follow (id int PRIMARY KEY, bfkey int REFERENCES brieff ON UPDATE CASCADE ON DELETE CASCADE);
             CREATE TABLE alias (id int PRIMARY KEY, code text REFERENCES brieff (code) ON UPDATE SET NULL);
             INSERT INTO follow SELECT g, g % 5 + 1 FROM generate_series(1, 20) g;
             INSERT INTO alias SELECT g, 'c' || (g % 5 + 1) FROM generate_series(1, 10) g;",
        )
        .await
        .unwrap();
    let follow = snapshot(&direct, "follow", "id").await;
    let alias = snapshot(&direct, "alias", "id").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("UPDATE brieff SET bfkey = bfkey + 100 WHERE bfkey IN (1, 2)")
        .await
        .unwrap();
    c.execute(
        "UPDATE brieff SET code = $1 WHERE bfkey = $2",
        &[&"new3", &3i32],
    )
    .await
    .unwrap();
    c.simple_query("UPDATE brieff SET bfso = 'x' WHERE bfkey = 4")
        .await
        .unwrap();
    // follow: 4 rows each for brieff 1 and 2; alias: 2 rows for code c3.
    let ev = assert_replayed(&direct, &prefix, "follow", "id", follow, 8).await;
    assert!(ev.iter().all(|e| e["op"] == "u"
        && e["after"]["bfkey"].as_i64().unwrap() == e["before"]["bfkey"].as_i64().unwrap() + 100));
    assert_eq!(
        ev[0]["source"]["cascade"]["constraint"],
        "follow_bfkey_fkey"
    );
    let ev = assert_replayed(&direct, &prefix, "alias", "id", alias, 2).await;
    assert!(ev.iter().all(|e| e["after"]["code"].is_null()), "{ev:#?}");
    assert_eq!(
        ev[0]["source"]["cascade"]["parent_key"],
        serde_json::json!({"code": "c3"})
    );
    let parents = read_topic(format!("{prefix}.public.brieff"), 4).await;
    for p in &parents {
        assert!(p["source"].get("side_effects").is_none(), "{p:#}");
    }
    proxy.shutdown().await;
}

/// The cascades of an UPDATE captured with the locking pre-read before PostgreSQL 18 (`SET`
/// a literal or a parameter, `WHERE` a subquery), and of a MERGE that deletes some rows and
/// re-keys others, through a simple query and a prepared statement.
async fn locking_updates_and_merges_cascade_exactly(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "cascade_merge").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE TABLE follow (id int PRIMARY KEY, bfkey int REFERENCES brieff ON UPDATE CASCADE ON DELETE CASCADE);
             INSERT INTO follow SELECT g, g % 10 + 1 FROM generate_series(1, 40) g;",
        )
        .await
        .unwrap();
    let follow = snapshot(&direct, "follow", "id").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("UPDATE brieff SET bfkey = 101 WHERE bfkey IN (SELECT 1)")
        .await
        .unwrap();
    c.execute(
        "UPDATE brieff SET bfkey = $1 WHERE bfkey IN (SELECT $2::int)",
        &[&102i32, &2i32],
    )
    .await
    .unwrap();
    let merge = "MERGE INTO brieff b USING (VALUES (3, 'd'), (4, 'u')) s(k, a) ON b.bfkey = s.k \
                 WHEN MATCHED AND s.a = 'd' THEN DELETE WHEN MATCHED THEN UPDATE SET bfkey = b.bfkey + 100";
    let m = c.simple_query(merge).await.unwrap();
    assert_eq!(tags(&m), vec![2]);
    let prepared = "MERGE INTO brieff b USING (SELECT $1::int AS k, $2::text AS a) s ON b.bfkey = s.k \
                    WHEN MATCHED AND s.a = 'd' THEN DELETE WHEN MATCHED THEN UPDATE SET bfkey = b.bfkey + 100";
    c.execute(prepared, &[&5i32, &"d"]).await.unwrap();
    c.execute(prepared, &[&6i32, &"u"]).await.unwrap();
    // 4 follow rows per brieff row: 1, 2, 4 and 6 re-keyed, 3 and 5 deleted.
    let ev = assert_replayed(&direct, &prefix, "follow", "id", follow, 24).await;
    let ops: Vec<(&str, i64)> = ev
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap(),
                e["before"]["bfkey"].as_i64().unwrap(),
            )
        })
        .collect();
    for (k, op) in [(1, "u"), (2, "u"), (3, "d"), (4, "u"), (5, "d"), (6, "u")] {
        assert_eq!(
            ops.iter().filter(|o| **o == (op, k)).count(),
            4,
            "{k}: {ev:#?}"
        );
    }
    assert!(ev
        .iter()
        .all(|e| e["source"]["cascade"]["constraint"] == "follow_bfkey_fkey"));
    let parents = read_topic(format!("{prefix}.public.brieff"), 6).await;
    for p in &parents {
        assert!(p["source"].get("side_effects").is_none(), "{p:#}");
    }
    proxy.shutdown().await;
}

/// A row two keys reach: deleted by one key's CASCADE while another's SET NULL updates it (in
/// the order PostgreSQL picks), and updated by one of two SET NULL keys when only one parent's
/// value changes. Each gets exactly one event and the transaction commits.
async fn rows_reached_by_two_keys_cascade_exactly(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "cascade_twice").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "ALTER TABLE brieff ADD COLUMN code text UNIQUE;
             UPDATE brieff SET code = 'c' || bfkey;
             CREATE TABLE pair (id int PRIMARY KEY,
                 a int REFERENCES brieff ON DELETE CASCADE,
                 b int REFERENCES brieff ON DELETE SET NULL);
             INSERT INTO pair VALUES (1, 7, 8), (2, 8, 7), (3, 9, 7), (4, 10, 10);
             CREATE TABLE two (id int PRIMARY KEY,
                 x int REFERENCES brieff ON UPDATE SET NULL,
                 y text REFERENCES brieff (code) ON UPDATE SET NULL);
             INSERT INTO two VALUES (1, 11, 'c11'), (2, 11, 'c12');",
        )
        .await
        .unwrap();
    let pair = snapshot(&direct, "pair", "id").await;
    let two = snapshot(&direct, "two", "id").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("DELETE FROM brieff WHERE bfkey IN (7, 8)")
        .await
        .unwrap();
    c.execute("DELETE FROM brieff WHERE bfkey = $1", &[&10i32])
        .await
        .unwrap();
    // pair 1 and 2 deleted (CASCADE of a), 3 set null (b = 7), 4 deleted.
    let ev = assert_replayed(&direct, &prefix, "pair", "id", pair, 4).await;
    let ops: Vec<&str> = ev.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "d").count(), 3, "{ev:#?}");
    c.simple_query("UPDATE brieff SET bfkey = 111, code = code WHERE bfkey = 11")
        .await
        .unwrap();
    let ev = assert_replayed(&direct, &prefix, "two", "id", two, 2).await;
    assert!(ev.iter().all(|e| e["after"]["x"].is_null()), "{ev:#?}");
    proxy.shutdown().await;
}

/// Data-modifying WITH statements: a DELETE in the WITH list and a DELETE after it whose rows
/// can be read before the statement runs get their cascades' events (simple query and
/// prepared statement); a DELETE whose rows come from another write of the statement keeps its
/// cascades marked uncaptured, naming the table.
async fn writable_ctes_cascade_exactly(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "cascade_cte").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE TABLE follow (id int PRIMARY KEY, bfkey int REFERENCES brieff ON DELETE CASCADE);
             INSERT INTO follow SELECT g, g % 10 + 1 FROM generate_series(1, 40) g;
             CREATE TABLE archive (bfkey int, bfso text);
             CREATE TABLE doomed (id int);
             INSERT INTO doomed VALUES (5);",
        )
        .await
        .unwrap();
    let follow = snapshot(&direct, "follow", "id").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let m = c
        .simple_query(
            "WITH d AS (DELETE FROM brieff WHERE bfkey IN (1, 2) RETURNING *) \
             INSERT INTO archive SELECT bfkey, bfso FROM d",
        )
        .await
        .unwrap();
    assert_eq!(tags(&m), vec![2]);
    c.execute(
        "WITH k AS (SELECT $1::int AS id), d AS (DELETE FROM brieff b USING k WHERE b.bfkey = k.id RETURNING b.bfkey) \
         INSERT INTO archive (bfkey) SELECT bfkey FROM d",
        &[&3i32],
    )
    .await
    .unwrap();
    c.simple_query("WITH i AS (INSERT INTO archive VALUES (4, 'x') RETURNING 1) DELETE FROM brieff WHERE bfkey = 4")
        .await
        .unwrap();
    // 4 follow rows for each of brieff 1 to 4.
    let ev = assert_replayed(&direct, &prefix, "follow", "id", follow.clone(), 16).await;
    assert!(
        ev.iter()
            .all(|e| e["op"] == "d" && e["source"]["cascade"]["constraint"] == "follow_bfkey_fkey"),
        "{ev:#?}"
    );
    let parents = read_topic(format!("{prefix}.public.brieff"), 4).await;
    for p in &parents {
        assert!(p["source"].get("side_effects").is_none(), "{p:#}");
    }
    // The rows of this DELETE come from the other one's: not read, marked.
    c.simple_query("WITH d AS (DELETE FROM doomed RETURNING id) DELETE FROM brieff WHERE bfkey IN (SELECT id FROM d)")
        .await
        .unwrap();
    let parents = read_topic(format!("{prefix}.public.brieff"), 5).await;
    let last = &parents[4];
    assert_eq!(last["before"]["bfkey"], 5, "{last:#}");
    assert_eq!(last["source"]["side_effects"], "uncaptured", "{last:#}");
    proxy.shutdown().await;
}

on_both!(
    key_updates_cascade_exactly,
    cascades_have_exact_events_in_both_protocols,
    trees_composite_keys_and_partitions_cascade_exactly,
    concurrent_child_writers_never_lose_an_event,
    locking_updates_and_merges_cascade_exactly,
    rows_reached_by_two_keys_cascade_exactly,
    writable_ctes_cascade_exactly
);
