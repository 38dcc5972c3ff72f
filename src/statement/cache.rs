//! Analyses cached by statement text, shared by all sessions of a process.
//!
//! Applications send the same few hundred statement texts millions of times; parsing each once
//! makes the per-statement cost a hash lookup. The cache is bounded: when it is full it is
//! cleared (cheaper than LRU bookkeeping on every hit, and a working set that fits refills it
//! in one pass).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::analysis::{analyze, Analysis, AnalysisError, Located};
use super::shape::{self, Place, Shape};

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
    maps: Mutex<Maps>,
    capacity: usize,
}

/// The cache's two maps, each holding at most `capacity` entries.
#[derive(Default)]
struct Maps {
    /// By exact text.
    texts: HashMap<Box<str>, Entry>,
    /// By shape (see [`Shape`]): the analysis shared by texts that differ only in constants.
    shapes: HashMap<String, Arc<Shared>>,
}

/// The analysis a shape's texts share.
struct Shared {
    statements: Vec<SharedStatement>,
}

/// One statement's analysis, with where its span starts and ends told by tokens.
struct SharedStatement {
    analysis: Analysis,
    start: Place,
    end: Place,
    /// The fingerprint every text of the shape has here, when that is proven (see
    /// [`shape::fingerprint_is_shared`]); `None`: each text's is taken.
    fingerprint: Option<String>,
}

