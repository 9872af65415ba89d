//! Fleet speed on PostgreSQL (schema per tenant), for correctness only (the figures come
//! from `cargo run --release --example bench`): `migrate` creates the schema of a tenant
//! registered without one, an up-to-date tenant is skipped without a session while every
//! change that makes it not up to date is still seen, the fleet never takes more
//! connections than the pool has, and `adopt` reports each tenant to its progress.
#![cfg(feature = "postgres")]
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use std::sync::Mutex;
use std::time::Duration;

use mtnt::{Error, MigrateOptions, MigrationSet, Migrator, PostgresBackend, Progress, TenantName};
use mtnt_test_support::create_tenants;
use mtnt_test_support::postgres::{registry_row, table_exists, tracking_rows, TestDb};
use sqlx::PgPool;

fn migrator(pool: &PgPool, prefix: &str) -> Migrator {
    Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(MigrationSet::registered_in(prefix).unwrap())
        .build()
        .unwrap()
}

async fn fingerprint(pool: &PgPool, tenant: &str) -> Option<String> {
    sqlx::query_scalar("SELECT fingerprint FROM public.mtnt_tenants WHERE name = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap()
}

mod fast {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_09_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
                .await
        }

        #[mtnt::migration(scope = "tenant", order = 2024_09_01_0003)]
        async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE notes (id bigserial PRIMARY KEY)")
                .await
        }
    }

    // Merged after v1 was deployed, with an order below the newest applied one.
    #[mtnt::migration(scope = "tenant", order = 2024_09_01_0002)]
    async fn create_tags(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE tags (id bigserial PRIMARY KEY)")
            .await
    }
}

