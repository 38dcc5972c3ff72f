//! What a statement does, from PostgreSQL's own grammar (`pg_query`, libpg_query).
//!
//! Every statement lands in the closed [`Kind`] enum, and every table it writes — including
//! writes hidden in data-modifying CTEs, `EXPLAIN ANALYZE` and `SELECT … INTO` — is listed in
//! [`Analysis::writes`]. Rules and capture match on these, so a new kind is a compile error in
//! each of them, not a silent pass.
//!
//! This module knows nothing about sessions, catalogs or the network: it maps text to facts.

use pg_query::protobuf::{self, node::Node as N, OnConflictAction, TransactionStmtKind};
use thiserror::Error;

/// The operation a statement performs on table rows (or on the session, for non-row kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Reads only (SELECT, VALUES, TABLE, SHOW, EXPLAIN without ANALYZE, COPY … TO, FETCH, …).
    Read,
    Insert,
    Update,
    Delete,
    /// `INSERT … ON CONFLICT DO UPDATE | DO NOTHING`.
    Upsert,
    Merge,
    /// `COPY … FROM` (STDIN, a file or a program).
    CopyIn,
    Truncate,
    /// Schema changes, including `SELECT … INTO` / `CREATE TABLE AS`.
    Ddl,
    Transaction(TxControl),
    /// Session state without row changes: SET, RESET, LISTEN, PREPARE, DEALLOCATE, DECLARE, ….
    Session,
    /// Can write, but what it writes cannot be known from the text: DO, CALL, and anything the
    /// grammar does not recognise.
    Opaque,
}

impl Kind {
    /// Stable lower-case name (metrics, events, rules).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Upsert => "upsert",
            Kind::Merge => "merge",
            Kind::CopyIn => "copy",
            Kind::Truncate => "truncate",
            Kind::Ddl => "ddl",
            Kind::Transaction(_) => "transaction",
            Kind::Session => "session",
            Kind::Opaque => "opaque",
        }
    }

    /// Whether statements of this kind are recorded as one statement-level event (schema
    /// changes, and statements whose row changes hindsight cannot see).
    pub fn statement_event(self) -> bool {
        matches!(self, Kind::Ddl | Kind::Opaque)
    }

    /// Whether statements of this kind change table rows.
    pub fn writes_rows(self) -> bool {
        matches!(
            self,
            Kind::Insert
                | Kind::Update
                | Kind::Delete
                | Kind::Upsert
                | Kind::Merge
                | Kind::CopyIn
                | Kind::Truncate
        )
    }
}

/// Transaction control statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxControl {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    PrepareTransaction,
    CommitPrepared,
    RollbackPrepared,
}

/// A table as written in the statement (not resolved against `search_path`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct TableName {
    /// Empty when the statement did not qualify the name.
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.schema.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}.{}", self.schema, self.name)
        }
    }
}

/// One table a statement writes, and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Write {
    pub kind: Kind,
    pub table: TableName,
    /// Columns named in the SET list or the INSERT/COPY column list (empty: all or unknown).
    pub columns: Vec<String>,
    /// Whether the statement has its own RETURNING list.
    pub returning: bool,
    /// The alias the statement gives the table (`UPDATE t AS x`), empty if none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub alias: String,
    /// The write is not the statement's own: it sits in a CTE, or in `COPY (…) TO`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub nested: bool,
    /// `ON CONFLICT … DO UPDATE` (an upsert that may update rows rather than only insert).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub conflict_update: bool,
    /// Set by capture once the catalog says the target is a partitioned table (system columns
    /// other than `tableoid` cannot be returned from it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partitioned: bool,
}

impl Write {
    /// The table a schema change names.
    pub(super) fn ddl(table: TableName) -> Self {
        Write {
            kind: Kind::Ddl,
            table,
            columns: Vec::new(),
            returning: false,
            alias: String::new(),
            nested: false,
            conflict_update: false,
            partitioned: false,
        }
    }

