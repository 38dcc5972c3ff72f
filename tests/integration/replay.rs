//! The replay test: a randomized concurrent workload runs through a capturing proxy (several
//! clients, both protocols, mixed statement kinds, savepoints, rollbacks, failed statements);
//! afterwards the committed events, applied in topic order to a copy of the starting data,
//! must reproduce the final tables exactly. Every event must belong to a transaction whose END
//! says committed; rolled-back work must leave no event (it would make the replay diverge, and
//! every before image must match the replayed row exactly or the replay fails).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use tokio_postgres::Client;

use crate::harness::{self, Pg};

const TABLES: [&str; 6] = ["acct", "ledger", "kv", "vault", "holding", "vmemo"];

/// Schema and starting data, applied to the database under test and to the replay copy.
const SCHEMA: &str = "
    CREATE TABLE acct (id int PRIMARY KEY, owner text NOT NULL, balance numeric(14,2) NOT NULL,
                       tags text[], seen timestamptz);
    CREATE TABLE ledger (id bigserial PRIMARY KEY, acct int, delta numeric(14,2), note text);
    CREATE TABLE kv (k text PRIMARY KEY, v jsonb NOT NULL);
    INSERT INTO acct SELECT g, 'owner' || g, g * 10, ARRAY['t' || (g % 3)], '2026-01-01'::timestamptz + g * interval '1 hour'
      FROM generate_series(1, 400) g;
    INSERT INTO ledger (acct, delta, note) SELECT g, g, 'seed' FROM generate_series(1, 50) g;
    INSERT INTO kv VALUES ('shared', '{\"n\": 0}');
    CREATE TABLE vault (id int PRIMARY KEY, label text);
    CREATE TABLE holding (id int PRIMARY KEY, vault int, qty int);
    CREATE TABLE vmemo (id int PRIMARY KEY, vault int);
    INSERT INTO vault SELECT g, 'v' || g FROM generate_series(1, 500) g;
    INSERT INTO holding SELECT g, g % 500 + 1, g FROM generate_series(1, 1000) g;
    INSERT INTO vmemo SELECT g, g % 500 + 1 FROM generate_series(1, 500) g;";

/// The foreign keys whose cascades the workload sets off, on the database under test only: the
/// replay applies each table's events on its own, as a consumer would.
const CASCADES: &str = "
    ALTER TABLE holding ADD FOREIGN KEY (vault) REFERENCES vault ON DELETE CASCADE ON UPDATE CASCADE;
    ALTER TABLE vmemo ADD FOREIGN KEY (vault) REFERENCES vault ON DELETE SET NULL ON UPDATE CASCADE;";

const CLIENTS: u64 = 4;
const TRANSACTIONS: usize = 40;

/// One client's rows: ids `base+1 ..= base+100` of acct (seeded) and fresh ids above 10,000.
struct Worker {
    n: u64,
    rng: StdRng,
    next_id: i32,
}

impl Worker {
    fn base(&self) -> i32 {
        (self.n as i32) * 100
    }
    fn own_id(&mut self) -> i32 {
        self.base() + self.rng.random_range(1..=100)
    }
}

