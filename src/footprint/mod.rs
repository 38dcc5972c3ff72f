//! Footprints: for each (application_name, database user, database), the set of write paths
//! it has been seen to take — (table, operation, columns written, statement fingerprint), and
//! "sets column C to NULL" — shared by every replica through the compacted topic
//! `<prefix>.footprints`. A path outside the footprint is learned silently, alerted
//! (`<prefix>.alerts`, a WARN line, `hindsight_new_write_paths_total`, an optional webhook),
//! or refused before it runs (HS012), per application mode.
//!
//! - `path` — actors, paths and their stable ids.
//! - `book` — the entries in memory and how records of several replicas merge (pure).
//! - `decide` — modes and what one sighting means (pure).
//! - `alerts` — alert records built from a sighting.
//! - `webhook` — delivery of alerts over HTTP, off the commit path.
//! - `live` — the proxy's live footprints: lookups on the hot path, publication, following.
//! - `report` — `hindsight footprint list|diff|approve|forget|mode` over the topics.
//!
//! Knows nothing about the wire protocol; the capture client calls `live`.

pub mod alerts;
pub mod book;
pub mod decide;
pub mod live;
pub mod path;
pub mod report;
pub mod webhook;

mod error;
pub use error::FootprintError;

pub use live::{Footprints, Sighting};
