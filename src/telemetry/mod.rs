//! Observability: the metrics registry, the typed events that both log and count, and logging
//! set-up. A log line and the metric for the same event are defined once, in [`events`].

pub mod events;
pub mod logging;
pub mod metrics;

pub use events::Event;
pub use metrics::Metrics;
