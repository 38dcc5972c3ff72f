//! MERGE before PostgreSQL 18 (15–17 have MERGE; 15 and 16 have no MERGE RETURNING).
//!
//! Three statements in the client's transaction, none of which changes which rows the MERGE
//! touches:
//! 1. a **pre-read**: the target rows the MERGE's own join matches (`target JOIN source ON
//!    condition`, its text as written), locked `FOR UPDATE` when a WHEN MATCHED clause updates or
//!    deletes, their before images, `tableoid` and `ctid` kept in a transaction-local setting;
//! 2. the **MERGE** itself, with a counter in each acting WHEN clause's condition (`CASE WHEN
//!    (client's) THEN count ELSE false END`, so the client's condition decides as before) —
//!    how many rows each action was about to update, delete, insert;
//! 3. a **post-read**: each pre-read row followed to its latest version (`currtid2`, one TID
//!    lookup per row): a new version is an update (before, after), no visible version a delete,
//!    the same version untouched; and the rows the join matches now that were not there before:
//!    the MERGE's inserts. Its last row carries the counters.
//!
//! The router checks what the post-read found against the MERGE's command tag and the counters
//! (`check`): a row the MERGE inserted that its ON condition does not match, a row committed
//! concurrently between the pre-read and the MERGE, or a cross-partition update would not add
//! up, and the transaction then cannot commit (`capture_errors`) rather than publish a wrong
//! event.

use std::sync::Arc;

use pg_query::protobuf::Token as T;

use super::cascade::{self, Plan, RowChange};
use super::image_sql::Form;
use super::rewrite::{quote, Added, ClientPiece, ReadAfter, Refusal, Rewritten, Shape, Spliced};
use crate::statement::analysis::{Kind, Write};

/// Before images, `tableoid` and `ctid` of the rows the MERGE's join matched (pre-read).
const ROWS: &str = "hindsight.merge_rows";
/// `tableoid` and `ctid` of every row the join matched (acted on or not), when the MERGE can
/// insert: a row there before is not one it inserted.
const SEEN: &str = "hindsight.merge_seen";
/// Per-action counters set by the MERGE's WHEN clauses.
const COUNTERS: [(&str, u8); 3] = [
    ("hindsight.merge_updates", b'u'),
    ("hindsight.merge_deletes", b'd'),
    ("hindsight.merge_inserts", b'i'),
];

/// The parts of a MERGE's text, as byte ranges of the client's statement.
struct Parts {
    /// Text before `MERGE` (a WITH list, comments).
    prefix: std::ops::Range<usize>,
    /// Whether `prefix` holds a WITH list.
    with: bool,
    target: std::ops::Range<usize>,
    source: std::ops::Range<usize>,
    condition: std::ops::Range<usize>,
    clauses: Vec<Clause>,
}

/// One `WHEN [NOT] MATCHED [AND condition] THEN action` clause.
struct Clause {
    /// End of the token before the condition (`MATCHED`), or of `AND` when there is one.
    and_end: Option<usize>,
    /// Start of `THEN`, and the end of the token before it.
    then: usize,
    /// `u`, `d`, `i`, or 0 for DO NOTHING.
    action: u8,
    /// WHEN MATCHED (not WHEN NOT MATCHED).
    matched: bool,
    /// An INSERT's listed columns with the expression each gets (DEFAULT left out), and
    /// whether identity columns ignore it (OVERRIDING USER VALUE).
    values: Vec<(std::ops::Range<usize>, std::ops::Range<usize>, bool)>,
}

