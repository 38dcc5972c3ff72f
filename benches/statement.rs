//! What a statement costs hindsight when it has not seen its text before (every time, for
//! clients that put values in the text, like pgbench's simple protocol): the analysis cache's
//! miss (pg_query parse + fingerprint, and the proof that the fingerprint is shared), its hit by
//! the text's shape (a scan; the fingerprint shared when proven), and
//! the capture rewrite, each part alone.
//!   cargo bench --bench statement
use criterion::{criterion_group, criterion_main, Criterion};
use hindsight::capture::image_sql::Form;
use hindsight::capture::rewrite::rewrite;
use hindsight::statement::cache::AnalysisCache;

const UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + -3447 WHERE aid = 88771;";
const INSERT: &str = "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (41, 8, 88771, -3447, CURRENT_TIMESTAMP);";

fn bench(c: &mut Criterion) {
    for (name, sql) in [("UPDATE", UPDATE), ("INSERT", INSERT)] {
        c.bench_function(
            &format!("{name}: analysis, cache miss (parse + fingerprint + proof)"),
            |b| {
                let cache = AnalysisCache::new(1);
                let mut i = 0u64;
                b.iter(|| {
                    // A new table name each time: neither the text nor its shape was seen.
                    i += 1;
                    cache.get(&sql.replace("pgbench_", &format!("t{i}_")))
                })
            },
        );
        c.bench_function(
            &format!("{name}: analysis, found by its shape (scan)"),
            |b| {
                let cache = AnalysisCache::new(10);
                cache.get(sql);
                let mut i = 0u64;
                b.iter(|| {
                    // A new value each time, as clients that put values in the text send.
                    i += 1;
                    cache.get(&sql.replace("88771", &i.to_string()))
                })
            },
        );
        c.bench_function(&format!("{name}: analysis, cache hit"), |b| {
            let cache = AnalysisCache::new(10);
            b.iter(|| cache.get(sql))
        });
        c.bench_function(&format!("{name}: parser::parse"), |b| {
            b.iter(|| hindsight::statement::parser::parse(sql).unwrap())
        });
        c.bench_function(&format!("{name}: parser::fingerprint"), |b| {
            b.iter(|| hindsight::statement::parser::fingerprint(sql).unwrap())
        });
        c.bench_function(&format!("{name}: parser::tokens"), |b| {
            b.iter(|| hindsight::statement::parser::tokens(sql).unwrap())
        });
        let analyzed = AnalysisCache::new(1).get(sql);
        let located = &analyzed.as_ref().as_ref().unwrap().statements[0].located;
        for major in [15, 18] {
            c.bench_function(&format!("{name}: capture rewrite (PG {major})"), |b| {
                b.iter(|| rewrite(sql, located, major, 1000, &[], Form::Jsonb).unwrap())
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
