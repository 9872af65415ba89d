use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Connection, Row, Sqlite, SqliteConnection};

use super::control::Transactions;
use super::invoke::{connection_lost, exec_sqlite, invoke};
use crate::ctx::CtxConn;
use crate::{
    AppliedMigration, Backend, Ctx, Direction, Engine, Error, Migration, MigrationStatus, Result,
    Session, Target, Tenancy, Tenant, TenantName, TenantRecord, TenantState,
};

/// The control file's name. Tenant names never start with `mtnt`, so no tenant file
/// (`<name>.db`) can collide with it.
const CONTROL_FILE: &str = "mtnt_control.db";

/// How long a connection waits for another one's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of the control file's pool.
const CONTROL_CONNECTIONS: u32 = 4;

/// An RFC 3339 UTC timestamp with milliseconds, as SQLite writes it; sqlx decodes it into
/// `DateTime<Utc>`.
const NOW_SQL: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// The tracking table of one file (the control file's for public migrations, each tenant's own).
const TRACKING_DDL: &str = "CREATE TABLE IF NOT EXISTS mtnt_migrations (
    migration_order INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'started', 'failed', 'completed')),
    started_at TEXT,
    finished_at TEXT,
    duration_ms INTEGER,
    error TEXT
)";

/// Inserts or overwrites a tracking row; binds: order, name, checksum, status, started_at,
/// finished_at, duration_ms.
const UPSERT_SQL: &str = "INSERT INTO mtnt_migrations \
    (migration_order, name, checksum, status, started_at, finished_at, duration_ms, error) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL) \
    ON CONFLICT (migration_order) DO UPDATE SET name = excluded.name, checksum = excluded.checksum, \
    status = excluded.status, started_at = excluded.started_at, finished_at = excluded.finished_at, \
    duration_ms = excluded.duration_ms, error = NULL";

const SELECT_RECORDS: &str =
    "SELECT name, schema_name, state, created_at, applied_order, failed_order, last_error FROM mtnt_tenants";

/// SQLite with one database file per tenant, all in one directory: the embedded engine,
/// no server needed.
///
/// The directory holds
///
/// - `mtnt_control.db`, the control file: the tenant registry `mtnt_tenants`, the tracking
///   table of public migrations, and whatever the public migrations create;
/// - `<tenant>.db` for each tenant, with its own tracking table `mtnt_migrations`.
///
/// Every connection uses WAL journaling, a 5 second busy timeout and foreign keys. The
/// control file has a small pool; each tenant session opens one connection to its file
/// and closes it when the session ends, so a fleet of thousands of tenants never holds
/// thousands of open files.
///
/// A tenant's tracking table is the truth about its migrations. The registry row's
/// `applied_order`, `failed_order` and `last_error` are a cache, written after the tenant
/// file commits (two files cannot commit atomically) and brought back in line whenever a
/// session reads the tenant's tracking table, for example on the next `migrate`.
///
/// Public migrations run in the control file; tenant migrations cannot see its tables
/// (each tenant file is a database of its own).
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    dir: PathBuf,
    control: SqlitePool,
    transactions: Transactions,
}

