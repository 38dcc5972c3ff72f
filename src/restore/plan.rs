//! From the audit log and a selection to a plan: for each affected row, the state to put back
//! (the before image of its earliest selected change), the state the selected changes left
//! (the after image of the latest), and what must be done to get from one to the other.
//!
//! Rows are followed through key changes (an UPDATE of the primary key continues the same row).
//! This module is pure: the current state of the database is added by `db` (`actual`), and
//! conflicts are decided here from both.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::log::{AuditLog, LoggedChange};
use super::selection::Selection;
use crate::audit::event::Row;

/// What the catalog says about a table a plan touches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableMeta {
    pub schema: String,
    pub name: String,
    /// Primary key (else replica identity) columns; empty: rows are matched on every column.
    pub key: Vec<String>,
    /// Columns a restore may write (not generated, not dropped), in table order.
    pub columns: Vec<String>,
    /// Tables this one references by foreign key (`schema.table`): restored rows of those go in
    /// first and come out last.
    pub references: Vec<String>,
}

impl TableMeta {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// One change a row plan reverts (or that conflicts with it), for the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeRef {
    pub id: String,
    pub op: String,
    pub ts_ms: i64,
    pub user: String,
    pub application: String,
    pub statement: String,
}

impl ChangeRef {
    /// Without the statement text (selected changes: the report does not show it, and at a
    /// hundred thousand rows it is memory).
    fn brief(c: &LoggedChange) -> Self {
        ChangeRef {
            statement: String::new(),
            ..ChangeRef::of(c)
        }
    }

    fn of(c: &LoggedChange) -> Self {
        let s = &c.event.source;
        ChangeRef {
            id: c.id(),
            op: serde_json::to_value(c.event.op)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            ts_ms: s.ts_ms,
            user: s.user.clone(),
            application: s.application_name.clone(),
            statement: s.statement.clone(),
        }
    }
}

/// What a restore does to one row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "columns")]
pub enum Action {
    /// The selected changes created it: delete it.
    Delete,
    /// The selected changes removed it: insert the target image.
    Insert,
    /// Put these columns back.
    Update(Vec<String>),
    /// The selected changes cancelled out.
    Nothing,
}

/// The plan for one row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RowPlan {
    /// `schema.table`.
    pub table: String,
    /// Identity of the row as it should be now (key columns of `expected`, else of `target`).
    pub key: Row,
    /// The row as it was before the earliest selected change (`None`: it did not exist).
    pub target: Option<Row>,
    /// The row as the latest selected change left it (`None`: it did not exist afterwards).
    pub expected: Option<Row>,
    /// The row in the database when the plan was checked (`None`: absent).
    pub actual: Option<Row>,
    /// Whether `actual` equals `expected` (compared by the server, as jsonb).
    pub actual_matches: bool,
    pub action: Action,
    /// The selected changes, oldest first.
    pub changes: Vec<ChangeRef>,
    /// Committed changes outside the selection made to the row after the earliest selected one.
    pub outside: Vec<ChangeRef>,
    /// Why this row must not be reverted without `--force` (`None`: it can be).
    pub conflict: Option<String>,
}

/// A whole restore plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub tables: BTreeMap<String, TableMeta>,
    pub rows: Vec<RowPlan>,
    /// Selected transactions whose outcome is unknown (no END, `txid_status` not committed):
    /// their changes are left out.
    pub in_doubt: Vec<String>,
    /// Rows skipped because their images are redacted (they are not the data).
    pub redacted: Vec<String>,
}

impl Plan {
    pub fn conflicts(&self) -> usize {
        self.rows.iter().filter(|r| r.conflict.is_some()).count()
    }

    pub fn to_revert(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.conflict.is_none() && r.action != Action::Nothing)
            .count()
    }
}

pub use crate::capture::publish::{key_json, key_of};

