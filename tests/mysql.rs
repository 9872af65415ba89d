//! The MySQL/MariaDB backend (one database per tenant) end to end, against the server named
//! by `MTNT_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`). Each test has its own
//! control database and tenant prefix, removed when it ends.

// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{
    ConnectOptions, Engine, Error, MigrateOptions, MigrationSet, MigrationStatus, Migrator,
    MySqlBackend, RollbackTarget, Tenancy, TenantName, TenantState,
};
use mtnt_test_support::mysql::{
    database_exists, execute, registry_row, table_exists, tracking_row, TestControl,
};
use sqlx::types::chrono::Utc;

const PLANS: i64 = 2024_01_01_0001;
const ACCOUNTS: i64 = 2024_01_01_0002;
const PROJECTS: i64 = 2024_01_01_0003;
const BACKFILL: i64 = 2024_01_01_0004;

/// The main set: a public migration and three reversible tenant migrations; `add_projects`
/// creates its table (DDL, committed at once on MySQL) and then fails in tenants whose
/// name ends in `_bad`.
mod fleet {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
    async fn create_plans(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute(
            "CREATE TABLE plans (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL)",
        )
        .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0002, down = drop_accounts)]
    async fn create_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE accounts (id BIGINT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(255) UNIQUE)").await
    }

    async fn drop_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE accounts").await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0003, down = drop_projects)]
    async fn add_projects(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE projects (id BIGINT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(255) NOT NULL)")
            .await?;
        if ctx.tenant().unwrap().name.as_str().ends_with("_bad") {
            return Err(mtnt::Error::other("bad tenants cannot have projects"));
        }
        Ok(())
    }

    async fn drop_projects(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE projects").await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0004, down = remove_admin)]
    async fn backfill_admin(ctx: &mut Ctx<'_>) -> Result<()> {
        let email = format!("admin@{}.example", ctx.tenant().unwrap().name);
        sqlx::query("INSERT INTO accounts (email) VALUES (?)")
            .bind(email)
            .execute(ctx.mysql()?)
            .await?;
        Ok(())
    }

    async fn remove_admin(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DELETE FROM accounts WHERE email LIKE 'admin@%'")
            .await
    }
}

/// An irreversible migration under a reversible one.
mod oneway {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "tenant", order = 2024_02_01_0001)]
    async fn create_ledger(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE ledger (id BIGINT PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_02_01_0002, down = drop_notes)]
    async fn create_notes(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE notes (id BIGINT PRIMARY KEY)")
            .await
    }

    async fn drop_notes(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE notes").await
    }
}

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

/// A migration whose down function drops its table and then fails.
mod downfail {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "tenant", order = 2024_04_01_0001, down = drop_tags)]
    async fn create_tags(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE tags (id BIGINT PRIMARY KEY)")
            .await
    }

    async fn drop_tags(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE tags").await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_04_01_0002, down = drop_labels)]
    async fn create_labels(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE labels (id BIGINT PRIMARY KEY)")
            .await
    }

    async fn drop_labels(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE labels").await?;
        Err(mtnt::Error::other("the down function gave up halfway"))
    }
}

/// A slow migration, so that two runs overlap.
mod slow {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "tenant", order = 2024_05_01_0001)]
    async fn create_events(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE events (id BIGINT AUTO_INCREMENT PRIMARY KEY, kind VARCHAR(32))")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_05_01_0002)]
    async fn seed_events(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DO SLEEP(0.3); INSERT INTO events (kind) VALUES ('seed')")
            .await
    }
}

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

