//! The framed relay: moves protocol messages from one side to the other.
//!
//! Each direction is a [`Pump`]. It reads whatever the socket has, walks the complete frames in
//! the buffer (a partial frame is "read more"), lets an [`Inspector`] look at each one, and
//! writes the original bytes on in one write per read. Frames larger than
//! [`STREAM_THRESHOLD`] are not buffered whole: once their header has been checked, their bytes
//! are forwarded as they arrive.
//!
//! Invariant: a pump only stops between writes (the stop signal interrupts reads, never a
//! write), so a client never receives half a message followed by something else.

use super::cancel::{CancelRegistry, KeyGuard};
use crate::telemetry::metrics::DirectionCounters;
use crate::telemetry::Metrics;
use crate::wire::backend;
use crate::wire::error_response::{sqlstate, ErrorResponse};
use crate::wire::frame::{peek_header, FrameError, Header, HEADER_LEN};
use crate::wire::frontend::{parse_statement, query_text, FrontendTag};
pub use crate::wire::inspect::{frontend_tag, Inspector, Verdict};
use bytes::{Buf, BytesMut};
use prometheus::Histogram;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Frames larger than this are streamed through instead of being buffered whole.
pub const STREAM_THRESHOLD: usize = 256 * 1024;
/// Initial (and idle) buffer size per direction.
const INITIAL_BUFFER: usize = 8 * 1024;
/// An empty buffer that grew beyond this is replaced, so idle sessions stay small.
const SHRINK_ABOVE: usize = 1024 * 1024;

/// How a pump ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// The reading side closed its connection.
    Eof,
    /// The other direction ended first.
    Stopped,
    /// Protocol violation; the payload is the ErrorResponse to send the client.
    Rejected {
        reason: &'static str,
        error: FrameError,
    },
    ReadError(std::io::Error),
    WriteError(std::io::Error),
}

