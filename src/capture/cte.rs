//! Data-modifying CTEs (`WITH d AS (DELETE … RETURNING *) INSERT INTO b SELECT * FROM d`).
//!
//! Only the statement's own result reaches the client, so the writes inside its WITH clause
//! cannot hand back their images the way a lone write does (by extra RETURNING columns on
//! the client's rows). Instead the statement runs inside a wrapper query:
//!
//! ```sql
//! WITH __hs_w1(__hs_1, …, __hs_n) AS (DELETE … RETURNING *, 1 AS __hs_s, <images>),
//!      d AS (SELECT __hs_1 AS "id", … FROM __hs_w1),           -- what the client named d
//!      __hs_main AS (<the client's statement after its WITH, with images>)
//! SELECT * FROM __hs_main
//! UNION ALL SELECT <client columns as NULL>, __hs_s, … FROM __hs_w1 LEFT JOIN … ON false
//! ```
//!
//! Every write of the statement is evaluated exactly as written (same WITH list, same
//! snapshot, same single execution of each data-modifying CTE); only RETURNING items are
//! added, and the CTE the client named is re-exposed with exactly its original columns. Each
//! result row carries `__hs_s` — 0 for the client's own rows, k for the k-th write in the
//! WITH list — and the router forwards the client's rows, keeps the images (the WITH list's
//! first, so that a consumer applying events in order deletes a key before the statement inserts
//! it again), and puts back the command tag and RowDescription the statement would have
//! produced. The statement proper comes first in the UNION ALL, so its write runs first and
//! reads the CTEs as it would alone: triggers fire in the same order.
//!
//! The column lists of a CTE's RETURNING and of the client's result come from the server
//! (a Describe of the client's statement and of `WITH … SELECT * FROM d`, see
//! [`Cut::probes`]): `RETURNING *` or `t.*` cannot be expanded from the text alone.
//!
//! What this module does not know: the catalog, the connection, or how the rows are routed.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use pg_query::protobuf::node::Node as N;
use pg_query::protobuf::Token as T;

use super::image_sql::Form;
use super::rewrite::{
    quote, update_stored, upsert_capturing_before, Added, Refusal, Rewritten, Shape, Spliced,
    BEFORE_IMAGE,
};
use crate::statement::analysis::{analyze, Analysis, Kind};

/// Capture columns every row of the wrapper carries: source, before, after, tableoid,
/// "ON CONFLICT updated" (always NULL here: see [`images`]).
pub const EXTRA: usize = 5;

/// How the router reads a wrapper's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapper {
    /// Shape of the client's own statement when it writes (rows with source 0); `None` when
    /// it is a SELECT, whose rows carry no images.
    pub main: Option<Arc<Shape>>,
    /// Shapes of the writes in the WITH list, in order (source k is `parts[k - 1]`).
    pub parts: Vec<Arc<Shape>>,
    /// The command tag without its count: `INSERT 0`, `UPDATE`, `DELETE`, `MERGE`, `SELECT`.
    pub tag: &'static str,
    /// The RowDescription body of the client's statement as the server describes it; it
    /// replaces the wrapper's (which lost the columns' table and attribute numbers).
    pub row_description: Option<Vec<u8>>,
}

/// A write in the WITH list, cut out of the statement text.
#[derive(Debug, Clone)]
struct WriteCte {
    /// The CTE's name as written (possibly quoted).
    name: String,
    /// From `AS` to the body's opening parenthesis, as written (`AS MATERIALIZED (`).
    as_clause: String,
    /// The data-modifying statement inside the parentheses.
    body: Range<usize>,
    analysis: Analysis,
}

#[derive(Debug, Clone)]
enum Piece {
    /// A CTE that does not write, kept as written (name to its end).
    Kept(Range<usize>),
    Write(WriteCte),
}

/// A statement with writes in its WITH clause, cut into its pieces.
#[derive(Debug, Clone)]
pub struct Cut {
    sql: String,
    recursive: bool,
    pieces: Vec<Piece>,
    /// The WITH clause as written (for the probes).
    with: Range<usize>,
    /// The statement after its WITH clause.
    main: Range<usize>,
    main_analysis: Analysis,
}

fn unsupported(why: &str) -> Refusal {
    Refusal::Unsupported {
        what: format!("this data-modifying WITH statement ({why})"),
    }
}

/// Cut `sql` (one statement) if it has data-modifying CTEs: `Ok(None)` if it has none.
pub fn cut(sql: &str) -> Result<Option<Cut>, Refusal> {
    let Ok(parsed) = crate::statement::parser::parse(sql) else {
        return Ok(None);
    };
    let Some(with) = super::rewrite::first_node(&parsed.protobuf).and_then(with_clause) else {
        return Ok(None);
    };
    let tokens = crate::statement::parser::tokens(sql)
        .map_err(|_| unsupported("it could not be scanned"))?;
    let s = Scanned { sql, tokens };
    let ctes: Vec<_> = with
        .ctes
        .iter()
        .filter_map(|c| match c.node.as_ref() {
            Some(N::CommonTableExpr(c)) => Some(&**c),
            _ => None,
        })
        .collect();
    let mut pieces = Vec::new();
    let mut last_close = 0;
    for (idx, c) in ctes.iter().enumerate() {
        let (piece, close) = s.piece(c, ctes.get(idx + 1).copied())?;
        pieces.push(piece);
        last_close = close;
    }
    if !pieces.iter().any(|p| matches!(p, Piece::Write(_))) {
        return Ok(None);
    }
    let (main, main_analysis) = s.main(last_close)?;
    if let Some(Piece::Kept(r)) = pieces.last_mut() {
        if r.end == usize::MAX {
            r.end = main.start;
        }
    }
    Ok(Some(Cut {
        sql: sql.to_string(),
        recursive: with.recursive,
        pieces,
        with: with.location.max(0) as usize..s.tokens[last_close].end as usize,
        main,
        main_analysis,
    }))
}

