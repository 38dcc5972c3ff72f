//! Bad input, disconnects, an unreachable upstream, shutdown: the proxy answers clearly, closes
//! what it must, never panics, and other sessions carry on.

use super::harness::{self, Pg, ALL};
use super::wire_client::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Expect one FATAL ErrorResponse with `code` whose message contains `needle`, then EOF.
async fn expect_fatal_then_eof(conn: &mut RawConn, code: &str, needle: &str) -> String {
    let frames = conn.until_eof().await;
    let err = frames
        .iter()
        .find(|f| f[0] == b'E')
        .unwrap_or_else(|| panic!("no ErrorResponse; got:\n{}", describe_frames(&frames)));
    assert_eq!(
        sqlstate(err).as_deref(),
        Some(code),
        "{}",
        describe_frames(&frames)
    );
    let message = field(err, b'M').unwrap();
    assert!(
        message.contains(needle),
        "message {message:?} should mention {needle:?}"
    );
    assert_eq!(field(err, b'S').as_deref(), Some("FATAL"));
    message
}

async fn started(addr: std::net::SocketAddr, db: &str) -> RawConn {
    let mut conn = RawConn::connect(addr).await;
    conn.send(&startup("postgres", db, 0)).await;
    let f = conn.until_ready(1).await;
    assert_eq!(
        f.last().map(|f| f[0]),
        Some(b'Z'),
        "{}",
        describe_frames(&f)
    );
    conn
}

