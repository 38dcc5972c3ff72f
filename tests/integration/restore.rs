//! `hindsight restore` against real servers: workloads run through a capturing proxy, the
//! audit topics are read back, and the restored tables are compared with control databases
//! that never saw the damage.

use super::harness::{self, Pg};
use hindsight::restore::apply::ApplyOptions;
use hindsight::restore::command::{execute, Command, Outcome};
use hindsight::restore::log::{LogOpener, LogSource};
use hindsight::restore::plan::{ConflictPolicy, Plan, Verdict};
use hindsight::restore::progress::Progress;
use hindsight::restore::run::{AsOf, Request};
use hindsight::restore::selection::Selection;
use hindsight::restore::RestoreError;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

const SEED: &str = "
CREATE TABLE representatives (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO representatives SELECT g, 'rep' || g FROM generate_series(1, 10) g;
CREATE TABLE brieff (
  bfkey int PRIMARY KEY, bfso text, bfcorlid text, rep int REFERENCES representatives,
  amount numeric(12,2));
INSERT INTO brieff SELECT g, (ARRAY['A','B','C'])[1 + g % 3], 'c' || g, 1 + g % 10, g * 1.5
  FROM generate_series(1, 100) g;";

async fn connect_as(addr: SocketAddr, db: &str, app: &str) -> Client {
    let conn = format!(
        "{} application_name={app}",
        harness::conn_str(addr, "postgres", db)
    );
    let (c, conn) = tokio_postgres::connect(&conn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}/{db} as {app}: {e}"));
    tokio::spawn(conn);
    c
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Everything in the tables, one line per row, for comparisons.
async fn dump(c: &Client, tables: &[&str]) -> String {
    let mut out = String::new();
    for t in tables {
        let rows = c
            .query(&format!("SELECT t::text FROM {t} t ORDER BY 1"), &[])
            .await
            .unwrap();
        for r in rows {
            out.push_str(&format!("{t} {}\n", r.get::<_, String>(0)));
        }
    }
    out
}

struct Setup {
    pg: Pg,
    db: String,
    control: String,
    prefix: String,
    proxy: hindsight::proxy::Running,
}

async fn setup(pg: Pg, label: &str, seed: &str) -> Setup {
    let db = harness::fresh_db(pg, label).await;
    let control = harness::fresh_db(pg, &format!("{label}_ctl")).await;
    for d in [&db, &control] {
        harness::connect(pg.addr(), "postgres", d)
            .await
            .batch_execute(seed)
            .await
            .unwrap();
    }
    let (prefix, proxy) = harness::capturing_proxy(pg, label, |_| {}).await;
    Setup {
        pg,
        db,
        control,
        prefix,
        proxy,
    }
}

impl Setup {
    /// The restore of what application `app` wrote between `since` and `until` (ms), through
    /// the proxy, applied.
    fn undo_window(&self, app: &str, since: i64, until: i64) -> Command {
        let selection = Selection {
            applications: vec![app.into()],
            since_ms: Some(since),
            until_ms: Some(until),
            ..Selection::default()
        };
        let mut cmd = self.command(selection, self.proxy.addr);
        cmd.apply = true;
        cmd
    }

    fn command(&self, selection: Selection, target: SocketAddr) -> Command {
        Command {
            log: LogSource {
                brokers: vec![harness::kafka_brokers()],
                topic_prefix: self.prefix.clone(),
                librdkafka: Vec::new(),
                tables: Vec::new(),
                timeout: Duration::from_secs(20),
            },
            open_log: LogOpener::kafka(),
            target: harness::conn_str(target, "postgres", &self.db),
            request: Request {
                selection,
                as_of: None,
                policy: ConflictPolicy::Column,
            },
            apply: false,
            options: ApplyOptions {
                tag: "test".into(),
                ..ApplyOptions::default()
            },
            sql_out: None,
            plan_out: None,
            apply_plan: None,
        }
    }
}

async fn run(cmd: &Command) -> (Result<Outcome, RestoreError>, String) {
    let mut out = Vec::new();
    let r = execute(cmd, &mut out, &Progress::hidden()).await;
    (r, String::from_utf8(out).unwrap())
}

/// Wait until the audit log has every transaction's END (published right after COMMIT).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The legitimate workload of the release, run both through the proxy and on the control
/// database (`web` and `billing` applications).
async fn legit_before(web: &Client) {
    web.batch_execute(
        "UPDATE brieff SET amount = amount + 1 WHERE bfkey % 7 = 0;
         UPDATE brieff SET bfcorlid = 'moved' WHERE bfkey IN (2, 4, 40);
         DELETE FROM brieff WHERE bfkey = 99;
         INSERT INTO brieff VALUES (101, 'A', 'new', 1, 10), (102, 'B', 'new', 2, 20);",
    )
    .await
    .unwrap();
}

async fn legit_during(web: &Client, billing: &Client) {
    web.execute("UPDATE brieff SET bfso = 'Z' WHERE bfkey = $1", &[&41i32])
        .await
        .unwrap();
    billing
        .batch_execute("INSERT INTO representatives VALUES (11, 'new rep'); UPDATE brieff SET rep = 11 WHERE bfkey = 60;")
        .await
        .unwrap();
}

async fn legit_after(web: &Client) {
    web.batch_execute(
        "UPDATE brieff SET amount = amount * 2 WHERE bfkey > 50; DELETE FROM brieff WHERE bfkey = 98;",
    )
    .await
    .unwrap();
}

/// The leaked code path: the representative type set to NULL on 18 rows, in two statements.
async fn incident(leak: &Client) {
    for (from, to) in [(2, 18), (20, 36)] {
        leak.execute(
            "UPDATE brieff SET bfso = NULL WHERE bfkey BETWEEN $1 AND $2 AND bfkey % 2 = 0 /*controller='certifications',action='update'*/",
            &[&from, &to],
        )
        .await
        .unwrap();
    }
}

/// The incident end to end: among legitimate changes by other applications, a leaked code path
/// nulls a column on 18 rows; one restore selecting that application and time window puts
/// exactly those back (through the proxy, so the restore is audited too), and the tables equal
/// a control database that had only the legitimate changes.
async fn incident_is_restored_exactly(pg: Pg) {
    let s = setup(pg, "rs_incident", SEED).await;
    let (web, billing, leak) = (
        connect_as(s.proxy.addr, &s.db, "web").await,
        connect_as(s.proxy.addr, &s.db, "billing").await,
        connect_as(s.proxy.addr, &s.db, "certification-v1").await,
    );
    let (cweb, cbilling) = (
        connect_as(pg.addr(), &s.control, "web").await,
        connect_as(pg.addr(), &s.control, "billing").await,
    );
    legit_before(&web).await;
    legit_before(&cweb).await;
    let since = now_ms();
    incident(&leak).await;
    legit_during(&web, &billing).await;
    legit_during(&cweb, &cbilling).await;
    let until = now_ms() + 1;
    legit_after(&web).await;
    legit_after(&cweb).await;
    settle().await;
    let selection = Selection {
        applications: vec!["certification-v1".into()],
        since_ms: Some(since),
        until_ms: Some(until),
        ..Selection::default()
    };
    let dir = std::env::temp_dir().join(format!("hs-restore-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = s.command(selection, s.proxy.addr);
    cmd.sql_out = Some(dir.join("restore.sql"));
    cmd.plan_out = Some(dir.join("plan.json"));
    // Dry run: the plan, the script, nothing written.
    let before = dump(
        &harness::connect(pg.addr(), "postgres", &s.db).await,
        &["brieff"],
    )
    .await;
    let (r, report) = run(&cmd).await;
    assert_eq!(r.unwrap(), Outcome::Planned, "{report}");
    assert!(report.contains("18 to revert, 0 conflict(s)"), "{report}");
    assert!(report.contains("bfso: null → \"C\""), "{report}");
    let script = std::fs::read_to_string(dir.join("restore.sql")).unwrap();
    assert_eq!(script.matches("\nUPDATE ").count(), 18, "{script}");
    let after_dry = dump(
        &harness::connect(pg.addr(), "postgres", &s.db).await,
        &["brieff"],
    )
    .await;
    assert_eq!(before, after_dry, "a dry run writes nothing");
    // Apply.
    cmd.apply = true;
    let (r, report) = run(&cmd).await;
    match r {
        Ok(Outcome::Applied(a)) => assert_eq!(a.reverted, 18, "{report}"),
        other => panic!("{other:?}\n{report}"),
    }
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let control = harness::connect(pg.addr(), "postgres", &s.control).await;
    let tables = ["brieff", "representatives"];
    assert_eq!(
        dump(&direct, &tables).await,
        dump(&control, &tables).await,
        "restored database = control database"
    );
    // The restore went through the proxy: it is itself on the audit topic, attributed.
    let events = harness::read_topic_raw(format!("{}.public.brieff", s.prefix), 110).await;
    let restore_events: Vec<serde_json::Value> = events
        .iter()
        .map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).unwrap())
        .filter(|e| e["source"]["application_name"] == "hindsight-restore")
        .collect();
    assert_eq!(restore_events.len(), 18);
    assert!(restore_events.iter().all(
        |e| e["source"]["tags"]["hindsight_restore"] == "test" && e["before"]["bfso"].is_null()
    ));
    s.proxy.shutdown().await;
}

/// One of the 18 rows is changed again by a legitimate user after the incident: it is a
/// conflict (exit code 3), reported with all three versions, and not overwritten; the other 17
/// are restored with --skip-conflicts. A plan applied after the database drifted is refused.
async fn later_changes_are_conflicts_and_drift_is_refused(pg: Pg) {
    let s = setup(pg, "rs_conflict", SEED).await;
    let web = connect_as(s.proxy.addr, &s.db, "web").await;
    let leak = connect_as(s.proxy.addr, &s.db, "certification-v1").await;
    let cweb = connect_as(pg.addr(), &s.control, "web").await;
    incident(&leak).await;
    for c in [&web, &cweb] {
        c.execute(
            "UPDATE brieff SET bfso = 'fixed by hand' WHERE bfkey = 10",
            &[],
        )
        .await
        .unwrap();
    }
    settle().await;
    let selection = Selection {
        tags: vec![("controller".into(), "certifications".into())],
        ..Selection::default()
    };
    let dir = std::env::temp_dir().join(format!("hs-restore-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = s.command(selection, s.pg.addr());
    cmd.plan_out = Some(dir.join("plan.json"));
    let (r, report) = run(&cmd).await;
    assert_eq!(r.unwrap(), Outcome::PlannedWithConflicts(1), "{report}");
    assert_eq!(Outcome::PlannedWithConflicts(1).exit_code(), 3);
    assert!(report.contains("CONFLICT {\"bfkey\":10}"), "{report}");
    assert!(
        report.contains("actual:   {") && report.contains("fixed by hand"),
        "{report}"
    );
    // Apply refuses without --skip-conflicts.
    let mut apply = cmd.clone();
    apply.apply = true;
    apply.plan_out = None;
    let (r, _) = run(&apply).await;
    assert!(matches!(r, Err(RestoreError::Conflicts(1))), "{r:?}");
    // Drift between plan and apply: a reviewed plan, then someone changes a planned row.
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    // A column the plan does not write moving is no drift; one it writes is.
    direct
        .execute("UPDATE brieff SET bfcorlid = 'moved' WHERE bfkey = 16", &[])
        .await
        .unwrap();
    direct
        .execute("UPDATE brieff SET bfso = 'drift' WHERE bfkey = 12", &[])
        .await
        .unwrap();
    let mut replay = cmd.clone();
    replay.plan_out = None;
    replay.apply_plan = Some(dir.join("plan.json"));
    replay.options.skip_conflicts = true;
    let before = dump(&direct, &["brieff"]).await;
    let (r, _) = run(&replay).await;
    let what_drifted = |r: &Result<Outcome, RestoreError>| match r {
        Err(RestoreError::Drift(what)) => what.clone(),
        _ => String::new(),
    };
    match &r {
        Err(e @ RestoreError::Drift(what)) => {
            assert!(what.contains("\"bfkey\":12"), "{what}");
            assert_eq!(e.exit_code(), 4);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(before, dump(&direct, &["brieff"]).await, "nothing applied");
    assert!(!what_drifted(&r).contains("\"bfkey\":16"), "{r:?}");
    for sql in [
        "UPDATE brieff SET bfso = NULL WHERE bfkey = 12",
        "UPDATE brieff SET bfcorlid = 'c16' WHERE bfkey = 16",
    ] {
        direct.execute(sql, &[]).await.unwrap();
    }
    // Re-planned and applied, skipping the conflict: 17 rows back, the hand fix kept.
    apply.options.skip_conflicts = true;
    let (r, report) = run(&apply).await;
    match r {
        Ok(Outcome::Applied(a)) => {
            assert_eq!((a.reverted, a.skipped_conflicts), (17, 1), "{report}")
        }
        other => panic!("{other:?}\n{report}"),
    }
    let control = harness::connect(pg.addr(), "postgres", &s.control).await;
    assert_eq!(
        dump(&direct, &["brieff"]).await,
        dump(&control, &["brieff"]).await
    );
    s.proxy.shutdown().await;
}

const FK_SEED: &str = "
CREATE TABLE parent (id int PRIMARY KEY, v text);
CREATE TABLE child (id int PRIMARY KEY, parent int NOT NULL REFERENCES parent, v text);
CREATE TABLE loose (id int PRIMARY KEY, v text);
CREATE TABLE nokey (a int, b text);
INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 5) g;
INSERT INTO child SELECT g, 1 + g % 5, 'c' || g FROM generate_series(1, 10) g;
INSERT INTO loose SELECT g, 'l' || g FROM generate_series(1, 5) g;
INSERT INTO nokey VALUES (1, 'x'), (1, 'x'), (2, 'y');";

const FK_TABLES: [&str; 4] = ["parent", "child", "loose", "nokey"];

/// One transaction that deletes a parent with its children, inserts a parent with a child,
/// changes a primary key and touches a table without a key; restoring it (selected by txid,
/// by transaction id, by table + key, and by event ids) brings back exactly the state before,
/// with statements ordered so that foreign keys hold.
async fn inserts_deletes_key_changes_in_foreign_key_order(pg: Pg) {
    let s = setup(pg, "rs_fk", FK_SEED).await;
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let c = connect_as(s.proxy.addr, &s.db, "batch").await;
    let snapshot = dump(&direct, &FK_TABLES).await;
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(
        "DELETE FROM child WHERE parent = 2;
         DELETE FROM parent WHERE id = 2;
         INSERT INTO parent VALUES (6, 'p6');
         INSERT INTO child VALUES (11, 6, 'c11');
         UPDATE loose SET id = 50, v = 'moved' WHERE id = 5;
         DELETE FROM nokey WHERE b = 'y';
         UPDATE nokey SET b = 'z' WHERE a = 1;",
    )
    .await
    .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let after = dump(&direct, &FK_TABLES).await;
    settle().await;
    let events = harness::read_topic_raw(format!("{}.public.parent", s.prefix), 2).await;
    let first: serde_json::Value = serde_json::from_slice(&events[0].1).unwrap();
    let txid = first["source"]["txId"].as_i64().expect("txId");
    let tx = first["transaction"]["id"].as_str().unwrap().to_string();
    for (what, selection) in [
        (
            "txid",
            Selection {
                txids: vec![txid],
                ..Selection::default()
            },
        ),
        (
            "transaction",
            Selection {
                transactions: vec![tx.clone()],
                ..Selection::default()
            },
        ),
    ] {
        let mut cmd = s.command(selection, pg.addr());
        cmd.apply = true;
        let (r, report) = run(&cmd).await;
        assert!(
            matches!(r, Ok(Outcome::Applied(_))),
            "{what}: {r:?}\n{report}"
        );
        assert_eq!(
            snapshot,
            dump(&direct, &FK_TABLES).await,
            "{what}: state before the transaction"
        );
        // Put the transaction's effect back for the next selection (directly: not audited).
        direct
            .batch_execute(
                "BEGIN; DELETE FROM child WHERE parent = 2; DELETE FROM parent WHERE id = 2;
            INSERT INTO parent VALUES (6, 'p6'); INSERT INTO child VALUES (11, 6, 'c11');
            UPDATE loose SET id = 50, v = 'moved' WHERE id = 5; DELETE FROM nokey WHERE b = 'y';
            UPDATE nokey SET b = 'z' WHERE a = 1; COMMIT;",
            )
            .await
            .unwrap();
        assert_eq!(after, dump(&direct, &FK_TABLES).await);
    }
    // Table + key: only the key change of `loose` (followed from 5 to 50).
    let selection = Selection {
        tables: vec!["public.loose".into()],
        keys: vec![serde_json::json!({"id": 50}).as_object().unwrap().clone()],
        ..Selection::default()
    };
    let mut cmd = s.command(selection, pg.addr());
    cmd.apply = true;
    let (r, report) = run(&cmd).await;
    assert!(
        matches!(r, Ok(Outcome::Applied(ref a)) if a.reverted == 1),
        "{r:?}\n{report}"
    );
    let loose = dump(&direct, &["loose"]).await;
    assert!(
        loose.contains("loose (5,l5)") && !loose.contains("(50,"),
        "{loose}"
    );
    // Event ids: the plan names them; select the two child events only.
    let child = harness::read_topic_raw(format!("{}.public.child", s.prefix), 3).await;
    let ids: Vec<String> = child
        .iter()
        .map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).unwrap())
        .filter(|e| e["op"] == "d")
        .map(|e| {
            format!(
                "{}/{}",
                e["transaction"]["id"].as_str().unwrap(),
                e["transaction"]["total_order"]
            )
        })
        .collect();
    assert_eq!(ids.len(), 2);
    let mut cmd = s.command(
        Selection {
            events: ids,
            ..Selection::default()
        },
        pg.addr(),
    );
    let (r, report) = run(&cmd).await;
    assert_eq!(r.unwrap(), Outcome::Planned, "{report}");
    assert!(
        report.contains("2 row(s) in 1 table(s): 2 to revert"),
        "{report}"
    );
    // Their parent (2) stays deleted (not selected): the re-inserts violate the foreign key,
    // the server says so, and nothing is applied.
    let before = dump(&direct, &FK_TABLES).await;
    cmd.apply = true;
    let (r, _) = run(&cmd).await;
    assert!(matches!(r, Err(RestoreError::Db { .. })), "{r:?}");
    assert_eq!(before, dump(&direct, &FK_TABLES).await, "nothing applied");
    s.proxy.shutdown().await;
}

/// `--as-of T --into copy` reconstructs the table as it was at T (compared with a snapshot taken
/// at T) without touching the table; users and applications select too.
async fn as_of_reconstructs_a_snapshot(pg: Pg) {
    let s = setup(pg, "rs_asof", SEED).await;
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let web = connect_as(s.proxy.addr, &s.db, "web").await;
    legit_before(&web).await;
    settle().await;
    let snapshot = dump(&direct, &["brieff"]).await;
    let t = now_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    incident(&web).await;
    legit_after(&web).await;
    let now = dump(&direct, &["brieff"]).await;
    assert_ne!(snapshot, now);
    settle().await;
    let mut cmd = s.command(Selection::default(), pg.addr());
    cmd.request.as_of = Some(AsOf {
        ms: t,
        table: "public.brieff".into(),
    });
    cmd.options.into = Some("public.brieff_asof".into());
    cmd.apply = true;
    let (r, report) = run(&cmd).await;
    assert!(matches!(r, Ok(Outcome::Applied(_))), "{r:?}\n{report}");
    let copy = dump(&direct, &["brieff_asof"])
        .await
        .replace("brieff_asof ", "brieff ");
    assert_eq!(copy, snapshot, "the copy is the table as of T");
    assert_eq!(
        now,
        dump(&direct, &["brieff"]).await,
        "the table itself is untouched"
    );
    // A user that made no change selects nothing.
    let cmd = s.command(
        Selection {
            users: vec!["nobody".into()],
            ..Selection::default()
        },
        pg.addr(),
    );
    let (r, report) = run(&cmd).await;
    assert_eq!(r.unwrap(), Outcome::Planned);
    assert!(report.contains("0 row(s)"), "{report}");
    s.proxy.shutdown().await;
}

/// Each column of `table` that differs between two databases, row by row (`bfkey`), for a
/// failure message that says exactly what is wrong.
async fn column_diff(a: &Client, b: &Client, table: &str, key: &str) -> Vec<String> {
    let q = format!("SELECT {key}::text, (SELECT jsonb_object_agg(k, v) FROM jsonb_each_text(to_jsonb(t)) AS j(k, v))::text FROM {table} t");
    async fn read(c: &Client, q: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        let rows = c.query(q, &[]).await.unwrap();
        rows.into_iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    serde_json::from_str(&r.get::<_, String>(1)).unwrap(),
                )
            })
            .collect()
    }
    let (x, y) = (read(a, &q).await, read(b, &q).await);
    let mut out = Vec::new();
    for k in x
        .keys()
        .chain(y.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (x.get(k), y.get(k)) {
            (Some(r), Some(s)) => {
                for (col, v) in r.as_object().unwrap() {
                    if s.get(col) != Some(v) {
                        out.push(format!(
                            "{table} {key}={k} {col}: {v} vs {}",
                            s.get(col).unwrap_or(&serde_json::Value::Null)
                        ));
                    }
                }
            }
            (r, s) => out.push(format!("{table} {key}={k}: {r:?} vs {s:?}")),
        }
    }
    out
}

