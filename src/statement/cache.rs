//! Analyses cached by statement text, shared by all sessions of a process.
//!
//! Applications send the same few hundred statement texts millions of times; parsing each once
//! makes the per-statement cost a hash lookup. The cache is bounded: when it is full it is
//! cleared (cheaper than LRU bookkeeping on every hit, and a working set that fits refills it
//! in one pass).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::analysis::{analyze, AnalysisError, Located};

/// One analysed text: its statements and their fingerprints.
#[derive(Debug, Clone)]
pub struct Analyzed {
    pub statements: Vec<Statement>,
}

/// One statement of an analysed text.
#[derive(Debug, Clone)]
pub struct Statement {
    pub located: Located,
    /// pg_query fingerprint (hex): equal for statements that differ only in constants.
    pub fingerprint: String,
}

/// Result of analysing a text; errors are cached too (a client that repeats a syntax error must
/// not cost a parse each time).
pub type Entry = Arc<Result<Analyzed, AnalysisError>>;

/// Bounded, process-wide analysis cache.
pub struct AnalysisCache {
    map: Mutex<HashMap<Box<str>, Entry>>,
    capacity: usize,
}

impl AnalysisCache {
    /// A cache holding at most `capacity` texts.
    pub fn new(capacity: usize) -> Self {
        AnalysisCache {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The analysis of `text`, from the cache or freshly parsed.
    pub fn get(&self, text: &str) -> Entry {
        if let Some(hit) = self.lock().get(text) {
            return Arc::clone(hit);
        }
        // Parse outside the lock: other sessions keep hitting the cache meanwhile.
        let entry: Entry = Arc::new(analyze_with_fingerprints(text));
        let mut map = self.lock();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(text.into(), Arc::clone(&entry));
        entry
    }

    /// Number of cached texts.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Entry>> {
        // A panic while holding the lock cannot leave the map inconsistent (inserts are atomic).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn analyze_with_fingerprints(text: &str) -> Result<Analyzed, AnalysisError> {
    let statements = analyze(text)?
        .into_iter()
        .map(|located| {
            let one = &text[located.span.clone()];
            let fingerprint = pg_query::fingerprint(one)
                .or_else(|e| match super::pg18_syntax::blank_returning_with(one) {
                    Some(blanked) => pg_query::fingerprint(&blanked),
                    None => Err(e),
                })
                .map(|f| f.hex)
                .unwrap_or_default();
            Statement {
                located,
                fingerprint,
            }
        })
        .collect();
    Ok(Analyzed { statements })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_is_parsed_once_and_fingerprints_ignore_constants() {
        let cache = AnalysisCache::new(10);
        let a = cache.get("UPDATE t SET a = 1 WHERE id = 5");
        let b = cache.get("UPDATE t SET a = 1 WHERE id = 5");
        assert!(Arc::ptr_eq(&a, &b));
        let c = cache.get("UPDATE t SET a = 2 WHERE id = 7");
        let fp = |e: &Entry| {
            e.as_ref().as_ref().unwrap().statements[0]
                .fingerprint
                .clone()
        };
        assert_eq!(fp(&a), fp(&c));
        assert!(!fp(&a).is_empty());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn full_cache_is_cleared_not_grown() {
        let cache = AnalysisCache::new(2);
        for i in 0..5 {
            cache.get(&format!("SELECT {i}"));
        }
        assert!(cache.len() <= 2);
    }
}
