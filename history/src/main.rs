//! `hindsight-history`: the history side of hindsight, as its own binary so the proxy never
//! links the query engine. `hindsight archive|history|restore --history` run it.
//!
//! Exit codes: 0 success; 1 runtime failure (store, broker, database); 2 invalid usage or
//! configuration; 5 `history verify` found the store altered. `restore` adds restore's own:
//! 3 conflicts; 4 the database drifted from the plan (nothing applied).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hindsight::config::Config;
use hindsight::restore::cli::{parse_key, parse_tag, parse_time, RestoreArgs};
use hindsight_history::ask::{self, AsOfTarget};
use hindsight_history::output::Format;
use hindsight_history::questions::{Filter, Question, TransactionId};
use hindsight_history::{archive, query, snapshot, HistoryError};

#[derive(Parser)]
#[command(
    name = "hindsight-history",
    version,
    about = "hindsight's history: archive the audit topics, ask who changed what"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Archive the audit topics into the history store (runs until stopped; --once catches up
    /// and exits). `archive snapshot` records a table's current rows.
    Archive(ArchiveArgs),
    /// Ask the history store a question.
    History(HistoryArgs),
    /// `hindsight restore --history STORE …`: restore from the archive instead of the topics.
    Restore(Box<RestoreArgs>),
}

/// Settings shared by every subcommand: the config file and the store.
#[derive(Args, Clone)]
struct Common {
    /// hindsight's config file: its [archive] and [kafka] sections are read
    /// (HINDSIGHT_ARCHIVE__*, HINDSIGHT_KAFKA__* override them).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The history store: a directory or object store URL (archive.store).
    #[arg(long, global = true)]
    store: Option<String>,
}

impl Common {
    fn load(&self) -> Result<Config, HistoryError> {
        let mut c = Config::load(self.config.as_deref(), std::env::vars())
            .map_err(|e| HistoryError::Usage(e.to_string()))?;
        if let Some(s) = &self.store {
            c.archive.store = s.clone();
        }
        Ok(c)
    }
}

#[derive(Args)]
struct ArchiveArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    sub: Option<ArchiveSub>,
    /// Kafka brokers, HOST:PORT[,…] (kafka.brokers).
    #[arg(long, value_delimiter = ',')]
    kafka_brokers: Vec<String>,
    /// Topic prefix the proxy publishes under (kafka.topic_prefix).
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Connection string for txid_status() of in-doubt transactions (archive.resolve_database).
    #[arg(long)]
    resolve_database: Option<String>,
    /// Archive what the topics hold now, then exit.
    #[arg(long)]
    once: bool,
    /// Serve /metrics and /healthz here (archive.admin_listen), e.g. 127.0.0.1:9188.
    #[arg(long)]
    admin_listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum ArchiveSub {
    /// Publish a table's current rows as snapshot events (op "r") for the archive.
    Snapshot {
        /// schema.table
        #[arg(long)]
        table: String,
        /// Connection string of the database.
        #[arg(long)]
        database: String,
    },
    /// Compact the store's small files (Delta OPTIMIZE); safe beside a running archive.
    Optimize,
    /// Expire what archive.retention no longer keeps (the running archive also does this at
    /// its start and every hour).
    Expire,
}

#[derive(Args)]
struct HistoryArgs {
    #[command(flatten)]
    common: Common,
    /// One JSON object per line.
    #[arg(long, global = true, conflicts_with = "csv")]
    json: bool,
    /// CSV with a header line.
    #[arg(long, global = true)]
    csv: bool,
    #[command(subcommand)]
    question: Ask,
}

#[derive(Args, Clone)]
struct FilterArgs {
    /// schema.table (or table in any schema); repeatable.
    #[arg(long)]
    table: Vec<String>,
    /// application_name; repeatable.
    #[arg(long)]
    application: Vec<String>,
    /// Database user; repeatable.
    #[arg(long)]
    user: Vec<String>,
    /// sqlcommenter tag KEY=VALUE; repeatable, all must match.
    #[arg(long, value_parser = parse_tag)]
    tag: Vec<(String, String)>,
    /// Statement fingerprint; repeatable.
    #[arg(long)]
    fingerprint: Vec<String>,
    /// From this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
}

