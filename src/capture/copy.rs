//! `COPY … FROM` capture: the rows are copied into a temporary *stage* table with the target's
//! column types, then moved into the target with `INSERT … SELECT` — which the ordinary INSERT
//! capture (`rewrite`) turns into after images. All of it runs in the client's transaction, in
//! one query string, so the client still speaks the COPY sub-protocol to the server itself.
//!
//! The stage is named like the target (in `pg_temp`), so that the server's errors about bad
//! input read exactly as for the client's own COPY (`CONTEXT: COPY brieff, line 3, …`).
//! Constraint violations are raised by the INSERT instead (same SQLSTATE and message, without
//! the `COPY …, line N` context).
//!
//! This module only builds SQL text; it does not know about sessions or the wire.

use pg_query::protobuf::node::Node as N;

use super::rewrite::{first_node, literal, quote, Refusal};
use crate::statement::TableName;

/// The target of a COPY as the catalog resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub schema: String,
    pub name: String,
    /// A temporary table itself (the stage then gets another name).
    pub temp: bool,
    /// Columns COPY fills when it names none: `(name, type)`, in table order, without
    /// generated and dropped columns.
    pub columns: Vec<(String, String)>,
    /// The generated columns, `(name, type)`: the stage has them too (as generated columns of
    /// its own), so that a COPY WHERE naming one fails as PostgreSQL fails it.
    pub generated: Vec<(String, String)>,
}

/// The statements that replace the client's COPY, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub create: String,
    pub copy: String,
    /// `INSERT INTO target (cols) SELECT cols FROM stage`, to be rewritten for capture.
    pub insert: String,
    pub drop: String,
    /// Characters the stage COPY has more than the client's before its options (`FROM …`):
    /// what an error position in them must be moved back by.
    pub shift: i64,
    /// `FROM STDIN`: the data comes through the client's COPY sub-protocol. Otherwise the
    /// server reads a file or a program's output and the COPY completes on its own.
    pub stdin: bool,
}

/// Resolve `table` (as the statement wrote it, against the session's search_path) to its
/// schema, name and copyable columns. No rows: the relation does not exist.
pub fn lookup_query(table: &TableName) -> String {
    let name = if table.schema.is_empty() {
        quote(&table.name)
    } else {
        format!("{}.{}", quote(&table.schema), quote(&table.name))
    };
    format!(
        "SELECT n.nspname, c.relname, (c.relpersistence = 't')::text, \
         (SELECT coalesce(json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum), '[]')::text \
          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), \
         row_security_active(c.oid)::text, \
         (SELECT coalesce(json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum), '[]')::text \
          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> '') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = to_regclass({})",
        literal(&name)
    )
}

/// Parse the row of [`lookup_query`]. `None` also when row-level security applies to the
/// table for this session: PostgreSQL refuses that COPY FROM itself ("COPY FROM not supported
/// with row-level security"), which the stage (a plain temporary table) would not.
pub fn parse_lookup(
    rows: &[Vec<Option<Vec<u8>>>],
    encoding: crate::wire::client_text::ClientEncoding,
) -> Option<Target> {
    let r = rows.first()?;
    let text = |i: usize| -> Option<String> {
        Some(crate::wire::client_text::sql_name(
            r.get(i)?.as_deref()?,
            encoding,
        ))
    };
    if text(4).as_deref() == Some("true") {
        return None;
    }
    let columns: Vec<(String, String)> = serde_json::from_str(&text(3)?).ok()?;
    let generated: Vec<(String, String)> = serde_json::from_str(&text(5)?).ok()?;
    Some(Target {
        schema: text(0)?,
        name: text(1)?,
        temp: text(2)? == "true",
        columns,
        generated,
    })
}

