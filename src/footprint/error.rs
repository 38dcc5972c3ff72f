use thiserror::Error;

/// Why a footprint command failed.
#[derive(Debug, Error)]
pub enum FootprintError {
    #[error("footprints: {0}")]
    Sink(#[from] crate::audit::kafka::SinkError),
    #[error("footprints: {0}")]
    Control(#[from] crate::control::ControlError),
    #[error("footprints: cannot read topic {topic}: {source}")]
    Follow {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("footprints: topic {topic} not read to its end within {timeout:?} (is the broker at {brokers} up?)")]
    NotLoaded {
        topic: String,
        timeout: std::time::Duration,
        brokers: String,
    },
    #[error("footprints: no path {id} in the footprints of prefix {prefix:?} (`hindsight footprint list` shows the ids)")]
    UnknownPath { id: String, prefix: String },
    #[error("footprints: {0}")]
    Invalid(String),
}