/// One random statement of the client's own rows (or the shared counter, taken last).
async fn statement(c: &Client, w: &mut Worker) -> Result<(), tokio_postgres::Error> {
    let id = w.own_id();
    match w.rng.random_range(0..15) {
        0 => {
            let a = w.next_id;
            w.next_id += 2;
            c.simple_query(&format!(
                "INSERT INTO acct VALUES ({a}, 'new{a}', 1.50, ARRAY['x','y'], now()), ({}, 'new', 0, NULL, NULL)",
                a + 1
            ))
            .await
            .map(drop)
        }
        1 => {
            let delta = w.rng.random_range(-500..500) as f64 / 4.0;
            c.execute(
                "UPDATE acct SET balance = balance + $1::float8::numeric WHERE id = $2",
                &[&delta, &id],
            )
            .await
            .map(drop)
        }
        2 => c
            .simple_query(&format!(
                "UPDATE acct SET owner = owner || '!', tags = tags || 'u'::text WHERE id BETWEEN {id} AND {} AND id <= {}",
                id + 3,
                w.base() + 100
            ))
            .await
            .map(drop),
        3 => c
            .execute("DELETE FROM acct WHERE id = $1", &[&id])
            .await
            .map(drop),
        4 => c
            .simple_query(&format!(
                "INSERT INTO kv VALUES ('c{}-{}', '{{\"v\": {}}}') ON CONFLICT (k) DO UPDATE SET v = kv.v || excluded.v",
                w.n,
                id % 7,
                w.rng.random_range(0..1000)
            ))
            .await
            .map(drop),
        5 => c
            .execute(
                "INSERT INTO ledger (acct, delta, note) VALUES ($1, $2::float8::numeric, 'w') RETURNING id",
                &[&id, &(w.rng.random_range(0..100) as f64)],
            )
            .await
            .map(drop),
        6 => c
            .simple_query(&format!(
                "UPDATE acct a SET balance = a.balance + l.delta FROM ledger l \
                 WHERE l.acct = a.id AND a.id = {id} AND l.note = 'w'"
            ))
            .await
            .map(drop),
        7 => c
            .simple_query(&format!(
                "DELETE FROM ledger l USING acct a WHERE l.acct = a.id AND a.id = {id} AND l.note = 'w'"
            ))
            .await
            .map(drop),
        8 => {
            // Primary-key change into the client's own fresh range.
            let to = w.next_id;
            w.next_id += 1;
            c.execute("UPDATE acct SET id = $1 WHERE id = $2", &[&to, &id])
                .await
                .map(drop)
        }
        9 => {
            // COPY through the extended protocol.
            use futures_util::{pin_mut, SinkExt};
            let sink = c
                .copy_in::<_, bytes::Bytes>("COPY ledger (acct, delta, note) FROM STDIN")
                .await?;
            pin_mut!(sink);
            let data = format!("{id}\t{}.25\tcopied\n{id}\t-1\tcopied\n", w.rng.random_range(0..50));
            sink.send(bytes::Bytes::from(data)).await?;
            sink.finish().await.map(drop)
        }
        10 => {
            // MERGE over two of the client's own rows: delete, update or insert each (before
            // PostgreSQL 18: the pre-read / post-read capture).
            let other = w.own_id();
            let verb = w.rng.random_range(0..3);
            c.simple_query(&format!(
                "MERGE INTO acct a USING (VALUES ({id}, {verb}), ({other}, {verb} + 1)) AS s(id, verb) ON a.id = s.id \
                 WHEN MATCHED AND s.verb = 0 THEN DELETE \
                 WHEN MATCHED THEN UPDATE SET balance = a.balance + s.verb, owner = a.owner || 'm' \
                 WHEN NOT MATCHED AND s.verb < 3 THEN INSERT (id, owner, balance) VALUES (s.id, 'merged', s.verb)"
            ))
            .await
            .map(drop)
        }
        // A cascading DELETE (holdings deleted, memos set to NULL) and a key update that
        // cascades (ON UPDATE CASCADE), on the client's own vaults.
        11 => c
            .execute("DELETE FROM vault WHERE id = $1", &[&id])
            .await
            .map(drop),
        12 => {
            let to = w.next_id;
            w.next_id += 1;
            c.simple_query(&format!("UPDATE vault SET id = {to} WHERE id = {id}"))
                .await
                .map(drop)
        }
        13 => {
            // A MERGE whose deletes and key updates cascade (holdings, memos), on two of the
            // client's own vaults: one deleted, the other re-keyed (or both, by the verb).
            let other = w.own_id();
            let to = w.next_id;
            w.next_id += 1;
            let verb = w.rng.random_range(0..2);
            c.simple_query(&format!(
                "MERGE INTO vault v USING (VALUES ({id}, {verb}), ({other}, 1 - {verb})) AS s(id, verb) ON v.id = s.id \
                 WHEN MATCHED AND s.verb = 0 THEN DELETE \
                 WHEN MATCHED THEN UPDATE SET id = {to}"
            ))
            .await
            .map(drop)
        }
        _ => {
            // A statement that fails: nothing of it may be recorded.
            c.simple_query(&format!(
                "INSERT INTO acct VALUES ({}, 'dup', 0, NULL, NULL)",
                w.base() + 1
            ))
            .await
            .map(drop)
        }
    }
}

