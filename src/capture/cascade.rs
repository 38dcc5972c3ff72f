//! Rows that foreign-key cascades change (`ON DELETE` / `ON UPDATE` `CASCADE`, `SET NULL`,
//! `SET DEFAULT`), captured with exact before and after images, in the client's transaction.
//!
//! The catalog describes every cascade: which foreign keys reference a table, their columns
//! and their actions (`Graph`, read per database and cached like the writing functions).
//! For a DELETE, or an UPDATE of referenced columns, [`plan`] follows them level by level (a
//! CASCADE'd row's own referencing rows are reached in turn, and so are the rows referencing
//! columns a SET NULL / SET DEFAULT / update CASCADE changes; a self-referencing table is
//! followed up to [`MAX_DEPTH`] levels) and [`reads`] builds two statements around the
//! client's:
//!
//! - before it, a read that locks (`FOR UPDATE`) and images every row each cascade will reach,
//!   built from the statement's own target, USING / FROM and WHERE, one CTE per level, kept in
//!   the server in a transaction-local setting with the rows' `tableoid` and `ctid` — and the
//!   number of rows the transaction has deleted or updated so far in each table the cascades
//!   reach (`pg_stat_get_xact_tuples_deleted/updated`, which count what the cascades do);
//! - after it, a read that follows each row to its latest version (`currtid2`): gone (the
//!   cascade deleted it) or updated, with its after image (rows the statement left alone — an
//!   UPDATE that did not change their parent's key — are left out); and, last, how many rows
//!   each of those tables lost or changed during the statement.
//!
//! [`check`] compares those counts with the rows read (and the statement's own rows in the same
//! table, for a self-referencing one): a row the read did not see — inserted concurrently and
//! committed while the statement waited, or deeper than [`MAX_DEPTH`] — fails the capture, so
//! its transaction cannot commit (HS001), instead of committing a change without its event.
//! When a table the cascades reach (or the target) has user triggers, whose writes are
//! arbitrary, the counts are not compared and the events keep `side_effects: "uncaptured"`
//! naming them.
//!
//! Statements with reads of their own take the cascades' in: an UPDATE's locking pre-read
//! before PostgreSQL 18 ([`reads_collecting`]), a MERGE's pre-read and post-read before 18
//! (`merge::with_cascades`, from [`reach_ctes`], [`stores`] and [`post_parts`]). A write in a
//! data-modifying WITH statement is read as a statement of its own ([`attach_within`]).
//!
//! Not captured (the events stay marked `side_effects: "uncaptured"`, naming the tables): in a
//! data-modifying WITH statement, the cascades of a write whose rows come from another write,
//! of a second cascading write, and of any write next to an UPDATE's locking pre-read before
//! 18; a MERGE's with PostgreSQL 17 syntax (`RETURNING`, `WHEN NOT MATCHED BY SOURCE`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use thiserror::Error;

use super::functions::MAX_AGE;
use super::image_sql::Form;
use super::rewrite::{literal, quote, ReadAfter, Refusal, Rewritten, Spliced};
use super::txn::Change;
use crate::statement::analysis::Write;
use crate::wire::client_text::{sql_name, ClientEncoding};

/// How many levels of referencing rows a cascade is followed (a self-referencing table: the
/// depth of the tree a DELETE may remove). Deeper rows fail the capture (see [`check`]).
pub const MAX_DEPTH: usize = 8;

/// How many (foreign key, level) steps one statement's cascades may take: a schema whose
/// cascades branch more is refused rather than read with a statement of unbounded size.
pub const MAX_REACHES: usize = 64;

/// The transaction-local setting holding the rows the read before the statement found.
const ROWS: &str = "hindsight.cascade_rows";
/// … and the per-table counts of deleted and updated rows before the statement.
const COUNTS: &str = "hindsight.cascade_counts";

/// Why a cascade cannot be captured, or its capture is wrong.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CascadeError {
    #[error("the foreign keys referencing {table} cascade through more than {MAX_REACHES} (key, level) steps; hindsight refuses rather than read them with an unbounded statement")]
    TooManyReaches { table: String },
    #[error("the catalog's foreign-key row {row} is malformed ({what})")]
    Catalog { row: usize, what: String },
    #[error("{table}: the cascade of this statement deleted or updated {counted} rows, hindsight read {read} (a referencing row inserted concurrently, or a cascade deeper than {MAX_DEPTH} levels); the transaction cannot commit")]
    Unread {
        table: String,
        counted: i64,
        /// The rows read (`n`, or `low to high` when a row reached by several keys could have
        /// counted more than once).
        read: String,
    },
    #[error("a cascade read row is malformed: {0}")]
    Row(String),
}

/// What a foreign key does to the rows referencing a row that goes (or whose key changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// NO ACTION or RESTRICT: the statement fails if rows reference it; nothing changes.
    None,
    Cascade,
    SetNull,
    SetDefault,
}

impl Action {
    /// From `pg_constraint.confdeltype` / `confupdtype`.
    fn from_code(code: &str) -> Self {
        match code {
            "c" => Action::Cascade,
            "n" => Action::SetNull,
            "d" => Action::SetDefault,
            _ => Action::None,
        }
    }
}

/// A foreign key with an action, as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The constraint's name.
    pub name: String,
    pub child_oid: u32,
    /// The referencing table: schema and name, unquoted.
    pub child: (String, String),
    /// Its referencing columns, in the key's order.
    pub child_cols: Vec<String>,
    pub parent_oid: u32,
    /// The referenced table: schema and name, unquoted.
    pub parent: (String, String),
    /// The referenced columns, pairing `child_cols`.
    pub parent_cols: Vec<String>,
    pub on_delete: Action,
    pub on_update: Action,
    /// The referencing table has user triggers.
    pub child_triggers: bool,
    /// Per column pair, the referenced column's collation (quoted, qualified) where it differs
    /// from the referencing column's: the key compares with it, as PostgreSQL's own action
    /// queries do (a nondeterministic one matches more than bytes).
    pub collations: Vec<Option<String>>,
}

