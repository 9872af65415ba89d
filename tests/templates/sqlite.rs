//! The template on SQLite, which copies a migrated template file.

use std::path::Path;

use mtnt::{
    MigrateOptions, MigrationSet, Migrator, SqliteBackend, TemplateChange, Tenant, TenantName,
};
use mtnt_test_support::sqlite::{open_file, sqlite_dir};
use sqlx::Connection;

/// Tables, an index, a view, a trigger, seed data and a migration outside a
/// transaction: nothing that depends on the tenant.
mod plain {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2025_01_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute(
                "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, \
                 plan TEXT NOT NULL DEFAULT 'free');
                 CREATE INDEX accounts_plan ON accounts (plan);
                 CREATE TABLE plans (name TEXT PRIMARY KEY, seats INTEGER NOT NULL);
                 INSERT INTO plans VALUES ('free', 1), ('team', 10)",
            )
            .await
        }

        #[mtnt::migration(scope = "tenant", order = 2025_01_01_0002)]
        async fn audit(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute(
                "CREATE TABLE audit (account INTEGER, at TEXT);
                 CREATE TRIGGER accounts_audit AFTER INSERT ON accounts
                 BEGIN INSERT INTO audit VALUES (new.id, 'now'); END;
                 CREATE VIEW team_accounts AS SELECT * FROM accounts WHERE plan = 'team'",
            )
            .await
        }

        #[mtnt::migration(scope = "tenant", order = 2025_01_01_0003, transaction = false)]
        async fn analyze(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("ANALYZE").await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2025_01_01_0004)]
    async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, cents INTEGER NOT NULL)")
            .await
    }
}

/// `plain::v1` with its second migration changed (same order, other code).
mod changed {
    #[mtnt::migration(scope = "tenant", order = 2025_01_01_0001)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
            .await
    }
}

/// A migration whose data is the tenant's name (an admin row backfilled per tenant).
mod named {
    #[mtnt::migration(scope = "tenant", order = 2025_02_01_0001)]
    async fn create_users(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE users (name TEXT NOT NULL)").await
    }

    #[mtnt::migration(scope = "tenant", order = 2025_02_01_0002)]
    async fn backfill_admin(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        let admin = format!("admin@{}", ctx.tenant().expect("a tenant").name);
        sqlx::query("INSERT INTO users (name) VALUES (?1)")
            .bind(admin)
            .execute(ctx.sqlite()?)
            .await?;
        Ok(())
    }
}

/// A migration that fails wherever it runs.
mod failing {
    #[mtnt::migration(scope = "tenant", order = 2025_03_01_0001)]
    async fn create_things(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE things (id INTEGER PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2025_03_01_0002)]
    async fn broken(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("INSERT INTO no_such_table VALUES (1)").await
    }
}

async fn migrator(dir: &Path, prefix: &str, templates: bool) -> Migrator {
    Migrator::builder(SqliteBackend::open(dir).await.unwrap())
        .migrations(MigrationSet::registered_in(prefix).unwrap())
        .templates(templates)
        .build()
        .unwrap()
}

fn name(name: &str) -> TenantName {
    TenantName::new(name).unwrap()
}

