//! PostgreSQL through PgBouncer. Session pooling works as a direct connection does (a fleet
//! migrated, its status, on both PostgreSQL models); transaction and statement pooling, which
//! break session advisory locks, session `SET` and prepared statements, are refused before
//! anything is changed, with a message that says to use a direct or session-pooled URL.
//!
//! Each test starts its own `pgbouncer` processes (installed by `scripts/test`) on free
//! loopback ports, with a configuration in a temporary directory that points at the test
//! server (`MTNT_TEST_PG_URL`) with `auth_type = any`, and stops them when it ends. Their
//! configuration is PgBouncer's defaults otherwise: no `ignore_startup_parameters`, so
//! sqlx's `extra_float_digits` is refused at first, as in a stock deployment.
#![cfg(feature = "postgres")]
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mtnt::{ConnectOptions, Error, MigrateOptions, MigrationSet, Migrator, Tenancy};
use mtnt_test_support::create_tenants;
use mtnt_test_support::postgres::{admin_url, drop_databases_with_prefix, table_exists, TestDb};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

mod fleet {
    #[mtnt::migration(scope = "public", order = 2024_10_01_0001)]
    async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE plans (id bigserial PRIMARY KEY, name text NOT NULL)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_10_01_0002)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text UNIQUE)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_10_01_0003)]
    async fn add_plan(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("ALTER TABLE accounts ADD COLUMN plan bigint")
            .await?;
        // A typed, prepared statement: sqlx prepares it on the tenant's connection.
        sqlx::query("INSERT INTO accounts (email, plan) VALUES ($1, $2)")
            .bind("first@example.com")
            .bind(1_i64)
            .execute(ctx.postgres()?)
            .await?;
        Ok(())
    }
}

/// A `pgbouncer` process of the test's own; stopped when dropped.
struct Bouncer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The pgbouncer binary: on the `PATH`, or where Debian puts it.
fn pgbouncer_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|bin| bin.is_file())
        .expect("pgbouncer is not installed; scripts/test installs it (apt-get install pgbouncer)")
}

/// Whether this process runs as root (PgBouncer refuses to; it is then told to switch to
/// the `postgres` user).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

