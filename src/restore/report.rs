//! The readable dry-run report: per table, each row with what happens to each column (restore,
//! keep, conflict, already restored), who changed it since, the conflicts with all three
//! versions (target, expected, actual), and what was left out.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::plan::{
    row_of, Action, ChangeRef, Conflict, ConflictPolicy, Image, Plan, RowPlan, Verdict,
};

fn json(image: &Option<Image>) -> String {
    row_of(image).map_or("(no row)".into(), |r| {
        serde_json::to_string(&r).unwrap_or_default()
    })
}

fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Later changes named per column; the plan file has them all.
const SHOWN: usize = 3;

/// "by <id> (<user>/<application>, <time>): <statement>" for the first of `ids` in `r.outside`.
fn by(r: &RowPlan, ids: &[String]) -> String {
    if ids.is_empty() {
        return "by a write the audit log did not record".into();
    }
    let mut parts: Vec<String> = ids
        .iter()
        .take(SHOWN)
        .map(|id| match r.outside.iter().find(|c| c.id == *id) {
            Some(c) => describe_change(c),
            None => id.clone(),
        })
        .collect();
    if ids.len() > SHOWN {
        parts.push(format!(
            "and {} more (all in --plan-out)",
            ids.len() - SHOWN
        ));
    }
    format!("by {}", parts.join("; "))
}

fn describe_change(c: &ChangeRef) -> String {
    format!(
        "{} ({}/{}, {}): {}",
        c.id,
        c.user,
        c.application,
        time(c.ts_ms),
        c.statement
    )
}

/// The row's action in one line.
fn describe(plan: &Plan, r: &RowPlan) -> String {
    match &r.action {
        Action::Update(cols) => {
            let live = row_of(&r.actual).or_else(|| row_of(&r.expected));
            let target = row_of(&r.target);
            let show = |v: Option<&serde_json::Value>| v.map_or("∅".into(), |v| v.to_string());
            let writes = match plan.policy {
                ConflictPolicy::Row => cols.clone(),
                ConflictPolicy::Column => r.writes(plan.policy, false),
            };
            let parts: Vec<String> = writes
                .iter()
                .map(|c| {
                    format!(
                        "{c}: {} → {}",
                        show(live.as_ref().and_then(|l| l.get(c))),
                        show(target.as_ref().and_then(|t| t.get(c)))
                    )
                })
                .collect();
            format!("update {}", parts.join(", "))
        }
        Action::Delete => "delete (the selection inserted it)".into(),
        Action::Insert => "insert (the selection deleted it)".into(),
        Action::Nothing => "nothing to do (the selected changes cancel out)".into(),
    }
}

/// One line per column verdict that is not the plain restore the summary line shows.
fn column_lines(out: &mut String, r: &RowPlan) {
    for c in &r.columns {
        let line = match &c.verdict {
            Verdict::Restore { touched_by, .. } if !touched_by.is_empty() => format!(
                "restore  {}: set since and back again {}",
                c.column,
                by(r, touched_by)
            ),
            Verdict::Restore { .. } => continue,
            Verdict::AlreadyRestored => format!(
                "already  {} = {} (the target)",
                c.column,
                row_of(&r.actual)
                    .as_ref()
                    .and_then(|a| a.get(&c.column))
                    .map_or("∅".into(), |v| v.to_string())
            ),
            Verdict::Keep { live, changed_by } => format!(
                "keep     {} = {live}, changed since {}",
                c.column,
                by(r, changed_by)
            ),
            Verdict::Conflict {
                selection,
                target,
                live,
                changed_by,
            } => format!(
                "CONFLICT {}: the selection left {selection}, the target is {target}, the row now holds {live}; changed since {}",
                c.column,
                by(r, changed_by)
            ),
        };
        let _ = writeln!(out, "           {line}");
    }
}