/// The WITH clause of a statement that can have one.
fn with_clause(node: &N) -> Option<&pg_query::protobuf::WithClause> {
    match node {
        N::SelectStmt(s) => s.with_clause.as_ref(),
        N::InsertStmt(s) => s.with_clause.as_ref(),
        N::UpdateStmt(s) => s.with_clause.as_ref(),
        N::DeleteStmt(s) => s.with_clause.as_ref(),
        N::MergeStmt(s) => s.with_clause.as_ref(),
        _ => None,
    }
}

/// A statement with its tokens, as `cut` walks them.
struct Scanned<'a> {
    sql: &'a str,
    tokens: Vec<pg_query::protobuf::ScanToken>,
}

impl Scanned<'_> {
    /// The index of the token starting at byte `pos`.
    fn at(&self, pos: i32) -> Option<usize> {
        self.tokens.iter().position(|t| t.start == pos)
    }

    fn kind(&self, i: usize) -> Option<T> {
        T::try_from(self.tokens[i].token).ok()
    }

    fn closing(&self, open: usize) -> Result<usize, Refusal> {
        super::rewrite::closing(&self.tokens, open)
            .ok_or_else(|| unsupported("unbalanced parentheses"))
    }

    fn text(&self, i: usize) -> &str {
        &self.sql[self.tokens[i].start as usize..self.tokens[i].end as usize]
    }

    /// One CTE of the WITH list (`next`: the one after it), and the index of its closing
    /// parenthesis.
    fn piece(
        &self,
        c: &pg_query::protobuf::CommonTableExpr,
        next: Option<&pg_query::protobuf::CommonTableExpr>,
    ) -> Result<(Piece, usize), Refusal> {
        let name_at = self
            .at(c.location)
            .ok_or_else(|| unsupported("a CTE name was not found"))?;
        let mut i = name_at + 1;
        if self.kind(i) == Some(T::Ascii40) {
            i = self.closing(i)? + 1;
        }
        if self.kind(i) != Some(T::As) {
            return Err(unsupported("a CTE without AS"));
        }
        let as_at = i;
        while i < self.tokens.len() && self.kind(i) != Some(T::Ascii40) {
            i += 1;
        }
        let close = self.closing(i)?;
        let body = self.tokens[i].end as usize..self.tokens[close].start as usize;
        let writes = matches!(
            c.ctequery.as_ref().and_then(|q| q.node.as_ref()),
            Some(N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) | N::MergeStmt(_))
        );
        if !writes {
            // Up to the comma before the next CTE (SEARCH/CYCLE clauses included).
            let end = match next {
                Some(next) => {
                    let next_at = self
                        .at(next.location)
                        .ok_or_else(|| unsupported("a CTE name"))?;
                    self.tokens[next_at - 1].start as usize
                }
                // The last one's end is known once the statement proper is found.
                None => usize::MAX,
            };
            return Ok((Piece::Kept(self.tokens[name_at].start as usize..end), close));
        }
        let analysis = analysis_of(&self.sql[body.clone()])
            .ok_or_else(|| unsupported("a CTE body could not be analysed"))?;
        if analysis.writes.len() != 1 {
            return Err(unsupported(
                "a write in a CTE that writes more than one table",
            ));
        }
        let write = WriteCte {
            name: self.text(name_at).to_string(),
            as_clause: self.sql[self.tokens[as_at].start as usize..self.tokens[i].end as usize]
                .to_string(),
            body,
            analysis,
        };
        Ok((Piece::Write(write), close))
    }

    /// The statement proper, after the last CTE (whose parenthesis closes at `last_close`):
    /// its byte range and analysis. It starts at the first top-level keyword after the last
    /// CTE (a recursive CTE's SEARCH/CYCLE clause holds none of these).
    fn main(&self, last_close: usize) -> Result<(Range<usize>, Analysis), Refusal> {
        let main_at = (last_close + 1..self.tokens.len())
            .find(|&i| {
                matches!(
                    self.kind(i),
                    Some(
                        T::Select
                            | T::Values
                            | T::Table
                            | T::Insert
                            | T::Update
                            | T::DeleteP
                            | T::Merge
                            | T::Ascii40
                    )
                )
            })
            .ok_or_else(|| unsupported("the statement after WITH was not found"))?;
        let main =
            self.tokens[main_at].start as usize..self.sql.trim_end().trim_end_matches(';').len();
        let a = analysis_of(&self.sql[main.clone()])
            .ok_or_else(|| unsupported("the statement after WITH could not be analysed"))?;
        if a.kind.writes_rows() && a.writes.len() != 1 {
            return Err(unsupported("its own write has several targets"));
        }
        if !a.kind.writes_rows() && a.kind != Kind::Read {
            return Err(unsupported(
                "it is not a SELECT, INSERT, UPDATE, DELETE or MERGE",
            ));
        }
        Ok((main, a))
    }
}

/// The analysis of the first statement of `sql`.
fn analysis_of(sql: &str) -> Option<Analysis> {
    analyze(sql)
        .ok()
        .and_then(|v| v.into_iter().next())
        .map(|l| l.analysis)
}

impl Cut {
    /// The statements hindsight describes (never runs) before the rewrite: one per write in
    /// the WITH list that has a RETURNING list (`None` for the others), giving its columns.
    /// The client's statement itself is described too (by the caller, as sent).
    pub fn probes(&self) -> Vec<Option<String>> {
        self.writes()
            .map(|w| {
                w.analysis.writes[0]
                    .returning
                    .then(|| format!("{}\nSELECT * FROM {}", &self.sql[self.with.clone()], w.name))
            })
            .collect()
    }