/// `INSERT (c, …) [OVERRIDING … VALUE] VALUES (e, …)` from token `i` (INSERT): each listed
/// column with its expression's text range; empty for other forms.
fn insert_values(
    tokens: &[pg_query::protobuf::ScanToken],
    i: usize,
) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>, bool)> {
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    // The comma-separated items of the parenthesised list opening at token `open`, as
    // (first token, last token) pairs, and the index after its `)`.
    let list = |open: usize| -> Option<(Vec<(usize, usize)>, usize)> {
        if kind(open) != Some(T::Ascii40) {
            return None;
        }
        let (mut depth, mut start, mut items) = (0i32, open + 1, Vec::new());
        for j in open..tokens.len() {
            match kind(j) {
                Some(T::Ascii40 | T::Ascii91) => depth += 1,
                Some(T::Ascii41 | T::Ascii93) => {
                    depth -= 1;
                    if depth == 0 {
                        items.push((start, j - 1));
                        return Some((items, j + 1));
                    }
                }
                Some(T::Ascii44) if depth == 1 => {
                    items.push((start, j - 1));
                    start = j + 1;
                }
                _ => {}
            }
        }
        None
    };
    let Some((columns, mut next)) = list(i + 1) else {
        return Vec::new();
    };
    while kind(next).is_some() && kind(next) != Some(T::Values) {
        next += 1; // OVERRIDING { SYSTEM | USER } VALUE
    }
    // OVERRIDING USER VALUE: identity columns get generated values, not the listed ones.
    let user = (i + 1..next).any(|j| kind(j) == Some(T::User));
    let Some((values, _)) = list(next + 1) else {
        return Vec::new();
    };
    if columns.len() != values.len() {
        return Vec::new();
    }
    let range = |(a, b): (usize, usize)| tokens[a].start as usize..tokens[b].end as usize;
    columns
        .into_iter()
        .zip(values)
        .filter(|(c, v)| c.0 == c.1 && !(v.0 == v.1 && kind(v.0) == Some(T::Default)))
        .map(|(c, v)| (range(c), range(v), user))
        .collect()
}

/// Why a MERGE could not be cut into [`Parts`].
#[derive(Debug, PartialEq, Eq)]
enum Uncut {
    /// PostgreSQL 17 syntax (`RETURNING`, `WHEN NOT MATCHED BY SOURCE`).
    Pg17,
    /// Not found where expected (a form this module does not know).
    Unknown,
}

/// Cut `body` (one MERGE, no trailing `;`) at its top-level keywords.
fn parts(body: &str) -> Result<Parts, Uncut> {
    parts_of(body).ok_or(Uncut::Unknown)?
}

fn parts_of(body: &str) -> Option<Result<Parts, Uncut>> {
    let tokens = crate::statement::parser::tokens(body).ok()?;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let (mut depth, mut case) = (0i32, 0i32);
    let (mut merge, mut into, mut using, mut on, mut with) = (None, None, None, None, false);
    let mut clauses: Vec<Clause> = Vec::new();
    let mut pending: Option<(Option<usize>, bool)> = None;
    let mut first_when = None;
    for (i, t) in tokens.iter().enumerate() {
        let k = kind(i);
        match k {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => depth -= 1,
            _ => {}
        }
        if depth != 0 {
            continue;
        }
        match k {
            Some(T::Case) => case += 1,
            Some(T::EndP) => case -= 1,
            Some(T::With | T::WithLa) if merge.is_none() => with = true,
            Some(T::Merge) if merge.is_none() => merge = Some(t.start as usize),
            Some(T::Into) if merge.is_some() && into.is_none() => into = Some(t.end as usize),
            Some(T::Using) if into.is_some() && using.is_none() => {
                using = Some((t.start as usize, t.end as usize))
            }
            Some(T::On) if using.is_some() && first_when.is_none() && case == 0 => {
                on = Some((t.start as usize, t.end as usize))
            }
            Some(T::When)
                if case == 0
                    && on.is_some()
                    && matches!(kind(i + 1), Some(T::Matched | T::Not)) =>
            {
                first_when.get_or_insert(t.start as usize);
                // The token that ends `WHEN [NOT] MATCHED [BY …]`.
                let mut j = i + 1;
                while matches!(kind(j), Some(T::Not | T::Matched | T::By | T::Target)) {
                    j += 1;
                }
                if kind(j) == Some(T::Source) {
                    return Some(Err(Uncut::Pg17));
                }
                let and = (kind(j) == Some(T::And)).then(|| tokens[j].end as usize);
                pending = Some((and, kind(i + 1) == Some(T::Matched)));
            }
            Some(T::Then) if case == 0 && pending.is_some() => {
                let (and_end, matched) = pending.take().expect("checked");
                let action = match kind(i + 1) {
                    Some(T::Update) => b'u',
                    Some(T::DeleteP) => b'd',
                    Some(T::Insert) => b'i',
                    _ => 0,
                };
                clauses.push(Clause {
                    and_end,
                    then: t.start as usize,
                    action,
                    matched,
                    values: if action == b'i' {
                        insert_values(&tokens, i + 1)
                    } else {
                        Vec::new()
                    },
                });
            }
            Some(T::Returning) if first_when.is_some() => return Some(Err(Uncut::Pg17)),
            _ => {}
        }
    }
    let (merge, into, using, on, first_when) = (merge?, into?, using?, on?, first_when?);
    if clauses.is_empty() || pending.is_some() {
        return None;
    }
    Some(Ok(Parts {
        prefix: 0..merge,
        with,
        target: into..using.0,
        source: using.1..on.0,
        condition: on.1..first_when,
        clauses,
    }))
}

