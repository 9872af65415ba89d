//! TLS to the database: the `sslmode` / `sslrootcert` parameters of a PostgreSQL URL and the
//! `ssl-mode` parameter of a MySQL one, against the local servers, and the errors a failed
//! TLS set-up gives (they say TLS failed and how to fix it, not "check that the server is
//! running").
//!
//! The local PostgreSQL runs with `ssl = on` and Debian's self-signed "snakeoil" certificate
//! (`SHOW ssl_cert_file`), whose only name is `localhost`: `verify-ca` with that certificate
//! as `sslrootcert` passes, `verify-full` passes for `localhost` and fails for `127.0.0.1`.
//! The local MariaDB has no TLS unless configured (`have_ssl`); the MySQL test checks what
//! the server offers.
//!
//! Every test works in its own database. Each migration records whether its own connection
//! is encrypted (`pg_stat_ssl`), so a test sees the mode in effect, not only that it connected.
#![cfg(all(feature = "postgres", feature = "mysql"))]
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mtnt::{ConnectOptions, Error, MigrateOptions, MigrationSet, Migrator};
use mtnt_test_support::create_tenants;
use mtnt_test_support::mysql::{server_url as mysql_server_url, TestControl};
use mtnt_test_support::postgres::{admin_url, TestDb};
use sqlx::{Connection, PgConnection, PgPool};

mod fleet {
    #[mtnt::migration(scope = "tenant", order = 2024_09_01_0001)]
    async fn record_the_connection(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute(
            "CREATE TABLE connection_info AS \
             SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .await
    }
}

/// `url` with its query string replaced by `query`.
fn with_query(url: &str, query: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    format!("{base}?{query}")
}

/// `url` with its host replaced by `host`.
fn with_host(url: &str, host: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user, rest) = rest.split_once('@').expect("a user in the test URL");
    let after_host = rest
        .find([':', '/'])
        .map(|i| &rest[i..])
        .unwrap_or_default();
    format!("{scheme}://{user}@{host}{after_host}")
}

/// The certificate the local server presents (`ssl_cert_file`): self-signed, so it is its
/// own CA.
async fn server_certificate() -> PathBuf {
    let mut conn = PgConnection::connect(&admin_url()).await.expect("admin");
    let path: String = sqlx::query_scalar("SELECT current_setting('ssl_cert_file')")
        .fetch_one(&mut conn)
        .await
        .expect("SHOW ssl_cert_file");
    let ssl: String = sqlx::query_scalar("SELECT current_setting('ssl')")
        .fetch_one(&mut conn)
        .await
        .expect("SHOW ssl");
    let _ = conn.close().await;
    assert_eq!(
        ssl, "on",
        "these tests need the test PostgreSQL server to run with ssl = on"
    );
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "the server's certificate {} is not readable here",
        path.display()
    );
    path
}

/// A fresh CA certificate that signed nothing the server has, made with openssl in `dir`.
fn another_ca(dir: &Path) -> PathBuf {
    let ca = dir.join("other-ca.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=mtnt test CA",
            "-keyout",
        ])
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&ca)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl req failed");
    ca
}

/// Connects to `url` as the CLI does, creates tenant `t1`, migrates it, and answers whether
/// the migration's connection was encrypted.
async fn migrate_one_tenant(url: &str, pool: &PgPool) -> bool {
    let backend = mtnt::connect(url, &ConnectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let migrator = Migrator::builder_boxed(backend)
        .migrations(MigrationSet::registered_in("tls::fleet").unwrap())
        .build()
        .unwrap();
    create_tenants(&migrator, &["t1"]).await;
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    let status = migrator.status(&[]).await.unwrap();
    assert_eq!((status.current, status.tenants.len()), (1, 1));
    sqlx::query_scalar("SELECT ssl FROM t1.connection_info")
        .fetch_one(pool)
        .await
        .expect("the migration recorded its connection")
}

/// The error of connecting to `url`.
async fn connect_error(url: &str) -> Error {
    match mtnt::connect(url, &ConnectOptions::default()).await {
        Ok(_) => panic!("connected to {url}"),
        Err(e) => e,
    }
}

/// A TLS error names TLS and a fix, and not the unreachable-server advice.
fn assert_tls_error(error: &Error, says: &str) {
    let text = error.to_string();
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
    assert!(text.contains("over TLS"), "{text}");
    assert!(text.contains(says), "{text}");
    // The fix is a field, printed by the CLI after the message.
    let fix = mtnt::cli_fix(error).expect("a TLS error has a fix");
    assert!(!fix.is_empty());
    assert!(!text.contains("check that the server is running"), "{text}");
    assert!(!fix.contains("check that the server is running"), "{fix}");
}

/// Whether `db` holds any of mtnt's tables.
async fn has_mtnt_tables(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename LIKE 'mtnt\\_%')")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn require_migrates_a_tenant_over_tls() {
    let db = TestDb::create("tls_require").await;
    let pool = db.pool(2).await;
    let url = with_query(&db.url, "sslmode=require");
    assert!(migrate_one_tenant(&url, &pool).await, "not encrypted");
    db.drop_db().await;
}

