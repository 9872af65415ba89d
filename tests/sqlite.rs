//! What only the SQLite backend (one file per tenant) has: URLs that name a directory, WAL
//! journaling of the tenant files, `adopt` meeting a file that is no database, and how many
//! of a tenant's pending migrations share a transaction (`Transactions`, as
//! `tests/pg_transactions.rs` proves on PostgreSQL). The behaviour every engine shares
//! (fleet, failures, rollback, create, checksums, adopt, CLI) is proven on SQLite by
//! `tests/behaviour.rs`.
#![cfg(feature = "sqlite")]
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use std::path::Path;

use mtnt::{
    ConnectOptions, Error, MigrateOptions, MigrationSet, Migrator, SqliteBackend, Tenancy,
    TenantName, Transactions,
};
use mtnt_test_support::create_tenants;
use mtnt_test_support::sqlite::{open_file, sqlite_dir, table_exists, tracking_row};
use sqlx::Connection;

// The behaviour suite's migrations; this file uses the main set only.
#[allow(dead_code)]
#[path = "behaviour/migrations.rs"]
mod migrations;

/// The behaviour suite's main set.
fn fleet() -> MigrationSet {
    MigrationSet::registered_in("sqlite::migrations::fleet").unwrap()
}

async fn migrator(dir: &std::path::Path) -> Migrator {
    Migrator::builder(SqliteBackend::open(dir).await.unwrap())
        .migrations(fleet())
        .build()
        .unwrap()
}

// SQLite only: the journal mode is a property of a SQLite file.
#[tokio::test]
async fn tenant_files_use_wal_journaling() {
    let dir = sqlite_dir();
    let m = migrator(dir.path()).await;
    m.create_tenant(&TenantName::new("acme").unwrap())
        .await
        .unwrap();
    for file in ["acme.db", "mtnt_control.db"] {
        let mut conn = open_file(&dir.path().join(file)).await;
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal", "{file}");
        conn.close().await.unwrap();
    }
}

// SQLite only: a server never hands a schema or database over that is not one.
#[tokio::test]
async fn adopt_names_a_file_that_is_no_database() {
    let dir = sqlite_dir();
    let m = migrator(dir.path()).await;
    std::fs::write(
        dir.path().join("broken.db"),
        b"this is no SQLite file, just text long enough",
    )
    .unwrap();
    let error = m.adopt("broken", None).await.unwrap_err();
    assert!(error.to_string().contains("broken.db"), "{error}");
    assert!(m.tenants().await.unwrap().is_empty());
}

// SQLite only: the URL forms of `sqlite:` (the behaviour suite uses `sqlite:///abs/dir`).
#[tokio::test]
async fn connect_takes_sqlite_urls_naming_a_directory() {
    let dir = sqlite_dir();
    let tenants = dir.path().join("nested").join("tenants");
    let url = format!("sqlite://{}", tenants.display());
    let backend = mtnt::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (backend.engine(), backend.tenancy()),
        (mtnt::Engine::Sqlite, Tenancy::File)
    );
    backend.prepare().await.unwrap();
    assert!(tenants.join("mtnt_control.db").is_file());

    let mut options = ConnectOptions::default();
    options.tenancy = Some(Tenancy::Schema);
    let error = mtnt::connect(&url, &options).await.err().unwrap();
    assert!(matches!(error, Error::BadUrl { .. }), "{error}");
    assert!(error.to_string().contains("use file"), "{error}");

    let error = mtnt::connect("sqlite::memory:", &ConnectOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::BadUrl { .. }), "{error}");
}

const BASE: i64 = 2024_09_01_0001;
const NOTES: i64 = 2024_09_01_0002;
const INDEX: i64 = 2024_09_01_0003;
const TAGS: i64 = 2024_09_01_0004;

/// Migrations that fail in tenants whose name ends in `bad` (SQLite's `1 / 0` is NULL, not
/// an error: a missing table fails instead).
mod upgrade {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_09_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_09_01_0002)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_09_01_0003)]
    async fn index_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE INDEX accounts_email ON accounts (email)")
            .await?;
        if ctx.tenant().unwrap().name.as_str().ends_with("bad") {
            ctx.execute("INSERT INTO no_such_table VALUES (1)").await?;
        }
        Ok(())
    }

    #[mtnt::migration(scope = "tenant", order = 2024_09_01_0004)]
    async fn create_tags(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY)")
            .await
    }
}

