//! The listener: accepts connections, spawns a session task for each, and drains on shutdown.

use super::admin;
use super::cancel::CancelRegistry;
use super::session;
use super::upstream::{Upstream, UpstreamError};
use crate::config::Config;
use crate::telemetry::Metrics;
use crate::tls::{self, TlsError};
use std::net::SocketAddr;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Why the proxy could not start.
#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("proxy.tls: {0}")]
    ClientTls(#[from] TlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("capture: {0}")]
    Sink(#[from] crate::audit::kafka::SinkError),
    #[error("gates: {0}")]
    Gates(#[from] crate::gates::GateError),
    #[error("footprints: {0}")]
    Webhook(#[from] crate::footprint::webhook::WebhookError),
    #[error("{0}")]
    Control(#[from] crate::control::ControlError),
    #[error("{0}")]
    InDoubt(#[from] crate::in_doubt::InDoubtError),
}

/// What capturing sessions share: the audit sink and the statement analysis cache.
pub struct CaptureCtx {
    pub sink: Arc<crate::audit::kafka::KafkaSink>,
    pub cache: Arc<crate::statement::AnalysisCache>,
    pub redactor: Arc<crate::capture::redact::Redactor>,
    /// Rules that refuse writes (gates.rules), when configured.
    pub gates: Option<Arc<crate::gates::engine::Gates>>,
    /// Functions that may write when queries call them, per database.
    pub functions: Arc<crate::capture::functions::WritingFunctions>,
    /// The foreign keys with actions, per database (cascade capture).
    pub cascades: Arc<crate::capture::cascade::Graphs>,
    /// Schema, name and key of captured tables, per database.
    pub tables: Arc<crate::capture::tables::TableCache>,
    /// Write paths per application (footprints.enabled).
    pub footprints: Option<Arc<crate::footprint::Footprints>>,
    /// The control topic shared by every replica (with gates or footprints).
    pub control: Option<Arc<crate::control::Control>>,
    /// Transactions published with a BEGIN and not yet closed (see `in_doubt`).
    pub in_flight: Arc<crate::audit::in_flight::InFlight>,
    /// In-doubt healing (in_doubt.database).
    pub healer: Option<crate::in_doubt::Healer>,
}

/// What every session of one proxy shares.
pub struct ProxyCtx {
    pub config: Config,
    pub metrics: Metrics,
    pub upstream: Upstream,
    pub tls: Option<TlsAcceptor>,
    pub cancel: Arc<CancelRegistry>,
    /// Present when capture is on (brokers configured and capture not disabled).
    pub capture: Option<CaptureCtx>,
    /// Numbers sessions, for session ids.
    pub session_seq: std::sync::atomic::AtomicU64,
    /// Distinguishes this process's session ids from other runs'.
    pub instance: String,
}

/// A started proxy: its addresses, and the handle to stop it.
pub struct Running {
    /// Where clients connect (the actual port when the config said port 0).
    pub addr: SocketAddr,
    /// Where the admin endpoint listens.
    pub admin_addr: SocketAddr,
    /// Shared state, exposed for tests and the admin endpoint.
    pub ctx: Arc<ProxyCtx>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop accepting, let open sessions finish (up to `proxy.drain_timeout`), then return.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Resolves when the proxy has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// A token that, when cancelled, shuts the proxy down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Gates, footprints and the control topic they share, around the audit sink.
async fn capture_ctx(
    config: &Config,
    metrics: &Metrics,
    instance: &str,
    sink: Arc<crate::audit::kafka::KafkaSink>,
) -> Result<CaptureCtx, ProxyError> {
    let gates = match &config.gates.rules {
        Some(path) => {
            let g = crate::gates::engine::Gates::load(
                path,
                config.gates.state.as_deref(),
                metrics.clone(),
            )?;
            g.watch(config.gates.poll_interval);
            Some(g)
        }
        None => None,
    };
    let footprints = if config.footprints.enabled {
        Some(start_footprints(config, metrics, Arc::clone(&sink)).await?)
    } else {
        None
    };
    let control = if gates.is_some() || footprints.is_some() {
        let control = crate::control::Control::new(Arc::clone(&sink));
        let mut subscribers = Vec::new();
        if let Some(g) = &gates {
            g.attach(Arc::clone(&control));
            subscribers.extend(g.subscribers());
        }
        if let Some(f) = &footprints {
            subscribers.extend(f.subscribers());
        }
        if !control.start(subscribers, load_wait(config, &sink)).await? {
            tracing::warn!(topic = control.topic(), "control topic not read to its end yet; flags and kill switches start from the state file");
        }
        Some(control)
    } else {
        None
    };
    let in_flight = Arc::new(crate::audit::in_flight::InFlight::default());
    let healer = start_healer(config, metrics, instance, &sink, &in_flight)?;
    Ok(CaptureCtx {
        in_flight,
        healer,
        gates,
        footprints,
        control,
        functions: Arc::default(),
        cascades: Arc::default(),
        tables: Arc::default(),
        sink,
        cache: Arc::new(crate::statement::AnalysisCache::new(10_000)),
        redactor: Arc::new(crate::capture::redact::Redactor::new(
            config.capture.redact.clone(),
            &config.capture.redact_key,
        )),
    })
}

/// In-doubt healing, when `in_doubt.database` is set (a bad connection string stops the
/// start, naming what is wrong).
fn start_healer(
    config: &Config,
    metrics: &Metrics,
    instance: &str,
    sink: &Arc<crate::audit::kafka::KafkaSink>,
    in_flight: &Arc<crate::audit::in_flight::InFlight>,
) -> Result<Option<crate::in_doubt::Healer>, crate::in_doubt::InDoubtError> {
    let c = &config.in_doubt;
    let Some(dsn) = &c.database else {
        tracing::warn!("in_doubt.database is not set: transactions whose END this proxy never publishes (it was killed between BEGIN and END) stay in doubt until a consumer resolves them; set it to heal them");
        return Ok(None);
    };
    let database = crate::pgconn::parse(dsn)?;
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    let settings = crate::in_doubt::Settings {
        database,
        interval: c.interval,
        policy: crate::in_doubt::decide::Policy {
            after_ms: ms(c.after),
            unknown_after_ms: ms(c.unknown_after),
            own_prefix: format!("{instance}-"),
        },
        resolver: config
            .footprints
            .replica
            .clone()
            .unwrap_or_else(default_replica),
    };
    let healer = crate::in_doubt::Healer::start(
        settings,
        Arc::clone(sink),
        Arc::clone(in_flight),
        metrics.clone(),
    )?;
    Ok(Some(healer))
}

/// How long start-up waits for the shared-state topics: not at all while the brokers have not
/// answered (the replica catches up when they do).
fn load_wait(config: &Config, sink: &crate::audit::kafka::KafkaSink) -> std::time::Duration {
    if sink.is_reached() {
        config.kafka.publish_timeout
    } else {
        std::time::Duration::ZERO
    }
}

async fn start_footprints(
    config: &Config,
    metrics: &Metrics,
    sink: Arc<crate::audit::kafka::KafkaSink>,
) -> Result<Arc<crate::footprint::Footprints>, ProxyError> {
    let f = &config.footprints;
    let webhook = match &f.webhook_url {
        Some(url) => Some(crate::footprint::webhook::Webhook::start(
            crate::footprint::webhook::WebhookConfig {
                url: url.clone(),
                timeout: f.webhook_timeout,
                retries: f.webhook_retries,
            },
            metrics.clone(),
        )?),
        None => None,
    };
    let settings = crate::footprint::live::Settings {
        replica: f.replica.clone().unwrap_or_else(default_replica),
        modes: crate::footprint::decide::Modes {
            default: Some(f.mode),
            configured: f.applications.clone(),
            switched: Default::default(),
            learn_for: f.learn_for,
        },
        flush_interval: f.flush_interval,
        load_timeout: load_wait(config, &sink),
    };
    Ok(crate::footprint::Footprints::start(settings, sink, webhook, metrics.clone()).await)
}

/// The replica name: `HOSTNAME` (the pod name under Kubernetes), else the host name.
fn default_replica() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "hindsight".into())
}

/// The audit sink. With `kafka.require_at_start`, brokers that do not answer stop the start;
/// otherwise the proxy starts anyway (reads served, writes refused with HS001) and a task
/// keeps trying every second until they answer.
async fn open_sink(
    config: &Config,
    metrics: &Metrics,
) -> Result<Arc<crate::audit::kafka::KafkaSink>, ProxyError> {
    use crate::telemetry::events::Event;
    let sink = Arc::new(crate::audit::kafka::KafkaSink::new(config.kafka.clone())?);
    let brokers = config.kafka.brokers.join(",");
    // Each attempt waits up to publish_timeout: a broker that is up but slow to list its
    // topics (thousands of them, or a loaded machine) must not start the proxy degraded.
    // Regression: with a 2 s first attempt, the test suites' writes right after start were
    // refused with HS001 while the dev broker took longer than that to answer.
    let attempt = config.kafka.publish_timeout;
    match sink.try_reach(attempt).await {
        Ok(()) => metrics.broker_reachable.set(1),
        Err(e) if config.kafka.require_at_start => return Err(e.into()),
        Err(e) => {
            Event::BrokerReach {
                brokers: &brokers,
                error: Some(&e),
            }
            .emit(metrics);
            let weak = Arc::downgrade(&sink);
            let metrics = metrics.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    let Some(sink) = weak.upgrade() else { return };
                    if sink.try_reach(attempt).await.is_ok() {
                        Event::BrokerReach {
                            brokers: &brokers,
                            error: None,
                        }
                        .emit(&metrics);
                        return;
                    }
                }
            });
        }
    }
    Ok(sink)
}

/// Distinguishes this proxy's session ids (`<instance>-<n>`) from other processes' and other
/// runs': start time, process id, and a count of proxies this process started. No `-` in it.
fn instance_id() -> String {
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{millis:x}p{:x}n{n}", std::process::id())
}

/// Bind the proxy and admin listeners and start serving in the background.
pub async fn launch(config: Config, metrics: Metrics) -> Result<Running, ProxyError> {
    crate::fault::arm(&config.fault);
    let tls = match &config.proxy.tls {
        Some(t) => Some(TlsAcceptor::from(tls::server_config(t)?)),
        None => None,
    };
    let upstream = Upstream::new(&config.upstream)?;
    let instance = instance_id();
    let capture = if !config.capture.disabled && !config.kafka.brokers.is_empty() {
        let sink = open_sink(&config, &metrics).await?;
        tracing::info!(brokers = ?config.kafka.brokers, prefix = %config.kafka.topic_prefix, "capture on");
        Some(capture_ctx(&config, &metrics, &instance, sink).await?)
    } else {
        None
    };
    let listener = TcpListener::bind(config.proxy.listen)
        .await
        .map_err(|source| ProxyError::Bind {
            what: "proxy.listen",
            addr: config.proxy.listen,
            source,
        })?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| ProxyError::Bind {
            what: "admin.listen",
            addr: config.admin.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ProxyError::Bind {
        what: "proxy.listen",
        addr: config.proxy.listen,
        source,
    })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ProxyError::Bind {
            what: "admin.listen",
            addr: config.admin.listen,
            source,
        })?;
    let ctx = Arc::new(ProxyCtx {
        config,
        metrics,
        upstream,
        tls,
        cancel: Arc::new(CancelRegistry::default()),
        capture,
        session_seq: std::sync::atomic::AtomicU64::new(0),
        instance,
    });
    let shutdown = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&ctx),
        shutdown.clone(),
    ));
    let task = tokio::spawn(accept_loop(
        listener,
        Arc::clone(&ctx),
        shutdown.clone(),
        admin_task,
    ));
    tracing::info!(%addr, %admin_addr, upstream = ctx.upstream.address(), tls = ctx.tls.is_some(), "hindsight proxy listening");
    Ok(Running {
        addr,
        admin_addr,
        ctx,
        shutdown,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ProxyCtx>,
    shutdown: CancellationToken,
    admin: tokio::task::JoinHandle<()>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => { sessions.spawn(session::serve(Arc::clone(&ctx), tcp, peer)); }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    drain(sessions, &ctx).await;
    if let Some(c) = &ctx.capture {
        if let Some(f) = &c.footprints {
            f.stop().await;
        }
        if let Some(ctl) = &c.control {
            ctl.stop();
        }
        if let Some(h) = &c.healer {
            h.stop();
        }
    }
    let _ = admin.await;
}

/// Let open sessions finish up to the drain timeout, then close whatever is left.
async fn drain(mut sessions: JoinSet<()>, ctx: &ProxyCtx) {
    let timeout = ctx.config.proxy.drain_timeout;
    tracing::info!(
        open = sessions.len(),
        ?timeout,
        "shutting down: no new connections; draining open sessions"
    );
    let all_done = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(timeout, all_done).await.is_err() {
        tracing::warn!(
            open = sessions.len(),
            "drain timeout reached; closing remaining sessions"
        );
        sessions.shutdown().await;
    }
    tracing::info!("proxy stopped");
}
