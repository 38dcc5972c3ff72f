//! Benchmark data: a history store holding N synthetic pgbench-like change events, written
//! straight into the store through the archive's own row conversion (`record::event_row`) and
//! writer, so it has the shape real archives have. Used by `scripts/bench-history.sh`.
//!
//!   synth STORE EVENTS ACCOUNTS HOURS
//!
//! First a snapshot of ACCOUNTS rows of `public.pgbench_accounts` (op r), then TPC-B-like
//! transactions (three updates and an insert each) spread evenly over HOURS hours ending now,
//! from 10 applications in turn, until EVENTS change events exist.

use std::collections::BTreeMap;
use std::time::Instant;

use hindsight::audit::event::{ChangeEvent, ChangeKey, Op, Row, Source, TxPosition};
use hindsight_history::record::{event_row, EventRow, Provenance, TxRow};
use hindsight_history::store::{Open, PartitionOffset, Store};
use serde_json::json;

const BATCH: usize = 250_000;
const FILLER: &str =
    "                                                                                    ";

struct Gen {
    store: Store,
    events: Vec<EventRow>,
    txs: Vec<TxRow>,
    offsets: BTreeMap<String, i64>,
    tx_offset: i64,
    written: u64,
}

fn row(v: serde_json::Value) -> Row {
    v.as_object().expect("object").clone()
}

fn source(table: &str, ts_ms: i64, app: &str, statement: &str, tx: &str, snapshot: bool) -> Source {
    Source {
        version: "0.1.0".into(),
        connector: "hindsight".into(),
        name: "bench".into(),
        ts_ms,
        snapshot: if snapshot { "true" } else { "false" }.into(),
        db: "bench".into(),
        schema: "public".into(),
        table: table.into(),
        tx_id: None,
        user: "postgres".into(),
        application_name: app.into(),
        client_addr: "127.0.0.1:40000".into(),
        statement: statement.into(),
        fingerprint: format!("{:016x}", statement.len() * 7919),
        tags: BTreeMap::new(),
        session_id: tx.split(':').next().unwrap_or_default().into(),
        statement_seq: 1,
        side_effects: None,
        side_effect_tables: Vec::new(),
        blocked_by: None,
        dry_run_rule: None,
        redacted: false,
        cascade: None,
    }
}

impl Gen {
    fn push(&mut self, table: &str, key: Row, ev: ChangeEvent) {
        let topic = format!("bench.public.{table}");
        let offset = self.offsets.entry(topic.clone()).or_insert(0);
        let at = Provenance {
            topic,
            partition: 0,
            offset: *offset,
        };
        *offset += 1;
        let key = ChangeKey {
            table: format!("public.{table}"),
            key,
        };
        self.events.push(event_row(ev, Some(key), at));
    }

    fn tx(&mut self, id: &str, status: &str, ts_ms: i64, n: i64) {
        self.txs.push(TxRow {
            id: id.into(),
            status: status.into(),
            tx_id: None,
            event_count: n,
            data_collections_json: "[]".into(),
            ts_ms,
            commit_status: (status == "END").then(|| "committed".to_string()),
            resolution: None,
            at: Some(Provenance {
                topic: "bench.transaction".into(),
                partition: 0,
                offset: self.tx_offset,
            }),
        });
        self.tx_offset += 1;
    }

    async fn flush(&mut self, force: bool) {
        if !force && self.events.len() < BATCH {
            return;
        }
        let offsets: Vec<PartitionOffset> = self
            .offsets
            .iter()
            .map(|(t, n)| PartitionOffset {
                topic: t.clone(),
                partition: 0,
                next: *n,
            })
            .collect();
        let events = std::mem::take(&mut self.events);
        self.written += events.len() as u64;
        self.store
            .append_events("synth", &events, &offsets)
            .await
            .expect("append events");
        let txs = std::mem::take(&mut self.txs);
        let tx_off = [PartitionOffset {
            topic: "bench.transaction".into(),
            partition: 0,
            next: self.tx_offset,
        }];
        self.store
            .append_transactions("synth", &txs, &tx_off)
            .await
            .expect("append transactions");
        eprintln!("synth: {} events written", self.written);
    }
}

async fn snapshot(g: &mut Gen, accounts: i64, ts: i64) {
    let id = "snapshot:public.pgbench_accounts:0";
    g.tx(id, "BEGIN", ts, accounts);
    for aid in 1..=accounts {
        let after = row(
            json!({"aid": aid, "bid": 1 + (aid - 1) / 100_000, "abalance": 0, "filler": FILLER}),
        );
        let ev = ChangeEvent {
            before: None,
            after: Some(after),
            source: source(
                "pgbench_accounts",
                ts,
                "hindsight-snapshot",
                "-- snapshot",
                id,
                true,
            ),
            op: Op::Read,
            ts_ms: ts,
            transaction: TxPosition {
                id: id.into(),
                total_order: aid as u64,
                data_collection_order: aid as u64,
            },
        };
        g.push("pgbench_accounts", row(json!({"aid": aid})), ev);
        g.flush(false).await;
    }
    g.tx(id, "END", ts, accounts);
}

