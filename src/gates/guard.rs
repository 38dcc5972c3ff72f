//! Value guards: a CEL predicate over one changed row. Variables: `before` and `after` (maps
//! of column → value, `null` for an insert's before / a delete's after), `op` ("insert",
//! "update", "delete"), `table`; function `changed("col")`.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map, Value};
use cel::{Context, Program};

use crate::audit::event::Row;

/// A compiled `when`.
pub struct Guard {
    program: Program,
    source: String,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("source", &self.source)
            .finish()
    }
}

/// A JSON image value as a CEL value (numbers as int when exact, else double).
fn to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) => Value::Float(f),
            _ => Value::String(Arc::new(n.to_string())),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(to_cel).collect())),
        serde_json::Value::Object(o) => row_to_cel(o),
    }
}

fn row_to_cel(row: &Row) -> Value {
    let map: HashMap<Key, Value> = row
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// The row a guard sees.
pub struct RowFacts<'a> {
    pub before: Option<&'a Row>,
    pub after: Option<&'a Row>,
    pub op: &'a str,
    pub table: &'a str,
}

impl Guard {
    pub fn compile(source: &str) -> Result<Guard, String> {
        // Fail on a syntax error now, not on the first write.
        let program = Program::compile(source).map_err(|e| e.to_string())?;
        Ok(Guard {
            program,
            source: source.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate on one row. An error (unknown column, wrong type) is an `Err` with CEL's
    /// message: the caller treats it as a match, so a broken guard cannot let writes through.
    pub fn eval(&self, row: &RowFacts) -> Result<bool, String> {
        self.eval_in(&RowScope::new(row))
    }

    /// Evaluate in a scope prepared once for the row (several guards, one conversion).
    pub fn eval_in(&self, scope: &RowScope) -> Result<bool, String> {
        match self.program.execute(&scope.ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("`{}` gave {other:?}, not true/false", self.source)),
            Err(e) => Err(format!("`{}`: {e}", self.source)),
        }
    }
}

/// A row's images as CEL variables, built once per row.
pub struct RowScope {
    ctx: Context<'static>,
}

impl RowScope {
    pub fn new(row: &RowFacts) -> RowScope {
        let mut ctx = Context::default();
        let img = |r: Option<&Row>| r.map_or(Value::Null, row_to_cel);
        ctx.add_variable_from_value("before", img(row.before));
        ctx.add_variable_from_value("after", img(row.after));
        ctx.add_variable_from_value("op", Value::String(Arc::new(row.op.to_string())));
        ctx.add_variable_from_value("table", Value::String(Arc::new(row.table.to_string())));
        let changed: Vec<Value> = changed_columns(row.before, row.after)
            .into_iter()
            .map(|c| Value::String(Arc::new(c)))
            .collect();
        ctx.add_variable_from_value("__changed", Value::List(Arc::new(changed)));
        ctx.add_function("changed", changed_fn);
        RowScope { ctx }
    }
}

/// `changed("col")`: the column differs between before and after (inserts and deletes change
/// every column).
fn changed_fn(ftx: &cel::FunctionContext, col: Arc<String>) -> Result<bool, cel::ExecutionError> {
    let list = ftx.ptx.get_variable("__changed")?;
    Ok(match list {
        Value::List(l) => l
            .iter()
            .any(|v| matches!(v, Value::String(s) if **s == *col)),
        _ => false,
    })
}

fn changed_columns(before: Option<&Row>, after: Option<&Row>) -> Vec<String> {
    match (before, after) {
        (Some(b), Some(a)) => b
            .keys()
            .chain(a.keys())
            .filter(|k| b.get(*k) != a.get(*k))
            .cloned()
            .collect(),
        (Some(r), None) | (None, Some(r)) => r.keys().cloned().collect(),
        (None, None) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: serde_json::Value) -> Row {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn guards_see_images_and_changed_columns() {
        let g = Guard::compile("after.bfso == null && before.bfso != null").unwrap();
        let (b, a) = (
            row(serde_json::json!({"bfso": "A", "n": 1})),
            row(serde_json::json!({"bfso": null, "n": 1})),
        );
        let facts = |before, after| RowFacts {
            before,
            after,
            op: "update",
            table: "public.brieff",
        };
        assert!(g.eval(&facts(Some(&b), Some(&a))).unwrap());
        assert!(!g.eval(&facts(Some(&a), Some(&b))).unwrap());
        let c = Guard::compile("changed(\"bfso\") && !changed(\"n\") && after.n >= 1").unwrap();
        assert!(c.eval(&facts(Some(&b), Some(&a))).unwrap());
        // A guard that fails to evaluate reports an error (callers treat it as a match).
        let bad = Guard::compile("after.nope == 1").unwrap();
        assert!(bad.eval(&facts(Some(&b), Some(&a))).is_err());
        assert!(Guard::compile("after.x ==").is_err());
    }
}
