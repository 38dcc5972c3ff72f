//! Messages a client sends after the startup phase, as typed views over the original bytes.

use super::frame::take_cstr;

/// The message types a PostgreSQL client may send once the session has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendTag {
    Bind,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    Describe,
    Execute,
    Flush,
    FunctionCall,
    /// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse all use `p`.
    Password,
    Parse,
    Query,
    Sync,
    Terminate,
}

impl FrontendTag {
    /// Classify a tag byte; `None` for bytes PostgreSQL itself would reject.
    #[inline]
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            b'B' => Self::Bind,
            b'C' => Self::Close,
            b'd' => Self::CopyData,
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail,
            b'D' => Self::Describe,
            b'E' => Self::Execute,
            b'H' => Self::Flush,
            b'F' => Self::FunctionCall,
            b'p' => Self::Password,
            b'P' => Self::Parse,
            b'Q' => Self::Query,
            b'S' => Self::Sync,
            b'X' => Self::Terminate,
            _ => return None,
        })
    }
}

/// The `(kind, name)` of a Describe or Close body: kind `b'S'` (statement) or `b'P'` (portal).
pub fn describe_target(body: &[u8]) -> (u8, &[u8]) {
    let kind = body.first().copied().unwrap_or(0);
    let name = body
        .get(1..)
        .and_then(take_cstr)
        .map(|(n, _)| n)
        .unwrap_or_default();
    (kind, name)
}

/// The SQL text of a Query message body (without its terminating NUL).
pub fn query_text(body: &[u8]) -> &[u8] {
    take_cstr(body).map(|(s, _)| s).unwrap_or(body)
}

/// The `(statement name, SQL text)` of a Parse message body, if well-formed.
pub fn parse_statement(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = take_cstr(body)?;
    let (sql, _) = take_cstr(rest).unwrap_or((rest, &[]));
    Some((name, sql))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for b in b"BCdcfDEHFpPQSX" {
            assert!(FrontendTag::from_byte(*b).is_some(), "{}", *b as char);
        }
        assert_eq!(FrontendTag::from_byte(b'Z'), None);
        assert_eq!(FrontendTag::from_byte(0), None);
    }

    #[test]
    fn parse_body() {
        assert_eq!(
            parse_statement(b"s1\0select 1\0\0\0"),
            Some((&b"s1"[..], &b"select 1"[..]))
        );
        assert_eq!(query_text(b"select 1\0"), b"select 1");
    }
}