impl Bouncer {
    /// Starts pgbouncer with `pool_mode` and `extra` lines in its `[pgbouncer]` section, in
    /// front of the test server, and waits until it accepts connections.
    fn start(pool_mode: &str, extra: &str) -> Bouncer {
        let server: PgConnectOptions = admin_url().parse().expect("MTNT_TEST_PG_URL");
        let mut last_log = String::new();
        // A port can be taken between free_port and pgbouncer's bind: try again then.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temporary directory");
            let port = free_port();
            let config = dir.path().join("pgbouncer.ini");
            std::fs::write(
                &config,
                format!(
                    "[databases]\n\
                     * = host={host} port={server_port} user={user}\n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {port}\n\
                     unix_socket_dir =\n\
                     auth_type = any\n\
                     pool_mode = {pool_mode}\n\
                     {extra}\n",
                    host = server.get_host(),
                    server_port = server.get_port(),
                    user = server.get_username(),
                ),
            )
            .expect("write pgbouncer.ini");
            let log = dir.path().join("pgbouncer.log");
            let mut command = Command::new(pgbouncer_binary());
            if running_as_root() {
                // The user it switches to must reach the configuration.
                for path in [dir.path(), config.as_path()] {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                        .expect("chmod");
                }
                command.args(["-u", "postgres"]);
            }
            let child = command
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).expect("log file"))
                .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"))
                .spawn()
                .expect("start pgbouncer");
            let mut bouncer = Bouncer {
                child,
                port,
                log,
                _dir: dir,
            };
            if bouncer.wait_until_up() {
                return bouncer;
            }
            last_log = bouncer.log();
        }
        panic!("pgbouncer did not start:\n{last_log}");
    }

    /// Waits up to 10 s for the port to accept connections; false if pgbouncer exited.
    fn wait_until_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The URL of database `db` through this pgbouncer, with any user (`auth_type = any`).
    fn url(&self, db: &str) -> String {
        format!("postgres://mtnt@127.0.0.1:{}/{db}", self.port)
    }

    /// Everything pgbouncer logged so far.
    fn log(&self) -> String {
        let mut text = String::new();
        for path in [self.log.clone(), self.log.with_file_name("stderr.log")] {
            if let Ok(mut file) = std::fs::File::open(&path) {
                let _ = file.read_to_string(&mut text);
            }
        }
        text
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fleet's migrations up to `to`.
fn fleet_to(to: i64) -> MigrationSet {
    MigrationSet::new(
        MigrationSet::registered_in("pgbouncer::fleet")
            .unwrap()
            .iter()
            .filter(|m| m.order() <= to),
    )
    .unwrap()
}

const LATEST: i64 = 2024_10_01_0003;

/// A migrator of `set` on `url`, its backend made by `mtnt::connect` as the CLI makes it.
async fn migrator(url: &str, tenancy: Tenancy, set: MigrationSet) -> Migrator {
    let mut options = ConnectOptions::default();
    options.tenancy = Some(tenancy);
    let backend = mtnt::connect(url, &options)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    Migrator::builder_boxed(backend)
        .migrations(set)
        .concurrency(4)
        .build()
        .unwrap()
}

/// Creates `tenants` at the fleet's first tenant migration, migrates them all to the latest
/// through `url`, checks the report and the status, then migrates again and checks that
/// nothing is left to do.
async fn create_migrate_and_check(url: &str, tenancy: Tenancy, tenants: &[String]) {
    let first = migrator(url, tenancy, fleet_to(2024_10_01_0002)).await;
    create_tenants(&first, tenants).await;
    drop(first);

    let migrator = migrator(url, tenancy, fleet_to(LATEST)).await;
    let before = migrator.status(&[]).await.unwrap();
    assert_eq!(
        (before.current, before.behind, before.failed),
        (0, tenants.len(), 0),
        "{}",
        before.summary()
    );
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.tenants_migrated, tenants.len());
    let tenants = tenants.len();

    let status = migrator.status(&[]).await.unwrap();
    assert_eq!(status.public.pending, 0);
    assert_eq!(status.public.applied_order, Some(2024_10_01_0001));
    assert_eq!(
        (
            status.current,
            status.behind,
            status.failed,
            status.tenants.len()
        ),
        (tenants, 0, 0, tenants),
        "{}",
        status.summary()
    );
    for t in &status.tenants {
        assert_eq!(t.applied_order, Some(LATEST), "{}", t.tenant);
    }

    let again = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(again.is_success(), "{:?}", again.failures);
    assert_eq!(
        (again.tenants_migrated, again.tenants_current),
        (0, tenants)
    );
}