/// An identifier as written (`"Name"` or `name`) as the catalog spells it.
fn unquoted(ident: &str) -> String {
    match ident.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => ident.to_lowercase(),
    }
}

/// The condition that counts one row for `setting` (always true).
fn count(setting: &str) -> String {
    format!("set_config('{setting}', (COALESCE(NULLIF(current_setting('{setting}', true), ''), '0')::int8 + 1)::text, true) IS NOT NULL")
}

/// Before PostgreSQL 18 (server major `major`): the MERGE `body` (without a trailing `;`) with
/// its counters, its pre-read and post-read (module docs). `write`: its target. `Ok(None)`:
/// MERGE syntax the server does not have (PostgreSQL 17's on 15/16, any before 15), which it
/// rejects — sent unchanged, so the client gets the server's own syntax error. `form`: how the
/// post-read's images come back.
pub fn rewrite(
    body: &str,
    write: &Write,
    major: u32,
    form: Form,
) -> Result<Option<Rewritten>, Refusal> {
    let Some(p) = cut(body, write, major)? else {
        return Ok(None);
    };
    let m = Merge {
        body,
        write,
        r: write.reference(),
        p,
    };
    let (text, inserts) = m.counted();
    let pre = m.pre_read(None);
    let shape = Arc::new(Shape {
        read_after: Some(ReadAfter::Merge),
        ..Shape::statement(Kind::Merge, write.table.clone())
    });
    Ok(Some(Rewritten {
        pre_read: Some(pre.text),
        pre_read_map: pre.map,
        post_read: Some(m.post_read(form, None)),
        inserts,
        ..Rewritten::returning(text, shape)
    }))
}

/// What the WHEN MATCHED clauses of the MERGE `body` (without a trailing `;`) on `write` do
/// to the target's rows, for the actions of the foreign keys referencing it (none: it only
/// inserts); `None` for a form this module cannot cut (PostgreSQL 17's `RETURNING` and `WHEN
/// NOT MATCHED BY SOURCE`), whose cascades stay uncaptured.
pub fn row_changes(body: &str, write: &Write) -> Option<Vec<RowChange>> {
    let p = parts(body).ok()?;
    let acts = |a: u8| p.clauses.iter().any(|c| c.matched && c.action == a);
    let mut changes = Vec::new();
    if acts(b'd') {
        changes.push(RowChange::Deleted);
    }
    if acts(b'u') {
        changes.push(RowChange::Updated(write.columns.clone()));
    }
    Some(changes)
}