/// The foreign keys with an action of one database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    keys: Vec<ForeignKey>,
}

impl Graph {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The catalog query giving a [`Graph`]: every foreign key (as declared, not its clones on
/// partitions) whose delete or update action changes referencing rows.
pub const QUERY: &str = "SELECT f.conname, f.conrelid::int8::text, cn.nspname, c.relname, \
       (SELECT json_agg(a.attname ORDER BY k.i) FROM unnest(f.conkey) WITH ORDINALITY k(n, i) \
          JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.n)::text, \
       f.confrelid::int8::text, pn.nspname, p.relname, \
       (SELECT json_agg(a.attname ORDER BY k.i) FROM unnest(f.confkey) WITH ORDINALITY k(n, i) \
          JOIN pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k.n)::text, \
       f.confdeltype::text, f.confupdtype::text, \
       EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = f.conrelid AND NOT t.tgisinternal)::text, \
       (SELECT json_agg(CASE WHEN pa.attcollation <> ca.attcollation AND pa.attcollation <> 0 \
            THEN (SELECT format('%I.%I', cn2.nspname, co.collname) FROM pg_collation co \
                  JOIN pg_namespace cn2 ON cn2.oid = co.collnamespace WHERE co.oid = pa.attcollation) END \
          ORDER BY k.i) \
        FROM unnest(f.conkey, f.confkey) WITH ORDINALITY k(cn, pn, i) \
        JOIN pg_attribute ca ON ca.attrelid = f.conrelid AND ca.attnum = k.cn \
        JOIN pg_attribute pa ON pa.attrelid = f.confrelid AND pa.attnum = k.pn)::text \
     FROM pg_constraint f \
     JOIN pg_class c ON c.oid = f.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
     JOIN pg_class p ON p.oid = f.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace \
     WHERE f.contype = 'f' AND f.conparentid = 0 \
       AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd')) \
     ORDER BY f.oid";

/// Parse the rows of [`QUERY`] (text values in the session's `encoding`).
pub fn parse(
    rows: &[Vec<Option<Vec<u8>>>],
    encoding: ClientEncoding,
) -> Result<Graph, CascadeError> {
    let mut keys = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let bad = |what: &str| CascadeError::Catalog {
            row: i,
            what: what.to_string(),
        };
        let text = |c: usize| -> Result<String, CascadeError> {
            r.get(c)
                .and_then(|v| v.as_deref())
                .map(|b| sql_name(b, encoding))
                .ok_or_else(|| bad(&format!("column {c} is missing")))
        };
        let oid = |c: usize| -> Result<u32, CascadeError> {
            text(c)?
                .parse()
                .map_err(|_| bad(&format!("column {c} is not an oid")))
        };
        let cols = |c: usize| -> Result<Vec<String>, CascadeError> {
            serde_json::from_str(&text(c)?).map_err(|_| bad(&format!("column {c} is not a list")))
        };
        let key = ForeignKey {
            name: text(0)?,
            child_oid: oid(1)?,
            child: (text(2)?, text(3)?),
            child_cols: cols(4)?,
            parent_oid: oid(5)?,
            parent: (text(6)?, text(7)?),
            parent_cols: cols(8)?,
            on_delete: Action::from_code(&text(9)?),
            on_update: Action::from_code(&text(10)?),
            child_triggers: text(11)? == "true",
            collations: text(12)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        };
        if key.child_cols.len() != key.parent_cols.len() || key.child_cols.is_empty() {
            return Err(bad("the key's columns do not pair"));
        }
        keys.push(key);
    }
    Ok(Graph { keys })
}

struct Entry {
    graph: Arc<Graph>,
    loaded: Instant,
}

/// The graphs of every database the proxy serves, read again after a schema change seen and
/// at least every [`MAX_AGE`] (keys created behind hindsight's back).
#[derive(Default)]
pub struct Graphs {
    by_db: RwLock<HashMap<String, Entry>>,
}

impl Graphs {
    pub fn get(&self, db: &str) -> Option<Arc<Graph>> {
        let map = self.by_db.read().unwrap_or_else(|e| e.into_inner());
        map.get(db)
            .filter(|e| e.loaded.elapsed() < MAX_AGE)
            .map(|e| Arc::clone(&e.graph))
    }

    pub fn put(&self, db: &str, graph: Graph) -> Arc<Graph> {
        let graph = Arc::new(graph);
        let entry = Entry {
            graph: Arc::clone(&graph),
            loaded: Instant::now(),
        };
        self.by_db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(db.to_string(), entry);
        graph
    }

    /// A schema change in `db`: read the graph again before it is next needed.
    pub fn invalidate(&self, db: &str) {
        self.by_db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
    }
}

/// One step of a cascade: the rows of `key`'s referencing table that reference rows reached
/// by `from` (`None`: the rows the statement itself deletes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub key: ForeignKey,
    pub from: Option<usize>,
    pub action: Action,
    pub depth: usize,
    /// What the action does to the rows it reaches.
    pub effect: Effect,
}

/// What a reach's action does to a row it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// CASCADE of a delete.
    Deletes,
    /// SET NULL, SET DEFAULT, or CASCADE of a key update: one update of the row per key that
    /// reaches it (PostgreSQL runs each key's action on its own).
    Updates,
}

/// The cascades a statement sets off, as read before and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub reaches: Vec<Reach>,
    /// Whether the deleted and updated rows of each reached table are counted against the
    /// rows read (no user triggers on the target or a reached table).
    pub counted: bool,
    /// Every table with a key (with an action) on the target or a reached table, whether
    /// the key's action applies to this statement or not: what its cascades could change is
    /// captured (or the transaction fails), so its events need not say it went uncaptured.
    pub considered: Vec<(String, String)>,
}

impl Plan {
    /// The reached tables (schema, name), each once.
    pub fn tables(&self) -> Vec<&(String, String)> {
        let mut out: Vec<&(String, String)> = Vec::new();
        for r in &self.reaches {
            if !out.contains(&&r.key.child) {
                out.push(&r.key.child);
            }
        }
        out
    }
}

