//! The questions, each as SQL over the store's tables (pure: text in, text out), and the
//! shaping of their rows for people ([`shape`]).
//!
//! Time is the transaction's commit time (`commit_ts_ms`: its records were published right
//! before its COMMIT) for "as of"; the statement's time (`ts`) for windows and listings, as
//! restore's `--since/--until` use it.

use hindsight::audit::event::Row;
use serde_json::{Map, Value};

use crate::query::lit;
use crate::record::{day_of, key_sort};

/// Which changes a listing covers. Every dimension given must match; several values of one
/// dimension are alternatives.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `schema.table`, or `table` in any schema.
    pub tables: Vec<String>,
    pub applications: Vec<String>,
    pub users: Vec<String>,
    /// sqlcommenter tags `key=value` (all must match).
    pub tags: Vec<(String, String)>,
    /// pg_query fingerprints of the statements.
    pub fingerprints: Vec<String>,
    /// Statement time window, ms: `since <= ts_ms < until`.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// A question about the history.
#[derive(Debug, Clone)]
pub enum Question {
    /// Every committed change of one row (optionally of one column), oldest first.
    WhoChanged {
        table: String,
        key: Row,
        column: Option<String>,
    },
    /// The row as it was at a time.
    RowAsOf { table: String, key: Row, at_ms: i64 },
    /// Every row of a table as it was at a time (one JSON image per row).
    TableAsOf { table: String, at_ms: i64 },
    /// Every committed change the filter selects, oldest first.
    Changes(Filter),
    /// The blast radius of a selection: per table, the rows, columns, times and statements.
    Summary(Filter),
    /// Writes gates refused, with what they would have changed.
    Blocked(Filter),
    /// One transaction: its outcome and every event.
    Transaction(TransactionId),
    /// Transactions whose outcome is not known (BEGIN without END, not resolved).
    InDoubt,
    /// Any read-only SQL over `events`, `transactions` and the views.
    Sql(String),
}

/// How a transaction is named.
#[derive(Debug, Clone)]
pub enum TransactionId {
    /// hindsight's id, `<session>:<n>`.
    Id(String),
    /// PostgreSQL's txid.
    Txid(i64),
}

/// The condition on `table_name` (prunes partitions) or, unqualified, on the relation.
fn table_cond(t: &str) -> String {
    if t.contains('.') {
        format!("table_name = {}", lit(t))
    } else {
        format!("relation = {}", lit(t))
    }
}

fn any_of(column: &str, values: &[String]) -> Option<String> {
    (!values.is_empty()).then(|| {
        let list: Vec<String> = values.iter().map(|v| lit(v)).collect();
        format!("{column} IN ({})", list.join(", "))
    })
}

/// The filter as SQL conditions on `events` columns (with day-partition pruning for windows).
pub fn conditions(f: &Filter) -> Vec<String> {
    let mut out = Vec::new();
    if !f.tables.is_empty() {
        let t: Vec<String> = f.tables.iter().map(|t| table_cond(t)).collect();
        out.push(format!("({})", t.join(" OR ")));
    }
    out.extend(any_of("application_name", &f.applications));
    out.extend(any_of("user_name", &f.users));
    out.extend(any_of("fingerprint", &f.fingerprints));
    for (k, v) in &f.tags {
        let pair = format!(
            "{}:{}",
            serde_json::to_string(k).expect("JSON"),
            serde_json::to_string(v).expect("JSON")
        );
        out.push(format!("strpos(tags_json, {}) > 0", lit(&pair)));
    }
    if let Some(s) = f.since_ms {
        out.push(format!("ts_ms >= {s} AND day >= {}", lit(&day_of(s))));
    }
    if let Some(u) = f.until_ms {
        out.push(format!("ts_ms < {u} AND day <= {}", lit(&day_of(u))));
    }
    out
}

fn where_clause(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    }
}

/// Which transaction records a question reads to decide what committed. Every transaction's
/// records are never older than its statements, so a window need not read older ones; and a
/// question about few rows need only read their own transactions' records (bloom filters on
/// `id` skip the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxScope {
    All,
    /// Records from this time on.
    Since(i64),
    /// Only these transactions' records (from `since_ms` on).
    Ids {
        ids: Vec<String>,
        since_ms: i64,
    },
}

