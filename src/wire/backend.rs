//! Messages the server sends that the proxy must read (never re-encode unless it has to).

use super::frame::{put_frame, take_cstr};

/// Authentication request codes (`R` messages) whose answer is a `p` message from the client.
pub const AUTH_SASL: u32 = 10;

/// Read the authentication code of an `R` message body.
pub fn auth_code(body: &[u8]) -> Option<u32> {
    body.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The SASL mechanism names of an AuthenticationSASL body (code 10).
pub fn sasl_mechanisms(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = body.get(4..).unwrap_or(&[]);
    while let Some((name, tail)) = take_cstr(rest) {
        if name.is_empty() {
            break;
        }
        out.push(name);
        rest = tail;
    }
    out
}

/// Re-encode an AuthenticationSASL message without the channel-binding (`-PLUS`) mechanisms.
///
/// Why: when hindsight terminates the client's TLS, the client would bind SCRAM to hindsight's
/// certificate, which the upstream server can never verify. Offering only the plain mechanism
/// keeps SCRAM working; the client-to-proxy hop is still protected by TLS.
/// Returns `None` when there is nothing to strip (forward the original bytes).
pub fn strip_channel_binding(body: &[u8]) -> Option<Vec<u8>> {
    let mechs = sasl_mechanisms(body);
    if !mechs.iter().any(|m| m.ends_with(b"-PLUS")) {
        return None;
    }
    let mut new_body = AUTH_SASL.to_be_bytes().to_vec();
    for m in mechs.iter().filter(|m| !m.ends_with(b"-PLUS")) {
        new_body.extend_from_slice(m);
        new_body.push(0);
    }
    new_body.push(0);
    let mut out = Vec::with_capacity(new_body.len() + 5);
    put_frame(&mut out, b'R', &new_body);
    Some(out)
}

/// `(name, value)` of a ParameterStatus (`S`) body.
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = take_cstr(body)?;
    let (value, _) = take_cstr(rest)?;
    Some((name, value))
}

/// Parameter type oids of a ParameterDescription (`t`) body (empty if malformed).
pub fn parameter_types(body: &[u8]) -> Vec<u32> {
    let Some(n) = body
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    else {
        return Vec::new();
    };
    let oids: Vec<u32> = body[2..]
        .chunks_exact(4)
        .take(n)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if oids.len() == n {
        oids
    } else {
        Vec::new()
    }
}

/// Process id and secret key of a BackendKeyData (`K`) body. The key is 4 bytes in protocol 3.0
/// and up to 256 bytes in 3.2.
pub fn backend_key(body: &[u8]) -> Option<(i32, &[u8])> {
    let pid = body.get(..4)?;
    let key = body.get(4..)?;
    if key.is_empty() {
        return None;
    }
    Some((i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]), key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl_body(mechs: &[&str]) -> Vec<u8> {
        let mut b = AUTH_SASL.to_be_bytes().to_vec();
        for m in mechs {
            b.extend_from_slice(m.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn strips_plus_mechanism() {
        let body = sasl_body(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        let out = strip_channel_binding(&body).unwrap();
        let expected_body = sasl_body(&["SCRAM-SHA-256"]);
        assert_eq!(&out[5..], &expected_body[..]);
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            expected_body.len() + 4
        );
    }

    #[test]
    fn nothing_to_strip_keeps_original() {
        assert_eq!(strip_channel_binding(&sasl_body(&["SCRAM-SHA-256"])), None);
    }

    #[test]
    fn backend_key_variants() {
        assert_eq!(
            backend_key(&[0, 0, 0, 7, 1, 2, 3, 4]),
            Some((7, &[1u8, 2, 3, 4][..]))
        );
        let long: Vec<u8> = [0, 0, 0, 9].into_iter().chain([5u8; 32]).collect();
        assert_eq!(backend_key(&long).unwrap().1.len(), 32);
        assert_eq!(backend_key(&[0, 0, 0, 7]), None);
    }
}
