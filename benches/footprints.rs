//! Cost of the footprint lookup on the statement path: 10,000 known paths of 100 actors
//! loaded; one UPDATE whose path is known (the every-write case: read lock, id hash, map
//! lookup, count), the same with the mode lookup, and one whose path is new (the result is
//! built; recording and alerting happen after, once per new path).
//!   cargo bench --bench footprints

use std::collections::BTreeMap;
use std::sync::RwLock;

use criterion::{criterion_group, criterion_main, Criterion};
use hindsight::footprint::book::{Book, Entry, Status};
use hindsight::footprint::decide::{mode_for, Mode, Modes};
use hindsight::footprint::live::{sightings, WriteFacts};
use hindsight::footprint::path::{self, ActorRef, Path};

fn book(target: ActorRef, fingerprint: &str) -> Book {
    let mut b = Book::default();
    let mut add = |actor: ActorRef, table: &str, cols: &[&str], fp: &str| {
        let id = path::write_id(actor, table, "update", cols, fp);
        b.merge(
            id,
            Entry {
                id: id.to_string(),
                actor: actor.owned(),
                path: Path::Write {
                    table: table.into(),
                    operation: "update".into(),
                    columns: cols.iter().map(|c| c.to_string()).collect(),
                    fingerprint: fp.into(),
                },
                status: Status::Learned,
                status_ms: 0,
                first_seen_ms: 0,
                last_seen_ms: 0,
                counts: BTreeMap::new(),
                example: String::new(),
                controller: None,
                action: None,
            },
        );
    };
    let apps: Vec<String> = (0..100).map(|i| format!("app{i}")).collect();
    for app in &apps {
        let a = ActorRef {
            application: app,
            user: "app_user",
            database: "vacols",
        };
        for t in 0..100 {
            add(a, &format!("t{t}"), &["c1", "c2"], &format!("{t:016x}"));
        }
    }
    add(target, "brieff", &["bfcorlid"], fingerprint);
    b
}

fn bench(c: &mut Criterion) {
    let target = ActorRef {
        application: "certification-v1",
        user: "app_user",
        database: "vacols",
    };
    let fp = "0a1b2c3d4e5f6071";
    let book = RwLock::new(book(target, fp));
    assert_eq!(book.read().unwrap().len(), 10_001);
    let known =
        hindsight::statement::analyze("UPDATE brieff SET bfcorlid = $1 WHERE bfkey = $2").unwrap();
    let new =
        hindsight::statement::analyze("UPDATE brieff SET bfso = NULL WHERE bfkey = $1").unwrap();
    let tags = BTreeMap::new();
    let example = || String::from("UPDATE …");
    let facts = |a: &'static hindsight::statement::Analysis| WriteFacts {
        actor: target,
        kind: a.kind,
        writes: &a.writes,
        fingerprint: fp,
        tags: Box::leak(Box::new(tags.clone())),
        example: Box::leak(Box::new(example)),
    };
    let known: &'static _ = Box::leak(Box::new(known[0].analysis.clone()));
    let new: &'static _ = Box::leak(Box::new(new[0].analysis.clone()));
    let (fk, fnew) = (facts(known), facts(new));
    let modes = RwLock::new(Modes {
        default: Some(Mode::Alert),
        ..Modes::default()
    });
    c.bench_function("footprint: known path (lookup + count)", |b| {
        b.iter(|| {
            let news = sightings(&book.read().unwrap(), &fk, Mode::Alert, 1);
            assert!(news.is_empty());
        })
    });
    c.bench_function("footprint: known path, with the mode lookup", |b| {
        b.iter(|| {
            let g = book.read().unwrap();
            let first = g.app_first_seen(target.application);
            let mode = mode_for(&modes.read().unwrap(), target.application, first, 1);
            assert!(sightings(&g, &fk, mode, 1).is_empty());
        })
    });
    c.bench_function("footprint: new path (found new)", |b| {
        b.iter(|| {
            let news = sightings(&book.read().unwrap(), &fnew, Mode::Alert, 1);
            assert_eq!(news.len(), 1);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