/// Committed changes (as the `changes` view) matching `conds`, as CTE `c`, reading the
/// transaction records `scope` names.
fn committed_changes(conds: &[String], scope: &TxScope) -> String {
    let tx_where = match scope {
        TxScope::All => String::new(),
        TxScope::Since(s) => format!("WHERE ts_ms >= {s}"),
        TxScope::Ids { ids, .. } if ids.is_empty() => "WHERE false".to_string(),
        TxScope::Ids { ids, since_ms } => {
            let list: Vec<String> = ids.iter().map(|i| lit(i)).collect();
            format!("WHERE ts_ms >= {since_ms} AND id IN ({})", list.join(", "))
        }
    };
    format!(
        "WITH t AS (SELECT id, coalesce(min(CASE WHEN status = 'BEGIN' THEN ts_ms END), min(ts_ms)) AS commit_ts_ms \
           FROM transactions {tx_where} GROUP BY id \
           HAVING coalesce(max(CASE WHEN status = 'END' THEN commit_status END), \
                           max(CASE WHEN status = 'RESOLVED' THEN commit_status END)) = 'committed'), \
         c AS (SELECT e.*, t.commit_ts_ms FROM events e JOIN t ON e.transaction_id = t.id \
           {} ) ",
        where_clause(conds)
    )
}

/// The conditions on `events` of a question that reads committed changes.
fn event_conds(q: &Question) -> Option<Vec<String>> {
    let listing = "op IN ('c', 'u', 'd', 't')".to_string();
    match q {
        Question::WhoChanged { table, key, column } => {
            let mut conds = row_conds(table, key);
            conds.push("op <> 'r'".into());
            if let Some(c) = column {
                conds.push(format!("array_has(changed_columns, {})", lit(c)));
            }
            Some(conds)
        }
        Question::RowAsOf { table, key, .. } => Some(row_conds(table, key)),
        Question::TableAsOf { table, .. } => Some(vec![
            table_cond(table),
            "op IN ('c', 'u', 'd', 't', 'r')".into(),
        ]),
        Question::Changes(f) | Question::Summary(f) => {
            let mut conds = conditions(f);
            conds.push(listing);
            Some(conds)
        }
        Question::Blocked(_) | Question::Transaction(_) | Question::InDoubt | Question::Sql(_) => {
            None
        }
    }
}

/// The scope a question reads without a probe.
pub fn default_scope(q: &Question) -> TxScope {
    match q {
        Question::Changes(f) | Question::Summary(f) => {
            f.since_ms.map_or(TxScope::All, TxScope::Since)
        }
        _ => TxScope::All,
    }
}

/// A first query whose answer (`transaction_id`, `first` = earliest statement time) narrows
/// the transaction records `q` must read ([`TxScope::Ids`]); none where the whole table is
/// read anyway.
pub fn probe(q: &Question) -> Option<String> {
    if matches!(q, Question::TableAsOf { .. }) {
        return None;
    }
    event_conds(q).map(|conds| {
        format!(
            "SELECT transaction_id, min(ts_ms) AS first FROM events {} GROUP BY transaction_id",
            where_clause(&conds)
        )
    })
}

fn row_conds(table: &str, key: &Row) -> Vec<String> {
    let k = lit(&key_sort(key));
    vec![
        table_cond(table),
        format!("(key_sort = {k} OR old_key_sort = {k})"),
        "op IN ('c', 'u', 'd', 't', 'r')".into(),
    ]
}

const LISTING: &str = "ts, op, table_name, key_json, changed_columns, before_json, after_json, \
     user_name, application_name, client_addr, statement, fingerprint, tags_json, transaction_id, tx_id";

/// The SQL of `q`, reading every transaction record it may need.
pub fn sql(q: &Question) -> String {
    sql_in(q, &default_scope(q))
}

