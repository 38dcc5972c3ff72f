//! A cheap look at the first keyword of a SQL text, skipping whitespace and comments.
//! Used for the "statements by kind" metric; it never decides anything about safety.

/// The coarse kind of a statement, from its first keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeywordClass {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    /// `WITH …`: a CTE in front of anything.
    With,
    /// CREATE / ALTER / DROP / TRUNCATE / GRANT / REVOKE / COMMENT.
    Ddl,
    /// BEGIN / START / COMMIT / END / ROLLBACK / SAVEPOINT / RELEASE / PREPARE TRANSACTION.
    Transaction,
    /// Anything else (SET, SHOW, EXPLAIN, DO, CALL, VALUES, TABLE, …).
    Other,
    /// Empty text.
    Empty,
}

impl KeywordClass {
    /// Every class, in metric-label order.
    pub const ALL: [KeywordClass; 11] = [
        Self::Select,
        Self::Insert,
        Self::Update,
        Self::Delete,
        Self::Merge,
        Self::Copy,
        Self::With,
        Self::Ddl,
        Self::Transaction,
        Self::Other,
        Self::Empty,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Merge => "merge",
            Self::Copy => "copy",
            Self::With => "with",
            Self::Ddl => "ddl",
            Self::Transaction => "transaction",
            Self::Other => "other",
            Self::Empty => "empty",
        }
    }

    /// Index into [`Self::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// Classify by the first keyword.
pub fn classify(sql: &[u8]) -> KeywordClass {
    let word = first_word(sql);
    let mut lower = [0u8; 12];
    if word.is_empty() {
        return KeywordClass::Empty;
    }
    if word.len() > lower.len() {
        return KeywordClass::Other;
    }
    for (d, s) in lower.iter_mut().zip(word) {
        *d = s.to_ascii_lowercase();
    }
    match &lower[..word.len()] {
        b"select" | b"table" | b"values" | b"show" | b"fetch" => {
            if word.len() == 6 && &lower[..6] == b"select" {
                KeywordClass::Select
            } else {
                KeywordClass::Other
            }
        }
        b"insert" => KeywordClass::Insert,
        b"update" => KeywordClass::Update,
        b"delete" => KeywordClass::Delete,
        b"merge" => KeywordClass::Merge,
        b"copy" => KeywordClass::Copy,
        b"with" => KeywordClass::With,
        b"create" | b"alter" | b"drop" | b"truncate" | b"grant" | b"revoke" | b"comment" => {
            KeywordClass::Ddl
        }
        b"begin" | b"start" | b"commit" | b"end" | b"rollback" | b"savepoint" | b"release"
        | b"abort" | b"prepare" => KeywordClass::Transaction,
        _ => KeywordClass::Other,
    }
}

/// The first run of letters after whitespace, `--` comments, (nested) `/* */` comments and `(`.
fn first_word(sql: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < sql.len() {
        match sql[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'(' => i += 1,
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                while i < sql.len() && sql[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => i = skip_block_comment(sql, i),
            _ => break,
        }
    }
    let start = i;
    while i < sql.len() && sql[i].is_ascii_alphabetic() {
        i += 1;
    }
    &sql[start..i]
}

/// Index after the block comment starting at `i`; PostgreSQL block comments nest.
fn skip_block_comment(sql: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < sql.len() {
        if sql[i] == b'/' && sql.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if sql[i] == b'*' && sql.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_after_comments() {
        assert_eq!(
            classify(b"  /* a /* nested */ c */ -- x\n UPDATE t SET a=1"),
            KeywordClass::Update
        );
        assert_eq!(
            classify(b"/*controller='x'*/ select 1"),
            KeywordClass::Select
        );
        assert_eq!(classify(b"(SELECT 1)"), KeywordClass::Select);
        assert_eq!(
            classify(b"with x as (delete from t) select 1"),
            KeywordClass::With
        );
        assert_eq!(classify(b"TRUNCATE t"), KeywordClass::Ddl);
        assert_eq!(classify(b"commit"), KeywordClass::Transaction);
        assert_eq!(classify(b"   "), KeywordClass::Empty);
        assert_eq!(classify(b"selected"), KeywordClass::Other);
        assert_eq!(classify(b"values (1)"), KeywordClass::Other);
    }
}