impl SqliteBackend {
    /// Opens (creating it if missing) the directory `dir` and its control file.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "cannot create the tenant directory",
            path: dir.clone(),
            source,
        })?;
        let control = SqlitePoolOptions::new()
            .max_connections(CONTROL_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(file_options(&dir.join(CONTROL_FILE), true))
            .await?;
        Ok(Self {
            dir,
            control,
            transactions: Transactions::default(),
        })
    }

    /// How many of a tenant's pending migrations share a transaction (default:
    /// [`Transactions::PerTenant`]).
    pub fn with_transactions(mut self, transactions: Transactions) -> Self {
        self.transactions = transactions;
        self
    }

    /// The directory holding the control file and the tenant files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The control file: tenant registry, public tracking table, public tables.
    pub fn control_file(&self) -> PathBuf {
        self.dir.join(CONTROL_FILE)
    }

    /// The file that holds (or would hold) a tenant's data.
    pub fn tenant_file(&self, tenant: &TenantName) -> PathBuf {
        self.dir.join(format!("{tenant}.db"))
    }

    /// The pool of connections to the control file.
    pub fn pool(&self) -> &SqlitePool {
        &self.control
    }

    /// The file of a tenant, after checking that its file stem is a valid tenant name (so
    /// that it cannot hold `/`, `..` or anything else that leaves the directory).
    fn path_of(&self, tenant: &Tenant) -> Result<PathBuf> {
        let stem = TenantName::new(tenant.schema.as_str()).map_err(|e| {
            Error::Corrupt(format!(
                "tenant {} has an invalid file name: {e}",
                tenant.name
            ))
        })?;
        Ok(self.tenant_file(&stem))
    }

    fn record_from_row(row: &SqliteRow) -> Result<TenantRecord> {
        let name: String = row.try_get("name")?;
        let name =
            TenantName::new(name).map_err(|e| Error::Corrupt(format!("tenant registry: {e}")))?;
        Ok(TenantRecord {
            tenant: Tenant {
                name,
                schema: row.try_get("schema_name")?,
            },
            state: TenantState::parse(row.try_get("state")?)?,
            created_at: row.try_get("created_at")?,
            applied_order: row.try_get("applied_order")?,
            failed_order: row.try_get("failed_order")?,
            last_error: row.try_get("last_error")?,
        })
    }

    /// Removes a tenant's registry row (only while it is `creating`, when `creating_only`).
    async fn delete_row(&self, tenant: &Tenant, creating_only: bool) -> Result<()> {
        let sql = if creating_only {
            "DELETE FROM mtnt_tenants WHERE name = ?1 AND state = 'creating'"
        } else {
            "DELETE FROM mtnt_tenants WHERE name = ?1"
        };
        sqlx::query(sql)
            .bind(tenant.name.as_str())
            .execute(&self.control)
            .await?;
        Ok(())
    }

    /// Builds a new tenant file: tracking table and `migrations`, in one transaction.
    async fn fill_new_file(
        &self,
        tenant: &Tenant,
        path: &Path,
        migrations: &[&'static Migration],
    ) -> Result<()> {
        let mut conn = SqliteConnection::connect_with(&file_options(path, false)).await?;
        let result = async {
            exec_sqlite(&mut conn, "BEGIN IMMEDIATE").await?;
            exec_sqlite(&mut conn, TRACKING_DDL).await?;
            for &migration in migrations {
                let started_at = now_text();
                let clock = Instant::now();
                let mut ctx = Ctx::new(Some(tenant), CtxConn::Sqlite(&mut conn));
                invoke(migration.up(), &mut ctx)
                    .await
                    .map_err(|e| Error::Migration {
                        target: Target::Tenant(tenant).to_string(),
                        migration: migration.to_string(),
                        reverting: false,
                        source: Box::new(e),
                    })?;
                upsert(
                    &mut conn,
                    migration,
                    MigrationStatus::Completed,
                    &started_at,
                    Some(clock),
                )
                .await?;
            }
            exec_sqlite(&mut conn, "COMMIT").await?;
            Ok::<_, Error>(())
        }
        .await;
        if result.is_err() {
            let _ = exec_sqlite(&mut conn, "ROLLBACK").await;
        }
        // Closed before the caller may delete the file, so that no late checkpoint writes it.
        let _ = conn.close().await;
        result
    }
}

