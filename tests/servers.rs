//! Fleets across several database servers (issue 15): servers in the control registry,
//! tenants placed on them, migrated across them, and a server that cannot be reached.
//! Against the two real clusters: the control database and its own server on
//! `MTNT_TEST_PG_URL` (5432), the second server on `MTNT_TEST_PG2_URL` (5433), each test
//! with databases (and tenant names) of its own on both, dropped when it ends.
#![cfg(feature = "postgres")]
// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{Error, MigrateOptions, MigrationSet, ServerName, TenantName};
use mtnt_test_support::models::{Kind, Model, Place};
use mtnt_test_support::postgres::{drop_databases_with_prefix_on, second_admin_url, TestDb};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

mod fleet {
    #[mtnt::migration(scope = "tenant", order = 2025_01_01_0001)]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute(
            "CREATE TABLE accounts (id bigserial PRIMARY KEY, email text); \
             INSERT INTO accounts (email) VALUES ('first@example.com')",
        )
        .await
    }

    // Slow enough that tenants migrated at once overlap in their tracking times, however
    // late a loaded machine starts the second server's first tenant (its first
    // connections: 100-260 ms seen under load; 0.3 s was not always enough in CI).
    #[mtnt::migration(scope = "tenant", order = 2025_01_01_0002)]
    async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("SELECT pg_sleep(1); CREATE TABLE invoices (id bigserial PRIMARY KEY)")
            .await
    }
}

const SECOND: i64 = 2025_01_01_0002;

/// The fleet's migrations up to `to`.
fn set_to(to: i64) -> MigrationSet {
    MigrationSet::new(
        MigrationSet::registered_in("servers::fleet")
            .unwrap()
            .iter()
            .filter(|m| m.order() <= to),
    )
    .unwrap()
}

fn server(name: &str) -> ServerName {
    ServerName::new(name).unwrap()
}

fn tenant(name: &str) -> TenantName {
    TenantName::new(name).unwrap()
}

/// The second server as a test of `kind` uses it: a database of its own on 5433 that
/// holds the tenant schemas (schema per tenant), or the server's `postgres` database
/// to create tenant databases from (database per tenant; those are named with the
/// model's prefix and dropped by it).
struct Second {
    kind: Kind,
    db: Option<TestDb>,
    prefix: String,
}

impl Second {
    async fn new(model: &Model) -> Second {
        let prefix = model.prefix().to_owned();
        drop_databases_with_prefix_on(&second_admin_url(), &prefix).await;
        let db = match model.kind() {
            Kind::PgSchema => Some(TestDb::create_on(&second_admin_url(), "servers").await),
            _ => None,
        };
        Second {
            kind: model.kind(),
            db,
            prefix,
        }
    }

    /// The URL `server add` registers.
    fn url(&self) -> String {
        self.db
            .as_ref()
            .map_or_else(second_admin_url, |db| db.url.clone())
    }

    /// A direct connection where `tenant`'s tables are, on the second server.
    async fn open(&self, tenant: &str) -> PgConnection {
        let options: PgConnectOptions = self.url().parse().unwrap();
        let options = match self.kind {
            Kind::PgDatabase => options.database(tenant),
            _ => options,
        };
        let mut conn = options.connect().await.unwrap();
        if self.kind == Kind::PgSchema {
            sqlx::raw_sql(&format!("SET search_path TO \"{tenant}\""))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn
    }

    /// Whether `tenant` has its schema (database) on the second server.
    async fn storage_exists(&self, tenant: &str) -> bool {
        let options: PgConnectOptions = self.url().parse().unwrap();
        let mut conn = options.connect().await.unwrap();
        let sql = match self.kind {
            Kind::PgDatabase => "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
            _ => "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)",
        };
        let found = sqlx::query_scalar(sql)
            .bind(tenant)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        found
    }

    /// The status and (start, end) in epoch seconds of migration `order` of `tenant`, from
    /// its tracking table on the second server.
    async fn tracking(&self, tenant: &str, order: i64) -> Option<(String, f64, f64)> {
        let mut conn = self.open(tenant).await;
        let row = sqlx::query_as(
            "SELECT status, extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8 \
             FROM mtnt_migrations WHERE migration_order = $1",
        )
        .bind(order)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        row
    }

    async fn finish(mut self) {
        drop_databases_with_prefix_on(&second_admin_url(), &self.prefix).await;
        if let Some(db) = self.db.take() {
            db.drop_db().await;
        }
        // Done: nothing left for Drop.
        self.kind = Kind::PgSchema;
    }
}

impl Drop for Second {
    fn drop(&mut self) {
        // After a panic: the tenant databases of this test on the second server.
        if self.kind == Kind::PgDatabase {
            let prefix = self.prefix.clone();
            mtnt_test_support::block_on_in_thread("tenant databases on 5433", move || async move {
                drop_databases_with_prefix_on(&second_admin_url(), &prefix).await
            });
        }
    }
}

/// The (start, end) in epoch seconds of migration `order` of a tenant on the control
/// database's own server.
async fn control_times(model: &Model, name: &str, order: i64) -> (f64, f64) {
    let sql = match model.kind() {
        Kind::PgSchema => format!(
            "SELECT extract(epoch FROM started_at)::text || ' ' || extract(epoch FROM finished_at)::text \
             FROM public.mtnt_tenant_migrations WHERE tenant = '{name}' AND migration_order = {order}"
        ),
        _ => format!(
            "SELECT extract(epoch FROM started_at)::text || ' ' || extract(epoch FROM finished_at)::text \
             FROM mtnt_migrations WHERE migration_order = {order}"
        ),
    };
    let text = model.text(Place::Tenant(name), &sql).await.unwrap();
    let (start, end) = text.split_once(' ').unwrap();
    (start.parse().unwrap(), end.parse().unwrap())
}

mtnt_test_support::scenarios_pg!(tenants_are_placed_migrated_and_dropped_on_both_servers);

/// Tenants placed on both servers (by the fewest-tenants placement and by name) get their
/// storage and tracking rows there, are migrated by one run that works on both servers at
/// once, show in the status, and are dropped from where they are.
async fn tenants_are_placed_migrated_and_dropped_on_both_servers(model: &Model) {
    let second = Second::new(model).await;
    let eu2 = server("eu-2");
    let migrator = model.builder(set_to(SECOND - 1)).await.build().unwrap();
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|t| model.tenant(t));
    // The fewest tenants: default (tie, listed first), eu-2, default, then eu-2 by name.
    for name in [&a, &b, &c] {
        migrator.create_tenant(&tenant(name)).await.unwrap();
    }
    let placed = migrator
        .create_tenant_on(&tenant(&d), Some(&eu2))
        .await
        .unwrap();
    assert_eq!(placed.server.as_ref(), Some(&eu2));
    let servers: Vec<(String, u64)> = migrator
        .servers()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name.to_string(), s.tenants))
        .collect();
    assert_eq!(
        servers,
        [("default".to_owned(), 2), ("eu-2".to_owned(), 2)],
        "{servers:?}"
    );
    let records = migrator.tenants().await.unwrap();
    let on: Vec<&str> = records.iter().map(|r| r.tenant.server_name()).collect();
    assert_eq!(on, ["default", "eu-2", "default", "eu-2"]);

    // Where their storage is: on the server the registry says, not on the other.
    for name in [&a, &c] {
        assert!(model.storage_exists(name).await, "{name} on default");
        assert!(!second.storage_exists(name).await, "{name} not on eu-2");
    }
    for name in [&b, &d] {
        assert!(second.storage_exists(name).await, "{name} on eu-2");
        assert!(!model.storage_exists(name).await, "{name} not on default");
        let mut conn = second.open(name).await;
        let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(accounts, 1, "{name}'s first migration ran on eu-2");
        conn.close().await.unwrap();
        let (status, _, _) = second.tracking(name, SECOND - 1).await.unwrap();
        assert_eq!(status, "completed");
    }

    // One run over both servers, every tenant at once: both servers work at the same time.
    let migrator = model
        .builder(set_to(SECOND))
        .await
        .concurrency(4)
        .build()
        .unwrap();
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.tenants_migrated, 4);
    let (a_start, a_end) = control_times(model, &a, SECOND).await;
    let (status, b_start, b_end) = second.tracking(&b, SECOND).await.unwrap();
    assert_eq!(status, "completed");
    assert!(
        a_start < b_end && b_start < a_end,
        "the two servers worked one after the other: default {a_start}..{a_end}, eu-2 {b_start}..{b_end}"
    );
    assert_eq!(
        model.status(Place::Tenant(&c), SECOND).await.as_deref(),
        Some("completed")
    );
    assert_eq!(second.tracking(&d, SECOND).await.unwrap().0, "completed");
    // The registry, a cache for the tenants on eu-2, follows their commits.
    for record in migrator.tenants().await.unwrap() {
        assert_eq!(record.applied_order, Some(SECOND), "{}", record.tenant.name);
    }
    let status = migrator.status(&[]).await.unwrap();
    assert_eq!(status.current, 4, "{}", status.summary());
    // What the run did, read where each tenant's rows are.
    let run = migrator
        .run_status(report.run_id.as_deref().unwrap(), &[])
        .await
        .unwrap();
    let did: Vec<(String, Vec<i64>)> = run
        .tenants
        .iter()
        .map(|t| {
            (
                t.tenant.to_string(),
                t.applied.iter().map(|m| m.order).collect(),
            )
        })
        .collect();
    let expected: Vec<(String, Vec<i64>)> = [&a, &b, &c, &d]
        .iter()
        .map(|t| (t.to_string(), vec![SECOND]))
        .collect();
    assert_eq!(did, expected);
    // Every tenant's schema read on its own server: one shape, no drift.
    let drift = migrator.drift(&[]).await.unwrap();
    assert!(drift.is_clean(), "{drift:?}");
    // Nothing left to do, on either server.
    let again = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((again.tenants_migrated, again.failures.len()), (0, 0));

    // A server with tenants stays; dropping them removes their storage where it is.
    assert!(matches!(
        migrator.remove_server(&eu2).await,
        Err(Error::ServerInUse { tenants: 2, .. })
    ));
    for name in [&b, &d] {
        migrator.drop_tenant(&tenant(name)).await.unwrap();
        assert!(!second.storage_exists(name).await, "{name} dropped on eu-2");
    }
    migrator.remove_server(&eu2).await.unwrap();
    assert!(matches!(
        migrator.remove_server(&eu2).await,
        Err(Error::UnknownServer { .. })
    ));
    second.finish().await;
}

