//! Facts the session looks up in the catalog through its own connection: the changed tables
//! (schema, name, key) and the transaction id at COMMIT, the functions that may write, what each
//! write target is (table, partitioned table, view), and the tables a TRUNCATE … CASCADE empties.
//! Each is cached where it can be and dropped on schema changes.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::AsyncWrite;

use super::cte::has_cte_writes;
use super::{ClientCapture, FunctionList, Protocol, TxnDdl};
use crate::capture::tables::{self, Identity, Target};
use crate::capture::{cascade, publish};
use crate::statement::analysis::TableName;
use crate::statement::cache::Statement;
use crate::statement::Kind;

/// Mark a statement with what its write target resolved to.
pub(super) fn apply_target(s: &mut Statement, target: Target) {
    match target {
        Target::Table => {}
        Target::Opaque => s.located.analysis.kind = Kind::Opaque,
        Target::Partitioned => {
            if let Some(w) = s.located.analysis.writes.first_mut() {
                w.partitioned = true;
            }
        }
    }
}

/// The PostgreSQL major whose grammar pg_query parses with.
pub(super) const PARSER_MAJOR: u32 = 18;

impl ClientCapture {
    /// The tables a `TRUNCATE … CASCADE` empties, from the catalog (empty for other
    /// statements, or if the lookup failed — the TRUNCATE is then refused).
    pub(super) async fn truncate_cascade<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        sql: &str,
        protocol: Protocol,
    ) -> std::io::Result<Vec<String>> {
        let Some(q) = crate::capture::rewrite::truncate_cascade_query(sql) else {
            return Ok(Vec::new());
        };
        self.own_queries = protocol;
        let reply = self.internal_query(w, &q).await?;
        Ok(reply.first_column(self.shared.lock().encoding.current()))
    }

    /// Whether the server may accept syntax hindsight's parser (PostgreSQL 18's grammar)
    /// rejects. On older servers a text the parser rejects is rejected by the server too, so
    /// it is relayed and the client gets the server's own syntax error; on newer ones a text
    /// the parser cannot read but that may write is refused (HS002), never run unaudited.
    pub(super) fn parser_may_lag(&self) -> bool {
        self.shared.lock().server_major > PARSER_MAJOR
    }

    /// For each statement: what its write target is for capture. A relation that cannot take
    /// hindsight's RETURNING columns (a view, a relation with rules) makes the write an opaque
    /// statement that runs unchanged. Targets are resolved once per session
    /// (see `tables::Targets`).
    pub(super) async fn resolve_targets<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        statements: &[Statement],
        protocol: Protocol,
    ) -> std::io::Result<Vec<Target>> {
        let mut out = Vec::with_capacity(statements.len());
        for s in statements {
            let a = &s.located.analysis;
            let target = match (a.kind, a.writes.as_slice()) {
                (
                    Kind::Insert | Kind::Update | Kind::Delete | Kind::Upsert | Kind::Merge,
                    [only],
                ) if !only.nested && !a.explain_analyze => {
                    self.resolve_target(w, &only.table, protocol).await?
                }
                // A statement with writes in its WITH clause: one target that cannot take the
                // capture columns makes the whole statement opaque.
                _ if has_cte_writes(s) => {
                    let mut target = Target::Table;
                    for write in &a.writes {
                        if self.resolve_target(w, &write.table, protocol).await? == Target::Opaque {
                            target = Target::Opaque;
                            break;
                        }
                    }
                    target
                }
                _ => Target::Table,
            };
            out.push(target);
        }
        Ok(out)
    }

    /// What `table`, as the session names it, is for capture (cached per session).
    async fn resolve_target<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        table: &TableName,
        protocol: Protocol,
    ) -> std::io::Result<Target> {
        let generation = self.parts.tables.generation();
        let name = quoted_name(table);
        if let Some(t) = self.targets.get(generation, &name) {
            return Ok(t);
        }
        self.own_queries = protocol;
        let reply = self
            .internal_query(w, &crate::capture::tables::capturable_query(&name))
            .await?;
        if reply.error.is_some() {
            // An aborted transaction: the statement fails on its own.
            return Ok(Target::Table);
        }
        // No row: no such relation; the statement fails on its own.
        let t = match reply
            .rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .as_deref()
        {
            Some(b"opaque") => Target::Opaque,
            Some(b"partitioned") => Target::Partitioned,
            _ => Target::Table,
        };
        self.targets.put(&name, t);
        Ok(t)
    }

    /// Whether a read the fast path passed must be analysed after all: it may call a function
    /// that writes, or the list of such functions must be read first.
    pub(super) fn may_call_writer(&self, sql: &[u8]) -> bool {
        if self.functions_list == FunctionList::Stale {
            return true;
        }
        match self.parts.functions.get(&self.session.database) {
            Some(names) => crate::capture::functions::calls_any(sql, &names),
            None => true,
        }
    }

    /// What a statement of `kind` that is about to run changes in the session's caches: a
    /// schema change empties them; DO and CALL may create tables too (which may hide a table a
    /// bound write's prepared statement names), so they retire those statements.
    pub(super) fn statement_runs(&mut self, kind: Kind) {
        match kind {
            Kind::Ddl => self.schema_changed(),
            Kind::Opaque => self.bound.retire(),
            Kind::Read
            | Kind::Insert
            | Kind::Update
            | Kind::Delete
            | Kind::Upsert
            | Kind::Merge
            | Kind::CopyIn
            | Kind::Truncate
            | Kind::Transaction(_)
            | Kind::Session => {}
        }
    }

    /// A DDL statement is about to run: function list and table facts are read again.
    pub(super) fn schema_changed(&mut self) {
        // A table created now (a temporary one above all) may take a name a prepared statement
        // resolved to another table: the server re-reads names only after a change to the
        // tables the statement names, or to search_path.
        self.bound.retire();
        self.functions_list = FunctionList::Stale;
        self.txn_ddl = TxnDdl::Ran;
        self.parts.tables.invalidate(&self.session.database);
    }

    /// The transaction id and the facts of the changed tables: from the cache where it has
    /// them, else from the catalog (one query inside the transaction; none when every table
    /// is cached and a captured row brought the id, `known_txid`).
    pub(super) async fn lookup_tables<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        oids: &[u32],
        known_txid: Option<i64>,
    ) -> std::io::Result<Option<(Option<i64>, HashMap<u32, publish::TableInfo>)>> {
        let db = self.session.database.clone();
        let (mut found, missing) = if self.txn_ddl == TxnDdl::Ran {
            (HashMap::new(), oids.to_vec())
        } else {
            self.parts.tables.get(&db, oids)
        };
        if let (Some(txid), true) = (known_txid, missing.is_empty()) {
            // Every table cached and the id known from a captured row: no round trip.
            return Ok(Some((Some(txid), found)));
        }
        self.parts.metrics.capture_catalog_queries.inc();
        let query = if missing.is_empty() {
            publish::TXID_QUERY.to_string()
        } else {
            publish::catalog_query(&missing, self.image_form())
        };
        let reply = self.internal_query(w, &query).await?;
        if reply.error.is_some() {
            return Ok(None);
        }
        let (txid, looked_up) = publish::parse_catalog(&reply.rows, self.image_form());
        if self.txn_ddl == TxnDdl::None {
            self.parts.tables.put(&db, &looked_up);
        }
        found.extend(looked_up);
        Ok(Some((txid, found)))
    }

    /// The functions that may write in this database, read from the catalog when needed.
    pub(super) async fn writing_functions<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        protocol: Protocol,
    ) -> std::io::Result<crate::capture::functions::Names> {
        let db = self.session.database.clone();
        if std::mem::take(&mut self.functions_list) == FunctionList::Stale {
            self.parts.functions.invalidate(&db);
            self.parts.cascades.invalidate(&db);
        }
        if let Some(names) = self.parts.functions.get(&db) {
            return Ok(names);
        }
        self.own_queries = protocol;
        let reply = self
            .internal_query(w, crate::capture::functions::QUERY)
            .await?;
        if reply.error.is_some() {
            // An aborted transaction: the statement fails on its own; try again next time.
            return Ok(Arc::default());
        }
        let names = reply.first_column(self.shared.lock().encoding.current());
        Ok(self.parts.functions.put(&db, names))
    }

    /// The cascades a DELETE, UPDATE or MERGE (`changes`) of `table` sets off (`Ok(None)`: no key
    /// with an action references it; `Err`: they cannot be captured).
    pub(super) async fn cascade_plan<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        table: &TableName,
        changes: Vec<cascade::RowChange>,
        protocol: Protocol,
    ) -> std::io::Result<Result<Option<Arc<cascade::Plan>>, cascade::CascadeError>> {
        let graph = match self.fk_graph(w, protocol).await? {
            Ok(g) if g.is_empty() => return Ok(Ok(None)),
            Ok(g) => g,
            Err(e) => return Ok(Err(e)),
        };
        let Some(identity) = self.identity(w, table, protocol).await? else {
            return Ok(Ok(None)); // No such table: the statement fails on its own.
        };
        let name = table.to_string();
        let root = cascade::Root {
            oids: &identity.oids,
            name: &name,
            triggers: identity.triggers,
            changes,
        };
        Ok(cascade::plan(&graph, root).map(|p| Some(Arc::new(p))))
    }

    /// The database's foreign keys with actions, from the cache or the catalog (not cached
    /// while the open transaction has run DDL: other sessions must not see its keys).
    async fn fk_graph<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        protocol: Protocol,
    ) -> std::io::Result<Result<Arc<cascade::Graph>, cascade::CascadeError>> {
        let db = self.session.database.clone();
        if self.txn_ddl == TxnDdl::None {
            if let Some(g) = self.parts.cascades.get(&db) {
                return Ok(Ok(g));
            }
        }
        self.own_queries = protocol;
        let reply = self.internal_query(w, cascade::QUERY).await?;
        if reply.error.is_some() {
            // An aborted transaction: the statement fails on its own.
            return Ok(Ok(Arc::default()));
        }
        let encoding = self.shared.lock().encoding.current();
        let graph = match cascade::parse(&reply.rows, encoding) {
            Ok(g) => g,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(match self.txn_ddl {
            TxnDdl::None => self.parts.cascades.put(&db, graph),
            TxnDdl::Ran => Arc::new(graph),
        }))
    }

    /// `table`'s oid, partition ancestors and triggers (cached per session; `None`: no such
    /// table).
    async fn identity<W: AsyncWrite + Unpin + Send>(
        &mut self,
        w: &mut W,
        table: &TableName,
        protocol: Protocol,
    ) -> std::io::Result<Option<Identity>> {
        let generation = self.parts.tables.generation();
        let name = quoted_name(table);
        if let Some(known) = self.targets.identity(generation, &name) {
            return Ok(known);
        }
        self.own_queries = protocol;
        let reply = self
            .internal_query(w, &tables::identity_query(&name))
            .await?;
        if reply.error.is_some() {
            return Ok(None);
        }
        let identity = tables::parse_identity(&reply.rows);
        self.targets.put_identity(&name, identity.clone());
        Ok(identity)
    }
}

/// `table` as the statement wrote it, quoted (the key of the session's target caches).
fn quoted_name(table: &TableName) -> String {
    match table.schema.as_str() {
        "" => crate::capture::rewrite::quote(&table.name),
        schema => format!(
            "{}.{}",
            crate::capture::rewrite::quote(schema),
            crate::capture::rewrite::quote(&table.name)
        ),
    }
}