/// A migrator of the migrations under `prefix` with `transactions`, its backend made by
/// `mtnt::connect` (as the CLI makes it), so that the option's way from the CLI's
/// `connect` and builder is tested too.
async fn connected(dir: &Path, prefix: &str, transactions: Transactions) -> Migrator {
    let url = format!("sqlite://{}", dir.display());
    let backend = mtnt::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    Migrator::builder_boxed(backend)
        .migrations(MigrationSet::registered_in(prefix).unwrap())
        .transactions(transactions)
        .build()
        .unwrap()
}

/// Creates `good` and `bad` at v1, then upgrades both with three pending migrations, the
/// second of which fails for `bad`.
async fn upgrade(dir: &Path, transactions: Transactions) -> mtnt::MigrateReport {
    let v1 = connected(dir, "sqlite::upgrade::v1", transactions).await;
    create_tenants(&v1, &["good", "bad"]).await;
    connected(dir, "sqlite::upgrade", transactions)
        .await
        .migrate(&MigrateOptions::new())
        .await
        .unwrap()
}

/// The registry row's `(applied_order, failed_order)`, read in the control file.
async fn registry(dir: &Path, tenant: &str) -> (Option<i64>, Option<i64>) {
    let mut conn = open_file(&dir.join("mtnt_control.db")).await;
    let row =
        sqlx::query_as("SELECT applied_order, failed_order FROM mtnt_tenants WHERE name = ?1")
            .bind(tenant)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    row
}

async fn assert_good_upgraded(dir: &Path) {
    let mut conn = open_file(&dir.join("good.db")).await;
    assert!(table_exists(&mut conn, "tags").await);
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT migration_order, status, started_at, finished_at FROM mtnt_migrations \
         ORDER BY migration_order",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|(order, status, ..)| (*order, status.as_str()))
            .collect::<Vec<_>>(),
        [
            (BASE, "completed"),
            (NOTES, "completed"),
            (INDEX, "completed"),
            (TAGS, "completed")
        ]
    );
    // Each row has its own times, in the order the migrations ran (RFC 3339 in UTC with
    // milliseconds: text order is time order).
    for pair in rows[1..].windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(before.3 <= after.2, "{before:?} {after:?}");
        assert!(before.2 <= before.3, "{before:?}");
    }
    assert_eq!(registry(dir, "good").await, (Some(TAGS), None));
}

#[tokio::test]
async fn per_tenant_a_failure_leaves_the_tenant_where_it_was() {
    let dir = sqlite_dir();
    let report = upgrade(dir.path(), Transactions::PerTenant).await;
    assert_eq!((report.tenants_migrated, report.migrations_applied), (1, 3));
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].tenant.as_str(), "bad");
    let message = report.failures[0].error.to_string();
    assert!(
        message.contains("2024_09_01_0003 index_accounts") && message.contains("no_such_table"),
        "{message}"
    );
    assert!(matches!(report.failures[0].error, Error::Migration { .. }));
    assert_good_upgraded(dir.path()).await;

    // bad: the migration before the failed one was undone with it.
    let mut conn = open_file(&dir.path().join("bad.db")).await;
    assert!(table_exists(&mut conn, "accounts").await);
    assert!(!table_exists(&mut conn, "notes").await);
    assert_eq!(tracking_row(&mut conn, BASE).await.unwrap().0, "completed");
    assert!(tracking_row(&mut conn, NOTES).await.is_none());
    let (status, error) = tracking_row(&mut conn, INDEX).await.unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("no_such_table"));
    assert!(tracking_row(&mut conn, TAGS).await.is_none());
    conn.close().await.unwrap();
    assert_eq!(registry(dir.path(), "bad").await, (Some(BASE), Some(INDEX)));
}

#[tokio::test]
async fn per_migration_a_failure_keeps_the_migrations_before_it() {
    let dir = sqlite_dir();
    let report = upgrade(dir.path(), Transactions::PerMigration).await;
    assert_eq!((report.tenants_migrated, report.migrations_applied), (1, 3));
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_good_upgraded(dir.path()).await;

    let mut conn = open_file(&dir.path().join("bad.db")).await;
    assert!(table_exists(&mut conn, "notes").await);
    assert_eq!(tracking_row(&mut conn, NOTES).await.unwrap().0, "completed");
    assert_eq!(tracking_row(&mut conn, INDEX).await.unwrap().0, "failed");
    assert!(!table_exists(&mut conn, "tags").await);
    conn.close().await.unwrap();
    assert_eq!(
        registry(dir.path(), "bad").await,
        (Some(NOTES), Some(INDEX))
    );
}

