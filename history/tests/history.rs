//! The history end to end, against the real broker (tansu), PostgreSQL 15 and real Delta files:
//! workloads run through a capturing proxy, the archive writes the store, and every answer is
//! compared with one computed here, independently, from the records on the topics.
//!
//! The tests run one at a time (`SERIAL`): one of them deletes topics, which tansu 0.6 and
//! librdkafka do not take well while other clients are live.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hindsight::audit::kafka::{SinkConfig, TopicRouting};
use hindsight::restore::apply::ApplyOptions;
use hindsight::restore::command::{execute, Command as RestoreCommand};
use hindsight::restore::log::{LogOpener, LogSource};
use hindsight::restore::plan::ConflictPolicy;
use hindsight::restore::progress::Progress;
use hindsight::restore::run::Request;
use hindsight::restore::selection::Selection;
use hindsight_history::ask;
use hindsight_history::output::{batch_rows, Format};
use hindsight_history::query::Session;
use hindsight_history::questions::{Filter, Question, TransactionId};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio_postgres::{Client, NoTls};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pg_port() -> u16 {
    std::env::var("HSTEST_PG15_PORT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(54315)
}

fn brokers() -> String {
    std::env::var("HSTEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

fn conn_str(port: u16, db: &str, app: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname={db} password=password application_name={app}")
}

async fn connect(port: u16, db: &str, app: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(&conn_str(port, db, app), NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("connect to {port}/{db} as {app}: {e} (is scripts/pg.sh start 15 running?)")
        });
    tokio::spawn(conn);
    c
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const SEED: &str = "
CREATE TABLE brieff (bfkey int PRIMARY KEY, bfso text, bfcorlid text, amount numeric(12,2));
INSERT INTO brieff SELECT g, (ARRAY['A','B','C'])[1 + g % 3], 'c' || g, g * 1.5
  FROM generate_series(1, 40) g;
CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 10) g;";

/// A database seeded with SEED, a capturing proxy on a fresh prefix, a fresh store directory.
struct Setup {
    db: String,
    prefix: String,
    store: String,
    routing: TopicRouting,
    proxy: Option<hindsight::proxy::Running>,
}

async fn setup(label: &str, rules: Option<&str>) -> Setup {
    setup_routed(label, rules, TopicRouting::Table).await
}

/// [`setup`], the proxy publishing with `routing` (`kafka.topic_routing`).
async fn setup_routed(label: &str, rules: Option<&str>, routing: TopicRouting) -> Setup {
    let db = format!("t_hist_{label}_{:08x}", rand::random::<u32>());
    let admin = connect(pg_port(), "postgres", "setup").await;
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    connect(pg_port(), &db, "setup")
        .await
        .batch_execute(SEED)
        .await
        .unwrap();
    let prefix = format!("hstest_hist_{label}_{:08x}", rand::random::<u32>());
    let dir =
        std::env::temp_dir().join(format!("hs-history-{label}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = hindsight::config::Config::default();
    config.proxy.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.address = format!("127.0.0.1:{}", pg_port());
    config.proxy.drain_timeout = Duration::from_millis(500);
    config.kafka.brokers = vec![brokers()];
    config.kafka.topic_prefix = prefix.clone();
    config.kafka.topic_routing = routing;
    if let Some(text) = rules {
        let p = dir.join("rules.toml");
        std::fs::write(&p, text).unwrap();
        config.gates.rules = Some(p);
    }
    let proxy = hindsight::proxy::launch(config, hindsight::telemetry::Metrics::new())
        .await
        .expect("proxy starts");
    Setup {
        db,
        prefix,
        store: dir.join("store").display().to_string(),
        routing,
        proxy: Some(proxy),
    }
}

impl Setup {
    async fn through(&self, app: &str) -> Client {
        let port = self.proxy.as_ref().unwrap().addr.port();
        connect(port, &self.db, app).await
    }

    async fn direct(&self) -> Client {
        connect(pg_port(), &self.db, "test-direct").await
    }

    fn sink(&self) -> SinkConfig {
        SinkConfig {
            brokers: vec![brokers()],
            topic_prefix: self.prefix.clone(),
            topic_routing: self.routing,
            ..SinkConfig::default()
        }
    }

    async fn snapshot(&self, table: &str) {
        let o = hindsight_history::snapshot::Options {
            database: conn_str(pg_port(), &self.db, "snapshot"),
            table: table.into(),
            sink: self.sink(),
            redactor: Default::default(),
        };
        hindsight_history::snapshot::run(&o)
            .await
            .expect("snapshot");
    }

    /// Archive everything on the topics now, in process.
    async fn archive_once(&self) -> hindsight_history::archive::Totals {
        let o = hindsight_history::archive::Options {
            store: self.store.clone(),
            name: "test-archive".into(),
            brokers: vec![brokers()],
            topic_prefix: self.prefix.clone(),
            librdkafka: Vec::new(),
            batch_max_records: 10_000,
            batch_max_wait: Duration::from_millis(300),
            resolve_database: None,
            resolve_after: Duration::from_secs(60),
            topic_refresh: Duration::from_secs(1),
            until: hindsight_history::archive::Until::CaughtUp,
            admin_listen: None,
        };
        hindsight_history::archive::run(o, Default::default())
            .await
            .expect("archive --once")
    }

    /// The archiver binary in the background (killed at the end of the test if still up).
    fn spawn_archiver(&self) -> Archiver {
        let child = Command::new(env!("CARGO_BIN_EXE_hindsight-history"))
            .args([
                "archive",
                "--store",
                &self.store,
                "--kafka-brokers",
                &brokers(),
            ])
            .args(["--topic-prefix", &self.prefix])
            .args([
                "--resolve-database",
                &conn_str(pg_port(), &self.db, "resolver"),
            ])
            .env("HINDSIGHT_ARCHIVE__BATCH_MAX_WAIT", "100ms")
            .env("HINDSIGHT_ARCHIVE__BATCH_MAX_RECORDS", "40")
            .env("HINDSIGHT_ARCHIVE__RESOLVE_AFTER", "1s")
            .env("HINDSIGHT_ARCHIVE__TOPIC_REFRESH", "300ms")
            .env("HINDSIGHT_ARCHIVE__NAME", "crash-test")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start hindsight-history archive");
        Archiver(child)
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
struct Rec {
    topic: String,
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    value: Value,
}

/// Every record of every topic of `prefix`, to the end offsets as they are now.
fn read_topics(prefix: &str) -> Vec<Rec> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("hstest-{}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let meta = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut ends = HashMap::new();
    for t in meta
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(&format!("{prefix}.")))
    {
        for p in t.partitions() {
            let (lo, hi) = c
                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                .unwrap();
            if hi > lo {
                tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Offset(lo))
                    .unwrap();
                ends.insert((t.name().to_string(), p.id()), hi);
            }
        }
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() {
        assert!(
            Instant::now() < deadline,
            "topics not read to their ends: {ends:?}"
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let at = (m.topic().to_string(), m.partition());
        if let Some(end) = ends.get(&at).copied() {
            if m.offset() + 1 >= end {
                ends.remove(&at);
            }
            out.push(Rec {
                topic: at.0,
                partition: at.1,
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: serde_json::from_slice(m.payload().unwrap_or(b"null"))
                    .unwrap_or(Value::Null),
            });
        }
    }
    out
}

/// Transaction ids with an END committed on the topics.
fn committed_on_topics(recs: &[Rec], prefix: &str) -> BTreeSet<String> {
    recs.iter()
        .filter(|r| r.topic == format!("{prefix}.transaction"))
        .filter(|r| r.value["status"] == "END" && r.value["commit_status"] == "committed")
        .map(|r| r.value["id"].as_str().unwrap().to_string())
        .collect()
}

async fn rows(session: &Session, q: &str) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for b in session.sql(q).await.unwrap_or_else(|e| panic!("{q}: {e}")) {
        out.extend(batch_rows(&b).unwrap());
    }
    out
}

/// A question's answer as JSON lines.
async fn answer(session: &Session, q: &Question) -> Vec<Value> {
    let mut out = Vec::new();
    ask::ask(session, q, Format::Json, &mut out)
        .await
        .unwrap_or_else(|e| panic!("{q:?}: {e}"));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every row of `table` as canonical JSON text, sorted.
async fn dump(c: &Client, table: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(&format!("SELECT to_jsonb(t)::text FROM {table} t"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| canonical(&r.get::<_, String>(0)))
        .collect();
    v.sort();
    v
}

fn canonical(json_text: &str) -> String {
    serde_json::to_string(&serde_json::from_str::<Value>(json_text).unwrap()).unwrap()
}

async fn table_as_of(session: &Session, table: &str, at_ms: i64) -> Vec<String> {
    let mut out = Vec::new();
    let q = Question::TableAsOf {
        table: table.into(),
        at_ms,
    };
    ask::table_as_of(session, &q, &ask::AsOfTarget::Output, &mut out)
        .await
        .unwrap();
    let mut v: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(canonical)
        .collect();
    v.sort();
    v
}

/// One random transaction of the crash test's workload; returns whether it committed.
async fn random_transaction(c: &Client, rng: &mut rand::rngs::StdRng, app: &str) -> bool {
    let mut sql = String::from("BEGIN;");
    for _ in 0..rng.random_range(1..=4) {
        let k = rng.random_range(1..=40);
        let stmt = match rng.random_range(0..6) {
            0 => format!("UPDATE brieff SET bfso = NULL WHERE bfkey = {k};"),
            1 => format!("UPDATE brieff SET amount = amount + 1, bfcorlid = '{app}' WHERE bfkey = {k};"),
            2 => format!(
                "INSERT INTO notes VALUES ({}, '{app}') ON CONFLICT (id) DO UPDATE SET body = excluded.body || '!';",
                rng.random_range(1..=60)
            ),
            3 => format!("DELETE FROM notes WHERE id = {};", rng.random_range(1..=60)),
            4 => format!(
                "UPDATE brieff SET bfkey = bfkey + 1000 WHERE bfkey = {k} AND NOT EXISTS (SELECT 1 FROM brieff WHERE bfkey = {k} + 1000);"
            ),
            _ => format!("UPDATE brieff SET bfkey = bfkey - 1000 WHERE bfkey = {} AND NOT EXISTS (SELECT 1 FROM brieff WHERE bfkey = {k});", k + 1000),
        };
        sql.push_str(&stmt);
    }
    let commit = rng.random_bool(0.8);
    sql.push_str(if commit { "COMMIT;" } else { "ROLLBACK;" });
    match c.batch_execute(&sql).await {
        Ok(()) => commit,
        // Concurrent clients may deadlock or collide on a moved key: the server rolls back.
        Err(e) if e.code().is_some() => {
            c.batch_execute("ROLLBACK").await.unwrap();
            false
        }
        Err(e) => panic!("{sql}: {e:?}"),
    }
}

/// A BEGIN and one event for a real server transaction, with no END: hindsight "stopped"
/// between COMMIT and END. Returns the hindsight transaction id.
async fn in_doubt_transaction(s: &Setup, id: &str, note: i32, commit: bool) -> String {
    use hindsight::audit::event::*;
    let c = s.direct().await;
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(
        &format!("INSERT INTO notes VALUES ({note}, 'in doubt')"),
        &[],
    )
    .await
    .unwrap();
    let txid: i64 = c
        .query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
        .await
        .unwrap();
    let sink = hindsight::audit::kafka::KafkaSink::connect(s.sink())
        .await
        .unwrap();
    let ts = now_ms();
    let after: Row = json!({"id": note, "body": "in doubt"})
        .as_object()
        .unwrap()
        .clone();
    let ev = ChangeEvent {
        before: None,
        after: Some(after),
        source: Source {
            version: "test".into(),
            connector: "hindsight".into(),
            name: s.prefix.clone(),
            ts_ms: ts,
            snapshot: "false".into(),
            db: s.db.clone(),
            schema: "public".into(),
            table: "notes".into(),
            tx_id: Some(txid),
            user: "postgres".into(),
            application_name: "in-doubt".into(),
            client_addr: String::new(),
            statement: "INSERT INTO notes".into(),
            fingerprint: String::new(),
            tags: Default::default(),
            session_id: id.into(),
            statement_seq: 1,
            side_effects: None,
            side_effect_tables: vec![],
            blocked_by: None,
            dry_run_rule: None,
            redacted: false,
            cascade: None,
        },
        op: Op::Create,
        ts_ms: ts,
        transaction: TxPosition {
            id: id.into(),
            total_order: 1,
            data_collection_order: 1,
        },
    };
    let begin = TransactionRecord {
        status: TxStatus::Begin,
        id: id.into(),
        tx_id: Some(txid),
        event_count: 1,
        data_collections: vec![],
        ts_ms: ts,
        commit_status: None,
        resolution: None,
    };
    let key = ChangeKey {
        table: "public.notes".into(),
        key: json!({"id": note}).as_object().unwrap().clone(),
    };
    sink.publish(&[
        hindsight::audit::kafka::Record {
            topic: sink.transaction_topic(),
            key: id.as_bytes().to_vec(),
            payload: serde_json::to_vec(&begin).unwrap(),
        },
        hindsight::audit::kafka::Record {
            topic: sink.table_topic("public", "notes"),
            key: key.to_bytes(),
            payload: serde_json::to_vec(&ev).unwrap(),
        },
    ])
    .await
    .unwrap();
    id.to_string()
}

/// The archiver process, killed -9 when dropped (also when a test fails).
struct Archiver(Child);

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

/// The crash test: a random workload from three applications with the archiver killed -9
/// three times; afterwards the store holds each topic record exactly once, the in-doubt
/// transactions are resolved by txid_status(), `changes` is exactly the committed events, and
/// `table-as-of` equals the real tables at every checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_killed_9_has_no_gap_no_duplicate_and_as_of_matches_the_tables() {
    let _serial = SERIAL.lock().await;
    let s = setup("crash", None).await;
    s.snapshot("public.brieff").await;
    s.snapshot("public.notes").await;
    let direct = s.direct().await;
    let apps = ["web", "batch", "certification-v1"];
    let mut clients = Vec::new();
    for a in apps {
        clients.push(s.through(a).await);
    }
    let mut checkpoints: Vec<(i64, Vec<String>, Vec<String>)> = Vec::new();
    tokio::time::sleep(Duration::from_millis(5)).await;
    checkpoints.push((
        now_ms(),
        dump(&direct, "brieff").await,
        dump(&direct, "notes").await,
    ));
    let mut archiver = s.spawn_archiver();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let kills = [12, 25, 38];
    for round in 0..50 {
        let seeds: Vec<u64> = (0..3).map(|_| rng.random()).collect();
        let work = clients
            .iter()
            .zip(apps)
            .zip(seeds)
            .map(|((c, app), seed)| async move {
                let mut r = rand::rngs::StdRng::seed_from_u64(seed);
                random_transaction(c, &mut r, app).await
            });
        futures::future::join_all(work).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
        checkpoints.push((
            now_ms(),
            dump(&direct, "brieff").await,
            dump(&direct, "notes").await,
        ));
        tokio::time::sleep(Duration::from_millis(3)).await;
        if kills.contains(&round) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            drop(archiver);
            archiver = s.spawn_archiver();
        }
    }
    let committed_tx = in_doubt_transaction(&s, "manual:committed", 901, true).await;
    let aborted_tx = in_doubt_transaction(&s, "manual:aborted", 902, false).await;
    let final_state = (
        now_ms(),
        dump(&direct, "brieff").await,
        dump(&direct, "notes").await,
    );

    // Wait until the archive holds every record and has resolved both in-doubt transactions.
    let recs = read_topics(&s.prefix);
    let tx_topic = format!("{}.transaction", s.prefix);
    let want_events = recs.iter().filter(|r| r.topic != tx_topic).count();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(session) = Session::open(&s.store).await {
            let n = rows(&session, "SELECT (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM transactions WHERE status = 'RESOLVED') AS r").await;
            if n[0]["e"].as_i64() == Some(want_events as i64) && n[0]["r"].as_i64() == Some(2) {
                break;
            }
        }
        if Instant::now() > deadline {
            // The comparisons below say what is wrong (gaps, duplicates, unresolved).
            eprintln!("the archive did not reach the topics' counts and resolve within 90 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(archiver);
    let session = Session::open(&s.store).await.unwrap();

    // Exactly the topics' records, each once.
    let on_topics: BTreeSet<(String, i64, i64)> = recs
        .iter()
        .map(|r| (r.topic.clone(), r.partition as i64, r.offset))
        .collect();
    let mut archived: Vec<(String, i64, i64)> = Vec::new();
    for q in [
        "SELECT kafka_topic, kafka_partition, kafka_offset FROM events",
        "SELECT kafka_topic, kafka_partition, kafka_offset FROM transactions WHERE kafka_topic IS NOT NULL",
    ] {
        for r in rows(&session, q).await {
            archived.push((
                r["kafka_topic"].as_str().unwrap().to_string(),
                r["kafka_partition"].as_i64().unwrap(),
                r["kafka_offset"].as_i64().unwrap(),
            ));
        }
    }
    let unique: BTreeSet<_> = archived.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        archived.len(),
        "duplicates in the archive: {} rows, {} distinct",
        archived.len(),
        unique.len()
    );
    let missing: Vec<_> = on_topics.difference(&unique).take(5).collect();
    let extra: Vec<_> = unique.difference(&on_topics).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "gaps {missing:?}, extras {extra:?} ({} on topics, {} archived)",
        on_topics.len(),
        unique.len()
    );

    // The in-doubt transactions, decided by the database.
    let resolved = rows(&session, "SELECT transaction_id, outcome, resolution FROM transaction_outcomes WHERE transaction_id LIKE 'manual:%' ORDER BY 1").await;
    assert_eq!(resolved.len(), 2, "{resolved:?}");
    assert_eq!(resolved[0]["transaction_id"], json!(aborted_tx));
    assert_eq!(resolved[0]["outcome"], "aborted", "{resolved:?}");
    assert_eq!(resolved[1]["transaction_id"], json!(committed_tx));
    assert_eq!(resolved[1]["outcome"], "committed", "{resolved:?}");
    assert!(answer(&session, &Question::InDoubt).await.is_empty());

    // `changes` is exactly the committed row events.
    let mut committed = committed_on_topics(&recs, &s.prefix);
    committed.insert(committed_tx.clone());
    let want: BTreeSet<(String, i64)> = recs
        .iter()
        .filter(|r| {
            r.topic != tx_topic
                && r.value["op"]
                    .as_str()
                    .is_some_and(|o| "cudtr".contains(o) && o.len() == 1)
        })
        .filter(|r| committed.contains(r.value["transaction"]["id"].as_str().unwrap_or("")))
        .map(|r| (r.topic.clone(), r.offset))
        .collect();
    let got: BTreeSet<(String, i64)> =
        rows(&session, "SELECT kafka_topic, kafka_offset FROM changes")
            .await
            .iter()
            .map(|r| {
                (
                    r["kafka_topic"].as_str().unwrap().to_string(),
                    r["kafka_offset"].as_i64().unwrap(),
                )
            })
            .collect();
    assert_eq!(
        got, want,
        "changes differ from the committed events on the topics"
    );
    assert!(
        want.len() > 150,
        "the workload made too few changes to mean anything: {}",
        want.len()
    );

    // As of every checkpoint, the tables as they really were.
    for (i, (at, brieff, notes)) in checkpoints.iter().chain([&final_state]).enumerate() {
        assert_eq!(
            &table_as_of(&session, "public.brieff", *at).await,
            brieff,
            "brieff as of checkpoint {i} ({at})"
        );
        assert_eq!(
            &table_as_of(&session, "public.notes", *at).await,
            notes,
            "notes as of checkpoint {i} ({at})"
        );
    }

    // An outside reader (PyPI deltalake + pyarrow) sees the same rows.
    outside_reader_agrees(&s.store, &session).await;
    a_damaged_file_is_named(&s.store).await;
}

/// A store file cut short: the question fails with an error naming the file, not a wrong answer.
async fn a_damaged_file_is_named(store: &str) {
    let copy = format!("{store}-damaged");
    let status = Command::new("cp")
        .args(["-r", store, &copy])
        .status()
        .unwrap();
    assert!(status.success());
    let file = walk(&PathBuf::from(&copy).join("events"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a parquet file");
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(100).unwrap();
    let session = Session::open(&copy).await.unwrap();
    let err = ask::ask(
        &session,
        &Question::Sql("SELECT count(*), max(after_json) FROM events".into()),
        Format::Text,
        &mut Vec::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        err.contains("cannot be read") && err.contains(&name),
        "{err}"
    );
}

/// The body of an HTTP GET (HTTP/1.0, no client library needed).
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn python() -> PathBuf {
    std::env::var("HSTEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/hindsight/pyenv/bin/python")
        })
}

async fn outside_reader_agrees(store: &str, session: &Session) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/history_reader.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(store)
        .output()
        .unwrap_or_else(|e| panic!("running {} (scripts/install-deps.sh installs deltalake into ~/.cache/hindsight/pyenv): {e}", python().display()));
    assert!(
        out.status.success(),
        "history_reader.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (table, cols) in [
        ("events", "kafka_topic, kafka_partition, kafka_offset, op, table_name, key_json, before_json, after_json, transaction_id, application_name"),
        ("transactions", "id, status, commit_status, tx_id, kafka_offset"),
    ] {
        let names: Vec<&str> = cols.split(", ").collect();
        let mut lines: Vec<String> = rows(session, &format!("SELECT {cols} FROM {table}"))
            .await
            .iter()
            .map(|r| {
                names
                    .iter()
                    .map(|c| match &r[*c] {
                        Value::Null => String::new(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect();
        lines.sort();
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for l in &lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        let ours = format!("{:x}", h.finalize());
        assert_eq!(theirs[table]["rows"], json!(lines.len()), "{table}: row count from PyPI deltalake");
        assert_eq!(theirs[table]["digest"], json!(ours), "{table}: rows read by PyPI deltalake differ");
    }
    assert_eq!(theirs["events"]["partitions"], json!(["table_name", "day"]));
}

const RULES: &str = r#"
[[rule]]
name = "notes-are-kept"
tables = ["public.notes"]
operations = ["delete"]
applications = ["leaky"]
action = "deny"
"#;

/// Changes from topics, as (transaction id, key JSON, op, before, after) of committed events.
fn committed_changes(recs: &[Rec], prefix: &str, table_topic: &str) -> Vec<(String, Value, Value)> {
    let committed = committed_on_topics(recs, prefix);
    recs.iter()
        .filter(|r| r.topic == table_topic)
        .filter(|r| committed.contains(r.value["transaction"]["id"].as_str().unwrap_or("")))
        .filter(|r| {
            r.value["op"]
                .as_str()
                .is_some_and(|o| ["c", "u", "d", "t"].contains(&o))
        })
        .map(|r| {
            let key: Value = serde_json::from_slice(&r.key).unwrap();
            (
                r.value["transaction"]["id"].as_str().unwrap().to_string(),
                key["key"].clone(),
                r.value.clone(),
            )
        })
        .collect()
}

/// The incident, asked about: every question of `hindsight history` compared with an answer
/// computed from the topic records; then restore from the archive, after the topics were
/// deleted, gives the plan restore from the topics gave, and applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn questions_and_restore_from_history_match_the_topics() {
    let _serial = SERIAL.lock().await;
    let mut s = setup("questions", Some(RULES)).await;
    s.snapshot("public.brieff").await;
    let web = s.through("web").await;
    let cert = s.through("certification-v1").await;
    let leaky = s.through("leaky").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before_incident = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    web.batch_execute("UPDATE brieff SET bfcorlid = 'moved' WHERE bfkey IN (2, 3)")
        .await
        .unwrap();
    for chunk in [(1, 6), (7, 12), (13, 18)] {
        cert.batch_execute(&format!(
            "BEGIN; UPDATE brieff SET bfso = NULL WHERE bfkey BETWEEN {} AND {}; COMMIT /*controller='cert',action='save'*/",
            chunk.0, chunk.1
        ))
        .await
        .unwrap();
    }
    cert.batch_execute("BEGIN; UPDATE brieff SET bfso = 'X' WHERE bfkey = 30; ROLLBACK")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let after_incident = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    web.batch_execute(
        "UPDATE brieff SET amount = 99 WHERE bfkey IN (4, 5); DELETE FROM brieff WHERE bfkey = 40",
    )
    .await
    .unwrap();
    let refused = leaky
        .batch_execute("DELETE FROM notes WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(
        refused.code().map(|c| c.code()),
        Some("HS010"),
        "{refused:?}"
    );
    let totals = s.archive_once().await;
    assert!(totals.events > 0 && totals.unreadable == 0, "{totals:?}");

    let recs = read_topics(&s.prefix);
    let brieff_topic = format!("{}.public.brieff", s.prefix);
    let changes = committed_changes(&recs, &s.prefix, &brieff_topic);
    let session = Session::open(&s.store).await.unwrap();

    // who changed bfkey 5, and who changed its bfso.
    let key5 = json!({"bfkey": 5}).as_object().unwrap().clone();
    let got = answer(
        &session,
        &Question::WhoChanged {
            table: "public.brieff".into(),
            key: key5.clone(),
            column: None,
        },
    )
    .await;
    let want: Vec<(String, Value)> = changes
        .iter()
        .filter(|c| c.1 == json!({"bfkey": 5}))
        .map(|c| (c.0.clone(), c.2["source"]["application_name"].clone()))
        .collect();
    assert_eq!(
        got.iter()
            .map(|r| (
                r["transaction_id"].as_str().unwrap().to_string(),
                r["application_name"].clone()
            ))
            .collect::<Vec<_>>(),
        want
    );
    let bfso = answer(
        &session,
        &Question::WhoChanged {
            table: "public.brieff".into(),
            key: key5.clone(),
            column: Some("bfso".into()),
        },
    )
    .await;
    assert_eq!(bfso.len(), 1, "{bfso:?}");
    assert_eq!(bfso[0]["application_name"], "certification-v1");
    assert_eq!(
        bfso[0]["changes"],
        json!({"bfso": {"old": "C", "new": null}}),
        "{bfso:?}"
    );
    assert_eq!(bfso[0]["tags"]["controller"], "cert");

    // Everything certification-v1 changed in the window; by tag; by fingerprint.
    let cert_changes: Vec<&(String, Value, Value)> = changes
        .iter()
        .filter(|c| c.2["source"]["application_name"] == "certification-v1")
        .collect();
    assert_eq!(cert_changes.len(), 18);
    let window = Filter {
        applications: vec!["certification-v1".into()],
        since_ms: Some(before_incident),
        until_ms: Some(after_incident),
        ..Filter::default()
    };
    let got: BTreeSet<String> = answer(&session, &Question::Changes(window.clone()))
        .await
        .iter()
        .map(|r| r["key"].to_string())
        .collect();
    let want: BTreeSet<String> = cert_changes.iter().map(|c| c.1.to_string()).collect();
    assert_eq!(got, want);
    let by_tag = answer(
        &session,
        &Question::Changes(Filter {
            tags: vec![("controller".into(), "cert".into())],
            ..Filter::default()
        }),
    )
    .await;
    assert_eq!(by_tag.len(), 18);
    let fp = cert_changes[0].2["source"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let by_fp = answer(
        &session,
        &Question::Changes(Filter {
            fingerprints: vec![fp.clone()],
            ..Filter::default()
        }),
    )
    .await;
    assert_eq!(
        by_fp.len(),
        changes
            .iter()
            .filter(|c| c.2["source"]["fingerprint"] == json!(fp))
            .count()
    );

    // The blast radius, in one command.
    let summary = answer(&session, &Question::Summary(window)).await;
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert_eq!(summary[0]["table_name"], "public.brieff");
    assert_eq!(summary[0]["rows"], 18);
    assert_eq!(summary[0]["changes"], 18);
    assert_eq!(summary[0]["transactions"], 3);
    assert_eq!(summary[0]["columns"], "bfso (18)");
    assert_eq!(summary[0]["fingerprints"], json!(fp));

    // The refused write, with what it would have done.
    let blocked = answer(&session, &Question::Blocked(Filter::default())).await;
    let want_blocked: Vec<&Rec> = recs.iter().filter(|r| r.value["op"] == "blocked").collect();
    assert_eq!(blocked.len(), want_blocked.len(), "{blocked:?}");
    assert!(!blocked.is_empty());
    assert_eq!(blocked[0]["blocked_by"], "notes-are-kept");
    assert_eq!(blocked[0]["before"], want_blocked[0].value["before"]);

    // One transaction; the SQL escape hatch; nothing in doubt.
    let tx = &cert_changes[0].0;
    let one = answer(
        &session,
        &Question::Transaction(TransactionId::Id(tx.clone())),
    )
    .await;
    assert_eq!(
        one.len(),
        recs.iter()
            .filter(|r| r.value["transaction"]["id"] == json!(tx))
            .count()
    );
    assert!(one.iter().all(|r| r["outcome"] == "committed"));
    let n = answer(
        &session,
        &Question::Sql("SELECT count(*) AS n FROM changes WHERE op <> 'r'".into()),
    )
    .await;
    assert_eq!(
        n[0]["n"],
        json!(committed_changes(&recs, &s.prefix, &brieff_topic).len())
    );
    assert!(answer(&session, &Question::InDoubt).await.is_empty());
    let mut refused_sql = Vec::new();
    let e = ask::ask(
        &session,
        &Question::Sql("DELETE FROM events".into()),
        Format::Text,
        &mut refused_sql,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().to_lowercase().contains("not supported") || e.to_string().contains("DML"),
        "{e}"
    );

    // Rows as of a time: before the incident (from the snapshot), after it, and deleted.
    let asof = |at: i64, key: &Map<String, Value>| Question::RowAsOf {
        table: "public.brieff".into(),
        key: key.clone(),
        at_ms: at,
    };
    let then = answer(&session, &asof(before_incident, &key5)).await;
    assert_eq!(then[0]["row"]["bfso"], "C", "{then:?}");
    let later = answer(&session, &asof(after_incident, &key5)).await;
    assert_eq!(later[0]["row"]["bfso"], Value::Null, "{later:?}");
    assert_eq!(later[0]["present"], true);
    let key40 = json!({"bfkey": 40}).as_object().unwrap().clone();
    assert_eq!(
        answer(&session, &asof(after_incident, &key40)).await[0]["present"],
        true
    );
    assert_eq!(
        answer(&session, &asof(now_ms(), &key40)).await[0]["present"],
        false
    );

    restore_from_history_equals_restore_from_topics(&mut s).await;
}

/// A restore of what `app` wrote, reading `open_log`, planned into `plan_out` (and applied).
fn restore_command(
    (prefix, db): (&str, &str),
    app: &str,
    open_log: LogOpener,
    plan_out: PathBuf,
    apply: bool,
) -> RestoreCommand {
    RestoreCommand {
        log: LogSource {
            brokers: vec![brokers()],
            topic_prefix: prefix.to_string(),
            librdkafka: vec![],
            tables: vec![],
            timeout: Duration::from_secs(20),
        },
        open_log,
        target: conn_str(pg_port(), db, "restore"),
        request: Request {
            selection: Selection {
                applications: vec![app.into()],
                ..Selection::default()
            },
            as_of: None,
            policy: ConflictPolicy::Column,
        },
        apply,
        options: ApplyOptions {
            tag: "test".into(),
            ..ApplyOptions::default()
        },
        sql_out: None,
        plan_out: Some(plan_out),
        apply_plan: None,
    }
}

/// The history store at `store` as restore's log.
fn from_history(store: &str) -> LogOpener {
    let store = store.to_string();
    LogOpener::new(move |src| {
        Ok(Box::new(hindsight_history::restore_log::HistoryLog::open(
            &store, src,
        )?))
    })
}

async fn restore_from_history_equals_restore_from_topics(s: &mut Setup) {
    let dir = PathBuf::from(&s.store).parent().unwrap().to_path_buf();
    let (prefix, db) = (s.prefix.clone(), s.db.clone());
    let command = |open_log: LogOpener, plan_out: PathBuf, apply: bool| {
        restore_command(
            (&prefix, &db),
            "certification-v1",
            open_log,
            plan_out,
            apply,
        )
    };
    let store = s.store.clone();
    let history = || from_history(&store);
    let mut report_kafka = Vec::new();
    execute(
        &command(LogOpener::kafka(), dir.join("plan-kafka.json"), false),
        &mut report_kafka,
        &Progress::hidden(),
    )
    .await
    .expect("plan from the topics");
    // The topics go away (retention ran out): only the archive is left.
    if let Some(p) = s.proxy.take() {
        p.shutdown().await;
    }
    delete_topics(&s.prefix).await;
    let mut report_history = Vec::new();
    execute(
        &command(history(), dir.join("plan-history.json"), false),
        &mut report_history,
        &Progress::hidden(),
    )
    .await
    .expect("plan from the history");
    let (a, b) = (
        std::fs::read_to_string(dir.join("plan-kafka.json")).unwrap(),
        std::fs::read_to_string(dir.join("plan-history.json")).unwrap(),
    );
    assert!(a.contains("bfso"), "{a}");
    assert_eq!(
        a, b,
        "the plan from the history differs from the plan from the topics"
    );
    assert_eq!(
        String::from_utf8_lossy(&report_kafka),
        String::from_utf8_lossy(&report_history)
    );
    // Apply from the history, with the broker gone from the log source entirely.
    let mut apply = command(history(), dir.join("plan-applied.json"), true);
    apply.log.brokers = vec!["127.0.0.1:1".into()];
    execute(&apply, &mut Vec::new(), &Progress::hidden())
        .await
        .expect("apply from the history");
    let c = s.direct().await;
    let nulls = c
        .query_one("SELECT count(*) FROM brieff WHERE bfso IS NULL", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(nulls, 0, "bfso restored on every row");
    let kept = c
        .query_one("SELECT amount::text FROM brieff WHERE bfkey = 5", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(kept, "99.00", "another application's later edit is kept");
}

async fn delete_topics(prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let topics: Vec<String> = {
        let meta = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .unwrap();
        meta.topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| n.starts_with(&format!("{prefix}.")))
            .collect()
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin
        .delete_topics(&names, &AdminOptions::new())
        .await
        .unwrap();
    let remaining = read_topics(prefix);
    assert!(
        remaining.is_empty(),
        "topics still hold {} records",
        remaining.len()
    );
}

/// Bad input to the CLI: a store that is not there, and a config key that does not exist.
#[test]
fn cli_errors_name_the_problem() {
    let bin = env!("CARGO_BIN_EXE_hindsight-history");
    let out = Command::new(bin)
        .args(["history", "--store", "/nonexistent/hs-store", "in-doubt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no history there yet") && err.contains("/nonexistent/hs-store"),
        "{err}"
    );
    let cfg = std::env::temp_dir().join(format!("hs-bad-{:08x}.toml", rand::random::<u32>()));
    std::fs::write(&cfg, "[archive]\nstor = \"x\"\n").unwrap();
    let out = Command::new(bin)
        .args(["history", "--config", cfg.to_str().unwrap(), "in-doubt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stor") && err.contains("line 2"), "{err}");
    let out = Command::new(bin)
        .args(["history", "--store", "/tmp", "sql", "SELEC nonsense"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

/// Regression: an END must not be archived before its transaction's events. A table's first
/// write creates its topic after the archive started; the archive looks for new topics only
/// every hour here, so only the END's own list of tables can make it read that topic first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_end_is_never_archived_before_its_events_on_a_new_topic() {
    let _serial = SERIAL.lock().await;
    let s = setup("endfirst", None).await;
    let app = s.through("web").await;
    app.batch_execute("UPDATE notes SET body = 'first' WHERE id = 1")
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let admin: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let o = hindsight_history::archive::Options {
        store: s.store.clone(),
        name: "endfirst".into(),
        brokers: vec![brokers()],
        topic_prefix: s.prefix.clone(),
        librdkafka: Vec::new(),
        batch_max_records: 1_000,
        batch_max_wait: Duration::from_millis(100),
        resolve_database: None,
        resolve_after: Duration::from_secs(60),
        topic_refresh: Duration::from_secs(3600),
        until: hindsight_history::archive::Until::Stopped,
        admin_listen: Some(admin),
    };
    let running = tokio::spawn(hindsight_history::archive::run(o, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.batch_execute("CREATE TABLE fresh (id int PRIMARY KEY, v text); INSERT INTO fresh SELECT g, 'v' FROM generate_series(1, 25) g")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (events, expected) = loop {
        if let Ok(session) = Session::open(&s.store).await {
            let r = rows(&session, "SELECT o.event_count AS want, (SELECT count(*) FROM events e WHERE e.transaction_id = o.transaction_id) AS got \
                 FROM transaction_outcomes o WHERE o.outcome = 'committed' AND o.transaction_id IN \
                 (SELECT id FROM transactions WHERE status = 'END' AND strpos(data_collections_json, 'public.fresh') > 0)").await;
            if let Some(r) = r.first() {
                break (r["got"].as_i64().unwrap(), r["want"].as_i64().unwrap());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the INSERT's transaction was never archived as committed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let metrics = http_get(admin, "/metrics");
    let archived: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hindsight_archive_events_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no events_total in /metrics:\n{metrics}"));
    assert!(archived >= 26, "{metrics}");
    assert!(http_get(admin, "/healthz").ends_with("ok"));
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        events, expected,
        "the END was visible before the events of the new table's topic"
    );
}

/// psql against the endpoint; (exit ok, stdout, stderr).
async fn psql(conninfo: &str, password: &str, sql: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            conninfo,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .output()
        .await
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One column of every row of a simple query, as text.
async fn column(c: &Client, sql: &str, col: &str) -> Vec<String> {
    let mut out = Vec::new();
    eprintln!("endpoint: {sql}");
    let answer = tokio::time::timeout(Duration::from_secs(60), c.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("no answer within 60 s: {sql}"));
    for m in answer.unwrap_or_else(|e| panic!("{sql}: {e:?}")) {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push(r.get(col).unwrap_or("").to_string());
        }
    }
    out
}

/// The SQL endpoint: each question through a real driver (tokio-postgres) gives the CLI's
/// answer; psql's `\d` lists the history over TLS with verify-full; a Grafana-style time
/// bucket query works; writes, DDL and a bad password are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_endpoint_answers_like_the_cli() {
    let _serial = SERIAL.lock().await;
    let s = setup("serve", Some(RULES)).await;
    let cert = s.through("certification-v1").await;
    let leaky = s.through("leaky").await;
    let t0 = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for k in 1..=4 {
        cert.batch_execute(&format!("UPDATE brieff SET bfso = NULL WHERE bfkey = {k}"))
            .await
            .unwrap();
    }
    cert.batch_execute("UPDATE brieff SET bfso = 'Z' WHERE bfkey = 2")
        .await
        .unwrap();
    leaky
        .batch_execute("DELETE FROM notes WHERE id = 1")
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t1 = now_ms() + 1;
    let mid = now_ms();
    s.archive_once().await;
    let session = Session::open(&s.store).await.unwrap();

    let certs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.dev/certs");
    let cfg = hindsight::config::HistoryServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        users: [("auditor".to_string(), "s3cret pass".to_string())].into(),
        tls: Some(hindsight::config::ClientTlsConfig {
            cert_file: certs.join("server.crt"),
            key_file: certs.join("server.key"),
        }),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = hindsight_history::serve::start(&s.store, &cfg, stop)
        .await
        .expect("endpoint starts");
    let port = serving.addr.port();
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=auditor password='s3cret pass' dbname=history"),
        NoTls,
    )
    .await
    .expect("SCRAM login");
    tokio::spawn(conn);

    // Each question: the same rows, in the same order, as the CLI (ask::ask).
    let key = json!({"bfkey": 2}).to_string();
    let (since, until) = (t0.to_string(), t1.to_string());
    let cases: Vec<(Question, String)> = vec![
        (
            Question::WhoChanged {
                table: "public.brieff".into(),
                key: serde_json::from_str(&key).unwrap(),
                column: None,
            },
            format!("SELECT * FROM who_changed('public.brieff', '{key}')"),
        ),
        (
            Question::Changes(Filter {
                applications: vec!["certification-v1".into()],
                since_ms: Some(t0),
                until_ms: Some(t1),
                ..Filter::default()
            }),
            format!(
                "SELECT * FROM changes_by_application('certification-v1', '{since}', '{until}')"
            ),
        ),
        (
            Question::Blocked(Filter {
                since_ms: Some(t0),
                until_ms: Some(t1),
                ..Filter::default()
            }),
            format!("SELECT * FROM blocked_attempts('{since}', '{until}')"),
        ),
    ];
    for (q, sql) in &cases {
        let cli: Vec<String> = answer(&session, q)
            .await
            .iter()
            .map(|v| {
                format!(
                    "{}|{}",
                    v["transaction_id"].as_str().unwrap_or(""),
                    v["table_name"].as_str().unwrap_or("")
                )
            })
            .collect();
        let ops = column(&c, sql, "table_name").await;
        let txs = column(&c, sql, "transaction_id").await;
        let served: Vec<String> = txs
            .iter()
            .zip(&ops)
            .map(|(t, o)| format!("{t}|{o}"))
            .collect();
        assert!(!cli.is_empty(), "{q:?} has an answer");
        assert_eq!(served, cli, "{sql}");
    }
    // One transaction, by hindsight's id: the same events as the CLI's.
    let tx = column(
        &c,
        &format!("SELECT * FROM who_changed('public.brieff', '{key}')"),
        "transaction_id",
    )
    .await[0]
        .clone();
    let cli_ops: Vec<String> = answer(
        &session,
        &Question::Transaction(TransactionId::Id(tx.clone())),
    )
    .await
    .iter()
    .map(|v| v["op"].as_str().unwrap_or("").to_string())
    .collect();
    let served_ops = column(&c, &format!("SELECT * FROM one_transaction('{tx}')"), "op").await;
    assert!(!cli_ops.is_empty());
    assert_eq!(served_ops, cli_ops, "one_transaction('{tx}')");
    let blocked = column(
        &c,
        &format!("SELECT * FROM blocked_attempts('{since}', '{until}')"),
        "blocked_by",
    )
    .await;
    assert_eq!(blocked, ["notes-are-kept"]);
    let summary = column(
        &c,
        &format!("SELECT * FROM blast_radius('certification-v1', '{since}', '{until}')"),
        "rows",
    )
    .await;
    assert_eq!(summary, ["4"], "four rows of brieff");
    let as_of = column(
        &c,
        &format!("SELECT * FROM row_as_of('public.brieff', '{key}', '{mid}')"),
        "after_json",
    )
    .await;
    assert_eq!(as_of.len(), 1);
    assert!(as_of[0].contains("\"bfso\":\"Z\""), "{as_of:?}");

    // Grafana's PostgreSQL data source: time buckets over changes per application.
    let buckets = column(
        &c,
        "SELECT date_bin(INTERVAL '1 minute', ts) AS time, application_name, count(*) AS n \
         FROM changes GROUP BY 1, 2 ORDER BY 1",
        "application_name",
    )
    .await;
    assert!(
        buckets.contains(&"certification-v1".to_string()),
        "{buckets:?}"
    );

    // Read-only: writes and DDL get 25006.
    for w in [
        "CREATE TABLE x (a int)",
        "INSERT INTO events (id) VALUES ('x')",
        "DELETE FROM events",
        "DROP VIEW changes",
    ] {
        let e = tokio::time::timeout(Duration::from_secs(30), c.simple_query(w))
            .await
            .unwrap_or_else(|_| panic!("no answer to {w}"))
            .unwrap_err();
        let db = e.as_db_error().unwrap_or_else(|| panic!("{w}: {e:?}"));
        assert_eq!(db.code().code(), "25006", "{w}: {db:?}");
        assert!(db.message().contains("read-only"), "{db:?}");
    }
    // A wrong password and an unknown user are refused alike.
    for (user, pass) in [("auditor", "wrong"), ("nobody", "s3cret pass")] {
        let e = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user={user} password='{pass}' dbname=history"),
                NoTls,
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("no answer to {user}'s login"))
        .err()
        .unwrap_or_else(|| panic!("{user} logged in with {pass:?}"));
        assert!(
            e.to_string().contains("password") || e.as_db_error().is_some(),
            "{e}"
        );
    }
    // psql over TLS with verify-full: \d lists the history tables and views.
    let tls = format!(
        "host=localhost port={port} user=auditor dbname=history sslmode=verify-full sslrootcert={}",
        certs.join("ca.crt").display()
    );
    let (ok, out, err) = psql(&tls, "s3cret pass", "\\d").await;
    assert!(ok, "psql \\d: {err}");
    for name in ["events", "transactions", "changes", "in_doubt"] {
        assert!(out.contains(name), "\\d lacks {name}: {out}");
    }
    let (ok, out, err) = psql(
        &tls,
        "s3cret pass",
        &format!("SELECT count(*) FROM who_changed('public.brieff', '{key}')"),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "2", "{out}");
    let (ok, _, err) = psql(&tls, "wrong", "SELECT 1").await;
    assert!(
        !ok && err
            .to_lowercase()
            .contains("password authentication failed"),
        "{err}"
    );
    serving.shutdown().await;
}

/// Tamper evidence: the chain holds over several commits and after a compaction; `verify`
/// names a flipped byte in a data file, a deleted data file, a commit removed from the middle,
/// and (against a checkpoint) the newest commit removed together with its chain entry.
#[tokio::test]
async fn verify_names_what_was_tampered_with() {
    use hindsight_history::chain;
    let _serial = SERIAL.lock().await;
    let s = setup("verify", None).await;
    let c = s.through("web").await;
    for round in 0..3 {
        c.batch_execute(&format!(
            "UPDATE brieff SET bfcorlid = 'r{round}' WHERE bfkey <= 10"
        ))
        .await
        .unwrap();
        s.archive_once().await;
    }
    let intact = |what: &str| {
        let r = chain::verify(&s.store, None).unwrap();
        assert!(r.problems.is_empty(), "{what}: {:?}", r.problems);
        assert!(r.commits >= 4 && r.files >= 3, "{what}: {r:?}");
    };
    intact("after three archive runs");
    let count = |store: String| async move {
        let session = Session::open(&store).await.unwrap();
        rows(&session, "SELECT count(*) AS n, count(DISTINCT key_sort) AS k, max(kafka_offset) AS o FROM events").await
    };
    let before = count(s.store.clone()).await;
    hindsight_history::store::optimize(&s.store).await.unwrap();
    intact("after a compaction");
    assert_eq!(
        count(s.store.clone()).await,
        before,
        "compaction changed what queries see"
    );
    // The head is published outside the store, for an auditor.
    let out = Command::new(env!("CARGO_BIN_EXE_hindsight-history"))
        .args(["history", "checkpoint", "--publish", "--store", &s.store])
        .env("HINDSIGHT_KAFKA__BROKERS", format!("[\"{}\"]", brokers()))
        .env("HINDSIGHT_KAFKA__TOPIC_PREFIX", &s.prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: chain::Head = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, chain::head(&s.store).unwrap());
    let topic = format!("{}.history-checkpoints", s.prefix);
    let published = read_topics(&s.prefix)
        .into_iter()
        .find(|r| r.topic == topic)
        .unwrap_or_else(|| panic!("nothing on {topic}"));
    assert_eq!(
        serde_json::from_value::<chain::Head>(published.value).unwrap(),
        printed
    );
    let checkpoint = chain::head(&s.store).unwrap();
    let problems = |cp: Option<&chain::Head>| chain::verify(&s.store, cp).unwrap().problems;
    let root = PathBuf::from(&s.store);
    let events = root.join("events");
    // A file still in the table: the one the compaction wrote (the newest chain entry's).
    let (newest, _) = checkpoint.tables["events"].clone();
    let entry: chain::Entry = serde_json::from_slice(
        &std::fs::read(root.join(format!("_hindsight_chain/events/{newest:020}.json"))).unwrap(),
    )
    .unwrap();
    let victim = events.join(
        entry
            .files
            .keys()
            .next()
            .expect("the compaction added a file"),
    );
    let name = victim.file_name().unwrap().to_string_lossy().to_string();

    let original = std::fs::read(&victim).unwrap();
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(&victim, &flipped).unwrap();
    let p = problems(None);
    assert!(
        p.iter().any(|l| l.contains(&name) && l.contains("altered")),
        "{p:?}"
    );
    let cli = Command::new(env!("CARGO_BIN_EXE_hindsight-history"))
        .args(["history", "verify", "--store", &s.store])
        .output()
        .unwrap();
    assert_eq!(
        cli.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&cli.stdout)
    );
    std::fs::write(&victim, &original).unwrap();

    let aside = victim.with_extension("moved");
    std::fs::rename(&victim, &aside).unwrap();
    let p = problems(None);
    assert!(
        p.iter().any(|l| l.contains(&name) && l.contains("missing")),
        "{p:?}"
    );
    std::fs::rename(&aside, &victim).unwrap();

    let log1 = events.join("_delta_log/00000000000000000001.json");
    let log1_aside = log1.with_extension("moved");
    std::fs::rename(&log1, &log1_aside).unwrap();
    let p = problems(None);
    assert!(
        p.iter().any(|l| l.contains("commit 1 was removed")),
        "{p:?}"
    );
    std::fs::rename(&log1_aside, &log1).unwrap();
    intact("everything put back");

    // Expiry: the table's days older than its retention go, in a chained commit; verify
    // still passes, and the expired rows are gone from the questions.
    let three_days_on = now_ms() + 3 * 86_400_000;
    let keep = vec![("public.brieff".to_string(), Duration::from_secs(86_400))];
    let expired = hindsight_history::store::expire(&s.store, &keep, three_days_on)
        .await
        .unwrap();
    assert_eq!(expired.len(), 1, "{expired:?}");
    intact("after an expiry");
    let session = Session::open(&s.store).await.unwrap();
    let left = rows(
        &session,
        "SELECT count(*) AS n FROM events WHERE table_name = 'public.brieff'",
    )
    .await;
    assert_eq!(left[0]["n"], json!(0), "{left:?}");
    let nothing = hindsight_history::store::expire(&s.store, &keep, three_days_on)
        .await
        .unwrap();
    assert!(
        nothing.is_empty(),
        "a second expiry finds nothing: {nothing:?}"
    );

    // The newest commit removed with its chain entry: consistent, but not what the
    // checkpoint taken before says.
    let checkpoint = chain::head(&s.store).unwrap();
    let (newest, _) = checkpoint.tables["events"].clone();
    let log = events.join(format!("_delta_log/{newest:020}.json"));
    let entry = root.join(format!("_hindsight_chain/events/{newest:020}.json"));
    std::fs::remove_file(&log).unwrap();
    std::fs::remove_file(&entry).unwrap();
    let p = problems(Some(&checkpoint));
    assert!(
        p.iter().any(|l| l.contains("newest commits were removed")),
        "{p:?}"
    );
}

/// A cascading DELETE: the archive keeps each cascaded row's `source.cascade`, so a restore
/// planned from the history equals one planned from the topics (each child names its parent
/// and constraint), and applying it from the history brings back the parents and children.
#[tokio::test]
async fn cascades_are_archived_and_restored_from_history() {
    let _serial = SERIAL.lock().await;
    let mut s = setup("cascade", None).await;
    let direct = s.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE reps (rid int PRIMARY KEY, bfkey int REFERENCES brieff ON DELETE CASCADE, name text);
             INSERT INTO reps SELECT g, g % 4 + 1, 'r' || g FROM generate_series(1, 12) g;",
        )
        .await
        .unwrap();
    let (reps, brieff) = (dump(&direct, "reps").await, dump(&direct, "brieff").await);
    let leaky = s.through("leaky").await;
    leaky
        .batch_execute("DELETE FROM brieff WHERE bfkey IN (1, 2)")
        .await
        .unwrap();
    let totals = s.archive_once().await;
    assert!(totals.events >= 8, "{totals:?}");
    let session = Session::open(&s.store).await.unwrap();
    let kept = rows(
        &session,
        "SELECT cascade_json FROM events WHERE relation = 'reps' ORDER BY kafka_offset",
    )
    .await;
    assert_eq!(kept.len(), 6, "{kept:?}");
    for r in &kept {
        let c: Value = serde_json::from_str(r["cascade_json"].as_str().unwrap()).unwrap();
        assert_eq!(c["constraint"], "reps_bfkey_fkey", "{c}");
        assert_eq!(c["parent_table"], "public.brieff", "{c}");
    }
    let (a, b, report) = plan_from_topics_apply_from_history(&s, "leaky").await;
    assert!(a.contains("reps_bfkey_fkey"), "{a}");
    assert_eq!(
        a, b,
        "the plan from the history differs from the plan from the topics"
    );
    assert!(
        report.contains("with its cascade: 3 row(s) of public.reps"),
        "{report}"
    );
    assert_eq!(dump(&direct, "reps").await, reps);
    assert_eq!(dump(&direct, "brieff").await, brieff);
    if let Some(p) = s.proxy.take() {
        p.shutdown().await;
    }
}

/// `kafka.topic_routing = "database"`: every table's events on `<prefix>.changes-<db>`, a
/// snapshot's too. The archive files them under their tables with that topic, waits for them
/// before an END (which names the topic), and a restore planned from the history equals the
/// one planned from the topics.
#[tokio::test]
async fn a_database_topic_is_archived_and_restored_from_history() {
    let _serial = SERIAL.lock().await;
    let mut s = setup_routed("dbtopic", None, TopicRouting::Database).await;
    let direct = s.direct().await;
    let (brieff, notes) = (dump(&direct, "brieff").await, dump(&direct, "notes").await);
    s.snapshot("public.notes").await;
    let leaky = s.through("leaky").await;
    leaky
        .batch_execute(
            "BEGIN; UPDATE brieff SET bfso = NULL WHERE bfkey <= 6; DELETE FROM notes WHERE id IN (2, 3); COMMIT;
             UPDATE notes SET body = 'leaked' WHERE id = 4;",
        )
        .await
        .unwrap();
    let totals = s.archive_once().await;
    assert!(totals.events >= 6 + 2 + 1 + 10, "{totals:?}");
    let session = Session::open(&s.store).await.unwrap();
    let topic = format!("{}.changes-{}", s.prefix, s.db);
    let per_table = rows(
        &session,
        "SELECT relation, kafka_topic, count(*) AS n FROM events GROUP BY relation, kafka_topic ORDER BY relation",
    )
    .await;
    assert_eq!(
        per_table,
        vec![
            serde_json::from_value::<Map<String, Value>>(
                json!({"relation": "brieff", "kafka_topic": topic, "n": 6})
            )
            .unwrap(),
            serde_json::from_value::<Map<String, Value>>(
                json!({"relation": "notes", "kafka_topic": topic, "n": 13})
            )
            .unwrap(),
        ],
        "every event on the database's topic, filed under its table"
    );
    let (a, b, report) = plan_from_topics_apply_from_history(&s, "leaky").await;
    assert_eq!(
        a, b,
        "the plan from the history differs from the plan from the topics"
    );
    assert!(report.contains("9 to revert"), "{report}");
    assert_eq!(dump(&direct, "brieff").await, brieff);
    assert_eq!(dump(&direct, "notes").await, notes);
    if let Some(p) = s.proxy.take() {
        p.shutdown().await;
    }
}

/// The restore of what `app` wrote: planned from the topics, then planned and applied from the
/// history store; both plans (JSON) and the history run's report.
async fn plan_from_topics_apply_from_history(s: &Setup, app: &str) -> (String, String, String) {
    let dir = PathBuf::from(&s.store).parent().unwrap().to_path_buf();
    let who = (s.prefix.as_str(), s.db.as_str());
    let topics = restore_command(who, app, LogOpener::kafka(), dir.join("k.json"), false);
    execute(&topics, &mut Vec::new(), &Progress::hidden())
        .await
        .expect("plan from the topics");
    let history = restore_command(who, app, from_history(&s.store), dir.join("h.json"), true);
    let mut report = Vec::new();
    execute(&history, &mut report, &Progress::hidden())
        .await
        .expect("apply from the history");
    (
        std::fs::read_to_string(dir.join("k.json")).unwrap(),
        std::fs::read_to_string(dir.join("h.json")).unwrap(),
        String::from_utf8_lossy(&report).into_owned(),
    )
}
