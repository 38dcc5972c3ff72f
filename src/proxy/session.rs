//! One client connection from accept to close: the startup phase (TLS negotiation, cancel
//! requests, the StartupMessage), the upstream connection, then the relay.

use super::cancel;
use super::relay::{protocol_error, ClientInspector, Inspector, Pump, PumpEnd, ServerInspector};
use super::server::ProxyCtx;
use super::stream::Stream;
use crate::telemetry::Event;
use crate::wire::error_response::{sqlstate, ErrorResponse};
use crate::wire::startup::{self, StartupError, StartupPacket, TLS_HANDSHAKE_BYTE};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{field, Instrument};

/// How long the other direction may take to wind down after one direction ended.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// How a session ended (logged with the session's span).
#[derive(Debug)]
pub enum Outcome {
    ClientClosed,
    UpstreamClosed,
    CancelHandled,
    ProtocolViolation(String),
    UpstreamUnavailable(String),
    StartupTimeout,
    Io(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::ClientClosed => f.write_str("client closed the connection"),
            Outcome::UpstreamClosed => f.write_str("upstream closed the connection"),
            Outcome::CancelHandled => f.write_str("cancel request handled"),
            Outcome::ProtocolViolation(e) => write!(f, "protocol violation: {e}"),
            Outcome::UpstreamUnavailable(e) => write!(f, "upstream unavailable: {e}"),
            Outcome::StartupTimeout => {
                f.write_str("no StartupMessage before proxy.startup_timeout")
            }
            Outcome::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// Serve one accepted connection until it closes.
pub async fn serve(ctx: Arc<ProxyCtx>, tcp: TcpStream, client: SocketAddr) {
    let started = Instant::now();
    Event::SessionOpened { client }.emit(&ctx.metrics);
    let span = tracing::info_span!(
        "session",
        %client,
        user = field::Empty,
        database = field::Empty,
        application_name = field::Empty,
        backend_pid = field::Empty,
    );
    let outcome = run(&ctx, tcp, client, span.clone())
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    Event::SessionClosed {
        client,
        duration: started.elapsed(),
        outcome: &outcome,
    }
    .emit(&ctx.metrics);
}

async fn run(
    ctx: &Arc<ProxyCtx>,
    tcp: TcpStream,
    client: SocketAddr,
    span: tracing::Span,
) -> Outcome {
    let _ = tcp.set_nodelay(true);
    let (mut conn, raw_startup, packet) = match tokio::time::timeout(
        ctx.config.proxy.startup_timeout,
        negotiate(ctx, tcp, client),
    )
    .await
    {
        Err(_) => return Outcome::StartupTimeout,
        Ok(Err(outcome)) => return outcome,
        Ok(Ok(v)) => v,
    };
    // application_name is recorded from the server's ParameterStatus, which also tracks later SETs.
    for (name, key) in [("user", "user"), ("database", "database")] {
        if let Some(v) = packet.param(key) {
            span.record(name, v);
        }
    }
    let mut upstream = match ctx.upstream.connect().await {
        Ok(u) => u,
        Err(e) => {
            Event::UpstreamConnectFailed {
                upstream: ctx.upstream.address(),
                error: &e,
            }
            .emit(&ctx.metrics);
            let msg = ErrorResponse::fatal(sqlstate::CONNECTION_FAILURE, format!("hindsight: {e}"))
                .with_hint("The proxy is running but the PostgreSQL server behind it is not reachable; check upstream.address and that the server is up.")
                .encode();
            let _ = send_and_close(&mut conn, &msg).await;
            return Outcome::UpstreamUnavailable(e.to_string());
        }
    };
    if let Err(e) = upstream.write_all(&raw_startup).await {
        return Outcome::Io(format!("forwarding StartupMessage: {e}"));
    }
    let who = SessionWho {
        user: packet.param("user").unwrap_or_default().to_string(),
        database: packet
            .param("database")
            .or(packet.param("user"))
            .unwrap_or_default()
            .to_string(),
    };
    relay(ctx, conn, upstream, client, span, who).await
}

/// Who the session is, from its StartupMessage.
struct SessionWho {
    user: String,
    database: String,
}

/// Startup phase: answer SSLRequest/GSSENCRequest, handle CancelRequest, and return the
/// StartupMessage (raw bytes and decoded) once it arrives.
async fn negotiate(
    ctx: &Arc<ProxyCtx>,
    tcp: TcpStream,
    client: SocketAddr,
) -> Result<(Stream, Vec<u8>, StartupPacket), Outcome> {
    let mut first = [0u8; 1];
    let direct_tls = matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == TLS_HANDSHAKE_BYTE);
    let mut conn = Stream::Plain(tcp);
    if direct_tls {
        conn = accept_tls(ctx, conn, client, true).await?;
    }
    loop {
        let raw = read_startup_packet(&mut conn).await.map_err(io_outcome)?;
        let raw = match raw {
            Ok(raw) => raw,
            Err(err) => return Err(refuse(ctx, &mut conn, client, err).await),
        };
        match startup::decode(&raw) {
            Ok(StartupPacket::SslRequest) if !conn.is_tls() && ctx.tls.is_some() => {
                write(&mut conn, b"S").await?;
                conn = accept_tls(ctx, conn, client, false).await?;
            }
            Ok(StartupPacket::SslRequest) | Ok(StartupPacket::GssEncRequest) => {
                write(&mut conn, b"N").await?
            }
            Ok(StartupPacket::Cancel { pid, key }) => {
                handle_cancel(ctx, pid, &key).await;
                return Err(Outcome::CancelHandled);
            }
            Ok(p @ StartupPacket::Startup { .. }) => return Ok((conn, raw, p)),
            Err(err) => return Err(refuse(ctx, &mut conn, client, err).await),
        }
    }
}

fn io_outcome(e: std::io::Error) -> Outcome {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Outcome::ClientClosed
    } else {
        Outcome::Io(e.to_string())
    }
}