/// Build the row plans (without the database's current state) for the changes of `log` that
/// `committed` accepts and `selection` selects.
pub fn build(
    log: &AuditLog,
    selection: &Selection,
    committed: &HashSet<String>,
    tables: &BTreeMap<String, TableMeta>,
) -> (Vec<RowPlan>, Vec<String>) {
    let mut by_table: BTreeMap<String, Vec<&LoggedChange>> = BTreeMap::new();
    for c in &log.changes {
        if committed.contains(&c.event.transaction.id) {
            by_table.entry(c.table()).or_default().push(c);
        }
    }
    let mut rows = Vec::new();
    let mut redacted = Vec::new();
    for (table, mut changes) in by_table {
        let Some(meta) = tables.get(&table) else {
            continue;
        };
        let ts = |c: &LoggedChange| {
            log.transactions
                .get(&c.event.transaction.id)
                .map(|t| t.ts_ms)
                .unwrap_or(c.event.source.ts_ms)
        };
        changes.sort_by_key(|c| (ts(c), c.partition, c.offset));
        for lineage in lineages(&changes, &meta.key) {
            let selected: Vec<bool> = lineage.iter().map(|c| selection.matches(c)).collect();
            let Some(first) = selected.iter().position(|s| *s) else {
                continue;
            };
            let last = selected.iter().rposition(|s| *s).expect("one is selected");
            if lineage[first..=last]
                .iter()
                .any(|c| c.event.source.redacted)
            {
                redacted.push(format!(
                    "{table} {}",
                    serde_json::to_string(&lineage[first].key.key).unwrap_or_default()
                ));
                continue;
            }
            let target = lineage[first].event.before.clone();
            let expected = lineage[last].event.after.clone();
            let outside: Vec<ChangeRef> = lineage[first..]
                .iter()
                .zip(&selected[first..])
                .filter(|(_, s)| !**s)
                .map(|(c, _)| ChangeRef::of(c))
                .collect();
            let key_image = expected.as_ref().or(target.as_ref());
            let key = key_image.map(|r| key_of(r, &meta.key)).unwrap_or_default();
            let action = action(target.as_ref(), expected.as_ref());
            rows.push(RowPlan {
                table: table.clone(),
                key,
                target,
                expected,
                actual: None,
                actual_matches: false,
                action,
                changes: lineage[first..=last]
                    .iter()
                    .zip(&selected[first..=last])
                    .filter(|(_, s)| **s)
                    .map(|(c, _)| ChangeRef::brief(c))
                    .collect(),
                outside,
                conflict: None,
            });
        }
    }
    (rows, redacted)
}

/// Split a table's changes (in order) into row histories, following key changes.
fn lineages<'a>(changes: &[&'a LoggedChange], key: &[String]) -> Vec<Vec<&'a LoggedChange>> {
    let mut out: Vec<Vec<&LoggedChange>> = Vec::new();
    let mut current: HashMap<String, usize> = HashMap::new();
    for c in changes {
        let from = c
            .event
            .before
            .as_ref()
            .and_then(|b| current.remove(&key_json(b, key)));
        let at = from.unwrap_or_else(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[at].push(c);
        if let Some(a) = &c.event.after {
            current.insert(key_json(a, key), at);
        }
    }
    out
}

fn action(target: Option<&Row>, expected: Option<&Row>) -> Action {
    match (target, expected) {
        (None, None) => Action::Nothing,
        (None, Some(_)) => Action::Delete,
        (Some(_), None) => Action::Insert,
        (Some(t), Some(e)) => {
            let mut cols: Vec<String> = t
                .keys()
                .chain(e.keys())
                .filter(|c| t.get(*c) != e.get(*c))
                .cloned()
                .collect();
            cols.sort();
            cols.dedup();
            if cols.is_empty() {
                Action::Nothing
            } else {
                Action::Update(cols)
            }
        }
    }
}

