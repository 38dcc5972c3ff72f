//! Encodings and types: client encodings other than UTF-8, prepared statements across an encoding
//! change, every built-in type.

use super::*;

/// Every built-in type round-trips exactly: `jsonb_populate_record` of a published image gives
/// back the row, text for text, for the after image of an INSERT (simple protocol) and the
/// before and after images of an UPDATE (extended protocol; before PostgreSQL 18 through the
/// companion pre-read). Includes a large TOASTed value. `json` (not jsonb) values are recorded
/// as equal JSON, normalised like jsonb (documented), so the one here is in normal form.
async fn every_builtin_type_round_trips(pg: Pg) {
    let db = harness::fresh_db(pg, "types").await;
    let direct = harness::connect(pg.addr(), "postgres", &db).await;
    direct
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
             CREATE DOMAIN posint AS int CHECK (VALUE > 0);
             CREATE TYPE pair AS (a int, b text);
             CREATE TABLE alltypes (
               id int PRIMARY KEY, n numeric, n_nan numeric, n_inf numeric, f8 float8, f8_inf float8,
               f8_ninf float8, f4 float4, i8 bigint, i2 smallint, ts timestamp, tstz timestamptz,
               d date, tm time, ttz timetz, iv interval, b bytea, arr int[], tarr text[],
               j json, jb jsonb, u uuid, ip inet, net cidr, mac macaddr, m money, bits bit(4),
               vb varbit, e mood, dom posint, comp pair, r int4range, tr tstzrange, big text,
               flag boolean, ch char(3), x xml, pt point, tsv tsvector, o oid, nul text)",
        )
        .await
        .unwrap();
    let prefix = harness::random_prefix("types");
    let p = prefix.clone();
    let proxy = harness::proxy(pg, move |c| {
        c.kafka.brokers = vec![harness::kafka_brokers()];
        c.kafka.topic_prefix = p;
    })
    .await;
    let c = harness::connect(proxy.addr, "postgres", &db).await;
    c.simple_query(
        "INSERT INTO alltypes VALUES (1, 12345678901234567890.123456789012345678, 'NaN', '-Infinity',
           'NaN', 'Infinity', '-Infinity', 1.17549435e-38, 9223372036854775807, -32768,
           '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+05:30', '4713-01-01 BC',
           '23:59:59.999999', '12:00+14', '1 year 2 mons -3 days 04:05:06.000007',
           '\\x00ff5c27', ARRAY[1, NULL, 3], ARRAY['a,b', 'c\"d', NULL, ''],
           '{\"a\": [1, 2.50], \"b\": null}', '{\"k\": [1e400, \"\\u00e9\"]}',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2001:db8::1/64', '10.0.0.0/8', '08:00:2b:01:02:03',
           '1234.56', B'1010', B'10110111', 'ok', 42, ROW(1, 'x\"y'), '[1,10)',
           '[2024-01-01 00:00+00,infinity)', repeat('toast ', 60000) || 'end', true, 'ab',
           '<a b=\"1\">t</a>', '(1.5,-2)', 'fat cats ate', 4294967295, NULL)",
    )
    .await
    .unwrap();
    let row = "SELECT t::text FROM alltypes t WHERE id = 1";
    let inserted: String = direct.query_one(row, &[]).await.unwrap().get(0);
    c.execute(
        "UPDATE alltypes SET n = n + 1, big = big || $2, e = 'happy', nul = '' WHERE id = $1",
        &[&1i32, &"more"],
    )
    .await
    .unwrap();
    let updated: String = direct.query_one(row, &[]).await.unwrap().get(0);
    assert_ne!(inserted, updated);
    let ev = read_topic(format!("{prefix}.public.alltypes"), 2).await;
    assert_eq!(ev.len(), 2);
    for (what, image, want) in [
        ("INSERT after", &ev[0]["after"], &inserted),
        ("UPDATE before", &ev[1]["before"], &inserted),
        ("UPDATE after", &ev[1]["after"], &updated),
    ] {
        let got: String = direct
            .query_one(
                "SELECT jsonb_populate_record(NULL::alltypes, $1::text::jsonb)::text",
                &[&image.to_string()],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            got == *want,
            "{what}: image does not give back the row\n got: {:.400}\nwant: {:.400}",
            got,
            want
        );
    }
    // A row too large for one Kafka message (kafka.max_message_bytes, 4 MiB) is refused, not
    // committed unrecorded.
    let err = c
        .simple_query("INSERT INTO alltypes (id, big) VALUES (2, repeat('y', 4300000))")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("HS001"), "{err:?}");
    let n = harness::count(&direct, "SELECT count(*) FROM alltypes WHERE id = 2").await;
    assert_eq!(n, 0);
    proxy.shutdown().await;
}