    fn writes(&self) -> impl Iterator<Item = &WriteCte> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Write(w) => Some(w),
            Piece::Kept(_) => None,
        })
    }

    /// The wrapper query for a server of major version `major`. `client`: the
    /// RowDescription body of the client's statement (`None`: it returns no rows);
    /// `columns`: per write in the WITH list, the column names of its RETURNING list (from
    /// the probes; `None` where it has none).
    pub fn rewrite(
        &self,
        major: u32,
        client: Option<&[u8]>,
        columns: &[Option<Vec<String>>],
        encoding: crate::wire::client_text::ClientEncoding,
        form: Form,
    ) -> Result<Rewritten, Refusal> {
        // Each write's text as it runs, and whether it stores its own before images.
        let bodies = self
            .writes()
            .map(|w| body(&self.sql[w.body.clone()], &w.analysis, major))
            .collect::<Result<Vec<_>, _>>()?;
        let a = &self.main_analysis;
        let (main_sql, main_stored) = if a.kind.writes_rows() {
            body(&self.sql[self.main.clone()], a, major)?
        } else {
            (Cow::Borrowed(&self.sql[self.main.clone()]), false)
        };
        let pre_read = if major < 18 {
            let stored: Vec<bool> = bodies.iter().map(|b| b.1).collect();
            self.pre_read(&stored, main_stored, form)?
        } else {
            None
        };
        let (mut ctes, parts) = self.with_list(&bodies, columns, major, form)?;
        let client_cols = client.map(|rd| column_names(rd, encoding)).transpose()?;
        let main = self.main_part(&main_sql, main_stored, client_cols.as_deref(), major, form)?;
        ctes.extend(main.ctes);
        let mut branches = vec![main.first];
        branches.extend(branches_of(parts.len(), main.client_rel));
        let (kind, table) = match &main.shape {
            Some(s) => (s.kind, s.table.clone()),
            None => (parts[0].kind, parts[0].table.clone()),
        };
        let recursive = if self.recursive { "RECURSIVE " } else { "" };
        let text = format!(
            "WITH {recursive}{}\n{}",
            ctes.join(",\n"),
            branches.join("\nUNION ALL ")
        );
        let wrapper = Wrapper {
            main: main.shape,
            parts,
            tag: tag_of(a.kind),
            row_description: client.map(<[u8]>::to_vec),
        };
        let shape = Arc::new(Shape {
            kind,
            table,
            extra: EXTRA,
            old_at: Some(1),
            new_at: Some(2),
            oid_at: 3,
            client_returning: client.is_some(),
            // The pre-read's rows carry the statement's shape: `publish` pairs them with
            // the UPDATE's (whose part shape says pre_read too) by key.
            pre_read: pre_read.is_some(),
            updated_at: Some(4),
            wrapper: Some(Arc::new(wrapper)),
            read_after: None,
            cascade: None,
            txid_at: None,
        });
        Ok(Rewritten {
            pre_read,
            ..Rewritten::returning(text, shape)
        })
    }

    /// The WITH list as the wrapper runs it: kept CTEs as written, each write as `__hs_wK`
    /// returning its images (and, when it has a RETURNING list, a CTE of the client's name
    /// giving its columns), with the shape of each write's rows. `bodies`: each write's text
    /// as it runs and whether it stores its before images.
    fn with_list(
        &self,
        bodies: &[(Cow<'_, str>, bool)],
        columns: &[Option<Vec<String>>],
        major: u32,
        form: Form,
    ) -> Result<(Vec<String>, Vec<Arc<Shape>>), Refusal> {
        let (mut ctes, mut parts) = (Vec::new(), Vec::new());
        let mut k = 0;
        for piece in &self.pieces {
            let w = match piece {
                Piece::Kept(r) => {
                    ctes.push(self.sql[r.clone()].to_string());
                    continue;
                }
                Piece::Write(w) => w,
            };
            k += 1;
            let (body, stored) = &bodies[k - 1];
            let images = images(&w.analysis, body, major, k, *stored, form)?;
            let part = format!("__hs_w{k}");
            match columns.get(k - 1).and_then(|c| c.as_ref()) {
                Some(names) => {
                    ctes.push(format!(
                        "{part}({}) {}{body}{images})",
                        positional(names.len()),
                        w.as_clause
                    ));
                    let projection: Vec<String> = names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| format!("__hs_{} AS {}", i + 1, quote(n)))
                        .collect();
                    ctes.push(format!(
                        "{} AS (SELECT {} FROM {part})",
                        w.name,
                        projection.join(", ")
                    ));
                }
                None if w.analysis.writes[0].returning => {
                    return Err(Refusal::Unsupported {
                        what: format!("the RETURNING list of WITH query {}", w.name),
                    })
                }
                None => ctes.push(format!("{part} {}{body}{images})", w.as_clause)),
            }
            parts.push(part_shape(&w.analysis, major, *stored));
        }
        Ok((ctes, parts))
    }

    /// The statement after the WITH list as a CTE of the wrapper (`main_sql`, as it runs),
    /// and the wrapper's first branch. `client_cols`: the columns the client's statement
    /// returns, if it returns rows.
    fn main_part(
        &self,
        main_sql: &str,
        main_stored: bool,
        client_cols: Option<&[String]>,
        major: u32,
        form: Form,
    ) -> Result<MainPart, Refusal> {
        let a = &self.main_analysis;
        if !a.kind.writes_rows() {
            return Ok(MainPart {
                ctes: vec![format!("__hs_main AS (\n{main_sql}\n)")],
                first: format!(
                    "SELECT __hs_main.*, 0, {NULL}, {NULL}, NULL::oid, NULL::bool FROM __hs_main",
                    NULL = form.null()
                ),
                client_rel: Some("__hs_main"),
                shape: None,
            });
        }
        let images = images(a, main_sql, major, 0, main_stored, form)?;
        let (ctes, client_rel) = match client_cols {
            Some(names) if a.writes[0].returning => {
                let n = names.len();
                let ctes = vec![
                    format!("__hs_main({}) AS (\n{main_sql}{images}\n)", positional(n)),
                    format!("__hs_c AS (SELECT {} FROM __hs_main)", positional(n)),
                ];
                (ctes, Some("__hs_c"))
            }
            _ => (vec![format!("__hs_main AS (\n{main_sql}{images}\n)")], None),
        };
        Ok(MainPart {
            ctes,
            first: "SELECT * FROM __hs_main".to_string(),
            client_rel,
            shape: Some(part_shape(a, major, main_stored)),
        })
    }
}

