//! PII redaction: per table and column, applied to row images before anything leaves the
//! process (events and message keys alike).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::audit::event::Row;

pub use crate::config::{RedactAction, RedactRule};

/// The rules plus the hashing key.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    rules: Vec<RedactRule>,
    key: Vec<u8>,
}

impl Redactor {
    pub fn new(rules: Vec<RedactRule>, key: &str) -> Self {
        Redactor {
            rules,
            key: key.as_bytes().to_vec(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule covers `schema.table`. The statement text of such a table's events
    /// is published with its constants replaced by placeholders, since literals may hold the
    /// very values the rules protect.
    pub fn covers(&self, schema: &str, table: &str) -> bool {
        self.rules.iter().any(|r| r.matches(schema, table))
    }

    /// Redact `row`, an image of `schema.table`, in place.
    pub fn apply(&self, schema: &str, table: &str, row: &mut Row) {
        for rule in &self.rules {
            if !rule.matches(schema, table) {
                continue;
            }
            for col in &rule.columns {
                match rule.action {
                    RedactAction::Drop => {
                        row.remove(col);
                    }
                    RedactAction::Mask => {
                        if let Some(v) = row.get_mut(col) {
                            if !v.is_null() {
                                *v = "****".into();
                            }
                        }
                    }
                    RedactAction::Hash => {
                        if let Some(v) = row.get_mut(col) {
                            if !v.is_null() {
                                let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
                                    .expect("HMAC takes keys of any length");
                                mac.update(v.to_string().as_bytes());
                                *v = format!(
                                    "hmac-sha256:{}",
                                    hex::encode(mac.finalize().into_bytes())
                                )
                                .into();
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        serde_json::from_str(
            r#"{"id": 1, "email": "a@b.c", "ssn": "123", "note": null, "name": "x"}"#,
        )
        .unwrap()
    }

    #[test]
    fn drop_mask_and_hash() {
        let r = Redactor::new(
            vec![
                RedactRule {
                    table: "public.users".into(),
                    columns: vec!["ssn".into()],
                    action: RedactAction::Drop,
                },
                RedactRule {
                    table: "users".into(),
                    columns: vec!["name".into(), "note".into()],
                    action: RedactAction::Mask,
                },
                RedactRule {
                    table: "public.users".into(),
                    columns: vec!["email".into()],
                    action: RedactAction::Hash,
                },
            ],
            "k",
        );
        let mut a = row();
        r.apply("public", "users", &mut a);
        assert!(!a.contains_key("ssn"));
        assert_eq!(a["name"], "****");
        assert!(a["note"].is_null(), "NULL stays NULL");
        let h = a["email"].as_str().unwrap();
        assert!(h.starts_with("hmac-sha256:") && !h.contains("a@b.c"));
        let mut b = row();
        r.apply("public", "users", &mut b);
        assert_eq!(a["email"], b["email"], "equal values hash equally");
        let mut other = row();
        r.apply("other", "users", &mut other);
        assert!(
            other.contains_key("ssn"),
            "schema-qualified rules match only their schema"
        );
        assert_eq!(other["name"], "****", "unqualified rules match any schema");
    }
}
