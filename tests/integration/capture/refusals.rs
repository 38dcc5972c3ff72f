//! Refusals: what cannot be captured (HS002) or recorded (HS001) does not run or does not commit,
//! and the client is told why.

use super::*;

/// If the audit records cannot be published the write must not commit, and the client is
/// told why (SQLSTATE HS001).
async fn unpublishable_write_is_rolled_back(pg: Pg) {
    let db = harness::fresh_db(pg, "nopub").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'kept')",
        )
        .await
        .unwrap();
    let prefix = harness::random_prefix("nopub");
    let proxy = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = prefix;
        c.kafka.create_topics = false; // and nobody created them
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let err = c
        .simple_query("UPDATE t SET v = 'lost' WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"), "{err:?}");
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(
        msg.contains("rolled back") && msg.contains("topics missing"),
        "{msg}"
    );
    // The session is usable and nothing was written.
    let v = c
        .simple_query("SELECT v FROM t WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(rows(&v), vec![vec![Some("kept".to_string())]]);
    let v: String = direct
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "kept");
    // Same inside an explicit transaction: COMMIT fails with HS001 and nothing commits.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("UPDATE t SET v = 'lost' WHERE id = 1")
        .await
        .unwrap();
    let err = c.simple_query("COMMIT").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"));
    let v: String = direct
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "kept");
    assert!(
        c.simple_query("SELECT 1").await.is_ok(),
        "session is idle again after the failed COMMIT"
    );
    // A schema change whose record cannot be published does not run (either protocol).
    let err = c.simple_query("DROP TABLE t").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"), "{err:?}");
    let err = c.execute("DROP TABLE t", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"), "{err:?}");
    let n = harness::count(&direct, "SELECT count(*) FROM t").await;
    assert_eq!(n, 1, "the table is still there");
    proxy.shutdown().await;
}

/// Writes hindsight cannot capture yet are refused, not run unaudited.
async fn uncapturable_writes_are_refused_not_run(pg: Pg) {
    let (db, _prefix, proxy) = setup(pg, "refuse").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let err = c
        .simple_query("EXPLAIN ANALYZE DELETE FROM brieff WHERE bfkey = 1")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS002"), "{err:?}");
    // Text the parser cannot read but that may write is refused on a server newer than the
    // parser's grammar, not relayed unaudited (`parser_may_lag`); PostgreSQL 18's one such
    // write syntax, RETURNING WITH (OLD AS …), is now read (`pg18_syntax`): on 15 it is the
    // server's own syntax error, at the client's position.
    if pg.major() < 18 {
        let err = c
            .simple_query(
                "UPDATE brieff SET bfso = NULL WHERE bfkey = 1 RETURNING WITH (OLD AS o) o.bfso",
            )
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{err:?}");
        assert_eq!(
            err.as_db_error().and_then(|e| e.position()),
            Some(&tokio_postgres::error::ErrorPosition::Original(57)),
            "{err:?}"
        );
    }
    // A plain syntax error in a read is still the server's own.
    let err = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{err:?}");
    // So is one in a write, on every server (PostgreSQL 18 is asked to describe the text;
    // the server's error was once replaced by HS002 there), in both protocols.
    for sql in [
        "delete from;",
        "INSERT INTO brieff VALUES (1) brieff",
        "SELECT 5 ; SELECT 6 + ; DELETE FROM brieff",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("42601"),
            "{sql}: {err:?}"
        );
        let err = c.execute(sql, &[]).await.unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("42601"),
            "{sql}: {err:?}"
        );
    }
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    let n = harness::count(
        &direct,
        "SELECT count(*) FROM brieff WHERE bfso IS NOT NULL",
    )
    .await;
    assert_eq!(n, 25, "nothing was written");
    let n: i64 = c
        .query_one("SELECT count(*) FROM brieff WHERE bfkey > $1", &[&0i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 25, "reads through the extended protocol keep working");
    proxy.shutdown().await;
}

/// Regression: on PostgreSQL < 18 an UPDATE whose WHERE fails (here a type error) failed in
/// hindsight's pre-read, whose error was swallowed: the client got neither error nor tag.
async fn failing_autocommit_write_returns_the_servers_error(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "failing").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    for sql in [
        "UPDATE brieff SET bfso = NULL WHERE bfso <= 3",
        "UPDATE brieff SET bfkey = 2 WHERE bfkey = 1",
        "DELETE FROM brieff WHERE nosuchcolumn = 1",
        "INSERT INTO brieff (bfkey) VALUES (1)",
    ] {
        let want = direct.simple_query(sql).await.unwrap_err();
        let got = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(got.code(), want.code(), "{sql}: {got:?} vs {want:?}");
        assert_eq!(
            got.as_db_error().map(|e| e.message()),
            want.as_db_error().map(|e| e.message()),
            "{sql}"
        );
        assert!(
            c.simple_query("SELECT 1").await.is_ok(),
            "session usable after {sql}"
        );
    }
    let events = read_topic(format!("{prefix}.public.brieff"), 0).await;
    assert!(
        events.is_empty(),
        "failed statements publish nothing: {events:#?}"
    );
    proxy.shutdown().await;
}

