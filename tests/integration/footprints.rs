//! Footprints end to end: the postmortem's incident in alert and enforce mode, footprints that
//! survive restarts and are shared by two replicas, control state (kill switches, flags)
//! shared by two replicas, and webhook delivery.

use super::gates::{code, connect_as, http, rules_file, INCIDENT_RULES};
use super::harness::{self, Pg};
use hindsight::proxy::Running;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const APP: &str = "certification-v1";

struct Replica {
    name: &'static str,
    rules: Option<std::path::PathBuf>,
    webhook: Option<String>,
}

async fn start(pg: Pg, prefix: &str, r: &Replica) -> Running {
    let (p, name, rules, webhook) = (
        prefix.to_string(),
        r.name.to_string(),
        r.rules.clone(),
        r.webhook.clone(),
    );
    harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = p;
        c.footprints.enabled = true;
        c.footprints.replica = Some(name);
        c.footprints.flush_interval = Duration::from_millis(200);
        c.footprints.webhook_url = webhook;
        c.footprints.webhook_timeout = Duration::from_millis(500);
        c.footprints.webhook_retries = 1;
        c.gates.rules = rules;
        c.gates.poll_interval = Duration::from_millis(100);
    })
    .await
}

async fn db_with_brieff(pg: Pg, label: &str) -> String {
    let db = harness::fresh_db(pg, label).await;
    harness::connect(pg.addr(), "postgres", &db)
        .await
        .batch_execute(
            "CREATE TABLE brieff (bfkey int PRIMARY KEY, bfso text, bfcorlid text, bfddec date);
             INSERT INTO brieff SELECT g, 'rep' || g, 'c' || g, date '2020-01-01' + g FROM generate_series(1, 25) g;
             CREATE TABLE folder (ticknum int PRIMARY KEY, tinum text);
             INSERT INTO folder SELECT g, 't' || g FROM generate_series(1, 10) g;",
        )
        .await
        .unwrap();
    db
}

/// certification-v1's everyday writes, with literals, IN-list lengths and trace ids that
/// differ from round to round, over both query protocols.
async fn baseline(c: &Client, round: i32) {
    let trace = format!("00-{:032x}-{:016x}-01", rand::random::<u128>(), round);
    let keys: Vec<String> = (1..=(2 + round % 4)).map(|k| k.to_string()).collect();
    c.simple_query(&format!(
        "UPDATE brieff SET bfcorlid = 'c{round}' WHERE bfkey IN ({}) /*traceparent='{trace}',controller='certifications',action='update'*/",
        keys.join(", ")
    ))
    .await
    .unwrap();
    c.execute(
        "UPDATE brieff SET bfddec = $1::text::date, bfcorlid = $2 WHERE bfkey = $3",
        &[&"2021-02-03", &format!("k{round}"), &(round % 20 + 1)],
    )
    .await
    .unwrap();
    c.simple_query(&format!(
        "INSERT INTO folder (ticknum, tinum) VALUES ({}, 'n{round}')",
        100 + round
    ))
    .await
    .unwrap();
    c.execute("DELETE FROM folder WHERE ticknum = $1", &[&(100 + round)])
        .await
        .unwrap();
}