/// Read one startup-phase packet. Outer error: I/O. Inner error: an invalid length.
async fn read_startup_packet(conn: &mut Stream) -> std::io::Result<Result<Vec<u8>, StartupError>> {
    let len = conn.read_u32().await?;
    let len = match startup::check_length(len) {
        Ok(l) => l,
        Err(e) => return Ok(Err(e)),
    };
    let mut raw = vec![0u8; len];
    raw[..4].copy_from_slice(&(len as u32).to_be_bytes());
    conn.read_exact(&mut raw[4..]).await?;
    Ok(Ok(raw))
}

async fn refuse(
    ctx: &ProxyCtx,
    conn: &mut Stream,
    client: SocketAddr,
    err: StartupError,
) -> Outcome {
    let code = match err {
        StartupError::UnsupportedProtocol { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
        _ => sqlstate::PROTOCOL_VIOLATION,
    };
    Event::ProtocolViolation {
        client,
        reason: "bad_startup",
        error: &err,
    }
    .emit(&ctx.metrics);
    let _ = send_and_close(
        conn,
        &ErrorResponse::fatal(code, format!("hindsight: {err}")).encode(),
    )
    .await;
    Outcome::ProtocolViolation(err.to_string())
}

async fn accept_tls(
    ctx: &ProxyCtx,
    conn: Stream,
    client: SocketAddr,
    direct: bool,
) -> Result<Stream, Outcome> {
    let Stream::Plain(tcp) = conn else {
        return Err(Outcome::ProtocolViolation("TLS requested twice".into()));
    };
    let Some(acceptor) = &ctx.tls else {
        // Direct TLS without a certificate: nothing sensible can be said in TLS; just close.
        let err = "client started TLS directly but proxy.tls is not configured";
        Event::ProtocolViolation {
            client,
            reason: "tls_not_configured",
            error: &err,
        }
        .emit(&ctx.metrics);
        return Err(Outcome::ProtocolViolation(err.into()));
    };
    match acceptor.accept(tcp).await {
        Ok(tls) => {
            if direct && tls.get_ref().1.alpn_protocol() != Some(b"postgresql") {
                let err = "direct TLS without ALPN protocol \"postgresql\"";
                Event::TlsHandshake {
                    side: "client",
                    ok: false,
                    error: Some(&err),
                }
                .emit(&ctx.metrics);
                return Err(Outcome::ProtocolViolation(err.into()));
            }
            Event::TlsHandshake {
                side: "client",
                ok: true,
                error: None,
            }
            .emit(&ctx.metrics);
            Ok(Stream::ServerTls(Box::new(tls)))
        }
        Err(e) => {
            Event::TlsHandshake {
                side: "client",
                ok: false,
                error: Some(&e),
            }
            .emit(&ctx.metrics);
            Err(Outcome::Io(format!("client TLS handshake: {e}")))
        }
    }
}

async fn handle_cancel(ctx: &ProxyCtx, pid: i32, key: &[u8]) {
    if !ctx.cancel.contains(pid, key) {
        Event::CancelRequest {
            pid,
            outcome: "unknown_key",
        }
        .emit(&ctx.metrics);
        return;
    }
    match cancel::forward(&ctx.upstream, pid, key).await {
        Ok(()) => Event::CancelRequest {
            pid,
            outcome: "forwarded",
        }
        .emit(&ctx.metrics),
        Err(e) => {
            Event::UpstreamConnectFailed {
                upstream: ctx.upstream.address(),
                error: &e,
            }
            .emit(&ctx.metrics);
            Event::CancelRequest {
                pid,
                outcome: "upstream_error",
            }
            .emit(&ctx.metrics);
        }
    }
}

async fn write(conn: &mut Stream, bytes: &[u8]) -> Result<(), Outcome> {
    conn.write_all(bytes)
        .await
        .map_err(|e| Outcome::Io(e.to_string()))?;
    conn.flush().await.map_err(|e| Outcome::Io(e.to_string()))
}

async fn send_and_close<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await?;
    w.shutdown().await
}

