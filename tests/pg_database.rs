//! PostgreSQL with one database per tenant (`--tenancy database`, [`PgDatabaseBackend`]) end
//! to end. Each test works in a [`Model`] of its own: a fresh control database and a tenant
//! prefix unique to the test, whose tenant databases are dropped when it ends, even when it
//! fails.

// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use assert_cmd::Command;
use mtnt::{
    Error, MigrateOptions, MigrationSet, Migrator, PgDatabaseBackend, RollbackTarget, Tenant,
    TenantName,
};
use mtnt_test_support::like_prefix;
use mtnt_test_support::models::{Kind, Model, Place};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const PLANS: i64 = 2024_01_01_0001;
const ACCOUNTS: i64 = 2024_01_01_0002;
const PROJECTS: i64 = 2024_01_02_0001;
const BACKFILL: i64 = 2024_01_02_0002;

/// v1: a public migration and a tenant one; v2: two more tenant migrations, the first of
/// which creates a table and then fails in tenants whose name ends in `_bad` while `FAIL`.
mod fleet {
    use std::sync::atomic::{AtomicBool, Ordering};

    use mtnt::{Ctx, Result};

    pub static FAIL: AtomicBool = AtomicBool::new(true);

    pub mod v1 {
        use mtnt::{Ctx, Result};

        #[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
        async fn create_plans(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute(
                "CREATE TABLE plans (id bigserial PRIMARY KEY, name text NOT NULL);
                 INSERT INTO plans (name) VALUES ('free')",
            )
            .await
        }

        #[mtnt::migration(scope = "tenant", order = 2024_01_01_0002, down = drop_accounts)]
        async fn create_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text UNIQUE)")
                .await
        }

        async fn drop_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("DROP TABLE accounts").await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_02_0001, down = drop_projects)]
    async fn add_projects(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE projects (id bigserial PRIMARY KEY, title text NOT NULL)")
            .await?;
        if FAIL.load(Ordering::SeqCst) && ctx.tenant().unwrap().name.as_str().ends_with("_bad") {
            return Err(mtnt::Error::other("bad tenants cannot have projects"));
        }
        Ok(())
    }

    async fn drop_projects(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE projects").await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_02_0002, down = remove_admin)]
    async fn backfill_admin(ctx: &mut Ctx<'_>) -> Result<()> {
        let email = format!("admin@{}.example", ctx.tenant().unwrap().name);
        sqlx::query("INSERT INTO accounts (email) VALUES ($1)")
            .bind(email)
            .execute(ctx.postgres()?)
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
        ctx.execute("CREATE TABLE ledger (id bigint PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_02_01_0002, down = drop_notes)]
    async fn create_notes(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE notes (id bigint PRIMARY KEY)")
            .await
    }

    async fn drop_notes(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP TABLE notes").await
    }
}

/// A second tenant migration that always fails after creating a table.
mod broken {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "tenant", order = 2024_03_01_0001)]
    async fn create_widgets(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE widgets (id bigint PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_03_01_0002)]
    async fn break_widgets(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE gadgets (id bigint PRIMARY KEY); SELECT * FROM no_such_table")
            .await
    }
}

/// A non-transactional migration (run after the creating transaction) that fails in
/// tenants whose name ends in `_bad`.
mod nontx {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "tenant", order = 2024_04_01_0001)]
    async fn create_items(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE items (id bigint PRIMARY KEY, sku text)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_04_01_0002, transaction = false)]
    async fn index_items(ctx: &mut Ctx<'_>) -> Result<()> {
        if ctx.tenant().unwrap().name.as_str().ends_with("_bad") {
            return ctx
                .execute("CREATE INDEX CONCURRENTLY items_sku ON no_such_table (sku)")
                .await;
        }
        ctx.execute("CREATE INDEX CONCURRENTLY items_sku ON items (sku)")
            .await
    }
}

/// A slow migration, so that two runs overlap.
mod slow {
    use mtnt::{Ctx, Result};

    pub mod v1 {
        use mtnt::{Ctx, Result};

