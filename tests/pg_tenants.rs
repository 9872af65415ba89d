//! Tenant life cycle on PostgreSQL: `create_tenant` (all or nothing, duplicates, hostile
//! names, squatted schemas, a non-transactional migration, a custom control schema) and
//! `adopt` of hand-made schemas.

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{Error, MigrateOptions, MigrationSet, Migrator, PostgresBackend, TenantName};
use mtnt_test_support::postgres::{
    registry_row, registry_rows, schema_exists, table_exists, tracking_row, tracking_rows, TestDb,
};
use sqlx::PgPool;

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

fn migrator(pool: &PgPool, prefix: &str) -> Migrator {
    Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(MigrationSet::registered_in(prefix).unwrap())
        .build()
        .unwrap()
}

async fn index_exists(pool: &PgPool, schema: &str, index: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = $1 AND indexname = $2)",
    )
    .bind(schema)
    .bind(index)
    .fetch_one(pool)
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// create_tenant: all or nothing.

mod atomic {
    #[mtnt::migration(scope = "public", order = 2024_07_01_0001)]
    async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute(
            "CREATE TABLE plans (id bigserial PRIMARY KEY); INSERT INTO plans DEFAULT VALUES",
        )
        .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_07_01_0002)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, plan_id bigint REFERENCES plans (id))")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_07_01_0003)]
    async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE invoices (id bigserial PRIMARY KEY); SELECT pg_sleep(0.05)")
            .await?;
        if ctx.tenant().unwrap().name.as_str() == "doomed" {
            ctx.execute("INSERT INTO invoices (id) VALUES ('not a number')")
                .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tenant_is_all_or_nothing() {
    let db = TestDb::create("create").await;
    let pool = db.pool(4).await;
    let migrator = migrator(&pool, "pg_tenants::atomic");

    let acme = migrator.create_tenant(&name("acme")).await.unwrap();
    assert_eq!((acme.name.as_str(), acme.schema.as_str()), ("acme", "acme"));
    assert!(table_exists(&pool, "acme", "accounts").await);
    assert!(table_exists(&pool, "acme", "invoices").await);
    let rows = tracking_rows(&pool, "acme").await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.migration_order, r.status.as_str()))
            .collect::<Vec<_>>(),
        [
            (2024_07_01_0002, "completed"),
            (2024_07_01_0003, "completed")
        ]
    );
    for row in &rows {
        let migration = migrator.migrations().get(row.migration_order).unwrap();
        assert_eq!(row.checksum, migration.checksum());
        assert!(
            row.started_at.is_some()
                && row.finished_at >= row.started_at
                && row.duration_ms.is_some()
        );
    }
    // The timestamps time each migration: create_invoices sleeps 50 ms after create_accounts ended.
    let (accounts, invoices) = (&rows[0], &rows[1]);
    assert!(invoices.duration_ms.unwrap() >= 50, "{invoices:?}");
    let took = invoices.finished_at.unwrap() - invoices.started_at.unwrap();
    assert!(
        took.num_milliseconds() >= 50,
        "finished_at - started_at = {took} for {invoices:?}"
    );
    assert!(
        accounts.finished_at.unwrap() <= invoices.started_at.unwrap(),
        "{accounts:?} {invoices:?}"
    );
    let record = registry_row(&pool, "acme").await.unwrap();
    assert_eq!(
        (record.state.as_str(), record.applied_order),
        ("active", Some(2024_07_01_0003))
    );
    // The public migration ran first, once.
    assert_eq!(
        tracking_row(&pool, "public", 2024_07_01_0001)
            .await
            .unwrap()
            .status,
        "completed"
    );

    // A tenant whose migration fails leaves no schema and no registry row.
    let error = migrator.create_tenant(&name("doomed")).await.unwrap_err();
    assert!(matches!(error, Error::Migration { .. }), "{error:?}");
    let message = error.to_string();
    for part in [
        "tenant doomed",
        "2024_07_01_0003 create_invoices",
        "invalid input syntax",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
    assert!(
        !schema_exists(&pool, "doomed").await,
        "the failed tenant's schema is left"
    );
    assert!(
        registry_row(&pool, "doomed").await.is_none(),
        "the failed tenant's registry row is left"
    );
    // ... and can be tried again (nothing half-made blocks the name).
    let again = migrator.create_tenant(&name("doomed")).await.unwrap_err();
    assert!(matches!(again, Error::Migration { .. }), "{again:?}");
    assert!(!schema_exists(&pool, "doomed").await);

    assert_eq!(registry_rows(&pool).await.len(), 1);
    let plans: i64 = sqlx::query_scalar("SELECT count(*) FROM public.plans")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(plans, 1);

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_hostile_and_squatted_names_are_refused() {
    let db = TestDb::create("names").await;
    let pool = db.pool(4).await;
    let migrator = migrator(&pool, "pg_tenants::atomic");

    migrator.create_tenant(&name("acme")).await.unwrap();
    sqlx::query("INSERT INTO acme.accounts DEFAULT VALUES")
        .execute(&pool)
        .await
        .unwrap();
    match migrator.create_tenant(&name("acme")).await {
        Err(Error::TenantExists(n)) => assert_eq!(n, "acme"),
        other => panic!("expected TenantExists, got {other:?}"),
    }
    // The existing tenant is untouched.
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM acme.accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(accounts, 1);
    assert_eq!(registry_row(&pool, "acme").await.unwrap().state, "active");

    // Hostile names never become a TenantName, so no SQL can be built from them.
    for hostile in [
        "x\"; DROP SCHEMA public; --",
        "acme'; DROP TABLE mtnt_tenants; --",
        "a b",
        "Acme",
        "public",
        "pg_toast",
        "mtnt_tenants",
        "",
    ] {
        match TenantName::new(hostile) {
            Err(Error::InvalidTenantName { name, .. }) => assert_eq!(name, hostile),
            other => panic!("{hostile:?} was accepted: {other:?}"),
        }
        assert!(hostile.parse::<TenantName>().is_err());
    }
    assert!(schema_exists(&pool, "public").await);
    assert!(table_exists(&pool, "public", "mtnt_tenants").await);
    assert_eq!(registry_rows(&pool).await.len(), 1);

    // A schema that exists but is not a registered tenant is not taken over.
    sqlx::raw_sql("CREATE SCHEMA squatter; CREATE TABLE squatter.keep (id int); INSERT INTO squatter.keep VALUES (7)")
        .execute(&pool)
        .await
        .unwrap();
    let error = migrator.create_tenant(&name("squatter")).await.unwrap_err();
    assert!(matches!(error, Error::Invalid(_)), "{error:?}");
    assert!(error.to_string().contains("tenant adopt"), "{error}");
    assert!(registry_row(&pool, "squatter").await.is_none());
    assert!(!table_exists(&pool, "squatter", "mtnt_migrations").await);
    let kept: i32 = sqlx::query_scalar("SELECT id FROM squatter.keep")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 7);

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// create_tenant with a non-transactional migration in the list.

mod create_nontx {
    #[mtnt::migration(scope = "tenant", order = 2024_07_02_0001)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)")
            .await
    }

    // CONCURRENTLY fails inside a transaction block, so this proves it runs outside one.
    #[mtnt::migration(scope = "tenant", order = 2024_07_02_0002, transaction = false)]
    async fn index_emails(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE INDEX CONCURRENTLY accounts_email ON accounts (email)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_07_02_0003)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id bigserial PRIMARY KEY)")
            .await?;
        if ctx.tenant().unwrap().name.as_str() == "doomed" {
            ctx.execute("SELECT 1 / 0").await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tenant_with_a_non_transactional_migration() {
    let db = TestDb::create("create_nontx").await;
    let pool = db.pool(4).await;
    let migrator = migrator(&pool, "pg_tenants::create_nontx");

    migrator.create_tenant(&name("acme")).await.unwrap();
    assert!(index_exists(&pool, "acme", "accounts_email").await);
    assert!(table_exists(&pool, "acme", "notes").await);
    let rows = tracking_rows(&pool, "acme").await;
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.status == "completed" && r.finished_at.is_some()),
        "{rows:?}"
    );
    let record = registry_row(&pool, "acme").await.unwrap();
    assert_eq!(
        (record.state.as_str(), record.applied_order),
        ("active", Some(2024_07_02_0003))
    );

    // A failure after the non-transactional step still removes everything of the tenant.
    let error = migrator.create_tenant(&name("doomed")).await.unwrap_err();
    assert!(error.to_string().contains("division by zero"), "{error}");
    assert!(!schema_exists(&pool, "doomed").await);
    assert!(registry_row(&pool, "doomed").await.is_none());

    // Tenants being created are not migrated by a concurrent `migrate`; here none is left.
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((report.tenants_total, report.tenants_current), (1, 1));

    pool.close().await;
    db.drop_db().await;
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
// adopt: hand-made schemas become tenants, with a baseline.

