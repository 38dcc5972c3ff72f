//! The Kafka sink against a real broker (tansu): records arrive complete and in order, missing
//! topics are created or named, an unreachable broker is an error that names it.

use std::time::Duration;

use hindsight::audit::kafka::{KafkaSink, Record, SinkConfig, SinkError};

use crate::harness;

fn config(prefix: &str) -> SinkConfig {
    SinkConfig {
        brokers: vec![harness::kafka_brokers()],
        topic_prefix: prefix.to_string(),
        publish_timeout: Duration::from_secs(10),
        ..SinkConfig::default()
    }
}

#[tokio::test]
async fn published_records_are_acknowledged_and_readable_in_order() {
    let prefix = harness::random_prefix("sink");
    let sink = KafkaSink::connect(config(&prefix)).await.expect("connect");
    let topic = sink.table_topic("public", "brieff");
    let records: Vec<Record> = (0..50)
        .map(|i| Record {
            topic: topic.clone(),
            key: format!("{{\"id\":{}}}", i % 3).into_bytes(),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
        })
        .collect();
    sink.publish(&records).await.expect("publish");
    let got = harness::read_topic_raw(topic.clone(), 50).await;
    let want: Vec<(Vec<u8>, Vec<u8>)> = records.into_iter().map(|r| (r.key, r.payload)).collect();
    assert_eq!(
        got, want,
        "records on {topic} must be exactly what was published, in order"
    );
}

#[tokio::test]
async fn missing_topic_with_creation_disabled_is_named() {
    let prefix = harness::random_prefix("nocreate");
    let sink = KafkaSink::connect(SinkConfig {
        create_topics: false,
        ..config(&prefix)
    })
    .await
    .expect("connect");
    let topic = sink.transaction_topic();
    let err = sink
        .publish(&[Record {
            topic: topic.clone(),
            key: b"k".to_vec(),
            payload: b"v".to_vec(),
        }])
        .await
        .expect_err("topic does not exist");
    assert!(matches!(err, SinkError::TopicsMissing { .. }), "{err}");
    assert!(err.to_string().contains(&topic), "{err}");
}

#[tokio::test]
async fn unreachable_broker_fails_fast_naming_it() {
    let err = KafkaSink::connect(SinkConfig {
        brokers: vec!["127.0.0.1:9".to_string()],
        publish_timeout: Duration::from_secs(2),
        ..SinkConfig::default()
    })
    .await
    .err()
    .expect("no broker listens on port 9");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
}

#[tokio::test]
async fn delivery_guarantee_properties_cannot_be_weakened() {
    let mut cfg = config("x");
    cfg.librdkafka.insert("acks".into(), "1".into());
    let err = KafkaSink::connect(cfg).await.err().expect("acks=1 refused");
    assert!(err.to_string().contains("acks"), "{err}");
    // In-flight requests may be lowered (fewer, larger requests to a slow broker), not raised
    // past what the idempotent producer keeps in order.
    for bad in ["6", "0", "many"] {
        let mut cfg = config("x");
        cfg.librdkafka
            .insert("max.in.flight.requests.per.connection".into(), bad.into());
        let err = KafkaSink::connect(cfg).await.err().expect("refused");
        assert!(err.to_string().contains("1 to 5"), "{err}");
    }
    let mut cfg = config("x");
    cfg.librdkafka
        .insert("max.in.flight.requests.per.connection".into(), "1".into());
    KafkaSink::connect(cfg)
        .await
        .expect("1 in flight is allowed");
}

/// Regression: `hindsight tail` right after setting up (no write through the proxy yet, so no
/// audit topic) failed with "Unknown topic or partition" instead of waiting for events.
#[tokio::test]
async fn tail_waits_when_no_audit_topic_exists_yet() {
    let opts = hindsight::audit::tail::TailOptions {
        brokers: vec![harness::kafka_brokers()],
        topic_prefix: harness::random_prefix("tail_empty"),
        tables: Vec::new(),
        application: None,
        json: false,
        from_beginning: true,
        max: None,
        idle_timeout: Some(Duration::from_secs(3)),
        alerts: false,
    };
    let mut out = Vec::new();
    let printed = tokio::task::spawn_blocking(move || {
        let r = hindsight::audit::tail::run(&opts, &mut out);
        (r, out)
    })
    .await
    .unwrap();
    match printed {
        (Ok(n), out) => {
            assert_eq!(n, 0);
            assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        }
        (Err(e), _) => panic!("tail failed instead of waiting: {e}"),
    }
}

/// Regression (the chaos suite, tansu after a network cut): a fenced idempotent producer is a
/// fatal error in librdkafka; every later publish failed, so hindsight refused every write
/// until it was restarted. The failed publish now replaces the producer; the next succeeds.
#[tokio::test]
async fn fenced_producer_refused_every_later_write() {
    let prefix = harness::random_prefix("fenced");
    let sink = KafkaSink::connect(config(&prefix)).await.expect("connect");
    let topic = sink.table_topic("public", "t");
    let record = |n: u32| Record {
        topic: topic.clone(),
        key: b"k".to_vec(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    };
    sink.publish(&[record(1)]).await.expect("first publish");
    sink.inject_fatal_error_for_tests();
    let err = sink
        .publish(&[record(2)])
        .await
        .expect_err("a fatal producer cannot deliver");
    assert!(
        err.to_string().to_lowercase().contains("fenced") || err.to_string().contains("fatal"),
        "{err}"
    );
    sink.publish(&[record(3)])
        .await
        .expect("a new producer delivers");
    let got = harness::read_topic_json(topic, 2).await;
    let ns: Vec<i64> = got.iter().map(|v| v["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![1, 3], "{got:?}");
}
