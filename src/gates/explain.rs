//! `hindsight rules explain`: which rule decides a statement and why, without a database.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::decide::{self, StatementFacts, Verdict};
use super::killswitch::KillSwitches;
use super::rules::RuleSet;

/// Who runs the statement (what `rules explain` is told on the command line).
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub application: String,
    pub user: String,
    pub database: String,
    pub client_ip: Option<std::net::IpAddr>,
    pub tags: BTreeMap<String, String>,
}

/// A report: per statement, the decision before it runs and the row rules that would be
/// checked on its rows at COMMIT.
pub fn explain(rules: &RuleSet, sql: &str, who: &Who) -> Result<String, String> {
    let (text, comment_tags) = crate::statement::sqlcommenter::split(sql);
    let mut tags = comment_tags;
    tags.extend(who.tags.clone());
    let statements = crate::statement::analyze(text).map_err(|e| e.to_string())?;
    let flags = rules.flags.clone();
    let flag = move |n: &str| flags.get(n).cloned();
    let mut out = String::new();
    for s in &statements {
        let a = &s.analysis;
        let stmt = text[s.span.clone()].trim();
        let fp = crate::statement::parser::fingerprint(stmt)
            .map(|f| f.hex)
            .unwrap_or_default();
        let f = StatementFacts {
            kind: a.kind,
            writes: &a.writes,
            fingerprint: &fp,
            user: &who.user,
            database: &who.database,
            application: &who.application,
            client_ip: who.client_ip,
            tags: &tags,
        };
        let _ = writeln!(out, "{stmt}");
        let tables: Vec<String> = a.writes.iter().map(|w| w.table.to_string()).collect();
        let cols: Vec<&str> = a
            .writes
            .iter()
            .flat_map(|w| w.columns.iter().map(String::as_str))
            .collect();
        let _ = writeln!(
            out,
            "  operation {}, tables [{}], columns [{}], fingerprint {fp}",
            a.kind.label(),
            tables.join(", "),
            cols.join(", ")
        );
        if !decide::is_write(a.kind) {
            let _ = writeln!(out, "  not a write: gates do not apply");
            continue;
        }
        let v = decide::statement(rules, &flag, &KillSwitches::default(), &f);
        let _ = match &v {
            Verdict::Deny(h) => writeln!(out, "  DENY by rule \"{}\": {}", h.rule, h.reason),
            Verdict::Audit(h) => writeln!(
                out,
                "  AUDIT (dry run) by rule \"{}\": would deny: {}",
                h.rule, h.reason
            ),
            Verdict::Allow { exempt: true } => {
                writeln!(
                    out,
                    "  ALLOW (exempted by an allow rule; row rules skipped)"
                )
            }
            Verdict::Allow { exempt: false } => writeln!(out, "  allowed before it runs"),
        };
        if matches!(v, Verdict::Allow { exempt: false }) {
            let row_rules: Vec<&str> = rules
                .rules
                .iter()
                .filter(|r| r.guard.is_some())
                .filter(|r| {
                    r.tables.is_empty()
                        || a.writes.iter().any(|w| {
                            r.tables
                                .iter()
                                .any(|t| t.matches(&w.table.schema, &w.table.name))
                        })
                })
                .map(|r| r.def.name.as_str())
                .collect();
            if !row_rules.is_empty() {
                let _ = writeln!(
                    out,
                    "  then, on each changed row at COMMIT: {}",
                    row_rules.join(", ")
                );
            }
        }
    }
    Ok(out)
}
