//! Evaluating rules: pure functions of the rules, the flags, the kill switches and the facts of
//! one statement (before it runs) or one changed row (at COMMIT).
//!
//! Order (documented in the README): kill switches first; then the rules without `when`, in
//! file order, before the statement runs; then the rules with `when`, in file order, on each
//! captured row at COMMIT. Within a phase the first *decisive* rule wins: a rule is decisive
//! when it matches and its `require_flag` (if any) is off for the actor; `allow` rules are
//! always decisive (and exempt the statement from the row phase).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::flags::{Actor, FlagDef};
use super::guard::RowFacts;
use super::killswitch::KillSwitches;
use super::rules::{Action, Rule, RuleSet};
use crate::statement::{Kind, Write};

/// What a statement is and who runs it.
#[derive(Debug, Clone)]
pub struct StatementFacts<'a> {
    pub kind: Kind,
    pub writes: &'a [Write],
    pub fingerprint: &'a str,
    pub user: &'a str,
    pub database: &'a str,
    pub application: &'a str,
    pub client_ip: Option<IpAddr>,
    pub tags: &'a BTreeMap<String, String>,
}

impl StatementFacts<'_> {
    fn actor(&self) -> Actor<'_> {
        Actor {
            application: self.application,
            user: self.user,
            tags: Some(self.tags),
        }
    }
}

/// A rule (or kill switch) that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Rule name, or `kill-switch:<scope>=<value>`.
    pub rule: String,
    /// Why, in words a developer acts on.
    pub reason: String,
    pub hint: Option<String>,
    pub source: HitSource,
}

/// What decided: a rule, a kill switch, or the application's footprint (each has its own
/// SQLSTATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitSource {
    Rule,
    KillSwitch,
    Footprint,
}

/// The outcome for a statement or row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead. `exempt`: an `allow` rule decided; row rules do not apply.
    Allow {
        exempt: bool,
    },
    Deny(Hit),
    /// Dry run: go ahead, and record that this rule would have refused.
    Audit(Hit),
}

/// Whether a statement kind is a write that gates look at.
pub fn is_write(kind: Kind) -> bool {
    kind.writes_rows() || kind.statement_event()
}

fn matches_statement(r: &Rule, f: &StatementFacts) -> bool {
    (r.tables.is_empty()
        || f.writes.iter().any(|w| {
            r.tables
                .iter()
                .any(|t| t.matches(&w.table.schema, &w.table.name))
        }))
        && matches_without_tables(r, f)
}

/// `None`: not decisive (its flag is on); else the hit.
fn decisive(
    r: &Rule,
    actor: &Actor,
    flag: &dyn Fn(&str) -> Option<FlagDef>,
    what: String,
) -> Option<Hit> {
    let reason = match &r.def.require_flag {
        Some(name) => {
            if flag(name).is_some_and(|f| f.is_on(name, actor)) {
                return None;
            }
            format!(
                "{what} requires feature flag \"{name}\", which is off for application {:?} (user {:?})",
                actor.application, actor.user
            )
        }
        None => what,
    };
    r.hits.fetch_add(1, Ordering::Relaxed);
    Some(Hit {
        rule: r.def.name.clone(),
        reason,
        hint: r.def.hint.clone(),
        source: HitSource::Rule,
    })
}

fn verdict(action: Action, hit: Hit) -> Verdict {
    match action {
        Action::Deny => Verdict::Deny(hit),
        Action::Audit => Verdict::Audit(hit),
        Action::Allow => Verdict::Allow { exempt: true },
    }
}

fn describe(f: &StatementFacts) -> String {
    let tables: Vec<String> = f.writes.iter().map(|w| w.table.to_string()).collect();
    let cols: Vec<&str> = f
        .writes
        .iter()
        .flat_map(|w| w.columns.iter().map(String::as_str))
        .collect();
    let mut s = f.kind.label().to_uppercase();
    if !tables.is_empty() {
        s.push_str(&format!(" on {}", tables.join(", ")));
    }
    if !cols.is_empty() {
        s.push_str(&format!(" (columns {})", cols.join(", ")));
    }
    s
}