    /// How the statement's own clauses (RETURNING, FOR UPDATE OF) refer to the table: its
    /// alias, else its name as qualified in the statement, quoted.
    pub fn reference(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        if !self.alias.is_empty() {
            quote(&self.alias)
        } else if self.table.schema.is_empty() {
            quote(&self.table.name)
        } else {
            format!("{}.{}", quote(&self.table.schema), quote(&self.table.name))
        }
    }
}

/// The analysis of one statement.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Analysis {
    /// What the statement as a whole is.
    pub kind: Kind,
    /// Every table the statement writes, outermost first (one entry per target; a
    /// data-modifying CTE adds its own).
    pub writes: Vec<Write>,
    /// `EXPLAIN ANALYZE` wraps the statement (it runs, but its result rows are the plan).
    pub explain_analyze: bool,
    /// Savepoint name of SAVEPOINT / RELEASE / ROLLBACK TO (empty otherwise).
    pub savepoint: String,
    /// `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub chain: bool,
    /// `CREATE [OR REPLACE] FUNCTION | PROCEDURE`: the routine's name, lower case, unqualified
    /// (a query in the same text that calls it may write rows through it).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub routine: String,
    /// Whether its numbers can go as parameters of a statement prepared once (row writes).
    #[serde(skip)]
    pub binding: super::binding::Bindable,
}

impl Analysis {
    /// A statement of `kind` that writes no table (yet).
    pub(super) fn of(kind: Kind) -> Self {
        Analysis {
            kind,
            writes: Vec::new(),
            explain_analyze: false,
            savepoint: String::new(),
            chain: false,
            routine: String::new(),
            binding: super::binding::Bindable::No,
        }
    }
}

/// One statement of a (possibly multi-statement) text, with its position in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub analysis: Analysis,
    /// Byte range of the statement in the text it was cut from (without the `;`).
    pub span: std::ops::Range<usize>,
}

/// Why a text could not be analysed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AnalysisError {
    #[error(
        "the PostgreSQL parser rejected the statement: {message} (statement starts: {excerpt:?})"
    )]
    Syntax { message: String, excerpt: String },
}

/// Analyse every statement of `sql` (a simple Query may carry several).
pub fn analyze(sql: &str) -> Result<Vec<Located>, AnalysisError> {
    let parsed = super::parser::parse(sql).map_err(|e| AnalysisError::Syntax {
        message: e.to_string(),
        excerpt: sql.chars().take(80).collect(),
    })?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let start = raw.stmt_location.max(0) as usize;
        let end = if raw.stmt_len == 0 {
            sql.len()
        } else {
            start + raw.stmt_len as usize
        };
        let analysis = match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            Some(node) => analyze_node(node),
            None => Analysis::of(Kind::Read),
        };
        out.push(Located {
            analysis,
            span: start..end.min(sql.len()),
        });
    }
    Ok(out)
}