/// The `fleet` migrations up to `to`.
fn fleet_set(to: i64) -> MigrationSet {
    let all = MigrationSet::registered_in("mysql::fleet").unwrap();
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

#[tokio::test]
async fn ten_tenants_migrate_and_a_failing_one_is_isolated_until_repaired() {
    let control = TestControl::new("fleet").await;
    let pool = control.pool(2).await;
    let bad = control.tenant("bad");
    let mut names: Vec<String> = (1..=9)
        .map(|i| control.tenant(&format!("acme{i:02}")))
        .collect();
    names.push(bad.clone());

    // Ten tenants at the first tenant migration, `bad` among them.
    let v1 = migrator(&control, fleet_set(ACCOUNTS)).await;
    for n in &names {
        v1.create_tenant(&name(n)).await.unwrap();
    }
    assert_eq!(v1.backend().tenant_count().await.unwrap(), 10);
    assert!(database_exists(&pool, control.control()).await);
    assert!(
        table_exists(&pool, control.control(), "plans").await,
        "the public migration ran in the control database"
    );
    for n in &names {
        assert!(table_exists(&pool, n, "accounts").await, "{n}");
    }

    // The full set: nine tenants get both new migrations, `bad` fails at PROJECTS.
    let v2 = migrator(&control, fleet_set(BACKFILL)).await;
    let before = Utc::now().timestamp() - 5;
    let report = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(
        report.public_applied, 0,
        "create_tenant applied the public migration already"
    );
    assert_eq!(report.tenants_total, 10);
    assert_eq!(report.tenants_migrated, 9);
    assert_eq!(report.migrations_applied, 18);
    assert_eq!(report.failures.len(), 1);
    let failure = &report.failures[0];
    assert_eq!(failure.tenant.as_str(), bad);
    let message = failure.error.to_string();
    assert!(
        message.contains("2024_01_01_0003 add_projects"),
        "{message}"
    );
    assert!(
        message.contains("bad tenants cannot have projects"),
        "{message}"
    );

    // The others are complete, with UTC timestamps and their data.
    let good = &names[6];
    for order in [ACCOUNTS, PROJECTS, BACKFILL] {
        let row = tracking_row(&pool, good, order).await.unwrap();
        assert_eq!(row.status, "completed", "{order}");
        let started = row.started_at.unwrap();
        let finished = row.finished_at.unwrap();
        assert!(started <= finished && finished <= Utc::now(), "{row:?}");
        assert!(
            order == ACCOUNTS || started.timestamp() >= before,
            "{row:?} is not UTC now"
        );
        assert!(row.duration_ms.is_some() && row.error.is_none(), "{row:?}");
    }
    let admins: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM `{good}`.accounts WHERE email = ?"
    ))
    .bind(format!("admin@{good}.example"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(admins, 1);

    // `bad`: the DDL stays (MySQL committed it), the row stays `started` with the error.
    assert!(table_exists(&pool, &bad, "projects").await);
    let row = tracking_row(&pool, &bad, PROJECTS).await.unwrap();
    assert_eq!(row.status, "started");
    assert!(
        row.error
            .as_deref()
            .unwrap()
            .contains("bad tenants cannot have projects"),
        "{row:?}"
    );
    assert!(row.finished_at.is_some());
    assert_eq!(
        tracking_row(&pool, &bad, ACCOUNTS).await.unwrap().status,
        "completed"
    );
    assert!(tracking_row(&pool, &bad, BACKFILL).await.is_none());
    let registry = registry_row(&pool, control.control(), &bad).await.unwrap();
    assert_eq!(
        (
            registry.state.as_str(),
            registry.applied_order,
            registry.failed_order
        ),
        ("active", Some(ACCOUNTS), Some(PROJECTS))
    );
    assert!(registry
        .last_error
        .unwrap()
        .contains("bad tenants cannot have projects"));

    // Status shows the failure.
    let status = v2.status(&[]).await.unwrap();
    assert_eq!(status.summary(), "9/10 tenants current, 0 behind, 1 failed");
    assert_eq!(status.public.applied_order, Some(PLANS));
    let bad_status = status
        .tenants
        .iter()
        .find(|t| t.tenant.as_str() == bad)
        .unwrap();
    assert_eq!(
        (bad_status.applied_order, bad_status.pending),
        (Some(ACCOUNTS), 2)
    );
    let failed = bad_status.failed.as_ref().unwrap();
    assert_eq!(
        (failed.order, failed.name),
        (PROJECTS, Some("add_projects"))
    );
    assert!(failed
        .error
        .as_deref()
        .unwrap()
        .contains("bad tenants cannot have projects"));

    // The next run refuses `bad` until someone decides, and says how.
    let again = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((again.tenants_current, again.failures.len()), (9, 1));
    let error = &again.failures[0].error;
    assert!(matches!(error, Error::Interrupted { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "repair --tenant {bad} --order {PROJECTS} --mark completed"
        )),
        "{message}"
    );
    assert!(message.contains("--mark pending"), "{message}");

    // The table is there: mark it completed; the rest then runs.
    v2.mark(Some(&name(&bad)), PROJECTS, MigrationStatus::Completed)
        .await
        .unwrap();
    let registry = registry_row(&pool, control.control(), &bad).await.unwrap();
    assert_eq!(
        (
            registry.applied_order,
            registry.failed_order,
            registry.last_error
        ),
        (Some(PROJECTS), None, None)
    );
    let fixed = v2
        .migrate(&MigrateOptions::new().tenants([name(&bad)]))
        .await
        .unwrap();
    assert!(fixed.is_success(), "{:?}", fixed.failures);
    assert_eq!(fixed.migrations_applied, 1);
    assert_eq!(
        v2.status(&[]).await.unwrap().summary(),
        "10/10 tenants current, 0 behind, 0 failed"
    );
    assert_eq!(v2.tenants().await.unwrap().len(), 10);

    drop(pool);
    control.cleanup().await;
}

#[tokio::test]
async fn rollback_by_steps_and_to_an_order() {
    let control = TestControl::new("rollback").await;
    let pool = control.pool(2).await;
    let acme = control.tenant("acme");
    let m = migrator(&control, fleet_set(BACKFILL)).await;
    m.create_tenant(&name(&acme)).await.unwrap();

    let one = m
        .rollback(&name(&acme), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(one.reverted, vec![(BACKFILL, "backfill_admin")]);
    let admins: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM `{acme}`.accounts"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(admins, 0, "the backfill's down removed its row");
    let row = tracking_row(&pool, &acme, BACKFILL).await.unwrap();
    assert_eq!(row.status, "pending");
    assert!(row.finished_at.is_some() && row.error.is_none(), "{row:?}");

    let to = m
        .rollback(&name(&acme), RollbackTarget::To(ACCOUNTS))
        .await
        .unwrap();
    assert_eq!(to.reverted, vec![(PROJECTS, "add_projects")]);
    assert!(!table_exists(&pool, &acme, "projects").await);
    assert!(table_exists(&pool, &acme, "accounts").await);
    assert_eq!(
        tracking_row(&pool, &acme, PROJECTS).await.unwrap().status,
        "pending"
    );

    let status = m.status(&[name(&acme)]).await.unwrap();
    assert_eq!(
        (status.tenants[0].applied_order, status.tenants[0].pending),
        (Some(ACCOUNTS), 2)
    );
    assert_eq!(status.summary(), "0/1 tenants current, 1 behind, 0 failed");

    // Migrating brings it back.
    let back = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(back.is_success(), "{:?}", back.failures);
    assert_eq!(back.migrations_applied, 2);
    assert!(table_exists(&pool, &acme, "projects").await);
    assert_eq!(
        m.status(&[]).await.unwrap().summary(),
        "1/1 tenants current, 0 behind, 0 failed"
    );

    drop(pool);
    control.cleanup().await;
}

#[tokio::test]
async fn irreversible_migration_refuses_rollback_and_changes_nothing() {
    let control = TestControl::new("oneway").await;
    let pool = control.pool(2).await;
    let acme = control.tenant("acme");
    let m = migrator(
        &control,
        MigrationSet::registered_in("mysql::oneway").unwrap(),
    )
    .await;
    m.create_tenant(&name(&acme)).await.unwrap();

    for how_far in [RollbackTarget::Steps(2), RollbackTarget::All] {
        let error = m.rollback(&name(&acme), how_far).await.unwrap_err();
        assert!(matches!(error, Error::Irreversible { .. }), "{error}");
        assert!(
            error.to_string().contains("2024_02_01_0001 create_ledger"),
            "{error}"
        );
        assert!(
            table_exists(&pool, &acme, "notes").await,
            "nothing was reverted"
        );
        assert_eq!(
            tracking_row(&pool, &acme, 2024_02_01_0002)
                .await
                .unwrap()
                .status,
            "completed"
        );
    }

    // One step stops above the irreversible migration.
    let report = m
        .rollback(&name(&acme), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.reverted, vec![(2024_02_01_0002, "create_notes")]);
    assert!(!table_exists(&pool, &acme, "notes").await);
    assert!(table_exists(&pool, &acme, "ledger").await);

    drop(pool);
    control.cleanup().await;
}

#[tokio::test]
async fn failing_create_leaves_no_database_and_no_registry_row() {
    let control = TestControl::new("create").await;
    let pool = control.pool(2).await;
    let (first, bad, stray) = (
        control.tenant("first"),
        control.tenant("bad"),
        control.tenant("stray"),
    );
    let m = migrator(&control, fleet_set(BACKFILL)).await;
    m.create_tenant(&name(&first)).await.unwrap();

    let error = m.create_tenant(&name(&bad)).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("bad tenants cannot have projects"),
        "{error}"
    );
    assert!(
        !database_exists(&pool, &bad).await,
        "the database was left behind"
    );
    assert!(registry_row(&pool, control.control(), &bad).await.is_none());
    let backend = m.backend();
    assert!(backend
        .tenant_records(&[name(&bad)])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(backend.tenant_count().await.unwrap(), 1);

    // Created tenants are active at the newest migration; names are taken once.
    let record = backend
        .tenant_records(&[name(&first)])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (record.state, record.applied_order),
        (TenantState::Active, Some(BACKFILL))
    );
    assert_eq!(record.tenant.schema, first);
    assert!(record.created_at <= Utc::now());
    let error = m.create_tenant(&name(&first)).await.unwrap_err();
    assert!(matches!(error, Error::TenantExists(_)), "{error}");
    assert!(database_exists(&pool, &first).await);

    // A stray database with a tenant's name is never touched.
    execute(
        &pool,
        &format!("CREATE DATABASE `{stray}`; CREATE TABLE `{stray}`.keep (id INT)"),
    )
    .await;
    let error = m.create_tenant(&name(&stray)).await.unwrap_err();
    assert!(error.to_string().contains("adopt"), "{error}");
    assert!(registry_row(&pool, control.control(), &stray)
        .await
        .is_none());
    assert!(table_exists(&pool, &stray, "keep").await);

    // Dropping removes the database and the row.
    backend.drop_tenant(&record.tenant).await.unwrap();
    assert!(!database_exists(&pool, &first).await);
    assert_eq!(backend.tenant_count().await.unwrap(), 0);

    drop(pool);
    control.cleanup().await;
}

#[tokio::test]
async fn checksum_drift_is_refused_until_repaired() {
    let control = TestControl::new("checksum").await;
    let pool = control.pool(2).await;
    let (acme, beta) = (control.tenant("acme"), control.tenant("beta"));
    let m = migrator(&control, fleet_set(BACKFILL)).await;
    m.create_tenant(&name(&acme)).await.unwrap();
    m.create_tenant(&name(&beta)).await.unwrap();

    execute(&pool, &format!("UPDATE `{acme}`.mtnt_migrations SET checksum = 'tampered' WHERE migration_order = {ACCOUNTS}"))
        .await;
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].tenant.as_str(), acme);
    let error = &report.failures[0].error;
    assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error}");
    assert!(
        error.to_string().contains("recorded checksum tampered"),
        "{error}"
    );
    let error = m
        .rollback(&name(&acme), RollbackTarget::Steps(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error}");
    assert_eq!(
        tracking_row(&pool, &acme, BACKFILL).await.unwrap().status,
        "completed",
        "nothing was rolled back"
    );

    // The public tracking table is checked too.
    execute(
        &pool,
        &format!(
            "UPDATE `{}`.mtnt_migrations SET checksum = 'edited' WHERE migration_order = {PLANS}",
            control.control()
        ),
    )
    .await;
    let error = m.migrate(&MigrateOptions::new()).await.unwrap_err();
    assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error}");
    assert!(error.to_string().contains("the public schema"), "{error}");

    assert_eq!(m.repair_checksums(&[]).await.unwrap(), 2);
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.tenants_current, 2);
    assert_eq!(m.repair_checksums(&[]).await.unwrap(), 0);

    drop(pool);
    control.cleanup().await;
}

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

