//! The SQLite backend (one file per tenant) end to end, in-process, in temporary directories.

// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{
    ConnectOptions, Error, MigrateOptions, MigrationSet, MigrationStatus, Migrator, RollbackTarget,
    SqliteBackend, Tenancy, TenantName, TenantState,
};
use mtnt_test_support::sqlite::{create_file, open_file, sqlite_dir, table_exists, tracking_row};
use sqlx::Connection;

const PLANS: i64 = 2024_01_01_0001;
const ACCOUNTS: i64 = 2024_01_01_0002;
const PROJECTS: i64 = 2024_01_01_0003;
const BACKFILL: i64 = 2024_01_01_0004;

/// The main set: a public migration and three reversible tenant migrations; `add_projects`
/// fails in tenant `bad` after creating its table.
mod fleet {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
    async fn create_plans(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE plans (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0002, down = drop_accounts)]
    async fn create_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
            .await
    }

    async fn drop_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE accounts").await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0003, down = drop_projects)]
    async fn add_projects(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE projects (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
            .await?;
        if ctx.tenant().unwrap().name.as_str() == "bad" {
            return Err(mtnt::Error::other("tenant bad cannot have projects"));
        }
        Ok(())
    }

    async fn drop_projects(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE projects").await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0004, down = remove_admin)]
    async fn backfill_admin(ctx: &mut Ctx<'_>) -> Result<()> {
        let email = format!("admin@{}.example", ctx.tenant().unwrap().name);
        sqlx::query("INSERT INTO accounts (email) VALUES (?1)")
            .bind(email)
            .execute(ctx.sqlite()?)
            .await?;
        Ok(())
    }

    async fn remove_admin(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DELETE FROM accounts WHERE email LIKE 'admin@%'")
            .await
    }
}

/// An irreversible migration under a reversible one.
mod oneway {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "tenant", order = 2024_02_01_0001)]
    async fn create_ledger(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_02_01_0002, down = drop_notes)]
    async fn create_notes(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
            .await
    }

    async fn drop_notes(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE notes").await
    }
}

/// A migration outside a transaction that fails in tenant `flaky`.
mod outside {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "tenant", order = 2024_03_01_0001)]
    async fn create_items(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, sku TEXT)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_03_01_0002, transaction = false)]
    async fn index_items(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE INDEX IF NOT EXISTS items_sku ON items (sku)")
            .await?;
        if ctx.tenant().unwrap().name.as_str() == "flaky" {
            return Err(mtnt::Error::other("flaky lost its nerve"));
        }
        Ok(())
    }
}

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

/// The `fleet` migrations up to `to`.
fn fleet_set(to: i64) -> MigrationSet {
    let all = MigrationSet::registered_in("sqlite::fleet").unwrap();
    MigrationSet::new(all.iter().filter(|m| m.order() <= to)).unwrap()
}

async fn migrator(dir: &std::path::Path, set: MigrationSet) -> Migrator {
    Migrator::builder(SqliteBackend::open(dir).await.unwrap())
        .migrations(set)
        .build()
        .unwrap()
}

fn tenant_file(dir: &std::path::Path, tenant: &str) -> std::path::PathBuf {
    dir.join(format!("{tenant}.db"))
}

