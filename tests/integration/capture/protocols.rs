//! Both protocols: extended-protocol batches, pipelines, portals and deferred Executes, transaction
//! control mixed with writes, error positions.

use super::*;

/// The extended protocol (tokio-postgres prepares every statement): parameters, prepared
/// once and executed many times, the client's RETURNING rows, binary results, autocommit and
/// explicit transactions.
async fn extended_protocol_writes_are_captured(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "extended").await;
    let mut c = harness::connect(proxy.addr, "postgres", &db).await;
    let insert = c
        .prepare("INSERT INTO brieff (bfkey, bfso) VALUES ($1, $2) RETURNING bfkey, bfso")
        .await
        .unwrap();
    for k in 200..205i32 {
        let row = c.query_one(&insert, &[&k, &format!("x{k}")]).await.unwrap();
        assert_eq!(
            row.get::<_, i32>(0),
            k,
            "binary result columns of the client intact"
        );
        assert_eq!(row.get::<_, String>(1), format!("x{k}"));
    }
    let n = c
        .execute("DELETE FROM brieff WHERE bfkey = $1", &[&200i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let tx = c.transaction().await.unwrap();
    tx.execute("DELETE FROM brieff WHERE bfkey = $1", &[&201i32])
        .await
        .unwrap();
    tx.execute("INSERT INTO brieff (bfkey) VALUES ($1)", &[&300i32])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // UPDATE (PostgreSQL < 18: a companion pre-read statement with the same parameters).
    let n = c
        .execute("UPDATE brieff SET bfso = NULL WHERE bfkey <= $1", &[&3i32])
        .await
        .unwrap();
    assert_eq!(n, 3);
    // A parameter that only the SET list uses, prepared once and run twice in a transaction
    // (the companion portal is re-bound), then closed.
    let set = c
        .prepare("UPDATE brieff SET bfso = $1 WHERE bfkey = $2")
        .await
        .unwrap();
    let tx = c.transaction().await.unwrap();
    assert_eq!(tx.execute(&set, &[&"v4", &4i32]).await.unwrap(), 1);
    assert_eq!(tx.execute(&set, &[&"v5", &5i32]).await.unwrap(), 1);
    tx.commit().await.unwrap();
    drop(set);
    assert_eq!(c.execute(&insert, &[&206i32, &"y"]).await.unwrap(), 1);
    let want = 5 + 1 + 2 + 3 + 2 + 1;
    let events = read_topic(format!("{prefix}.public.brieff"), want).await;
    assert_eq!(events.len(), want, "{events:#?}");
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["c", "c", "c", "c", "c", "d", "d", "c", "u", "u", "u", "u", "u", "c"]
    );
    assert_eq!(events[5]["before"]["bfso"], "x200");
    assert_eq!(
        events[6]["transaction"]["id"], events[7]["transaction"]["id"],
        "one transaction"
    );
    assert_eq!(events[8]["before"]["bfso"], "rep1");
    assert!(events[8]["after"]["bfso"].is_null());
    assert_eq!(events[11]["before"]["bfkey"], 4);
    assert_eq!(events[11]["before"]["bfso"], "rep4");
    assert_eq!(events[11]["after"]["bfso"], "v4");
    assert_eq!(events[12]["before"]["bfso"], "rep5");
    assert_eq!(events[12]["after"]["bfso"], "v5");
    assert_eq!(
        events[11]["transaction"]["id"], events[12]["transaction"]["id"],
        "one transaction"
    );
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    let n = harness::count(&direct, "SELECT count(*) FROM brieff WHERE bfkey >= 200").await;
    assert_eq!(n, 5, "202, 203, 204, 206 and 300 committed");
    proxy.shutdown().await;
}

/// Regression: a COMMIT sent through the extended protocol (unnamed portal, as pgbench -M
/// prepared and tokio-postgres `execute("COMMIT")` do) failed with "portal \"\" does not exist":
/// hindsight's catalog lookup went as a simple Query mid-batch, which drops the unnamed portal.
async fn extended_commit_keeps_the_clients_unnamed_portal(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "extcommit").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.execute("BEGIN", &[]).await.unwrap();
    c.execute(
        "INSERT INTO brieff (bfkey, bfso) VALUES ($1, 'in tx')",
        &[&900i32],
    )
    .await
    .unwrap();
    c.execute("COMMIT", &[])
        .await
        .expect("COMMIT through the extended protocol");
    let events = read_topic(format!("{prefix}.public.brieff"), 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["after"]["bfso"], "in tx");
    proxy.shutdown().await;
}