/// `rw`, the capture of the MERGE `body` (without a trailing `;`) on `write`, with the reads
/// of the cascades its deletes and updates set off (`plan`): around it on PostgreSQL 18 (its
/// RETURNING has the images), joined into its own pre-read and post-read before. Unchanged
/// for a form [`row_changes`] cannot cut (its cascades stay marked uncaptured).
pub fn with_cascades(
    rw: Rewritten,
    body: &str,
    write: &Write,
    plan: Arc<Plan>,
    major: u32,
    form: Form,
) -> Rewritten {
    let Ok(p) = parts(body) else {
        return rw;
    };
    let m = Merge {
        body,
        write,
        r: write.reference(),
        p,
    };
    let mut shape = rw.shape;
    let s = Arc::make_mut(&mut shape);
    s.cascade = Some(Arc::clone(&plan));
    if major >= 18 {
        let mut with = Spliced::default();
        if m.p.with {
            with.client(body, m.p.prefix.clone());
        }
        let mut rows = Spliced::default();
        m.acting(&mut rows, &format!("{}.*", m.r));
        let reads = cascade::reads(&plan, with, rows, form);
        s.read_after = Some(ReadAfter::Cascade);
        return Rewritten {
            shape,
            pre_read: Some(reads.pre.text),
            pre_read_map: reads.pre.map,
            post_read: Some(reads.post),
            ..rw
        };
    }
    let pre = m.pre_read(Some(&plan));
    let post = m.post_read(form, Some(&cascade::post_parts(&plan, form)));
    Rewritten {
        shape,
        pre_read: Some(pre.text),
        pre_read_map: pre.map,
        post_read: Some(post),
        ..rw
    }
}

/// The MERGE cut into its parts, or why it is not rewritten: `Ok(None)` for syntax the server
/// does not have (its own error follows), a refusal for forms capture cannot handle.
fn cut(body: &str, write: &Write, major: u32) -> Result<Option<Parts>, Refusal> {
    let what = format!("MERGE into {}", write.table);
    if major < 15 {
        return Ok(None); // No MERGE at all: the server's own syntax error.
    }
    match parts(body) {
        Ok(p) => Ok(Some(p)),
        Err(Uncut::Pg17) if major < 17 => Ok(None),
        Err(Uncut::Pg17) => Err(Refusal::NeedsPg18 {
            what: format!("{what} with RETURNING or WHEN NOT MATCHED BY SOURCE"),
            major,
        }),
        Err(Uncut::Unknown) => Err(Refusal::Unsupported {
            what: format!("{what} of this form before PostgreSQL 18"),
        }),
    }
}

/// A MERGE being rewritten: the client's text, its target and its parts.
struct Merge<'a> {
    body: &'a str,
    write: &'a Write,
    /// How the statement names its target (alias or name).
    r: String,
    p: Parts,
}