fn analyze_node(node: &N) -> Analysis {
    let mut writes = Vec::new();
    let kind = match node {
        N::InsertStmt(s) => {
            with_writes(s.with_clause.as_ref(), &mut writes);
            let kind = match s.on_conflict_clause.as_ref().map(|c| c.action) {
                Some(a)
                    if a == OnConflictAction::OnconflictUpdate as i32
                        || a == OnConflictAction::OnconflictNothing as i32 =>
                {
                    Kind::Upsert
                }
                _ => Kind::Insert,
            };
            push(
                &mut writes,
                kind,
                s.relation.as_ref(),
                names(&s.cols),
                returns_rows(s.returning_clause.as_ref()),
            );
            if let (Some(w), Some(c)) = (writes.last_mut(), s.on_conflict_clause.as_ref()) {
                if c.action == OnConflictAction::OnconflictUpdate as i32 {
                    w.conflict_update = true;
                }
            }
            if let Some(sel) = s.select_stmt.as_ref().and_then(|n| n.node.as_ref()) {
                nested_writes(sel, &mut writes);
            }
            kind
        }
        N::UpdateStmt(s) => {
            with_writes(s.with_clause.as_ref(), &mut writes);
            push(
                &mut writes,
                Kind::Update,
                s.relation.as_ref(),
                names(&s.target_list),
                returns_rows(s.returning_clause.as_ref()),
            );
            Kind::Update
        }
        N::DeleteStmt(s) => {
            with_writes(s.with_clause.as_ref(), &mut writes);
            push(
                &mut writes,
                Kind::Delete,
                s.relation.as_ref(),
                Vec::new(),
                returns_rows(s.returning_clause.as_ref()),
            );
            Kind::Delete
        }
        N::MergeStmt(s) => {
            with_writes(s.with_clause.as_ref(), &mut writes);
            push(
                &mut writes,
                Kind::Merge,
                s.relation.as_ref(),
                Vec::new(),
                returns_rows(s.returning_clause.as_ref()),
            );
            Kind::Merge
        }
        N::CopyStmt(s) if s.is_from => {
            push(
                &mut writes,
                Kind::CopyIn,
                s.relation.as_ref(),
                names(&s.attlist),
                false,
            );
            Kind::CopyIn
        }
        N::CopyStmt(s) => {
            // COPY (query) TO: the query may be a data-modifying statement with RETURNING.
            if let Some(q) = s.query.as_ref().and_then(|n| n.node.as_ref()) {
                let mut inner = analyze_node(q);
                if !inner.writes.is_empty() {
                    for w in &mut inner.writes {
                        w.nested = true;
                    }
                    return inner;
                }
            }
            Kind::Read
        }
        N::TruncateStmt(s) => {
            for rel in &s.relations {
                if let Some(N::RangeVar(rv)) = rel.node.as_ref() {
                    push(&mut writes, Kind::Truncate, Some(rv), Vec::new(), false);
                }
            }
            Kind::Truncate
        }
        N::SelectStmt(s) => {
            with_writes(s.with_clause.as_ref(), &mut writes);
            for arm in [s.larg.as_deref(), s.rarg.as_deref()].into_iter().flatten() {
                // UNION arms are SelectStmts themselves; their CTEs can write too.
                let inner = analyze_node(&N::SelectStmt(Box::new(arm.clone())));
                writes.extend(inner.writes);
            }
            if s.into_clause.is_some() {
                Kind::Ddl
            } else if let Some(first) = writes.first() {
                first.kind
            } else {
                Kind::Read
            }
        }
        N::ExplainStmt(s) => {
            let analyze = s.options.iter().any(|o| match o.node.as_ref() {
                Some(N::DefElem(d)) => d.defname == "analyze" && !def_is_false(d),
                _ => false,
            });
            let inner = s.query.as_ref().and_then(|n| n.node.as_ref());
            return match (analyze, inner) {
                (true, Some(q)) => {
                    let mut a = analyze_node(q);
                    a.explain_analyze = true;
                    a.binding = super::binding::Bindable::No;
                    a
                }
                _ => Analysis::of(Kind::Read),
            };
        }
        N::TransactionStmt(s) => {
            let mut a = Analysis::of(Kind::Transaction(tx_control(s.kind)));
            a.savepoint = s.savepoint_name.clone();
            a.chain = s.chain;
            return a;
        }
        N::DoStmt(_) | N::CallStmt(_) => Kind::Opaque,
        N::VariableSetStmt(_)
        | N::VariableShowStmt(_)
        | N::ListenStmt(_)
        | N::UnlistenStmt(_)
        | N::NotifyStmt(_)
        | N::PrepareStmt(_)
        | N::DeallocateStmt(_)
        | N::DeclareCursorStmt(_)
        | N::FetchStmt(_)
        | N::ClosePortalStmt(_)
        | N::DiscardStmt(_)
        | N::LockStmt(_)
        | N::CheckPointStmt(_)
        | N::LoadStmt(_)
        | N::ConstraintsSetStmt(_)
        | N::VacuumStmt(_) => Kind::Session,
        // EXECUTE runs a prepared statement whose text hindsight saw when it was PREPAREd; the
        // session layer resolves it. On its own, the text says nothing.
        N::ExecuteStmt(_) => Kind::Opaque,
        N::CreateTableAsStmt(_) | N::RefreshMatViewStmt(_) => {
            ddl_targets(node, &mut writes);
            Kind::Ddl
        }
        _ if is_ddl(node) => {
            ddl_targets(node, &mut writes);
            Kind::Ddl
        }
        _ => Kind::Opaque,
    };
    Analysis {
        kind,
        writes,
        explain_analyze: false,
        savepoint: String::new(),
        chain: false,
        routine: routine_name(node),
        binding: super::binding::of(node),
    }
}