/// Connection options for one file: WAL, busy timeout, foreign keys.
fn file_options(path: &Path, create: bool) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Removes a database file with its WAL, shared-memory and rollback-journal companions;
/// the companions first, so that a stale WAL never meets a new file of the same name.
fn remove_db_files(path: &Path) -> Result<()> {
    for suffix in ["-wal", "-shm", "-journal", ""] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    action: "cannot delete",
                    path: file,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Writes a tracking row for `migration` with `status`; `finished` is the clock started
/// with the attempt, when the attempt is over.
async fn upsert(
    conn: &mut SqliteConnection,
    migration: &Migration,
    status: MigrationStatus,
    started_at: &str,
    finished: Option<Instant>,
) -> Result<()> {
    sqlx::query(UPSERT_SQL)
        .bind(migration.order())
        .bind(migration.name())
        .bind(migration.checksum())
        .bind(status.as_str())
        .bind(started_at)
        .bind(finished.map(|_| now_text()))
        .bind(finished.map(|clock| clock.elapsed().as_millis() as i64))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The newest completed migration in a tracking table.
async fn completed_order(conn: &mut SqliteConnection) -> Result<Option<i64>> {
    let order: Option<i64> = sqlx::query_scalar(
        "SELECT max(migration_order) FROM mtnt_migrations WHERE status = 'completed'",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(order)
}

/// Whether `text` matches the SQL `LIKE` `pattern`: `%` is any run of characters, `_` one
/// character, `\` escapes the next one. Case-sensitive, as in PostgreSQL.
fn like(pattern: &str, text: &str) -> bool {
    enum Token {
        Any,
        One,
        Char(char),
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '%' => Token::Any,
            '_' => Token::One,
            '\\' => Token::Char(chars.next().unwrap_or('\\')),
            c => Token::Char(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // matches[j]: the tokens so far match the first j characters.
    let mut matches = vec![false; text.len() + 1];
    matches[0] = true;
    for token in &tokens {
        let mut next = vec![false; text.len() + 1];
        match token {
            Token::Any => {
                let mut seen = false;
                for j in 0..=text.len() {
                    seen |= matches[j];
                    next[j] = seen;
                }
            }
            Token::One => next[1..].copy_from_slice(&matches[..text.len()]),
            Token::Char(c) => {
                for j in 1..=text.len() {
                    next[j] = matches[j - 1] && text[j - 1] == *c;
                }
            }
        }
        matches = next;
    }
    matches[text.len()]
}

#[async_trait]
impl Backend for SqliteBackend {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    fn tenancy(&self) -> Tenancy {
        Tenancy::File
    }

    async fn prepare(&self) -> Result<()> {
        let sql = format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS mtnt_tenants (
                name TEXT PRIMARY KEY,
                schema_name TEXT NOT NULL UNIQUE,
                state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'creating')),
                created_at TEXT NOT NULL DEFAULT ({NOW_SQL}),
                applied_order INTEGER,
                failed_order INTEGER,
                last_error TEXT,
                updated_at TEXT NOT NULL DEFAULT ({NOW_SQL})
             );
             {TRACKING_DDL};
             COMMIT"
        );
        let mut conn = self.control.acquire().await?;
        if let Err(e) = exec_sqlite(&mut conn, &sql).await {
            if exec_sqlite(&mut conn, "ROLLBACK").await.is_err() {
                conn.close_on_drop();
            }
            return Err(e.into());
        }
        Ok(())
    }

    async fn tenant_page(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>> {
        let sql =
            format!("{SELECT_RECORDS} WHERE (?1 IS NULL OR name > ?1) ORDER BY name LIMIT ?2");
        let rows = sqlx::query(&sql)
            .bind(after.map(TenantName::as_str))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.control)
            .await?;
        rows.iter().map(Self::record_from_row).collect()
    }

    async fn tenant_count(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM mtnt_tenants")
            .fetch_one(&self.control)
            .await?;
        Ok(count as u64)
    }

    async fn tenant_records(&self, names: &[TenantName]) -> Result<Vec<TenantRecord>> {
        let sql = format!(
            "{SELECT_RECORDS} WHERE name IN (SELECT value FROM json_each(?1)) ORDER BY name"
        );
        let names = serde_json::to_string(&names).map_err(Error::other)?;
        let rows = sqlx::query(&sql)
            .bind(names)
            .fetch_all(&self.control)
            .await?;
        rows.iter().map(Self::record_from_row).collect()
    }

    async fn session<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Session + 'a>> {
        let conn = match target {
            Target::Public => Conn::Pooled(self.control.acquire().await?),
            Target::Tenant(tenant) => {
                let path = self.path_of(tenant)?;
                if !path.exists() {
                    // Without this check SQLite would start an empty file and migrate it from scratch.
                    return Err(Error::Io {
                        action: "cannot open the tenant file",
                        path,
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "it does not exist, but tenant {} is registered\n  fix: restore the file, or remove the tenant with `tenant drop {}`",
                                tenant.name, tenant.name
                            ),
                        ),
                    });
                }
                Conn::Owned(Some(
                    SqliteConnection::connect_with(&file_options(&path, false)).await?,
                ))
            }
        };
        Ok(Box::new(SqliteSession {
            backend: self,
            conn,
            target,
            lock: None,
        }))
    }

    async fn create_tenant(
        &self,
        tenant: &Tenant,
        migrations: &[&'static Migration],
        activate: bool,
    ) -> Result<()> {
        let path = self.path_of(tenant)?;
        // The registry's unique name claims the tenant; the file is claimed with
        // `create_new`, so neither a registered tenant nor a stray file is ever touched.
        let insert = sqlx::query(
            "INSERT INTO mtnt_tenants (name, schema_name, state) VALUES (?1, ?2, 'creating')",
        )
        .bind(tenant.name.as_str())
        .bind(&tenant.schema)
        .execute(&self.control)
        .await;
        match insert {
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::TenantExists(tenant.name.to_string()))
            }
            other => other?,
        };
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            let _ = self.delete_row(tenant, true).await;
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Invalid(format!(
                    "file {} exists already but is not a registered tenant\n  fix: register it with `tenant adopt --schema-like {}`",
                    path.display(),
                    tenant.schema
                ))
            } else {
                Error::Io {
                    action: "cannot create the tenant file",
                    path,
                    source: e,
                }
            });
        }
        let mut result = self.fill_new_file(tenant, &path, migrations).await;
        if result.is_ok() {
            result = sqlx::query(&format!(
                "UPDATE mtnt_tenants SET state = ?1, applied_order = ?2, updated_at = {NOW_SQL} WHERE name = ?3"
            ))
            .bind(if activate { "active" } else { "creating" })
            .bind(migrations.iter().map(|m| m.order()).max())
            .bind(tenant.name.as_str())
            .execute(&self.control)
            .await
            .map(drop)
            .map_err(Error::from);
        }
        if let Err(error) = result {
            // Nothing of the tenant may stay: its file first, then the row that claims it.
            let _ = remove_db_files(&path);
            let _ = self.delete_row(tenant, true).await;
            return Err(error);
        }
        Ok(())
    }

    async fn activate_tenant(&self, tenant: &Tenant) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE mtnt_tenants SET state = 'active', updated_at = {NOW_SQL} WHERE name = ?1"
        ))
        .bind(tenant.name.as_str())
        .execute(&self.control)
        .await?;
        Ok(())
    }

    async fn drop_tenant(&self, tenant: &Tenant) -> Result<()> {
        remove_db_files(&self.path_of(tenant)?)?;
        self.delete_row(tenant, false).await
    }

    async fn adopt(
        &self,
        like_pattern: &str,
        baseline: &[&'static Migration],
    ) -> Result<(Vec<Tenant>, Vec<String>)> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::Io {
            action: "cannot list the tenant directory",
            path: self.dir.clone(),
            source,
        })?;
        let mut stems = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                action: "cannot list the tenant directory",
                path: self.dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension() != Some("db".as_ref())
                || !path.is_file()
                || path.file_name() == Some(CONTROL_FILE.as_ref())
            {
                continue;
            }
            if let Some(stem) = path.file_stem() {
                let stem = stem.to_string_lossy().into_owned();
                if like(like_pattern, &stem) {
                    stems.push(stem);
                }
            }
        }
        stems.sort();
        let mut adopted = Vec::new();
        let mut skipped = Vec::new();
        for stem in stems {
            let registered: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM mtnt_tenants WHERE schema_name = ?1 OR name = ?1",
            )
            .bind(&stem)
            .fetch_optional(&self.control)
            .await?;
            if registered.is_some() {
                continue;
            }
            let Ok(name) = TenantName::new(stem.clone()) else {
                skipped.push(stem);
                continue;
            };
            let tenant = Tenant { name, schema: stem };
            let path = self.path_of(&tenant)?;
            let mut conn = SqliteConnection::connect_with(&file_options(&path, false))
                .await
                .map_err(|e| Error::Invalid(format!("cannot adopt {}: {e}", path.display())))?;
            let result = async {
                exec_sqlite(&mut conn, "BEGIN IMMEDIATE").await?;
                exec_sqlite(&mut conn, TRACKING_DDL).await?;
                let now = now_text();
                for &migration in baseline {
                    sqlx::query(UPSERT_SQL)
                        .bind(migration.order())
                        .bind(migration.name())
                        .bind(migration.checksum())
                        .bind(MigrationStatus::Completed.as_str())
                        .bind(&now)
                        .bind(&now)
                        .bind(0_i64)
                        .execute(&mut conn)
                        .await?;
                }
                exec_sqlite(&mut conn, "COMMIT").await?;
                completed_order(&mut conn).await
            }
            .await;
            if result.is_err() {
                let _ = exec_sqlite(&mut conn, "ROLLBACK").await;
            }
            let _ = conn.close().await;
            // Say which file: "file is not a database" alone does not help.
            let applied = result
                .map_err(|e| Error::Invalid(format!("cannot adopt {}: {e}", path.display())))?;
            sqlx::query("INSERT INTO mtnt_tenants (name, schema_name, state, applied_order) VALUES (?1, ?2, 'active', ?3)")
                .bind(tenant.name.as_str())
                .bind(&tenant.schema)
                .bind(applied)
                .execute(&self.control)
                .await?;
            adopted.push(tenant);
        }
        Ok((adopted, skipped))
    }
}