mod split {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_10_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_10_01_0002)]
    async fn create_notes(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_10_01_0003, transaction = false)]
    async fn index_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE INDEX IF NOT EXISTS accounts_email ON accounts (email)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_10_01_0004)]
    async fn create_tags(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY)")
            .await?;
        if ctx.tenant().unwrap().name.as_str().ends_with("bad") {
            ctx.execute("INSERT INTO no_such_table VALUES (1)").await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_migration_outside_a_transaction_splits_the_upgrade() {
    let dir = sqlite_dir();
    let v1 = connected(dir.path(), "sqlite::split::v1", Transactions::PerTenant).await;
    create_tenants(&v1, &["bad"]).await;
    let report = connected(dir.path(), "sqlite::split", Transactions::PerTenant)
        .await
        .migrate(&MigrateOptions::new())
        .await
        .unwrap();
    assert_eq!(report.failures.len(), 1, "{report:?}");
    // The migrations before the non-transactional one committed, and it did; the group
    // after it failed as a whole, and the registry stays at the last commit.
    let mut conn = open_file(&dir.path().join("bad.db")).await;
    for (order, status) in [
        (2024_10_01_0002, "completed"),
        (2024_10_01_0003, "completed"),
        (2024_10_01_0004, "failed"),
    ] {
        assert_eq!(
            tracking_row(&mut conn, order).await.unwrap().0,
            status,
            "{order}"
        );
    }
    assert!(table_exists(&mut conn, "notes").await);
    assert!(!table_exists(&mut conn, "tags").await);
    conn.close().await.unwrap();
    assert_eq!(
        registry(dir.path(), "bad").await,
        (Some(2024_10_01_0003), Some(2024_10_01_0004))
    );
}

/// `status` reads every tenant's file (SQLite keeps no fingerprint in the registry): a
/// tracking row edited by hand, a deleted one and a `started` one are each seen by
/// `status` and by a fleet run, a registered tenant whose file is missing is reported and
/// not created, and the read leaves no file behind.
#[tokio::test]
async fn status_sees_hand_edits_of_tenant_files_and_creates_nothing() {
    let dir = sqlite_dir();
    let m = migrator(dir.path()).await;
    let names = ["edited", "deleted", "started", "intact", "missing"];
    create_tenants(&m, &names).await;
    let newest: i64 = {
        let mut conn = open_file(&dir.path().join("intact.db")).await;
        let newest = sqlx::query_scalar("SELECT max(migration_order) FROM mtnt_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        newest
    };
    for (tenant, sql) in [
        (
            "edited",
            "UPDATE mtnt_migrations SET checksum = 'by hand' WHERE migration_order = ?1",
        ),
        (
            "deleted",
            "DELETE FROM mtnt_migrations WHERE migration_order = ?1",
        ),
        (
            "started",
            "UPDATE mtnt_migrations SET status = 'started' WHERE migration_order = ?1",
        ),
    ] {
        let mut conn = open_file(&dir.path().join(format!("{tenant}.db"))).await;
        sqlx::query(sql)
            .bind(newest)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    std::fs::remove_file(dir.path().join("missing.db")).unwrap();
    let files = |dir: &Path| {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    };
    let before = files(dir.path());
    let status = m.status(&[]).await.unwrap();
    let condition = |tenant: &str| {
        status
            .tenants
            .iter()
            .find(|t| t.tenant.as_str() == tenant)
            .map(|t| t.condition)
            .unwrap()
    };
    assert_eq!(condition("intact"), mtnt::Condition::Current);
    assert_eq!(condition("edited"), mtnt::Condition::Drifted);
    assert_eq!(condition("deleted"), mtnt::Condition::Behind);
    assert_eq!(condition("started"), mtnt::Condition::NeedsRepair);
    assert_eq!(condition("missing"), mtnt::Condition::Failed);
    assert_eq!(files(dir.path()), before, "status created or left files");
    assert!(!dir.path().join("missing.db").exists());
    // A fleet run skips only the intact tenant: each other one gets a session (the
    // deleted migration runs again; the others are refused).
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.tenants_current, 1, "{report:?}");
    assert_eq!(
        report.tenants_migrated + report.failures.len(),
        4,
        "{report:?}"
    );
}
