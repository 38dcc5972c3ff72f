//! Taking hindsight's capture columns off result rows before the client sees them.
//!
//! RowDescription (`T`) and DataRow (`D`) bodies are edited in place of the originals; every
//! byte of the client's own columns is kept as the server sent it.

use crate::audit::event::Image;
use crate::wire::frame::{put_frame, take_cstr};

/// Format of a result column, as the Bind message asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Binary,
}

/// A DataRow split into the client's part and hindsight's extra columns.
pub struct SplitRow<'a> {
    /// Complete `D` frame with only the client's columns.
    pub client_frame: Vec<u8>,
    /// Values of the extra columns (`None` = SQL NULL).
    pub extra: Vec<Option<&'a [u8]>>,
}

/// Split the DataRow `body`, whose last `extra` columns are hindsight's.
pub fn split_data_row(body: &[u8], extra: usize) -> Option<SplitRow<'_>> {
    let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let keep = n.checked_sub(extra)?;
    let mut pos = 2;
    let mut cut = 2;
    let mut values = Vec::with_capacity(extra);
    for i in 0..n {
        if i == keep {
            cut = pos;
        }
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        let value = if len < 0 {
            None
        } else {
            let v = body.get(pos..pos + len as usize)?;
            pos += len as usize;
            Some(v)
        };
        if i >= keep {
            values.push(value);
        }
    }
    if keep == n {
        cut = pos;
    }
    let mut client_body = Vec::with_capacity(cut);
    client_body.extend_from_slice(&(keep as u16).to_be_bytes());
    client_body.extend_from_slice(&body[2..cut]);
    let mut client_frame = Vec::with_capacity(cut + 5);
    put_frame(&mut client_frame, b'D', &client_body);
    Some(SplitRow {
        client_frame,
        extra: values,
    })
}

/// A RowDescription frame without its last `extra` fields, or `None` if malformed.
pub fn strip_row_description(body: &[u8], extra: usize) -> Option<Vec<u8>> {
    let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let keep = n.checked_sub(extra)?;
    let mut pos = 2;
    for _ in 0..keep {
        let (_, rest) = take_cstr(body.get(pos..)?)?;
        pos = body.len() - rest.len() + 18;
        if pos > body.len() {
            return None;
        }
    }
    let mut out_body = Vec::with_capacity(pos);
    out_body.extend_from_slice(&(keep as u16).to_be_bytes());
    out_body.extend_from_slice(&body[2..pos]);
    let mut frame = Vec::with_capacity(pos + 5);
    put_frame(&mut frame, b'T', &out_body);
    Some(frame)
}

/// A row image column (see [`super::image_sql::Form`]), told apart by its first byte: `jsonb`
/// as text (`{`) or binary (version byte 1), both UTF-8 text in a UTF-8 session; or the hex
/// digits of the row's JSON in UTF-8 (hex of `{` is `7b`), the same in either result format.
/// Kept as its text ([`Image`]): checked to be a JSON object, not parsed.
pub fn decode_image(value: Option<&[u8]>) -> Result<Option<Image>, String> {
    let Some(raw) = value else { return Ok(None) };
    let bytes = match raw.first() {
        Some(b'{') => raw.to_vec(),
        Some(1) => raw[1..].to_vec(),
        _ => unhex(raw)?,
    };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => return Err(not_utf8(raw, e.as_bytes(), e.utf8_error())),
    };
    Image::from_json(text).map(Some)
}

/// Why an image's bytes are not UTF-8 (`bytes`, as decoded from `raw`).
fn not_utf8(raw: &[u8], bytes: &[u8], e: std::str::Utf8Error) -> String {
    let at = e.valid_up_to();
    let why = if raw.first() == Some(&b'{') || raw.first() == Some(&1) {
        "the row holds a value whose bytes are not valid in the database's encoding (written by C code), or the session's client_encoding changed after the statement was prepared (prepare it again)"
    } else {
        "the database is SQL_ASCII and stores bytes without characters, so this row cannot be recorded exactly"
    };
    format!(
        "the row image holds byte 0x{:02X} (at {at}), which is not UTF-8: {why}",
        bytes[at]
    )
}

/// A name from a hex-of-UTF-8 column (see [`super::image_sql::json`]); bytes that are not
/// UTF-8 (a SQL_ASCII database) or are not hex are shown as `\xNN`, never dropped.
pub fn decode_name(hex: &[u8]) -> String {
    match unhex(hex) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => e
                .into_bytes()
                .iter()
                .map(|&b| match b {
                    0x20..=0x7e if b != b'\\' => (b as char).to_string(),
                    _ => format!("\\x{b:02X}"),
                })
                .collect(),
        },
        Err(_) => String::from_utf8_lossy(hex).into_owned(),
    }
}

