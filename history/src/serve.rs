//! `hindsight history serve`: the history over the PostgreSQL protocol, for psql, Grafana,
//! Metabase and JDBC. Built on `datafusion-postgres` (pgwire + DataFusion, with an emulated
//! `pg_catalog` so `\d` and table pickers work) over the same read-only session as the CLI:
//! the tables, the views, and the questions as table functions (`functions`).
//!
//! - Authentication: SCRAM-SHA-256 against `history_server.users`.
//! - TLS when `history_server.tls` is set (rustls, the proxy's own server configuration).
//! - Read-only: anything but a query (and SET/SHOW/transaction statements, which change
//!   nothing) is refused with SQLSTATE 25006 before it is planned.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::{ClientInfo, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::{DfSessionService, QueryHook};
use deltalake::datafusion::common::ParamValues;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::sqlparser::ast::Statement;
use hindsight::config::HistoryServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::query::Session;
use crate::store::{Open, Store};
use crate::HistoryError;

/// SCRAM iterations (PostgreSQL's default).
const ITERATIONS: usize = 4096;

/// SQLSTATE read_only_sql_transaction.
const READ_ONLY: &str = "25006";

/// Passwords of the configured users.
#[derive(Debug)]
struct Users(BTreeMap<String, String>);

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        // An unknown user gets a random password: SCRAM fails the same way as for a wrong
        // password, so the endpoint does not tell which user names exist.
        let password = match self.0.get(user) {
            Some(p) => p.clone(),
            None => format!("{:x}", rand_u128()),
        };
        let salt = rand_u128().to_le_bytes().to_vec();
        let salted = gen_salted_password(&password, &salt, ITERATIONS);
        Ok(Password::new(Some(salt), salted))
    }
}

fn rand_u128() -> u128 {
    rand::random()
}

/// Refuses everything that is not a read.
struct ReadOnly;

fn refusal(statement: &Statement) -> Option<PgWireError> {
    use Statement as S;
    let allowed = matches!(
        statement,
        S::Query(_)
            | S::Explain { .. }
            | S::ExplainTable { .. }
            | S::ShowVariable { .. }
            | S::ShowVariables { .. }
            | S::ShowTables { .. }
            | S::ShowColumns { .. }
            | S::Set(_)
            | S::StartTransaction { .. }
            | S::Commit { .. }
            | S::Rollback { .. }
            | S::Declare { .. }
            | S::Fetch { .. }
            | S::Close { .. }
            | S::Discard { .. }
            | S::Deallocate { .. }
    );
    if allowed {
        return None;
    }
    let first = statement
        .to_string()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_uppercase();
    Some(PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        READ_ONLY.into(),
        format!(
            "hindsight history is read-only: {first} is not allowed (the archive is written only by `hindsight archive`)"
        ),
    ))))
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal(statement).map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        refusal(statement).map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal(statement).map(Err)
    }
}

/// The pgwire handlers: SCRAM at startup, DataFusion for queries.
struct Handlers {
    session: Arc<DfSessionService>,
    users: Arc<Users>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(
        &self,
    ) -> Arc<impl datafusion_postgres::pgwire::api::query::SimpleQueryHandler> {
        Arc::clone(&self.session)
    }

    fn extended_query_handler(
        &self,
    ) -> Arc<impl datafusion_postgres::pgwire::api::query::ExtendedQueryHandler> {
        Arc::clone(&self.session)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let mut scram = ScramAuth::new(Arc::clone(&self.users) as Arc<dyn AuthSource>);
        scram.set_iterations(ITERATIONS);
        Arc::new(
            SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default()))
                .with_scram(scram),
        )
    }
}

/// A running endpoint.
pub struct Serving {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Serving {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The DataFusion context the endpoint serves: the CLI's session plus `pg_catalog` and the
/// question functions.
pub async fn context(store: &Store) -> Result<Arc<SessionContext>, HistoryError> {
    let ctx = Session::open_store(store).await?.into_context();
    setup_pg_catalog(
        &ctx,
        "datafusion",
        Arc::new(datafusion_postgres::auth::AuthManager::default()),
    )
    .map_err(|e| HistoryError::Usage(format!("setting up pg_catalog: {e}")))?;
    crate::functions::register(&ctx);
    Ok(Arc::new(ctx))
}

/// How often the endpoint looks for new archive commits.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Keep the served tables at the store's latest versions (the archive keeps committing).
fn follow_store(ctx: Arc<SessionContext>, mut store: Store, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            let refreshed = match store.refresh().await {
                Ok(()) => Session::load(&ctx, &store).await,
                Err(e) => Err(e),
            };
            if let Err(e) = refreshed {
                tracing::warn!(error = %e, "history endpoint: cannot load the store's latest commits; serving the previous ones");
            }
        }
    });
}

/// Bind and serve `store` until `stop`.
pub async fn start(
    store: &str,
    cfg: &HistoryServerConfig,
    stop: CancellationToken,
) -> Result<Serving, HistoryError> {
    if cfg.users.is_empty() {
        return Err(HistoryError::Usage(
            "history_server.users is empty: nobody could log in (set HINDSIGHT_HISTORY_SERVER__USERS__<NAME>=<password>)".into(),
        ));
    }
    let tls = match &cfg.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            hindsight::tls::server_config(t)
                .map_err(|e| HistoryError::Usage(format!("history_server.tls: {e}")))?,
        )),
        None => None,
    };
    let opened = Store::open(store, Open::Existing).await?;
    let ctx = context(&opened).await?;
    follow_store(Arc::clone(&ctx), opened, stop.clone());
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnly),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let handlers = Arc::new(Handlers {
        session: Arc::new(DfSessionService::new_with_hooks(ctx, hooks)),
        users: Arc::new(Users(cfg.users.clone())),
    });
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| HistoryError::Usage(format!("history_server.listen {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| HistoryError::Usage(format!("history_server.listen: {e}")))?;
    tracing::info!(%addr, tls = tls.is_some(), users = cfg.users.len(), "history endpoint listening");
    let s = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = s.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((socket, peer)) => {
                    let (tls, handlers) = (tls.clone(), Arc::clone(&handlers));
                    tokio::spawn(async move {
                        if let Err(e) = datafusion_postgres::pgwire::tokio::process_socket(
                            socket, tls, handlers,
                        )
                        .await
                        {
                            tracing::debug!(%peer, error = %e, "history session ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(Serving { addr, task, stop })
}
