//! `COPY (INSERT/UPDATE/DELETE/MERGE … RETURNING …) TO …`: a write whose returned rows go out as
//! COPY data, where hindsight's capture columns cannot ride along.
//!
//! The write moves into a CTE of the COPY's own query, with the capture columns after its
//! RETURNING list, and a second CTE keeps the images in the server, in one transaction-local
//! setting built once with `jsonb_agg` (as a MERGE's pre-read does):
//!
//! ```sql
//! COPY (WITH __hs_w(__hs_1, …) AS (<write> RETURNING <client's>, <images>),
//!            __hs_store AS (SELECT set_config('hindsight.copy_rows', <images as jsonb>, true) AS x)
//!       SELECT __hs_1 AS "<name>", … FROM __hs_w
//!       WHERE (SELECT x FROM __hs_store) IS NOT NULL) TO <as written>
//! ```
//!
//! The store runs first (a one-time filter), reading the write's rows from the CTE; the COPY
//! then reads them again from the start, so the client gets the rows, in the order, format and
//! options it asked for, and the command tag `COPY n`. A post-read right after returns the
//! images; the router checks their number against `n` (`check`).
//!
//! The client's column names come from a Describe of the write (`client/cte.rs`); this module
//! only builds text.

use std::sync::Arc;

use pg_query::protobuf::Token as T;

use super::image_sql::Form;
use super::rewrite::{Added, ReadAfter, Refusal, Rewritten, Shape};
use crate::statement::analysis::{analyze, Analysis, Kind};

/// The images of the COPY's write, kept for the post-read.
const ROWS: &str = "hindsight.copy_rows";

/// A `COPY (…) TO` statement cut around its query.
pub struct Cut<'a> {
    sql: &'a str,
    /// The write inside the parentheses, as written.
    pub write: std::ops::Range<usize>,
    analysis: Analysis,
}

/// Cut `sql` if it is `COPY (write) TO …`; `None` otherwise.
pub fn cut(sql: &str) -> Option<Cut<'_>> {
    let tokens = crate::statement::parser::tokens(sql).ok()?;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    if kind(0) != Some(T::Copy) || kind(1) != Some(T::Ascii40) {
        return None;
    }
    let close = super::rewrite::closing(&tokens, 1)?;
    if kind(close + 1) != Some(T::To) {
        return None;
    }
    let write = tokens[1].end as usize..tokens[close].start as usize;
    let analysis = analyze(&sql[write.clone()])
        .ok()?
        .into_iter()
        .next()?
        .analysis;
    analysis.kind.writes_rows().then_some(Cut {
        sql,
        write,
        analysis,
    })
}

impl Cut<'_> {
    /// The write alone, to describe (its RETURNING list's column names).
    pub fn write_text(&self) -> &str {
        &self.sql[self.write.clone()]
    }

    /// Whether the write has a RETURNING list. Without one PostgreSQL refuses the COPY ("COPY
    /// query must have a RETURNING clause"): [`Cut::unchanged`] lets the server say so.
    pub fn returning(&self) -> bool {
        self.analysis.writes.first().is_some_and(|w| w.returning)
    }

    /// The COPY as written, for the server to refuse; should it run after all, its post-read
    /// finds no images for its `COPY n` and the transaction cannot commit (`check`).
    pub fn unchanged(&self) -> Rewritten {
        let a = &self.analysis;
        let table = a
            .writes
            .first()
            .map(|w| w.table.clone())
            .unwrap_or_default();
        Rewritten {
            text: self.sql.to_string(),
            shape: Arc::new(Shape {
                read_after: Some(ReadAfter::CopyOut),
                ..Shape::statement(a.kind, table)
            }),
            pre_read: None,
            post_read: Some(
                "SELECT NULL::text, NULL::text, NULL::oid, NULL::text WHERE false".into(),
            ),
            guard: None,
            inserts: Vec::new(),
            pre_read_map: Vec::new(),
        }
    }

    /// The COPY for a server of major version `major`, the write's RETURNING columns being
    /// `names` (from a Describe of [`Cut::write_text`]); `form`: how its images come back.
    pub fn rewrite(&self, major: u32, names: &[String], form: Form) -> Result<Rewritten, Refusal> {
        let a = &self.analysis;
        let what = || {
            format!(
                "{} inside COPY (…) TO",
                a.writes.first().map_or("a write".to_string(), |w| format!(
                    "{} on {}",
                    a.kind.label().to_uppercase(),
                    w.table
                ))
            )
        };
        if a.writes.len() != 1 || a.writes[0].nested || !a.writes[0].returning {
            return Err(Refusal::Unsupported { what: what() });
        }
        let text = self.write_text();
        let super::cte::Edited {
            text: body,
            stored,
            inserts: edits,
        } = super::cte::edited(text, a, major)?;
        if major < 18 && a.kind == Kind::Update && !stored {
            // Its before images would need the locking pre-read, apart from the COPY.
            return Err(Refusal::Unsupported {
                what: format!("{} whose SET assigns only literals, parameters or DEFAULT (give one a type, e.g. `col = 'x'::text`)", what()),
            });
        }
        let images = super::cte::images(a, &body, major, 1, stored, form)?;
        let positional: Vec<String> = (1..=names.len()).map(|i| format!("__hs_{i}")).collect();
        let projection: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("__hs_{} AS {}", i + 1, super::rewrite::quote(n)))
            .collect();
        let open = format!("WITH __hs_w({}) AS (", positional.join(", "));
        let close = format!(
            "{images}\n), __hs_store AS (SELECT set_config('{ROWS}', COALESCE((SELECT jsonb_agg(jsonb_build_object('o', __hs_o, 'n', __hs_n, 't', __hs_t, 'u', __hs_u)) FROM __hs_w), '[]')::text, true) AS __hs_x)\nSELECT {} FROM __hs_w WHERE (SELECT __hs_x FROM __hs_store) IS NOT NULL\n",
            projection.join(", ")
        );
        let (from, to) = (self.write.start, self.write.end);
        let mut inserts = vec![Added {
            at: from,
            len: open.len(),
        }];
        // Text inserted inside the write by its before-image store (PG < 18 UPDATE, upsert).
        inserts.extend(edits.into_iter().map(|e| Added {
            at: from + open.len() + e.at,
            len: e.len,
        }));
        inserts.push(Added {
            at: from + open.len() + body.len(),
            len: close.len(),
        });
        let w = &a.writes[0];
        Ok(Rewritten {
            text: format!(
                "{}{open}{body}{close}{}",
                &self.sql[..from],
                &self.sql[to..]
            ),
            shape: Arc::new(Shape {
                client_returning: false,
                read_after: Some(ReadAfter::CopyOut),
                ..Shape::statement(a.kind, w.table.clone())
            }),
            pre_read: None,
            post_read: Some(post_read(form)),
            guard: None,
            inserts,
            pre_read_map: Vec::new(),
        })
    }
}