impl Shared {
    /// What `analyzed` (of `text`) shares with every text of `shape`; `None` if it cannot be
    /// shared (its kinds, or a span boundary inside a token).
    fn of(analyzed: &Analyzed, text: &str, shape: &Shape) -> Option<Shared> {
        if !shape.shareable(analyzed.statements.iter().map(|s| s.located.analysis.kind)) {
            return None;
        }
        let statements = analyzed
            .statements
            .iter()
            .map(|s| {
                let (start, end) = (
                    shape.place(s.located.span.start),
                    shape.place(s.located.span.end),
                );
                let one = text.get(s.located.span.clone())?;
                (!start.is_empty() && !end.is_empty()).then(|| SharedStatement {
                    analysis: s.located.analysis.clone(),
                    start,
                    end,
                    fingerprint: shape::fingerprint_is_shared(one, &s.fingerprint)
                        .then(|| s.fingerprint.clone()),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Shared { statements })
    }

    /// The analysis of `text` (of the same shape): the shared statements at their spans in
    /// it, each with its own fingerprint. `None` if a span cannot be placed in it for sure.
    fn apply(&self, text: &str, shape: &Shape) -> Option<Analyzed> {
        let statements = self
            .statements
            .iter()
            .map(
                |SharedStatement {
                     analysis,
                     start,
                     end,
                     fingerprint,
                 }| {
                    let span = shape.find(start)?..shape.find(end)?;
                    let one = text.get(span.clone())?;
                    Some(Statement {
                        fingerprint: fingerprint.clone().unwrap_or_else(|| fingerprint_of(one)),
                        located: Located {
                            analysis: analysis.clone(),
                            span,
                        },
                    })
                },
            )
            .collect::<Option<Vec<_>>>()?;
        Some(Analyzed { statements })
    }
}

impl AnalysisCache {
    /// A cache holding at most `capacity` texts (and as many shapes).
    pub fn new(capacity: usize) -> Self {
        AnalysisCache {
            maps: Mutex::new(Maps::default()),
            capacity: capacity.max(1),
        }
    }

    /// The analysis of `text`: from the cache by its text, or by its shape, or freshly parsed.
    /// A text found by its shape is not kept by itself (texts with values in them are seldom
    /// sent twice, and would push out those that are).
    pub fn get(&self, text: &str) -> Entry {
        if let Some(hit) = self.lock().texts.get(text) {
            return Arc::clone(hit);
        }
        // Scan and parse outside the lock: other sessions keep hitting the cache meanwhile.
        let shape = Shape::of(text);
        if let Some(shape) = &shape {
            let shared = self.lock().shapes.get(&shape.key).cloned();
            if let Some(analyzed) = shared.and_then(|s| s.apply(text, shape)) {
                return Arc::new(Ok(analyzed));
            }
        }
        let entry: Entry = Arc::new(analyze_with_fingerprints(text));
        let shared = match (&shape, entry.as_ref()) {
            (Some(shape), Ok(analyzed)) => Shared::of(analyzed, text, shape).map(Arc::new),
            _ => None,
        };
        let mut maps = self.lock();
        if let (Some(shape), Some(shared)) = (shape, shared) {
            if maps.shapes.len() >= self.capacity {
                maps.shapes.clear();
            }
            maps.shapes.insert(shape.key, shared);
        }
        if maps.texts.len() >= self.capacity {
            maps.texts.clear();
        }
        maps.texts.insert(text.into(), Arc::clone(&entry));
        entry
    }

    /// Number of cached texts.
    pub fn len(&self) -> usize {
        self.lock().texts.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of cached shapes.
    pub fn shapes(&self) -> usize {
        self.lock().shapes.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the maps inconsistent (inserts are atomic).
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// pg_query's fingerprint of one statement (hex; empty if it cannot be taken).
fn fingerprint_of(one: &str) -> String {
    super::parser::fingerprint(one)
        .map(|f| f.hex)
        .unwrap_or_default()
}

fn analyze_with_fingerprints(text: &str) -> Result<Analyzed, AnalysisError> {
    let statements = analyze(text)?
        .into_iter()
        .map(|located| Statement {
            fingerprint: fingerprint_of(&text[located.span.clone()]),
            located,
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
        assert_eq!(cache.len(), 1, "the second text was found by its shape");
        assert_eq!(cache.shapes(), 1);
    }

    /// Texts of one shape each (constants and white space differ), in pairs: the second, found
    /// by the first's shape, must get exactly what parsing it gets.
    const SAME_SHAPE: &[(&str, &str)] = &[
        (
            "UPDATE pgbench_accounts SET abalance = abalance + -3447 WHERE aid = 88771;",
            "UPDATE pgbench_accounts SET abalance = abalance + -12 WHERE aid = 5;",
        ),
        (
            "INSERT INTO h (tid, bid, aid, delta, mtime) VALUES (41, 8, 88771, -3447, CURRENT_TIMESTAMP)",
            "INSERT INTO h (tid, bid, aid, delta, mtime)   VALUES (1, 2, 3, -4, CURRENT_TIMESTAMP)",
        ),
        (
            "  DELETE FROM s.t AS x WHERE x.a = 'it''s' RETURNING x.a /* app:1 */",
            "  DELETE FROM s.t AS x WHERE x.a = 'b' RETURNING x.a /* app:1 */",
        ),
        (
            "SELECT 1; UPDATE t SET a = 'x' WHERE id = 10; INSERT INTO u VALUES (1.5)",
            "SELECT 22; UPDATE t SET a = 'yyy' WHERE id = 3; INSERT INTO u VALUES (2.75)",
        ),
        (
            "WITH d AS (DELETE FROM t WHERE id < 100 RETURNING *) INSERT INTO a SELECT * FROM d",
            "WITH d AS (DELETE FROM t WHERE id < 7 RETURNING *) INSERT INTO a SELECT * FROM d",
        ),
        (
            "INSERT INTO t VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET v = 'b'",
            "INSERT INTO t VALUES (2, 'c') ON CONFLICT (id) DO UPDATE SET v = 'd'",
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 1",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 2",
        ),
        (
            "UPDATE t SET a = 1 RETURNING WITH (OLD AS o) o.a",
            "UPDATE t SET a = 2 RETURNING WITH (OLD AS o) o.a",
        ),
        // float(p) picks float4 or float8: the fingerprints differ, so each text takes its own.
        (
            "SELECT a::float(30) FROM t WHERE id = 1",
            "SELECT a::float(10) FROM t WHERE id = 2",
        ),
    ];

    /// `got` is what parsing `text` gets: every statement's analysis, span and fingerprint.
    fn assert_as_parsed(got: &Entry, text: &str) {
        let parsed = analyze_with_fingerprints(text).unwrap();
        let got = got.as_ref().as_ref().unwrap();
        assert_eq!(got.statements.len(), parsed.statements.len(), "{text}");
        for (a, b) in got.statements.iter().zip(&parsed.statements) {
            assert_eq!(a.located, b.located, "{text}");
            assert_eq!(a.fingerprint, b.fingerprint, "{text}");
        }
    }

    #[test]
    fn a_text_found_by_its_shape_gets_what_parsing_it_gets() {
        for (first, second) in SAME_SHAPE {
            let cache = AnalysisCache::new(10);
            cache.get(first);
            assert_eq!(cache.shapes(), 1, "{first}");
            let shared = cache.get(second);
            assert_eq!(cache.len(), 1, "found by its shape, not parsed: {second}");
            assert_as_parsed(&shared, second);
        }
    }

    /// A string constant that is not a value: `UESCAPE '!'` says how the Unicode identifier
    /// before it is spelled, so texts that differ in it name different tables.
    #[test]
    fn an_identifiers_escape_character_is_part_of_the_shape() {
        let cache = AnalysisCache::new(10);
        let first = r#"UPDATE U&"t!0061" UESCAPE '!' SET v = 1"#;
        let second = r#"UPDATE U&"t!0061" UESCAPE '#' SET v = 1"#;
        assert_as_parsed(&cache.get(first), first);
        assert_as_parsed(&cache.get(second), second);
        let table = |e: &Entry| {
            e.as_ref().as_ref().unwrap().statements[0]
                .located
                .analysis
                .writes[0]
                .table
                .name
                .clone()
        };
        assert_eq!(table(&cache.get(first)), "ta");
        assert_eq!(table(&cache.get(second)), "t!0061");
    }

    #[test]
    fn schema_changes_explain_and_session_statements_are_parsed_each_time() {
        for (first, second) in [
            (
                "EXPLAIN (ANALYZE 1) UPDATE t SET a = 1",
                "EXPLAIN (ANALYZE 0) UPDATE t SET a = 1",
            ),
            (
                "CREATE TABLE t (a int) WITH (fillfactor = 70)",
                "CREATE TABLE t (a int) WITH (fillfactor = 80)",
            ),
            ("SET work_mem = '64MB'", "SET work_mem = '1GB'"),
        ] {
            let cache = AnalysisCache::new(10);
            cache.get(first);
            assert_eq!(cache.shapes(), 0, "{first}");
            let got = cache.get(second);
            assert_eq!(cache.len(), 2, "{second}");
            assert_as_parsed(&got, second);
        }
        // EXPLAIN's option read from its constant.
        let cache = AnalysisCache::new(10);
        let analyzes = |e: &Entry| {
            e.as_ref().as_ref().unwrap().statements[0]
                .located
                .analysis
                .explain_analyze
        };
        assert!(analyzes(
            &cache.get("EXPLAIN (ANALYZE 1) UPDATE t SET a = 1")
        ));
        assert!(!analyzes(
            &cache.get("EXPLAIN (ANALYZE 0) UPDATE t SET a = 1")
        ));
    }

    #[test]
    fn a_span_that_white_space_makes_uncertain_is_parsed_again() {
        let cache = AnalysisCache::new(10);
        cache.get("UPDATE t SET a = 1; UPDATE t SET a = 2");
        // The first statement's end was both the end of `1` and the start of `;`.
        let text = "UPDATE t SET a = 1 ; UPDATE t SET a = 2";
        let got = cache.get(text);
        assert_eq!(cache.len(), 2, "parsed");
        assert_as_parsed(&got, text);
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
