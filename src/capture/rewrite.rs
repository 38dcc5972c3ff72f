//! Rewriting a write statement so the server hands back the before and after image of every
//! row it changes, in the same statement (and so the same snapshot and row locks) as the
//! client's own work.
//!
//! - PostgreSQL 18+: `RETURNING old`/`new` — every DML kind, one statement, exact pairing.
//! - Older servers: INSERT returns its new rows and DELETE its old rows through `RETURNING`;
//!   UPDATE gets a *pre-read* first — `SELECT … FOR UPDATE OF target` with the statement's own
//!   FROM and WHERE, in the same transaction — so the rows are locked between the before image
//!   and the write and no concurrent writer can slip a change in between. The client's
//!   statement itself is never changed in which rows it touches: only `RETURNING` is added.
//!
//! The extra columns go at the end of the result; `rows` strips them before the client sees
//! anything, so the client receives exactly the rows (and command tag) it asked for.

use std::sync::Arc;

use pg_query::protobuf::node::Node as N;
use thiserror::Error;

use crate::statement::analysis::{Kind, Located, TableName};

/// Where the capture columns are in the rewritten statement's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// What the statement does to its target.
    pub kind: Kind,
    /// The target table as written in the statement.
    pub table: TableName,
    /// Columns hindsight added at the end of each result row.
    pub extra: usize,
    /// Index (among the extra columns) of the before image (`to_jsonb`), if returned.
    pub old_at: Option<usize>,
    /// Index of the after image, if returned.
    pub new_at: Option<usize>,
    /// Index of the row's `tableoid` (resolves schema, name and key columns later).
    pub oid_at: usize,
    /// Whether the client asked for rows itself (`RETURNING …`). If not, hindsight drops the
    /// RowDescription and DataRows entirely.
    pub client_returning: bool,
    /// Before images come from a pre-read statement (PostgreSQL < 18 UPDATE).
    pub pre_read: bool,
    /// PostgreSQL < 18 upsert: index of a boolean column, true when ON CONFLICT updated the
    /// row (then its before image, read with the statement's snapshot, must be there).
    pub updated_at: Option<usize>,
    /// PostgreSQL < 18 upsert: the before-image column holds the candidate rows (see
    /// `upsert_before`) rather than one image.
    pub old_candidates: bool,
    /// A statement with data-modifying CTEs, run inside hindsight's wrapper query (see
    /// `cte`): which write each row's images belong to, and what the client must see.
    pub wrapper: Option<Arc<super::cte::Wrapper>>,
}

impl Shape {
    /// The shape of a statement-level event (DDL, opaque): no capture columns.
    pub fn statement(kind: Kind, table: TableName) -> Self {
        Shape {
            kind,
            table,
            extra: 0,
            old_at: None,
            new_at: None,
            oid_at: 0,
            client_returning: false,
            pre_read: false,
            updated_at: None,
            old_candidates: false,
            wrapper: None,
        }
    }
}

/// A statement ready to send instead of the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The statement with the capture columns added.
    pub text: String,
    pub shape: Arc<Shape>,
    /// For pre-read capture: `SELECT to_jsonb(t.*), t.tableoid FROM … FOR UPDATE OF t`, run
    /// right before `text` in the same transaction.
    pub pre_read: Option<String>,
    /// A statement that fails when a limit is exceeded (TRUNCATE's row limit), run first; its
    /// error is replaced by this message.
    pub guard: Option<(String, String)>,
}

/// A write hindsight cannot capture (yet). The client gets this as an error; nothing runs.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    #[error("hindsight cannot capture {what} on PostgreSQL {major} (it needs PostgreSQL 18's RETURNING old/new); the statement was not run")]
    NeedsPg18 { what: String, major: u32 },
    #[error("hindsight cannot capture {what} yet; the statement was not run")]
    Unsupported { what: String },
    #[error("hindsight cannot capture a statement that writes more than one table ({tables}); split it into one statement per table")]
    SeveralTargets { tables: String },
}