/// A session's connection: pooled for the control file, a private one for a tenant file.
enum Conn {
    Pooled(PoolConnection<Sqlite>),
    /// `None` once the connection was discarded after an I/O error.
    Owned(Option<SqliteConnection>),
}

impl Conn {
    /// Whether [`Conn::discard`] took a tenant connection away.
    fn is_discarded(&self) -> bool {
        matches!(self, Conn::Owned(None))
    }

    /// Makes sure a connection in an unknown state is not used again.
    fn discard(&mut self) {
        match self {
            Conn::Pooled(conn) => conn.close_on_drop(),
            Conn::Owned(conn) => *conn = None,
        }
    }
}

impl Deref for Conn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            Conn::Pooled(conn) => conn,
            Conn::Owned(conn) => conn
                .as_ref()
                .expect("a discarded connection is not used again"),
        }
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Conn::Pooled(conn) => conn,
            Conn::Owned(conn) => conn
                .as_mut()
                .expect("a discarded connection is not used again"),
        }
    }
}

struct SqliteSession<'a> {
    backend: &'a SqliteBackend,
    conn: Conn,
    target: Target<'a>,
    /// The target's lock file while this session holds its exclusive lock; the operating
    /// system releases it when the file is closed, even when the process is killed.
    lock: Option<std::fs::File>,
}

