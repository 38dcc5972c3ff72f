//! Cost of gate rule evaluation with 50 rules loaded (40 statement rules, 10 row guards): the
//! statement phase for a write no rule refuses (every rule is looked at: the worst case), one
//! that the 40th rule refuses, and the row phase (10 CEL guards) for one changed row.
//!   cargo bench --bench gates

use std::collections::BTreeMap;
use std::fmt::Write;

use criterion::{criterion_group, criterion_main, Criterion};
use hindsight::gates::decide::{row, statement, StatementFacts, Verdict};
use hindsight::gates::guard::RowFacts;
use hindsight::gates::killswitch::KillSwitches;
use hindsight::gates::rules::compile;

fn fifty_rules() -> String {
    let mut s = String::new();
    for i in 0..40 {
        let _ = write!(
            s,
            "[[rule]]\nname = \"r{i}\"\ntables = [\"app{i}.*\", \"public.t{i}\"]\ncolumns = [\"c{i}\", \"d{i}\"]\noperations = [\"update\", \"delete\"]\napplications = [\"svc{i}\"]\ntags = {{ controller = [\"ctl{i}\"] }}\nrequire_flag = \"f{}\"\n\n",
            i % 5
        );
    }
    for i in 0..10 {
        let _ = write!(
            s,
            "[[rule]]\nname = \"g{i}\"\ntables = [\"public.brieff\"]\nwhen = 'after.bfso == null && before.bfso != null && changed(\"bfso\") && after.n > {i}'\n\n"
        );
    }
    for i in 0..5 {
        let _ = write!(
            s,
            "[flags.f{i}]\nfor = {{ application_name = [\"svc-on\"] }}\npercentage = 10\n\n"
        );
    }
    s
}

fn bench(c: &mut Criterion) {
    let rules = compile(&fifty_rules(), "bench").unwrap();
    assert_eq!(rules.rules.len(), 50);
    let flags = rules.flags.clone();
    let flag = move |n: &str| flags.get(n).cloned();
    let kill = KillSwitches::default();
    let tags: BTreeMap<String, String> = [("controller".to_string(), "ctl39".to_string())].into();
    let pass = hindsight::statement::analyze(
        "UPDATE public.brieff SET bfso = NULL, n = 2 WHERE bfkey = $1",
    )
    .unwrap();
    let hit = hindsight::statement::analyze("UPDATE public.t39 SET c39 = 1 WHERE id = $1").unwrap();
    let facts = |a: &'static hindsight::statement::Analysis, app: &'static str| StatementFacts {
        kind: a.kind,
        writes: &a.writes,
        fingerprint: "0a1b2c3d4e5f6071",
        user: "app_user",
        database: "vacols",
        application: app,
        client_ip: Some("10.1.2.3".parse().unwrap()),
        tags: Box::leak(Box::new(tags.clone())),
    };
    let pass: &'static _ = Box::leak(Box::new(pass[0].analysis.clone()));
    let hit: &'static _ = Box::leak(Box::new(hit[0].analysis.clone()));
    let (fp, fh) = (facts(pass, "web"), facts(hit, "svc39"));
    assert_eq!(
        statement(&rules, &flag, &kill, &fp),
        Verdict::Allow { exempt: false }
    );
    assert!(matches!(
        statement(&rules, &flag, &kill, &fh),
        Verdict::Deny(_)
    ));
    c.bench_function("statement phase, 50 rules, no rule refuses", |b| {
        b.iter(|| statement(&rules, &flag, &kill, std::hint::black_box(&fp)))
    });
    c.bench_function("statement phase, 50 rules, the 40th refuses", |b| {
        b.iter(|| statement(&rules, &flag, &kill, std::hint::black_box(&fh)))
    });
    let before = serde_json::json!({"bfkey": 1, "bfso": "A", "n": 1, "bfcorlid": "x"});
    let after = serde_json::json!({"bfkey": 1, "bfso": "B", "n": 2, "bfcorlid": "x"});
    let (before, after) = (
        before.as_object().unwrap().clone(),
        after.as_object().unwrap().clone(),
    );
    let r = RowFacts {
        before: Some(&before),
        after: Some(&after),
        op: "update",
        table: "public.brieff",
    };
    assert_eq!(
        row(&rules, &flag, &fp, &r),
        Verdict::Allow { exempt: false }
    );
    c.bench_function("row phase, 10 CEL guards, one row", |b| {
        b.iter(|| row(&rules, &flag, &fp, std::hint::black_box(&r)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
