//! Restore's reading of topic records: any bytes are a record or refused; a record that reads
//! gives its key, and keys round-trip.
#![no_main]
use hindsight::audit::event::{key_of, ChangeEvent, ChangeKey, TransactionRecord};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<TransactionRecord>(data);
    if let Ok(k) = serde_json::from_slice::<ChangeKey>(data) {
        let again: ChangeKey = serde_json::from_slice(&k.to_bytes()).expect("keys round-trip");
        assert_eq!(again, k);
    }
    if let Ok(e) = serde_json::from_slice::<ChangeEvent>(data) {
        let empty = serde_json::Map::new();
        let image = e.after.as_ref().or(e.before.as_ref()).unwrap_or(&empty);
        let names: Vec<String> = image.keys().take(2).cloned().collect();
        let _ = key_of(image, &names);
    }
});
