//! Functions that may write rows when a query calls them (`SELECT bump(1)`): user-defined
//! VOLATILE functions and procedures that do not belong to an extension. A query that calls one
//! is recorded as an opaque statement (hindsight cannot see the rows the function changes).
//!
//! The list comes from the catalog, per database, shared by the proxy's sessions. It is read
//! again after hindsight sees a schema change in that database, and at least every
//! [`MAX_AGE`] (functions created behind hindsight's back).
//!
//! Over-approximation by design: a VOLATILE function that only reads (VOLATILE is
//! PostgreSQL's default) also makes its queries opaque; declaring it STABLE avoids that.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a list is trusted without a schema change seen.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Lower-case names of the functions and procedures that may write, in one database.
pub type Names = Arc<Vec<String>>;

/// The catalog query giving [`Names`].
pub const QUERY: &str = "SELECT DISTINCT lower(p.proname) FROM pg_proc p \
     JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
       AND p.provolatile = 'v' AND p.prokind IN ('f', 'p') \
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass \
                       AND d.objid = p.oid AND d.deptype = 'e')";

struct Entry {
    names: Names,
    loaded: Instant,
}

/// The lists of every database the proxy serves.
#[derive(Default)]
pub struct WritingFunctions {
    /// Read on every query the fast path passes: a read lock, not a mutex.
    by_db: RwLock<HashMap<String, Entry>>,
}

impl WritingFunctions {
    /// The list for `db`, unless it must be read (again).
    pub fn get(&self, db: &str) -> Option<Names> {
        let map = self.by_db.read().unwrap_or_else(|e| e.into_inner());
        map.get(db)
            .filter(|e| e.loaded.elapsed() < MAX_AGE)
            .map(|e| Arc::clone(&e.names))
    }

    pub fn put(&self, db: &str, names: Vec<String>) -> Names {
        let names = Arc::new(names);
        self.by_db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                db.to_string(),
                Entry {
                    names: Arc::clone(&names),
                    loaded: Instant::now(),
                },
            );
        names
    }

    /// A schema change in `db`: read the list again before it is next needed.
    pub fn invalidate(&self, db: &str) {
        self.by_db
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(db);
    }
}

/// Whether `sql` calls one of `names`: the name (case-insensitive, not preceded by an
/// identifier character) followed by optional whitespace and `(`. A match inside a string
/// literal or comment also counts (safe side).
pub fn calls_any(sql: &[u8], names: &[String]) -> bool {
    names.iter().any(|n| calls(sql, n.as_bytes()))
}

fn calls(sql: &[u8], name: &[u8]) -> bool {
    if name.is_empty() || sql.len() < name.len() {
        return false;
    }
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$';
    (0..=sql.len() - name.len()).any(|i| {
        sql[i..i + name.len()].eq_ignore_ascii_case(name)
            && (i == 0 || !ident(sql[i - 1]))
            && sql[i + name.len()..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'(')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_calls_not_mentions() {
        let names = vec!["bump".to_string()];
        assert!(calls_any(b"SELECT bump(1)", &names));
        assert!(calls_any(b"select app.BUMP (1), 2", &names));
        assert!(!calls_any(b"SELECT bumped(1), bump FROM t", &names));
        assert!(!calls_any(b"SELECT rebump(1)", &names));
        assert!(!calls_any(b"SELECT 1", &[]));
    }
}