/// A write of a data-modifying WITH statement that deletes or updates rows: the foreign keys
/// referencing its table may change others (`cascade`).
pub(crate) struct Cascading<'a> {
    /// 0: the statement after the WITH list; k: the k-th write of the WITH list (the wrapper's
    /// source numbers).
    pub source: usize,
    pub analysis: &'a Analysis,
    /// The write as a statement of its own, `WITH <the CTEs it reads> <its text>`, with where
    /// the client's text went; `None` when its text names a write of the WITH list (directly
    /// or through a CTE that does), whose rows do not exist before the statement runs.
    pub alone: Option<Spliced>,
}

impl Cut {
    /// The writes that delete or update rows, each as a statement of its own where it can be.
    pub(crate) fn cascading(&self) -> Vec<Cascading<'_>> {
        let (kept, unreadable) = self.readable_ctes();
        let alone = |body: &Range<usize>| -> Option<Spliced> {
            let names = words(&self.sql[body.clone()]);
            if names.iter().any(|n| unreadable.contains(n)) {
                return None;
            }
            let mut out = Spliced::default();
            if !kept.is_empty() {
                out.own(if self.recursive {
                    "WITH RECURSIVE "
                } else {
                    "WITH "
                });
                for (i, r) in kept.iter().enumerate() {
                    if i > 0 {
                        out.own(",\n");
                    }
                    out.client(&self.sql, r.clone());
                }
                out.own("\n");
            }
            out.client(&self.sql, body.clone());
            Some(out)
        };
        let deletes_or_updates = |a: &Analysis| matches!(a.kind, Kind::Delete | Kind::Update);
        let mut out: Vec<Cascading<'_>> = self
            .writes()
            .enumerate()
            .filter(|(_, w)| deletes_or_updates(&w.analysis))
            .map(|(i, w)| Cascading {
                source: i + 1,
                analysis: &w.analysis,
                alone: alone(&w.body),
            })
            .collect();
        if deletes_or_updates(&self.main_analysis) {
            out.push(Cascading {
                source: 0,
                analysis: &self.main_analysis,
                alone: alone(&self.main),
            });
        }
        out
    }

    /// The CTEs that do not write and name no write (nor a CTE that does), and the names of
    /// the others, as PostgreSQL compares them.
    fn readable_ctes(&self) -> (Vec<Range<usize>>, Vec<String>) {
        let mut unreadable: Vec<String> = self.writes().map(|w| ident(&w.name)).collect();
        let mut kept: Vec<(Range<usize>, String, Vec<String>)> = self
            .pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Kept(r) => {
                    let names = words(&self.sql[r.clone()]);
                    let own = names.first().cloned().unwrap_or_default();
                    Some((r.clone(), own, names.into_iter().skip(1).collect()))
                }
                Piece::Write(_) => None,
            })
            .collect();
        // Until nothing changes: a recursive WITH list may name a later CTE.
        loop {
            let before = kept.len();
            kept.retain(|(_, own, names)| {
                if names.iter().any(|n| unreadable.contains(n)) {
                    unreadable.push(own.clone());
                    return false;
                }
                true
            });
            if kept.len() == before {
                break;
            }
        }
        (kept.into_iter().map(|(r, _, _)| r).collect(), unreadable)
    }
}

/// `rw`, a wrapper query, with `plan` the cascades of its write `source` (see [`Cascading`]):
/// that write's events then say what was captured.
pub fn with_part_cascade(
    mut rw: Rewritten,
    source: usize,
    plan: Arc<super::cascade::Plan>,
) -> Rewritten {
    let shape = Arc::make_mut(&mut rw.shape);
    if let Some(wrapper) = shape.wrapper.as_mut() {
        let wrapper = Arc::make_mut(wrapper);
        let part = match source {
            0 => wrapper.main.as_mut(),
            k => wrapper.parts.get_mut(k - 1),
        };
        if let Some(part) = part {
            Arc::make_mut(part).cascade = Some(plan);
        }
    }
    rw
}

/// The wrapper's part for the statement after the WITH list.
struct MainPart {
    /// The CTEs it adds (after the WITH list's).
    ctes: Vec<String>,
    /// The first branch of the wrapper's UNION: the statement's own rows. Its write runs
    /// first, pulling the CTEs it reads, as without the wrapper (statement triggers fire in
    /// the same order). The router puts the WITH list's events first (see `router::Wrapped`).
    first: String,
    /// The relation holding the rows the client sees, if any.
    client_rel: Option<&'static str>,
    /// Its rows' shape when it writes.
    shape: Option<Arc<Shape>>,
}

/// The wrapper's branches for the `n` writes of the WITH list: each write's image columns,
/// after NULL client columns when the client sees rows (`client_rel`).
fn branches_of(n: usize, client_rel: Option<&str>) -> Vec<String> {
    (1..=n)
        .map(|k| {
            let cols = format!(
                "__hs_w{k}.__hs_s, __hs_w{k}.__hs_o, __hs_w{k}.__hs_n, __hs_w{k}.__hs_t, __hs_w{k}.__hs_u"
            );
            match client_rel {
                Some(c) => format!("SELECT {c}.*, {cols} FROM __hs_w{k} LEFT JOIN {c} ON false"),
                None => format!("SELECT {cols} FROM __hs_w{k}"),
            }
        })
        .collect()
}

