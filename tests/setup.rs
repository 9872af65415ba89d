//! Setting a fleet up, on every tenancy model: the registry records its tenancy model
//! (and, on PostgreSQL, its control schema) when it is first set up, later commands use
//! the recorded model and refuse a contradicting one, and a command that only reads
//! creates nothing where mtnt never ran. Then what PostgreSQL users see when the control
//! database is missing, and PostgreSQL's DETAIL and HINT in error messages.
//!
//! `models!` turns each scenario into one test per model, named `<scenario>::<model>`, as
//! `scenarios!` does in `tests/behaviour.rs`; the CLI is the behaviour suite's portable app.

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]
// A build without any engine has no scenario to run.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports)
)]

use assert_cmd::Command;
use mtnt::{ConnectOptions, Error, MigrateOptions, MigrationSet, Tenancy, TenantName};
use mtnt_test_support::models::{Kind, Model, Place};
use mtnt_test_support::scenarios;
use predicates::prelude::*;

/// Migrations of the library tests: a public table and a tenant one, on any engine.
mod plain {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "public", order = 2031_01_01_0001)]
    async fn create_regions(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE regions (id INTEGER PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2031_01_01_0002)]
    async fn create_people(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE people (id INTEGER PRIMARY KEY)")
            .await
    }
}

/// A tenant migration whose unique index meets duplicates (PostgreSQL SQL).
#[cfg(feature = "postgres")]
mod duplicate {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "tenant", order = 2031_02_01_0001)]
    async fn unique_display_names(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute(
            "CREATE TABLE handles (display_name text);
             INSERT INTO handles (display_name) VALUES ('Ada'), ('Ada');
             CREATE UNIQUE INDEX handles_display_name ON handles (display_name)",
        )
        .await
    }
}

scenarios!(
    reads_create_nothing_where_mtnt_never_ran,
    the_tenancy_model_is_recorded_and_a_contradiction_refused,
    a_registry_from_before_the_record_keeps_working,
);

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

fn plain_set() -> MigrationSet {
    MigrationSet::registered_in("setup::plain").unwrap()
}

/// The portable CLI app on this model as the suite runs it: with `--tenancy database`
/// on PostgreSQL database per tenant.
fn app(m: &Model) -> Command {
    let mut cmd = Command::from_std(m.command(assert_cmd::cargo::cargo_bin("mtnt-portable-app")));
    cmd.env_remove("MTNT_TENANCY");
    cmd
}

/// The portable CLI app on this model's URL without any `--tenancy`.
fn bare(m: &Model) -> Command {
    let mut cmd = Command::cargo_bin("mtnt-portable-app").unwrap();
    cmd.env("DATABASE_URL", m.url())
        .env_remove("MTNT_LOG")
        .env_remove("MTNT_TENANCY")
        .arg("--no-progress");
    cmd
}

/// What mtnt could have created where this model keeps its registry: on PostgreSQL every
/// schema, relation and function of the control database; on MySQL whether the control
/// database exists; on SQLite every file under the directory.
async fn snapshot(m: &Model) -> Vec<String> {
    match m.kind() {
        Kind::Sqlite => {
            let dir = m.url().trim_start_matches("sqlite://").to_owned();
            let mut files = Vec::new();
            let mut stack = vec![std::path::PathBuf::from(dir)];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path.clone());
                    }
                    files.push(path.display().to_string());
                }
            }
            files.sort();
            files
        }
        Kind::MySql => {
            let control = m.control_name();
            vec![format!(
                "control database {control} exists: {}; tenant databases: {}",
                m.storage_exists(&control).await,
                m.storage_count().await
            )]
        }
        Kind::PgSchema | Kind::PgDatabase => m.texts(Place::Control, PG_CATALOG).await,
    }
}

/// Every schema, relation (table, index, sequence, view) and function outside the system
/// catalogs of the current database.
const PG_CATALOG: &str = "SELECT 'schema ' || nspname FROM pg_namespace \
    UNION ALL SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text \
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
    UNION ALL SELECT 'function ' || n.nspname || '.' || p.proname \
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
    ORDER BY 1";

