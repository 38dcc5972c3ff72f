//! Differential protocol tests: identical raw message sequences are sent to PostgreSQL directly
//! and through hindsight, and every reply must be byte-for-byte identical. The only
//! normalisation: BackendKeyData and the sender pid of NotificationResponse are zeroed, because
//! the two runs necessarily talk to different backends (the relayed key itself is checked
//! against the real backend in `backend_key_data_is_the_upstreams`).

use super::harness::{self, Pg, ALL};
use super::wire_client::*;
use std::net::SocketAddr;

pub(super) enum Until {
    Ready(usize),
    Tag(u8),
}

pub(super) enum Step {
    /// Send bytes, read replies until the condition.
    Send(Vec<u8>, Until),
    /// Send a query, then cancel it from a second connection using the session's key.
    Cancel(Vec<u8>),
}

pub(super) fn send(bytes: Vec<u8>) -> Step {
    Step::Send(bytes, Until::Ready(1))
}

pub(super) fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Run `steps` on a fresh raw connection; returns the replies per step (startup first).
pub(super) async fn run(addr: SocketAddr, db: &str, minor: u16, steps: &[Step]) -> Vec<Vec<Frame>> {
    let mut conn = RawConn::connect(addr).await;
    conn.send(&startup("postgres", db, minor)).await;
    let first = conn.until_ready(1).await;
    let key = first
        .iter()
        .find(|f| f[0] == b'K')
        .map(|f| f[5..].to_vec())
        .expect("BackendKeyData");
    let mut out = vec![first];
    for step in steps {
        let frames = match step {
            Step::Send(bytes, Until::Ready(n)) => {
                conn.send(bytes).await;
                conn.until_ready(*n).await
            }
            Step::Send(bytes, Until::Tag(t)) => {
                conn.send(bytes).await;
                conn.until(|f| f[0] == *t, 1).await
            }
            Step::Cancel(bytes) => {
                conn.send(bytes).await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let mut c = RawConn::connect(addr).await;
                c.send(&cancel_request(&key)).await;
                assert!(
                    c.until_eof().await.is_empty(),
                    "a CancelRequest gets no reply"
                );
                conn.until_ready(1).await
            }
        };
        out.push(frames);
    }
    conn.send(&terminate()).await;
    assert!(conn.until_eof().await.is_empty(), "nothing after Terminate");
    out
}

pub(super) fn normalise(frames: &mut [Frame]) {
    for f in frames {
        match f[0] {
            b'K' => f[5..].fill(0),
            b'A' => f[5..9].fill(0),
            _ => {}
        }
    }
}

/// Run the script directly and through a proxy, compare every step.
async fn compare(pg: Pg, label: &str, minor: u16, setup_sql: &str, steps: Vec<Step>) {
    let db = harness::fresh_db(pg, label).await;
    if !setup_sql.is_empty() {
        harness::connect(pg.addr(), "postgres", &db)
            .await
            .batch_execute(setup_sql)
            .await
            .expect("setup");
    }
    let proxy = harness::proxy(pg, |_| {}).await;
    let mut direct = run(pg.addr(), &db, minor, &steps).await;
    let mut proxied = run(proxy.addr, &db, minor, &steps).await;
    assert_eq!(direct.len(), proxied.len());
    for (i, (d, p)) in direct.iter_mut().zip(proxied.iter_mut()).enumerate() {
        normalise(d);
        normalise(p);
        if d != p {
            panic!(
                "PG {} script {label:?}: step {i} differs\n--- direct ({} frames)\n{}\n--- through hindsight ({} frames)\n{}",
                pg.major(),
                d.len(),
                describe_frames(d),
                p.len(),
                describe_frames(p)
            );
        }
    }
    proxy.shutdown().await;
}

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v text, n numeric, b bytea);
    INSERT INTO items VALUES (1, 'one', 1.5, '\\x00ff'), (2, NULL, 'NaN', ''), (3, 'three', -0.001, NULL);";

fn simple_steps() -> Vec<Step> {
    let big_literal = "x".repeat(600_000);
    vec![
        send(query("SELECT 1 AS one, 'x'::text AS t, NULL::int AS n; SELECT * FROM items ORDER BY id")),
        send(query("SELECT 1/0; SELECT 2")),
        send(query("")),
        send(query(";;")),
        send(query("BEGIN; SELECT 1/0;")),
        send(query("SELECT 1")),
        send(query("ROLLBACK")),
        send(query("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")),
        send(query("SET application_name = 'changed'; SHOW application_name")),
        send(query("LISTEN ch; NOTIFY ch, 'payload'; UNLISTEN ch")),
        send(function_call_int4(177, &[2, 3])), // int4pl
        send(query("SELECT repeat('y', 1000000) AS big")),
        send(query(&format!("SELECT length('{big_literal}')"))),
        send(query("SELECT nosuchcolumn FROM items")),
        send(query("BEGIN; SAVEPOINT a; INSERT INTO items VALUES (9, 'nine'); ROLLBACK TO a; SELECT count(*) FROM items; COMMIT")),
    ]
}

