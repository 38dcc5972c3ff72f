//! Opening connections to the upstream PostgreSQL server (TCP, then TLS if configured).

use super::stream::Stream;
use crate::config::{split_host_port, UpstreamConfig};
use crate::tls::{self, TlsError};
use crate::wire::startup::SSL_REQUEST;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why the upstream could not be reached. Every message names the upstream address.
#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream PostgreSQL at {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("timed out after {after:?} connecting to upstream PostgreSQL at {address}")]
    Timeout { address: String, after: Duration },
    #[error("upstream PostgreSQL at {address} refused TLS (answered {answer:?} to SSLRequest) but upstream.tls.mode requires it")]
    TlsRefused { address: String, answer: char },
    #[error("TLS handshake with upstream PostgreSQL at {address} failed: {source}")]
    TlsHandshake {
        address: String,
        source: std::io::Error,
    },
    #[error("upstream.tls.server_name {name:?} is not a valid DNS name or IP address")]
    BadServerName { name: String },
    #[error(transparent)]
    TlsConfig(#[from] TlsError),
}

/// How to reach the upstream server; cheap to share between sessions.
pub struct Upstream {
    address: String,
    connect_timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Upstream {
    /// Prepare from configuration (loads CA files now, so errors surface at startup).
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let tls = match tls::upstream_config(&cfg.tls)? {
            None => None,
            Some(client_cfg) => {
                let host = match &cfg.tls.server_name {
                    Some(n) => n.clone(),
                    None => split_host_port(&cfg.address)
                        .map(|(h, _)| h)
                        .unwrap_or_default(),
                };
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| UpstreamError::BadServerName { name: host })?;
                Some((TlsConnector::from(Arc::clone(&client_cfg)), name))
            }
        };
        Ok(Self {
            address: cfg.address.clone(),
            connect_timeout: cfg.connect_timeout,
            tls,
        })
    }

    /// The configured `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Open a connection ready for a StartupMessage (or a CancelRequest).
    pub async fn connect(&self) -> Result<Stream, UpstreamError> {
        let timeout = self.connect_timeout;
        let address = || self.address.clone();
        tokio::time::timeout(timeout, self.connect_inner())
            .await
            .map_err(|_| UpstreamError::Timeout {
                address: address(),
                after: timeout,
            })?
    }

    /// Just check that a TCP connection can be opened (readiness probe).
    pub async fn probe(&self) -> Result<(), UpstreamError> {
        let address = self.address.clone();
        tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| UpstreamError::Timeout {
                address: address.clone(),
                after: self.connect_timeout,
            })?
            .map(drop)
            .map_err(|source| UpstreamError::Connect { address, source })
    }

    async fn connect_inner(&self) -> Result<Stream, UpstreamError> {
        let address = || self.address.clone();
        let mut tcp =
            TcpStream::connect(&self.address)
                .await
                .map_err(|source| UpstreamError::Connect {
                    address: address(),
                    source,
                })?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let io_err = |source| UpstreamError::TlsHandshake {
            address: address(),
            source,
        };
        tcp.write_all(&SSL_REQUEST).await.map_err(io_err)?;
        let answer = tcp.read_u8().await.map_err(io_err)?;
        if answer != b'S' {
            return Err(UpstreamError::TlsRefused {
                address: address(),
                answer: answer as char,
            });
        }
        let tls = connector.connect(name.clone(), tcp).await.map_err(io_err)?;
        Ok(Stream::ClientTls(Box::new(tls)))
    }
}
