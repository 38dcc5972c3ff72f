//! Gates end to end: rules files, the admin API, and the wire through a capturing proxy.

use super::harness::{self, Pg};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls};

pub(super) const INCIDENT_RULES: &str = r#"
[[rule]]
name = "bfso-needs-certification-v2"
description = "Only the certification v2 code path may set the representative type"
tables = ["public.brieff"]
columns = ["bfso"]
operations = ["update"]
require_flag = "certification_v2"
action = "deny"

[[rule]]
name = "representative-never-null"
tables = ["public.brieff"]
when = 'after.bfso == null && before.bfso != null'
action = "deny"

[flags.certification_v2]
enabled = false
for = { application_name = ["certification-v2"] }
"#;

/// One HTTP/1.1 request to the admin endpoint: (status, body).
pub(super) async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub(super) async fn connect_as(addr: SocketAddr, db: &str, app: &str) -> Client {
    let conn = format!(
        "{} application_name={app}",
        harness::conn_str(addr, "postgres", db)
    );
    let (c, conn) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

struct Setup {
    db: String,
    prefix: String,
    rules: PathBuf,
    proxy: hindsight::proxy::Running,
}

pub(super) fn rules_file(label: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hs-gates-{label}-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("rules.toml");
    std::fs::write(&p, text).unwrap();
    p
}

async fn start(
    pg: Pg,
    rules: &std::path::Path,
    prefix: &str,
    token: &str,
) -> hindsight::proxy::Running {
    let (r, p, t) = (rules.to_path_buf(), prefix.to_string(), token.to_string());
    harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = p;
        c.gates.rules = Some(r);
        c.gates.poll_interval = std::time::Duration::from_millis(100);
        c.admin.token = t;
    })
    .await
}

async fn setup(pg: Pg, label: &str, rules: &str) -> Setup {
    let db = harness::fresh_db(pg, label).await;
    harness::connect(pg.addr(), "postgres", &db)
        .await
        .batch_execute(
            "CREATE TABLE brieff (bfkey int PRIMARY KEY, bfso text, bfcorlid text);
             INSERT INTO brieff SELECT g, 'rep' || g, 'c' || g FROM generate_series(1, 25) g;
             CREATE TABLE other (id int PRIMARY KEY, v text); INSERT INTO other VALUES (1, 'a');",
        )
        .await
        .unwrap();
    let prefix = harness::random_prefix(label);
    let rules = rules_file(label, rules);
    let proxy = start(pg, &rules, &prefix, "").await;
    Setup {
        db,
        prefix,
        rules,
        proxy,
    }
}

async fn nulls(pg: Pg, db: &str) -> i64 {
    harness::connect(pg.addr(), "postgres", db)
        .await
        .query_one("SELECT count(*) FROM brieff WHERE bfso IS NULL", &[])
        .await
        .unwrap()
        .get(0)
}

/// `err` is HS010 from the rule named `rule`.
fn assert_denied_by(err: &tokio_postgres::Error, rule: &str) {
    assert_eq!(code(err), "HS010", "{err:?}");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains(rule), "{message}");
}

