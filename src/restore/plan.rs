//! From the audit log and a selection to a plan: for each affected row, the state to put back
//! (the before image of its earliest selected change), the state the selected changes left
//! (the after image of the latest), and what must be done to get from one to the other.
//!
//! Rows are followed through key changes (an UPDATE of the primary key continues the same row).
//! This module is pure: the log is read by `log`, the current state of the database is added by
//! `db` (`actual`), and conflicts are decided by `merge` from both.
//!
//! Planning works on two sizes of record, so that a restore holds little of a large log: every
//! committed change is a [`Seen`] (where it is, its row's key before and after as digests, and
//! whether it is selected); only the changes of row histories that contain a selected change,
//! from the first selected one on, become a full [`Change`] with images.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::log::LoggedChange;
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
    /// The columns of each unique index (primary key included; not partial, no expressions):
    /// a restored row must not collide with another row on any of them.
    #[serde(default)]
    pub unique: Vec<Vec<String>>,
}

impl TableMeta {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Where a change is in the log, in the order planning follows: the time its transaction's
/// records were published (right before its COMMIT), then partition and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    pub ts_ms: i64,
    pub partition: i32,
    pub offset: i64,
    /// Which of its table's topics (in the order first read): a table's changes are in one
    /// topic unless `kafka.topic_routing` changed while they were written, and then the same
    /// partition and offset can name two changes.
    pub topic: TopicOrdinal,
}

/// The index of a topic among the topics one table's changes were read from (0 for the first).
pub type TopicOrdinal = u16;

/// A row's identity in one image, as a digest (128 bits of SHA-256 of the key's JSON): rows of
/// wide keyless tables cost the same as any other.
pub type KeyDigest = u128;

/// The digest of `row`'s key columns (`key` empty: the whole row).
pub fn key_digest(row: &Row, key: &[String]) -> KeyDigest {
    let hash = Sha256::digest(key_json(row, key).as_bytes());
    u128::from_be_bytes(hash[..16].try_into().expect("16 bytes"))
}

/// Every committed change of a table, as little as following row histories needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub at: LogPosition,
    pub before: Option<KeyDigest>,
    pub after: Option<KeyDigest>,
    pub selected: bool,
}

impl Seen {
    /// The skeleton of `c`, whose row keys are the columns of its message key.
    pub fn of(c: &LoggedChange, at: LogPosition, selected: bool) -> Self {
        let cols: Vec<String> = c.key.key.keys().cloned().collect();
        Seen {
            at,
            before: c.event.before.as_ref().map(|r| key_digest(r, &cols)),
            after: c.event.after.as_ref().map(|r| key_digest(r, &cols)),
            selected,
        }
    }
}

/// One change of a row history a plan needs, with its images (as JSON text: a fraction of the
/// memory of a parsed map, and a restore may hold a hundred thousand of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub at: LogPosition,
    pub before: Option<Box<str>>,
    pub after: Option<Box<str>>,
    /// The images are redacted (not the data).
    pub redacted: bool,
    pub selected: bool,
    pub reference: ChangeRef,
}

impl Change {
    /// `c` as a plan keeps it: a selected change without its statement text (the report does
    /// not show it, and at a hundred thousand rows it is memory), others with it.
    pub fn of(c: LoggedChange, at: LogPosition, selected: bool) -> Self {
        let mut reference = ChangeRef::of(&c);
        if selected {
            // The merge reads the columns of later changes only.
            reference.statement = String::new();
            reference.columns = Vec::new();
        }
        let text = |r: Option<Row>| r.map(|r| serde_json::to_string(&r).expect("JSON").into());
        Change {
            at,
            redacted: c.event.source.redacted,
            before: text(c.event.before),
            after: text(c.event.after),
            selected,
            reference,
        }
    }

    pub fn before(&self) -> Option<Row> {
        parse(&self.before)
    }

    pub fn after(&self) -> Option<Row> {
        parse(&self.after)
    }
}

fn parse(image: &Option<Box<str>>) -> Option<Row> {
    image
        .as_deref()
        .map(|t| serde_json::from_str(t).expect("an image this process serialised"))
}