        #[mtnt::migration(scope = "tenant", order = 2024_05_01_0001)]
        async fn create_events(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("CREATE TABLE events (id bigserial PRIMARY KEY)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_05_01_0002)]
    async fn seed_events(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("SELECT pg_sleep(0.3); INSERT INTO events DEFAULT VALUES")
            .await
    }
}

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

fn set(prefix: &str) -> MigrationSet {
    MigrationSet::registered_in(prefix).unwrap()
}

fn fleet_v1() -> MigrationSet {
    set("pg_database::fleet::v1")
}

fn fleet_all() -> MigrationSet {
    set("pg_database::fleet")
}

/// A control database and tenant prefix of the test's own.
async fn model(label: &str) -> Model {
    Model::new(Kind::PgDatabase, label).await
}

/// A column of a tenant's registry row in the control database.
async fn registry_int(model: &Model, tenant: &str, column: &str) -> Option<i64> {
    model
        .int(
            Place::Control,
            &format!("SELECT {column} FROM mtnt_tenants WHERE name = '{tenant}'"),
        )
        .await
}

async fn registered(model: &Model, tenant: &str) -> bool {
    let sql = format!("SELECT count(*) FROM mtnt_tenants WHERE name = '{tenant}'");
    model.int(Place::Control, &sql).await == Some(1)
}

/// How many sessions are connected to a tenant database of this test, after waiting (a
/// little) for the count to reach zero.
async fn tenant_connections(model: &Model) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '{}'",
        like_prefix(model.prefix())
    );
    let mut count = 0;
    for _ in 0..40 {
        count = model.int(Place::Control, &sql).await.unwrap_or(0);
        if count == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_tenants_migrate_and_a_failing_one_is_isolated() {
    let model = model("pgdb_fleet").await;
    let bad = model.tenant("acme_bad");
    let mut names: Vec<String> = (1..=9).map(|i| model.tenant(&format!("acme{i}"))).collect();
    names.push(bad.clone());
    let good = &names[3];

    let v1 = model.migrator(fleet_v1()).await;
    for n in &names {
        v1.create_tenant(&name(n)).await.unwrap();
    }
    assert_eq!(v1.backend().tenant_count().await.unwrap(), 10);
    assert_eq!(model.storage_count().await, 10);
    for n in &names {
        assert_eq!(
            registry_int(&model, n, "applied_order").await,
            Some(ACCOUNTS)
        );
    }
    // The public migration ran once, in the control database only.
    assert!(model.table_exists(Place::Control, "plans").await);
    assert!(model.table_exists(Place::Tenant(good), "accounts").await);
    assert!(!model.table_exists(Place::Tenant(good), "plans").await);
    assert!(
        !model
            .table_exists(Place::Tenant(good), "mtnt_tenants")
            .await
    );

    let all = model.migrator(fleet_all()).await;
    let report = all.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.public_applied, 0);
    assert_eq!(
        (
            report.tenants_total,
            report.tenants_migrated,
            report.migrations_applied
        ),
        (10, 9, 18)
    );
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].tenant.as_str(), bad);
    let message = report.failures[0].error.to_string();
    assert!(
        message.contains("2024_01_02_0001 add_projects"),
        "{message}"
    );
    assert!(
        message.contains("bad tenants cannot have projects"),
        "{message}"
    );
    // Each session closed its tenant connection when it ended.
    assert_eq!(tenant_connections(&model).await, 0);

    // The good tenants are complete, with their data.
    for order in [ACCOUNTS, PROJECTS, BACKFILL] {
        let status = model.status(Place::Tenant(good), order).await;
        assert_eq!(status.as_deref(), Some("completed"), "{order}");
    }
    let admins = model
        .int(
            Place::Tenant(good),
            &format!("SELECT count(*) FROM accounts WHERE email = 'admin@{good}.example'"),
        )
        .await;
    assert_eq!(admins, Some(1));

    // The bad one: its DDL rolled back with the migration, the row `failed` with the error.
    assert!(!model.table_exists(Place::Tenant(&bad), "projects").await);
    assert_eq!(
        model.status(Place::Tenant(&bad), PROJECTS).await.as_deref(),
        Some("failed")
    );
    let error = model
        .text(
            Place::Tenant(&bad),
            &format!("SELECT error FROM mtnt_migrations WHERE migration_order = {PROJECTS}"),
        )
        .await
        .unwrap();
    assert!(
        error.contains("bad tenants cannot have projects"),
        "{error}"
    );
    assert_eq!(
        model.status(Place::Tenant(&bad), ACCOUNTS).await.as_deref(),
        Some("completed")
    );
    assert_eq!(model.status(Place::Tenant(&bad), BACKFILL).await, None);
    assert_eq!(
        (
            registry_int(&model, &bad, "applied_order").await,
            registry_int(&model, &bad, "failed_order").await
        ),
        (Some(ACCOUNTS), Some(PROJECTS))
    );