/// What a statement (or a cascade) does to the rows it reaches, for the keys that reference
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowChange {
    /// They are deleted: the keys' ON DELETE actions apply.
    Deleted,
    /// These columns of theirs may change (empty: any): the ON UPDATE actions of the keys
    /// whose referenced columns are among them apply.
    Updated(Vec<String>),
}

impl RowChange {
    /// The action `key` takes on the rows referencing rows changed this way, if any.
    fn action(&self, key: &ForeignKey) -> Action {
        match self {
            RowChange::Deleted => key.on_delete,
            RowChange::Updated(cols)
                if cols.is_empty() || key.parent_cols.iter().any(|c| cols.contains(c)) =>
            {
                key.on_update
            }
            RowChange::Updated(_) => Action::None,
        }
    }
}

/// The target of a statement as the keys that reference it see it.
pub struct Root<'a> {
    /// Its oid and the oids of the partitioned tables it is a partition of.
    pub oids: &'a [u32],
    /// Its name, for errors.
    pub name: &'a str,
    /// It has user triggers.
    pub triggers: bool,
    /// What the statement does to its rows (a MERGE may delete some and update others).
    pub changes: Vec<RowChange>,
}

/// The cascades a statement sets off on `root` (no reaches: no key whose action applies
/// references it).
pub fn plan(graph: &Graph, root: Root<'_>) -> Result<Plan, CascadeError> {
    let mut reaches: Vec<Reach> = Vec::new();
    let mut considered: Vec<(String, String)> = Vec::new();
    // (reach whose rows change, the oids of their table, depth, how they change); the
    // statement's own rows first.
    let mut queue: Vec<_> = (root.changes.into_iter().rev())
        .map(|change| (None, root.oids.to_vec(), 0, change))
        .collect();
    while let Some((from, tables, depth, change)) = queue.pop() {
        if depth >= MAX_DEPTH {
            continue; // Deeper rows are caught by the counts (`check`).
        }
        for key in graph.keys.iter().filter(|k| tables.contains(&k.parent_oid)) {
            if !considered.contains(&key.child) {
                considered.push(key.child.clone());
            }
            let action = change.action(key);
            if action == Action::None {
                continue;
            }
            if reaches.len() == MAX_REACHES {
                return Err(CascadeError::TooManyReaches {
                    table: root.name.to_string(),
                });
            }
            let (effect, next) = match (&change, action) {
                (RowChange::Deleted, Action::Cascade) => (Effect::Deletes, RowChange::Deleted),
                _ => (Effect::Updates, RowChange::Updated(key.child_cols.clone())),
            };
            reaches.push(Reach {
                key: key.clone(),
                from,
                action,
                depth: depth + 1,
                effect,
            });
            queue.push((
                Some(reaches.len() - 1),
                vec![key.child_oid],
                depth + 1,
                next,
            ));
        }
    }
    let counted = !root.triggers && reaches.iter().all(|r| !r.key.child_triggers);
    Ok(Plan {
        reaches,
        counted,
        considered,
    })
}

/// The two statements around the client's (module docs). `with`: the client's WITH list
/// (`WITH a AS (…)`, or empty) and `rows`: `SELECT t.* FROM …` of the rows the statement
/// deletes, both spliced from the client's text (so their errors point into it).
pub(crate) fn reads(plan: &Plan, with: Spliced, rows: Spliced, form: Form) -> Reads {
    let mut pre = with_list(with);
    reach_ctes(plan, &mut pre, rows);
    pre.own(&format!("\nSELECT {}", stores(plan)));
    Reads {
        pre,
        post: post_read(plan, form),
    }
}

/// [`reads`] for an UPDATE whose before images come from its own locking pre-read (before
/// PostgreSQL 18): `rows` selects `t.*, <image> AS __hs_pi, t.tableoid AS __hs_po … FOR
/// UPDATE OF t`; the pre-read returns the images and tableoids as the UPDATE's pre-read does,
/// and stores the cascades' rows once they are all read (a UNION ALL runs its branches in
/// order, and its last one returns no row).
pub(crate) fn reads_collecting(plan: &Plan, with: Spliced, rows: Spliced, form: Form) -> Reads {
    let mut pre = with_list(with);
    reach_ctes(plan, &mut pre, rows);
    pre.own(&format!(
        "\nSELECT __hs_k0.__hs_pi, __hs_k0.__hs_po FROM __hs_k0\nUNION ALL SELECT NULL, NULL WHERE NOT ({})",
        stores(plan)
    ));
    Reads {
        pre,
        post: post_read(plan, form),
    }
}

/// The client's WITH list ready for hindsight's CTEs (`WITH ` when there is none).
fn with_list(with: Spliced) -> Spliced {
    let mut pre = with;
    pre.own(if pre.text.is_empty() { "WITH " } else { ",\n" });
    pre
}

/// `__hs_k0 AS (rows)` — the rows the statement changes — and one CTE per reach, appended to
/// `pre` (which ends in `WITH ` or `,\n`).
pub(crate) fn reach_ctes(plan: &Plan, pre: &mut Spliced, rows: Spliced) {
    pre.own("__hs_k0 AS (");
    let rows_at = pre.text.len();
    pre.own(&rows.text).own(")");
    pre.map.extend(rows.map.into_iter().map(|mut p| {
        p.at += rows_at;
        p
    }));
    for (i, r) in plan.reaches.iter().enumerate() {
        pre.own(&format!(",\n__hs_k{} AS ({})", i + 1, reach_sql(r)));
    }
}