/// Decide each row's conflict from its history and the database's current state.
pub fn decide_conflicts(rows: &mut [RowPlan]) {
    for r in rows {
        r.conflict = if !r.outside.is_empty() {
            let ids: Vec<&str> = r.outside.iter().map(|c| c.id.as_str()).collect();
            Some(format!(
                "changed outside the selection since: {}",
                ids.join(", ")
            ))
        } else if !r.actual_matches {
            Some(match (&r.expected, &r.actual) {
                (Some(_), None) => "the row no longer exists".to_string(),
                (None, Some(_)) => "a row with this key exists again".to_string(),
                _ => "the row is not as the selected changes left it".to_string(),
            })
        } else {
            None
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{ChangeEvent, ChangeKey};
    use crate::restore::log::{AuditLog, LoggedChange};

    fn change(
        tx: &str,
        n: u64,
        app: &str,
        before: serde_json::Value,
        after: serde_json::Value,
    ) -> LoggedChange {
        let ev: ChangeEvent = serde_json::from_value(serde_json::json!({
            "before": before, "after": after,
            "op": match (before.is_null(), after.is_null()) { (true, _) => "c", (_, true) => "d", _ => "u" },
            "ts_ms": 1,
            "transaction": {"id": tx, "total_order": n, "data_collection_order": n},
            "source": {"version": "0", "connector": "hindsight", "name": "p", "ts_ms": n as i64,
              "snapshot": "false", "db": "d", "schema": "public", "table": "t", "txId": 1,
              "user": "u", "application_name": app, "client_addr": "", "statement": "",
              "fingerprint": "", "tags": {"controller": app}, "session_id": "s", "statement_seq": n}
        }))
        .unwrap();
        let image = ev.after.clone().or(ev.before.clone()).unwrap();
        LoggedChange {
            key: ChangeKey {
                table: "public.t".into(),
                key: key_of(&image, &["id".into()]),
            },
            event: ev,
            partition: 0,
            offset: n as i64,
        }
    }

    fn tables() -> BTreeMap<String, TableMeta> {
        BTreeMap::from([(
            "public.t".to_string(),
            TableMeta {
                schema: "public".into(),
                name: "t".into(),
                key: vec!["id".into()],
                columns: vec!["id".into(), "v".into()],
                references: vec![],
            },
        )])
    }

    fn plan_for(log: &AuditLog, sel: &Selection) -> Vec<RowPlan> {
        let committed = log
            .changes
            .iter()
            .map(|c| c.event.transaction.id.clone())
            .collect();
        build(log, sel, &committed, &tables()).0
    }

    #[test]
    fn rows_are_followed_through_key_changes_and_later_changes_conflict() {
        use serde_json::json;
        let log = AuditLog {
            changes: vec![
                change("a", 1, "good", json!(null), json!({"id": 1, "v": "x"})),
                change(
                    "b",
                    2,
                    "bad",
                    json!({"id": 1, "v": "x"}),
                    json!({"id": 2, "v": "y"}),
                ),
                change(
                    "b",
                    3,
                    "bad",
                    json!({"id": 2, "v": "y"}),
                    json!({"id": 2, "v": null}),
                ),
                change("c", 4, "good", json!({"id": 5, "v": "q"}), json!(null)),
                change(
                    "d",
                    5,
                    "bad",
                    json!({"id": 6, "v": "w"}),
                    json!({"id": 6, "v": "e"}),
                ),
                change(
                    "e",
                    6,
                    "good",
                    json!({"id": 6, "v": "e"}),
                    json!({"id": 6, "v": "r"}),
                ),
            ],
            transactions: Default::default(),
        };
        let sel = Selection {
            applications: vec!["bad".into()],
            ..Selection::default()
        };
        let mut rows = plan_for(&log, &sel);
        assert_eq!(rows.len(), 2);
        // The key change and the later null, as one row: back to id 1, v x.
        assert_eq!(
            rows[0].target,
            json!({"id": 1, "v": "x"}).as_object().cloned()
        );
        assert_eq!(
            rows[0].expected,
            json!({"id": 2, "v": null}).as_object().cloned()
        );
        assert_eq!(rows[0].key, json!({"id": 2}).as_object().cloned().unwrap());
        assert_eq!(
            rows[0].action,
            Action::Update(vec!["id".into(), "v".into()])
        );
        assert_eq!(rows[0].changes.len(), 2);
        // Row 6 was changed again by "good": a conflict naming that change.
        rows.iter_mut().for_each(|r| r.actual_matches = true);
        decide_conflicts(&mut rows);
        assert_eq!(rows[0].conflict, None);
        assert!(
            rows[1].conflict.as_deref().unwrap().contains("e/6"),
            "{:?}",
            rows[1].conflict
        );
        // The same history, but the database no longer matches: a conflict too.
        rows[0].actual_matches = false;
        decide_conflicts(&mut rows);
        assert!(rows[0].conflict.is_some());
    }

    #[test]
    fn inserts_are_undone_by_deletes_and_deletes_by_inserts_and_uncommitted_is_ignored() {
        use serde_json::json;
        let log = AuditLog {
            changes: vec![
                change("a", 1, "bad", json!(null), json!({"id": 1, "v": "x"})),
                change("a", 2, "bad", json!({"id": 2, "v": "y"}), json!(null)),
                change("z", 3, "bad", json!({"id": 3, "v": "y"}), json!(null)),
                change("a", 4, "bad", json!(null), json!({"id": 4, "v": "t"})),
                change("a", 5, "bad", json!({"id": 4, "v": "t"}), json!(null)),
            ],
            transactions: Default::default(),
        };
        let sel = Selection {
            tags: vec![("controller".into(), "bad".into())],
            ..Selection::default()
        };
        let committed = HashSet::from(["a".to_string()]);
        let rows = build(&log, &sel, &committed, &tables()).0;
        let actions: Vec<&Action> = rows.iter().map(|r| &r.action).collect();
        assert_eq!(
            actions,
            [&Action::Delete, &Action::Insert, &Action::Nothing]
        );
    }

    #[test]
    fn selection_dimensions_combine() {
        use serde_json::json;
        let c = change("s:1", 1, "web", json!(null), json!({"id": 7, "v": "x"}));
        let yes = |s: Selection| assert!(s.matches(&c), "{s:?}");
        let no = |s: Selection| assert!(!s.matches(&c), "{s:?}");
        yes(Selection {
            txids: vec![1],
            ..Default::default()
        });
        no(Selection {
            txids: vec![2],
            ..Default::default()
        });
        yes(Selection {
            transactions: vec!["s:1".into()],
            ..Default::default()
        });
        yes(Selection {
            since_ms: Some(1),
            until_ms: Some(2),
            ..Default::default()
        });
        no(Selection {
            until_ms: Some(1),
            ..Default::default()
        });
        yes(Selection {
            users: vec!["u".into()],
            applications: vec!["web".into()],
            ..Default::default()
        });
        no(Selection {
            users: vec!["u".into()],
            applications: vec!["api".into()],
            ..Default::default()
        });
        yes(Selection {
            tags: vec![("controller".into(), "web".into())],
            ..Default::default()
        });
        yes(Selection {
            tables: vec!["t".into(), "public.x".into()],
            ..Default::default()
        });
        yes(Selection {
            keys: vec![json!({"id": 7}).as_object().cloned().unwrap()],
            ..Default::default()
        });
        no(Selection {
            keys: vec![json!({"id": 8}).as_object().cloned().unwrap()],
            ..Default::default()
        });
        yes(Selection {
            events: vec!["s:1/1".into()],
            ..Default::default()
        });
        let by_rule = Selection {
            rules: vec!["watch".into()],
            ..Default::default()
        };
        assert!(!by_rule.matches(&c));
        let mut flagged = c.clone();
        flagged.event.source.dry_run_rule = Some("watch".into());
        assert!(by_rule.matches(&flagged));
    }
}