fn metric(body: &str, name: &str, labels: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(p: &Running) -> String {
    http(p.admin_addr, "GET", "/metrics", None, "").await.1
}

async fn alerts(prefix: &str, expect: usize) -> Vec<Value> {
    harness::read_topic_json(format!("{prefix}.alerts"), expect).await
}

async fn set_mode(p: &Running, app: &str, mode: &str) {
    let (status, body) = http(
        p.admin_addr,
        "PUT",
        &format!("/footprints/modes/{app}"),
        None,
        mode,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Wait until `p` reports `mode` for `app` (the control topic reached it).
async fn mode_is(p: &Running, app: &str, mode: &str) {
    let want = format!("\"{app}\":\"{mode}\"");
    for _ in 0..100 {
        let (_, body) = http(p.admin_addr, "GET", "/footprints/modes", None, "").await;
        if body.contains(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{app} never switched to {mode}");
}

/// Learn the baseline, then switch certification-v1 to `mode` (through the admin API).
async fn learned(pg: Pg, label: &str, mode: &str) -> (String, String, Running, Client) {
    let db = db_with_brieff(pg, label).await;
    let prefix = harness::random_prefix(label);
    let proxy = start(
        pg,
        &prefix,
        &Replica {
            name: "a",
            rules: None,
            webhook: None,
        },
    )
    .await;
    let app = connect_as(proxy.addr, &db, APP).await;
    for round in 0..3 {
        baseline(&app, round).await;
    }
    set_mode(&proxy, APP, mode).await;
    mode_is(&proxy, APP, mode).await;
    (db, prefix, proxy, app)
}

async fn null_count(pg: Pg, db: &str) -> i64 {
    harness::count(
        &harness::connect(pg.addr(), "postgres", db).await,
        "SELECT count(*) FROM brieff WHERE bfso IS NULL",
    )
    .await
}

/// The postmortem in alert mode: the baseline, varied, gives no alert; the leaked UPDATE is
/// alerted (topic and metric) on its first statement, before the second runs; the nulling
/// alert carries the value before; 18 statements give one alert of each kind.
async fn incident_is_alerted_on_the_first_statement(pg: Pg) {
    let (db, prefix, proxy, app) = learned(pg, "fp_alert", "alert").await;
    for round in 3..8 {
        baseline(&app, round).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(&m, "hindsight_new_write_paths_total", ""),
        0.0,
        "{m}"
    );
    assert!(alerts(&prefix, 0).await.is_empty(), "the baseline alerted");

    app.execute("UPDATE brieff SET bfso = NULL WHERE bfkey = $1", &[&1i32])
        .await
        .unwrap();
    let m = metrics(&proxy).await;
    let labels = format!("application=\"{APP}\",table=\"brieff\"");
    assert_eq!(
        metric(&m, "hindsight_new_write_paths_total", &labels),
        1.0,
        "{m}"
    );
    let first = alerts(&prefix, 2).await;
    let new_path = first
        .iter()
        .find(|a| a["type"] == "new_write_path")
        .unwrap_or_else(|| panic!("no new_write_path alert after the first statement: {first:?}"));
    assert_eq!(new_path["application"], APP);
    assert_eq!(new_path["columns"], serde_json::json!(["bfso"]));
    assert_eq!(new_path["operation"], "update");
    assert!(new_path["approve"]
        .as_str()
        .unwrap()
        .contains("footprint approve"));
    let nulling = first
        .iter()
        .find(|a| a["type"] == "nulling")
        .unwrap_or_else(|| panic!("no nulling alert: {first:?}"));
    assert_eq!(nulling["before"], "rep1", "{nulling}");
    assert_eq!(nulling["key"], serde_json::json!({"bfkey": 1}));

    for k in 2..=18 {
        app.execute("UPDATE brieff SET bfso = NULL WHERE bfkey = $1", &[&k])
            .await
            .unwrap();
    }
    assert_eq!(
        null_count(pg, &db).await,
        18,
        "alert mode lets the writes through"
    );
    let all = alerts(&prefix, 3).await;
    assert_eq!(
        all.len(),
        2,
        "one alert per path, not per statement: {all:?}"
    );
    proxy.shutdown().await;
}

/// The postmortem in enforce mode: the baseline still runs; the leaked UPDATE is refused
/// with HS012 before it runs, nothing changes, the blocked events carry the would-be NULL;
/// approving the path lets it through.
async fn incident_is_refused_in_enforce_mode(pg: Pg) {
    let (db, prefix, proxy, app) = learned(pg, "fp_enforce", "enforce").await;
    for round in 3..6 {
        baseline(&app, round).await;
    }
    let err = app
        .execute(
            "UPDATE brieff SET bfso = NULL WHERE bfkey IN (1, 2, 3)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS012", "{err:?}");
    let db_err = err.as_db_error().unwrap();
    assert!(
        db_err.message().contains(APP) && db_err.message().contains("bfso"),
        "{db_err:?}"
    );
    let hint = db_err.hint().unwrap_or_default().to_string();
    assert!(hint.contains("hindsight footprint approve"), "{hint}");
    let err2 = app
        .simple_query("UPDATE brieff SET bfso = NULL WHERE bfkey = 4")
        .await
        .unwrap_err();
    assert_eq!(code(&err2), "HS012", "{err2:?}");
    assert_eq!(null_count(pg, &db).await, 0, "a refused write changed rows");

    let events = harness::read_topic_json(format!("{prefix}.public.brieff"), 4).await;
    let blocked: Vec<&Value> = events.iter().filter(|e| e["op"] == "blocked").collect();
    assert_eq!(blocked.len(), 4, "{events:?}");
    for e in &blocked {
        assert!(
            e["after"]["bfso"].is_null() && e["before"]["bfso"].is_string(),
            "{e}"
        );
    }

    let id = hint
        .split("footprint approve ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let (status, body) = http(
        proxy.admin_addr,
        "POST",
        &format!("/footprints/{id}/approve"),
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    harness::eventually("the approval reaches the replica", || {
        let app = &app;
        async move {
            app.execute(
                "UPDATE brieff SET bfso = NULL WHERE bfkey IN (1, 2, 3)",
                &[],
            )
            .await
            .is_ok()
        }
    })
    .await;
    assert_eq!(null_count(pg, &db).await, 3);
    proxy.shutdown().await;
}

/// Footprints live in the topic: a restarted replica and a second replica know the paths
/// learned through the first (no alert), and the counts of both add up.
async fn footprints_survive_restarts_and_are_shared(pg: Pg) {
    let (db, prefix, a, app) = learned(pg, "fp_shared", "alert").await;
    let b = start(
        pg,
        &prefix,
        &Replica {
            name: "b",
            rules: None,
            webhook: None,
        },
    )
    .await;
    mode_is(&b, APP, "alert").await;
    let through_b = connect_as(b.addr, &db, APP).await;
    baseline(&through_b, 10).await;
    drop(app);
    a.shutdown().await;
    let a = start(
        pg,
        &prefix,
        &Replica {
            name: "a",
            rules: None,
            webhook: None,
        },
    )
    .await;
    mode_is(&a, APP, "alert").await;
    let through_a = connect_as(a.addr, &db, APP).await;
    baseline(&through_a, 11).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in [&a, &b] {
        let m = metrics(p).await;
        assert_eq!(
            metric(&m, "hindsight_new_write_paths_total", ""),
            0.0,
            "{m}"
        );
    }
    // A new path through B is new for A too: alerted once, by B.
    through_b
        .execute("UPDATE folder SET tinum = $1 WHERE ticknum = 1", &[&"x"])
        .await
        .unwrap();
    harness::eventually("A learns B's new path", || {
        let a = &a;
        async move {
            let (_, body) = http(
                a.admin_addr,
                "GET",
                &format!("/footprints?application={APP}"),
                None,
                "",
            )
            .await;
            body.contains("\"columns\":[\"tinum\"]")
        }
    })
    .await;
    through_a
        .execute("UPDATE folder SET tinum = $1 WHERE ticknum = 2", &[&"y"])
        .await
        .unwrap();
    let all = alerts(&prefix, 1).await;
    assert_eq!(all.len(), 1, "{all:?}");
    // Counts: the simple-query UPDATE ran 3 times through A (learning), once through B, once
    // through the restarted A.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, body) = http(
        a.admin_addr,
        "GET",
        &format!("/footprints?application={APP}"),
        None,
        "",
    )
    .await;
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    let insert = list
        .iter()
        .find(|e| e["path"]["operation"] == "insert")
        .unwrap_or_else(|| panic!("{list:?}"));
    let total: u64 = insert["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 5, "{insert}");
    assert_eq!(insert["counts"]["b"], 1, "{insert}");
    a.shutdown().await;
    b.shutdown().await;
}

/// Two replicas, one control topic: a kill switch set through A refuses through B; cleared
/// through B, A writes again; a flag set through A opens B; a restarted replica keeps both.
async fn control_state_is_shared_by_replicas(pg: Pg) {
    let db = db_with_brieff(pg, "fp_control").await;
    let prefix = harness::random_prefix("fp_control");
    let ra = Replica {
        name: "a",
        rules: Some(rules_file("ctl_a", INCIDENT_RULES)),
        webhook: None,
    };
    let rb = Replica {
        name: "b",
        rules: Some(rules_file("ctl_b", INCIDENT_RULES)),
        webhook: None,
    };
    let a = start(pg, &prefix, &ra).await;
    let b = start(pg, &prefix, &rb).await;
    let via_b = connect_as(b.addr, &db, APP).await;
    via_b
        .simple_query("UPDATE folder SET tinum = 'b0'")
        .await
        .unwrap();

    let (status, body) = http(
        a.admin_addr,
        "PUT",
        &format!("/gates/killswitches/application/{APP}"),
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let acked = Instant::now();
    harness::eventually("B refuses after A's kill switch", || {
        let via_b = &via_b;
        async move {
            matches!(via_b.simple_query("UPDATE folder SET tinum = 'b1'").await, Err(e) if code(&e) == "HS011")
        }
    })
    .await;
    eprintln!(
        "kill switch through A refused through B after {:?}",
        acked.elapsed()
    );
    let (_, ks) = http(b.admin_addr, "GET", "/gates/killswitches", None, "").await;
    assert!(ks.contains(APP), "{ks}");

    // B restarts: still switched off.
    drop(via_b);
    b.shutdown().await;
    let b = start(pg, &prefix, &rb).await;
    let via_b = connect_as(b.addr, &db, APP).await;
    let err = via_b
        .simple_query("UPDATE folder SET tinum = 'b2'")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS011", "{err:?}");

    let (status, body) = http(
        b.admin_addr,
        "DELETE",
        &format!("/gates/killswitches/application/{APP}"),
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let via_a = connect_as(a.addr, &db, APP).await;
    harness::eventually("A writes again after B cleared it", || {
        let via_a = &via_a;
        async move {
            via_a
                .simple_query("UPDATE folder SET tinum = 'a1'")
                .await
                .is_ok()
        }
    })
    .await;

    // The flag: certification_v2 on for certification-v1, set through A, opens B.
    let err = via_b
        .execute("UPDATE brieff SET bfso = $1 WHERE bfkey = 1", &[&"new"])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS010", "{err:?}");
    let (status, body) = http(
        a.admin_addr,
        "PUT",
        "/gates/flags/certification_v2",
        None,
        &format!("{{\"for\": {{\"application_name\": [\"{APP}\"]}}}}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    harness::eventually("B lets the flagged write through", || {
        let via_b = &via_b;
        async move {
            via_b
                .execute("UPDATE brieff SET bfso = $1 WHERE bfkey = 1", &[&"new"])
                .await
                .is_ok()
        }
    })
    .await;
    // A restarts: the flag holds there too.
    drop(via_a);
    a.shutdown().await;
    let a = start(pg, &prefix, &ra).await;
    let via_a = connect_as(a.addr, &db, APP).await;
    via_a
        .execute("UPDATE brieff SET bfso = $1 WHERE bfkey = 2", &[&"new"])
        .await
        .unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

/// A tiny HTTP receiver: records each request body, answers 200.
async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/alerts", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(body.to_string());
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                            break;
                        }
                    }
                }
            });
        }
    });
    (url, rx)
}

