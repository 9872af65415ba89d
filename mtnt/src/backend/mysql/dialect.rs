//! MySQL's SQL for mtnt's bookkeeping: literals, the tracking table, rows, error numbers,
//! and the statements of each [`Record`].

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlDatabaseError, MySqlRow};
use sqlx::Row;

use crate::backend::{Direction, ErrorClass, Record, Timing};
use crate::{AppliedMigration, Error, Migration, MigrationStatus, Result, Tenant};

/// The current time in UTC with microseconds, whatever the session's `time_zone`.
pub(super) const NOW: &str = "UTC_TIMESTAMP(6)";

/// The longest error text stored in a tracking or registry row.
const MAX_ERROR_BYTES: usize = 60_000;

/// `ER_DUP_ENTRY`.
const ER_DUP_ENTRY: u16 = 1062;
/// `ER_DB_CREATE_EXISTS`.
const ER_DB_CREATE_EXISTS: u16 = 1007;
/// `ER_BAD_DB_ERROR`: unknown database.
pub(super) const ER_BAD_DB_ERROR: u16 = 1049;
/// `ER_NO_SUCH_TABLE`.
pub(super) const ER_NO_SUCH_TABLE: u16 = 1146;
/// `ER_BAD_FIELD_ERROR`: unknown column.
pub(super) const ER_BAD_FIELD_ERROR: u16 = 1054;

/// `ER_CON_COUNT_ERROR`: too many connections.
const ER_CON_COUNT_ERROR: u16 = 1040;

/// Error numbers worth another try.
const TRANSIENT: [u16; 4] = [
    1205, // lock wait timeout
    1213, // deadlock
    2006, // server has gone away
    2013, // lost connection during query
];

/// The server's error number of a database error.
pub(super) fn error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// What kind of failure `error` is, by its sqlx kind or the server's error number.
pub(super) fn classify(error: &Error) -> ErrorClass {
    let sql = match super::super::classify_common(error) {
        Ok(class) => return class,
        Err(sql) => sql,
    };
    match error_number(sql) {
        Some(ER_DUP_ENTRY) => ErrorClass::UniqueViolation,
        Some(ER_DB_CREATE_EXISTS) => ErrorClass::StorageExists,
        Some(ER_BAD_DB_ERROR) => ErrorClass::StorageMissing,
        Some(ER_CON_COUNT_ERROR) => ErrorClass::TooManyConnections,
        Some(n) if TRANSIENT.contains(&n) => ErrorClass::Transient,
        _ => ErrorClass::Other,
    }
}

/// A string literal for mtnt's own multi-statement SQL, which has no placeholders: hex
/// with a character set introducer, so that no `sql_mode` (`NO_BACKSLASH_ESCAPES`) or
/// content can change how it reads.
pub(super) fn text_literal(value: &str) -> String {
    if value.is_empty() {
        return "''".to_owned();
    }
    let mut literal = String::with_capacity(12 + 2 * value.len());
    literal.push_str("_utf8mb4 X'");
    for byte in value.bytes() {
        literal.push_str(&format!("{byte:02X}"));
    }
    literal.push('\'');
    literal
}

/// The literal of an error text to store, cut at a character boundary below
/// [`MAX_ERROR_BYTES`].
fn error_literal(message: &str) -> String {
    if message.len() <= MAX_ERROR_BYTES {
        return text_literal(message);
    }
    let mut cut = MAX_ERROR_BYTES;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    text_literal(&format!("{} [...]", &message[..cut]))
}

/// `UTC_TIMESTAMP(6)` less `ago`.
fn before_now(ago: Duration) -> String {
    format!("{NOW} - INTERVAL {} MICROSECOND", ago.as_micros())
}

/// The tracking table of one database.
pub(super) fn tracking_ddl(db_q: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db_q}.mtnt_migrations (
            migration_order BIGINT NOT NULL PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            checksum VARCHAR(255) NOT NULL,
            status VARCHAR(16) NOT NULL CHECK (status IN ('pending', 'started', 'failed', 'completed')),
            started_at DATETIME(6) NULL,
            finished_at DATETIME(6) NULL,
            duration_ms BIGINT NULL,
            error MEDIUMTEXT NULL,
            run_id VARCHAR(64) NULL
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
    )
}

/// Adds the `run_id` column to a tracking table made before it (MySQL has no `ADD
/// COLUMN IF NOT EXISTS`: sent only when a read found it missing).
pub(super) fn add_run_column(db_q: &str) -> String {
    format!("ALTER TABLE {db_q}.mtnt_migrations ADD COLUMN run_id VARCHAR(64) NULL")
}

