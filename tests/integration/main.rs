//! Integration tests against real PostgreSQL servers started by `scripts/pg.sh` (PG 15 and 18).
//! Each test makes its own database and its own proxy instance on free ports.

/// Run each named `async fn(Pg)` as a test on PostgreSQL 15 and on 18 (modules `pg15`, `pg18`).
macro_rules! on_both {
    ($($name:ident),*) => {
        mod pg15 { $( #[tokio::test] async fn $name() { super::$name(super::Pg::V15).await } )* }
        mod pg18 { $( #[tokio::test] async fn $name() { super::$name(super::Pg::V18).await } )* }
    };
}

mod auth_tls;
mod broker_outage;
mod capture;
mod clients;
mod differential;
mod footprints;
mod gates;
mod harness;
mod in_doubt;
mod jdbc;
mod kafka_sink;
#[path = "../support/link.rs"]
mod link;
mod replay;
mod restore;
mod robustness;
mod wire_client;
