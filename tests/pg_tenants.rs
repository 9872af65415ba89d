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

// ---------------------------------------------------------------------------------------
// A tenant dropped while a run waits for its lock (issue 11: the run used to recreate its
// schema, an orphan without a registry row).

mod waited {
    #[mtnt::migration(scope = "tenant", order = 2024_07_05_0001)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
            .await
    }

    pub mod v2 {
        #[mtnt::migration(scope = "tenant", order = 2024_07_05_0002)]
        async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE notes (id bigserial PRIMARY KEY)")
                .await
        }
    }
}

// PostgreSQL only: the drop is done by hand under the lock key older runners take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_dropped_while_a_run_waits_is_not_recreated() {
    let db = TestDb::create("waited").await;
    let pool = db.pool(4).await;
    let migrator = |prefix: &str| {
        Migrator::builder(PostgresBackend::new(pool.clone()))
            .migrations(MigrationSet::registered_in(prefix).unwrap())
            .build()
            .unwrap()
    };
    // `registered_in` takes a module prefix: the v1 set is the first migration alone.
    let v1 = Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(
            MigrationSet::new(
                MigrationSet::registered_in("pg_tenants::waited")
                    .unwrap()
                    .iter()
                    .filter(|m| m.order() == 2024_07_05_0001),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    v1.create_tenant(&name("acme")).await.unwrap();

    // Another session is dropping acme and holds its lock meanwhile.
    let mut dropper = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('mtnt'), hashtext('tenant:acme'))")
        .execute(&mut *dropper)
        .await
        .unwrap();
    let full = migrator("pg_tenants::waited");
    let run = tokio::spawn(async move { full.migrate(&MigrateOptions::new()).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    sqlx::raw_sql(
        "DROP SCHEMA acme CASCADE; DELETE FROM public.mtnt_tenants WHERE name = 'acme'; \
         SELECT pg_advisory_unlock_all()",
    )
    .execute(&mut *dropper)
    .await
    .unwrap();
    drop(dropper);

    let report = run.await.unwrap().unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 0, "{report:?}");
    assert_eq!(report.tenants_gone, [name("acme")], "{report:?}");
    assert!(
        !mtnt_test_support::postgres::schema_exists(&pool, "acme").await,
        "the dropped tenant's schema was recreated"
    );
    pool.close().await;
    db.drop_db().await;
}