/// Build the staged statements for the client's `sql` (one COPY … FROM statement) writing
/// `columns` (empty: every copyable column). `Ok(None)`: a named column is not a copyable
/// column of the target, so the client's COPY fails on its own and can be relayed unchanged.
pub fn stage(
    sql: &str,
    target: &Target,
    columns: &[String],
    seq: u64,
) -> Result<Option<Staged>, Refusal> {
    let unsupported = || Refusal::Unsupported {
        what: format!(
            "this form of COPY … FROM into {}.{}",
            target.schema, target.name
        ),
    };
    let Some(cols) = copied_columns(target, columns) else {
        // The client's COPY fails on its own, with the server's message.
        return Ok(None);
    };
    let parsed = crate::statement::parser::parse(sql)
        .map_err(|_| unsupported())?
        .protobuf;
    let Some(N::CopyStmt(copy)) = first_node(&parsed) else {
        return Err(unsupported());
    };
    let rel_at = copy
        .relation
        .as_ref()
        .map(|r| r.location)
        .filter(|l| *l >= 0)
        .ok_or_else(unsupported)? as usize;
    if !copy.is_from || copy.query.is_some() {
        return Err(unsupported());
    }
    let filtered = copy.where_clause.is_some();
    let stage = if target.temp {
        format!("__hs_copy_{seq}")
    } else {
        target.name.clone()
    };
    let stage_ref = format!("pg_temp.{}", quote(&stage));
    let target_ref = format!("{}.{}", quote(&target.schema), quote(&target.name));
    let names: Vec<String> = cols.iter().map(|(n, _)| quote(n)).collect();
    let names = names.join(", ");
    let (copy_text, shift) = retarget(sql, rel_at, filtered, &format!("{stage_ref} ({names}) "))
        .ok_or_else(unsupported)?;
    // COPY fills identity columns even when they are GENERATED ALWAYS; so must the INSERT.
    let insert = format!(
        "INSERT INTO {target_ref} ({names}) OVERRIDING SYSTEM VALUE SELECT {names} FROM {stage_ref}"
    );
    Ok(Some(Staged {
        create: create_stage(&stage, &cols, target, filtered),
        copy: copy_text,
        insert,
        drop: format!("DROP TABLE {stage_ref}"),
        shift,
        stdin: copy.filename.is_empty() && !copy.is_program,
    }))
}

/// The target's columns the COPY fills, as (name, type): `columns` in order, or every
/// copyable column when it names none. `None`: a column named twice or not a copyable column
/// of the target.
fn copied_columns<'t>(target: &'t Target, columns: &[String]) -> Option<Vec<&'t (String, String)>> {
    if columns
        .iter()
        .enumerate()
        .any(|(i, c)| columns[..i].contains(c))
    {
        return None;
    }
    if columns.is_empty() {
        return Some(target.columns.iter().collect());
    }
    columns
        .iter()
        .map(|c| target.columns.iter().find(|(n, _)| n == c))
        .collect()
}

/// `CREATE TEMP TABLE stage (…) ON COMMIT DROP` with the copied columns `cols`. PostgreSQL
/// refuses a COPY WHERE (`filtered`) that reads a generated column (computed after it): the
/// stage's own generated columns (never filled, never inserted) make it refuse the same.
fn create_stage(
    stage: &str,
    cols: &[&(String, String)],
    target: &Target,
    filtered: bool,
) -> String {
    let mut defs: Vec<String> = cols
        .iter()
        .map(|(n, t)| format!("{} {t}", quote(n)))
        .collect();
    defs.extend(
        target
            .generated
            .iter()
            .filter(|_| filtered)
            .map(|(n, t)| format!("{} {t} GENERATED ALWAYS AS (NULL::{t}) STORED", quote(n))),
    );
    format!(
        "CREATE TEMP TABLE {} ({}) ON COMMIT DROP",
        quote(stage),
        defs.join(", ")
    )
}