impl<'a> SqliteSession<'a> {
    /// `<tenant>.lock` beside the tenant file, `mtnt_control.lock` for the public target:
    /// SQLite's own locks last one transaction, while a run must keep a target from its
    /// plan to its last migration.
    fn open_lock_file(&self) -> Result<std::fs::File> {
        let path = match self.target {
            Target::Public => self.backend.control_file().with_extension("lock"),
            Target::Tenant(tenant) => self.backend.path_of(tenant)?.with_extension("lock"),
        };
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                action: "cannot open the lock file",
                path,
                source,
            })
    }

    fn tenant(&self) -> Option<&'a Tenant> {
        match self.target {
            Target::Public => None,
            Target::Tenant(t) => Some(t),
        }
    }

    async fn run(&mut self, sql: &str) -> Result<()> {
        exec_sqlite(&mut self.conn, sql).await?;
        Ok(())
    }

    /// Ends a failed transaction; a connection that cannot even roll back is not reused.
    /// (A migration that ended the transaction itself leaves nothing to roll back.)
    async fn rollback(&mut self) {
        match exec_sqlite(&mut self.conn, "ROLLBACK").await {
            // A database error here means there was no transaction to roll back.
            Ok(()) | Err(sqlx::Error::Database(_)) => {}
            Err(_) => self.conn.discard(),
        }
    }

    /// Brings the registry row's cached summary in line with the tenant's tracking table
    /// after a successful change (which also clears a recorded failure).
    async fn refresh_registry(&mut self) -> Result<()> {
        let Target::Tenant(tenant) = self.target else {
            return Ok(());
        };
        let applied = completed_order(&mut self.conn).await?;
        sqlx::query(&format!(
            "UPDATE mtnt_tenants SET applied_order = ?1, failed_order = NULL, last_error = NULL, \
             updated_at = {NOW_SQL} WHERE name = ?2"
        ))
        .bind(applied)
        .bind(tenant.name.as_str())
        .execute(&self.backend.control)
        .await?;
        Ok(())
    }

    async fn record_failure(
        &mut self,
        migration: &Migration,
        error: &Error,
        status: MigrationStatus,
        started_at: &str,
    ) -> Result<()> {
        if self.conn.is_discarded() {
            // A tenant connection that could not even roll back is gone: nothing can be
            // recorded in its file, and the caller reports the migration's error anyway.
            return Ok(());
        }
        let message = error.to_string();
        sqlx::query(
            "INSERT INTO mtnt_migrations \
             (migration_order, name, checksum, status, started_at, finished_at, duration_ms, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7) \
             ON CONFLICT (migration_order) DO UPDATE SET status = excluded.status, \
             finished_at = excluded.finished_at, error = excluded.error \
             WHERE mtnt_migrations.status <> 'completed'",
        )
        .bind(migration.order())
        .bind(migration.name())
        .bind(migration.checksum())
        .bind(status.as_str())
        .bind(started_at)
        .bind(now_text())
        .bind(&message)
        .execute(&mut *self.conn)
        .await?;
        if let Target::Tenant(t) = self.target {
            sqlx::query(&format!(
                "UPDATE mtnt_tenants SET failed_order = ?1, last_error = ?2, updated_at = {NOW_SQL} WHERE name = ?3"
            ))
            .bind(migration.order())
            .bind(&message)
            .bind(t.name.as_str())
            .execute(&self.backend.control)
            .await?;
        }
        Ok(())
    }

    async fn apply_in_transaction(
        &mut self,
        migration: &'static Migration,
        direction: Direction,
    ) -> Result<()> {
        let function = migration.function(direction, self.target)?;
        let started_at = now_text();
        let clock = Instant::now();
        // IMMEDIATE takes the write lock now (waiting up to the busy timeout), instead of
        // failing at the migration's first write when another connection holds it.
        self.run("BEGIN IMMEDIATE").await?;
        let tenant = self.tenant();
        let mut ctx = Ctx::new(tenant, CtxConn::Sqlite(&mut self.conn));
        let mut result = invoke(function, &mut ctx).await;
        if result.is_ok() {
            result = match direction {
                Direction::Up => {
                    upsert(&mut self.conn, migration, MigrationStatus::Completed, &started_at, Some(clock)).await
                }
                Direction::Down => sqlx::query(
                    "UPDATE mtnt_migrations SET status = 'pending', started_at = ?1, finished_at = ?2, \
                     duration_ms = ?3, error = NULL WHERE migration_order = ?4",
                )
                .bind(&started_at)
                .bind(now_text())
                .bind(clock.elapsed().as_millis() as i64)
                .bind(migration.order())
                .execute(&mut *self.conn)
                .await
                .map(drop)
                .map_err(Error::from),
            };
        }
        if result.is_ok() {
            result = self.run("COMMIT").await;
        }
        if let Err(error) = result {
            if connection_lost(&error) {
                self.conn.discard();
                return Err(error);
            }
            self.rollback().await;
            if direction == Direction::Up {
                // Best effort: the migration error matters more than a failed bookkeeping write.
                let _ = self
                    .record_failure(migration, &error, MigrationStatus::Failed, &started_at)
                    .await;
            }
            return Err(error);
        }
        // The tenant file has committed; the registry (another file) follows.
        self.refresh_registry().await
    }

    /// Runs `batch`, transactional migrations, in one transaction with their tracking
    /// rows; on a failure, rolls all of them back and records the failed one. Returns the
    /// index of the failed migration with its error.
    async fn apply_batch(
        &mut self,
        batch: &[&'static Migration],
    ) -> std::result::Result<(), (usize, Error)> {
        self.lock().await.map_err(|e| (0, e))?;
        self.run("BEGIN IMMEDIATE").await.map_err(|e| (0, e))?;
        let mut started = Vec::with_capacity(batch.len());
        let mut failure = None;
        for (i, &migration) in batch.iter().enumerate() {
            started.push(now_text());
            // Each row gets its own times: written right after its migration, in the
            // transaction, so that they commit or roll back with it.
            let clock = Instant::now();
            let mut result = match migration.function(Direction::Up, self.target) {
                Ok(function) => {
                    let tenant = self.tenant();
                    let mut ctx = Ctx::new(tenant, CtxConn::Sqlite(&mut self.conn));
                    invoke(function, &mut ctx).await
                }
                Err(error) => Err(error),
            };
            if result.is_ok() {
                result = upsert(
                    &mut self.conn,
                    migration,
                    MigrationStatus::Completed,
                    &started[i],
                    Some(clock),
                )
                .await;
            }
            if let Err(error) = result {
                failure = Some((i, error));
                break;
            }
        }
        if failure.is_none() {
            if let Err(error) = self.run("COMMIT").await {
                // The commit came after the last one: it is named.
                failure = Some((batch.len() - 1, error));
            }
        }
        let Some((i, error)) = failure else {
            // The tenant file has committed; the registry (another file) follows, once for
            // the batch and never before the commit, so that it names no migration a
            // rollback could still undo.
            return self
                .refresh_registry()
                .await
                .map_err(|e| (batch.len() - 1, e));
        };
        if connection_lost(&error) {
            self.conn.discard();
            return Err((i, error));
        }
        self.rollback().await;
        // Best effort: the migration error matters more than a failed bookkeeping write.
        // The registry's applied order stays: the batch took nothing with it.
        let _ = self
            .record_failure(batch[i], &error, MigrationStatus::Failed, &started[i])
            .await;
        Err((i, error))
    }

    async fn apply_outside_transaction(
        &mut self,
        migration: &'static Migration,
        direction: Direction,
    ) -> Result<()> {
        let function = migration.function(direction, self.target)?;
        let started_at = now_text();
        let clock = Instant::now();
        if direction == Direction::Up {
            upsert(
                &mut self.conn,
                migration,
                MigrationStatus::Started,
                &started_at,
                None,
            )
            .await?;
        }
        let tenant = self.tenant();
        let mut ctx = Ctx::new(tenant, CtxConn::Sqlite(&mut self.conn));
        let result = invoke(function, &mut ctx).await;
        if let Err(error) = result {
            if connection_lost(&error) {
                self.conn.discard();
            } else {
                // A transaction the migration left open would swallow the bookkeeping.
                self.rollback().await;
                if direction == Direction::Up {
                    // The row stays `started`: what the migration did before failing is unknown.
                    let _ = self
                        .record_failure(migration, &error, MigrationStatus::Started, &started_at)
                        .await;
                }
            }
            return Err(error);
        }
        let status = match direction {
            Direction::Up => MigrationStatus::Completed,
            Direction::Down => MigrationStatus::Pending,
        };
        sqlx::query(
            "UPDATE mtnt_migrations SET status = ?1, finished_at = ?2, duration_ms = ?3, error = NULL \
             WHERE migration_order = ?4",
        )
        .bind(status.as_str())
        .bind(now_text())
        .bind(clock.elapsed().as_millis() as i64)
        .bind(migration.order())
        .execute(&mut *self.conn)
        .await?;
        self.refresh_registry().await
    }
}

