//! What only the MySQL/MariaDB backend (one database per tenant) has, against the server
//! named by `MTNT_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`): DDL that commits
//! at once, the prepared-statement cache across databases, UTC timestamps in `DATETIME`
//! columns, `MySqlBackend` on an own pool, and its URLs. The behaviour every engine shares
//! (fleet, failures, rollback, create, concurrent runs, checksums, adopt, CLI) is proven on
//! MySQL by `tests/behaviour.rs`. Each test has its own control database and
//! tenant prefix, removed when it ends.

// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{
    ConnectOptions, Engine, Error, MigrateOptions, MigrationSet, MigrationStatus, Migrator,
    MySqlBackend, Tenancy, TenantName,
};
use mtnt_test_support::mysql::{table_exists, tracking_row, TestControl};
use sqlx::types::chrono::Utc;

// The behaviour suite's migrations; this file uses the main set only.
#[allow(dead_code)]
#[path = "behaviour/migrations.rs"]
mod migrations;

use migrations::{ACCOUNTS, BACKFILL, LEDGER, PROJECTS};

/// A data-only migration that fails while `FAIL` is set: the server rolls its rows back.
mod data {
    use std::sync::atomic::{AtomicBool, Ordering};

    use mtnt::{Ctx, Result};

    pub static FAIL: AtomicBool = AtomicBool::new(true);

    #[mtnt::migration(scope = "tenant", order = 2024_03_01_0001)]
    async fn create_items(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, sku VARCHAR(64))")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_03_01_0002)]
    async fn seed_items(ctx: &mut Ctx<'_>) -> Result<()> {
        // Two statements in one call: the connection allows multi-statement text queries.
        ctx.execute("INSERT INTO items (sku) VALUES ('a'); INSERT INTO items (sku) VALUES ('b')")
            .await?;
        if FAIL.load(Ordering::SeqCst) {
            return Err(mtnt::Error::other("the seed data is not ready"));
        }
        Ok(())
    }
}

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

/// The behaviour suite's main set up to `to`.
fn fleet_set(to: i64) -> MigrationSet {
    let all = MigrationSet::registered_in("mysql::migrations::fleet").unwrap();
    MigrationSet::new(all.iter().filter(|m| m.order() <= to)).unwrap()
}

/// A migrator built from the test's URL, as the CLI builds it.
async fn migrator(control: &TestControl, set: MigrationSet) -> Migrator {
    let backend = mtnt::connect(&control.url, &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (backend.engine(), backend.tenancy()),
        (Engine::MySql, Tenancy::Database)
    );
    Migrator::builder_boxed(backend)
        .migrations(set)
        .build()
        .unwrap()
}

// MySQL only: `DATETIME` has no time zone, so mtnt writes UTC whatever the session's
// `time_zone` says; the other engines store time-zone-aware or RFC 3339 UTC text.
#[tokio::test]
async fn tracking_timestamps_are_utc() {
    let control = TestControl::new("utc").await;
    let pool = control.pool(2).await;
    let acme = control.tenant("acme");
    let m = migrator(&control, fleet_set(BACKFILL)).await;
    let before = Utc::now().timestamp() - 5;
    m.create_tenant(&name(&acme)).await.unwrap();
    for order in [LEDGER, ACCOUNTS, PROJECTS, BACKFILL] {
        let row = tracking_row(&pool, &acme, order).await.unwrap();
        assert_eq!(row.status, "completed", "{order}");
        let started = row.started_at.unwrap();
        let finished = row.finished_at.unwrap();
        assert!(started <= finished && finished <= Utc::now(), "{row:?}");
        assert!(started.timestamp() >= before, "{row:?} is not UTC now");
        assert!(row.duration_ms.is_some() && row.error.is_none(), "{row:?}");
    }
    let record = m.tenants().await.unwrap().remove(0);
    assert!(record.created_at.timestamp() >= before && record.created_at <= Utc::now());

    drop(pool);
    control.cleanup().await;
}