/// The second server registered as `eu-2`, tenant `a` created on the default server and
/// `b` on eu-2, with the fleet's first migration.
async fn a_here_and_b_on_eu2(model: &Model) -> (Second, TenantName, TenantName) {
    let second = Second::new(model).await;
    let eu2 = server("eu-2");
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    let (a, b) = (tenant(&model.tenant("a")), tenant(&model.tenant("b")));
    migrator
        .create_tenant_on(&a, Some(&ServerName::default_server()))
        .await
        .unwrap();
    migrator.create_tenant_on(&b, Some(&eu2)).await.unwrap();
    (second, a, b)
}

/// The test app (`tests/support/app.rs`) for `model`.
fn app(model: &Model) -> std::process::Command {
    model.command(env!("CARGO_BIN_EXE_mtnt-test-app"))
}

/// Runs `cmd` with `args`, expecting exit code `code`; stdout and stderr together.
fn run(mut cmd: std::process::Command, args: &[&str], code: i32) -> String {
    let out = cmd.args(args).output().expect("the test app runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(code), "{args:?}\n{text}");
    text
}

/// `server add` keeps no password anywhere (output, registry); `server list` counts the
/// tenants per server, in JSON too; names are checked before any SQL; a server that holds
/// tenants, an unknown one and the default one cannot be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_added_listed_and_removed_without_their_passwords() {
    let model = Model::new(Kind::PgSchema, "server_cli").await;
    let second = Second::new(&model).await;

    // A bad name: refused before anything reaches the database (no registry is made).
    let out = run(app(&model), &["server", "add", "EU;2", &second.url()], 2);
    assert!(out.contains("invalid server name"), "{out}");
    assert!(!model.table_exists(Place::Control, "mtnt_tenants").await);

    let with_password = second.url().replacen("postgres@", "postgres:s3cret-pw@", 1);
    assert_ne!(with_password, second.url());
    let out = run(app(&model), &["server", "add", "eu-2", &with_password], 0);
    assert!(out.contains("added server eu-2"), "{out}");
    assert!(out.contains("MTNT_SERVER_EU_2_PASSWORD"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    let stored = model
        .text(
            Place::Control,
            "SELECT url FROM mtnt_servers WHERE name = 'eu-2'",
        )
        .await
        .unwrap();
    assert_eq!(stored, second.url());
    let out = run(app(&model), &["server", "add", "eu-2", &second.url()], 1);
    assert!(out.contains("registered already"), "{out}");

    let (a, b) = (model.tenant("a"), model.tenant("b"));
    let out = run(
        app(&model),
        &["tenant", "create", &a, "--server", "nowhere"],
        1,
    );
    assert!(out.contains("unknown server \"nowhere\""), "{out}");
    assert!(out.contains("server list"), "{out}");
    run(app(&model), &["tenant", "create", &a], 0);
    let out = run(
        app(&model),
        &["tenant", "create", &b, "--server", "eu-2"],
        0,
    );
    assert!(out.contains("on server eu-2"), "{out}");
    let out = run(app(&model), &["tenant", "list"], 0);
    assert!(out.contains("SERVER"), "{out}");
    let line = out.lines().find(|l| l.starts_with(&b)).unwrap();
    assert!(line.contains("eu-2"), "{out}");

    let out = run(app(&model), &["server", "list", "--json"], 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed: Vec<(&str, u64)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["tenants"].as_u64().unwrap()))
        .collect();
    assert_eq!(listed, [("default", 1), ("eu-2", 1)]);
    let out = run(app(&model), &["server", "list"], 0);
    assert!(out.contains("2 servers, 2 tenants"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");

    let out = run(app(&model), &["server", "remove", "eu-2"], 1);
    assert!(out.contains("holds 1 tenant"), "{out}");
    assert!(out.contains("fix:"), "{out}");
    run(app(&model), &["server", "remove", "default"], 1);
    run(app(&model), &["tenant", "drop", &b, "--yes"], 0);
    run(app(&model), &["server", "remove", "eu-2"], 0);
    let out = run(app(&model), &["server", "remove", "eu-2"], 1);
    assert!(out.contains("unknown server"), "{out}");
    second.finish().await;
    model.finish().await;
}

/// A registry made before servers (no `mtnt_servers`, no `server` column) reads as
/// every tenant on the default server and is left as it is by reads; the next writing
/// command upgrades it in place, keeping its tenants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_from_before_servers_is_upgraded_in_place() {
    let model = Model::new(Kind::PgSchema, "server_upgrade").await;
    let a = model.tenant("a");
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator.create_tenant(&tenant(&a)).await.unwrap();
    model
        .execute(
            Place::Control,
            "ALTER TABLE mtnt_tenants DROP COLUMN server; DROP TABLE mtnt_servers",
        )
        .await;
    let has_column = "SELECT count(*) FROM information_schema.columns \
                      WHERE table_name = 'mtnt_tenants' AND column_name = 'server'";

    let migrator = model.migrator(set_to(SECOND)).await;
    let records = migrator.tenants().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].tenant.server, None);
    let servers = migrator.servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(
        (servers[0].name.as_str(), servers[0].tenants),
        ("default", 1)
    );
    assert_eq!(migrator.status(&[]).await.unwrap().behind, 1);
    assert_eq!(model.int(Place::Control, has_column).await, Some(0));
    assert!(!model.table_exists(Place::Control, "mtnt_servers").await);

    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.tenants_migrated, 1);
    assert_eq!(model.int(Place::Control, has_column).await, Some(1));
    assert!(model.table_exists(Place::Control, "mtnt_servers").await);
    let records = migrator.tenants().await.unwrap();
    assert_eq!(records[0].tenant.server, None);
    assert_eq!(records[0].applied_order, Some(SECOND));
    model.finish().await;
}

/// The test app's newest tenant migration (`add_account_names`).
const NEWEST: i64 = 2024_01_03_0001;

/// A port on the loopback with nothing listening.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

mtnt_test_support::scenarios_pg!(an_unreachable_server_fails_its_tenants_in_one_line);

