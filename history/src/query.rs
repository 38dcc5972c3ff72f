//! A DataFusion session over a history store: the two tables and the views every question
//! builds on. Read-only: statements that would create, write or change anything are refused.
//!
//! Views:
//! - `transaction_outcomes` — one row per transaction: its txid, `commit_ts_ms` (when its
//!   records were published, right before COMMIT), and `outcome` (`committed` / `aborted` from
//!   its END record, else from the archive's RESOLVED decision; NULL while in doubt);
//! - `committed_transactions`, `in_doubt` — those whose outcome is committed / unknown;
//! - `changes` — the row changes (`c u d t`, and snapshot reads `r`) of committed
//!   transactions, with their transaction's `commit_ts_ms`.

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::execution::SendableRecordBatchStream;
use deltalake::datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use deltalake::DeltaTable;

use crate::store::{Open, Store};
use crate::{schema, HistoryError};

/// The views, in creation order.
pub const VIEWS: [(&str, &str); 4] = [
    (
        "transaction_outcomes",
        "SELECT id AS transaction_id, max(tx_id) AS tx_id, \
           coalesce(min(CASE WHEN status = 'BEGIN' THEN ts_ms END), min(ts_ms)) AS commit_ts_ms, \
           coalesce(max(CASE WHEN status = 'END' THEN commit_status END), \
                    max(CASE WHEN status = 'RESOLVED' THEN commit_status END)) AS outcome, \
           max(CASE WHEN status = 'RESOLVED' THEN resolution END) AS resolution, \
           max(event_count) AS event_count \
         FROM transactions GROUP BY id",
    ),
    (
        "committed_transactions",
        "SELECT * FROM transaction_outcomes WHERE outcome = 'committed'",
    ),
    (
        "in_doubt",
        "SELECT * FROM transaction_outcomes WHERE outcome IS NULL OR outcome = 'unknown'",
    ),
    (
        "changes",
        "SELECT e.*, t.commit_ts_ms FROM events e \
         JOIN committed_transactions t ON e.transaction_id = t.transaction_id \
         WHERE e.op IN ('c', 'u', 'd', 't', 'r')",
    ),
];

/// A read-only SQL session over one store.
pub struct Session {
    ctx: SessionContext,
}

async fn register(
    ctx: &SessionContext,
    name: &str,
    table: &DeltaTable,
) -> Result<(), HistoryError> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| HistoryError::Usage(format!("registering {name}: {e}")))?;
    let provider = table.table_provider().await?;
    ctx.register_table(name, provider)?;
    Ok(())
}

impl Session {
    /// Open the store at `location` (it must exist) and register its tables and views.
    pub async fn open(location: &str) -> Result<Self, HistoryError> {
        let store = Store::open(location, Open::Existing).await?;
        Self::open_store(&store).await
    }

    /// A session over an already open store (at its loaded versions).
    pub async fn open_store(store: &Store) -> Result<Self, HistoryError> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .set_bool("datafusion.execution.parquet.pushdown_filters", true)
            .set_bool("datafusion.execution.parquet.bloom_filter_on_read", true);
        let ctx = SessionContext::new_with_config(config);
        Self::load(&ctx, store).await?;
        Ok(Session { ctx })
    }

    /// (Re)register the store's tables at its loaded versions, and the views over them (a
    /// view's plan holds the table it was made over, so views are made again too).
    pub async fn load(ctx: &SessionContext, store: &Store) -> Result<(), HistoryError> {
        register(ctx, schema::EVENTS, &store.events).await?;
        register(ctx, schema::TRANSACTIONS, &store.transactions).await?;
        for (name, body) in VIEWS {
            ctx.sql(&format!("CREATE OR REPLACE VIEW {name} AS {body}"))
                .await?;
        }
        Ok(())
    }

    pub fn into_context(self) -> SessionContext {
        self.ctx
    }

    fn options() -> deltalake::datafusion::execution::context::SQLOptions {
        deltalake::datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
    }

    /// Run one read-only query and collect its result.
    pub async fn sql(&self, query: &str) -> Result<Vec<RecordBatch>, HistoryError> {
        let df = self.ctx.sql_with_options(query, Self::options()).await?;
        Ok(df.collect().await?)
    }

    /// Run one read-only query as a stream of batches (for large answers).
    pub async fn stream(&self, query: &str) -> Result<SendableRecordBatchStream, HistoryError> {
        let df = self.ctx.sql_with_options(query, Self::options()).await?;
        Ok(df.execute_stream().await?)
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }
}

/// `s` as a SQL string literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether `query` parses as PostgreSQL-dialect SQL (for early, clear usage errors).
pub fn parses(query: &str) -> Result<(), String> {
    deltalake::datafusion::sql::sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, query)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
