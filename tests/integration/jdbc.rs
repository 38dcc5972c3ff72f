//! The real PostgreSQL JDBC driver (pgjdbc, from Debian's `libpostgresql-jdbc-java`, installed by
//! scripts/install-deps.sh) through a capturing hindsight: the workload of
//! tests/jdbc/JdbcWorkload.java runs once directly and once through the proxy. The driver must
//! see exactly the same (transcripts equal line by line), and the committed events, replayed on
//! a copy of the starting data, must reproduce the tables written through hindsight.

use crate::harness::{self, Pg};
use crate::replay::{outcomes, replay_table};

/// The tables the workload writes, empty at the start.
const SCHEMA: &str = "
    CREATE TABLE item (id bigserial PRIMARY KEY, sku text UNIQUE NOT NULL, qty int NOT NULL,
                       price numeric(12,2), tags text[], meta jsonb, seen timestamptz, uid uuid,
                       blob bytea);
    CREATE TABLE note (id int PRIMARY KEY, body text);";

const JAR: &str = "/usr/share/java/postgresql.jar";

/// Run the Java workload against `db` at `addr`; its transcript (stdout).
async fn run_workload(addr: std::net::SocketAddr, db: &str) -> String {
    let source = format!(
        "{}/tests/jdbc/JdbcWorkload.java",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(
        std::path::Path::new(JAR).exists(),
        "{JAR} is missing: install pgjdbc with scripts/install-deps.sh (Debian's libpostgresql-jdbc-java)"
    );
    let out = tokio::process::Command::new("java")
        .args(["-cp", JAR, &source])
        .args([
            addr.ip().to_string(),
            addr.port().to_string(),
            db.to_string(),
        ])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("running java ({e}): install a Java runtime with scripts/install-deps.sh")
        });
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "the JDBC workload failed against {addr}/{db} ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

async fn pgjdbc_workload_is_captured_exactly(pg: Pg) {
    let db = harness::fresh_db(pg, "jdbc").await;
    let twin = harness::fresh_db(pg, "jdbc_direct").await;
    let copy = harness::fresh_db(pg, "jdbc_copy").await;
    for name in [&db, &twin, &copy] {
        let c = harness::connect(pg.addr(), "postgres", name).await;
        c.batch_execute(SCHEMA).await.unwrap();
    }
    let prefix = harness::random_prefix("jdbc");
    let p = prefix.clone();
    let proxy = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = p;
    })
    .await;

    let direct = run_workload(pg.addr(), &twin).await;
    let through = run_workload(proxy.addr, &db).await;
    let (a, b): (Vec<&str>, Vec<&str>) = (direct.lines().collect(), through.lines().collect());
    for (i, (d, t)) in a.iter().zip(&b).enumerate() {
        assert_eq!(
            d, t,
            "line {} of the transcript differs (left direct, right through hindsight)\n--- direct\n{direct}\n--- through hindsight\n{through}",
            i + 1
        );
    }
    assert_eq!(
        a.len(),
        b.len(),
        "transcripts differ in length\n--- direct\n{direct}\n--- through hindsight\n{through}"
    );

    let outcome = outcomes(&prefix).await;
    let written = harness::connect(pg.addr(), "postgres", &db).await;
    let replica = harness::connect(pg.addr(), "postgres", &copy).await;
    let mut events = Vec::new();
    for table in ["item", "note"] {
        events.extend(replay_table(&prefix, table, &outcome, &replica, &written).await);
    }
    // The workload's committed row changes, step by step (JdbcWorkload.java):
    // item: 8 inserts; 7 batch updates + 1 in simple mode + 2 with RETURNING; 1 delete.
    // note: 20 batch + 1 upsert + 1 result-set insert + 3 COPY + 37 rewritten batch + 3000 large
    // batch + 1 simple; 3 in the savepoint + 2 multi-statement + 2 upsert + 1 result-set update
    // + 1500 large batch + 2 autosave;
    // 1 before the savepoint + 1 multi-statement + 1 result-set delete + 2 `= ANY`.
    let mut counted = std::collections::BTreeMap::new();
    for e in &events {
        let key = (
            e["source"]["table"].as_str().unwrap().to_string(),
            e["op"].as_str().unwrap().to_string(),
        );
        *counted.entry(key).or_insert(0) += 1;
    }
    let expected: std::collections::BTreeMap<(String, String), i32> = [
        ("item", "c", 8),
        ("item", "u", 10),
        ("item", "d", 1),
        ("note", "c", 3063),
        ("note", "u", 1510),
        ("note", "d", 5),
    ]
    .into_iter()
    .map(|(t, op, n)| ((t.to_string(), op.to_string()), n))
    .collect();
    assert_eq!(counted, expected, "events per table and operation");
    let apps: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["source"]["application_name"].as_str())
        .collect();
    assert_eq!(
        apps.into_iter().collect::<Vec<_>>(),
        ["PostgreSQL JDBC Driver"],
        "events name the driver as the application"
    );
    proxy.shutdown().await;
}

on_both!(pgjdbc_workload_is_captured_exactly);