/// Hex digits (two a byte, as `encode(…, 'hex')` writes them) as their bytes.
fn unhex(digits: &[u8]) -> Result<Vec<u8>, String> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!(
            "row image is not hex: {:?}",
            String::from_utf8_lossy(&digits[..digits.len().min(24)])
        )),
    };
    if digits.len() % 2 != 0 {
        return Err("row image has an odd number of hex digits".into());
    }
    digits
        .chunks_exact(2)
        .map(|p| Ok(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// A `tableoid` column (text digits, or a binary 4-byte oid).
pub fn decode_oid(value: Option<&[u8]>, format: Format) -> Result<u32, String> {
    let raw = value.ok_or("tableoid is NULL")?;
    match format {
        Format::Text => std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "tableoid {:?} is not a number",
                    String::from_utf8_lossy(raw)
                )
            }),
        Format::Binary => raw
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| "binary tableoid is not 4 bytes".into()),
    }
}

/// An int4 column (text digits, or 4 binary bytes); `None` if NULL or malformed.
pub fn decode_int(value: Option<&[u8]>, format: Format) -> Option<u32> {
    let raw = value?;
    match format {
        Format::Text => std::str::from_utf8(raw).ok()?.parse().ok(),
        Format::Binary => raw.try_into().ok().map(u32::from_be_bytes),
    }
}

/// The fields of RowDescription body `original` (every byte as the server described them),
/// each with the format code of the same field in body `actual`, as a complete frame; `None`
/// if either is malformed or `actual` has fewer fields.
pub fn with_formats_of(original: &[u8], actual: &[u8]) -> Option<Vec<u8>> {
    // Offsets of each field's format code.
    fn format_codes(body: &[u8]) -> Option<Vec<usize>> {
        let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
        let mut pos = 2;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (_, rest) = take_cstr(body.get(pos..)?)?;
            pos = body.len() - rest.len() + 18;
            if pos > body.len() {
                return None;
            }
            out.push(pos - 2);
        }
        Some(out)
    }
    let mine = format_codes(original)?;
    let theirs = format_codes(actual)?;
    let mut body = original.to_vec();
    for (i, at) in mine.iter().enumerate() {
        let from = *theirs.get(i)?;
        body[*at..*at + 2].copy_from_slice(&actual[from..from + 2]);
    }
    let mut frame = Vec::with_capacity(body.len() + 5);
    put_frame(&mut frame, b'T', &body);
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_row(cols: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = (cols.len() as u16).to_be_bytes().to_vec();
        for c in cols {
            match c {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn data_row_split_keeps_client_bytes_exactly() {
        let body = data_row(&[Some(b"1"), None, Some(b"{\"a\":1}"), Some(b"123")]);
        let s = split_data_row(&body, 2).unwrap();
        let mut want = Vec::new();
        put_frame(&mut want, b'D', &data_row(&[Some(b"1"), None]));
        assert_eq!(s.client_frame, want);
        assert_eq!(s.extra, vec![Some(&b"{\"a\":1}"[..]), Some(&b"123"[..])]);
        let all = split_data_row(&body, 4).unwrap();
        assert_eq!(all.client_frame, vec![b'D', 0, 0, 0, 6, 0, 0]);
        assert!(split_data_row(&body, 5).is_none());
        assert!(split_data_row(&body[..7], 1).is_none());
    }

    #[test]
    fn row_description_strip() {
        let mut body = 3u16.to_be_bytes().to_vec();
        for name in ["id", "to_jsonb", "tableoid"] {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&[0u8; 18]);
        }
        let f = strip_row_description(&body, 2).unwrap();
        assert_eq!(&f[5..7], &[0, 1]);
        assert_eq!(f.len(), 5 + 2 + 3 + 18);
    }

    #[test]
    fn images_decode() {
        let json = "{\"f\": \"NaN\", \"n\": 1.50, \"s\": \"café 中\"}";
        let hex: String = json.bytes().map(|b| format!("{b:02x}")).collect();
        let mut binary = vec![1u8];
        binary.extend_from_slice(json.as_bytes());
        for raw in [hex.as_bytes(), json.as_bytes(), &binary] {
            let image = decode_image(Some(raw)).unwrap().unwrap();
            // Kept as the server's text, published as such.
            assert_eq!(image.json(), json);
            let r = image.row();
            assert_eq!(r["f"], "NaN");
            assert_eq!(r["n"].to_string(), "1.50");
            assert_eq!(r["s"], "café 中");
        }
        assert!(decode_image(None).unwrap().is_none());
        // Bytes of a SQL_ASCII database that are not UTF-8: refused, naming the byte.
        let err = decode_image(Some(b"7b2261223a2263e9227d")).unwrap_err();
        assert!(err.contains("0xE9") && err.contains("SQL_ASCII"), "{err}");
        for bad in [&b"{\"a\": \"\xe9\"}"[..], b"[]", b"7b7", b"7g7d", b"\x02{}"] {
            assert!(decode_image(Some(bad)).is_err());
        }
        assert_eq!(decode_oid(Some(b"24584"), Format::Text).unwrap(), 24584);
        assert_eq!(
            decode_oid(Some(&[0, 0, 1, 0]), Format::Binary).unwrap(),
            256
        );
    }
}
