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

use super::image_sql::Form;
use super::positions::{Inserted, Piece};
use crate::statement::analysis::{Analysis, Kind, Located, TableName, Write};

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
    /// A statement with data-modifying CTEs, run inside hindsight's wrapper query (see
    /// `cte`): which write each row's images belong to, and what the client must see.
    pub wrapper: Option<Arc<super::cte::Wrapper>>,
    /// Its rows come from the statement run after it (`Rewritten::post_read`), checked against
    /// its command tag: a MERGE before PostgreSQL 18 (`merge`), a `COPY (write RETURNING …)
    /// TO` (`copy_out`).
    pub read_after: Option<ReadAfter>,
    /// The foreign-key cascades this statement sets off, read around it (`cascade`); their
    /// rows come from the post-read (`ReadAfter::Cascade`).
    pub cascade: Option<Arc<super::cascade::Plan>>,
    /// Index of the transaction's id (`pg_current_xact_id()`, see [`TXID_COLUMN`]): once a
    /// row brought it, the COMMIT need not ask the server for it.
    pub txid_at: Option<usize>,
}

/// The capture column that gives the transaction's id with each row (the top-level
/// transaction's, in a subtransaction too; assigned by then, as the statement wrote a row).
pub const TXID_COLUMN: &str = ", pg_current_xact_id()::text";

/// Which statement's rows a post-read gives (how they are checked, see `Shape::read_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAfter {
    Merge,
    CopyOut,
    /// The rows foreign-key cascades changed (`cascade`): the statement's own rows come back
    /// with it as usual.
    Cascade,
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
            wrapper: None,
            read_after: None,
            cascade: None,
            txid_at: None,
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
    /// Run right after `text`, in the same transaction: a MERGE's post-read (`merge`).
    pub post_read: Option<String>,
    /// A statement that fails when a limit is exceeded (TRUNCATE's row limit), run first.
    pub guard: Option<LimitGuard>,
    /// Byte ranges of `text` that hindsight inserted inside the client's text (not appended
    /// after it), in order: error positions past them are moved back (`router::Unit`).
    pub inserts: Vec<Added>,
    /// Where the client's text reappears in `pre_read`. An error the pre-read raises in the
    /// client's FROM, WHERE or ON points into the client's text (`pre_read_segments`).
    pub pre_read_map: Vec<ClientPiece>,
}

/// A statement run before a write that fails when a limit is exceeded; its error is replaced by
/// `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitGuard {
    pub sql: String,
    pub message: String,
}

/// Bytes hindsight added inside the client's text: `len` bytes at byte `at` of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    pub at: usize,
    pub len: usize,
}

/// A piece of the client's text inside a statement hindsight built: `len` bytes at byte `at` of
/// the built statement, copied from byte `client_at` of the client's statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPiece {
    pub at: usize,
    pub len: usize,
    pub client_at: usize,
}

impl Rewritten {
    /// The client's statement with only columns appended (`RETURNING`): nothing runs before or
    /// after it, and nothing is inserted inside the client's text.
    pub fn returning(text: String, shape: Arc<Shape>) -> Self {
        Rewritten {
            text,
            shape,
            pre_read: None,
            post_read: None,
            guard: None,
            inserts: Vec::new(),
            pre_read_map: Vec::new(),
        }
    }

    /// `pre_read_map` as `positions::Positions::pieces`, for `pre_read` sent at character
    /// `sent_at` (0-based) of the query string, and the client's statement at character `client_at`
    /// (0-based) of the client's, whose text is `client`.
    pub fn pre_read_segments(&self, sent_at: i64, client: &str, client_at: i64) -> Vec<Piece> {
        let Some(pre) = &self.pre_read else {
            return Vec::new();
        };
        let chars =
            |s: &str, a: usize, b: usize| s.get(a..b).map_or(0, |t| t.chars().count() as i64);
        self.pre_read_map
            .iter()
            .map(|p| Piece {
                at: sent_at + chars(pre, 0, p.at) + 1,
                len: chars(pre, p.at, p.at + p.len),
                client_at: client_at + chars(client, 0, p.client_at) + 1,
            })
            .collect()
    }

