//! Deciding conflicts: for each planned row, a three-way merge per column of base (the row as
//! the selected changes left it, `expected`), ours (the restore's `target`) and theirs (the live
//! row, `actual`), as `git merge` does for lines. Pure: the images are already read and
//! normalised by the server (`db::read_actual`), so equal values compare equal here.
//!
//! - A column the selection changed that still holds the selection's value is restored (also
//!   when later changes set it and set it back).
//! - A column the selection did not change is never written; a later change to it is kept.
//! - A column already at its target is "already restored", not a conflict.
//! - A conflict is a column the selection changed whose live value is neither the selection's
//!   result nor the target.
//! - Rows the selection inserted or deleted are decided whole: a later change to an inserted
//!   row, or a row holding a deleted row's key again, is a conflict, as is a restored row that
//!   would collide with another row on its key or a unique index.
//!
//! [`ConflictPolicy::Row`] keeps the earlier whole-row rule: any later change outside the
//! selection, or any difference from the selection's result, makes the row a conflict.

use super::plan::{
    row_of, Action, ChangeRef, ColumnPlan, Conflict, ConflictPolicy, RowPlan, Verdict,
};
use crate::audit::event::Row;
use serde_json::Value;

/// Decide every row's column verdicts and conflict.
pub fn decide(rows: &mut [RowPlan], policy: ConflictPolicy) {
    clear_collisions_the_plan_resolves(rows, policy);
    for r in rows.iter_mut() {
        let (columns, conflict) = decide_row(r, policy);
        r.columns = columns;
        r.conflict = conflict;
    }
}

fn decide_row(r: &RowPlan, policy: ConflictPolicy) -> (Vec<ColumnPlan>, Option<Conflict>) {
    let collision = r.collision.as_ref().map(|(cols, key)| {
        Conflict::Row(format!(
            "restoring it would collide on ({}) with the row {} that exists now",
            cols.join(", "),
            serde_json::to_string(key).unwrap_or_default()
        ))
    });
    match (&r.action, policy) {
        (Action::Nothing, ConflictPolicy::Column) => (Vec::new(), None),
        (Action::Update(cols), ConflictPolicy::Column) => {
            let Some(live) = &r.actual else {
                return (Vec::new(), Some(Conflict::Row(vanished(r))));
            };
            let columns = merge_columns(r, cols, &live.row());
            let conflicting: Vec<String> = columns
                .iter()
                .filter(|c| matches!(c.verdict, Verdict::Conflict { .. }))
                .map(|c| c.column.clone())
                .collect();
            let conflict =
                collision.or((!conflicting.is_empty()).then_some(Conflict::Columns(conflicting)));
            (columns, conflict)
        }
        (Action::Nothing | Action::Update(_), ConflictPolicy::Row)
        | (Action::Delete | Action::Insert, _) => {
            (Vec::new(), whole_row(r).map(Conflict::Row).or(collision))
        }
    }
}

/// The whole-row rule: a later change outside the selection, or a row that is not as the
/// selection left it.
fn whole_row(r: &RowPlan) -> Option<String> {
    if !r.outside.is_empty() {
        return Some(format!(
            "changed outside the selection since: {}",
            ids(&r.outside).join(", ")
        ));
    }
    if r.actual_matches {
        return None;
    }
    Some(match (&r.expected, &r.actual) {
        (Some(_), None) => "the row no longer exists".to_string(),
        (None, Some(_)) => "a row with this key exists again".to_string(),
        _ => "the row is not as the selected changes left it".to_string(),
    })
}

/// Why an updated row cannot be restored: it is gone.
fn vanished(r: &RowPlan) -> String {
    match r.outside.iter().rev().find(|c| c.op == "d" || c.op == "t") {
        Some(c) => format!(
            "the row no longer exists (deleted since by {} {}/{})",
            c.id, c.user, c.application
        ),
        None => "the row no longer exists".to_string(),
    }
}

fn ids(changes: &[ChangeRef]) -> Vec<String> {
    changes.iter().map(|c| c.id.clone()).collect()
}