#[tokio::test]
async fn fleet_of_twenty_with_one_failure_then_rollback() {
    let dir = sqlite_dir();
    // Twenty tenants at the first tenant migration, `bad` among them.
    let v1 = migrator(dir.path(), fleet_set(ACCOUNTS)).await;
    let mut names: Vec<String> = (1..=19).map(|i| format!("t{i:02}")).collect();
    names.push("bad".to_owned());
    for n in &names {
        v1.create_tenant(&name(n)).await.unwrap();
    }
    assert_eq!(v1.backend().tenant_count().await.unwrap(), 20);
    assert!(dir.path().join("mtnt_control.db").is_file());

    // The full set: 19 tenants get both new migrations, `bad` fails and stays at ACCOUNTS.
    let v2 = migrator(dir.path(), fleet_set(BACKFILL)).await;
    let report = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(
        report.public_applied, 0,
        "create_tenant applied the public migration already"
    );
    assert_eq!(report.tenants_total, 20);
    assert_eq!(report.tenants_migrated, 19);
    assert_eq!(report.migrations_applied, 38);
    assert!(!report.is_success());
    assert_eq!(report.failures.len(), 1);
    let failure = &report.failures[0];
    assert_eq!(failure.tenant.as_str(), "bad");
    let message = failure.error.to_string();
    assert!(
        message.contains("2024_01_01_0003 add_projects"),
        "{message}"
    );
    assert!(
        message.contains("tenant bad cannot have projects"),
        "{message}"
    );

    let mut bad = open_file(&tenant_file(dir.path(), "bad")).await;
    assert!(table_exists(&mut bad, "accounts").await);
    assert!(
        !table_exists(&mut bad, "projects").await,
        "the failed migration was rolled back"
    );
    let (status, error) = tracking_row(&mut bad, PROJECTS).await.unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("tenant bad cannot have projects"));
    assert_eq!(
        tracking_row(&mut bad, ACCOUNTS).await.unwrap().0,
        "completed"
    );
    assert!(tracking_row(&mut bad, BACKFILL).await.is_none());
    bad.close().await.unwrap();

    let mut good = open_file(&tenant_file(dir.path(), "t07")).await;
    assert!(table_exists(&mut good, "projects").await);
    let admins: i64 =
        sqlx::query_scalar("SELECT count(*) FROM accounts WHERE email = 'admin@t07.example'")
            .fetch_one(&mut good)
            .await
            .unwrap();
    assert_eq!(admins, 1);
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut good)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    good.close().await.unwrap();

    // Status comes from the registry cache.
    let status = v2.status(&[]).await.unwrap();
    assert_eq!(
        status.summary(),
        "19/20 tenants current, 0 behind, 1 failed"
    );
    assert_eq!(status.public.applied_order, Some(PLANS));
    let bad_status = status
        .tenants
        .iter()
        .find(|t| t.tenant.as_str() == "bad")
        .unwrap();
    assert_eq!(bad_status.applied_order, Some(ACCOUNTS));
    assert_eq!(bad_status.pending, 2);
    let failed = bad_status.failed.as_ref().unwrap();
    assert_eq!(
        (failed.order, failed.name),
        (PROJECTS, Some("add_projects"))
    );
    assert!(failed
        .error
        .as_deref()
        .unwrap()
        .contains("tenant bad cannot have projects"));

    // A second run: the others are current, `bad` fails the same way.
    let again = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((again.tenants_current, again.failures.len()), (19, 1));

    // Rollback by steps, then to an order.
    let one = v2
        .rollback(&name("t01"), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(one.reverted, vec![(BACKFILL, "backfill_admin")]);
    let to = v2
        .rollback(&name("t01"), RollbackTarget::To(ACCOUNTS))
        .await
        .unwrap();
    assert_eq!(to.reverted, vec![(PROJECTS, "add_projects")]);
    let mut t01 = open_file(&tenant_file(dir.path(), "t01")).await;
    assert!(!table_exists(&mut t01, "projects").await);
    assert!(table_exists(&mut t01, "accounts").await);
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&mut t01)
        .await
        .unwrap();
    assert_eq!(admins, 0, "the backfill's down removed its row");
    assert_eq!(tracking_row(&mut t01, PROJECTS).await.unwrap().0, "pending");
    assert_eq!(tracking_row(&mut t01, BACKFILL).await.unwrap().0, "pending");
    t01.close().await.unwrap();

    let status = v2.status(&[name("t01")]).await.unwrap();
    assert_eq!(status.tenants[0].applied_order, Some(ACCOUNTS));
    assert_eq!(status.tenants[0].pending, 2);
    assert_eq!(status.summary(), "0/1 tenants current, 1 behind, 0 failed");

    // Migrating only t01 brings it back.
    let back = v2
        .migrate(&MigrateOptions::new().tenants([name("t01")]))
        .await
        .unwrap();
    assert!(back.is_success());
    assert_eq!(back.migrations_applied, 2);
    let status = v2.status(&[]).await.unwrap();
    assert_eq!(
        status.summary(),
        "19/20 tenants current, 0 behind, 1 failed"
    );

    // The registry only caches the tenant files' tracking tables: a stale row is healed
    // by the next run that reads the tenant's file.
    let mut control = open_file(&dir.path().join("mtnt_control.db")).await;
    sqlx::query("UPDATE mtnt_tenants SET applied_order = NULL WHERE name = 't02'")
        .execute(&mut control)
        .await
        .unwrap();
    control.close().await.unwrap();
    assert_eq!(
        v2.status(&[]).await.unwrap().summary(),
        "18/20 tenants current, 1 behind, 1 failed"
    );
    let healed = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((healed.tenants_current, healed.migrations_applied), (19, 0));
    assert_eq!(
        v2.status(&[]).await.unwrap().summary(),
        "19/20 tenants current, 0 behind, 1 failed"
    );
}

