//! Which numeric constants of a write can be sent as parameters of a statement the server
//! prepared once, instead of in a new text it parses, analyses and plans again each time.
//!
//! A client in the simple protocol sends each row's values inside the text. Through capture
//! the server then plans the capture columns again for every statement (BENCHMARKS.md: +0.12 ms
//! of PostgreSQL's CPU per pgbench transaction in simple protocol, +0.05 prepared). A write whose
//! constants are all plain numbers in plain expressions runs the same with each number as a
//! parameter of the type the server gives that literal (`5` is `int4`, `5000000000` `int8`,
//! `1.5` and `1e3` `numeric`): operator and function resolution see the same types.
//!
//! What is never bound, decided on the parse tree once per shape ([`of`]):
//! - a statement with a subquery or an `INSERT … SELECT` (a SELECT's `ORDER BY 1` and
//!   `GROUP BY 1` name output columns, and `FETCH FIRST 5` takes only a literal);
//! - a type with modifiers or array bounds (`numeric(10,2)`, `timestamp(3)`, `int[3]`: literals
//!   only), or any number the tree holds that is not a constant the text spelled (the counts of
//!   tree constants and number tokens must agree);
//! - a WITH list, a client RETURNING (its columns could change under a prepared statement),
//!   `WHERE CURRENT OF`, an ON CONFLICT inference with a WHERE;
//! - at the text level ([`params`]): a number not in plain decimal digits (`0x1F`, `1_000`),
//!   and `2147483648` or `9223372036854775808` (after a minus sign they are `int4` / `int8`).
//!
//! String constants stay in the text: their types come from where they stand, and decoding
//! them depends on settings. Statements that differ in them are prepared separately.

use pg_query::protobuf::Token;
use pg_query::NodeEnum;
use serde_json::Value;

/// Whether a statement's numbers can be bound as parameters, decided on its parse tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Bindable {
    /// Not this statement (see the module documentation).
    #[default]
    No,
    /// Its `n` number tokens are all constants in expressions.
    Numbers(usize),
}

/// The type a numeric literal gets from the server (`make_const`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Int4,
    Int8,
    Numeric,
}

impl ParamType {
    /// The name in a PREPARE's type list.
    pub fn sql(self) -> &'static str {
        match self {
            ParamType::Int4 => "int4",
            ParamType::Int8 => "int8",
            ParamType::Numeric => "numeric",
        }
    }
}

/// One number of a statement's text, to be a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Byte range in the statement's text.
    pub range: std::ops::Range<usize>,
    pub ty: ParamType,
}

/// Whether the statement `node` (a top-level statement) can have its numbers bound.
pub fn of(node: &NodeEnum) -> Bindable {
    if !matches!(
        node,
        NodeEnum::InsertStmt(_) | NodeEnum::UpdateStmt(_) | NodeEnum::DeleteStmt(_)
    ) {
        return Bindable::No;
    }
    let Ok(tree) = serde_json::to_value(node) else {
        return Bindable::No;
    };
    let mut count = 0;
    match plain(&tree, &mut count) {
        true => Bindable::Numbers(count),
        false => Bindable::No,
    }
}

/// Whether nothing in `v` rules binding out; counts its numeric constants into `count`.
fn plain(v: &Value, count: &mut usize) -> bool {
    match v {
        Value::Array(items) => items.iter().all(|i| plain(i, count)),
        Value::Object(map) => map
            .iter()
            .all(|(k, v)| node_allows(k, v, count) && plain(v, count)),
        _ => true,
    }
}

/// Whether the field or node `key` with value `v` allows binding (and counts a constant).
fn node_allows(key: &str, v: &Value, count: &mut usize) -> bool {
    let set = |f: &str| {
        v.get(f)
            .is_some_and(|x| !x.is_null() && x != &Value::Array(vec![]))
    };
    match key {
        "SelectStmt" => {
            set("values_lists")
                && ![
                    "target_list",
                    "from_clause",
                    "sort_clause",
                    "limit_count",
                    "limit_offset",
                ]
                .iter()
                .any(|f| set(f))
                && !set("with_clause")
        }
        // A type's modifiers and an ON CONFLICT inference's WHERE (fields of structs, so
        // found by their own names).
        "infer" => !set("where_clause"),
        "typmods" | "array_bounds" | "SubLink" | "CurrentOfExpr" | "with_clause"
        | "CommonTableExpr" | "ParamRef" | "returning_clause" | "returning_list" => {
            v.is_null() || v == &Value::Array(vec![])
        }
        "AConst" => {
            let numeric = v
                .get("val")
                .and_then(Value::as_object)
                .is_some_and(|o| o.contains_key("Ival") || o.contains_key("Fval"));
            let spelled = v.get("location").and_then(Value::as_i64).unwrap_or(-1) >= 0;
            if numeric && spelled {
                *count += 1;
            }
            true
        }
        _ => true,
    }
}

