//! The fleet benchmark: how fast mtnt migrates, skips, reports and creates tenants, each
//! figure next to a baseline measured in the same run.
//!
//! ```sh
//! cargo run --release --example bench -- --tenants 1000 --fleet 10000
//! cargo run --release --example bench -- --engine sqlite --tenants 300 --fleet 2000
//! cargo run --release --example bench -- --engine mysql --tenants 300 --fleet 2000
//! cargo run --release --example bench -- --scale 100000 --scale-only
//! ```
//!
//! Options: `--engine postgres|sqlite|mysql` (default postgres), `--tenants N` (migrate from
//! empty, default 1000), `--fleet N` (no-op migrate, status and peak memory, default
//! 10000), `--creates N` (tenant creates to take the median of, default 50),
//! `--plan-tenants N` (`plan` over a migrated fleet of N, next to a `SELECT` of its
//! registry; default 10000, 0 leaves it out; the `--fleet` database when N is the same),
//! `--concurrency N` (passed to mtnt; default: mtnt's own default), `--repeat N` (run the
//! migrate-from-empty row N times, floor and mtnt in turn, and report the median with the
//! spread; its ratios are the median of each round's ratio, with their range). Servers:
//! `MTNT_BENCH_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable`:
//! every row without TLS but the TLS row, which adds `sslmode=require`) and
//! `MTNT_BENCH_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`); SQLite files go to a
//! temporary directory under `target/`. The benchmark creates its own databases (files)
//! and drops them when done.
//!
//! `--scale N` (PostgreSQL, schema per tenant; `--scale-only`: these rows alone) adds rows
//! at N/10 and N registered, up-to-date tenants: too many to migrate in a benchmark's time,
//! so mtnt migrates one tenant and the fleet is cloned from it server-side. In one
//! transaction, with `mtnt.bookkeeping` on as mtnt sets it when it writes the fingerprint
//! itself, its registry row and its tracking rows are copied, column for column, to every
//! new name by one `INSERT ... SELECT` over `generate_series` each; then every new tenant
//! gets its schema with one small table, from `DO` blocks of 200 tenants on two
//! connections (105 to 203 s for 100,000 on a shared machine). `status --check` must then
//! find every tenant current, and no-op `migrate`, `status`, `plan` and `tenant list` (its
//! output to /dev/null) are timed, each the median of three, beside the median of three
//! registry `SELECT`s, with each command's peak memory at both sizes. The fleet is grown
//! from N/10 to N in place, and dropped at the end.
//!
//! Every mtnt figure except `tenant create` is a run of the mtnt command line in a child
//! process (this binary re-executes itself as an mtnt app), timed from spawn to exit, so
//! it includes start-up, connecting and the public migrations' check. The child reports
//! its peak resident memory (`VmHWM`). `tenant create` is the library call an app makes
//! on sign-up, on a warm connection pool: by replay (every migration run in the new
//! tenant, templates off) beside the same SQL on a plain connection, and, where the engine
//! has them, by copying the template (SQLite) and by taking a spare schema (PostgreSQL
//! schema per tenant, one made beforehand per create), each beside the replay.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mtnt::{ConnectOptions, Engine, Migrator, TenantName};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions as _, Connection, Executor, MySqlConnection, PgConnection};

// ---------------------------------------------------------------------------------------
// The workload: one public migration and six tenant migrations of realistic DDL.

struct Workload {
    public: &'static str,
    tenant: [&'static str; 6],
}

const POSTGRES: Workload = Workload {
    public: "CREATE TABLE plans (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, price_cents integer NOT NULL DEFAULT 0)",
    tenant: [
        "CREATE TABLE accounts (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, plan_id bigint, created_at timestamptz NOT NULL DEFAULT now())",
        "CREATE TABLE projects (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); \
         CREATE INDEX projects_account_id ON projects (account_id)",
        "ALTER TABLE accounts ADD COLUMN status text NOT NULL DEFAULT 'active'",
        "CREATE TABLE events (id bigserial PRIMARY KEY, project_id bigint NOT NULL, kind text NOT NULL, payload jsonb, at timestamptz NOT NULL DEFAULT now()); \
         CREATE INDEX events_project_id ON events (project_id); CREATE INDEX events_kind_at ON events (kind, at)",
        "UPDATE accounts SET status = 'trial' WHERE plan_id IS NULL",
        "CREATE VIEW active_accounts AS SELECT id, email, plan_id FROM accounts WHERE status = 'active'",
    ],
};

const SQLITE: Workload = Workload {
    public: "CREATE TABLE plans (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, price_cents INTEGER NOT NULL DEFAULT 0)",
    tenant: [
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, plan_id INTEGER, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
        "CREATE TABLE projects (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE, name TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP); \
         CREATE INDEX projects_account_id ON projects (account_id)",
        "ALTER TABLE accounts ADD COLUMN status TEXT NOT NULL DEFAULT 'active'",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL, kind TEXT NOT NULL, payload TEXT, at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP); \
         CREATE INDEX events_project_id ON events (project_id); CREATE INDEX events_kind_at ON events (kind, at)",
        "UPDATE accounts SET status = 'trial' WHERE plan_id IS NULL",
        "CREATE VIEW active_accounts AS SELECT id, email, plan_id FROM accounts WHERE status = 'active'",
    ],
};

const MYSQL: Workload = Workload {
    public: "CREATE TABLE plans (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE, price_cents INT NOT NULL DEFAULT 0)",
    tenant: [
        "CREATE TABLE accounts (id BIGINT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(255) NOT NULL UNIQUE, plan_id BIGINT, created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
        "CREATE TABLE projects (id BIGINT AUTO_INCREMENT PRIMARY KEY, account_id BIGINT NOT NULL, name VARCHAR(255) NOT NULL, created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
         CONSTRAINT projects_account FOREIGN KEY (account_id) REFERENCES accounts (id) ON DELETE CASCADE); \
         CREATE INDEX projects_account_created ON projects (account_id, created_at)",
        "ALTER TABLE accounts ADD COLUMN status VARCHAR(20) NOT NULL DEFAULT 'active'",
        "CREATE TABLE events (id BIGINT AUTO_INCREMENT PRIMARY KEY, project_id BIGINT NOT NULL, kind VARCHAR(50) NOT NULL, payload JSON, at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)); \
         CREATE INDEX events_project_id ON events (project_id); CREATE INDEX events_kind_at ON events (kind, at)",
        "UPDATE accounts SET status = 'trial' WHERE plan_id IS NULL",
        "CREATE VIEW active_accounts AS SELECT id, email, plan_id FROM accounts WHERE status = 'active'",
    ],
};

fn workload(engine: Engine) -> &'static Workload {
    match engine {
        Engine::Sqlite => &SQLITE,
        Engine::MySql => &MYSQL,
        _ => &POSTGRES,
    }
}

#[mtnt::migration(scope = "public", order = 2025_01_06_0001)]
async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute(workload(ctx.engine()).public).await
}

#[mtnt::migration(scope = "tenant", order = 2025_01_06_0002)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute(workload(ctx.engine()).tenant[0]).await
}

#[mtnt::migration(scope = "tenant", order = 2025_01_06_0003)]
async fn create_projects(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute(workload(ctx.engine()).tenant[1]).await
}

#[mtnt::migration(scope = "tenant", order = 2025_01_06_0004)]
async fn add_account_status(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute(workload(ctx.engine()).tenant[2]).await
}

#[mtnt::migration(scope = "tenant", order = 2025_01_06_0005)]
async fn create_events(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute(workload(ctx.engine()).tenant[3]).await
}

#[mtnt::migration(scope = "tenant", order = 2025_01_06_0006)]
async fn backfill_account_status(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute(workload(ctx.engine()).tenant[4]).await
}

#[mtnt::migration(scope = "tenant", order = 2025_01_06_0007)]
async fn create_active_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute(workload(ctx.engine()).tenant[5]).await
}

// ---------------------------------------------------------------------------------------
// Command line.

type Res<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CHILD: &str = "MTNT_BENCH_CHILD";