#[tokio::test]
async fn verify_ca_with_the_servers_certificate_migrates_a_tenant() {
    let cert = server_certificate().await;
    let db = TestDb::create("tls_verify_ca").await;
    let pool = db.pool(2).await;
    let url = with_query(
        &db.url,
        &format!("sslmode=verify-ca&sslrootcert={}", cert.display()),
    );
    assert!(migrate_one_tenant(&url, &pool).await, "not encrypted");
    db.drop_db().await;
}

#[tokio::test]
async fn verify_ca_with_another_ca_fails_saying_the_certificate_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = another_ca(dir.path());
    let db = TestDb::create("tls_other_ca").await;
    let pool = db.pool(2).await;
    let url = with_query(
        &db.url,
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    );
    let error = connect_error(&url).await;
    assert_tls_error(
        &error,
        &format!(
            "the server's certificate is not trusted by sslrootcert={}",
            ca.display()
        ),
    );
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    assert!(!has_mtnt_tables(&pool).await, "it changed the database");

    // Without sslrootcert, only the built-in roots are trusted, and the message says so.
    let error = connect_error(&with_query(&db.url, "sslmode=verify-ca")).await;
    assert_tls_error(&error, "the URL names no sslrootcert");
    db.drop_db().await;
}

#[tokio::test]
async fn the_cli_reports_an_untrusted_certificate_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let ca = another_ca(dir.path());
    let db = TestDb::create("tls_cli").await;
    let url = with_query(
        &db.url,
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mtnt-test-app"))
        .args(["--no-progress", "status", "--database-url", &url])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the test app");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the server's certificate is not trusted by sslrootcert="),
        "{stderr}"
    );
    assert!(stderr.contains("fix: set sslrootcert to"), "{stderr}");
    db.drop_db().await;
}

// The snakeoil certificate names `localhost` only: verify-full passes for that name and
// fails for the address.
#[tokio::test]
async fn verify_full_checks_the_host_name() {
    let cert = server_certificate().await;
    let db = TestDb::create("tls_verify_full").await;
    let pool = db.pool(2).await;
    let query = format!("sslmode=verify-full&sslrootcert={}", cert.display());

    let by_address = with_query(&with_host(&db.url, "127.0.0.1"), &query);
    let error = connect_error(&by_address).await;
    assert_tls_error(
        &error,
        "the server's certificate is not valid for the host name 127.0.0.1",
    );
    assert!(
        mtnt::cli_fix(&error).unwrap().contains("sslmode=verify-ca"),
        "{error:?}"
    );

    let by_name = with_query(&with_host(&db.url, "localhost"), &query);
    assert!(migrate_one_tenant(&by_name, &pool).await, "not encrypted");
    db.drop_db().await;
}

#[tokio::test]
async fn a_missing_sslrootcert_file_is_named() {
    let db = TestDb::create("tls_missing_ca").await;
    let url = with_query(
        &db.url,
        "sslmode=verify-ca&sslrootcert=/nonexistent/mtnt-ca.pem",
    );
    let error = connect_error(&url).await;
    assert_tls_error(&error, "cannot read sslrootcert=/nonexistent/mtnt-ca.pem");
    db.drop_db().await;
}