/// The images the COPY's write stored (already image columns of `form`: JSON objects, or hex
/// strings), one row each: `(before, after, tableoid, NULL)`; an updated row without its
/// before image is left out (the count then fails `check`). The setting is emptied after.
fn post_read(form: Form) -> String {
    let (o, n, kind) = match form {
        Form::Jsonb => (
            "NULLIF(__hs_e->'o', 'null')",
            "NULLIF(__hs_e->'n', 'null')",
            "object",
        ),
        Form::Hex => ("__hs_e->>'o'", "__hs_e->>'n'", "string"),
    };
    format!(
        "SELECT {o}, {n}, (__hs_e->>'t')::oid, NULL::text \
         FROM jsonb_array_elements(NULLIF(current_setting('{ROWS}', true), '')::jsonb) __hs_e \
         WHERE NOT (COALESCE((__hs_e->>'u')::bool, false) AND jsonb_typeof(__hs_e->'o') IS DISTINCT FROM '{kind}') \
         UNION ALL SELECT NULL, NULL, NULL, NULL WHERE set_config('{ROWS}', '', true) IS NULL"
    )
}

/// The images found against the COPY's command tag (`tag_rows`, `COPY n`: one returned row
/// per row the write changed): `Err` says why its events would be wrong.
pub fn check(
    table: &str,
    changes: &[super::txn::Change],
    tag_rows: Option<u64>,
) -> Result<(), String> {
    if tag_rows == Some(changes.len() as u64) {
        return Ok(());
    }
    Err(format!(
        "COPY (… RETURNING) TO writing {table}: hindsight found the images of {} rows, but the COPY reported {} rows; retry the transaction",
        changes.len(),
        tag_rows.map_or("no".to_string(), |n| n.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_moves_into_a_cte_of_the_copys_query() {
        let sql = "COPY (DELETE FROM s.t WHERE id > 1 RETURNING id, v AS \"V\") TO STDOUT (FORMAT csv, HEADER)";
        let c = cut(sql).unwrap();
        assert_eq!(
            c.write_text(),
            "DELETE FROM s.t WHERE id > 1 RETURNING id, v AS \"V\""
        );
        let rw = c
            .rewrite(18, &["id".into(), "V".into()], Form::Jsonb)
            .unwrap();
        assert!(
            rw.text.starts_with("COPY (WITH __hs_w(__hs_1, __hs_2) AS (DELETE FROM s.t WHERE id > 1 RETURNING id, v AS \"V\"\n, 1 AS __hs_s, to_jsonb(old) AS __hs_o"),
            "{}",
            rw.text
        );
        assert!(
            rw.text.ends_with("SELECT __hs_1 AS \"id\", __hs_2 AS \"V\" FROM __hs_w WHERE (SELECT __hs_x FROM __hs_store) IS NOT NULL\n) TO STDOUT (FORMAT csv, HEADER)"),
            "{}",
            rw.text
        );
        assert_eq!(rw.shape.read_after, Some(ReadAfter::CopyOut));
        assert!(rw.post_read.is_some() && rw.pre_read.is_none());
        // Everything hindsight added is listed, so error positions map back.
        let added: usize = rw.inserts.iter().map(|i| i.len).sum();
        assert_eq!(rw.text.len() - added, sql.len());
        // Not a write, or not COPY … TO.
        assert!(cut("COPY (SELECT 1) TO STDOUT").is_none());
        assert!(cut("COPY t FROM STDIN").is_none());
    }

    #[test]
    fn before_18_an_update_stores_its_before_image_or_is_refused() {
        let sql = "COPY (UPDATE t SET v = v || 'x' WHERE id = 1 RETURNING id) TO STDOUT";
        let rw = cut(sql)
            .unwrap()
            .rewrite(15, &["id".into()], Form::Jsonb)
            .unwrap();
        assert!(
            rw.text.contains("WHERE ( id = 1 \n) AND set_config('hindsight.before_image', to_jsonb(\"t\".*)::text, true) IS NOT NULL\nRETURNING id\n, 1 AS __hs_s, NULLIF(current_setting("),
            "{}",
            rw.text
        );
        let added: usize = rw.inserts.iter().map(|i| i.len).sum();
        assert_eq!(rw.text.len() - added, sql.len(), "{:?}", rw.inserts);
        let sql = "COPY (UPDATE t SET v = 'x' FROM u WHERE t.id = u.id RETURNING t.id) TO STDOUT";
        assert!(matches!(
            cut(sql).unwrap().rewrite(15, &["id".into()], Form::Jsonb),
            Err(Refusal::Unsupported { .. })
        ));
    }
}