/// `COPY … FROM STDIN` and TRUNCATE through the extended protocol (tokio-postgres' `copy_in`
/// and `execute`): captured like the simple-query forms, in autocommit and in transactions; a
/// COPY that fails or is rolled back writes and publishes nothing; a prepared COPY runs twice.
async fn extended_copy_and_truncate_are_captured(pg: Pg) {
    use futures_util::{pin_mut, SinkExt};
    let (db, prefix, proxy) = setup(pg, "xcopy").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute("CREATE TABLE small (id int PRIMARY KEY, v text); INSERT INTO small VALUES (1, 'a'), (2, 'b');")
        .await
        .unwrap();
    let mut c = harness::connect(proxy.addr, "postgres", &db).await;
    // Autocommit, CSV, named columns.
    let sink = c
        .copy_in::<_, &'static [u8]>("COPY brieff (bfkey, bfso) FROM STDIN WITH (FORMAT csv)")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(b"200,x\n201,\"y,z\"\n").await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    // Bad input: the server's error; nothing written; the session goes on.
    let sink = c
        .copy_in::<_, &'static [u8]>("COPY brieff (bfkey, bfso) FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(b"202\tok\nnot-a-number\tbad\n").await.unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22P02"), "{err:?}");
    // In a transaction: one prepared COPY (with WHERE) run twice, then COMMIT.
    let tx = c.transaction().await.unwrap();
    let stmt = tx
        .prepare("COPY brieff (bfkey, bfso) FROM STDIN WHERE bfkey > 250")
        .await
        .unwrap();
    for data in [&b"240\tlow\n260\thigh\n"[..], &b"270\thigher\n"[..]] {
        let sink = tx.copy_in::<_, &'static [u8]>(&stmt).await.unwrap();
        pin_mut!(sink);
        sink.send(data).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1, "WHERE applies");
    }
    tx.commit().await.unwrap();
    // Rolled back: nothing published.
    let tx = c.transaction().await.unwrap();
    let sink = tx
        .copy_in::<_, &'static [u8]>("COPY brieff (bfkey) FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(b"300\n").await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    tx.rollback().await.unwrap();
    // TRUNCATE, prepared and executed.
    assert_eq!(c.execute("TRUNCATE small", &[]).await.unwrap(), 0);
    let events = read_topic(format!("{prefix}.public.brieff"), 4).await;
    validate("change-event", &events);
    let got: Vec<(Value, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["op"].clone(),
                e["after"]["bfkey"].clone(),
                e["after"]["bfso"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("c".into(), 200.into(), "x".into()),
            ("c".into(), 201.into(), "y,z".into()),
            ("c".into(), 260.into(), "high".into()),
            ("c".into(), 270.into(), "higher".into()),
        ]
    );
    assert_eq!(
        events[2]["transaction"]["id"],
        events[3]["transaction"]["id"]
    );
    let ev = read_topic(format!("{prefix}.public.small"), 2).await;
    let before: Vec<Value> = ev.iter().map(|e| e["before"].clone()).collect();
    assert_eq!(
        before,
        [
            serde_json::json!({"id": 1, "v": "a"}),
            serde_json::json!({"id": 2, "v": "b"})
        ]
    );
    assert!(ev.iter().all(|e| e["op"] == "t"));
    let n = harness::count(&direct, "SELECT count(*) FROM brieff WHERE bfkey >= 200").await;
    assert_eq!(n, 4, "exactly the committed rows");
    assert_eq!(
        harness::count(&direct, "SELECT count(*) FROM small").await,
        0
    );
    proxy.shutdown().await;
}

