//! Real client libraries through the proxy: tokio-postgres (extended protocol, pipelining,
//! binary types, COPY, notifications, cancel) and psql (`\copy`).

use super::harness::{self, Pg, ALL};
use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::NoTls;

#[tokio::test]
async fn tokio_postgres_workload() {
    for pg in ALL {
        let db = harness::fresh_db(pg, "tp").await;
        let proxy = harness::proxy(pg, |_| {}).await;
        let c = harness::connect(proxy.addr, "postgres", &db).await;
        c.batch_execute("CREATE TABLE acct (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric, tags text[], meta jsonb, seen timestamptz)")
            .await
            .unwrap();
        let ins = c
            .prepare("INSERT INTO acct (id, owner, tags) VALUES ($1, $2, $3)")
            .await
            .unwrap();
        // Pipelined: many queries in flight on one connection.
        let futs = (0..200i64).map(|i| {
            let (c, ins) = (&c, &ins);
            async move {
                c.execute(ins, &[&i, &format!("owner{i}"), &vec![format!("t{i}")]])
                    .await
            }
        });
        let results = futures_util::future::join_all(futs).await;
        assert!(results.iter().all(|r| matches!(r, Ok(1))));
        let n = harness::count(&c, "SELECT count(*) FROM acct").await;
        assert_eq!(n, 200);
        // Transaction with rollback.
        let mut c2 = harness::connect(proxy.addr, "postgres", &db).await;
        let tx = c2.transaction().await.unwrap();
        tx.execute("DELETE FROM acct", &[]).await.unwrap();
        tx.rollback().await.unwrap();
        let n = harness::count(&c2, "SELECT count(*) FROM acct").await;
        assert_eq!(n, 200);
        // COPY in and out.
        let sink = c.copy_in("COPY acct (id, owner) FROM STDIN").await.unwrap();
        pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"1000\tcopied\n1001\tcopied\n"))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.unwrap(), 2);
        let out: Vec<bytes::Bytes> = c
            .copy_out("COPY (SELECT id FROM acct WHERE owner = 'copied' ORDER BY id) TO STDOUT")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(out.concat(), b"1000\n1001\n");
        // Errors keep the session usable.
        let e = c
            .execute("INSERT INTO acct (id, owner) VALUES (1, 'dup')", &[])
            .await
            .unwrap_err();
        assert_eq!(e.as_db_error().unwrap().code().code(), "23505");
        let v: String = c
            .query_one("SELECT owner FROM acct WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, "owner1");
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn notifications_reach_a_listener_through_the_proxy() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "notify").await;
    let proxy = harness::proxy(pg, |_| {}).await;
    let (listener, mut conn) =
        tokio_postgres::connect(&harness::conn_str(proxy.addr, "postgres", &db), NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN events").await.unwrap();
    let sender = harness::connect(pg.addr(), "postgres", &db).await; // a direct connection notifies
    sender
        .batch_execute("NOTIFY events, 'hello from direct'")
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("notification")
        .unwrap();
    assert_eq!(got, ("events".into(), "hello from direct".into()));
    proxy.shutdown().await;
}

#[tokio::test]
async fn cancelled_pg_sleep_returns_57014() {
    for pg in ALL {
        let db = harness::fresh_db(pg, "cancel").await;
        let proxy = harness::proxy(pg, |_| {}).await;
        let c = harness::connect(proxy.addr, "postgres", &db).await;
        let token = c.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            token.cancel_query(NoTls).await
        });
        let err = c.query("SELECT pg_sleep(30)", &[]).await.unwrap_err();
        canceller
            .await
            .unwrap()
            .expect("cancel request sent to the proxy");
        assert_eq!(
            err.as_db_error().map(|e| e.code().code()),
            Some("57014"),
            "{err:?}"
        );
        let v: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(v, 1, "session usable after cancel");
        harness::eventually("cancel counted as forwarded", || async {
            proxy
                .ctx
                .metrics
                .render()
                .contains("hindsight_cancel_requests_total{outcome=\"forwarded\"} 1")
        })
        .await;
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn cancel_with_unknown_key_is_dropped() {
    let proxy = harness::proxy(Pg::V15, |_| {}).await;
    let mut c = super::wire_client::RawConn::connect(proxy.addr).await;
    c.send(&super::wire_client::cancel_request(&[
        0, 0, 0, 1, 1, 2, 3, 4,
    ]))
    .await;
    assert!(c.until_eof().await.is_empty());
    harness::eventually("counted", || async {
        proxy
            .ctx
            .metrics
            .render()
            .contains("hindsight_cancel_requests_total{outcome=\"unknown_key\"} 1")
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn psql_copy_round_trip() {
    let pg = Pg::V15;
    let db = harness::fresh_db(pg, "psqlcopy").await;
    let proxy = harness::proxy(pg, |_| {}).await;
    let dir = std::env::temp_dir().join(format!("hs-psql-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.csv");
    let output = dir.join("out.csv");
    let rows: String = (0..5000)
        .map(|i| format!("{i},name {i},\"quoted, \"\"text\"\"\"\n"))
        .collect();
    std::fs::write(&input, &rows).unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        proxy.addr.port()
    );
    let script = format!(
        "CREATE TABLE people (id int, name text, note text);\n\\copy people FROM '{}' WITH (FORMAT csv)\n\\copy (SELECT * FROM people ORDER BY id) TO '{}' WITH (FORMAT csv)\n",
        input.display(),
        output.display()
    );
    // Backslash commands must be on their own lines: feed the script on stdin.
    let mut child = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &conninfo])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql runs");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap(), rows);
    proxy.shutdown().await;
}
