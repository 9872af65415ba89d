//! How many of a tenant's pending migrations share a transaction on PostgreSQL
//! (`Transactions`): per tenant by default, so that a failure leaves the tenant exactly
//! where it was; per migration on request; split by a migration that runs outside a
//! transaction. SQLite's grouping is tested in `tests/sqlite.rs`; MySQL's DDL commits
//! by itself, so it never groups migrations. Every test works in its own database.
#![cfg(feature = "postgres")]
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{Error, MigrateOptions, MigrationSet, Migrator, PostgresBackend, Transactions};
use mtnt_test_support::create_tenants;
use mtnt_test_support::postgres::{
    registry_row, table_exists, tracking_row, tracking_rows, TestDb,
};
use sqlx::PgPool;

const BASE: i64 = 2024_07_01_0001;
const NOTES: i64 = 2024_07_01_0002;
const INDEX: i64 = 2024_07_01_0003;
const TAGS: i64 = 2024_07_01_0004;

mod upgrade {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_07_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)")
                .await
        }
    }

    // Records the lock timeout it runs with: its own, from the attribute.
    #[mtnt::migration(scope = "tenant", order = 2024_07_01_0002, lock_timeout = "2s")]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute(
            "CREATE TABLE notes (id bigserial PRIMARY KEY, lock_timeout text); \
             INSERT INTO notes (lock_timeout) SELECT current_setting('lock_timeout')",
        )
        .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_07_01_0003)]
    async fn index_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE INDEX accounts_email ON accounts (email)")
            .await?;
        if ctx.tenant().unwrap().name.as_str().ends_with("bad") {
            ctx.execute("SELECT 1 / 0").await?;
        }
        Ok(())
    }

    // Records the default lock timeout, set again after the migration before it.
    #[mtnt::migration(scope = "tenant", order = 2024_07_01_0004)]
    async fn create_tags(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute(
            "CREATE TABLE tags (id bigserial PRIMARY KEY); \
             INSERT INTO notes (lock_timeout) SELECT current_setting('lock_timeout')",
        )
        .await
    }
}

fn migrator(pool: &PgPool, prefix: &str, transactions: Transactions) -> Migrator {
    Migrator::builder(PostgresBackend::new(pool.clone()))
        .transactions(transactions)
        .migrations(MigrationSet::registered_in(prefix).unwrap())
        .build()
        .unwrap()
}

/// Creates `good` and `bad` at v1, then upgrades both with three pending migrations, the
/// second of which fails for `bad`.
async fn upgrade(pool: &PgPool, transactions: Transactions) -> mtnt::MigrateReport {
    let v1 = migrator(pool, "pg_transactions::upgrade::v1", transactions);
    create_tenants(&v1, &["good", "bad"]).await;
    migrator(pool, "pg_transactions::upgrade", transactions)
        .migrate(&MigrateOptions::new())
        .await
        .unwrap()
}

