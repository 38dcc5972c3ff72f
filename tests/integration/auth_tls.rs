//! Authentication is the upstream's: cleartext, MD5 and SCRAM exchanges pass through unchanged.
//! TLS: client-side termination (SSLRequest and PostgreSQL 17 direct TLS) and upstream TLS.

use super::harness::{self, certs_dir, Pg, ALL};
use super::wire_client::*;
use hindsight::config::{ClientTlsConfig, UpstreamTlsMode};
use std::sync::Arc;
use tokio_postgres::NoTls;

fn with_client_tls(c: &mut hindsight::config::Config) {
    c.proxy.tls = Some(ClientTlsConfig {
        cert_file: certs_dir().join("server.crt"),
        key_file: certs_dir().join("server.key"),
    });
}

async fn login(
    addr: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> Result<String, tokio_postgres::Error> {
    let s = format!(
        "host={} port={} user={user} password={password} dbname=postgres",
        addr.ip(),
        addr.port()
    );
    let (c, conn) = tokio_postgres::connect(&s, NoTls).await?;
    tokio::spawn(conn);
    Ok(c.query_one("SELECT current_user::text", &[]).await?.get(0))
}

#[tokio::test]
async fn every_password_method_works_and_fails_like_direct() {
    for pg in ALL {
        let proxy = harness::proxy(pg, |_| {}).await;
        for user in ["postgres", "pass_user", "md5_user", "scram_user"] {
            assert_eq!(
                login(proxy.addr, user, "password")
                    .await
                    .unwrap_or_else(|e| panic!("PG {} {user}: {e:?}", pg.major())),
                user
            );
            if user == "postgres" {
                continue; // trust: any password works
            }
            let direct = login(pg.addr(), user, "wrong").await.unwrap_err();
            let proxied = login(proxy.addr, user, "wrong").await.unwrap_err();
            let (d, p) = (
                direct.as_db_error().unwrap(),
                proxied.as_db_error().unwrap(),
            );
            assert_eq!(d.code(), p.code(), "{user}");
            assert_eq!(d.message(), p.message(), "{user}");
            assert_eq!(p.code().code(), "28P01");
        }
        proxy.shutdown().await;
    }
}

/// Run psql without blocking the runtime the in-process proxy runs on.
async fn psql(conninfo: &str, sql: &str) -> std::process::Output {
    tokio::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            conninfo,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("psql runs")
}

#[tokio::test]
async fn client_tls_with_scram_through_psql() {
    for pg in ALL {
        let proxy = harness::proxy(pg, with_client_tls).await;
        let ca = certs_dir().join("ca.crt");
        let base = format!(
            "host=localhost port={} dbname=postgres sslmode=verify-full sslrootcert={}",
            proxy.addr.port(),
            ca.display()
        );
        // libpq would pick SCRAM-SHA-256-PLUS if offered; hindsight withholds it so SCRAM works.
        let out = psql(
            &format!("{base} user=scram_user password=password"),
            "SELECT current_user",
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "scram_user");
        // A client that insists on channel binding is told it is not available.
        let out = psql(
            &format!("{base} user=scram_user password=password channel_binding=require"),
            "SELECT 1",
        )
        .await;
        assert!(!out.status.success());
        let metrics = proxy.ctx.metrics.render();
        assert!(
            metrics.contains("hindsight_tls_handshakes_total{outcome=\"ok\",side=\"client\"} 2"),
            "{metrics}"
        );
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn upstream_tls_verify_full() {
    for pg in ALL {
        let proxy = harness::proxy(pg, |c| {
            c.upstream.address = format!("localhost:{}", pg.port());
            c.upstream.tls.mode = UpstreamTlsMode::VerifyFull;
            c.upstream.tls.ca_file = Some(certs_dir().join("ca.crt"));
        })
        .await;
        // ssl_user may only log in over TLS (hostssl in pg_hba.conf).
        let c = harness::connect(proxy.addr, "ssl_user", "postgres").await;
        let ssl: bool = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl);
        proxy.shutdown().await;
    }
    // The wrong name must fail verification, with an error naming the upstream.
    let pg = Pg::V15;
    let proxy = harness::proxy(pg, |c| {
        c.upstream.tls.mode = UpstreamTlsMode::VerifyFull;
        c.upstream.tls.ca_file = Some(certs_dir().join("ca.crt"));
        c.upstream.tls.server_name = Some("db.example.com".into());
    })
    .await;
    let err = login(proxy.addr, "postgres", "x").await.unwrap_err();
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(db.code().code(), "08006");
    assert!(
        db.message().contains("TLS handshake") && db.message().contains(&pg.addr().to_string()),
        "{}",
        db.message()
    );
    // verify-ca accepts the chain without the name; require accepts any certificate.
    for mode in [UpstreamTlsMode::VerifyCa, UpstreamTlsMode::Require] {
        let proxy = harness::proxy(pg, |c| {
            c.upstream.tls.mode = mode;
            c.upstream.tls.ca_file = Some(certs_dir().join("ca.crt"));
            c.upstream.tls.server_name = Some("db.example.com".into());
        })
        .await;
        assert_eq!(
            login(proxy.addr, "ssl_user", "x").await.unwrap(),
            "ssl_user",
            "{mode:?}"
        );
        proxy.shutdown().await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn direct_tls_with_alpn() {
    let pg = Pg::V18;
    let db = harness::fresh_db(pg, "directtls").await;
    let proxy = harness::proxy(pg, with_client_tls).await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(certs_dir().join("ca.crt")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("direct TLS handshake");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(&startup("postgres", &db, 0)).await.unwrap();
    tls.write_all(&query("SELECT 'over tls'")).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(8).any(|w| w == b"over tls") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
    }
    proxy.shutdown().await;
}

/// hindsight's own connections (restore, in-doubt healing, the archive) honour libpq's
/// `sslmode`: `ssl_user` may only connect over TLS; verify-full checks chain and host name.
#[tokio::test]
async fn own_connections_honour_sslmode_verify_full() {
    let pg = Pg::V15;
    let ca = certs_dir().join("ca.crt");
    let base = format!(
        "host=localhost port={} user=ssl_user dbname=postgres",
        pg.port()
    );
    let plain = hindsight::pgconn::connect(&format!("{base} sslmode=disable")).await;
    assert!(plain.is_err(), "ssl_user is refused without TLS");
    let verified = format!("{base} sslmode=verify-full sslrootcert={}", ca.display());
    let c = hindsight::restore::run::connect(&verified)
        .await
        .expect("verify-full with the dev CA");
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the connection is encrypted");
    let url = format!(
        "postgres://ssl_user@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.display()
    );
    hindsight::pgconn::connect(&url)
        .await
        .expect("URL form, IP in the certificate's names");
    // Nothing in the system trust store vouches for the dev CA.
    let e = hindsight::restore::run::connect(&format!("{base} sslmode=verify-full"))
        .await
        .expect_err("an unknown issuer is refused");
    assert!(e.to_string().contains("localhost"), "{e}");
    // A name the certificate does not carry (hostaddr: where to connect; host: the name to
    // verify): verify-ca accepts it, verify-full does not.
    let other = format!(
        "host=db.wrong.example hostaddr=127.0.0.1 port={} user=ssl_user dbname=postgres sslrootcert={}",
        pg.port(),
        ca.display()
    );
    hindsight::pgconn::connect(&format!("{other} sslmode=verify-ca"))
        .await
        .expect("verify-ca does not check the name");
    let e = hindsight::pgconn::connect(&format!("{other} sslmode=verify-full"))
        .await
        .expect_err("verify-full checks the name");
    assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");
}