/// Alerts are posted to the webhook (Slack-compatible `text`); a receiver that is down does
/// not affect the write, and the failed delivery is counted.
async fn webhook_delivers_and_a_dead_receiver_costs_nothing(pg: Pg) {
    let db = db_with_brieff(pg, "fp_hook").await;
    let (url, mut bodies) = receiver().await;
    let prefix = harness::random_prefix("fp_hook");
    let p = start(
        pg,
        &prefix,
        &Replica {
            name: "a",
            rules: None,
            webhook: Some(url),
        },
    )
    .await;
    set_mode(&p, APP, "alert").await;
    mode_is(&p, APP, "alert").await;
    let c = connect_as(p.addr, &db, APP).await;
    c.simple_query("UPDATE brieff SET bfso = NULL WHERE bfkey = 5")
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let body = tokio::time::timeout(Duration::from_secs(10), bodies.recv())
            .await
            .expect("webhook posts within 10 s")
            .unwrap();
        got.push(serde_json::from_str::<Value>(&body).unwrap());
    }
    assert!(
        got.iter()
            .any(|b| b["text"].as_str().unwrap().contains("new write path")),
        "{got:?}"
    );
    assert!(
        got.iter().any(|b| b["hindsight"]["type"] == "nulling"),
        "{got:?}"
    );
    p.shutdown().await;

    // A receiver that is down: the port of a listener closed just now.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    let prefix = harness::random_prefix("fp_hook_dead");
    let p = start(
        pg,
        &prefix,
        &Replica {
            name: "a",
            rules: None,
            webhook: Some(dead),
        },
    )
    .await;
    set_mode(&p, APP, "alert").await;
    mode_is(&p, APP, "alert").await;
    let c = connect_as(p.addr, &db, APP).await;
    c.simple_query("UPDATE brieff SET bfcorlid = 'z' WHERE bfkey = 6")
        .await
        .unwrap();
    harness::eventually("the failed delivery is counted", || {
        let p = &p;
        async move {
            metric(
                &metrics(p).await,
                "hindsight_webhook_deliveries_total",
                "outcome=\"failed\"",
            ) >= 1.0
        }
    })
    .await;
    p.shutdown().await;
}