    /// `inserts` as `positions::Positions::inserts`, for `text` sent at character `sent_at`
    /// (0-based) of the query string.
    pub fn position_inserts(&self, sent_at: i64) -> Vec<Inserted> {
        self.inserts
            .iter()
            .map(|&Added { at, len }| {
                let before = self.text[..at].chars().count() as i64;
                let len = self.text[at..at + len].chars().count() as i64;
                Inserted {
                    at: sent_at + before + 1,
                    len,
                }
            })
            .collect()
    }
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

/// The before image a row's write stored in the transaction-local setting, read back as an
/// image column (and emptied by the caller after).
pub(crate) fn stored_before(form: Form) -> String {
    form.json(&format!(
        "NULLIF(current_setting('{BEFORE_IMAGE}', true), '')"
    ))
}

/// Rewrite one analysed statement of `text` for capture on a server of major version `major`.
/// `Ok(None)`: the statement writes no rows and runs unchanged.
/// `cascade`: for `TRUNCATE … CASCADE`, the tables it reaches ([`truncate_cascade_query`]).
/// `form`: how its image columns come back (by the session's `client_encoding`).
pub fn rewrite(
    text: &str,
    stmt: &Located,
    major: u32,
    truncate_limit: u64,
    cascade: &[String],
    form: Form,
) -> Result<Option<Rewritten>, Refusal> {
    let a = &stmt.analysis;
    if !a.kind.writes_rows() {
        return Ok(None);
    }
    let sql = &text[stmt.span.clone()];
    if a.kind == Kind::Truncate && !a.explain_analyze {
        let first = a
            .writes
            .first()
            .map(|w| w.table.clone())
            .unwrap_or_default();
        return truncate(sql, &first, truncate_limit, a.kind, cascade, form).map(Some);
    }
    let write = single_write(a)?;
    let t = Target::new(a.kind, write, sql, form);
    if major >= 18 {
        return Ok(Some(t.pg18()));
    }
    match a.kind {
        Kind::Insert => Ok(Some(t.returned(Some(0), None))),
        Kind::Delete => Ok(Some(t.returned(None, Some(0)))),
        Kind::Update => t.update().map(Some),
        // DO NOTHING: RETURNING gives exactly the inserted rows.
        Kind::Upsert if !write.conflict_update => Ok(Some(t.returned(Some(0), None))),
        Kind::Upsert => t.upsert().map(Some),
        Kind::Merge => super::merge::rewrite(t.body, write, major, form),
        Kind::Read
        | Kind::CopyIn
        | Kind::Truncate
        | Kind::Ddl
        | Kind::Transaction(_)
        | Kind::Session
        | Kind::Opaque => Err(Refusal::NeedsPg18 {
            what: t.what(),
            major,
        }),
    }
}

/// The one table a row-level write changes, or why hindsight refuses it: EXPLAIN ANALYZE of a
/// write, several targets, a COPY FROM among other statements, a write nested in a CTE.
fn single_write(a: &Analysis) -> Result<&Write, Refusal> {
    if a.explain_analyze {
        return Err(Refusal::Unsupported {
            what: "EXPLAIN ANALYZE of a write".to_string(),
        });
    }
    let [write] = a.writes.as_slice() else {
        let tables: Vec<String> = a.writes.iter().map(|w| w.table.to_string()).collect();
        return Err(Refusal::SeveralTargets {
            tables: tables.join(", "),
        });
    };
    if a.kind == Kind::CopyIn {
        return Err(Refusal::Unsupported {
            what: format!("COPY … FROM into {} among other statements in one query (send it as a query of its own)", write.table),
        });
    }
    if write.nested {
        // The write sits in a CTE (or `COPY (…) TO`): RETURNING cannot be added to it here.
        return Err(Refusal::Unsupported {
            what: format!("{} on {}", a.kind.label().to_uppercase(), write.table),
        });
    }
    Ok(write)
}

/// A single-table write being rewritten: its text and how columns are appended to it.
struct Target<'a> {
    kind: Kind,
    write: &'a Write,
    /// The client's statement as written.
    sql: &'a str,
    /// `sql` without its trailing `;` and whitespace.
    body: &'a str,
    /// How the target is named in the statement (its alias, or its name).
    reference: String,
    /// What goes before the appended columns: `RETURNING`, or a comma after the client's own.
    /// A newline first: a trailing `--` comment would otherwise swallow what is appended.
    sep: &'static str,
    form: Form,
}

impl<'a> Target<'a> {
    fn new(kind: Kind, write: &'a Write, sql: &'a str, form: Form) -> Self {
        let sep = if write.returning {
            "\n, "
        } else {
            "\nRETURNING "
        };
        Target {
            kind,
            write,
            sql,
            body: sql.trim_end().trim_end_matches(';'),
            reference: write.reference(),
            sep,
            form,
        }
    }

    /// `UPDATE on t`, as refusals name the write.
    fn what(&self) -> String {
        format!(
            "{} on {}",
            self.kind.label().to_uppercase(),
            self.write.table
        )
    }

    /// The rewrite `text` (ending in its `extra` capture columns, placed as `images` says),
    /// with the transaction's id appended as one more ([`TXID_COLUMN`]).
    fn rewritten(&self, text: String, extra: usize, images: Images, pre_read: bool) -> Rewritten {
        let shape = Arc::new(Shape {
            kind: self.kind,
            table: self.write.table.clone(),
            extra: extra + 1,
            old_at: images.old_at,
            new_at: images.new_at,
            oid_at: images.oid_at,
            client_returning: self.write.returning,
            pre_read,
            updated_at: images.updated_at,
            wrapper: None,
            read_after: None,
            cascade: None,
            txid_at: Some(extra),
        });
        Rewritten::returning(text + TXID_COLUMN, shape)
    }

    /// The row's image and its `tableoid`, as appended columns.
    fn image(&self) -> String {
        let target = &self.reference;
        format!(
            "{}, {target}.tableoid",
            self.form.row(&format!("{target}.*"))
        )
    }

    /// PostgreSQL 18+: `RETURNING old`/`new` and the tableoid.
    fn pg18(&self) -> Rewritten {
        let (form, target) = (self.form, &self.reference);
        let cols = if self.write.returning {
            // The client's `RETURNING WITH (OLD AS o, …)` renames the rows.
            let (old, new) = crate::statement::pg18_syntax::returning_aliases(self.body);
            format!("{}, {}, {target}.tableoid", form.row(&old), form.row(&new))
        } else {
            format!(
                "WITH (OLD AS __hs_old, NEW AS __hs_new) {}, {}, {target}.tableoid",
                form.row("__hs_old"),
                form.row("__hs_new")
            )
        };
        let images = Images::at(Some(0), Some(1), 2);
        self.rewritten(format!("{}{}{cols}", self.body, self.sep), 3, images, false)
    }

    /// The one image RETURNING gives (the new row of an INSERT, the old one of a DELETE).
    fn returned(&self, new_at: Option<usize>, old_at: Option<usize>) -> Rewritten {
        let text = format!("{}{}{}", self.body, self.sep, self.image());
        self.rewritten(text, 2, Images::at(old_at, new_at, 1), false)
    }