#[tokio::test]
async fn irreversible_migration_refuses_rollback_and_changes_nothing() {
    let dir = sqlite_dir();
    let m = migrator(
        dir.path(),
        MigrationSet::registered_in("sqlite::oneway").unwrap(),
    )
    .await;
    m.create_tenant(&name("acme")).await.unwrap();

    let error = m
        .rollback(&name("acme"), RollbackTarget::Steps(2))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Irreversible { .. }), "{error}");
    assert!(
        error.to_string().contains("2024_02_01_0001 create_ledger"),
        "{error}"
    );
    let mut conn = open_file(&tenant_file(dir.path(), "acme")).await;
    assert!(
        table_exists(&mut conn, "notes").await,
        "nothing was reverted"
    );
    assert_eq!(
        tracking_row(&mut conn, 2024_02_01_0002).await.unwrap().0,
        "completed"
    );

    let error = m
        .rollback(&name("acme"), RollbackTarget::All)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Irreversible { .. }), "{error}");
    assert!(table_exists(&mut conn, "notes").await);

    // One step stops above the irreversible migration.
    let report = m
        .rollback(&name("acme"), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.reverted, vec![(2024_02_01_0002, "create_notes")]);
    assert!(!table_exists(&mut conn, "notes").await);
    assert!(table_exists(&mut conn, "ledger").await);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn failing_create_leaves_no_file_and_no_registry_row() {
    let dir = sqlite_dir();
    let m = migrator(dir.path(), fleet_set(BACKFILL)).await;
    m.create_tenant(&name("first")).await.unwrap();

    let error = m.create_tenant(&name("bad")).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("tenant bad cannot have projects"),
        "{error}"
    );
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = dir.path().join(format!("bad.db{suffix}"));
        assert!(!file.exists(), "{} was left behind", file.display());
    }
    let backend = m.backend();
    assert!(backend
        .tenant_records(&[name("bad")])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(backend.tenant_count().await.unwrap(), 1);

    // Created tenants are active, at the newest migration; names are taken once.
    let record = backend
        .tenant_records(&[name("first")])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(record.state, TenantState::Active);
    assert_eq!(record.applied_order, Some(BACKFILL));
    let error = m.create_tenant(&name("first")).await.unwrap_err();
    assert!(matches!(error, Error::TenantExists(_)), "{error}");

    // A stray file with a tenant's name is never overwritten.
    std::fs::write(dir.path().join("stray.db"), b"").unwrap();
    let error = m.create_tenant(&name("stray")).await.unwrap_err();
    assert!(error.to_string().contains("adopt"), "{error}");
    assert!(backend
        .tenant_records(&[name("stray")])
        .await
        .unwrap()
        .is_empty());
    assert!(dir.path().join("stray.db").exists());

    // Dropping removes the file and the row.
    let first = backend
        .tenant_records(&[name("first")])
        .await
        .unwrap()
        .remove(0)
        .tenant;
    backend.drop_tenant(&first).await.unwrap();
    assert!(!tenant_file(dir.path(), "first").exists());
    assert_eq!(backend.tenant_count().await.unwrap(), 0);
}

#[tokio::test]
async fn checksum_drift_is_refused_until_repaired() {
    let dir = sqlite_dir();
    let m = migrator(dir.path(), fleet_set(BACKFILL)).await;
    m.create_tenant(&name("acme")).await.unwrap();
    m.create_tenant(&name("beta")).await.unwrap();

    let mut acme = open_file(&tenant_file(dir.path(), "acme")).await;
    sqlx::query("UPDATE mtnt_migrations SET checksum = 'tampered' WHERE migration_order = ?1")
        .bind(ACCOUNTS)
        .execute(&mut acme)
        .await
        .unwrap();

    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].tenant.as_str(), "acme");
    let error = &report.failures[0].error;
    assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error}");
    assert!(
        error.to_string().contains("recorded checksum tampered"),
        "{error}"
    );
    let error = m
        .rollback(&name("acme"), RollbackTarget::Steps(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error}");
    assert!(
        table_exists(&mut acme, "projects").await,
        "nothing was rolled back"
    );

    // The public tracking table is checked too.
    let mut control = open_file(&dir.path().join("mtnt_control.db")).await;
    sqlx::query("UPDATE mtnt_migrations SET checksum = 'edited' WHERE migration_order = ?1")
        .bind(PLANS)
        .execute(&mut control)
        .await
        .unwrap();
    let error = m.migrate(&MigrateOptions::new()).await.unwrap_err();
    assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error}");
    assert!(error.to_string().contains("the public schema"), "{error}");

    assert_eq!(m.repair_checksums(&[]).await.unwrap(), 2);
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.tenants_current, 2);
    assert_eq!(m.repair_checksums(&[]).await.unwrap(), 0);
    acme.close().await.unwrap();
    control.close().await.unwrap();
}