    let status = all.status(&[]).await.unwrap();
    assert_eq!(status.summary(), "9/10 tenants current, 0 behind, 1 failed");
    assert_eq!(status.public.applied_order, Some(PLANS));
    let failed = status
        .tenants
        .iter()
        .find(|t| t.tenant.as_str() == bad)
        .and_then(|t| t.failed.as_ref())
        .unwrap();
    assert_eq!(
        (failed.order, failed.name),
        (PROJECTS, Some("add_projects"))
    );
    assert!(failed
        .error
        .as_deref()
        .unwrap()
        .contains("bad tenants cannot have projects"));

    // Fixed code: the next run finishes the bad tenant and clears its failure.
    fleet::FAIL.store(false, Ordering::SeqCst);
    let fixed = all.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(fixed.is_success(), "{:?}", fixed.failures);
    assert_eq!((fixed.tenants_current, fixed.tenants_migrated), (9, 1));
    assert_eq!(
        all.status(&[]).await.unwrap().summary(),
        "10/10 tenants current, 0 behind, 0 failed"
    );

    // The registry is a cache of the tracking tables: a stale one is corrected by the next
    // run that reads them, although it has nothing to apply.
    model
        .execute(
            Place::Control,
            &format!(
                "UPDATE mtnt_tenants SET applied_order = {ACCOUNTS}, failed_order = {BACKFILL}, \
                 last_error = 'stale' WHERE name = '{good}'"
            ),
        )
        .await;
    assert_eq!(
        all.status(&[]).await.unwrap().summary(),
        "9/10 tenants current, 0 behind, 1 failed"
    );
    let again = all.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((again.tenants_current, again.migrations_applied), (10, 0));
    assert_eq!(
        (
            registry_int(&model, good, "applied_order").await,
            registry_int(&model, good, "failed_order").await
        ),
        (Some(BACKFILL), None)
    );
    assert_eq!(
        all.status(&[]).await.unwrap().summary(),
        "10/10 tenants current, 0 behind, 0 failed"
    );

    model.finish().await;
}

