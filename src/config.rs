//! Configuration: one TOML file, then `HINDSIGHT_*` environment variables, then CLI flags.
//!
//! Every section is a serde struct with `deny_unknown_fields`, so a typo is an error that names
//! the key and its line instead of a silently ignored setting. Defaults live in [`defaults`] and
//! nowhere else.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Every default value, in one place.
pub mod defaults {
    use std::time::Duration;
    pub const LISTEN: &str = "127.0.0.1:6432";
    pub const UPSTREAM: &str = "127.0.0.1:5432";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9187";
    /// Largest TRUNCATE capture records (capture.truncate_row_limit).
    pub const TRUNCATE_ROW_LIMIT: u64 = 10_000;
    /// Row images one transaction may hold until COMMIT (capture.max_transaction_bytes).
    pub const MAX_TRANSACTION_BYTES: u64 = 256 << 20;
    /// Longest statement text an event carries (capture.max_statement_bytes).
    pub const MAX_STATEMENT_BYTES: usize = 64 << 10;
    /// PostgreSQL's own limit for a message is 1 GiB; allow the header on top of it.
    pub const MAX_MESSAGE_BYTES: usize = (1 << 30) + 5;
    pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const LOG_LEVEL: &str = "info";
    /// How often the rules file is checked for changes (gates.poll_interval).
    pub const RULES_POLL: Duration = Duration::from_secs(1);
    /// Where the history archive writes (archive.store).
    pub const ARCHIVE_STORE: &str = "./hindsight-history";
    /// The archive's name in the store's commits (archive.name).
    pub const ARCHIVE_NAME: &str = "hindsight-archive";
    /// Records per archive commit at most (archive.batch_max_records).
    pub const ARCHIVE_BATCH_RECORDS: usize = 50_000;
    /// Longest wait for a batch to fill (archive.batch_max_wait).
    pub const ARCHIVE_BATCH_WAIT: Duration = Duration::from_secs(1);
    /// Age of a BEGIN without END before the archive asks the database (archive.resolve_after).
    pub const ARCHIVE_RESOLVE_AFTER: Duration = Duration::from_secs(60);
    /// How often in-doubt healing looks (in_doubt.interval).
    pub const IN_DOUBT_INTERVAL: Duration = Duration::from_secs(10);
    /// Age of a BEGIN without END before it is resolved (in_doubt.after).
    pub const IN_DOUBT_AFTER: Duration = Duration::from_secs(30);
    /// Age of another process's BEGIN without txid before it is closed as unknown
    /// (in_doubt.unknown_after).
    pub const IN_DOUBT_UNKNOWN_AFTER: Duration = Duration::from_secs(3600);
    /// How often the archive looks for new topics (archive.topic_refresh).
    pub const ARCHIVE_TOPIC_REFRESH: Duration = Duration::from_secs(10);
    /// history_server.listen
    pub const HISTORY_LISTEN: &str = "127.0.0.1:6543";
    /// footprints.flush_interval
    pub const FOOTPRINT_FLUSH: Duration = Duration::from_secs(5);
    /// footprints.webhook_timeout
    pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
    /// footprints.webhook_retries
    pub const WEBHOOK_RETRIES: u32 = 3;
}

/// Prefix of environment variables that override the file; `__` separates nesting levels,
/// e.g. `HINDSIGHT_PROXY__LISTEN` or `HINDSIGHT_UPSTREAM__TLS__MODE`.
pub const ENV_PREFIX: &str = "HINDSIGHT_";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The client-facing side: where applications connect.
    pub proxy: ProxyConfig,
    /// The PostgreSQL server hindsight relays to.
    pub upstream: UpstreamConfig,
    /// The HTTP admin endpoint (metrics, health).
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Capturing writes (before/after images) into audit records.
    pub capture: CaptureConfig,
    /// The Kafka brokers audit records go to. Capture is on when `brokers` is set.
    pub kafka: crate::audit::kafka::SinkConfig,
    /// Gates: rules and feature flags that refuse writes (needs capture on).
    pub gates: GatesConfig,
    /// The history archive (`hindsight archive`): where the audit topics are kept for good.
    pub archive: ArchiveConfig,
    /// Footprints: each application's write paths, and what to do about new ones (needs
    /// capture on).
    pub footprints: FootprintsConfig,
    /// `hindsight history serve`: the history over the PostgreSQL protocol (read-only).
    pub history_server: HistoryServerConfig,
    /// Self-healing of in-doubt transactions (a BEGIN published, its END never): the proxy
    /// resolves them with `txid_status()` and publishes the missing END.
    pub in_doubt: InDoubtConfig,
    /// TEST ONLY: crash points for fault-injection tests (see `fault`). Never set it.
    pub fault: crate::fault::FaultConfig,
}