mod broken {
    #[mtnt::migration(scope = "tenant", order = 2024_09_02_0001)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY); SELECT 1 / 0")
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_tenants_without_schemas_are_created_by_migrate() {
    let db = TestDb::create("fleet_empty").await;
    let pool = db.pool(4).await;
    let v1 = migrator(&pool, "pg_fleet::fast::v1");
    v1.backend().prepare().await.unwrap();
    // Registered in bulk by the app, no schema yet.
    sqlx::query(
        "INSERT INTO public.mtnt_tenants (name, schema_name) SELECT 't' || i, 't' || i FROM generate_series(1, 5) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = v1.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(
        (report.tenants_migrated, report.migrations_applied),
        (5, 10)
    );
    for i in 1..=5 {
        let schema = format!("t{i}");
        assert!(table_exists(&pool, &schema, "notes").await, "{schema}");
        let rows = tracking_rows(&pool, &schema).await;
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.status == "completed"));
        let registry = registry_row(&pool, &schema).await.unwrap();
        assert_eq!(registry.applied_order, Some(2024_09_01_0003));
        assert!(fingerprint(&pool, &schema).await.is_some());
    }
    let status = v1.status(&[]).await.unwrap();
    assert_eq!(status.summary(), "5/5 tenants current, 0 behind, 0 failed");

    // A first migration that fails takes the new schema with it, but the failure is
    // recorded: in its tracking rows, and in the registry.
    sqlx::query("INSERT INTO public.mtnt_tenants (name, schema_name) VALUES ('t6', 't6')")
        .execute(&pool)
        .await
        .unwrap();
    let broken = migrator(&pool, "pg_fleet::broken");
    let only_t6 = MigrateOptions::new().tenants([TenantName::new("t6").unwrap()]);
    let report = broken.migrate(&only_t6).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].tenant.as_str(), "t6");
    let rows = tracking_rows(&pool, "t6").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "failed");
    assert!(rows[0]
        .error
        .as_deref()
        .unwrap()
        .contains("division by zero"));
    assert!(!table_exists(&pool, "t6", "accounts").await);
    let registry = registry_row(&pool, "t6").await.unwrap();
    assert_eq!(registry.failed_order, Some(2024_09_02_0001));

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_to_date_tenants_are_skipped_and_every_change_is_seen() {
    let db = TestDb::create("fleet_fast").await;
    let pool = db.pool(6).await;
    let v1 = migrator(&pool, "pg_fleet::fast::v1");
    create_tenants(&v1, &["a", "b"]).await;
    let created = fingerprint(&pool, "a")
        .await
        .expect("tenant create records one");

    // With the tenants' tracking table locked, a session would wait on it: the run only
    // finishes because an up-to-date tenant costs no session.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE public.mtnt_tenant_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), v1.migrate(&MigrateOptions::new()))
        .await
        .expect("an up-to-date tenant was given a session")
        .unwrap();
    assert_eq!((report.tenants_current, report.tenants_migrated), (2, 0));
    // Past `--to` is current too.
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        v1.migrate(&MigrateOptions::new().to(2024_09_01_0001)),
    )
    .await
    .expect("a tenant past --to was given a session")
    .unwrap();
    assert_eq!(report.tenants_current, 2);
    blocker.rollback().await.unwrap();

    // A migration merged below the newest applied one is still found.
    let full = migrator(&pool, "pg_fleet::fast");
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!((report.tenants_migrated, report.migrations_applied), (2, 2));
    assert!(table_exists(&pool, "a", "tags").await);
    let now = fingerprint(&pool, "a").await.unwrap();
    assert_ne!(now, created);
    assert_eq!(fingerprint(&pool, "b").await.unwrap(), now);
    assert_eq!(
        full.migrate(&MigrateOptions::new())
            .await
            .unwrap()
            .tenants_current,
        2
    );

    // A tracking row deleted by hand (to run a migration again) clears the fingerprint,
    // so the next run looks at the tenant in full.
    sqlx::raw_sql(
        "DELETE FROM public.mtnt_tenant_migrations WHERE tenant = 'a' AND migration_order = 202409010003; \
         DROP TABLE a.notes",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(fingerprint(&pool, "a").await, None);
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((report.tenants_migrated, report.tenants_current), (1, 1));
    assert!(table_exists(&pool, "a", "notes").await);
    assert_eq!(fingerprint(&pool, "a").await.unwrap(), now);

    // A checksum edited in a tracking table is refused, as without the fast path.
    sqlx::query(
        "UPDATE public.mtnt_tenant_migrations SET checksum = 'edited' WHERE tenant = 'b' AND migration_order = 202409010001",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert!(matches!(
        report.failures[0].error,
        Error::ChecksumMismatch { .. }
    ));
    // `repair --checksums` records the code's checksum and a fingerprint with it.
    assert_eq!(full.repair_checksums(&[]).await.unwrap(), 1);
    assert_eq!(fingerprint(&pool, "b").await.unwrap(), now);

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_takes_no_more_connections_than_the_pool_has() {
    let db = TestDb::create("fleet_budget").await;
    let pool = db.pool(3).await;
    let v1 = Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(MigrationSet::registered_in("pg_fleet::fast::v1").unwrap())
        .concurrency(16)
        .build()
        .unwrap();
    // One connection stays free for reading the registry while sessions run.
    assert_eq!(v1.backend().connection_budget().await.unwrap(), Some(2));
    v1.backend().prepare().await.unwrap();
    sqlx::query(
        "INSERT INTO public.mtnt_tenants (name, schema_name) SELECT 't' || i, 't' || i FROM generate_series(1, 12) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), v1.migrate(&MigrateOptions::new()))
        .await
        .expect("the run starved for connections")
        .unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.tenants_migrated, 12);

    pool.close().await;
    db.drop_db().await;
}

#[derive(Default)]
struct Recorded {
    events: Mutex<Vec<String>>,
}

impl Progress for Recorded {
    fn start(&self, total: u64) {
        self.events.lock().unwrap().push(format!("start {total}"));
    }
    fn tenant_done(&self, tenant: &TenantName, outcome: Result<usize, &Error>) {
        self.events
            .lock()
            .unwrap()
            .push(format!("{tenant} {}", outcome.is_ok()));
    }
    fn finish(&self) {
        self.events.lock().unwrap().push("finish".to_owned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_reports_each_tenant_to_its_progress() {
    let db = TestDb::create("fleet_adopt").await;
    let pool = db.pool(2).await;
    sqlx::raw_sql(
        "CREATE SCHEMA legacy_1; CREATE TABLE legacy_1.accounts (id bigserial PRIMARY KEY);
         CREATE SCHEMA legacy_2; CREATE TABLE legacy_2.accounts (id bigserial PRIMARY KEY);
         CREATE SCHEMA \"Legacy_3\"",
    )
    .execute(&pool)
    .await
    .unwrap();
    let v1 = migrator(&pool, "pg_fleet::fast::v1");
    let progress = Recorded::default();
    let (adopted, skipped) = v1
        .adopt_with_progress("%egacy_%", Some(2024_09_01_0001), &progress)
        .await
        .unwrap();
    assert_eq!((adopted.len(), skipped), (2, vec!["Legacy_3".to_owned()]));
    assert_eq!(
        *progress.events.lock().unwrap(),
        ["start 2", "legacy_1 true", "legacy_2 true", "finish"]
    );
    // The baseline's fingerprint is recorded: the next run applies only what is missing.
    assert!(fingerprint(&pool, "legacy_1").await.is_some());
    let report = v1.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((report.tenants_migrated, report.migrations_applied), (2, 2));
    let report = v1.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.tenants_current, 2);

    pool.close().await;
    db.drop_db().await;
}