/// The condition (always true) that keeps what the reach CTEs of [`reach_ctes`] read, and the
/// reached tables' counts, in the transaction's settings.
pub(crate) fn stores(plan: &Plan) -> String {
    let branches: Vec<String> = (1..=plan.reaches.len())
        .map(|k| {
            let r = &plan.reaches[k - 1];
            let parent_key: Vec<String> = r
                .key
                .parent_cols
                .iter()
                .zip(&r.key.child_cols)
                .map(|(p, c)| format!("{}, __hs_r.{}", literal(p), quote(c)))
                .collect();
            format!(
                "SELECT __hs_r.__hs_o, __hs_r.__hs_c, __hs_r.__hs_b, {k}, jsonb_build_object({}), {} FROM __hs_k{k} __hs_r",
                parent_key.join(", "),
                r.effect == Effect::Updates
            )
        })
        .collect();
    format!(
        "set_config('{ROWS}', COALESCE((SELECT jsonb_agg(jsonb_build_array(o, c::text, b, k, p, u)) \
         FROM (SELECT o, c, (array_agg(b))[1] AS b, min(k) AS k, (array_agg(p ORDER BY k))[1] AS p, count(*) FILTER (WHERE u) AS u \
         FROM ({}) __hs_a(o, c, b, k, p, u) GROUP BY o, c) __hs_d), '[]')::text, true) IS NOT NULL \
         AND set_config('{COUNTS}', {}::text, true) IS NOT NULL",
        branches.join(" UNION ALL "),
        counts(plan, None)
    )
}

/// The statements [`reads`] builds.
pub(crate) struct Reads {
    /// Run right before the client's statement; its rows stay in the server.
    pub pre: Spliced,
    /// Run right after it: `(before, after, tableoid, [reach, parent key])` per changed row,
    /// then `(NULL, NULL, NULL, counts)`.
    pub post: String,
}

/// The CTE of one reach: the referencing rows, locked, with their image, `tableoid` and
/// `ctid`, and their columns (the next level's keys read them).
fn reach_sql(r: &Reach) -> String {
    let cols = |t: &str, names: &[String]| -> String {
        let v: Vec<String> = names.iter().map(|n| format!("{t}.{}", quote(n))).collect();
        v.join(", ")
    };
    let referencing: Vec<String> = r
        .key
        .child_cols
        .iter()
        .enumerate()
        .map(|(i, n)| match r.key.collations.get(i).cloned().flatten() {
            Some(coll) => format!("__hs_c.{} COLLATE {coll}", quote(n)),
            None => format!("__hs_c.{}", quote(n)),
        })
        .collect();
    let source = match r.from {
        None => "__hs_k0".to_string(),
        Some(i) => format!("__hs_k{}", i + 1),
    };
    format!(
        "SELECT __hs_c.tableoid AS __hs_o, __hs_c.ctid AS __hs_c, to_jsonb(__hs_c.*) AS __hs_b, __hs_c.* \
         FROM {} __hs_c WHERE ({}) IN (SELECT {} FROM {source} __hs_p) FOR UPDATE OF __hs_c",
        qualified(&r.key.child),
        referencing.join(", "),
        cols("__hs_p", &r.key.parent_cols),
    )
}

fn qualified((schema, name): &(String, String)) -> String {
    format!("{}.{}", quote(schema), quote(name))
}

/// A JSON object of the deleted + updated row counts of every leaf of the reached tables, by
/// oid: as they are (`since: None`), or `[count since the stored ones, name]`.
fn counts(plan: &Plan, since: Option<&str>) -> String {
    let leaves: Vec<String> = plan
        .tables()
        .into_iter()
        .map(|t| {
            // A plain table has no partition tree: it is its own leaf.
            let t = format!("{}::regclass", literal(&qualified(t)));
            format!(
                "SELECT relid::oid AS relid FROM pg_partition_tree({t}) WHERE isleaf \
                 UNION SELECT c.oid FROM pg_class c WHERE c.oid = {t} AND c.relkind <> 'p'"
            )
        })
        .collect();
    let base = "pg_stat_get_xact_tuples_deleted(__hs_l.relid) + pg_stat_get_xact_tuples_updated(__hs_l.relid)";
    let value = match since {
        None => base.to_string(),
        Some(setting) => format!(
            "jsonb_build_array({base} - COALESCE((NULLIF(current_setting('{setting}', true), '')::jsonb ->> __hs_l.relid::text)::int8, 0), __hs_l.relid::regclass::text)"
        ),
    };
    format!(
        "(SELECT COALESCE(jsonb_object_agg(__hs_l.relid::text, {value}), '{{}}') FROM ({}) __hs_l)",
        leaves.join(" UNION ")
    )
}

/// The read after the statement (module docs). It empties the rows' setting; the counts'
/// setting stays (the select list is computed after the WHERE that would empty it), and the
/// next statement's read overwrites it.
fn post_read(plan: &Plan, form: Form) -> String {
    let p = post_parts(plan, form);
    format!("WITH {}\n{}", p.cte, p.selects)
}

/// The parts of the read after the statement, for a post-read of its own ([`post_read`]) or
/// appended to another (a MERGE's before PostgreSQL 18).
pub(crate) struct PostParts {
    /// `__hs_y AS (…)`: the rows read before, each with its latest version.
    pub cte: String,
    /// The rows that changed, `UNION ALL` the counts' row (last).
    pub selects: String,
}

pub(crate) fn post_parts(plan: &Plan, form: Form) -> PostParts {
    let branches: Vec<String> = plan
        .reaches
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "SELECT {}, {}, __hs_y.o, jsonb_build_array(__hs_y.k, __hs_y.p, __hs_y.u)::text FROM __hs_y \
                 LEFT JOIN LATERAL (SELECT to_jsonb(__hs_r.*) AS a, __hs_r.ctid AS c FROM {} __hs_r \
                 WHERE __hs_r.tableoid = __hs_y.o AND __hs_r.ctid = __hs_y.cur OFFSET 0) __hs_n ON true \
                 WHERE __hs_y.k = {} AND __hs_n.c IS DISTINCT FROM __hs_y.c",
                form.json("__hs_y.b"),
                form.json("__hs_n.a"),
                qualified(&r.key.child),
                i + 1
            )
        })
        .collect();
    PostParts {
        cte: format!(
            "__hs_y AS (SELECT (__hs_e->>0)::oid AS o, (__hs_e->>1)::tid AS c, __hs_e->2 AS b, \
             (__hs_e->>3)::int AS k, __hs_e->4 AS p, (__hs_e->>5)::int AS u, \
             currtid2(((__hs_e->>0)::oid)::regclass::text, (__hs_e->>1)::tid) AS cur \
             FROM jsonb_array_elements(COALESCE(NULLIF(current_setting('{ROWS}', true), ''), '[]')::jsonb) __hs_e)"
        ),
        selects: format!(
            "{}\nUNION ALL\nSELECT NULL, NULL, NULL, {}::text WHERE set_config('{ROWS}', '', true) IS NOT NULL",
            branches.join("\nUNION ALL\n"),
            counts(plan, Some(COUNTS))
        ),
    }
}