/// The client's workload: autocommit statements, transactions that commit, transactions that
/// roll back (whole or to a savepoint). Errors abort the transaction, as in any application.
async fn workload(c: Client, n: u64) -> (usize, usize) {
    let mut w = Worker {
        n,
        rng: StdRng::seed_from_u64(0x5eed + n),
        next_id: 10_000 + (n as i32) * 1_000,
    };
    let (mut committed, mut rolled_back) = (0, 0);
    for _ in 0..TRANSACTIONS {
        let shape = w.rng.random_range(0..10);
        if shape < 3 {
            let _ = statement(&c, &mut w).await;
            continue;
        }
        c.simple_query("BEGIN").await.unwrap();
        let mut ok = true;
        for i in 0..w.rng.random_range(1..5) {
            if i == 1 && shape == 3 {
                c.simple_query("SAVEPOINT s").await.unwrap();
                let _ = statement(&c, &mut w).await;
                c.simple_query("ROLLBACK TO SAVEPOINT s").await.unwrap();
                continue;
            }
            if statement(&c, &mut w).await.is_err() {
                ok = false;
                break;
            }
        }
        if ok && w.rng.random_range(0..3) == 0 {
            // The shared counter, last, so that the clients never wait on each other in a cycle:
            // by UPDATE, UPDATE … FROM, upsert or MERGE (whose before image must be the version
            // it waited for, not the one its snapshot saw).
            let bump = match w.rng.random_range(0..4) {
                0 => "UPDATE kv SET v = jsonb_build_object('n', (v->>'n')::int + 1) WHERE k = 'shared'",
                // Before 18 its before image is stored by its SET expression.
                3 => "UPDATE kv SET v = jsonb_build_object('n', (kv.v->>'n')::int + s.d) FROM (VALUES ('shared', 1)) AS s(k, d) WHERE kv.k = s.k",
                1 => "INSERT INTO kv VALUES ('shared', '{\"n\": 1}') ON CONFLICT (k) DO UPDATE SET v = jsonb_build_object('n', (kv.v->>'n')::int + 1)",
                _ => "MERGE INTO kv USING (VALUES ('shared')) AS s(k) ON kv.k = s.k WHEN MATCHED THEN UPDATE SET v = jsonb_build_object('n', (kv.v->>'n')::int + 1) WHEN NOT MATCHED THEN INSERT VALUES (s.k, '{\"n\": 1}')",
            };
            let _ = c.simple_query(bump).await;
        }
        if !ok || shape == 4 {
            c.simple_query("ROLLBACK").await.unwrap();
            rolled_back += 1;
        } else if c.simple_query("COMMIT").await.is_ok() {
            committed += 1;
        }
    }
    (committed, rolled_back)
}

/// Every record of `topic` up to its current end.
async fn read_all(topic: String) -> Vec<Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    use std::time::{Duration, Instant};
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", harness::kafka_brokers())
            .set("group.id", format!("hstest-{}", rand::random::<u32>()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let (_, high) = consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .unwrap_or((0, 0));
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (out.len() as i64) < high && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(serde_json::from_slice(m.payload().unwrap_or_default()).unwrap());
            }
        }
        assert_eq!(out.len() as i64, high, "read all of {topic}");
        out
    })
    .await
    .unwrap()
}

