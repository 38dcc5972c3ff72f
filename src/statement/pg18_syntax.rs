//! PostgreSQL 18 syntax that hindsight's parser (libpg_query, PostgreSQL 17's grammar) does not
//! know, handled at the token level so that statements using it are analysed and captured like
//! any other.
//!
//! The one such clause today is `RETURNING WITH (OLD AS o, NEW AS n) …`, which renames the
//! `old` and `new` rows of a write's RETURNING list. For parsing, the `WITH (…)` part is
//! replaced by spaces of the same length: every position in the parse tree still points into
//! the client's text, and the statement's meaning for analysis (what it writes, whether it
//! returns rows) is unchanged. The text sent to the server is always the client's.
//!
//! This module knows nothing of capture: it only parses and finds the aliases.

use pg_query::protobuf::Token as T;

/// Parse `sql` with the real grammar; if that fails, again with PostgreSQL 18's `RETURNING
/// WITH (…)` clauses blanked (the first error is kept if that fails too).
pub fn parse(sql: &str) -> pg_query::Result<pg_query::ParseResult> {
    match pg_query::parse(sql) {
        Ok(p) => Ok(p),
        Err(e) => match blank_returning_with(sql) {
            Some(blanked) => pg_query::parse(&blanked).map_err(|_| e),
            None => Err(e),
        },
    }
}

/// `sql` with the `WITH (…)` of every `RETURNING WITH (…)` replaced by spaces (newlines kept),
/// or `None` if it has none.
pub fn blank_returning_with(sql: &str) -> Option<String> {
    let tokens = pg_query::scan(sql).ok()?.tokens;
    let kind = |i: usize| tokens.get(i).and_then(|t| T::try_from(t.token).ok());
    let mut out: Option<Vec<u8>> = None;
    for i in 0..tokens.len() {
        if kind(i) == Some(T::Returning)
            && kind(i + 1) == Some(T::With)
            && kind(i + 2) == Some(T::Ascii40)
        {
            let close = (i + 3..tokens.len()).find(|&j| kind(j) == Some(T::Ascii41))?;
            if !well_formed_options(sql, &tokens[i + 3..close]) {
                // Not PostgreSQL 18's clause either: leave the text alone, so the parser's
                // error stands (and the server gives its own), rather than rewrite nonsense.
                return None;
            }
            let bytes = out.get_or_insert_with(|| sql.as_bytes().to_vec());
            let (from, to) = (tokens[i + 1].start as usize, tokens[close].end as usize);
            for b in &mut bytes[from..to] {
                if *b != b'\n' {
                    *b = b' ';
                }
            }
        }
    }
    // Only ASCII bytes of the clause were replaced by ASCII spaces.
    out.map(|b| String::from_utf8(b).expect("blanking keeps UTF-8"))
}

/// `OLD AS name` / `NEW AS name`, comma-separated, each at most once, names that may be
/// column names (an identifier, or a keyword that is not reserved): PostgreSQL 18's
/// `returning_options`.
fn well_formed_options(sql: &str, tokens: &[pg_query::protobuf::ScanToken]) -> bool {
    use pg_query::protobuf::KeywordKind as K;
    let mut seen = Vec::new();
    for option in tokens.split(|t| T::try_from(t.token) == Ok(T::Ascii44)) {
        let [kind, r#as, name] = option else {
            return false;
        };
        let which = sql[kind.start as usize..kind.end as usize].to_ascii_lowercase();
        let name_ok = match K::try_from(name.keyword_kind) {
            Ok(K::NoKeyword) => T::try_from(name.token) == Ok(T::Ident),
            Ok(K::UnreservedKeyword | K::ColNameKeyword) => true,
            _ => false,
        };
        if !(which == "old" || which == "new")
            || T::try_from(r#as.token) != Ok(T::As)
            || !name_ok
            || seen.contains(&which)
        {
            return false;
        }
        seen.push(which);
    }
    !seen.is_empty()
}

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
    let Ok(scan) = pg_query::scan(sql) else {
        return names;
    };
    let tokens = scan.tokens;
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
    fn returning_with_is_blanked_in_place_for_the_parser() {
        let sql = "UPDATE t SET a = 1 RETURNING WITH (OLD AS o,\n NEW AS \"n n\") o.a, \"n n\".a";
        assert!(
            pg_query::parse(sql).is_err(),
            "PostgreSQL 17's grammar lacks it"
        );
        let blanked = blank_returning_with(sql).unwrap();
        assert_eq!(blanked.len(), sql.len());
        assert_eq!(
            blanked,
            "UPDATE t SET a = 1 RETURNING                \n               o.a, \"n n\".a"
        );
        assert!(parse(sql).is_ok());
        assert_eq!(blank_returning_with("UPDATE t SET a = 1 RETURNING *"), None);
        // Regression (fuzzing): a malformed clause (`OLD AS AS n`) was blanked, analysed as
        // valid, and rewritten into `to_jsonb(AS)`; now the parser's error stands.
        for bad in [
            "UPDATE t SET v = 1 RETURNING WITH (OLD AS AS n) o.v",
            "UPDATE t SET v = 1 RETURNING WITH (OLD AS o, OLD AS p) o.v",
            "UPDATE t SET v = 1 RETURNING WITH (MID AS m) m.v",
            "UPDATE t SET v = 1 RETURNING WITH () v",
            "UPDATE t SET v = 1 RETURNING WITH (OLD o) o.v",
        ] {
            assert_eq!(blank_returning_with(bad), None, "{bad}");
            assert!(parse(bad).is_err(), "{bad}");
        }
        // A real syntax error stays one, with the parser's first message.
        let e = parse("UPDATE t SET RETURNING WITH (OLD AS o) *").unwrap_err();
        assert!(e.to_string().contains("syntax error"), "{e}");
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