/// Rewrite one analysed statement of `text` for capture on a server of major version `major`.
/// `Ok(None)`: the statement writes no rows and runs unchanged.
/// `cascade`: for `TRUNCATE … CASCADE`, the tables it reaches ([`truncate_cascade_query`]).
pub fn rewrite(
    text: &str,
    stmt: &Located,
    major: u32,
    truncate_limit: u64,
    cascade: &[String],
) -> Result<Option<Rewritten>, Refusal> {
    let a = &stmt.analysis;
    if !a.kind.writes_rows() {
        return Ok(None);
    }
    if a.kind == Kind::Truncate && !a.explain_analyze {
        let sql = &text[stmt.span.clone()];
        let first = a
            .writes
            .first()
            .map(|w| w.table.clone())
            .unwrap_or_default();
        return truncate(sql, &first, truncate_limit, a.kind, cascade).map(Some);
    }
    if a.writes.len() != 1 || a.explain_analyze {
        let what = if a.explain_analyze {
            "EXPLAIN ANALYZE of a write".to_string()
        } else {
            let tables: Vec<String> = a.writes.iter().map(|w| w.table.to_string()).collect();
            return Err(Refusal::SeveralTargets {
                tables: tables.join(", "),
            });
        };
        return Err(Refusal::Unsupported { what });
    }
    let write = &a.writes[0];
    let sql = &text[stmt.span.clone()];
    let what = format!("{} on {}", a.kind.label().to_uppercase(), write.table);
    if a.kind == Kind::CopyIn {
        return Err(Refusal::Unsupported {
            what: format!("COPY … FROM into {} among other statements in one query (send it as a query of its own)", write.table),
        });
    }
    if write.nested {
        // The write sits in a CTE (or `COPY (…) TO`): RETURNING cannot be added to it here.
        return Err(Refusal::Unsupported { what });
    }
    let target = write.reference();
    // A newline first: a trailing `--` comment would otherwise swallow what is appended.
    let sep = if write.returning {
        "\n, "
    } else {
        "\nRETURNING "
    };
    let shape = |extra, old_at, new_at, oid_at, pre_read| {
        Arc::new(Shape {
            kind: a.kind,
            table: write.table.clone(),
            extra,
            old_at,
            new_at,
            oid_at,
            client_returning: write.returning,
            pre_read,
            updated_at: None,
            old_candidates: false,
            wrapper: None,
        })
    };
    let body = sql.trim_end().trim_end_matches(';');
    if major >= 18 {
        let cols = if write.returning {
            format!("to_jsonb(old), to_jsonb(new), {target}.tableoid")
        } else {
            format!("WITH (OLD AS __hs_old, NEW AS __hs_new) to_jsonb(__hs_old), to_jsonb(__hs_new), {target}.tableoid")
        };
        return Ok(Some(Rewritten {
            text: format!("{body}{sep}{cols}"),
            shape: shape(3, Some(0), Some(1), 2, false),
            pre_read: None,
            guard: None,
        }));
    }
    let image = format!("to_jsonb({target}.*), {target}.tableoid");
    match a.kind {
        Kind::Insert => Ok(Some(Rewritten {
            text: format!("{body}{sep}{image}"),
            shape: shape(2, None, Some(0), 1, false),
            pre_read: None,
            guard: None,
        })),
        Kind::Delete => Ok(Some(Rewritten {
            text: format!("{body}{sep}{image}"),
            shape: shape(2, Some(0), None, 1, false),
            pre_read: None,
            guard: None,
        })),
        Kind::Update => {
            // FOR UPDATE OF takes the alias or the bare name (PostgreSQL refuses a qualified
            // one; the UPDATE itself refuses two FROM items of the same name).
            let lock = match write.alias.as_str() {
                "" => quote(&write.table.name),
                alias => quote(alias),
            };
            let pre = pre_read_for_update(sql, &target, &lock)
                .ok_or_else(|| Refusal::Unsupported { what: what.clone() })?;
            Ok(Some(Rewritten {
                text: format!("{body}{sep}{image}"),
                shape: shape(2, None, Some(0), 1, true),
                pre_read: Some(pre),
                guard: None,
            }))
        }
        // DO NOTHING: RETURNING gives exactly the inserted rows.
        Kind::Upsert if write.conflict_update.is_none() => Ok(Some(Rewritten {
            text: format!("{body}{sep}{image}"),
            shape: shape(2, None, Some(0), 1, false),
            pre_read: None,
            guard: None,
        })),
        // DO UPDATE: the before image of an updated row is read in RETURNING with the
        // statement's own snapshot (which does not see the statement's changes), by the
        // conflict target (see `upsert_before`). `xmax <> 0` tells an updated row from an
        // inserted one: an updated row whose before image the snapshot cannot see (a concurrent
        // insert under READ COMMITTED) fails the capture instead of passing for an insert.
        Kind::Upsert => {
            let conflict = write.conflict_update.clone().unwrap_or_default();
            let old = upsert_before(sql, stmt.span.start, &conflict, write).ok_or_else(|| Refusal::NeedsPg18 {
                    what: format!(
                        "{what} whose ON CONFLICT target hindsight cannot look up (an operator class, or a constraint it could not read)"
                    ),
                    major,
                })?;
            let mut s = shape(
                if write.partitioned { 3 } else { 4 },
                Some(2),
                Some(0),
                1,
                false,
            );
            let m = Arc::make_mut(&mut s);
            m.old_candidates = true;
            if write.partitioned {
                // Rows routed into partitions carry no xmax: an update of a row inserted
                // concurrently (invisible to the snapshot) shows as a create here.
                return Ok(Some(Rewritten {
                    text: format!("{body}{sep}{image}, {old}"),
                    shape: s,
                    pre_read: None,
                    guard: None,
                }));
            }
            m.updated_at = Some(3);
            Ok(Some(Rewritten {
                text: format!("{body}{sep}{image}, CASE WHEN {target}.xmax::text <> '0' THEN {old} END, ({target}.xmax::text <> '0')"),
                shape: s,
                pre_read: None,
                guard: None,
            }))
        }
        _ => Err(Refusal::NeedsPg18 { what, major }),
    }
}