    /// An UPDATE before PostgreSQL 18: the WHERE store (one scan of the text on the common
    /// path); else a SET expression stores (FROM lists, subqueries, WHERE CURRENT OF); else
    /// the locking pre-read.
    fn update(&self) -> Result<Rewritten, Refusal> {
        let stored = update_stored(self.body, &self.reference);
        if stored.is_none() && where_current_of(self.body) {
            return Err(Refusal::Unsupported {
                what: format!("{} WHERE CURRENT OF whose SET assigns only literals, parameters, DEFAULT or row constructors (give one a type, e.g. `col = 'x'::text`)", self.what()),
            });
        }
        if let Some((body, inserts)) = stored {
            // Every row an UPDATE returns was updated: its before image must be there.
            let text = format!(
                "{body}{}{}, {}, set_config('{BEFORE_IMAGE}', '', true), true",
                self.sep,
                self.image(),
                stored_before(self.form)
            );
            let images = Images::at(Some(2), Some(0), 1).updated(4);
            return Ok(Rewritten {
                inserts,
                ..self.rewritten(text, 5, images, false)
            });
        }
        // FOR UPDATE OF takes the alias or the bare name (PostgreSQL refuses a qualified
        // one; the UPDATE itself refuses two FROM items of the same name).
        let lock = match self.write.alias.as_str() {
            "" => quote(&self.write.table.name),
            alias => quote(alias),
        };
        let pre = pre_read_for_update_mapped(self.sql, &self.reference, &lock, self.form)
            .ok_or_else(|| Refusal::Unsupported { what: self.what() })?;
        let text = format!("{}{}{}", self.body, self.sep, self.image());
        Ok(Rewritten {
            pre_read: Some(pre.text),
            pre_read_map: pre.map,
            ..self.rewritten(text, 2, Images::at(None, Some(0), 1), true)
        })
    }

    /// `INSERT … ON CONFLICT DO UPDATE` before PostgreSQL 18: the before image of the row ON
    /// CONFLICT updates is taken where the statement itself sees it — in the DO UPDATE's
    /// WHERE, on the row it has locked (see `upsert_capturing_before`) — and read back in the
    /// same row's RETURNING.
    fn upsert(&self) -> Result<Rewritten, Refusal> {
        let (body, inserts) = upsert_capturing_before(self.body, self.write)?;
        let (sep, image) = (self.sep, self.image());
        let before = stored_before(self.form);
        let clear = format!("set_config('{BEFORE_IMAGE}', '', true)");
        if self.write.partitioned {
            // Rows routed into partitions carry no xmax: the setting, emptied after each
            // row, is what tells an updated row from an inserted one.
            let text = format!("{body}{sep}{image}, {before}, {clear}");
            return Ok(Rewritten {
                inserts,
                ..self.rewritten(text, 4, Images::at(Some(2), Some(0), 1), false)
            });
        }
        // `xmax <> 0`: ON CONFLICT updated the row (then its before image must be there).
        let updated = format!("({}.xmax::text <> '0')", self.reference);
        let text = format!(
            "{body}{sep}{image}, CASE WHEN {updated} THEN {before} END, {clear}, {updated}"
        );
        let images = Images::at(Some(2), Some(0), 1).updated(4);
        Ok(Rewritten {
            inserts,
            ..self.rewritten(text, 5, images, false)
        })
    }
}

/// Where the images are among the appended columns (`Shape`'s indexes).
#[derive(Clone, Copy)]
struct Images {
    old_at: Option<usize>,
    new_at: Option<usize>,
    oid_at: usize,
    updated_at: Option<usize>,
}

impl Images {
    fn at(old_at: Option<usize>, new_at: Option<usize>, oid_at: usize) -> Self {
        Images {
            old_at,
            new_at,
            oid_at,
            updated_at: None,
        }
    }

    /// With the column that says the row was updated (its before image must be there).
    fn updated(self, at: usize) -> Self {
        Images {
            updated_at: Some(at),
            ..self
        }
    }
}

/// The transaction-local setting that carries a row's before image from where the statement
/// reads the row (an UPDATE's WHERE, an upsert's DO UPDATE WHERE) to the same row's RETURNING
/// (PostgreSQL < 18).
pub(crate) const BEFORE_IMAGE: &str = "hindsight.before_image";

/// Before PostgreSQL 18, `INSERT … ON CONFLICT … DO UPDATE` (statement `body`, without a
/// trailing `;`) with the before image of each row it updates captured: its DO UPDATE's WHERE
/// — evaluated on the existing row once ON CONFLICT has locked it, the version the update
/// replaces (a concurrent update committed since the statement's snapshot included) — stores
/// `to_jsonb(existing)` in a transaction-local setting, which the same row's RETURNING reads
/// and empties. A WHERE of the client's stays the condition, evaluated first (`CASE`): a row
/// it rejects is not updated and stores nothing. `write`: the statement's target. With the
/// text, the byte ranges hindsight inserted into it.
pub(crate) fn upsert_capturing_before(
    body: &str,
    write: &crate::statement::analysis::Write,
) -> Result<(String, Vec<Added>), Refusal> {
    let what = format!("UPSERT on {}", write.table);
    if write.alias.is_empty() && write.table.schema.is_empty() && write.table.name == "excluded" {
        // Its DO UPDATE clauses cannot name the existing row: `excluded` is the proposed one.
        return Err(Refusal::Unsupported {
            what: format!("{what} without an alias or a schema (the DO UPDATE cannot name the existing row of a table called excluded: write `INSERT INTO excluded AS t …`)"),
        });
    }
    edit_do_update(body, &write.reference()).ok_or(Refusal::Unsupported {
        what: format!("{what} (its DO UPDATE clause was not found)"),
    })
}

