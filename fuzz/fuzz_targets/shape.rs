//! Texts that share an analysis by their shape: for any text, a text that differs from it only
//! in its constants gets from the cache (found by the first text's shape) exactly what parsing
//! it gets — every statement's analysis, span and fingerprint.
#![no_main]
use hindsight::statement::cache::{AnalysisCache, Entry};
use hindsight::statement::shape::with_other_constants;
use libfuzzer_sys::fuzz_target;

fn same(shared: &Entry, parsed: &Entry, text: &str, first: &str) {
    let (Ok(shared), Ok(parsed)) = (shared.as_ref(), parsed.as_ref()) else { return };
    assert_eq!(shared.statements.len(), parsed.statements.len(), "{first:?} → {text:?}");
    for (a, b) in shared.statements.iter().zip(&parsed.statements) {
        assert_eq!(a.located, b.located, "{first:?} → {text:?}");
        assert_eq!(a.fingerprint, b.fingerprint, "{first:?} → {text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.len() > 4096 || text.contains('\0') {
        return;
    }
    for n in 0..3 {
        let Some(other) = with_other_constants(text, n) else { return };
        let cache = AnalysisCache::new(10);
        cache.get(text);
        let shared = cache.get(&other);
        let parsed = AnalysisCache::new(10).get(&other);
        same(&shared, &parsed, &other, text);
    }
});
