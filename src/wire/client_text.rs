//! SQL text and row images in the session's `client_encoding`, which need not be UTF-8.
//!
//! A legacy application may run with `client_encoding = LATIN1` (or WIN1252, or on a
//! SQL_ASCII database): its query text arrives as bytes that are not UTF-8. hindsight rewrites
//! writes, so it must give the server back exactly the bytes the client sent — a lossy
//! conversion would change the data written (`'café'` became `'caf\u{FFFD}'`). So:
//! - **SQL text** in a non-UTF-8 session is decoded byte for byte: ASCII as itself, and each byte
//!   from 0x80 up as one reserved code point (U+10FF80 + byte − 0x80, at the end of plane 16's
//!   private use area), which [`encode`] turns back into the byte. The parser sees one character
//!   per byte (as the server does for a single-byte encoding, so error positions hold), and every
//!   text hindsight builds around the client's goes out with the client's own bytes. A UTF-8
//!   session's text must be valid UTF-8 without those code points, else it is not decoded (the
//!   server then judges the text, unchanged).
//! - **Row images and catalog names** never come back in the client's encoding: the server
//!   sends them as hex of UTF-8 (`capture::image_sql`), so no conversion happens here.
//!
//! It knows nothing of sessions: callers pass the encoding the server last reported.

use std::borrow::Cow;

/// First of the 128 reserved code points standing for the bytes 0x80..=0xFF.
const RESERVED: u32 = 0x10FF80;

/// The session's `client_encoding`, as far as hindsight must tell encodings apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientEncoding {
    #[default]
    Utf8,
    /// Any other encoding (LATIN1, WIN1251, EUC_JP, SQL_ASCII, …): the text is taken byte
    /// for byte (see the module docs).
    Other,
}

impl ClientEncoding {
    /// From the `client_encoding` the server reports (its canonical names).
    pub fn from_name(name: &[u8]) -> Self {
        match name.to_ascii_uppercase().as_slice() {
            b"UTF8" | b"UNICODE" => Self::Utf8,
            _ => Self::Other,
        }
    }
}

/// Why a client text was not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("the statement text is not valid UTF-8, the session's client_encoding")]
    NotUtf8,
    #[error("the statement text holds code points U+10FF80..U+10FFFF, which hindsight reserves for the bytes of non-UTF-8 client encodings")]
    Reserved,
}

/// The client's SQL bytes as a string hindsight can parse and rewrite (see the module docs).
pub fn decode(bytes: &[u8], encoding: ClientEncoding) -> Result<Cow<'_, str>, TextError> {
    if encoding == ClientEncoding::Utf8 || bytes.is_ascii() {
        let s = std::str::from_utf8(bytes).map_err(|_| TextError::NotUtf8)?;
        if has_reserved(s) {
            return Err(TextError::Reserved);
        }
        return Ok(Cow::Borrowed(s));
    }
    Ok(Cow::Owned(
        bytes
            .iter()
            .map(|&b| match b {
                0..=0x7f => b as char,
                _ => char::from_u32(RESERVED + u32::from(b - 0x80)).unwrap_or('\u{FFFD}'),
            })
            .collect(),
    ))
}

/// The bytes to send for a text built from [`decode`]d client text: reserved code points
/// become their bytes again, everything else is UTF-8 (hindsight's own SQL is ASCII).
pub fn encode(s: &str) -> Cow<'_, [u8]> {
    if !has_reserved(s) {
        return Cow::Borrowed(s.as_bytes());
    }
    let mut out = Vec::with_capacity(s.len());
    let mut buf = [0u8; 4];
    for c in s.chars() {
        match reserved_byte(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
        }
    }
    Cow::Owned(out)
}

/// A decoded client text for people (events, logs): reserved code points shown as `\xNN`.
pub fn display(s: &str) -> Cow<'_, str> {
    if !has_reserved(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match reserved_byte(c) {
            Some(b) => out.push_str(&format!("\\x{b:02X}")),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A name the server returned (in the session's encoding) for SQL hindsight builds, or to match
/// against the client's text: decoded as the client's text is, so `encode` gives back the
/// server's bytes.
pub fn sql_name(bytes: &[u8], encoding: ClientEncoding) -> String {
    decode(bytes, encoding)
        .map(Cow::into_owned)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

fn has_reserved(s: &str) -> bool {
    // U+10FF80..U+10FFFF are F4 8F BE 80 ..= F4 8F BF BF in UTF-8.
    s.as_bytes().contains(&0xF4) && s.chars().any(|c| reserved_byte(c).is_some())
}

fn reserved_byte(c: char) -> Option<u8> {
    let n = u32::from(c);
    (RESERVED..=RESERVED + 0x7f)
        .contains(&n)
        .then(|| (n - RESERVED) as u8 + 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_bytes_round_trip_exactly() {
        let bytes: Vec<u8> = (1..=255u8).collect();
        let text = decode(&bytes, ClientEncoding::Other).unwrap();
        assert_eq!(text.chars().count(), bytes.len(), "one character per byte");
        let sent = format!("INSERT INTO t VALUES ('{text}')");
        let mut want = b"INSERT INTO t VALUES ('".to_vec();
        want.extend_from_slice(&bytes);
        want.extend_from_slice(b"')");
        assert_eq!(encode(&sent).as_ref(), want.as_slice());
        assert_eq!(
            display(&decode(b"caf\xe9", ClientEncoding::Other).unwrap()),
            "caf\\xE9"
        );
    }

    #[test]
    fn utf8_sessions_need_valid_text_without_reserved_code_points() {
        assert_eq!(
            decode("café".as_bytes(), ClientEncoding::Utf8).unwrap(),
            "café"
        );
        assert_eq!(
            decode(b"caf\xe9", ClientEncoding::Utf8),
            Err(TextError::NotUtf8)
        );
        assert_eq!(
            decode("x\u{10FFAB}".as_bytes(), ClientEncoding::Utf8),
            Err(TextError::Reserved)
        );
        assert_eq!(
            // Code points next to the reserved ones are sent as UTF-8.
            encode("café \u{10FF7F}"),
            Cow::Borrowed("café \u{10FF7F}".as_bytes())
        );
    }

    #[test]
    fn encodings_are_utf8_or_bytes() {
        assert_eq!(ClientEncoding::from_name(b"UTF8"), ClientEncoding::Utf8);
        for other in [&b"LATIN1"[..], b"WIN1251", b"EUC_JP", b"SQL_ASCII"] {
            assert_eq!(ClientEncoding::from_name(other), ClientEncoding::Other);
        }
    }
}