/// The verdict of each column the selection changed (`cols`), then of each column only later
/// changes changed.
fn merge_columns(r: &RowPlan, cols: &[String], live: &Row) -> Vec<ColumnPlan> {
    let (target, expected) = (row_of(&r.target), row_of(&r.expected));
    let value =
        |img: Option<&Row>, c: &str| img.and_then(|i| i.get(c)).cloned().unwrap_or(Value::Null);
    let touched_by = |c: &str| -> Vec<String> {
        r.outside
            .iter()
            .filter(|o| o.columns.iter().any(|x| x == c))
            .map(|o| o.id.clone())
            .collect()
    };
    let mut out: Vec<ColumnPlan> = cols
        .iter()
        .map(|c| {
            let (live, target, selection) = (
                value(Some(live), c),
                value(target.as_ref(), c),
                value(expected.as_ref(), c),
            );
            let by = touched_by(c);
            let verdict = if live == target {
                Verdict::AlreadyRestored
            } else if live == selection {
                Verdict::Restore { touched_by: by }
            } else {
                Verdict::Conflict {
                    selection,
                    target,
                    live,
                    changed_by: by,
                }
            };
            ColumnPlan {
                column: c.clone(),
                verdict,
            }
        })
        .collect();
    let mut kept: Vec<String> = r
        .outside
        .iter()
        .flat_map(|o| o.columns.iter().cloned())
        .filter(|c| !cols.contains(c))
        .collect();
    kept.sort();
    kept.dedup();
    out.extend(kept.into_iter().map(|c| ColumnPlan {
        verdict: Verdict::Keep {
            live: value(Some(live), &c),
            changed_by: touched_by(&c),
        },
        column: c,
    }));
    out
}