/// In-doubt healing (README "Delivery guarantee"). Needs capture on and `database`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InDoubtConfig {
    /// Connection string (libpq format, `sslmode` honoured) to any database of the upstream
    /// server, for `txid_status()`; any role may call it. Give it through
    /// `HINDSIGHT_IN_DOUBT__DATABASE` (a Secret) rather than the file. Unset: no healing (the
    /// proxy logs a warning; consumers resolve BEGINs without END themselves).
    pub database: Option<String>,
    /// How often to look for BEGINs without END.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How old a BEGIN without END must be before it is resolved (a live COMMIT publishes its
    /// END within milliseconds; this only has to outlast slow COMMITs).
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// A BEGIN without txid (a statement announced outside a transaction) cannot be asked
    /// about: if another hindsight process wrote it, it is closed as `unknown` only this long
    /// after it was published, when no statement can still be running. This process's own
    /// are closed once their session is gone.
    #[serde(with = "humantime_serde")]
    pub unknown_after: Duration,
}

impl Default for InDoubtConfig {
    fn default() -> Self {
        Self {
            database: None,
            interval: defaults::IN_DOUBT_INTERVAL,
            after: defaults::IN_DOUBT_AFTER,
            unknown_after: defaults::IN_DOUBT_UNKNOWN_AFTER,
        }
    }
}

/// The history's SQL endpoint (`hindsight history serve`; the proxy ignores it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryServerConfig {
    /// Where psql, Grafana, Metabase and JDBC connect.
    pub listen: SocketAddr,
    /// Users and their passwords (clients authenticate with SCRAM-SHA-256). Give passwords
    /// through `HINDSIGHT_HISTORY_SERVER__USERS__<NAME>` (a Secret) rather than the file.
    /// No users: the endpoint refuses to start.
    pub users: std::collections::BTreeMap<String, String>,
    /// Serve TLS with this certificate and key (PEM); unset: plain TCP only.
    pub tls: Option<ClientTlsConfig>,
}

impl Default for HistoryServerConfig {
    fn default() -> Self {
        Self {
            listen: defaults::HISTORY_LISTEN.parse().expect("valid default"),
            users: Default::default(),
            tls: None,
        }
    }
}

/// What hindsight does with a write path outside an application's footprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FootprintMode {
    /// Add it to the footprint silently.
    Learn,
    /// Let it run; publish a `new_write_path` alert the first time.
    Alert,
    /// Refuse it before it runs (SQLSTATE HS012) until it is approved.
    Enforce,
}

impl FootprintMode {
    pub fn label(self) -> &'static str {
        match self {
            FootprintMode::Learn => "learn",
            FootprintMode::Alert => "alert",
            FootprintMode::Enforce => "enforce",
        }
    }

    pub fn parse(s: &str) -> Option<FootprintMode> {
        match s {
            "learn" => Some(FootprintMode::Learn),
            "alert" => Some(FootprintMode::Alert),
            "enforce" => Some(FootprintMode::Enforce),
            _ => None,
        }
    }
}

/// Footprint settings (README "Footprints").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FootprintsConfig {
    /// Keep footprints (`<prefix>.footprints`) and act on new write paths.
    pub enabled: bool,
    /// Mode of applications not listed in `applications`: learn, alert or enforce.
    pub mode: FootprintMode,
    /// With mode learn: learning ends (and `alert` begins) this long after an application's
    /// first write seen, e.g. "7d". Unset: learn until switched.
    #[serde(with = "humantime_serde")]
    pub learn_for: Option<Duration>,
    /// Mode per application_name, e.g. `"certification-v1" = "enforce"`.
    pub applications: std::collections::BTreeMap<String, FootprintMode>,
    /// This replica's name in the shared counts; default: the HOSTNAME variable (the pod name
    /// under Kubernetes), else the host name.
    pub replica: Option<String>,
    /// How often counts and last sightings are published (new paths are published at once).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// POST each alert here as Slack-compatible JSON (`{"text": …}`); unset: no webhook.
    pub webhook_url: Option<String>,
    /// Timeout of one webhook POST.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Further attempts after a failed POST (with growing pauses).
    pub webhook_retries: u32,
}

