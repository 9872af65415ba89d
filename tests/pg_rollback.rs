//! `Migrator::rollback` on PostgreSQL: by steps, to an order, an unknown order, an
//! irreversible migration in the way (nothing may change), and a failing down function.

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{
    Error, MigrateOptions, MigrationSet, Migrator, PostgresBackend, RollbackTarget, TenantName,
};
use mtnt_test_support::postgres::{
    column_exists, registry_row, table_exists, tracking_row, tracking_rows, TestDb,
};
use sqlx::PgPool;

const ACCOUNTS: i64 = 2024_06_01_0001;
const AUDIT: i64 = 2024_06_01_0002;
const INVOICES: i64 = 2024_06_01_0003;
const TOTAL: i64 = 2024_06_01_0004;

mod rb {
    #[mtnt::migration(scope = "tenant", order = 2024_06_01_0001, down = drop_accounts)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
            .await
    }

    async fn drop_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("DROP TABLE accounts").await
    }

    // No down function: irreversible.
    #[mtnt::migration(scope = "tenant", order = 2024_06_01_0002)]
    async fn create_audit(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE audit (id bigserial PRIMARY KEY, what text)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_06_01_0003, down = drop_invoices)]
    async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE invoices (id bigserial PRIMARY KEY, account_id bigint REFERENCES accounts (id))")
            .await
    }

    async fn drop_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("DROP TABLE invoices").await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_06_01_0004, down = drop_total)]
    async fn add_invoice_total(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("ALTER TABLE invoices ADD COLUMN total bigint NOT NULL DEFAULT 0")
            .await
    }

    // Fails for the tenant `stuck`, after its DDL.
    async fn drop_total(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("ALTER TABLE invoices DROP COLUMN total")
            .await?;
        if ctx.tenant().unwrap().name.as_str() == "stuck" {
            ctx.execute("SELECT 1 / 0").await?;
        }
        Ok(())
    }
}

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

/// A database with the tenants created (at the newest migration).
async fn setup(prefix: &str, tenants: &[&str]) -> (TestDb, PgPool, Migrator) {
    let db = TestDb::create(prefix).await;
    let pool = db.pool(4).await;
    let migrator = Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(MigrationSet::registered_in("pg_rollback::rb").unwrap())
        .build()
        .unwrap();
    for t in tenants {
        migrator.create_tenant(&name(t)).await.unwrap();
    }
    (db, pool, migrator)
}

/// `(order, status)` of every tracking row of a schema.
async fn statuses(pool: &PgPool, schema: &str) -> Vec<(i64, String)> {
    tracking_rows(pool, schema)
        .await
        .into_iter()
        .map(|r| (r.migration_order, r.status))
        .collect()
}

