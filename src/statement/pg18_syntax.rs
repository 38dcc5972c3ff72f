//! PostgreSQL 18's `RETURNING WITH (OLD AS o, NEW AS n) …`, which renames the `old` and `new`
//! rows of a write's RETURNING list: the names, found at the token level (the parser reads the
//! clause; capture needs only the two names to build its own RETURNING expressions).
//!
//! This module knows nothing of capture.

use pg_query::protobuf::Token as T;

/// The names a write's RETURNING list gives its `old` and `new` rows: `(old, new)` as written
/// in its first top-level `RETURNING WITH (…)` (quoted identifiers keep their quotes), else
/// `old` and `new`.
pub fn returning_aliases(sql: &str) -> (String, String) {
    let mut names = ("old".to_string(), "new".to_string());
    // Most statements: no WITH at all, no scan.
    if !sql
        .as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"with"))
    {
        return names;
    }
    let Ok(tokens) = super::parser::tokens(sql) else {
        return names;
    };
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let text = |i: usize| &sql[tokens[i].start as usize..tokens[i].end as usize];
    let mut depth = 0i32;
    for i in 0..tokens.len() {
        match kind(i) {
            Some(T::Ascii40 | T::Ascii91) => depth += 1,
            Some(T::Ascii41 | T::Ascii93) => depth -= 1,
            Some(T::Returning)
                if depth == 0
                    && kind(i + 1) == Some(T::With)
                    && kind(i + 2) == Some(T::Ascii40) =>
            {
                let mut j = i + 3;
                // `OLD AS name` / `NEW AS name`, comma-separated.
                while j + 2 < tokens.len() && kind(j + 1) == Some(T::As) {
                    let alias = text(j + 2).to_string();
                    match text(j).to_ascii_lowercase().as_str() {
                        "old" => names.0 = alias,
                        "new" => names.1 = alias,
                        _ => {}
                    }
                    j += 3;
                    if kind(j) != Some(T::Ascii44) {
                        break;
                    }
                    j += 1;
                }
                return names;
            }
            _ => {}
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returning_with_is_postgresql_18_grammar() {
        let sql = "UPDATE t SET a = 1 RETURNING WITH (OLD AS o,\n NEW AS \"n n\") o.a, \"n n\".a";
        assert!(crate::statement::parser::parse(sql).is_ok());
        for bad in [
            "UPDATE t SET v = 1 RETURNING WITH (OLD AS AS n) o.v",
            "UPDATE t SET v = 1 RETURNING WITH (MID AS m) m.v",
            "UPDATE t SET v = 1 RETURNING WITH () v",
            "UPDATE t SET v = 1 RETURNING WITH (OLD o) o.v",
        ] {
            assert!(crate::statement::parser::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aliases_come_from_the_top_level_returning_with() {
        let own = |s: &str| returning_aliases(s);
        assert_eq!(
            own("UPDATE t SET a = 1 RETURNING WITH (OLD AS o, NEW AS n) o.a"),
            ("o".into(), "n".into())
        );
        assert_eq!(
            own("DELETE FROM t RETURNING WITH (old AS \"old foo\") \"old foo\".*"),
            ("\"old foo\"".into(), "new".into())
        );
        assert_eq!(
            own("UPDATE t SET a = 1 RETURNING old.a, new.a"),
            ("old".into(), "new".into())
        );
        // A RETURNING inside a CTE is that CTE's, not the statement's.
        assert_eq!(
            own("WITH u AS (UPDATE x SET a = 1 RETURNING WITH (NEW AS n) n.a) DELETE FROM t RETURNING 1"),
            ("old".into(), "new".into())
        );
    }
}
