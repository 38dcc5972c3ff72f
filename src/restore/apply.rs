//! Applying a plan: the statements in an order foreign keys accept (deletes child tables first,
//! then updates and inserts parent tables first), as a reviewable script, and in one transaction that first locks
//! and re-reads every row it touches and refuses if anything differs from the plan.

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::plan::{Action, Conflict, ConflictPolicy, Plan, RowPlan, TableMeta};
use super::progress::Progress;
use super::{run, sql, RestoreError};

/// How to apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Revert the rows without conflicts and leave the conflicting ones alone.
    pub skip_conflicts: bool,
    /// Revert conflicting rows too, and do not refuse when rows changed since the plan.
    pub force: bool,
    /// sqlcommenter tag value (`hindsight_restore='…'`) on every statement, so a restore made
    /// through the proxy is itself audited and attributable.
    pub tag: String,
    /// Write into a new table with this (qualified) name, a copy of the plan's single table,
    /// instead of the table itself (`--as-of … --into`).
    pub into: Option<String>,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows written.
    pub reverted: usize,
    /// Rows with a conflict left entirely alone (`--skip-conflicts`).
    pub skipped_conflicts: usize,
    /// Conflicting columns left alone in rows whose other columns were restored
    /// (`schema.table {key} column`).
    pub kept_conflicting: Vec<String>,
    /// Rows with nothing to do (the selection cancelled out, or already restored).
    pub unchanged: usize,
}

/// Tables parents-first (a table after every table it references); cycles keep name order.
fn table_order(tables: &BTreeMap<String, TableMeta>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut done: HashSet<String> = HashSet::new();
    fn visit(
        t: &str,
        tables: &BTreeMap<String, TableMeta>,
        done: &mut HashSet<String>,
        out: &mut Vec<String>,
        depth: usize,
    ) {
        if done.contains(t) || depth > tables.len() {
            return;
        }
        if let Some(m) = tables.get(t) {
            for r in &m.references {
                visit(r, tables, done, out, depth + 1);
            }
            done.insert(t.to_string());
            out.push(t.to_string());
        }
    }
    for t in tables.keys() {
        visit(t, tables, &mut done, &mut out, 0);
    }
    out
}

/// The rows to apply, in statement order: deletes (children first), then per table, parents
/// first, its updates and its inserts. Conflicting rows are included only with `force`, left out with `skip_conflicts`.
/// Whether an apply with `opts` writes `r`.
fn applies(plan: &Plan, r: &RowPlan, opts: &ApplyOptions) -> bool {
    plan.does_something(r, opts.force)
        && match &r.conflict {
            None => true,
            Some(Conflict::Row(_)) => opts.force,
            Some(Conflict::Columns(_)) => opts.force || opts.skip_conflicts,
        }
}

pub fn ordered<'a>(plan: &'a Plan, opts: &ApplyOptions) -> Vec<&'a RowPlan> {
    let order = table_order(&plan.tables);
    let eligible = |r: &&RowPlan| applies(plan, r, opts);
    let pick = |tables: &mut dyn Iterator<Item = &String>, pred: &dyn Fn(&Action) -> bool| {
        let mut v = Vec::new();
        for t in tables {
            v.extend(
                plan.rows
                    .iter()
                    .filter(|r| r.table == *t && pred(&r.action))
                    .filter(eligible),
            );
        }
        v
    };
    let mut out = pick(&mut order.iter().rev(), &|a| *a == Action::Delete);
    // Per table, parents first: a referencing row updated back to a parent the restore
    // inserts (a cascade's SET NULL reverted) comes after that parent's insert.
    for t in &order {
        out.extend(pick(&mut std::iter::once(t), &|a| {
            matches!(a, Action::Update(_))
        }));
        out.extend(pick(&mut std::iter::once(t), &|a| *a == Action::Insert));
    }
    out
}

fn relation(meta: &TableMeta, opts: &ApplyOptions) -> String {
    opts.into
        .clone()
        .unwrap_or_else(|| sql::quote_table(&meta.schema, &meta.name))
}

/// The exact SQL an apply runs (without its locking re-check), for review.
pub fn script(plan: &Plan, opts: &ApplyOptions) -> String {
    let mut out = String::from(
        "-- hindsight restore: review, then apply with --apply (or run it yourself)\nBEGIN;\n",
    );
    if let (Some(into), Some(meta)) = (&opts.into, plan.tables.values().next()) {
        out.push_str(&format!("{};\n", copy_table(meta, into)));
    }
    for r in ordered(plan, opts) {
        let meta = &plan.tables[&r.table];
        let writes = r.writes(plan.policy, opts.force);
        if let Some(s) = sql::statement(meta, &relation(meta, opts), r, &writes) {
            out.push_str(&sql::comment(r, &writes));
            out.push('\n');
            out.push_str(&s);
            out.push_str(";\n");
        }
    }
    out.push_str("COMMIT;\n");
    out
}

/// `CREATE TABLE into (LIKE t INCLUDING ALL)` plus a copy of its rows.
fn copy_table(meta: &TableMeta, into: &str) -> String {
    let cols: Vec<String> = meta.columns.iter().map(|c| sql::quote(c)).collect();
    let cols = cols.join(", ");
    let from = sql::quote_table(&meta.schema, &meta.name);
    format!(
        "CREATE TABLE {into} (LIKE {from} INCLUDING ALL);\nINSERT INTO {into} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {from}"
    )
}

/// Statements per round trip.
const BATCH: usize = 500;

