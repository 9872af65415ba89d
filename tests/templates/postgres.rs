//! Spare schemas on PostgreSQL schema per tenant: `migrate` keeps them, `tenant create`
//! takes one by renaming it.

use mtnt::{
    MigrateOptions, MigrationSet, Migrator, PostgresBackend, TemplateChange, Tenant, TenantName,
};
use mtnt_test_support::postgres::{registry_rows, tracking_rows, TestDb};
use sqlx::PgPool;

/// Tables, a sequence default, an index, a view, a function whose body names no schema,
/// seed data.
mod plain {
    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2025_04_01_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute(
                "CREATE TABLE plans (name text PRIMARY KEY, seats int NOT NULL);
                 INSERT INTO plans VALUES ('free', 1), ('team', 10);
                 CREATE TABLE accounts (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, \
                 plan text NOT NULL REFERENCES plans (name) DEFAULT 'free');
                 CREATE INDEX accounts_plan ON accounts (plan)",
            )
            .await
        }

        #[mtnt::migration(scope = "tenant", order = 2025_04_01_0002)]
        async fn views(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute(
                "CREATE VIEW team_accounts AS SELECT * FROM accounts WHERE plan = 'team';
                 CREATE FUNCTION seats_of(p text) RETURNS int LANGUAGE sql STABLE \
                 AS 'SELECT seats FROM plans WHERE name = p'",
            )
            .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2025_04_01_0003)]
    async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE invoices (id bigserial PRIMARY KEY, account bigint REFERENCES accounts (id))")
            .await
    }
}

/// A migration whose data is the tenant's name.
mod named {
    #[mtnt::migration(scope = "tenant", order = 2025_05_01_0001)]
    async fn backfill_admin(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        let admin = format!("admin@{}", ctx.tenant().expect("a tenant").name);
        ctx.execute(&format!(
            "CREATE TABLE users (name text NOT NULL); INSERT INTO users VALUES ('{admin}')"
        ))
        .await
    }
}

/// A function whose body names the schema it was made in: renaming the schema leaves the
/// name behind.
mod self_naming {
    #[mtnt::migration(scope = "tenant", order = 2025_06_01_0001)]
    async fn count_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute(
            "CREATE TABLE accounts (id bigserial PRIMARY KEY);
             DO $$ BEGIN EXECUTE format('CREATE FUNCTION account_count() RETURNS bigint \
             LANGUAGE sql AS ''SELECT count(*) FROM %I.accounts''', current_schema()); END $$",
        )
        .await
    }
}

/// A migration outside a transaction.
mod concurrent {
    #[mtnt::migration(scope = "tenant", order = 2025_07_01_0001)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2025_07_01_0002, transaction = false)]
    async fn index_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email)")
            .await
    }
}

fn migrator(pool: &PgPool, prefix: &str, spares: usize) -> Migrator {
    Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(MigrationSet::registered_in(prefix).unwrap())
        .spares(spares)
        .build()
        .unwrap()
}

fn name(name: &str) -> TenantName {
    TenantName::new(name).unwrap()
}

