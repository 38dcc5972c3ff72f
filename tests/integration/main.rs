//! Integration tests against real PostgreSQL servers started by `scripts/pg.sh` (PG 15 and 18).
//! Each test makes its own database and its own proxy instance on free ports.

mod auth_tls;
mod capture;
mod clients;
mod differential;
mod gates;
mod harness;
mod kafka_sink;
mod restore;
mod robustness;
mod wire_client;