/// A collision with a row the same plan deletes, or moves off the colliding values, is no
/// collision: deletes run first, and the plan's statements run in one transaction.
fn clear_collisions_the_plan_resolves(rows: &mut [RowPlan], policy: ConflictPolicy) {
    let leaving: Vec<(String, Row)> = rows
        .iter()
        .filter(|r| match &r.action {
            Action::Delete => true,
            Action::Update(_) => !r.writes(policy, false).is_empty(),
            Action::Insert | Action::Nothing => false,
        })
        .map(|r| (r.table.clone(), r.key.clone()))
        .collect();
    for r in rows.iter_mut() {
        let resolved = r.collision.as_ref().is_some_and(|(_, other)| {
            leaving
                .iter()
                .any(|(t, k)| *t == r.table && k == other && *k != r.key)
        });
        if resolved {
            r.collision = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::plan::{ChangeRef, Image};
    use serde_json::json;

    fn img(v: Value) -> Option<Image> {
        v.as_object().map(Image::from_row)
    }

    fn key(v: Value) -> Row {
        v.as_object().cloned().unwrap()
    }

    fn change(id: &str, op: &str, cols: &[&str]) -> ChangeRef {
        ChangeRef {
            id: id.into(),
            op: op.into(),
            ts_ms: 1,
            user: "u".into(),
            application: "other".into(),
            statement: "UPDATE …".into(),
            columns: cols.iter().map(|c| c.to_string()).collect(),
            cascade: None,
        }
    }

    /// The incident's row: the selection set bfso from "A" to null.
    fn nulled(actual: Value, outside: Vec<ChangeRef>) -> RowPlan {
        let expected = img(json!({"bfkey": 1, "bfso": null, "bfcorlid": "c1"}));
        let actual = img(actual);
        RowPlan {
            table: "public.brieff".into(),
            key: key(json!({"bfkey": 1})),
            target: img(json!({"bfkey": 1, "bfso": "A", "bfcorlid": "c1"})),
            actual_matches: actual == expected,
            expected,
            actual,
            action: Action::Update(vec!["bfso".into()]),
            columns: vec![],
            changes: vec![change("bad/1", "u", &["bfso"])],
            outside,
            collision: None,
            conflict: None,
        }
    }

    fn decided(mut r: RowPlan, policy: ConflictPolicy) -> RowPlan {
        decide(std::slice::from_mut(&mut r), policy);
        r
    }

    fn verdict<'a>(r: &'a RowPlan, col: &str) -> &'a Verdict {
        &r.columns
            .iter()
            .find(|c| c.column == col)
            .unwrap_or_else(|| panic!("{col}: {r:?}"))
            .verdict
    }

    #[test]
    fn a_column_nothing_changed_since_is_restored() {
        let r = decided(
            nulled(json!({"bfkey": 1, "bfso": null, "bfcorlid": "c1"}), vec![]),
            ConflictPolicy::Column,
        );
        assert_eq!(r.conflict, None);
        assert!(matches!(verdict(&r, "bfso"), Verdict::Restore { .. }));
        assert_eq!(r.writes(ConflictPolicy::Column, false), ["bfso"]);
    }

    #[test]
    fn a_column_only_a_later_change_touched_is_kept_and_the_others_restored() {
        let later = vec![change("web/1", "u", &["bfcorlid"])];
        let r = decided(
            nulled(
                json!({"bfkey": 1, "bfso": null, "bfcorlid": "moved"}),
                later.clone(),
            ),
            ConflictPolicy::Column,
        );
        assert_eq!(r.conflict, None, "{r:?}");
        assert_eq!(
            verdict(&r, "bfcorlid"),
            &Verdict::Keep {
                live: json!("moved"),
                changed_by: vec!["web/1".into()]
            }
        );
        assert_eq!(r.writes(ConflictPolicy::Column, false), ["bfso"]);
        // The whole-row policy calls the same row a conflict.
        let r = decided(
            nulled(
                json!({"bfkey": 1, "bfso": null, "bfcorlid": "moved"}),
                later,
            ),
            ConflictPolicy::Row,
        );
        assert!(
            matches!(&r.conflict, Some(Conflict::Row(why)) if why.contains("web/1")),
            "{r:?}"
        );
    }

    #[test]
    fn a_column_already_at_its_target_is_already_restored() {
        let by_hand = vec![change("hand/1", "u", &["bfso"])];
        let r = decided(
            nulled(json!({"bfkey": 1, "bfso": "A", "bfcorlid": "c1"}), by_hand),
            ConflictPolicy::Column,
        );
        assert_eq!(r.conflict, None);
        assert_eq!(verdict(&r, "bfso"), &Verdict::AlreadyRestored);
        assert!(r.already_restored());
        assert!(r.writes(ConflictPolicy::Column, false).is_empty());
        // Also when the audit log never saw the hand fix (made around hindsight).
        let r = decided(
            nulled(json!({"bfkey": 1, "bfso": "A", "bfcorlid": "c1"}), vec![]),
            ConflictPolicy::Column,
        );
        assert!(r.already_restored());
    }

    #[test]
    fn a_column_both_sides_set_to_different_values_is_a_conflict() {
        let third = vec![change("web/2", "u", &["bfso"])];
        let r = decided(
            nulled(json!({"bfkey": 1, "bfso": "Q", "bfcorlid": "c1"}), third),
            ConflictPolicy::Column,
        );
        assert_eq!(r.conflict, Some(Conflict::Columns(vec!["bfso".into()])));
        assert_eq!(
            verdict(&r, "bfso"),
            &Verdict::Conflict {
                selection: Value::Null,
                target: json!("A"),
                live: json!("Q"),
                changed_by: vec!["web/2".into()]
            }
        );
        assert!(r.writes(ConflictPolicy::Column, false).is_empty());
        assert_eq!(
            r.writes(ConflictPolicy::Column, true),
            ["bfso"],
            "--force writes it"
        );
        // A write the log did not record counts the same.
        let r = decided(
            nulled(json!({"bfkey": 1, "bfso": "Q", "bfcorlid": "c1"}), vec![]),
            ConflictPolicy::Column,
        );
        assert!(
            matches!(verdict(&r, "bfso"), Verdict::Conflict { changed_by, .. } if changed_by.is_empty())
        );
    }

    #[test]
    fn a_column_changed_and_changed_back_since_is_restored() {
        let there_and_back = vec![
            change("web/3", "u", &["bfso"]),
            change("web/4", "u", &["bfso"]),
        ];
        let r = decided(
            nulled(
                json!({"bfkey": 1, "bfso": null, "bfcorlid": "c1"}),
                there_and_back,
            ),
            ConflictPolicy::Column,
        );
        assert_eq!(r.conflict, None);
        assert_eq!(
            verdict(&r, "bfso"),
            &Verdict::Restore {
                touched_by: vec!["web/3".into(), "web/4".into()]
            }
        );
    }

    #[test]
    fn skip_conflicts_restores_the_other_columns_of_a_conflicting_row() {
        let mut r = nulled(
            json!({"bfkey": 1, "bfso": "Q", "bfcorlid": null}),
            vec![change("web/5", "u", &["bfso"])],
        );
        r.target = img(json!({"bfkey": 1, "bfso": "A", "bfcorlid": "c1"}));
        r.expected = img(json!({"bfkey": 1, "bfso": null, "bfcorlid": null}));
        r.action = Action::Update(vec!["bfcorlid".into(), "bfso".into()]);
        let r = decided(r, ConflictPolicy::Column);
        assert_eq!(r.conflict, Some(Conflict::Columns(vec!["bfso".into()])));
        assert_eq!(r.writes(ConflictPolicy::Column, false), ["bfcorlid"]);
    }

    #[test]
    fn an_updated_row_deleted_since_is_a_conflict() {
        let r = decided(
            nulled(json!(null), vec![change("web/6", "d", &["bfkey", "bfso"])]),
            ConflictPolicy::Column,
        );
        assert!(
            matches!(&r.conflict, Some(Conflict::Row(why)) if why.contains("deleted since by web/6")),
            "{r:?}"
        );
    }

    #[test]
    fn inserted_and_deleted_rows_keep_the_whole_row_rules() {
        // The selection inserted it; a later update of it is a conflict.
        let inserted = RowPlan {
            target: None,
            expected: img(json!({"bfkey": 9, "bfso": "A"})),
            actual: img(json!({"bfkey": 9, "bfso": "B"})),
            actual_matches: false,
            action: Action::Delete,
            outside: vec![change("web/7", "u", &["bfso"])],
            ..nulled(json!(null), vec![])
        };
        let r = decided(inserted.clone(), ConflictPolicy::Column);
        assert!(matches!(&r.conflict, Some(Conflict::Row(why)) if why.contains("web/7")));
        let r = decided(
            RowPlan {
                outside: vec![],
                actual_matches: true,
                ..inserted
            },
            ConflictPolicy::Column,
        );
        assert_eq!(r.conflict, None);
        // The selection deleted it; its key in use again is a conflict.
        let deleted = RowPlan {
            target: img(json!({"bfkey": 9, "bfso": "A"})),
            expected: None,
            actual: img(json!({"bfkey": 9, "bfso": "new"})),
            actual_matches: false,
            action: Action::Insert,
            ..nulled(json!(null), vec![])
        };
        let r = decided(deleted.clone(), ConflictPolicy::Column);
        assert!(
            matches!(&r.conflict, Some(Conflict::Row(why)) if why.contains("exists again")),
            "{r:?}"
        );
        let r = decided(
            RowPlan {
                actual: None,
                actual_matches: true,
                ..deleted
            },
            ConflictPolicy::Column,
        );
        assert_eq!(r.conflict, None);
    }

    #[test]
    fn a_restore_colliding_on_a_unique_index_is_a_conflict_unless_the_plan_moves_the_other_row() {
        let other = key(json!({"bfkey": 2}));
        let deleted = RowPlan {
            target: img(json!({"bfkey": 9, "bfcorlid": "c1"})),
            expected: None,
            actual: None,
            actual_matches: true,
            action: Action::Insert,
            collision: Some((vec!["bfcorlid".into()], other.clone())),
            ..nulled(json!(null), vec![])
        };
        let r = decided(deleted.clone(), ConflictPolicy::Column);
        assert!(
            matches!(&r.conflict, Some(Conflict::Row(why)) if why.contains("collide on (bfcorlid) with the row {\"bfkey\":2}")),
            "{r:?}"
        );
        // The same plan deletes the other row first: no collision.
        let inserted = RowPlan {
            key: other,
            target: None,
            expected: img(json!({"bfkey": 2, "bfcorlid": "c1"})),
            actual: img(json!({"bfkey": 2, "bfcorlid": "c1"})),
            actual_matches: true,
            action: Action::Delete,
            ..nulled(json!(null), vec![])
        };
        let mut rows = vec![deleted, inserted];
        decide(&mut rows, ConflictPolicy::Column);
        assert_eq!(
            (rows[0].conflict.clone(), rows[1].conflict.clone()),
            (None, None),
            "{rows:?}"
        );
    }
}