impl Default for FootprintsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: FootprintMode::Learn,
            learn_for: None,
            applications: Default::default(),
            replica: None,
            flush_interval: defaults::FOOTPRINT_FLUSH,
            webhook_url: None,
            webhook_timeout: defaults::WEBHOOK_TIMEOUT,
            webhook_retries: defaults::WEBHOOK_RETRIES,
        }
    }
}

/// History archive settings (read by `hindsight archive` / `hindsight history`; the proxy
/// ignores them). Kafka brokers, topic prefix and librdkafka properties come from `[kafka]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// The history store: a local directory, or an object store URL (`file:///…`; `s3://…`,
    /// `gs://…`, `az://…` need the history binary built with that store's feature). Two Delta
    /// Lake tables live under it: `events` and `transactions`.
    pub store: String,
    /// The archive's identity in the store's commits: the consumed offsets are recorded per
    /// `<name>/<topic>/<partition>`. Two archives writing one store need different names.
    pub name: String,
    /// Most records written in one commit.
    pub batch_max_records: usize,
    /// Longest a batch waits to fill before it is written (the archive's lag when idle).
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Connection string of the audited database, for `txid_status()` on transactions whose
    /// END record never came (hindsight stopped between COMMIT and END). Without it such
    /// transactions stay in doubt until their END arrives.
    pub resolve_database: Option<String>,
    /// How old a BEGIN without END must be before the database is asked about it.
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
    /// How often the brokers are asked for new audit topics (a new table's first write), and
    /// the archive's lag is measured.
    #[serde(with = "humantime_serde")]
    pub topic_refresh: Duration,
    /// Address of the archive's HTTP endpoint (`/metrics`, `/healthz`); unset: none.
    pub admin_listen: Option<SocketAddr>,
    /// How long each table's changes are kept, e.g. `"public.brieff" = "7y"` (days older than
    /// that are expired whole, by day partition; the expiry is a chained commit). A table not
    /// listed keeps everything (logged when the archive starts).
    pub retention: std::collections::BTreeMap<String, String>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            store: defaults::ARCHIVE_STORE.into(),
            name: defaults::ARCHIVE_NAME.into(),
            batch_max_records: defaults::ARCHIVE_BATCH_RECORDS,
            batch_max_wait: defaults::ARCHIVE_BATCH_WAIT,
            resolve_database: None,
            resolve_after: defaults::ARCHIVE_RESOLVE_AFTER,
            topic_refresh: defaults::ARCHIVE_TOPIC_REFRESH,
            admin_listen: None,
            retention: Default::default(),
        }
    }
}

/// Gates settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatesConfig {
    /// Rules file (TOML, see README "Gates"); empty: no gates. Reloaded when it changes and
    /// on SIGHUP; an invalid new version is rejected and the previous rules stay in force.
    /// Runtime flag and kill-switch changes are kept next to it in `<file>.state.json`.
    pub rules: Option<PathBuf>,
    /// Where runtime flag and kill-switch changes are cached (a start while the brokers are
    /// down uses it; the control topic `<prefix>.control` is the shared truth). Default:
    /// `<rules>.state.json`. Must be writable (under Kubernetes the rules come from a
    /// read-only ConfigMap; the chart puts this on a volume of its own).
    pub state: Option<PathBuf>,
    /// How often the rules file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for GatesConfig {
    fn default() -> Self {
        Self {
            rules: None,
            state: None,
            poll_interval: defaults::RULES_POLL,
        }
    }
}

