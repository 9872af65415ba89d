//! The four tenancy models the behaviour suite (`tests/behaviour.rs`) proves every
//! scenario on, each in a throwaway environment of its own:
//!
//! | [`Kind`] | URL given to `mtnt::connect` | environment |
//! |---|---|---|
//! | `Sqlite` | `sqlite:///tmp/mtnt-sqlite-XXXX` | a temporary directory |
//! | `PgSchema` | `postgres://.../mtnt_t_...` | a fresh database ([`TestDb`]) |
//! | `PgDatabase` | the same, with `tenancy: Some(Tenancy::Database)` | a fresh control database, tenant databases on the server |
//! | `MySql` | `mysql://.../mtnt_t_...` | a control database name and tenant prefix ([`TestControl`]) |
//!
//! Tenant databases are server-wide on MySQL and on PostgreSQL database-per-tenant, so every
//! model names its tenants with a prefix unique to the test ([`Model::tenant`]). The
//! environment is removed by [`Model::finish`], or on drop when a test panics first,
//! including the tenant databases.
//!
//! A model also looks at the engine directly ([`Model::table_exists`], [`Model::int`], ...),
//! never through mtnt, so tests assert the real state of each tenant.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use mtnt::{ConnectOptions, Engine, MigrationSet, Migrator, MigratorBuilder, Tenancy};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection, MySqlConnection, PgConnection, SqliteConnection};

use crate::mysql::{server_url, TestControl};
use crate::postgres::{admin_url, drop_databases_with_prefix, TestDb};
use crate::sqlite::sqlite_dir;

/// A tenancy model: an engine and how it isolates tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SQLite, a file per tenant.
    Sqlite,
    /// PostgreSQL, a schema per tenant.
    PgSchema,
    /// PostgreSQL, a database per tenant.
    PgDatabase,
    /// MySQL/MariaDB, a database per tenant.
    MySql,
}

impl Kind {
    /// The engine.
    pub fn engine(self) -> Engine {
        match self {
            Kind::Sqlite => Engine::Sqlite,
            Kind::PgSchema | Kind::PgDatabase => Engine::Postgres,
            Kind::MySql => Engine::MySql,
        }
    }

    /// How it isolates tenants.
    pub fn tenancy(self) -> Tenancy {
        match self {
            Kind::Sqlite => Tenancy::File,
            Kind::PgSchema => Tenancy::Schema,
            Kind::PgDatabase | Kind::MySql => Tenancy::Database,
        }
    }
}

/// Where to look: the control schema (database, file), or one tenant.
#[derive(Clone, Copy, Debug)]
pub enum Place<'a> {
    /// The registry and the public migrations.
    Control,
    /// A tenant, by name.
    Tenant(&'a str),
}

enum Env {
    Sqlite(tempfile::TempDir),
    Postgres(TestDb),
    MySql(TestControl),
}