/// A server that cannot be reached fails its tenants with one line for the server; the
/// tenants of the other server are migrated; the run exits non-zero, and once the
/// server is back the next run finishes.
async fn an_unreachable_server_fails_its_tenants_in_one_line(model: &Model) {
    let second = Second::new(model).await;
    run(app(model), &["server", "add", "eu-2", &second.url()], 0);
    let names: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|t| model.tenant(t))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let server = if i % 2 == 0 { "default" } else { "eu-2" };
        run(
            app(model),
            &["tenant", "create", name, "--server", server],
            0,
        );
    }
    // Work for the next run: the test app's newest tenant migration undone by hand.
    for (i, name) in names.iter().enumerate() {
        let undo = "ALTER TABLE accounts DROP COLUMN name";
        if i % 2 == 1 {
            let mut conn = second.open(name).await;
            sqlx::raw_sql(&format!(
                "{undo}; DELETE FROM mtnt_migrations WHERE migration_order = {NEWEST}"
            ))
            .execute(&mut conn)
            .await
            .unwrap();
            conn.close().await.unwrap();
        } else {
            let tracking = match model.kind() {
                Kind::PgSchema => {
                    format!("public.mtnt_tenant_migrations WHERE tenant = '{name}' AND")
                }
                _ => "mtnt_migrations WHERE".to_owned(),
            };
            model
                .execute(
                    Place::Tenant(name),
                    &format!("{undo}; DELETE FROM {tracking} migration_order = {NEWEST}"),
                )
                .await;
        }
    }
    // The plan and the status by server.
    let out = run(app(model), &["plan", "--by-server"], 0);
    for server in ["default", "eu-2"] {
        assert!(
            out.contains(&format!(
                "server {server}: 2 tenants, 2 to migrate (2 migrations)"
            )),
            "{out}"
        );
    }
    let out = run(app(model), &["plan", "--json"], 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["servers"][1]["server"], "eu-2", "{out}");
    assert_eq!(json["servers"][1]["with_work"], 2, "{out}");
    let out = run(app(model), &["status", "--by-server"], 0);
    assert!(out.contains("SERVER"), "{out}");
    assert!(
        out.contains("server eu-2: 0/2 tenants current, 2 behind"),
        "{out}"
    );
    let out = run(app(model), &["status", "--json", "--by-server"], 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let on: Vec<&str> = json["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["server"].as_str().unwrap())
        .collect();
    assert_eq!(on, ["default", "eu-2", "default", "eu-2"], "{out}");
    assert_eq!(json["servers"][1]["behind"], 2, "{out}");

    let url = second.url();
    let dead = url.replacen(":5433", &format!(":{}", dead_port()), 1);
    assert_ne!(dead, url, "the second server's URL names its port");
    model
        .execute(
            Place::Control,
            &format!("UPDATE mtnt_servers SET url = '{dead}' WHERE name = 'eu-2'"),
        )
        .await;

    let out = run(app(model), &["migrate"], 1);
    assert!(
        out.contains("server eu-2 unreachable: 2 tenants not migrated"),
        "{out}"
    );
    assert_eq!(
        out.matches("server eu-2 unreachable").count(),
        2,
        "one line as it happens, one in the summary:\n{out}"
    );
    for name in [&names[1], &names[3]] {
        assert!(!out.contains(&format!("tenant {name}")), "{out}");
    }
    // The other server's tenants are migrated meanwhile.
    for name in [&names[0], &names[2]] {
        assert_eq!(
            model.status(Place::Tenant(name), NEWEST).await.as_deref(),
            Some("completed"),
            "{name}"
        );
    }
    assert!(second.tracking(&names[1], NEWEST).await.is_none());

    model
        .execute(
            Place::Control,
            &format!("UPDATE mtnt_servers SET url = '{url}' WHERE name = 'eu-2'"),
        )
        .await;
    let out = run(app(model), &["migrate"], 0);
    assert!(!out.contains("eu-2 unreachable"), "{out}");
    run(app(model), &["status", "--check"], 0);
    assert_eq!(
        second.tracking(&names[3], NEWEST).await.unwrap().0,
        "completed"
    );
    second.finish().await;
}

/// SQLite (and MySQL) keep every tenant on the server of the URL: no servers, and a
/// tenant placed elsewhere is refused before anything is written.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_engines_refuse_servers() {
    let model = Model::new(Kind::Sqlite, "one_server").await;
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    let eu2 = server("eu-2");
    assert!(matches!(
        migrator
            .add_server(&eu2, "postgres://postgres@127.0.0.1:5433/x")
            .await,
        Err(Error::OneServer { .. })
    ));
    let a = model.tenant("a");
    assert!(matches!(
        migrator.create_tenant_on(&tenant(&a), Some(&eu2)).await,
        Err(Error::OneServer { .. })
    ));
    assert!(!model.storage_exists(&a).await);
    let out = run(
        app(&model),
        &["tenant", "create", &a, "--server", "eu-2"],
        1,
    );
    assert!(
        out.contains("keeps every tenant on the server of its URL"),
        "{out}"
    );
    assert!(!model.storage_exists(&a).await);
    model.finish().await;
}

mtnt_test_support::scenarios_pg!(a_canary_per_server_goes_first_on_every_server);

/// `--canary-per-server 1`: the first tenant of each server migrates first and alone; the
/// rest start after both canaries finished.
async fn a_canary_per_server_goes_first_on_every_server(model: &Model) {
    let second = Second::new(model).await;
    let eu2 = server("eu-2");
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|t| model.tenant(t));
    // The fewest tenants: a and c on default, b and d on eu-2.
    for name in [&a, &b, &c, &d] {
        migrator.create_tenant(&tenant(name)).await.unwrap();
    }
    let mut rollout = mtnt::Rollout::default();
    rollout.canary = mtnt::Canary::PerServer(1);
    let report = model
        .migrator(set_to(SECOND))
        .await
        .migrate(&MigrateOptions::new().rollout(rollout))
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.tenants_migrated, 4);
    let on_second = |name: &str| {
        let second = &second;
        let name = name.to_owned();
        async move {
            let (_, start, end) = second.tracking(&name, SECOND).await.unwrap();
            (start, end)
        }
    };
    let canaries = [control_times(model, &a, SECOND).await, on_second(&b).await];
    let rest = [control_times(model, &c, SECOND).await, on_second(&d).await];
    let canaries_ended = canaries.iter().map(|t| t.1).fold(f64::MIN, f64::max);
    let rest_started = rest.iter().map(|t| t.0).fold(f64::MAX, f64::min);
    assert!(
        canaries_ended <= rest_started,
        "the canaries {canaries:?} (one per server) end before the rest {rest:?} start"
    );
    // Both canaries ran at once: each server had one.
    assert!(
        canaries[0].0 < canaries[1].1 && canaries[1].0 < canaries[0].1,
        "{canaries:?}"
    );
    second.finish().await;
}

mtnt_test_support::scenarios_pg!(a_budget_per_server_keeps_every_server_busy);

/// With one tenant per server at once (`per_server_concurrency(1)`) and room for four,
/// each server migrates its tenants one after the other, and the two servers at the same
/// time: the run takes the servers' tenants in turn.
async fn a_budget_per_server_keeps_every_server_busy(model: &Model) {
    let second = Second::new(model).await;
    let eu2 = server("eu-2");
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    // Named so that the registry's order has every default tenant first.
    let local: Vec<String> = ["a1", "a2", "a3"].iter().map(|t| model.tenant(t)).collect();
    let remote: Vec<String> = ["b1", "b2", "b3"].iter().map(|t| model.tenant(t)).collect();
    for name in &local {
        migrator
            .create_tenant_on(&tenant(name), Some(&ServerName::default_server()))
            .await
            .unwrap();
    }
    for name in &remote {
        migrator
            .create_tenant_on(&tenant(name), Some(&eu2))
            .await
            .unwrap();
    }
    let migrator = model
        .builder(set_to(SECOND))
        .await
        .concurrency(4)
        .per_server_concurrency(1)
        .build()
        .unwrap();
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.tenants_migrated, 6);
    let mut on_default = Vec::new();
    for name in &local {
        on_default.push(control_times(model, name, SECOND).await);
    }
    let mut on_eu2 = Vec::new();
    for name in &remote {
        let (_, start, end) = second.tracking(name, SECOND).await.unwrap();
        on_eu2.push((start, end));
    }
    let overlap = |a: (f64, f64), b: (f64, f64)| a.0 < b.1 && b.0 < a.1;
    for (server, times) in [("default", &on_default), ("eu-2", &on_eu2)] {
        for (i, a) in times.iter().enumerate() {
            for b in &times[i + 1..] {
                assert!(
                    !overlap(*a, *b),
                    "two tenants of {server} at once: {times:?}"
                );
            }
        }
    }
    assert!(
        on_default
            .iter()
            .any(|a| on_eu2.iter().any(|b| overlap(*a, *b))),
        "the servers took turns: default {on_default:?}, eu-2 {on_eu2:?}"
    );
    second.finish().await;
}

/// The application's side: a tenant's connection is on its server, scoped to its schema,
/// and the scope ends when the connection goes back to the pool: the next user of the same
/// pooled connection (the same server session) sees the server's default search path,
/// even after a connection dropped in a failed transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_connection_is_scoped_and_its_scope_never_leaks() {
    let model = Model::new(Kind::PgSchema, "server_app").await;
    let (second, a, b) = a_here_and_b_on_eu2(&model).await;
    let eu2 = server("eu-2");

    let control = sqlx::PgPool::connect(model.url()).await.unwrap();
    // One connection per server: every checkout of a server reuses one session.
    let pools = mtnt::TenantPools::new(mtnt::PostgresBackend::new(control.clone()), 1);
    let located = pools.locate(&b).await.unwrap();
    assert_eq!(
        (located.server.as_ref(), located.storage.as_str()),
        (Some(&eu2), b.as_str())
    );
    assert!(matches!(
        pools.locate(&tenant(&model.tenant("nobody"))).await,
        Err(Error::UnknownTenant(_))
    ));

    let session = "SELECT pg_backend_pid()";
    let mut conn = pools.acquire(&a).await.unwrap();
    let pid_a: i32 = sqlx::query_scalar(session)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO accounts (email) VALUES ('only-a@example.com')")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let path = "SELECT current_setting('search_path')";
    let mut plain = pools.server_connection(None).await.unwrap();
    let pid: i32 = sqlx::query_scalar(session)
        .fetch_one(&mut *plain)
        .await
        .unwrap();
    assert_eq!(pid, pid_a, "the same pooled session");
    let search_path: String = sqlx::query_scalar(path)
        .fetch_one(&mut *plain)
        .await
        .unwrap();
    assert_eq!(search_path, "\"$user\", public", "tenant a's scope leaked");
    let accounts: Option<String> = sqlx::query_scalar("SELECT to_regclass('accounts')::text")
        .fetch_one(&mut *plain)
        .await
        .unwrap();
    assert_eq!(accounts, None);
    drop(plain);

    let mut conn = pools.acquire(&b).await.unwrap();
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let expected: PgConnectOptions = second_admin_url().parse().unwrap();
    assert_eq!(
        port,
        i32::from(expected.get_port()),
        "b is served from eu-2"
    );
    let only_a: i64 =
        sqlx::query_scalar("SELECT count(*) FROM accounts WHERE email = 'only-a@example.com'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(only_a, 0, "b's accounts are b's");
    drop(conn);

    // Dropped inside a failed transaction: closed, never handed on.
    let mut conn = pools.acquire(&a).await.unwrap();
    assert!(sqlx::raw_sql("BEGIN; SELECT 1/0")
        .execute(&mut *conn)
        .await
        .is_err());
    drop(conn);
    let mut plain = pools.server_connection(None).await.unwrap();
    let search_path: String = sqlx::query_scalar(path)
        .fetch_one(&mut *plain)
        .await
        .unwrap();
    assert_eq!(search_path, "\"$user\", public");
    drop(plain);
    control.close().await;
    second.finish().await;
    model.finish().await;
}