/// Before a statement runs: kill switches, then rules without `when`.
pub fn statement(
    rules: &RuleSet,
    flag: &dyn Fn(&str) -> Option<FlagDef>,
    kill: &KillSwitches,
    f: &StatementFacts,
) -> Verdict {
    if !is_write(f.kind) {
        return Verdict::Allow { exempt: false };
    }
    if let Some((scope, value)) = kill.hit(f.database, f.application, f.user, f.writes) {
        return Verdict::Deny(Hit {
            rule: format!("kill-switch:{scope}={value}"),
            reason: format!("writes are switched off for {scope} {value:?} (read-only mode)"),
            hint: Some(format!(
                "An operator switched this off through the admin API; DELETE /gates/killswitches/{scope}/{value} turns writes back on."
            )),
            source: HitSource::KillSwitch,
        });
    }
    let actor = f.actor();
    for r in rules.rules.iter().filter(|r| r.guard.is_none()) {
        if !matches_statement(r, f) {
            continue;
        }
        if r.def.action == Action::Allow {
            r.hits.fetch_add(1, Ordering::Relaxed);
            return Verdict::Allow { exempt: true };
        }
        if let Some(hit) = decisive(r, &actor, flag, describe(f)) {
            return verdict(r.def.action, hit);
        }
    }
    Verdict::Allow { exempt: false }
}

/// At COMMIT, for one captured row of a statement that `statement` allowed (not exempt): the
/// rules with `when`. `table` is the row's `schema.table` from the catalog.
pub fn row(
    rules: &RuleSet,
    flag: &dyn Fn(&str) -> Option<FlagDef>,
    f: &StatementFacts,
    row: &RowFacts,
) -> Verdict {
    let actor = f.actor();
    let (schema, name) = row.table.split_once('.').unwrap_or(("", row.table));
    // The images become CEL values once per row, for however many guards apply.
    let mut scope: Option<super::guard::RowScope> = None;
    for r in rules.rules.iter() {
        let Some(guard) = &r.guard else { continue };
        let table_ok = r.tables.is_empty() || r.tables.iter().any(|t| t.matches(schema, name));
        if !table_ok || !matches_without_tables(r, f) {
            continue;
        }
        let scope = scope.get_or_insert_with(|| super::guard::RowScope::new(row));
        let (hit, why) = match guard.eval_in(scope) {
            Ok(true) => (true, format!("`{}` is true for this row", guard.source())),
            Ok(false) => (false, String::new()),
            // A guard that cannot be evaluated must not let the write through.
            Err(e) => (true, format!("the guard could not be evaluated ({e})")),
        };
        if !hit {
            continue;
        }
        if r.def.action == Action::Allow {
            r.hits.fetch_add(1, Ordering::Relaxed);
            return Verdict::Allow { exempt: true };
        }
        let what = format!("{} of a row of {}: {why}", row.op.to_uppercase(), row.table);
        if let Some(hit) = decisive(r, &actor, flag, what) {
            return verdict(r.def.action, hit);
        }
    }
    Verdict::Allow { exempt: false }
}