impl Cut {
    /// Before PostgreSQL 18: the locking pre-read of the statement's one UPDATE that does not
    /// store its own before images (`stored`, per write in the WITH list; `main_stored`: the
    /// statement's own write; see `rewrite::update_stored`), run right before the wrapper in
    /// the same transaction (see `rewrite::pre_read_for_update`). It can only run apart from
    /// the statement if the UPDATE (and the CTEs it may read) does not read a CTE that writes —
    /// those rows exist only inside the statement.
    fn pre_read(
        &self,
        stored: &[bool],
        main_stored: bool,
        form: Form,
    ) -> Result<Option<String>, Refusal> {
        let mut updates = self
            .writes()
            .zip(stored)
            .filter(|(w, stored)| w.analysis.kind == Kind::Update && !**stored)
            .map(|(w, _)| (&self.sql[w.body.clone()], &w.analysis))
            .collect::<Vec<_>>();
        if self.main_analysis.kind == Kind::Update && !main_stored {
            updates.push((&self.sql[self.main.clone()], &self.main_analysis));
        }
        let (body, a) = match updates.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => return Err(needs_pg18("several UPDATEs")),
        };
        let written: Vec<String> = self.writes().map(|w| ident(&w.name)).collect();
        let mut read = idents(body);
        for piece in &self.pieces {
            if let Piece::Kept(r) = piece {
                read.extend(idents(&self.sql[r.clone()]));
            }
        }
        if read.iter().any(|i| written.contains(i)) {
            return Err(needs_pg18("an UPDATE that reads a CTE that writes"));
        }
        if body
            .trim_start()
            .get(..4)
            .is_some_and(|w| w.eq_ignore_ascii_case("with"))
        {
            return Err(needs_pg18("an UPDATE with a WITH clause of its own"));
        }
        let w = &a.writes[0];
        let lock = match w.alias.as_str() {
            "" => quote(&w.table.name),
            alias => quote(alias),
        };
        let pre = super::rewrite::pre_read_for_update(body, &w.reference(), &lock, form)
            .ok_or_else(|| needs_pg18("this UPDATE"))?;
        let kept: Vec<&str> = self
            .pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Kept(r) => Some(&self.sql[r.clone()]),
                Piece::Write(_) => None,
            })
            .collect();
        if kept.is_empty() {
            return Ok(Some(pre));
        }
        let recursive = if self.recursive { "RECURSIVE " } else { "" };
        Ok(Some(format!("WITH {recursive}{}\n{pre}", kept.join(",\n"))))
    }
}

fn needs_pg18(what: &str) -> Refusal {
    Refusal::Unsupported {
        what: format!("{what} in a data-modifying WITH statement before PostgreSQL 18"),
    }
}

/// An identifier as PostgreSQL compares it: unquoted ones fold to lower case.
fn ident(raw: &str) -> String {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => raw.to_lowercase(),
    }
}

/// Every identifier in `sql`, as PostgreSQL compares them.
fn idents(sql: &str) -> Vec<String> {
    crate::statement::parser::tokens(sql)
        .map(|tokens| {
            tokens
                .iter()
                .filter(|t| T::try_from(t.token).ok() == Some(T::Ident))
                .map(|t| ident(&sql[t.start as usize..t.end as usize]))
                .collect()
        })
        .unwrap_or_default()
}

/// Every identifier and keyword in `sql`, as PostgreSQL compares identifiers (a CTE may be
/// named by an unreserved keyword).
fn words(sql: &str) -> Vec<String> {
    crate::statement::parser::tokens(sql)
        .map(|tokens| {
            tokens
                .iter()
                .map(|t| &sql[t.start as usize..t.end as usize])
                .filter(|w| w.starts_with(|c: char| c.is_alphabetic() || c == '_' || c == '"'))
                .map(ident)
                .collect()
        })
        .unwrap_or_default()
}