impl Merge<'_> {
    /// The MERGE with a counter in each clause that acts, and the byte ranges inserted.
    fn counted(&self) -> (String, Vec<Added>) {
        let setting = |a: u8| COUNTERS.iter().find(|(_, c)| *c == a).map(|(s, _)| *s);
        // Edits from the end, so earlier offsets stay valid.
        let mut text = self.body.to_string();
        let mut edits: Vec<(usize, String)> = Vec::new();
        for c in &self.p.clauses {
            let Some(s) = setting(c.action) else { continue };
            match c.and_end {
                Some(and) => {
                    edits.push((and, " CASE WHEN (".into()));
                    edits.push((c.then, format!("\n) THEN {} ELSE false END\n", count(s))));
                }
                None => edits.push((c.then, format!("AND {}\n", count(s)))),
            }
        }
        for (at, s) in edits.iter().rev() {
            text.insert_str(*at, s);
        }
        // Byte ranges inserted, in the final text's offsets.
        let mut inserts = Vec::new();
        let mut shift = 0;
        for (at, s) in &edits {
            inserts.push(Added {
                at: at + shift,
                len: s.len(),
            });
            shift += s.len();
        }
        (text, inserts)
    }

    fn inserts_rows(&self) -> bool {
        self.p.clauses.iter().any(|c| c.action == b'i')
    }

    /// The client's WITH list (or comments) in front, ready for hindsight's own CTEs.
    fn with(&self) -> String {
        let prefix = &self.body[self.p.prefix.clone()];
        if self.p.with {
            format!("{prefix},\n")
        } else {
            format!("{prefix}WITH ")
        }
    }

    /// `FOR UPDATE OF target` when a clause updates or deletes.
    fn lock(&self) -> String {
        if !self
            .p
            .clauses
            .iter()
            .any(|c| matches!(c.action, b'u' | b'd'))
        {
            return String::new();
        }
        let name = match self.write.alias.as_str() {
            "" => quote(&self.write.table.name),
            alias => quote(alias),
        };
        format!("\nFOR UPDATE OF {name}")
    }

    /// `target JOIN source ON condition`, from the client's text.
    fn join<'s>(&self, pre: &'s mut Spliced) -> &'s mut Spliced {
        let (body, p) = (self.body, &self.p);
        pre.client(body, p.target.clone())
            .own("\nJOIN ")
            .client(body, p.source.clone())
            .own("\nON ")
            .client(body, p.condition.clone())
    }

    /// `SELECT select FROM target JOIN source ON condition WHERE …`: the matched rows a WHEN
    /// MATCHED clause updates or deletes (the first clause whose condition holds decides, as in
    /// the MERGE: taking every matched row would lock rows the MERGE leaves alone — all of
    /// pg_class, for a MERGE into it).
    fn acting(&self, pre: &mut Spliced, select: &str) {
        let (body, p) = (self.body, &self.p);
        pre.own(&format!("SELECT {select} FROM "));
        self.join(pre);
        if !p.clauses.iter().any(|c| c.matched) {
            pre.own("\nWHERE false"); // Only WHEN NOT MATCHED: no existing row changes.
            return;
        }
        pre.own("\nWHERE CASE");
        for c in p.clauses.iter().filter(|c| c.matched) {
            let acts = matches!(c.action, b'u' | b'd');
            match c.and_end {
                Some(and) => pre.own(" WHEN (").client(body, and..c.then).own(")"),
                None => pre.own(" WHEN true"),
            };
            pre.own(&format!(" THEN {acts}"));
        }
        pre.own("\nELSE false END");
    }

    /// The pre-read: the before images of the rows a WHEN MATCHED clause updates or deletes
    /// ([`Merge::acting`]), stored in settings with the counters zeroed; with `cascade`, the
    /// rows its foreign keys' actions reach too (`cascade::reach_ctes`).
    fn pre_read(&self, cascade: Option<&Plan>) -> Spliced {
        let (p, r) = (&self.p, &self.r);
        let mut pre = Spliced::default();
        pre.map.push(ClientPiece {
            at: 0,
            len: p.prefix.len(),
            client_at: 0,
        });
        pre.own(&self.with()).own("__hs_m AS (");
        self.acting(
            &mut pre,
            &format!("{r}.tableoid AS o, {r}.ctid AS c, to_jsonb({r}.*) AS b"),
        );
        pre.own(&format!("{}\n)", self.lock()));
        let mut stores = vec![format!("set_config('{ROWS}', COALESCE((SELECT jsonb_agg(jsonb_build_array(o, c::text, b)) FROM (SELECT DISTINCT ON (o, c) o, c, b FROM __hs_m) __hs_d), '[]')::text, true) IS NOT NULL")];
        if self.inserts_rows() {
            pre.own(&format!(
                ",\n__hs_s AS (SELECT {r}.tableoid AS o, {r}.ctid AS c FROM "
            ));
            self.join(&mut pre).own("\n)");
            stores.push(format!("set_config('{SEEN}', COALESCE((SELECT jsonb_agg(DISTINCT jsonb_build_array(o, c::text)) FROM __hs_s), '[]')::text, true) IS NOT NULL"));
        }
        if let Some(plan) = cascade {
            // The rows __hs_m locked, with their columns (the keys referencing them read them).
            let target = self.texts().0;
            let mut rows = Spliced::default();
            rows.own(&format!("SELECT __hs_q.* FROM __hs_m, LATERAL (SELECT {r}.* FROM {target} WHERE {r}.tableoid = __hs_m.o AND {r}.ctid = __hs_m.c OFFSET 0) __hs_q"));
            pre.own(",\n");
            cascade::reach_ctes(plan, &mut pre, rows);
            stores.push(cascade::stores(plan));
        }
        stores.extend(
            COUNTERS
                .iter()
                .map(|(s, _)| format!("set_config('{s}', '0', true) IS NOT NULL")),
        );
        pre.own(&format!("\nSELECT {}", stores.join(" AND ")));
        pre
    }

    /// `target`, `source` and `condition` as the client wrote them.
    fn texts(&self) -> (&str, &str, &str) {
        let (body, p) = (self.body, &self.p);
        (
            body[p.target.clone()].trim(),
            body[p.source.clone()].trim(),
            body[p.condition.clone()].trim(),
        )
    }

    /// A row of the target neither matched before the MERGE nor now where a matched one was.
    fn new_row(&self) -> String {
        let r = &self.r;
        format!(
            "NOT EXISTS (SELECT 1 FROM __hs_x WHERE __hs_x.o = {r}.tableoid AND __hs_x.cur = {r}.ctid) \
             AND NOT EXISTS (SELECT 1 FROM __hs_seen WHERE __hs_seen.o = {r}.tableoid AND __hs_seen.c = {r}.ctid)"
        )
    }

    /// The post-read: every matched row's before image with its current version (updated or
    /// gone), the rows the MERGE inserted, and last the counters.
    fn post_read(&self, form: Form, cascade: Option<&cascade::PostParts>) -> String {
        let r = &self.r;
        let (target, source, condition) = self.texts();
        // Inserted rows the ON condition matches now (a CTE: the value search below runs only
        // when these are fewer than the rows the INSERT clauses were about to insert)…
        let matched_inserts = if self.inserts_rows() {
            format!(
                ",\n__hs_seen AS (SELECT (__hs_v->>0)::oid AS o, (__hs_v->>1)::tid AS c FROM jsonb_array_elements(current_setting('{SEEN}', true)::jsonb) __hs_v),\n__hs_i AS (SELECT to_jsonb({r}.*) AS a, {r}.tableoid AS o FROM {target}\nWHERE EXISTS (SELECT 1 FROM {source}\nWHERE {condition}\n)\nAND {})",
                self.new_row()
            )
        } else {
            String::new()
        };
        let with = match cascade {
            Some(c) => format!("{}{},\n", self.with(), c.cte),
            None => self.with(),
        };
        let mut post_read = format!(
            "{with}__hs_x AS (SELECT (__hs_e->>0)::oid AS o, (__hs_e->>1)::tid AS c, __hs_e->2 AS b, currtid2(((__hs_e->>0)::oid)::regclass::text, (__hs_e->>1)::tid) AS cur \
             FROM jsonb_array_elements(current_setting('{ROWS}', true)::jsonb) __hs_e){matched_inserts}\n\
             SELECT {}, {}, __hs_x.o, NULL::text FROM __hs_x LEFT JOIN LATERAL \
             (SELECT to_jsonb({r}.*) AS a, {r}.ctid AS c FROM {target} WHERE {r}.tableoid = __hs_x.o AND {r}.ctid = __hs_x.cur OFFSET 0) __hs_n ON true \
             WHERE __hs_n.c IS DISTINCT FROM __hs_x.c",
            form.json("__hs_x.b"),
            form.json("__hs_n.a")
        );
        if self.inserts_rows() {
            post_read.push_str(&format!(
                "\nUNION ALL\nSELECT NULL, {}, __hs_i.o, NULL FROM __hs_i",
                form.json("__hs_i.a")
            ));
        }
        for c in self.p.clauses.iter().filter(|c| !c.values.is_empty()) {
            post_read.push_str(&self.unmatched_inserts(c, form));
        }
        let counters: Vec<String> = COUNTERS
            .iter()
            .map(|(s, _)| format!("current_setting('{s}', true)"))
            .collect();
        post_read.push_str(&format!(
            "\nUNION ALL\nSELECT NULL, NULL, NULL, concat_ws(',', {}) WHERE set_config('{ROWS}', '', true) IS NOT NULL AND set_config('{SEEN}', '', true) IS NOT NULL",
            counters.join(", ")
        ));
        if let Some(c) = cascade {
            post_read.push_str(&format!("\nUNION ALL\n{}", c.selects));
        }
        post_read
    }

    /// … and the inserted rows the ON condition does not match, found by the values the INSERT
    /// clause `c` gave its listed columns (compared as text, NULL equal to NULL: never an
    /// error, at worst a row not found, which `check` reports).
    fn unmatched_inserts(&self, c: &Clause, form: Form) -> String {
        let (body, r) = (self.body, &self.r);
        let (target, source, condition) = self.texts();
        let missing = format!("(SELECT count(*) FROM __hs_i) < COALESCE(NULLIF(current_setting('{}', true), ''), '0')::int8", COUNTERS[2].0);
        let equal: Vec<String> = c
            .values
            .iter()
            .map(|(col, e, user)| {
                // NULL matches NULL, and both tests hash (IS NOT DISTINCT FROM would not).
                let name = &body[col.clone()];
                let c = format!("{r}.{name}::text");
                let e = format!("({})::text", &body[e.clone()]);
                let equal = format!("({c} IS NULL) = ({e} IS NULL) AND COALESCE({c}, '') = COALESCE({e}, '')");
                if !user {
                    return equal;
                }
                // An identity column got a generated value: any value matches.
                format!("({equal} OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = {r}.tableoid AND attname = {} AND attidentity <> ''))", super::rewrite::literal(&unquoted(name)))
            })
            .collect();
        format!(
            "\nUNION ALL\nSELECT NULL, {}, {r}.tableoid, NULL FROM {target}\nWHERE {missing}\nAND EXISTS (SELECT 1 FROM {source}\nWHERE {}\n)\nAND NOT EXISTS (SELECT 1 FROM {source}\nWHERE {condition}\n)\nAND {}",
            form.row(&format!("{r}.*")),
            equal.join(" AND "),
            self.new_row()
        )
    }
}