/// The SQL of `q`, reading the transaction records of `scope`.
pub fn sql_in(q: &Question, scope: &TxScope) -> String {
    let c = |q: &Question| committed_changes(&event_conds(q).unwrap_or_default(), scope);
    match q {
        Question::WhoChanged { .. } => format!(
            "{} SELECT {LISTING}, key_sort, old_key_sort FROM c ORDER BY commit_ts_ms, kafka_offset",
            c(q)
        ),
        Question::RowAsOf { at_ms, .. } => format!(
            "{} SELECT op, after_json, key_sort, old_key_sort, ts, commit_ts_ms, transaction_id, \
               application_name, user_name FROM c WHERE commit_ts_ms <= {at_ms} \
             ORDER BY commit_ts_ms DESC, kafka_offset DESC LIMIT 1",
            c(q)
        ),
        Question::TableAsOf { at_ms, .. } => table_as_of(&c(q), *at_ms),
        Question::Changes(_) => format!(
            "{} SELECT {LISTING} FROM c ORDER BY commit_ts_ms, kafka_offset",
            c(q)
        ),
        Question::Summary(_) => summary(&c(q)),
        Question::Blocked(f) => {
            let mut conds = conditions(f);
            conds.push("op = 'blocked'".into());
            format!(
                "SELECT ts, table_name, key_json, blocked_by, before_json, after_json AS would_be, \
                   user_name, application_name, client_addr, statement, tags_json, transaction_id \
                 FROM events {} ORDER BY ts_ms, kafka_offset",
                where_clause(&conds)
            )
        }
        Question::Transaction(id) => {
            let cond = match id {
                TransactionId::Id(s) => format!("e.transaction_id = {}", lit(s)),
                TransactionId::Txid(x) => format!("e.tx_id = {x}"),
            };
            format!(
                "SELECT o.outcome, o.resolution, e.total_order, e.ts, e.op, e.table_name, e.key_json, \
                   e.changed_columns, e.before_json, e.after_json, e.user_name, e.application_name, \
                   e.statement, e.transaction_id, e.tx_id \
                 FROM events e LEFT JOIN transaction_outcomes o ON e.transaction_id = o.transaction_id \
                 WHERE {cond} ORDER BY e.transaction_id, e.total_order"
            )
        }
        Question::InDoubt => "SELECT transaction_id, tx_id, commit_ts_ms, event_count FROM in_doubt \
             ORDER BY commit_ts_ms"
            .to_string(),
        Question::Sql(s) => s.clone(),
    }
}

/// The latest state of every row at `at_ms` from the committed changes `c`: each change's new
/// key holds its after image, the old key of a key change is gone; rows whose latest state is
/// a delete are left out.
fn table_as_of(c: &str, at_ms: i64) -> String {
    format!(
        "{c} , states AS ( \
           SELECT key_sort AS k, op, after_json AS image, commit_ts_ms, kafka_offset, 0 AS moved \
             FROM c WHERE commit_ts_ms <= {at_ms} \
           UNION ALL \
           SELECT old_key_sort AS k, 'moved' AS op, CAST(NULL AS VARCHAR) AS image, commit_ts_ms, kafka_offset, 1 AS moved \
             FROM c WHERE commit_ts_ms <= {at_ms} AND old_key_sort IS NOT NULL), \
         ranked AS (SELECT k, op, image, row_number() OVER (PARTITION BY k \
             ORDER BY commit_ts_ms DESC, kafka_offset DESC, moved ASC) AS rn FROM states) \
         SELECT image FROM ranked WHERE rn = 1 AND op IN ('c', 'u', 'r') ORDER BY k"
    )
}

/// Per table: changes, rows, transactions, first and last time, applications, fingerprints;
/// and per column, how many rows it changed in (`columns`).
fn summary(c: &str) -> String {
    format!(
        "{c} , cols AS (SELECT table_name, col, count(DISTINCT key_sort) AS n FROM \
             (SELECT table_name, key_sort, unnest(changed_columns) AS col FROM c) GROUP BY table_name, col), \
           col_list AS (SELECT table_name, string_agg(concat(col, ' (', CAST(n AS VARCHAR), ')'), ', ' ORDER BY n DESC, col) AS columns \
             FROM cols GROUP BY table_name) \
         SELECT s.table_name, s.rows, s.changes, s.transactions, s.first, s.last, l.columns, \
           s.operations, s.applications, s.users, s.fingerprints \
         FROM (SELECT table_name, count(DISTINCT key_sort) AS rows, count(*) AS changes, \
             count(DISTINCT transaction_id) AS transactions, min(ts) AS first, max(ts) AS last, \
             array_to_string(array_sort(array_agg(DISTINCT op)), ', ') AS operations, \
             array_to_string(array_sort(array_agg(DISTINCT application_name)), ', ') AS applications, \
             array_to_string(array_sort(array_agg(DISTINCT user_name)), ', ') AS users, \
             array_to_string(array_sort(array_agg(DISTINCT fingerprint)), ', ') AS fingerprints \
           FROM c GROUP BY table_name) s LEFT JOIN col_list l ON s.table_name = l.table_name \
         ORDER BY s.table_name"
    )
}

