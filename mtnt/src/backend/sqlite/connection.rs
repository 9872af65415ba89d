//! One SQLite target's connection: its file lock, its tracking rows, and the
//! transactions migrations run in.

use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection as _, Row, Sqlite, SqliteConnection};

use super::{
    file_options, in_file, io_error, SqliteBackend, BUSY_TIMEOUT, TEMPLATE_STORAGE, TRACKING_DDL,
};
use crate::backend::api::{
    Connection, Direction, MigrationTimeouts, Record, Target, TargetState, Timing,
};
use crate::backend::sql::quote_literal;
use crate::ctx::{exec_sqlite, CtxConn};
use crate::{AppliedMigration, Ctx, Error, Migration, MigrationStatus, Result};

pub(super) const TRACKING_COLUMNS: &str =
    "migration_order, name, checksum, status, started_at, finished_at, duration_ms, error";

/// The connection a [`FileConnection`] runs on: pooled for the control file, its own
/// for a tenant file.
enum Conn {
    Pooled(PoolConnection<Sqlite>),
    Owned(SqliteConnection),
}

impl Conn {
    fn raw(&mut self) -> &mut SqliteConnection {
        match self {
            Conn::Pooled(conn) => conn,
            Conn::Owned(conn) => conn,
        }
    }
}

/// One target's connection: the file lock, and the SQLite connection, opened when first
/// needed (taking the lock opens no database file, so `tenant drop` never has one open).
pub(super) struct FileConnection<'a> {
    backend: &'a SqliteBackend,
    target: Target<'a>,
    lock_path: PathBuf,
    conn: Option<Conn>,
    /// The lock file while its exclusive lock is held; closing it releases the lock.
    lock: Option<File>,
    /// Whether a transaction may be open (set before it is sent).
    in_transaction: bool,
    /// Whether the file was put in WAL mode (on the first write, which may change it).
    wal: bool,
    /// The connection's busy timeout.
    busy: Duration,
    discarded: bool,
    /// The fleet run whose id the rows written carry, as a literal.
    run: Option<String>,
}

impl<'a> FileConnection<'a> {
    pub(super) fn new(backend: &'a SqliteBackend, target: Target<'a>, lock_path: PathBuf) -> Self {
        Self {
            backend,
            target,
            lock_path,
            conn: None,
            lock: None,
            in_transaction: false,
            // The control file is made in WAL mode; a tenant file may come from elsewhere.
            wal: matches!(target, Target::Public),
            busy: BUSY_TIMEOUT,
            discarded: false,
            run: None,
        }
    }

    fn file(&self) -> PathBuf {
        match self.target {
            Target::Public => self.backend.control_file(),
            Target::Tenant(_) => self.lock_path.with_extension("db"),
        }
    }

    /// The SQLite connection, opened if need be. A registered tenant's missing file is an
    /// error, never created: SQLite would start an empty file and migrate it from scratch.
    async fn open(&mut self) -> Result<&mut SqliteConnection> {
        if self.discarded {
            return Err(Error::Invalid(format!(
                "the connection to {} was closed after an error",
                self.target
            )));
        }
        if self.conn.is_none() {
            let conn = match self.target {
                Target::Public => Conn::Pooled(self.backend.control.acquire().await?),
                Target::Tenant(tenant) => {
                    let path = self.file();
                    if !path.is_file() {
                        return Err(Error::StorageMissing {
                            tenant: tenant.name.clone(),
                            storage: path.display().to_string(),
                        });
                    }
                    let conn = SqliteConnection::connect_with(&file_options(&path)).await;
                    Conn::Owned(conn.map_err(|e| in_file(&path, e.into()))?)
                }
            };
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().map(Conn::raw).expect("opened above"))
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        let path = self.file();
        let conn = self.open().await?;
        exec_sqlite(conn, sql)
            .await
            .map_err(|e| in_file(&path, e.into()))
    }