pub(super) fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// The incident: the v1 application's leaked UPDATE is refused with the documented error, the
/// table is unchanged and the would-be values are on the topic as `blocked` events; once the
/// flag is on for it (admin API, no restart) a non-NULL write goes through, and the guard still
/// refuses setting the column to NULL (at COMMIT, like a deferred constraint).
async fn incident_is_refused_until_the_flag_is_on(pg: Pg) {
    let s = setup(pg, "gate_incident", INCIDENT_RULES).await;
    let v1 = connect_as(s.proxy.addr, &s.db, "certification-v1").await;
    let err = v1
        .simple_query("UPDATE brieff SET bfso = NULL WHERE bfkey < 19")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS010", "{err:?}");
    let db_err = err.as_db_error().unwrap();
    assert!(
        db_err.message().contains("bfso-needs-certification-v2"),
        "{}",
        db_err.message()
    );
    assert!(
        db_err.message().contains("certification_v2"),
        "{}",
        db_err.message()
    );
    assert!(
        db_err.hint().unwrap_or_default().contains("/gates/flags/"),
        "{:?}",
        db_err.hint()
    );
    // The extended protocol too.
    let err = v1
        .execute("UPDATE brieff SET bfso = NULL WHERE bfkey < $1", &[&19i32])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS010", "{err:?}");
    assert_eq!(nulls(pg, &s.db).await, 0, "table unchanged");
    // Both refusals ran on trial and were rolled back: 18 would-be changes each.
    let events = harness::read_topic_json(format!("{}.public.brieff", s.prefix), 36).await;
    assert_eq!(events.len(), 36, "{events:#?}");
    let extended = events
        .iter()
        .filter(|e| e["source"]["statement"].as_str().unwrap().contains("$1"))
        .count();
    assert_eq!(extended, 18);
    assert!(events.iter().all(|e| e["op"] == "blocked"
        && e["source"]["blocked_by"] == "bfso-needs-certification-v2"
        && e["after"]["bfso"].is_null()
        && e["before"]["bfso"].is_string()));
    // The session keeps working.
    assert_eq!(v1.simple_query("SELECT 1").await.unwrap().len(), 3);
    // Turn the flag on for v1 through the admin API: no restart.
    let (status, body) = http(
        s.proxy.admin_addr,
        "PUT",
        "/gates/flags/certification_v2",
        None,
        r#"{"for": {"application_name": ["certification-v2", "certification-v1"]}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let n = v1
        .execute(
            "UPDATE brieff SET bfso = $1 WHERE bfkey = $2",
            &[&"X", &1i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // The guard: never NULL, even with the flag on — refused at COMMIT, rolled back.
    let err = v1
        .simple_query("UPDATE brieff SET bfso = NULL WHERE bfkey = 2")
        .await
        .unwrap_err();
    assert_denied_by(&err, "representative-never-null");
    assert_eq!(nulls(pg, &s.db).await, 0);
    let (status, body) = http(s.proxy.admin_addr, "GET", "/gates/rules", None, "").await;
    assert_eq!(status, 200);
    let rules: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rules[0]["name"], "bfso-needs-certification-v2");
    assert!(rules[0]["hits"].as_u64().unwrap() >= 2, "{rules:#}");
    assert!(rules[1]["hits"].as_u64().unwrap() >= 1, "{rules:#}");
    let metrics = http(s.proxy.admin_addr, "GET", "/metrics", None, "")
        .await
        .1;
    assert!(
        metrics.contains(
            "hindsight_gate_decisions_total{outcome=\"deny\",rule=\"representative-never-null\"} 1"
        ),
        "{metrics}"
    );
    s.proxy.shutdown().await;
}

/// After a refusal inside an explicit transaction, the transaction is aborted exactly as after
/// any failed statement (both protocols); nothing of it commits.
async fn refusal_in_a_transaction_aborts_it(pg: Pg) {
    let s = setup(pg, "gate_tx", INCIDENT_RULES).await;
    let mut c = connect_as(s.proxy.addr, &s.db, "certification-v1").await;
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("UPDATE brieff SET bfcorlid = 'ok' WHERE bfkey = 3")
        .await
        .unwrap();
    let err = c
        .simple_query("UPDATE brieff SET bfso = 'x' WHERE bfkey = 3")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS010");
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(
        code(&err),
        "25P02",
        "aborted like after any failed statement: {err:?}"
    );
    c.simple_query("ROLLBACK").await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute(
        "UPDATE brieff SET bfcorlid = 'ok' WHERE bfkey = $1",
        &[&4i32],
    )
    .await
    .unwrap();
    let err = tx
        .execute(
            "UPDATE brieff SET bfso = $1 WHERE bfkey = $2",
            &[&"x", &4i32],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS010");
    let err = tx.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(code(&err), "25P02", "{err:?}");
    drop(tx);
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM brieff WHERE bfcorlid = 'ok' OR bfso = 'x'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing of either transaction committed");
    assert_eq!(
        c.simple_query("SELECT 1").await.unwrap().len(),
        3,
        "session usable"
    );
    s.proxy.shutdown().await;
}

/// Dry run: an `audit` rule lets the write through and its events name the rule. Hot reload:
/// a valid change applies without restart; an invalid file is rejected and the previous rules
/// stay in force.
async fn dry_run_and_hot_reload(pg: Pg) {
    let audit =
        "[[rule]]\nname = \"watch-other\"\ntables = [\"public.other\"]\naction = \"audit\"\n";
    let s = setup(pg, "gate_reload", audit).await;
    let c = connect_as(s.proxy.addr, &s.db, "web").await;
    c.simple_query("UPDATE other SET v = 'b' WHERE id = 1")
        .await
        .unwrap();
    let ev = harness::read_topic_raw(format!("{}.public.other", s.prefix), 1).await;
    let ev: Value = serde_json::from_slice(&ev[0].1).unwrap();
    assert_eq!(ev["op"], "u");
    assert_eq!(ev["source"]["dry_run_rule"], "watch-other");
    // Valid change: now deny (picked up by the file watcher).
    std::fs::write(&s.rules, audit.replace("\"audit\"", "\"deny\"")).unwrap();
    harness::eventually("the rule to deny", || async {
        c.simple_query("UPDATE other SET v = 'c' WHERE id = 1")
            .await
            .is_err()
    })
    .await;
    // Invalid file: rejected (also through the API), the deny stays.
    std::fs::write(&s.rules, "[[rule]]\nname = \"x\"\nbogus = 1\n").unwrap();
    let (status, body) = http(s.proxy.admin_addr, "POST", "/gates/reload", None, "").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("bogus") && body.contains("line 3"), "{body}");
    let err = c
        .simple_query("UPDATE other SET v = 'd' WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS010", "the previous rules stay in force");
    let metrics = http(s.proxy.admin_addr, "GET", "/metrics", None, "")
        .await
        .1;
    assert!(
        metrics.contains("hindsight_gate_reloads_total{outcome=\"rejected\"}"),
        "{metrics}"
    );
    s.proxy.shutdown().await;
}

/// Kill switch: one application's writes out of service (reads keep working, other
/// applications keep writing), still off after a restart, back on when cleared. The API
/// requires the token when one is set.
async fn kill_switch_survives_a_restart(pg: Pg) {
    let s = setup(pg, "gate_kill", "").await;
    s.proxy.shutdown().await;
    let proxy = start(pg, &s.rules, &s.prefix, "s3cret").await;
    let (status, _) = http(
        proxy.admin_addr,
        "PUT",
        "/gates/killswitches/application/web",
        None,
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http(
        proxy.admin_addr,
        "PUT",
        "/gates/killswitches/application/web",
        Some("wrong"),
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = http(
        proxy.admin_addr,
        "PUT",
        "/gates/killswitches/application/web",
        Some("s3cret"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let web = connect_as(proxy.addr, &s.db, "web").await;
    let batch = connect_as(proxy.addr, &s.db, "batch").await;
    let err = web
        .execute("UPDATE other SET v = $1", &[&"x"])
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS011", "{err:?}");
    assert!(
        err.as_db_error().unwrap().message().contains("read-only"),
        "{err:?}"
    );
    assert_eq!(
        web.query("SELECT * FROM other", &[]).await.unwrap().len(),
        1,
        "reads work"
    );
    batch
        .execute("UPDATE other SET v = $1", &[&"y"])
        .await
        .unwrap();
    drop((web, batch));
    proxy.shutdown().await;
    let proxy = start(pg, &s.rules, &s.prefix, "s3cret").await;
    let web = connect_as(proxy.addr, &s.db, "web").await;
    let err = web.simple_query("DELETE FROM other").await.unwrap_err();
    assert_eq!(code(&err), "HS011", "still off after a restart: {err:?}");
    let (status, _) = http(
        proxy.admin_addr,
        "DELETE",
        "/gates/killswitches/application/web",
        Some("s3cret"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    web.simple_query("UPDATE other SET v = 'z'").await.unwrap();
    proxy.shutdown().await;
}

/// Extended-protocol COPY and TRUNCATE a rule denies: refused with HS010 before anything
/// runs (no trial run: one statement-level `blocked` event each), the session usable after.
async fn denied_extended_copy_and_truncate_do_not_run(pg: Pg) {
    use futures_util::{pin_mut, SinkExt};
    const RULES: &str = r#"
[[rule]]
name = "other-is-frozen"
tables = ["public.other"]
operations = ["copy", "truncate"]
action = "deny"
"#;
    let s = setup(pg, "gate_copy", RULES).await;
    let c = connect_as(s.proxy.addr, &s.db, "loader").await;
    let err = c
        .copy_in::<_, &'static [u8]>("COPY other (id, v) FROM STDIN")
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(code(&err), "HS010", "{err:?}");
    // tokio-postgres 0.7 cannot use a connection again after a COPY that failed to start,
    // directly against PostgreSQL too (its CopyFail + Sync draws a second ReadyForQuery it
    // does not expect): go on with a new one.
    let c = connect_as(s.proxy.addr, &s.db, "loader").await;
    let err = c.execute("TRUNCATE other", &[]).await.unwrap_err();
    assert_eq!(code(&err), "HS010", "{err:?}");
    // brieff is not frozen: its COPY goes through on the same session.
    let sink = c
        .copy_in::<_, &'static [u8]>("COPY brieff (bfkey, bfso) FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(b"100\tnew\n").await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    assert_eq!(
        harness::count(&direct, "SELECT count(*) FROM other").await,
        1
    );
    let events = harness::read_topic_raw(format!("{}.statements", s.prefix), 2).await;
    let ops: Vec<(String, String)> = events
        .iter()
        .map(|(_, p)| {
            let e: serde_json::Value = serde_json::from_slice(p).unwrap();
            (
                e["op"].as_str().unwrap_or_default().to_string(),
                e["source"]["blocked_by"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("blocked".to_string(), "other-is-frozen".to_string()),
            ("blocked".to_string(), "other-is-frozen".to_string())
        ]
    );
    s.proxy.shutdown().await;
}

/// Writes in a WITH clause meet the same rules as any other: the statement rule refuses the
/// leaked UPDATE (on PostgreSQL 18 its trial run records the would-be changes), and the row
/// rule sees the CTE's rows at COMMIT.
async fn writes_in_a_with_clause_are_gated(pg: Pg) {
    let s = setup(pg, "gate_cte", INCIDENT_RULES).await;
    let v1 = connect_as(s.proxy.addr, &s.db, "certification-v1").await;
    let leaked = "WITH u AS (UPDATE brieff SET bfso = NULL WHERE bfkey < 4 RETURNING bfkey) SELECT count(*) FROM u";
    let err = v1.simple_query(leaked).await.unwrap_err();
    assert_eq!(code(&err), "HS010", "{err:?}");
    assert_eq!(nulls(pg, &s.db).await, 0, "table unchanged");
    if pg.major() < 18 {
        // Before 18 an UPDATE in a WITH clause cannot run on trial (nor be captured).
        s.proxy.shutdown().await;
        return;
    }
    let events = harness::read_topic_json(format!("{}.public.brieff", s.prefix), 3).await;
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(events.iter().all(|e| e["op"] == "blocked"
        && e["after"]["bfso"].is_null()
        && e["before"]["bfso"].is_string()));
    let v2 = connect_as(s.proxy.addr, &s.db, "certification-v2").await;
    let err = v2.simple_query(leaked).await.unwrap_err();
    assert_denied_by(&err, "representative-never-null");
    assert_eq!(nulls(pg, &s.db).await, 0, "rolled back at COMMIT");
    let rows = v2
        .simple_query("WITH u AS (UPDATE brieff SET bfso = 'v2' WHERE bfkey < 4 RETURNING bfkey) SELECT count(*) FROM u")
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "row, command complete and RowDescription");
    s.proxy.shutdown().await;
}

/// Regression: on PostgreSQL 18, schema changes hindsight's parser could not read while it had
/// PostgreSQL 17's grammar (a VIRTUAL generated column) were relayed unread, past the rules and
/// the kill switch, with the writes beside them. Now they are read (whole, since the parser has
/// PostgreSQL 18's grammar): the rule for the table's schema changes and the application's kill
/// switch refuse them, and nothing runs.
#[tokio::test]
async fn pg18_only_ddl_passed_the_gates_unread() {
    const RULES: &str = r#"
[[rule]]
name = "brieff-schema-frozen"
tables = ["public.brieff"]
operations = ["ddl"]
action = "deny"
"#;
    let pg = Pg::V18;
    let s = setup(pg, "gate_unparsed", RULES).await;
    let c = connect_as(s.proxy.addr, &s.db, "batch").await;
    for sql in [
        "ALTER TABLE brieff ADD COLUMN x int",
        "ALTER TABLE brieff ADD COLUMN x int GENERATED ALWAYS AS (bfkey) VIRTUAL",
        "UPDATE other SET v = 'b'; ALTER TABLE brieff ADD COLUMN x int GENERATED ALWAYS AS (bfkey) VIRTUAL",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        assert_denied_by(&err, "brieff-schema-frozen");
        let err = c.execute(sql, &[]).await;
        if !sql.starts_with("UPDATE") {
            assert_denied_by(&err.unwrap_err(), "brieff-schema-frozen");
        }
    }
    c.simple_query("CREATE TABLE free (a int, b int GENERATED ALWAYS AS (a) VIRTUAL)")
        .await
        .unwrap();
    let (status, body) = http(
        s.proxy.admin_addr,
        "PUT",
        "/gates/killswitches/application/web",
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let web = connect_as(s.proxy.addr, &s.db, "web").await;
    let err = web
        .simple_query("ALTER TABLE free ADD COLUMN c int GENERATED ALWAYS AS (a) VIRTUAL")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "HS011", "{err:?}");
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let columns = |t: &'static str| {
        let direct = &direct;
        async move {
            harness::count(
                direct,
                &format!(
                    "SELECT count(*) FROM information_schema.columns WHERE table_name = '{t}'"
                ),
            )
            .await
        }
    };
    assert_eq!(columns("brieff").await, 3, "no column added to brieff");
    assert_eq!(columns("free").await, 2, "the kill switch kept c out");
    assert_eq!(
        harness::count(&direct, "SELECT count(*) FROM other WHERE v = 'b'").await,
        0,
        "the UPDATE beside the refused ALTER did not run"
    );
    s.proxy.shutdown().await;
}

/// With a token configured, every call that changes something (gates and footprints) is
/// refused with 401 without it or with a wrong one (same length, longer, different case),
/// before it does anything.
#[tokio::test]
async fn every_admin_change_needs_the_token() {
    let s = setup(Pg::V15, "gate_tokens", "").await;
    s.proxy.shutdown().await;
    let proxy = start(Pg::V15, &s.rules, &s.prefix, "s3cret").await;
    let changes = [
        ("POST", "/gates/reload", ""),
        ("PUT", "/gates/flags/new_checkout", "true"),
        ("PUT", "/gates/killswitches/application/web", ""),
        ("DELETE", "/gates/killswitches/application/web", ""),
        ("PUT", "/footprints/modes/web", "\"enforce\""),
        ("DELETE", "/footprints/modes/web", ""),
        ("POST", "/footprints/0123456789abcdef/approve", ""),
        ("POST", "/footprints/0123456789abcdef/forget", ""),
    ];
    for (method, path, body) in changes {
        for token in [
            None,
            Some("s3creu"),
            Some("S3CRET"),
            Some("s3cret2"),
            Some(""),
        ] {
            let (status, reply) = http(proxy.admin_addr, method, path, token, body).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {reply}");
        }
    }
    let (status, _) = http(proxy.admin_addr, "GET", "/gates/killswitches", None, "").await;
    assert_eq!(status, 401, "reads of the gates API need it too");
    let (status, body) = http(
        proxy.admin_addr,
        "GET",
        "/gates/killswitches",
        Some("s3cret"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("web"), "nothing was switched: {body}");
    proxy.shutdown().await;
}

on_both!(
    writes_in_a_with_clause_are_gated,
    denied_extended_copy_and_truncate_do_not_run,
    incident_is_refused_until_the_flag_is_on,
    refusal_in_a_transaction_aborts_it,
    dry_run_and_hot_reload,
    kill_switch_survives_a_restart
);
