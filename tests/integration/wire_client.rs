//! A raw protocol client: sends exact bytes and collects exact replies, frame by frame.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_TIMEOUT: Duration = Duration::from_secs(20);

pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn startup(user: &str, db: &str, minor: u16) -> Vec<u8> {
    let mut body = ((3u32 << 16) | minor as u32).to_be_bytes().to_vec();
    for (k, v) in [
        ("user", user),
        ("database", db),
        ("application_name", "wire-test"),
        ("client_encoding", "UTF8"),
    ] {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

pub fn cancel_request(pid_and_key: &[u8]) -> Vec<u8> {
    let mut out = ((pid_and_key.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&80877102u32.to_be_bytes());
    out.extend_from_slice(pid_and_key);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
}

/// A Query of raw bytes (SQL text in a client_encoding that is not UTF-8).
pub fn raw_query(sql: &[u8]) -> Vec<u8> {
    let mut b = sql.to_vec();
    b.push(0);
    msg(b'Q', &b)
}

pub fn parse(name: &str, sql: &str, param_oids: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(param_oids.len() as u16).to_be_bytes());
    for o in param_oids {
        b.extend_from_slice(&o.to_be_bytes());
    }
    msg(b'P', &b)
}

/// Bind with one format code for all parameters and one for all results.
pub fn bind(
    portal: &str,
    stmt: &str,
    param_format: u16,
    params: &[Option<&[u8]>],
    result_format: u16,
) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&param_format.to_be_bytes());
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&result_format.to_be_bytes());
    msg(b'B', &b)
}

pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'D', &b)
}

pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    msg(b'E', &b)
}

pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(b'C', &b)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

pub fn copy_data(data: &[u8]) -> Vec<u8> {
    msg(b'd', data)
}

pub fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

pub fn copy_fail(why: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, why);
    msg(b'f', &b)
}

/// FunctionCall with binary int4 arguments and a binary result.
pub fn function_call_int4(oid: u32, args: &[i32]) -> Vec<u8> {
    let mut b = oid.to_be_bytes().to_vec();
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&(args.len() as u16).to_be_bytes());
    for a in args {
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&a.to_be_bytes());
    }
    b.extend_from_slice(&1u16.to_be_bytes());
    msg(b'F', &b)
}

pub fn terminate() -> Vec<u8> {
    msg(b'X', &[])
}

/// One raw connection.
pub struct RawConn {
    pub stream: TcpStream,
    pub addr: SocketAddr,
}

/// One frame as received (tag, length and body, exactly as on the wire).
pub type Frame = Vec<u8>;

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        Self { stream, addr }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .unwrap_or_else(|e| panic!("send to {}: {e}", self.addr));
    }

    /// Next frame, or `None` at EOF.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 5];
        let r = tokio::time::timeout(READ_TIMEOUT, self.stream.read_exact(&mut head)).await;
        match r {
            Err(_) => panic!("timed out reading from {}", self.addr),
            Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut frame = head.to_vec();
        frame.resize(1 + len, 0);
        tokio::time::timeout(READ_TIMEOUT, self.stream.read_exact(&mut frame[5..]))
            .await
            .unwrap_or_else(|_| panic!("timed out reading a frame body from {}", self.addr))
            .ok()?;
        Some(frame)
    }

    /// Read frames until `n` ReadyForQuery messages have arrived (or EOF).
    pub async fn until_ready(&mut self, n: usize) -> Vec<Frame> {
        self.until(|f| f[0] == b'Z', n).await
    }

    /// Read frames until `n` frames matching `stop` have arrived (or EOF).
    pub async fn until(&mut self, stop: impl Fn(&Frame) -> bool, mut n: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(f) = self.read_frame().await else {
                break;
            };
            if stop(&f) {
                n -= 1;
            }
            out.push(f);
        }
        out
    }

    /// Read everything until the peer closes.
    pub async fn until_eof(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = self.read_frame().await {
            out.push(f);
        }
        out
    }

    /// Read one byte (answers to SSLRequest / GSSENCRequest).
    pub async fn read_byte(&mut self) -> u8 {
        tokio::time::timeout(READ_TIMEOUT, self.stream.read_u8())
            .await
            .expect("timeout")
            .expect("read byte")
    }
}

/// A readable rendering of frames for failure output.
pub fn describe_frames(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| {
            let body = &f[5..];
            let text: String = body
                .iter()
                .take(120)
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!("  {} len={} {text}", f[0] as char, f.len() - 1)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// SQLSTATE of an ErrorResponse/NoticeResponse frame.
pub fn sqlstate(frame: &Frame) -> Option<String> {
    field(frame, b'C')
}

/// A field of an ErrorResponse/NoticeResponse frame.
pub fn field(frame: &Frame, code: u8) -> Option<String> {
    let mut rest = &frame[5..];
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if t == code {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}