mod adopt {
    #[mtnt::migration(scope = "tenant", order = 2024_07_03_0001)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_07_03_0002)]
    async fn add_account_name(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("ALTER TABLE accounts ADD COLUMN name text")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_07_03_0003)]
    async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE invoices (id bigserial PRIMARY KEY, account_id bigint REFERENCES accounts (id))")
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_registers_legacy_schemas_with_a_baseline() {
    let db = TestDb::create("adopt").await;
    let pool = db.pool(4).await;
    let migrator = migrator(&pool, "pg_tenants::adopt");

    // What the two migrations up to the baseline would have made, by hand.
    for schema in ["legacy_a", "legacy_b", "legacy_X"] {
        sqlx::raw_sql(&format!(
            "CREATE SCHEMA \"{schema}\";
             CREATE TABLE \"{schema}\".accounts (id bigserial PRIMARY KEY, email text, name text);
             INSERT INTO \"{schema}\".accounts (email, name) VALUES ('old@example.com', 'Old')"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::raw_sql("CREATE SCHEMA unrelated")
        .execute(&pool)
        .await
        .unwrap();

    match migrator.adopt("legacy_%", Some(2099_01_01_0001)).await {
        Err(Error::UnknownOrder(_)) => {}
        other => panic!("expected UnknownOrder, got {other:?}"),
    }

    let (adopted, skipped) = migrator
        .adopt("legacy_%", Some(2024_07_03_0002))
        .await
        .unwrap();
    assert_eq!(
        adopted.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["legacy_a", "legacy_b"]
    );
    assert_eq!(
        skipped,
        ["legacy_X"],
        "an invalid tenant name is skipped, not adopted"
    );
    let registry = registry_rows(&pool).await;
    assert_eq!(
        registry.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["legacy_a", "legacy_b"]
    );
    for row in &registry {
        assert_eq!(
            (row.state.as_str(), row.applied_order, row.failed_order),
            ("active", Some(2024_07_03_0002), None)
        );
        assert_eq!(row.schema_name, row.name);
        let tracked = tracking_rows(&pool, &row.name).await;
        assert_eq!(
            tracked
                .iter()
                .map(|r| (r.migration_order, r.status.as_str()))
                .collect::<Vec<_>>(),
            [
                (2024_07_03_0001, "completed"),
                (2024_07_03_0002, "completed")
            ]
        );
        for r in &tracked {
            assert_eq!(
                r.checksum,
                migrator
                    .migrations()
                    .get(r.migration_order)
                    .unwrap()
                    .checksum()
            );
        }
    }

    // Adopting again finds nothing new.
    let (again, _) = migrator
        .adopt("legacy_%", Some(2024_07_03_0002))
        .await
        .unwrap();
    assert!(again.is_empty());

    // migrate applies only what comes after the baseline (re-running the first two would
    // fail: the tables exist), and keeps the data.
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!((report.tenants_migrated, report.migrations_applied), (2, 2));
    for schema in ["legacy_a", "legacy_b"] {
        assert!(table_exists(&pool, schema, "invoices").await, "{schema}");
        let email: String = sqlx::query_scalar(&format!("SELECT email FROM {schema}.accounts"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(email, "old@example.com");
        assert_eq!(
            registry_row(&pool, schema).await.unwrap().applied_order,
            Some(2024_07_03_0003)
        );
    }
    assert!(!table_exists(&pool, "legacy_X", "invoices").await);
    assert!(!table_exists(&pool, "unrelated", "mtnt_migrations").await);

    // Without a baseline every migration runs on the adopted schema.
    sqlx::raw_sql("CREATE SCHEMA legacy_c")
        .execute(&pool)
        .await
        .unwrap();
    let (adopted, _) = migrator.adopt("legacy_c", None).await.unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(
        registry_row(&pool, "legacy_c").await.unwrap().applied_order,
        None
    );
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(
        (
            report.tenants_migrated,
            report.migrations_applied,
            report.tenants_current
        ),
        (1, 3, 2)
    );
    assert!(table_exists(&pool, "legacy_c", "invoices").await);

    pool.close().await;
    db.drop_db().await;
}