/// Whether the database holds any of mtnt's tables or any schema besides the built-in ones.
async fn untouched(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')) \
         AND NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname NOT IN ('public', 'information_schema') AND nspname NOT LIKE 'pg\\_%')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_migrates_a_fleet_as_a_direct_connection_does() {
    let bouncer = Bouncer::start("session", "");
    let db = TestDb::create("pgb_session").await;
    let pool = db.pool(2).await;
    let url = bouncer.url(db.name());

    let tenants: Vec<String> = ["acme", "globex", "initech", "umbrella", "hooli", "wayne"]
        .map(String::from)
        .to_vec();
    create_migrate_and_check(&url, Tenancy::Schema, &tenants).await;
    assert!(table_exists(&pool, "public", "plans").await);
    for t in &tenants {
        let email: String = sqlx::query_scalar(&format!("SELECT email FROM \"{t}\".accounts"))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(email, "first@example.com");
    }
    // The stock configuration refused sqlx's extra_float_digits; mtnt connected without it.
    assert!(
        bouncer
            .log()
            .contains("unsupported startup parameter: extra_float_digits"),
        "{}",
        bouncer.log()
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_migrates_a_database_per_tenant_fleet() {
    let bouncer = Bouncer::start("session", "");
    let control = TestDb::create("pgb_session_db").await;
    let prefix = format!("pgb{}_", std::process::id());
    drop_databases_with_prefix(&prefix).await;
    let url = bouncer.url(control.name());

    let tenants: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect();
    create_migrate_and_check(&url, Tenancy::Database, &tenants).await;
    let mut direct = PgConnection::connect(&admin_url()).await.unwrap();
    let databases: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = ANY($1)")
            .bind(&tenants)
            .fetch_one(&mut direct)
            .await
            .unwrap();
    assert_eq!(databases, tenants.len() as i64);
    let _ = direct.close().await;

    drop(bouncer);
    drop_databases_with_prefix(&prefix).await;
    control.drop_db().await;
}

/// Asserts that `error` is the refusal of a transaction pooler.
fn assert_refused(error: &Error) {
    let text = error.to_string();
    assert!(
        matches!(error, Error::TransactionPooler { .. }),
        "{error:?}"
    );
    assert!(text.contains("transaction or statement mode"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    // The fix is the CLI's (it names a flag).
    let fix = mtnt::cli_fix(error).expect("a fix");
    assert!(fix.contains("point --database-url"), "{fix}");
    assert!(fix.contains("PostgreSQL itself"), "{fix}");
    assert!(fix.contains("pool_mode = session"), "{fix}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_is_refused_before_anything_changes() {
    let bouncer = Bouncer::start("transaction", "");
    let db = TestDb::create("pgb_transaction").await;
    let pool = db.pool(2).await;
    let url = bouncer.url(db.name());

    for tenancy in [Tenancy::Schema, Tenancy::Database] {
        let mut options = ConnectOptions::default();
        options.tenancy = Some(tenancy);
        match mtnt::connect(&url, &options).await {
            Ok(_) => panic!("{tenancy:?}: connected through a transaction pool"),
            Err(e) => assert_refused(&e),
        }
    }
    match Migrator::connect(&url).await {
        Ok(_) => panic!("Migrator::connect went through a transaction pool"),
        Err(e) => assert_refused(&e),
    }

    // The command line: `migrate` exits 1 with the message, and the database is as it was.
    let output = Command::new(env!("CARGO_BIN_EXE_mtnt-test-app"))
        .args(["--no-progress", "migrate", "--database-url", &url])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the test app");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("transaction or statement mode"), "{stderr}");
    assert!(stderr.contains("pool_mode = session"), "{stderr}");
    assert!(untouched(&pool).await, "the database was changed");

    // The same database through a session pool migrates.
    let session = Bouncer::start("session", "");
    create_migrate_and_check(
        &session.url(db.name()),
        Tenancy::Schema,
        &["acme".to_owned()],
    )
    .await;
    assert!(table_exists(&pool, "acme", "accounts").await);
    db.drop_db().await;
}

/// Runs `n` statements through `url` at once, so that the pool opens `n` server sessions,
/// which then stay in it, idle.
async fn warm_up(url: &str, n: usize) {
    let options = url
        .parse::<PgConnectOptions>()
        .unwrap()
        .extra_float_digits(None);
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(PgConnection::connect_with(&options).await.unwrap());
    }
    futures_util::future::join_all(conns.iter_mut().map(|conn| async move {
        sqlx::raw_sql("SELECT pg_sleep(0.2)")
            .execute(&mut *conn)
            .await
            .unwrap();
    }))
    .await;
    for conn in conns {
        let _ = conn.close().await;
    }
}

// The check does not depend on luck with the pool's state: idle sessions reused last in,
// first out (PgBouncer's default) or round robin, a cold or a warm pool, statement mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_is_refused_however_the_pool_hands_out_sessions() {
    let db = TestDb::create("pgb_transaction_rr").await;
    let pool = db.pool(2).await;
    for (mode, extra) in [
        ("transaction", ""),
        ("transaction", "server_round_robin = 1"),
        ("transaction", "server_round_robin = 1\nmin_pool_size = 3"),
        ("statement", ""),
    ] {
        let bouncer = Bouncer::start(mode, extra);
        let url = bouncer.url(db.name());
        for attempt in 0..10 {
            if attempt == 5 {
                warm_up(&url, 4).await;
            }
            match mtnt::connect(&url, &ConnectOptions::default()).await {
                Ok(_) => panic!("{mode} {extra:?}, attempt {attempt}: not refused"),
                Err(e) => {
                    assert_refused(&e);
                    if attempt == 0 || attempt == 5 {
                        let text = e.to_string();
                        let evidence = text.split(": ").nth(2).unwrap_or_default();
                        let evidence = evidence.split('.').next().unwrap_or_default();
                        eprintln!("info: {mode} {extra:?}, attempt {attempt}: {evidence}");
                    }
                }
            }
        }
    }
    assert!(untouched(&pool).await, "the database was changed");
    db.drop_db().await;
}
