//! Typed events: each one writes its log line and bumps its metric, so the two never drift apart.

use super::Metrics;
use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

/// Something worth a log line and a metric.
pub enum Event<'a> {
    /// A client connection was accepted.
    SessionOpened { client: SocketAddr },
    /// A client connection ended (for any reason).
    SessionClosed {
        client: SocketAddr,
        duration: Duration,
        outcome: &'a dyn Display,
    },
    /// hindsight could not reach the upstream server for a client.
    UpstreamConnectFailed {
        upstream: &'a str,
        error: &'a dyn Display,
    },
    /// A client broke the protocol; it gets an ErrorResponse and is disconnected.
    ProtocolViolation {
        client: SocketAddr,
        reason: &'static str,
        error: &'a dyn Display,
    },
    /// A CancelRequest, forwarded or dropped.
    CancelRequest { pid: i32, outcome: &'static str },
    /// A TLS handshake with a client or the upstream.
    TlsHandshake {
        side: &'static str,
        ok: bool,
        error: Option<&'a dyn Display>,
    },
    /// A session prepared the statement of a shape's bound writes, or the server refused it
    /// (that shape's writes stay text).
    BoundPrepare {
        statement: &'a str,
        error: Option<&'a dyn Display>,
    },
    /// A simple-protocol write ran bound to its session's prepared statement.
    BoundWrite,
    /// A gate rule refused a write, dry-ran it (audit) or exempted it (allow).
    GateDecision {
        rule: &'a str,
        outcome: &'static str,
        reason: &'a str,
    },
    /// The rules file was reloaded, or a new version was rejected (the old rules stay).
    RulesReloaded {
        path: &'a str,
        error: Option<&'a dyn Display>,
    },
    /// The Kafka brokers did not answer at start (`error`), or answered for the first time.
    BrokerReach {
        brokers: &'a str,
        error: Option<&'a dyn Display>,
    },
    /// A transaction left with a BEGIN and no END was closed with an END record.
    InDoubtResolved {
        id: &'a str,
        tx_id: Option<i64>,
        outcome: &'static str,
        how: &'a str,
    },
    /// A write path outside an application's footprint, or a first nulling.
    FootprintAlert {
        alert: &'a crate::audit::alert::Alert,
    },
}

impl Event<'_> {
    /// Log the event and update its metric.
    pub fn emit(&self, m: &Metrics) {
        match self {
            Event::SessionOpened { client } => {
                m.sessions_total.inc();
                m.sessions_open.inc();
                tracing::debug!(%client, "session opened");
            }
            Event::SessionClosed {
                client,
                duration,
                outcome,
            } => {
                m.sessions_open.dec();
                tracing::info!(%client, duration_ms = duration.as_millis() as u64, %outcome, "session closed");
            }
            Event::UpstreamConnectFailed { upstream, error } => {
                m.upstream_connect_errors.inc();
                tracing::warn!(%upstream, %error, "cannot connect to upstream");
            }
            Event::ProtocolViolation {
                client,
                reason,
                error,
            } => {
                m.protocol_errors.with_label_values(&[*reason]).inc();
                tracing::warn!(%client, reason, %error, "protocol violation; closing connection");
            }
            Event::BoundPrepare { statement, error } => match error {
                None => {
                    m.bound_prepares.with_label_values(&["prepared"]).inc();
                    tracing::debug!(statement, "bound writes' statement prepared");
                }
                Some(error) => {
                    m.bound_prepares.with_label_values(&["refused"]).inc();
                    tracing::info!(statement, %error, "the server refused a bound writes' statement; that shape stays text");
                }
            },
            Event::BoundWrite => m.bound_writes.inc(),
            Event::CancelRequest { pid, outcome } => {
                m.cancel_requests.with_label_values(&[*outcome]).inc();
                tracing::info!(pid, outcome, "cancel request");
            }
            Event::TlsHandshake { side, ok, error } => {
                m.tls_handshakes
                    .with_label_values(&[*side, if *ok { "ok" } else { "error" }])
                    .inc();
                match error {
                    Some(error) => tracing::warn!(side, %error, "TLS handshake failed"),
                    None => tracing::debug!(side, "TLS handshake done"),
                }
            }
            Event::GateDecision {
                rule,
                outcome,
                reason,
            } => {
                m.gate_decisions.with_label_values(&[*rule, *outcome]).inc();
                tracing::warn!(rule, outcome, reason, "gate decision");
            }
            Event::RulesReloaded { path, error } => match error {
                None => {
                    m.gate_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(path, "rules loaded");
                }
                Some(error) => {
                    m.gate_reloads.with_label_values(&["rejected"]).inc();
                    tracing::error!(path, %error, "rules file rejected; the previous rules stay in force");
                }
            },
            Event::BrokerReach { brokers, error } => match error {
                Some(error) => {
                    m.broker_reachable.set(0);
                    tracing::error!(%brokers, %error, "KAFKA BROKERS UNREACHABLE AT START: serving reads; every write, DDL and gate event is refused with HS001 until they answer (retrying every second; /readyz says degraded). Set kafka.require_at_start = true to refuse to start instead");
                }
                None => {
                    m.broker_reachable.set(1);
                    tracing::info!(%brokers, "kafka brokers reachable: writes are captured");
                }
            },
            Event::InDoubtResolved {
                id,
                tx_id,
                outcome,
                how,
            } => {
                m.in_doubt_resolved.with_label_values(&[*outcome]).inc();
                tracing::warn!(
                    id,
                    ?tx_id,
                    outcome,
                    how,
                    "in-doubt transaction resolved: END record published"
                );
            }
            Event::FootprintAlert { alert } => footprint_alert(m, alert),
        }
    }
}

/// [`Event::FootprintAlert`]: counted per application and table, logged with what approves it.
fn footprint_alert(m: &Metrics, alert: &crate::audit::alert::Alert) {
    use crate::audit::alert::AlertKind;
    let counter = match alert.kind {
        AlertKind::NewWritePath => &m.new_write_paths,
        AlertKind::Nulling => &m.nulling_alerts,
    };
    counter
        .with_label_values(&[alert.application.as_str(), alert.table.as_str()])
        .inc();
    tracing::warn!(
        alert = alert.kind.label(),
        application = %alert.application,
        user = %alert.user,
        table = %alert.table,
        columns = ?alert.columns,
        fingerprint = %alert.fingerprint,
        path_id = %alert.path_id,
        approve = %alert.approve,
        "{}",
        alert.headline()
    );
}