/// The tenancy model the registry records, read from the engine.
async fn recorded(m: &Model) -> Option<String> {
    m.text(
        Place::Control,
        "SELECT value FROM mtnt_settings WHERE name = 'tenancy'",
    )
    .await
}

/// A tenancy model the registry of `kind` contradicts.
fn contradicting(kind: Kind) -> Tenancy {
    match kind {
        Kind::PgSchema => Tenancy::Database,
        Kind::PgDatabase | Kind::MySql | Kind::Sqlite => Tenancy::Schema,
    }
}

const NO_REGISTRY: &str = "has no mtnt registry: nothing has been migrated here";

/// `status`, `tenant list`, `plan` and `migrate --dry-run` (and the library's status,
/// tenants and plan) against a place mtnt never set up fail with a typed error and a
/// non-zero exit, and leave it as it was; the first `migrate` then sets it up.
async fn reads_create_nothing_where_mtnt_never_ran(m: &Model) {
    let before = snapshot(m).await;
    // With them the commands that need a registered tenant: nothing to drop or compare.
    let reads: [&[&str]; 9] = [
        &["status"],
        &["status", "--json"],
        &["tenant", "list"],
        &["tenant", "list", "--json"],
        &["plan"],
        &["migrate", "--dry-run"],
        &["drift"],
        &["report", "--html", "/dev/null"],
        &["tenant", "drop", "acme", "--yes"],
    ];
    for args in reads {
        app(m)
            .args(args)
            .assert()
            .code(1)
            .stderr(predicate::str::contains(NO_REGISTRY))
            .stderr(predicate::str::contains(
                "fix: check the URL (--database-url or DATABASE_URL), or run `migrate` to set it up",
            ));
    }
    let migrator = m.migrator(plain_set()).await;
    assert!(
        matches!(migrator.status(&[]).await, Err(Error::NoRegistry { .. })),
        "status"
    );
    assert!(
        matches!(migrator.tenants().await, Err(Error::NoRegistry { .. })),
        "tenants"
    );
    match migrator.plan(&MigrateOptions::new()).await {
        Err(Error::NoRegistry { place, .. }) => {
            let expected = match m.kind() {
                Kind::Sqlite => "directory ".to_owned(),
                Kind::MySql => format!("control database {} on ", m.control_name()),
                _ => format!("database {} on ", m.control_name()),
            };
            assert!(place.starts_with(&expected), "{place}");
        }
        other => panic!("plan: {other:?}"),
    }
    drop(migrator);
    assert_eq!(snapshot(m).await, before, "a read changed {:?}", m.kind());
    // A writing command sets the place up; the reads work from then on.
    app(m).arg("migrate").assert().success();
    app(m)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("0/0 tenants current"));
    app(m).args(["tenant", "list"]).assert().success();
}

