//! Large transactions: toasted rows, more than the producer queue or the message size,
//! capture.max_transaction_bytes.

use super::*;

/// Regression: a row whose event was larger than 1 MB (librdkafka's default `message.max.bytes`)
/// made its transaction fail with HS001 — large TOASTed values (documents in text or bytea) are
/// ordinary in legacy databases. The limit is now `kafka.max_message_bytes` (4 MiB): a 1.5 MB
/// value (an UPDATE event of 3 MB: both images) is captured exactly.
async fn large_toasted_row_was_refused_over_one_megabyte(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "big_row").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query("CREATE TABLE doc (id int PRIMARY KEY, body text, blob bytea)")
        .await
        .unwrap();
    // Random-looking content so that TOAST compression does not shrink it away.
    let body: String = (0..1_500_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    c.execute(
        "INSERT INTO doc VALUES (1, $1, decode(md5($1), 'hex'))",
        &[&body],
    )
    .await
    .unwrap();
    c.simple_query("UPDATE doc SET body = upper(body) WHERE id = 1")
        .await
        .unwrap();
    let events = read_topic(format!("{prefix}.public.doc"), 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["after"]["body"].as_str().unwrap(), body);
    assert_eq!(events[1]["before"]["body"].as_str().unwrap(), body);
    assert_eq!(
        events[1]["after"]["body"].as_str().unwrap(),
        body.to_uppercase()
    );
    proxy.shutdown().await;
}