async fn cli(prefix: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hindsight"))
        .arg("footprint")
        .args(args)
        .args([
            "--kafka-brokers",
            &harness::kafka_brokers(),
            "--topic-prefix",
            prefix,
        ])
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `hindsight footprint list|diff|approve|forget|mode` against the topics, no proxy involved:
/// diff shows only what appeared after the deploy; an approval made by the CLI reaches the
/// running replica; unknown ids exit 2.
#[tokio::test]
async fn footprint_cli_lists_diffs_and_approves() {
    let pg = Pg::V15;
    let (db, prefix, proxy, app) = learned(pg, "fp_cli", "enforce").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deploy = hindsight::audit::event::utc(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let err = app
        .simple_query("UPDATE brieff SET bfso = NULL WHERE bfkey = 9")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS012");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (rc, all, e) = cli(&prefix, &["list", "--application", APP]).await;
    assert_eq!(rc, 0, "{e}");
    assert!(
        all.contains("learned") && all.contains("UPDATE brieff (bfcorlid)"),
        "{all}"
    );
    let (rc, diff, e) = cli(&prefix, &["diff", "--since", &deploy, "--json"]).await;
    assert_eq!(rc, 0, "{e}");
    let new: Vec<Value> = diff
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        new.len(),
        1,
        "only the leaked path is new since the deploy: {diff}"
    );
    assert_eq!(new[0]["path"]["columns"], serde_json::json!(["bfso"]));
    assert_eq!(new[0]["status"], "unapproved");
    let id = new[0]["id"].as_str().unwrap().to_string();

    let (rc, _, e) = cli(&prefix, &["approve", "0123456789abcdef"]).await;
    assert_eq!(rc, 2, "unknown id: {e}");
    assert!(e.contains("footprint list"), "{e}");
    let (rc, _, e) = cli(&prefix, &["mode", APP, "sometimes"]).await;
    assert_eq!(rc, 2, "{e}");
    let (rc, out, e) = cli(&prefix, &["approve", &id, "--by", "reviewer"]).await;
    assert_eq!(rc, 0, "{e}");
    assert!(out.contains("approved"), "{out}");
    harness::eventually("the CLI's approval reaches the proxy", || {
        let app = &app;
        async move {
            app.simple_query("UPDATE brieff SET bfso = NULL WHERE bfkey = 9")
                .await
                .is_ok()
        }
    })
    .await;
    let (rc, _, e) = cli(&prefix, &["forget", &id]).await;
    assert_eq!(rc, 0, "{e}");
    harness::eventually("forgotten: refused again", || {
        let app = &app;
        async move {
            matches!(app.simple_query("UPDATE brieff SET bfso = NULL WHERE bfkey = 10").await, Err(e) if code(&e) == "HS012")
        }
    })
    .await;
    // The report applies decisions in their order: approved, then forgotten, then refused
    // anew (it used to apply approvals last, so a forgotten path was listed approved).
    harness::eventually("the list shows the forgotten path refused anew", || {
        let (prefix, id) = (&prefix, &id);
        async move {
            let (rc, all, e) = cli(prefix, &["list", "--application", APP, "--json"]).await;
            assert_eq!(rc, 0, "{e}");
            all.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .any(|v| v["id"] == id.as_str() && v["status"] == "unapproved")
        }
    })
    .await;
    let (rc, _, e) = cli(&prefix, &["mode", APP, "learn"]).await;
    assert_eq!(rc, 0, "{e}");
    mode_is(&proxy, APP, "learn").await;
    let _ = db;
    proxy.shutdown().await;
}

on_both!(
    incident_is_alerted_on_the_first_statement,
    incident_is_refused_in_enforce_mode,
    footprints_survive_restarts_and_are_shared,
    control_state_is_shared_by_replicas,
    webhook_delivers_and_a_dead_receiver_costs_nothing
);
