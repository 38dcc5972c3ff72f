//! ErrorResponse messages that hindsight itself sends to a client.

use super::frame::put_frame;

/// SQLSTATE codes hindsight uses for errors it originates.
pub mod sqlstate {
    /// protocol_violation: malformed or oversized frames, garbage before startup.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// connection_failure: the upstream server cannot be reached.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// feature_not_supported: e.g. direct TLS when no certificate is configured.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// admin_shutdown: the proxy is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// hindsight could not record the write (capture or audit publishing failed); the
    /// transaction was rolled back. Class `HS` is hindsight's own.
    pub const AUDIT_NOT_RECORDED: &str = "HS001";
    /// hindsight cannot capture this statement (yet); it was not run.
    pub const CAPTURE_UNSUPPORTED: &str = "HS002";
    /// a capture limit (capture.truncate_row_limit) refused the statement; it was not run.
    pub const CAPTURE_LIMIT: &str = "HS003";
    /// A gate rule refused the write (hindsight's own class HS).
    pub const GATE_DENIED: &str = "HS010";
    /// The write is switched off by a kill switch (read-only mode).
    pub const READ_ONLY: &str = "HS011";
    /// A write path outside the application's footprint, refused in enforce mode.
    pub const NEW_WRITE_PATH: &str = "HS012";
}

/// An error to report to a client; encodes to one ErrorResponse (`E`) frame.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    /// `ERROR` or `FATAL`.
    pub severity: &'static str,
    /// Five-character SQLSTATE.
    pub code: &'static str,
    /// Primary message (field `M`).
    pub message: String,
    /// Optional detail (field `D`).
    pub detail: Option<String>,
    /// Optional hint on how to fix it (field `H`).
    pub hint: Option<String>,
}

impl ErrorResponse {
    /// A FATAL error: the connection closes after it.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: "FATAL",
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An ERROR: the statement fails, the session continues.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: "ERROR",
            ..Self::fatal(code, message)
        }
    }

    /// Attach a hint (`H` field) telling the user how to fix the problem.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Attach a detail (`D` field).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Encode as one complete `E` frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64 + self.message.len());
        let mut field = |t: u8, v: &str| {
            body.push(t);
            // A NUL inside a field would end it early on the client side.
            body.extend(v.bytes().map(|b| if b == 0 { b'?' } else { b }));
            body.push(0);
        };
        field(b'S', self.severity);
        field(b'V', self.severity);
        field(b'C', self.code);
        field(b'M', &self.message);
        if let Some(d) = &self.detail {
            field(b'D', d);
        }
        if let Some(h) = &self.hint {
            field(b'H', h);
        }
        body.push(0);
        let mut out = Vec::with_capacity(body.len() + 5);
        put_frame(&mut out, b'E', &body);
        out
    }
}

/// An ErrorResponse/NoticeResponse frame with its position field (`P`, 1-based character
/// index into the query string) moved back by `delta` characters — for errors the server
/// reports against a query string that hindsight extended in front of the client's text.
/// Positions that would fall before the start are left alone.
pub fn shift_position(frame: &[u8], delta: i64) -> Vec<u8> {
    map_position(frame, |p| p - delta)
}

/// What a position map returns for a position that points at no text of the client's: the
/// position field is left out.
pub const NO_POSITION: i64 = i64::MIN;

/// An ErrorResponse/NoticeResponse frame with its position field (`P`) replaced by `map` of
/// it; a position that would map before the start is left alone, one mapped to
/// [`NO_POSITION`] left out.
pub fn map_position(frame: &[u8], map: impl Fn(i64) -> i64) -> Vec<u8> {
    let mut out = frame[..5.min(frame.len())].to_vec();
    let mut rest = frame.get(5..).unwrap_or_default();
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            return frame.to_vec();
        };
        let value = &tail[..end];
        rest = &tail[end + 1..];
        let mapped = (code == b'P')
            .then(|| std::str::from_utf8(value).ok()?.parse::<i64>().ok())
            .flatten()
            .map(&map);
        if mapped == Some(NO_POSITION) {
            continue;
        }
        out.push(code);
        let shifted = mapped.filter(|p| *p >= 1);
        match shifted {
            Some(p) => out.extend_from_slice(p.to_string().as_bytes()),
            None => out.extend_from_slice(value),
        }
        out.push(0);
    }
    out.push(0);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

/// The message field (`M`) of an ErrorResponse/NoticeResponse frame (empty if it has none).
pub fn message_of(frame: &[u8]) -> String {
    field_of(frame, b'M').unwrap_or_default()
}

/// The SQLSTATE field (`C`) of an ErrorResponse/NoticeResponse frame.
pub fn code_of(frame: &[u8]) -> Option<String> {
    field_of(frame, b'C')
}

/// Whether an ErrorResponse frame points at a position in the statement text (`P`): the
/// parser's errors do.
pub fn has_position(frame: &[u8]) -> bool {
    field_of(frame, b'P').is_some()
}

fn field_of(frame: &[u8], wanted: u8) -> Option<String> {
    let mut rest = frame.get(5..).unwrap_or_default();
    while let Some((&code, tail)) = rest.split_first() {
        let end = tail.iter().position(|&b| b == 0)?;
        if code == wanted {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_in_order() {
        let e = ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, "bad")
            .with_hint("fix it")
            .encode();
        assert_eq!(e[0], b'E');
        let len = u32::from_be_bytes(e[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, e.len());
        assert_eq!(&e[5..], b"SFATAL\0VFATAL\0C08P01\0Mbad\0Hfix it\0\0");
    }
}