/// The name a CREATE FUNCTION / PROCEDURE gives its routine (see [`Analysis::routine`]).
fn routine_name(node: &N) -> String {
    let N::CreateFunctionStmt(s) = node else {
        return String::new();
    };
    match s.funcname.last().and_then(|n| n.node.as_ref()) {
        Some(N::String(name)) => name.sval.to_lowercase(),
        _ => String::new(),
    }
}

/// The relations a schema change names (so that rules and events can say which table's
/// schema changed). Only the common forms: others name none.
fn ddl_targets(node: &N, out: &mut Vec<Write>) {
    let rel = match node {
        N::CreateStmt(s) => s.relation.as_ref(),
        N::AlterTableStmt(s) => s.relation.as_ref(),
        N::IndexStmt(s) => s.relation.as_ref(),
        N::RenameStmt(s) => s.relation.as_ref(),
        N::CreateTrigStmt(s) => s.relation.as_ref(),
        N::RuleStmt(s) => s.relation.as_ref(),
        N::ViewStmt(s) => s.view.as_ref(),
        N::RefreshMatViewStmt(s) => s.relation.as_ref(),
        N::CreateTableAsStmt(s) => s.into.as_ref().and_then(|i| i.rel.as_ref()),
        N::DropStmt(s) => {
            for obj in &s.objects {
                if let Some(N::List(l)) = obj.node.as_ref() {
                    let parts: Vec<String> = l
                        .items
                        .iter()
                        .filter_map(|n| match n.node.as_ref() {
                            Some(N::String(s)) => Some(s.sval.clone()),
                            _ => None,
                        })
                        .collect();
                    if let [schema @ .., name] = parts.as_slice() {
                        out.push(Write::ddl(TableName {
                            schema: schema.last().cloned().unwrap_or_default(),
                            name: name.clone(),
                        }));
                    }
                }
            }
            return;
        }
        _ => None,
    };
    push(out, Kind::Ddl, rel, Vec::new(), false);
}

/// Writes in the CTEs of a WITH clause (`WITH x AS (UPDATE … RETURNING …) …`).
fn with_writes(with: Option<&protobuf::WithClause>, out: &mut Vec<Write>) {
    let Some(with) = with else { return };
    for cte in &with.ctes {
        if let Some(N::CommonTableExpr(c)) = cte.node.as_ref() {
            if let Some(q) = c.ctequery.as_ref().and_then(|n| n.node.as_ref()) {
                nested_writes(q, out);
            }
        }
    }
}

fn nested_writes(node: &N, out: &mut Vec<Write>) {
    out.extend(analyze_node(node).writes.into_iter().map(|mut w| {
        w.nested = true;
        w
    }));
}

fn push(
    out: &mut Vec<Write>,
    kind: Kind,
    rel: Option<&protobuf::RangeVar>,
    columns: Vec<String>,
    returning: bool,
) {
    if let Some(rv) = rel {
        out.push(Write {
            kind,
            table: TableName {
                schema: rv.schemaname.clone(),
                name: rv.relname.clone(),
            },
            columns,
            returning,
            alias: rv
                .alias
                .as_ref()
                .map(|a| a.aliasname.clone())
                .unwrap_or_default(),
            nested: false,
            conflict_update: false,
            partitioned: false,
        });
    }
}

/// Column names from a list of ResTarget nodes (SET list, INSERT column list) or String nodes.
fn names(list: &[protobuf::Node]) -> Vec<String> {
    list.iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(N::ResTarget(t)) => Some(t.name.clone()),
            Some(N::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

fn def_is_false(d: &protobuf::DefElem) -> bool {
    match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
        Some(N::String(s)) => matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "off" | "0"),
        Some(N::Boolean(b)) => !b.boolval,
        Some(N::Integer(i)) => i.ival == 0,
        _ => false,
    }
}