/// `upsert_capturing_before`'s text surgery; `existing` names the target. `None` if the DO
/// UPDATE clause is not found.
fn edit_do_update(body: &str, existing: &str) -> Option<(String, Vec<Added>)> {
    use pg_query::protobuf::Token as T;
    let tokens = crate::statement::parser::tokens(body).ok()?;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let mut depth = 0i32;
    let (mut do_update, mut wher, mut returning) = (None, None, None);
    for (i, t) in tokens.iter().enumerate() {
        match kind(i) {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => depth -= 1,
            Some(T::Do) if depth == 0 && kind(i + 1) == Some(T::Update) => do_update = Some(i),
            Some(T::Where) if depth == 0 && do_update.is_some() && wher.is_none() => {
                wher = Some(t.end as usize)
            }
            Some(T::Returning) if depth == 0 && do_update.is_some() => {
                returning = Some(t.start as usize);
                break;
            }
            _ => {}
        }
    }
    do_update?;
    let end = returning.unwrap_or(body.len());
    Some(store_in_where(body, wher, end, existing, Guard::Case))
}

/// How the before image's store joins a WHERE the client wrote.
#[derive(Clone, Copy)]
enum Guard {
    /// `(client's) AND store`: the planner may order the two; the scan's last store is still
    /// the row it hands on (`update_capturing_before`).
    And,
    /// `CASE WHEN (client's) THEN store ELSE false END`: the store only for a row the client's
    /// condition accepts (`upsert_capturing_before`).
    Case,
}

/// `body` with the condition that stores each row's before image (`to_jsonb(existing)` into
/// the setting `BEFORE_IMAGE`) added to the WHERE whose keyword ends at byte `wher`, or as a
/// WHERE of its own before byte `end` (RETURNING, or the end of the text); with the byte ranges
/// inserted. Newlines close a `--` comment the client's text may end with.
fn store_in_where(
    body: &str,
    wher: Option<usize>,
    end: usize,
    existing: &str,
    guard: Guard,
) -> (String, Vec<Added>) {
    let store =
        format!("set_config('{BEFORE_IMAGE}', to_jsonb({existing}.*)::text, true) IS NOT NULL");
    let (open, close) = match (wher, guard) {
        (None, _) => (String::new(), format!("\nWHERE {store}\n")),
        (Some(_), Guard::And) => (" (".to_string(), format!("\n) AND {store}\n")),
        (Some(_), Guard::Case) => (
            " CASE WHEN (".to_string(),
            format!("\n) THEN {store} ELSE false END\n"),
        ),
    };
    let w = wher.unwrap_or(end);
    let mut inserts = Vec::new();
    if !open.is_empty() {
        inserts.push(Added {
            at: w,
            len: open.len(),
        });
    }
    inserts.push(Added {
        at: end + open.len(),
        len: close.len(),
    });
    (
        format!(
            "{}{open}{}{close}{}",
            &body[..w],
            &body[w..end],
            &body[end..]
        ),
        inserts,
    )
}

/// The relations of a TRUNCATE as `(reference, only)`, and whether it CASCADEs.
fn truncate_targets(sql: &str) -> Option<(Vec<(String, bool)>, bool)> {
    let parsed = crate::statement::parser::parse(sql).ok()?;
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
    form: Form,
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
        .map(|rel| {
            format!(
                "SELECT {}, t.tableoid FROM {} t",
                form.row("t.*"),
                from(rel)
            )
        })
        .collect();
    let counted: Vec<String> = rels
        .iter()
        .map(|rel| format!("(SELECT 1 FROM {} LIMIT {limit} + 1)", from(rel)))
        .collect();
    let names: Vec<&str> = rels.iter().map(|(r, _)| r.as_str()).collect();
    Ok(Rewritten {
        text: sql.trim_end().trim_end_matches(';').to_string(),
        shape: Arc::new(Shape::statement(kind, table.clone())),
        pre_read: Some(union_all(&images)),
        post_read: None,
        guard: Some(LimitGuard {
            sql: format!(
                "SELECT CASE WHEN count(*) > {limit} THEN 1 / (count(*) * 0) ELSE 0 END FROM ({}) s",
                union_all(&counted)
            ),
            message: format!(
                "hindsight: TRUNCATE of {} would remove more than {limit} rows (capture.truncate_row_limit), too many to record their before images; it was not run",
                names.join(", ")
            ),
        }),
        inserts: Vec::new(),
        pre_read_map: Vec::new(),
    })
}

/// `arms` joined by UNION ALL as a balanced tree of parenthesised halves: the nesting grows with
/// log2 of the arms, not with their number. Regression (rewrite fuzz target): a TRUNCATE of
/// about 70 tables made a left-deep chain that hindsight's own parser could not read back
/// (pg_query's decoder stops at 100 levels of nesting).
fn union_all(arms: &[String]) -> String {
    match arms {
        [] => String::new(),
        [one] => one.clone(),
        _ => {
            let (left, right) = arms.split_at(arms.len() / 2);
            format!("({}) UNION ALL ({})", union_all(left), union_all(right))
        }
    }
}

pub use crate::statement::quoting::{literal, quote};

/// The first statement's node of a parse.
pub fn first_node(parsed: &pg_query::protobuf::ParseResult) -> Option<&N> {
    parsed.stmts.first()?.stmt.as_ref()?.node.as_ref()
}