#[tokio::test]
async fn rollback_by_steps_and_to_an_order_and_irreversible_refusal() {
    let model = model("pgdb_rollback").await;
    let acme = model.tenant("acme");
    let m = model.migrator(fleet_all()).await;
    m.create_tenant(&name(&acme)).await.unwrap();

    let one = m
        .rollback(&name(&acme), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(one.reverted, vec![(BACKFILL, "backfill_admin")]);
    let accounts = model
        .int(Place::Tenant(&acme), "SELECT count(*) FROM accounts")
        .await;
    assert_eq!(accounts, Some(0), "the backfill's down removed its row");
    assert_eq!(
        model
            .status(Place::Tenant(&acme), BACKFILL)
            .await
            .as_deref(),
        Some("pending")
    );
    assert_eq!(
        registry_int(&model, &acme, "applied_order").await,
        Some(PROJECTS)
    );

    let to = m
        .rollback(&name(&acme), RollbackTarget::To(ACCOUNTS))
        .await
        .unwrap();
    assert_eq!(to.reverted, vec![(PROJECTS, "add_projects")]);
    assert!(!model.table_exists(Place::Tenant(&acme), "projects").await);
    assert!(model.table_exists(Place::Tenant(&acme), "accounts").await);
    let status = m.status(&[name(&acme)]).await.unwrap();
    assert_eq!(
        (status.tenants[0].applied_order, status.tenants[0].pending),
        (Some(ACCOUNTS), 2)
    );
    assert_eq!(status.summary(), "0/1 tenants current, 1 behind, 0 failed");

    // Irreversible: refused before anything changes. (With the public migration the
    // control database has applied already.)
    let ledger = model.tenant("ledger");
    let oneway_set = MigrationSet::new(
        set("pg_database::oneway")
            .iter()
            .chain(fleet_v1().get(PLANS)),
    )
    .unwrap();
    let oneway = model.migrator(oneway_set).await;
    oneway.create_tenant(&name(&ledger)).await.unwrap();
    let err = oneway
        .rollback(&name(&ledger), RollbackTarget::Steps(2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Irreversible { .. }), "{err}");
    assert!(
        err.to_string().contains("2024_02_01_0001 create_ledger"),
        "{err}"
    );
    assert!(
        model.table_exists(Place::Tenant(&ledger), "notes").await,
        "nothing was changed"
    );
    assert_eq!(
        model
            .status(Place::Tenant(&ledger), 2024_02_01_0002)
            .await
            .as_deref(),
        Some("completed")
    );
    let reverted = oneway
        .rollback(&name(&ledger), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(reverted.reverted, vec![(2024_02_01_0002, "create_notes")]);
    assert!(!model.table_exists(Place::Tenant(&ledger), "notes").await);

    model.finish().await;
}

#[tokio::test]
async fn tenant_creation_is_all_or_nothing() {
    let model = model("pgdb_create").await;

    // A failing migration: no database, no registry row.
    let doomed = model.tenant("doomed");
    let broken = model.migrator(set("pg_database::broken")).await;
    let err = broken.create_tenant(&name(&doomed)).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "while applying 2024_03_01_0002 break_widgets to tenant {doomed}"
        )),
        "{message}"
    );
    assert!(message.contains("no_such_table"), "{message}");
    assert!(!model.storage_exists(&doomed).await);
    assert!(!registered(&model, &doomed).await);

    // A failing non-transactional migration, after the creating transaction: the same.
    let nontx = model.migrator(set("pg_database::nontx")).await;
    let ok = model.tenant("ok");
    nontx.create_tenant(&name(&ok)).await.unwrap();
    assert_eq!(
        model
            .status(Place::Tenant(&ok), 2024_04_01_0002)
            .await
            .as_deref(),
        Some("completed")
    );
    assert!(model.index_exists(Place::Tenant(&ok), "items_sku").await);
    let half = model.tenant("half_bad");
    let err = nontx.create_tenant(&name(&half)).await.unwrap_err();
    assert!(
        err.to_string().contains("2024_04_01_0002 index_items"),
        "{err}"
    );
    assert!(!model.storage_exists(&half).await);
    assert!(!registered(&model, &half).await);

    // Twice the same name.
    let err = nontx.create_tenant(&name(&ok)).await.unwrap_err();
    assert!(matches!(err, Error::TenantExists(_)), "{err}");
    assert!(model.storage_exists(&ok).await);

    // A database that exists but is no tenant is left alone.
    let stray = model.tenant("stray");
    model
        .make_storage(&stray, "CREATE TABLE precious (id int)")
        .await;
    let err = nontx.create_tenant(&name(&stray)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("exists already but is not a registered tenant"),
        "{err}"
    );
    assert!(model.table_exists(Place::Tenant(&stray), "precious").await);
    assert!(!registered(&model, &stray).await);

    // Dropping removes the database and the row.
    nontx
        .backend()
        .drop_tenant(&Tenant::new(name(&ok)))
        .await
        .unwrap();
    assert!(!model.storage_exists(&ok).await);
    assert!(!registered(&model, &ok).await);
    assert_eq!(model.storage_count().await, 1, "only the stray database");

    model.finish().await;
}

#[tokio::test]
async fn checksum_drift_is_refused_until_repaired() {
    let model = model("pgdb_drift").await;
    let acme = model.tenant("acme");
    model
        .migrator(fleet_v1())
        .await
        .create_tenant(&name(&acme))
        .await
        .unwrap();
    model
        .execute(
            Place::Tenant(&acme),
            &format!(
                "UPDATE mtnt_migrations SET checksum = 'tampered' WHERE migration_order = {ACCOUNTS}"
            ),
        )
        .await;

    let full = model.migrator(fleet_all()).await;
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    let message = report.failures[0].error.to_string();
    assert!(
        message.contains("was changed after it was applied"),
        "{message}"
    );
    assert!(message.contains("repair --checksums"), "{message}");
    assert!(
        !model.table_exists(Place::Tenant(&acme), "projects").await,
        "nothing was run"
    );

    assert_eq!(full.repair_checksums(&[]).await.unwrap(), 1);
    let recorded = model
        .text(
            Place::Tenant(&acme),
            &format!("SELECT checksum FROM mtnt_migrations WHERE migration_order = {ACCOUNTS}"),
        )
        .await;
    assert_eq!(
        recorded.as_deref(),
        Some(full.migrations().get(ACCOUNTS).unwrap().checksum())
    );
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 2);

    model.finish().await;
}