/// Before PostgreSQL 18, `ON CONFLICT … DO UPDATE`: an expression giving the rows the upsert
/// may have updated, as a JSON array of `[image, mine]` pairs — every row with the statement
/// row's conflict key in the statement's snapshot, `mine` when its `xmax` is the statement's
/// own transaction (the row it updated). An array, never a scalar subquery: with a partial
/// unique index as arbiter, rows outside it may share the key, and a subquery returning
/// several rows would fail the client's statement. The list's own `WHERE` is tried first (it
/// lets the planner use the partial index); rows that fail it but are in the index are found
/// by the key alone. `sql` is the statement, at byte `sql_at` of the analysed text. `None` if
/// the target cannot be looked up.
fn upsert_before(
    sql: &str,
    sql_at: usize,
    conflict: &crate::statement::analysis::Conflict,
    write: &crate::statement::analysis::Write,
) -> Option<String> {
    if conflict.opclass {
        return None;
    }
    if conflict.elements.is_empty() && conflict.constraint.is_empty() {
        // No conflict target at all: the server refuses DO UPDATE without one.
        return Some("NULL::jsonb".to_string());
    }
    if conflict.elements.is_empty() {
        // No such unique constraint: the server refuses the statement itself. Should it not,
        // an updated row without a before image fails the capture (`rows::pick_before`).
        return (conflict.looked_up && !write.partitioned).then(|| "NULL::jsonb".to_string());
    }
    let target = write.reference();
    let (texts, wher) = if conflict.constraint.is_empty() {
        inference_texts(sql, conflict.infer_at.checked_sub(sql_at)?)?
    } else {
        (Vec::new(), None)
    };
    let mut key = Vec::with_capacity(conflict.elements.len());
    for (i, e) in conflict.elements.iter().enumerate() {
        key.push(match e {
            Some(col) => format!("__hs_o.{q} = {target}.{q}", q = quote(col)),
            // Unqualified names resolve to the innermost relation: `__hs_o` on the left, the
            // statement's row (`__hs_n`) on the right.
            None => {
                let x = texts.get(i)?;
                format!("({x}) = (SELECT {x} FROM (SELECT {target}.*) __hs_n)")
            }
        });
    }
    let key = key.join(" AND ");
    let table = match write.table.schema.as_str() {
        "" => quote(&write.table.name),
        schema => format!("{}.{}", quote(schema), quote(&write.table.name)),
    };
    // A partitioned table's rows are in its partitions (ONLY would see none); a plain table's
    // inheritance children are not the upsert's.
    let (only, mine) = if write.partitioned {
        ("", "NULL::bool".to_string())
    } else {
        ("ONLY ", format!("__hs_o.xmax = {target}.xmin"))
    };
    let select = |cond: &str| {
        format!("(SELECT jsonb_agg(jsonb_build_array(to_jsonb(__hs_o.*), {mine})) FROM {only}{table} __hs_o WHERE {cond})")
    };
    Some(match wher {
        None => select(&key),
        Some(w) if write.partitioned => select(&format!("{key} AND ({w})")),
        Some(w) => format!(
            "COALESCE({}, {})",
            select(&format!("{key} AND ({w})")),
            select(&key)
        ),
    })
}

