//! SQLite, a file per tenant: the dialect of its tracking rows and registry, its file
//! locks, and the tenant files as storage.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::error::DatabaseError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection as _, SqliteConnection};

use super::api::{
    Backend, Capabilities, Connection, ErrorClass, JournalEntry, RegistryRow, RegistryState,
    SchemaObject, Target,
};
use super::connect::ConnectOptions;
use super::engine::{Engine, Tenancy};
use super::lease::LeaseStore;
use super::sql::{invalid_names, tenant_record, valid_page};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::ctx::exec_sqlite;
use crate::migration::BoxFuture;
use crate::{
    redact_url, AppliedMigration, Error, Result, Tenant, TenantName, TenantRecord, TenantState,
};

mod catalog;
mod connection;
mod storage;

use connection::FileConnection;

/// The control file's name. Tenant names never start with `mtnt`, so no tenant file
/// (`<name>.db`) can collide with it.
const CONTROL_FILE: &str = "mtnt_control.db";

/// How long a statement waits for another connection's write lock, unless a migration's
/// lock timeout says otherwise.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of the control file's pool.
const CONTROL_CONNECTIONS: u32 = 4;

/// An RFC 3339 UTC timestamp with milliseconds, as the tracking rows have them too; sqlx
/// decodes it into `DateTime<Utc>`.
const NOW_SQL: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// The tracking table of one file (the control file's for public migrations, each
/// tenant's own).
const TRACKING_DDL: &str = "CREATE TABLE IF NOT EXISTS mtnt_migrations (
    migration_order INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'started', 'failed', 'completed')),
    started_at TEXT,
    finished_at TEXT,
    duration_ms INTEGER,
    error TEXT,
    run_id TEXT
)";

const SELECT_RECORDS: &str = "SELECT name, schema_name, state, created_at, applied_order, \
    failed_order, last_error FROM mtnt_tenants";

/// SQLite with one database file per tenant, all in one directory: the embedded engine,
/// no server needed.
///
/// The directory holds
///
/// - `mtnt_control.db`, the control file: the tenant registry `mtnt_tenants`, the tracking
///   table of public migrations, and whatever the public migrations create;
/// - `<tenant>.db` for each tenant, with its own tracking table `mtnt_migrations`;
/// - `<tenant>.lock` (and `mtnt_control.lock`): the file whose exclusive OS lock a run
///   holds while it works on the tenant (released by the OS even on `kill -9`).
///
/// Files use WAL journaling, a 5 second busy timeout (a migration's lock timeout where it
/// sets one) and foreign keys. The control file has a small pool; each tenant connection
/// opens its file when it first needs it and closes it when released, so a fleet of
/// thousands of tenants never holds thousands of open files.
///
/// A tenant's tracking table is the truth about its migrations. The registry row's
/// `applied_order`, `failed_order` and `last_error` are a cache, written after the tenant
/// file commits (two files cannot commit atomically) and brought back in line whenever a
/// run reads the tenant's tracking table under its lock.
///
/// Public migrations run in the control file; tenant migrations cannot see its tables
/// (each tenant file is a database of its own).
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    dir: PathBuf,
    control: SqlitePool,
}

impl SqliteBackend {
    /// Opens the directory `dir`. Nothing is created yet: [`Backend::prepare`] creates the
    /// directory and the control file when missing.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let control = SqlitePoolOptions::new()
            .max_connections(CONTROL_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(
                file_options(&dir.join(CONTROL_FILE)).journal_mode(SqliteJournalMode::Wal),
            );
        Ok(Self { dir, control })
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

    /// The file of a tenant, after checking that its stem is a valid tenant name (so that
    /// it cannot hold `/`, `..` or anything else that leaves the directory).
    fn path_of(&self, tenant: &Tenant) -> Result<PathBuf> {
        let stem = TenantName::new(tenant.storage.as_str()).map_err(|e| {
            Error::Corrupt(format!(
                "tenant {} has an invalid file name: {e}",
                tenant.name
            ))
        })?;
        Ok(self.tenant_file(&stem))
    }

    async fn is_registered(&self, tenant: &Tenant) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM mtnt_tenants WHERE name = ?1")
            .bind(tenant.name.as_str())
            .fetch_optional(&self.control)
            .await
            .map_err(|e| in_file(&self.control_file(), e.into()))?;
        Ok(found.is_some())
    }
}

