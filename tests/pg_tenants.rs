//! A PostgreSQL control schema other than `public`. Tenant creation (all or nothing,
//! duplicate, hostile and squatted names, non-transactional migrations) and `adopt` are
//! proven on every engine by `tests/behaviour.rs`.
#![cfg(feature = "postgres")]
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{MigrateOptions, MigrationSet, Migrator, PostgresBackend, TenantName};
use mtnt_test_support::postgres::{table_exists, TestDb};

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

// ---------------------------------------------------------------------------------------
// A control schema other than `public`.

mod control {
    #[mtnt::migration(scope = "public", order = 2024_07_04_0001)]
    async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute(
            "CREATE TABLE plans (id bigserial PRIMARY KEY); INSERT INTO plans DEFAULT VALUES",
        )
        .await
    }

    // Finds the control schema's `plans` through the search path.
    #[mtnt::migration(scope = "tenant", order = 2024_07_04_0002)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, plan_id bigint REFERENCES plans (id))")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_07_04_0003)]
    async fn default_plan(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("INSERT INTO accounts (plan_id) SELECT min(id) FROM plans")
            .await
    }
}

// PostgreSQL only: the control schema is a PostgreSQL schema, on the tenants' search path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_control_schema_is_on_the_tenant_search_path() {
    let db = TestDb::create("control").await;
    let pool = db.pool(4).await;
    let migrator = || {
        Migrator::builder(
            PostgresBackend::new(pool.clone())
                .with_control_schema("ctl")
                .unwrap(),
        )
        .migrations(MigrationSet::registered_in("pg_tenants::control").unwrap())
        .build()
        .unwrap()
    };

    // Created at once ...
    migrator().create_tenant(&name("acme")).await.unwrap();
    assert!(table_exists(&pool, "ctl", "plans").await);
    assert!(table_exists(&pool, "ctl", "mtnt_tenants").await);
    assert!(!table_exists(&pool, "public", "plans").await);
    assert!(!table_exists(&pool, "public", "mtnt_tenants").await);
    let plan: Option<i64> = sqlx::query_scalar("SELECT plan_id FROM acme.accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(plan.is_some());

    // ... and migrated step by step: the same search path.
    let first = Migrator::builder(
        PostgresBackend::new(pool.clone())
            .with_control_schema("ctl")
            .unwrap(),
    )
    .migrations(
        MigrationSet::new(
            migrator()
                .migrations()
                .iter()
                .filter(|m| m.order() <= 2024_07_04_0002),
        )
        .unwrap(),
    )
    .build()
    .unwrap();
    first.create_tenant(&name("globex")).await.unwrap();
    let report = migrator().migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 1);
    let plan: Option<i64> = sqlx::query_scalar("SELECT plan_id FROM globex.accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(plan.is_some());

    let applied: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT applied_order FROM ctl.mtnt_tenants ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(applied, [Some(2024_07_04_0003), Some(2024_07_04_0003)]);

    pool.close().await;
    db.drop_db().await;
}