/// The transaction an event belongs to.
struct Txn<'a> {
    ts: i64,
    app: &'a str,
    id: &'a str,
}

fn update(
    table: &str,
    key: (&str, i64),
    cols: serde_json::Value,
    (col, delta): (&str, i64),
    t: &Txn,
    n: u64,
) -> (Row, ChangeEvent) {
    let (ts, app, tx) = (t.ts, t.app, t.id);
    let mut before = row(cols);
    before.insert(key.0.into(), json!(key.1));
    let mut after = before.clone();
    let old = before.get(col).and_then(|v| v.as_i64()).unwrap_or(0);
    after.insert(col.into(), json!(old + delta));
    let stmt = format!("UPDATE {table} SET {col} = {col} + $1 WHERE {} = $2", key.0);
    let ev = ChangeEvent {
        before: Some(before),
        after: Some(after),
        source: source(table, ts, app, &stmt, tx, false),
        op: Op::Update,
        ts_ms: ts,
        transaction: TxPosition {
            id: tx.into(),
            total_order: n,
            data_collection_order: 1,
        },
    };
    (row(json!({key.0: key.1})), ev)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, events, accounts, hours] = &args[..] else {
        eprintln!("usage: synth STORE EVENTS ACCOUNTS HOURS");
        std::process::exit(2);
    };
    let (events, accounts, hours): (u64, i64, i64) = (
        events.parse().unwrap(),
        accounts.parse().unwrap(),
        hours.parse().unwrap(),
    );
    let started = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let begin = now - hours * 3_600_000;
    let mut g = Gen {
        store: Store::open(store, Open::CreateIfMissing)
            .await
            .expect("store"),
        events: Vec::new(),
        txs: Vec::new(),
        offsets: BTreeMap::new(),
        tx_offset: 0,
        written: 0,
    };
    snapshot(&mut g, accounts, begin - 1).await;
    let txs = (events.saturating_sub(accounts as u64) / 4).max(1);
    let step = (hours * 3_600_000) as f64 / txs as f64;
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for t in 0..txs {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let ts = begin + (t as f64 * step) as i64;
        let app = format!("app-{}", t % 10);
        let id = format!("s{}:{}", t % 64, t);
        let (aid, tid, bid) = (
            1 + (seed % accounts as u64) as i64,
            1 + (seed >> 20) as i64 % 100,
            1 + (seed >> 40) as i64 % 10,
        );
        let delta = (seed % 10_000) as i64 - 5_000;
        g.tx(&id, "BEGIN", ts, 4);
        let filler = FILLER;
        let txn = Txn {
            ts,
            app: &app,
            id: &id,
        };
        let evs = [
            (
                "pgbench_accounts",
                update(
                    "pgbench_accounts",
                    ("aid", aid),
                    json!({"bid": bid, "abalance": (seed >> 8) as i64 % 100_000, "filler": filler}),
                    ("abalance", delta),
                    &txn,
                    1,
                ),
            ),
            (
                "pgbench_tellers",
                update(
                    "pgbench_tellers",
                    ("tid", tid),
                    json!({"bid": bid, "tbalance": (seed >> 9) as i64 % 100_000, "filler": null}),
                    ("tbalance", delta),
                    &txn,
                    2,
                ),
            ),
            (
                "pgbench_branches",
                update(
                    "pgbench_branches",
                    ("bid", bid),
                    json!({"bbalance": (seed >> 10) as i64 % 100_000, "filler": null}),
                    ("bbalance", delta),
                    &txn,
                    3,
                ),
            ),
        ];
        for (table, (key, ev)) in evs {
            g.push(table, key, ev);
        }
        let hist = row(
            json!({"tid": tid, "bid": bid, "aid": aid, "delta": delta, "mtime": "2026-12-04 10:00:00", "filler": null}),
        );
        let ev = ChangeEvent {
            before: None,
            after: Some(hist.clone()),
            source: source("pgbench_history", ts, &app, "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)", &id, false),
            op: Op::Create,
            ts_ms: ts,
            transaction: TxPosition { id: id.clone(), total_order: 4, data_collection_order: 1 },
        };
        g.push("pgbench_history", hist, ev);
        g.tx(&id, "END", ts, 4);
        g.flush(false).await;
    }
    g.flush(true).await;
    println!(
        "{} events in {:.1} s",
        g.written,
        started.elapsed().as_secs_f64()
    );
}