#[tokio::test]
async fn adopt_registers_existing_files_with_a_baseline() {
    let dir = sqlite_dir();
    // Files an older system left: two tenants with the accounts table, one invalid name,
    // and files adopt must ignore.
    for stem in ["legacy-a", "legacy-b", "Legacy_C", "other"] {
        let mut conn = create_file(&tenant_file(dir.path(), stem)).await;
        sqlx::query("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT UNIQUE)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    std::fs::write(dir.path().join("legacy-notes.txt"), b"not a database").unwrap();

    let m = migrator(dir.path(), fleet_set(BACKFILL)).await;
    let (adopted, skipped) = m.adopt("%egacy%", Some(ACCOUNTS)).await.unwrap();
    let adopted: Vec<&str> = adopted.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(adopted, ["legacy-a", "legacy-b"]);
    assert_eq!(skipped, ["Legacy_C"]);

    let records = m.tenants().await.unwrap();
    assert_eq!(records.len(), 2);
    assert!(records
        .iter()
        .all(|r| r.state == TenantState::Active && r.applied_order == Some(ACCOUNTS)));
    let mut a = open_file(&tenant_file(dir.path(), "legacy-a")).await;
    assert_eq!(tracking_row(&mut a, ACCOUNTS).await.unwrap().0, "completed");

    // Registered files are not adopted twice; the baseline is not re-run by migrate.
    let (again, _) = m.adopt("legacy%", Some(ACCOUNTS)).await.unwrap();
    assert!(again.is_empty());
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 4);
    assert!(table_exists(&mut a, "projects").await);
    a.close().await.unwrap();
    assert_eq!(
        m.status(&[]).await.unwrap().summary(),
        "2/2 tenants current, 0 behind, 0 failed"
    );

    // A file that is no database is named in the error, and not registered.
    std::fs::write(
        dir.path().join("broken.db"),
        b"this is no SQLite file, just text long enough",
    )
    .unwrap();
    let error = m.adopt("broken", None).await.unwrap_err();
    assert!(error.to_string().contains("broken.db"), "{error}");
    assert_eq!(m.tenants().await.unwrap().len(), 2);
}

#[tokio::test]
async fn non_transactional_failure_stays_started_until_marked() {
    let dir = sqlite_dir();
    let m = migrator(
        dir.path(),
        MigrationSet::registered_in("sqlite::outside").unwrap(),
    )
    .await;
    // create_tenant runs the transactional prefix atomically, the rest after it.
    m.create_tenant(&name("steady")).await.unwrap();
    let record = m
        .backend()
        .tenant_records(&[name("steady")])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (record.state, record.applied_order),
        (TenantState::Active, Some(2024_03_01_0002))
    );
    let error = m.create_tenant(&name("flaky")).await.unwrap_err();
    assert!(
        error.to_string().contains("flaky lost its nerve"),
        "{error}"
    );
    assert!(!tenant_file(dir.path(), "flaky").exists());
    assert!(m
        .backend()
        .tenant_records(&[name("flaky")])
        .await
        .unwrap()
        .is_empty());

    // A tenant that fails the migration during `migrate`: the row stays `started`.
    let before = migrator(
        dir.path(),
        MigrationSet::new(
            MigrationSet::registered_in("sqlite::outside")
                .unwrap()
                .iter()
                .take(1),
        )
        .unwrap(),
    )
    .await;
    before.create_tenant(&name("flaky")).await.unwrap();
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    let mut conn = open_file(&tenant_file(dir.path(), "flaky")).await;
    let (status, error) = tracking_row(&mut conn, 2024_03_01_0002).await.unwrap();
    assert_eq!(status, "started");
    assert!(error.unwrap().contains("flaky lost its nerve"));

    // The next run refuses to guess; marking it completed by hand is the way out.
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(
        matches!(report.failures[0].error, Error::Interrupted { .. }),
        "{}",
        report.failures[0].error
    );
    m.mark(
        Some(&name("flaky")),
        2024_03_01_0002,
        MigrationStatus::Completed,
    )
    .await
    .unwrap();
    assert_eq!(
        tracking_row(&mut conn, 2024_03_01_0002).await.unwrap(),
        ("completed".to_owned(), None)
    );
    let status = m.status(&[]).await.unwrap();
    assert_eq!(status.summary(), "2/2 tenants current, 0 behind, 0 failed");
    conn.close().await.unwrap();
}

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