impl FilterArgs {
    fn filter(self) -> Filter {
        Filter {
            tables: self.table,
            applications: self.application,
            users: self.user,
            tags: self.tag,
            fingerprints: self.fingerprint,
            since_ms: self.since,
            until_ms: self.until,
        }
    }
}

#[derive(Subcommand)]
enum Ask {
    /// Every committed change of one row: when, who, from where, which statement, old → new.
    WhoChanged {
        #[arg(long)]
        table: String,
        /// The row's key as JSON: '{"bfkey": 7}'.
        #[arg(long, value_parser = parse_key)]
        key: serde_json::Map<String, serde_json::Value>,
        /// Only changes of this column.
        #[arg(long)]
        column: Option<String>,
    },
    /// One row as it was at a time.
    RowAsOf {
        #[arg(long)]
        table: String,
        #[arg(long, value_parser = parse_key)]
        key: serde_json::Map<String, serde_json::Value>,
        /// RFC 3339.
        #[arg(long, value_parser = parse_time)]
        at: i64,
    },
    /// Every row of a table as it was at a time: JSON lines, or --into a new table.
    TableAsOf {
        #[arg(long)]
        table: String,
        #[arg(long, value_parser = parse_time)]
        at: i64,
        /// Create this table (like --table) in --target and fill it.
        #[arg(long, requires = "target")]
        into: Option<String>,
        /// Database for --into.
        #[arg(long)]
        target: Option<String>,
    },
    /// Every committed change an application / user / tag / statement made in a window.
    Changes(FilterArgs),
    /// The blast radius of a selection: tables, rows, columns, times, statements.
    Summary(FilterArgs),
    /// Writes gates refused, with their would-be values.
    Blocked(FilterArgs),
    /// One transaction: outcome and every event.
    Transaction {
        /// hindsight's transaction id (`<session>:<n>`).
        #[arg(long, conflicts_with = "txid", required_unless_present = "txid")]
        id: Option<String>,
        /// PostgreSQL's transaction id.
        #[arg(long)]
        txid: Option<i64>,
    },
    /// Transactions whose outcome is unknown (BEGIN without END, not resolved).
    InDoubt,
    /// Any read-only SQL over events, transactions and the views changes,
    /// committed_transactions, in_doubt, transaction_outcomes.
    Sql { query: String },
    /// Recompute the store's hash chain; name every altered, removed or reordered commit or
    /// file. With --checkpoint (a head printed by `checkpoint`), deleting the newest commits
    /// is caught too. Exit code 5 when anything was found.
    Verify {
        /// A head printed (and kept) earlier by `history checkpoint`.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print the head of the store's hash chain (JSON) for an auditor to keep; with --publish
    /// also to the topic <prefix>.history-checkpoints.
    Checkpoint {
        #[arg(long)]
        publish: bool,
    },
    /// Serve the history over the PostgreSQL protocol (psql, Grafana, Metabase, JDBC):
    /// read-only, SCRAM-SHA-256 against history_server.users, TLS with history_server.tls.
    /// Runs until SIGTERM/SIGINT.
    Serve {
        /// Address to listen on (history_server.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
}

/// The question `a` asks (`None`: `serve`, which asks none).
fn question(a: Ask) -> Option<Question> {
    Some(match a {
        Ask::WhoChanged { table, key, column } => Question::WhoChanged { table, key, column },
        Ask::RowAsOf { table, key, at } => Question::RowAsOf {
            table,
            key,
            at_ms: at,
        },
        Ask::TableAsOf { table, at, .. } => Question::TableAsOf { table, at_ms: at },
        Ask::Changes(f) => Question::Changes(f.filter()),
        Ask::Summary(f) => Question::Summary(f.filter()),
        Ask::Blocked(f) => Question::Blocked(f.filter()),
        Ask::Transaction { id, txid } => Question::Transaction(match (id, txid) {
            (Some(id), _) => TransactionId::Id(id),
            (None, x) => TransactionId::Txid(x.unwrap_or_default()),
        }),
        Ask::InDoubt => Question::InDoubt,
        Ask::Sql { query } => Question::Sql(query),
        Ask::Serve { .. } | Ask::Verify { .. } | Ask::Checkpoint { .. } => return None,
    })
}

/// Exit code of `verify` when the chain does not hold.
const TAMPERED: u8 = 5;

fn verify(config: &Config, checkpoint: Option<&std::path::Path>) -> Result<u8, HistoryError> {
    use hindsight_history::chain;
    let cp = match checkpoint {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| HistoryError::Usage(format!("--checkpoint {}: {e}", p.display())))?;
            Some(serde_json::from_str::<chain::Head>(&text).map_err(|e| {
                HistoryError::Usage(format!(
                    "--checkpoint {}: not a checkpoint ({e})",
                    p.display()
                ))
            })?)
        }
        None => None,
    };
    let r = chain::verify(&config.archive.store, cp.as_ref())?;
    for p in &r.problems {
        println!("{p}");
    }
    let verdict = if r.problems.is_empty() {
        "intact".to_string()
    } else {
        format!("{} problem(s)", r.problems.len())
    };
    eprintln!(
        "{} commit(s), {} data file(s) checked: {verdict}",
        r.commits, r.files
    );
    Ok(if r.problems.is_empty() { 0 } else { TAMPERED })
}