/// The text of each element of an ON CONFLICT inference list, and of its `WHERE` condition,
/// cut from `sql` at the positions of the scanner's tokens; `at` is the list's `(`.
fn inference_texts(sql: &str, at: usize) -> Option<(Vec<&str>, Option<&str>)> {
    use pg_query::protobuf::Token as T;
    let tokens = pg_query::scan(sql).ok()?.tokens;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let first = tokens.iter().position(|t| t.start as usize == at)?;
    if kind(first) != Some(T::Ascii40) {
        return None;
    }
    let mut elements = Vec::new();
    let mut depth = 0i32;
    let mut start = at + 1;
    let mut close = None;
    for (i, t) in tokens.iter().enumerate().skip(first) {
        match kind(i) {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => {
                depth -= 1;
                if depth == 0 {
                    elements.push(sql.get(start..t.start as usize)?.trim());
                    close = Some(i);
                    break;
                }
            }
            Some(T::Ascii44) if depth == 1 => {
                elements.push(sql.get(start..t.start as usize)?.trim());
                start = t.end as usize;
            }
            _ => {}
        }
    }
    let close = close?;
    if kind(close + 1) != Some(T::Where) {
        return Some((elements, None));
    }
    let from = tokens[close + 1].end as usize;
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate().skip(close + 2) {
        match kind(i) {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => depth -= 1,
            Some(T::Do) if depth == 0 => {
                return Some((elements, Some(sql.get(from..t.start as usize)?.trim())))
            }
            _ => {}
        }
    }
    None
}

/// The relations of a TRUNCATE as `(reference, only)`, and whether it CASCADEs.
fn truncate_targets(sql: &str) -> Option<(Vec<(String, bool)>, bool)> {
    let parsed = pg_query::parse(sql).ok()?;
    let Some(N::TruncateStmt(t)) = first_node(&parsed.protobuf) else {
        return None;
    };
    let rels = t
        .relations
        .iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(N::RangeVar(rv)) => Some((range_var_ref(rv), !rv.inh)),
            _ => None,
        })
        .collect();
    Some((
        rels,
        t.behavior == pg_query::protobuf::DropBehavior::DropCascade as i32,
    ))
}

fn range_var_ref(rv: &pg_query::protobuf::RangeVar) -> String {
    if rv.schemaname.is_empty() {
        quote(&rv.relname)
    } else {
        format!("{}.{}", quote(&rv.schemaname), quote(&rv.relname))
    }
}

/// For `TRUNCATE … CASCADE`: a catalog query listing (as quoted, qualified names) every table
/// the TRUNCATE empties — the named ones and, recursively, every table with a foreign key to
/// one of them. `None` for other statements.
pub fn truncate_cascade_query(sql: &str) -> Option<String> {
    let (rels, cascade) = truncate_targets(sql)?;
    if !cascade {
        return None;
    }
    let seeds: Vec<String> = rels
        .iter()
        .map(|(r, _)| format!("to_regclass('{}')::oid", r.replace('\'', "''")))
        .collect();
    Some(format!(
        "WITH RECURSIVE t(oid) AS (SELECT unnest(ARRAY[{}]) UNION \
         SELECT c.conrelid FROM pg_constraint c JOIN t ON c.confrelid = t.oid WHERE c.contype = 'f') \
         SELECT format('%I.%I', n.nspname, r.relname) FROM t JOIN pg_class r ON r.oid = t.oid \
         JOIN pg_namespace n ON n.oid = r.relnamespace ORDER BY 1",
        seeds.join(", ")
    ))
}