#[tokio::test]
async fn adopt_registers_existing_databases_with_a_baseline() {
    let control = TestControl::new("adopt").await;
    let pool = control.pool(2).await;
    let (a, b) = (control.tenant("legacy-a"), control.tenant("legacy-b"));
    let invalid = control.tenant("Legacy_c");
    for db in [&a, &b, &invalid] {
        execute(
            &pool,
            &format!("CREATE DATABASE `{db}`; CREATE TABLE `{db}`.accounts (id BIGINT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(255) UNIQUE)"),
        )
        .await;
    }
    let m = migrator(&control, fleet_set(BACKFILL)).await;
    let pattern = format!("{}%egacy%", control.tenant_prefix().replace('_', "\\_"));
    let (adopted, skipped) = m.adopt(&pattern, Some(ACCOUNTS)).await.unwrap();
    let adopted: Vec<&str> = adopted.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(adopted, [a.as_str(), b.as_str()]);
    assert_eq!(skipped, [invalid]);

    let records = m.tenants().await.unwrap();
    assert_eq!(records.len(), 2);
    assert!(records
        .iter()
        .all(|r| r.state == TenantState::Active && r.applied_order == Some(ACCOUNTS)));
    assert_eq!(
        tracking_row(&pool, &a, ACCOUNTS).await.unwrap().status,
        "completed"
    );

    // Registered databases are not adopted twice; the baseline is not re-run.
    let (again, _) = m.adopt(&pattern, Some(ACCOUNTS)).await.unwrap();
    assert!(again.is_empty());
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 4);
    assert!(table_exists(&pool, &a, "projects").await);
    assert_eq!(
        m.status(&[]).await.unwrap().summary(),
        "2/2 tenants current, 0 behind, 0 failed"
    );

    drop(pool);
    control.cleanup().await;
}