/// Connection options for an existing file: busy timeout, foreign keys, and the journal
/// mode left as the file has it (setting WAL writes the file).
fn file_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
}

/// SQLite's primary result code of a database error (the extended code's low byte).
fn primary_code(db: &dyn DatabaseError) -> Option<i32> {
    db.code()?.parse::<i32>().ok().map(|code| code & 0xff)
}

/// Names the file in an error saying it is no (sound) database, which alone does not
/// say which file ("file is not a database").
fn in_file(path: &Path, error: Error) -> Error {
    match error {
        Error::Sql(sqlx::Error::Database(db)) if matches!(primary_code(&*db), Some(11 | 26)) => {
            let source = std::io::Error::new(std::io::ErrorKind::InvalidData, db.to_string());
            io_error("cannot read the SQLite database", path)(source)
        }
        other => other,
    }
}

/// An I/O error on `path`, for `map_err`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn engine(&self) -> Engine {
        Engine::Sqlite
    }

    fn tenancy(&self) -> Tenancy {
        Tenancy::File
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_transactional_ddl()
    }

    fn classify(&self, error: &Error) -> ErrorClass {
        match super::classify_common(error) {
            Ok(class) => class,
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                ErrorClass::UniqueViolation
            }
            // SQLITE_BUSY and SQLITE_LOCKED: another connection held the file past the
            // busy timeout.
            Err(sqlx::Error::Database(db)) if matches!(primary_code(&**db), Some(5 | 6)) => {
                ErrorClass::Transient
            }
            Err(_) => ErrorClass::Other,
        }
    }

    async fn prepare(&self) -> Result<()> {
        let path = self.control_file();
        if path.is_file() {
            let tables: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
                 AND name IN ('mtnt_tenants', 'mtnt_migrations', 'mtnt_settings')",
            )
            .fetch_one(&self.control)
            .await
            .map_err(|e| in_file(&path, e.into()))?;
            if tables == 3 {
                return Ok(());
            }
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(io_error("cannot create the tenant directory", &self.dir))?;
        let options = file_options(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| in_file(&path, e.into()))?;
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
             CREATE TABLE IF NOT EXISTS mtnt_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT OR IGNORE INTO mtnt_settings (name, value) VALUES ('tenancy', 'file');
             COMMIT"
        );
        // Closing ends a transaction a failure left open.
        let result = exec_sqlite(&mut conn, &sql).await;
        let _ = conn.close().await;
        result.map_err(|e| in_file(&path, e.into()))
    }

    async fn registry_state(&self) -> Result<RegistryState> {
        let path = self.control_file();
        if !path.is_file() {
            // Not even opened: a mistyped directory stays uncreated.
            return Ok(RegistryState::Missing {
                place: format!("directory {}", self.dir.display()),
                other_schemas: Vec::new(),
            });
        }
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name IN ('mtnt_tenants', 'mtnt_settings')",
        )
        .fetch_all(&self.control)
        .await
        .map_err(|e| in_file(&path, e.into()))?;
        if !tables.iter().any(|t| t == "mtnt_tenants") {
            return Ok(RegistryState::Missing {
                place: format!("file {}", path.display()),
                other_schemas: Vec::new(),
            });
        }
        if !tables.iter().any(|t| t == "mtnt_settings") {
            return Ok(RegistryState::Unrecorded);
        }
        let recorded: Option<String> =
            sqlx::query_scalar("SELECT value FROM mtnt_settings WHERE name = 'tenancy'")
                .fetch_optional(&self.control)
                .await?;
        match recorded.as_deref().map(Tenancy::parse) {
            None => Ok(RegistryState::Unrecorded),
            Some(Some(tenancy)) => Ok(RegistryState::Recorded(tenancy)),
            Some(None) => Err(Error::Corrupt(format!(
                "{} records tenancy {:?}",
                path.display(),
                recorded.unwrap_or_default()
            ))),
        }
    }

    async fn tenant_page(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>> {
        let sql =
            format!("{SELECT_RECORDS} WHERE (?1 IS NULL OR name > ?1) ORDER BY name LIMIT ?2");
        valid_page(after, limit, async |after, limit| {
            let rows = sqlx::query(&sql)
                .bind(after)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.control)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        sqlx::Row::try_get::<String, _>(row, "name")?,
                        tenant_record(row)?,
                    ))
                })
                .collect()
        })
        .await
    }

    async fn invalid_registry_rows(&self) -> Result<Vec<Error>> {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM mtnt_tenants")
            .fetch_all(&self.control)
            .await?;
        Ok(invalid_names(
            &format!(
                "mtnt_tenants (in {})",
                self.dir.join("mtnt_control.db").display()
            ),
            names,
        ))
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
        rows.iter()
            .filter_map(|row| tenant_record(row).transpose())
            .collect()
    }

    async fn fingerprints(&self, _names: &[TenantName]) -> Result<Vec<(TenantName, String)>> {
        Ok(Vec::new())
    }

    async fn connection_budget(&self) -> Result<Option<usize>> {
        // Tenant connections are opened per tenant, not taken from a pool.
        Ok(None)
    }

    async fn connect<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Connection + 'a>> {
        let lock_path = match target {
            Target::Public => self.dir.join("mtnt_control.lock"),
            Target::Tenant(tenant) => self.path_of(tenant)?.with_extension("lock"),
        };
        Ok(Box::new(FileConnection::new(self, target, lock_path)))
    }

    async fn register(
        &self,
        tenant: &Tenant,
        state: TenantState,
        applied_order: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO mtnt_tenants (name, schema_name, state, applied_order) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(tenant.name.as_str())
        .bind(&tenant.storage)
        .bind(state.as_str())
        .bind(applied_order)
        .execute(&self.control)
        .await?;
        Ok(())
    }

    async fn set_state(&self, tenant: &Tenant, state: TenantState) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE mtnt_tenants SET state = ?1, updated_at = {NOW_SQL} WHERE name = ?2"
        ))
        .bind(state.as_str())
        .bind(tenant.name.as_str())
        .execute(&self.control)
        .await?;
        Ok(())
    }

    async fn unregister(&self, tenant: &Tenant, only_creating: bool) -> Result<()> {
        sqlx::query("DELETE FROM mtnt_tenants WHERE name = ?1 AND (NOT ?2 OR state = 'creating')")
            .bind(tenant.name.as_str())
            .bind(only_creating)
            .execute(&self.control)
            .await?;
        Ok(())
    }

    async fn write_registry(&self, tenant: &Tenant, row: RegistryRow<'_>) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE mtnt_tenants SET applied_order = ?1, failed_order = ?2, last_error = ?3, \
             updated_at = {NOW_SQL} WHERE name = ?4"
        ))
        .bind(row.applied_order)
        .bind(row.failure.map(|(order, _)| order))
        .bind(row.failure.map(|(_, error)| error))
        .bind(tenant.name.as_str())
        .execute(&self.control)
        .await?;
        Ok(())
    }

    async fn create_storage(&self, tenant: &Tenant) -> Result<()> {
        self.create_file(tenant).await
    }

    async fn drop_storage(&self, tenant: &Tenant) -> Result<()> {
        self.remove_files(tenant)
    }

    async fn unregistered_storage(&self, like: &str) -> Result<Vec<String>> {
        self.unregistered_files(like).await
    }

    async fn describe(&self, tenants: &[Tenant]) -> Result<Vec<Result<Vec<SchemaObject>>>> {
        let mut described = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            described.push(self.describe_file(tenant).await);
        }
        Ok(described)
    }

    async fn journal_write(&self, entry: &JournalEntry, keep: usize) -> Result<()> {
        let sql = "CREATE TABLE IF NOT EXISTS mtnt_journal (kind TEXT NOT NULL, \
             entry_key TEXT NOT NULL, at TEXT NOT NULL, body TEXT NOT NULL, \
             PRIMARY KEY (kind, entry_key));
             INSERT INTO mtnt_journal (kind, entry_key, at, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kind, entry_key) DO UPDATE SET at = excluded.at, body = excluded.body;
             DELETE FROM mtnt_journal WHERE kind = ?1 AND at < (SELECT at FROM mtnt_journal
             WHERE kind = ?1 ORDER BY at DESC LIMIT 1 OFFSET ?5)";
        sqlx::query(sql)
            .bind(&entry.kind)
            .bind(&entry.key)
            .bind(&entry.at)
            .bind(&entry.body)
            .bind(keep.saturating_sub(1) as i64)
            .execute(&self.control)
            .await
            .map_err(|e| in_file(&self.control_file(), e.into()))?;
        Ok(())
    }

    async fn journal_read(&self, kind: &str, limit: usize) -> Result<Vec<JournalEntry>> {
        let kept: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'mtnt_journal'",
        )
        .fetch_optional(&self.control)
        .await?;
        if kept.is_none() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT kind, entry_key, at, body FROM mtnt_journal WHERE kind = ?1 \
             ORDER BY at DESC LIMIT ?2",
        )
        .bind(kind)
        .bind(limit as i64)
        .fetch_all(&self.control)
        .await?;
        Ok(rows.into_iter().map(JournalEntry::from).collect())
    }

    fn leases(&self) -> Option<Arc<dyn LeaseStore>> {
        None
    }

    async fn run_rows(
        &self,
        run_id: &str,
        tenants: &[Tenant],
        concurrency: usize,
    ) -> Result<Vec<(TenantName, AppliedMigration)>> {
        // A file per tenant: one connection each, `concurrency` at a time.
        let reads: Vec<BoxFuture<'_, Result<Vec<(TenantName, AppliedMigration)>>>> = tenants
            .iter()
            .map(|tenant| Box::pin(self.run_rows_in(tenant, run_id)) as BoxFuture<'_, _>)
            .collect();
        let per_tenant: Vec<_> = stream::iter(reads)
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
        Ok(per_tenant.into_iter().flatten().collect())
    }

    async fn tenant_sizes(&self, tenants: &[Tenant]) -> Result<Vec<(TenantName, u64)>> {
        let mut sizes = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            if let Some(bytes) = self.file_size(tenant)? {
                sizes.push((tenant.name.clone(), bytes));
            }
        }
        Ok(sizes)
    }
}