/// TRUNCATE: a guard refusing it above `limit` rows in all, then the before image of every
/// row of every table it empties (`cascade`: the tables a CASCADE reaches, from
/// [`truncate_cascade_query`]), then the TRUNCATE itself — all in the client's transaction
/// (TRUNCATE's lock waits for the reads).
fn truncate(
    sql: &str,
    table: &TableName,
    limit: u64,
    kind: Kind,
    cascade: &[String],
) -> Result<Rewritten, Refusal> {
    let (mut rels, is_cascade) = truncate_targets(sql).ok_or_else(|| Refusal::Unsupported {
        what: "TRUNCATE".into(),
    })?;
    if is_cascade {
        if cascade.is_empty() {
            return Err(Refusal::Unsupported {
                what: format!("TRUNCATE … CASCADE of {table} here (send it as a simple query)"),
            });
        }
        // The catalog's list covers the named tables too (by their qualified names).
        rels = cascade.iter().map(|r| (r.clone(), false)).collect();
    }
    let from = |(r, only): &(String, bool)| {
        if *only {
            format!("ONLY {r}")
        } else {
            r.clone()
        }
    };
    let images: Vec<String> = rels
        .iter()
        .map(|rel| format!("SELECT to_jsonb(t.*), t.tableoid FROM {} t", from(rel)))
        .collect();
    let counted: Vec<String> = rels
        .iter()
        .map(|rel| format!("(SELECT 1 FROM {} LIMIT {limit} + 1)", from(rel)))
        .collect();
    let names: Vec<&str> = rels.iter().map(|(r, _)| r.as_str()).collect();
    Ok(Rewritten {
        text: sql.trim_end().trim_end_matches(';').to_string(),
        shape: Arc::new(Shape::statement(kind, table.clone())),
        pre_read: Some(images.join(" UNION ALL ")),
        guard: Some((
            format!(
                "SELECT CASE WHEN count(*) > {limit} THEN 1 / (count(*) * 0) ELSE 0 END FROM ({}) s",
                counted.join(" UNION ALL ")
            ),
            format!(
                "hindsight: TRUNCATE of {} would remove more than {limit} rows (capture.truncate_row_limit), too many to record their before images; it was not run",
                names.join(", ")
            ),
        )),
    })
}

/// `"ident"` with embedded quotes doubled.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `'text'` as a string literal (standard_conforming_strings).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The first statement's node of a parse.
pub fn first_node(parsed: &pg_query::protobuf::ParseResult) -> Option<&N> {
    parsed.stmts.first()?.stmt.as_ref()?.node.as_ref()
}