#[tokio::test]
async fn existing_databases_are_adopted_with_a_baseline() {
    let model = model("pgdb_adopt").await;
    let legacy = model.tenant("legacy");
    let invalid = model.tenant("Upper");
    model
        .make_storage(
            &legacy,
            "CREATE TABLE accounts (id bigserial PRIMARY KEY, email text UNIQUE)",
        )
        .await;
    model.make_storage(&invalid, "SELECT 1").await;

    let m = model.migrator(fleet_all()).await;
    let like = like_prefix(model.prefix());
    let (adopted, skipped) = m.adopt(&like, Some(ACCOUNTS)).await.unwrap();
    assert_eq!(
        adopted.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        [legacy.as_str()]
    );
    assert_eq!(skipped, [invalid]);
    assert_eq!(
        registry_int(&model, &legacy, "applied_order").await,
        Some(ACCOUNTS)
    );
    assert_eq!(
        model
            .status(Place::Tenant(&legacy), ACCOUNTS)
            .await
            .as_deref(),
        Some("completed")
    );

    // Adopting again finds nothing new; migrating applies the rest.
    let (again, _) = m.adopt(&like, Some(ACCOUNTS)).await.unwrap();
    assert!(again.is_empty());
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 2);
    assert!(model.table_exists(Place::Tenant(&legacy), "projects").await);

    model.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runs_on_one_tenant_take_turns() {
    let model = model("pgdb_lock").await;
    let acme = model.tenant("acme");
    model
        .migrator(set("pg_database::slow::v1"))
        .await
        .create_tenant(&name(&acme))
        .await
        .unwrap();

    let first: Migrator = model.migrator(set("pg_database::slow")).await;
    let second = model.migrator(set("pg_database::slow")).await;
    let options = MigrateOptions::new();
    let (a, b) = tokio::join!(first.migrate(&options), second.migrate(&options));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        a.is_success() && b.is_success(),
        "{:?} {:?}",
        a.failures,
        b.failures
    );
    assert_eq!(a.migrations_applied + b.migrations_applied, 1);
    let events = model
        .int(Place::Tenant(&acme), "SELECT count(*) FROM events")
        .await;
    assert_eq!(events, Some(1), "the migration ran once");

    model.finish().await;
}

#[tokio::test]
async fn the_cli_with_tenancy_database() {
    let model = model("pgdb_cli").await;
    let acme = model.tenant("acme");
    let app = || Command::from_std(model.command(assert_cmd::cargo::cargo_bin("mtnt-test-app")));
    app().args(["tenant", "create", &acme]).assert().success();
    assert!(model.storage_exists(&acme).await);
    app().arg("migrate").assert().success();
    let json = app()
        .args(["status", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let status: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(status["summary"], "1/1 tenants current, 0 behind, 0 failed");
    assert_eq!(status["tenants"][0]["tenant"], acme.as_str());
    assert_eq!(status["tenants"][0]["pending"], 0);
    app()
        .args(["rollback", "--tenant", &acme, "--steps", "1"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("has no down function"));
    app()
        .args(["tenant", "drop", &acme, "--yes"])
        .assert()
        .success();
    assert!(!model.storage_exists(&acme).await);

    // Without a database in the URL there is no control database to name.
    Command::cargo_bin("mtnt-test-app")
        .unwrap()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432")
        .env_remove("PGDATABASE")
        .args(["--no-progress", "--tenancy", "database", "status"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("name the control database"));

    model.finish().await;
}

#[tokio::test]
async fn a_pool_without_a_database_is_refused() {
    let options = PgConnectOptions::new().host("127.0.0.1");
    if options.get_database().is_some() {
        // PGDATABASE is set in this environment: nothing to check.
        return;
    }
    let pool = PgPoolOptions::new().connect_lazy_with(options);
    let err = PgDatabaseBackend::new(pool).unwrap_err();
    assert!(
        err.to_string().contains("name the control database"),
        "{err}"
    );
}