/// A tenant's tracking rows: order, name, checksum, status, and when it started.
async fn tracking(dir: &Path, stem: &str) -> Vec<(i64, String, String, String, String)> {
    let mut conn = open_file(&dir.join(format!("{stem}.db"))).await;
    let rows = sqlx::query_as(
        "SELECT migration_order, name, checksum, status, started_at FROM mtnt_migrations \
         ORDER BY migration_order",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    rows
}

/// What a tenant holds beyond its schema: the text `query` selects.
async fn rows_of(dir: &Path, stem: &str, query: &str) -> Vec<String> {
    let mut conn = open_file(&dir.join(format!("{stem}.db"))).await;
    let rows = sqlx::query_scalar(query)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{query} in {stem}: {e}"));
    conn.close().await.unwrap();
    rows
}

const PLANS: &str = "SELECT name || ':' || seats FROM plans ORDER BY name";
const USERS: &str = "SELECT name FROM users";

/// Asserts that `copied` and `replayed` are the same tenant: the catalog as `drift` reads
/// it, and the tracking rows but for their times.
async fn assert_identical(m: &Migrator, dir: &Path, copied: &str, replayed: &str) {
    let tenants = [Tenant::new(name(copied)), Tenant::new(name(replayed))];
    let described = m.backend().describe(&tenants).await.unwrap();
    let [a, b] = [&described[0], &described[1]].map(|d| d.as_ref().unwrap().clone());
    assert!(!a.is_empty());
    assert_eq!(a, b, "catalog of {copied} vs {replayed}");
    let rows = |rows: Vec<(i64, String, String, String, String)>| {
        rows.into_iter()
            .map(|(order, name, checksum, status, _)| (order, name, checksum, status))
            .collect::<Vec<_>>()
    };
    let copied_rows = rows(tracking(dir, copied).await);
    assert!(copied_rows.iter().all(|r| r.3 == "completed"));
    assert_eq!(copied_rows, rows(tracking(dir, replayed).await));
}

#[tokio::test]
async fn a_copied_tenant_is_the_tenant_a_replay_makes() {
    let dir = sqlite_dir();
    let copying = migrator(dir.path(), "templates::sqlite::plain", true).await;
    let replaying = migrator(dir.path(), "templates::sqlite::plain", false).await;
    copying.create_tenant(&name("copied")).await.unwrap();
    replaying.create_tenant(&name("replayed")).await.unwrap();
    assert!(dir.path().join("mtnt_template.db").is_file());
    // Copied, not replayed: its rows carry the times the template ran them.
    let started = |rows: Vec<(i64, String, String, String, String)>| {
        rows.into_iter().map(|r| r.4).collect::<Vec<_>>()
    };
    assert_eq!(
        started(tracking(dir.path(), "copied").await),
        started(tracking(dir.path(), "mtnt_template").await)
    );
    assert_ne!(
        started(tracking(dir.path(), "replayed").await),
        started(tracking(dir.path(), "mtnt_template").await)
    );
    assert_identical(&copying, dir.path(), "copied", "replayed").await;
    for tenant in ["copied", "replayed"] {
        assert_eq!(
            rows_of(dir.path(), tenant, PLANS).await,
            ["free:1", "team:10"]
        );
    }
    // A registered tenant like any other, current with the code.
    let record = copying.tenant(&name("copied")).await.unwrap();
    assert_eq!(record.state, mtnt::TenantState::Active);
    assert_eq!(record.applied_order, Some(2025_01_01_0004));
    let report = copying.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((report.tenants_current, report.migrations_applied), (2, 0));
    assert_eq!(report.template, None);
    // The template is no tenant: neither listed nor adoptable.
    let listed: Vec<String> = copying
        .tenants()
        .await
        .unwrap()
        .iter()
        .map(|r| r.tenant.name.to_string())
        .collect();
    assert_eq!(listed, ["copied", "replayed"]);
    assert!(copying.adopt("%", None).await.unwrap().0.is_empty());
    // A copy is a tenant of its own.
    copying.drop_tenant(&name("copied")).await.unwrap();
    assert!(!dir.path().join("copied.db").exists());
    assert!(dir.path().join("mtnt_template.db").is_file());
}

#[tokio::test]
async fn without_templates_no_template_is_made() {
    let dir = sqlite_dir();
    let m = migrator(dir.path(), "templates::sqlite::plain", false).await;
    m.create_tenant(&name("acme")).await.unwrap();
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.template, None);
    assert_eq!(m.refresh_template().await.unwrap(), None);
    assert!(!dir.path().join("mtnt_template.db").exists());
}

#[tokio::test]
async fn a_migration_asking_for_its_tenant_makes_create_replay() {
    let dir = sqlite_dir();
    let m = migrator(dir.path(), "templates::sqlite::named", true).await;
    assert_eq!(
        m.refresh_template().await.unwrap(),
        Some(TemplateChange::Unusable {
            migration: m
                .migrations()
                .iter()
                .find(|m| m.name() == "backfill_admin")
                .unwrap()
                .to_string()
        })
    );
    assert!(!dir.path().join("mtnt_template.db").exists());
    // Known from the journal now: not built again.
    assert_eq!(m.refresh_template().await.unwrap(), None);
    m.create_tenant(&name("acme")).await.unwrap();
    m.create_tenant(&name("globex")).await.unwrap();
    assert!(!dir.path().join("mtnt_template.db").exists());
    assert_eq!(rows_of(dir.path(), "acme", USERS).await, ["admin@acme"]);
    assert_eq!(rows_of(dir.path(), "globex", USERS).await, ["admin@globex"]);
}