async fn assert_good_upgraded(pool: &PgPool) {
    assert!(table_exists(pool, "good", "tags").await);
    let rows = tracking_rows(pool, "good").await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.migration_order, r.status.as_str()))
            .collect::<Vec<_>>(),
        [
            (BASE, "completed"),
            (NOTES, "completed"),
            (INDEX, "completed"),
            (TAGS, "completed")
        ]
    );
    // Each row has its own times, in the order the migrations ran.
    for pair in rows[1..].windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(
            before.finished_at.unwrap() <= after.started_at.unwrap(),
            "{before:?} {after:?}"
        );
        assert!(before.started_at.unwrap() <= before.finished_at.unwrap());
    }
    let timeouts: Vec<String> =
        sqlx::query_scalar("SELECT lock_timeout FROM good.notes ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(timeouts, ["2s", "5s"]);
    let registry = registry_row(pool, "good").await.unwrap();
    assert_eq!(
        (registry.applied_order, registry.failed_order),
        (Some(TAGS), None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_a_failure_leaves_the_tenant_where_it_was() {
    let db = TestDb::create("tx_tenant").await;
    let pool = db.pool(4).await;
    let report = upgrade(&pool, Transactions::PerTenant).await;
    assert_eq!((report.tenants_migrated, report.migrations_applied), (1, 3));
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].tenant.as_str(), "bad");
    let message = report.failures[0].error.to_string();
    assert!(
        message.contains("2024_07_01_0003 index_accounts") && message.contains("division by zero"),
        "{message}"
    );
    assert!(matches!(report.failures[0].error, Error::Migration { .. }));
    assert_good_upgraded(&pool).await;

    // bad: the migration before the failed one was undone with it.
    assert!(!table_exists(&pool, "bad", "notes").await);
    assert!(tracking_row(&pool, "bad", NOTES).await.is_none());
    let failed = tracking_row(&pool, "bad", INDEX).await.unwrap();
    assert_eq!(failed.status, "failed");
    assert!(failed.error.unwrap().contains("division by zero"));
    let registry = registry_row(&pool, "bad").await.unwrap();
    assert_eq!(
        (registry.applied_order, registry.failed_order),
        (Some(BASE), Some(INDEX))
    );

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_migration_a_failure_keeps_the_migrations_before_it() {
    let db = TestDb::create("tx_migration").await;
    let pool = db.pool(4).await;
    let report = upgrade(&pool, Transactions::PerMigration).await;
    assert_eq!((report.tenants_migrated, report.migrations_applied), (1, 3));
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_good_upgraded(&pool).await;

    assert!(table_exists(&pool, "bad", "notes").await);
    assert_eq!(
        tracking_row(&pool, "bad", NOTES).await.unwrap().status,
        "completed"
    );
    assert_eq!(
        tracking_row(&pool, "bad", INDEX).await.unwrap().status,
        "failed"
    );
    assert!(!table_exists(&pool, "bad", "tags").await);
    let registry = registry_row(&pool, "bad").await.unwrap();
    assert_eq!(
        (registry.applied_order, registry.failed_order),
        (Some(NOTES), Some(INDEX))
    );

    pool.close().await;
    db.drop_db().await;
}

mod split {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_08_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_08_01_0002)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id bigserial PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_08_01_0003, transaction = false)]
    async fn index_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_08_01_0004)]
    async fn create_tags(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE tags (id bigserial PRIMARY KEY)")
            .await?;
        if ctx.tenant().unwrap().name.as_str().ends_with("bad") {
            ctx.execute("SELECT 1 / 0").await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_outside_a_transaction_splits_the_upgrade() {
    let db = TestDb::create("tx_split").await;
    let pool = db.pool(4).await;
    let v1 = migrator(&pool, "pg_transactions::split::v1", Transactions::PerTenant);
    create_tenants(&v1, &["bad"]).await;
    let report = migrator(&pool, "pg_transactions::split", Transactions::PerTenant)
        .migrate(&MigrateOptions::new())
        .await
        .unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    // The migrations before the non-transactional one committed, and it did; the group
    // after it failed as a whole.
    for (order, status) in [
        (2024_08_01_0002, "completed"),
        (2024_08_01_0003, "completed"),
        (2024_08_01_0004, "failed"),
    ] {
        assert_eq!(
            tracking_row(&pool, "bad", order).await.unwrap().status,
            status,
            "{order}"
        );
    }
    assert!(table_exists(&pool, "bad", "notes").await);
    assert!(!table_exists(&pool, "bad", "tags").await);
    assert_eq!(
        registry_row(&pool, "bad").await.unwrap().applied_order,
        Some(2024_08_01_0003)
    );

    pool.close().await;
    db.drop_db().await;
}

mod slow_failure {
    #[mtnt::migration(scope = "tenant", order = 2024_09_01_0001, transaction = false)]
    async fn slow_then_fails(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("SELECT pg_sleep(0.3)").await?;
        ctx.execute("SELECT 1 / 0").await
    }
}

/// A migration outside a transaction that fails keeps the start of its attempt: the row
/// says when it began, and when it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_row_keeps_the_start_of_its_attempt() {
    let db = TestDb::create("tx_started").await;
    let pool = db.pool(4).await;
    sqlx::query("CREATE SCHEMA slow")
        .execute(&pool)
        .await
        .unwrap();
    let m = migrator(
        &pool,
        "pg_transactions::slow_failure",
        Transactions::PerTenant,
    );
    m.adopt("slow", None).await.unwrap();
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    let row = tracking_row(&pool, "slow", 2024_09_01_0001).await.unwrap();
    assert_eq!(row.status, "started");
    assert!(row.error.unwrap().contains("division by zero"));
    let took = row.finished_at.unwrap() - row.started_at.unwrap();
    assert!(took.num_milliseconds() >= 250, "{took:?}");

    pool.close().await;
    db.drop_db().await;
}
