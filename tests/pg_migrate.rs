//! `Migrator::migrate` on PostgreSQL (schema per tenant), for what one engine proves for
//! all or only PostgreSQL has: `fail_fast` and a custom `TenantSource` (the executor's and
//! the migrator's own logic, the same over every backend), the connection an advisory lock
//! was taken on, and an unreachable `postgres://` server. Fleets, failing tenants,
//! concurrent runs and typed sqlx calls are proven on every engine by `tests/behaviour.rs`. Every test works in its own database.
#![cfg(feature = "postgres")]
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mtnt::{
    Error, MigrateOptions, MigrationSet, Migrator, PostgresBackend, TenantName, TenantSource,
};
use mtnt_test_support::create_tenants;
use mtnt_test_support::postgres::{registry_row, table_exists, tracking_row, TestDb};
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

// One engine suffices: fail_fast is the executor's scheduling, which no backend takes part in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_starts_no_tenant_after_a_failure() {
    let db = TestDb::create("failfast").await;
    let pool = db.pool(4).await;
    let tenants = ["a1", "b1", "c-bad", "d1", "e1", "f1"];
    create_tenants(&migrator(&pool, "pg_migrate::fail_fast::v1"), &tenants).await;

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

// One engine suffices: a TenantSource replaces the registry's paging in the migrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_tenant_source_migrates_only_its_tenants() {
    let db = TestDb::create("source").await;
    let pool = db.pool(4).await;
    let all = ["s1", "s2", "s3", "s4", "s5", "s6", "s7"];
    create_tenants(&migrator(&pool, "pg_migrate::sourced::v1"), &all).await;

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

// PostgreSQL only: a `postgres://` URL (MySQL's is in mysql.rs).
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
// The lock a run takes on a tenant is released without throwing the connection away.

// PostgreSQL only: session-level advisory locks and pooled connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_sessions_give_their_connection_back() {
    let db = TestDb::create("reuse").await;
    let pool = db.pool(1).await;
    create_tenants(
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
