//! The Grafana dashboard shipped in the Helm chart: valid JSON, and every PromQL expression
//! names only metrics hindsight exports (the proxy's, or the archive's). Lives here because
//! this crate sees both registries.

use std::collections::BTreeSet;

fn exported() -> BTreeSet<String> {
    let proxy = hindsight::telemetry::Metrics::new();
    let mut names: BTreeSet<String> = proxy.names().iter().cloned().collect();
    let archive = hindsight_history::metrics::Metrics::new().render();
    names.extend(
        archive
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string),
    );
    names
}

/// `hindsight_…` identifiers in an expression.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("hindsight_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[test]
fn dashboard_is_valid_json_and_names_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../helm/hindsight/dashboards/hindsight.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    assert!(all.len() >= 8, "{all:?}");
    let names = exported();
    assert!(
        names.contains("hindsight_new_write_paths_total"),
        "{names:?}"
    );
    for e in &all {
        let used = metrics_in(e);
        assert!(
            !used.is_empty(),
            "expression names no hindsight metric: {e}"
        );
        for m in used {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s).filter(|b| names.contains(*b)))
                .unwrap_or(&m);
            assert!(
                names.contains(base),
                "{m} in `{e}` is not a metric hindsight exports"
            );
        }
    }
}

#[test]
fn a_misspelt_metric_would_be_caught() {
    assert!(!exported().contains("hindsight_new_write_path_total"));
    assert_eq!(
        metrics_in("sum(rate(hindsight_a_total[5m])) / hindsight_b"),
        ["hindsight_a_total", "hindsight_b"]
    );
}