/// A database with table `bulk (id int PRIMARY KEY, v text)` holding `rows` rows of `value`
/// (SQL over `g`), and a capturing proxy configured by `tweak`: the large-transaction tests.
async fn bulk_setup(
    pg: Pg,
    label: &str,
    rows: u32,
    value: &str,
    tweak: impl FnOnce(&mut hindsight::config::Config),
) -> (
    String,
    String,
    hindsight::proxy::Running,
    tokio_postgres::Client,
) {
    let db = harness::fresh_db(pg, label).await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(&format!(
            "CREATE TABLE bulk (id int PRIMARY KEY, v text);
             INSERT INTO bulk SELECT g, {value} FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    let (prefix, proxy) = harness::capturing_proxy(pg, label, tweak).await;
    (db, prefix, proxy, direct)
}

/// Regression: a transaction that changed more rows than librdkafka's queue holds
/// (`queue.buffering.max.messages`, 100,000 by default) was rolled back with "QueueFull" and a
/// hint to retry when the broker is reachable — a bulk UPDATE of 300,000 rows could never
/// commit through hindsight. Publishing now waits for room as the broker acknowledges. Here
/// the queue holds 100 records and one autocommit UPDATE changes 3,000 rows.
async fn transaction_larger_than_the_producer_queue_failed_with_queue_full(pg: Pg) {
    let (db, prefix, proxy, _direct) = bulk_setup(pg, "queuefull", 3000, "'v' || g", |c| {
        c.kafka
            .librdkafka
            .insert("queue.buffering.max.messages".into(), "100".into());
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let n = c
        .execute("UPDATE bulk SET v = v || '!'", &[])
        .await
        .unwrap();
    assert_eq!(n, 3000);
    let events = read_topic(format!("{prefix}.public.bulk"), 3000).await;
    assert_eq!(events.len(), 3000);
    assert!(events.iter().all(|e| e["op"] == "u"));
    let mut ids: Vec<i64> = events
        .iter()
        .map(|e| e["after"]["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=3000).collect::<Vec<_>>());
    assert_eq!(
        events[0]["after"]["v"].as_str().unwrap(),
        format!("v{}!", events[0]["after"]["id"])
    );
    proxy.shutdown().await;
}

/// Regression: every row's event carries its statement's text, so a bulk loader's INSERT of
/// several megabytes (here 100 rows of 44 KB, 4.4 MB of SQL) made each event larger
/// than `kafka.max_message_bytes` (4 MiB): the transaction was refused with HS001, where it
/// runs directly. Events now carry at most `capture.max_statement_bytes` (64 KiB) of it, with a
/// note giving its length; the fingerprint identifies the whole statement.
async fn bulk_insert_larger_than_the_message_size_was_refused(pg: Pg) {
    let (db, prefix, proxy) = setup(pg, "bulk_sql").await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let rows: Vec<String> = (1..=100)
        .map(|i| format!("({}, '{}')", 1000 + i, "é".repeat(22_000)))
        .collect();
    let sql = format!(
        "INSERT INTO brieff (bfkey, bfso) VALUES {}",
        rows.join(", ")
    );
    assert!(sql.len() > 4_400_000);
    let done = c.simple_query(&sql).await.unwrap();
    assert_eq!(tags(&done), vec![100]);
    let events = read_topic(format!("{prefix}.public.brieff"), 100).await;
    assert_eq!(events.len(), 100);
    let statement = events[0]["source"]["statement"].as_str().unwrap();
    assert!(statement.starts_with("INSERT INTO brieff (bfkey, bfso) VALUES (1001, 'éé"));
    let cut = (0..=65536)
        .rev()
        .find(|&i| sql.is_char_boundary(i))
        .unwrap();
    let note = format!(
        "[statement cut at {cut} of {} bytes (capture.max_statement_bytes)",
        sql.len()
    );
    assert!(
        statement.contains(&note),
        "{}",
        &statement[statement.len() - 200..]
    );
    assert!(statement.len() < 66_000);
    assert!(events.iter().all(|e| e["source"]["statement"] == statement));
    assert_eq!(
        events[99]["after"]["bfso"].as_str().unwrap(),
        "é".repeat(22_000)
    );
    validate("change-event", &events[..5]);
    proxy.shutdown().await;
}

/// A transaction whose captured rows exceed capture.max_transaction_bytes cannot commit: its
/// rows would be held in hindsight's memory until COMMIT, and one huge UPDATE would take the
/// proxy — every application's connection — down with it. It is rolled back with HS003,
/// in both protocols, autocommit or in a block; nothing is published; the database is
/// unchanged. A transaction under the limit commits.
async fn transaction_over_max_transaction_bytes_is_rolled_back_with_hs003(pg: Pg) {
    let (db, prefix, proxy, direct) = bulk_setup(pg, "txnlimit", 500, "repeat('v', 100)", |c| {
        // About 50 rows' worth of images (each UPDATE row sends two of ~110 bytes).
        c.capture.max_transaction_bytes = 12_000;
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    let over = "UPDATE bulk SET v = v || '!'";
    let check = |e: tokio_postgres::Error, what: &str| {
        let e = e
            .as_db_error()
            .unwrap_or_else(|| panic!("{what}: {e:?}"))
            .clone();
        assert_eq!(e.code().code(), "HS003", "{what}: {e:?}");
        assert!(
            e.message()
                .contains("capture.max_transaction_bytes (12000 bytes"),
            "{what}: {e:?}"
        );
    };
    check(
        c.simple_query(over).await.unwrap_err(),
        "simple, autocommit",
    );
    check(
        c.execute(over, &[]).await.unwrap_err(),
        "extended, autocommit",
    );
    c.batch_execute("BEGIN; UPDATE bulk SET v = 'small' WHERE id = 1")
        .await
        .unwrap();
    c.simple_query(over).await.unwrap();
    check(
        c.simple_query("COMMIT").await.unwrap_err(),
        "in a block, at COMMIT",
    );
    let changed: i64 = direct
        .query_one("SELECT count(*) FROM bulk WHERE v <> repeat('v', 100)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(changed, 0, "nothing committed");
    // Under the limit: captured as always, and the only event on the topic.
    c.simple_query("UPDATE bulk SET v = 'ok' WHERE id < 11")
        .await
        .unwrap();
    let events = read_topic(format!("{prefix}.public.bulk"), 10).await;
    assert_eq!(
        events.len(),
        10,
        "nothing published for the refused transactions"
    );
    assert!(events.iter().all(|e| e["after"]["v"] == "ok"));
    proxy.shutdown().await;
}

on_both!(
    transaction_larger_than_the_producer_queue_failed_with_queue_full,
    transaction_over_max_transaction_bytes_is_rolled_back_with_hs003,
    bulk_insert_larger_than_the_message_size_was_refused,
    large_toasted_row_was_refused_over_one_megabyte
);