/// Where a cascaded row's change comes from: the foreign key and the row it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The constraint's name.
    pub constraint: String,
    /// The referenced table, `schema.name`.
    pub parent_table: String,
    /// The referenced row's key (the referenced columns and their values).
    pub parent_key: serde_json::Value,
    /// How many keys' actions update the row (each is one update for the server's counts).
    pub updates: i64,
}

/// The origin of a post-read row from its last column (`[reach, parent key, updates]`).
pub fn origin(plan: &Plan, column: &[u8]) -> Result<Origin, CascadeError> {
    let v: serde_json::Value = serde_json::from_slice(column)
        .map_err(|e| CascadeError::Row(format!("its origin is not JSON: {e}")))?;
    let k = v
        .get(0)
        .and_then(serde_json::Value::as_u64)
        .filter(|k| *k >= 1)
        .ok_or_else(|| CascadeError::Row(format!("no reach number in {v}")))?;
    let reach = plan
        .reaches
        .get(k as usize - 1)
        .ok_or_else(|| CascadeError::Row(format!("reach {k} is not in the plan")))?;
    let (schema, name) = &reach.key.parent;
    Ok(Origin {
        constraint: reach.key.name.clone(),
        parent_table: format!("{schema}.{name}"),
        parent_key: v.get(1).cloned().unwrap_or_default(),
        updates: v.get(2).and_then(serde_json::Value::as_i64).unwrap_or(1),
    })
}

/// The counts the post-read ends with, compared with the rows it read (`rows`) and the
/// statement's own rows per table (`own`, by oid: a self-referencing table counts both).
/// `counts`: `{"oid": [n, name], …}`. A plan whose counts are not compared (`Plan::counted`) passes.
///
/// A row reached by several keys makes a range: an updated one was updated once per key whose
/// action reached it, at least once (a key whose referenced row kept its value leaves it be);
/// a deleted one may have been updated first by those keys' SET NULL / SET DEFAULT (the order
/// PostgreSQL runs the actions in decides).
pub fn check(
    plan: &Plan,
    rows: &[&Change],
    own: &HashMap<u32, i64>,
    counts: Option<&str>,
) -> Result<(), CascadeError> {
    if !plan.counted {
        return Ok(());
    }
    let counts: BTreeMap<String, (i64, String)> = counts
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| CascadeError::Row(format!("the counts are not JSON: {e}")))?
        .ok_or_else(|| CascadeError::Row("the post-read gave no counts".into()))?;
    for (oid, (counted, table)) in counts {
        let oid: u32 = oid
            .parse()
            .map_err(|_| CascadeError::Row(format!("{oid:?} is not a table oid")))?;
        let own = own.get(&oid).copied().unwrap_or(0);
        let (low, high) = rows
            .iter()
            .filter(|c| c.table_oid == oid)
            .map(|c| {
                let updates = c.cascade.as_ref().map_or(0, |o| o.updates.max(0));
                match c.after {
                    Some(_) => (1, updates.max(1)),
                    None => (1, 1 + updates),
                }
            })
            .fold((own, own), |(l, h), (a, b)| (l + a, h + b));
        if counted < low || counted > high {
            let read = match low == high {
                true => low.to_string(),
                false => format!("{low} to {high}"),
            };
            return Err(CascadeError::Unread {
                table,
                counted,
                read,
            });
        }
    }
    Ok(())
}

/// `rw`, the capture of the DELETE or UPDATE `sql` (the client's statement) on `write`, with
/// the reads of its cascades around it (see [`reads`]), in its pre-read and post-read slots.
/// An UPDATE's locking pre-read (before PostgreSQL 18) becomes one with the cascades' reads
/// ([`reads_collecting`]); a capture with other reads of its own is refused (a MERGE's are
/// joined in `merge`).
pub fn attach(
    rw: Rewritten,
    sql: &str,
    write: &Write,
    plan: Arc<Plan>,
    form: Form,
) -> Result<Rewritten, Refusal> {
    let mut client = Spliced::default();
    client.client(sql, 0..sql.len());
    attach_within(rw, &client, write, plan, form)
}