fn applied_from_row(row: &SqliteRow) -> Result<AppliedMigration> {
    Ok(AppliedMigration {
        order: row.try_get("migration_order")?,
        name: row.try_get("name")?,
        checksum: row.try_get("checksum")?,
        status: MigrationStatus::parse(row.try_get("status")?)?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        duration_ms: row.try_get("duration_ms")?,
        error: row.try_get("error")?,
    })
}

#[async_trait]
impl Session for SqliteSession<'_> {
    async fn applied(&mut self) -> Result<Vec<AppliedMigration>> {
        // A no-op (and no write lock) when the table exists; adopted files may lack it.
        self.run(TRACKING_DDL).await?;
        let rows = sqlx::query(
            "SELECT migration_order, name, checksum, status, started_at, finished_at, duration_ms, error \
             FROM mtnt_migrations ORDER BY migration_order",
        )
        .fetch_all(&mut *self.conn)
        .await?;
        let applied = rows
            .iter()
            .map(applied_from_row)
            .collect::<Result<Vec<_>>>()?;
        if let Target::Tenant(tenant) = self.target {
            // The registry is a cache of this table: heal it when an earlier run could not
            // write it after the tenant file committed.
            let truth = applied
                .iter()
                .filter(|r| r.status == MigrationStatus::Completed)
                .map(|r| r.order)
                .max();
            let cached: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT applied_order, failed_order FROM mtnt_tenants WHERE name = ?1",
            )
            .bind(tenant.name.as_str())
            .fetch_optional(&self.backend.control)
            .await?;
            if let Some((cached, failed)) = cached {
                // A recorded failure of a migration that has completed since is cleared too.
                let failure_done = failed.is_some_and(|f| {
                    applied
                        .iter()
                        .any(|r| r.order == f && r.status == MigrationStatus::Completed)
                });
                if cached != truth || failure_done {
                    sqlx::query(&format!(
                        "UPDATE mtnt_tenants SET applied_order = ?1, \
                         failed_order = CASE WHEN ?2 THEN NULL ELSE failed_order END, \
                         last_error = CASE WHEN ?2 THEN NULL ELSE last_error END, \
                         updated_at = {NOW_SQL} WHERE name = ?3"
                    ))
                    .bind(truth)
                    .bind(failure_done)
                    .bind(tenant.name.as_str())
                    .execute(&self.backend.control)
                    .await?;
                }
            }
        }
        Ok(applied)
    }

    async fn lock(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let file = self.open_lock_file()?;
        // The wait blocks a thread, so it runs off the async workers.
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| Error::other(format!("the lock wait did not finish: {e}")))?
            .map_err(|source| Error::Io {
                action: "cannot lock",
                path: self.backend.dir().to_owned(),
                source,
            })?;
        self.lock = Some(file);
        Ok(())
    }

    async fn try_lock(&mut self) -> Result<bool> {
        if self.lock.is_some() {
            return Ok(true);
        }
        let file = self.open_lock_file()?;
        match file.try_lock() {
            Ok(()) => {
                self.lock = Some(file);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::Io {
                action: "cannot lock",
                path: self.backend.dir().to_owned(),
                source,
            }),
        }
    }

    fn transactions(&self) -> Transactions {
        self.backend.transactions
    }

    async fn apply_together(
        &mut self,
        batch: &[&'static Migration],
    ) -> std::result::Result<(), (usize, Error)> {
        self.apply_batch(batch).await
    }

    async fn apply(&mut self, migration: &'static Migration, direction: Direction) -> Result<()> {
        self.lock().await?;
        if migration.is_transactional() {
            self.apply_in_transaction(migration, direction).await
        } else {
            self.apply_outside_transaction(migration, direction).await
        }
    }

    async fn set_checksum(&mut self, order: i64, checksum: &str) -> Result<()> {
        self.lock().await?;
        sqlx::query("UPDATE mtnt_migrations SET checksum = ?1 WHERE migration_order = ?2")
            .bind(checksum)
            .bind(order)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    async fn mark(&mut self, migration: &'static Migration, status: MigrationStatus) -> Result<()> {
        self.lock().await?;
        let now = now_text();
        sqlx::query(UPSERT_SQL)
            .bind(migration.order())
            .bind(migration.name())
            .bind(migration.checksum())
            .bind(status.as_str())
            .bind(&now)
            .bind(&now)
            .bind(0_i64)
            .execute(&mut *self.conn)
            .await?;
        self.refresh_registry().await
    }
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn like_patterns() {
        assert!(like("%", ""));
        assert!(like("%", "acme"));
        assert!(like("ac%", "acme"));
        assert!(like("%me", "acme"));
        assert!(like("a_me", "acme"));
        assert!(!like("a_me", "acmme"));
        assert!(like("a%m%e", "abcmxe"));
        assert!(!like("acme", "Acme"));
        assert!(like("t\\_%", "t_1"));
        assert!(!like("t\\_%", "tx1"));
        assert!(!like("", "a"));
        assert!(like("_%_", "ab"));
        assert!(!like("_%_", "a"));
    }
}
