//! What only the MySQL/MariaDB backend (one database per tenant) has, against the server
//! named by `MTNT_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`): DDL that commits
//! at once, the prepared-statement cache across databases, UTC timestamps in `DATETIME`
//! columns, `MySqlBackend` on an own pool, and its URLs. The behaviour every engine shares
//! (fleet, failures, rollback, create, concurrent runs, checksums, adopt, CLI) is proven on
//! MySQL by `tests/behaviour.rs`. Each test has its own control database and
//! tenant prefix, removed when it ends.
#![cfg(feature = "mysql")]
// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use std::time::Duration;

use mtnt::{
    Backend, ConnectOptions, Engine, Error, MigrateOptions, MigrationSet, MigrationStatus,
    Migrator, MySqlBackend, SafetySettings, Tenancy, TenantName,
};
use mtnt_test_support::mysql::{execute, registry_row, table_exists, tracking_row, TestControl};
use sqlx::pool::PoolConnection;
use sqlx::types::chrono::Utc;
use sqlx::{MySql, MySqlPool};

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

/// A migration that records the session's lock timeouts while it runs.
mod timeouts {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "tenant", order = 2024_04_01_0001)]
    async fn record_lock_timeouts(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute(
            "CREATE TABLE seen AS SELECT @@SESSION.lock_wait_timeout AS lwt, \
             @@SESSION.innodb_lock_wait_timeout AS ilwt",
        )
        .await
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

    // The control database comes from the URL; a control schema has no meaning here.
    let mut options = ConnectOptions::default();
    options.control_schema = "mtnt".to_owned();
    let error = mtnt::connect("mysql://root@127.0.0.1/control", &options)
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::Invalid(_)), "{error}");
    assert!(error.to_string().contains("control database"), "{error}");

    let mut options = ConnectOptions::default();
    options.tenancy = Some(Tenancy::Schema);
    let error = mtnt::connect("mysql://root@127.0.0.1/control", &options)
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::BadUrl { .. }), "{error}");
    assert!(error.to_string().contains("use database"), "{error}");
}

/// How long a fleet run waits for a tenant another run holds, in the fast-path tests: a
/// tenant that gets a session while its lock is held fails after this.
const UNLOCK_DEADLINE: Duration = Duration::from_secs(2);

/// A migrator whose fleet runs give up on a held tenant after [`UNLOCK_DEADLINE`].
async fn impatient_migrator(control: &TestControl, set: MigrationSet) -> Migrator {
    let backend = mtnt::connect(&control.url, &ConnectOptions::default())
        .await
        .unwrap();
    Migrator::builder_boxed(backend)
        .migrations(set)
        .safety(
            SafetySettings::new()
                .unlock_deadline(UNLOCK_DEADLINE)
                .heartbeat_interval(Duration::from_millis(100))
                .heartbeat_retries(1),
        )
        .build()
        .unwrap()
}