fn all_completed() -> Vec<(i64, String)> {
    [ACCOUNTS, AUDIT, INVOICES, TOTAL]
        .into_iter()
        .map(|o| (o, "completed".to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_by_steps_and_to_an_order() {
    let (db, pool, migrator) = setup("rb_steps", &["acme", "globex"]).await;
    assert_eq!(statuses(&pool, "acme").await, all_completed());

    // One step: the newest migration is reverted.
    let report = migrator
        .rollback(&name("acme"), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.reverted, [(TOTAL, "add_invoice_total")]);
    assert!(!column_exists(&pool, "acme", "invoices", "total").await);
    let row = tracking_row(&pool, "acme", TOTAL).await.unwrap();
    assert_eq!(row.status, "pending");
    assert!(row.finished_at.is_some() && row.error.is_none());
    assert_eq!(
        registry_row(&pool, "acme").await.unwrap().applied_order,
        Some(INVOICES)
    );
    // The other tenant is untouched.
    assert!(column_exists(&pool, "globex", "invoices", "total").await);
    assert_eq!(
        registry_row(&pool, "globex").await.unwrap().applied_order,
        Some(TOTAL)
    );

    // To an order: everything newer than it is reverted, the one at it stays.
    let report = migrator
        .rollback(&name("acme"), RollbackTarget::To(AUDIT))
        .await
        .unwrap();
    assert_eq!(report.reverted, [(INVOICES, "create_invoices")]);
    assert!(!table_exists(&pool, "acme", "invoices").await);
    assert!(table_exists(&pool, "acme", "audit").await);
    assert_eq!(
        statuses(&pool, "acme").await,
        [
            (ACCOUNTS, "completed"),
            (AUDIT, "completed"),
            (INVOICES, "pending"),
            (TOTAL, "pending")
        ]
        .map(|(o, s)| (o, s.to_owned()))
    );
    assert_eq!(
        registry_row(&pool, "acme").await.unwrap().applied_order,
        Some(AUDIT)
    );

    // Rolling back to where it stands already reverts nothing.
    let report = migrator
        .rollback(&name("acme"), RollbackTarget::To(AUDIT))
        .await
        .unwrap();
    assert!(report.reverted.is_empty());

    let status = migrator.status(&[]).await.unwrap();
    assert_eq!(status.summary(), "1/2 tenants current, 1 behind, 0 failed");
    let acme = status
        .tenants
        .iter()
        .find(|t| t.tenant.as_str() == "acme")
        .unwrap();
    assert_eq!((acme.applied_order, acme.pending), (Some(AUDIT), 2));

    // Migrating again re-applies the reverted migrations.
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!((report.tenants_migrated, report.migrations_applied), (1, 2));
    assert!(column_exists(&pool, "acme", "invoices", "total").await);
    assert_eq!(statuses(&pool, "acme").await, all_completed());
    assert_eq!(
        registry_row(&pool, "acme").await.unwrap().applied_order,
        Some(TOTAL)
    );

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_an_unknown_order_or_tenant_is_refused() {
    let (db, pool, migrator) = setup("rb_unknown", &["acme"]).await;

    match migrator
        .rollback(&name("acme"), RollbackTarget::To(2099_01_01_0001))
        .await
    {
        Err(Error::UnknownOrder(order)) => assert_eq!(order, "2099_01_01_0001"),
        other => panic!("expected UnknownOrder, got {other:?}"),
    }
    match migrator
        .rollback(&name("nobody"), RollbackTarget::Steps(1))
        .await
    {
        Err(Error::UnknownTenant(tenant)) => assert_eq!(tenant, "nobody"),
        other => panic!("expected UnknownTenant, got {other:?}"),
    }
    assert_eq!(statuses(&pool, "acme").await, all_completed());
    assert!(column_exists(&pool, "acme", "invoices", "total").await);
    assert_eq!(
        registry_row(&pool, "acme").await.unwrap().applied_order,
        Some(TOTAL)
    );

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irreversible_migration_in_the_way_changes_nothing() {
    let (db, pool, migrator) = setup("rb_irrev", &["acme"]).await;

    // All the way down would pass create_audit, which has no down: refused up front,
    // although the two newer migrations could have been reverted.
    let error = migrator
        .rollback(&name("acme"), RollbackTarget::All)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Irreversible { .. }), "{error:?}");
    let message = error.to_string();
    for part in [
        "tenant acme",
        "2024_06_01_0002 create_audit",
        "nothing was changed",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
    assert!(
        column_exists(&pool, "acme", "invoices", "total").await,
        "a down function ran"
    );
    assert!(table_exists(&pool, "acme", "invoices").await);
    assert!(table_exists(&pool, "acme", "audit").await);
    assert_eq!(statuses(&pool, "acme").await, all_completed());
    assert_eq!(
        registry_row(&pool, "acme").await.unwrap().applied_order,
        Some(TOTAL)
    );

    // The same with steps.
    let error = migrator
        .rollback(&name("acme"), RollbackTarget::Steps(3))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Irreversible { .. }), "{error:?}");
    assert_eq!(statuses(&pool, "acme").await, all_completed());
    assert!(column_exists(&pool, "acme", "invoices", "total").await);

    // Down to the irreversible one is fine; one more step is refused.
    let report = migrator
        .rollback(&name("acme"), RollbackTarget::To(AUDIT))
        .await
        .unwrap();
    assert_eq!(
        report.reverted,
        [(TOTAL, "add_invoice_total"), (INVOICES, "create_invoices")]
    );
    let error = migrator
        .rollback(&name("acme"), RollbackTarget::Steps(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Irreversible { .. }), "{error:?}");
    assert!(table_exists(&pool, "acme", "audit").await);
    assert_eq!(
        tracking_row(&pool, "acme", AUDIT).await.unwrap().status,
        "completed"
    );
    assert_eq!(
        registry_row(&pool, "acme").await.unwrap().applied_order,
        Some(AUDIT)
    );

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_down_function_is_rolled_back() {
    let (db, pool, migrator) = setup("rb_downfail", &["stuck"]).await;

    let error = migrator
        .rollback(&name("stuck"), RollbackTarget::Steps(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Migration {
                reverting: true,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    for part in [
        "while reverting",
        "2024_06_01_0004 add_invoice_total",
        "tenant stuck",
        "division by zero",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
    // The down function's DDL was rolled back with its transaction; nothing else was reverted.
    assert!(column_exists(&pool, "stuck", "invoices", "total").await);
    assert_eq!(statuses(&pool, "stuck").await, all_completed());
    assert_eq!(
        registry_row(&pool, "stuck").await.unwrap().applied_order,
        Some(TOTAL)
    );

    pool.close().await;
    db.drop_db().await;
}
