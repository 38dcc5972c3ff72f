//! The `hindsight` command line. Subcommands are thin wrappers over library functions.
//!
//! Exit codes: 0 success; 1 runtime failure (e.g. cannot bind a port); 2 invalid configuration
//! or usage. `restore` adds: 3 conflicts (a dry run found some, or an apply refused because of
//! them); 4 the database changed between plan and apply, or a statement did not change exactly
//! one row (nothing applied).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hindsight::config::{Config, LogFormat, UpstreamTlsMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hindsight",
    version,
    about = "Every write to PostgreSQL, recoverable and attributable"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy: clients connect here instead of PostgreSQL.
    Proxy(Box<ProxyArgs>),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Follow the audit topics and print each change (table, key, old → new, who, when).
    Tail(TailArgs),
    /// Put back rows changed by a selection of captured changes (dry run unless --apply).
    Restore(Box<RestoreArgs>),
    /// Work with gates rules files.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate a rules file; explains errors with the line.
    Check { file: PathBuf },
    /// Show which rule decides a statement and why (no database needed).
    Explain {
        file: PathBuf,
        /// The statement(s) to explain.
        #[arg(long)]
        sql: String,
        /// application_name of the session.
        #[arg(long, default_value = "")]
        app: String,
        /// Database user.
        #[arg(long, default_value = "")]
        user: String,
        /// Database.
        #[arg(long, default_value = "")]
        database: String,
        /// Client address.
        #[arg(long)]
        client_addr: Option<std::net::IpAddr>,
        /// sqlcommenter tag KEY=VALUE (repeatable; tags in the statement's comment count too).
        #[arg(long, value_parser = parse_tag)]
        tag: Vec<(String, String)>,
    },
}