/// Capture settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Relay only, record nothing. Must be chosen explicitly (`--no-capture`): without a broker
    /// and without this, `hindsight proxy` refuses to start, so nobody runs an unaudited proxy
    /// by accident.
    pub disabled: bool,
    /// `deny` (default): a transaction whose audit records cannot be published is rolled back
    /// and the client gets SQLSTATE HS001. `allow`: it commits anyway, with an error log and
    /// the `hindsight_audit_publish_failures_total` metric.
    pub on_sink_failure: OnSinkFailure,
    /// PII redaction rules, applied to row images (and keys) before anything is published:
    /// `[[capture.redact]] table = "public.users", columns = ["email"], action = "hash"`.
    pub redact: Vec<RedactRule>,
    /// Secret for `hash` redaction (HMAC-SHA256). Set it through the environment
    /// (`HINDSIGHT_CAPTURE__REDACT_KEY`) rather than the file. Required when a rule hashes.
    pub redact_key: String,
    /// A TRUNCATE that would remove more rows than this is refused (SQLSTATE HS003): every
    /// removed row's before image is recorded, and that must stay bounded.
    pub truncate_row_limit: u64,
    /// Row data (in bytes, as the server sends the images) one transaction may capture: its
    /// events are held in hindsight's memory until its COMMIT publishes them. A transaction
    /// that captures more cannot commit — it is rolled back with SQLSTATE HS003 — and its rows
    /// are not kept, so that one huge UPDATE cannot exhaust the memory every other session
    /// shares. An open transaction holds about 1.5× its image bytes; at its COMMIT, with the
    /// records queued for the broker, about 7× (BENCHMARKS.md).
    /// Default 256 MiB; 0 for no limit.
    pub max_transaction_bytes: u64,
    /// Longest statement text (bytes) an event's `source.statement` carries; a longer one is
    /// cut there, with a note giving its full length (the fingerprint still identifies it).
    /// Each row's event carries its statement: a bulk loader's multi-megabyte INSERT would
    /// otherwise be copied into every one of its events, past the brokers' message size.
    /// Default 64 KiB.
    pub max_statement_bytes: usize,
    /// How a captured write sent in the simple protocol reaches the server. `prepared`
    /// (default): once a session has sent a write of some shape whose constants are all plain
    /// numbers, hindsight prepares that shape on the session (`PREPARE __hs_b1 …`, between
    /// transactions) and runs later ones as Bind/Execute with the numbers as parameters, so the
    /// server plans the capture columns once, not per statement. `text`: always as a Query.
    pub simple_writes: SimpleWrites,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            disabled: false,
            on_sink_failure: Default::default(),
            redact: Vec::new(),
            redact_key: String::new(),
            truncate_row_limit: defaults::TRUNCATE_ROW_LIMIT,
            max_transaction_bytes: defaults::MAX_TRANSACTION_BYTES,
            max_statement_bytes: defaults::MAX_STATEMENT_BYTES,
            simple_writes: Default::default(),
        }
    }
}

/// The client-facing listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address and port applications connect to instead of PostgreSQL.
    pub listen: SocketAddr,
    /// Largest message (tag + length + body) a client may send; larger frames are refused with
    /// SQLSTATE 08P01 and the connection is closed. PostgreSQL's own limit is 1 GiB.
    pub max_message_bytes: usize,
    /// How long a new connection may take to send its StartupMessage (protects against clients
    /// that connect and never speak).
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// On SIGTERM/SIGINT, how long open sessions may continue before they are closed.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// TLS towards clients. Absent: SSLRequest is answered `N` (like a server with ssl=off).
    pub tls: Option<ClientTlsConfig>,
}

/// Certificate hindsight presents to clients that ask for TLS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The PostgreSQL server behind hindsight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `host:port` of the real PostgreSQL server. The host may be a DNS name.
    pub address: String,
    /// How long to wait for the TCP (and TLS) connection to the server.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS towards the server.
    pub tls: UpstreamTlsConfig,
}

/// TLS from hindsight to the upstream server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTlsConfig {
    /// `disable` (default), `require` (encrypt, do not verify), `verify-ca` (chain only) or
    /// `verify-full` (chain and host name; what you want whenever TLS matters).
    pub mode: UpstreamTlsMode,
    /// PEM file with the CA certificate(s) to trust; default: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Name to verify the server certificate against; default: the host of `address`.
    pub server_name: Option<String>,
}

