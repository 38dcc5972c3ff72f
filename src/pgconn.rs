//! Connections hindsight opens to PostgreSQL on its own account (restore, in-doubt healing, the
//! archive's resolver and snapshots, `table-as-of --into`): a libpq connection string (URL or
//! `key=value`), with libpq's TLS settings honoured. tokio-postgres itself knows only
//! `sslmode=disable|prefer|require` and no certificate checks; here `sslmode` (also
//! `verify-ca`, `verify-full`) and `sslrootcert` are taken out of the string (or from
//! `PGSSLMODE` / `PGSSLROOTCERT`) and enforced with rustls, exactly as the proxy checks its
//! upstream (`crate::tls::upstream_config`).
//!
//! Default, as libpq's: `prefer` (TLS when the server offers it, unverified; plain otherwise).

use crate::config::{UpstreamTlsConfig, UpstreamTlsMode};
use std::path::PathBuf;
use thiserror::Error;

/// Why a connection could not be opened. Names the target (never its password).
#[derive(Debug, Error)]
pub enum PgConnError {
    #[error("connection string: {0} (expected libpq's format: postgres://user@host:port/db?sslmode=verify-full or \"host=… port=… user=… dbname=…\")")]
    Parse(String),
    #[error("connection string: sslmode={0:?} is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    SslMode(String),
    #[error("TLS for {target}: {source}")]
    Tls {
        target: String,
        source: crate::tls::TlsError,
    },
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        source: tokio_postgres::Error,
    },
}

/// A parsed connection string: what tokio-postgres needs, and the TLS to enforce.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: UpstreamTlsConfig,
    /// `sslmode=prefer`/`allow`: TLS when offered, else plain.
    pub optional_tls: bool,
}

impl Target {
    /// `host:port/dbname` for messages.
    pub fn describe(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let db = self.config.get_dbname().unwrap_or("");
        format!("{host}:{port}/{db}")
    }
}

/// Parse `dsn`, taking `sslmode` and `sslrootcert` out (falling back on `PGSSLMODE` and
/// `PGSSLROOTCERT`).
pub fn parse(dsn: &str) -> Result<Target, PgConnError> {
    parse_with_env(dsn, |k| std::env::var(k).ok())
}

fn parse_with_env(dsn: &str, env: impl Fn(&str) -> Option<String>) -> Result<Target, PgConnError> {
    let (rest, ssl) = split_ssl(dsn)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| PgConnError::Parse(e.to_string()))?;
    let mode = ssl
        .mode
        .or_else(|| env("PGSSLMODE"))
        .unwrap_or_else(|| "prefer".into());
    let root = ssl.root.or_else(|| env("PGSSLROOTCERT")).map(PathBuf::from);
    let (mode, optional_tls) = match mode.as_str() {
        "disable" => (UpstreamTlsMode::Disable, false),
        "allow" | "prefer" => (UpstreamTlsMode::Require, true),
        // libpq: `require` with a root certificate file checks the chain, like verify-ca.
        "require" if root.is_some() => (UpstreamTlsMode::VerifyCa, false),
        "require" => (UpstreamTlsMode::Require, false),
        "verify-ca" => (UpstreamTlsMode::VerifyCa, false),
        "verify-full" => (UpstreamTlsMode::VerifyFull, false),
        other => return Err(PgConnError::SslMode(other.into())),
    };
    config.ssl_mode(match (mode, optional_tls) {
        (UpstreamTlsMode::Disable, _) => tokio_postgres::config::SslMode::Disable,
        (_, true) => tokio_postgres::config::SslMode::Prefer,
        (_, false) => tokio_postgres::config::SslMode::Require,
    });
    Ok(Target {
        config,
        tls: UpstreamTlsConfig {
            mode,
            ca_file: root,
            server_name: None,
        },
        optional_tls,
    })
}

/// Connect to `dsn` and drive the connection in the background.
pub async fn connect(dsn: &str) -> Result<tokio_postgres::Client, PgConnError> {
    let target = parse(dsn)?;
    connect_to(&target).await
}

/// [`connect`], with `application_name` set to `name` unless the string sets one.
pub async fn connect_as(dsn: &str, name: &str) -> Result<tokio_postgres::Client, PgConnError> {
    let mut target = parse(dsn)?;
    if target.config.get_application_name().is_none() {
        target.config.application_name(name);
    }
    connect_to(&target).await
}

