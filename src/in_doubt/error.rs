//! Why in-doubt healing could not resolve a transaction this time (it retries).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InDoubtError {
    #[error("in_doubt: reading the transaction topic: {0}")]
    Kafka(rdkafka::error::KafkaError),
    #[error("in_doubt.database: {0}")]
    Connect(#[from] crate::pgconn::PgConnError),
    #[error("in_doubt: txid_status({txid}) failed: {source}")]
    TxidStatus {
        txid: i64,
        source: tokio_postgres::Error,
    },
    #[error("in_doubt: reading the server's start time and latest checkpoint (pg_postmaster_start_time(), pg_control_checkpoint()) failed: {0}")]
    Incarnation(tokio_postgres::Error),
    #[error("in_doubt: publishing the END record failed: {0}")]
    Publish(crate::audit::kafka::SinkError),
}