/// One model in one throwaway environment.
pub struct Model {
    kind: Kind,
    url: String,
    prefix: String,
    env: Option<Env>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<letter><pid>_<n>_`: unique among the tests of every test process running at once,
/// and, by its letter, apart from [`TestControl`]'s `t<pid>_<n>_` (tenant names are global
/// within a test process: the suite's migrations look them up in one static set).
fn unique_prefix(letter: char) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{letter}{}_{n}_", std::process::id())
}

impl Model {
    /// A fresh environment for `kind`; `label` goes into the names of its databases.
    pub async fn new(kind: Kind, label: &str) -> Model {
        let (url, prefix, env) = match kind {
            Kind::Sqlite => {
                let dir = sqlite_dir();
                let url = format!("sqlite://{}", dir.path().display());
                (url, unique_prefix('s'), Env::Sqlite(dir))
            }
            Kind::PgSchema | Kind::PgDatabase => {
                let db = TestDb::create(label).await;
                let prefix = unique_prefix(if kind == Kind::PgSchema { 'p' } else { 'd' });
                if kind == Kind::PgDatabase {
                    // What a crashed earlier run with the same process id may have left.
                    drop_databases_with_prefix(&prefix).await;
                }
                (db.url.clone(), prefix, Env::Postgres(db))
            }
            Kind::MySql => {
                let control = TestControl::new(label).await;
                let prefix = control.tenant_prefix().to_owned();
                (control.url.clone(), prefix, Env::MySql(control))
            }
        };
        Model {
            kind,
            url,
            prefix,
            env: Some(env),
        }
    }

    /// The model.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The URL given to mtnt (its `DATABASE_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The options for `mtnt::connect`: the URL's default tenancy, except for PostgreSQL
    /// database-per-tenant, which has to be asked for.
    fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::default();
        if self.kind == Kind::PgDatabase {
            options.tenancy = Some(Tenancy::Database);
        }
        options
    }

    /// The name of this test's tenant `base`: `<letter><pid>_<n>_<base>`.
    pub fn tenant(&self, base: &str) -> String {
        let name = format!("{}{base}", self.prefix);
        assert!(name.len() <= 50, "tenant name {name} is too long");
        name
    }

    /// The prefix of this test's tenant names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A backend from [`Model::url`], as the CLI builds it, checked to be this model.
    pub async fn backend(&self) -> Box<dyn mtnt::Backend> {
        let backend = mtnt::connect(&self.url, &self.connect_options())
            .await
            .unwrap_or_else(|e| panic!("connect to {:?}: {e}", self.kind));
        assert_eq!(
            (backend.engine(), backend.tenancy()),
            (self.kind.engine(), self.kind.tenancy())
        );
        backend
    }

    /// A migrator builder on a new backend with `set`.
    pub async fn builder(&self, set: MigrationSet) -> MigratorBuilder {
        Migrator::builder_boxed(self.backend().await).migrations(set)
    }

    /// A migrator on a new backend with `set`.
    pub async fn migrator(&self, set: MigrationSet) -> Migrator {
        self.builder(set).await.build().unwrap()
    }

    /// The CLI binary `program` set up for this model: `DATABASE_URL`, `--no-progress`,
    /// and `--tenancy` where the URL alone does not say it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.env("DATABASE_URL", &self.url)
            .env_remove("MTNT_LOG")
            .arg("--no-progress");
        if self.kind == Kind::PgDatabase {
            cmd.args(["--tenancy", "database"]);
        }
        cmd
    }

    fn sqlite_dir(&self) -> PathBuf {
        match &self.env {
            Some(Env::Sqlite(dir)) => dir.path().to_path_buf(),
            _ => unreachable!("only SQLite has a directory"),
        }
    }

    /// The control database's name (PostgreSQL, MySQL; SQLite has a control file).
    pub fn control_name(&self) -> String {
        match &self.env {
            Some(Env::Postgres(db)) => db.name().to_owned(),
            Some(Env::MySql(control)) => control.control().to_owned(),
            _ => unreachable!("SQLite has a control file"),
        }
    }

    /// A direct connection to the database server, in the database `db`.
    async fn server(&self, db: &str) -> Conn {
        if self.kind.engine() == Engine::MySql {
            let options: MySqlConnectOptions = server_url().parse().expect("MySQL URL");
            Conn::MySql(options.database(db).connect().await.unwrap())
        } else {
            let options: PgConnectOptions = admin_url().parse().expect("PostgreSQL URL");
            Conn::Pg(options.database(db).connect().await.unwrap())
        }
    }

    /// A connection inside `place`, so that unqualified names are its tables.
    async fn open(&self, place: Place<'_>) -> Conn {
        match (self.kind, place) {
            (Kind::Sqlite, place) => {
                let file = match place {
                    Place::Control => "mtnt_control.db".to_owned(),
                    Place::Tenant(t) => format!("{t}.db"),
                };
                let options = SqliteConnectOptions::new()
                    .filename(self.sqlite_dir().join(file))
                    .create_if_missing(false);
                Conn::Sqlite(SqliteConnection::connect_with(&options).await.unwrap())
            }
            (Kind::PgSchema, place) => {
                let mut conn = self.server(&self.control_name()).await;
                let schema = match place {
                    Place::Control => "public",
                    Place::Tenant(t) => t,
                };
                conn.execute(&format!("SET search_path TO \"{schema}\""))
                    .await;
                if let Place::Tenant(t) = place {
                    // The tenant's rows of the shared tracking table, under the name the
                    // other models give their tracking table: a temporary view, which
                    // PostgreSQL finds before the schema's tables and which reads and
                    // writes the real rows (and fires their trigger).
                    conn.execute(&format!(
                        "DO $v$ BEGIN IF to_regclass('public.mtnt_tenant_migrations') IS NOT NULL THEN \
                         CREATE TEMP VIEW mtnt_migrations AS SELECT * FROM public.mtnt_tenant_migrations WHERE tenant = '{t}'; \
                         ALTER VIEW mtnt_migrations ALTER COLUMN tenant SET DEFAULT '{t}'; END IF; END $v$"
                    ))
                    .await;
                }
                conn
            }
            (Kind::PgDatabase | Kind::MySql, Place::Control) => {
                self.server(&self.control_name()).await
            }
            (Kind::PgDatabase | Kind::MySql, Place::Tenant(t)) => self.server(t).await,
        }
    }

    /// Runs SQL (one or more statements) inside `place`.
    pub async fn execute(&self, place: Place<'_>, sql: &str) {
        let mut conn = self.open(place).await;
        conn.execute(sql).await;
        conn.close().await;
    }

    /// The first column of the first row of `sql` inside `place`, as an integer; `None`
    /// when there is no row or it is NULL.
    pub async fn int(&self, place: Place<'_>, sql: &str) -> Option<i64> {
        let mut conn = self.open(place).await;
        let value = conn.int(sql).await;
        conn.close().await;
        value
    }

    /// The first column of the first row of `sql` inside `place`, as text.
    pub async fn text(&self, place: Place<'_>, sql: &str) -> Option<String> {
        let mut conn = self.open(place).await;
        let value = conn.text(sql).await;
        conn.close().await;
        value
    }

    /// The first column of every row of `sql` inside `place`, as text.
    pub async fn texts(&self, place: Place<'_>, sql: &str) -> Vec<String> {
        let mut conn = self.open(place).await;
        let values = conn.texts(sql).await;
        conn.close().await;
        values
    }

    /// The status of migration `order` in `place`'s tracking table, if it has a row.
    pub async fn status(&self, place: Place<'_>, order: i64) -> Option<String> {
        self.text(
            place,
            &format!("SELECT status FROM mtnt_migrations WHERE migration_order = {order}"),
        )
        .await
    }

    /// Whether tenant `tenant` has storage: its file (or a journal of it), schema or database.
    pub async fn storage_exists(&self, tenant: &str) -> bool {
        let sql = match self.kind {
            Kind::Sqlite => {
                let dir = self.sqlite_dir();
                return ["", "-wal", "-shm", "-journal"]
                    .iter()
                    .any(|suffix| dir.join(format!("{tenant}.db{suffix}")).exists());
            }
            Kind::PgSchema => {
                format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{tenant}'")
            }
            Kind::PgDatabase => {
                format!("SELECT count(*) FROM pg_database WHERE datname = '{tenant}'")
            }
            Kind::MySql => format!(
                "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{tenant}'"
            ),
        };
        let mut conn = self.server(&self.server_db()).await;
        let found = conn.int(&sql).await.unwrap_or(0) > 0;
        conn.close().await;
        found
    }

    /// Whether `place` has a table named `table`. For a tenant of schema per tenant,
    /// `mtnt_migrations` means its rows of the shared tracking table: whether it has any.
    pub async fn table_exists(&self, place: Place<'_>, table: &str) -> bool {
        if let (Kind::PgSchema, Place::Tenant(t), "mtnt_migrations") = (self.kind, place, table) {
            let sql =
                format!("SELECT count(*) FROM public.mtnt_tenant_migrations WHERE tenant = '{t}'");
            return self.int(Place::Control, &sql).await.unwrap_or(0) > 0;
        }
        if let Place::Tenant(t) = place {
            if !self.storage_exists(t).await {
                return false;
            }
        }
        let sql = match self.kind.engine() {
            Engine::Sqlite => {
                format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
            }
            Engine::Postgres => format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = '{table}'"
            ),
            Engine::MySql => format!(
                "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{table}'"
            ),
            Engine::Custom(name) => unreachable!("no model runs on {name}"),
        };
        self.int(place, &sql).await.unwrap_or(0) > 0
    }

    /// Whether `place` has an index named `index`.
    pub async fn index_exists(&self, place: Place<'_>, index: &str) -> bool {
        let sql = match self.kind.engine() {
            Engine::Sqlite => {
                format!("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = '{index}'")
            }
            Engine::Postgres => format!(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = '{index}'"
            ),
            Engine::MySql => format!(
                "SELECT count(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND INDEX_NAME = '{index}'"
            ),
            Engine::Custom(name) => unreachable!("no model runs on {name}"),
        };
        self.int(place, &sql).await.unwrap_or(0) > 0
    }

    /// How many files, schemas or databases have a name starting with this test's tenant
    /// prefix, whether mtnt made them or not.
    pub async fn storage_count(&self) -> usize {
        let pattern = crate::like_prefix(&self.prefix);
        let sql = match self.kind {
            Kind::Sqlite => {
                let entries =
                    std::fs::read_dir(self.sqlite_dir()).expect("read the tenant directory");
                return entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|f| f.starts_with(&self.prefix) && f.ends_with(".db"))
                    .count();
            }
            Kind::PgSchema => {
                format!("SELECT count(*) FROM pg_namespace WHERE nspname LIKE '{pattern}'")
            }
            Kind::PgDatabase => {
                format!("SELECT count(*) FROM pg_database WHERE datname LIKE '{pattern}'")
            }
            Kind::MySql => format!(
                "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE '{}'",
                pattern.replace('\\', "\\\\")
            ),
        };
        let mut conn = self.server(&self.server_db()).await;
        let count = conn.int(&sql).await.unwrap_or(0);
        conn.close().await;
        usize::try_from(count).unwrap()
    }

    /// A database that always exists on the server: where server-wide catalogs are read.
    fn server_db(&self) -> String {
        match self.kind {
            Kind::MySql => "information_schema".to_owned(),
            _ => self.control_name(),
        }
    }

    /// Makes storage named like tenant `tenant` without mtnt (a stray file, schema or
    /// database), and runs `sql` in it.
    pub async fn make_storage(&self, tenant: &str, sql: &str) {
        match self.kind {
            Kind::Sqlite => {
                let options = SqliteConnectOptions::new()
                    .filename(self.sqlite_dir().join(format!("{tenant}.db")))
                    .create_if_missing(true);
                let conn = SqliteConnection::connect_with(&options).await.unwrap();
                conn.close().await.unwrap();
            }
            Kind::PgSchema => {
                self.execute(Place::Control, &format!("CREATE SCHEMA \"{tenant}\""))
                    .await
            }
            Kind::PgDatabase => {
                self.execute(Place::Control, &format!("CREATE DATABASE \"{tenant}\""))
                    .await
            }
            Kind::MySql => {
                let mut conn = self.server(&self.server_db()).await;
                conn.execute(&format!("CREATE DATABASE `{tenant}`")).await;
                conn.close().await;
            }
        }
        self.execute(Place::Tenant(tenant), sql).await;
    }

    /// Removes the environment now (the tenant databases first).
    pub async fn finish(mut self) {
        if self.kind == Kind::PgDatabase {
            drop_databases_with_prefix(&self.prefix).await;
        }
        match self.env.take() {
            Some(Env::Postgres(db)) => db.drop_db().await,
            Some(Env::MySql(control)) => control.cleanup().await,
            Some(Env::Sqlite(dir)) => drop(dir),
            None => {}
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // The fields remove their own databases; the tenant databases of PostgreSQL
        // database-per-tenant are this model's to remove.
        if self.env.is_some() && self.kind == Kind::PgDatabase {
            let prefix = self.prefix.clone();
            crate::block_on_in_thread(&format!("tenant databases {prefix}*"), move || async move {
                drop_databases_with_prefix(&prefix).await
            });
        }
    }
}

