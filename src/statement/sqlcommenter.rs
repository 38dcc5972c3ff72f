//! sqlcommenter tags (<https://google.github.io/sqlcommenter/spec/>): the comment frameworks
//! append to a statement, `/*controller='users',action='update',traceparent='00-…'*/`.
//!
//! The tags change with every request (`traceparent`), so they are split off before the
//! statement text is used as an analysis cache key.

use std::collections::BTreeMap;

/// Tags parsed from a statement's trailing comment, keys and values URL-decoded.
pub type Tags = BTreeMap<String, String>;

/// Split a trailing sqlcommenter comment off `sql`: `(statement without it, tags)`.
/// A text without a well-formed trailing tag comment is returned whole, with no tags.
pub fn split(sql: &str) -> (&str, Tags) {
    let trimmed = sql.trim_end_matches(|c: char| c.is_whitespace() || c == ';');
    let Some(body) = trimmed.strip_suffix("*/") else {
        return (sql, Tags::new());
    };
    let Some(open) = body.rfind("/*") else {
        return (sql, Tags::new());
    };
    match parse_tags(&body[open + 2..]) {
        Some(tags) if !tags.is_empty() => (sql[..open].trim_end(), tags),
        _ => (sql, Tags::new()),
    }
}

/// `key='value',key2='value2'`; `None` if the comment is not in that form.
fn parse_tags(s: &str) -> Option<Tags> {
    let mut tags = Tags::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = decode(rest[..eq].trim())?;
        let after = rest[eq + 1..].trim_start().strip_prefix('\'')?;
        // Values are URL-encoded, so a raw quote only ends the value (a literal one is \').
        let mut end = None;
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'\'' => {
                    end = Some(i);
                    break;
                }
                _ => i += 1,
            }
        }
        let end = end?;
        let value = decode(&after[..end].replace("\\'", "'"))?;
        tags.insert(key, value);
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        if !rest.is_empty() && !rest.contains('=') {
            return None;
        }
    }
    Some(tags)
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rails_style_comment() {
        let (stmt, tags) = split(
            "UPDATE brieff SET bfso = NULL /*controller='certification',action='update',traceparent='00-4bf92f-00f067-01'*/",
        );
        assert_eq!(stmt, "UPDATE brieff SET bfso = NULL");
        assert_eq!(tags["controller"], "certification");
        assert_eq!(tags["action"], "update");
        assert_eq!(tags["traceparent"], "00-4bf92f-00f067-01");
    }

    #[test]
    fn values_are_url_decoded() {
        let (_, tags) = split("SELECT 1 /*route='%2Fusers%2F%3Aid',db%20driver='x'*/;");
        assert_eq!(tags["route"], "/users/:id");
        assert_eq!(tags["db driver"], "x");
    }

    #[test]
    fn ordinary_comments_are_left_alone() {
        for sql in [
            "SELECT 1 /* just a note */",
            "SELECT 1",
            "SELECT '/*a=''b''*/'",
            "SELECT 1 /*a='b' c*/",
        ] {
            let (stmt, tags) = split(sql);
            assert_eq!(stmt, sql);
            assert!(tags.is_empty(), "{sql}: {tags:?}");
        }
    }
}