/// Regression: the END record was published, `committed`, as soon as the events were
/// acknowledged — before the COMMIT reached the server. A COMMIT that then failed (here a
/// deferred foreign key) left an END saying `committed` for a transaction that never
/// committed. END now follows the server's answer, in every way a transaction ends: the
/// client's COMMIT (simple and extended) and hindsight's own around an autocommit write
/// (simple and extended).
async fn end_record_said_committed_before_the_commit_failed(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "end_outcome").await;
    harness::connect(pg.addr(), "postgres", &db)
        .await
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
             INSERT INTO parent VALUES (1)",
        )
        .await
        .unwrap();
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let fk = |r: Result<_, tokio_postgres::Error>| {
        let err = r.expect_err("the deferred foreign key fails at COMMIT");
        assert_eq!(err.code().map(|c| c.code()), Some("23503"), "{err:?}");
    };
    // The client's COMMIT, simple protocol.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("INSERT INTO child VALUES (1, 42)")
        .await
        .unwrap();
    fk(c.simple_query("COMMIT").await.map(drop));
    // The client's COMMIT, extended protocol.
    c.simple_query("BEGIN").await.unwrap();
    c.execute("INSERT INTO child VALUES (2, 43)", &[])
        .await
        .unwrap();
    fk(c.execute("COMMIT", &[]).await.map(drop));
    // Autocommit writes: hindsight's own COMMIT fails (SET CONSTRAINTS cannot help here, the
    // constraint is deferred to the end of hindsight's transaction).
    fk(c.simple_query("INSERT INTO child VALUES (3, 44)")
        .await
        .map(drop));
    fk(c.execute("INSERT INTO child VALUES (4, 45)", &[])
        .await
        .map(drop));
    // And one that commits, for contrast.
    c.execute("INSERT INTO child VALUES (5, 1)", &[])
        .await
        .unwrap();
    let events = read_topic(format!("{prefix}.public.child"), 5).await;
    let tx = read_topic(format!("{prefix}.transaction"), 10).await;
    let end_of = |id: &Value| end_status(&tx, id);
    let got: Vec<(Value, Value)> = events
        .iter()
        .map(|e| (e["after"]["id"].clone(), end_of(&e["transaction"]["id"])))
        .collect();
    let want: Vec<(Value, Value)> = vec![
        (1.into(), "aborted".into()),
        (2.into(), "aborted".into()),
        (3.into(), "aborted".into()),
        (4.into(), "aborted".into()),
        (5.into(), "committed".into()),
    ];
    assert_eq!(got, want, "{tx:#?}");
    let n = harness::count(&c, "SELECT count(*) FROM child").await;
    assert_eq!(n, 1);
    proxy.shutdown().await;
}

/// A role that may write to a table but not read it: capture reads the rows back, so its
/// writes fail through hindsight with the server's own "permission denied" (documented: roles
/// need SELECT on the tables they write; hindsight's log says what to grant). The error is the
/// one a role without the write privilege gets directly, untouched; nothing is published.
/// With SELECT granted the writes are captured.
async fn write_only_roles_need_select_on_the_tables_they_write(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "writeonly").await;
    let role = format!("hs_wo_{:08x}", rand::random::<u32>());
    let admin = harness::connect(pg.addr(), "postgres", &db).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT INSERT, UPDATE, DELETE ON brieff TO {role}"
        ))
        .await
        .unwrap();
    let direct = harness::connect(pg.addr(), &role, &db).await;
    let c = harness::connect(proxy.addr, &role, &db).await;
    let denied = "permission denied for table brieff";
    for sql in [
        "INSERT INTO brieff (bfkey) VALUES (100)",
        "UPDATE brieff SET bfso = 'x'",
        "DELETE FROM brieff",
    ] {
        for err in [
            c.simple_query(sql).await.unwrap_err(),
            c.execute(sql, &[]).await.unwrap_err(),
        ] {
            let e = err
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: {err:?}"));
            assert_eq!((e.code().code(), e.message()), ("42501", denied), "{sql}");
            assert_eq!(e.hint(), None, "{sql}: the server's error as it is");
        }
        // Directly, in a transaction rolled back, the same role may run it.
        direct.batch_execute("BEGIN").await.unwrap();
        direct.simple_query(sql).await.unwrap();
        direct.batch_execute("ROLLBACK").await.unwrap();
    }
    admin
        .batch_execute(&format!("GRANT SELECT ON brieff TO {role}"))
        .await
        .unwrap();
    c.simple_query("UPDATE brieff SET bfso = 'granted' WHERE bfkey = 2")
        .await
        .unwrap();
    let events = read_topic(format!("{prefix}.public.brieff"), 1).await;
    assert_eq!(events.len(), 1, "nothing published for the refused writes");
    assert_eq!(events[0]["after"]["bfso"], "granted");
    drop((c, direct));
    proxy.shutdown().await;
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON brieff FROM {role}; DROP ROLE {role}"
        ))
        .await
        .unwrap();
}

on_both!(
    write_only_roles_need_select_on_the_tables_they_write,
    end_record_said_committed_before_the_commit_failed,
    unpublishable_write_is_rolled_back,
    uncapturable_writes_are_refused_not_run,
    failing_autocommit_write_returns_the_servers_error
);
