//! The SQL a restore runs, as reviewable text: one statement per row, values carried as the
//! images' JSON and turned back into typed values by `jsonb_populate_record` (exact for every
//! type the capture round-trips), with a comment saying what each statement undoes.

use super::plan::{row_of, Action, RowPlan, TableMeta};
use crate::audit::event::Row;

pub use crate::statement::quoting::{literal, quote};

pub fn quote_table(schema: &str, name: &str) -> String {
    format!("{}.{}", quote(schema), quote(name))
}

fn image(relation: &str, row: &Row) -> String {
    image_text(relation, &serde_json::to_string(row).expect("JSON"))
}

fn image_text(relation: &str, json: &str) -> String {
    format!(
        "jsonb_populate_record(NULL::{relation}, {}::jsonb)",
        literal(json)
    )
}

/// `WHERE` condition finding the row `key` in `t` (alias `k` is the key record).
fn find(meta: &TableMeta, relation: &str, key: &Row) -> String {
    if meta.key.is_empty() {
        // No key: one row with exactly this content.
        return format!(
            "t.ctid = (SELECT x.ctid FROM {relation} AS x WHERE to_jsonb(x.*) = {}::jsonb LIMIT 1)",
            literal(&serde_json::to_string(key).expect("JSON"))
        );
    }
    let cols: Vec<String> = meta
        .key
        .iter()
        .map(|c| format!("t.{0} = k.{0}", quote(c)))
        .collect();
    cols.join(" AND ")
}

/// The statement that reverts `row` in `relation` (the table, or a copy of it), writing the
/// columns `writes` of an update, or `None` when there is nothing to do.
pub fn statement(
    meta: &TableMeta,
    relation: &str,
    row: &RowPlan,
    writes: &[String],
) -> Option<String> {
    let writable = |c: &String| meta.columns.contains(c);
    match &row.action {
        Action::Nothing => None,
        Action::Delete => Some(if meta.key.is_empty() {
            format!(
                "DELETE FROM {relation} AS t WHERE {}",
                find(meta, relation, &row.key)
            )
        } else {
            format!(
                "DELETE FROM {relation} AS t USING {} AS k WHERE {}",
                image(relation, &row.key),
                find(meta, relation, &row.key)
            )
        }),
        Action::Insert => {
            let target = row.target.as_ref()?;
            let present = target.row();
            let cols: Vec<String> = meta
                .columns
                .iter()
                .filter(|c| present.contains_key(*c))
                .map(|c| quote(c))
                .collect();
            let cols = cols.join(", ");
            Some(format!(
                "INSERT INTO {relation} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {}",
                image_text(relation, target.json())
            ))
        }
        Action::Update(_) => {
            let target = row.target.as_ref()?;
            let sets: Vec<String> = writes
                .iter()
                .filter(|c| writable(c))
                .map(|c| format!("{0} = r.{0}", quote(c)))
                .collect();
            if sets.is_empty() {
                return None;
            }
            let from = if meta.key.is_empty() {
                format!("{} AS r", image_text(relation, target.json()))
            } else {
                format!(
                    "{} AS r, {} AS k",
                    image_text(relation, target.json()),
                    image(relation, &row.key)
                )
            };
            Some(format!(
                "UPDATE {relation} AS t SET {} FROM {from} WHERE {}",
                sets.join(", "),
                find(meta, relation, &row.key)
            ))
        }
    }
}

/// A comment line per statement: what it reverts, and (for updates) each written column's
/// change.
pub fn comment(row: &RowPlan, writes: &[String]) -> String {
    let ids: Vec<&str> = row.changes.iter().map(|c| c.id.as_str()).collect();
    let key = serde_json::to_string(&row.key).unwrap_or_default();
    let mut out = format!(
        "-- {} {key}: {} (reverts {})",
        row.table,
        match &row.action {
            Action::Delete => "delete the row the selection created",
            Action::Insert => "insert the row the selection removed",
            Action::Update(_) => "put back the changed columns",
            Action::Nothing => "nothing to do",
        },
        ids.join(", ")
    );
    if let (Action::Update(_), Some(t)) = (&row.action, &row.target) {
        let live = row_of(&row.actual).or_else(|| row_of(&row.expected));
        let t = t.row();
        for c in writes {
            let show = |v: Option<&serde_json::Value>| v.map_or("∅".into(), |v| v.to_string());
            out.push_str(&format!(
                "\n--   {c}: {} → {}",
                show(live.as_ref().and_then(|l| l.get(c))),
                show(t.get(c))
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &[&str]) -> TableMeta {
        TableMeta {
            schema: "public".into(),
            name: "brieff".into(),
            key: key.iter().map(|s| s.to_string()).collect(),
            columns: vec!["bfkey".into(), "bfso".into()],
            references: vec![],
            unique: vec![],
        }
    }

    fn row(action: Action) -> RowPlan {
        let img = |v: serde_json::Value| v.as_object().map(super::super::plan::Image::from_row);
        RowPlan {
            table: "public.brieff".into(),
            key: serde_json::json!({"bfkey": 1})
                .as_object()
                .cloned()
                .unwrap(),
            target: img(serde_json::json!({"bfkey": 1, "bfso": "it's"})),
            expected: img(serde_json::json!({"bfkey": 1, "bfso": null})),
            actual: None,
            actual_matches: true,
            action,
            columns: vec![],
            changes: vec![],
            outside: vec![],
            collision: None,
            conflict: None,
        }
    }

    #[test]
    fn statements_carry_values_as_json_and_quote_them() {
        let rel = quote_table("public", "brieff");
        let s = statement(
            &meta(&["bfkey"]),
            &rel,
            &row(Action::Update(vec!["bfso".into()])),
            &["bfso".into()],
        )
        .unwrap();
        assert_eq!(
            s,
            "UPDATE \"public\".\"brieff\" AS t SET \"bfso\" = r.\"bfso\" FROM jsonb_populate_record(NULL::\"public\".\"brieff\", '{\"bfkey\":1,\"bfso\":\"it''s\"}'::jsonb) AS r, jsonb_populate_record(NULL::\"public\".\"brieff\", '{\"bfkey\":1}'::jsonb) AS k WHERE t.\"bfkey\" = k.\"bfkey\""
        );
        let s = statement(&meta(&[]), &rel, &row(Action::Delete), &[]).unwrap();
        assert!(s.contains("t.ctid = (SELECT x.ctid"), "{s}");
        assert_eq!(
            statement(&meta(&["bfkey"]), &rel, &row(Action::Nothing), &[]),
            None
        );
    }
}
