//! What keeps a PostgreSQL fleet consistent: checksum drift and `repair_checksums`,
//! non-transactional migrations and their interruption (`mark`), and applied migrations
//! the binary does not know.

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{
    Error, MigrateOptions, MigrationSet, MigrationStatus, Migrator, PostgresBackend,
    RollbackTarget, TenantName,
};
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

async fn create_all(migrator: &Migrator, names: &[&str]) {
    for n in names {
        migrator
            .create_tenant(&name(n))
            .await
            .unwrap_or_else(|e| panic!("create {n}: {e}"));
    }
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
// Checksum drift.

mod drift {
    pub mod v1 {
        #[mtnt::migration(scope = "public", order = 2024_08_01_0001)]
        async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE plans (id bigserial PRIMARY KEY)")
                .await
        }

        #[mtnt::migration(scope = "tenant", order = 2024_08_01_0002)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_08_01_0003)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id bigserial PRIMARY KEY)")
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_drift_is_refused_until_repaired() {
    let db = TestDb::create("drift").await;
    let pool = db.pool(4).await;
    create_all(&migrator(&pool, "pg_integrity::drift::v1"), &["a", "b"]).await;
    let full = migrator(&pool, "pg_integrity::drift");
    let code_checksum = full.migrations().get(2024_08_01_0002).unwrap().checksum();

    // Someone edited create_accounts after it was applied to tenant a.
    sqlx::query(
        "UPDATE a.mtnt_migrations SET checksum = 'tampered' WHERE migration_order = 202408010002",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let failure = &report.failures[0];
    assert_eq!(failure.tenant.as_str(), "a");
    match &failure.error {
        Error::ChecksumMismatch {
            recorded, current, ..
        } => {
            assert_eq!(
                (recorded.as_str(), current.as_str()),
                ("tampered", code_checksum)
            );
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    let message = failure.error.to_string();
    for part in [
        "2024_08_01_0002 create_accounts",
        "tenant a",
        "repair --checksums",
        "nothing was run",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
    // Nothing ran in a; b went on.
    assert!(!table_exists(&pool, "a", "notes").await);
    assert!(tracking_row(&pool, "a", 2024_08_01_0003).await.is_none());
    assert_eq!(
        registry_row(&pool, "a").await.unwrap().applied_order,
        Some(2024_08_01_0002)
    );
    assert!(table_exists(&pool, "b", "notes").await);

    // repair_checksums records the code's checksum, and only where it differs.
    assert_eq!(full.repair_checksums(&[]).await.unwrap(), 1);
    assert_eq!(
        tracking_row(&pool, "a", 2024_08_01_0002)
            .await
            .unwrap()
            .checksum,
        code_checksum
    );
    assert_eq!(full.repair_checksums(&[]).await.unwrap(), 0);
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!((report.tenants_migrated, report.tenants_current), (1, 1));
    assert!(table_exists(&pool, "a", "notes").await);

    // Drift in the public schema stops the whole run before any tenant.
    sqlx::query("UPDATE public.mtnt_migrations SET checksum = 'edited' WHERE migration_order = 202408010001")
        .execute(&pool)
        .await
        .unwrap();
    match full.migrate(&MigrateOptions::new()).await {
        Err(Error::ChecksumMismatch {
            target, migration, ..
        }) => {
            assert_eq!(
                (target.as_str(), migration.as_str()),
                ("the public schema", "2024_08_01_0001 create_plans")
            );
        }
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    // Repairing only named tenants still repairs the public schema.
    assert_eq!(full.repair_checksums(&[name("b")]).await.unwrap(), 1);
    assert!(full
        .migrate(&MigrateOptions::new())
        .await
        .unwrap()
        .is_success());

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// transaction = false.

mod nontx {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static BROKEN: AtomicBool = AtomicBool::new(false);

    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_08_02_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)")
                .await
        }
    }

    // CONCURRENTLY fails inside a transaction block, so this proves it runs outside one.
    #[mtnt::migration(scope = "tenant", order = 2024_08_02_0002, transaction = false)]
    async fn index_emails(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE INDEX CONCURRENTLY accounts_email ON accounts (email)")
            .await?;
        if BROKEN.load(Ordering::SeqCst) && ctx.tenant().unwrap().name.as_str() == "bad" {
            ctx.execute("SELECT 1 / 0").await?;
        }
        Ok(())
    }

    #[mtnt::migration(scope = "tenant", order = 2024_08_02_0003)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id bigserial PRIMARY KEY)")
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_transactional_migration_and_its_interruption() {
    let db = TestDb::create("nontx").await;
    let pool = db.pool(4).await;
    create_all(
        &migrator(&pool, "pg_integrity::nontx::v1"),
        &["acme", "globex"],
    )
    .await;
    let full = migrator(&pool, "pg_integrity::nontx");

    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 4);
    for t in ["acme", "globex"] {
        assert!(index_exists(&pool, t, "accounts_email").await, "{t}");
        let row = tracking_row(&pool, t, 2024_08_02_0002).await.unwrap();
        assert_eq!(row.status, "completed");
        assert!(
            row.finished_at.unwrap() >= row.started_at.unwrap(),
            "{row:?}"
        );
        assert!(
            row.duration_ms.is_some_and(|d| d >= 0) && row.error.is_none(),
            "{row:?}"
        );
        assert_eq!(
            registry_row(&pool, t).await.unwrap().applied_order,
            Some(2024_08_02_0003)
        );
    }
    // No pooled connection keeps a tenant's search path after a non-transactional migration.
    let mut connections = Vec::new();
    for _ in 0..pool.size() {
        connections.push(pool.acquire().await.unwrap());
    }
    for conn in &mut connections {
        let path: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(
            path, "\"$user\", public",
            "a pooled connection kept a tenant search path"
        );
    }
    drop(connections);

    // Simulate a run that died inside the non-transactional migration of acme.
    sqlx::raw_sql(
        "DROP INDEX acme.accounts_email;
         UPDATE acme.mtnt_migrations SET status = 'started', finished_at = NULL, duration_ms = NULL
         WHERE migration_order = 202408020002;
         DELETE FROM acme.mtnt_migrations WHERE migration_order = 202408020003;
         DROP TABLE acme.notes",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].tenant.as_str(), "acme");
    assert!(
        matches!(report.failures[0].error, Error::Interrupted { .. }),
        "{:?}",
        report.failures[0].error
    );
    let message = report.failures[0].error.to_string();
    for part in [
        "2024_08_02_0002 index_emails",
        "tenant acme",
        "not declared idempotent",
        "repair --tenant acme --order 202408020002 --mark completed",
        "--mark pending",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
    // Blocked: nothing ran, not even the later transactional migration.
    assert!(!index_exists(&pool, "acme", "accounts_email").await);
    assert!(!table_exists(&pool, "acme", "notes").await);
    assert_eq!(
        tracking_row(&pool, "acme", 2024_08_02_0002)
            .await
            .unwrap()
            .status,
        "started"
    );

    // `--mark pending`: it runs again.
    full.mark(
        Some(&name("acme")),
        2024_08_02_0002,
        MigrationStatus::Pending,
    )
    .await
    .unwrap();
    assert_eq!(
        tracking_row(&pool, "acme", 2024_08_02_0002)
            .await
            .unwrap()
            .status,
        "pending"
    );
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 2);
    assert!(index_exists(&pool, "acme", "accounts_email").await);
    assert!(table_exists(&pool, "acme", "notes").await);
    assert_eq!(
        registry_row(&pool, "acme").await.unwrap().applied_order,
        Some(2024_08_02_0003)
    );

    // `--mark completed`: it is taken as done (the index is there), the rest runs.
    sqlx::raw_sql(
        "UPDATE globex.mtnt_migrations SET status = 'started', finished_at = NULL WHERE migration_order = 202408020002",
    )
    .execute(&pool)
    .await
    .unwrap();
    full.mark(
        Some(&name("globex")),
        2024_08_02_0002,
        MigrationStatus::Completed,
    )
    .await
    .unwrap();
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 0);
    assert_eq!(
        tracking_row(&pool, "globex", 2024_08_02_0002)
            .await
            .unwrap()
            .status,
        "completed"
    );

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_non_transactional_migration_is_left_started() {
    let db = TestDb::create("nontx_fail").await;
    let pool = db.pool(4).await;
    create_all(
        &migrator(&pool, "pg_integrity::nontx::v1"),
        &["bad", "good"],
    )
    .await;
    let full = migrator(&pool, "pg_integrity::nontx");

    nontx::BROKEN.store(true, std::sync::atomic::Ordering::SeqCst);
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    nontx::BROKEN.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        report
            .failures
            .iter()
            .map(|f| f.tenant.as_str())
            .collect::<Vec<_>>(),
        ["bad"]
    );
    assert!(report.failures[0]
        .error
        .to_string()
        .contains("division by zero"));

    // Not rolled back (it could not be): the index exists, the row stays `started` with the error.
    assert!(index_exists(&pool, "bad", "accounts_email").await);
    let row = tracking_row(&pool, "bad", 2024_08_02_0002).await.unwrap();
    assert_eq!(row.status, "started");
    assert!(
        row.error
            .as_deref()
            .unwrap_or_default()
            .contains("division by zero"),
        "{row:?}"
    );
    let record = registry_row(&pool, "bad").await.unwrap();
    assert_eq!(
        (record.applied_order, record.failed_order),
        (Some(2024_08_02_0001), Some(2024_08_02_0002))
    );
    assert_eq!(
        full.status(&[]).await.unwrap().summary(),
        "1/2 tenants current, 0 behind, 1 failed"
    );

    // The next run refuses to guess.
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(
        matches!(report.failures[0].error, Error::Interrupted { .. }),
        "{:?}",
        report.failures[0].error
    );

    // Marked completed after checking by hand: the rest runs and the failure clears.
    full.mark(
        Some(&name("bad")),
        2024_08_02_0002,
        MigrationStatus::Completed,
    )
    .await
    .unwrap();
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    let record = registry_row(&pool, "bad").await.unwrap();
    assert_eq!(
        (record.applied_order, record.failed_order),
        (Some(2024_08_02_0003), None)
    );
    assert_eq!(
        full.status(&[]).await.unwrap().summary(),
        "2/2 tenants current, 0 behind, 0 failed"
    );

    pool.close().await;
    db.drop_db().await;
}

mod idempotent {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_08_03_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)")
                .await
        }
    }

    #[mtnt::migration(
        scope = "tenant",
        order = 2024_08_03_0002,
        transaction = false,
        idempotent = true
    )]
    async fn index_emails(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email)")
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_idempotent_migration_runs_again() {
    let db = TestDb::create("idempotent").await;
    let pool = db.pool(4).await;
    create_all(&migrator(&pool, "pg_integrity::idempotent::v1"), &["acme"]).await;
    let full = migrator(&pool, "pg_integrity::idempotent");
    assert!(full
        .migrate(&MigrateOptions::new())
        .await
        .unwrap()
        .is_success());

    sqlx::raw_sql(
        "DROP INDEX acme.accounts_email;
         UPDATE acme.mtnt_migrations SET status = 'started', finished_at = NULL WHERE migration_order = 202408030002",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 1);
    assert!(index_exists(&pool, "acme", "accounts_email").await);
    let row = tracking_row(&pool, "acme", 2024_08_03_0002).await.unwrap();
    assert_eq!(row.status, "completed");
    assert!(row.finished_at.is_some());

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// An applied migration this binary does not know.

mod known {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_08_04_0001, down = drop_accounts)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
                .await
        }

        async fn drop_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("DROP TABLE accounts").await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_08_04_0002)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id bigserial PRIMARY KEY)")
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_applied_migration_is_refused() {
    let db = TestDb::create("unknown").await;
    let pool = db.pool(4).await;
    create_all(
        &migrator(&pool, "pg_integrity::known::v1"),
        &["ahead", "normal"],
    )
    .await;
    let full = migrator(&pool, "pg_integrity::known");

    // A newer binary applied a migration to `ahead` that this binary does not have.
    sqlx::query(
        "INSERT INTO ahead.mtnt_migrations (migration_order, name, checksum, status, started_at, finished_at, duration_ms)
         VALUES (209901010001, 'from_the_future', 'abc', 'completed', now(), now(), 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(
        report
            .failures
            .iter()
            .map(|f| f.tenant.as_str())
            .collect::<Vec<_>>(),
        ["ahead"]
    );
    match &report.failures[0].error {
        Error::UnknownApplied {
            target,
            order,
            name,
        } => {
            assert_eq!(
                (target.as_str(), order.as_str(), name.as_str()),
                ("tenant ahead", "2099_01_01_0001", "from_the_future")
            );
        }
        other => panic!("expected UnknownApplied, got {other:?}"),
    }
    assert!(report.failures[0]
        .error
        .to_string()
        .contains("this binary does not know"));
    assert!(
        !table_exists(&pool, "ahead", "notes").await,
        "a migration ran in a tenant that is ahead"
    );
    assert!(table_exists(&pool, "normal", "notes").await);

    // Rolling back is refused as well, before anything changes.
    let error = full
        .rollback(&name("ahead"), RollbackTarget::Steps(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UnknownApplied { .. }), "{error:?}");
    assert!(table_exists(&pool, "ahead", "accounts").await);

    // The same in the public schema stops the run before any tenant.
    sqlx::query(
        "INSERT INTO public.mtnt_migrations (migration_order, name, checksum, status)
         VALUES (209901010002, 'public_future', 'abc', 'completed')",
    )
    .execute(&pool)
    .await
    .unwrap();
    match full.migrate(&MigrateOptions::new()).await {
        Err(Error::UnknownApplied { target, .. }) => assert_eq!(target, "the public schema"),
        other => panic!("expected UnknownApplied, got {other:?}"),
    }

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// A run cancelled in the middle of a migration (the deploy was killed, a timeout fired).

mod cancelled {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static SLOW: AtomicBool = AtomicBool::new(true);

    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_08_05_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_08_05_0002)]
    async fn create_reports(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE reports (id bigserial PRIMARY KEY)")
            .await?;
        if SLOW.load(Ordering::SeqCst) {
            ctx.execute("SELECT pg_sleep(1.5)").await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_run_leaves_no_transaction_or_lock_behind() {
    let db = TestDb::create("cancelled").await;
    let pool = db.pool(3).await;
    create_all(&migrator(&pool, "pg_integrity::cancelled::v1"), &["acme"]).await;
    let full = migrator(&pool, "pg_integrity::cancelled");

    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        full.migrate(&MigrateOptions::new()),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the slow migration finished within 300 ms"
    );
    cancelled::SLOW.store(false, std::sync::atomic::Ordering::SeqCst);

    // The next run waits for the abandoned connection to be dealt with, then applies the
    // migration once: the cancelled transaction was rolled back, not committed later.
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 1);
    assert!(table_exists(&pool, "acme", "reports").await);
    assert_eq!(
        tracking_row(&pool, "acme", 2024_08_05_0002)
            .await
            .unwrap()
            .status,
        "completed"
    );

    // No connection of this database sits in a transaction or holds an advisory lock.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let in_transaction: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_transaction, 0);
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