    /// What opens a transaction for running migrations with `timeouts` (`None`: keep
    /// the connection's): settings first, then BEGIN IMMEDIATE (which takes the write
    /// lock now instead of failing at the first write when another connection holds it),
    /// and the tracking table where it is missing.
    fn begin_sql(&mut self, timeouts: Option<MigrationTimeouts>, sql: &mut String) {
        if !self.wal {
            sql.push_str("PRAGMA journal_mode = WAL;");
            self.wal = true;
        }
        if let Some(timeouts) = timeouts {
            self.busy_sql(timeouts, sql);
        }
        write!(sql, "BEGIN IMMEDIATE; {TRACKING_DDL};").unwrap_or_default();
    }

    /// The lock timeout is SQLite's busy timeout; SQLite has no statement timeout. Without
    /// one the connection keeps its default, as other engines keep their server's: a
    /// busy timeout without end would let one writer of the application stall the run.
    fn busy_sql(&mut self, timeouts: MigrationTimeouts, sql: &mut String) {
        let busy = timeouts.lock.unwrap_or(BUSY_TIMEOUT);
        if busy != self.busy {
            let ms = busy.as_millis().min(i32::MAX as u128);
            write!(sql, "PRAGMA busy_timeout = {ms};").unwrap_or_default();
            self.busy = busy;
        }
    }
}

#[async_trait]
impl Connection for FileConnection<'_> {
    async fn try_lock(&mut self) -> Result<bool> {
        if self.lock.is_some() {
            return Ok(true);
        }
        // SQLite's own locks last one transaction, while a run must keep a target from its
        // plan to its last migration.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(io_error("cannot open the lock file", &self.lock_path))?;
        match file.try_lock() {
            Ok(()) => {
                self.lock = Some(file);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(io_error("cannot lock", &self.lock_path)(e))
            }
        }
    }

    async fn read(&mut self) -> Result<TargetState> {
        if let Target::Tenant(tenant) = self.target {
            // Nothing acts on the rows of a tenant that is not registered (any more); the
            // template never is.
            if tenant.storage != TEMPLATE_STORAGE && !self.backend.is_registered(tenant).await? {
                return Ok(TargetState::default());
            }
        }
        let path = self.file();
        let may_alter = self.run.is_some() && self.lock.is_some();
        let conn = self.open().await?;
        let named = |e: sqlx::Error| in_file(&path, e.into());
        // A file without a tracking table has no rows; it is created with the first write.
        let (tables, run_columns): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'mtnt_migrations'), \
             (SELECT count(*) FROM pragma_table_info('mtnt_migrations') WHERE name = 'run_id')",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(named)?;
        if tables > 0 && run_columns == 0 && may_alter {
            // A table made before run ids: once, under the target's lock, the column the
            // rows this run writes carry its id in.
            exec_sqlite(conn, "ALTER TABLE mtnt_migrations ADD COLUMN run_id TEXT")
                .await
                .map_err(named)?;
        }
        let rows = if tables == 0 {
            Vec::new()
        } else {
            sqlx::query(&format!(
                "SELECT {TRACKING_COLUMNS} FROM mtnt_migrations ORDER BY migration_order"
            ))
            .fetch_all(&mut *conn)
            .await
            .map_err(named)?
        };
        Ok(TargetState {
            applied: rows.iter().map(applied_from_row).collect::<Result<_>>()?,
            registered: true,
        })
    }

    async fn try_lock_and_read(&mut self) -> Result<Option<TargetState>> {
        if !self.try_lock().await? {
            return Ok(None);
        }
        self.read().await.map(Some)
    }

    async fn begin(&mut self, timeouts: MigrationTimeouts) -> Result<()> {
        let mut sql = String::new();
        self.begin_sql(Some(timeouts), &mut sql);
        self.in_transaction = true;
        self.exec(&sql).await
    }

    async fn set_timeouts(&mut self, timeouts: MigrationTimeouts) -> Result<()> {
        let mut sql = String::new();
        self.busy_sql(timeouts, &mut sql);
        if sql.is_empty() {
            return Ok(());
        }
        self.exec(&sql).await
    }

    async fn enter_autocommit(&mut self, timeouts: MigrationTimeouts) -> Result<()> {
        // The tracking table exists: the `started` record committed before this.
        self.set_timeouts(timeouts).await?;
        self.open().await.map(drop)
    }

    async fn leave_autocommit(&mut self) -> Result<()> {
        // The busy timeout stays until the next migration sets its own.
        Ok(())
    }

    async fn write(&mut self, records: &[Record<'_>]) -> Result<()> {
        let mut sql = String::new();
        render(records, self.run.as_deref(), &mut sql)?;
        self.exec(&sql).await
    }

    async fn commit(
        &mut self,
        records: &[Record<'_>],
        then: Option<MigrationTimeouts>,
    ) -> Result<()> {
        // One string: the opening of a transaction when none is open, the records, COMMIT,
        // and the next transaction's opening.
        let mut sql = String::new();
        if !self.in_transaction {
            if records.is_empty() && then.is_none() {
                return Ok(());
            }
            self.begin_sql(None, &mut sql);
        }
        render(records, self.run.as_deref(), &mut sql)?;
        sql.push_str("COMMIT;");
        if then.is_some() {
            self.begin_sql(then, &mut sql);
        }
        self.in_transaction = true;
        self.exec(&sql).await?;
        self.in_transaction = then.is_some();
        Ok(())
    }

    async fn rollback(&mut self) {
        self.in_transaction = false;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        // Sent even when no transaction is known: a migration outside one may have left
        // its own open. A database error means there was none.
        match exec_sqlite(conn.raw(), "ROLLBACK").await {
            Ok(()) | Err(sqlx::Error::Database(_)) => {}
            Err(_) => self.discard(),
        }
    }

    fn discard(&mut self) {
        if let Some(Conn::Pooled(conn)) = &mut self.conn {
            conn.close_on_drop();
        }
        self.conn = None;
        self.lock = None;
        self.discarded = true;
    }

    fn ctx(&mut self) -> Ctx<'_> {
        let conn = self
            .conn
            .as_mut()
            .expect("a migration runs after begin or enter_autocommit opened the connection");
        Ctx::new(self.target.tenant(), CtxConn::Sqlite(conn.raw()))
    }

    fn set_run(&mut self, run_id: &str) {
        self.run = Some(quote_literal(run_id));
    }

    async fn release(mut self: Box<Self>) {
        match self.conn.take() {
            Some(Conn::Owned(conn)) => {
                // Closed before the lock is released, so that the next holder never meets
                // this connection's transaction or checkpoint.
                let _ = conn.close().await;
            }
            Some(Conn::Pooled(mut conn)) => {
                let reset = format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis());
                let clean = !self.in_transaction
                    && (self.busy == BUSY_TIMEOUT || exec_sqlite(&mut conn, &reset).await.is_ok());
                if !clean {
                    conn.close_on_drop();
                }
            }
            None => {}
        }
        self.lock = None;
    }
}