/// What a post-read found, checked against the MERGE's command tag (`tag_rows`) and its
/// counters (`counters`: `updates,deletes,inserts`): `Err` says why its events would be wrong.
pub fn check(
    table: &str,
    changes: &[&super::txn::Change],
    tag_rows: Option<u64>,
    counters: Option<&str>,
) -> Result<(), String> {
    let count = |f: fn(&super::txn::Change) -> bool| changes.iter().filter(|c| f(c)).count() as u64;
    let found = [
        count(|c| c.before.is_some() && c.after.is_some()),
        count(|c| c.before.is_some() && c.after.is_none()),
        count(|c| c.before.is_none() && c.after.is_some()),
    ];
    let counted: Vec<u64> = counters
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let total = found.iter().sum::<u64>();
    let fits = counted.len() == 3 && found.iter().zip(&counted).all(|(f, c)| f <= c);
    if tag_rows == Some(total) && fits {
        return Ok(());
    }
    Err(format!(
        "MERGE into {table}: hindsight found {} updated, {} deleted and {} inserted rows, but the MERGE reported {} rows (its clauses were about to update, delete, insert: {}). Before PostgreSQL 18 hindsight finds a MERGE's inserted rows through its ON condition and its other rows by the rows that condition matched before it ran: an inserted row the ON condition does not match, a row committed by another session between the two, or an update that moved a row to another partition cannot be recorded. Retry the transaction, or write the change as INSERT … ON CONFLICT / UPDATE / DELETE",
        found[0],
        found[1],
        found[2],
        tag_rows.map_or("no".to_string(), |n| n.to_string()),
        counters.unwrap_or("unknown"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::analyze;

    fn rw(sql: &str) -> Rewritten {
        let v = analyze(sql).unwrap();
        rewrite(sql, &v[0].analysis.writes[0], 15, Form::Jsonb)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn counters_wrap_the_clauses_that_act() {
        let r = rw("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.v IS NULL THEN DELETE WHEN MATCHED THEN UPDATE SET v = s.v WHEN NOT MATCHED AND s.v > 0 THEN DO NOTHING WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)");
        assert!(r.text.contains("WHEN MATCHED AND CASE WHEN ( s.v IS NULL \n) THEN set_config('hindsight.merge_deletes'"), "{}", r.text);
        assert!(
            r.text
                .contains("WHEN MATCHED AND set_config('hindsight.merge_updates'"),
            "{}",
            r.text
        );
        assert!(
            r.text
                .contains("WHEN NOT MATCHED AND s.v > 0 THEN DO NOTHING"),
            "{}",
            r.text
        );
        assert!(
            r.text
                .contains("WHEN NOT MATCHED AND set_config('hindsight.merge_inserts'"),
            "{}",
            r.text
        );
        let pre = r.pre_read.unwrap();
        // Only rows the first matching WHEN MATCHED clause updates or deletes are locked; every
        // matched row is remembered (the MERGE can insert).
        assert!(pre.starts_with("WITH __hs_m AS (SELECT \"t\".tableoid AS o, \"t\".ctid AS c, to_jsonb(\"t\".*) AS b FROM t\nJOIN s\nON t.id = s.id\nWHERE CASE WHEN (s.v IS NULL) THEN true WHEN true THEN true\nELSE false END\nFOR UPDATE OF \"t\""), "{pre}");
        assert!(pre.contains("__hs_s AS (SELECT \"t\".tableoid AS o, \"t\".ctid AS c FROM t\nJOIN s\nON t.id = s.id\n)"), "{pre}");
        let post = r.post_read.unwrap();
        assert!(
            post.contains("WHERE EXISTS (SELECT 1 FROM s\nWHERE t.id = s.id\n)"),
            "{post}"
        );
        // Every inserted range is text that was not in the client's statement.
        for i in &r.inserts {
            assert!(!r.text[i.at..i.at + i.len].contains("s.v IS NULL"));
        }
    }

    #[test]
    fn a_join_in_the_source_keeps_its_own_on() {
        let r = rw("WITH k AS (SELECT 1 AS id) MERGE INTO public.t AS x USING a JOIN k ON a.id = k.id ON x.id = a.id WHEN MATCHED THEN DELETE");
        let pre = r.pre_read.unwrap();
        assert!(
            pre.starts_with("WITH k AS (SELECT 1 AS id) ,\n__hs_m AS (SELECT \"x\".tableoid"),
            "{pre}"
        );
        assert!(pre.contains("FROM public.t AS x\nJOIN a JOIN k ON a.id = k.id\nON x.id = a.id\nWHERE CASE WHEN true THEN true\nELSE false END\nFOR UPDATE OF \"x\""), "{pre}");
        assert!(!pre.contains("__hs_s"), "{pre}");
        // No INSERT clause: the post-read looks for no new rows.
        assert!(!r.post_read.unwrap().contains("WHERE EXISTS"));
    }

    #[test]
    fn insert_only_merges_lock_nothing() {
        let r = rw("MERGE INTO t USING s ON t.id = s.id AND (CASE WHEN s.v THEN true END) WHEN NOT MATCHED THEN INSERT VALUES (s.id)");
        let pre = r.pre_read.unwrap();
        assert!(!pre.contains("FOR UPDATE"), "{pre}");
        assert!(
            pre.contains("ON t.id = s.id AND (CASE WHEN s.v THEN true END)\n)"),
            "{pre}"
        );
    }

    #[test]
    fn pg17_syntax_goes_to_an_older_server_unchanged() {
        let sql = "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE";
        let v = analyze(sql).unwrap();
        let w = &v[0].analysis.writes[0];
        assert_eq!(rewrite(sql, w, 15, Form::Jsonb), Ok(None));
        assert!(matches!(
            rewrite(sql, w, 17, Form::Jsonb),
            Err(Refusal::NeedsPg18 { .. })
        ));
        let sql = "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING *";
        let v = analyze(sql).unwrap();
        assert_eq!(
            rewrite(sql, &v[0].analysis.writes[0], 16, Form::Jsonb),
            Ok(None)
        );
    }

    #[test]
    fn the_check_compares_found_rows_with_the_tag_and_counters() {
        assert!(check("t", &[], Some(0), Some("0,0,0")).is_ok());
        assert!(check("t", &[], Some(1), Some("1,0,0"))
            .unwrap_err()
            .contains(
                "found 0 updated, 0 deleted and 0 inserted rows, but the MERGE reported 1 rows"
            ));
        assert!(check("t", &[], None, None).is_err());
    }
}