/// Regression: JDBC (autocommit off) sends `BEGIN` and the first write in one extended batch,
/// before a single Sync. hindsight did not know a transaction block was open (no
/// ReadyForQuery yet), opened its own and committed the client's transaction at the Sync.
/// The replies must be byte-for-byte those of a direct connection, and nothing is published
/// until the client's COMMIT.
async fn begin_and_write_in_one_extended_batch_stays_the_clients_transaction(pg: Pg) {
    use crate::differential::{cat, run, send};
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "jdbc_batch").await;
    let steps = [
        send(cat(&[
            parse("", "BEGIN", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            parse("", "UPDATE brieff SET bfso = $1 WHERE bfkey = $2", &[]),
            bind("", "", 0, &[Some(b"jdbc"), Some(b"7")], 0),
            execute("", 0),
            sync(),
        ])),
        send(query("SELECT bfso FROM brieff WHERE bfkey = 7")),
        send(cat(&[
            parse("", "COMMIT", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
        ])),
    ];
    let mut through = run(proxy.addr, &db, 0, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["before"]["bfso"], "rep7");
    assert_eq!(events[0]["after"]["bfso"], "jdbc");
    let mut direct = run(pg.addr(), &db, 0, &steps).await;
    assert_same_replies(&mut through, &mut direct);
    proxy.shutdown().await;
}

/// Regression: errors the server reports with a position (`P`) pointed into hindsight's
/// rewritten query string (`BEGIN;` and pre-reads in front), not the client's text.
async fn error_positions_point_into_the_clients_text(pg: Pg) {
    use crate::differential::{run, send};
    use crate::wire_client::*;
    let (db, _prefix, proxy) = setup(pg, "errpos").await;
    let steps = [
        send(query("UPDATE brieff SET nope = 1 WHERE bfkey = 1")),
        send(query("INSERT INTO brieff (bfkey, nope) VALUES (1, 2)")),
        send(query(
            "SELECT 1;\n  DELETE FROM brieff WHERE bfkey = 'x'::int",
        )),
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 1 + 'a' WHERE bfkey = 1")),
        send(query("ROLLBACK")),
        // Regression (whole_string_syntax_error_warned_no_transaction): a write hindsight's
        // parser reads but the server's grammar rejects (PostgreSQL 17 syntax on 15) failed
        // with the position in hindsight's string and an extra WARNING "there is no
        // transaction in progress" (hindsight committed a transaction that never began).
        send(query("SELECT 1;\n  UPDATE brieff SET bfso = JSON_VALUE(jsonb '{\"a\": \"x\"}', '$.a' RETURNING text) WHERE bfkey = 2")),
        send(query("SELECT bfso FROM brieff WHERE bfkey = 2")),
        // … also in a transaction block, where hindsight opens no transaction of its own: the
        // error lost its position (regression whole_string_syntax_error_in_a_block_lost_its_position).
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 'y' WHERE bfkey = 3;\n  UPDATE brieff SET bfso = JSON_VALUE(jsonb '{\"a\": \"x\"}', '$.a' RETURNING text) WHERE bfkey = 2")),
        send(query("ROLLBACK")),
    ];
    let mut through = run(proxy.addr, &db, 0, &steps).await;
    let mut plain = run(pg.addr(), &db, 0, &steps).await;
    assert_same_replies(&mut through, &mut plain);
    proxy.shutdown().await;
}

/// Regression: a query string that mixed writes with transaction control (`psql -c "BEGIN;
/// UPDATE …; COMMIT"`) was refused with HS002. It now runs in parts — each COMMIT only after its
/// transaction's records are acknowledged — and the client sees byte for byte what a direct
/// connection shows: one reply stream and one ReadyForQuery, the rest of the string skipped
/// after an error (also a failing COMMIT), savepoints and rollbacks inside the string honoured.
async fn transaction_control_mixed_with_writes_in_one_query_string_was_refused(pg: Pg) {
    use crate::differential::send;
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "segments").await;
    let (db2, direct) = direct_twin(pg, "segments").await;
    let ddl = "CREATE TABLE parent (id int PRIMARY KEY);
               CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)";
    direct.batch_execute(ddl).await.unwrap();
    let setup_conn = harness::connect(pg.addr(), "postgres", &db).await;
    setup_conn.batch_execute(ddl).await.unwrap();
    let steps = [
        // One transaction, with the client's own RETURNING.
        send(query("BEGIN; UPDATE brieff SET bfso = 'seg1' WHERE bfkey = 1; INSERT INTO brieff (bfkey, bfso) VALUES (100, 'new') RETURNING bfkey; COMMIT")),
        // Rolled back inside the string: nothing published.
        send(query("BEGIN; UPDATE brieff SET bfso = 'gone' WHERE bfkey = 2; ROLLBACK; SELECT bfso FROM brieff WHERE bfkey = 2")),
        // A savepoint rolled back; a read after the COMMIT.
        send(query("BEGIN; UPDATE brieff SET bfso = 'kept' WHERE bfkey = 3; SAVEPOINT s; UPDATE brieff SET bfso = 'undone' WHERE bfkey = 4; ROLLBACK TO SAVEPOINT s; COMMIT; SELECT bfso FROM brieff WHERE bfkey IN (3, 4) ORDER BY bfkey")),
        // An error skips the rest of the string and leaves the transaction aborted.
        send(query("BEGIN; UPDATE brieff SET bfso = 'x' WHERE bfkey = 5; SELECT 1/0; UPDATE brieff SET bfso = 'never' WHERE bfkey = 6; COMMIT")),
        send(query("ROLLBACK")),
        // Two transactions in one string.
        send(query("BEGIN; UPDATE brieff SET bfso = 'two-a' WHERE bfkey = 7; COMMIT; BEGIN; DELETE FROM brieff WHERE bfkey = 8; COMMIT")),
        // The COMMIT itself fails (deferred foreign key): what follows it is skipped.
        send(query("BEGIN; INSERT INTO child VALUES (1, 42); COMMIT; SELECT 'skipped'")),
        // Left open by the string, committed by the next query.
        send(query("SELECT 1; BEGIN; UPDATE brieff SET bfso = 'open' WHERE bfkey = 10")),
        send(query("COMMIT")),
        // A COMMIT among reads, of changes made by an earlier query. (Regression: the read
        // fast path let `SELECT 1; COMMIT` through, and the changes were never published.)
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 'pend' WHERE bfkey = 11")),
        send(query("SELECT 1; COMMIT; SELECT 2")),
        // Writes outside a block, in the implicit transactions the server gives a string up to
        // each COMMIT and to its end (regression: refused with HS002); after an error the
        // implicit transaction is rolled back, and the session is idle again.
        send(query("UPDATE brieff SET bfso = 'imp-a' WHERE bfkey = 13; COMMIT; UPDATE brieff SET bfso = 'imp-b' WHERE bfkey = 14")),
        send(query("INSERT INTO brieff (bfkey, bfso) VALUES (101, 'x'); COMMIT; UPDATE brieff SET bfso = 'never' WHERE bfkey = 15; SELECT 1/0")),
        send(query("SELECT 1; UPDATE brieff SET bfso = 'imp-c' WHERE bfkey = 16 RETURNING bfkey; COMMIT; SELECT 2")),
        send(query("SELECT bfso FROM brieff WHERE bfkey IN (13, 14, 15, 16) ORDER BY bfkey")),
        // Ended by ROLLBACK (the server warns), or by COMMIT/ROLLBACK AND CHAIN (the server
        // refuses those there): nothing of it is published.
        send(query("UPDATE brieff SET bfso = 'rolled' WHERE bfkey = 17; ROLLBACK; SELECT bfso FROM brieff WHERE bfkey = 17")),
        send(query("INSERT INTO brieff (bfkey) VALUES (102); COMMIT; INSERT INTO brieff (bfkey) VALUES (103); COMMIT AND CHAIN")),
        send(query("UPDATE brieff SET bfso = 'chained' WHERE bfkey = 18; ROLLBACK AND CHAIN; SELECT 1")),
        send(query("SELECT bfkey, bfso FROM brieff WHERE bfkey IN (17, 18, 102, 103) ORDER BY bfkey")),
        // After a ROLLBACK of the client's block, a new implicit transaction.
        send(query("BEGIN; UPDATE brieff SET bfso = 'rb' WHERE bfkey = 19; ROLLBACK; UPDATE brieff SET bfso = 'after-rb' WHERE bfkey = 20")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 13).await;
    validate("change-event", &events);
    let want: Vec<(String, Value, Value)> = vec![
        ("u".into(), "rep1".into(), "seg1".into()),
        ("c".into(), Value::Null, "new".into()),
        ("u".into(), "rep3".into(), "kept".into()),
        ("u".into(), "rep7".into(), "two-a".into()),
        ("d".into(), "rep8".into(), Value::Null),
        ("u".into(), "rep10".into(), "open".into()),
        ("u".into(), "rep11".into(), "pend".into()),
        ("u".into(), "rep13".into(), "imp-a".into()),
        ("u".into(), "rep14".into(), "imp-b".into()),
        ("c".into(), Value::Null, "x".into()),
        ("u".into(), "rep16".into(), "imp-c".into()),
        ("c".into(), Value::Null, Value::Null),
        ("u".into(), "rep20".into(), "after-rb".into()),
    ];
    assert_eq!(changes(&events, "bfso"), want, "{events:#?}");
    assert_eq!(
        events[0]["transaction"]["id"], events[1]["transaction"]["id"],
        "one transaction"
    );
    assert_ne!(
        events[3]["transaction"]["id"],
        events[4]["transaction"]["id"]
    );
    // The child row's event was published before its COMMIT failed: its END says so.
    let child = read_topic(format!("{prefix}.public.child"), 1).await;
    let tx = read_topic(format!("{prefix}.transaction"), 26).await;
    validate("transaction", &tx);
    let end_of = |id: &Value| end_status(&tx, id);
    assert_eq!(end_of(&child[0]["transaction"]["id"]), "aborted");
    for e in &events {
        assert_eq!(end_of(&e["transaction"]["id"]), "committed", "{e:#}");
    }
    // Both databases end up the same.
    assert_same_brieff(&setup_conn, &direct).await;
    // Still refused: in such an implicit transaction, a BEGIN (the server makes the implicit
    // transaction a block) or a savepoint (the server refuses it there, hindsight's own BEGIN
    // would not).
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    for tail in ["BEGIN; COMMIT", "SAVEPOINT s"] {
        let err = c
            .simple_query(&format!(
                "UPDATE brieff SET bfso = 'pre' WHERE bfkey = 12; {tail}"
            ))
            .await
            .unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("HS002"),
            "{tail}: {err:?}"
        );
    }
    let row = c
        .query_one("SELECT bfso FROM brieff WHERE bfkey = 12", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "rep12",
        "the refused string did not run"
    );
    proxy.shutdown().await;
}