/// What walking the frames of one read found ([`Pump::walk`]).
struct Walked {
    /// Bytes at the start of the buffer walked past, to be written after what `out` holds.
    pos: usize,
    /// Frames seen.
    messages: u64,
    /// The frame that stopped the walk as a protocol violation.
    rejected: Option<(&'static str, FrameError)>,
}

/// One direction of a session.
pub struct Pump<R, W, I> {
    pub reader: R,
    pub writer: W,
    pub inspector: I,
    /// Largest acceptable frame.
    pub max_frame: usize,
    pub counters: DirectionCounters,
    pub latency: Histogram,
}

impl<R, W, I> Pump<R, W, I>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send,
    I: Inspector,
{
    /// Relay until EOF, an error, a protocol violation or `stop`. Returns the writer so the
    /// caller can still send a final message on it.
    pub async fn run(mut self, stop: CancellationToken) -> (PumpEnd, W, I) {
        let end = self.relay(&stop).await;
        (end, self.writer, self.inspector)
    }

    async fn relay(&mut self, stop: &CancellationToken) -> PumpEnd {
        let mut buf = BytesMut::with_capacity(INITIAL_BUFFER);
        // Bytes to write before `buf[..pos]`: frames already walked past, with replacements,
        // so one read becomes one write (each write wakes the peer, which costs it CPU).
        let mut out: Vec<u8> = Vec::new();
        // Bytes of a streamed frame still to forward without inspection.
        let mut stream_left = 0usize;
        loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(INITIAL_BUFFER);
            }
            let n = tokio::select! {
                biased;
                _ = stop.cancelled() => return PumpEnd::Stopped,
                r = self.reader.read_buf(&mut buf) => match r {
                    Ok(0) => return PumpEnd::Eof,
                    Ok(n) => n,
                    Err(e) => return PumpEnd::ReadError(e),
                },
            };
            let started = Instant::now();
            let walked = match self.walk(&mut buf, &mut out, &mut stream_left).await {
                Ok(w) => w,
                Err(e) => return PumpEnd::WriteError(e),
            };
            // Frames before a bad one are valid and go through, as they would to PostgreSQL.
            let written = if out.is_empty() {
                self.write(&buf[..walked.pos]).await
            } else {
                out.extend_from_slice(&buf[..walked.pos]);
                let w = self.write(&out).await;
                out.clear();
                w
            };
            if let Err(e) = written {
                return PumpEnd::WriteError(e);
            }
            buf.advance(walked.pos);
            self.counters.bytes.inc_by(n as u64);
            self.counters.messages.inc_by(walked.messages);
            self.latency.observe(started.elapsed().as_secs_f64());
            if let Some((reason, error)) = walked.rejected {
                return PumpEnd::Rejected { reason, error };
            }
            if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
                buf = BytesMut::with_capacity(INITIAL_BUFFER);
            }
            if out.capacity() > SHRINK_ABOVE {
                out = Vec::new();
            }
        }
    }

    /// Walk the frames in `buf` (what one read added, and any partial frame before it): let the
    /// inspector judge each complete one, move replaced and resolved frames (with what precedes
    /// them) into `out`, and stop at a partial frame, the end, or a rejected frame. A streamed
    /// frame's bytes are passed without inspection, `stream_left` counting what is still to
    /// come. Fails only when a deferred frame's resolver cannot write.
    async fn walk(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Vec<u8>,
        stream_left: &mut usize,
    ) -> std::io::Result<Walked> {
        let mut walked = Walked {
            pos: 0,
            messages: 0,
            rejected: None,
        };
        loop {
            let pos = walked.pos;
            if *stream_left > 0 {
                let take = (*stream_left).min(buf.len() - pos);
                walked.pos += take;
                *stream_left -= take;
                if *stream_left > 0 {
                    return Ok(walked);
                }
                continue;
            }
            let header = match peek_header(&buf[pos..], self.max_frame) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(walked),
                Err(error) => {
                    walked.rejected = Some(("bad_frame", error));
                    return Ok(walked);
                }
            };
            let frame_len = header.frame_len();
            let available = buf.len() - pos;
            let complete = available >= frame_len;
            if !complete
                && (frame_len <= STREAM_THRESHOLD || self.inspector.must_buffer(header.tag))
            {
                buf.reserve(frame_len - available);
                return Ok(walked);
            }
            walked.messages += 1;
            let end = if complete { pos + frame_len } else { buf.len() };
            match self.inspector.on_frame(header, &buf[pos..end], complete) {
                Verdict::Forward => walked.pos = end,
                Verdict::Replace(bytes) => {
                    out.extend_from_slice(&buf[..pos]);
                    out.extend_from_slice(&bytes);
                    buf.advance(end);
                    walked.pos = 0;
                    if !complete {
                        *stream_left = frame_len - available;
                    }
                    continue;
                }
                Verdict::Reject { reason, error } => {
                    walked.rejected = Some((reason, error));
                    return Ok(walked);
                }
                Verdict::Defer => {
                    // What precedes the frame goes out with the resolver's first flush;
                    // what it writes after its last flush, with what follows the frame.
                    out.extend_from_slice(&buf[..pos]);
                    let mut w = Coalesced::new(&mut self.writer, out);
                    self.inspector.resolve(&buf[pos..end], &mut w).await?;
                    buf.advance(end);
                    walked.pos = 0;
                    continue;
                }
            }
            if !complete {
                *stream_left = frame_len - available;
                return Ok(walked);
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }
}

/// The writer an [`Inspector::resolve`] gets: bytes it writes are held until it flushes, and
/// go out in one write together with what the pump had pending before the deferred frame.
/// What a resolver writes without flushing before it returns goes out with the rest of the
/// pump's read. A resolver must flush before it waits for the server (or the bytes it waits on
/// an answer to are never sent).
struct Coalesced<'a, W> {
    inner: &'a mut W,
    pending: &'a mut Vec<u8>,
}

impl<'a, W: AsyncWrite + Unpin + Send> Coalesced<'a, W> {
    fn new(inner: &'a mut W, pending: &'a mut Vec<u8>) -> Self {
        Self { inner, pending }
    }
}

