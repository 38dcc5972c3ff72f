//! Packets of the startup phase: they have no tag byte, just a 4-byte length and a 4-byte code.

use super::frame::take_cstr;
use thiserror::Error;

/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Smallest startup-phase packet: length + code.
pub const MIN_STARTUP_LEN: usize = 8;

pub const CANCEL_REQUEST_CODE: u32 = 80877102;
pub const SSL_REQUEST_CODE: u32 = 80877103;
pub const GSSENC_REQUEST_CODE: u32 = 80877104;

/// The 8 bytes of an SSLRequest, as hindsight sends it to a TLS upstream.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// First byte of a TLS ClientHello record: a client using PostgreSQL 17's direct TLS.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// One packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    /// A CancelRequest for backend `pid` with its secret key (4 bytes in 3.0, up to 256 in 3.2).
    Cancel {
        pid: i32,
        key: Vec<u8>,
    },
    /// A StartupMessage. `params` keeps the client's order; the original bytes are forwarded.
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// A parameter of a StartupMessage (`user`, `database`, `application_name`, ...).
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            Self::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// A startup packet PostgreSQL would refuse too.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid startup packet length {len}: a PostgreSQL startup packet is {MIN_STARTUP_LEN} to {MAX_STARTUP_LEN} bytes — is this client speaking the PostgreSQL protocol?")]
    LengthOutOfRange { len: u32 },
    #[error("malformed {what}: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
    #[error(
        "unsupported frontend protocol {major}.{minor}: hindsight supports protocol 3.0 to 3.2"
    )]
    UnsupportedProtocol { major: u16, minor: u16 },
}

/// Validate the length field that starts every startup-phase packet.
pub fn check_length(len: u32) -> Result<usize, StartupError> {
    let l = len as usize;
    if (MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&l) {
        Ok(l)
    } else {
        Err(StartupError::LengthOutOfRange { len })
    }
}

/// Decode one complete startup-phase packet (`raw` includes the length field).
pub fn decode(raw: &[u8]) -> Result<StartupPacket, StartupError> {
    // Callers pass whole packets (`check_length` keeps them at 8 bytes or more); anything
    // shorter is malformed, not a panic (found by fuzzing: `decode(&[])` indexed past the end).
    let Some(&[a, b, c, d]) = raw
        .get(4..8)
        .map(|s| <&[u8; 4]>::try_from(s).expect("4 bytes"))
    else {
        return Err(StartupError::Malformed {
            what: "startup packet",
            why: "shorter than its 8-byte header",
        });
    };
    let code = u32::from_be_bytes([a, b, c, d]);
    let body = &raw[8..];
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => decode_cancel(body),
        _ => decode_startup(code, body),
    }
}

fn decode_cancel(body: &[u8]) -> Result<StartupPacket, StartupError> {
    const WHAT: &str = "CancelRequest";
    if body.len() < 8 || body.len() > 4 + 256 {
        return Err(StartupError::Malformed {
            what: WHAT,
            why: "secret key must be 4 to 256 bytes",
        });
    }
    let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    Ok(StartupPacket::Cancel {
        pid,
        key: body[4..].to_vec(),
    })
}

fn decode_startup(code: u32, body: &[u8]) -> Result<StartupPacket, StartupError> {
    const WHAT: &str = "StartupMessage";
    let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
    if major != 3 {
        return Err(StartupError::UnsupportedProtocol { major, minor });
    }
    let mut params = Vec::new();
    let mut rest = body;
    loop {
        let (name, tail) = take_cstr(rest).ok_or(StartupError::Malformed {
            what: WHAT,
            why: "parameter list is not NUL-terminated",
        })?;
        if name.is_empty() {
            break;
        }
        let (value, tail) = take_cstr(tail).ok_or(StartupError::Malformed {
            what: WHAT,
            why: "parameter has no value",
        })?;
        let name = String::from_utf8_lossy(name).into_owned();
        params.push((name, String::from_utf8_lossy(value).into_owned()));
        rest = tail;
    }
    if !params.iter().any(|(k, _)| k == "user") {
        return Err(StartupError::Malformed {
            what: WHAT,
            why: "no \"user\" parameter (PostgreSQL requires one)",
        });
    }
    Ok(StartupPacket::Startup {
        major,
        minor,
        params,
    })
}

#[cfg(test)]
mod tests {

    /// Regression (fuzzing): `decode` indexed bytes 4..8 without looking, so a short slice
    /// panicked instead of being refused.
    #[test]
    fn short_packet_panicked_instead_of_being_refused() {
        for raw in [&[][..], &[0, 0, 0, 8][..], &[0, 0, 0, 8, 4, 210, 22][..]] {
            assert!(
                matches!(decode(raw), Err(StartupError::Malformed { .. })),
                "{raw:?}"
            );
        }
    }

    use super::*;

    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut p = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn startup_params() {
        let p = decode(&packet(3 << 16 | 2, b"user\0alice\0database\0db\0\0")).unwrap();
        assert_eq!(p.param("user"), Some("alice"));
        assert_eq!(p.param("database"), Some("db"));
        assert!(matches!(
            p,
            StartupPacket::Startup {
                major: 3,
                minor: 2,
                ..
            }
        ));
    }

    #[test]
    fn special_codes() {
        assert_eq!(decode(&SSL_REQUEST).unwrap(), StartupPacket::SslRequest);
        assert_eq!(
            decode(&packet(GSSENC_REQUEST_CODE, b"")).unwrap(),
            StartupPacket::GssEncRequest
        );
        assert_eq!(
            decode(&packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 5, 9, 9, 9, 9])).unwrap(),
            StartupPacket::Cancel {
                pid: 5,
                key: vec![9; 4]
            }
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        assert!(check_length(0x4745_5420)
            .unwrap_err()
            .to_string()
            .contains("1195725856"));
        assert!(matches!(
            decode(&packet(2 << 16, b"")),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        assert!(decode(&packet(3 << 16, b"user\0alice")).is_err());
        assert!(decode(&packet(3 << 16, b"database\0x\0\0"))
            .unwrap_err()
            .to_string()
            .contains("user"));
    }
}
