//! Shared set-up: where the servers are, fresh databases, in-process proxies.

use hindsight::config::Config;
use hindsight::proxy::Running;
use hindsight::telemetry::Metrics;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_postgres::NoTls;

/// A PostgreSQL major version the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pg {
    V15,
    V18,
}

pub const ALL: [Pg; 2] = [Pg::V15, Pg::V18];

impl Pg {
    /// Port of the scratch server (scripts/common.sh defaults; HSTEST_PG15_PORT/HSTEST_PG18_PORT override).
    pub fn port(self) -> u16 {
        let (var, default) = match self {
            Pg::V15 => ("HSTEST_PG15_PORT", 54315),
            Pg::V18 => ("HSTEST_PG18_PORT", 54318),
        };
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    pub fn addr(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    pub fn major(self) -> u32 {
        match self {
            Pg::V15 => 15,
            Pg::V18 => 18,
        }
    }
}

/// Directory with the dev CA and server certificate (scripts/certs.sh).
pub fn certs_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var("HSTEST_CERTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".dev/certs"))
}

/// Connection string for `user` to `db` at `addr`.
pub fn conn_str(addr: SocketAddr, user: &str, db: &str) -> String {
    format!(
        "host={} port={} user={user} dbname={db} password=password",
        addr.ip(),
        addr.port()
    )
}

/// Connect with tokio-postgres (no TLS) and drive the connection in the background.
pub async fn connect(addr: SocketAddr, user: &str, db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&conn_str(addr, user, db), NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr} as {user}/{db}: {e:?}"));
    tokio::spawn(conn);
    client
}

/// The single integer (e.g. a `count(*)`) that `sql` returns.
pub async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// Create a fresh database for one test on the given server; returns its name.
pub async fn fresh_db(pg: Pg, label: &str) -> String {
    let name = format!("t_{label}_{:08x}", rand::random::<u32>());
    let admin = match tokio_postgres::connect(&conn_str(pg.addr(), "postgres", "postgres"), NoTls).await {
        Ok((c, conn)) => {
            tokio::spawn(conn);
            c
        }
        Err(e) => panic!(
            "PostgreSQL {} is not reachable at {}: {e}\nStart it with `scripts/pg.sh start {}` (scripts/test.sh does this).",
            pg.major(),
            pg.addr(),
            pg.major()
        ),
    };
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    name
}

/// A proxy in front of `pg` on free ports, with `tweak` applied to its config.
pub async fn proxy(pg: Pg, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::default();
    config.proxy.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.address = pg.addr().to_string();
    // Tests often still hold clients when they stop the proxy; do not wait the default 30 s.
    config.proxy.drain_timeout = std::time::Duration::from_millis(500);
    tweak(&mut config);
    hindsight::proxy::launch(config, Metrics::new())
        .await
        .expect("proxy starts")
}

/// A capturing proxy in front of `pg` publishing to the test broker under a fresh topic prefix
/// (returned) made from `label`, with `tweak` applied to its config.
pub async fn capturing_proxy(
    pg: Pg,
    label: &str,
    tweak: impl FnOnce(&mut Config),
) -> (String, Running) {
    let prefix = random_prefix(label);
    let p = prefix.clone();
    let running = proxy(pg, move |c| {
        c.kafka.brokers = vec![kafka_brokers()];
        c.kafka.topic_prefix = p;
        tweak(c);
    })
    .await;
    (prefix, running)
}

/// Count sessions on the server connected to `db` (excluding the asking one).
pub async fn backends_on(pg: Pg, db: &str) -> i64 {
    let c = connect(pg.addr(), "postgres", "postgres").await;
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        &[&db],
    )
    .await
    .unwrap()
    .get(0)
}

/// Wait (bounded) until `f` returns true.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The test broker (tansu from scripts/kafka.sh), `HSTEST_KAFKA` to override.
pub fn kafka_brokers() -> String {
    std::env::var("HSTEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".to_string())
}

/// A topic prefix no other test (or earlier run) uses.
pub fn random_prefix(label: &str) -> String {
    format!("hstest_{label}_{:08x}", rand::random::<u32>())
}

/// Every record of `topic` as JSON (see [`read_topic_raw`]).
pub async fn read_topic_json(topic: String, expect: usize) -> Vec<serde_json::Value> {
    read_topic_raw(topic, expect)
        .await
        .into_iter()
        .map(|(_, payload)| serde_json::from_slice(&payload).expect("JSON record"))
        .collect()
}

/// Every record (key, payload) of partition 0 of `topic`, from the beginning: waits until
/// `expect` arrived (at most 20 s), then half a second more so that extra records show too.
pub async fn read_topic_raw(topic: String, expect: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    read_topic_raw_from(kafka_brokers(), topic, expect).await
}

/// [`read_topic_raw`] from the brokers `brokers`.
pub async fn read_topic_raw_from(
    brokers: String,
    topic: String,
    expect: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    use std::time::{Duration, Instant};
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("hstest-{}", rand::random::<u32>()))
            .set("enable.auto.commit", "false")
            .set("fetch.message.max.bytes", "67108864")
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let mut poll_until = |deadline: Instant, stop_at: Option<usize>| {
            while stop_at.is_none_or(|n| out.len() < n) && Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => out.push((
                        m.key().unwrap_or_default().to_vec(),
                        m.payload().unwrap_or_default().to_vec(),
                    )),
                    Some(Err(e)) => eprintln!("reading {topic}: {e}"),
                    None => {}
                }
            }
        };
        poll_until(Instant::now() + Duration::from_secs(20), Some(expect));
        poll_until(Instant::now() + Duration::from_millis(500), None);
        out
    })
    .await
    .unwrap()
}

/// A tansu broker of the test's own with memory storage (the chaos suite's kind), stopped
/// when dropped. The binary: `HSTEST_TANSU` (scripts/test.sh sets it), else where
/// scripts/install-tansu.sh puts it.
pub struct MemoryBroker {
    child: std::process::Child,
    pub addr: String,
}

impl MemoryBroker {
    pub async fn start() -> MemoryBroker {
        let bin = std::env::var("HSTEST_TANSU").unwrap_or_else(|_| {
            let cache = std::env::var("HSDEV_CACHE").unwrap_or_else(|_| {
                format!(
                    "{}/.cache/hindsight",
                    std::env::var("HOME").unwrap_or_default()
                )
            });
            format!("{cache}/tansu-0.6.0/bin/tansu")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let child = std::process::Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://hstest/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run tansu at {bin} ({e}): run scripts/install-tansu.sh or set HSTEST_TANSU"));
        let broker = MemoryBroker { child, addr };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&broker.addr).await.is_ok() {
                return broker;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "tansu ({bin}) did not listen on {} within 10 s",
            broker.addr
        );
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