/// Apply `plan` in one transaction on `client`. Nothing is changed unless every row is as the
/// plan expects (locked first) and every statement changes exactly one row.
pub async fn apply(
    client: &mut Client,
    plan: &Plan,
    opts: &ApplyOptions,
    progress: &Progress,
) -> Result<Applied, RestoreError> {
    let conflicts = plan.conflicts();
    if conflicts > 0 && !opts.skip_conflicts && !opts.force {
        return Err(RestoreError::Conflicts(conflicts));
    }
    let rows = ordered(plan, opts);
    let tx = client
        .transaction()
        .await
        .map_err(RestoreError::db("starting the restore transaction"))?;
    if let (Some(into), Some(meta)) = (&opts.into, plan.tables.values().next()) {
        tx.batch_execute(&copy_table(meta, into))
            .await
            .map_err(RestoreError::db("creating the --into table"))?;
    }
    // Lock and re-read: the rows must still be as the plan saw them.
    let now = recheck(&tx, plan, &rows, opts).await?;
    if !opts.force {
        refuse_drift(plan, &rows, &now, opts)?;
    }
    let statements: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let meta = &plan.tables[&r.table];
            sql::statement(
                meta,
                &relation(meta, opts),
                r,
                &r.writes(plan.policy, opts.force),
            )
        })
        .collect();
    let tag = format!(
        "/*hindsight_restore='{}'*/",
        opts.tag.replace(['\'', '*'], "")
    );
    let total = statements.len();
    progress.phase("applying statements", total as u64);
    for chunk in statements.chunks(BATCH) {
        let text = format!("{};\n{tag}", chunk.join(";\n"));
        let replies = tx
            .simple_query(&text)
            .await
            .map_err(RestoreError::db("applying the restore"))?;
        let counts: Vec<u64> = replies
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(c) => Some(*c),
                _ => None,
            })
            .collect();
        for (s, c) in chunk.iter().zip(counts.iter().chain(std::iter::repeat(&0))) {
            if *c != 1 {
                return Err(RestoreError::Unexpected {
                    statement: s.chars().take(200).collect(),
                    count: *c,
                });
            }
        }
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    tx.commit()
        .await
        .map_err(RestoreError::db("committing the restore"))?;
    Ok(summary(plan, opts, total))
}

/// The planned rows `rows` as they are now, locked (only what the re-check needs).
async fn recheck(
    tx: &tokio_postgres::Transaction<'_>,
    plan: &Plan,
    rows: &[&RowPlan],
    opts: &ApplyOptions,
) -> Result<Vec<RowPlan>, RestoreError> {
    let mut now: Vec<RowPlan> = rows
        .iter()
        .map(|r| RowPlan {
            table: r.table.clone(),
            key: r.key.clone(),
            target: None,
            expected: r.expected.clone(),
            actual: None,
            actual_matches: false,
            action: Action::Nothing,
            columns: Vec::new(),
            changes: Vec::new(),
            outside: Vec::new(),
            collision: None,
            conflict: None,
        })
        .collect();
    run::check(tx, &plan.tables, &mut now, opts.into.as_deref(), true).await?;
    Ok(now)
}

/// Whether the row moved since the plan in what the apply depends on: for a per-column
/// update, a column it writes; otherwise the whole row.
fn drifted(plan: &Plan, planned: &RowPlan, now: &RowPlan, opts: &ApplyOptions) -> bool {
    match (&planned.action, plan.policy) {
        (Action::Update(_), ConflictPolicy::Column) => match (&planned.actual, &now.actual) {
            (Some(p), Some(n)) => {
                let (p, n) = (p.row(), n.row());
                planned
                    .writes(plan.policy, opts.force)
                    .iter()
                    .any(|c| p.get(c) != n.get(c))
            }
            _ => true,
        },
        _ => !now.actual_matches || now.actual != planned.actual,
    }
}

/// Refuse the apply when a row drifted (listing the first ten).
fn refuse_drift(
    plan: &Plan,
    rows: &[&RowPlan],
    now: &[RowPlan],
    opts: &ApplyOptions,
) -> Result<(), RestoreError> {
    let drifted: Vec<String> = now
        .iter()
        .zip(rows)
        .filter(|(n, p)| drifted(plan, p, n, opts))
        .map(|(n, _)| {
            format!(
                "{} {}",
                n.table,
                serde_json::to_string(&n.key).unwrap_or_default()
            )
        })
        .collect();
    if drifted.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = drifted.iter().take(10).map(String::as_str).collect();
    Err(RestoreError::Drift(format!(
        "{} row(s): {}{}",
        drifted.len(),
        shown.join("; "),
        if drifted.len() > 10 { "; …" } else { "" }
    )))
}

/// What an apply (`total` statements) did to the plan's rows.
fn summary(plan: &Plan, opts: &ApplyOptions, total: usize) -> Applied {
    let mut kept_conflicting = Vec::new();
    let mut skipped_conflicts = 0;
    for r in &plan.rows {
        match (&r.conflict, applies(plan, r, opts)) {
            (Some(Conflict::Columns(cols)), true) if !opts.force => {
                let key = serde_json::to_string(&r.key).unwrap_or_default();
                kept_conflicting.extend(cols.iter().map(|c| format!("{} {key} {c}", r.table)));
            }
            (Some(_), false) => skipped_conflicts += 1,
            _ => {}
        }
    }
    Applied {
        reverted: total,
        skipped_conflicts,
        kept_conflicting,
        unchanged: plan
            .rows
            .iter()
            .filter(|r| r.conflict.is_none() && !plan.does_something(r, false))
            .count(),
    }
}
