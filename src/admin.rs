//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process is up) and
//! `/readyz` (the upstream server accepts TCP connections).

use crate::proxy::server::ProxyCtx;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serve until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: Arc<ProxyCtx>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

async fn metrics(State(ctx): State<Arc<ProxyCtx>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
}

async fn readyz(State(ctx): State<Arc<ProxyCtx>>) -> impl IntoResponse {
    match ctx.upstream.probe().await {
        Ok(()) => (
            StatusCode::OK,
            format!("ready: upstream {} reachable\n", ctx.upstream.address()),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}
