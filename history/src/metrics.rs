//! The archive's own Prometheus metrics and its small HTTP endpoint (`/metrics`, `/healthz`),
//! on `archive.admin_listen`. One registry per archive (no globals), like the proxy's.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::HistoryError;

/// Every metric of one archive, prefixed `hindsight_archive_`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Change (and statement-level) events archived.
    pub events: IntCounter,
    /// BEGIN / END records archived.
    pub transaction_records: IntCounter,
    /// Records that were not hindsight records, kept as `unreadable` rows.
    pub unreadable: IntCounter,
    /// In-doubt transactions decided by `txid_status()`.
    pub resolved: IntCounter,
    /// Commits to the store.
    pub commits: IntCounter,
    /// Seconds one commit to the store took.
    pub commit_seconds: Histogram,
    /// Records on the topics not archived yet (as of the last check, every `topic_refresh`).
    pub lag_records: IntGauge,
    /// Transactions with a BEGIN and neither END nor RESOLVED.
    pub in_doubt: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(format!("hindsight_archive_{name}"), help))
        .expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(format!("hindsight_archive_{name}"), help))
        .expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "hindsight_archive_commit_seconds",
                "Seconds one commit to the history store took",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        r.register(Box::new(commit_seconds.clone()))
            .expect("registered once");
        Metrics {
            events: counter(&r, "events_total", "Change and statement events archived"),
            transaction_records: counter(
                &r,
                "transaction_records_total",
                "BEGIN/END records archived",
            ),
            unreadable: counter(&r, "unreadable_total", "Records kept as unreadable rows"),
            resolved: counter(
                &r,
                "resolved_total",
                "In-doubt transactions decided by txid_status()",
            ),
            commits: counter(&r, "commits_total", "Commits to the history store"),
            lag_records: gauge(
                &r,
                "lag_records",
                "Records on the audit topics not archived yet",
            ),
            in_doubt: gauge(
                &r,
                "in_doubt",
                "Transactions with BEGIN and no END or RESOLVED",
            ),
            commit_seconds,
            registry: r,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics to memory");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serve `/metrics` and `/healthz` on `addr` until `stop`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(), HistoryError> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HistoryError::Io {
            what: format!("archive: binding archive.admin_listen {addr} (is the port in use?)"),
            source,
        })?;
    let m = metrics.clone();
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { m.render() }))
        .route("/healthz", get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
    Ok(())
}