/// A result row with its columns in query order.
pub type Ordered = Vec<(String, Value)>;

/// Shape one result row for people, in the query's column order (`order`): JSON text columns
/// (`*_json`, `would_be`) become JSON values named without `_json`, and a change's changed
/// columns with its images become `changes`: `{column: {old, new}}` (`only`: just that column).
pub fn shape(mut row: Map<String, Value>, order: &[String], only: Option<&str>) -> Ordered {
    let image = |v: Option<Value>| -> Option<Map<String, Value>> {
        v.and_then(|v| v.as_str().and_then(|s| serde_json::from_str(s).ok()))
    };
    let pairs = row.contains_key("changed_columns") && row.contains_key("before_json");
    let mut out = Ordered::new();
    for name in order {
        match name.as_str() {
            "key_sort" | "old_key_sort" => {}
            "before_json" | "after_json" if pairs => {}
            "changed_columns" if pairs => {
                let before = image(row.get("before_json").cloned());
                let after = image(row.get("after_json").cloned());
                let cols: Vec<String> = row
                    .remove("changed_columns")
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default();
                let mut changes = Map::new();
                for c in cols.iter().filter(|c| only.is_none_or(|o| o == c.as_str())) {
                    let get = |m: &Option<Map<String, Value>>| {
                        m.as_ref()
                            .and_then(|m| m.get(c))
                            .cloned()
                            .unwrap_or(Value::Null)
                    };
                    let mut pair = Map::new();
                    pair.insert("old".into(), get(&before));
                    pair.insert("new".into(), get(&after));
                    changes.insert(c.clone(), Value::Object(pair));
                }
                out.push(("changes".into(), Value::Object(changes)));
            }
            n if n.ends_with("_json") || n == "would_be" => {
                let v = row.remove(n).unwrap_or(Value::Null);
                let parsed = match &v {
                    Value::String(s) => serde_json::from_str(s).unwrap_or(v),
                    _ => v,
                };
                out.push((n.trim_end_matches("_json").to_string(), parsed));
            }
            n => out.push((n.to_string(), row.remove(n).unwrap_or(Value::Null))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_become_conditions_with_day_pruning() {
        let f = Filter {
            tables: vec!["public.brieff".into(), "notes".into()],
            applications: vec!["certification-v1".into()],
            tags: vec![("controller".into(), "o'brien".into())],
            since_ms: Some(1_700_000_000_000),
            ..Filter::default()
        };
        let c = conditions(&f).join(" AND ");
        assert!(
            c.contains("table_name = 'public.brieff' OR relation = 'notes'"),
            "{c}"
        );
        assert!(
            c.contains("application_name IN ('certification-v1')"),
            "{c}"
        );
        assert!(
            c.contains(r#"strpos(tags_json, '"controller":"o''brien"') > 0"#),
            "{c}"
        );
        assert!(c.contains("day >= '2023-11-14'"), "{c}");
    }

    #[test]
    fn shaping_pairs_old_and_new_values_of_changed_columns() {
        let row: Map<String, Value> = json!({
            "op": "u", "changed_columns": ["bfso", "x"],
            "before_json": "{\"bfso\":\"A\",\"x\":1}", "after_json": "{\"bfso\":null,\"x\":2}",
            "tags_json": "{\"controller\":\"c\"}", "key_sort": "k"
        })
        .as_object()
        .unwrap()
        .clone();
        let order: Vec<String> = [
            "op",
            "changed_columns",
            "before_json",
            "after_json",
            "tags_json",
            "key_sort",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let all = shape(row.clone(), &order, None);
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["op", "changes", "tags"]);
        assert_eq!(all[1].1["bfso"], json!({"old": "A", "new": null}));
        assert_eq!(all[1].1["x"], json!({"old": 1, "new": 2}));
        assert_eq!(all[2].1, json!({"controller": "c"}));
        let one = shape(row, &order, Some("bfso"));
        assert_eq!(one[1].1.as_object().unwrap().len(), 1);
    }
}