/// The first run records the model; later runs need no `--tenancy` and use the recorded
/// one; a contradicting `--tenancy`, `MTNT_TENANCY` or model given in code is refused
/// before anything changes.
async fn the_tenancy_model_is_recorded_and_a_contradiction_refused(m: &Model) {
    let own = m.kind().tenancy();
    app(m).arg("migrate").assert().success();
    assert_eq!(recorded(m).await.as_deref(), Some(own.as_str()));
    if m.kind().engine() == mtnt::Engine::Postgres {
        assert_eq!(
            m.text(
                Place::Control,
                "SELECT value FROM mtnt_settings WHERE name = 'control_schema'"
            )
            .await
            .as_deref(),
            Some("public")
        );
    }

    // No flag: the recorded model. On database per tenant, `--tenant acme` is a database,
    // never a schema in the control database.
    let acme = m.tenant("acme");
    bare(m).args(["tenant", "create", &acme]).assert().success();
    bare(m)
        .args(["migrate", "--tenant", &acme])
        .assert()
        .success();
    assert!(m.storage_exists(&acme).await);
    if m.kind() == Kind::PgDatabase {
        let schemas = format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{acme}'");
        assert_eq!(m.int(Place::Control, &schemas).await, Some(0));
    }
    bare(m)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("1/1 tenants current"));
    // The flag that agrees is accepted.
    bare(m)
        .args(["--tenancy", own.as_str(), "status"])
        .assert()
        .success();

    // A contradicting flag or environment variable changes nothing.
    let other = contradicting(m.kind()).as_str();
    let beta = m.tenant("beta");
    let before = snapshot(m).await;
    let refusal = match m.kind() {
        Kind::PgSchema | Kind::PgDatabase => format!(
            "error: the mtnt registry was set up with tenancy {own}, but this run was given tenancy {}; nothing was changed\n  fix: leave out --tenancy (and MTNT_TENANCY): the recorded tenancy {} is used",
            contradicting(m.kind()),
            own.as_str()
        ),
        // Neither engine has another model to be given.
        Kind::MySql | Kind::Sqlite => format!("use {}", own.as_str()),
    };
    for (flag, env) in [(true, false), (false, true)] {
        for args in [
            vec!["tenant", "create", &beta],
            vec!["migrate", "--tenant", &acme],
            vec!["migrate"],
            vec!["status"],
        ] {
            let mut cmd = bare(m);
            if flag {
                cmd.args(["--tenancy", other]);
            }
            if env {
                cmd.env("MTNT_TENANCY", other);
            }
            cmd.args(&args)
                .assert()
                .code(1)
                .stderr(predicate::str::contains(refusal.as_str()));
        }
    }
    assert!(!m.storage_exists(&beta).await);
    assert_eq!(
        snapshot(m).await,
        before,
        "a refused run changed {:?}",
        m.kind()
    );

    // The model given in code is refused the same way.
    let mut options = ConnectOptions::default();
    options.tenancy = Some(contradicting(m.kind()));
    let refused = mtnt::connect(m.url(), &options).await.map(drop);
    match m.kind() {
        Kind::PgSchema | Kind::PgDatabase => assert!(
            matches!(
                refused,
                Err(Error::TenancyMismatch { recorded, given })
                    if recorded == own && given == contradicting(m.kind())
            ),
            "{refused:?}"
        ),
        Kind::MySql | Kind::Sqlite => assert!(matches!(refused, Err(Error::BadUrl { .. }))),
    }
    // Without a model in code, the recorded one.
    let backend = mtnt::connect(m.url(), &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(backend.tenancy(), own);
}