/// [`attach`] for a write whose text as a statement of its own, `alone`, hindsight built from
/// pieces of the client's (a write in a data-modifying CTE, see `cte::Cut::cascading`).
pub(crate) fn attach_within(
    rw: Rewritten,
    alone: &Spliced,
    write: &Write,
    plan: Arc<Plan>,
    form: Form,
) -> Result<Rewritten, Refusal> {
    let sql = alone.text.as_str();
    let reference = write.reference();
    let own_reads = match (&rw.pre_read, &rw.post_read) {
        (None, None) => OwnReads::None,
        (Some(_), None) if rw.shape.pre_read => OwnReads::Locking,
        _ => {
            return Err(Refusal::Unsupported {
                what: format!(
                    "the cascades of a write on {} with reads of its own",
                    write.table
                ),
            })
        }
    };
    let unreadable = || Refusal::Unsupported {
        what: format!(
            "{} on {} of this form, whose foreign keys cascade (its rows could not be read first)",
            write.kind.label().to_uppercase(),
            write.table
        ),
    };
    let rows = |select: &str, suffix: &str| {
        let (with, rows) = target_rows(sql, select, suffix).ok_or_else(unreadable)?;
        Ok::<_, Refusal>((with.through(alone), rows.through(alone)))
    };
    let r = match own_reads {
        OwnReads::None => {
            let (with, rows) = rows(&format!("{reference}.*"), "")?;
            reads(&plan, with, rows, form)
        }
        OwnReads::Locking => {
            // FOR UPDATE OF takes the alias or the bare name, as the UPDATE's own pre-read.
            let lock = match write.alias.as_str() {
                "" => quote(&write.table.name),
                alias => quote(alias),
            };
            let select = format!(
                "{reference}.*, {} AS __hs_pi, {reference}.tableoid AS __hs_po",
                form.row(&format!("{reference}.*"))
            );
            let (with, rows) = rows(&select, &format!("FOR UPDATE OF {lock}\n"))?;
            reads_collecting(&plan, with, rows, form)
        }
    };
    let mut shape = rw.shape;
    let s = Arc::make_mut(&mut shape);
    s.read_after = Some(ReadAfter::Cascade);
    s.cascade = Some(plan);
    Ok(Rewritten {
        shape,
        pre_read: Some(r.pre.text),
        pre_read_map: r.pre.map,
        post_read: Some(r.post),
        ..rw
    })
}

/// The reads a write's capture has before its cascades' are added.
enum OwnReads {
    None,
    /// An UPDATE's locking pre-read of its before images (before PostgreSQL 18).
    Locking,
}

/// The top-level keywords of a DELETE or UPDATE, as byte spans of its text.
#[derive(Default)]
struct Keywords {
    /// The statement starts with a WITH list.
    with: bool,
    /// `DELETE` or `UPDATE`.
    verb: Option<(usize, usize)>,
    /// DELETE's `FROM` before its target.
    from: Option<(usize, usize)>,
    /// UPDATE's `SET`.
    set: Option<(usize, usize)>,
    /// DELETE's `USING`, or UPDATE's `FROM` after its SET list.
    more: Option<(usize, usize)>,
    wher: Option<(usize, usize)>,
    returning: Option<usize>,
}

/// The keywords of `sql`; `None` for `WHERE CURRENT OF` (a cursor's row cannot be read apart
/// from the statement).
fn keywords(sql: &str) -> Option<Keywords> {
    use pg_query::protobuf::Token as T;
    let tokens = crate::statement::parser::tokens(sql).ok()?;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let mut depth = 0i32;
    let mut k = Keywords {
        with: kind(0) == Some(T::With),
        ..Keywords::default()
    };
    for (i, t) in tokens.iter().enumerate() {
        let span = Some((t.start as usize, t.end as usize));
        match kind(i) {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => depth -= 1,
            _ if depth != 0 => {}
            Some(T::DeleteP | T::Update) if k.verb.is_none() => k.verb = span,
            Some(T::From) if k.verb.is_some() && k.from.is_none() && k.set.is_none() => {
                k.from = span
            }
            Some(T::Set) if k.verb.is_some() && k.set.is_none() && k.from.is_none() => k.set = span,
            // `IS [NOT] DISTINCT FROM` is an operator, not the FROM clause.
            Some(T::From)
                if k.set.is_some() && k.more.is_none() && kind(i - 1) != Some(T::Distinct) =>
            {
                k.more = span
            }
            Some(T::Using) if k.from.is_some() && k.more.is_none() => k.more = span,
            Some(T::Where) if k.verb.is_some() && k.wher.is_none() => {
                if kind(i + 1) == Some(T::CurrentP) {
                    return None;
                }
                k.wher = span
            }
            Some(T::Returning) if k.verb.is_some() => {
                k.returning = span.map(|s| s.0);
                break;
            }
            _ => {}
        }
    }
    Some(k)
}

