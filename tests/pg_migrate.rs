//! `Migrator::migrate` on PostgreSQL (schema per tenant): a fleet of tenants, a failing
//! tenant, `fail_fast`, typed sqlx inside a migration, a custom `TenantSource`, and an
//! unreachable server. Every test works in its own database.

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mtnt::{
    Error, MigrateOptions, MigrationSet, Migrator, PostgresBackend, TenantName, TenantSource,
};
use mtnt_test_support::postgres::{
    column_exists, registry_row, registry_rows, table_exists, tracking_row, tracking_rows, TestDb,
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

async fn create_all(migrator: &Migrator, names: &[&str]) {
    for n in names {
        migrator
            .create_tenant(&name(n))
            .await
            .unwrap_or_else(|e| panic!("create {n}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// A fleet of 52 tenants, created at v1 and migrated to v2.

mod fleet {
    pub mod v1 {
        #[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
        async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute(
                "CREATE TABLE plans (id bigserial PRIMARY KEY, name text NOT NULL);
                 INSERT INTO plans (name) VALUES ('free')",
            )
            .await
        }

        // References the public `plans` through the search path.
        #[mtnt::migration(scope = "tenant", order = 2024_01_01_0002)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text UNIQUE, plan_id bigint REFERENCES plans (id))")
                .await
        }
    }

    pub mod v2 {
        #[mtnt::migration(scope = "tenant", order = 2024_01_02_0001)]
        async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE invoices (id bigserial PRIMARY KEY, account_id bigint REFERENCES accounts (id))")
                .await
        }

        #[mtnt::migration(scope = "tenant", order = 2024_01_02_0002)]
        async fn add_account_name(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("ALTER TABLE accounts ADD COLUMN name text")
                .await
        }

        #[mtnt::migration(scope = "public", order = 2024_01_02_0003)]
        async fn create_features(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute(
                "CREATE TABLE features (key text PRIMARY KEY); INSERT INTO features VALUES ('sso')",
            )
            .await
        }
    }
}

const FLEET_TENANT_ORDERS: [i64; 3] = [2024_01_01_0002, 2024_01_02_0001, 2024_01_02_0002];
const FLEET_PUBLIC_ORDERS: [i64; 2] = [2024_01_01_0001, 2024_01_02_0003];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_52_tenants_is_created_then_migrated() {
    let db = TestDb::create("fleet").await;
    let pool = db.pool(6).await;
    let names: Vec<String> = (0..52).map(|i| format!("t{i:03}")).collect();

    let creator = migrator(&pool, "pg_migrate::fleet::v1");
    for n in &names {
        creator.create_tenant(&name(n)).await.unwrap();
    }
    let registry = registry_rows(&pool).await;
    assert_eq!(registry.len(), 52);
    for row in &registry {
        assert_eq!(
            (row.state.as_str(), row.applied_order),
            ("active", Some(2024_01_01_0002)),
            "{row:?}"
        );
        assert_eq!(row.schema_name, row.name);
    }

    let full = Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(MigrationSet::registered_in("pg_migrate::fleet").unwrap())
        .concurrency(4)
        .page_size(10)
        .build()
        .unwrap();
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.is_success());
    assert_eq!(
        report.public_applied, 1,
        "only the new public migration runs"
    );
    assert_eq!(report.tenants_total, 52);
    assert_eq!(report.tenants_migrated, 52);
    assert_eq!(report.migrations_applied, 104);

    // Every tenant schema has the tables, and its tracking rows are complete.
    for n in &names {
        assert!(table_exists(&pool, n, "accounts").await, "{n}");
        assert!(table_exists(&pool, n, "invoices").await, "{n}");
        assert!(column_exists(&pool, n, "accounts", "name").await, "{n}");
        assert!(
            !table_exists(&pool, n, "plans").await,
            "public migration leaked into {n}"
        );
        assert!(
            !table_exists(&pool, n, "features").await,
            "public migration leaked into {n}"
        );
        let rows = tracking_rows(&pool, n).await;
        assert_eq!(
            rows.iter().map(|r| r.migration_order).collect::<Vec<_>>(),
            FLEET_TENANT_ORDERS,
            "{n}"
        );
        for row in rows {
            let migration = full.migrations().get(row.migration_order).unwrap();
            assert_eq!(row.status, "completed", "{n}: {row:?}");
            assert_eq!(row.name, migration.name());
            assert_eq!(row.checksum, migration.checksum());
            assert!(!row.checksum.is_empty());
            let (started, finished) = (row.started_at.unwrap(), row.finished_at.unwrap());
            assert!(finished >= started, "{n}: {row:?}");
            assert!(row.duration_ms.is_some_and(|d| d >= 0), "{n}: {row:?}");
            assert_eq!(row.error, None);
        }
    }
    for row in registry_rows(&pool).await {
        assert_eq!(row.applied_order, Some(2024_01_02_0002), "{row:?}");
        assert_eq!(row.failed_order, None);
    }

    // The public migrations ran once, in the control schema, and are tracked there only.
    let plans: i64 = sqlx::query_scalar("SELECT count(*) FROM public.plans")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(plans, 1, "the public migration ran more than once");
    assert!(table_exists(&pool, "public", "features").await);
    let public_rows = tracking_rows(&pool, "public").await;
    assert_eq!(
        public_rows
            .iter()
            .map(|r| r.migration_order)
            .collect::<Vec<_>>(),
        FLEET_PUBLIC_ORDERS
    );
    assert!(public_rows
        .iter()
        .all(|r| r.status == "completed" && r.finished_at.is_some()));

    // A second run finds nothing to do.
    let again = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(
        (
            again.public_applied,
            again.tenants_current,
            again.migrations_applied
        ),
        (0, 52, 0)
    );
    let plans: i64 = sqlx::query_scalar("SELECT count(*) FROM public.plans")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(plans, 1);

    let status = full.status(&[]).await.unwrap();
    assert_eq!(
        status.summary(),
        "52/52 tenants current, 0 behind, 0 failed"
    );
    assert_eq!(status.public.applied_order, Some(2024_01_02_0003));
    assert_eq!(status.public.pending, 0);
    assert_eq!(status.latest_tenant_order, Some(2024_01_02_0002));

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// One tenant fails; the others complete; fixing the cause lets a re-run finish it.

mod failing {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static FIXED: AtomicBool = AtomicBool::new(false);

    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_02_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_02_01_0002)]
    async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE invoices (id bigserial PRIMARY KEY, total bigint NOT NULL)")
            .await?;
        if ctx.tenant().unwrap().name.as_str() == "bad" && !FIXED.load(Ordering::SeqCst) {
            ctx.execute("INSERT INTO no_such_table VALUES (1)").await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_tenant_does_not_stop_the_others() {
    let db = TestDb::create("failing").await;
    let pool = db.pool(6).await;
    let tenants = ["alpha", "bad", "charlie", "delta", "echo", "foxtrot"];
    create_all(&migrator(&pool, "pg_migrate::failing::v1"), &tenants).await;

    let full = migrator(&pool, "pg_migrate::failing");
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(!report.is_success());
    assert_eq!(report.tenants_total, 6);
    assert_eq!(report.tenants_migrated, 5);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let failure = &report.failures[0];
    assert_eq!(failure.tenant.as_str(), "bad");
    assert!(
        matches!(
            failure.error,
            Error::Migration {
                reverting: false,
                ..
            }
        ),
        "{:?}",
        failure.error
    );
    let message = failure.error.to_string();
    for part in [
        "tenant bad",
        "2024_02_01_0002",
        "create_invoices",
        "relation \"no_such_table\" does not exist",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }

    // The bad tenant is exactly at its previous migration: the failed DDL was rolled back.
    assert!(table_exists(&pool, "bad", "accounts").await);
    assert!(
        !table_exists(&pool, "bad", "invoices").await,
        "the failed migration's DDL was not rolled back"
    );
    assert_eq!(
        tracking_row(&pool, "bad", 2024_02_01_0001)
            .await
            .unwrap()
            .status,
        "completed"
    );
    let failed_row = tracking_row(&pool, "bad", 2024_02_01_0002).await.unwrap();
    assert_eq!(failed_row.status, "failed");
    assert!(
        failed_row
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no_such_table"),
        "{failed_row:?}"
    );
    assert!(failed_row.finished_at.is_some());
    let bad = registry_row(&pool, "bad").await.unwrap();
    assert_eq!(bad.applied_order, Some(2024_02_01_0001));
    assert_eq!(bad.failed_order, Some(2024_02_01_0002));
    assert!(
        bad.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("no_such_table"),
        "{bad:?}"
    );
    for t in tenants.iter().filter(|t| **t != "bad") {
        assert!(table_exists(&pool, t, "invoices").await, "{t}");
        let row = registry_row(&pool, t).await.unwrap();
        assert_eq!(
            (row.applied_order, row.failed_order),
            (Some(2024_02_01_0002), None),
            "{t}"
        );
    }

    let status = full.status(&[]).await.unwrap();
    assert_eq!(status.summary(), "5/6 tenants current, 0 behind, 1 failed");
    let bad_status = status
        .tenants
        .iter()
        .find(|t| t.tenant.as_str() == "bad")
        .unwrap();
    let failed = bad_status.failed.as_ref().unwrap();
    assert_eq!(
        (failed.order, failed.name),
        (2024_02_01_0002, Some("create_invoices"))
    );
    assert!(failed
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("no_such_table"));
    assert_eq!(bad_status.applied_order, Some(2024_02_01_0001));

    // A binary without the failed migration (the deploy was reverted) sees nothing failed:
    // the failure is about a migration it does not have.
    let reverted = migrator(&pool, "pg_migrate::failing::v1")
        .status(&[])
        .await
        .unwrap();
    assert_eq!(
        reverted.summary(),
        "6/6 tenants current, 0 behind, 0 failed"
    );
    let report = migrator(&pool, "pg_migrate::failing::v1")
        .migrate(&MigrateOptions::new())
        .await
        .unwrap();
    // ... while the tenants that are ahead of it are refused, and `bad` has nothing to do.
    assert_eq!(report.tenants_current, 1, "{report:?}");
    assert_eq!(report.failures.len(), 5, "{report:?}");
    assert!(report
        .failures
        .iter()
        .all(|f| matches!(f.error, Error::UnknownApplied { .. })));

    // Still broken: the same tenant fails again, nothing else changes.
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.tenants_current, 5);

    // Fixed: the re-run completes the bad tenant and clears the failure.
    failing::FIXED.store(true, Ordering::SeqCst);
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(
        (
            report.tenants_migrated,
            report.tenants_current,
            report.migrations_applied
        ),
        (1, 5, 1)
    );
    assert!(table_exists(&pool, "bad", "invoices").await);
    let row = tracking_row(&pool, "bad", 2024_02_01_0002).await.unwrap();
    assert_eq!(
        (row.status.as_str(), row.error.as_deref()),
        ("completed", None)
    );
    let bad = registry_row(&pool, "bad").await.unwrap();
    assert_eq!(
        (bad.applied_order, bad.failed_order, bad.last_error),
        (Some(2024_02_01_0002), None, None)
    );
    assert_eq!(
        full.status(&[]).await.unwrap().summary(),
        "6/6 tenants current, 0 behind, 0 failed"
    );

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// fail_fast: no tenant is started after the first failure.

mod fail_fast {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_03_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_03_01_0002)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id bigserial PRIMARY KEY)")
            .await?;
        if ctx.tenant().unwrap().name.as_str() == "c-bad" {
            ctx.execute("SELECT 1 / 0").await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_starts_no_tenant_after_a_failure() {
    let db = TestDb::create("failfast").await;
    let pool = db.pool(4).await;
    let tenants = ["a1", "b1", "c-bad", "d1", "e1", "f1"];
    create_all(&migrator(&pool, "pg_migrate::fail_fast::v1"), &tenants).await;

    // One tenant at a time, in name order: a1 and b1 complete, c-bad fails, the rest wait.
    let full = Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(MigrationSet::registered_in("pg_migrate::fail_fast").unwrap())
        .concurrency(1)
        .build()
        .unwrap();
    let report = full
        .migrate(&MigrateOptions::new().fail_fast(true))
        .await
        .unwrap();
    assert!(!report.is_success());
    assert_eq!(
        report
            .failures
            .iter()
            .map(|f| f.tenant.as_str())
            .collect::<Vec<_>>(),
        ["c-bad"]
    );
    assert!(report.failures[0]
        .error
        .to_string()
        .contains("division by zero"));
    assert_eq!(report.tenants_migrated, 2);
    assert_eq!(report.tenants_skipped, 3);
    for t in ["a1", "b1"] {
        assert!(table_exists(&pool, t, "notes").await, "{t}");
    }
    for t in ["c-bad", "d1", "e1", "f1"] {
        assert!(
            !table_exists(&pool, t, "notes").await,
            "{t} was started after the failure"
        );
        assert_eq!(
            registry_row(&pool, t).await.unwrap().applied_order,
            Some(2024_03_01_0001),
            "{t}"
        );
    }
    for t in ["d1", "e1", "f1"] {
        assert!(
            tracking_row(&pool, t, 2024_03_01_0002).await.is_none(),
            "{t} was started after the failure"
        );
    }

    // Without fail_fast the run goes on past the failure.
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    assert_eq!(
        (
            report.tenants_migrated,
            report.tenants_current,
            report.tenants_skipped
        ),
        (3, 2, 0)
    );
    for t in ["d1", "e1", "f1"] {
        assert!(table_exists(&pool, t, "notes").await, "{t}");
    }

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// Typed sqlx queries inside a migration, through `ctx.postgres()?`.

mod backfill {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_04_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute(
                "CREATE TABLE accounts (id bigserial PRIMARY KEY, email text NOT NULL, display_name text);
                 INSERT INTO accounts (email) SELECT 'user' || i || '@example.com' FROM generate_series(1, 25) AS i",
            )
            .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_04_01_0002)]
    async fn backfill_display_names(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        let tenant = ctx.tenant().unwrap().name.to_string();
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, email FROM accounts WHERE display_name IS NULL ORDER BY id")
                .fetch_all(ctx.postgres()?)
                .await?;
        for (id, email) in rows {
            sqlx::query("UPDATE accounts SET display_name = $1 WHERE id = $2")
                .bind(format!("{tenant}:{email}"))
                .bind(id)
                .execute(ctx.postgres()?)
                .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_sqlx_backfill_runs_per_tenant() {
    let db = TestDb::create("backfill").await;
    let pool = db.pool(4).await;
    create_all(
        &migrator(&pool, "pg_migrate::backfill::v1"),
        &["acme", "globex"],
    )
    .await;

    let report = migrator(&pool, "pg_migrate::backfill")
        .migrate(&MigrateOptions::new())
        .await
        .unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 2);
    for tenant in ["acme", "globex"] {
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT email, display_name FROM \"{tenant}\".accounts ORDER BY id"
        ))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), 25);
        for (email, display_name) in rows {
            assert_eq!(display_name, Some(format!("{tenant}:{email}")));
        }
    }
    assert_eq!(
        tracking_row(&pool, "acme", 2024_04_01_0002)
            .await
            .unwrap()
            .status,
        "completed"
    );

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// A custom TenantSource that yields a subset of the registered tenants.

