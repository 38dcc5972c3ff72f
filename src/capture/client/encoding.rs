//! Which client messages may change the session's `client_encoding`.
//!
//! Row images normally leave the server as jsonb, in the client's encoding; in any encoding
//! but UTF-8 they are built as hex of UTF-8 instead (`image_sql::Form`). The server reports a
//! new encoding only right before its next ReadyForQuery, so a statement that may change it
//! makes hindsight build images in hex until that report is through
//! (`router::EncodingTracker`). This file only recognises such statements; it does
//! not know how images are built or when the report arrives.

/// Whether SQL text (a statement, or a whole query string) may change `client_encoding`:
/// `SET client_encoding`, `SET NAMES`, `RESET`/`DISCARD ALL`, `set_config('client_encoding', …)`.
/// Over-inclusive on purpose — a false match only costs the hex form for a moment — and
/// cheap, as it looks at every Query and Parse: no allocation, one pass over the bytes.
pub(super) fn may_change_encoding(sql: &[u8]) -> bool {
    mentions_client_encoding(sql) || sql.split(|&b| b == b';').any(sets_names_or_resets_all)
}

/// `client_encoding` anywhere, in any case.
fn mentions_client_encoding(sql: &[u8]) -> bool {
    sql.iter().enumerate().any(|(i, &b)| {
        b == b'_'
            && i >= 6
            && sql[i - 6..i].eq_ignore_ascii_case(b"client")
            && sql
                .get(i + 1..i + 9)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"encoding"))
    })
}

/// A piece of text that starts `SET [SESSION|LOCAL] NAMES` or `RESET ALL` / `DISCARD ALL`.
fn sets_names_or_resets_all(piece: &[u8]) -> bool {
    let mut words = piece
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let is = |w: Option<&[u8]>, what: &[u8]| w.is_some_and(|w| w.eq_ignore_ascii_case(what));
    let (first, second, third) = (words.next(), words.next(), words.next());
    (is(first, b"set") && (is(second, b"names") || is(third, b"names")))
        || ((is(first, b"reset") || is(first, b"discard")) && is(second, b"all"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_may_change_client_encoding() {
        for sql in [
            "SET client_encoding = 'LATIN1'",
            "set session CLIENT_ENCODING to win1251;",
            "SET NAMES 'EUC_JP'",
            "SET LOCAL NAMES latin1",
            "RESET ALL",
            "discard all;",
            "SELECT set_config('client_encoding', 'LATIN1', false)",
            "SELECT 1; SET NAMES 'LATIN1'",
            "BEGIN;\n  reset   all",
        ] {
            assert!(may_change_encoding(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SET search_path = x",
            "RESET search_path",
            "UPDATE names SET all = 1",
            "UPDATE users SET first_names = 'a'",
            "SELECT client_encodin",
            "_encoding",
            "",
        ] {
            assert!(!may_change_encoding(sql.as_bytes()), "{sql}");
        }
    }
}