/// A DELETE's or UPDATE's WITH list and `SELECT select FROM target [, using / from…] [WHERE
/// …] suffix` of the rows it changes (as they are before it runs), cut from its text at its
/// top-level keywords (spliced: errors point into the client's text).
fn target_rows(sql: &str, select: &str, suffix: &str) -> Option<(Spliced, Spliced)> {
    let k = keywords(sql)?;
    let (verb_at, verb_end) = k.verb?;
    let end = k
        .returning
        .unwrap_or(sql.trim_end().trim_end_matches(';').len());
    let next = |after: usize| {
        [k.more.map(|m| m.0), k.wher.map(|w| w.0)]
            .into_iter()
            .flatten()
            .filter(|at| *at > after)
            .min()
            .unwrap_or(end)
    };
    // The target: after DELETE's FROM up to USING / WHERE; after UPDATE up to SET.
    let target = match (k.from, k.set) {
        (Some((_, from_end)), None) => from_end..next(from_end),
        (None, Some((set_at, _))) => verb_end..set_at,
        _ => return None,
    };
    let mut with = Spliced::default();
    if k.with {
        with.client(sql, 0..verb_at);
    }
    let mut rows = Spliced::default();
    rows.own(&format!("SELECT {select} FROM "))
        .client(sql, target);
    if let Some((_, m_end)) = k.more {
        rows.own(",\n")
            .client(sql, m_end..k.wher.map_or(end, |w| w.0));
    }
    if let Some((w, _)) = k.wher {
        rows.own("\n").client(sql, w..end);
    }
    // A trailing `--` comment of the client's would swallow what follows.
    rows.own("\n").own(suffix);
    Some((with, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deleting(oids: &[u32]) -> Root<'_> {
        Root {
            oids,
            name: "t",
            triggers: false,
            changes: vec![RowChange::Deleted],
        }
    }

    fn key(name: &str, child: u32, parent: u32, on_delete: Action) -> ForeignKey {
        ForeignKey {
            name: name.into(),
            child_oid: child,
            child: ("public".into(), format!("t{child}")),
            child_cols: vec!["p".into()],
            parent_oid: parent,
            parent: ("public".into(), format!("t{parent}")),
            parent_cols: vec!["id".into()],
            on_delete,
            on_update: Action::None,
            child_triggers: false,
            collations: Vec::new(),
        }
    }

    #[test]
    fn cascades_are_followed_level_by_level_and_set_null_ends_a_path() {
        let graph = Graph {
            keys: vec![
                key("a", 2, 1, Action::Cascade),
                key("b", 3, 2, Action::SetNull),
                key("c", 4, 3, Action::Cascade),
                key("d", 5, 1, Action::None),
            ],
        };
        let p = plan(&graph, deleting(&[1])).unwrap();
        let names: Vec<(&str, Option<usize>)> = p
            .reaches
            .iter()
            .map(|r| (r.key.name.as_str(), r.from))
            .collect();
        assert_eq!(names, vec![("a", None), ("b", Some(0))]);
        assert!(p.counted);
        assert!(plan(&graph, deleting(&[5])).unwrap().reaches.is_empty());
    }

    #[test]
    fn key_updates_follow_the_keys_on_their_columns_and_set_null_chains() {
        let mut upd = key("u", 2, 1, Action::None);
        upd.on_update = Action::Cascade;
        let mut other = key("o", 3, 1, Action::Cascade);
        other.parent_cols = vec!["code".into()];
        other.on_update = Action::SetNull;
        // The SET NULL of t4.p changes a column t5's key references.
        let mut chained = key("n", 4, 1, Action::SetNull);
        chained.on_update = Action::None;
        let mut grand = key("g", 5, 4, Action::None);
        grand.parent_cols = vec!["p".into()];
        grand.on_update = Action::Cascade;
        let graph = Graph {
            keys: vec![upd, other, chained, grand],
        };
        let root = |cols: &[&str]| Root {
            oids: &[1],
            name: "t1",
            triggers: false,
            changes: vec![RowChange::Updated(
                cols.iter().map(|c| c.to_string()).collect(),
            )],
        };
        let names =
            |p: Plan| -> Vec<String> { p.reaches.iter().map(|r| r.key.name.clone()).collect() };
        assert_eq!(names(plan(&graph, root(&["id"])).unwrap()), ["u"]);
        assert_eq!(names(plan(&graph, root(&["code"])).unwrap()), ["o"]);
        let none = plan(&graph, root(&["name"])).unwrap();
        assert!(none.reaches.is_empty());
        assert_eq!(none.considered.len(), 3, "{:?}", none.considered);
        let deleted = names(plan(&graph, deleting(&[1])).unwrap());
        assert_eq!(deleted, ["o", "n", "g"]);
    }

    #[test]
    fn a_self_reference_is_followed_to_the_depth_bound() {
        let graph = Graph {
            keys: vec![key("tree", 1, 1, Action::Cascade)],
        };
        let p = plan(&graph, deleting(&[1])).unwrap();
        assert_eq!(p.reaches.len(), MAX_DEPTH);
        assert_eq!(p.reaches.last().unwrap().depth, MAX_DEPTH);
        assert_eq!(p.tables().len(), 1);
    }

    #[test]
    fn branching_past_the_bound_is_refused_and_triggers_stop_the_counting() {
        let keys = (0..MAX_REACHES as u32 + 1)
            .map(|i| key(&format!("k{i}"), 100 + i, 1, Action::SetNull))
            .collect();
        let err = plan(&Graph { keys }, deleting(&[1])).unwrap_err();
        assert!(err.to_string().contains("more than 64"), "{err}");
        let mut k = key("a", 2, 1, Action::Cascade);
        k.child_triggers = true;
        let p = plan(&Graph { keys: vec![k] }, deleting(&[1])).unwrap();
        assert!(!p.counted);
    }

    #[test]
    fn the_reads_lock_each_level_and_keep_the_clients_text_mapped() {
        let graph = Graph {
            keys: vec![
                key("a", 2, 1, Action::Cascade),
                key("b", 3, 2, Action::Cascade),
            ],
        };
        let p = plan(&graph, deleting(&[1])).unwrap();
        let client = "DELETE FROM t1 WHERE id = $1";
        let mut rows = Spliced::default();
        rows.own("SELECT t1.* FROM ")
            .client(client, 12..14)
            .own(" ")
            .client(client, 15..28);
        let r = reads(&p, Spliced::default(), rows, Form::Jsonb);
        assert!(
            r.pre
                .text
                .starts_with("WITH __hs_k0 AS (SELECT t1.* FROM t1 WHERE id = $1)"),
            "{}",
            r.pre.text
        );
        assert!(r.pre.text.contains("FROM \"public\".\"t2\" __hs_c WHERE (__hs_c.\"p\") IN (SELECT __hs_p.\"id\" FROM __hs_k0 __hs_p) FOR UPDATE OF __hs_c"), "{}", r.pre.text);
        assert!(
            r.pre
                .text
                .contains("IN (SELECT __hs_p.\"id\" FROM __hs_k1 __hs_p)"),
            "{}",
            r.pre.text
        );
        let where_at = r.pre.text.find("WHERE id").unwrap();
        assert!(r
            .pre
            .map
            .iter()
            .any(|m| m.at == where_at && m.client_at == 15));
        assert!(r.post.contains("currtid2"), "{}", r.post);
        assert!(r.post.contains("WHERE __hs_y.k = 2"), "{}", r.post);
    }

    #[test]
    fn a_delete_or_update_is_cut_into_the_rows_it_changes() {
        let sql = "WITH x AS (SELECT 1 AS id) DELETE FROM ONLY t1 AS a USING x WHERE a.id = x.id RETURNING a.*";
        let (with, rows) = target_rows(sql, "a.*", "").unwrap();
        assert_eq!(with.text, "WITH x AS (SELECT 1 AS id)");
        assert_eq!(
            rows.text,
            "SELECT a.* FROM ONLY t1 AS a,\nx\nWHERE a.id = x.id\n"
        );
        let (with, rows) = target_rows("DELETE FROM t1 -- all\n;", "t1.*", "").unwrap();
        assert!(with.text.is_empty());
        assert_eq!(rows.text, "SELECT t1.* FROM t1 -- all\n");
        assert!(target_rows("DELETE FROM t1 WHERE CURRENT OF c", "t1.*", "").is_none());
        let sql = "UPDATE ONLY t1 AS a SET id = x.id + 1, v = (SELECT 1 FROM y) FROM x WHERE a.id IS NOT DISTINCT FROM x.id RETURNING *";
        let (_, rows) = target_rows(sql, "a.*", "").unwrap();
        assert_eq!(
            rows.text,
            "SELECT a.* FROM ONLY t1 AS a,\nx\nWHERE a.id IS NOT DISTINCT FROM x.id\n"
        );
        let (_, rows) = target_rows("update t1 set id = 2", "t1.*", "").unwrap();
        assert_eq!(rows.text, "SELECT t1.* FROM t1\n");
    }

    #[test]
    fn counts_must_match_the_rows_read_and_the_statements_own() {
        let graph = Graph {
            keys: vec![key("tree", 1, 1, Action::Cascade)],
        };
        let p = plan(&graph, deleting(&[1])).unwrap();
        let own = HashMap::from([(1, 2)]);
        assert_eq!(check(&p, &[], &own, Some(r#"{"1": [2, "t1"]}"#)), Ok(()));
        let err = check(&p, &[], &own, Some(r#"{"1": [3, "t1"]}"#)).unwrap_err();
        assert!(err.to_string().starts_with("t1: "), "{err}");
        assert!(
            matches!(
                err,
                CascadeError::Unread {
                    counted: 3,
                    ref read,
                    ..
                } if read == "2"
            ),
            "{err}"
        );
        assert!(check(&p, &[], &own, None).is_err());
    }

    #[test]
    fn an_updates_locking_pre_read_returns_its_images_and_stores_the_cascades_last() {
        let mut k = key("a", 2, 1, Action::None);
        k.on_update = Action::Cascade;
        let root = Root {
            oids: &[1],
            name: "t1",
            triggers: false,
            changes: vec![RowChange::Updated(vec!["id".into()])],
        };
        let p = plan(&Graph { keys: vec![k] }, root).unwrap();
        let sql = "UPDATE t1 SET id = $1 WHERE id IN (SELECT 2)";
        let select = "t1.*, to_jsonb(t1.*) AS __hs_pi, t1.tableoid AS __hs_po";
        let (with, rows) = target_rows(sql, select, "FOR UPDATE OF t1\n").unwrap();
        let r = reads_collecting(&p, with, rows, Form::Jsonb);
        assert!(r.pre.text.starts_with("WITH __hs_k0 AS (SELECT t1.*, to_jsonb(t1.*) AS __hs_pi, t1.tableoid AS __hs_po FROM t1\nWHERE id IN (SELECT 2)\nFOR UPDATE OF t1\n)"), "{}", r.pre.text);
        assert!(r.pre.text.contains("SELECT __hs_k0.__hs_pi, __hs_k0.__hs_po FROM __hs_k0\nUNION ALL SELECT NULL, NULL WHERE NOT (set_config('hindsight.cascade_rows'"), "{}", r.pre.text);
    }

    #[test]
    fn a_row_two_keys_reach_counts_as_a_range() {
        let graph = Graph {
            keys: vec![
                key("a", 2, 1, Action::Cascade),
                key("b", 2, 1, Action::SetNull),
            ],
        };
        let p = plan(&graph, deleting(&[1])).unwrap();
        let stmt = std::sync::Arc::new(crate::capture::txn::StatementCtx::for_test(
            std::sync::Arc::new(crate::capture::rewrite::Shape::statement(
                crate::statement::Kind::Delete,
                Default::default(),
            )),
        ));
        let row = |after: bool, updates: i64| Change {
            before: Some(Default::default()),
            after: after.then(Default::default),
            table_oid: 2,
            stmt: std::sync::Arc::clone(&stmt),
            gate: None,
            cascade: Some(Box::new(Origin {
                constraint: "a".into(),
                parent_table: "public.t1".into(),
                parent_key: serde_json::Value::Null,
                updates,
            })),
        };
        // Deleted, and maybe updated first by b's SET NULL: 1 or 2.
        let deleted = row(false, 1);
        let none = HashMap::new();
        for n in [1, 2] {
            let counts = format!(r#"{{"2": [{n}, "t2"]}}"#);
            assert_eq!(check(&p, &[&deleted], &none, Some(&counts)), Ok(()), "{n}");
        }
        let err = check(&p, &[&deleted], &none, Some(r#"{"2": [3, "t2"]}"#)).unwrap_err();
        assert!(err.to_string().contains("read 1 to 2"), "{err}");
        // Updated by one or both of two SET NULL keys.
        let updated = row(true, 2);
        assert_eq!(
            check(&p, &[&updated], &none, Some(r#"{"2": [1, "t2"]}"#)),
            Ok(())
        );
        assert!(check(&p, &[&updated], &none, Some(r#"{"2": [0, "t2"]}"#)).is_err());
    }

    #[test]
    fn the_catalog_rows_parse_and_bad_ones_are_named() {
        let row = |cols: &[&str]| -> Vec<Option<Vec<u8>>> {
            cols.iter().map(|c| Some(c.as_bytes().to_vec())).collect()
        };
        let good = row(&[
            "fk", "20", "public", "child", "[\"p\"]", "10", "public", "parent", "[\"id\"]", "c",
            "a", "false",
        ]);
        let g = parse(std::slice::from_ref(&good), ClientEncoding::Utf8).unwrap();
        assert_eq!(g.keys[0].on_delete, Action::Cascade);
        assert_eq!(g.keys[0].on_update, Action::None);
        let mut bad = good;
        bad[4] = Some(b"[\"p\", \"q\"]".to_vec());
        let err = parse(&[bad], ClientEncoding::Utf8).unwrap_err();
        assert!(err.to_string().contains("row 0"), "{err}");
    }
}