/// Row images are held as their JSON text (`audit::event::Image`), parsed where columns are
/// needed: a parsed map costs several times its text, and a plan may hold a hundred thousand
/// rows with three images each. Serialised inline, as the object it is.
pub use crate::audit::event::Image;

/// Parse an optional image.
pub fn row_of(image: &Option<Image>) -> Option<Row> {
    image.as_ref().map(Image::row)
}

/// One change a row plan reverts (or that came after it), for the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChangeRef {
    pub id: String,
    pub op: String,
    pub ts_ms: i64,
    pub user: String,
    pub application: String,
    pub statement: String,
    /// The columns whose value it changed (every column for an insert or delete).
    #[serde(default)]
    pub columns: Vec<String>,
    /// The foreign key whose action made this change, set off by a change of the row it
    /// references (`source.cascade` of the event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<crate::audit::event::CascadeSource>,
}

impl ChangeRef {
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
            columns: changed_columns(c.event.before.as_ref(), c.event.after.as_ref()),
            cascade: s.cascade.clone(),
        }
    }
}

/// The columns whose values differ between two images (all of them when one is missing).
pub fn changed_columns(before: Option<&Row>, after: Option<&Row>) -> Vec<String> {
    let empty = Row::new();
    let (b, a) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    let mut cols: Vec<String> = b
        .keys()
        .chain(a.keys())
        .filter(|c| before.is_none() || after.is_none() || b.get(*c) != a.get(*c))
        .cloned()
        .collect();
    cols.sort();
    cols.dedup();
    cols
}

/// What a restore does to one row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "columns")]
pub enum Action {
    /// The selected changes created it: delete it.
    Delete,
    /// The selected changes removed it: insert the target image.
    Insert,
    /// The selected changes changed these columns: put them back (those `merge` allows).
    Update(Vec<String>),
    /// The selected changes cancelled out.
    Nothing,
}

/// How conflicts are decided (`--conflicts`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// A three-way merge per column: only a column both the selection and a later change set,
    /// to different values, is a conflict.
    #[default]
    Column,
    /// Any later change outside the selection, or a row not exactly as the selection left it,
    /// makes the whole row a conflict.
    Row,
}

/// One column of an updated row, as the merge decided it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// Put the target value back over the live one (both are in the row's images; not copied
    /// here, since a restore may plan a hundred thousand rows).
    Restore {
        /// Later changes outside the selection that set it and set it back (ids).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        touched_by: Vec<String>,
    },
    /// The live value is already the target: nothing to write.
    AlreadyRestored,
    /// The selection did not change it; a later change did: the later value stays.
    Keep {
        live: serde_json::Value,
        /// The later changes that set it (ids).
        changed_by: Vec<String>,
    },
    /// Both the selection and something later set it, and the live value is neither the
    /// selection's result nor the target.
    Conflict {
        selection: serde_json::Value,
        target: serde_json::Value,
        live: serde_json::Value,
        /// The later changes outside the selection that set it (ids; empty: a write the audit
        /// log did not record).
        changed_by: Vec<String>,
    },
}

/// A column of a row plan and its verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnPlan {
    pub column: String,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Why (part of) a row must not be restored without `--force`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Conflict {
    /// The whole row: it is left alone by `--skip-conflicts`.
    Row(String),
    /// Only these columns: `--skip-conflicts` restores the row's other columns.
    Columns(Vec<String>),
}

/// The plan for one row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RowPlan {
    /// `schema.table`.
    pub table: String,
    /// Identity of the row as it should be now: key columns of the latest image the log holds
    /// of it, else of `expected`, else of `target`.
    pub key: Row,
    /// The row as it was before the earliest selected change (`None`: it did not exist).
    pub target: Option<Image>,
    /// The row as the latest selected change left it (`None`: it did not exist afterwards).
    pub expected: Option<Image>,
    /// The row in the database when the plan was checked (`None`: absent).
    pub actual: Option<Image>,
    /// Whether `actual` equals `expected` (compared by the server, as jsonb).
    pub actual_matches: bool,
    pub action: Action,
    /// For an update, each column the selection changed or a later change changed.
    #[serde(default)]
    pub columns: Vec<ColumnPlan>,
    /// The selected changes, oldest first.
    pub changes: Vec<ChangeRef>,
    /// Committed changes outside the selection made to the row after the earliest selected one.
    pub outside: Vec<ChangeRef>,
    /// Another row that holds the key or unique values this restore would write (found by
    /// `db::collisions`): `(index columns, that row's key)`.
    #[serde(default)]
    pub collision: Option<(Vec<String>, Row)>,
    /// Why this row must not be restored (entirely, or some columns) without `--force`.
    pub conflict: Option<Conflict>,
}