mod sourced {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_05_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_05_01_0002)]
    async fn create_projects(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE projects (id bigserial PRIMARY KEY)")
            .await
    }
}

/// Yields a fixed list of names (as an app keeping its tenants elsewhere would), counting
/// the pages asked for.
struct Subset {
    names: Vec<TenantName>,
    pages: AtomicUsize,
}

impl Subset {
    fn new(names: &[&str]) -> Self {
        let mut names: Vec<TenantName> = names.iter().map(|n| name(n)).collect();
        names.sort();
        Self {
            names,
            pages: AtomicUsize::new(0),
        }
    }
}

// Written out by hand (what `#[async_trait]` expands to), so the suite needs no extra crate.
impl TenantSource for Subset {
    fn page<'a, 'b, 'f>(
        &'a self,
        after: Option<&'b TenantName>,
        limit: usize,
    ) -> Pin<Box<dyn Future<Output = mtnt::Result<Vec<TenantName>>> + Send + 'f>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            self.pages.fetch_add(1, Ordering::SeqCst);
            Ok(self
                .names
                .iter()
                .filter(|n| after.is_none_or(|a| *n > a))
                .take(limit)
                .cloned()
                .collect())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_tenant_source_migrates_only_its_tenants() {
    let db = TestDb::create("source").await;
    let pool = db.pool(4).await;
    let all = ["s1", "s2", "s3", "s4", "s5", "s6", "s7"];
    create_all(&migrator(&pool, "pg_migrate::sourced::v1"), &all).await;

    let migrator = Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(MigrationSet::registered_in("pg_migrate::sourced").unwrap())
        .source(Subset::new(&["s6", "s2", "s4"]))
        .page_size(2)
        .build()
        .unwrap();
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!((report.tenants_total, report.tenants_migrated), (3, 3));
    for t in all {
        let chosen = ["s2", "s4", "s6"].contains(&t);
        assert_eq!(table_exists(&pool, t, "projects").await, chosen, "{t}");
        let expected = if chosen {
            2024_05_01_0002
        } else {
            2024_05_01_0001
        };
        assert_eq!(
            registry_row(&pool, t).await.unwrap().applied_order,
            Some(expected),
            "{t}"
        );
    }

    // A source naming a tenant that is not registered is refused.
    let ghostly = Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(MigrationSet::registered_in("pg_migrate::sourced").unwrap())
        .source(Subset::new(&["s1", "ghost"]))
        .build()
        .unwrap();
    match ghostly.migrate(&MigrateOptions::new()).await {
        Err(Error::UnknownTenant(n)) => assert_eq!(n, "ghost"),
        other => panic!("expected UnknownTenant, got {other:?}"),
    }

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn custom_source_pages_through_the_subset() {
    let source = Subset::new(&["s6", "s2", "s4"]);
    let first = source.page(None, 2).await.unwrap();
    let second = source.page(first.last(), 2).await.unwrap();
    assert_eq!(first, [name("s2"), name("s4")]);
    assert_eq!(second, [name("s6")]);
    assert_eq!(source.pages.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------
// An unreachable server: the error names the address, never the password.

#[tokio::test]
async fn unreachable_database_error_names_the_host_not_the_password() {
    let started = Instant::now();
    let url = "postgres://u:secret@127.0.0.1:1/x";
    let error = match mtnt::connect(url, &Default::default()).await {
        Err(e) => e,
        Ok(_) => panic!("connected to port 1"),
    };
    let text = error.to_string();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(text.contains("***"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert!(!format!("{error:?}").contains("secret"), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    let error = match Migrator::connect(url).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("connected to port 1"),
    };
    assert!(
        error.contains("127.0.0.1:1") && !error.contains("secret"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// Two runs at once (two deploys): each tenant is migrated once, and nobody fails.

mod concurrent {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_10_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)")
                .await
        }
    }

    #[mtnt::migration(scope = "public", order = 2024_10_01_0002)]
    async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE plans (id bigserial PRIMARY KEY); SELECT pg_sleep(0.05)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_10_01_0003)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id bigserial PRIMARY KEY); SELECT pg_sleep(0.02)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_10_01_0004, transaction = false)]
    async fn index_emails(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE INDEX accounts_email ON accounts (email)")
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_runs_migrate_each_tenant_once() {
    let db = TestDb::create("concurrent").await;
    let setup = db.pool(2).await;
    let tenants: Vec<String> = (0..12).map(|i| format!("c{i:02}")).collect();
    let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
    create_all(&migrator(&setup, "pg_migrate::concurrent::v1"), &names).await;

    // Two processes: two pools, two migrators.
    let (pool_a, pool_b) = (db.pool(4).await, db.pool(4).await);
    let (a, b) = (
        migrator(&pool_a, "pg_migrate::concurrent"),
        migrator(&pool_b, "pg_migrate::concurrent"),
    );
    let options = MigrateOptions::new();
    let (ra, rb) = tokio::join!(a.migrate(&options), b.migrate(&options));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let errors: Vec<String> = ra
        .failures
        .iter()
        .chain(&rb.failures)
        .map(|f| format!("{}: {}", f.tenant, f.error))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        ra.public_applied + rb.public_applied,
        1,
        "the public migration ran twice"
    );
    assert_eq!(
        ra.migrations_applied + rb.migrations_applied,
        24,
        "some tenant migration ran twice or not at all"
    );
    assert_eq!(ra.tenants_migrated + rb.tenants_migrated, 12);

    for t in &names {
        let rows = tracking_rows(&setup, t).await;
        assert!(
            rows.iter()
                .all(|r| r.status == "completed" && r.error.is_none()),
            "{t}: {rows:?}"
        );
        let row = registry_row(&setup, t).await.unwrap();
        assert_eq!(
            (row.applied_order, row.failed_order),
            (Some(2024_10_01_0004), None),
            "{t}"
        );
    }
    assert_eq!(
        a.status(&[]).await.unwrap().summary(),
        "12/12 tenants current, 0 behind, 0 failed"
    );

    pool_a.close().await;
    pool_b.close().await;
    setup.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// The lock a run takes on a tenant is released without throwing the connection away.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_sessions_give_their_connection_back() {
    let db = TestDb::create("reuse").await;
    let pool = db.pool(1).await;
    create_all(
        &migrator(&pool, "pg_migrate::sourced::v1"),
        &["r1", "r2", "r3"],
    )
    .await;
    let pid = || async {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = pid().await;
    let report = migrator(&pool, "pg_migrate::sourced")
        .migrate(&MigrateOptions::new())
        .await
        .unwrap();
    assert_eq!(report.migrations_applied, 3, "{report:?}");
    assert_eq!(
        pid().await,
        before,
        "a locked session's connection was closed"
    );
    // ... and it holds no advisory lock any more.
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(locks, 0);

    pool.close().await;
    db.drop_db().await;
}