/// Relay both directions until one ends, then wind the other down.
async fn relay(
    ctx: &Arc<ProxyCtx>,
    conn: Stream,
    upstream: Stream,
    client: SocketAddr,
    span: tracing::Span,
    who: SessionWho,
) -> Outcome {
    match &ctx.capture {
        None => {
            relay_with(
                ctx,
                conn,
                upstream,
                client,
                span,
                ClientInspector::new(ctx.metrics.clone()),
                None,
            )
            .await
        }
        Some(cap) => {
            let n = ctx
                .session_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            let info = crate::capture::publish::SessionInfo {
                session_id: format!("{}-{n}", ctx.instance),
                user: who.user,
                database: who.database,
                client_addr: client.to_string(),
                topic_prefix: ctx.config.kafka.topic_prefix.clone(),
                topic_routing: ctx.config.kafka.topic_routing,
                statement_limit: ctx.config.capture.max_statement_bytes,
                in_flight: Arc::clone(&cap.in_flight),
            };
            let parts = crate::capture::client::SessionParts {
                sink: Arc::clone(&cap.sink),
                cache: Arc::clone(&cap.cache),
                metrics: ctx.metrics.clone(),
                redactor: Arc::clone(&cap.redactor),
                gates: cap.gates.clone(),
                footprints: cap.footprints.clone(),
                functions: Arc::clone(&cap.functions),
                cascades: Arc::clone(&cap.cascades),
                tables: Arc::clone(&cap.tables),
                on_sink_failure: ctx.config.capture.on_sink_failure,
                simple_writes: ctx.config.capture.simple_writes,
                truncate_limit: ctx.config.capture.truncate_row_limit,
                max_transaction_bytes: ctx.config.capture.max_transaction_bytes,
            };
            let (inspector, shared) = crate::capture::client::ClientCapture::new(parts, info);
            relay_with(ctx, conn, upstream, client, span, inspector, Some(shared)).await
        }
    }
}

/// Relay both directions with the given client-side inspector (and capture router).
async fn relay_with<I: Inspector + 'static>(
    ctx: &Arc<ProxyCtx>,
    conn: Stream,
    upstream: Stream,
    client: SocketAddr,
    span: tracing::Span,
    client_inspector: I,
    router: Option<Arc<crate::capture::router::Shared>>,
) -> Outcome {
    let strip = conn.is_tls();
    let (client_r, client_w) = conn.split();
    let (upstream_r, upstream_w) = upstream.split();
    let m = &ctx.metrics;
    let c2u = Pump {
        reader: client_r,
        writer: upstream_w,
        inspector: client_inspector,
        max_frame: ctx.config.proxy.max_message_bytes,
        counters: m.client_to_upstream.clone(),
        latency: m.relay_latency.clone(),
    };
    let u2c = Pump {
        reader: upstream_r,
        writer: client_w,
        inspector: {
            let mut i = ServerInspector::new(strip, Arc::clone(&ctx.cancel), span);
            i.router = router;
            i
        },
        max_frame: usize::MAX,
        counters: m.upstream_to_client.clone(),
        latency: m.relay_latency.clone(),
    };
    let stop = CancellationToken::new();
    let c2u = c2u.run(stop.clone());
    let u2c = u2c.run(stop.clone());
    tokio::pin!(c2u, u2c);
    tokio::select! {
        (end, mut upstream_w, _) = &mut c2u => {
            stop.cancel();
            let _ = upstream_w.shutdown().await;
            drop(upstream_w);
            let client_w = tokio::time::timeout(WIND_DOWN, u2c).await.ok().map(|(_, w, _)| w);
            finish_client_side(ctx, client, end, client_w).await
        }
        (end, mut client_w, _) = &mut u2c => {
            stop.cancel();
            let _ = client_w.shutdown().await;
            let _ = tokio::time::timeout(WIND_DOWN, c2u).await;
            match end {
                PumpEnd::Eof | PumpEnd::Stopped => Outcome::UpstreamClosed,
                PumpEnd::ReadError(e) => Outcome::Io(format!("reading from upstream: {e}")),
                PumpEnd::WriteError(e) => Outcome::Io(format!("writing to client: {e}")),
                PumpEnd::Rejected { error, .. } => Outcome::ProtocolViolation(format!("upstream: {error}")),
            }
        }
    }
}

/// The client-to-upstream direction ended: report a protocol violation to the client if that
/// was the reason, then close the client connection.
async fn finish_client_side<W: AsyncWrite + Unpin>(
    ctx: &ProxyCtx,
    client: SocketAddr,
    end: PumpEnd,
    client_w: Option<W>,
) -> Outcome {
    match end {
        PumpEnd::Rejected { reason, error } => {
            if let Some(mut w) = client_w {
                let _ = send_and_close(&mut w, &protocol_error(&error)).await;
            }
            Event::ProtocolViolation {
                client,
                reason,
                error: &error,
            }
            .emit(&ctx.metrics);
            Outcome::ProtocolViolation(error.to_string())
        }
        PumpEnd::Eof | PumpEnd::Stopped => Outcome::ClientClosed,
        PumpEnd::ReadError(e) => Outcome::Io(format!("reading from client: {e}")),
        PumpEnd::WriteError(e) => Outcome::Io(format!("writing to upstream: {e}")),
    }
}