impl RowPlan {
    /// The columns an apply writes to this row (an update), given the policy and `--force`.
    pub fn writes(&self, policy: ConflictPolicy, force: bool) -> Vec<String> {
        let Action::Update(cols) = &self.action else {
            return Vec::new();
        };
        match policy {
            ConflictPolicy::Row => cols.clone(),
            ConflictPolicy::Column => self
                .columns
                .iter()
                .filter(|c| match c.verdict {
                    Verdict::Restore { .. } => true,
                    Verdict::Conflict { .. } => force,
                    Verdict::AlreadyRestored | Verdict::Keep { .. } => false,
                })
                .map(|c| c.column.clone())
                .collect(),
        }
    }

    /// Every selected column already holds its target: nothing left to do.
    pub fn already_restored(&self) -> bool {
        matches!(self.action, Action::Update(_))
            && self.conflict.is_none()
            && !self.columns.is_empty()
            && self.columns.iter().all(|c| {
                !matches!(
                    c.verdict,
                    Verdict::Restore { .. } | Verdict::Conflict { .. }
                )
            })
    }
}

/// A whole restore plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub tables: BTreeMap<String, TableMeta>,
    #[serde(default)]
    pub policy: ConflictPolicy,
    pub rows: Vec<RowPlan>,
    /// Selected transactions whose outcome is unknown (no END, `txid_status` not committed):
    /// their changes are left out.
    pub in_doubt: Vec<String>,
    /// Rows skipped because their images are redacted (they are not the data).
    pub redacted: Vec<String>,
}

impl Plan {
    /// Rows with a conflict (whole or in some columns).
    pub fn conflicts(&self) -> usize {
        self.rows.iter().filter(|r| r.conflict.is_some()).count()
    }

    /// Rows an apply (without `--force`) writes.
    pub fn to_revert(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.conflict.is_none() && self.does_something(r, false))
            .count()
    }

    /// Rows whose every selected column already holds its target.
    pub fn already_restored(&self) -> usize {
        self.rows.iter().filter(|r| r.already_restored()).count()
    }

    /// Whether applying `r` writes anything.
    pub fn does_something(&self, r: &RowPlan, force: bool) -> bool {
        match r.action {
            Action::Nothing => false,
            Action::Delete | Action::Insert => true,
            Action::Update(_) => !r.writes(self.policy, force).is_empty(),
        }
    }
}

pub use crate::audit::event::{key_json, key_of};