fn extended_steps() -> Vec<Step> {
    vec![
        // A pipeline: named statement with a binary parameter and binary results, then an unnamed
        // one read through a portal in batches (PortalSuspended).
        send(cat(&[
            parse("s1", "SELECT $1::int + 1 AS r", &[23]),
            bind("", "s1", 1, &[Some(&5i32.to_be_bytes())], 1),
            describe(b'P', ""),
            execute("", 0),
            parse(
                "",
                "SELECT g, g::text AS t FROM generate_series(1, 5) g",
                &[],
            ),
            bind("p2", "", 0, &[], 0),
            describe(b'P', "p2"),
            execute("p2", 2),
            execute("p2", 2),
            execute("p2", 0),
            close(b'P', "p2"),
            close(b'S', "s1"),
            sync(),
        ])),
        // An error in the middle of a pipeline: everything up to Sync is skipped.
        send(cat(&[
            parse("", "SELECT 1/0", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            parse("", "SELECT 2", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
            parse("", "SELECT 3", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
        ])),
        Step::Send(
            cat(&[
                parse("s2", "SELECT * FROM items WHERE id = $1", &[0]),
                describe(b'S', "s2"),
                sync(),
            ]),
            Until::Ready(1),
        ),
        Step::Send(
            cat(&[bind("", "s2", 0, &[Some(b"1")], 0), execute("", 0), sync()]),
            Until::Ready(1),
        ),
        Step::Send(
            cat(&[bind("", "s2", 0, &[None], 0), execute("", 0), sync()]),
            Until::Ready(1),
        ),
        // Flush without Sync: ParseComplete arrives before the Sync.
        Step::Send(
            cat(&[parse("s3", "SELECT 42", &[]), flush()]),
            Until::Tag(b'1'),
        ),
        send(cat(&[bind("", "s3", 0, &[], 0), execute("", 0), sync()])),
        // Errors in Parse and Bind.
        send(cat(&[parse("", "SELEC 1", &[]), sync()])),
        send(cat(&[bind("", "nosuch", 0, &[], 0), sync()])),
        send(cat(&[
            parse("", "SELECT $1::int", &[23]),
            bind("", "", 1, &[Some(b"xy")], 0),
            execute("", 0),
            sync(),
        ])),
        // An empty query in the extended protocol.
        send(cat(&[
            parse("", "", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
        ])),
    ]
}

fn copy_steps() -> Vec<Step> {
    vec![
        send(query("BEGIN")),
        Step::Send(query("COPY items (id, v) FROM STDIN"), Until::Tag(b'G')),
        send(cat(&[
            copy_data(b"100\tcopied\n"),
            copy_data(b"101\tagain\n102\t\\N\n"),
            copy_done(),
        ])),
        send(query("COPY items TO STDOUT")),
        send(query(
            "COPY (SELECT * FROM items ORDER BY id) TO STDOUT (FORMAT binary)",
        )),
        Step::Send(query("COPY items FROM STDIN"), Until::Tag(b'G')),
        send(copy_fail("client gave up")),
        send(query("ROLLBACK")),
        Step::Send(query("COPY items (id) FROM STDIN"), Until::Tag(b'G')),
        send(cat(&[copy_data(b"not a number\n"), copy_done()])),
        send(cat(&[
            parse("", "COPY items TO STDOUT (FORMAT csv, HEADER)", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            sync(),
        ])),
    ]
}

#[tokio::test]
async fn simple_protocol_is_byte_identical() {
    for pg in ALL {
        compare(pg, "simple", 0, ITEMS, simple_steps()).await;
    }
}

#[tokio::test]
async fn extended_protocol_with_pipelining_is_byte_identical() {
    for pg in ALL {
        compare(pg, "extended", 0, ITEMS, extended_steps()).await;
    }
}

#[tokio::test]
async fn copy_is_byte_identical() {
    for pg in ALL {
        compare(pg, "copy", 0, ITEMS, copy_steps()).await;
    }
}

#[tokio::test]
async fn protocol_3_2_startup_is_byte_identical() {
    // PG 18 accepts 3.2 (and sends a 32-byte cancel key); PG 15 answers NegotiateProtocolVersion.
    for pg in ALL {
        compare(pg, "proto32", 2, "", vec![send(query("SELECT 1"))]).await;
    }
}

#[tokio::test]
async fn cancel_is_byte_identical() {
    for pg in ALL {
        compare(
            pg,
            "cancel",
            0,
            "",
            vec![
                Step::Cancel(query("SELECT pg_sleep(30)")),
                send(query("SELECT 1")),
            ],
        )
        .await;
    }
}

#[tokio::test]
async fn cancel_with_protocol_3_2_long_key() {
    compare(
        Pg::V18,
        "cancel32",
        2,
        "",
        vec![Step::Cancel(query("SELECT pg_sleep(30)"))],
    )
    .await;
}

#[tokio::test]
async fn backend_key_data_is_the_upstreams() {
    for pg in ALL {
        let db = harness::fresh_db(pg, "bkd").await;
        let proxy = harness::proxy(pg, |_| {}).await;
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(&startup("postgres", &db, 0)).await;
        let frames = conn.until_ready(1).await;
        let k = frames
            .iter()
            .find(|f| f[0] == b'K')
            .expect("BackendKeyData");
        let pid = i32::from_be_bytes(k[5..9].try_into().unwrap());
        conn.send(&query("SELECT pg_backend_pid()::text")).await;
        let rows = conn.until_ready(1).await;
        let d = rows.iter().find(|f| f[0] == b'D').expect("DataRow");
        let text = String::from_utf8_lossy(&d[11..]).to_string();
        assert_eq!(
            text,
            pid.to_string(),
            "BackendKeyData pid must be the upstream backend's pid"
        );
        proxy.shutdown().await;
    }
}