/// A statement that fails with `ER_BAD_FIELD_ERROR` when the tracking table has no
/// `run_id` column, and returns nothing otherwise.
pub(super) fn probe_run_column(db_q: &str) -> String {
    format!("SELECT run_id FROM {db_q}.mtnt_migrations LIMIT 0")
}

/// The query of a database's tracking rows, by order.
pub(super) fn select_tracking(db_q: &str) -> String {
    format!(
        "SELECT migration_order, name, checksum, status, started_at, finished_at, duration_ms, error \
         FROM {db_q}.mtnt_migrations ORDER BY migration_order"
    )
}

/// A text column, read as bytes: columns with a binary collation (`utf8mb4_bin`, which
/// the registry uses so that names sort like Rust strings) carry the protocol's binary
/// flag, which sqlx will not decode into `String`.
pub(super) fn text(row: &MySqlRow, column: &str) -> Result<String> {
    opt_text(row, column)?.ok_or_else(|| Error::Corrupt(format!("column {column} is NULL")))
}

pub(super) fn opt_text(row: &MySqlRow, column: &str) -> Result<Option<String>> {
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    bytes
        .map(|b| {
            String::from_utf8(b)
                .map_err(|e| Error::Corrupt(format!("column {column} is not UTF-8: {e}")))
        })
        .transpose()
}

/// One row of [`select_tracking`].
pub(super) fn applied_from_row(row: &MySqlRow) -> Result<AppliedMigration> {
    Ok(AppliedMigration {
        order: row.try_get("migration_order")?,
        name: text(row, "name")?,
        checksum: text(row, "checksum")?,
        status: MigrationStatus::parse(&text(row, "status")?)?,
        started_at: row.try_get::<Option<DateTime<Utc>>, _>("started_at")?,
        finished_at: row.try_get::<Option<DateTime<Utc>>, _>("finished_at")?,
        duration_ms: row.try_get("duration_ms")?,
        error: opt_text(row, "error")?,
    })
}

/// Where one target's bookkeeping lives: its database's tracking table and, for a
/// tenant, its registry row in the control database.
pub(super) struct Books<'a> {
    /// The target's database, quoted.
    pub(super) db_q: &'a str,
    /// The registry table, qualified.
    pub(super) registry: &'a str,
    /// The tenant, unless the target is the public one.
    pub(super) tenant: Option<&'a Tenant>,
    /// The fleet run whose id the rows written carry, as a literal.
    pub(super) run: Option<&'a str>,
}