/// The statement matchers other than tables (rows are matched on their catalog table).
fn matches_without_tables(r: &Rule, f: &StatementFacts) -> bool {
    let d = &r.def;
    let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
    any(&d.operations, f.kind.label())
        && (d.columns.is_empty()
            || f.writes
                .iter()
                .any(|w| w.columns.iter().any(|c| d.columns.contains(c))))
        && any(&d.users, f.user)
        && any(&d.databases, f.database)
        && any(&d.applications, f.application)
        && (r.client_addrs.is_empty()
            || f.client_ip
                .is_some_and(|ip| r.client_addrs.iter().any(|c| c.contains(ip))))
        && d.tags
            .iter()
            .all(|(k, vs)| f.tags.get(k).is_some_and(|v| vs.contains(v)))
        && any(&d.fingerprints, f.fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::rules::compile;
    use crate::statement::analyze;

    fn facts_for<'a>(
        a: &'a crate::statement::Analysis,
        tags: &'a BTreeMap<String, String>,
        app: &'a str,
    ) -> StatementFacts<'a> {
        StatementFacts {
            kind: a.kind,
            writes: &a.writes,
            fingerprint: "fp1",
            user: "alice",
            database: "vacols",
            application: app,
            client_ip: Some("10.1.2.3".parse().unwrap()),
            tags,
        }
    }

    fn decide_one(rules: &str, sql: &str, app: &str, tags: &[(&str, &str)]) -> Verdict {
        let set = compile(rules, "test").unwrap();
        let a = &analyze(sql).unwrap()[0].analysis;
        let tags: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let flags = set.flags.clone();
        statement(
            &set,
            &move |n: &str| flags.get(n).cloned(),
            &KillSwitches::default(),
            &facts_for(a, &tags, app),
        )
    }

    fn denied(v: &Verdict) -> bool {
        matches!(v, Verdict::Deny(_))
    }

    #[test]
    fn each_match_dimension_narrows_a_rule() {
        let upd = "UPDATE public.brieff SET bfso = NULL";
        let rule = |extra: &str| format!("[[rule]]\nname = \"r\"\n{extra}\n");
        for (extra, hit) in [
            ("operations = [\"update\"]", true),
            ("operations = [\"delete\"]", false),
            ("tables = [\"public.brief*\"]", true),
            ("tables = [\"vacols.*\"]", false),
            ("columns = [\"bfso\"]", true),
            ("columns = [\"bfkey\"]", false),
            ("users = [\"alice\"]", true),
            ("users = [\"bob\"]", false),
            ("databases = [\"vacols\"]", true),
            ("databases = [\"other\"]", false),
            ("applications = [\"web\"]", true),
            ("applications = [\"batch\"]", false),
            ("client_addrs = [\"10.0.0.0/8\"]", true),
            ("client_addrs = [\"192.168.0.0/16\"]", false),
            ("tags = { controller = [\"certs\"] }", true),
            ("tags = { controller = [\"other\"] }", false),
            ("fingerprints = [\"fp1\"]", true),
            ("fingerprints = [\"fp2\"]", false),
        ] {
            let v = decide_one(&rule(extra), upd, "web", &[("controller", "certs")]);
            assert_eq!(denied(&v), hit, "{extra}: {v:?}");
        }
        // Reads are never gated.
        assert!(!denied(&decide_one(&rule(""), "SELECT 1", "web", &[])));
    }

    #[test]
    fn flags_order_allow_and_audit() {
        let rules = r#"
[[rule]]
name = "migrations-exempt"
users = ["alice"]
applications = ["migrate"]
action = "allow"

[[rule]]
name = "needs-flag"
tables = ["*.brieff"]
require_flag = "v2"

[[rule]]
name = "dry"
tables = ["*.other"]
action = "audit"

[flags.v2]
for = { application_name = ["cert-v2"] }
"#;
        let upd = "UPDATE brieff SET bfso = 1";
        match decide_one(rules, upd, "cert-v1", &[]) {
            Verdict::Deny(h) => {
                assert_eq!(h.rule, "needs-flag");
                assert!(
                    h.reason.contains("\"v2\"") && h.reason.contains("cert-v1"),
                    "{}",
                    h.reason
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide_one(rules, upd, "cert-v2", &[]),
            Verdict::Allow { exempt: false }
        );
        assert_eq!(
            decide_one(rules, upd, "migrate", &[]),
            Verdict::Allow { exempt: true }
        );
        assert!(matches!(
            decide_one(rules, "DELETE FROM other", "x", &[]),
            Verdict::Audit(ref h) if h.rule == "dry"
        ));
    }

    #[test]
    fn kill_switches_come_first_and_spare_reads() {
        let set = compile("", "t").unwrap();
        let mut kill = KillSwitches::default();
        kill.on
            .insert((crate::gates::killswitch::Scope::Application, "web".into()));
        let tags = BTreeMap::new();
        let none = |_: &str| None;
        let a = &analyze("INSERT INTO t VALUES (1)").unwrap()[0].analysis;
        let v = statement(&set, &none, &kill, &facts_for(a, &tags, "web"));
        assert!(
            matches!(v, Verdict::Deny(ref h) if h.source == HitSource::KillSwitch),
            "{v:?}"
        );
        let v = statement(&set, &none, &kill, &facts_for(a, &tags, "batch"));
        assert_eq!(v, Verdict::Allow { exempt: false });
        let r = &analyze("SELECT * FROM t").unwrap()[0].analysis;
        let v = statement(&set, &none, &kill, &facts_for(r, &tags, "web"));
        assert_eq!(v, Verdict::Allow { exempt: false });
    }
}