// MySQL only: the one engine whose DDL commits at once, so that a failed migration stays
// `started` even when it changed data only (which the server did roll back).
#[tokio::test]
async fn data_only_failure_rolls_back_its_rows_but_stays_started() {
    use std::sync::atomic::Ordering;

    let control = TestControl::new("data").await;
    let pool = control.pool(2).await;
    let shop = control.tenant("shop");
    let all = MigrationSet::registered_in("mysql::data").unwrap();
    let v1 = migrator(&control, MigrationSet::new(all.iter().take(1)).unwrap()).await;
    v1.create_tenant(&name(&shop)).await.unwrap();

    let m = migrator(&control, all).await;
    data::FAIL.store(true, Ordering::SeqCst);
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    let items: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM `{shop}`.items"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(items, 0, "the inserts were rolled back");
    let row = tracking_row(&pool, &shop, 2024_03_01_0002).await.unwrap();
    assert_eq!(
        row.status, "started",
        "mtnt cannot tell a data-only migration from one that ran DDL"
    );
    assert!(row.error.unwrap().contains("the seed data is not ready"));

    // Marked pending, it runs again.
    data::FAIL.store(false, Ordering::SeqCst);
    m.mark(
        Some(&name(&shop)),
        2024_03_01_0002,
        MigrationStatus::Pending,
    )
    .await
    .unwrap();
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    let items: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM `{shop}`.items"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(items, 2);
    assert_eq!(
        tracking_row(&pool, &shop, 2024_03_01_0002)
            .await
            .unwrap()
            .status,
        "completed"
    );

    drop(pool);
    control.cleanup().await;
}

// MySQL only: MySQL binds a prepared statement to the database that was current when it
// was prepared: a reused connection must not run one tenant's cached statement in another.
#[tokio::test]
async fn one_connection_serves_every_tenant_in_turn() {
    let control = TestControl::new("oneconn").await;
    let pool = control.pool(2).await;
    let (a, b) = (control.tenant("a"), control.tenant("b"));
    let mut options = ConnectOptions::default();
    options.max_connections = 1;
    let backend = mtnt::connect(&control.url, &options).await.unwrap();
    let v1 = Migrator::builder_boxed(backend)
        .migrations(fleet_set(ACCOUNTS))
        .concurrency(1)
        .build()
        .unwrap();
    v1.create_tenant(&name(&a)).await.unwrap();
    v1.create_tenant(&name(&b)).await.unwrap();
    let backend = mtnt::connect(&control.url, &options).await.unwrap();
    let v2 = Migrator::builder_boxed(backend)
        .migrations(fleet_set(BACKFILL))
        .concurrency(1)
        .build()
        .unwrap();
    let report = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 4);
    for tenant in [&a, &b] {
        let emails: Vec<String> =
            sqlx::query_scalar(&format!("SELECT email FROM `{tenant}`.accounts"))
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(emails, [format!("admin@{tenant}.example")], "{tenant}");
    }

    drop(pool);
    control.cleanup().await;
}

// MySQL only: the `MySqlBackend` constructor and its control database check.
#[tokio::test]
async fn backend_on_an_own_pool() {
    let control = TestControl::new("pool").await;
    let pool = control.pool(3).await;
    let acme = control.tenant("acme");
    let backend = MySqlBackend::new(pool.clone(), control.control()).unwrap();
    assert_eq!(backend.control_database(), control.control());
    assert!(MySqlBackend::new(pool.clone(), "bad`name").is_err());
    let m = Migrator::builder(backend)
        .migrations(fleet_set(PROJECTS))
        .build()
        .unwrap();
    m.create_tenant(&name(&acme)).await.unwrap();
    assert!(table_exists(&pool, &acme, "projects").await);
    assert_eq!(
        m.status(&[]).await.unwrap().summary(),
        "1/1 tenants current, 0 behind, 0 failed"
    );

    drop(pool);
    control.cleanup().await;
}

// MySQL only: the `mysql://` and `mariadb://` URL forms.
#[tokio::test]
async fn urls_are_checked_and_an_unreachable_server_fails_fast_without_the_password() {
    let started = std::time::Instant::now();
    let error = mtnt::connect(
        "mysql://root:s3cret@127.0.0.1:1/control",
        &ConnectOptions::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("mysql://root:***@127.0.0.1:1/control"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "it waited for a pool timeout"
    );

    let error = mtnt::connect(
        "mariadb://root:s3cret@127.0.0.1:3306",
        &ConnectOptions::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(error, Error::BadUrl { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("name the control database"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");

    let mut options = ConnectOptions::default();
    options.tenancy = Some(Tenancy::Schema);
    let error = mtnt::connect("mysql://root@127.0.0.1/control", &options)
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::BadUrl { .. }), "{error}");
    assert!(error.to_string().contains("use database"), "{error}");
}