impl Drop for FileConnection<'_> {
    fn drop(&mut self) {
        // Not released (a cancelled run): a pooled connection may be inside a transaction.
        if let Some(Conn::Pooled(conn)) = &mut self.conn {
            conn.close_on_drop();
        }
    }
}

/// An RFC 3339 UTC timestamp with milliseconds, as an SQL literal.
fn timestamp(t: DateTime<Utc>) -> String {
    quote_literal(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The start, end and duration (ms) of `timing`, as SQL literals; `now` is one clock
/// reading for all records of a commit, so that their times keep their order.
fn times(now: (DateTime<Utc>, Instant), timing: &Timing) -> [String; 3] {
    let at = |t: Instant| {
        let ago = now.1.saturating_duration_since(t);
        timestamp(now.0 - chrono::Duration::from_std(ago).unwrap_or_default())
    };
    let ms = timing.duration().as_millis().to_string();
    [at(timing.started), at(timing.finished), ms]
}

pub(super) fn applied_from_row(row: &SqliteRow) -> Result<AppliedMigration> {
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

/// A tracking row of `m` as SQL values: `times` are start, end and duration, `error`
/// a literal, and the run's id (a literal) last where a run is set.
fn row(
    m: &Migration,
    status: MigrationStatus,
    times: [String; 3],
    error: &str,
    run: Option<&str>,
) -> String {
    let [started, finished, ms] = times;
    let (name, checksum) = (quote_literal(m.name()), quote_literal(m.checksum()));
    let (order, status) = (m.order(), status.as_str());
    let run = run.map_or(String::new(), |r| format!(", {r}"));
    format!("({order}, {name}, {checksum}, '{status}', {started}, {finished}, {ms}, {error}{run})")
}

/// The columns of [`row`].
fn columns(run: Option<&str>) -> String {
    match run {
        Some(_) => format!("{TRACKING_COLUMNS}, run_id"),
        None => TRACKING_COLUMNS.to_owned(),
    }
}

/// `, run_id = excluded.run_id` where a run is set.
fn run_excluded(run: Option<&str>) -> &'static str {
    if run.is_some() {
        ", run_id = excluded.run_id"
    } else {
        ""
    }
}

/// Down, a row keeps its name and checksum (the applied code's).
fn update(m: &Migration, status: MigrationStatus, times: [String; 3], run: Option<&str>) -> String {
    let [started, finished, ms] = times;
    let (order, status) = (m.order(), status.as_str());
    let run = run.map_or(String::new(), |r| format!(", run_id = {r}"));
    format!(
        "UPDATE mtnt_migrations SET status = '{status}', started_at = {started}, \
         finished_at = {finished}, duration_ms = {ms}, error = NULL{run} \
         WHERE migration_order = {order};"
    )
}

/// `records` as SQL statements, appended to `sql`. The rows a record writes whole
/// (started and finished up, marked) go in one multi-row upsert.
fn render(records: &[Record<'_>], run: Option<&str>, sql: &mut String) -> Result<()> {
    use MigrationStatus::{Completed, Pending, Started};
    let now = (Utc::now(), Instant::now());
    let fresh = || [timestamp(now.0), "NULL".to_owned(), "NULL".to_owned()];
    let mut rows = Vec::new();
    for record in records {
        let statement = match *record {
            Record::Started {
                migration,
                direction,
            } => match direction {
                Direction::Up => {
                    rows.push(row(migration, Started, fresh(), "NULL", run));
                    continue;
                }
                Direction::Down => update(migration, Started, fresh(), run),
            },
            Record::Finished {
                migration,
                direction,
                timing,
            } => match direction {
                Direction::Up => {
                    rows.push(row(migration, Completed, times(now, &timing), "NULL", run));
                    continue;
                }
                Direction::Down => update(migration, Pending, times(now, &timing), run),
            },
            Record::Marked { migration, status } => {
                let marked = [timestamp(now.0), timestamp(now.0), "0".to_owned()];
                rows.push(row(migration, status, marked, "NULL", run));
                continue;
            }
            // A failure keeps an existing row's name, checksum and start, and never
            // overwrites a completed row.
            Record::Failed {
                migration,
                status,
                error,
                timing,
            } => {
                let [started, finished, _] = times(now, &timing);
                let times = [started, finished, "NULL".to_owned()];
                let values = row(migration, status, times, &quote_literal(error), run);
                format!(
                    "INSERT INTO mtnt_migrations ({}) VALUES {values} \
                     ON CONFLICT (migration_order) DO UPDATE SET status = excluded.status, \
                     finished_at = excluded.finished_at, error = excluded.error{} \
                     WHERE mtnt_migrations.status <> 'completed';",
                    columns(run),
                    run_excluded(run),
                )
            }
            Record::Checksum { order, checksum } => format!(
                "UPDATE mtnt_migrations SET checksum = {} WHERE migration_order = {order};",
                quote_literal(checksum)
            ),
            other => {
                return Err(Error::Invalid(format!(
                    "SQLite keeps the registry and the storage outside a tenant's \
                     transaction; it cannot write {other:?} in one"
                )))
            }
        };
        sql.push_str(&statement);
    }
    if !rows.is_empty() {
        let _ = write!(
            sql,
            "INSERT INTO mtnt_migrations ({}) VALUES {} \
             ON CONFLICT (migration_order) DO UPDATE SET name = excluded.name, \
             checksum = excluded.checksum, status = excluded.status, \
             started_at = excluded.started_at, finished_at = excluded.finished_at, \
             duration_ms = excluded.duration_ms, error = NULL{};",
            columns(run),
            rows.join(", "),
            run_excluded(run),
        );
    }
    Ok(())
}