/// The client's COPY text with `head` (the stage and an explicit column list) in place of its
/// relation at byte `rel_at`, and how many characters that moved the rest. Its options and
/// WHERE stay as written (the server judges the WHERE as a COPY WHERE: no subqueries, no
/// generated columns, errors in the COPY's line context). Text surgery on token positions
/// rather than a deparse: the deparser aborts the process on options it does not know, and
/// the server must be the one to judge them. `None`: its FROM (or its WHERE, when
/// `filtered`) was not found at the top level.
fn retarget(sql: &str, rel_at: usize, filtered: bool, head: &str) -> Option<(String, i64)> {
    use pg_query::protobuf::Token as T;
    let tokens = crate::statement::parser::tokens(sql).ok()?;
    let top_level = |kind: T, after: usize| {
        let mut depth = 0i32;
        tokens.iter().find_map(|t| {
            match T::try_from(t.token) {
                Ok(T::Ascii40) => depth += 1,
                Ok(T::Ascii41) => depth -= 1,
                Ok(k) if k == kind && depth == 0 && t.start as usize > after => {
                    return Some((t.start as usize, t.end as usize))
                }
                _ => {}
            }
            None
        })
    };
    let (from_at, from_end) = top_level(T::From, rel_at)?;
    if filtered {
        top_level(T::Where, from_end)?;
    }
    let head = format!("{}{head}", &sql[..rel_at]);
    let shift = head.chars().count() as i64 - sql[..from_at].chars().count() as i64;
    Some((format!("{head}{}", sql[from_at..].trim_end()), shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            schema: "public".into(),
            name: "brieff".into(),
            temp: false,
            columns: vec![
                ("bfkey".into(), "integer".into()),
                ("bfso".into(), "text".into()),
            ],
            generated: vec![("twice".into(), "integer".into())],
        }
    }

    #[test]
    fn a_table_under_row_level_security_is_not_staged() {
        let row = |rls: &str| {
            vec![[
                "public",
                "brieff",
                "false",
                r#"[["bfkey", "integer"]]"#,
                rls,
                r#"[["g", "text"]]"#,
            ]
            .iter()
            .map(|s| Some(s.as_bytes().to_vec()))
            .collect::<Vec<_>>()]
        };
        assert!(parse_lookup(&row("false"), Default::default()).is_some());
        assert!(parse_lookup(&row("true"), Default::default()).is_none());
    }

    #[test]
    fn stage_keeps_options_and_where() {
        let s = stage(
            "COPY brieff FROM STDIN WITH (FORMAT csv, HEADER true) WHERE bfkey > 2",
            &target(),
            &[],
            1,
        )
        .unwrap()
        .unwrap();
        // With a WHERE, the generated columns too (so that naming one fails as it would).
        assert_eq!(
            s.create,
            "CREATE TEMP TABLE \"brieff\" (\"bfkey\" integer, \"bfso\" text, \"twice\" integer GENERATED ALWAYS AS (NULL::integer) STORED) ON COMMIT DROP"
        );
        assert_eq!(
            s.copy,
            "COPY pg_temp.\"brieff\" (\"bfkey\", \"bfso\") FROM STDIN WITH (FORMAT csv, HEADER true) WHERE bfkey > 2"
        );
        assert_eq!(
            s.insert,
            "INSERT INTO \"public\".\"brieff\" (\"bfkey\", \"bfso\") OVERRIDING SYSTEM VALUE SELECT \"bfkey\", \"bfso\" FROM pg_temp.\"brieff\""
        );
        assert!(s.stdin);
        // A column named twice: the client's COPY is relayed and fails on its own.
        let dup = stage(
            "COPY brieff (bfkey, bfso, bfkey) FROM STDIN",
            &target(),
            &["bfkey".into(), "bfso".into(), "bfkey".into()],
            1,
        );
        assert_eq!(dup, Ok(None));
        let file = stage("COPY brieff FROM '/tmp/x'", &target(), &[], 1)
            .unwrap()
            .unwrap();
        assert!(!file.stdin);
        assert!(!file.create.contains("GENERATED"), "{}", file.create);
        // Options the deparser does not know are the server's to judge (no abort here).
        let s = stage(
            "COPY brieff FROM STDIN WITH (FORMAT nonsense)",
            &target(),
            &[],
            1,
        )
        .unwrap()
        .unwrap();
        assert!(
            s.copy.ends_with("FROM STDIN WITH (FORMAT nonsense)"),
            "{}",
            s.copy
        );
    }

    #[test]
    fn unknown_column_relays_and_temp_targets_get_another_stage_name() {
        assert_eq!(
            stage(
                "COPY brieff (nope) FROM STDIN",
                &target(),
                &["nope".into()],
                1
            )
            .unwrap(),
            None
        );
        let mut t = target();
        t.temp = true;
        let s = stage("COPY brieff (bfso) FROM STDIN", &t, &["bfso".into()], 7)
            .unwrap()
            .unwrap();
        assert!(
            s.create.contains("\"__hs_copy_7\" (\"bfso\" text)"),
            "{}",
            s.create
        );
    }
}
