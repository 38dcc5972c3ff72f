//! The sqlcommenter parser: the statement it returns is a prefix of the text, and a text
//! without tags comes back whole.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (stmt, tags) = hindsight::statement::sqlcommenter::split(text);
    assert!(text.starts_with(stmt), "{stmt:?} is not a prefix of {text:?}");
    if tags.is_empty() {
        assert_eq!(stmt, text);
    }
});