/// Before PostgreSQL 18, an UPDATE of one table (no FROM, no subquery in its WHERE, not WHERE
/// CURRENT OF) with each row's before image captured in the statement itself: `WHERE (…) AND
/// set_config(…, to_jsonb(existing), true) IS NOT NULL` stores the row as the UPDATE reads it,
/// and the same row's RETURNING reads and empties the setting. The row's quals are evaluated by
/// the scan that hands the row on, right before the update (and again, on the newer version,
/// after a concurrent update): whatever order the planner gives the two conditions, the last
/// row stored is the row updated. A FROM list or a subquery (pulled up into a join) could let a
/// join evaluate many rows' quals before the first update: those keep the locking pre-read.
/// `existing` names the target. With the text, the byte ranges hindsight inserted into it.
fn update_capturing_before(body: &str, existing: &str) -> Option<(String, Vec<Added>)> {
    use pg_query::protobuf::Token as T;
    let tokens = crate::statement::parser::tokens(body).ok()?;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let mut depth = 0i32;
    let (mut update, mut set, mut wher, mut returning) = (false, false, None, None);
    for (i, t) in tokens.iter().enumerate() {
        match kind(i) {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => depth -= 1,
            Some(T::Update) if depth == 0 && !update => update = true,
            Some(T::Set) if depth == 0 && update => set = true,
            // `IS [NOT] DISTINCT FROM` is an operator, not the FROM clause.
            Some(T::From) if depth == 0 && set && i > 0 && kind(i - 1) != Some(T::Distinct) => {
                return None
            }
            Some(T::Where) if depth == 0 && set && wher.is_none() => {
                if kind(i + 1) == Some(T::CurrentP) {
                    return None;
                }
                wher = Some(i);
            }
            Some(T::Returning) if depth == 0 && set => {
                returning = Some(t.start as usize);
                break;
            }
            // A subquery in the WHERE.
            Some(T::Select | T::Values | T::Table) if wher.is_some() => return None,
            _ => {}
        }
    }
    if !set {
        return None;
    }
    let end = returning.unwrap_or(body.len());
    let wher = wher.map(|i: usize| tokens[i].end as usize);
    Some(store_in_where(body, wher, end, existing, Guard::And))
}

/// Before PostgreSQL 18, an UPDATE with each row's before image stored by the statement itself:
/// in its WHERE when it has no FROM list or subquery (`update_capturing_before`), else in one
/// of its SET expressions (`set_capturing_before`). `None`: neither applies (then the locking
/// pre-read, or a refusal for WHERE CURRENT OF). With the text, the byte ranges inserted.
pub(crate) fn update_stored(body: &str, existing: &str) -> Option<(String, Vec<Added>)> {
    update_capturing_before(body, existing).or_else(|| set_capturing_before(body, existing))
}

/// Whether an UPDATE is `… WHERE CURRENT OF cursor` (which a pre-read cannot repeat).
fn where_current_of(body: &str) -> bool {
    use pg_query::protobuf::Token as T;
    let Ok(tokens) = crate::statement::parser::tokens(body) else {
        return false;
    };
    let kinds: Vec<_> = tokens.iter().map(|t| T::try_from(t.token).ok()).collect();
    kinds
        .windows(3)
        .any(|w| w == [Some(T::Where), Some(T::CurrentP), Some(T::Of)])
}

/// Before PostgreSQL 18, an UPDATE (one the WHERE store does not fit: a FROM list, a subquery,
/// WHERE CURRENT OF) with each row's before image stored by one of its SET expressions: `col =
/// CASE WHEN set_config(…, to_jsonb(existing), true) IS NOT NULL THEN (expr) END`.
///
/// Why this is exact: the SET expressions are the top of the UPDATE's plan, projected as the
/// plan hands each row to the update — after any join, never buffered in between — and again
/// on the newer version after a concurrent update. A target row a join matches twice is stored
/// twice but updated once; the second store is overwritten by the next row's before any
/// RETURNING reads it. The same row's RETURNING reads and empties the setting.
///
/// An expression whose type comes from its column is not wrapped — `CASE` would type it
/// differently: a bare string literal, NULL, a parameter, DEFAULT, a row constructor (`ROW(…)`,
/// `(a, b)`) — nor a `(a, b) = …` list. `None` if no assignment is left.
fn set_capturing_before(body: &str, existing: &str) -> Option<(String, Vec<Added>)> {
    use pg_query::protobuf::Token as T;
    let tokens = crate::statement::parser::tokens(body).ok()?;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let (a, b) = set_assignments(&tokens).into_iter().find_map(|(a, b)| {
        if kind(a) == Some(T::Ascii40) {
            return None; // (a, b) = …
        }
        let eq = (a..b).find(|&i| kind(i) == Some(T::Ascii61))?;
        (eq + 1 < b && !typed_by_column(&tokens, eq + 1, b)).then_some((eq + 1, b))
    })?;
    let (from, to) = (tokens[a].start as usize, tokens[b - 1].end as usize);
    let open = format!(
        "CASE WHEN set_config('{BEFORE_IMAGE}', to_jsonb({existing}.*)::text, true) IS NOT NULL THEN ("
    );
    let close = ") END";
    Some((
        format!(
            "{}{open}{}{close}{}",
            &body[..from],
            &body[from..to],
            &body[to..]
        ),
        vec![
            Added {
                at: from,
                len: open.len(),
            },
            Added {
                at: to + open.len(),
                len: close.len(),
            },
        ],
    ))
}

/// The token ranges (first, past the last) of an UPDATE's top-level SET assignments.
fn set_assignments(tokens: &[pg_query::protobuf::ScanToken]) -> Vec<(usize, usize)> {
    use pg_query::protobuf::Token as T;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let mut depth = 0i32;
    let (mut update, mut set) = (false, false);
    let mut assignments: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    for i in 0..tokens.len() {
        let k = kind(i);
        match k {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => depth -= 1,
            _ => {}
        }
        if depth != 0 || matches!(k, Some(T::Ascii41 | T::Ascii93)) {
            continue;
        }
        match k {
            Some(T::Update) if !update => update = true,
            Some(T::Set) if update && !set => {
                set = true;
                start = i + 1;
            }
            Some(T::Ascii44) if set && start > 0 => {
                assignments.push((start, i));
                start = i + 1;
            }
            // `IS [NOT] DISTINCT FROM` is an operator, not the FROM clause.
            Some(T::From) if set && start > 0 && kind(i - 1) == Some(T::Distinct) => {}
            Some(T::From | T::Where | T::Returning) if set && start > 0 => {
                assignments.push((start, i));
                start = 0;
            }
            _ => {}
        }
    }
    if set && start > 0 {
        assignments.push((start, tokens.len()));
    }
    assignments
}