struct Args {
    engine: Engine,
    tenants: usize,
    fleet: usize,
    creates: usize,
    concurrency: Option<usize>,
    repeat: usize,
    plan_tenants: usize,
    /// The fleet of the scale rows (0: none).
    scale: usize,
    /// Only the scale rows.
    scale_only: bool,
    /// Tenants of the fleet spread over two servers (PostgreSQL; 0: not measured).
    servers_tenants: usize,
}

fn parse_args() -> Res<Args> {
    let mut args = Args {
        engine: Engine::Postgres,
        tenants: 1000,
        fleet: 10_000,
        creates: 50,
        concurrency: None,
        repeat: 1,
        plan_tenants: 10_000,
        scale: 0,
        scale_only: false,
        servers_tenants: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--engine" => {
                args.engine = match value()?.as_str() {
                    "postgres" | "pg" => Engine::Postgres,
                    "sqlite" => Engine::Sqlite,
                    "mysql" | "mariadb" => Engine::MySql,
                    other => return Err(format!("unknown engine {other:?}").into()),
                }
            }
            "--tenants" => args.tenants = value()?.parse()?,
            "--fleet" => args.fleet = value()?.parse()?,
            "--creates" => args.creates = value()?.parse()?,
            "--concurrency" => args.concurrency = Some(value()?.parse()?),
            "--repeat" => args.repeat = value()?.parse()?,
            "--plan-tenants" => args.plan_tenants = value()?.parse()?,
            "--scale" => args.scale = value()?.parse()?,
            "--scale-only" => args.scale_only = true,
            "--servers-tenants" => args.servers_tenants = value()?.parse()?,
            "-h" | "--help" => {
                println!("usage: bench [--engine postgres|sqlite|mysql] [--tenants N] [--fleet N] [--creates N] [--plan-tenants N] [--concurrency N] [--repeat N] [--servers-tenants N] [--scale N [--scale-only]]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if args.tenants == 0 || args.fleet == 0 || args.creates == 0 || args.repeat == 0 {
        return Err("--tenants, --fleet, --creates and --repeat must be at least 1".into());
    }
    if args.scale_only && args.scale == 0 {
        return Err("--scale-only needs --scale N".into());
    }
    if args.scale > 0 && (args.scale < 10 || args.scale > 999_999) {
        return Err("--scale must be from 10 to 999999".into());
    }
    Ok(args)
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        // The child: an mtnt app whose command line is its arguments.
        let code = mtnt::__private::run_cli();
        eprintln!("MTNT_BENCH_VMHWM_KB={}", peak_rss_kb().unwrap_or(0));
        eprintln!("MTNT_BENCH_CPU_S={}", process_cpu("self").unwrap_or(0.0));
        std::process::exit(code);
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The CPU time (user and system) of a process so far, in seconds, from
/// `/proc/<pid>/stat` (`pid` may be `self`).
fn process_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The CPU time PostgreSQL spends for one database: a task that looks up the database's
/// backends every 20 ms and keeps the last CPU time read for each (PostgreSQL on this
/// machine only; the benchmark's own admin connection is not counted).
struct ServerCpu {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl ServerCpu {
    async fn start(db: &Db) -> Res<Option<ServerCpu>> {
        if db.engine != Engine::Postgres || !Path::new("/proc/self/stat").exists() {
            return Ok(None);
        }
        let mut conn = pg_admin().await?;
        let name = db.name.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = std::collections::HashMap::<i32, f64>::new();
            loop {
                let done = stopped.load(Ordering::Relaxed);
                let pids: Vec<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&name)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                for pid in pids
                    .into_iter()
                    .chain(seen.keys().copied().collect::<Vec<_>>())
                {
                    if let Some(cpu) = process_cpu(&pid.to_string()) {
                        seen.insert(pid, cpu);
                    }
                }
                if done {
                    return seen.values().sum();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Ok(Some(ServerCpu { stop, task }))
    }

    async fn finish(probe: Option<ServerCpu>) -> Option<f64> {
        let probe = probe?;
        probe.stop.store(true, Ordering::Relaxed);
        probe.task.await.ok()
    }
}

/// This process's peak resident set size, from `/proc/self/status`.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Throwaway databases.

/// One database (PostgreSQL), control database with its tenant databases (MySQL), or
/// directory of files (SQLite) that the benchmark creates and drops.
struct Db {
    engine: Engine,
    /// PostgreSQL: the database; MySQL: the control database; SQLite: the directory.
    name: String,
    /// Every tenant name starts with it (MySQL tenant databases are server-wide).
    prefix: String,
}

fn pg_admin_url() -> String {
    std::env::var("MTNT_BENCH_PG_URL").unwrap_or_else(|_| {
        "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".to_owned()
    })
}

fn mysql_server_url() -> String {
    std::env::var("MTNT_BENCH_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

fn sqlite_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mtnt-bench")
}

fn sqlite_file(dir: &Path, tenant: &str) -> PathBuf {
    dir.join(format!("{tenant}.db"))
}

fn sqlite_options(file: &Path, create: bool) -> SqliteConnectOptions {
    // The options mtnt's SQLite backend uses.
    SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
}

async fn pg_admin() -> Res<PgConnection> {
    Ok(PgConnection::connect(&pg_admin_url()).await?)
}

async fn mysql_admin() -> Res<MySqlConnection> {
    Ok(MySqlConnection::connect(&mysql_server_url()).await?)
}

static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Db {
    async fn create(engine: Engine) -> Res<Db> {
        let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let db = Db {
            engine,
            name: format!("mtnt_bench_{pid}_{n}"),
            prefix: match engine {
                Engine::MySql => format!("b{pid}x{n}_"),
                _ => "t".to_owned(),
            },
        };
        match engine {
            Engine::Sqlite => std::fs::create_dir_all(db.dir())?,
            Engine::MySql => {
                let mut conn = mysql_admin().await?;
                conn.execute(&*format!("CREATE DATABASE `{}`", db.name))
                    .await?;
            }
            _ => {
                let mut conn = pg_admin().await?;
                conn.execute(&*format!("CREATE DATABASE \"{}\"", db.name))
                    .await?;
            }
        }
        Ok(db)
    }

    fn dir(&self) -> PathBuf {
        sqlite_root().join(&self.name)
    }

    /// The URL mtnt is given.
    fn url(&self) -> Res<String> {
        Ok(match self.engine {
            Engine::Sqlite => format!("sqlite://{}", self.dir().display()),
            Engine::MySql => format!("{}/{}", mysql_server_url().trim_end_matches('/'), self.name),
            _ => {
                let options: PgConnectOptions = pg_admin_url().parse()?;
                options.database(&self.name).to_url_lossy().to_string()
            }
        })
    }

    /// [`Db::url`] requiring TLS (PostgreSQL).
    fn tls_url(&self) -> Res<String> {
        let url = self.url()?;
        let (base, query) = url.split_once('?').unwrap_or((&url, ""));
        let mut params: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("sslmode="))
            .collect();
        params.push("sslmode=require");
        Ok(format!("{base}?{}", params.join("&")))
    }

    fn tenant(&self, i: usize) -> String {
        format!("{}{i:06}", self.prefix)
    }

    async fn drop(self) -> Res<()> {
        match self.engine {
            Engine::Sqlite => std::fs::remove_dir_all(self.dir())?,
            Engine::MySql => {
                let mut conn = mysql_admin().await?;
                let pattern = format!("{}%", self.prefix.replace('_', "\\_"));
                let doomed: Vec<String> = sqlx::query_scalar(
                    "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?",
                )
                .bind(pattern)
                .fetch_all(&mut conn)
                .await?;
                for db in doomed.iter().chain([&self.name]) {
                    conn.execute(&*format!("DROP DATABASE IF EXISTS `{db}`"))
                        .await?;
                }
            }
            _ => {
                let mut conn = pg_admin().await?;
                conn.execute(&*format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
                .await?;
            }
        }
        Ok(())
    }

    /// Writes out what earlier phases left dirty (PostgreSQL: a checkpoint), so that a
    /// timed phase does not pay for the one before it.
    async fn settle(&self) -> Res<()> {
        if let Engine::Postgres = self.engine {
            pg_admin().await?.execute("CHECKPOINT").await?;
        }
        Ok(())
    }

    /// A plain connection to the database (PostgreSQL) or the server (MySQL).
    async fn plain(&self) -> Res<Plain> {
        Ok(match self.engine {
            Engine::Sqlite => Plain::Sqlite(self.dir()),
            Engine::MySql => Plain::MySql(mysql_admin().await?),
            _ => {
                let options: PgConnectOptions = pg_admin_url().parse()?;
                Plain::Pg(options.database(&self.name).connect().await?)
            }
        })
    }

    /// Creates mtnt's control tables and registers tenants 1..=n in bulk (untimed set-up).
    /// Their schemas do not exist yet on PostgreSQL; on SQLite and MySQL, where mtnt does
    /// not create a registered tenant's file or database, they are created empty.
    async fn register(&self, n: usize) -> Res<()> {
        let backend = mtnt::connect(&self.url()?, &ConnectOptions::default()).await?;
        backend.prepare().await?;
        let registry = match self.engine {
            Engine::Sqlite => "mtnt_tenants".to_owned(),
            Engine::MySql => format!("`{}`.mtnt_tenants", self.name),
            _ => "public.mtnt_tenants".to_owned(),
        };
        let now = match self.engine {
            Engine::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            Engine::MySql => "UTC_TIMESTAMP(6)",
            _ => "now()",
        };
        let mut plain = self.plain().await?;
        let names: Vec<String> = (1..=n).map(|i| self.tenant(i)).collect();
        let control = match &plain {
            Plain::Sqlite(dir) => Some(
                sqlite_options(&dir.join("mtnt_control.db"), false)
                    .connect()
                    .await?,
            ),
            _ => None,
        };
        let mut control = control;
        for chunk in names.chunks(1000) {
            // MySQL's registry has no defaults for the timestamps.
            let values: Vec<String> = chunk
                .iter()
                .map(|t| format!("('{t}', '{t}', {now}, {now})"))
                .collect();
            let sql = format!(
                "INSERT INTO {registry} (name, schema_name, created_at, updated_at) VALUES {}",
                values.join(", ")
            );
            match (&mut plain, &mut control) {
                (Plain::Pg(conn), _) => {
                    conn.execute(&*sql).await?;
                }
                (Plain::MySql(conn), _) => {
                    conn.execute(&*sql).await?;
                }
                (Plain::Sqlite(_), Some(conn)) => {
                    conn.execute(&*sql).await?;
                }
                (Plain::Sqlite(_), None) => unreachable!(),
            }
        }
        for name in &names {
            match &mut plain {
                Plain::Sqlite(dir) => {
                    std::fs::File::create(sqlite_file(dir, name))?;
                }
                Plain::MySql(conn) => {
                    conn.execute(&*format!("CREATE DATABASE `{name}`")).await?;
                }
                Plain::Pg(_) => {}
            }
        }
        Ok(())
    }

    /// The least a no-op run or `status` must read: every registry row, one query.
    async fn registry_scan(&self) -> Res<Duration> {
        let started = Instant::now();
        let sql = "SELECT name, schema_name, state, applied_order, failed_order, last_error FROM mtnt_tenants ORDER BY name";
        let rows = match self.plain().await? {
            Plain::Pg(mut conn) => conn.fetch_all(sql).await?.len(),
            Plain::MySql(mut conn) => {
                conn.execute(&*format!("USE `{}`", self.name)).await?;
                conn.fetch_all(sql).await?.len()
            }
            Plain::Sqlite(dir) => sqlite_options(&dir.join("mtnt_control.db"), false)
                .connect()
                .await?
                .fetch_all(sql)
                .await?
                .len(),
        };
        std::hint::black_box(rows);
        Ok(started.elapsed())
    }
}

/// Whether the server takes TLS connections: the TLS row runs only then (PostgreSQL).
async fn server_has_tls(engine: Engine) -> bool {
    if engine != Engine::Postgres {
        return false;
    }
    let Ok(mut conn) = pg_admin().await else {
        return false;
    };
    sqlx::query_scalar::<_, String>("SHOW ssl")
        .fetch_one(&mut conn)
        .await
        .is_ok_and(|on| on == "on")
}

/// A plain connection: no pool, no bookkeeping.
enum Plain {
    Pg(PgConnection),
    MySql(MySqlConnection),
    /// A connection per tenant file, in this directory.
    Sqlite(PathBuf),
}

impl Plain {
    /// The workload's tenant migrations for one tenant, one statement batch (and on
    /// PostgreSQL and SQLite one transaction) per migration, like mtnt sends them. On
    /// PostgreSQL the schema is created first, in the same way mtnt creates it; on SQLite
    /// and MySQL the tenant's file or database exists already.
    async fn migrate_tenant(&mut self, engine: Engine, tenant: &str) -> Res<()> {
        let work = workload(engine);
        match self {
            Plain::Pg(conn) => {
                conn.execute(&*format!(
                    "CREATE SCHEMA \"{tenant}\"; SET search_path TO \"{tenant}\", public"
                ))
                .await?;
                for sql in work.tenant {
                    conn.execute(sql).await?;
                }
            }
            Plain::MySql(conn) => {
                conn.execute(&*format!("USE `{tenant}`")).await?;
                for sql in work.tenant {
                    conn.execute(sql).await?;
                }
            }
            Plain::Sqlite(dir) => {
                let mut conn = sqlite_options(&sqlite_file(dir, tenant), true)
                    .connect()
                    .await?;
                for sql in work.tenant {
                    conn.execute(&*format!("BEGIN IMMEDIATE; {sql}; COMMIT"))
                        .await?;
                }
                conn.close().await?;
            }
        }
        Ok(())
    }

    /// What mtnt writes to migrate one tenant on MySQL, without the migrations: the
    /// tracking table (DDL), then one commit before each migration (its `started` row,
    /// with the previous one's `completed` row and the registry row) and one after the
    /// last: the floor of the started / completed chain, on MySQL only.
    async fn books_tenant(&mut self, engine: Engine, tenant: &str, registry: &str) -> Res<()> {
        let Plain::MySql(conn) = self else {
            return Err("the bookkeeping floor is measured on MySQL only".into());
        };
        let table = format!("`{tenant}`.mtnt_migrations");
        conn.execute(&*format!(
            "USE `{tenant}`; CREATE TABLE {table} (migration_order BIGINT NOT NULL PRIMARY KEY, \
             name VARCHAR(255) NOT NULL, checksum VARCHAR(255) NOT NULL, status VARCHAR(16) NOT NULL, \
             started_at DATETIME(6) NULL, finished_at DATETIME(6) NULL, duration_ms BIGINT NULL, \
             error MEDIUMTEXT NULL, run_id VARCHAR(64) NULL) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
        ))
        .await?;
        let migrations = workload(engine).tenant.len();
        for k in 0..=migrations {
            let mut sql = vec!["START TRANSACTION".to_owned()];
            if k > 0 {
                sql.push(format!(
                    "UPDATE {table} SET status = 'completed', finished_at = UTC_TIMESTAMP(6), \
                     duration_ms = 1 WHERE migration_order = {k}"
                ));
                sql.push(format!(
                    "UPDATE {registry} SET applied_order = (SELECT max(migration_order) FROM {table} \
                     WHERE status = 'completed'), updated_at = UTC_TIMESTAMP(6) WHERE name = '{tenant}'"
                ));
            }
            if k < migrations {
                sql.push(format!(
                    "INSERT INTO {table} (migration_order, name, checksum, status, started_at) \
                     VALUES ({}, 'migration', 'checksum', 'started', UTC_TIMESTAMP(6))",
                    k + 1
                ));
            }
            sql.push("COMMIT".to_owned());
            conn.execute(&*sql.join("; ")).await?;
        }
        Ok(())
    }

    /// A new tenant with every migration, atomically where the engine allows: the
    /// baseline of `tenant create`.
    async fn create_tenant(&mut self, engine: Engine, tenant: &str) -> Res<()> {
        let work = workload(engine);
        match self {
            Plain::Pg(conn) => {
                conn.execute(&*format!(
                    "BEGIN; CREATE SCHEMA \"{tenant}\"; SET LOCAL search_path TO \"{tenant}\", public"
                ))
                .await?;
                for sql in work.tenant {
                    conn.execute(sql).await?;
                }
                conn.execute("COMMIT").await?;
            }
            Plain::MySql(conn) => {
                conn.execute(&*format!("CREATE DATABASE `{tenant}`; USE `{tenant}`"))
                    .await?;
                for sql in work.tenant {
                    conn.execute(sql).await?;
                }
            }
            Plain::Sqlite(dir) => {
                let mut conn = sqlite_options(&sqlite_file(dir, tenant), true)
                    .connect()
                    .await?;
                conn.execute("BEGIN IMMEDIATE").await?;
                for sql in work.tenant {
                    conn.execute(sql).await?;
                }
                conn.execute("COMMIT").await?;
                conn.close().await?;
            }
        }
        Ok(())
    }
}

/// What a floor's plain connections do for each tenant.
#[derive(Clone, Copy)]
enum Work {
    /// The workload's migrations.
    Migrate,
    /// mtnt's MySQL bookkeeping without the migrations: [`Plain::books_tenant`].
    Books,
}

/// The floor: `tenants` tenants migrated by `workers` plain connections taking tenants
/// from one shared counter (one worker: a single loop).
async fn floor(db: &Db, tenants: usize, workers: usize, work: Work) -> Res<Duration> {
    let next = Arc::new(AtomicUsize::new(1));
    let mut plains = Vec::new();
    for _ in 0..workers {
        plains.push(db.plain().await?);
    }
    let engine = db.engine;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut plain in plains {
        let next = next.clone();
        let names: Vec<String> = (1..=tenants).map(|i| db.tenant(i)).collect();
        let registry = format!("`{}`.mtnt_tenants", db.name);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > names.len() {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                }
                match work {
                    Work::Migrate => plain.migrate_tenant(engine, &names[i - 1]).await?,
                    Work::Books => plain.books_tenant(engine, &names[i - 1], &registry).await?,
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// One run of the mtnt command line in a child process: wall time and peak memory.
struct ChildRun {
    elapsed: Duration,
    /// The child's own CPU time, in seconds.
    cpu: f64,
    peak_kb: u64,
    stdout: String,
}

async fn mtnt_cli(db: &Db, concurrency: Option<usize>, args: &[&str]) -> Res<ChildRun> {
    mtnt_cli_to(&db.url()?, concurrency, args, true).await
}

/// [`mtnt_cli`] with the database at `url`, the child's standard output read (`capture`)
/// or sent to /dev/null (an empty [`ChildRun::stdout`]).
async fn mtnt_cli_to(
    url: &str,
    concurrency: Option<usize>,
    args: &[&str],
    capture: bool,
) -> Res<ChildRun> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .env(CHILD, "1")
        .env_remove("MTNT_CONCURRENCY")
        .arg("--database-url")
        .arg(url)
        .arg("--no-progress");
    if let Some(n) = concurrency {
        command.arg("--concurrency").arg(n.to_string());
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    // Waited for on a blocking thread, so that the CPU probe's task goes on.
    let (output, elapsed) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = command.spawn()?.wait_with_output()?;
        Ok::<_, std::io::Error>((output, started.elapsed()))
    })
    .await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "mtnt {} failed ({}):\n{}\n{stderr}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout)
        )
        .into());
    }
    let peak_kb = stderr
        .lines()
        .find_map(|l| l.strip_prefix("MTNT_BENCH_VMHWM_KB="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpu = stderr
        .lines()
        .find_map(|l| l.strip_prefix("MTNT_BENCH_CPU_S="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(ChildRun {
        elapsed,
        cpu,
        peak_kb,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    })
}

/// Fails unless the child printed `text`: a benchmark of a run that did something else
/// measures nothing.
fn expect(run: &ChildRun, text: &str) -> Res<()> {
    if run.stdout.contains(text) {
        Ok(())
    } else {
        Err(format!("expected {text:?} from mtnt, got:\n{}", run.stdout).into())
    }
}

/// One measured run: wall time, and the CPU time PostgreSQL's backends for the database
/// and the client spent on it.
#[derive(Clone, Copy)]
struct Timed {
    wall: Duration,
    server: Option<f64>,
    client: f64,
    /// The fastest and slowest of the runs this is the median of.
    spread: (Duration, Duration),
}

impl Timed {
    fn new(wall: Duration, server: Option<f64>, client: f64) -> Self {
        Self {
            wall,
            server,
            client,
            spread: (wall, wall),
        }
    }

    /// The run with the median wall time, with the spread of all.
    fn median(mut runs: Vec<Timed>) -> Timed {
        runs.sort_by_key(|r| r.wall);
        let mut median = runs[runs.len() / 2];
        median.spread = (runs[0].wall, runs[runs.len() - 1].wall);
        median
    }

    /// `7.77 s, 64/s (4.43 s-8.04 s); CPU/tenant: server 12.1 ms, client 0.8 ms`.
    fn describe(&self, tenants: usize) -> String {
        let spread = if self.spread.0 == self.spread.1 {
            String::new()
        } else {
            format!(" ({}-{})", secs(self.spread.0), secs(self.spread.1))
        };
        let per = |cpu: f64| format!("{:.1} ms", cpu * 1000.0 / tenants as f64);
        let server = self
            .server
            .map_or(String::new(), |cpu| format!("server {}, ", per(cpu)));
        format!(
            "{}, {}{spread}; CPU/tenant: {server}client {}",
            secs(self.wall),
            rate(tenants, self.wall),
            per(self.client)
        )
    }
}

/// The ratios of two series of runs, round by round.
struct Ratios {
    median: f64,
    low: f64,
    high: f64,
}

impl Ratios {
    fn paired(runs: &[Timed], baselines: &[Timed]) -> Self {
        let mut ratios: Vec<f64> = runs
            .iter()
            .zip(baselines)
            .map(|(run, base)| run.wall.as_secs_f64() / base.wall.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        Self {
            median: ratios[ratios.len() / 2],
            low: ratios[0],
            high: ratios[ratios.len() - 1],
        }
    }

    /// `0.68x`, or `0.68x (0.53-0.72)` with the range over several rounds.
    fn describe(&self) -> String {
        if self.low == self.high {
            format!("{:.2}x", self.median)
        } else {
            format!("{:.2}x ({:.2}-{:.2})", self.median, self.low, self.high)
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `1,234`, as `plan` prints counts.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `plan` over `db`'s fleet of `n` migrated tenants (the median of `runs` runs of the
/// command line), next to the median registry scan of the same database.
async fn plan_row(db: &Db, n: usize, concurrency: Option<usize>, runs: usize) -> Res<Row> {
    progress(&format!("registry scan and mtnt plan: {n} tenants"));
    let mut scans = Vec::new();
    let mut plans = Vec::new();
    for _ in 0..runs {
        scans.push(db.registry_scan().await?);
        let run = mtnt_cli(db, concurrency, &["plan"]).await?;
        expect(
            &run,
            &format!(": 0 to migrate (0 migrations), {} current", thousands(n)),
        )?;
        plans.push(run.elapsed);
    }
    let (scan, plan) = (median(scans), median(plans));
    done(plan);
    Ok(Row {
        what: format!("plan, {n} tenants (all current)"),
        figure: secs(plan),
        baseline: format!("{}, SELECT of the registry", secs(scan)),
        ratio: format!("{:.1}x", plan.as_secs_f64() / scan.as_secs_f64()),
        target: "-".to_owned(),
    })
}

// ---------------------------------------------------------------------------------------
// --scale: fleets far larger than mtnt could migrate in a benchmark's time.

/// Tenants per statement that creates schemas: each `CREATE TABLE` holds a lock until its
/// transaction commits, and the server's lock table is shared with everyone else's.
const SCALE_SCHEMAS_PER_STATEMENT: usize = 200;

/// The columns of a control table (PostgreSQL), in their order.
async fn pg_columns(conn: &mut PgConnection, table: &str) -> Res<Vec<String>> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 \
         AND NOT attisdropped ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok(columns)
}

impl Db {
    /// Makes tenants `from..=to` copies of tenant 1, which mtnt migrated, server-side (untimed
    /// set-up; PostgreSQL, schema per tenant): in one transaction, its registry row and its
    /// tracking rows are copied to every new name by one `INSERT ... SELECT` over
    /// `generate_series` each, column for column (so the fingerprint mtnt wrote comes
    /// along), with `mtnt.bookkeeping` on as mtnt sets it when it writes the fingerprint
    /// itself; then each tenant's schema is created with one small table, by `DO` blocks
    /// of [`SCALE_SCHEMAS_PER_STATEMENT`] tenants on two connections.
    async fn clone_tenants(&self, from: usize, to: usize) -> Res<()> {
        let Plain::Pg(mut conn) = self.plain().await? else {
            return Err("--scale clones PostgreSQL tenants only".into());
        };
        let name = self.tenant_expr();
        let template = self.tenant(1);
        let mut sql = "BEGIN; SET LOCAL mtnt.bookkeeping = on; ".to_owned();
        // The registry's key columns and the tracking rows' tenant take the new name.
        for (table, key, renamed) in [
            ("public.mtnt_tenants", "name", &["name", "schema_name"][..]),
            ("public.mtnt_tenant_migrations", "tenant", &["tenant"][..]),
        ] {
            let columns = pg_columns(&mut conn, table).await?;
            let values: Vec<String> = columns
                .iter()
                .map(|c| match renamed.contains(&c.as_str()) {
                    true => name.clone(),
                    false => format!("t.\"{c}\""),
                })
                .collect();
            let columns: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
            sql.push_str(&format!(
                "INSERT INTO {table} ({}) SELECT {} FROM {table} AS t CROSS JOIN generate_series({from}, {to}) AS i \
                 WHERE t.{key} = '{template}'; ",
                columns.join(", "),
                values.join(", ")
            ));
        }
        sql.push_str("COMMIT");
        conn.execute(&*sql).await?;
        let next = Arc::new(AtomicUsize::new(from));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let Plain::Pg(mut conn) = self.plain().await? else {
                unreachable!("a PostgreSQL database");
            };
            let (next, name) = (next.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(SCALE_SCHEMAS_PER_STATEMENT, Ordering::Relaxed);
                    if first > to {
                        return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                    }
                    let last = (first + SCALE_SCHEMAS_PER_STATEMENT - 1).min(to);
                    conn.execute(&*format!(
                        "DO $$ DECLARE s text; BEGIN FOR i IN {first}..{last} LOOP s := {name}; \
                         EXECUTE format('CREATE SCHEMA %I', s); \
                         EXECUTE format('CREATE TABLE %I.accounts (id bigint NOT NULL, plan_id bigint)', s); \
                         END LOOP; END $$"
                    ))
                    .await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    }

    /// `'t' || lpad(i::text, 6, '0')`: [`Db::tenant`] of `i`, in SQL.
    fn tenant_expr(&self) -> String {
        format!("'{}' || lpad(i::text, 6, '0')", self.prefix)
    }
}

/// The median of `runs` runs of the command line `args` and the highest peak memory among
/// them; its standard output goes to /dev/null unless `expected` is given, which it must
/// then print.
async fn scale_command(
    db: &Db,
    concurrency: Option<usize>,
    args: &[&str],
    expected: Option<&str>,
    runs: usize,
) -> Res<(Duration, u64)> {
    progress(&format!("  mtnt {}", args.join(" ")));
    let mut samples = Vec::new();
    let mut peak_kb = 0;
    for _ in 0..runs {
        let run = mtnt_cli_to(&db.url()?, concurrency, args, expected.is_some()).await?;
        if let Some(text) = expected {
            expect(&run, text)?;
        }
        samples.push(run.elapsed);
        peak_kb = peak_kb.max(run.peak_kb);
    }
    let wall = median(samples);
    done(wall);
    Ok((wall, peak_kb))
}

/// What one command took and held at each fleet size of the scale rows.
struct ScaleFigure {
    what: &'static str,
    /// Wall time and peak memory, by fleet size.
    at: Vec<(Duration, u64)>,
}

/// The scale rows: a fleet of `n / 10` tenants, then of `n`, built by
/// [`Db::clone_tenants`] from one tenant mtnt migrated; at each size `status --check`
/// must find them all current, and then no-op `migrate`, `status`, `plan` and `tenant
/// list` are timed (each the median of `runs`) beside the median of as many registry
/// scans, with the peak memory of each command at both sizes.
async fn scale_rows(
    engine: Engine,
    n: usize,
    concurrency: Option<usize>,
    runs: usize,
) -> Res<Vec<Row>> {
    if engine != Engine::Postgres {
        return Err("--scale builds PostgreSQL schema-per-tenant fleets only".into());
    }
    let sizes = [n / 10, n];
    progress(&format!(
        "scale: one tenant migrated by mtnt, cloned to {}",
        sizes[0]
    ));
    let db = Db::create(engine).await?;
    let result = scale_measure(&db, &sizes, concurrency, runs).await;
    progress("scale: dropping the fleet");
    let started = Instant::now();
    db.drop().await?;
    done(started.elapsed());
    result
}

async fn scale_measure(
    db: &Db,
    sizes: &[usize; 2],
    concurrency: Option<usize>,
    runs: usize,
) -> Res<Vec<Row>> {
    let started = Instant::now();
    db.register(1).await?;
    let template = mtnt_cli(db, concurrency, &["migrate"]).await?;
    expect(&template, "1 total, 1 migrated")?;
    let mut rows = Vec::new();
    let mut figures = [
        ScaleFigure {
            what: "no-op migrate",
            at: Vec::new(),
        },
        ScaleFigure {
            what: "status",
            at: Vec::new(),
        },
        ScaleFigure {
            what: "plan",
            at: Vec::new(),
        },
        ScaleFigure {
            what: "tenant list",
            at: Vec::new(),
        },
    ];
    let mut scans = Vec::new();
    let mut built = 1;
    for &size in sizes {
        db.clone_tenants(built + 1, size).await?;
        built = size;
        db.settle().await?;
        done(started.elapsed());
        rows.push(Row {
            what: format!("scale: build a fleet of {size}"),
            figure: secs(started.elapsed()),
            baseline: "-".to_owned(),
            ratio: "-".to_owned(),
            target: "-".to_owned(),
        });
        progress(&format!("scale: {size} tenants, status --check"));
        let check = mtnt_cli(db, concurrency, &["status", "--check"]).await?;
        expect(&check, &format!("{size}/{size} tenants current"))?;
        done(check.elapsed);
        let mut samples = Vec::new();
        for _ in 0..runs {
            samples.push(db.registry_scan().await?);
        }
        let scan = median(samples);
        scans.push(scan);
        eprintln!("  registry scan: {}", secs(scan));
        let noop = format!("{size} total, 0 migrated (0 migrations), {size} already current");
        let plan = format!(": 0 to migrate (0 migrations), {} current", thousands(size));
        let status = format!("{size}/{size} tenants current");
        let commands: [(&[&str], Option<&str>); 4] = [
            (&["migrate"], Some(&noop)),
            (&["status"], Some(&status)),
            (&["plan"], Some(&plan)),
            (&["tenant", "list"], None),
        ];
        for (figure, (args, expected)) in figures.iter_mut().zip(commands) {
            figure
                .at
                .push(scale_command(db, concurrency, args, expected, runs).await?);
        }
        // Listed once more with its output read: it must list every tenant.
        let listed = mtnt_cli(db, concurrency, &["tenant", "list"]).await?;
        expect(&listed, &format!("\n{size} tenants\n"))?;
        if listed.stdout.lines().count() < size {
            return Err(format!("tenant list printed fewer than {size} lines").into());
        }
        progress("scale: adding tenants");
    }
    eprintln!();
    for figure in &figures {
        for (i, &size) in sizes.iter().enumerate() {
            let (wall, _) = figure.at[i];
            rows.push(Row {
                what: format!("{}, {size} tenants (scale)", figure.what),
                figure: secs(wall),
                baseline: format!("{}, SELECT of the registry", secs(scans[i])),
                ratio: format!("{:.1}x", wall.as_secs_f64() / scans[i].as_secs_f64()),
                target: format!("< 1 s: {}", verdict(wall < Duration::from_secs(1))),
            });
        }
        let (small, big) = (figure.at[0].1, figure.at[1].1);
        rows.push(Row {
            what: format!("  peak memory, {}, {} tenants", figure.what, sizes[1]),
            figure: mb(big),
            baseline: format!("{} at {} tenants", mb(small), sizes[0]),
            ratio: format!("{:.2}x", big as f64 / small.max(1) as f64),
            target: format!(
                "< 100 MB, flat: {}",
                verdict(big < 100 * 1024 && big as f64 <= small as f64 * 1.25)
            ),
        });
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// The table.

struct Row {
    what: String,
    figure: String,
    baseline: String,
    ratio: String,
    target: String,
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64())
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn print_table(rows: &[Row]) {
    let headers = ["measure", "mtnt", "baseline", "ratio", "target"];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.what.as_str(),
                r.figure.as_str(),
                r.baseline.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |c: [&str; 5]| {
        let cols: Vec<String> = (0..5)
            .map(|i| format!("{:w$}", c[i], w = widths[i]))
            .collect();
        format!("| {} |", cols.join(" | "))
    };
    println!("{}", line(headers));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("|-{}-|", rule.join("-|-"));
    for c in cells {
        println!("{}", line(c));
    }
}

fn progress(what: &str) {
    eprint!("{what}...");
    let _ = std::io::stderr().flush();
}

fn done(d: Duration) {
    eprintln!(" {}", secs(d));
}

async fn run(args: Args) -> Res<()> {
    if args.scale_only {
        let rows = scale_rows(
            args.engine,
            args.scale,
            args.concurrency,
            args.repeat.max(3),
        )
        .await?;
        println!();
        print_table(&rows);
        return Ok(());
    }
    let engine = args.engine;
    let (n, fleet) = (args.tenants, args.fleet);
    let mut rows = Vec::new();
    eprintln!(
        "mtnt bench: engine {engine:?}, {n} tenants from empty, fleet of {fleet}, {} creates, concurrency {}",
        args.creates,
        args.concurrency.map_or("default".to_owned(), |c| c.to_string())
    );

    // 1. Migrate from empty: the single-connection floor, four plain parallel sessions
    //    for reference, then mtnt; each on a fresh database, `--repeat` times in turn.
    let mut floor_1 = Vec::new();
    let mut floor_4 = Vec::new();
    let mut books_4 = Vec::new();
    let mut mtnt_n = Vec::new();
    let mut mtnt_tls = Vec::new();
    let tls = server_has_tls(engine).await;
    let mut small_peak_kb = 0;
    // Dropped only at the end: a database dropped just before a timed phase makes the
    // kernel's file creation slow for a while (ext4 scans the inodes it just freed), which
    // would tax whichever phase came next.
    let mut finished = Vec::new();
    for round in 1..=args.repeat {
        let of = if args.repeat > 1 {
            format!(" ({round}/{})", args.repeat)
        } else {
            String::new()
        };
        progress(&format!("floor: {n} tenants, one plain connection{of}"));
        let db = Db::create(engine).await?;
        db.register(n).await?;
        db.settle().await?;
        let probe = ServerCpu::start(&db).await?;
        let client = process_cpu("self").unwrap_or(0.0);
        let wall = floor(&db, n, 1, Work::Migrate).await?;
        let client = process_cpu("self").unwrap_or(0.0) - client;
        floor_1.push(Timed::new(wall, ServerCpu::finish(probe).await, client));
        finished.push(db);
        done(wall);

        progress(&format!(
            "reference: {n} tenants, four plain connections{of}"
        ));
        let db = Db::create(engine).await?;
        db.register(n).await?;
        db.settle().await?;
        let probe = ServerCpu::start(&db).await?;
        let client = process_cpu("self").unwrap_or(0.0);
        let wall = floor(&db, n, 4, Work::Migrate).await?;
        let client = process_cpu("self").unwrap_or(0.0) - client;
        floor_4.push(Timed::new(wall, ServerCpu::finish(probe).await, client));
        finished.push(db);
        done(wall);

        if engine == Engine::MySql {
            progress(&format!(
                "bookkeeping floor: {n} tenants, four plain connections{of}"
            ));
            let db = Db::create(engine).await?;
            db.register(n).await?;
            db.settle().await?;
            let probe = ServerCpu::start(&db).await?;
            let client = process_cpu("self").unwrap_or(0.0);
            let wall = floor(&db, n, 4, Work::Books).await?;
            let client = process_cpu("self").unwrap_or(0.0) - client;
            books_4.push(Timed::new(wall, ServerCpu::finish(probe).await, client));
            finished.push(db);
            done(wall);
        }

        progress(&format!("mtnt migrate: {n} tenants from empty{of}"));
        let db = Db::create(engine).await?;
        db.register(n).await?;
        db.settle().await?;
        let probe = ServerCpu::start(&db).await?;
        let small = mtnt_cli(&db, args.concurrency, &["migrate"]).await?;
        mtnt_n.push(Timed::new(
            small.elapsed,
            ServerCpu::finish(probe).await,
            small.cpu,
        ));
        expect(
            &small,
            &format!("{n} total, {n} migrated ({} migrations)", 6 * n),
        )?;
        small_peak_kb = small_peak_kb.max(small.peak_kb);
        finished.push(db);
        done(small.elapsed);

        if tls {
            progress(&format!(
                "mtnt migrate over TLS: {n} tenants from empty{of}"
            ));
            let db = Db::create(engine).await?;
            db.register(n).await?;
            db.settle().await?;
            let run = mtnt_cli_to(&db.tls_url()?, args.concurrency, &["migrate"], true).await?;
            expect(
                &run,
                &format!("{n} total, {n} migrated ({} migrations)", 6 * n),
            )?;
            mtnt_tls.push(Timed::new(run.elapsed, None, run.cpu));
            finished.push(db);
            done(run.elapsed);
        }
    }
    // Each round's phases run minutes apart at most, while the machine's speed drifts
    // more than that between rounds: the ratios are taken round by round (paired), and
    // their median is the figure.
    let mtnt_vs_floor = Ratios::paired(&mtnt_n, &floor_1);
    let plain4_vs_floor = Ratios::paired(&floor_4, &floor_1);
    let mtnt_vs_plain4 = Ratios::paired(&mtnt_n, &floor_4);
    // The least mtnt can be against the plain sessions if its bookkeeping's time adds
    // to theirs: (plain + bookkeeping) / plain, round by round.
    let plain4_and_books: Vec<Timed> = floor_4
        .iter()
        .zip(&books_4)
        .map(|(plain, books)| Timed::new(plain.wall + books.wall, None, 0.0))
        .collect();
    let books_floor = (!books_4.is_empty()).then(|| {
        (
            Ratios::paired(&plain4_and_books, &floor_4),
            Ratios::paired(&mtnt_n, &plain4_and_books),
            Timed::median(books_4),
        )
    });
    let tls_vs_plain = (!mtnt_tls.is_empty()).then(|| Ratios::paired(&mtnt_tls, &mtnt_n));
    let mtnt_tls = (!mtnt_tls.is_empty()).then(|| Timed::median(mtnt_tls));
    let (floor_1, floor_4, mtnt_n) = (
        Timed::median(floor_1),
        Timed::median(floor_4),
        Timed::median(mtnt_n),
    );
    rows.push(Row {
        what: format!("migrate {n} tenants from empty"),
        figure: mtnt_n.describe(n),
        baseline: format!("{}, 1 plain conn", floor_1.describe(n)),
        ratio: mtnt_vs_floor.describe(),
        target: format!("<= 0.65x: {}", verdict(mtnt_vs_floor.median <= 0.65)),
    });
    rows.push(Row {
        what: "  reference: 4 plain parallel sessions".to_owned(),
        figure: floor_4.describe(n),
        baseline: format!("{}, 1 plain conn", secs(floor_1.wall)),
        ratio: plain4_vs_floor.describe(),
        target: "-".to_owned(),
    });
    rows.push(Row {
        what: "  mtnt vs 4 plain parallel sessions".to_owned(),
        figure: secs(mtnt_n.wall),
        baseline: format!("{}, 4 plain conns", secs(floor_4.wall)),
        ratio: mtnt_vs_plain4.describe(),
        target: match engine {
            Engine::MySql => format!("<= 1.15x: {}", verdict(mtnt_vs_plain4.median <= 1.15)),
            _ => "-".to_owned(),
        },
    });
    if let Some((floor_ratio, mtnt_vs_sum, books)) = books_floor {
        rows.push(Row {
            what: "  bookkeeping floor: its commits alone, 4 plain sessions".to_owned(),
            figure: books.describe(n),
            baseline: format!("{}, 4 plain conns", secs(floor_4.wall)),
            ratio: format!("{} (plain + floor) / plain", floor_ratio.describe()),
            target: "-".to_owned(),
        });
        rows.push(Row {
            what: "  mtnt vs 4 plain sessions + bookkeeping floor".to_owned(),
            figure: secs(mtnt_n.wall),
            baseline: format!("{} + {}", secs(floor_4.wall), secs(books.wall)),
            ratio: mtnt_vs_sum.describe(),
            target: "-".to_owned(),
        });
    }
    // The limit: the server's CPU time for mtnt's run spread over every core. A run
    // shorter than that is impossible without less work on the server.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(server) = mtnt_n.server {
        let limit = Duration::from_secs_f64(server / cores as f64);
        let ratio = mtnt_n.wall.as_secs_f64() / limit.as_secs_f64();
        rows.push(Row {
            what: "  mtnt vs the server-CPU limit".to_owned(),
            figure: secs(mtnt_n.wall),
            baseline: format!(
                "{}: server CPU {:.2} s / {cores} cores",
                secs(limit),
                server
            ),
            ratio: format!("{ratio:.2}x"),
            target: format!("<= 1.15x: {}", verdict(ratio <= 1.15)),
        });
    }
    if let (Some(over_tls), Some(ratios)) = (mtnt_tls, tls_vs_plain) {
        rows.push(Row {
            what: format!("migrate {n} tenants from empty over TLS"),
            figure: over_tls.describe(n),
            baseline: format!("{}, mtnt without TLS", secs(mtnt_n.wall)),
            ratio: ratios.describe(),
            target: format!("<= 1.1x: {}", verdict(ratios.median <= 1.1)),
        });
    }

    // 2-5. A fleet: migrated from empty by mtnt (peak memory), then no-op migrate,
    //      status and tenant create.
    progress(&format!("mtnt migrate: fleet of {fleet} from empty"));
    let db = Db::create(engine).await?;
    db.register(fleet).await?;
    db.settle().await?;
    let big = mtnt_cli(&db, args.concurrency, &["migrate"]).await?;
    expect(
        &big,
        &format!("{fleet} total, {fleet} migrated ({} migrations)", 6 * fleet),
    )?;
    done(big.elapsed);
    // Flat: the per-tenant cost at `fleet` against that at `n`, as rates.
    let flat = (fleet as f64 / big.elapsed.as_secs_f64()) / (n as f64 / mtnt_n.wall.as_secs_f64());
    rows.push(Row {
        what: format!("migrate {fleet} tenants from empty"),
        figure: format!("{} ({})", secs(big.elapsed), rate(fleet, big.elapsed)),
        baseline: format!("{} at {n} tenants", rate(n, mtnt_n.wall)),
        ratio: format!("{flat:.2}x"),
        target: format!(">= 0.9x the rate: {}", verdict(flat >= 0.9)),
    });

    // Cheap: each the median of at least three runs.
    let runs = args.repeat.max(3);
    progress("registry scan");
    let mut samples = Vec::new();
    for _ in 0..runs {
        samples.push(db.registry_scan().await?);
    }
    let scan = median(samples);
    done(scan);
    progress(&format!("mtnt no-op migrate: {fleet} tenants"));
    let mut samples = Vec::new();
    for _ in 0..runs {
        let run = mtnt_cli(&db, args.concurrency, &["migrate"]).await?;
        expect(
            &run,
            &format!("{fleet} total, 0 migrated (0 migrations), {fleet} already current"),
        )?;
        samples.push(run.elapsed);
    }
    let noop = median(samples);
    done(noop);
    rows.push(Row {
        what: format!("no-op migrate, {fleet} tenants"),
        figure: secs(noop),
        baseline: format!("{}, SELECT of the registry", secs(scan)),
        ratio: format!("{:.1}x", noop.as_secs_f64() / scan.as_secs_f64()),
        target: format!("< 1 s: {}", verdict(noop < Duration::from_secs(1))),
    });

    progress(&format!("mtnt status: {fleet} tenants"));
    let mut samples = Vec::new();
    for _ in 0..runs {
        samples.push(mtnt_cli(&db, args.concurrency, &["status"]).await?.elapsed);
    }
    let status = median(samples);
    done(status);
    rows.push(Row {
        what: format!("status, {fleet} tenants"),
        figure: secs(status),
        baseline: format!("{}, SELECT of the registry", secs(scan)),
        ratio: format!("{:.1}x", status.as_secs_f64() / scan.as_secs_f64()),
        target: format!("< 1 s: {}", verdict(status < Duration::from_secs(1))),
    });

    // Drift reads every tenant's schema from the catalog: the fleet is alike, so it must
    // say so (exit 0) after comparing all of them.
    progress(&format!("mtnt drift: {fleet} tenants"));
    let mut samples = Vec::new();
    for _ in 0..runs {
        let run = mtnt_cli(&db, args.concurrency, &["drift"]).await?;
        expect(
            &run,
            &format!("0 of {fleet} tenants drifted from the others at their order"),
        )?;
        samples.push(run.elapsed);
    }
    let drift = median(samples);
    done(drift);
    rows.push(Row {
        what: format!("drift, {fleet} tenants"),
        figure: format!("{} ({})", secs(drift), rate(fleet, drift)),
        baseline: format!("{}, SELECT of the registry", secs(scan)),
        ratio: format!("{:.1}x", drift.as_secs_f64() / scan.as_secs_f64()),
        target: format!(
            "seconds at 10,000: {}",
            verdict(drift.as_secs_f64() <= 10.0 * fleet as f64 / 10_000.0)
        ),
    });

    // 6. `plan` over a migrated fleet (every tenant current), against the registry scan
    //    of the same database.
    if args.plan_tenants == fleet {
        rows.push(plan_row(&db, fleet, args.concurrency, runs).await?);
    } else if args.plan_tenants > 0 {
        let p = args.plan_tenants;
        progress(&format!("set-up: a fleet of {p} migrated for plan"));
        let plan_db = Db::create(engine).await?;
        plan_db.register(p).await?;
        let setup = mtnt_cli(&plan_db, args.concurrency, &["migrate"]).await?;
        expect(&setup, &format!("{p} total, {p} migrated"))?;
        plan_db.settle().await?;
        done(setup.elapsed);
        rows.push(plan_row(&plan_db, p, args.concurrency, runs).await?);
        plan_db.drop().await?;
    }

    // The fleet report reads what `status` reads and writes one HTML page of every tenant.
    progress(&format!("mtnt report --html: {fleet} tenants"));
    let page = std::env::temp_dir().join(format!("{}-report.html", db.prefix));
    let page_arg = page.to_string_lossy().into_owned();
    let mut samples = Vec::new();
    for _ in 0..runs {
        let run = mtnt_cli(&db, args.concurrency, &["report", "--html", &page_arg]).await?;
        expect(&run, &format!("/{fleet} tenants current"))?;
        samples.push(run.elapsed);
    }
    let page_kb = std::fs::metadata(&page)
        .map(|m| m.len() / 1024)
        .unwrap_or(0);
    let _ = std::fs::remove_file(&page);
    let report = median(samples);
    done(report);
    rows.push(Row {
        what: format!("report --html, {fleet} tenants"),
        figure: format!("{} ({page_kb} KB page)", secs(report)),
        baseline: format!("{}, SELECT of the registry", secs(scan)),
        ratio: format!("{:.1}x", report.as_secs_f64() / scan.as_secs_f64()),
        target: format!("< 1 s: {}", verdict(report < Duration::from_secs(1))),
    });

    progress(&format!("tenant create x{}", args.creates));
    // Replay (every migration run in the new tenant) is the baseline of the template copy,
    // where the engine has one; the first create of each series warms up (and builds the
    // template).
    let url = db.url()?;
    let built = async |templates: bool, spares: usize| -> Res<Migrator> {
        let backend = mtnt::connect(&url, &ConnectOptions::default()).await?;
        Ok(Migrator::builder_boxed(backend)
            .templates(templates)
            .spares(spares)
            .build()?)
    };
    let timed_creates = async |migrator: &Migrator, infix: &str| -> Res<Duration> {
        let mut samples = Vec::new();
        for i in 0..=args.creates {
            let name = TenantName::new(format!("{}{infix}{i:04}", db.prefix))?;
            let started = Instant::now();
            migrator.create_tenant(&name).await?;
            if i > 0 {
                samples.push(started.elapsed());
            }
        }
        Ok(median(samples))
    };
    let replay = timed_creates(&built(false, 0).await?, "new").await?;
    let caps = built(false, 0).await?.backend().capabilities();
    let copied = if caps.storage_templates {
        Some(timed_creates(&built(true, 0).await?, "tpl").await?)
    } else {
        None
    };
    // One spare per create (and the warm-up's), made beforehand as `migrate` makes them;
    // what making them cost is shown beside the takes.
    let spared = if caps.storage_spares {
        let migrator = built(true, args.creates + 1).await?;
        let started = Instant::now();
        migrator.refresh_template().await?;
        let each = started.elapsed() / (args.creates as u32 + 1);
        Some((timed_creates(&migrator, "spare").await?, each))
    } else {
        None
    };
    let mut plain = db.plain().await?;
    let mut samples = Vec::new();
    for i in 0..=args.creates {
        let name = format!("{}plain{i:04}", db.prefix);
        let started = Instant::now();
        plain.create_tenant(engine, &name).await?;
        if i > 0 {
            samples.push(started.elapsed());
        }
    }
    let plain_create = median(samples);
    drop(plain);
    done(copied.or(spared.map(|(take, _)| take)).unwrap_or(replay));
    rows.push(Row {
        what: format!("tenant create, replay (median of {})", args.creates),
        figure: secs(replay),
        baseline: format!("{}, same SQL, plain conn", secs(plain_create)),
        ratio: format!("{:.2}x", replay.as_secs_f64() / plain_create.as_secs_f64()),
        target: format!("< 50 ms: {}", verdict(replay < Duration::from_millis(50))),
    });
    if let Some(copied) = copied {
        rows.push(Row {
            what: format!("tenant create, template (median of {})", args.creates),
            figure: secs(copied),
            baseline: format!("{}, replay, same run", secs(replay)),
            ratio: format!("{:.2}x", copied.as_secs_f64() / replay.as_secs_f64()),
            target: format!("< 10 ms: {}", verdict(copied < Duration::from_millis(10))),
        });
    }
    if let Some((take, each)) = spared {
        rows.push(Row {
            what: format!("tenant create, spare schema (median of {})", args.creates),
            figure: format!("{} ({} to make each spare)", secs(take), secs(each)),
            baseline: format!("{}, replay, same run", secs(replay)),
            ratio: format!("{:.2}x", take.as_secs_f64() / replay.as_secs_f64()),
            target: format!("< 10 ms: {}", verdict(take < Duration::from_millis(10))),
        });
    }

    db.drop().await?;
    for db in finished {
        db.drop().await?;
    }

    let peak = small_peak_kb.max(big.peak_kb);
    rows.push(Row {
        what: format!("peak memory, migrate {fleet} tenants"),
        figure: mb(big.peak_kb),
        baseline: format!("{} at {n} tenants", mb(small_peak_kb)),
        ratio: format!("{:.2}x", big.peak_kb as f64 / small_peak_kb.max(1) as f64),
        target: format!(
            "< 100 MB, flat: {}",
            verdict(peak < 100 * 1024 && big.peak_kb as f64 <= small_peak_kb as f64 * 1.25)
        ),
    });

    if args.scale > 0 {
        rows.extend(scale_rows(engine, args.scale, args.concurrency, runs).await?);
    }
    if engine == Engine::Postgres && args.servers_tenants > 0 {
        rows.extend(two_servers_rows(args.servers_tenants, args.concurrency).await?);
    }

    println!();
    print_table(&rows);
    Ok(())
}

/// The admin URL of the second PostgreSQL server (`MTNT_BENCH_PG2_URL`, default port 5433).
fn pg2_admin_url() -> String {
    std::env::var("MTNT_BENCH_PG2_URL").unwrap_or_else(|_| {
        "postgres://postgres@127.0.0.1:5433/postgres?sslmode=disable".to_owned()
    })
}

/// `n` tenants migrated from empty on one server, then `n` spread evenly over two
/// (`server add`, every other tenant placed on the second), same concurrency, same run.
/// On one machine the two servers share the CPU: the point is that the scheduler keeps
/// both busy and adds nothing, not a 2x figure.
async fn two_servers_rows(n: usize, concurrency: Option<usize>) -> Res<Vec<Row>> {
    progress(&format!("mtnt migrate: {n} tenants on one server"));
    let one = Db::create(Engine::Postgres).await?;
    one.register(n).await?;
    one.settle().await?;
    let alone = mtnt_cli(&one, concurrency, &["migrate"]).await?;
    expect(
        &alone,
        &format!("{n} total, {n} migrated ({} migrations)", 6 * n),
    )?;
    done(alone.elapsed);
    one.drop().await?;

    progress(&format!("mtnt migrate: {n} tenants over two servers"));
    let two = Db::create(Engine::Postgres).await?;
    two.register(n).await?;
    let second_db = format!("{}_second", two.name);
    let admin2: PgConnectOptions = pg2_admin_url().parse()?;
    let mut conn2 = admin2.connect().await?;
    conn2
        .execute(&*format!("CREATE DATABASE \"{second_db}\""))
        .await?;
    let url2 = admin2
        .clone()
        .database(&second_db)
        .to_url_lossy()
        .to_string();
    mtnt_cli(&two, concurrency, &["server", "add", "bench-2", &url2]).await?;
    let mut plain = two.plain().await?;
    if let Plain::Pg(conn) = &mut plain {
        conn.execute(
            "UPDATE public.mtnt_tenants SET server = 'bench-2' \
             WHERE right(name, 6)::int % 2 = 0",
        )
        .await?;
    }
    drop(plain);
    two.settle().await?;
    let spread = mtnt_cli(&two, concurrency, &["migrate"]).await?;
    expect(
        &spread,
        &format!("{n} total, {n} migrated ({} migrations)", 6 * n),
    )?;
    done(spread.elapsed);
    two.drop().await?;
    conn2
        .execute(&*format!(
            "DROP DATABASE IF EXISTS \"{second_db}\" WITH (FORCE)"
        ))
        .await?;
    let ratio = spread.elapsed.as_secs_f64() / alone.elapsed.as_secs_f64();
    Ok(vec![Row {
        what: format!("migrate {} over two servers", thousands(n)),
        figure: format!("{} ({})", secs(spread.elapsed), rate(n, spread.elapsed)),
        baseline: format!(
            "{} ({}), one server",
            secs(alone.elapsed),
            rate(n, alone.elapsed)
        ),
        ratio: format!("{ratio:.2}x"),
        target: format!("<= 1.1x (one CPU for both): {}", verdict(ratio <= 1.1)),
    }])
}