/// `__hs_1, …, __hs_n`.
fn positional(n: usize) -> String {
    (1..=n)
        .map(|i| format!("__hs_{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shape of the events of one write of the statement (before PostgreSQL 18 an UPDATE's
/// before images come from the pre-read unless it stores them itself, `stored`).
fn part_shape(a: &Analysis, major: u32, stored: bool) -> Arc<Shape> {
    let w = &a.writes[0];
    Arc::new(Shape {
        extra: EXTRA,
        old_at: Some(1),
        new_at: Some(2),
        oid_at: 3,
        client_returning: w.returning,
        updated_at: Some(4),
        pre_read: major < 18 && a.kind == Kind::Update && !stored,
        ..Shape::statement(a.kind, w.table.clone())
    })
}

/// The RETURNING items a write gets (after its own list, or as a new list): its source
/// number `src`, its before and after images, the row's table. Before PostgreSQL 18 INSERT
/// (and upsert DO NOTHING) and DELETE give their images from RETURNING alone, an UPDATE the
/// before image its edited text stores (`stored`, see `body`; else the pre-read has it) and its
/// after image, an upsert DO UPDATE the images its edited text stores; MERGE cannot be
/// captured.
/// `text`: the write's own text (its `RETURNING WITH (OLD AS …)` names the rows on 18).
pub(super) fn images(
    a: &Analysis,
    text: &str,
    major: u32,
    src: usize,
    stored: bool,
    form: Form,
) -> Result<String, Refusal> {
    let w = &a.writes[0];
    let target = w.reference();
    let lead = if w.returning { "\n, " } else { "\nRETURNING " };
    let mut tail = format!("{target}.tableoid AS __hs_t, NULL::bool AS __hs_u");
    if major >= 18 {
        return Ok(if w.returning {
            let (old, new) = crate::statement::pg18_syntax::returning_aliases(text);
            format!(
                "{lead}{src} AS __hs_s, {} AS __hs_o, {} AS __hs_n, {tail}",
                form.row(&old),
                form.row(&new)
            )
        } else {
            format!("{lead}WITH (OLD AS __hs_old, NEW AS __hs_new) {src} AS __hs_s, {} AS __hs_o, {} AS __hs_n, {tail}", form.row("__hs_old"), form.row("__hs_new"))
        });
    }
    let (old, new) = match a.kind {
        Kind::Insert => (form.null().to_string(), form.row(&format!("{target}.*"))),
        Kind::Upsert if !w.conflict_update => {
            (form.null().to_string(), form.row(&format!("{target}.*")))
        }
        Kind::Delete => (form.row(&format!("{target}.*")), form.null().to_string()),
        // The WHERE or a SET expression stored the row's before image (see `body`); it is read,
        // then emptied. Every row an UPDATE returns was updated: `__hs_u` is true, the before
        // image must be there.
        Kind::Update if stored => {
            tail = format!(
                "{target}.tableoid AS __hs_t, (set_config('{BEFORE_IMAGE}', '', true) IS NOT NULL) AS __hs_u"
            );
            (
                super::rewrite::stored_before(form),
                form.row(&format!("{target}.*")),
            )
        }
        // The before images come from the pre-read (see `Cut::pre_read`).
        Kind::Update => (form.null().to_string(), form.row(&format!("{target}.*"))),
        // The DO UPDATE's WHERE stored the row's before image (see `body`); it is read, then
        // emptied (`__hs_u`, evaluated after `__hs_o`) so an inserted row after it reads none.
        Kind::Upsert => {
            tail = format!(
                "{target}.tableoid AS __hs_t, (set_config('{BEFORE_IMAGE}', '', true) IS NULL) AS __hs_u"
            );
            (
                super::rewrite::stored_before(form),
                form.row(&format!("{target}.*")),
            )
        }
        kind => {
            return Err(Refusal::NeedsPg18 {
                what: format!(
                    "{} on {} in a data-modifying WITH statement",
                    kind.label().to_uppercase(),
                    w.table
                ),
                major,
            })
        }
    };
    Ok(format!(
        "{lead}{src} AS __hs_s, {old} AS __hs_o, {new} AS __hs_n, {tail}"
    ))
}

/// The text a write runs as in the wrapper, and whether it stores an UPDATE's before images:
/// as written, except before PostgreSQL 18
/// - an upsert DO UPDATE, whose DO UPDATE's WHERE stores each updated row's before image
///   (`rewrite::upsert_capturing_before`);
/// - an UPDATE whose WHERE or one of whose SET expressions can store each row's before image
///   (`rewrite::update_stored`); one that cannot gets the pre-read (`Cut::pre_read`).
///
/// Each write reads back its store in its own RETURNING, in the same step of its plan that
/// stored it, so several writes in one statement can share the one setting.
pub(super) fn body<'a>(
    sql: &'a str,
    a: &Analysis,
    major: u32,
) -> Result<(Cow<'a, str>, bool), Refusal> {
    edited(sql, a, major).map(|e| (e.text, e.stored))
}

/// [`body`], with the byte ranges of the text inserted into the write's (for error positions).
pub(super) struct Edited<'a> {
    /// The write's text, with its before-image store.
    pub text: Cow<'a, str>,
    /// Whether an UPDATE stores its before images (then it returns them).
    pub stored: bool,
    /// The byte ranges of `text` hindsight inserted.
    pub inserts: Vec<Added>,
}

impl<'a> Edited<'a> {
    fn unchanged(sql: &'a str) -> Self {
        Edited {
            text: Cow::Borrowed(sql),
            stored: false,
            inserts: Vec::new(),
        }
    }
}

pub(super) fn edited<'a>(sql: &'a str, a: &Analysis, major: u32) -> Result<Edited<'a>, Refusal> {
    let w = &a.writes[0];
    if major >= 18 {
        return Ok(Edited::unchanged(sql));
    }
    match a.kind {
        Kind::Upsert if w.conflict_update => {
            upsert_capturing_before(sql, w).map(|(text, inserts)| Edited {
                text: Cow::Owned(text),
                stored: false,
                inserts,
            })
        }
        Kind::Update => Ok(match update_stored(sql, &w.reference()) {
            Some((text, inserts)) => Edited {
                text: Cow::Owned(text),
                stored: true,
                inserts,
            },
            None => Edited::unchanged(sql),
        }),
        Kind::Insert
        | Kind::Upsert
        | Kind::Delete
        | Kind::Merge
        | Kind::Read
        | Kind::CopyIn
        | Kind::Truncate
        | Kind::Ddl
        | Kind::Transaction(_)
        | Kind::Session
        | Kind::Opaque => Ok(Edited::unchanged(sql)),
    }
}

/// The command tag of the client's statement, without its row count.
fn tag_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Insert | Kind::Upsert => "INSERT 0",
        Kind::Update => "UPDATE",
        Kind::Delete => "DELETE",
        Kind::Merge => "MERGE",
        Kind::Read
        | Kind::CopyIn
        | Kind::Truncate
        | Kind::Ddl
        | Kind::Transaction(_)
        | Kind::Session
        | Kind::Opaque => "SELECT",
    }
}