#[tokio::test]
async fn failed_down_stays_started_and_blocks_further_rollback() {
    let control = TestControl::new("downfail").await;
    let pool = control.pool(2).await;
    let acme = control.tenant("acme");
    let m = migrator(
        &control,
        MigrationSet::registered_in("mysql::downfail").unwrap(),
    )
    .await;
    m.create_tenant(&name(&acme)).await.unwrap();

    let error = m
        .rollback(&name(&acme), RollbackTarget::Steps(1))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the down function gave up halfway"),
        "{error}"
    );
    assert!(
        !table_exists(&pool, &acme, "labels").await,
        "MySQL committed the DROP"
    );
    let row = tracking_row(&pool, &acme, 2024_04_01_0002).await.unwrap();
    assert_eq!(row.status, "started");
    assert!(row.error.unwrap().contains("gave up halfway"));
    let registry = registry_row(&pool, control.control(), &acme).await.unwrap();
    assert_eq!(registry.failed_order, Some(2024_04_01_0002));
    assert_eq!(
        m.status(&[]).await.unwrap().summary(),
        "0/1 tenants current, 0 behind, 1 failed"
    );

    // Neither a further rollback nor a migrate goes past the half-reverted migration.
    let error = m
        .rollback(&name(&acme), RollbackTarget::Steps(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Interrupted { .. }), "{error}");
    assert!(
        table_exists(&pool, &acme, "tags").await,
        "the older migration was not reverted"
    );
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(
        matches!(report.failures[0].error, Error::Interrupted { .. }),
        "{:?}",
        report.failures
    );

    // The table is gone: mark it pending, and migrate brings it back.
    m.mark(
        Some(&name(&acme)),
        2024_04_01_0002,
        MigrationStatus::Pending,
    )
    .await
    .unwrap();
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert!(table_exists(&pool, &acme, "labels").await);
    assert_eq!(
        m.status(&[]).await.unwrap().summary(),
        "1/1 tenants current, 0 behind, 0 failed"
    );

    drop(pool);
    control.cleanup().await;
}