/// Opens the backend of a `sqlite:` URL, which names the tenant directory.
pub(super) async fn connect(url: &str, options: &ConnectOptions) -> Result<Box<dyn Backend>> {
    let bad_url = |reason: String| Error::BadUrl {
        url: redact_url(url),
        reason,
    };
    match options.tenancy {
        None | Some(Tenancy::File) => {}
        Some(other) => return Err(bad_url(format!(
            "tenancy {other:?} is not supported on SQLite, which keeps one file per tenant; use file"
        ))),
    }
    let dir = sqlite_dir(url).map_err(bad_url)?;
    Ok(Box::new(SqliteBackend::open(dir).await?))
}

/// The directory a `sqlite:` URL names: `sqlite://./dir/`, `sqlite:///abs/dir` or `sqlite:dir`.
fn sqlite_dir(url: &str) -> std::result::Result<PathBuf, String> {
    let rest = url.strip_prefix("sqlite:").unwrap_or(url);
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.contains('?') || path.contains('#') {
        return Err("SQLite URLs take no parameters here; name the tenant directory only, as in sqlite://./tenants/".to_owned());
    }
    if path.is_empty() || path.starts_with(':') {
        return Err("name the directory that holds the tenant files, as in sqlite://./tenants/ (in-memory databases cannot hold a file per tenant)".to_owned());
    }
    let dir = PathBuf::from(path);
    let looks_like_file = dir
        .extension()
        .is_some_and(|e| e == "db" || e == "sqlite" || e == "sqlite3");
    if dir.is_file() || (looks_like_file && !dir.is_dir()) {
        return Err(format!(
            "{path} looks like a database file, but mtnt keeps one file per tenant in a directory; name the directory, as in sqlite://./tenants/"
        ));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::sqlite_dir;
    use std::path::PathBuf;

    #[test]
    fn sqlite_urls_name_directories() {
        assert_eq!(
            sqlite_dir("sqlite://./tenants/"),
            Ok(PathBuf::from("./tenants/"))
        );
        assert_eq!(
            sqlite_dir("sqlite:///abs/dir"),
            Ok(PathBuf::from("/abs/dir"))
        );
        assert_eq!(sqlite_dir("sqlite:tenants"), Ok(PathBuf::from("tenants")));
        assert!(sqlite_dir("sqlite::memory:").is_err());
        assert!(sqlite_dir("sqlite://").is_err());
        assert!(sqlite_dir("sqlite://./app.db").is_err());
        assert!(sqlite_dir("sqlite://./t?mode=rwc").is_err());
    }
}