/// The table's rows as sorted JSON texts (a comparable fingerprint of its contents).
async fn contents(c: &Client, table: &str) -> Vec<String> {
    c.query(
        &format!("SELECT to_jsonb(t.*)::text FROM {table} t ORDER BY 1"),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Each transaction's commit status from the END records of `{prefix}.transaction`, once every
/// BEGIN has its END (they are published after the commit, asynchronously; waits up to 20 s).
pub(crate) async fn outcomes(prefix: &str) -> HashMap<String, String> {
    let tx_topic = format!("{prefix}.transaction");
    let mut outcome: HashMap<String, String> = HashMap::new();
    for _ in 0..100 {
        let records = read_all(tx_topic.clone()).await;
        let begins: HashSet<String> = records
            .iter()
            .filter(|r| r["status"] == "BEGIN")
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        outcome = records
            .iter()
            .filter(|r| r["status"] == "END")
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["commit_status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        if begins.iter().all(|b| outcome.contains_key(b)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    outcome
}

/// Apply every event of `{prefix}.public.{table}` in topic order to `replica` (which holds the
/// starting data) and require the result to equal `table` as written through hindsight
/// (`written`). Each event must belong to a committed transaction (`outcome`), and each before
/// image must match a replayed row exactly. Returns the events.
pub(crate) async fn replay_table(
    prefix: &str,
    table: &str,
    outcome: &HashMap<String, String>,
    replica: &Client,
    written: &Client,
) -> Vec<Value> {
    let events = read_all(format!("{prefix}.public.{table}")).await;
    for e in &events {
        let tx = e["transaction"]["id"].as_str().unwrap();
        assert_eq!(
            outcome.get(tx).map(String::as_str),
            Some("committed"),
            "an event of a transaction that did not commit: {e:#}"
        );
        if !e["before"].is_null() {
            let n = replica
                .execute(
                    &format!("DELETE FROM {table} WHERE ctid = (SELECT ctid FROM {table} t WHERE to_jsonb(t.*) = $1::text::jsonb LIMIT 1)"),
                    &[&e["before"].to_string()],
                )
                .await
                .unwrap();
            assert_eq!(
                n, 1,
                "the before image matches the replayed row exactly: {e:#}"
            );
        }
        if !e["after"].is_null() {
            replica
                .execute(
                    &format!("INSERT INTO {table} SELECT * FROM jsonb_populate_record(NULL::{table}, $1::text::jsonb)"),
                    &[&e["after"].to_string()],
                )
                .await
                .unwrap_or_else(|err| panic!("replaying {e:#}: {err:?}"));
        }
    }
    let (replayed, through) = (
        contents(replica, table).await,
        contents(written, table).await,
    );
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|r| !b.contains(r)).cloned().collect()
    };
    assert!(
        replayed == through,
        "{table}: the replay of {} events differs from the table written through hindsight\n\
         only in the replay: {:#?}\nonly in the table: {:#?}",
        events.len(),
        only(&replayed, &through),
        only(&through, &replayed)
    );
    events
}

async fn replay_reproduces_the_tables(pg: Pg) {
    let db = harness::fresh_db(pg, "replay").await;
    let copy = harness::fresh_db(pg, "replay_copy").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    let replica = harness::connect(pg.addr(), "postgres", &copy).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    direct.batch_execute(CASCADES).await.unwrap();
    replica.batch_execute(SCHEMA).await.unwrap();
    let prefix = harness::random_prefix("replay");
    let p = prefix.clone();
    let proxy = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = p;
    })
    .await;
    let mut runs = Vec::new();
    for n in 1..=CLIENTS {
        let c = harness::connect(proxy.addr, "postgres", &db).await;
        runs.push(tokio::spawn(workload(c, n)));
    }
    let (mut committed, mut rolled_back) = (0, 0);
    for r in runs {
        let (c, r) = r.await.unwrap();
        committed += c;
        rolled_back += r;
    }
    assert!(
        committed > 20 && rolled_back > 5,
        "{committed} / {rolled_back}"
    );

    let outcome = outcomes(&prefix).await;
    let mut applied = 0;
    let mut merged = HashMap::new();
    let mut cascaded = 0;
    for table in TABLES {
        let events = replay_table(&prefix, table, &outcome, &replica, &direct).await;
        cascaded += events
            .iter()
            .filter(|e| e["source"].get("cascade").is_some())
            .count();
        let by_merge = |e: &&Value| {
            e["source"]["statement"]
                .as_str()
                .is_some_and(|s| s.starts_with("MERGE"))
        };
        merged.insert(table, events.iter().filter(by_merge).count());
        applied += events.len();
    }
    eprintln!("replay: {committed} committed, {rolled_back} rolled back, {applied} events applied, by MERGE: {merged:?}, by cascades: {cascaded}");
    assert!(applied > 50, "only {applied} events");
    assert!(cascaded > 0, "cascades were recorded in the replay");
    assert!(
        merged.get("acct") > Some(&0) && merged.get("kv") > Some(&0),
        "MERGEs were recorded in the replay: {merged:?}"
    );
    proxy.shutdown().await;
}

on_both!(replay_reproduces_the_tables);