/// `[WITH …] SELECT to_jsonb(t.*), t.tableoid FROM t [, from…] [WHERE …] FOR UPDATE OF t`:
/// the UPDATE's own WITH, target, FROM and WHERE text, cut at the positions of its top-level
/// keywords as PostgreSQL's scanner finds them. The client's text is kept as written (no
/// deparse: nothing is re-spelled, and no parse tree has to be rebuilt for every UPDATE).
pub(crate) fn pre_read_for_update(sql: &str, target: &str, lock: &str) -> Option<String> {
    use pg_query::protobuf::Token as T;
    let tokens = pg_query::scan(sql).ok()?.tokens;
    let mut depth = 0i32;
    let mut prev = None;
    // Top-level keyword positions: UPDATE, then SET, FROM, WHERE, RETURNING after it.
    let (mut update, mut set, mut from, mut wher, mut returning) = (None, None, None, None, None);
    for t in &tokens {
        let kind = T::try_from(t.token).ok();
        let span = (t.start as usize, t.end as usize);
        match kind {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => depth -= 1,
            Some(k) if depth == 0 => match (k, update, set) {
                (T::Update, None, _) => update = Some(span),
                (T::Set, Some(_), None) => set = Some(span),
                // `IS [NOT] DISTINCT FROM` is an operator, not the FROM clause.
                (T::From, Some(_), Some(_)) if from.is_none() && prev != Some(T::Distinct) => {
                    from = Some(span)
                }
                (T::Where, Some(_), Some(_)) if wher.is_none() => wher = Some(span),
                (T::Returning, Some(_), Some(_)) if returning.is_none() => returning = Some(span),
                _ => {}
            },
            _ => {}
        }
        prev = kind;
    }
    let (update, set) = (update?, set?);
    let end = |after: usize| {
        [wher, returning]
            .into_iter()
            .flatten()
            .map(|(s, _)| s)
            .filter(|s| *s > after)
            .min()
            .unwrap_or(sql.len())
    };
    let mut out = format!(
        "{}SELECT to_jsonb({target}.*), {target}.tableoid FROM {}",
        &sql[..update.0],
        sql[update.1..set.0].trim()
    );
    if let Some((_, f_end)) = from {
        out.push_str(",\n");
        out.push_str(sql[f_end..end(f_end)].trim());
    }
    if let Some((w, w_end)) = wher {
        out.push('\n');
        out.push_str(sql[w..end(w_end)].trim_end());
    }
    // A newline first: a trailing `--` comment would otherwise swallow the locking clause.
    out.push_str(&format!("\nFOR UPDATE OF {lock}"));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::analyze;

    fn rw(sql: &str, major: u32) -> Result<Option<Rewritten>, Refusal> {
        let v = analyze(sql).unwrap();
        rewrite(sql, &v[0], major, 1000, &[])
    }

    #[test]
    fn pg18_appends_old_and_new() {
        let r = rw("UPDATE brieff SET bfso = NULL WHERE bfkey < 19", 18)
            .unwrap()
            .unwrap();
        assert!(r.text.ends_with("RETURNING WITH (OLD AS __hs_old, NEW AS __hs_new) to_jsonb(__hs_old), to_jsonb(__hs_new), \"brieff\".tableoid"), "{}", r.text);
        assert!(!r.shape.client_returning);
        let r = rw(
            "DELETE FROM public.t x WHERE a = 1 RETURNING id -- trailing",
            18,
        )
        .unwrap()
        .unwrap();
        assert!(
            r.text
                .ends_with("-- trailing\n, to_jsonb(old), to_jsonb(new), \"x\".tableoid"),
            "{}",
            r.text
        );
        assert!(r.shape.client_returning);
    }

    #[test]
    fn older_servers_use_returning_and_a_locking_pre_read() {
        let r = rw("INSERT INTO public.t (a) VALUES (1)", 15)
            .unwrap()
            .unwrap();
        assert!(
            r.text
                .ends_with("RETURNING to_jsonb(\"public\".\"t\".*), \"public\".\"t\".tableoid"),
            "{}",
            r.text
        );
        assert_eq!((r.shape.old_at, r.shape.new_at), (None, Some(0)));
        let r = rw(
            "UPDATE t SET a = a + 1 FROM u WHERE t.id = u.id AND u.flag",
            15,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            r.pre_read.unwrap(),
            "SELECT to_jsonb(\"t\".*), \"t\".tableoid FROM t,\nu\nWHERE t.id = u.id AND u.flag\nFOR UPDATE OF \"t\""
        );
        assert!(matches!(
            rw(
                "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
                15
            ),
            Err(Refusal::NeedsPg18 { .. })
        ));
    }

    #[test]
    fn older_servers_read_an_upserts_before_image_with_the_statement_snapshot() {
        let r = rw(
            "INSERT INTO s.t AS x (id, v) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET v = excluded.v",
            15,
        )
        .unwrap()
        .unwrap();
        assert!(r.text.ends_with("RETURNING to_jsonb(\"x\".*), \"x\".tableoid, CASE WHEN \"x\".xmax::text <> '0' THEN (SELECT jsonb_agg(jsonb_build_array(to_jsonb(__hs_o.*), __hs_o.xmax = \"x\".xmin)) FROM ONLY \"s\".\"t\" __hs_o WHERE __hs_o.\"id\" = \"x\".\"id\") END, (\"x\".xmax::text <> '0')"), "{}", r.text);
        assert!(r.shape.old_candidates);
        assert_eq!(
            (
                r.shape.new_at,
                r.shape.oid_at,
                r.shape.old_at,
                r.shape.updated_at,
                r.shape.extra
            ),
            (Some(0), 1, Some(2), Some(3), 4)
        );
        let r = rw("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", 15)
            .unwrap()
            .unwrap();
        assert_eq!((r.shape.extra, r.shape.updated_at), (2, None));
        // A constraint's columns come from the catalog first (`client::catalog`).
        assert!(matches!(
            rw(
                "INSERT INTO t VALUES (1) ON CONFLICT ON CONSTRAINT t_pkey DO UPDATE SET v = 1",
                15
            ),
            Err(Refusal::NeedsPg18 { .. })
        ));
        assert!(matches!(
            rw(
                "INSERT INTO t VALUES (1) ON CONFLICT (lower(v) text_pattern_ops) DO UPDATE SET v = 'x'",
                15
            ),
            Err(Refusal::NeedsPg18 { .. })
        ));
        // An expression target: compared over the existing row and the statement's row; a
        // WHERE (partial index) tried first, then the key alone.
        let r = rw(
            "INSERT INTO t VALUES (1) ON CONFLICT (lower(v), (a + 1), b COLLATE \"C\") WHERE a > (0) DO UPDATE SET v = 'x'",
            15,
        )
        .unwrap()
        .unwrap();
        let key = "(lower(v)) = (SELECT lower(v) FROM (SELECT \"t\".*) __hs_n) AND ((a + 1)) = (SELECT (a + 1) FROM (SELECT \"t\".*) __hs_n) AND (b COLLATE \"C\") = (SELECT b COLLATE \"C\" FROM (SELECT \"t\".*) __hs_n)";
        assert!(
            r.text
                .contains(&format!("WHERE {key} AND (a > (0))), (SELECT")),
            "{}",
            r.text
        );
        assert!(r.text.contains(&format!("WHERE {key})) END")), "{}", r.text);
    }

    #[test]
    fn inference_lists_are_cut_at_the_scanners_tokens() {
        let sql = "INSERT INTO t VALUES (1) ON CONFLICT ( a, f(b, c) , (d[1]) ) WHERE x IN (1, 2) AND y DO UPDATE SET v = 1";
        let at = sql.find("( a").unwrap();
        assert_eq!(
            inference_texts(sql, at),
            Some((vec!["a", "f(b, c)", "(d[1])"], Some("x IN (1, 2) AND y")))
        );
        assert_eq!(
            inference_texts("INSERT INTO t VALUES (1) ON CONFLICT (a) DO NOTHING", 37),
            Some((vec!["a"], None))
        );
        assert_eq!(inference_texts(sql, at + 1), None);
    }

    fn pre_read(sql: &str) -> String {
        rw(sql, 15).unwrap().unwrap().pre_read.unwrap()
    }

    #[test]
    fn pre_read_keeps_the_clauses_as_written() {
        // Qualified target: the lock names the bare table (PostgreSQL refuses a qualified one).
        assert_eq!(
            pre_read("UPDATE public.t SET a = 1 WHERE id = 2"),
            "SELECT to_jsonb(\"public\".\"t\".*), \"public\".\"t\".tableoid FROM public.t\nWHERE id = 2\nFOR UPDATE OF \"t\""
        );
        // Alias, ONLY, a WITH clause, RETURNING and a trailing comment.
        assert_eq!(
            pre_read("WITH k AS (SELECT 1 AS id) UPDATE ONLY s.t AS x SET a = 1 FROM k WHERE x.id = k.id RETURNING x.a -- c"),
            "WITH k AS (SELECT 1 AS id) SELECT to_jsonb(\"x\".*), \"x\".tableoid FROM ONLY s.t AS x,\nk\nWHERE x.id = k.id\nFOR UPDATE OF \"x\""
        );
        assert!(pre_read("UPDATE t SET a = 1 -- c").ends_with("FROM t\nFOR UPDATE OF \"t\""));
        // FROM and WHERE inside expressions are not the statement's clauses.
        assert_eq!(
            pre_read("UPDATE t SET a = b IS DISTINCT FROM c, d = (SELECT max(v) FROM u WHERE u.k = t.k), e[1] = substring(f FROM 2) WHERE t.id = 1"),
            "SELECT to_jsonb(\"t\".*), \"t\".tableoid FROM t\nWHERE t.id = 1\nFOR UPDATE OF \"t\""
        );
        assert_eq!(
            pre_read("UPDATE t SET a = 1 FROM u JOIN v ON u.id = v.id"),
            "SELECT to_jsonb(\"t\".*), \"t\".tableoid FROM t,\nu JOIN v ON u.id = v.id\nFOR UPDATE OF \"t\""
        );
        // A write in a CTE cannot carry the capture columns: refused, not mangled.
        assert!(matches!(
            rw("WITH d AS (DELETE FROM a RETURNING *) SELECT * FROM d", 18),
            Err(Refusal::Unsupported { .. })
        ));
    }

    #[test]
    fn reads_are_not_rewritten_and_multi_target_writes_are_refused() {
        assert_eq!(rw("SELECT 1", 18).unwrap(), None);
        let e = rw(
            "WITH d AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM d",
            18,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("a, b") || e.to_string().contains("b, a"),
            "{e}"
        );
    }
}