fn tx_control(kind: i32) -> TxControl {
    use TransactionStmtKind as K;
    match TransactionStmtKind::try_from(kind).unwrap_or(K::Undefined) {
        K::TransStmtBegin | K::TransStmtStart | K::Undefined => TxControl::Begin,
        K::TransStmtCommit => TxControl::Commit,
        K::TransStmtRollback => TxControl::Rollback,
        K::TransStmtSavepoint => TxControl::Savepoint,
        K::TransStmtRelease => TxControl::Release,
        K::TransStmtRollbackTo => TxControl::RollbackTo,
        K::TransStmtPrepare => TxControl::PrepareTransaction,
        K::TransStmtCommitPrepared => TxControl::CommitPrepared,
        K::TransStmtRollbackPrepared => TxControl::RollbackPrepared,
    }
}

/// Schema-changing statements (CREATE/ALTER/DROP/GRANT/COMMENT/…).
fn is_ddl(node: &N) -> bool {
    matches!(
        node,
        N::CreateStmt(_)
            | N::AlterTableStmt(_)
            | N::DropStmt(_)
            | N::IndexStmt(_)
            | N::ViewStmt(_)
            | N::CreateSeqStmt(_)
            | N::AlterSeqStmt(_)
            | N::CreateFunctionStmt(_)
            | N::AlterFunctionStmt(_)
            | N::CreateTrigStmt(_)
            | N::RuleStmt(_)
            | N::CreateSchemaStmt(_)
            | N::CreateEnumStmt(_)
            | N::AlterEnumStmt(_)
            | N::CompositeTypeStmt(_)
            | N::CreateDomainStmt(_)
            | N::AlterDomainStmt(_)
            | N::CreateRangeStmt(_)
            | N::RenameStmt(_)
            | N::AlterObjectSchemaStmt(_)
            | N::AlterOwnerStmt(_)
            | N::GrantStmt(_)
            | N::GrantRoleStmt(_)
            | N::CommentStmt(_)
            | N::CreateExtensionStmt(_)
            | N::AlterExtensionStmt(_)
            | N::CreatePolicyStmt(_)
            | N::AlterPolicyStmt(_)
            | N::CreateRoleStmt(_)
            | N::AlterRoleStmt(_)
            | N::DropRoleStmt(_)
            | N::CreatedbStmt(_)
            | N::DropdbStmt(_)
            | N::AlterDatabaseStmt(_)
            | N::ClusterStmt(_)
            | N::ReindexStmt(_)
            | N::DefineStmt(_)
            | N::CreateCastStmt(_)
            | N::CreatePublicationStmt(_)
            | N::AlterPublicationStmt(_)
            | N::CreateSubscriptionStmt(_)
            | N::AlterSubscriptionStmt(_)
            | N::DropSubscriptionStmt(_)
            | N::CreateStatsStmt(_)
            | N::AlterDefaultPrivilegesStmt(_)
            | N::CreateTableSpaceStmt(_)
            | N::DropTableSpaceStmt(_)
            | N::CreateForeignTableStmt(_)
            | N::CreateEventTrigStmt(_)
            | N::SecLabelStmt(_)
            | N::DropOwnedStmt(_)
            | N::ReassignOwnedStmt(_)
    )
}