/// A direct connection to one engine.
enum Conn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
    MySql(MySqlConnection),
}

impl Conn {
    async fn execute(&mut self, sql: &str) {
        let result = match self {
            Conn::Pg(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            Conn::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            Conn::MySql(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn int(&mut self, sql: &str) -> Option<i64> {
        let result = match self {
            Conn::Pg(c) => sqlx::query_scalar(sql).fetch_optional(c).await,
            Conn::Sqlite(c) => sqlx::query_scalar(sql).fetch_optional(c).await,
            Conn::MySql(c) => sqlx::query_scalar(sql).fetch_optional(c).await,
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}")).flatten()
    }

    async fn text(&mut self, sql: &str) -> Option<String> {
        let result = match self {
            Conn::Pg(c) => sqlx::query_scalar(sql).fetch_optional(c).await,
            Conn::Sqlite(c) => sqlx::query_scalar(sql).fetch_optional(c).await,
            // Read as bytes: binary collations and `information_schema` columns both work.
            Conn::MySql(c) => sqlx::query_scalar::<_, Option<Vec<u8>>>(sql)
                .fetch_optional(c)
                .await
                .map(|v| v.map(|b| b.map(|b| String::from_utf8(b).expect("UTF-8 text")))),
        };
        result.unwrap_or_else(|e| panic!("{sql}: {e}")).flatten()
    }

    async fn texts(&mut self, sql: &str) -> Vec<String> {
        let result: Result<Vec<Option<String>>, sqlx::Error> = match self {
            Conn::Pg(c) => sqlx::query_scalar(sql).fetch_all(c).await,
            Conn::Sqlite(c) => sqlx::query_scalar(sql).fetch_all(c).await,
            Conn::MySql(c) => sqlx::query_scalar::<_, Option<Vec<u8>>>(sql)
                .fetch_all(c)
                .await
                .map(|rows| {
                    rows.into_iter()
                        .map(|v| v.map(|b| String::from_utf8(b).expect("UTF-8 text")))
                        .collect()
                }),
        };
        result
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .map(|v| v.unwrap_or_else(|| "NULL".to_owned()))
            .collect()
    }

    async fn close(self) {
        let _ = match self {
            Conn::Pg(c) => c.close().await,
            Conn::Sqlite(c) => c.close().await,
            Conn::MySql(c) => c.close().await,
        };
    }
}