#[tokio::test]
async fn one_connection_serves_every_tenant_in_turn() {
    // MySQL binds a prepared statement to the database that was current when it was
    // prepared: a reused connection must not run one tenant's cached statement in another.
    let control = TestControl::new("oneconn").await;
    let pool = control.pool(2).await;
    let (a, b) = (control.tenant("a"), control.tenant("b"));
    let mut options = ConnectOptions::default();
    options.max_connections = 1;
    let backend = mtnt::connect(&control.url, &options).await.unwrap();
    let v1 = Migrator::builder_boxed(backend)
        .migrations(fleet_set(PROJECTS))
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
    assert_eq!(report.migrations_applied, 2);
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

#[tokio::test]
async fn concurrent_runs_on_one_tenant_take_turns() {
    let control = TestControl::new("concurrent").await;
    let pool = control.pool(2).await;
    let acme = control.tenant("acme");
    let all = MigrationSet::registered_in("mysql::slow").unwrap();
    let v1 = migrator(&control, MigrationSet::new(all.iter().take(1)).unwrap()).await;
    v1.create_tenant(&name(&acme)).await.unwrap();

    // Two deploys at once: one applies the slow migration, the other waits for its lock
    // and then finds nothing to do (instead of seeing a `started` row, or running it twice).
    let first = migrator(&control, all.clone()).await;
    let second = migrator(&control, all).await;
    let options = MigrateOptions::new();
    let (a, b) = tokio::join!(first.migrate(&options), second.migrate(&options));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.is_success() && b.is_success(),
        "{:?} {:?}",
        a.failures,
        b.failures
    );
    assert_eq!(a.migrations_applied + b.migrations_applied, 1);
    let seeds: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM `{acme}`.events"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seeds, 1);

    drop(pool);
    control.cleanup().await;
}

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
