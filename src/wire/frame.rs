//! Message framing after the startup phase: a 1-byte type tag followed by a 4-byte big-endian
//! length that counts itself but not the tag. A frame that is not complete in the buffer is
//! "read more", never an error.

use thiserror::Error;

/// Bytes in a regular message header: the tag and the length.
pub const HEADER_LEN: usize = 5;

/// The header of one regular protocol message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte, e.g. `b'Q'` for Query.
    pub tag: u8,
    /// Length field as sent: body length plus the 4 bytes of the field itself.
    pub len: u32,
}

impl Header {
    /// Total bytes of the frame on the wire, tag included.
    pub fn frame_len(&self) -> usize {
        1 + self.len as usize
    }

    /// Bytes of the body (what follows the header).
    pub fn body_len(&self) -> usize {
        self.len as usize - 4
    }
}

/// A frame that can never become valid by reading more bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message '{tag}' declares length {len}, below the minimum of 4 (the length field itself)", tag = printable(*tag))]
    LengthTooShort { tag: u8, len: u32 },
    #[error("message '{tag}' declares length {len} bytes, above the configured limit of {max} bytes (proxy.max_message_bytes)", tag = printable(*tag))]
    TooLarge { tag: u8, len: u32, max: usize },
    #[error("unknown frontend message type {tag} (byte 0x{byte:02x})", tag = printable(*byte))]
    UnknownFrontendTag { byte: u8 },
}

/// Render a tag byte for an error message: the character when printable, else its hex code.
pub fn printable(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        (tag as char).to_string()
    } else {
        format!("\\x{tag:02x}")
    }
}

/// Read the header at the start of `buf`, if all of it is there.
///
/// `Ok(None)` means "read more". Validates the length field against `max_len` (the whole frame,
/// tag included, must fit `max_len` bytes, as `proxy.max_message_bytes` says) so an oversized
/// frame is refused before any of it is buffered.
#[inline]
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::LengthTooShort { tag, len });
    }
    if 1 + len as usize > max_len {
        return Err(FrameError::TooLarge {
            tag,
            len,
            max: max_len,
        });
    }
    Ok(Some(Header { tag, len }))
}

/// Append a frame with the given tag and body to `out`.
pub fn put_frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Split a NUL-terminated string off the front of `buf`: `(string, rest)`.
pub fn take_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

#[cfg(test)]
mod tests {

    /// Regression (fuzzing): a frame one byte over the limit (length field equal to it, plus
    /// the tag) was accepted.
    #[test]
    fn frame_one_byte_over_the_limit_was_accepted() {
        let frame = |len: u32| {
            let mut f = vec![b'Q'];
            f.extend_from_slice(&len.to_be_bytes());
            f
        };
        assert!(peek_header(&frame(100), 100).is_err());
        assert_eq!(
            peek_header(&frame(99), 100).unwrap().unwrap().frame_len(),
            100
        );
    }

    use super::*;

    #[test]
    fn partial_header_is_read_more() {
        assert_eq!(peek_header(b"Q\0\0", 100), Ok(None));
        assert_eq!(peek_header(b"", 100), Ok(None));
    }

    #[test]
    fn header_decodes_length() {
        let h = peek_header(b"Q\0\0\0\x0dSELECT 1\0", 100).unwrap().unwrap();
        assert_eq!(h, Header { tag: b'Q', len: 13 });
        assert_eq!(h.frame_len(), 14);
        assert_eq!(h.body_len(), 9);
    }

    #[test]
    fn too_short_and_too_large_are_errors() {
        assert!(matches!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(FrameError::LengthTooShort { .. })
        ));
        let e = peek_header(b"Q\0\0\x10\x00", 100).unwrap_err();
        assert!(e.to_string().contains("4096"), "{e}");
        assert!(e.to_string().contains("max_message_bytes"), "{e}");
    }

    #[test]
    fn cstr_split() {
        assert_eq!(take_cstr(b"ab\0cd"), Some((&b"ab"[..], &b"cd"[..])));
        assert_eq!(take_cstr(b"ab"), None);
    }
}