/// How hindsight protects its connection to the upstream server (libpq's `sslmode` names).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    #[default]
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The admin HTTP endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the HTTP endpoint serving `/metrics`, `/healthz`, `/readyz` and the gates
    /// API (`/gates/…`).
    pub listen: SocketAddr,
    /// Bearer token the gates API requires (`Authorization: Bearer …`); set it through
    /// HINDSIGHT_ADMIN__TOKEN rather than the file. With gates on, hindsight refuses to start
    /// on a non-loopback admin address without one.
    pub token: String,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, or per module like `info,hindsight::proxy=debug`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: defaults::LISTEN.parse().expect("default listen address"),
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            startup_timeout: defaults::STARTUP_TIMEOUT,
            drain_timeout: defaults::DRAIN_TIMEOUT,
            tls: None,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            address: defaults::UPSTREAM.into(),
            connect_timeout: defaults::CONNECT_TIMEOUT,
            tls: Default::default(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: defaults::ADMIN_LISTEN
                .parse()
                .expect("default admin address"),
            token: String::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: defaults::LOG_LEVEL.into(),
        }
    }
}

/// Why a configuration was refused. Messages name the file, line, key or variable at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?}: {message}\n(variables are {ENV_PREFIX}<SECTION>__<KEY>, e.g. HINDSIGHT_PROXY__LISTEN)")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("{key} = {value:?}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: String,
    },
}

impl Config {
    /// Load: defaults, then `file` (if any), then `HINDSIGHT_*` variables from `env`, validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        let mut vars: Vec<_> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (var, value) in vars {
            config = config.with_env_override(&var, &value)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Parse a file. toml's errors carry the line, column and a snippet of the offending text.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::File {
            path: path.into(),
            message,
        })
    }

    /// Parse TOML text; the error is toml's message (with line and column).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Apply one `HINDSIGHT_A__B=value` override. The value is read as a TOML value when it parses
    /// as one (numbers, booleans, arrays) and as a string otherwise.
    fn with_env_override(&self, var: &str, raw: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError::Env {
            var: var.into(),
            value: raw.into(),
            message,
        };
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(err("empty key segment".into()));
        }
        let mut root = toml::Value::try_from(self).map_err(|e| err(e.to_string()))?;
        let value = parse_env_value(raw);
        let mut node = &mut root;
        for (i, seg) in path.iter().enumerate() {
            let table = node
                .as_table_mut()
                .ok_or_else(|| err(format!("{} is not a section", path[..i].join("."))))?;
            if i + 1 == path.len() {
                table.insert(seg.clone(), value.clone());
                break;
            }
            node = table
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
        root.try_into()
            .map_err(|e: toml::de::Error| err(e.message().to_string()))
    }

    /// Checks serde cannot express (see `validate`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.proxy.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "proxy.max_message_bytes",
                value: self.proxy.max_message_bytes.to_string(),
                why: "must be at least 1024 bytes".into(),
            });
        }
        split_host_port(&self.upstream.address).map_err(|why| ConfigError::Invalid {
            key: "upstream.address",
            value: self.upstream.address.clone(),
            why,
        })?;
        let hashes = self
            .capture
            .redact
            .iter()
            .any(|r| r.action == RedactAction::Hash);
        for (table, keep) in &self.archive.retention {
            humantime::parse_duration(keep).map_err(|e| ConfigError::Invalid {
                key: "archive.retention",
                value: format!("{table} = {keep:?}"),
                why: format!("{e} (a duration such as \"7y\", \"400d\")"),
            })?;
        }
        if self.footprints.enabled && self.capture.disabled {
            return Err(ConfigError::Invalid {
                key: "footprints.enabled",
                value: "true".into(),
                why: "footprints need capture (they are learned from captured writes); drop --no-capture or disable footprints".into(),
            });
        }
        if let Some(url) = &self.footprints.webhook_url {
            WebhookTarget::parse(url).map_err(|why| ConfigError::Invalid {
                key: "footprints.webhook_url",
                value: url.clone(),
                why: format!("{why} (expected http://host[:port]/path or https://…)"),
            })?;
        }
        if (self.gates.rules.is_some() || self.footprints.enabled)
            && !self.admin.listen.ip().is_loopback()
            && self.admin.token.is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "admin.token",
                value: String::new(),
                why: format!("the gates and footprints API would be open to anyone who can reach {} (admin.listen is not a loopback address); set a token (HINDSIGHT_ADMIN__TOKEN) or listen on 127.0.0.1", self.admin.listen),
            });
        }
        if self.gates.rules.is_some() && self.capture.disabled {
            return Err(ConfigError::Invalid {
                key: "gates.rules",
                value: self.gates.rules.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                why: "gates need capture (they judge captured rows and record what they refuse); drop --no-capture or the rules".into(),
            });
        }
        if hashes && self.capture.redact_key.is_empty() {
            return Err(ConfigError::Invalid {
                key: "capture.redact_key",
                value: String::new(),
                why: "a capture.redact rule uses action = \"hash\"; set the key (e.g. HINDSIGHT_CAPTURE__REDACT_KEY)".into(),
            });
        }
        Ok(())
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Split `host:port` (or `[v6]:port`) into its parts.
pub fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or("expected host:port, e.g. 127.0.0.1:5432")?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number from 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("host is empty; expected host:port".into());
    }
    Ok((host.to_string(), port))
}