async fn proxy_still_works(addr: std::net::SocketAddr, db: &str) {
    let c = harness::connect(addr, "postgres", db).await;
    let v: i32 = c.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

#[tokio::test]
async fn garbage_before_startup_gets_an_error_and_is_closed() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "garbage").await;
    let proxy = harness::proxy(pg, |_| {}).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await;
    expect_fatal_then_eof(&mut conn, "08P01", "invalid startup packet length").await;
    proxy_still_works(proxy.addr, &db).await;
    let metrics = proxy.ctx.metrics.render();
    assert!(
        metrics.contains("hindsight_protocol_errors_total{reason=\"bad_startup\"} 1"),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn unsupported_protocol_and_missing_user_are_refused() {
    let proxy = harness::proxy(Pg::V15, |_| {}).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&[0, 0, 0, 8, 0, 2, 0, 0]).await;
    expect_fatal_then_eof(&mut conn, "0A000", "unsupported frontend protocol 2.0").await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(
        &[
            0, 0, 0, 0x15, 0, 3, 0, 0, b'd', b'a', b't', b'a', b'b', b'a', b's', b'e', 0, b'x', 0,
            0, 0,
        ][..0x15],
    )
    .await;
    expect_fatal_then_eof(&mut conn, "08P01", "user").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn unknown_message_type_closes_session_and_its_upstream() {
    for pg in ALL {
        let db = harness::fresh_db(pg, "unknown_tag").await;
        let proxy = harness::proxy(pg, |_| {}).await;
        let mut other = started(proxy.addr, &db).await;
        let mut conn = started(proxy.addr, &db).await;
        harness::eventually("two backends", || async {
            harness::backends_on(pg, &db).await == 2
        })
        .await;
        conn.send(&msg(b'Z', b"junk")).await;
        expect_fatal_then_eof(&mut conn, "08P01", "unknown frontend message type Z").await;
        harness::eventually("the bad session's backend is gone", || async {
            harness::backends_on(pg, &db).await == 1
        })
        .await;
        // The other session is unaffected.
        other.send(&query("SELECT 1")).await;
        let f = other.until_ready(1).await;
        assert!(f.iter().any(|f| f[0] == b'D'), "{}", describe_frames(&f));
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn oversized_frame_is_refused_before_it_is_buffered() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "oversized").await;
    let proxy = harness::proxy(pg, |c| c.proxy.max_message_bytes = 64 * 1024).await;
    let mut conn = started(proxy.addr, &db).await;
    // Declare a 1 MiB Query but send only its header: the refusal must not wait for the body.
    conn.send(&[b'Q', 0, 0x10, 0, 0]).await;
    let m = expect_fatal_then_eof(&mut conn, "08P01", "max_message_bytes").await;
    assert!(m.contains("1048576") && m.contains("65536"), "{m}");
    harness::eventually("backend closed", || async {
        harness::backends_on(pg, &db).await == 0
    })
    .await;
    // Below the limit still works, even when larger than the streaming threshold.
    let proxy2 = harness::proxy(pg, |c| c.proxy.max_message_bytes = 2 * 1024 * 1024).await;
    let c = harness::connect(proxy2.addr, "postgres", &db).await;
    let n: i32 = c
        .query_one(&format!("SELECT length('{}')", "z".repeat(1_500_000)), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1_500_000);
    proxy.shutdown().await;
    proxy2.shutdown().await;
}

#[tokio::test]
async fn length_below_four_is_a_protocol_violation() {
    let pg = Pg::V18;
    let db = harness::fresh_db(pg, "shortlen").await;
    let proxy = harness::proxy(pg, |_| {}).await;
    let mut conn = started(proxy.addr, &db).await;
    conn.send(&[b'Q', 0, 0, 0, 2]).await;
    expect_fatal_then_eof(&mut conn, "08P01", "below the minimum").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn frames_split_across_many_writes_are_reassembled() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "split").await;
    let proxy = harness::proxy(pg, |_| {}).await;
    let mut conn = started(proxy.addr, &db).await;
    let bytes = [
        query("SELECT 'split' AS s"),
        parse("", "SELECT 2", &[]),
        bind("", "", 0, &[], 0),
        execute("", 0),
        sync(),
    ]
    .concat();
    for b in bytes {
        conn.stream.write_all(&[b]).await.unwrap();
        conn.stream.flush().await.unwrap();
    }
    let f = conn.until_ready(2).await;
    assert_eq!(
        f.iter().filter(|f| f[0] == b'D').count(),
        2,
        "{}",
        describe_frames(&f)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_gives_08006_naming_the_address() {
    // Port 1 on loopback: nothing listens there.
    let proxy = harness::proxy(Pg::V15, |c| c.upstream.address = "127.0.0.1:1".into()).await;
    let err = tokio_postgres::connect(
        &harness::conn_str(proxy.addr, "postgres", "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("connect must fail");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("127.0.0.1:1"), "{}", db.message());
    let metrics = proxy.ctx.metrics.render();
    assert!(
        metrics.contains("hindsight_upstream_connect_errors_total 1"),
        "{metrics}"
    );
    let admin = format!("http://{}/readyz", proxy.admin_addr);
    let (status, body) = http_get(&admin).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("127.0.0.1:1"), "{body}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_ends_the_upstream_session() {
    for pg in ALL {
        let db = harness::fresh_db(pg, "client_gone").await;
        let proxy = harness::proxy(pg, |_| {}).await;
        let mut conn = started(proxy.addr, &db).await;
        conn.send(&query("BEGIN; SELECT 1")).await;
        conn.until_ready(1).await;
        assert_eq!(harness::backends_on(pg, &db).await, 1);
        drop(conn); // no Terminate: the client just vanishes
        harness::eventually("upstream backend gone", || async {
            harness::backends_on(pg, &db).await == 0
        })
        .await;
        harness::eventually("session closed in metrics", || async {
            proxy.ctx.metrics.sessions_open.get() == 0
        })
        .await;
        assert!(
            proxy.ctx.cancel.is_empty(),
            "cancel key must be unregistered"
        );
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn upstream_termination_reaches_the_client() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "terminated").await;
    let proxy = harness::proxy(pg, |_| {}).await;
    let mut conn = started(proxy.addr, &db).await;
    let admin = harness::connect(pg.addr(), "postgres", "postgres").await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap();
    let frames = conn.until_eof().await;
    let e = frames
        .iter()
        .find(|f| f[0] == b'E')
        .expect("FATAL from the server");
    assert_eq!(sqlstate(e).as_deref(), Some("57P01"));
    harness::eventually("session closed", || async {
        proxy.ctx.metrics.sessions_open.get() == 0
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn ssl_and_gss_requests_without_tls_are_answered_n() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "sslreq").await;
    let proxy = harness::proxy(pg, |_| {}).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await; // GSSENCRequest
    assert_eq!(conn.read_byte().await, b'N');
    conn.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await; // SSLRequest
    assert_eq!(conn.read_byte().await, b'N');
    conn.send(&startup("postgres", &db, 0)).await;
    let f = conn.until_ready(1).await;
    assert_eq!(f.last().unwrap()[0], b'Z');
    proxy.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_open_sessions_finish() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "drain").await;
    let proxy = harness::proxy(pg, |c| c.proxy.drain_timeout = Duration::from_secs(30)).await;
    let addr = proxy.addr;
    let client = harness::connect(addr, "postgres", &db).await;
    let token = proxy.shutdown_token();
    let stopped = tokio::spawn(proxy.wait());
    token.cancel();
    harness::eventually("listener closed", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    // The open session keeps working during the drain.
    let v: i32 = client.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
    assert!(
        !stopped.is_finished(),
        "proxy must wait for the open session"
    );
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("proxy stops once sessions end")
        .unwrap();
}

#[tokio::test]
async fn drain_timeout_closes_remaining_sessions() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "drain_timeout").await;
    let proxy = harness::proxy(pg, |c| c.proxy.drain_timeout = Duration::from_millis(300)).await;
    let client = harness::connect(proxy.addr, "postgres", &db).await;
    tokio::time::timeout(Duration::from_secs(10), proxy.shutdown())
        .await
        .expect("shutdown bounded by drain timeout");
    assert!(
        client.query_one("SELECT 1", &[]).await.is_err(),
        "session must be closed after the drain timeout"
    );
    harness::eventually("upstream backend gone", || async {
        harness::backends_on(pg, &db).await == 0
    })
    .await;
}

#[tokio::test]
async fn large_copy_streams_through() {
    for pg in ALL {
        let db = harness::fresh_db(pg, "bigcopy").await;
        let proxy = harness::proxy(pg, |_| {}).await;
        let mut conn = started(proxy.addr, &db).await;
        conn.send(&query("CREATE TABLE blob (id int, v text)"))
            .await;
        conn.until_ready(1).await;
        conn.send(&query("COPY blob FROM STDIN")).await;
        conn.until(|f| f[0] == b'G', 1).await;
        // One 24 MiB CopyData message (well above the streaming threshold) of 3000 rows.
        let row = format!("\t{}\n", "q".repeat(8000));
        let data: String = (0..3000).map(|i| format!("{i}{row}")).collect();
        conn.send(&copy_data(data.as_bytes())).await;
        conn.send(&copy_done()).await;
        let f = conn.until_ready(1).await;
        let tag = f.iter().find(|f| f[0] == b'C').expect("CommandComplete");
        assert_eq!(&tag[5..tag.len() - 1], b"COPY 3000");
        conn.send(&query("SELECT sum(length(v)) FROM blob")).await;
        let f = conn.until_ready(1).await;
        let d = f.iter().find(|f| f[0] == b'D').unwrap();
        assert_eq!(&d[11..], b"24000000");
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn replication_copy_both_is_relayed() {
    let pg = Pg::V15;
    let proxy = harness::proxy(pg, |_| {}).await;
    let mut conn = RawConn::connect(proxy.addr).await;
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0postgres\0replication\0true\0\0");
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    conn.send(&pkt).await;
    conn.until_ready(1).await;
    conn.send(&query("IDENTIFY_SYSTEM")).await;
    let f = conn.until_ready(1).await;
    let d = f
        .iter()
        .find(|f| f[0] == b'D')
        .unwrap_or_else(|| panic!("{}", describe_frames(&f)));
    // DataRow: 4 columns (systemid, timeline, xlogpos, dbname); take xlogpos.
    let mut rest = &d[7..];
    let mut cols = Vec::new();
    for _ in 0..4 {
        let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
        rest = &rest[4..];
        if len < 0 {
            cols.push(String::new());
        } else {
            cols.push(String::from_utf8_lossy(&rest[..len as usize]).to_string());
            rest = &rest[len as usize..];
        }
    }
    conn.send(&query(&format!("START_REPLICATION PHYSICAL {}", cols[2])))
        .await;
    let f = conn.until(|f| f[0] == b'W', 1).await;
    assert_eq!(
        f.last().unwrap()[0],
        b'W',
        "CopyBothResponse: {}",
        describe_frames(&f)
    );
    conn.send(&copy_done()).await;
    let f = conn.until_ready(1).await;
    assert!(
        f.iter().any(|f| f[0] == b'c'),
        "server ends COPY BOTH: {}",
        describe_frames(&f)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn metrics_and_health_endpoints() {
    let pg = Pg::V18;
    let db = harness::fresh_db(pg, "metrics").await;
    let proxy = harness::proxy(pg, |_| {}).await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.batch_execute("CREATE TABLE m (id int); INSERT INTO m VALUES (1)")
        .await
        .unwrap();
    c.query("SELECT * FROM m WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    let (status, body) = http_get(&format!("http://{}/metrics", proxy.admin_addr)).await;
    assert_eq!(status, 200);
    for needle in [
        "hindsight_sessions_total 1",
        "hindsight_sessions_open 1",
        "hindsight_statements_total{kind=\"select\"} 1",
        "hindsight_statements_total{kind=\"ddl\"} 1",
        "hindsight_relayed_bytes_total{direction=\"client_to_upstream\"}",
        "hindsight_relay_latency_seconds_count",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in\n{body}");
    }
    assert_eq!(
        http_get(&format!("http://{}/healthz", proxy.admin_addr))
            .await
            .0,
        200
    );
    assert_eq!(
        http_get(&format!("http://{}/readyz", proxy.admin_addr))
            .await
            .0,
        200
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_sessions() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "concurrent").await;
    let proxy = harness::proxy(pg, |_| {}).await;
    let mut tasks = Vec::new();
    for i in 0..40i32 {
        let (addr, db) = (proxy.addr, db.clone());
        tasks.push(tokio::spawn(async move {
            let c = harness::connect(addr, "postgres", &db).await;
            for j in 0..20i32 {
                let v: i32 = c
                    .query_one("SELECT $1::int * 1000 + $2::int", &[&i, &j])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(v, i * 1000 + j);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    proxy.shutdown().await;
}

/// Minimal HTTP/1.1 GET returning (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