/// The issue's scenario: 18 rows nulled in `bfso` by certification-v1 among 300 writes by
/// another application, which goes on editing other columns of the damaged rows. The restore
/// puts `bfso` back and keeps those edits; a row put back by hand shows as already restored; a
/// row whose `bfso` someone set to a third value is the one conflict and stays untouched with
/// --skip-conflicts; a row the selection changed in two columns, one of which someone set since,
/// gets the other column back and keeps the conflicting one. A deleted row whose unique value or
/// key is taken since is a conflict that names it. The table then equals a control database
/// column by column.
async fn other_applications_later_edits_are_kept_not_conflicts(pg: Pg) {
    let seed = format!(
        "{SEED}
        CREATE TABLE labels (id int PRIMARY KEY, name text UNIQUE);
        INSERT INTO labels VALUES (1, 'alpha'), (3, 'gamma');"
    );
    let s = setup(pg, "rs_merge", &seed).await;
    let (reader, leak, dba) = (
        connect_as(s.proxy.addr, &s.db, "reader").await,
        connect_as(s.proxy.addr, &s.db, "certification-v1").await,
        connect_as(s.proxy.addr, &s.db, "dba").await,
    );
    let (creader, cdba) = (
        connect_as(pg.addr(), &s.control, "reader").await,
        connect_as(pg.addr(), &s.control, "dba").await,
    );
    let amounts = "UPDATE brieff SET amount = amount + 1 WHERE bfkey = $1";
    for i in 0..150 {
        for c in [&reader, &creader] {
            c.execute(amounts, &[&(1 + i % 100)]).await.unwrap();
        }
    }
    incident(&leak).await;
    leak.batch_execute(
        "DELETE FROM labels /*controller='certifications'*/;
         UPDATE brieff SET bfso = NULL, bfcorlid = 'leaked' WHERE bfkey = 40;",
    )
    .await
    .unwrap();
    for i in 0..147 {
        for c in [&reader, &creader] {
            c.execute(amounts, &[&(1 + (i * 7) % 100)]).await.unwrap();
        }
    }
    for c in [&reader, &creader] {
        c.execute(
            "UPDATE brieff SET bfcorlid = 'dispatched-' || bfkey WHERE bfkey IN (4, 6, 8)",
            &[],
        )
        .await
        .unwrap();
    }
    // After the damage: someone puts one row back by hand, someone sets another to a third value.
    for c in [&dba, &cdba] {
        c.batch_execute(
            "UPDATE brieff SET bfso = (ARRAY['A','B','C'])[1 + bfkey % 3] WHERE bfkey = 12;
             UPDATE brieff SET bfso = 'third' WHERE bfkey = 14;
             UPDATE brieff SET bfcorlid = 'fixed-40' WHERE bfkey = 40;",
        )
        .await
        .unwrap();
    }
    // Rows the incident deleted whose unique value / key another application takes since.
    reader
        .batch_execute("INSERT INTO labels VALUES (2, 'alpha'), (3, 'other')")
        .await
        .unwrap();
    settle().await;
    let selection = Selection {
        applications: vec!["certification-v1".into()],
        ..Selection::default()
    };
    let dir = std::env::temp_dir().join(format!("hs-restore-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = s.command(selection, s.pg.addr());
    cmd.plan_out = Some(dir.join("plan.json"));
    let (r, report) = run(&cmd).await;
    assert_eq!(r.unwrap(), Outcome::PlannedWithConflicts(4), "{report}");
    for want in [
        "21 row(s) in 2 table(s): 16 to revert, 4 conflict(s), 0 unchanged, 1 already restored",
        "  CONFLICT {\"bfkey\":40}: column(s) bfcorlid changed since to other values; --skip-conflicts still does: update bfso: null → \"B\"",
        "  already  {\"bfkey\":12}",
        "  CONFLICT {\"bfkey\":14}: column(s) bfso changed since",
        "the selection left null, the target is \"C\", the row now holds \"third\"",
        "keep     bfcorlid = \"dispatched-4\", changed since by",
        "collide on (name) with the row {\"id\":2}",
        "  CONFLICT {\"id\":3}: a row with this key exists again",
    ] {
        assert!(report.contains(want), "missing {want:?} in\n{report}");
    }
    // The plan file carries the same, per column.
    let plan: Plan =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
    let row = |k: i64| {
        plan.rows
            .iter()
            .find(|r| r.key.get("bfkey") == Some(&serde_json::json!(k)))
            .unwrap()
    };
    let verdict = |k: i64, col: &str| {
        row(k)
            .columns
            .iter()
            .find(|c| c.column == col)
            .map(|c| c.verdict.clone())
    };
    assert!(
        matches!(verdict(4, "bfso"), Some(Verdict::Restore { .. })),
        "{:?}",
        row(4)
    );
    assert!(
        matches!(verdict(4, "bfcorlid"), Some(Verdict::Keep { changed_by, .. }) if changed_by.len() == 1),
        "{:?}",
        row(4)
    );
    assert!(
        matches!(verdict(4, "amount"), Some(Verdict::Keep { .. })),
        "{:?}",
        row(4)
    );
    assert!(
        matches!(verdict(12, "bfso"), Some(Verdict::AlreadyRestored)),
        "{:?}",
        row(12)
    );
    assert!(
        matches!(verdict(14, "bfso"), Some(Verdict::Conflict { .. })),
        "{:?}",
        row(14)
    );
    // The whole-row policy calls every damaged row that anything touched since a conflict.
    let mut by_row = cmd.clone();
    by_row.plan_out = None;
    by_row.request.policy = ConflictPolicy::Row;
    let (r, report) = run(&by_row).await;
    let touched_since = row_count_touched_since(&plan);
    assert!(touched_since > 5, "{touched_since}");
    assert_eq!(
        r.unwrap(),
        Outcome::PlannedWithConflicts(touched_since + 2),
        "{report}"
    );
    // Apply, skipping conflicts: through the proxy, so the restore is audited too.
    let mut apply = s.command(cmd.request.selection.clone(), s.proxy.addr);
    apply.apply = true;
    apply.options.skip_conflicts = true;
    let (r, report) = run(&apply).await;
    match r {
        Ok(Outcome::Applied(a)) => assert_eq!(
            (a.reverted, a.skipped_conflicts, a.unchanged),
            (17, 3, 1),
            "{report}"
        ),
        other => panic!("{other:?}\n{report}"),
    }
    // Row 40: bfso restored, its conflicting bfcorlid left alone and listed.
    assert!(
        report.contains("left alone (conflicting columns of rows otherwise restored): public.brieff {\"bfkey\":40} bfcorlid"),
        "{report}"
    );
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let control = harness::connect(pg.addr(), "postgres", &s.control).await;
    let diff = column_diff(&direct, &control, "brieff", "bfkey").await;
    assert!(
        diff.is_empty(),
        "restored table differs from the control:\n{}\n{report}",
        diff.join("\n")
    );
    assert_eq!(
        dump(&direct, &["brieff"]).await,
        dump(&control, &["brieff"]).await
    );
    assert_eq!(
        dump(&direct, &["labels"]).await,
        "labels (2,alpha)\nlabels (3,other)\n",
        "the conflicting deleted rows stay deleted"
    );
    s.proxy.shutdown().await;
}

/// Damaged rows with any change after the incident (the whole-row policy's conflicts).
fn row_count_touched_since(plan: &Plan) -> usize {
    plan.rows
        .iter()
        .filter(|r| r.table == "public.brieff" && !r.outside.is_empty())
        .count()
}

/// Generated SQL (capture's pre-reads, restore's reads and writes) with hostile names and
/// values: a schema and table whose names need quoting (quotes, a semicolon, spaces, unicode,
/// a reserved word), columns named `from`, `it's`, `back\slash`, `naïve 名`, and values with
/// quotes, backslashes, `$$`, NUL-free control characters and emoji. A damaging UPDATE, an
/// INSERT and a DELETE through capture are restored exactly. (A jsonb column holding JSON
/// `null` is left out: images cannot tell it from SQL NULL; README "Values round-trip".)
async fn hostile_identifiers_and_values_restore_exactly(pg: Pg) {
    let seed = r#"
CREATE SCHEMA "select";
CREATE TABLE "select"."Order ""Details""; DROP TABLE x" (
  "from" int PRIMARY KEY, "it's" text, "back\slash" text, "naïve 名" jsonb);
INSERT INTO "select"."Order ""Details""; DROP TABLE x" VALUES
  (1, 'O''Brien; DROP TABLE y; --', E'C:\\temp\\new\n', '{"k": "v''\"\\"}'),
  (2, '$$ $tag$ ', E'tab\there', '[1, "名前", "🙂"]'),
  (3, 'plain', NULL, NULL);"#;
    let s = setup(pg, "rs_hostile", seed).await;
    let table = r#""select"."Order ""Details""; DROP TABLE x""#;
    let leak = connect_as(s.proxy.addr, &s.db, "leak").await;
    let since = now_ms();
    leak.batch_execute(&format!(
        r#"UPDATE {table} SET "it's" = NULL, "back\slash" = 'x''y\z' WHERE "from" IN (1, 2);
           DELETE FROM {table} WHERE "from" = 3;
           INSERT INTO {table} VALUES (4, E'new\\\'one', 'ü', '{{"a": 1}}');"#
    ))
    .await
    .unwrap();
    let until = now_ms() + 1;
    settle().await;
    let cmd = s.undo_window("leak", since, until);
    let (r, report) = run(&cmd).await;
    assert!(matches!(r, Ok(Outcome::Applied(_))), "{r:?}\n{report}");
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let control = harness::connect(pg.addr(), "postgres", &s.control).await;
    assert_eq!(
        dump(&direct, &[table]).await,
        dump(&control, &[table]).await,
        "restored table differs from the untouched control\n{report}"
    );
    s.proxy.shutdown().await;
}

const CASCADE_SEED: &str = "
CREATE TABLE brieff (bfkey int PRIMARY KEY, bfso text);
INSERT INTO brieff SELECT g, 'so' || g FROM generate_series(1, 30) g;
CREATE TABLE representatives (rid int PRIMARY KEY, bfkey int REFERENCES brieff ON DELETE CASCADE, name text);
INSERT INTO representatives SELECT g, g % 30 + 1, 'rep' || g FROM generate_series(1, 60) g;
CREATE TABLE rep_notes (nid int PRIMARY KEY, rid int REFERENCES representatives ON DELETE CASCADE, body text);
INSERT INTO rep_notes SELECT g, g % 60 + 1, 'note' || g FROM generate_series(1, 90) g;
CREATE TABLE memo (mid int PRIMARY KEY, bfkey int REFERENCES brieff ON DELETE SET NULL);
INSERT INTO memo SELECT g, g FROM generate_series(1, 30) g;";

/// The incident with a cascade (the demo schema's `representatives.bfkey … ON DELETE
/// CASCADE`): a leaked code path deletes case rows, their representatives (and their notes)
/// go with them and memos lose their reference. One restore of that application's window
/// brings back the cases and everything the cascades changed, and the tables equal a control
/// database that only had the legitimate changes.
async fn leaked_cascading_delete_is_restored_with_its_children(pg: Pg) {
    let s = setup(pg, "rs_cascade", CASCADE_SEED).await;
    let (web, leak) = (
        connect_as(s.proxy.addr, &s.db, "web").await,
        connect_as(s.proxy.addr, &s.db, "certification-v1").await,
    );
    let cweb = connect_as(pg.addr(), &s.control, "web").await;
    let legit =
        "UPDATE brieff SET bfso = 'web' WHERE bfkey % 5 = 0; DELETE FROM brieff WHERE bfkey = 30;";
    web.batch_execute(legit).await.unwrap();
    cweb.batch_execute(legit).await.unwrap();
    let since = now_ms();
    leak.execute(
        "DELETE FROM brieff WHERE bfkey BETWEEN $1 AND $2",
        &[&3i32, &6i32],
    )
    .await
    .unwrap();
    leak.batch_execute("DELETE FROM brieff WHERE bfkey IN (11, 12)")
        .await
        .unwrap();
    let until = now_ms() + 1;
    let later = "UPDATE representatives SET name = 'kept' WHERE rid = 1;";
    web.batch_execute(later).await.unwrap();
    cweb.batch_execute(later).await.unwrap();
    settle().await;
    let mut cmd = s.undo_window("certification-v1", since, until);
    cmd.apply = false;
    // The plan shows each cascaded row's parent, and each parent what its cascade reached.
    let (r, report) = run(&cmd).await;
    assert_eq!(r.unwrap(), Outcome::Planned, "{report}");
    assert!(
        report.contains("(cascade of public.brieff {\"bfkey\":3} via representatives_bfkey_fkey)"),
        "{report}"
    );
    assert!(
        report.contains("with its cascade: 2 row(s) of public.representatives (listed there)"),
        "{report}"
    );
    assert!(
        report.contains("with its cascade: 1 row(s) of public.memo (listed there)"),
        "{report}"
    );
    cmd.apply = true;
    let (r, report) = run(&cmd).await;
    // 6 cases, 12 representatives, 18 notes, 6 memos.
    match r {
        Ok(Outcome::Applied(a)) => assert_eq!(a.reverted, 42, "{report}"),
        other => panic!("{other:?}\n{report}"),
    }
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let control = harness::connect(pg.addr(), "postgres", &s.control).await;
    let tables = ["brieff", "representatives", "rep_notes", "memo"];
    assert_eq!(
        dump(&direct, &tables).await,
        dump(&control, &tables).await,
        "restored database = control database\n{report}"
    );
    s.proxy.shutdown().await;
}

/// The demo schema itself (`schema/demo.sql`, whose `representatives.bfkey … ON DELETE
/// CASCADE` the issue names): a leaked DELETE of case rows takes their representatives with
/// it; the restore of that application's window brings back both, exactly.
async fn demo_schema_incident_restores_cases_and_representatives(pg: Pg) {
    let seed = format!(
        "{}\nINSERT INTO representatives (bfkey, name, kind) \
         SELECT 'C' || lpad((g % 200 + 1)::text, 6, '0'), 'rep ' || g, (ARRAY['attorney', 'agent'])[1 + g % 2] \
         FROM generate_series(1, 400) g;",
        include_str!("../../schema/demo.sql")
    );
    let s = setup(pg, "rs_demo", &seed).await;
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let tables = ["brieff", "representatives"];
    let before = dump(&direct, &tables).await;
    let leak = connect_as(s.proxy.addr, &s.db, "certification-v1").await;
    let since = now_ms();
    let n = leak
        .execute("DELETE FROM brieff WHERE bfregoff = $1", &[&"RO17"])
        .await
        .unwrap();
    assert!(n > 0);
    let until = now_ms() + 1;
    settle().await;
    let cmd = s.undo_window("certification-v1", since, until);
    let (r, report) = run(&cmd).await;
    // Each case has 2 representatives.
    match r {
        Ok(Outcome::Applied(a)) => assert_eq!(a.reverted as u64, n * 3, "{report}"),
        other => panic!("{other:?}\n{report}"),
    }
    // Every column as it was, `updated_at` (the seed's now()) included.
    assert_eq!(
        dump(&direct, &tables).await,
        before,
        "restored database = database before the leak\n{report}"
    );
    s.proxy.shutdown().await;
}

/// `kafka.topic_routing = "database"`, switched on while the table's earlier changes sit in its
/// own topic: the incident is written through a proxy that routes every table of the database
/// to `<prefix>.changes-<db>` (its END names that topic), a hand fix of one of its rows through
/// a proxy on the table's topic. The restore reads both layouts as one log: the hand fix is a
/// conflict, the other 17 rows come back, and the tables equal the control database. Selecting
/// the table (`--table`) still reads the database's topic.
async fn topic_routing_by_database_restores_across_both_layouts(pg: Pg) {
    use hindsight::audit::kafka::TopicRouting;
    let s = setup(pg, "rs_routing", SEED).await;
    let prefix = s.prefix.clone();
    let by_db = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = prefix;
        c.kafka.topic_routing = TopicRouting::Database;
    })
    .await;
    let web = connect_as(s.proxy.addr, &s.db, "web").await;
    let cweb = connect_as(pg.addr(), &s.control, "web").await;
    legit_before(&web).await;
    legit_before(&cweb).await;
    incident(&connect_as(by_db.addr, &s.db, "certification-v1").await).await;
    let fix = "UPDATE brieff SET bfso = 'fixed by hand' WHERE bfkey = 10";
    web.execute(fix, &[]).await.unwrap();
    cweb.execute(fix, &[]).await.unwrap();
    let (bweb, bbilling) = (
        connect_as(by_db.addr, &s.db, "web").await,
        connect_as(by_db.addr, &s.db, "billing").await,
    );
    let (cbweb, cbilling) = (
        connect_as(pg.addr(), &s.control, "web").await,
        connect_as(pg.addr(), &s.control, "billing").await,
    );
    legit_during(&bweb, &bbilling).await;
    legit_during(&cbweb, &cbilling).await;
    settle().await;
    // The incident's 18 rows and the later writes are in the database's topic, not brieff's.
    let db_topic = format!("{}.changes-{}", s.prefix, s.db);
    let routed = harness::read_topic_json(db_topic.clone(), 21).await;
    let tables: Vec<String> = routed
        .iter()
        .map(|e| format!("{}.{}", e["source"]["schema"], e["source"]["table"]))
        .collect();
    assert_eq!(
        routed.len(),
        21,
        "18 + bfso 'Z' + a representative + rep 11: {tables:?}"
    );
    assert!(
        tables.iter().any(|t| t.contains("representatives")),
        "{tables:?}"
    );
    let txs = harness::read_topic_json(format!("{}.transaction", s.prefix), 1).await;
    assert!(
        txs.iter()
            .any(|t| t["data_collections"][0]["topic"] == db_topic.as_str()),
        "an END names the database's topic: {txs:?}"
    );
    let selection = Selection {
        tags: vec![("controller".into(), "certifications".into())],
        ..Selection::default()
    };
    let mut cmd = s.command(selection, s.pg.addr());
    cmd.log.tables = vec!["public.brieff".into()];
    let (r, report) = run(&cmd).await;
    assert_eq!(r.unwrap(), Outcome::PlannedWithConflicts(1), "{report}");
    assert!(report.contains("CONFLICT {\"bfkey\":10}"), "{report}");
    cmd.apply = true;
    cmd.options.skip_conflicts = true;
    let (r, report) = run(&cmd).await;
    match r {
        Ok(Outcome::Applied(a)) => {
            assert_eq!((a.reverted, a.skipped_conflicts), (17, 1), "{report}")
        }
        other => panic!("{other:?}\n{report}"),
    }
    let direct = harness::connect(pg.addr(), "postgres", &s.db).await;
    let control = harness::connect(pg.addr(), "postgres", &s.control).await;
    let tables = ["brieff", "representatives"];
    assert_eq!(dump(&direct, &tables).await, dump(&control, &tables).await);
    by_db.shutdown().await;
    s.proxy.shutdown().await;
}

on_both!(
    topic_routing_by_database_restores_across_both_layouts,
    demo_schema_incident_restores_cases_and_representatives,
    leaked_cascading_delete_is_restored_with_its_children,
    hostile_identifiers_and_values_restore_exactly,
    incident_is_restored_exactly,
    other_applications_later_edits_are_kept_not_conflicts,
    later_changes_are_conflicts_and_drift_is_refused,
    inserts_deletes_key_changes_in_foreign_key_order,
    as_of_reconstructs_a_snapshot
);
