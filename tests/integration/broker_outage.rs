//! A broker outage must not take reads down: a proxy started while the brokers do not answer
//! listens, serves reads, refuses writes and DDL with HS001, says so on `/readyz` and in
//! `hindsight_broker_reachable`, and captures writes once the brokers answer.

use crate::harness::{self, Pg};
use crate::link::Link;
use crate::robustness::http_get;

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_default()
}

async fn proxy_started_during_a_broker_outage_serves_reads(pg: Pg) {
    let db = harness::fresh_db(pg, "outage").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 10)")
        .await
        .unwrap();
    let broker: std::net::SocketAddr = harness::kafka_brokers().parse().unwrap();
    let link = Link::start(broker, None, false).await;
    let prefix = harness::random_prefix("outage");
    let (p, addr) = (prefix.clone(), link.addr.to_string());
    let proxy = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![addr];
        c.kafka.topic_prefix = p;
        // Each attempt to reach the brokers waits this long (the start waits one attempt).
        c.kafka.publish_timeout = std::time::Duration::from_secs(3);
    })
    .await;
    let admin = format!("http://{}", proxy.admin_addr);
    let (status, body) = http_get(&format!("{admin}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("degraded:") && body.contains("HS001"),
        "{body}"
    );
    let (_, metrics) = http_get(&format!("{admin}/metrics")).await;
    assert!(
        metrics.contains("hindsight_broker_reachable 0"),
        "{metrics}"
    );

    let c = harness::connect(proxy.addr, "postgres", &db).await;
    assert_eq!(
        harness::count(&c, "SELECT v::int8 FROM t WHERE id = 1").await,
        10
    );
    let e = c
        .batch_execute("UPDATE t SET v = 11 WHERE id = 1")
        .await
        .expect_err("a write cannot be recorded: refused");
    assert_eq!(sqlstate(&e), "HS001", "{e:?}");
    assert!(
        format!("{e:?}").contains(&link.addr.to_string()),
        "the error names the brokers: {e:?}"
    );
    let e = c
        .batch_execute("CREATE TABLE u (x int)")
        .await
        .expect_err("DDL cannot be recorded: refused");
    assert_eq!(sqlstate(&e), "HS001", "{e:?}");
    assert_eq!(
        harness::count(&c, "SELECT v::int8 FROM t WHERE id = 1").await,
        10,
        "nothing committed"
    );
    assert_eq!(
        harness::count(
            &direct,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'u'"
        )
        .await,
        0,
        "the DDL did not run"
    );

    link.restore();
    let ready = || async {
        http_get(&format!("{admin}/readyz"))
            .await
            .1
            .starts_with("ready:")
    };
    for _ in 0..600 {
        if ready().await {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        ready().await,
        "the proxy reaches the brokers once they answer"
    );
    let (_, metrics) = http_get(&format!("{admin}/metrics")).await;
    assert!(
        metrics.contains("hindsight_broker_reachable 1"),
        "{metrics}"
    );
    c.batch_execute("UPDATE t SET v = 12 WHERE id = 1")
        .await
        .expect("captured once the brokers answer");
    let events = harness::read_topic_json(format!("{prefix}.public.t"), 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["before"]["v"], 10);
    assert_eq!(events[0]["after"]["v"], 12);
    proxy.shutdown().await;
}

/// `kafka.require_at_start = true` keeps the old behaviour: no start without brokers.
#[tokio::test]
async fn require_at_start_refuses_to_start_without_brokers() {
    let broker: std::net::SocketAddr = harness::kafka_brokers().parse().unwrap();
    let link = Link::start(broker, None, false).await;
    let mut config = hindsight::config::Config::default();
    config.proxy.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.address = Pg::V15.addr().to_string();
    config.kafka.brokers = vec![link.addr.to_string()];
    config.kafka.require_at_start = true;
    config.kafka.publish_timeout = std::time::Duration::from_secs(2);
    let err = hindsight::proxy::launch(config, hindsight::telemetry::Metrics::new())
        .await
        .err()
        .expect("refuses to start");
    assert!(err.to_string().contains(&link.addr.to_string()), "{err}");
}

on_both!(proxy_started_during_a_broker_outage_serves_reads);
