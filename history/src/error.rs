//! Why a history operation failed. Each message names what is wrong and what to do.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("history store {store}: {source} (check archive.store / --store: a directory or an object store URL)")]
    Store {
        store: String,
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("history store {store}: no history there yet (run `hindsight archive` first, or check --store)")]
    NoStore { store: String },
    #[error("history store {store}: {what}: {detail} (the store was damaged or altered outside hindsight)")]
    Corrupt {
        store: String,
        what: String,
        detail: String,
    },
    #[error("history store: a file cannot be read: {0} (the store was damaged or altered outside hindsight: restore that file from a backup, or rebuild the store by archiving the topics again while they still hold the records)")]
    Damaged(String),
    #[error("query: {0}")]
    Query(Box<deltalake::datafusion::error::DataFusionError>),
    #[error("output: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error("kafka: {what}: {source} (check kafka.brokers / --kafka-brokers and that the brokers are up)")]
    Kafka {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka: {0}")]
    Sink(#[from] hindsight::audit::kafka::SinkError),
    #[error("database: {what}: {source}")]
    Db {
        what: String,
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Connect {
        what: String,
        source: Box<hindsight::pgconn::PgConnError>,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl From<deltalake::datafusion::error::DataFusionError> for HistoryError {
    /// A file of the store that cannot be read is named as damage, not as a query mistake.
    fn from(e: deltalake::datafusion::error::DataFusionError) -> Self {
        let text = e.to_string();
        if text.contains("Parquet error") || text.contains("Object Store error") {
            return HistoryError::Damaged(text);
        }
        HistoryError::Query(Box::new(e))
    }
}

impl HistoryError {
    pub fn store(store: &str) -> impl FnOnce(deltalake::DeltaTableError) -> Self + '_ {
        move |source| HistoryError::Store {
            store: store.to_string(),
            source: Box::new(source),
        }
    }

    pub fn kafka(what: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| HistoryError::Kafka { what, source }
    }

    pub fn connect(what: impl Into<String>) -> impl FnOnce(hindsight::pgconn::PgConnError) -> Self {
        let what = what.into();
        move |source| HistoryError::Connect {
            what,
            source: Box::new(source),
        }
    }

    pub fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let what = what.into();
        move |source| HistoryError::Db { what, source }
    }

    /// The documented exit code: 2 usage, 1 everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            HistoryError::Usage(_) => 2,
            _ => 1,
        }
    }
}