/// Whether a write's RETURNING clause (if any) lists expressions: the write then returns rows.
fn returns_rows(clause: Option<&pg_query::protobuf::ReturningClause>) -> bool {
    clause.is_some_and(|c| !c.exprs.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Analysis {
        let mut v = analyze(sql).unwrap();
        assert_eq!(v.len(), 1, "{sql}");
        v.remove(0).analysis
    }

    #[test]
    fn plain_dml_kinds_and_targets() {
        let a = one("UPDATE public.brieff SET bfso = NULL, bfkey = 1 WHERE bfkey < 10");
        assert_eq!(a.kind, Kind::Update);
        assert_eq!(a.writes[0].table.to_string(), "public.brieff");
        assert_eq!(a.writes[0].columns, vec!["bfso", "bfkey"]);
        assert_eq!(
            one("insert into t (a, b) values (1, 2)").writes[0].columns,
            vec!["a", "b"]
        );
        assert_eq!(
            one("DELETE FROM t USING u WHERE t.id = u.id").kind,
            Kind::Delete
        );
        assert_eq!(
            one("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING").kind,
            Kind::Upsert
        );
        assert_eq!(
            one("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 1").kind,
            Kind::Upsert
        );
        assert_eq!(
            one("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE").kind,
            Kind::Merge
        );
        assert_eq!(one("COPY t (a) FROM STDIN").kind, Kind::CopyIn);
        assert_eq!(one("COPY t TO STDOUT").kind, Kind::Read);
        let t = one("TRUNCATE a, b.c");
        assert_eq!(t.kind, Kind::Truncate);
        assert_eq!(t.writes.len(), 2);
        assert!(one("UPDATE t SET a = 1 RETURNING *").writes[0].returning);
    }

    #[test]
    fn hidden_writes_are_found() {
        let a = one("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x");
        assert_eq!(a.kind, Kind::Update);
        assert_eq!(a.writes[0].table.name, "t");
        let e = one("EXPLAIN (ANALYZE, COSTS off) DELETE FROM t");
        assert_eq!(e.kind, Kind::Delete);
        assert!(e.explain_analyze);
        assert_eq!(one("EXPLAIN ANALYZE DELETE FROM t").kind, Kind::Delete);
        assert_eq!(one("EXPLAIN DELETE FROM t").kind, Kind::Read);
        assert_eq!(
            one("EXPLAIN (ANALYZE false) DELETE FROM t").kind,
            Kind::Read
        );
        assert_eq!(one("SELECT * INTO newt FROM t").kind, Kind::Ddl);
        assert_eq!(
            one("COPY (DELETE FROM t RETURNING *) TO STDOUT").kind,
            Kind::Delete
        );
        let i = one("WITH d AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM d");
        assert_eq!(i.kind, Kind::Insert);
        assert_eq!(i.writes.len(), 2);
        let u = one("SELECT 1 UNION ALL (WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x)");
        assert_eq!(u.kind, Kind::Delete);
    }

    #[test]
    fn other_kinds() {
        assert_eq!(one("select 1").kind, Kind::Read);
        assert_eq!(one("SELECT * FROM t FOR UPDATE").kind, Kind::Read);
        assert_eq!(
            one("BEGIN ISOLATION LEVEL SERIALIZABLE").kind,
            Kind::Transaction(TxControl::Begin)
        );
        let r = one("rollback to savepoint s1");
        assert_eq!(r.kind, Kind::Transaction(TxControl::RollbackTo));
        assert_eq!(r.savepoint, "s1");
        assert_eq!(one("END").kind, Kind::Transaction(TxControl::Commit));
        assert_eq!(one("DO $$ BEGIN END $$").kind, Kind::Opaque);
        assert_eq!(one("CALL p()").kind, Kind::Opaque);
        assert_eq!(one("CREATE TABLE t (id int)").kind, Kind::Ddl);
        assert_eq!(one("ALTER TABLE t ADD COLUMN x int").kind, Kind::Ddl);
        assert_eq!(one("SET search_path = x").kind, Kind::Session);
        assert_eq!(one("CREATE TABLE n AS SELECT 1").kind, Kind::Ddl);
    }

    #[test]
    fn multi_statement_text_is_split_with_spans() {
        let sql = "BEGIN; UPDATE t SET a = 1; COMMIT";
        let v = analyze(sql).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(&sql[v[1].span.clone()].trim(), &"UPDATE t SET a = 1");
        assert_eq!(v[2].analysis.kind, Kind::Transaction(TxControl::Commit));
    }

    #[test]
    fn created_routines_are_named() {
        let sql = "CREATE OR REPLACE FUNCTION s.Backfill() RETURNS void LANGUAGE sql AS $$ DELETE FROM t $$";
        assert_eq!(one(sql).routine, "backfill");
        assert_eq!(
            one("CREATE PROCEDURE p() LANGUAGE sql AS $$ $$").routine,
            "p"
        );
        assert_eq!(one("CREATE TABLE f (a int)").routine, "");
    }

    #[test]
    fn syntax_error_names_the_statement() {
        let e = analyze("UPDATE SET WHERE").unwrap_err();
        assert!(e.to_string().contains("UPDATE SET WHERE"), "{e}");
    }
}