/// Whether the expression in tokens `a..b` takes its type from the column it is assigned to
/// (then `CASE` would type it differently): a bare literal, NULL, a parameter, DEFAULT, or a
/// row constructor.
fn typed_by_column(tokens: &[pg_query::protobuf::ScanToken], a: usize, b: usize) -> bool {
    use pg_query::protobuf::Token as T;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let (mut a, mut b) = (a, b);
    // Enclosing parentheses; what they held decides.
    while b > a + 1 && kind(a) == Some(T::Ascii40) && closing(tokens, a) == Some(b - 1) {
        a += 1;
        b -= 1;
    }
    let literal = b == a + 1
        && matches!(
            kind(a),
            Some(T::Sconst | T::Usconst | T::Bconst | T::Xconst | T::NullP | T::Param | T::Default)
        );
    let mut level = 0i32;
    let row = (a..b).any(|i| match kind(i) {
        Some(T::Row) => true,
        Some(T::Ascii40 | T::Ascii91) => {
            level += 1;
            false
        }
        Some(T::Ascii41 | T::Ascii93) => {
            level -= 1;
            false
        }
        Some(T::Ascii44) => level == 0,
        _ => false,
    });
    literal || row
}

/// Index of the token closing the parenthesis or bracket at `open`.
pub(crate) fn closing(tokens: &[pg_query::protobuf::ScanToken], open: usize) -> Option<usize> {
    use pg_query::protobuf::Token as T;
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match T::try_from(t.token).ok() {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `[WITH …] SELECT to_jsonb(t.*), t.tableoid FROM t [, from…] [WHERE …] FOR UPDATE OF t`:
/// the UPDATE's own WITH, target, FROM and WHERE text, cut at the positions of its top-level
/// keywords as PostgreSQL's scanner finds them. The client's text is kept as written (no
/// deparse: nothing is re-spelled, and no parse tree has to be rebuilt for every UPDATE).
pub(crate) fn pre_read_for_update(
    sql: &str,
    target: &str,
    lock: &str,
    form: Form,
) -> Option<String> {
    pre_read_for_update_mapped(sql, target, lock, form).map(|b| b.text)
}

/// A statement built from hindsight's text and pieces of the client's, with where each piece
/// came from (`Rewritten::pre_read_map`).
#[derive(Default)]
pub(crate) struct Spliced {
    pub text: String,
    pub map: Vec<ClientPiece>,
}

impl Spliced {
    /// hindsight's own text.
    pub fn own(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// This statement's map re-expressed through `outer`, when it was built from `outer.text`
    /// rather than the client's: each piece is cut where it crosses `outer`'s pieces, and
    /// what came from `outer`'s own text is left out.
    pub fn through(mut self, outer: &Spliced) -> Spliced {
        let mut map = Vec::new();
        for p in &self.map {
            for q in &outer.map {
                let start = p.client_at.max(q.at);
                let end = (p.client_at + p.len).min(q.at + q.len);
                if start < end {
                    map.push(ClientPiece {
                        at: p.at + (start - p.client_at),
                        len: end - start,
                        client_at: q.client_at + (start - q.at),
                    });
                }
            }
        }
        self.map = map;
        self
    }

    /// The client's text `client[range]`, with surrounding whitespace left out.
    pub fn client(&mut self, client: &str, range: std::ops::Range<usize>) -> &mut Self {
        let piece = &client[range.clone()];
        let lead = piece.len() - piece.trim_start().len();
        let piece = piece.trim();
        self.map.push(ClientPiece {
            at: self.text.len(),
            len: piece.len(),
            client_at: range.start + lead,
        });
        self.text.push_str(piece);
        self
    }
}

/// [`pre_read_for_update`] with where each piece of the client's text went.
pub(crate) fn pre_read_for_update_mapped(
    sql: &str,
    target: &str,
    lock: &str,
    form: Form,
) -> Option<Spliced> {
    use pg_query::protobuf::Token as T;
    let tokens = crate::statement::parser::tokens(sql).ok()?;
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
    let mut out = Spliced::default();
    // The WITH list (or comments) in front stays where it was.
    out.map.push(ClientPiece {
        at: 0,
        len: update.0,
        client_at: 0,
    });
    out.own(&sql[..update.0])
        .own(&format!(
            "SELECT {}, {target}.tableoid FROM ",
            form.row(&format!("{target}.*"))
        ))
        .client(sql, update.1..set.0);
    if let Some((_, f_end)) = from {
        out.own(",\n").client(sql, f_end..end(f_end));
    }
    if let Some((w, w_end)) = wher {
        out.own("\n").client(sql, w..end(w_end));
    }
    // A newline first: a trailing `--` comment would otherwise swallow the locking clause.
    out.own(&format!("\nFOR UPDATE OF {lock}"));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(inserts: &[Added]) -> Vec<(usize, usize)> {
        inserts.iter().map(|i| (i.at, i.len)).collect()
    }
    use crate::statement::analyze;

    fn rw(sql: &str, major: u32) -> Result<Option<Rewritten>, Refusal> {
        let v = analyze(sql).unwrap();
        rewrite(sql, &v[0], major, 1000, &[], Form::Jsonb)
    }

    /// Regression (found by the rewrite fuzz target): the pre-read and guard of a TRUNCATE of
    /// many tables were UNION ALL chains too deep for hindsight's own parser to read back.
    #[test]
    fn truncate_of_many_tables_reads_them_in_a_shallow_union() {
        let tables: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
        let sql = format!("TRUNCATE {}", tables.join(", "));
        let r = rw(&sql, 15).unwrap().unwrap();
        let pre = r.pre_read.as_deref().unwrap();
        let guard = &r.guard.as_ref().unwrap().sql;
        for text in [pre, guard.as_str()] {
            let parsed = crate::statement::parser::parse(text);
            assert!(parsed.is_ok(), "{:?}: {text:.200}", parsed.err());
        }
        for t in &tables {
            assert!(
                pre.contains(&format!("FROM {} t)", quote(t))),
                "{t} read: {pre:.300}"
            );
        }
    }

    #[test]
    fn pg18_appends_old_and_new() {
        let r = rw("UPDATE brieff SET bfso = NULL WHERE bfkey < 19", 18)
            .unwrap()
            .unwrap();
        assert!(r.text.ends_with("RETURNING WITH (OLD AS __hs_old, NEW AS __hs_new) to_jsonb(__hs_old), to_jsonb(__hs_new), \"brieff\".tableoid, pg_current_xact_id()::text"), "{}", r.text);
        assert!(!r.shape.client_returning);
        let r = rw(
            "DELETE FROM public.t x WHERE a = 1 RETURNING id -- trailing",
            18,
        )
        .unwrap()
        .unwrap();
        assert!(
            r.text
                .ends_with("-- trailing\n, to_jsonb(old), to_jsonb(new), \"x\".tableoid, pg_current_xact_id()::text"),
            "{}",
            r.text
        );
        assert!(r.shape.client_returning);
    }

    #[test]
    fn non_utf8_sessions_get_images_as_hex_of_utf8() {
        let sql = "UPDATE t SET v = v || 'x' WHERE id = 1";
        let v = analyze(sql).unwrap();
        let r = rewrite(sql, &v[0], 15, 1000, &[], Form::Hex)
            .unwrap()
            .unwrap();
        let hex = |e: &str| {
            format!("pg_catalog.encode(pg_catalog.convert_to(({e})::text, CASE WHEN pg_catalog.getdatabaseencoding() = 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END), 'hex')")
        };
        let after = hex("to_jsonb(\"t\".*)");
        let before = hex("NULLIF(current_setting('hindsight.before_image', true), '')");
        assert!(
            r.text
                .contains(&format!("RETURNING {after}, \"t\".tableoid, {before}, ")),
            "{}",
            r.text
        );
        // The stored image stays in the server as text; only what is read back is hex.
        assert!(r
            .text
            .contains("set_config('hindsight.before_image', to_jsonb(\"t\".*)::text, true)"));
        let r = rewrite(sql, &v[0], 18, 1000, &[], Form::Hex)
            .unwrap()
            .unwrap();
        assert!(r.text.contains(&hex("to_jsonb(__hs_old)")), "{}", r.text);
    }

    #[test]
    fn older_servers_use_returning_and_a_locking_pre_read() {
        let r = rw("INSERT INTO public.t (a) VALUES (1)", 15)
            .unwrap()
            .unwrap();
        assert!(
            r.text
                .ends_with("RETURNING to_jsonb(\"public\".\"t\".*), \"public\".\"t\".tableoid, pg_current_xact_id()::text"),
            "{}",
            r.text
        );
        assert_eq!((r.shape.old_at, r.shape.new_at), (None, Some(0)));
        // A FROM list whose SET assigns only a literal: the locking pre-read.
        let r = rw(
            "UPDATE t SET a = 'x' FROM u WHERE t.id = u.id AND u.flag",
            15,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            r.pre_read.unwrap(),
            "SELECT to_jsonb(\"t\".*), \"t\".tableoid FROM t,\nu\nWHERE t.id = u.id AND u.flag\nFOR UPDATE OF \"t\""
        );
        // MERGE: a pre-read and a post-read around it (`merge`).
        let r = rw(
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            15,
        )
        .unwrap()
        .unwrap();
        assert!(
            r.pre_read.is_some()
                && r.post_read.is_some()
                && r.shape.read_after == Some(ReadAfter::Merge)
        );
    }

    #[test]
    fn where_current_of_stores_the_before_image_in_a_set_expression() {
        let r = rw(
            "UPDATE t SET a = 'x', b = (b || 'y'), c = $1 WHERE CURRENT OF cur RETURNING *",
            15,
        )
        .unwrap()
        .unwrap();
        assert!(
            r.text.starts_with("UPDATE t SET a = 'x', b = CASE WHEN set_config('hindsight.before_image', to_jsonb(\"t\".*)::text, true) IS NOT NULL THEN ((b || 'y')) END, c = $1 WHERE CURRENT OF cur"),
            "{}",
            r.text
        );
        assert_eq!(r.pre_read, None);
        assert_eq!(r.shape.updated_at, Some(4));
        // Only literals and parameters: nothing can be wrapped without changing their type.
        assert!(set_capturing_before(
            "UPDATE t SET a = ('x'), c = $1, d = DEFAULT, e = ROW(1, 'a'), f = ((1, 'b')) WHERE CURRENT OF cur",
            "t"
        )
        .is_none());
        assert!(matches!(
            rw("UPDATE t SET a = ('x') WHERE CURRENT OF cur", 15),
            Err(Refusal::Unsupported { .. })
        ));
    }

    #[test]
    fn older_servers_store_an_upserts_before_image_in_its_do_update_where() {
        let r = rw(
            "INSERT INTO s.t AS x (id, v) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET v = excluded.v -- c",
            15,
        )
        .unwrap()
        .unwrap();
        let store =
            "set_config('hindsight.before_image', to_jsonb(\"x\".*)::text, true) IS NOT NULL";
        assert_eq!(
            r.text,
            format!("INSERT INTO s.t AS x (id, v) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET v = excluded.v -- c\nWHERE {store}\n\nRETURNING to_jsonb(\"x\".*), \"x\".tableoid, CASE WHEN (\"x\".xmax::text <> '0') THEN NULLIF(current_setting('hindsight.before_image', true), '')::jsonb END, set_config('hindsight.before_image', '', true), (\"x\".xmax::text <> '0'), pg_current_xact_id()::text")
        );
        assert_eq!(
            (
                r.shape.new_at,
                r.shape.oid_at,
                r.shape.old_at,
                r.shape.updated_at,
                r.shape.extra
            ),
            (Some(0), 1, Some(2), Some(4), 6)
        );
        // The client's WHERE stays the condition; its RETURNING stays first. The inference
        // list's WHERE and the SET list's subqueries are not the DO UPDATE's WHERE.
        let r = rw(
            "INSERT INTO t VALUES (1) ON CONFLICT (lower(v)) WHERE a > 0 DO UPDATE SET v = (SELECT v FROM u WHERE u.k = 1) WHERE t.v <> 'z' RETURNING v",
            15,
        )
        .unwrap()
        .unwrap();
        let store =
            "set_config('hindsight.before_image', to_jsonb(\"t\".*)::text, true) IS NOT NULL";
        assert!(
            r.text.starts_with(&format!("INSERT INTO t VALUES (1) ON CONFLICT (lower(v)) WHERE a > 0 DO UPDATE SET v = (SELECT v FROM u WHERE u.k = 1) WHERE CASE WHEN ( t.v <> 'z' \n) THEN {store} ELSE false END\nRETURNING v\n, to_jsonb(")),
            "{}",
            r.text
        );
        let r = rw("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", 15)
            .unwrap()
            .unwrap();
        assert_eq!((r.shape.extra, r.shape.updated_at), (3, None));
        // A constraint name is as good as any conflict target.
        assert!(rw(
            "INSERT INTO t VALUES (1) ON CONFLICT ON CONSTRAINT t_pkey DO UPDATE SET v = 1",
            15
        )
        .unwrap()
        .is_some());
    }

    /// The locking pre-read of an UPDATE (what one with a FROM list or a subquery gets).
    fn pre_read(sql: &str) -> String {
        let v = analyze(sql).unwrap();
        let w = &v[0].analysis.writes[0];
        let lock = match w.alias.as_str() {
            "" => quote(&w.table.name),
            alias => quote(alias),
        };
        pre_read_for_update(sql, &w.reference(), &lock, Form::Jsonb).unwrap()
    }

    #[test]
    fn older_servers_store_an_updates_before_image_in_its_where() {
        let store = |t: &str| {
            format!("set_config('hindsight.before_image', to_jsonb({t}.*)::text, true) IS NOT NULL")
        };
        let tail = |t: &str| {
            format!("RETURNING to_jsonb({t}.*), {t}.tableoid, NULLIF(current_setting('hindsight.before_image', true), '')::jsonb, set_config('hindsight.before_image', '', true), true, pg_current_xact_id()::text")
        };
        let r = rw(
            "UPDATE t SET a = a + 1 WHERE id = $1 OR b IS DISTINCT FROM 2 -- c",
            15,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            r.text,
            format!("UPDATE t SET a = a + 1 WHERE ( id = $1 OR b IS DISTINCT FROM 2 -- c\n) AND {}\n\n{}", store("\"t\""), tail("\"t\""))
        );
        assert_eq!(r.pre_read, None);
        assert_eq!(spans(&r.inserts), vec![(28, 2), (67, 85)]);
        assert_eq!(
            (r.shape.old_at, r.shape.updated_at, r.shape.extra),
            (Some(2), Some(4), 6)
        );
        // No WHERE; the client's RETURNING first; a subquery in the SET list is no join.
        let r = rw(
            "UPDATE s.t AS x SET a = (SELECT max(v) FROM u) RETURNING a",
            15,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            r.text,
            format!(
                "UPDATE s.t AS x SET a = (SELECT max(v) FROM u) \nWHERE {}\nRETURNING a\n, {}",
                store("\"x\""),
                &tail("\"x\"")["RETURNING ".len()..]
            )
        );
        // FROM, a subquery in the WHERE: a SET expression stores (a join may read many rows
        // before the first update), the last one with a type of its own.
        let r = rw(
            "UPDATE t SET a = $1, b = u.b || 'x' FROM u WHERE t.id = u.id",
            15,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            r.text,
            format!("UPDATE t SET a = $1, b = CASE WHEN {} THEN (u.b || 'x') END FROM u WHERE t.id = u.id\n{}", store("\"t\""), tail("\"t\""))
        );
        assert_eq!((r.pre_read, r.shape.updated_at), (None, Some(4)));
        assert_eq!(spans(&r.inserts), vec![(25, 94), (129, 5)]);
        let r = rw("UPDATE t SET a = a + 1 WHERE id IN (SELECT id FROM u)", 15)
            .unwrap()
            .unwrap();
        assert!(
            r.text.starts_with("UPDATE t SET a = CASE WHEN"),
            "{}",
            r.text
        );
        // Nothing typed of its own to wrap: the locking pre-read.
        for sql in [
            "UPDATE t SET a = 'x' FROM u WHERE t.id = u.id",
            "UPDATE t SET a = $1 WHERE id IN (SELECT id FROM u)",
            "UPDATE t SET a = (1, 'x') WHERE EXISTS (VALUES (1))",
        ] {
            assert!(rw(sql, 15).unwrap().unwrap().pre_read.is_some(), "{sql}");
        }
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
