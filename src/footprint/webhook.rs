//! Webhook delivery of alerts (Slack-compatible JSON POST), off the commit path: alerts go
//! into a bounded queue that one task drains, each POST with a timeout and retries. A full
//! queue or a receiver that stays down drops the alert with an ERROR line and a metric; the
//! write that caused it is never affected (the alert is also on `<prefix>.alerts`).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::telemetry::Metrics;

/// Alerts waiting for delivery, at most.
const QUEUE: usize = 1024;

#[derive(Debug, Error)]
pub enum WebhookError {
    #[error(
        "footprints.webhook_url {url:?}: {why} (expected http://host[:port]/path or https://…)"
    )]
    Url { url: String, why: String },
    #[error("webhook {url}: {why}")]
    Delivery { url: String, why: String },
}

/// Where and how alerts are posted.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub timeout: Duration,
    pub retries: u32,
}

/// The sending side of the delivery queue.
#[derive(Clone)]
pub struct Webhook {
    tx: mpsc::Sender<serde_json::Value>,
    metrics: Metrics,
}

use crate::config::WebhookTarget as Target;

fn target(url: &str) -> Result<Target, WebhookError> {
    Target::parse(url).map_err(|why| WebhookError::Url {
        url: url.to_string(),
        why,
    })
}

impl Webhook {
    /// Check the URL and start the delivery task.
    pub fn start(cfg: WebhookConfig, metrics: Metrics) -> Result<Webhook, WebhookError> {
        let t = Arc::new(target(&cfg.url)?);
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(QUEUE);
        let m = metrics.clone();
        tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                deliver(&t, &cfg, &body, &m).await;
            }
        });
        Ok(Webhook { tx, metrics })
    }

    /// Queue one alert body; never waits.
    pub fn send(&self, body: serde_json::Value) {
        if self.tx.try_send(body).is_err() {
            self.metrics
                .webhook_deliveries
                .with_label_values(&["dropped"])
                .inc();
            tracing::error!("webhook queue full ({QUEUE} alerts waiting); alert dropped (it is on the alerts topic)");
        }
    }
}

async fn deliver(t: &Target, cfg: &WebhookConfig, body: &serde_json::Value, m: &Metrics) {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("JSON serialises"));
    let mut pause = Duration::from_millis(200);
    for attempt in 0..=cfg.retries {
        match tokio::time::timeout(cfg.timeout, post(t, bytes.clone())).await {
            Ok(Ok(())) => {
                m.webhook_deliveries.with_label_values(&["ok"]).inc();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(url = %cfg.url, attempt, error = %e, "webhook delivery failed")
            }
            Err(_) => {
                tracing::warn!(url = %cfg.url, attempt, timeout = ?cfg.timeout, "webhook delivery timed out")
            }
        }
        if attempt < cfg.retries {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }
    m.webhook_deliveries.with_label_values(&["failed"]).inc();
    tracing::error!(url = %cfg.url, attempts = cfg.retries + 1, "webhook alert not delivered; it is on the alerts topic");
}

async fn post(t: &Target, body: Bytes) -> Result<(), WebhookError> {
    let err = |why: String| WebhookError::Delivery {
        url: t.uri.to_string(),
        why,
    };
    let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| err(format!("connect: {e}")))?;
    let req = hyper::Request::post(t.uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, t.host.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| err(e.to_string()))?;
    let status = if t.tls {
        let tls = tls_connector()
            .connect(
                rustls::pki_types::ServerName::try_from(t.host.clone())
                    .map_err(|e| err(e.to_string()))?,
                tcp,
            )
            .await
            .map_err(|e| err(format!("TLS: {e}")))?;
        send(TokioIo::new(tls), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
    .map_err(|e| err(e.to_string()))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(err(format!("HTTP {status}")))
    }
}

async fn send<I>(io: I, req: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}
