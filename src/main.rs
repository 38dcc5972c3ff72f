//! The `hindsight` command line. Subcommands are thin wrappers over library functions.
//!
//! Exit codes: 0 success; 1 runtime failure (e.g. cannot bind a port); 2 invalid configuration
//! or usage. `restore` adds: 3 conflicts (a dry run found some, or an apply refused because of
//! them); 4 the database changed between plan and apply, or a statement did not change exactly
//! one row (nothing applied). `archive`, `history` and `restore --history` run the
//! `hindsight-history` binary and pass on its exit code (documented there).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hindsight::config::{Config, LogFormat, UpstreamTlsMode};
use hindsight::restore::cli::{parse_tag, RestoreArgs};
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
    /// Archive the audit topics into the history store (runs `hindsight-history archive`).
    #[command(disable_help_flag = true)]
    Archive {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Ask the history store who changed what, and what rows looked like at a time (runs
    /// `hindsight-history history`).
    #[command(disable_help_flag = true)]
    History {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Work with gates rules files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Each application's write paths: list them, see what is new, approve or forget paths,
    /// switch an application's mode (read from and written to the topics; no proxy needed).
    Footprint(FootprintArgs),
}

#[derive(Args)]
struct FootprintArgs {
    /// Configuration file (its [kafka] section names the brokers and the topic prefix).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Kafka brokers, HOST:PORT[,…] (overrides the config file).
    #[arg(long, value_delimiter = ',', global = true)]
    kafka_brokers: Vec<String>,
    /// Topic prefix the proxy publishes under (overrides the config file).
    #[arg(long, global = true)]
    topic_prefix: Option<String>,
    #[command(subcommand)]
    command: FootprintCommand,
}

#[derive(Subcommand)]
enum FootprintCommand {
    /// Every write path (optionally of one application).
    List {
        #[arg(long)]
        application: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The write paths first seen at or after a time: "what did build 105 start writing?".
    Diff {
        /// RFC 3339 time (2026-12-04T10:00:00Z), a date, or milliseconds since the epoch.
        #[arg(long)]
        since: String,
        #[arg(long)]
        application: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Approve a path (by the id `list` and alerts show): known on every replica from now on.
    Approve {
        id: String,
        /// Who approves (recorded with the decision); default: $USER.
        #[arg(long)]
        by: Option<String>,
    },
    /// Forget a path: its next use is new again.
    Forget { id: String },
    /// Switch an application's mode on every replica: learn, alert, enforce, or
    /// "configured" (back to the config file's).
    Mode { application: String, mode: String },
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

/// `hindsight footprint …`. Exit codes: 0 done; 1 runtime failure (broker); 2 bad
/// arguments or an unknown path id.
fn footprint_command(a: FootprintArgs) -> ExitCode {
    use hindsight::footprint::report;
    let mut kafka = match Config::load(a.config.as_deref(), std::env::vars()) {
        Ok(c) => c.kafka,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !a.kafka_brokers.is_empty() {
        kafka.brokers = a.kafka_brokers;
    }
    if let Some(p) = a.topic_prefix {
        kafka.topic_prefix = p;
    }
    let rt = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result: Result<String, hindsight::footprint::FootprintError> = rt.block_on(async {
        match a.command {
            FootprintCommand::List { application, json } => {
                let book = report::load(&kafka, kafka.publish_timeout).await?;
                let f = report::Filter {
                    application,
                    since_ms: None,
                };
                Ok(show(&report::select(&book, &f), json))
            }
            FootprintCommand::Diff {
                since,
                application,
                json,
            } => {
                let since_ms = report::parse_time(&since)
                    .map_err(hindsight::footprint::FootprintError::Invalid)?;
                let book = report::load(&kafka, kafka.publish_timeout).await?;
                let f = report::Filter {
                    application,
                    since_ms: Some(since_ms),
                };
                Ok(show(&report::select(&book, &f), json))
            }
            FootprintCommand::Approve { id, by } => {
                let by = by
                    .or_else(|| std::env::var("USER").ok())
                    .unwrap_or_else(|| "cli".into());
                let e = report::approve(&kafka, &id, &by).await?;
                Ok(format!("approved {id}: {}\n", e.path.describe()))
            }
            FootprintCommand::Forget { id } => {
                report::forget(&kafka, &id).await?;
                Ok(format!("forgot {id}\n"))
            }
            FootprintCommand::Mode { application, mode } => {
                let m = match mode.as_str() {
                    "configured" => None,
                    other => Some(hindsight::footprint::decide::Mode::parse(other).ok_or_else(
                        || {
                            hindsight::footprint::FootprintError::Invalid(format!(
                                "mode {other:?}: expected learn, alert, enforce or configured"
                            ))
                        },
                    )?),
                };
                report::set_mode(&kafka, &application, m).await?;
                Ok(format!("application {application:?}: mode {mode}\n"))
            }
        }
    });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                hindsight::footprint::FootprintError::UnknownPath { .. }
                | hindsight::footprint::FootprintError::Invalid(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// The runtime of the short-lived async commands; exit code 1 (with the reason) if it cannot
/// start.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: starting the async runtime: {e}");
            ExitCode::from(1)
        })
}

fn show(entries: &[&hindsight::footprint::book::Entry], json: bool) -> String {
    if !json {
        return hindsight::footprint::report::render(entries);
    }
    entries
        .iter()
        .map(|e| serde_json::to_string(e).expect("entries serialise") + "\n")
        .collect()
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
    /// Also show alerts (new write paths, first nullings) inline.
    #[arg(long)]
    alerts: bool,
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
                alerts: a.alerts,
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
        Command::Footprint(a) => footprint_command(a),
        Command::Archive { args } => history_binary("archive", &args),
        Command::History { args } => history_binary("history", &args),
        Command::Restore(a) if a.history.is_some() => {
            let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
            history_binary("restore", &args)
        }
        Command::Restore(a) => {
            let cmd = a.into_command();
            let rt = match current_thread_runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
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

/// Run `hindsight-history SUBCOMMAND ARGS…`: the history side (DataFusion, delta-rs) is its own
/// binary so that the proxy never links it. It is looked for next to this executable, then on
/// PATH. Its exit code is passed on.
fn history_binary(sub: &str, args: &[std::ffi::OsString]) -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("hindsight-history")))
        .filter(|p| p.exists());
    let program = beside.unwrap_or_else(|| PathBuf::from("hindsight-history"));
    match std::process::Command::new(&program)
        .arg(sub)
        .args(args)
        .status()
    {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!(
                "error: running {}: {e} (the history side is a separate binary: build it with \
                 `cargo build --release -p hindsight-history` and put it next to hindsight or on PATH)",
                program.display()
            );
            ExitCode::from(1)
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
            hindsight::signals::terminated().await;
            token.cancel();
        });
        running.wait().await;
        Ok(())
    })
}