fn rules_command(c: RulesCommand) -> ExitCode {
    let file = match &c {
        RulesCommand::Check { file } | RulesCommand::Explain { file, .. } => file.clone(),
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let rules = match hindsight::gates::rules::compile(&text, &file.display().to_string()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match c {
        RulesCommand::Check { file } => {
            println!(
                "{}: OK ({} rules, {} flags)",
                file.display(),
                rules.rules.len(),
                rules.flags.len()
            );
            ExitCode::SUCCESS
        }
        RulesCommand::Explain {
            sql,
            app,
            user,
            database,
            client_addr,
            tag,
            ..
        } => {
            let who = hindsight::gates::explain::Who {
                application: app,
                user,
                database,
                client_ip: client_addr,
                tags: tag.into_iter().collect(),
            };
            match hindsight::gates::explain::explain(&rules, &sql, &who) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

#[derive(Args)]
struct RestoreArgs {
    /// Kafka brokers, HOST:PORT[,…].
    #[arg(long, value_delimiter = ',', required = true)]
    kafka_brokers: Vec<String>,
    /// Topic prefix the proxy publishes under.
    #[arg(long, default_value = "hindsight")]
    topic_prefix: String,
    /// Database to restore: postgres://… or "host=… dbname=…" (directly, or through the
    /// proxy so that the restore is itself audited).
    #[arg(long, required = true)]
    target: String,
    /// Select changes of this PostgreSQL transaction id (repeatable).
    #[arg(long)]
    txid: Vec<i64>,
    /// Select changes of this hindsight transaction id (`<session>:<n>`, repeatable).
    #[arg(long)]
    transaction: Vec<String>,
    /// Select changes made at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Select changes made before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// Select changes made by sessions with this application_name (repeatable).
    #[arg(long)]
    application: Vec<String>,
    /// Select changes made by this database user (repeatable).
    #[arg(long)]
    user: Vec<String>,
    /// Select changes whose statement carried this sqlcommenter tag, KEY=VALUE (repeatable; all must match).
    #[arg(long, value_parser = parse_tag)]
    tag: Vec<(String, String)>,
    /// Select changes to this table, schema.table (repeatable).
    #[arg(long)]
    table: Vec<String>,
    /// Select changes to the row with this key, as JSON: '{"bfkey": 7}' (repeatable).
    #[arg(long, value_parser = parse_key)]
    key: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Select this event (`<transaction id>/<n>`, as the plan shows them; repeatable).
    #[arg(long)]
    event: Vec<String>,
    /// Select changes a gate rule in audit (dry-run) mode flagged (repeatable).
    #[arg(long)]
    rule: Vec<String>,
    /// Reconstruct --table as of this time (RFC 3339) by undoing every change committed after it.
    #[arg(long, value_parser = parse_time, requires = "table")]
    as_of: Option<i64>,
    /// With --as-of: write the reconstruction into this new table instead of the table itself.
    #[arg(long, requires = "as_of")]
    into: Option<String>,
    /// Apply the plan (default: dry run).
    #[arg(long)]
    apply: bool,
    /// Apply a plan written earlier with --plan-out (exactly what was reviewed).
    #[arg(long, conflicts_with = "apply")]
    apply_plan: Option<PathBuf>,
    /// Revert the rows without conflicts and leave conflicting rows alone.
    #[arg(long)]
    skip_conflicts: bool,
    /// Revert conflicting rows too and do not refuse when rows changed since the plan.
    #[arg(long)]
    force: bool,
    /// How conflicts are decided: `column` (a three-way merge per column: only a column both
    /// the selection and a later change set, to different values, conflicts) or `row` (any
    /// later change to the row outside the selection makes the whole row a conflict).
    #[arg(long, value_enum, default_value = "column")]
    conflicts: ConflictsArg,
    /// Write the exact SQL script to this file.
    #[arg(long)]
    sql_out: Option<PathBuf>,
    /// Write the plan as JSON to this file.
    #[arg(long)]
    plan_out: Option<PathBuf>,
    /// Give up reading the topics after this long without progress.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    timeout: std::time::Duration,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConflictsArg {
    Column,
    Row,
}

fn parse_time(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2026-11-22T10:00:00Z)"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

fn parse_key(s: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    serde_json::from_str(s)
        .map_err(|e| format!("{s:?}: expected a JSON object of key columns ({e})"))
}

fn restore_command(a: RestoreArgs) -> hindsight::restore::command::Command {
    use hindsight::restore::plan::ConflictPolicy;
    use hindsight::restore::{apply::ApplyOptions, log::LogSource, run, selection::Selection};
    let request = run::Request {
        selection: Selection {
            txids: a.txid,
            transactions: a.transaction,
            since_ms: a.since,
            until_ms: a.until,
            applications: a.application,
            users: a.user,
            tags: a.tag,
            tables: if a.as_of.is_some() {
                Vec::new()
            } else {
                a.table.clone()
            },
            keys: a.key,
            events: a.event,
            rules: a.rule,
        },
        as_of: a.as_of.map(|ms| run::AsOf {
            ms,
            table: a.table.first().cloned().unwrap_or_default(),
        }),
        policy: match a.conflicts {
            ConflictsArg::Column => ConflictPolicy::Column,
            ConflictsArg::Row => ConflictPolicy::Row,
        },
    };
    hindsight::restore::command::Command {
        log: LogSource {
            brokers: a.kafka_brokers,
            topic_prefix: a.topic_prefix,
            librdkafka: Vec::new(),
            tables: a.table,
            timeout: a.timeout,
        },
        target: a.target,
        request,
        apply: a.apply,
        options: ApplyOptions {
            skip_conflicts: a.skip_conflicts,
            force: a.force,
            tag: format!("restore-{}", std::process::id()),
            into: a.into,
        },
        sql_out: a.sql_out,
        plan_out: a.plan_out,
        apply_plan: a.apply_plan,
    }
}

#[derive(Args)]
struct TailArgs {
    /// Kafka brokers, HOST:PORT[,…].
    #[arg(long, value_delimiter = ',', required = true)]
    kafka_brokers: Vec<String>,
    /// Topic prefix the proxy publishes under.
    #[arg(long, default_value = "hindsight")]
    topic_prefix: String,
    /// Only this table (schema.table or table); repeatable.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Only changes from sessions with this application_name.
    #[arg(long)]
    application: Option<String>,
    /// One JSON event per line instead of the readable form.
    #[arg(long)]
    json: bool,
    /// Start at the oldest retained event, not only new ones.
    #[arg(long)]
    from_beginning: bool,
    /// Exit after printing this many events.
    #[arg(long)]
    max: Option<usize>,
    /// Exit after this long without a new event (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle_timeout: Option<std::time::Duration>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (and HINDSIGHT_* variables); explains errors with the line.
    Check { file: PathBuf },
    /// Print the effective configuration (defaults, file, environment) as TOML.
    Show { file: Option<PathBuf> },
}

/// Flags override the config file and HINDSIGHT_* environment variables.
#[derive(Args)]
struct ProxyArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address clients connect to (proxy.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// host:port of the PostgreSQL server (upstream.address).
    #[arg(long)]
    upstream: Option<String>,
    /// Address of the admin endpoint (admin.listen).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Certificate (PEM) for client-side TLS (proxy.tls.cert_file).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for client-side TLS (proxy.tls.key_file).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS to the upstream: disable, require, verify-ca, verify-full (upstream.tls.mode).
    #[arg(long, value_parser = parse_tls_mode)]
    upstream_tls: Option<UpstreamTlsMode>,
    /// CA file to verify the upstream certificate (upstream.tls.ca_file).
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// text or json (log.format).
    #[arg(long, value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    /// tracing filter, e.g. info or debug (log.level).
    #[arg(long)]
    log_level: Option<String>,
    /// Kafka brokers for audit records, HOST:PORT[,HOST:PORT…] (kafka.brokers). Turns capture on.
    #[arg(long, value_delimiter = ',')]
    kafka_brokers: Option<Vec<String>>,
    /// Topic prefix: <prefix>.<schema>.<table>, <prefix>.transaction (kafka.topic_prefix).
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Relay only and record nothing (capture.disabled). Required when no broker is configured.
    #[arg(long, conflicts_with = "kafka_brokers")]
    no_capture: bool,
    /// Gates rules file (gates.rules): refuse writes that rules and feature flags do not allow.
    #[arg(long)]
    rules: Option<PathBuf>,
}

fn parse_tls_mode(s: &str) -> Result<UpstreamTlsMode, String> {
    toml::Value::String(s.into())
        .try_into()
        .map_err(|_| format!("{s:?}: expected disable, require, verify-ca or verify-full"))
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    toml::Value::String(s.into())
        .try_into()
        .map_err(|_| format!("{s:?}: expected text or json"))
}

impl ProxyArgs {
    fn apply(self, c: &mut Config) {
        if let Some(v) = self.listen {
            c.proxy.listen = v;
        }
        if let Some(v) = self.upstream {
            c.upstream.address = v;
        }
        if let Some(v) = self.admin_listen {
            c.admin.listen = v;
        }
        if let (Some(cert_file), Some(key_file)) = (self.tls_cert, self.tls_key) {
            c.proxy.tls = Some(hindsight::config::ClientTlsConfig {
                cert_file,
                key_file,
            });
        }
        if let Some(v) = self.upstream_tls {
            c.upstream.tls.mode = v;
        }
        if let Some(v) = self.upstream_ca {
            c.upstream.tls.ca_file = Some(v);
        }
        if let Some(v) = self.log_format {
            c.log.format = v;
        }
        if let Some(v) = self.log_level {
            c.log.level = v;
        }
        if let Some(v) = self.kafka_brokers {
            c.kafka.brokers = v;
        }
        if let Some(v) = self.topic_prefix {
            c.kafka.topic_prefix = v;
        }
        if self.no_capture {
            c.capture.disabled = true;
        }
        if let Some(v) = self.rules {
            c.gates.rules = Some(v);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => {
            match Config::load(Some(&file), std::env::vars()) {
                Ok(_) => {
                    println!("{}: OK", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Config(ConfigCommand::Show { file }) => {
            match Config::load(file.as_deref(), std::env::vars()) {
                Ok(c) => {
                    print!("{}", toml::to_string_pretty(&c).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Tail(a) => {
            let opts = hindsight::audit::tail::TailOptions {
                brokers: a.kafka_brokers,
                topic_prefix: a.topic_prefix,
                tables: a.tables,
                application: a.application,
                json: a.json,
                from_beginning: a.from_beginning,
                max: a.max,
                idle_timeout: a.idle_timeout,
            };
            match hindsight::audit::tail::run(&opts, &mut std::io::stdout().lock()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Rules(c) => rules_command(c),
        Command::Restore(a) => {
            let cmd = restore_command(*a);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let result = rt.block_on(hindsight::restore::command::execute(
                &cmd,
                &mut std::io::stdout().lock(),
                &hindsight::restore::progress::Progress::stderr(),
            ));
            match result {
                Ok(outcome) => ExitCode::from(outcome.exit_code()),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Proxy(args) => {
            let config = match load_proxy_config(*args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    return ExitCode::from(2);
                }
            };
            match run_proxy(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// An error and its causes, joined by ": ", leaving out a cause whose text an outer message
/// already holds: the library's errors quote their source in their own message (so that they
/// read whole when logged), and anyhow's `{:#}` would print it a second and third time.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn load_proxy_config(args: ProxyArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    args.apply(&mut config);
    config.validate()?;
    if let Some(path) = &config.gates.rules {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the rules file {}", path.display()))?;
        hindsight::gates::rules::compile(&text, &path.display().to_string())?;
    }
    if !config.capture.disabled && config.kafka.brokers.is_empty() {
        anyhow::bail!(
            "no audit broker configured: hindsight would relay writes without recording them. \
             Set --kafka-brokers HOST:PORT (kafka.brokers), or start with --no-capture \
             (capture.disabled = true) to run a relay-only proxy on purpose"
        );
    }
    hindsight::telemetry::logging::init(&config.log).map_err(anyhow::Error::msg)?;
    Ok(config)
}

fn run_proxy(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let running =
            hindsight::proxy::launch(config, hindsight::telemetry::Metrics::new()).await?;
        let token = running.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            token.cancel();
        });
        running.wait().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