/// Takes the mtnt locks of `tenants` (as a session would, `GET_LOCK` on the hashed
/// `tenant:<database>` key) on one connection, held until it is dropped: a run that opens
/// a session on one of them cannot lock it and waits, then fails as busy.
async fn hold_tenant_locks(pool: &MySqlPool, tenants: &[&str]) -> PoolConnection<MySql> {
    let mut conn = pool.acquire().await.unwrap();
    for tenant in tenants {
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT('mtnt:', SHA1(?)), 0)")
            .bind(format!("tenant:{tenant}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(got, Some(1), "lock of {tenant}");
    }
    conn
}

/// Ends the connection of [`hold_tenant_locks`], and with it its locks (a pooled
/// connection would keep them).
async fn release(held: PoolConnection<MySql>) {
    sqlx::Connection::close(held.detach()).await.unwrap();
}

/// The failures of a report, by tenant.
fn failed(report: &mtnt::MigrateReport) -> Vec<(String, String)> {
    report
        .failures
        .iter()
        .map(|f| (f.tenant.to_string(), f.error.to_string()))
        .collect()
}

// MySQL only: the fingerprints are computed from each tenant's tracking table on the
// control connection, and must be `mtnt::fingerprint` to the byte.
#[tokio::test]
async fn fingerprints_are_read_from_the_tracking_tables_exactly() {
    let control = TestControl::new("fingerprint").await;
    let pool = control.pool(2).await;
    let [full, empty, untracked, started, long] =
        ["full", "empty", "untracked", "started", "long"].map(|t| control.tenant(t));
    let set = fleet_set(BACKFILL);
    let m = migrator(&control, set.clone()).await;
    for tenant in [&full, &empty, &untracked, &started, &long] {
        m.create_tenant(&name(tenant)).await.unwrap();
    }
    execute(&pool, &format!("DELETE FROM `{empty}`.mtnt_migrations")).await;
    execute(&pool, &format!("DROP TABLE `{untracked}`.mtnt_migrations")).await;
    execute(
        &pool,
        &format!(
            "UPDATE `{started}`.mtnt_migrations SET status = 'started' WHERE migration_order = {BACKFILL}"
        ),
    )
    .await;
    // Far past MySQL's default `group_concat_max_len` of 1024 bytes, with text that is
    // not plain ASCII.
    let rows: Vec<(i64, String)> = (1..=300)
        .map(|i| (i, format!("sum-{i}-é✓-{}", "x".repeat(40))))
        .collect();
    execute(&pool, &format!("DELETE FROM `{long}`.mtnt_migrations")).await;
    for (order, checksum) in &rows {
        sqlx::query(&format!(
            "INSERT INTO `{long}`.mtnt_migrations (migration_order, name, checksum, status) \
             VALUES (?, 'hand', ?, 'completed')"
        ))
        .bind(order)
        .bind(checksum)
        .execute(&pool)
        .await
        .unwrap();
    }

    // One connection, so that the session setting it raises is seen if it stays raised.
    let own = control.pool(1).await;
    let before: u64 = sqlx::query_scalar("SELECT @@SESSION.group_concat_max_len")
        .fetch_one(&own)
        .await
        .unwrap();
    let backend = MySqlBackend::new(own.clone(), control.control()).unwrap();
    let mut names: Vec<TenantName> = [&full, &empty, &untracked, &started, &long]
        .iter()
        .map(|t| name(t))
        .collect();
    names.push(name(&control.tenant("unregistered")));
    let mut got = backend.fingerprints(&names).await.unwrap();
    got.sort();
    let tenant_set: Vec<_> = set
        .iter()
        .filter(|m| m.scope() == mtnt::Scope::Tenant)
        .map(|m| (m.order(), m.checksum()))
        .collect();
    let mut expected = vec![
        (name(&full), mtnt::fingerprint(tenant_set.iter().copied())),
        (name(&empty), mtnt::fingerprint([])),
        (
            name(&long),
            mtnt::fingerprint(rows.iter().map(|(o, c)| (*o, c.as_str()))),
        ),
    ];
    expected.sort();
    assert_eq!(got, expected);
    let after: u64 = sqlx::query_scalar("SELECT @@SESSION.group_concat_max_len")
        .fetch_one(&own)
        .await
        .unwrap();
    assert_eq!(after, before, "group_concat_max_len was set back");

    own.close().await;
    drop(pool);
    control.cleanup().await;
}

// MySQL only: a no-op fleet run decides from the control connection alone. Every
// tenant's lock is held elsewhere, so a session on any of them would wait and fail.
#[tokio::test]
async fn a_no_op_fleet_run_opens_no_tenant_session() {
    let control = TestControl::new("noop").await;
    let pool = control.pool(2).await;
    let tenants: Vec<String> = ["a", "b", "c"].map(|t| control.tenant(t)).to_vec();
    let m = impatient_migrator(&control, fleet_set(BACKFILL)).await;
    for tenant in &tenants {
        m.create_tenant(&name(tenant)).await.unwrap();
    }
    let held = hold_tenant_locks(
        &pool,
        &tenants.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(failed(&report), [], "a tenant got a session");
    assert_eq!(report.tenants_current, 3);
    assert!(report.elapsed < UNLOCK_DEADLINE, "{:?}", report.elapsed);

    release(held).await;
    drop(pool);
    control.cleanup().await;
}

// MySQL only: the fingerprint is the tracking table's, not a cached copy: a row edited by
// hand is seen at once (the tenant gets a session and the checksum check), while the
// untouched tenant next to it still gets none.
#[tokio::test]
async fn a_hand_edited_tracking_row_is_seen() {
    let control = TestControl::new("handedit").await;
    let pool = control.pool(2).await;
    let (kept, edited) = (control.tenant("kept"), control.tenant("edited"));
    let m = impatient_migrator(&control, fleet_set(BACKFILL)).await;
    m.create_tenant(&name(&kept)).await.unwrap();
    m.create_tenant(&name(&edited)).await.unwrap();
    execute(
        &pool,
        &format!(
            "UPDATE `{edited}`.mtnt_migrations SET checksum = 'edited' WHERE migration_order = {LEDGER}"
        ),
    )
    .await;
    let held = hold_tenant_locks(&pool, &[&kept]).await;
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    let failures = failed(&report);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, edited);
    assert!(failures[0].1.contains("checksum"), "{failures:?}");
    assert_eq!(
        report.tenants_current, 1,
        "the untouched tenant, without a session"
    );
    assert!(report.elapsed < UNLOCK_DEADLINE, "{:?}", report.elapsed);

    release(held).await;
    drop(pool);
    control.cleanup().await;
}

// MySQL only: a tenant behind the code gets its new migration, and the registry's cached
// newest migration agrees with its tracking table afterwards (the fast path compares
// both); the tenant already up to date gets no session.
#[tokio::test]
async fn a_new_migration_is_applied_and_the_current_tenant_gets_no_session() {
    let control = TestControl::new("newmig").await;
    let pool = control.pool(2).await;
    let (behind, current) = (control.tenant("behind"), control.tenant("current"));
    impatient_migrator(&control, fleet_set(ACCOUNTS))
        .await
        .create_tenant(&name(&behind))
        .await
        .unwrap();
    let m = impatient_migrator(&control, fleet_set(PROJECTS)).await;
    m.create_tenant(&name(&current)).await.unwrap();
    assert!(!table_exists(&pool, &behind, "projects").await);
    let held = hold_tenant_locks(&pool, &[&current]).await;
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(failed(&report), []);
    assert_eq!(
        (
            report.tenants_migrated,
            report.migrations_applied,
            report.tenants_current
        ),
        (1, 1, 1)
    );
    assert!(table_exists(&pool, &behind, "projects").await);
    for tenant in [&behind, &current] {
        let row = registry_row(&pool, control.control(), tenant)
            .await
            .unwrap();
        assert_eq!(row.applied_order, Some(PROJECTS), "{tenant}");
        assert_eq!(row.failed_order, None, "{tenant}");
    }
    release(held).await;

    // And the next run finds both current without a session.
    let held = hold_tenant_locks(&pool, &[&behind, &current]).await;
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(failed(&report), []);
    assert_eq!(report.tenants_current, 2);

    release(held).await;
    drop(pool);
    control.cleanup().await;
}

// MySQL: `tenant drop` used to drop the database without the tenant's lock, under a
// running migration. A `GET_LOCK` held elsewhere (as an older mtnt's session takes it)
// keeps it from changing anything, and once it is free the drop goes ahead.
#[tokio::test]
async fn tenant_drop_waits_for_a_held_tenant_lock() {
    let control = TestControl::new("droplock").await;
    let pool = control.pool(2).await;
    let acme = control.tenant("acme");
    let m = impatient_migrator(&control, fleet_set(BACKFILL)).await;
    m.create_tenant(&name(&acme)).await.unwrap();
    let held = hold_tenant_locks(&pool, &[&acme]).await;
    let error = m.drop_tenant(&name(&acme)).await.unwrap_err();
    assert!(matches!(error, Error::Busy { .. }), "{error}");
    assert!(mtnt_test_support::mysql::database_exists(&pool, &acme).await);
    assert!(registry_row(&pool, control.control(), &acme)
        .await
        .is_some());

    release(held).await;
    m.drop_tenant(&name(&acme)).await.unwrap();
    assert!(!mtnt_test_support::mysql::database_exists(&pool, &acme).await);
    assert!(registry_row(&pool, control.control(), &acme)
        .await
        .is_none());

    drop(pool);
    control.cleanup().await;
}

// MySQL: a tenant whose database would be the control database is refused before any
// SQL, typed, and dropping it cannot drop the registry.
#[tokio::test]
async fn a_tenant_named_like_the_control_database_is_refused() {
    let control = TestControl::new("ctlname").await;
    let pool = control.pool(2).await;
    // A control database with a valid tenant name (the test's prefix: cleaned up with it).
    let ctl = control.tenant("ctl");
    let backend = MySqlBackend::new(pool.clone(), &ctl).unwrap();
    let m = Migrator::builder(backend)
        .migrations(fleet_set(BACKFILL))
        .build()
        .unwrap();
    let other = control.tenant("other");
    m.create_tenant(&name(&other)).await.unwrap();
    let error = m.create_tenant(&name(&ctl)).await.unwrap_err();
    assert!(
        matches!(&error, Error::InvalidTenantName { name, .. } if *name == ctl),
        "{error:?}"
    );
    assert!(error.to_string().contains("control database"), "{error}");
    // No fix: `tenant adopt` would take the control database for a tenant.
    assert_eq!(mtnt::cli_fix(&error), None, "{error}");
    assert!(registry_row(&pool, &ctl, &ctl).await.is_none());
    // Registered by hand, it still cannot be dropped, nor migrated.
    execute(
        &pool,
        &format!(
            "INSERT INTO `{ctl}`.mtnt_tenants (name, schema_name, state, created_at, updated_at) \
             VALUES ('{ctl}', '{ctl}', 'active', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
        ),
    )
    .await;
    let error = m.drop_tenant(&name(&ctl)).await.unwrap_err();
    assert!(
        matches!(error, Error::InvalidTenantName { .. }),
        "{error:?}"
    );
    assert!(table_exists(&pool, &ctl, "mtnt_tenants").await);
    let report = m
        .migrate(&MigrateOptions::new().tenants([name(&ctl)]))
        .await
        .unwrap();
    assert_eq!(report.failures.len(), 1);
    assert!(registry_row(&pool, &ctl, &other).await.is_some());

    drop(pool);
    control.cleanup().await;
}

// MySQL: reading a tenant writes nothing. A database without a tracking table (adopted,
// or the table dropped by hand) reads as no rows, and `status` leaves it without one.
#[tokio::test]
async fn reading_a_tenant_without_a_tracking_table_creates_none() {
    let control = TestControl::new("readonly").await;
    let pool = control.pool(2).await;
    let bare = control.tenant("bare");
    let m = migrator(&control, fleet_set(BACKFILL)).await;
    m.create_tenant(&name(&bare)).await.unwrap();
    execute(&pool, &format!("DROP TABLE `{bare}`.mtnt_migrations")).await;
    let status = m.status(&[]).await.unwrap();
    assert_eq!(status.tenants.len(), 1);
    assert_eq!(
        status.tenants[0].applied_order,
        Some(BACKFILL),
        "the registry's"
    );
    assert!(status.tenants[0].pending > 0, "no rows: everything pending");
    assert!(!table_exists(&pool, &bare, "mtnt_migrations").await);

    drop(pool);
    control.cleanup().await;
}

// MySQL: a migration's lock timeout is the session's `lock_wait_timeout` and
// `innodb_lock_wait_timeout` (whole seconds, rounded up) while it runs; the connection
// goes back to the pool with its own values.
#[tokio::test]
async fn lock_timeouts_apply_while_a_migration_runs() {
    let control = TestControl::new("timeouts").await;
    let pool = control.pool(2).await;
    let acme = control.tenant("acme");
    // One connection: the one every session gets.
    let own = control.pool(1).await;
    let before: (u64, u64) =
        sqlx::query_as("SELECT @@SESSION.lock_wait_timeout, @@SESSION.innodb_lock_wait_timeout")
            .fetch_one(&own)
            .await
            .unwrap();
    let backend = MySqlBackend::new(own.clone(), control.control()).unwrap();
    let m = Migrator::builder(backend)
        .migrations(MigrationSet::registered_in("mysql::timeouts").unwrap())
        .timeouts(mtnt::Timeouts {
            lock: Some(Duration::from_millis(1500)),
            statement: None,
        })
        .build()
        .unwrap();
    m.create_tenant(&name(&acme)).await.unwrap();
    let seen: (u64, u64) = sqlx::query_as(&format!("SELECT lwt, ilwt FROM `{acme}`.seen"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seen, (2, 2));
    let after: (u64, u64) =
        sqlx::query_as("SELECT @@SESSION.lock_wait_timeout, @@SESSION.innodb_lock_wait_timeout")
            .fetch_one(&own)
            .await
            .unwrap();
    assert_eq!(after, before, "set back on release");

    own.close().await;
    drop(pool);
    control.cleanup().await;
}

// MySQL: a connection dropped without release (a cancelled run) is closed, so the server
// ends its `GET_LOCK`; a released one unlocks and goes back to the pool.
#[tokio::test]
async fn a_dropped_connection_ends_its_lock() {
    let control = TestControl::new("droplocked").await;
    let pool = control.pool(2).await;
    let acme = control.tenant("acme");
    let m = migrator(&control, fleet_set(ACCOUNTS)).await;
    m.create_tenant(&name(&acme)).await.unwrap();
    let record = m.tenants().await.unwrap().remove(0);
    let backend = MySqlBackend::new(pool.clone(), control.control()).unwrap();
    let target = mtnt::Target::Tenant(&record.tenant);

    let mut first = backend.connect(target).await.unwrap();
    assert!(first.try_lock().await.unwrap());
    let mut second = backend.connect(target).await.unwrap();
    assert!(!second.try_lock().await.unwrap(), "held by the first");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !second.try_lock().await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock outlived its connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.release().await;
    let mut third = backend.connect(target).await.unwrap();
    assert!(third.try_lock().await.unwrap(), "released");
    third.release().await;

    drop(pool);
    control.cleanup().await;
}
