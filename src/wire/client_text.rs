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
//! - **Row images** come back as JSON text in the client's encoding; [`image_to_utf8`] converts
//!   them exactly where the encoding's mapping is known here (UTF8, LATIN1, WIN1252, or ASCII
//!   content in any encoding), and refuses otherwise — an audit record is never guessed.
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
    /// ISO 8859-1: byte n is U+00nn.
    Latin1,
    /// Windows-1252: LATIN1 but for 0x80..=0x9F.
    Win1252,
    /// Any other encoding (SQL_ASCII, LATIN2, EUC_JP, …): bytes, of known meaning only
    /// when ASCII.
    Other,
}

impl ClientEncoding {
    /// From the `client_encoding` the server reports (its canonical names).
    pub fn from_name(name: &[u8]) -> Self {
        match name.to_ascii_uppercase().as_slice() {
            b"UTF8" | b"UNICODE" => Self::Utf8,
            b"LATIN1" => Self::Latin1,
            b"WIN1252" => Self::Win1252,
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

/// A row image (JSON text in the client's encoding) as UTF-8, exactly, or why not.
pub fn image_to_utf8(bytes: &[u8], encoding: ClientEncoding) -> Result<Cow<'_, [u8]>, String> {
    if encoding == ClientEncoding::Utf8 || bytes.is_ascii() {
        return Ok(Cow::Borrowed(bytes));
    }
    let char_of = |b: u8| -> Option<char> {
        match (encoding, b) {
            (_, 0..=0x7f) => Some(b as char),
            (ClientEncoding::Latin1, _) => Some(b as char),
            (ClientEncoding::Win1252, 0x80..=0x9f) => WIN1252_80[usize::from(b - 0x80)],
            (ClientEncoding::Win1252, _) => Some(b as char),
            _ => None,
        }
    };
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 4);
    for &b in bytes {
        match char_of(b) {
            Some(c) => out.push(c),
            None => {
                return Err(format!(
                    "the row image holds byte 0x{b:02X} of a client_encoding hindsight cannot convert to UTF-8 exactly (it converts UTF8, LATIN1 and WIN1252): set client_encoding to UTF8 for this session (on a SQL_ASCII database such bytes have no defined characters and cannot be recorded exactly)"
                ))
            }
        }
    }
    Ok(Cow::Owned(out.into_bytes()))
}

/// A name the server returned (in the session's encoding) for SQL hindsight builds, or to match
/// against the client's text: decoded as the client's text is, so `encode` gives back the
/// server's bytes.
pub fn sql_name(bytes: &[u8], encoding: ClientEncoding) -> String {
    decode(bytes, encoding)
        .map(Cow::into_owned)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

/// A name the server returned, for events and to match row images: converted as images are
/// (where that is not exact, its non-ASCII bytes shown as `\xNN`).
pub fn utf8_name(bytes: &[u8], encoding: ClientEncoding) -> String {
    match image_to_utf8(bytes, encoding) {
        Ok(utf8) => String::from_utf8_lossy(&utf8).into_owned(),
        Err(_) => display(&sql_name(bytes, encoding)).into_owned(),
    }
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

/// Windows-1252 0x80..=0x9F, as PostgreSQL's WIN1252 maps them (5 bytes have no character).
const WIN1252_80: [Option<char>; 32] = [
    Some('\u{20AC}'),
    None,
    Some('\u{201A}'),
    Some('\u{0192}'),
    Some('\u{201E}'),
    Some('\u{2026}'),
    Some('\u{2020}'),
    Some('\u{2021}'),
    Some('\u{02C6}'),
    Some('\u{2030}'),
    Some('\u{0160}'),
    Some('\u{2039}'),
    Some('\u{0152}'),
    None,
    Some('\u{017D}'),
    None,
    None,
    Some('\u{2018}'),
    Some('\u{2019}'),
    Some('\u{201C}'),
    Some('\u{201D}'),
    Some('\u{2022}'),
    Some('\u{2013}'),
    Some('\u{2014}'),
    Some('\u{02DC}'),
    Some('\u{2122}'),
    Some('\u{0161}'),
    Some('\u{203A}'),
    Some('\u{0153}'),
    None,
    Some('\u{017E}'),
    Some('\u{0178}'),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_bytes_round_trip_exactly() {
        let bytes: Vec<u8> = (1..=255u8).collect();
        for enc in [
            ClientEncoding::Latin1,
            ClientEncoding::Win1252,
            ClientEncoding::Other,
        ] {
            let text = decode(&bytes, enc).unwrap();
            assert_eq!(text.chars().count(), bytes.len(), "one character per byte");
            let sent = format!("INSERT INTO t VALUES ('{text}')");
            let mut want = b"INSERT INTO t VALUES ('".to_vec();
            want.extend_from_slice(&bytes);
            want.extend_from_slice(b"')");
            assert_eq!(encode(&sent).as_ref(), want.as_slice());
        }
        assert_eq!(
            display(&decode(b"caf\xe9", ClientEncoding::Latin1).unwrap()),
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
    fn images_convert_exactly_or_not_at_all() {
        let utf8 =
            |b: &[u8], e| String::from_utf8(image_to_utf8(b, e).unwrap().into_owned()).unwrap();
        assert_eq!(
            utf8(b"{\"v\": \"caf\xe9\"}", ClientEncoding::Latin1),
            "{\"v\": \"café\"}"
        );
        assert_eq!(utf8(b"\x80\x9f\xe9", ClientEncoding::Win1252), "€Ÿé");
        assert_eq!(utf8(b"{\"v\": 1}", ClientEncoding::Other), "{\"v\": 1}");
        assert!(image_to_utf8(b"\x81", ClientEncoding::Win1252).is_err());
        assert!(image_to_utf8(b"caf\xe9", ClientEncoding::Other)
            .unwrap_err()
            .contains("0xE9"));
        assert_eq!(ClientEncoding::from_name(b"LATIN1"), ClientEncoding::Latin1);
        assert_eq!(
            ClientEncoding::from_name(b"SQL_ASCII"),
            ClientEncoding::Other
        );
    }
}