/// The field names of a RowDescription body.
pub fn column_names(
    body: &[u8],
    encoding: crate::wire::client_text::ClientEncoding,
) -> Result<Vec<String>, Refusal> {
    let bad = || Refusal::Unsupported {
        what: "this data-modifying WITH statement (its description was malformed)".into(),
    };
    let n = u16::from_be_bytes([
        *body.first().ok_or_else(bad)?,
        *body.get(1).ok_or_else(bad)?,
    ]);
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (name, after) = crate::wire::frame::take_cstr(rest).ok_or_else(bad)?;
        out.push(crate::wire::client_text::sql_name(name, encoding));
        rest = after.get(18..).ok_or_else(bad)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wrapper for PostgreSQL 15, every written table keyed by `id`.
    fn on_15(sql: &str) -> Result<Rewritten, Refusal> {
        cut(sql).unwrap().unwrap().rewrite(
            15,
            None,
            &[Some(vec!["id".into()])],
            Default::default(),
            Form::Jsonb,
        )
    }

    fn row_description(names: &[&str]) -> Vec<u8> {
        let mut b = (names.len() as u16).to_be_bytes().to_vec();
        for n in names {
            b.extend_from_slice(n.as_bytes());
            b.push(0);
            b.extend_from_slice(&[0; 18]);
        }
        b
    }

    #[test]
    fn statements_without_writes_in_with_are_not_cut() {
        assert!(cut("SELECT 1").unwrap().is_none());
        assert!(cut("WITH x AS (SELECT 1) UPDATE t SET a = 1")
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_returning_cte_is_renamed_and_reexposed_with_its_own_columns() {
        let sql = "WITH x AS (SELECT 1 AS k), d(a, \"B\") AS MATERIALIZED (DELETE FROM s.t WHERE k IN (SELECT k FROM x) RETURNING * -- c\n) INSERT INTO u SELECT * FROM d;";
        let c = cut(sql).unwrap().unwrap();
        assert_eq!(
            c.probes(),
            vec![Some(
                "WITH x AS (SELECT 1 AS k), d(a, \"B\") AS MATERIALIZED (DELETE FROM s.t WHERE k IN (SELECT k FROM x) RETURNING * -- c\n)\nSELECT * FROM d".to_string()
            )]
        );
        let rw = c
            .rewrite(
                18,
                None,
                &[Some(vec!["a".into(), "B".into()])],
                Default::default(),
                Form::Jsonb,
            )
            .unwrap();
        assert_eq!(
            rw.text,
            "WITH x AS (SELECT 1 AS k),\n\
             __hs_w1(__hs_1, __hs_2) AS MATERIALIZED (DELETE FROM s.t WHERE k IN (SELECT k FROM x) RETURNING * -- c\n\n\
             , 1 AS __hs_s, to_jsonb(old) AS __hs_o, to_jsonb(new) AS __hs_n, \"s\".\"t\".tableoid AS __hs_t, NULL::bool AS __hs_u),\n\
             d AS (SELECT __hs_1 AS \"a\", __hs_2 AS \"B\" FROM __hs_w1),\n\
             __hs_main AS (\nINSERT INTO u SELECT * FROM d\n\
             RETURNING WITH (OLD AS __hs_old, NEW AS __hs_new) 0 AS __hs_s, to_jsonb(__hs_old) AS __hs_o, to_jsonb(__hs_new) AS __hs_n, \"u\".tableoid AS __hs_t, NULL::bool AS __hs_u\n)\n\
             SELECT * FROM __hs_main\n\
             UNION ALL SELECT __hs_w1.__hs_s, __hs_w1.__hs_o, __hs_w1.__hs_n, __hs_w1.__hs_t, __hs_w1.__hs_u FROM __hs_w1"
        );
        let w = rw.shape.wrapper.as_ref().unwrap();
        assert_eq!(w.tag, "INSERT 0");
        assert_eq!(w.parts[0].kind, Kind::Delete);
        assert_eq!(w.parts[0].table.to_string(), "s.t");
        assert!(!rw.shape.client_returning);
    }

    #[test]
    fn a_select_keeps_its_rows_first_and_the_images_follow() {
        let sql = "WITH RECURSIVE u AS (UPDATE t SET a = 1) SELECT 1 AS one ORDER BY 1";
        let c = cut(sql).unwrap().unwrap();
        assert_eq!(c.probes(), vec![None]);
        let rw = c
            .rewrite(
                18,
                Some(&row_description(&["one"])),
                &[None],
                Default::default(),
                Form::Jsonb,
            )
            .unwrap();
        assert!(
            rw.text
                .starts_with("WITH RECURSIVE __hs_w1 AS (UPDATE t SET a = 1\nRETURNING WITH"),
            "{}",
            rw.text
        );
        assert!(
            rw.text.contains(
                "__hs_main AS (\nSELECT 1 AS one ORDER BY 1\n)\nSELECT __hs_main.*, 0, NULL::jsonb, NULL::jsonb, NULL::oid, NULL::bool FROM __hs_main\nUNION ALL SELECT __hs_main.*, __hs_w1.__hs_s"
            ),
            "{}",
            rw.text
        );
        assert!(
            rw.text
                .ends_with("FROM __hs_w1 LEFT JOIN __hs_main ON false"),
            "{}",
            rw.text
        );
        assert_eq!(rw.shape.wrapper.as_ref().unwrap().tag, "SELECT");
        assert!(rw.shape.client_returning);
    }

    #[test]
    fn a_write_with_returning_exposes_only_the_clients_columns() {
        let sql = "WITH d AS (DELETE FROM a RETURNING id) UPDATE b SET x = 1 FROM d WHERE b.id = d.id RETURNING b.id, d.id";
        let c = cut(sql).unwrap().unwrap();
        let rw = c
            .rewrite(
                18,
                Some(&row_description(&["id", "id"])),
                &[Some(vec!["id".into()])],
                Default::default(),
                Form::Jsonb,
            )
            .unwrap();
        assert!(rw.text.contains("__hs_main(__hs_1, __hs_2) AS (\nUPDATE b SET x = 1 FROM d WHERE b.id = d.id RETURNING b.id, d.id\n, 0 AS __hs_s, to_jsonb(old)"), "{}", rw.text);
        assert!(
            rw.text
                .contains("__hs_c AS (SELECT __hs_1, __hs_2 FROM __hs_main)"),
            "{}",
            rw.text
        );
        assert!(
            rw.text
                .contains("\nSELECT * FROM __hs_main\nUNION ALL SELECT __hs_c.*")
                && rw.text.ends_with("FROM __hs_w1 LEFT JOIN __hs_c ON false"),
            "{}",
            rw.text
        );
    }

    #[test]
    fn older_servers_capture_inserts_deletes_and_updates_and_refuse_the_rest() {
        let sql = "WITH d AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM d";
        let rw = on_15(sql).unwrap();
        assert!(
            rw.text
                .contains("1 AS __hs_s, to_jsonb(\"a\".*) AS __hs_o, NULL::jsonb AS __hs_n"),
            "{}",
            rw.text
        );
        assert!(
            rw.text
                .contains("0 AS __hs_s, NULL::jsonb AS __hs_o, to_jsonb(\"b\".*) AS __hs_n"),
            "{}",
            rw.text
        );
        // An upsert's DO UPDATE stores the before image its RETURNING reads and empties.
        let sql = "WITH u AS (INSERT INTO a VALUES (1) ON CONFLICT (id) DO UPDATE SET v = 2 RETURNING id) SELECT * FROM u";
        let rw = on_15(sql).unwrap();
        assert!(
            rw.text.contains("DO UPDATE SET v = 2 \nWHERE set_config('hindsight.before_image', to_jsonb(\"a\".*)::text, true) IS NOT NULL\nRETURNING id\n, 1 AS __hs_s, NULLIF(current_setting('hindsight.before_image', true), '')::jsonb AS __hs_o, to_jsonb(\"a\".*) AS __hs_n, \"a\".tableoid AS __hs_t, (set_config('hindsight.before_image', '', true) IS NULL) AS __hs_u"),
            "{}",
            rw.text
        );
        // An UPDATE stores its before images in its WHERE or a SET expression, so several
        // can share the statement, and read what other CTEs wrote.
        let sql = "WITH x AS (UPDATE a SET v = 'x' WHERE id = 1), d AS (DELETE FROM c RETURNING id) UPDATE b SET v = b.v + 1 FROM d WHERE b.id = d.id";
        let rw = cut(sql)
            .unwrap()
            .unwrap()
            .rewrite(
                15,
                None,
                &[None, Some(vec!["id".into()])],
                Default::default(),
                Form::Jsonb,
            )
            .unwrap();
        let store = |t: &str| {
            format!("set_config('hindsight.before_image', to_jsonb({t}.*)::text, true) IS NOT NULL")
        };
        let read = |t: &str| {
            format!("NULLIF(current_setting('hindsight.before_image', true), '')::jsonb AS __hs_o, to_jsonb({t}.*) AS __hs_n, {t}.tableoid AS __hs_t, (set_config('hindsight.before_image', '', true) IS NOT NULL) AS __hs_u")
        };
        for part in [
            format!("UPDATE a SET v = 'x' WHERE ( id = 1\n) AND {}\n\nRETURNING 1 AS __hs_s, {}", store("\"a\""), read("\"a\"")),
            format!("UPDATE b SET v = CASE WHEN {} THEN (b.v + 1) END FROM d WHERE b.id = d.id\nRETURNING 0 AS __hs_s, {}", store("\"b\""), read("\"b\"")),
        ] {
            assert!(rw.text.contains(&part), "{part}\nnot in\n{}", rw.text);
        }
        assert_eq!(rw.pre_read, None);
        let w = rw.shape.wrapper.as_ref().unwrap();
        assert!(!rw.shape.pre_read && !w.parts[0].pre_read && !w.main.as_ref().unwrap().pre_read);
        // One that cannot (a FROM list or subquery, only literals assigned) gets the locking
        // pre-read (with the plain CTEs it may read).
        let sql = "WITH k AS (SELECT 1 AS id), u AS (UPDATE a SET v = 'x' WHERE id IN (SELECT id FROM k) RETURNING *) INSERT INTO b SELECT * FROM u";
        let rw = on_15(sql).unwrap();
        assert_eq!(
            rw.pre_read.as_deref(),
            Some("WITH k AS (SELECT 1 AS id)\nSELECT to_jsonb(\"a\".*), \"a\".tableoid FROM a\nWHERE id IN (SELECT id FROM k)\nFOR UPDATE OF \"a\"")
        );
        assert!(rw.shape.pre_read && rw.shape.wrapper.as_ref().unwrap().parts[0].pre_read);
        // … unless it reads the rows of a CTE that writes (they exist only in the statement).
        for sql in [
            "WITH d AS (DELETE FROM x RETURNING id) UPDATE a SET v = 'x' WHERE id IN (SELECT id FROM d)",
            "WITH \"D\" AS (DELETE FROM x RETURNING id), k AS (SELECT * FROM \"D\") UPDATE a SET v = $1 FROM k WHERE a.id = k.id",
            "WITH u AS (UPDATE x SET v = 'x' FROM y) UPDATE a SET v = 'y' FROM z",
        ] {
            assert!(
                matches!(
                    on_15(sql),
                    Err(Refusal::Unsupported { .. })
                ),
                "{sql}"
            );
        }
        let sql = "WITH m AS (MERGE INTO a USING b ON a.id = b.id WHEN MATCHED THEN DELETE RETURNING a.id) SELECT * FROM m";
        assert!(matches!(on_15(sql), Err(Refusal::NeedsPg18 { .. })));
    }
}