async fn checkpoint(config: &Config, publish: bool) -> Result<u8, HistoryError> {
    let head = hindsight_history::chain::head(&config.archive.store)?;
    let text = serde_json::to_string(&head).expect("heads serialise");
    println!("{text}");
    if publish {
        let sink = hindsight::audit::kafka::KafkaSink::connect(config.kafka.clone())
            .await
            .map_err(|e| HistoryError::Usage(e.to_string()))?;
        let record = hindsight::audit::kafka::Record {
            topic: format!("{}.history-checkpoints", config.kafka.topic_prefix),
            key: config.archive.store.clone().into_bytes(),
            payload: text.into_bytes(),
        };
        sink.publish(&[record])
            .await
            .map_err(|e| HistoryError::Usage(e.to_string()))?;
    }
    Ok(0)
}

async fn serve(
    mut config: Config,
    listen: Option<std::net::SocketAddr>,
) -> Result<u8, HistoryError> {
    if let Some(l) = listen {
        config.history_server.listen = l;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = hindsight_history::serve::start(
        &config.archive.store,
        &config.history_server,
        stop.clone(),
    )
    .await?;
    eprintln!(
        "serving the history at {} on {} (psql \"host={} port={} user=… dbname=history\")",
        config.archive.store,
        serving.addr,
        serving.addr.ip(),
        serving.addr.port()
    );
    hindsight::signals::terminated().await;
    serving.shutdown().await;
    Ok(0)
}

/// archive.retention as durations (validated with the config).
fn retention(ac: &hindsight::config::ArchiveConfig) -> Vec<(String, std::time::Duration)> {
    ac.retention
        .iter()
        .filter_map(|(t, k)| Some((t.clone(), humantime::parse_duration(k).ok()?)))
        .collect()
}

async fn expire(ac: &hindsight::config::ArchiveConfig) -> Result<Vec<String>, HistoryError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    hindsight_history::store::expire(&ac.store, &retention(ac), now).await
}