impl Books<'_> {
    fn table(&self) -> String {
        format!("{}.mtnt_migrations", self.db_q)
    }

    /// An insert of `migration`'s row with `status` and these SQL expressions for start,
    /// end, duration and error, up to `ON DUPLICATE KEY UPDATE `.
    fn insert(&self, migration: &Migration, status: MigrationStatus, values: [&str; 4]) -> String {
        let [started, finished, duration, error] = values;
        let (run_column, run) = match self.run {
            Some(run) => (", run_id", format!(", {run}")),
            None => ("", String::new()),
        };
        format!(
            "INSERT INTO {} (migration_order, name, checksum, status, started_at, finished_at, duration_ms, error{run_column}) \
             VALUES ({}, {}, {}, '{}', {started}, {finished}, {duration}, {error}{run}) ON DUPLICATE KEY UPDATE ",
            self.table(),
            migration.order(),
            text_literal(migration.name()),
            text_literal(migration.checksum()),
            status.as_str(),
        )
    }

    /// `, run_id = <the run>`, when a run is set.
    fn run_set(&self) -> String {
        self.run
            .map_or(String::new(), |run| format!(", run_id = {run}"))
    }

    /// An upsert that overwrites every column of the row.
    fn upsert(&self, migration: &Migration, status: MigrationStatus, values: [&str; 4]) -> String {
        let [started, finished, duration, error] = values;
        format!(
            "{}name = {}, checksum = {}, status = '{}', started_at = {started}, finished_at = {finished}, \
             duration_ms = {duration}, error = {error}{}",
            self.insert(migration, status, values),
            text_literal(migration.name()),
            text_literal(migration.checksum()),
            status.as_str(),
            self.run_set(),
        )
    }

    fn update(&self, order: i64, set: &str) -> String {
        format!(
            "UPDATE {} SET {set}{} WHERE migration_order = {order}",
            self.table(),
            self.run_set(),
        )
    }

    fn tenant(&self) -> Result<&Tenant> {
        self.tenant.ok_or_else(|| {
            Error::Invalid("a registry record was written for the public target".to_owned())
        })
    }

    /// The update of the tenant's registry row that sets `set` and the newest completed
    /// order, computed from the tracking table in the same transaction.
    fn registry_update(&self, set: &str) -> Result<String> {
        Ok(format!(
            "UPDATE {} SET applied_order = (SELECT max(migration_order) FROM {} WHERE status = 'completed'){set}, \
             updated_at = {NOW} WHERE name = {}",
            self.registry,
            self.table(),
            text_literal(self.tenant()?.name.as_str())
        ))
    }

    /// Appends the statements of `record` to `sql`; its times are measured on the client
    /// before `now` (one for every record of a write) and placed relative to the server's
    /// clock.
    pub(super) fn record(
        &self,
        record: &Record<'_>,
        now: Instant,
        sql: &mut Vec<String>,
    ) -> Result<()> {
        let times = |timing: &Timing| {
            let (started_ago, finished_ago) = timing.ago(now);
            let duration = timing.duration().as_millis().to_string();
            (before_now(started_ago), before_now(finished_ago), duration)
        };
        match *record {
            Record::Started { migration, direction: Direction::Up } => sql.push(self.upsert(
                migration,
                MigrationStatus::Started,
                [NOW, "NULL", "NULL", "NULL"],
            )),
            Record::Started { migration, direction: Direction::Down } => sql.push(self.update(
                migration.order(),
                &format!("status = 'started', started_at = {NOW}, finished_at = NULL, duration_ms = NULL, error = NULL"),
            )),
            Record::Finished { migration, direction: Direction::Up, timing } => {
                // A `started` row keeps its start: when its attempt was recorded.
                let (started, finished, duration) = times(&timing);
                sql.push(format!(
                    "{}status = 'completed', finished_at = {finished}, duration_ms = {duration}, error = NULL{}",
                    self.insert(migration, MigrationStatus::Completed, [&started, &finished, &duration, "NULL"]),
                    self.run_set(),
                ));
            }
            Record::Finished { migration, direction: Direction::Down, timing } => {
                let (_, finished, duration) = times(&timing);
                sql.push(self.update(
                    migration.order(),
                    &format!("status = 'pending', finished_at = {finished}, duration_ms = {duration}, error = NULL"),
                ));
            }
            Record::Failed { migration, status, error, timing } => {
                // An existing row keeps its name, checksum and start; a completed one is
                // left alone. `status` is assigned last: the conditions read it as it was.
                let (started, finished, _) = times(&timing);
                let error = error_literal(error);
                let run = self.run.map_or(String::new(), |run| {
                    format!("run_id = IF(status = 'completed', run_id, {run}), ")
                });
                sql.push(format!(
                    "{}finished_at = IF(status = 'completed', finished_at, {finished}), \
                     error = IF(status = 'completed', error, {error}), {run}\
                     status = IF(status = 'completed', status, '{}')",
                    self.insert(migration, status, [&started, &finished, "NULL", &error]),
                    status.as_str(),
                ));
            }
            Record::Marked { migration, status } => {
                sql.push(self.upsert(migration, status, [NOW, NOW, "0", "NULL"]))
            }
            Record::Checksum { order, checksum } => sql.push(
                self.update(order, &format!("checksum = {}", text_literal(checksum))),
            ),
            Record::Registry { clear_failure } => sql.push(self.registry_update(if clear_failure {
                ", failed_order = NULL, last_error = NULL"
            } else {
                ""
            })?),
            Record::RegistryFailure { order, error } => sql.push(self.registry_update(&format!(
                ", failed_order = {order}, last_error = {}",
                error_literal(error)
            ))?),
            Record::Register { state } => {
                let tenant = self.tenant()?;
                sql.push(format!(
                    "INSERT INTO {} (name, schema_name, state, created_at, updated_at) VALUES ({}, {}, '{}', {NOW}, {NOW})",
                    self.registry,
                    text_literal(tenant.name.as_str()),
                    text_literal(&tenant.storage),
                    state.as_str()
                ));
            }
            Record::State { state } => sql.push(format!(
                "UPDATE {} SET state = '{}', updated_at = {NOW} WHERE name = {}",
                self.registry,
                state.as_str(),
                text_literal(self.tenant()?.name.as_str())
            )),
            // DDL: MySQL commits these at once, whatever transaction they are sent in.
            Record::CreateStorage => {
                self.tenant()?;
                sql.push(format!("CREATE DATABASE {} CHARACTER SET utf8mb4", self.db_q));
                sql.push(tracking_ddl(self.db_q));
            }
            Record::DropTenant => {
                let name = text_literal(self.tenant()?.name.as_str());
                sql.push(format!("DROP DATABASE IF EXISTS {}", self.db_q));
                sql.push(format!("DELETE FROM {} WHERE name = {name}", self.registry));
            }
            Record::TakeStorage { .. } => {
                return Err(Error::Invalid(
                    "mtnt bug: a spare storage taken on MySQL, which renames no database"
                        .to_owned(),
                ))
            }
        }
        Ok(())
    }
}
