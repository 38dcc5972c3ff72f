//! The readable dry-run report: per table, the rows to revert with their column changes, the
//! conflicts with all three versions (target, expected, actual), and what was left out.

use std::fmt::Write;

use super::plan::{Action, Plan, RowPlan};
use crate::audit::event::Row;

fn json(row: &Option<Row>) -> String {
    row.as_ref().map_or("(no row)".into(), |r| {
        serde_json::to_string(r).unwrap_or_default()
    })
}

fn describe(r: &RowPlan) -> String {
    match (&r.action, &r.target, &r.expected) {
        (Action::Update(cols), Some(t), Some(e)) => {
            let parts: Vec<String> = cols
                .iter()
                .map(|c| {
                    let show =
                        |v: Option<&serde_json::Value>| v.map_or("∅".into(), |v| v.to_string());
                    format!("{c}: {} → {}", show(e.get(c)), show(t.get(c)))
                })
                .collect();
            format!("update {}", parts.join(", "))
        }
        (Action::Delete, ..) => "delete (the selection inserted it)".into(),
        (Action::Insert, ..) => "insert (the selection deleted it)".into(),
        _ => "nothing to do (the selected changes cancel out)".into(),
    }
}

/// The report as text.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "restore plan: {} row(s) in {} table(s): {} to revert, {} conflict(s), {} unchanged",
        plan.rows.len(),
        plan.tables.len(),
        plan.to_revert(),
        plan.conflicts(),
        plan.rows
            .iter()
            .filter(|r| r.action == Action::Nothing && r.conflict.is_none())
            .count()
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
            let key = serde_json::to_string(&r.key).unwrap_or_default();
            let who: Vec<String> = r
                .changes
                .iter()
                .map(|c| format!("{} by {}/{}", c.id, c.user, c.application))
                .collect();
            match &r.conflict {
                None => {
                    let _ = writeln!(out, "  revert   {key}: {}", describe(r));
                    let _ = writeln!(out, "           undoes {}", who.join(", "));
                }
                Some(why) => {
                    let _ = writeln!(out, "  CONFLICT {key}: {why}");
                    let _ = writeln!(out, "           undoes {}", who.join(", "));
                    for c in &r.outside {
                        let _ = writeln!(
                            out,
                            "           changed since by {} ({}/{}): {}",
                            c.id, c.user, c.application, c.statement
                        );
                    }
                    let _ = writeln!(out, "           target:   {}", json(&r.target));
                    let _ = writeln!(out, "           expected: {}", json(&r.expected));
                    let _ = writeln!(out, "           actual:   {}", json(&r.actual));
                }
            }
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