/// The numbers of `stmt` (a statement's text whose tree said [`Bindable::Numbers`]`(n)`), as
/// parameters; `None` when one of them cannot be (see the module documentation) or they are not
/// `n`.
pub fn params(stmt: &str, n: usize) -> Option<Vec<Param>> {
    let tokens = super::parser::tokens(stmt).ok()?;
    let mut out = Vec::with_capacity(n);
    for t in &tokens {
        let integer = t.token == Token::Iconst as i32;
        if !integer && t.token != Token::Fconst as i32 {
            continue;
        }
        let range = usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?;
        let ty = literal_type(stmt.get(range.clone())?)?;
        out.push(Param { range, ty });
    }
    (out.len() == n).then_some(out)
}

/// The type the server gives the number `text`, or `None` for one not bound.
fn literal_type(text: &str) -> Option<ParamType> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(text) {
        if text.trim_start_matches('0') == "2147483648"
            || text.trim_start_matches('0') == "9223372036854775808"
        {
            return None;
        }
        return Some(match text.parse::<i64>() {
            Ok(v) if i32::try_from(v).is_ok() => ParamType::Int4,
            Ok(_) => ParamType::Int8,
            Err(_) => ParamType::Numeric,
        });
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.trim_start_matches(['+', '-'])));
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mantissa_ok = (digits(whole) || whole.is_empty())
        && (digits(fraction) || fraction.is_empty())
        && !(whole.is_empty() && fraction.is_empty());
    (exponent_ok && mantissa_ok).then_some(ParamType::Numeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bindable(sql: &str) -> Bindable {
        let parsed = super::super::parser::parse(sql).unwrap();
        let node = parsed.protobuf.stmts[0].stmt.as_ref().unwrap();
        of(node.node.as_ref().unwrap())
    }

    #[test]
    fn plain_writes_bind_their_numbers() {
        let upd = "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77";
        assert_eq!(bindable(upd), Bindable::Numbers(2));
        let p = params(upd, 2).unwrap();
        assert_eq!(&upd[p[0].range.clone()], "4321");
        assert_eq!(&upd[p[1].range.clone()], "77");
        assert!(p.iter().all(|p| p.ty == ParamType::Int4));
        let ins =
            "INSERT INTO h (a, b, c, t) VALUES (1, 5000000000, 2.50, 'x'), (3, 4, 1e3, now())";
        assert_eq!(bindable(ins), Bindable::Numbers(6));
        let types: Vec<_> = params(ins, 6).unwrap().iter().map(|p| p.ty).collect();
        use ParamType::*;
        assert_eq!(types, [Int4, Int8, Numeric, Int4, Int4, Numeric]);
        assert_eq!(
            bindable("DELETE FROM t WHERE id IN (1, 2, 3) AND a[1] = 2"),
            Bindable::Numbers(5)
        );
        assert_eq!(
            bindable("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET n = t.n + 1"),
            Bindable::Numbers(2)
        );
        assert_eq!(
            bindable("UPDATE t SET s = 'only strings'"),
            Bindable::Numbers(0)
        );
    }

    #[test]
    fn numbers_that_are_not_plain_values_rule_binding_out() {
        for sql in [
            "INSERT INTO t SELECT 1 ORDER BY 1",
            "INSERT INTO t VALUES (1) ORDER BY 1",
            "UPDATE t SET a = (SELECT max(b) FROM u LIMIT 1)",
            "DELETE FROM t WHERE id IN (SELECT id FROM u)",
            "UPDATE t SET a = 1.5::numeric(10,2)",
            "UPDATE t SET a = CAST(b AS varchar(3))",
            "UPDATE t SET a = '{1}'::int[3]",
            "WITH d AS (SELECT 1) UPDATE t SET a = 1",
            "UPDATE t SET a = 1 RETURNING a",
            "DELETE FROM t WHERE CURRENT OF c",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) WHERE id > 0 DO NOTHING",
            "SELECT 1",
            "TRUNCATE t",
        ] {
            assert_eq!(bindable(sql), Bindable::No, "{sql}");
        }
    }

    #[test]
    fn a_number_the_tree_does_not_hold_as_a_constant_is_caught_by_the_count() {
        // `current_time(3)`'s precision is a literal of the grammar, not a constant.
        let sql = "UPDATE t SET a = 1, b = current_time(3)";
        let Bindable::Numbers(n) = bindable(sql) else {
            panic!("expected numbers")
        };
        assert_eq!(n, 1);
        assert_eq!(params(sql, n), None);
    }

    #[test]
    fn literals_the_server_types_by_their_sign_or_spelling_stay_in_the_text() {
        assert_eq!(literal_type("2147483648"), None);
        assert_eq!(literal_type("9223372036854775808"), None);
        assert_eq!(literal_type("0x1F"), None);
        assert_eq!(literal_type("1_000"), None);
        assert_eq!(literal_type("2147483647"), Some(ParamType::Int4));
        assert_eq!(literal_type("2147483649"), Some(ParamType::Int8));
        assert_eq!(
            literal_type("99999999999999999999"),
            Some(ParamType::Numeric)
        );
        assert_eq!(literal_type(".5"), Some(ParamType::Numeric));
        assert_eq!(literal_type("5."), Some(ParamType::Numeric));
        assert_eq!(literal_type("1E+3"), Some(ParamType::Numeric));
    }
}