/// With a database per tenant, the application's connection of a tenant is one of its
/// database on its server, from a pool of that database; beyond `max_databases` the least
/// recently used pool is closed (its sessions end), and a tenant whose pool was closed gets
/// a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_database_connection_is_of_its_database_on_its_server() {
    let model = Model::new(Kind::PgDatabase, "server_app_db").await;
    let (second, a, b) = a_here_and_b_on_eu2(&model).await;
    let eu2 = server("eu-2");

    let control = sqlx::PgPool::connect(model.url()).await.unwrap();
    let pools = tenant_pools(&model, &control, 1).max_databases(1);
    let located = pools.locate(&b).await.unwrap();
    assert_eq!(
        (located.server.as_ref(), located.storage.as_str()),
        (Some(&eu2), b.as_str())
    );
    let here = "SELECT current_database()::text, inet_server_port(), pg_backend_pid()";
    let mut conn = pools.acquire(&a).await.unwrap();
    let (db, port, pid_a): (String, i32, i32) =
        sqlx::query_as(here).fetch_one(&mut *conn).await.unwrap();
    let first: PgConnectOptions = model.url().parse().unwrap();
    assert_eq!(
        (db.as_str(), port),
        (a.as_str(), i32::from(first.get_port()))
    );
    sqlx::query("INSERT INTO accounts (email) VALUES ('only-a@example.com')")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let mut conn = pools.acquire(&a).await.unwrap();
    let (_, _, pid): (String, i32, i32) = sqlx::query_as(here).fetch_one(&mut *conn).await.unwrap();
    assert_eq!(pid, pid_a, "the same pooled session");
    drop(conn);

    let mut conn = pools.acquire(&b).await.unwrap();
    let (db, port, _): (String, i32, i32) =
        sqlx::query_as(here).fetch_one(&mut *conn).await.unwrap();
    let expected: PgConnectOptions = second_admin_url().parse().unwrap();
    assert_eq!(
        (db.as_str(), port),
        (b.as_str(), i32::from(expected.get_port()))
    );
    let only_a: i64 =
        sqlx::query_scalar("SELECT count(*) FROM accounts WHERE email = 'only-a@example.com'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(only_a, 0, "b's accounts are b's");
    drop(conn);

    // One pool at most: a's was closed for b's, its session ends.
    let mut watcher = PgConnection::connect(model.url()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid_a)
                .fetch_one(&mut watcher)
                .await
                .unwrap();
        if !alive {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a's evicted pool kept its session"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    watcher.close().await.unwrap();
    let mut conn = pools.acquire(&a).await.unwrap();
    let (db, _, pid): (String, i32, i32) =
        sqlx::query_as(here).fetch_one(&mut *conn).await.unwrap();
    assert_eq!(db, a.as_str());
    assert_ne!(pid, pid_a, "a new pool for a");
    drop(conn);
    drop(pools);
    control.close().await;
    second.finish().await;
    model.finish().await;
}

/// No progress output.
struct Quiet;

impl mtnt::Progress for Quiet {}

mtnt_test_support::scenarios_pg!(existing_storage_is_adopted_on_its_server);

/// `tenant adopt --server` registers the schemas (databases) of that server only, with
/// their baseline in their own tracking table there; a run then migrates them there.
async fn existing_storage_is_adopted_on_its_server(model: &Model) {
    let second = Second::new(model).await;
    let eu2 = server("eu-2");
    let migrator = model.migrator(set_to(SECOND)).await;
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    let legacy = model.tenant("legacy");
    let table = "CREATE TABLE accounts (id bigserial PRIMARY KEY, email text)";
    {
        let admin: PgConnectOptions = second.url().parse().unwrap();
        let mut conn = admin.connect().await.unwrap();
        match model.kind() {
            Kind::PgDatabase => {
                sqlx::raw_sql(&format!("CREATE DATABASE \"{legacy}\""))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                let mut conn = second.open(&legacy).await;
                sqlx::raw_sql(table).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            _ => {
                sqlx::raw_sql(&format!(
                    "CREATE SCHEMA \"{legacy}\"; SET search_path TO \"{legacy}\"; {table}"
                ))
                .execute(&mut conn)
                .await
                .unwrap();
                conn.close().await.unwrap();
            }
        }
    }
    let like = format!("{}%", model.prefix());
    // On the default server there is nothing of that name.
    let (adopted, _) = migrator
        .adopt_on(&like, Some(SECOND - 1), None, &Quiet)
        .await
        .unwrap();
    assert!(adopted.is_empty(), "{adopted:?}");
    let (adopted, skipped) = migrator
        .adopt_on(&like, Some(SECOND - 1), Some(&eu2), &Quiet)
        .await
        .unwrap();
    assert!(skipped.is_empty());
    let names: Vec<(&str, Option<&ServerName>)> = adopted
        .iter()
        .map(|t| (t.name.as_str(), t.server.as_ref()))
        .collect();
    assert_eq!(names, [(legacy.as_str(), Some(&eu2))]);
    assert_eq!(
        second.tracking(&legacy, SECOND - 1).await.unwrap().0,
        "completed"
    );
    // Adopted once: a second adopt finds nothing new.
    let (again, _) = migrator
        .adopt_on(&like, None, Some(&eu2), &Quiet)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.tenants_migrated, 1);
    assert_eq!(
        second.tracking(&legacy, SECOND).await.unwrap().0,
        "completed"
    );
    let record = migrator.tenant(&tenant(&legacy)).await.unwrap();
    assert_eq!(record.applied_order, Some(SECOND));
    second.finish().await;
}

/// The `N migrated` of a migrate report's `tenants:` line.
fn migrated_count(out: &str) -> usize {
    let line = out
        .lines()
        .find(|l| l.starts_with("tenants:"))
        .unwrap_or_else(|| panic!("no summary line in\n{out}"));
    line.split(", ")
        .find(|part| part.contains(" migrated ("))
        .and_then(|part| part.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the migrated count of {line:?}"))
}

/// The ledger of the fault app's migrations (`tests/support/fault_app.rs`).
const LEDGER_DDL: &str = "CREATE TABLE public.fault_ledger (tenant text NOT NULL, \
     migration bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())";

/// Registers `names` on `server` (`None`: the default one) with empty storage and nothing
/// applied, through `admin`, a connection to the database that holds the schemas (schema
/// per tenant) or that tenant databases are created from (database per tenant). A tenant
/// database gets the fault app's ledger of its own, from `template`: the app's migrations
/// write it in the tenant's database, where no table of another database is reachable.
async fn register_bare(
    model: &Model,
    admin: &mut PgConnection,
    template: &str,
    server: Option<&str>,
    names: &[String],
) {
    let mut rows = String::from("BEGIN;");
    for name in names {
        let storage = match model.kind() {
            Kind::PgDatabase => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
            _ => format!("CREATE SCHEMA \"{name}\""),
        };
        sqlx::raw_sql(&storage).execute(&mut *admin).await.unwrap();
        rows.push_str(&match server {
            Some(server) => format!(
                "INSERT INTO mtnt_tenants (name, schema_name, server) VALUES ('{name}', '{name}', '{server}');"
            ),
            None => format!(
                "INSERT INTO mtnt_tenants (name, schema_name) VALUES ('{name}', '{name}');"
            ),
        });
    }
    rows.push_str("COMMIT");
    model.execute(Place::Control, &rows).await;
}

/// The fault app's ledger on one server for the tenants `names` there: (entries, distinct
/// (tenant, migration) pairs), and the entries of tenants other than `names`' own. With
/// schemas, the one ledger that `admin` reaches; with databases, each tenant's, opened
/// from `options` (the server's admin connection options).
async fn ledger_on(
    kind: Kind,
    admin: &mut PgConnection,
    options: &PgConnectOptions,
    names: &[String],
) -> (i64, i64, i64) {
    let listed = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if kind != Kind::PgDatabase {
        let sql = format!(
            "SELECT count(*)::bigint, count(DISTINCT (tenant, migration))::bigint, \
             count(*) FILTER (WHERE tenant NOT IN ({listed}))::bigint FROM public.fault_ledger"
        );
        return sqlx::query_as(&sql).fetch_one(admin).await.unwrap();
    }
    let mut total = (0, 0, 0);
    for name in names {
        let mut conn = options.clone().database(name).connect().await.unwrap();
        let sql = format!(
            "SELECT count(*)::bigint, count(DISTINCT (tenant, migration))::bigint, \
             count(*) FILTER (WHERE tenant <> '{name}')::bigint FROM public.fault_ledger"
        );
        let (entries, distinct, others): (i64, i64, i64) =
            sqlx::query_as(&sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        total = (total.0 + entries, total.1 + distinct, total.2 + others);
    }
    total
}

mtnt_test_support::scenarios_pg!(four_runners_split_a_fleet_over_two_servers);

/// Four runner processes, each its own run identity (host, pid, connection tag), share one
/// fleet over two servers through the leases in the control database: every migration of
/// every tenant runs exactly once (each server's ledger says so), all of them complete, the
/// runners share the work, and each records its finished run.
async fn four_runners_split_a_fleet_over_two_servers(model: &Model) {
    const PER_SERVER: usize = 50;
    // The fault app's tenant migrations up to create_c, each appending to a ledger.
    const ORDERS: [i64; 4] = [
        2024_01_02_0001,
        2024_01_02_0002,
        2024_01_02_0003,
        2024_01_02_0004,
    ];
    let databases = model.kind() == Kind::PgDatabase;
    let second = Second::new(model).await;
    let fault_app = || {
        let mut cmd = model.command(env!("CARGO_BIN_EXE_mtnt-fault-app"));
        cmd.env_remove("MTNT_TEST_SLEEP_MS")
            .env_remove("MTNT_TEST_LEDGER")
            .stdin(std::process::Stdio::null());
        cmd
    };
    run(fault_app(), &["migrate"], 0);
    run(fault_app(), &["server", "add", "eu-2", &second.url()], 0);
    // Where the storage of each server's tenants is made: the control database and the
    // second server's database (schemas), or the servers' `postgres` databases.
    let here: PgConnectOptions = mtnt_test_support::postgres::admin_url().parse().unwrap();
    let there: PgConnectOptions = second.url().parse().unwrap();
    let mut local_admin = match model.kind() {
        Kind::PgDatabase => here.connect().await.unwrap(),
        _ => here
            .clone()
            .database(&model.control_name())
            .connect()
            .await
            .unwrap(),
    };
    let mut remote = there.connect().await.unwrap();
    // With databases, each server's template of a tenant database with its own ledger
    // (named with the model's prefix: dropped with the tenant databases).
    let template = model.tenant("ledger");
    if databases {
        for admin in [&mut local_admin, &mut remote] {
            sqlx::raw_sql(&format!("CREATE DATABASE \"{template}\""))
                .execute(&mut *admin)
                .await
                .unwrap();
        }
        for options in [&here, &there] {
            let mut conn = options.clone().database(&template).connect().await.unwrap();
            sqlx::raw_sql(LEDGER_DDL).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
    } else {
        sqlx::raw_sql(LEDGER_DDL)
            .execute(&mut remote)
            .await
            .unwrap();
    }
    // Registered in bulk, nothing applied: half on each server.
    let names: Vec<String> = (0..2 * PER_SERVER)
        .map(|i| model.tenant(&format!("t{i:03}")))
        .collect();
    let (local, far) = names.split_at(PER_SERVER);
    register_bare(model, &mut local_admin, &template, None, local).await;
    register_bare(model, &mut remote, &template, Some("eu-2"), far).await;

    let children: Vec<std::process::Child> = (0..4)
        .map(|_| {
            let mut cmd = fault_app();
            cmd.env("MTNT_TEST_SLEEP_MS", "2")
                .args([
                    "migrate",
                    "--to",
                    "2024_01_02_0004",
                    "--per-server-concurrency",
                    "2",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let mut split = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "a runner failed:\n{text}");
        split.push(migrated_count(&text));
    }
    assert_eq!(
        split.iter().sum::<usize>(),
        2 * PER_SERVER,
        "each tenant by one runner: {split:?}"
    );
    assert!(
        split.iter().filter(|&&n| n > 0).count() >= 2,
        "the runners shared the work: {split:?}"
    );

    // Exactly once, on the server each tenant is on.
    let every = (PER_SERVER * ORDERS.len()) as i64;
    for (server, admin, options, tenants) in [
        ("default", &mut local_admin, &here, local),
        ("eu-2", &mut remote, &there, far),
    ] {
        assert_eq!(
            ledger_on(model.kind(), admin, options, tenants).await,
            (every, every, 0),
            "the ledger of server {server}: (entries, distinct, of other tenants)"
        );
    }
    for name in far.iter().step_by(7) {
        for order in ORDERS {
            assert_eq!(
                second.tracking(name, order).await.unwrap().0,
                "completed",
                "{name}"
            );
        }
    }
    let runs = model
        .int(
            Place::Control,
            "SELECT count(*) FROM mtnt_runs WHERE state = 'finished' AND command = 'migrate'",
        )
        .await;
    assert_eq!(
        runs,
        Some(5),
        "the set-up run and every runner recorded a finished lease"
    );
    // Every tenant at create_c: one behind (create_d), none failed, on either server.
    let status = run(fault_app(), &["status", "--by-server"], 0);
    for server in ["default", "eu-2"] {
        let line = format!(
            "server {server}: 0/{PER_SERVER} tenants current, {PER_SERVER} behind, 0 failed"
        );
        assert!(status.contains(&line), "{status}");
    }
    local_admin.close().await.unwrap();
    remote.close().await.unwrap();
    second.finish().await;
}

mtnt_test_support::scenarios_pg!(
    a_tenant_moves_between_servers_and_a_failed_move_leaves_it_where_it_was
);

/// `tenant move`: the schema (database) with its data, sequences and tracking rows copied
/// to the other server, the registry switched, the source dropped (or kept); the next run
/// migrates the tenant where it is now. A move that cannot finish (the destination has a
/// schema, or a database, of that name) leaves the tenant where it was, untouched; a move
/// that died after its switch is finished by running it again.
async fn a_tenant_moves_between_servers_and_a_failed_move_leaves_it_where_it_was(model: &Model) {
    let schemas = model.kind() == Kind::PgSchema;
    let second = Second::new(model).await;
    let eu2 = server("eu-2");
    let default = ServerName::default_server();
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    let (a, b) = (model.tenant("a"), model.tenant("b"));
    migrator
        .create_tenant_on(&tenant(&a), Some(&default))
        .await
        .unwrap();
    migrator
        .create_tenant_on(&tenant(&b), Some(&eu2))
        .await
        .unwrap();
    model
        .execute(
            Place::Tenant(&a),
            "INSERT INTO accounts (email) SELECT 'u' || i || '@example.com' FROM generate_series(1, 500) i",
        )
        .await;

    // Default -> eu-2.
    let out = run(app(model), &["tenant", "move", &a, "--to", "eu-2"], 0);
    assert!(out.contains("moved tenant"), "{out}");
    assert!(!model.storage_exists(&a).await, "the source is dropped");
    assert!(second.storage_exists(&a).await);
    let mut conn = second.open(&a).await;
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(accounts, 501);
    // Its sequence came along: new rows do not collide.
    sqlx::query("INSERT INTO accounts (email) VALUES ('new@example.com')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert_eq!(
        second.tracking(&a, SECOND - 1).await.unwrap().0,
        "completed"
    );
    if schemas {
        assert_eq!(
            model
                .int(
                    Place::Control,
                    &format!("SELECT count(*) FROM mtnt_tenant_migrations WHERE tenant = '{a}'")
                )
                .await,
            Some(0),
            "its rows left the shared table"
        );
    }
    let record = migrator.tenant(&tenant(&a)).await.unwrap();
    assert_eq!(record.tenant.server.as_ref(), Some(&eu2));

    // The next run migrates it where it is now.
    let later = model.migrator(set_to(SECOND)).await;
    let report = later.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(second.tracking(&a, SECOND).await.unwrap().0, "completed");

    // And back, keeping the source.
    let moved = later
        .move_tenant(&tenant(&a), &default, true)
        .await
        .unwrap();
    assert_eq!(moved.server, None);
    assert!(model.storage_exists(&a).await);
    assert!(second.storage_exists(&a).await, "--keep-source keeps it");
    assert_eq!(
        model.status(Place::Tenant(&a), SECOND).await.as_deref(),
        Some("completed")
    );
    assert_eq!(later.status(&[]).await.unwrap().current, 2);
    let accounts = model
        .int(Place::Tenant(&a), "SELECT count(*) FROM accounts")
        .await;
    assert_eq!(accounts, Some(502));

    // A failed move: the destination has a schema (a database) of that name. Nothing
    // changes.
    let storage = if schemas { "SCHEMA" } else { "DATABASE" };
    model
        .execute(Place::Control, &format!("CREATE {storage} \"{b}\""))
        .await;
    let out = run(app(model), &["tenant", "move", &b, "--to", "default"], 1);
    assert!(out.contains("exists"), "{out}");
    let record = later.tenant(&tenant(&b)).await.unwrap();
    assert_eq!(record.tenant.server.as_ref(), Some(&eu2));
    assert!(second.storage_exists(&b).await);
    assert_eq!(second.tracking(&b, SECOND).await.unwrap().0, "completed");

    // A move of `a` to eu-2 that died after its switch (registry on eu-2, source and
    // journal entry left): running it again drops the source and forgets the move.
    model
        .execute(
            Place::Control,
            &format!(
                "UPDATE mtnt_tenants SET server = 'eu-2' WHERE name = '{a}'; \
                 INSERT INTO mtnt_journal (kind, entry_key, at, body) \
                 VALUES ('move', '{a}', '2026-01-01T00:00:00.000000Z', '{{\"from\": null, \"to\": \"eu-2\"}}')"
            ),
        )
        .await;
    run(app(model), &["tenant", "move", &a, "--to", "eu-2"], 0);
    assert!(
        !model.storage_exists(&a).await,
        "the leftover source is dropped"
    );
    assert_eq!(
        model
            .int(
                Place::Control,
                "SELECT count(*) FROM mtnt_journal WHERE kind = 'move'"
            )
            .await,
        Some(0)
    );
    assert_eq!(later.status(&[]).await.unwrap().current, 2);
    second.finish().await;
}

/// Where the test finds tenant `a` after a killed move: the registry's server (`None`:
/// the default one), whether a move is journaled, and its storage on (default, eu-2).
async fn move_state(model: &Model, second: &Second, a: &str) -> (Option<String>, i64, bool, bool) {
    let server = model
        .text(
            Place::Control,
            &format!("SELECT server FROM mtnt_tenants WHERE name = '{a}'"),
        )
        .await;
    let journaled = model
        .int(
            Place::Control,
            &format!("SELECT count(*) FROM mtnt_journal WHERE kind = 'move' AND entry_key = '{a}'"),
        )
        .await
        .unwrap();
    (
        server,
        journaled,
        model.storage_exists(a).await,
        second.storage_exists(a).await,
    )
}

/// The rows of `a`'s `accounts` and of its tracking table where the registry says it is.
async fn served_rows(model: &Model, second: &Second, a: &str, on_second: bool) -> (i64, i64) {
    if on_second {
        let mut conn = second.open(a).await;
        let accounts = sqlx::query_scalar("SELECT count(*) FROM accounts")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let tracking = sqlx::query_scalar("SELECT count(*) FROM mtnt_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        return (accounts, tracking);
    }
    let accounts = model
        .int(Place::Tenant(a), "SELECT count(*) FROM accounts")
        .await
        .unwrap();
    let (place, sql) = match model.kind() {
        Kind::PgSchema => (
            Place::Control,
            format!("SELECT count(*) FROM mtnt_tenant_migrations WHERE tenant = '{a}'"),
        ),
        _ => (
            Place::Tenant(a),
            "SELECT count(*) FROM mtnt_migrations".to_owned(),
        ),
    };
    let tracking = model.int(place, &sql).await.unwrap();
    (accounts, tracking)
}

/// `tenant move` killed with SIGKILL at random moments (before its journal entry, during
/// the copy, around the switch, while dropping the source), back and forth between the
/// servers: after every kill the tenant is served, whole, from where the registry says;
/// running the move again finishes it (or it had finished), and then the tenant is on the
/// destination only, with all its rows and tracking rows, and no move journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_at_random_moments_is_finished_by_running_it_again() {
    killed_moves(Kind::PgSchema, "server_move_kill").await;
}

/// The same with a database per tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_move_killed_at_random_moments_is_finished_by_running_it_again() {
    killed_moves(Kind::PgDatabase, "server_move_kill_db").await;
}

async fn killed_moves(kind: Kind, name: &str) {
    use mtnt_test_support::faults::{iterations, Rng};
    use std::time::{Duration, Instant};

    const ROWS: i64 = 20_001;
    let model = Model::new(kind, name).await;
    let second = Second::new(&model).await;
    let eu2 = server("eu-2");
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    let a = model.tenant("a");
    migrator
        .create_tenant_on(&tenant(&a), Some(&ServerName::default_server()))
        .await
        .unwrap();
    model
        .execute(
            Place::Tenant(&a),
            &format!(
                "INSERT INTO accounts (email) SELECT 'u' || i || '@example.com' FROM generate_series(2, {ROWS}) i"
            ),
        )
        .await;

    // One whole move measures how long a move takes here, to spread the kills over it.
    let started = Instant::now();
    run(app(&model), &["tenant", "move", &a, "--to", "eu-2"], 0);
    let mut whole = started.elapsed().as_millis() as u64;
    let mut on_second = true;

    let mut rng = Rng::from_env_or_time();
    let iterations = iterations(6);
    let (mut killed, mut left_journaled, mut left_two_copies) = (0, 0, 0);
    for iteration in 0..iterations {
        let to = if on_second { "default" } else { "eu-2" };
        // Early in the move rather than late: the measured one may have run slow.
        let delay = rng.range(0, whole * 2 / 3);
        let spawned = Instant::now();
        let mut child = app(&model)
            .args(["tenant", "move", &a, "--to", to])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        match status.code() {
            None => killed += 1,
            // Finished before the kill: moves run faster now than the measured one.
            Some(_) => whole = whole.min(spawned.elapsed().as_millis() as u64),
        }

        // Served from where the registry says, whole.
        let (server, journaled, on_default, on_eu2) = move_state(&model, &second, &a).await;
        let served_by_second = server.as_deref() == Some("eu-2");
        let at = format!("iteration {iteration}, killed after {delay} ms of {whole}");
        assert!(
            if served_by_second { on_eu2 } else { on_default },
            "{at}: the registry's server has no schema"
        );
        assert_eq!(
            served_rows(&model, &second, &a, served_by_second).await,
            (ROWS, 1),
            "{at}: served rows"
        );
        left_journaled += journaled;
        if on_default && on_eu2 {
            left_two_copies += 1;
        }

        // Running it again finishes it, unless it had finished.
        if journaled == 0 && served_by_second == (to == "eu-2") {
            let out = run(app(&model), &["tenant", "move", &a, "--to", to], 1);
            assert!(out.contains("already"), "{at}: {out}");
        } else {
            run(app(&model), &["tenant", "move", &a, "--to", to], 0);
        }
        on_second = to == "eu-2";
        let (server, journaled, on_default, on_eu2) = move_state(&model, &second, &a).await;
        assert_eq!(server.as_deref(), on_second.then_some("eu-2"), "{at}");
        assert_eq!(journaled, 0, "{at}: the move is forgotten");
        assert_eq!(
            (on_default, on_eu2),
            (!on_second, on_second),
            "{at}: on the destination only"
        );
        assert_eq!(
            served_rows(&model, &second, &a, on_second).await,
            (ROWS, 1),
            "{at}: moved rows"
        );
    }
    eprintln!(
        "move kill loop: {iterations} moves, {killed} killed, {left_journaled} left journaled, \
         {left_two_copies} left a copy on both servers (a move takes {whole} ms here)"
    );
    assert!(killed >= iterations / 3, "kills must land mid-move");
    // The tenant is current where it is.
    let status = migrator.status(&[]).await.unwrap();
    assert_eq!((status.current, status.behind), (1, 0));
    second.finish().await;
    model.finish().await;
}

/// A move killed mid-copy leaves its `psql` running, inside its restore transaction (its
/// schema made, not committed). Running the move again ends that session first (else its
/// own copy would wait on the uncommitted schema, or clash with it once committed), and
/// finishes the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_ends_the_copy_a_killed_move_left_running() {
    use std::time::{Duration, Instant};

    let model = Model::new(Kind::PgSchema, "server_move_orphan").await;
    let second = Second::new(&model).await;
    let eu2 = server("eu-2");
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    let (a, b) = (model.tenant("a"), model.tenant("b"));
    for name in [&a, &b] {
        migrator
            .create_tenant_on(&tenant(name), Some(&ServerName::default_server()))
            .await
            .unwrap();
    }
    // A whole move first: it makes the journal.
    run(app(&model), &["tenant", "move", &b, "--to", "eu-2"], 0);
    model
        .execute(
            Place::Control,
            &format!(
                "INSERT INTO mtnt_journal (kind, entry_key, at, body) \
                 VALUES ('move', '{a}', '2026-01-01T00:00:00.000000Z', '{{\"from\": null, \"to\": \"eu-2\"}}')"
            ),
        )
        .await;
    // The killed move's restore, as its `psql` names its session.
    let options: PgConnectOptions = second.url().parse().unwrap();
    let mut orphan = options
        .application_name(&format!("mtnt move {a}"))
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "BEGIN; CREATE SCHEMA \"{a}\"; CREATE TABLE \"{a}\".accounts (id bigint)"
    ))
    .execute(&mut orphan)
    .await
    .unwrap();

    let mut child = app(&model)
        .args(["tenant", "move", &a, "--to", "eu-2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Not a speed check: without ending the session, the move waits for it for ever.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the move waits on the killed move's restore");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sqlx::raw_sql("SELECT 1")
            .execute(&mut orphan)
            .await
            .is_err(),
        "the killed move's session is ended"
    );
    let (server, journaled, on_default, on_eu2) = move_state(&model, &second, &a).await;
    assert_eq!(
        (server.as_deref(), journaled, on_default, on_eu2),
        (Some("eu-2"), 0, false, true)
    );
    assert_eq!(served_rows(&model, &second, &a, true).await, (1, 1));
    second.finish().await;
    model.finish().await;
}

mtnt_test_support::scenarios_pg!(a_move_under_load_loses_no_acknowledged_write);

/// What the application's writer saw during a move under load.
#[derive(Default)]
struct Load {
    /// The ids whose insert was acknowledged (committed), in order.
    acked: Vec<i64>,
    /// Failed attempts (retried with the same id).
    failures: usize,
    /// Attempts that started while a move ran.
    during_moves: usize,
}

/// One insert of `id` into the tenant's `accounts` where the registry says the tenant is
/// now, as the application does it: through [`mtnt::TenantPools`], which looks the tenant
/// up on every checkout.
async fn insert_where_it_is(
    pools: &mtnt::TenantPools,
    name: &TenantName,
    id: i64,
) -> Result<(), String> {
    let mut conn = pools.acquire(name).await.map_err(|e| e.to_string())?;
    let done = sqlx::query("INSERT INTO accounts (id, email) VALUES ($1, 'load@example.com')")
        .bind(id)
        .execute(&mut *conn)
        .await;
    match done {
        Ok(_) => Ok(()),
        // Committed by an attempt whose answer was lost.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The application's pools of `model`'s fleet, at most `max` connections each.
fn tenant_pools(model: &Model, control: &sqlx::PgPool, max: u32) -> mtnt::TenantPools {
    match model.kind() {
        Kind::PgSchema => mtnt::TenantPools::new(mtnt::PostgresBackend::new(control.clone()), max),
        _ => mtnt::TenantPools::for_databases(
            mtnt::PgDatabaseBackend::new(control.clone()).unwrap(),
            max,
        ),
    }
}

/// `tenant move` while the application writes to the tenant all along, there and back
/// (the way back with `--keep-source`): both moves succeed, and the tenant where the
/// registry says holds exactly the writes the application saw acknowledged: none is lost
/// at a source that is dropped (or that no one reads any more), none is doubled. Writes
/// wait while the tenant is copied; one held back at the switch fails and its retry finds
/// the tenant on its new server. A move whose writes cannot be paused (an open transaction
/// holds a table all along) gives up and leaves the tenant where it was.
async fn a_move_under_load_loses_no_acknowledged_write(model: &Model) {
    use std::cell::{Cell, RefCell};
    use std::time::Duration;

    let second = Second::new(model).await;
    let eu2 = server("eu-2");
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    let a = model.tenant("a");
    let name = tenant(&a);
    migrator
        .create_tenant_on(&name, Some(&ServerName::default_server()))
        .await
        .unwrap();
    // Enough rows that the copy takes a while.
    model
        .execute(
            Place::Tenant(&a),
            "INSERT INTO accounts (email) SELECT 'u' || i || '@example.com' FROM generate_series(1, 100000) i",
        )
        .await;
    let control = sqlx::PgPool::connect(model.url()).await.unwrap();
    let pools = tenant_pools(model, &control, 2);

    // The writer and the moves take turns on this task's thread: plain cells.
    let load = RefCell::new(Load::default());
    let (moving, stop) = (Cell::new(false), Cell::new(false));
    let writer = async {
        let mut id = 10_000_000;
        while !stop.get() {
            let during = moving.get();
            let written = insert_where_it_is(&pools, &name, id).await;
            {
                let mut load = load.borrow_mut();
                load.during_moves += usize::from(during);
                match written {
                    Ok(()) => {
                        load.acked.push(id);
                        id += 1;
                    }
                    Err(_) => load.failures += 1,
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let acked = || load.borrow().acked.len();
    let moves = async {
        while acked() < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (args, to_second) in [
            (vec!["tenant", "move", &a, "--to", "eu-2"], true),
            (
                vec!["tenant", "move", &a, "--to", "default", "--keep-source"],
                false,
            ),
        ] {
            moving.set(true);
            let mut cmd = app(model);
            cmd.args(&args);
            let out = tokio::process::Command::from(cmd).output().await.unwrap();
            moving.set(false);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(0), "{args:?}\n{text}");
            assert!(text.contains("moved tenant"), "{text}");
            let record = migrator.tenant(&name).await.unwrap();
            assert_eq!(record.tenant.server.is_some(), to_second);
            // The application writes on, to where the tenant is now.
            let before = acked();
            while acked() < before + 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        stop.set(true);
    };
    tokio::join!(writer, moves);

    let load = load.into_inner();
    eprintln!(
        "{} writes acknowledged, {} attempts during the moves, {} failed and retried",
        load.acked.len(),
        load.during_moves,
        load.failures
    );
    assert!(
        load.during_moves > 0,
        "the application wrote during the moves"
    );
    // Back on the default server: every acknowledged write is there, once.
    let ids = model
        .texts(
            Place::Tenant(&a),
            "SELECT id::text FROM accounts WHERE id >= 10000000 ORDER BY id",
        )
        .await;
    let ids: Vec<i64> = ids.iter().map(|id| id.parse().unwrap()).collect();
    assert_eq!(
        ids, load.acked,
        "the tenant holds exactly the acknowledged writes"
    );
    assert_eq!(
        model
            .int(
                Place::Tenant(&a),
                "SELECT count(*) FROM accounts WHERE id < 10000000"
            )
            .await,
        Some(100_001)
    );
    assert!(second.storage_exists(&a).await, "--keep-source kept it");
    // Read-only: a writer that still reaches it is refused, so its retry goes to the tenant.
    let mut kept = second.open(&a).await;
    let refused = sqlx::query("INSERT INTO accounts (id, email) VALUES (30000000, 'late')")
        .execute(&mut kept)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, sqlx::Error::Database(e) if e.code().as_deref() == Some("25006")),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("this is its kept source"),
        "{refused}"
    );
    kept.close().await.unwrap();

    // An open transaction of the application holds a table of the tenant all along: the
    // move gives up, the tenant stays where it is, nothing is left behind, and the
    // transaction commits at the source.
    let mut kept = PgConnection::connect(&second.url()).await.unwrap();
    let drop_kept = match model.kind() {
        Kind::PgSchema => format!("DROP SCHEMA \"{a}\" CASCADE"),
        _ => format!("DROP DATABASE \"{a}\" WITH (FORCE)"),
    };
    sqlx::raw_sql(&drop_kept).execute(&mut kept).await.unwrap();
    kept.close().await.unwrap();
    let options: PgConnectOptions = model.url().parse().unwrap();
    let mut holder = match model.kind() {
        Kind::PgSchema => {
            let mut conn = options.connect().await.unwrap();
            sqlx::raw_sql(&format!("SET search_path TO \"{a}\""))
                .execute(&mut conn)
                .await
                .unwrap();
            conn
        }
        _ => options.database(&a).connect().await.unwrap(),
    };
    sqlx::raw_sql("BEGIN; INSERT INTO accounts (id, email) VALUES (20000000, 'held')")
        .execute(&mut holder)
        .await
        .unwrap();
    let out = run(app(model), &["tenant", "move", &a, "--to", "eu-2"], 1);
    assert!(out.contains("its writes could not be paused"), "{out}");
    assert!(out.contains("the tenant stays where it is"), "{out}");
    assert_eq!(migrator.tenant(&name).await.unwrap().tenant.server, None);
    assert!(!second.storage_exists(&a).await, "the partial copy is gone");
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    assert_eq!(
        model
            .int(
                Place::Tenant(&a),
                "SELECT count(*) FROM accounts WHERE id = 20000000"
            )
            .await,
        Some(1)
    );
    assert!(!model
        .texts(
            Place::Control,
            "SELECT entry_key FROM mtnt_journal WHERE kind = 'move'"
        )
        .await
        .contains(&a));
    drop(pools);
    control.close().await;
    second.finish().await;
}

mtnt_test_support::scenarios_pg!(a_cordoned_server_takes_no_tenants_and_a_drain_empties_it);

/// `server cordon`: the server keeps its tenants but placement passes it over, and no
/// tenant is created on it or moved to it. `server drain` cordons it and moves every
/// tenant off, one by one, with its data; a tenant that cannot move stays where it was,
/// the others move on, and running the drain again moves what is left. Then the server
/// can be removed. With every server cordoned, no tenant can be placed.
async fn a_cordoned_server_takes_no_tenants_and_a_drain_empties_it(model: &Model) {
    let schemas = model.kind() == Kind::PgSchema;
    let second = Second::new(model).await;
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator
        .add_server(&server("eu-2"), &second.url())
        .await
        .unwrap();
    let name = |base: &str| model.tenant(base);
    // Through the library: the test app's own migrations are another set.
    for (base, on) in [
        ("a", "eu-2"),
        ("b", "eu-2"),
        ("c1", "default"),
        ("c2", "default"),
        ("c3", "default"),
    ] {
        migrator
            .create_tenant_on(&tenant(&name(base)), Some(&server(on)))
            .await
            .unwrap();
    }
    model
        .execute(
            Place::Tenant(&name("c1")),
            "INSERT INTO accounts (email) SELECT 'u' || i || '@example.com' FROM generate_series(1, 99) i",
        )
        .await;
    let server_of = |base: &str| {
        let migrator = &migrator;
        let tenant = tenant(&name(base));
        async move {
            migrator
                .tenant(&tenant)
                .await
                .unwrap()
                .tenant
                .server_name()
                .to_owned()
        }
    };

    let out = run(app(model), &["server", "cordon", "eu-2"], 0);
    assert!(out.contains("cordoned server eu-2"), "{out}");
    let out = run(app(model), &["server", "list"], 0);
    assert!(out.contains("1 cordoned (taking no new tenants)"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&run(app(model), &["server", "list", "--json"], 0)).unwrap();
    let cordoned: Vec<(&str, bool)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["cordoned"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(cordoned, [("default", false), ("eu-2", true)]);
    // Fewest tenants would be eu-2 (2 against 3): cordoned, it is passed over.
    migrator
        .create_tenant_on(&tenant(&name("d")), None)
        .await
        .unwrap();
    assert_eq!(server_of("d").await, "default");
    assert!(matches!(
        migrator
            .create_tenant_on(&tenant(&name("e")), Some(&server("eu-2")))
            .await,
        Err(Error::ServerCordoned { .. })
    ));
    assert!(!model.storage_exists(&name("e")).await && !second.storage_exists(&name("e")).await);
    let out = run(
        app(model),
        &["tenant", "move", &name("c1"), "--to", "eu-2"],
        1,
    );
    assert!(
        out.contains("server eu-2 is cordoned: it takes no new tenants"),
        "{out}"
    );
    assert!(out.contains("server uncordon eu-2"), "{out}");
    assert_eq!(server_of("c1").await, "default");
    // A cordoned server's tenants are still migrated.
    let later = model.migrator(set_to(SECOND)).await;
    let report = later.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        second.tracking(&name("a"), SECOND).await.unwrap().0,
        "completed"
    );
    let out = run(app(model), &["server", "remove", "eu-2"], 1);
    assert!(out.contains("server drain eu-2"), "{out}");

    // b cannot move: the default server has a schema (database) of its name.
    let storage = if schemas { "SCHEMA" } else { "DATABASE" };
    model
        .execute(
            Place::Control,
            &format!("CREATE {storage} \"{}\"", name("b")),
        )
        .await;
    let out = run(app(model), &["server", "drain", "eu-2"], 1);
    assert!(
        out.contains(&format!("moved tenant {} to server default", name("a"))),
        "{out}"
    );
    assert!(out.contains(&name("b")) && out.contains("exists"), "{out}");
    assert!(
        out.contains("drained server eu-2: 1 moved, 1 failed"),
        "{out}"
    );
    assert_eq!(server_of("a").await, "default");
    assert_eq!(server_of("b").await, "eu-2");
    assert!(
        second.storage_exists(&name("b")).await,
        "b stays where it was"
    );
    assert!(
        !second.storage_exists(&name("a")).await,
        "a's source is dropped"
    );
    assert_eq!(
        model
            .status(Place::Tenant(&name("a")), SECOND)
            .await
            .as_deref(),
        Some("completed")
    );
    model
        .execute(Place::Control, &format!("DROP {storage} \"{}\"", name("b")))
        .await;
    let out = run(app(model), &["server", "drain", "eu-2"], 0);
    assert!(
        out.contains("drained server eu-2: 1 moved, 0 failed"),
        "{out}"
    );
    assert_eq!(server_of("b").await, "default");
    assert_eq!(later.status(&[]).await.unwrap().current, 6);
    assert_eq!(
        model
            .int(Place::Tenant(&name("c1")), "SELECT count(*) FROM accounts")
            .await,
        Some(100)
    );
    let out = run(
        app(model),
        &["tenant", "create", &name("e"), "--server", "eu-2"],
        1,
    );
    assert!(out.contains("server eu-2 is cordoned"), "{out}");
    run(app(model), &["server", "remove", "eu-2"], 0);

    // Every server cordoned: nothing can be placed, until one takes tenants again.
    run(app(model), &["server", "cordon", "default"], 0);
    assert!(matches!(
        migrator.create_tenant_on(&tenant(&name("f")), None).await,
        Err(Error::NoServerTakesTenants { but: None })
    ));
    let out = run(app(model), &["tenant", "create", &name("f")], 1);
    assert!(
        out.contains("no server takes new tenants: every server is cordoned"),
        "{out}"
    );
    assert!(out.contains("server uncordon NAME"), "{out}");
    assert!(!model.storage_exists(&name("f")).await);
    let out = run(app(model), &["server", "uncordon", "default"], 0);
    assert!(
        out.contains("server default takes new tenants again"),
        "{out}"
    );
    run(app(model), &["tenant", "create", &name("f")], 0);
    assert_eq!(server_of("f").await, "default");
    second.finish().await;
}

mtnt_test_support::scenarios_pg!(a_server_is_reached_before_it_is_added);

/// `server add` connects first: a server that does not answer is not added (unless
/// `--no-check`), nor one that is a registered server under another name (the control
/// database's own included). With a schema per tenant, another database of the same
/// cluster is another server; with a database per tenant, the cluster is the server.
async fn a_server_is_reached_before_it_is_added(model: &Model) {
    let second = Second::new(model).await;
    let out = run(app(model), &["server", "add", "eu-2", &second.url()], 0);
    assert!(out.contains("added server eu-2"), "{out}");
    assert!(out.contains("connected;"), "{out}");

    let out = run(app(model), &["server", "add", "eu-3", &second.url()], 1);
    let what = match model.kind() {
        Kind::PgSchema => "the database",
        _ => "the PostgreSQL cluster",
    };
    assert!(
        out.contains(&format!("server eu-3 is {what} of server eu-2")),
        "{out}"
    );
    assert!(out.contains("place tenants on server eu-2"), "{out}");
    let out = run(app(model), &["server", "add", "itself", model.url()], 1);
    assert!(out.contains("of server default"), "{out}");

    let dead = format!("postgres://postgres@127.0.0.1:{}/postgres", dead_port());
    let out = run(app(model), &["server", "add", "eu-9", &dead], 1);
    assert!(out.contains("server eu-9 was not added"), "{out}");
    assert!(out.contains("server add --no-check"), "{out}");
    assert!(out.contains("MTNT_SERVER_EU_9_PASSWORD"), "{out}");
    let listed = run(app(model), &["server", "list"], 0);
    assert!(
        !listed.contains("eu-3") && !listed.contains("eu-9") && !listed.contains("itself"),
        "{listed}"
    );
    let out = run(
        app(model),
        &["server", "add", "eu-9", &dead, "--no-check"],
        0,
    );
    assert!(out.contains("not connected;"), "{out}");
    assert!(run(app(model), &["server", "list"], 0).contains("eu-9"));

    // Another database of the second cluster: another server with a schema per tenant
    // (the check passes eu-9 by, which does not answer).
    let other = TestDb::create_on(&second_admin_url(), "servers_other").await;
    let code = match model.kind() {
        Kind::PgSchema => 0,
        _ => 1,
    };
    let out = run(app(model), &["server", "add", "eu-4", &other.url], code);
    if code == 1 {
        assert!(
            out.contains("server eu-4 is the PostgreSQL cluster of server eu-2"),
            "{out}"
        );
    }
    other.drop_db().await;
    second.finish().await;
}

mtnt_test_support::scenarios_pg!(a_run_can_take_the_tenants_of_some_servers_only);

/// `--server S` (repeatable) on `migrate`, `plan` (and `rollback`, `exec`): only the
/// tenants placed on those servers, counted as the run's total; an unknown server is
/// refused before anything runs.
async fn a_run_can_take_the_tenants_of_some_servers_only(model: &Model) {
    let second = Second::new(model).await;
    let eu2 = server("eu-2");
    let migrator = model.migrator(set_to(SECOND - 1)).await;
    migrator.add_server(&eu2, &second.url()).await.unwrap();
    let (a, b, c) = (model.tenant("a"), model.tenant("b"), model.tenant("c"));
    migrator
        .create_tenant_on(&tenant(&a), Some(&ServerName::default_server()))
        .await
        .unwrap();
    for name in [&b, &c] {
        migrator
            .create_tenant_on(&tenant(name), Some(&eu2))
            .await
            .unwrap();
    }
    let later = model.migrator(set_to(SECOND)).await;
    let plan = later
        .plan(&MigrateOptions::new().servers([eu2.clone()]))
        .await
        .unwrap();
    let planned: Vec<String> = plan
        .groups
        .iter()
        .flat_map(|g| g.tenants.iter().map(|t| t.to_string()))
        .collect();
    assert_eq!(planned.len(), 2, "{planned:?}");
    assert!(planned.contains(&b) && planned.contains(&c), "{planned:?}");

    assert!(matches!(
        later
            .migrate(&MigrateOptions::new().servers([server("nowhere")]))
            .await,
        Err(Error::UnknownServer { .. })
    ));
    let report = later
        .migrate(&MigrateOptions::new().servers([eu2.clone()]))
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!((report.tenants_total, report.tenants_migrated), (2, 2));
    assert_eq!(second.tracking(&b, SECOND).await.unwrap().0, "completed");
    assert_eq!(
        model.status(Place::Tenant(&a), SECOND).await,
        None,
        "a waits"
    );

    let report = later
        .migrate(&MigrateOptions::new().servers([ServerName::default_server()]))
        .await
        .unwrap();
    assert_eq!((report.tenants_total, report.tenants_migrated), (1, 1));
    assert_eq!(
        model.status(Place::Tenant(&a), SECOND).await.as_deref(),
        Some("completed")
    );
    // The flags, read-only: an unknown server is refused, a dry run says the selection.
    let out = run(app(model), &["plan", "--server", "nowhere"], 1);
    assert!(out.contains("unknown server \"nowhere\""), "{out}");
    let out = run(app(model), &["migrate", "--dry-run", "--server", "eu-2"], 0);
    assert!(out.contains("only the tenants of server eu-2"), "{out}");
    second.finish().await;
}
