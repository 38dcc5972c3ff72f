//! Prometheus metrics of one proxy instance. Each instance owns its registry (no globals), so
//! several proxies in one test process do not mix their numbers.

use crate::statement::KeywordClass;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Direction of relayed traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Self::ClientToUpstream => "client_to_upstream",
            Self::UpstreamToClient => "upstream_to_client",
        }
    }
}

/// Counters for one relay direction, resolved once so the hot path does no label lookups.
#[derive(Clone)]
pub struct DirectionCounters {
    pub bytes: IntCounter,
    pub messages: IntCounter,
}

/// All metrics of one proxy instance.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub sessions_open: IntGauge,
    pub sessions_total: IntCounter,
    pub client_to_upstream: DirectionCounters,
    pub upstream_to_client: DirectionCounters,
    statements: Vec<IntCounter>,
    pub upstream_connect_errors: IntCounter,
    pub protocol_errors: IntCounterVec,
    pub cancel_requests: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub relay_latency: Histogram,
    /// Change events published (acknowledged by the brokers).
    pub audit_events: IntCounter,
    /// Transactions whose audit records could not be recorded.
    pub audit_publish_failures: IntCounter,
    /// Catalog queries a COMMIT made before publishing (tables not cached, or no captured row
    /// brought the transaction id).
    pub capture_catalog_queries: IntCounter,
    /// 1 once the brokers answered since start; 0 while they have not (writes refused).
    pub broker_reachable: IntGauge,
    /// In-doubt transactions (BEGIN without END) this process resolved, by outcome.
    pub in_doubt_resolved: IntCounterVec,
    /// How long a COMMIT waits for the brokers to acknowledge its transaction's records.
    pub audit_publish_latency: Histogram,
    /// How long a COMMIT waits beyond the brokers' acknowledgement: from the acknowledgement of
    /// its transaction's records to the server's answer to the COMMIT hindsight then forwards.
    pub commit_after_ack: Histogram,
    /// Gate decisions, by rule and outcome (deny, audit, allow).
    pub gate_decisions: IntCounterVec,
    /// Rules file reloads, by outcome (ok, rejected).
    pub gate_reloads: IntCounterVec,
    /// PREPAREs of bound writes' statements, by outcome (prepared, refused).
    pub bound_prepares: IntCounterVec,
    /// Simple-protocol writes run bound to a prepared statement.
    pub bound_writes: IntCounter,
    /// Change events published, by application_name and table.
    pub changes: IntCounterVec,
    /// Write paths outside an application's footprint, by application and table.
    pub new_write_paths: IntCounterVec,
    /// Columns an application set to NULL for the first time, by application and table.
    pub nulling_alerts: IntCounterVec,
    /// Statements refused in enforce mode, by application and table.
    pub footprint_refusals: IntCounterVec,
    /// Webhook deliveries, by outcome (ok, failed, dropped).
    pub webhook_deliveries: IntCounterVec,
    /// The full name of every metric registered (labelled ones included, which the text
    /// exposition leaves out until they have a value).
    names: Vec<String>,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("hindsight".into()), None).expect("static prefix is valid");
        let names = std::cell::RefCell::new(Vec::new());
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            names
                .borrow_mut()
                .extend(c.desc().iter().map(|d| format!("hindsight_{}", d.fq_name)));
            registry.register(c).expect("metric names are unique")
        };
        let sessions_open =
            IntGauge::new("sessions_open", "Client sessions currently open").unwrap();
        let sessions_total =
            IntCounter::new("sessions_total", "Client sessions accepted since start").unwrap();
        let bytes = IntCounterVec::new(
            Opts::new("relayed_bytes_total", "Bytes relayed, by direction"),
            &["direction"],
        )
        .unwrap();
        let messages = IntCounterVec::new(
            Opts::new(
                "relayed_messages_total",
                "Protocol messages relayed, by direction",
            ),
            &["direction"],
        )
        .unwrap();
        let statements = IntCounterVec::new(
            Opts::new(
                "statements_total",
                "Statements sent by clients (Query and Parse), by leading keyword",
            ),
            &["kind"],
        )
        .unwrap();
        let upstream_connect_errors = IntCounter::new(
            "upstream_connect_errors_total",
            "Failed connections to the upstream server",
        )
        .unwrap();
        let protocol_errors = IntCounterVec::new(
            Opts::new(
                "protocol_errors_total",
                "Client connections closed for protocol violations, by reason",
            ),
            &["reason"],
        )
        .unwrap();
        let cancel_requests = IntCounterVec::new(
            Opts::new(
                "cancel_requests_total",
                "CancelRequests received, by outcome",
            ),
            &["outcome"],
        )
        .unwrap();
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "tls_handshakes_total",
                "TLS handshakes, by side and outcome",
            ),
            &["side", "outcome"],
        )
        .unwrap();
        let relay_latency = Histogram::with_opts(
            HistogramOpts::new(
                "relay_latency_seconds",
                "Time hindsight holds a chunk of protocol data: from reading it to having written it on",
            )
            .buckets(vec![1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 0.1, 1.0]),
        )
        .unwrap();
        let audit_publish_latency = Histogram::with_opts(
            HistogramOpts::new(
                "audit_publish_seconds",
                "Time from publishing a transaction's audit records to the brokers' acknowledgement of all of them (COMMIT waits this long)",
            )
            .buckets(vec![2.5e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1.0, 5.0]),
        )
        .unwrap();
        let commit_after_ack = Histogram::with_opts(
            HistogramOpts::new(
                "capture_commit_after_ack_seconds",
                "Time a captured COMMIT waits beyond the brokers' acknowledgement of its records: from the acknowledgement to the server's answer to the COMMIT",
            )
            .buckets(vec![2.5e-5, 5e-5, 7.5e-5, 1e-4, 1.25e-4, 1.5e-4, 2e-4, 2.5e-4, 3e-4, 4e-4, 5e-4, 7.5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 0.1]),
        )
        .unwrap();
        let dir = |d: Direction| DirectionCounters {
            bytes: bytes.with_label_values(&[d.label()]),
            messages: messages.with_label_values(&[d.label()]),
        };
        let mut m = Self {
            names: Vec::new(),
            client_to_upstream: dir(Direction::ClientToUpstream),
            upstream_to_client: dir(Direction::UpstreamToClient),
            statements: KeywordClass::ALL
                .iter()
                .map(|k| statements.with_label_values(&[k.label()]))
                .collect(),
            registry: registry.clone(),
            sessions_open,
            sessions_total,
            upstream_connect_errors,
            protocol_errors,
            cancel_requests,
            tls_handshakes,
            relay_latency,
            audit_publish_latency,
            commit_after_ack,
            audit_events: IntCounter::new("audit_events_total", "Change events published and acknowledged").unwrap(),
            broker_reachable: IntGauge::new("broker_reachable", "1 once the Kafka brokers answered since start; 0 while they have not (reads served, writes refused with HS001)").unwrap(),
            in_doubt_resolved: IntCounterVec::new(
                Opts::new("in_doubt_resolved_total", "Transactions published with a BEGIN but no END that hindsight resolved with txid_status() and closed with an END, by outcome (committed, aborted, unknown)"),
                &["outcome"],
            )
            .unwrap(),
            audit_publish_failures: IntCounter::new(
                "audit_publish_failures_total",
                "Transactions whose audit records could not be recorded (rolled back unless capture.on_sink_failure = allow)",
            )
            .unwrap(),
            capture_catalog_queries: IntCounter::new(
                "capture_catalog_queries_total",
                "Catalog queries a captured COMMIT made before publishing (tables not cached yet, or no captured row brought the transaction id); 0 per COMMIT in steady state",
            )
            .unwrap(),
            gate_decisions: IntCounterVec::new(
                Opts::new("gate_decisions_total", "Gate decisions that refused, dry-ran or exempted a write, by rule and outcome"),
                &["rule", "outcome"],
            )
            .unwrap(),
            gate_reloads: IntCounterVec::new(
                Opts::new("gate_reloads_total", "Rules file reloads, by outcome (ok, rejected)"),
                &["outcome"],
            )
            .unwrap(),
            bound_prepares: IntCounterVec::new(
                Opts::new("capture_bound_prepares_total", "PREPAREs of the statements simple-protocol writes are bound to, by outcome (prepared, refused)"),
                &["outcome"],
            )
            .unwrap(),
            bound_writes: IntCounter::new(
                "capture_bound_writes_total",
                "Simple-protocol writes run bound to a statement their session prepared",
            )
            .unwrap(),
            changes: IntCounterVec::new(
                Opts::new("changes_total", "Change events published and acknowledged, by application_name and table (schema.table)"),
                &["application", "table"],
            )
            .unwrap(),
            new_write_paths: IntCounterVec::new(
                Opts::new("new_write_paths_total", "Write paths outside an application's footprint (alerted or refused), by application and table"),
                &["application", "table"],
            )
            .unwrap(),
            nulling_alerts: IntCounterVec::new(
                Opts::new("nulling_alerts_total", "Columns an application set from non-NULL to NULL for the first time, by application and table"),
                &["application", "table"],
            )
            .unwrap(),
            footprint_refusals: IntCounterVec::new(
                Opts::new("footprint_refusals_total", "Statements refused in footprint enforce mode, by application and table"),
                &["application", "table"],
            )
            .unwrap(),
            webhook_deliveries: IntCounterVec::new(
                Opts::new("webhook_deliveries_total", "Alert webhook deliveries, by outcome (ok, failed, dropped)"),
                &["outcome"],
            )
            .unwrap(),
        };
        reg(Box::new(m.changes.clone()));
        reg(Box::new(m.new_write_paths.clone()));
        reg(Box::new(m.nulling_alerts.clone()));
        reg(Box::new(m.footprint_refusals.clone()));
        reg(Box::new(m.webhook_deliveries.clone()));
        reg(Box::new(m.gate_decisions.clone()));
        reg(Box::new(m.gate_reloads.clone()));
        reg(Box::new(m.bound_prepares.clone()));
        reg(Box::new(m.bound_writes.clone()));
        reg(Box::new(m.sessions_open.clone()));
        reg(Box::new(m.sessions_total.clone()));
        reg(Box::new(bytes));
        reg(Box::new(messages));
        reg(Box::new(statements));
        reg(Box::new(m.upstream_connect_errors.clone()));
        reg(Box::new(m.protocol_errors.clone()));
        reg(Box::new(m.cancel_requests.clone()));
        reg(Box::new(m.tls_handshakes.clone()));
        reg(Box::new(m.relay_latency.clone()));
        reg(Box::new(m.audit_publish_latency.clone()));
        reg(Box::new(m.commit_after_ack.clone()));
        reg(Box::new(m.audit_events.clone()));
        reg(Box::new(m.audit_publish_failures.clone()));
        reg(Box::new(m.capture_catalog_queries.clone()));
        reg(Box::new(m.broker_reachable.clone()));
        reg(Box::new(m.in_doubt_resolved.clone()));
        m.names = names.into_inner();
        m
    }

    /// Every metric's full name (`hindsight_…`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Counter for one statement kind.
    pub fn statement(&self, kind: KeywordClass) -> &IntCounter {
        &self.statements[kind.index()]
    }

    /// Counters for one direction.
    pub fn direction(&self, d: Direction) -> &DirectionCounters {
        match d {
            Direction::ClientToUpstream => &self.client_to_upstream,
            Direction::UpstreamToClient => &self.upstream_to_client,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