/// Connect to a parsed target and drive the connection in the background.
pub async fn connect_to(target: &Target) -> Result<tokio_postgres::Client, PgConnError> {
    let err = |source| PgConnError::Connect {
        target: target.describe(),
        source,
    };
    let tls = crate::tls::upstream_config(&target.tls).map_err(|source| PgConnError::Tls {
        target: target.describe(),
        source,
    })?;
    match tls {
        None => {
            let (client, conn) = target
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(err)?;
            tokio::spawn(conn);
            Ok(client)
        }
        Some(cfg) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*cfg).clone());
            let (client, conn) = target.config.connect(tls).await.map_err(err)?;
            tokio::spawn(conn);
            Ok(client)
        }
    }
}

/// `sslmode` and `sslrootcert` as the string gave them.
#[derive(Debug, Default, PartialEq)]
struct Ssl {
    mode: Option<String>,
    root: Option<String>,
}

/// The connection string without `sslmode`/`sslrootcert`, and their values.
fn split_ssl(dsn: &str) -> Result<(String, Ssl), PgConnError> {
    let dsn = dsn.trim();
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        Ok(split_url(dsn))
    } else {
        split_key_values(dsn)
    }
}

fn split_url(dsn: &str) -> (String, Ssl) {
    let Some((base, query)) = dsn.split_once('?') else {
        return (dsn.to_string(), Ssl::default());
    };
    let mut ssl = Ssl::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => ssl.mode = Some(percent_decode(v)),
            "sslrootcert" => ssl.root = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, ssl)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `key = value` form: values may be single-quoted, with `\'` and `\\` escapes.
fn split_key_values(dsn: &str) -> Result<(String, Ssl), PgConnError> {
    let mut ssl = Ssl::default();
    let mut kept = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(PgConnError::Parse(format!("missing \"=\" after {key:?}")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = read_value(&mut chars)?;
        match key.as_str() {
            "sslmode" => ssl.mode = Some(value),
            "sslrootcert" => ssl.root = Some(value),
            _ => kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), ssl))
}

fn read_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, PgConnError> {
    let quoted = chars.next_if_eq(&'\'').is_some();
    let mut value = String::new();
    loop {
        match chars.next() {
            None if quoted => return Err(PgConnError::Parse("unterminated quoted value".into())),
            None => return Ok(value),
            Some('\'') if quoted => return Ok(value),
            Some(c) if c.is_whitespace() && !quoted => return Ok(value),
            Some('\\') => match chars.next() {
                Some(c) => value.push(c),
                None => return Err(PgConnError::Parse("backslash at the end".into())),
            },
            Some(c) => value.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn sslmode_is_taken_out_of_urls_and_key_values() {
        let t = parse_with_env(
            "postgres://u:p@db.example:6543/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
            no_env,
        )
        .unwrap();
        assert_eq!(t.tls.mode, UpstreamTlsMode::VerifyFull);
        assert_eq!(t.tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.describe(), "db.example:6543/app");
        assert_eq!(t.config.get_application_name(), Some("x"));
        let t = parse_with_env(
            "host=h port=5 user='o\\'brien' password='a b' sslmode = verify-ca dbname=d",
            no_env,
        )
        .unwrap();
        assert_eq!(t.tls.mode, UpstreamTlsMode::VerifyCa);
        assert_eq!(t.config.get_user(), Some("o'brien"));
        assert_eq!(t.config.get_password(), Some(&b"a b"[..]));
    }

    #[test]
    fn libpq_defaults_and_environment_apply() {
        let t = parse_with_env("host=h dbname=d", no_env).unwrap();
        assert!(t.optional_tls, "libpq's default is prefer");
        let t = parse_with_env("host=h dbname=d", |k| {
            (k == "PGSSLMODE").then(|| "disable".to_string())
        })
        .unwrap();
        assert_eq!(t.tls.mode, UpstreamTlsMode::Disable);
        let t = parse_with_env("host=h sslmode=require sslrootcert=/ca.pem", no_env).unwrap();
        assert_eq!(
            t.tls.mode,
            UpstreamTlsMode::VerifyCa,
            "libpq: require + root cert"
        );
    }

    #[test]
    fn bad_strings_are_named() {
        let e = parse_with_env("host=h sslmode=verify-everything", no_env)
            .err()
            .unwrap();
        assert!(e.to_string().contains("verify-everything"), "{e}");
        let e = parse_with_env("host=h user='open", no_env).err().unwrap();
        assert!(e.to_string().contains("unterminated"), "{e}");
    }
}