/// Regression (a LATIN1 client's data was changed on the way): hindsight read the client's SQL
/// text as UTF-8, lossily, and sent its rewrite with U+FFFD where the client had written
/// `'caf\xE9'` — the row stored was not the one the client wrote. Now a session whose
/// client_encoding is not UTF-8 has its text taken byte for byte (`wire::client_text`): the
/// server gets exactly the client's bytes, the replies are the direct run's, and the images
/// are exact. In a SQL_ASCII database, bytes that are not UTF-8 have no characters: a write
/// whose image holds them is not committed unrecorded (HS001); UTF-8 content is recorded.
async fn latin1_text_was_rewritten_lossily(pg: Pg) {
    use crate::differential::{cat, send};
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "latin1").await;
    let (db2, _direct) = direct_twin(pg, "latin1").await;
    let mut parse_latin1 = Vec::new();
    parse_latin1.extend_from_slice(
        b"\0UPDATE brieff SET bfso = bfso || ' \xe0 ' || $1 WHERE bfkey = 3\0\0\x01\0\0\0\x19",
    );
    let steps = vec![
        send(query("SET client_encoding = 'LATIN1'")),
        send(raw_query(b"INSERT INTO brieff (bfkey, bfso) VALUES (100, 'caf\xe9')")),
        send(raw_query(b"UPDATE brieff SET bfso = 'na\xefve' WHERE bfkey = 1 RETURNING bfso")),
        send(raw_query(b"BEGIN; DELETE FROM brieff WHERE bfso = 'caf\xe9'; COMMIT")),
        send(cat(&[
            msg(b'P', &parse_latin1),
            bind("", "", 0, &[Some(b"d\xe9j\xe0")], 0),
            execute("", 0),
            sync(),
        ])),
        send(query("SET client_encoding = 'WIN1252'")),
        send(raw_query(b"INSERT INTO brieff (bfkey, bfso) VALUES (101, '\x80 \x9c')")),
        // An error's position in a LATIN1 text: one character per byte.
        send(raw_query(b"UPDATE brieff SET bfso = '\xe9\xe9' WHERE nosuch = 1")),
        send(query("SELECT bfkey, bfso, octet_length(bfso) FROM brieff WHERE bfkey IN (1, 3, 100, 101) ORDER BY 1")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 5).await;
    validate("change-event", &events);
    assert_eq!(
        changes(&events, "bfso"),
        vec![
            ("c".into(), Value::Null, "café".into()),
            ("u".into(), "rep1".into(), "naïve".into()),
            ("d".into(), "café".into(), Value::Null),
            ("u".into(), "rep3".into(), "rep3 à déjà".into()),
            ("c".into(), Value::Null, "€ œ".into()),
        ],
        "{events:#?}"
    );
    assert_eq!(
        events[0]["source"]["statement"],
        "INSERT INTO brieff (bfkey, bfso) VALUES (100, 'caf\\xE9')"
    );
    // Names the server returns in the session's encoding (regression: read lossily, they made
    // hindsight's own SQL name columns that do not exist): a COPY into a table whose columns
    // are not ASCII (the stage is built from the catalog's names), a data-modifying WITH whose
    // client RETURNING names them, and the key of the events.
    let ddl = "CREATE TABLE mass (schlüssel int PRIMARY KEY, größe text)";
    execute_in(pg, [&db, &db2], ddl).await;
    let steps = vec![
        send(query("SET client_encoding = 'LATIN1'")),
        crate::differential::Step::Send(
            raw_query(b"COPY mass FROM STDIN"),
            crate::differential::Until::Tag(b'G'),
        ),
        send(cat(&[copy_data(b"1\tgro\xdf\n2\t\xe9t\xe9\n"), copy_done()])),
        send(raw_query(b"WITH d AS (DELETE FROM mass WHERE schl\xfcssel = 2 RETURNING gr\xf6\xdfe) SELECT * FROM d")),
        send(raw_query(b"UPDATE mass SET schl\xfcssel = 3 WHERE gr\xf6\xdfe = 'gro\xdf'")),
        send(query("SELECT * FROM mass ORDER BY 1")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let records = harness::read_topic_raw(format!("{prefix}.public.mass"), 4).await;
    let got: Vec<(String, String)> = records
        .iter()
        .map(|(k, v)| {
            let e: Value = serde_json::from_slice(v).unwrap();
            (
                String::from_utf8_lossy(k).into_owned(),
                format!("{} {} -> {}", e["op"], e["before"], e["after"]),
            )
        })
        .collect();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got[0].1.contains(r#"{"größe":"groß","schlüssel":1}"#),
        "{got:#?}"
    );
    assert!(got[1].1.contains(r#""größe":"été""#), "{got:#?}");
    assert!(
        got[0].0.contains("schlüssel"),
        "the key names the key column: {got:#?}"
    );
    // A SQL_ASCII database: bytes without defined characters. Stored as sent when it commits;
    // a write whose image holds them cannot be recorded exactly, so it does not commit.
    let ascii = format!("{db}_ascii");
    harness::connect(pg.addr(), "postgres", &db)
        .await
        .batch_execute(&format!(
            "CREATE DATABASE {ascii} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    harness::connect(pg.addr(), "postgres", &ascii)
        .await
        .batch_execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&startup("postgres", &ascii, 0)).await;
    c.until_ready(1).await;
    c.send(&query("SET client_encoding = 'SQL_ASCII'")).await;
    c.until_ready(1).await;
    c.send(&raw_query(b"INSERT INTO t VALUES (1, 'caf\xe9')"))
        .await;
    let got = c.until_ready(1).await;
    let err = got
        .iter()
        .find(|f| f[0] == b'E')
        .unwrap_or_else(|| panic!("no error: {}", describe_frames(&got)));
    assert_eq!(
        sqlstate(err).as_deref(),
        Some("HS001"),
        "{}",
        describe_frames(&got)
    );
    assert!(
        field(err, b'M').unwrap_or_default().contains("0xE9"),
        "{}",
        describe_frames(&got)
    );
    c.send(&raw_query(b"INSERT INTO t VALUES (2, 'plain')"))
        .await;
    c.until_ready(1).await;
    // Bytes that are UTF-8 (what most applications store in a SQL_ASCII database) are
    // recorded as the characters they spell (before: refused like the rest).
    c.send(&raw_query(b"INSERT INTO t VALUES (3, 'caf\xc3\xa9')"))
        .await;
    let got = c.until_ready(1).await;
    assert!(
        !got.iter().any(|f| f[0] == b'E'),
        "{}",
        describe_frames(&got)
    );
    let events = read_topic(format!("{prefix}.public.t"), 2).await;
    assert_eq!(
        changes(&events, "v"),
        vec![
            ("c".into(), Value::Null, "plain".into()),
            ("c".into(), Value::Null, "café".into()),
        ]
    );
    let rows: Vec<(i32, i32)> = harness::connect(pg.addr(), "postgres", &ascii)
        .await
        .query("SELECT k, octet_length(v) FROM t ORDER BY k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(2, 5), (3, 5)]);
    proxy.shutdown().await;
}

/// Regression: a session whose client_encoding is not UTF-8 got its row images in that encoding.
/// A row holding a character the encoding lacks (a Chinese name in a row a LATIN1 client
/// updates) made the server fail the client's statement, which directly succeeds: capture
/// changed the outcome. And writes in encodings hindsight had no table for (WIN1251, EUC_JP,
/// LATIN2, …) were refused with HS001. Images now leave the server as hex of UTF-8, converted
/// by the server: these writes run as they do directly and are recorded exactly, whatever the
/// client's encoding or `bytea_output`.
async fn latin1_write_failed_on_a_row_holding_characters_latin1_lacks(pg: Pg) {
    use crate::differential::send;
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "enc_lacks").await;
    let (db2, _direct) = direct_twin(pg, "enc_lacks").await;
    let seed = "INSERT INTO brieff (bfkey, bfso) VALUES (200, '中文 € Привет')";
    execute_in(pg, [&db, &db2], seed).await;
    let steps = vec![
        // The encoding changes in the same query string, before the server reports it.
        send(query(
            "SET client_encoding = 'LATIN1'; UPDATE brieff SET amount = 0 WHERE bfkey = 200",
        )),
        send(query("UPDATE brieff SET amount = 1 WHERE bfkey = 200")),
        // Every capture path's images: MERGE (its post-read before 18), a data-modifying WITH,
        // COPY (write RETURNING) TO, and below TRUNCATE.
        send(query("MERGE INTO brieff b USING (SELECT 200 AS k) s ON b.bfkey = s.k WHEN MATCHED THEN UPDATE SET amount = 2")),
        send(query("WITH w AS (UPDATE brieff SET amount = 3 WHERE bfkey = 200 RETURNING bfkey) SELECT * FROM w")),
        send(query("COPY (UPDATE brieff SET amount = amount + 1 WHERE bfkey = 200 RETURNING bfkey) TO STDOUT")),
        send(query("DELETE FROM brieff WHERE bfkey = 200")),
        send(query("SET client_encoding = 'WIN1251'")),
        send(raw_query(
            b"INSERT INTO brieff (bfkey, bfso) VALUES (300, '\xcf\xf0\xe8\xe2\xe5\xf2')",
        )),
        send(query("SET client_encoding = 'EUC_JP'")),
        send(raw_query(
            b"INSERT INTO brieff (bfkey, bfso) VALUES (301, '\xc6\xfc\xcb\xdc') RETURNING bfso",
        )),
        send(query("SET bytea_output = 'escape'")),
        send(query("UPDATE brieff SET bfso = 'x' WHERE bfkey = 301")),
        send(query(
            "SELECT bfkey, bfso, octet_length(bfso) FROM brieff WHERE bfkey >= 200 ORDER BY 1",
        )),
        send(query("SET client_encoding = 'LATIN1'")),
        send(query("TRUNCATE brieff")),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let mut events = read_topic(format!("{prefix}.public.brieff"), 36).await;
    validate("change-event", &events);
    let truncated = events.split_off(9);
    assert_eq!(truncated.len(), 27, "{truncated:#?}");
    assert!(truncated.iter().all(|e| e["op"] == "t"));
    assert!(truncated.iter().any(|e| e["before"]["bfso"] == "Привет"));
    let amounts: Vec<String> = events[..5]
        .iter()
        .map(|e| e["after"]["amount"].to_string())
        .collect();
    assert_eq!(amounts, ["0.00", "1.00", "2.00", "3.00", "4.00"]);
    assert_eq!(
        changes(&events, "bfso"),
        vec![
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("u".into(), "中文 € Привет".into(), "中文 € Привет".into()),
            ("d".into(), "中文 € Привет".into(), Value::Null),
            ("c".into(), Value::Null, "Привет".into()),
            ("c".into(), Value::Null, "日本".into()),
            ("u".into(), "日本".into(), "x".into()),
        ],
        "{events:#?}"
    );
    // Names the catalog gives in the session's encoding (before: shown as `\xNN` in events in
    // any encoding but UTF8, LATIN1 and WIN1252), and the key they name. The topic holds only
    // what Kafka allows in a topic name.
    let ddl = "CREATE TABLE \"名簿 Liste\" (番号 int PRIMARY KEY, 名前 text)";
    execute_in(pg, [&db, &db2], ddl).await;
    let steps = vec![
        send(query("SET client_encoding = 'EUC_JP'")),
        send(raw_query(
            b"INSERT INTO \"\xcc\xbe\xca\xed Liste\" VALUES (7, '\xbb\xb3\xc5\xc4')",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let records = harness::read_topic_raw(format!("{prefix}.public.___Liste"), 1).await;
    assert_eq!(records.len(), 1);
    let e: Value = serde_json::from_slice(&records[0].1).unwrap();
    assert_eq!(e["source"]["table"], "名簿 Liste");
    assert_eq!(e["after"], serde_json::json!({"番号": 7, "名前": "山田"}));
    let key = String::from_utf8_lossy(&records[0].0).into_owned();
    assert!(key.contains("番号") && key.contains('7'), "{key}");
    proxy.shutdown().await;
}

/// A statement prepared in a UTF-8 session built its row images as jsonb, which the server sends
/// in the client's encoding of the moment. After `SET client_encoding = 'LATIN1'`, executing it
/// on a row holding `中文` failed (the server cannot send that in LATIN1), where it succeeds
/// directly; and LATIN1 bytes that happen to be valid UTF-8 (`Ã©` is C3 A9, UTF-8 for `é`) were
/// recorded as other text, silently. The same held inside one pipeline, for a write parsed after
/// its SET before the server reports the new encoding (at the Sync). Such statements are now
/// prepared again with hex images; one whose text is not ASCII (it cannot be sent again as is)
/// is refused with HS002.
async fn prepared_write_recorded_wrong_text_after_client_encoding_changed(pg: Pg) {
    use crate::differential::{cat, run, send};
    use crate::wire_client::*;
    let (db, prefix, proxy) = setup(pg, "enc_stale").await;
    let (db2, _direct) = direct_twin(pg, "enc_stale").await;
    let seed = "INSERT INTO brieff (bfkey, bfso) VALUES (200, '中文 € Привет'), (201, 'x')";
    execute_in(pg, [&db, &db2], seed).await;
    let update = "UPDATE brieff SET bfso = $1 WHERE bfkey = $2";
    let run_upd = |value: &'static [u8], key: &'static [u8]| {
        send(cat(&[
            bind("", "upd", 0, &[Some(value), Some(key)], 0),
            execute("", 0),
            sync(),
        ]))
    };
    let steps = vec![
        send(cat(&[parse("upd", update, &[25, 23]), sync()])),
        send(query("SET client_encoding = 'LATIN1'")),
        run_upd(b"\xc3\xa9", b"201"),
        run_upd(b"caf\xe9", b"200"),
        send(query("SET client_encoding = 'UTF8'")),
        // One pipeline: the SET, then a write parsed before the server reports WIN1251.
        send(cat(&[
            parse("", "SET client_encoding = 'WIN1251'", &[]),
            bind("", "", 0, &[], 0),
            execute("", 0),
            parse("", update, &[25, 23]),
            bind(
                "",
                "",
                0,
                &[Some(b"\xcf\xf0\xe8\xe2\xe5\xf2"), Some(b"201")],
                0,
            ),
            execute("", 0),
            sync(),
        ])),
        send(query(
            "SELECT bfkey, encode(convert_to(bfso, 'UTF8'), 'hex') FROM brieff ORDER BY 1",
        )),
    ];
    assert_same_as_direct(pg, proxy.addr, &db, &db2, &steps).await;
    let events = read_topic(format!("{prefix}.public.brieff"), 3).await;
    validate("change-event", &events);
    assert_eq!(
        changes(&events, "bfso"),
        vec![
            ("u".into(), "x".into(), "Ã©".into()),
            ("u".into(), "中文 € Привет".into(), "café".into()),
            ("u".into(), "Ã©".into(), "Привет".into()),
        ],
        "{events:#?}"
    );
    // Not ASCII: refused at its Bind, with the reason; nothing runs up to the Sync.
    let lit = "UPDATE brieff SET bfso = 'ü' || $1 WHERE bfkey = $2";
    let steps = vec![
        send(cat(&[parse("lit", lit, &[25, 23]), sync()])),
        send(query("SET client_encoding = 'LATIN1'")),
        send(cat(&[
            bind("", "lit", 0, &[Some(b"1"), Some(b"201")], 0),
            execute("", 0),
            sync(),
        ])),
        send(query(
            "SELECT octet_length(bfso) FROM brieff WHERE bfkey = 201",
        )),
    ];
    let replies = run(proxy.addr, &db, 0, &steps).await;
    let refused = &replies[3];
    assert_eq!(
        sqlstate(&refused[0]).as_deref(),
        Some("HS002"),
        "{}",
        describe_frames(refused)
    );
    assert!(
        field(&refused[0], b'M').unwrap().contains("\"lit\""),
        "{}",
        describe_frames(refused)
    );
    assert_eq!(
        refused.len(),
        2,
        "the error, then ReadyForQuery: {}",
        describe_frames(refused)
    );
    let after = describe_frames(&replies[4]);
    assert!(after.contains("12"), "still Привет, 12 bytes: {after}");
    proxy.shutdown().await;
}

on_both!(
    latin1_text_was_rewritten_lossily,
    latin1_write_failed_on_a_row_holding_characters_latin1_lacks,
    prepared_write_recorded_wrong_text_after_client_encoding_changed,
    every_builtin_type_round_trips
);
