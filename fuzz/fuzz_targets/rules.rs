//! The rules file and its CEL guards: any text compiles or is refused with an error; never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = hindsight::gates::rules::compile(text, "fuzz.toml") {
        assert!(!e.to_string().is_empty());
    }
});
