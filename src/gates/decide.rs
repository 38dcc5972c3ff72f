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
    pub kill_switch: bool,
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
        kill_switch: false,
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
            kill_switch: true,
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
    for r in rules.rules.iter() {
        let Some(guard) = &r.guard else { continue };
        let table_ok = r.tables.is_empty() || r.tables.iter().any(|t| t.matches(schema, name));
        if !table_ok || !matches_without_tables(r, f) {
            continue;
        }
        let (hit, why) = match guard.eval(row) {
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
