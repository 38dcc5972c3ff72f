//! What hindsight knows about the tables it captures (schema, name, key columns, triggers,
//! cascading foreign keys), cached per database and shared by the proxy's sessions.
//!
//! Looking a table up costs a catalog query of a few milliseconds; without the cache every
//! COMMIT would pay it. An entry is dropped when hindsight sees a schema change in its database
//! (any session, at the DDL statement and again when that transaction commits), and is trusted
//! for at most [`MAX_AGE`] otherwise: a key added or a table renamed behind hindsight's back
//! (a direct connection, a function running DDL) is picked up within that time. Until then
//! events carry the old name or key — the row images themselves are never affected.
//!
//! Lookups made inside a transaction that ran DDL are not stored: that transaction sees a
//! catalog nobody else may ever see (it can still roll back).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::publish::TableInfo;

/// How long an entry is trusted without a schema change seen.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// One database's tables by oid, each with when it was looked up.
type Tables = HashMap<u32, (TableInfo, Instant)>;

/// Table facts of every database the proxy serves, by table oid.
#[derive(Default)]
pub struct TableCache {
    /// Read at every COMMIT that captured rows: a read lock, not a mutex.
    by_db: RwLock<HashMap<String, Tables>>,
    /// Bumped by every schema change: sessions drop what they resolved themselves (see
    /// [`Targets`]) when it moved.
    generation: std::sync::atomic::AtomicU64,
}

impl TableCache {
    /// The cached facts of `oids` in `db`, and the oids that must be looked up.
    pub fn get(&self, db: &str, oids: &[u32]) -> (HashMap<u32, TableInfo>, Vec<u32>) {
        let map = self.by_db.read().unwrap_or_else(|e| e.into_inner());
        let tables = map.get(db);
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for oid in oids {
            match tables
                .and_then(|t| t.get(oid))
                .filter(|(_, at)| at.elapsed() < MAX_AGE)
            {
                Some((info, _)) => {
                    found.insert(*oid, info.clone());
                }
                None => missing.push(*oid),
            }
        }
        (found, missing)
    }

    /// Remember what the catalog said about these tables of `db`.
    pub fn put<'a>(&self, db: &str, tables: impl IntoIterator<Item = (&'a u32, &'a TableInfo)>) {
        let now = Instant::now();
        let mut map = self.by_db.write().unwrap_or_else(|e| e.into_inner());
        let entries = map.entry(db.to_string()).or_default();
        for (oid, info) in tables {
            entries.insert(*oid, (info.clone(), now));
        }
    }

    /// Changes with every schema change seen (in any database).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A schema change in `db`: look every table up again.
    pub fn invalidate(&self, db: &str) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.by_db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
    }
}

/// What a session resolved the write targets it named to: whether hindsight can add its
/// RETURNING columns to a write on them. Per session, because an unqualified name resolves
/// through the session's `search_path`; dropped after the session runs SET/RESET/DISCARD (any
/// statement that may change it) and after any schema change.
#[derive(Default)]
pub struct Targets {
    generation: u64,
    /// Name as written (`schema.name` or `name`) → what it resolved to.
    capturable: HashMap<String, Target>,
    /// Name as written → its oid and partition ancestors, and whether it has user triggers
    /// (`None`: no such table), for the foreign keys that reference it (`cascade`).
    identities: HashMap<String, Option<Identity>>,
}

/// A table as the foreign keys that reference it see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its oid, then the oids of the partitioned tables it is a partition of.
    pub oids: Vec<u32>,
    /// It has user triggers.
    pub triggers: bool,
}

/// What a write target resolved to, for capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A table (or no such relation: the statement fails on its own).
    Table,
    /// A partitioned table: rows come back through tuple routing, without `xmax`.
    Partitioned,
    /// A view or a relation with rules: hindsight's RETURNING columns cannot be added.
    Opaque,
}

impl Targets {
    pub fn get(&mut self, generation: u64, name: &str) -> Option<Target> {
        self.renew(generation);
        self.capturable.get(name).copied()
    }

    fn renew(&mut self, generation: u64) {
        if generation != self.generation {
            self.clear();
            self.generation = generation;
        }
    }

    /// The identity of `name` if known (`Some(None)`: known not to exist).
    pub fn identity(&mut self, generation: u64, name: &str) -> Option<Option<Identity>> {
        self.renew(generation);
        self.identities.get(name).cloned()
    }

    pub fn put_identity(&mut self, name: &str, identity: Option<Identity>) {
        self.identities.insert(name.to_string(), identity);
    }

    pub fn put(&mut self, name: &str, target: Target) {
        self.capturable.insert(name.to_string(), target);
    }

    pub fn clear(&mut self) {
        self.capturable.clear();
        self.identities.clear();
    }
}

/// The [`Identity`] of the table `reference` (as the statement wrote it, quoted): one row,
/// `[oid, ancestor oids…]` as JSON and whether it has user triggers; no row if it does not
/// exist.
pub fn identity_query(reference: &str) -> String {
    format!(
        "SELECT COALESCE((SELECT json_agg(a.relid::oid::int8 ORDER BY a.relid::oid = c.oid DESC) \
           FROM pg_partition_ancestors(c.oid) a), json_build_array(c.oid::int8))::text, \
           EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)::text \
         FROM pg_class c WHERE c.oid = to_regclass({})",
        super::rewrite::literal(reference)
    )
}

/// Parse the row of [`identity_query`].
pub fn parse_identity(rows: &[Vec<Option<Vec<u8>>>]) -> Option<Identity> {
    let row = rows.first()?;
    let oids: Vec<u32> = serde_json::from_slice(row.first()?.as_deref()?).ok()?;
    let triggers = row.get(1)?.as_deref()? == b"true";
    Some(Identity { oids, triggers })
}

/// What the relation `reference` (as the statement wrote it, quoted) is for capture: one row,
/// `table`, `partitioned` or `opaque` ([`Target`]); no row if it does not exist. Views (their rows come
/// from other tables, and they have no `tableoid`) and relations with INSERT/UPDATE/DELETE
/// rules (which may replace the statement, and refuse a RETURNING they cannot honour) do not.
pub fn capturable_query(reference: &str) -> String {
    format!(
        "SELECT CASE WHEN c.relkind NOT IN ('r', 'p') OR EXISTS (SELECT 1 FROM pg_rewrite r \
           WHERE r.ev_class = c.oid AND r.ev_type IN ('2', '3', '4')) THEN 'opaque' \
           WHEN c.relkind = 'p' THEN 'partitioned' ELSE 'table' END \
         FROM pg_class c WHERE c.oid = to_regclass({})",
        super::rewrite::literal(reference)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> TableInfo {
        TableInfo {
            schema: "public".into(),
            name: name.into(),
            key: vec!["id".into()],
            triggers: vec![],
            cascades_to: vec![],
        }
    }

    #[test]
    fn hits_misses_and_invalidation_are_per_database() {
        let c = TableCache::default();
        let (found, missing) = c.get("a", &[1, 2]);
        assert!(found.is_empty());
        assert_eq!(missing, vec![1, 2]);
        c.put("a", [(&1, &info("t1"))]);
        let (found, missing) = c.get("a", &[1, 2]);
        assert_eq!(found[&1].name, "t1");
        assert_eq!(missing, vec![2]);
        // Same oid in another database is another table.
        assert_eq!(c.get("b", &[1]).1, vec![1]);
        c.invalidate("a");
        assert_eq!(c.get("a", &[1]).1, vec![1]);
    }
}