/// A registry set up before the model was recorded (no `mtnt_settings`): reads work and
/// record nothing; the next writing command records the model, which on PostgreSQL is
/// told by where the tenants are (without `--tenancy`, and against a contradicting one).
async fn a_registry_from_before_the_record_keeps_working(m: &Model) {
    let acme = m.tenant("acme");
    app(m).args(["tenant", "create", &acme]).assert().success();
    m.execute(Place::Control, "DROP TABLE mtnt_settings").await;
    bare(m)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("1/1 tenants current"));
    bare(m).args(["tenant", "list"]).assert().success();
    if m.kind().engine() == mtnt::Engine::Postgres {
        // Where the tenants are says the model: a contradicting flag is refused.
        bare(m)
            .args(["--tenancy", contradicting(m.kind()).as_str(), "migrate"])
            .assert()
            .code(1)
            .stderr(predicate::str::contains(format!(
                "was set up with tenancy {}",
                m.kind().tenancy()
            )));
    }
    assert!(!m.table_exists(Place::Control, "mtnt_settings").await);
    let migrator = m.migrator(plain_set()).await;
    migrator.tenants().await.unwrap();
    drop(migrator);
    assert!(!m.table_exists(Place::Control, "mtnt_settings").await);
    bare(m).arg("migrate").assert().success();
    assert_eq!(
        recorded(m).await.as_deref(),
        Some(m.kind().tenancy().as_str())
    );
    // The recorded model holds from now on.
    let beta = m.tenant("beta");
    bare(m).args(["tenant", "create", &beta]).assert().success();
    bare(m)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("2/2 tenants current"));
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use mtnt::{Migrator, PostgresBackend};
    use mtnt_test_support::postgres::{admin_url, TestDb};
    use sqlx::{Connection, PgConnection};

    /// mtnt's own objects in the database of `url`: tables, functions, schemas whose name
    /// starts with `mtnt`.
    async fn mtnt_objects(url: &str) -> Vec<String> {
        let mut conn = PgConnection::connect(url).await.unwrap();
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT 'relation ' || n.nspname || '.' || c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname LIKE 'mtnt%' \
             UNION ALL SELECT 'function ' || n.nspname || '.' || p.proname FROM pg_proc p \
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.proname LIKE 'mtnt%' \
             ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        rows
    }

    /// A URL without a database name lands in the user's database (`postgres`): a read
    /// there creates nothing.
    #[tokio::test]
    async fn a_read_without_a_database_name_creates_nothing_in_postgres() {
        let admin = admin_url();
        let server = admin.rsplit_once('/').map_or(admin.as_str(), |(s, _)| s);
        let before = mtnt_objects(&admin).await;
        for args in [&["status"][..], &["tenant", "list"], &["plan"]] {
            let output = Command::cargo_bin("mtnt-portable-app")
                .unwrap()
                .env("DATABASE_URL", server)
                .env_remove("MTNT_TENANCY")
                .args(args)
                .output()
                .unwrap();
            if before.is_empty() {
                assert_eq!(output.status.code(), Some(1), "{args:?}");
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(
                    stderr.contains("database postgres on ") && stderr.contains(NO_REGISTRY),
                    "{stderr}"
                );
            }
        }
        assert_eq!(mtnt_objects(&admin).await, before);
    }

    /// A registry in another control schema of the database: a read without
    /// `--control-schema` says where it is, and creates nothing.
    #[tokio::test]
    async fn a_read_names_the_control_schema_that_holds_the_registry() {
        let db = TestDb::create("setup_control").await;
        let app = || {
            let mut cmd = Command::cargo_bin("mtnt-portable-app").unwrap();
            cmd.env("DATABASE_URL", &db.url)
                .env_remove("MTNT_TENANCY")
                .env_remove("MTNT_CONTROL_SCHEMA")
                .arg("--no-progress");
            cmd
        };
        app()
            .args(["--control-schema", "mtnt", "migrate"])
            .assert()
            .success();
        let before = mtnt_objects(&db.url).await;
        app()
            .arg("status")
            .assert()
            .code(1)
            .stderr(predicate::str::contains(format!(
                "error: database {} on 127.0.0.1:5432, schema public {NO_REGISTRY} (schema mtnt of that database holds one)\n  fix: pass --control-schema mtnt (or MTNT_CONTROL_SCHEMA) to use that registry",
                db.name()
            )));
        assert_eq!(mtnt_objects(&db.url).await, before);
        let pool = db.pool(2).await;
        let recorded: String = sqlx::query_scalar(
            "SELECT value FROM mtnt.mtnt_settings WHERE name = 'control_schema'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(recorded, "mtnt");
        pool.close().await;
        app()
            .args(["--control-schema", "mtnt", "status"])
            .assert()
            .success();
        db.drop_db().await;
    }

    /// The model given in code (a backend of another model, or `ConnectOptions`) that
    /// contradicts the recorded one is refused before anything changes.
    #[tokio::test]
    async fn a_backend_of_another_model_is_refused() {
        let db = TestDb::create("setup_backend").await;
        let mut options = ConnectOptions::default();
        options.tenancy = Some(Tenancy::Database);
        let first = Migrator::builder_boxed(mtnt::connect(&db.url, &options).await.unwrap())
            .migrations(plain_set())
            .build()
            .unwrap();
        first.migrate(&MigrateOptions::new()).await.unwrap();
        drop(first);
        let pool = db.pool(4).await;
        let schema = Migrator::builder(PostgresBackend::new(pool.clone()))
            .migrations(plain_set())
            .build()
            .unwrap();
        let tenant = name("setup-refused");
        for result in [
            schema.status(&[]).await.map(drop),
            schema.tenants().await.map(drop),
            schema.plan(&MigrateOptions::new()).await.map(drop),
            schema.migrate(&MigrateOptions::new()).await.map(drop),
            schema.create_tenant(&tenant).await.map(drop),
        ] {
            assert!(
                matches!(
                    result,
                    Err(Error::TenancyMismatch {
                        recorded: Tenancy::Database,
                        given: Tenancy::Schema
                    })
                ),
                "{result:?}"
            );
        }
        let schemas: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
                .bind(tenant.as_str())
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(schemas, 0);
        pool.close().await;
        db.drop_db().await;
    }

    /// Two first runs of different models at once: one records its model, the other is
    /// refused; never both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_runs_of_two_models_record_one() {
        for attempt in 0..3 {
            let db = TestDb::create(&format!("setup_race_{attempt}")).await;
            let run = |tenancy| {
                let url = db.url.clone();
                async move {
                    let mut options = ConnectOptions::default();
                    options.tenancy = Some(tenancy);
                    let migrator = Migrator::builder_boxed(mtnt::connect(&url, &options).await?)
                        .migrations(plain_set())
                        .build()?;
                    migrator.migrate(&MigrateOptions::new()).await.map(drop)
                }
            };
            let (schema, database) = tokio::join!(run(Tenancy::Schema), run(Tenancy::Database));
            let pool = db.pool(2).await;
            let recorded: String =
                sqlx::query_scalar("SELECT value FROM mtnt_settings WHERE name = 'tenancy'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            let (won, lost) = match recorded.as_str() {
                "schema" => (schema, database),
                "database" => (database, schema),
                other => panic!("recorded {other}"),
            };
            won.unwrap();
            assert!(
                matches!(lost, Err(Error::TenancyMismatch { .. })),
                "{lost:?}"
            );
            db.drop_db().await;
        }
    }

    /// A control database that does not exist: the fix says how to create it, with the
    /// URL's host, port and user, and never its password; nothing is created.
    #[tokio::test]
    async fn a_missing_control_database_gets_createdb() {
        let missing = format!("mtnt_t_missing_{}", std::process::id());
        let admin = admin_url();
        let (server, _) = admin.rsplit_once('/').unwrap();
        let url = format!("{server}/{missing}").replacen("postgres@", "postgres:s3cretpw@", 1);
        for args in [
            &["status"][..],
            &["migrate"],
            &["--tenancy", "database", "migrate"],
        ] {
            let output = Command::cargo_bin("mtnt-portable-app")
                .unwrap()
                .env("DATABASE_URL", &url)
                .env_remove("MTNT_TENANCY")
                .args(args)
                .output()
                .unwrap();
            assert_eq!(output.status.code(), Some(1));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains(&format!(
                    "fix: create it with `createdb -h 127.0.0.1 -p 5432 -U postgres {missing}`"
                )),
                "{stderr}"
            );
            assert!(!stderr.contains("server is running"), "{stderr}");
            assert!(!stderr.contains("s3cretpw"), "{stderr}");
        }
        let mut conn = PgConnection::connect(&admin).await.unwrap();
        let found: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&missing)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(found, 0);
        conn.close().await.unwrap();
    }

    /// A unique violation in a migration says which key, as PostgreSQL's DETAIL does.
    #[tokio::test]
    async fn a_failed_migration_keeps_the_detail() {
        let db = TestDb::create("setup_detail").await;
        let options = ConnectOptions::default();
        let connect = || mtnt::connect(&db.url, &options);
        let first = Migrator::builder_boxed(connect().await.unwrap())
            .migrations(plain_set())
            .build()
            .unwrap();
        first.create_tenant(&name("ada-co")).await.unwrap();
        let duplicate = MigrationSet::registered_in("setup::duplicate").unwrap();
        let set = MigrationSet::new(plain_set().iter().chain(duplicate.iter())).unwrap();
        let migrator = Migrator::builder_boxed(connect().await.unwrap())
            .migrations(set)
            .build()
            .unwrap();
        let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
        let error = report.failures[0].error.to_string();
        assert!(
            error.contains("while applying 2031_02_01_0001 unique_display_names to tenant ada-co")
                && error.contains("; DETAIL: Key (display_name)=(Ada) is duplicated."),
            "{error}"
        );
        // The tenant's recorded failure keeps it too.
        let status = migrator.status(&[]).await.unwrap();
        let recorded = status.tenants[0].failed.as_ref().unwrap().error.clone();
        assert!(
            recorded.is_some_and(|e| e.contains("Key (display_name)=(Ada) is duplicated.")),
            "{:?}",
            status.tenants[0]
        );
        db.drop_db().await;
    }

    /// A first migration's own unique violation in `tenant create` is that migration's
    /// failure, with its DETAIL, not "the tenant exists already".
    #[tokio::test]
    async fn a_unique_violation_of_the_first_migration_is_no_name_clash() {
        let db = TestDb::create("setup_create_dup").await;
        let duplicate = MigrationSet::registered_in("setup::duplicate").unwrap();
        let migrator = Migrator::builder_boxed(
            mtnt::connect(&db.url, &ConnectOptions::default())
                .await
                .unwrap(),
        )
        .migrations(duplicate)
        .build()
        .unwrap();
        let error = migrator.create_tenant(&name("ada-co")).await.unwrap_err();
        assert!(!matches!(error, Error::TenantExists(_)), "{error:?}");
        let text = error.to_string();
        assert!(
            text.contains("while applying 2031_02_01_0001 unique_display_names to tenant ada-co")
                && text.contains("Key (display_name)=(Ada) is duplicated."),
            "{text}"
        );
        // Nothing of it is left, and a real clash is still one.
        assert!(migrator.tenants().await.unwrap().is_empty());
        let plain = Migrator::builder_boxed(
            mtnt::connect(&db.url, &ConnectOptions::default())
                .await
                .unwrap(),
        )
        .migrations(plain_set())
        .build()
        .unwrap();
        plain.create_tenant(&name("ada-co")).await.unwrap();
        assert!(matches!(
            plain.create_tenant(&name("ada-co")).await,
            Err(Error::TenantExists(_))
        ));
        db.drop_db().await;
    }

    /// DETAIL and HINT on the command line, redacted like everything else it prints.
    #[tokio::test]
    async fn the_command_line_shows_detail_and_hint_without_the_password() {
        let db = TestDb::create("setup_hint").await;
        let url = db.url.replacen("postgres@", "postgres:s3cretpw@", 1);
        let app = || {
            let mut cmd = Command::cargo_bin("mtnt-portable-app").unwrap();
            cmd.env("DATABASE_URL", &url)
                .env_remove("MTNT_TENANCY")
                .arg("--no-progress");
            cmd
        };
        app()
            .args(["tenant", "create", "ada-co"])
            .assert()
            .success();
        for (sql, shown) in [
            (
                "SELECT no_such_function(1)",
                "HINT: No function matches the given name and argument types.",
            ),
            (
                "CREATE TABLE handles (display_name text); \
                 INSERT INTO handles VALUES ('Ada'), ('Ada'); \
                 CREATE UNIQUE INDEX handles_display_name ON handles (display_name)",
                "DETAIL: Key (display_name)=(Ada) is duplicated.",
            ),
            (
                "CREATE TABLE handles (display_name text UNIQUE); \
                 INSERT INTO handles VALUES ('s3cretpw'), ('s3cretpw')",
                "DETAIL: Key (display_name)=(***) already exists.",
            ),
        ] {
            let output = app().args(["exec", "--sql", sql]).output().unwrap();
            assert_eq!(output.status.code(), Some(1));
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(all.contains(shown), "{all}");
            assert!(!all.contains("s3cretpw"), "{all}");
        }
        db.drop_db().await;
    }
}

/// A mistyped SQLite directory is not created by a read.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_read_of_a_mistyped_sqlite_directory_creates_nothing() {
    let dir = mtnt_test_support::sqlite::sqlite_dir();
    let typo = dir.path().join("tenantz");
    for args in [
        &["status"][..],
        &["tenant", "list"],
        &["plan"],
        &["migrate", "--dry-run"],
    ] {
        Command::cargo_bin("mtnt-portable-app")
            .unwrap()
            .env("DATABASE_URL", format!("sqlite://{}", typo.display()))
            .env_remove("MTNT_TENANCY")
            .args(args)
            .assert()
            .code(1)
            .stderr(predicate::str::contains(format!(
                "error: directory {} {NO_REGISTRY}",
                typo.display()
            )));
    }
    assert!(!typo.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