/// Regression: a write with RETURNING executed with a row limit (as JDBC does with a fetch
/// size) was suspended after the limit; the write had run in full, but the images of the
/// rows the client never fetched never reached hindsight, and the transaction committed with
/// changes unrecorded. The portal now runs without the limit: every row comes back at once.
async fn row_limited_execute_left_changes_unrecorded(pg: Pg) {
    use crate::differential::{cat, run, send};
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "maxrows").await;
    let steps = [send(cat(&[
        parse(
            "",
            "DELETE FROM brieff WHERE bfkey <= 3 RETURNING bfkey",
            &[],
        ),
        bind("", "", 0, &[], 0),
        execute("", 1),
        sync(),
    ]))];
    let replies = run(proxy.addr, &db, 0, &steps).await;
    let tags: Vec<u8> = replies[1].iter().map(|f| f[0]).collect();
    assert_eq!(tags, b"12DDDCZ", "{}", describe_frames(&replies[1]));
    let events = read_topic(format!("{prefix}.public.brieff"), 3).await;
    assert_eq!(
        changes(&events, "bfkey"),
        (1..=3)
            .map(|k| ("d".to_string(), Value::from(k), Value::Null))
            .collect::<Vec<_>>()
    );
    proxy.shutdown().await;
}

/// Regression: a pipeline whose DDL statement failed (`CREATE INDEX CONCURRENTLY` inside the
/// pipeline's implicit transaction, as psql's `\startpipeline` sends it) hung the session, or
/// handed the client the rows of hindsight's own catalog query. The DDL's Execute waits while
/// its statement event is published; its error arrived before the rest of the pipeline was
/// read, and the replies expected for those messages — which the server skips up to the
/// Sync — were never dropped.
async fn messages_after_a_failed_deferred_execute_waited_for_replies_forever(pg: Pg) {
    use crate::differential::{cat, send};
    use crate::wire_client::*;
    let (db, _prefix, proxy) = setup(pg, "pipefail").await;
    let (db2, _direct) = direct_twin(pg, "pipefail").await;
    let pipeline = |sql: &str| {
        cat(&[
            parse("", sql, &[]),
            bind("", "", 0, &[], 0),
            describe(b'P', ""),
            execute("", 0),
        ])
    };
    let steps = [
        send(cat(&[
            pipeline("SELECT 1"),
            pipeline("CREATE INDEX CONCURRENTLY brieff_bfso ON brieff (bfso)"),
            pipeline("SELECT 2"),
            pipeline("UPDATE brieff SET bfso = 'skipped' WHERE bfkey = 1"),
            sync(),
        ])),
        send(query("SELECT 'after'")),
        send(query(
            "UPDATE brieff SET bfso = 'done' WHERE bfkey = 2 RETURNING bfso",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    proxy.shutdown().await;
}

/// Regression: a pipeline that writes, then BEGINs (psql `\startpipeline`; the server turns the
/// implicit transaction into the BEGIN's), got "there is already a transaction in progress"
/// about the transaction hindsight opened for the batch, and "there is no transaction in
/// progress" from hindsight's COMMIT after the client's ROLLBACK.
async fn begin_inside_a_pipeline_warned_about_hindsights_own_transaction(pg: Pg) {
    use crate::differential::{cat, send};
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "pipebegin").await;
    let (db2, _direct) = direct_twin(pg, "pipebegin").await;
    let stmt = |sql: &str| cat(&[parse("", sql, &[]), bind("", "", 0, &[], 0), execute("", 0)]);
    let steps = [
        send(cat(&[
            stmt("UPDATE brieff SET bfso = 'gone1' WHERE bfkey = 1"),
            stmt("BEGIN"),
            stmt("UPDATE brieff SET bfso = 'gone2' WHERE bfkey = 2"),
            stmt("ROLLBACK"),
            sync(),
        ])),
        send(cat(&[
            stmt("UPDATE brieff SET bfso = 'kept3' WHERE bfkey = 3"),
            stmt("BEGIN"),
            stmt("UPDATE brieff SET bfso = 'kept4' WHERE bfkey = 4"),
            stmt("COMMIT"),
            sync(),
        ])),
        send(query(
            "SELECT bfso FROM brieff WHERE bfkey <= 4 ORDER BY bfkey",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 2).await;
    let want: Vec<(String, Value, Value)> = vec![
        ("u".into(), "rep3".into(), "kept3".into()),
        ("u".into(), "rep4".into(), "kept4".into()),
    ];
    assert_eq!(changes(&events, "bfso"), want, "{events:#?}");
    proxy.shutdown().await;
}

/// A prepared COMMIT's Bind and Describe go to the server with its Execute, once the records
/// are published (no round trip of their own). If that Bind fails, the server skips the
/// COMMIT and aborts the transaction: its END record must say "aborted", and the client must
/// see what it would see directly. (The statement first commits a transaction bound right, so
/// that the table is known and the failing one publishes without asking the server.)
async fn a_prepared_commit_whose_bind_fails_ends_aborted(pg: Pg) {
    use crate::differential::{cat, send};
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "commitbind").await;
    let (db2, _direct) = direct_twin(pg, "commitbind").await;
    let commit = |params: &[Option<&[u8]>]| {
        cat(&[
            bind("", "c", 0, params, 0),
            describe(b'P', ""),
            execute("", 0),
            sync(),
        ])
    };
    let steps = [
        send(cat(&[parse("c", "COMMIT", &[]), sync()])),
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 'kept' WHERE bfkey = 2")),
        send(commit(&[])),
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 'undone' WHERE bfkey = 1")),
        // One parameter for a statement that takes none.
        send(commit(&[Some(b"1")])),
        send(query("ROLLBACK")),
        send(query(
            "SELECT bfso FROM brieff WHERE bfkey <= 2 ORDER BY bfkey",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 2).await;
    let want: Vec<(String, Value, Value)> = vec![
        ("u".into(), "rep2".into(), "kept".into()),
        ("u".into(), "rep1".into(), "undone".into()),
    ];
    assert_eq!(changes(&events, "bfso"), want, "{events:#?}");
    let tx = read_topic(format!("{prefix}.transaction"), 4).await;
    validate("transaction", &tx);
    assert_eq!(
        end_status(&tx, &events[0]["transaction"]["id"]),
        "committed"
    );
    assert_eq!(end_status(&tx, &events[1]["transaction"]["id"]), "aborted");
    proxy.shutdown().await;
}

/// Regression: a COMMIT pipelined after a statement that failed in the same batch (which the
/// server skips) had its transaction's events published, then no END record at all: the
/// COMMIT's reply was dropped with the rest of the failed batch. Nothing is published now.
async fn commit_pipelined_after_an_error_published_events_without_an_end(pg: Pg) {
    use crate::differential::{cat, send};
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "commitpipe").await;
    let (db2, _direct) = direct_twin(pg, "commitpipe").await;
    let commit = cat(&[bind("", "c", 0, &[], 0), execute("", 0)]);
    let steps = [
        send(cat(&[parse("c", "COMMIT", &[]), sync()])),
        // The table known first, so that nothing needs to ask the server at the COMMIT.
        send(query("UPDATE brieff SET bfso = 'known' WHERE bfkey = 5")),
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 'lost' WHERE bfkey = 3")),
        send(cat(&[
            parse("", "SELECT 1 / 0", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            commit.clone(),
            sync(),
        ])),
        send(query("ROLLBACK")),
        send(query("BEGIN")),
        send(query("UPDATE brieff SET bfso = 'kept' WHERE bfkey = 4")),
        send(cat(&[commit, sync()])),
        send(query(
            "SELECT bfso FROM brieff WHERE bfkey IN (3, 4) ORDER BY bfkey",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 2).await;
    let want: Vec<(String, Value, Value)> = vec![
        ("u".into(), "rep5".into(), "known".into()),
        ("u".into(), "rep4".into(), "kept".into()),
    ];
    assert_eq!(changes(&events, "bfso"), want, "{events:#?}");
    let tx = read_topic(format!("{prefix}.transaction"), 4).await;
    assert_eq!(tx.len(), 4, "two BEGINs and two ENDs: {tx:#?}");
    assert_eq!(
        end_status(&tx, &events[1]["transaction"]["id"]),
        "committed"
    );
    proxy.shutdown().await;
}

/// `capture.simple_writes = "prepared"`: a simple-protocol write whose shape (and type of
/// numbers) the session sent twice before runs bound to a statement hindsight prepared between
/// transactions (each kind of statement below comes a third time). The client sees
/// byte for byte what a direct connection shows: results, tags, rounding of numbers into
/// integer columns, errors at run time and the error (with its position) of a write whose
/// column a schema change dropped after it was prepared; a pool's `DISCARD ALL` and
/// `DEALLOCATE ALL` drop hindsight's statements and the next writes still run.
async fn bound_writes_answer_as_their_text_did(pg: Pg) {
    use crate::differential::send;
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "bound").await;
    let upd = |add: &str, key: u32| {
        send(query(&format!(
            "UPDATE brieff SET amount = amount + {add}, bfso = 'b' WHERE bfkey = {key}"
        )))
    };
    let q = |sql: &str| send(query(sql));
    let steps = [
        upd("1.5", 1),
        upd("2.25", 2),
        q("BEGIN"),
        upd("3", 3),
        upd("4.5", 4),
        q("COMMIT"),
        q("BEGIN"),
        upd("5", 5),
        upd("6", 6),
        q("ROLLBACK"),
        q("UPDATE brieff SET amount = amount / 0.0 WHERE bfkey = 6"),
        q("UPDATE brieff SET amount = amount / 0.0 WHERE bfkey = 7"),
        q("UPDATE brieff SET amount = amount / 0.0 WHERE bfkey = 8"),
        q("INSERT INTO brieff (bfkey, amount, f) VALUES (100, 5000000000, -1.5e3)"),
        q("INSERT INTO brieff (bfkey, amount, f) VALUES (101, 6000000000, -2.5e3)"),
        q("INSERT INTO brieff (bfkey, amount, f) VALUES (102, 7000000000, -3.5e3)"),
        q("UPDATE brieff SET bfkey = bfkey + 0.6 WHERE bfkey = 102"),
        q("UPDATE brieff SET bfkey = bfkey + 0.6 WHERE bfkey = 101"),
        q("UPDATE brieff SET bfkey = bfkey + 0.6 WHERE bfkey = 100"),
        q("ALTER TABLE brieff ADD COLUMN extra int"),
        q("UPDATE brieff SET amount = 100.5 WHERE extra IS NULL AND bfkey = 7"),
        q("UPDATE brieff SET amount = 100.5 WHERE extra IS NULL AND bfkey = 8"),
        q("ALTER TABLE brieff DROP COLUMN extra"),
        // The error points at `extra`, past a number sent as `$1`.
        q("UPDATE brieff SET amount = 100.5 WHERE extra IS NULL AND bfkey = 9"),
        upd("7.5", 10),
        q("DISCARD ALL"),
        upd("8.5", 11),
        upd("9.5", 12),
        q("DEALLOCATE ALL"),
        upd("10.5", 13),
        upd("11.5", 14),
        upd("12.5", 15),
        q("SELECT bfkey, bfso, amount, f FROM brieff ORDER BY bfkey"),
    ];
    let (twin, _direct) = direct_twin(pg, "bound").await;
    assert_same_as_direct(pg, proxy.addr, &db, &twin, &steps).await;
    // 10 updates of `amount` committed (not 5 and 6, rolled back, nor the divisions by zero), 3
    // inserts, 3 key changes, 2 updates while `extra` existed.
    let events = read_topic(format!("{prefix}.public.brieff"), 18).await;
    let amounts: Vec<(Value, Value)> = events
        .iter()
        .filter(|e| e["op"] == "u" && e["after"]["bfso"] == "b")
        .map(|e| (e["before"]["bfkey"].clone(), e["after"]["amount"].clone()))
        .collect();
    let want: Vec<(Value, Value)> = [
        (1, "2.75"),
        (2, "4.75"),
        (3, "6.75"),
        (4, "9.50"),
        (10, "20.00"),
        (11, "22.25"),
        (12, "24.50"),
        (13, "26.75"),
        (14, "29.00"),
        (15, "31.25"),
    ]
    .iter()
    .map(|(k, a)| (Value::from(*k), serde_json::from_str(a).unwrap()))
    .collect();
    assert_eq!(amounts, want, "{events:#?}");
    proxy.shutdown().await;
}

/// The statements behind bound writes exist and run: after a shape's first two writes (as
/// text), the session holds `__hs_b1` with the numbers' types, and each later write is one of
/// its executions (`pg_prepared_statements` counts them). A text sent only once is not
/// prepared.
async fn bound_writes_run_the_statement_prepared_once(pg: Pg) {
    let (db, _prefix, proxy) = setup(pg, "bound_runs").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    for k in 1..=7 {
        c.simple_query(&format!("UPDATE brieff SET bfso = 'r' WHERE bfkey = {k}"))
            .await
            .unwrap();
    }
    for s in ["once", "twice"] {
        c.simple_query(&format!("UPDATE brieff SET bfso = '{s}' WHERE bfkey = 1"))
            .await
            .unwrap();
    }
    let msgs = c
        .simple_query(
            "SELECT name, parameter_types::text, generic_plans + custom_plans
             FROM pg_prepared_statements",
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&msgs),
        [[
            Some("__hs_b1".to_string()),
            Some("{integer}".to_string()),
            Some("5".to_string())
        ]],
        "the first two writes went as text, the five after them were bound"
    );
    proxy.shutdown().await;
}

/// Regression (found by pg_regress `join` through capture): a temporary table created after a
/// shape's writes were bound to a prepared statement took none of the next writes: the
/// statement kept the permanent table of the same name, which the server does not re-read
/// when a new table hides it. A schema change in the session now retires its statements.
async fn a_temporary_table_created_after_writes_were_bound_got_none_of_them(pg: Pg) {
    use crate::differential::send;
    use crate::wire_client::*;
    let (db, _prefix, proxy) = setup(pg, "bound_temp").await;
    let (twin, _direct) = direct_twin(pg, "bound_temp").await;
    for d in [&db, &twin] {
        harness::connect(pg.addr(), "postgres", d)
            .await
            .batch_execute("CREATE TABLE shadowed (id int PRIMARY KEY)")
            .await
            .unwrap();
    }
    let q = |sql: &str| send(query(sql));
    let steps = [
        // The session's temporary schema exists before (its creation makes the server plan
        // every statement again).
        q("CREATE TEMP TABLE earlier (x int)"),
        q("INSERT INTO shadowed VALUES (1)"),
        q("INSERT INTO shadowed VALUES (2)"),
        q("INSERT INTO shadowed VALUES (3)"),
        q("CREATE TEMP TABLE shadowed (id int PRIMARY KEY)"),
        q("INSERT INTO shadowed VALUES (4)"),
        q("INSERT INTO shadowed VALUES (5)"),
        q("INSERT INTO shadowed VALUES (6)"),
        q("DO $$ BEGIN DROP TABLE pg_temp.shadowed; END $$"),
        q("INSERT INTO shadowed VALUES (7)"),
        q("SELECT id FROM shadowed ORDER BY id"),
        q("SELECT id FROM public.shadowed ORDER BY id"),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &twin, &steps).await;
    proxy.shutdown().await;
}

on_both!(
    a_temporary_table_created_after_writes_were_bound_got_none_of_them,
    bound_writes_answer_as_their_text_did,
    bound_writes_run_the_statement_prepared_once,
    commit_pipelined_after_an_error_published_events_without_an_end,
    a_prepared_commit_whose_bind_fails_ends_aborted,
    begin_inside_a_pipeline_warned_about_hindsights_own_transaction,
    messages_after_a_failed_deferred_execute_waited_for_replies_forever,
    row_limited_execute_left_changes_unrecorded,
    transaction_control_mixed_with_writes_in_one_query_string_was_refused,
    extended_copy_and_truncate_are_captured,
    extended_protocol_writes_are_captured,
    extended_commit_keeps_the_clients_unnamed_portal,
    begin_and_write_in_one_extended_batch_stays_the_clients_transaction,
    error_positions_point_into_the_clients_text
);
