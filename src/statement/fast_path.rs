//! The read fast path: decide without parsing that a text certainly does not write.
//!
//! Most traffic is reads, and parsing costs microseconds; a byte scan costs nanoseconds. The
//! scan may answer "not certain" for a read (it then gets parsed — only slower), but it must
//! never answer "certainly a read" for a text that writes. So it accepts only texts that start
//! with a read keyword and contain none of the words a write needs anywhere (`INTO` for
//! `SELECT … INTO`, the DML verbs for data-modifying CTEs), in any case, even inside string
//! literals or comments. And it accepts only one statement: after a `;` anything but
//! whitespace sends the text to the parser, because a read can be followed by statements that
//! end the transaction or change the schema (`SELECT 1; COMMIT` must publish before it commits).

use super::leading_keyword::{classify, KeywordClass};

/// Words whose presence anywhere sends the text to the parser.
const WRITE_WORDS: [&[u8]; 7] = [
    b"into",
    b"insert",
    b"update",
    b"delete",
    b"merge",
    b"copy",
    b"truncate",
];

/// `true` only if the text certainly changes no table rows and no schema.
pub fn certainly_read(sql: &[u8]) -> bool {
    if !matches!(classify(sql), KeywordClass::Select) && !starts_with_show(sql) {
        return false;
    }
    one_statement(sql) && !contains_write_word(sql)
}

/// Nothing but whitespace and semicolons after the first `;` (even one inside a literal or a
/// comment: such texts are parsed, which is only slower).
fn one_statement(sql: &[u8]) -> bool {
    match sql.iter().position(|b| *b == b';') {
        None => true,
        Some(i) => sql[i..]
            .iter()
            .all(|b| *b == b';' || b.is_ascii_whitespace()),
    }
}

fn starts_with_show(sql: &[u8]) -> bool {
    let t = sql.trim_ascii_start();
    t.len() >= 5 && t[..4].eq_ignore_ascii_case(b"show") && t[4].is_ascii_whitespace()
}

/// Case-insensitive search for any [`WRITE_WORDS`] entry as a substring (no word-boundary
/// check: `updated_at` also sends the text to the parser, which is safe).
fn contains_write_word(sql: &[u8]) -> bool {
    sql.windows(4).enumerate().any(|(i, w)| {
        let first = w[0].to_ascii_lowercase();
        matches!(first, b'i' | b'u' | b'd' | b'm' | b'c' | b't')
            && WRITE_WORDS.iter().any(|word| {
                sql.len() >= i + word.len() && sql[i..i + word.len()].eq_ignore_ascii_case(word)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_reads_take_the_fast_path() {
        assert!(certainly_read(b"SELECT 1"));
        assert!(certainly_read(
            b"  /* hi */ select a, b from t where x = $1"
        ));
        assert!(certainly_read(b"show search_path"));
        assert!(certainly_read(b"SELECT 1;\n"));
    }

    #[test]
    fn anything_that_could_write_is_parsed() {
        for sql in [
            "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
            "EXPLAIN ANALYZE DELETE FROM t",
            "SELECT * INTO t2 FROM t",
            "select * into t2 from t",
            "COPY t FROM STDIN",
            "UPDATE t SET a = 1",
            "SELECT * FROM t FOR UPDATE",
            "(SELECT 1) UNION (WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d)",
            "VALUES (1)",
            "TRUNCATE t",
            "SeLeCt 1; dElEtE from t",
        ] {
            assert!(!certainly_read(sql.as_bytes()), "{sql}");
        }
    }

    /// Regression: `SELECT 1; COMMIT` took the fast path, so the COMMIT of a transaction with
    /// captured changes reached the server without publishing them (they were dropped when
    /// the ReadyForQuery said the transaction was over). Likewise DDL or SAVEPOINT after a read.
    #[test]
    fn read_fast_path_let_a_commit_after_a_select_through() {
        for sql in [
            "SELECT 1; COMMIT",
            "select 1;end",
            "SELECT 1; SAVEPOINT s",
            "SELECT 1; DROP TABLE t",
            "SHOW x; CREATE TABLE t (a int)",
            "SELECT ';'",
        ] {
            assert!(!certainly_read(sql.as_bytes()), "{sql}");
        }
    }
}