/// Split a table's changes (sorted by position) into row histories, following key changes, and
/// keep those with a selected change, from the first selected one on (earlier changes do not
/// matter to a restore). Indices into `seen`.
pub fn lineages(seen: &[Seen]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: HashMap<KeyDigest, usize> = HashMap::new();
    for (i, s) in seen.iter().enumerate() {
        let from = s.before.and_then(|b| current.remove(&b));
        let at = from.unwrap_or_else(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[at].push(i);
        if let Some(a) = s.after {
            current.insert(a, at);
        }
    }
    out.into_iter()
        .filter_map(|l| {
            let first = l.iter().position(|i| seen[*i].selected)?;
            Some(l[first..].to_vec())
        })
        .collect()
}

/// The positions whose full change a plan needs: every change of [`lineages`].
pub fn needed(seen: &[Seen], lineages: &[Vec<usize>]) -> HashSet<LogPosition> {
    lineages.iter().flatten().map(|i| seen[*i].at).collect()
}

/// The plan of one row history (its changes from the first selected one on, in order), or a
/// note that it is redacted. `None` when no change is selected.
pub fn row_plan(
    table: &str,
    meta: &TableMeta,
    lineage: &[&Change],
) -> Option<Result<RowPlan, String>> {
    let first = lineage.iter().position(|c| c.selected)?;
    let last = lineage.iter().rposition(|c| c.selected)?;
    let lineage = &lineage[first..];
    let last = last - first;
    if lineage[..=last].iter().any(|c| c.redacted) {
        let image = lineage[0].before().or(lineage[0].after());
        let key = image.map(|r| key_json(&r, &meta.key)).unwrap_or_default();
        return Some(Err(format!("{table} {key}")));
    }
    let image = |t: &Option<Box<str>>| {
        t.as_deref()
            .and_then(|t| Image::from_json(t.to_string()).ok())
    };
    let (target, expected) = (image(&lineage[0].before), image(&lineage[last].after));
    let latest = lineage.last().and_then(|c| c.after());
    let key_image = latest
        .or_else(|| row_of(&expected))
        .or_else(|| row_of(&target));
    let key = key_image.map(|r| key_of(&r, &meta.key)).unwrap_or_default();
    let action = action(row_of(&target).as_ref(), row_of(&expected).as_ref());
    let (selected, outside): (Vec<&&Change>, Vec<&&Change>) =
        lineage.iter().partition(|c| c.selected);
    Some(Ok(RowPlan {
        table: table.to_string(),
        key,
        target,
        expected,
        actual: None,
        actual_matches: false,
        action,
        columns: Vec::new(),
        changes: selected.iter().map(|c| c.reference.clone()).collect(),
        outside: outside.iter().map(|c| c.reference.clone()).collect(),
        collision: None,
        conflict: None,
    }))
}

fn action(target: Option<&Row>, expected: Option<&Row>) -> Action {
    match (target, expected) {
        (None, None) => Action::Nothing,
        (None, Some(_)) => Action::Delete,
        (Some(_), None) => Action::Insert,
        (Some(_), Some(_)) => {
            let cols = changed_columns(target, expected);
            if cols.is_empty() {
                Action::Nothing
            } else {
                Action::Update(cols)
            }
        }
    }
}

/// The row plans of one table from its committed changes, all in memory (the streaming
/// restore does the same in two passes over the log: `run`). Returns the plans and the
/// redacted rows left out.
pub fn build_table(
    table: &str,
    meta: &TableMeta,
    mut changes: Vec<(LoggedChange, LogPosition, bool)>,
) -> (Vec<RowPlan>, Vec<String>) {
    changes.sort_by_key(|(_, at, _)| *at);
    let seen: Vec<Seen> = changes
        .iter()
        .map(|(c, at, s)| Seen::of(c, *at, *s))
        .collect();
    let full: Vec<Change> = changes
        .into_iter()
        .map(|(c, at, s)| Change::of(c, at, s))
        .collect();
    let mut rows = Vec::new();
    let mut redacted = Vec::new();
    for l in lineages(&seen) {
        let lineage: Vec<&Change> = l.iter().map(|i| &full[*i]).collect();
        match row_plan(table, meta, &lineage) {
            Some(Ok(r)) => rows.push(r),
            Some(Err(r)) => redacted.push(r),
            None => {}
        }
    }
    (rows, redacted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{ChangeEvent, ChangeKey};
    use crate::restore::selection::Selection;
    use serde_json::json;

    fn change(
        tx: &str,
        n: u64,
        app: &str,
        before: serde_json::Value,
        after: serde_json::Value,
    ) -> LoggedChange {
        let ev: ChangeEvent = serde_json::from_value(json!({
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
            topic: "hs.public.t".into(),
            partition: 0,
            offset: n as i64,
        }
    }

    fn meta() -> TableMeta {
        TableMeta {
            schema: "public".into(),
            name: "t".into(),
            key: vec!["id".into()],
            columns: vec!["id".into(), "v".into()],
            references: vec![],
            unique: vec![vec!["id".into()]],
        }
    }

    fn plan_for(changes: Vec<LoggedChange>, sel: &Selection) -> Vec<RowPlan> {
        let input = changes
            .into_iter()
            .map(|c| {
                let at = LogPosition {
                    ts_ms: c.event.source.ts_ms,
                    partition: 0,
                    offset: c.offset,
                    topic: 0,
                };
                let s = sel.matches(&c);
                (c, at, s)
            })
            .collect();
        build_table("public.t", &meta(), input).0
    }

    #[test]
    fn rows_are_followed_through_key_changes_and_later_changes_are_listed() {
        let log = vec![
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
                json!({"id": 7, "v": "r"}),
            ),
        ];
        let sel = Selection {
            applications: vec!["bad".into()],
            ..Selection::default()
        };
        let rows = plan_for(log, &sel);
        assert_eq!(rows.len(), 2);
        // The key change and the later null, as one row: back to id 1, v x.
        assert_eq!(
            row_of(&rows[0].target),
            json!({"id": 1, "v": "x"}).as_object().cloned()
        );
        assert_eq!(
            row_of(&rows[0].expected),
            json!({"id": 2, "v": null}).as_object().cloned()
        );
        assert_eq!(rows[0].key, json!({"id": 2}).as_object().cloned().unwrap());
        assert_eq!(
            rows[0].action,
            Action::Update(vec!["id".into(), "v".into()])
        );
        assert_eq!(rows[0].changes.len(), 2);
        assert!(rows[0].outside.is_empty());
        // Row 6 was changed (and its key moved to 7) by "good" afterwards: the plan finds it
        // by its newest key and lists that change with the columns it set.
        assert_eq!(rows[1].key, json!({"id": 7}).as_object().cloned().unwrap());
        assert_eq!(rows[1].outside.len(), 1);
        assert_eq!(rows[1].outside[0].id, "e/6");
        assert_eq!(rows[1].outside[0].columns, ["id", "v"]);
    }

    #[test]
    fn inserts_are_undone_by_deletes_and_deletes_by_inserts() {
        let log = vec![
            change("a", 1, "bad", json!(null), json!({"id": 1, "v": "x"})),
            change("a", 2, "bad", json!({"id": 2, "v": "y"}), json!(null)),
            change("a", 4, "bad", json!(null), json!({"id": 4, "v": "t"})),
            change("a", 5, "bad", json!({"id": 4, "v": "t"}), json!(null)),
        ];
        let sel = Selection {
            tags: vec![("controller".into(), "bad".into())],
            ..Selection::default()
        };
        let actions: Vec<Action> = plan_for(log, &sel).into_iter().map(|r| r.action).collect();
        assert_eq!(actions, [Action::Delete, Action::Insert, Action::Nothing]);
    }

    #[test]
    fn changes_before_the_first_selected_one_do_not_matter_and_are_not_kept() {
        let log = vec![
            change(
                "a",
                1,
                "good",
                json!({"id": 1, "v": "a"}),
                json!({"id": 1, "v": "b"}),
            ),
            change(
                "b",
                2,
                "bad",
                json!({"id": 1, "v": "b"}),
                json!({"id": 1, "v": null}),
            ),
            change(
                "c",
                3,
                "good",
                json!({"id": 9, "v": "a"}),
                json!({"id": 9, "v": "b"}),
            ),
        ];
        let sel = Selection {
            applications: vec!["bad".into()],
            ..Selection::default()
        };
        let input: Vec<Seen> = log
            .iter()
            .map(|c| {
                Seen::of(
                    c,
                    LogPosition {
                        ts_ms: 0,
                        partition: 0,
                        offset: c.offset,
                        topic: 0,
                    },
                    sel.matches(c),
                )
            })
            .collect();
        let l = lineages(&input);
        assert_eq!(
            l,
            vec![vec![1]],
            "only the selected change's history, from it on"
        );
        assert_eq!(needed(&input, &l).len(), 1);
        let rows = plan_for(log, &sel);
        assert_eq!(
            row_of(&rows[0].target),
            json!({"id": 1, "v": "b"}).as_object().cloned()
        );
    }

    #[test]
    fn selection_dimensions_combine() {
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