#[tokio::test]
async fn disable_migrates_without_tls_and_the_default_prefers_it() {
    let db = TestDb::create("tls_disable").await;
    let pool = db.pool(2).await;
    let url = with_query(&db.url, "sslmode=disable");
    assert!(!migrate_one_tenant(&url, &pool).await, "encrypted");
    db.drop_db().await;

    // No sslmode: prefer, as libpq does; this server offers TLS, so it is used.
    let db = TestDb::create("tls_default").await;
    let pool = db.pool(2).await;
    let url = db.url.split('?').next().unwrap().to_owned();
    if std::env::var_os("PGSSLMODE").is_none() {
        assert!(migrate_one_tenant(&url, &pool).await, "not encrypted");
    }
    db.drop_db().await;
}

// MySQL/MariaDB: `ssl-mode`. The local MariaDB offers TLS only when configured with a
// certificate; the test asks it (`have_ssl`) and checks what is true for it.
#[tokio::test]
async fn mysql_ssl_mode_is_honoured() {
    let mut conn = sqlx::MySqlConnection::connect(&mysql_server_url())
        .await
        .expect("MariaDB");
    let have_ssl: String = sqlx::query_scalar("SELECT @@have_ssl")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;

    let control = TestControl::new("tls").await;
    for mode in ["DISABLED", "PREFERRED"] {
        let url = format!("{}?ssl-mode={mode}", control.url);
        let backend = mtnt::connect(&url, &ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let migrator = Migrator::builder_boxed(backend)
            .migrations(MigrationSet::registered_in("tls::mysql_fleet").unwrap())
            .build()
            .unwrap();
        let tenant = control.tenant(&mode.to_ascii_lowercase());
        create_tenants(&migrator, &[&tenant]).await;
        assert!(migrator
            .migrate(&MigrateOptions::new())
            .await
            .unwrap()
            .is_success());
    }

    let required = format!("{}?ssl-mode=REQUIRED", control.url);
    if have_ssl == "YES" {
        mtnt::connect(&required, &ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("REQUIRED on a server with TLS: {e}"));
    } else {
        eprintln!("info: the MariaDB server has no TLS (have_ssl = {have_ssl})");
        let error = connect_error(&required).await;
        assert_tls_error(
            &error,
            "ssl-mode=REQUIRED asks for TLS, but the server does not offer it",
        );
        assert!(
            mtnt::cli_fix(&error)
                .unwrap()
                .contains("ssl-mode=PREFERRED"),
            "{error:?}"
        );
    }
    control.cleanup().await;
}

mod mysql_fleet {
    #[mtnt::migration(scope = "tenant", order = 2024_09_01_0001)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id BIGINT PRIMARY KEY)")
            .await
    }
}

// Information, not a check: what a TLS handshake adds to opening a connection (mtnt opens
// up to --max-connections of them per run, plus one to check the URL). Run with
// `cargo test --test tls -- --nocapture tls_handshake_cost` to see the figures.
#[tokio::test]
async fn tls_handshake_cost() {
    let cert = server_certificate().await;
    let base = admin_url();
    let modes = [
        ("disable", "sslmode=disable".to_owned()),
        ("require", "sslmode=require".to_owned()),
        (
            "verify-ca",
            format!("sslmode=verify-ca&sslrootcert={}", cert.display()),
        ),
    ];
    const ROUNDS: usize = 40;
    let urls: Vec<String> = modes.iter().map(|(_, q)| with_query(&base, q)).collect();
    for url in &urls {
        // One to warm up (DNS, the CA file's page cache).
        PgConnection::connect(url).await.unwrap().close().await.ok();
    }
    // The modes take turns, so that a busy moment of the machine hits them alike; the median
    // of each is printed.
    let mut times = vec![Vec::with_capacity(ROUNDS); modes.len()];
    for _ in 0..ROUNDS {
        for (url, times) in urls.iter().zip(&mut times) {
            let started = Instant::now();
            let mut conn = PgConnection::connect(url).await.unwrap();
            sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
            times.push(started.elapsed());
            conn.close().await.ok();
        }
    }
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    for ((mode, _), median) in modes.iter().zip(&medians) {
        println!(
            "info: connect + SELECT 1 with sslmode={mode}: median {:.2} ms over {ROUNDS} ({:+.2} ms against disable)",
            median.as_secs_f64() * 1e3,
            (median.as_secs_f64() - medians[0].as_secs_f64()) * 1e3
        );
    }
}