fn row_lines(out: &mut String, plan: &Plan, r: &RowPlan, cascades: &Cascades) {
    let key = serde_json::to_string(&r.key).unwrap_or_default();
    let who: Vec<String> = r
        .changes
        .iter()
        .map(|c| {
            let by = format!("{} by {}/{}", c.id, c.user, c.application);
            match &c.cascade {
                Some(k) => format!(
                    "{by} (cascade of {} {} via {})",
                    k.parent_table, k.parent_key, k.constraint
                ),
                None => by,
            }
        })
        .collect();
    match &r.conflict {
        None if r.already_restored() => {
            let _ = writeln!(
                out,
                "  already  {key}: every selected column holds its target"
            );
        }
        None => {
            let _ = writeln!(out, "  revert   {key}: {}", describe(plan, r));
        }
        Some(Conflict::Row(why)) => {
            let _ = writeln!(out, "  CONFLICT {key}: {why}");
            for c in &r.outside {
                let _ = writeln!(
                    out,
                    "           changed since {}",
                    by(r, std::slice::from_ref(&c.id))
                );
            }
        }
        Some(Conflict::Columns(cols)) => {
            let _ = writeln!(
                out,
                "  CONFLICT {key}: column(s) {} changed since to other values{}",
                cols.join(", "),
                if r.writes(plan.policy, false).is_empty() {
                    String::new()
                } else {
                    format!("; --skip-conflicts still does: {}", describe(plan, r))
                }
            );
        }
    }
    column_lines(out, r);
    let _ = writeln!(out, "           undoes {}", who.join(", "));
    for (table, n) in cascades.of(r) {
        let _ = writeln!(
            out,
            "           with its cascade: {n} row(s) of {table} (listed there)"
        );
    }
    if r.conflict.is_some() {
        let _ = writeln!(out, "           target:   {}", json(&r.target));
        let _ = writeln!(out, "           expected: {}", json(&r.expected));
        let _ = writeln!(out, "           actual:   {}", json(&r.actual));
    }
}

/// The rows each referenced row's changes cascaded to, by (referenced table, its key as
/// JSON): how many rows of which table.
struct Cascades(BTreeMap<(String, String), BTreeMap<String, usize>>);

impl Cascades {
    fn of_plan(plan: &Plan) -> Self {
        let mut by_parent: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
        for r in &plan.rows {
            if let Some(k) = r.changes.iter().find_map(|c| c.cascade.as_ref()) {
                let parent = (k.parent_table.clone(), k.parent_key.to_string());
                *by_parent
                    .entry(parent)
                    .or_default()
                    .entry(r.table.clone())
                    .or_default() += 1;
            }
        }
        Cascades(by_parent)
    }

    /// The cascaded rows of `r`: its image before the selection holds the referenced key.
    fn of(&self, r: &RowPlan) -> Vec<(String, usize)> {
        let Some(image) = r.target.as_ref().or(r.expected.as_ref()).map(|i| i.row()) else {
            return Vec::new();
        };
        self.0
            .iter()
            .filter(|((table, key), _)| {
                *table == r.table
                    && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(key)
                        .is_ok_and(|k| {
                            !k.is_empty() && k.iter().all(|(c, v)| image.get(c) == Some(v))
                        })
            })
            .flat_map(|(_, children)| children.iter().map(|(t, n)| (t.clone(), *n)))
            .collect()
    }
}

/// The report as text.
pub fn render(plan: &Plan) -> String {
    let cascades = Cascades::of_plan(plan);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "restore plan: {} row(s) in {} table(s): {} to revert, {} conflict(s), {} unchanged, {} already restored ({})",
        plan.rows.len(),
        plan.tables.len(),
        plan.to_revert(),
        plan.conflicts(),
        plan.rows
            .iter()
            .filter(|r| r.action == Action::Nothing && r.conflict.is_none())
            .count(),
        plan.already_restored(),
        match plan.policy {
            ConflictPolicy::Column => "conflicts per column",
            ConflictPolicy::Row => "conflicts per row",
        }
    );
    for table in plan.tables.keys() {
        let rows: Vec<&RowPlan> = plan.rows.iter().filter(|r| r.table == *table).collect();
        let conflicts = rows.iter().filter(|r| r.conflict.is_some()).count();
        let _ = writeln!(
            out,
            "\n{table}: {} row(s), {conflicts} conflict(s)",
            rows.len()
        );
        for r in rows {
            row_lines(&mut out, plan, r, &cascades);
        }
    }
    if !plan.in_doubt.is_empty() {
        let _ = writeln!(
            out,
            "\nin doubt (no END record, not committed per txid_status; left out): {}",
            plan.in_doubt.join(", ")
        );
    }
    if !plan.redacted.is_empty() {
        let _ = writeln!(
            out,
            "\nredacted images (not the data; left out): {}",
            plan.redacted.join(", ")
        );
    }
    out
}