impl<W: AsyncWrite + Unpin + Send> AsyncWrite for Coalesced<'_, W> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.get_mut().pending.extend_from_slice(bytes);
        std::task::Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        while !this.pending.is_empty() {
            let n = std::task::ready!(
                std::pin::Pin::new(&mut *this.inner).poll_write(cx, this.pending)
            )?;
            if n == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            this.pending.drain(..n);
        }
        std::pin::Pin::new(&mut *this.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(self.as_mut().poll_flush(cx))?;
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Inspects what the client sends: refuses unknown message types and counts statements.
pub struct ClientInspector {
    metrics: Metrics,
}

impl ClientInspector {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl Inspector for ClientInspector {
    #[inline]
    fn on_frame(&mut self, header: Header, frame: &[u8], _complete: bool) -> Verdict {
        let tag = match frontend_tag(header.tag) {
            Ok(t) => t,
            Err(reject) => return reject,
        };
        let body = &frame[HEADER_LEN.min(frame.len())..];
        match tag {
            FrontendTag::Query => self
                .metrics
                .statement(crate::statement::classify(query_text(body)))
                .inc(),
            FrontendTag::Parse => {
                if let Some((_, sql)) = parse_statement(body) {
                    self.metrics
                        .statement(crate::statement::classify(sql))
                        .inc();
                }
            }
            _ => {}
        }
        Verdict::Forward
    }
}

/// Inspects what the server sends: registers the backend key for cancels, tracks the session's
/// application_name, and withholds SCRAM channel binding from TLS-terminated clients.
pub struct ServerInspector {
    strip_channel_binding: bool,
    cancel: Arc<CancelRegistry>,
    key_guard: Option<KeyGuard>,
    /// Whether the first ReadyForQuery has been seen (authentication done).
    pub ready: bool,
    span: tracing::Span,
    /// The application_name last recorded on the span: the server reports it again (a RESET,
    /// a SET to the same value), and a span shows every value recorded, so only changes are.
    application_name: Vec<u8>,
    /// Capture mode: routes every reply through the session's unit queue.
    pub router: Option<Arc<crate::capture::router::Shared>>,
}

impl ServerInspector {
    pub fn new(
        strip_channel_binding: bool,
        cancel: Arc<CancelRegistry>,
        span: tracing::Span,
    ) -> Self {
        Self {
            strip_channel_binding,
            cancel,
            key_guard: None,
            ready: false,
            span,
            application_name: Vec::new(),
            router: None,
        }
    }
}

impl ServerInspector {
    #[inline]
    fn routed(&self, tag: u8, frame: &[u8]) -> Verdict {
        match &self.router {
            None => Verdict::Forward,
            Some(shared) => match crate::capture::router::route(shared, tag, frame) {
                crate::capture::router::Route::Forward => Verdict::Forward,
                crate::capture::router::Route::Replace(bytes) => Verdict::Replace(bytes),
            },
        }
    }
}

impl Inspector for ServerInspector {
    /// With capture on, replies hindsight reads or rewrites (captured rows, its own queries'
    /// rows, anything not forwarded as is) must arrive whole; the client's own large rows
    /// still stream.
    fn must_buffer(&self, tag: u8) -> bool {
        let Some(shared) = &self.router else {
            return false;
        };
        tag != b'D' || crate::capture::router::front_reads_rows(shared)
    }

    #[inline]
    fn on_frame(&mut self, header: Header, frame: &[u8], complete: bool) -> Verdict {
        if !complete {
            return Verdict::Forward;
        }
        let body = &frame[HEADER_LEN..];
        match header.tag {
            b'R' if self.strip_channel_binding
                && backend::auth_code(body) == Some(backend::AUTH_SASL) =>
            {
                match backend::strip_channel_binding(body) {
                    Some(bytes) => Verdict::Replace(bytes),
                    None => Verdict::Forward,
                }
            }
            b'K' => {
                if let Some((pid, key)) = backend::backend_key(body) {
                    self.key_guard = Some(self.cancel.register(pid, key));
                    self.span.record("backend_pid", pid);
                }
                Verdict::Forward
            }
            b'S' => {
                if let Some((b"application_name", value)) = backend::parameter_status(body) {
                    if value != self.application_name.as_slice() {
                        self.application_name = value.to_vec();
                        self.span
                            .record("application_name", String::from_utf8_lossy(value).as_ref());
                    }
                }
                self.routed(header.tag, frame)
            }
            b'Z' if !self.ready => {
                self.ready = true;
                tracing::debug!(parent: &self.span, "session authenticated and ready");
                self.routed(header.tag, frame)
            }
            _ => self.routed(header.tag, frame),
        }
    }
}

/// The ErrorResponse a client receives for a protocol violation.
pub fn protocol_error(error: &FrameError) -> Vec<u8> {
    ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, format!("hindsight: {error}"))
        .with_hint("The client sent bytes that are not a valid PostgreSQL protocol message; the connection is closed.")
        .encode()
}