#[tokio::test]
async fn the_template_follows_new_and_changed_migrations() {
    let dir = sqlite_dir();
    let v1 = migrator(dir.path(), "templates::sqlite::plain::v1", true).await;
    assert_eq!(
        v1.refresh_template().await.unwrap(),
        Some(TemplateChange::Built {
            migrations: 3,
            rebuilt: false
        })
    );
    v1.create_tenant(&name("old")).await.unwrap();

    // A new migration: `migrate` applies it to the tenants, then to the template.
    let v2 = migrator(dir.path(), "templates::sqlite::plain", true).await;
    let report = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.migrations_applied, 1);
    assert_eq!(
        report.template,
        Some(TemplateChange::Advanced { migrations: 1 })
    );
    v2.create_tenant(&name("copied")).await.unwrap();
    migrator(dir.path(), "templates::sqlite::plain", false)
        .await
        .create_tenant(&name("replayed"))
        .await
        .unwrap();
    assert_identical(&v2, dir.path(), "copied", "replayed").await;
    assert_identical(&v2, dir.path(), "old", "replayed").await;

    // `tenant create` advances a template that is behind by itself: v1's template again.
    let dir = sqlite_dir();
    migrator(dir.path(), "templates::sqlite::plain::v1", true)
        .await
        .refresh_template()
        .await
        .unwrap();
    let v2 = migrator(dir.path(), "templates::sqlite::plain", true).await;
    v2.create_tenant(&name("advanced")).await.unwrap();
    assert_eq!(tracking(dir.path(), "advanced").await.len(), 4);
    assert_eq!(v2.refresh_template().await.unwrap(), None);

    // A migration changed under the same order: the template is rebuilt, never copied
    // with the old one.
    let changed = migrator(dir.path(), "templates::sqlite::changed", true).await;
    changed.create_tenant(&name("rebuilt")).await.unwrap();
    let rows = tracking(dir.path(), "rebuilt").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].2,
        changed.migrations().iter().next().unwrap().checksum()
    );
    migrator(dir.path(), "templates::sqlite::changed", false)
        .await
        .create_tenant(&name("replayed"))
        .await
        .unwrap();
    assert_identical(&changed, dir.path(), "rebuilt", "replayed").await;
    assert_eq!(
        v2.refresh_template().await.unwrap(),
        Some(TemplateChange::Built {
            migrations: 4,
            rebuilt: true
        })
    );
}

#[tokio::test]
async fn a_failed_create_leaves_nothing() {
    // A migration that fails: the template is not kept, and the create fails naming the
    // tenant, with neither file nor registry row left.
    let dir = sqlite_dir();
    let m = migrator(dir.path(), "templates::sqlite::failing", true).await;
    let error = m.create_tenant(&name("acme")).await.unwrap_err();
    assert!(error.to_string().contains("acme"), "{error}");
    assert!(error.to_string().contains("broken"), "{error}");
    assert!(m.tenants().await.unwrap().is_empty());
    for file in ["acme.db", "acme.db-copy", "mtnt_template.db"] {
        assert!(!dir.path().join(file).exists(), "{file}");
    }
    assert!(m.refresh_template().await.is_err());

    // A stray file of the tenant's name is left untouched, and nothing is registered.
    let dir = sqlite_dir();
    let m = migrator(dir.path(), "templates::sqlite::plain", true).await;
    m.refresh_template().await.unwrap();
    std::fs::write(dir.path().join("acme.db"), b"not mtnt's").unwrap();
    let error = m.create_tenant(&name("acme")).await.unwrap_err();
    assert!(
        matches!(error, mtnt::Error::StorageExists { .. }),
        "{error}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("acme.db")).unwrap(),
        b"not mtnt's"
    );
    assert!(m.tenants().await.unwrap().is_empty());
    // What a create that died while copying leaves (its `creating` row, the claimed file
    // and the copy aside) goes with `tenant drop`.
    let died = Tenant::new(name("died"));
    m.backend()
        .register(&died, mtnt::TenantState::Creating, None)
        .await
        .unwrap();
    std::fs::write(dir.path().join("died.db"), b"").unwrap();
    std::fs::write(dir.path().join("died.db-copy"), b"half a copy").unwrap();
    m.drop_tenant(&name("died")).await.unwrap();
    for file in ["died.db", "died.db-copy"] {
        assert!(!dir.path().join(file).exists(), "{file}");
    }
    assert!(m.tenants().await.unwrap().is_empty());
    // A name taken: nothing changes.
    m.create_tenant(&name("globex")).await.unwrap();
    let before = tracking(dir.path(), "globex").await;
    let error = m.create_tenant(&name("globex")).await.unwrap_err();
    assert!(matches!(error, mtnt::Error::TenantExists(_)), "{error}");
    assert_eq!(tracking(dir.path(), "globex").await, before);
}