async fn spares(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'mtnt\\_%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Asserts that `a` and `b` are the same tenant: the catalog as `drift` reads it, and the
/// tracking rows but for their times.
async fn assert_identical(m: &Migrator, pool: &PgPool, a: &str, b: &str) {
    let tenants = [Tenant::new(name(a)), Tenant::new(name(b))];
    let described = m.backend().describe(&tenants).await.unwrap();
    let [da, db] = [&described[0], &described[1]].map(|d| d.as_ref().unwrap().clone());
    assert!(!da.is_empty());
    assert_eq!(da, db, "catalog of {a} vs {b}");
    let rows = |rows: Vec<mtnt_test_support::postgres::TrackingRow>| {
        rows.into_iter()
            .map(|r| (r.migration_order, r.name, r.checksum, r.status))
            .collect::<Vec<_>>()
    };
    let rows_a = rows(tracking_rows(pool, a).await);
    assert!(!rows_a.is_empty() && rows_a.iter().all(|r| r.3 == "completed"));
    assert_eq!(rows_a, rows(tracking_rows(pool, b).await));
    let plans = |t: &str| format!("SELECT name || ':' || seats FROM \"{t}\".plans ORDER BY 1");
    let seeded: Vec<String> = sqlx::query_scalar(&plans(a)).fetch_all(pool).await.unwrap();
    assert_eq!(seeded, ["free:1", "team:10"]);
    let other: Vec<String> = sqlx::query_scalar(&plans(b)).fetch_all(pool).await.unwrap();
    assert_eq!(seeded, other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_made_of_a_spare_is_the_tenant_a_replay_makes() {
    let db = TestDb::create("spares").await;
    let pool = db.pool(4).await;
    let m = migrator(&pool, "templates::postgres::plain", 2);
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(
        report.template,
        Some(TemplateChange::Spares {
            built: 2,
            dropped: 0
        })
    );
    assert_eq!(spares(&pool).await.len(), 2);
    // Spares are no tenants.
    assert!(m.tenants().await.unwrap().is_empty());
    assert!(m.adopt("%", None).await.unwrap().0.is_empty());

    m.create_tenant(&name("taken")).await.unwrap();
    assert_eq!(spares(&pool).await.len(), 1);
    migrator(&pool, "templates::postgres::plain", 0)
        .create_tenant(&name("replayed"))
        .await
        .unwrap();
    assert_eq!(spares(&pool).await.len(), 1);
    assert_identical(&m, &pool, "taken", "replayed").await;
    // The function works after the rename (on the tenant's search path, as a replayed
    // tenant's does): its body names no schema.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("SET search_path TO taken")
        .execute(&mut *conn)
        .await
        .unwrap();
    let seats: i32 = sqlx::query_scalar("SELECT seats_of('team')")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(seats, 10);
    drop(conn);

    m.create_tenant(&name("second")).await.unwrap();
    assert!(spares(&pool).await.is_empty());
    // None left: replayed.
    m.create_tenant(&name("third")).await.unwrap();
    for t in ["second", "third"] {
        assert_identical(&m, &pool, t, "replayed").await;
    }
    let registry: Vec<(String, String, Option<i64>)> = registry_rows(&pool)
        .await
        .into_iter()
        .map(|r| (r.name, r.state, r.applied_order))
        .collect();
    assert_eq!(registry.len(), 4);
    assert!(registry
        .iter()
        .all(|(_, state, order)| state == "active" && *order == Some(2025_04_01_0003)));
    let report = m.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((report.tenants_current, report.migrations_applied), (4, 0));
    assert_eq!(
        report.template,
        Some(TemplateChange::Spares {
            built: 2,
            dropped: 0
        })
    );
    let drift = m.drift(&[]).await.unwrap();
    assert!(
        drift.orders.iter().all(|o| o.drifted.is_empty()),
        "{drift:?}"
    );

    // A squatted schema: the create fails and the spare stays.
    sqlx::raw_sql("CREATE SCHEMA squat")
        .execute(&pool)
        .await
        .unwrap();
    let error = m.create_tenant(&name("squat")).await.unwrap_err();
    assert!(
        matches!(error, mtnt::Error::StorageExists { .. }),
        "{error}"
    );
    assert_eq!(spares(&pool).await.len(), 2);
    assert_eq!(registry_rows(&pool).await.len(), 4);
    drop(pool);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spares_follow_the_migrations_and_are_refused_where_they_would_differ() {
    let db = TestDb::create("spares").await;
    let pool = db.pool(4).await;
    let v1 = migrator(&pool, "templates::postgres::plain::v1", 1);
    assert_eq!(
        v1.refresh_template().await.unwrap(),
        Some(TemplateChange::Spares {
            built: 1,
            dropped: 0
        })
    );
    assert_eq!(v1.refresh_template().await.unwrap(), None);
    let old = spares(&pool).await;
    // A new migration: the old spare is dropped, a new one made.
    let v2 = migrator(&pool, "templates::postgres::plain", 1);
    assert_eq!(
        v2.refresh_template().await.unwrap(),
        Some(TemplateChange::Spares {
            built: 1,
            dropped: 1
        })
    );
    let new = spares(&pool).await;
    assert_eq!(new.len(), 1);
    assert_ne!(old, new);
    // Code that is behind the spare never takes it.
    v1.create_tenant(&name("older")).await.unwrap();
    assert_eq!(spares(&pool).await, new);
    assert_eq!(tracking_rows(&pool, "older").await.len(), 2);

    for (prefix, why) in [
        (
            "templates::postgres::named",
            TemplateChange::Unusable {
                migration: "2025_05_01_0001 backfill_admin".to_owned(),
            },
        ),
        (
            "templates::postgres::self_naming",
            TemplateChange::NameInDefinitions,
        ),
        (
            "templates::postgres::concurrent",
            TemplateChange::OutsideTransaction {
                migration: "2025_07_01_0002 index_accounts".to_owned(),
            },
        ),
    ] {
        let m = migrator(&pool, prefix, 1);
        let change = m.refresh_template().await.unwrap();
        assert_eq!(change, Some(why), "{prefix}");
        assert!(spares(&pool).await.is_empty(), "{prefix}");
        // Recorded: not tried again until the migrations change.
        assert_eq!(m.refresh_template().await.unwrap(), None, "{prefix}");
    }
    let named = migrator(&pool, "templates::postgres::named", 1);
    named.create_tenant(&name("acme")).await.unwrap();
    let users: Vec<String> = sqlx::query_scalar("SELECT name FROM acme.users")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(users, ["admin@acme"]);
    drop(pool);
    db.drop_db().await;
}