/// Expiry beside the running archive: at start, then every hour. A failure (a conflict with
/// a concurrent commit, say) is logged and tried again at the next round.
fn spawn_expiry(ac: hindsight::config::ArchiveConfig) {
    if ac.retention.is_empty() {
        tracing::info!("archive.retention is empty: every table's history is kept forever");
        return;
    }
    tracing::info!(retention = ?ac.retention, "archive: tables not listed are kept forever");
    tokio::spawn(async move {
        loop {
            match expire(&ac).await {
                Ok(lines) => lines.iter().for_each(|l| tracing::info!("expired: {l}")),
                Err(e) => tracing::warn!(error = %e, "archive: expiry failed; retrying in an hour"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
}

async fn history(a: HistoryArgs) -> Result<u8, HistoryError> {
    let config = a.common.load()?;
    let format = match (a.json, a.csv) {
        (true, _) => Format::Json,
        (_, true) => Format::Csv,
        _ => Format::Text,
    };
    match a.question {
        Ask::Serve { listen } => return serve(config, listen).await,
        Ask::Verify { checkpoint } => return verify(&config, checkpoint.as_deref()),
        Ask::Checkpoint { publish } => return checkpoint(&config, publish).await,
        _ => {}
    }
    let session = query::Session::open(&config.archive.store).await?;
    let mut out = std::io::stdout().lock();
    if let Ask::TableAsOf { into, target, .. } = &a.question {
        let to = match (into, target) {
            (Some(into), Some(target)) => AsOfTarget::Table {
                target: target.clone(),
                into: into.clone(),
            },
            _ => AsOfTarget::Output,
        };
        let Some(q) = question(a.question) else {
            return Ok(0);
        };
        let n = ask::table_as_of(&session, &q, &to, &mut out).await?;
        eprintln!("{n} row(s)");
        return Ok(0);
    }
    if let Some(q) = question(a.question) {
        ask::ask(&session, &q, format, &mut out).await?;
    }
    Ok(0)
}

async fn archive_command(a: ArchiveArgs) -> Result<u8, HistoryError> {
    let config = a.common.load()?;
    let mut kafka = config.kafka.clone();
    if !a.kafka_brokers.is_empty() {
        kafka.brokers = a.kafka_brokers.clone();
    }
    if let Some(p) = &a.topic_prefix {
        kafka.topic_prefix = p.clone();
    }
    match a.sub {
        Some(ArchiveSub::Snapshot { table, database }) => {
            let o = snapshot::Options {
                database,
                table,
                redactor: hindsight::capture::redact::Redactor::new(
                    config.capture.redact.clone(),
                    &config.capture.redact_key,
                ),
                sink: kafka,
            };
            let r = snapshot::run(&o).await?;
            println!(
                "snapshot of {}: {} row(s) published as transaction {} (pg_current_snapshot() = {})",
                o.table, r.rows, r.transaction_id, r.consistent_point
            );
            Ok(0)
        }
        Some(ArchiveSub::Optimize) => {
            let m = hindsight_history::store::optimize(&config.archive.store).await?;
            println!("{m}");
            Ok(0)
        }
        Some(ArchiveSub::Expire) => {
            let lines = expire(&config.archive).await?;
            println!(
                "{}",
                if lines.is_empty() {
                    "nothing to expire".to_string()
                } else {
                    lines.join("\n")
                }
            );
            Ok(0)
        }
        None => {
            let ac = config.archive;
            if !a.once {
                spawn_expiry(ac.clone());
            }
            let o = archive::Options {
                store: ac.store,
                name: ac.name,
                brokers: kafka.brokers,
                topic_prefix: kafka.topic_prefix,
                librdkafka: kafka.librdkafka.into_iter().collect(),
                batch_max_records: ac.batch_max_records,
                batch_max_wait: ac.batch_max_wait,
                resolve_database: a.resolve_database.or(ac.resolve_database),
                resolve_after: ac.resolve_after,
                topic_refresh: ac.topic_refresh,
                admin_listen: a.admin_listen.or(ac.admin_listen),
                until: if a.once {
                    archive::Until::CaughtUp
                } else {
                    archive::Until::Stopped
                },
            };
            let stop = tokio_util::sync::CancellationToken::new();
            let s = stop.clone();
            tokio::spawn(async move {
                hindsight::signals::terminated().await;
                s.cancel();
            });
            let t = archive::run(o, stop).await?;
            println!(
                "archived {} event(s), {} transaction record(s), {} unreadable, {} resolved, in {} commit(s)",
                t.events, t.transaction_records, t.unreadable, t.resolved, t.commits
            );
            Ok(0)
        }
    }
}

async fn restore(a: RestoreArgs) -> Result<u8, HistoryError> {
    let Some(store) = a.history.clone() else {
        return Err(HistoryError::Usage(
            "restore: --history STORE is required here (without it, run `hindsight restore`)"
                .into(),
        ));
    };
    let mut cmd = a.into_command();
    cmd.open_log = hindsight::restore::log::LogOpener::new(move |src| {
        Ok(Box::new(hindsight_history::restore_log::HistoryLog::open(
            &store, src,
        )?))
    });
    let progress = hindsight::restore::progress::Progress::stderr();
    match hindsight::restore::command::execute(&cmd, &mut std::io::stdout().lock(), &progress).await
    {
        Ok(outcome) => Ok(outcome.exit_code()),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(e.exit_code())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,hindsight_history=info,hindsight=info")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Archive(a) => archive_command(a).await,
            Command::History(a) => history(a).await,
            Command::Restore(a) => restore(*a).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