/// A webhook URL split into what a connection needs (`footprints.webhook_url`).
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub uri: hyper::Uri,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl WebhookTarget {
    /// Parse `url`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<WebhookTarget, String> {
        let uri: hyper::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("the scheme must be http or https".into()),
        };
        let host = uri.host().ok_or("no host")?.to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(WebhookTarget {
            uri,
            host,
            port,
            tls,
        })
    }
}

/// What to do when the audit records of a transaction cannot be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnSinkFailure {
    /// Roll the transaction back and tell the client (the default: nothing unaudited commits).
    #[default]
    Deny,
    /// Commit anyway, with an error log and the `audit_publish_failures_total` metric.
    Allow,
}

/// How captured simple-protocol writes are sent (`capture.simple_writes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SimpleWrites {
    /// Their numbers bound to a statement prepared once per session and shape.
    #[default]
    Prepared,
    /// As the Query's text, rewritten.
    Text,
}

/// One redaction rule (`[[capture.redact]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactRule {
    /// `schema.table`, or `table` for any schema.
    pub table: String,
    /// Columns the rule applies to.
    pub columns: Vec<String>,
    /// `drop` (remove the column), `mask` (replace the value with `"****"`), or `hash`
    /// (`"hmac-sha256:<hex>"` of the value with `capture.redact_key`: equal values stay
    /// comparable without being readable).
    pub action: RedactAction,
}

impl RedactRule {
    /// Whether the rule names `schema.table` (a rule without a schema names any).
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        match self.table.split_once('.') {
            Some((s, t)) => s == schema && t == table,
            None => self.table == table,
        }
    }
}

/// What a redaction rule does to its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactAction {
    Drop,
    Mask,
    Hash,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_when_empty() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = Config::from_toml("[proxy]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_value_names_line() {
        let e = Config::from_toml("[upstream]\n\nconnect_timeout = \"fast\"\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn env_overrides_file_values() {
        let c = Config::load(
            None,
            env(&[
                ("HINDSIGHT_PROXY__LISTEN", "0.0.0.0:7000"),
                ("HINDSIGHT_PROXY__MAX_MESSAGE_BYTES", "4096"),
            ]),
        )
        .unwrap();
        assert_eq!(c.proxy.listen, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(c.proxy.max_message_bytes, 4096);
        let c = Config::load(
            None,
            env(&[("HINDSIGHT_UPSTREAM__TLS__MODE", "verify-full")]),
        )
        .unwrap();
        assert_eq!(c.upstream.tls.mode, UpstreamTlsMode::VerifyFull);
    }

    #[test]
    fn unknown_env_var_is_an_error() {
        let e = Config::load(None, env(&[("HINDSIGHT_PROXY__LISTN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("HINDSIGHT_PROXY__LISTN") && e.contains("listn"),
            "{e}"
        );
    }

    #[test]
    fn invalid_upstream_address() {
        let e = Config::load(None, env(&[("HINDSIGHT_UPSTREAM__ADDRESS", "localhost")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstream.address") && e.contains("host:port"),
            "{e}"
        );
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("db.internal:5432").unwrap(),
            ("db.internal".into(), 5432)
        );
        assert_eq!(split_host_port("[::1]:5432").unwrap(), ("::1".into(), 5432));
        assert!(split_host_port("db:99999").is_err());
    }
}
