//! Where PostgreSQL keeps a target's tracking rows, and the SQL of the bookkeeping
//! [`Record`]s a connection writes: tracking rows, and the registry row where it is in
//! the target's database.
//!
//! Schema per tenant keeps every tenant's rows in one shared table of the control schema,
//! `mtnt_tenant_migrations`, keyed on (tenant, order): a tracking table in each tenant
//! schema would add a table, its TOAST table and two indexes (four files and their
//! catalog rows) to every tenant, about a quarter of the server's work of migrating a
//! new tenant. The public migrations, and each tenant database of database per tenant,
//! have a `mtnt_migrations` table of their own.

use std::time::{Duration, Instant};

use super::super::sql::quote_ident;
use super::{literal, OWN_BOOKKEEPING};
use crate::backend::{Direction, Record, Timing};
use crate::{Error, Migration, MigrationStatus, Result, Tenant};

/// The columns of a tracking row, in the order the reads return them.
pub(super) const COLUMNS: &str =
    "migration_order, name, checksum, status, started_at, finished_at, duration_ms, error";

/// The columns and checks a tracking row has wherever it is kept.
const ROW_DDL: &str = "migration_order bigint NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'started', 'failed', 'completed')),
    started_at timestamptz,
    finished_at timestamptz,
    duration_ms bigint,
    error text,
    run_id text";

/// Adds the `run_id` column to a tracking table made before it (idempotent).
pub(super) fn add_run_column(table: &str) -> String {
    format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS run_id text")
}

/// The tracking rows of one target.
#[derive(Clone, Debug)]
pub(super) struct Tracking {
    /// The qualified table.
    table: String,
    /// The tenant's name as a literal, when the table is shared by all tenants.
    tenant: Option<String>,
    /// The run id its writes record, as a literal.
    run: Option<String>,
}

/// `statement_timestamp()` moved back by `ago`: a moment the client measured. The
/// reference is one for every statement of a batch (the moment the server received it),
/// measured against one client instant, so the rows of one write keep their order.
fn ago(ago: Duration) -> String {
    format!(
        "statement_timestamp() - interval '{} microseconds'",
        ago.as_micros()
    )
}

impl Tracking {
    /// The table `schema_q.mtnt_migrations`, of one target alone.
    pub(super) fn own(schema_q: &str) -> Self {
        Self {
            table: format!("{schema_q}.mtnt_migrations"),
            tenant: None,
            run: None,
        }
    }

    /// The rows of `tenant` in the shared table of the control schema `control_q`.
    pub(super) fn shared(control_q: &str, tenant: &str) -> Self {
        Self {
            table: shared_table(control_q),
            tenant: Some(literal(tenant)),
            run: None,
        }
    }

    /// The fleet run whose id every row written from now on carries.
    pub(super) fn set_run(&mut self, run_id: &str) {
        self.run = Some(literal(run_id));
    }

    /// The qualified table.
    pub(super) fn table(&self) -> &str {
        &self.table
    }

    /// `, run_id = excluded.run_id` for an upsert, when a run is set.
    fn run_excluded(&self) -> &'static str {
        if self.run.is_some() {
            ", run_id = excluded.run_id"
        } else {
            ""
        }
    }

    /// `, run_id = <the run>` for an update, when a run is set.
    fn run_assignment(&self) -> String {
        self.run
            .as_ref()
            .map_or(String::new(), |r| format!(", run_id = {r}"))
    }

    /// Creates the table of [`Tracking::own`] if it is missing.
    pub(super) fn own_ddl(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({ROW_DDL}, PRIMARY KEY (migration_order))",
            self.table
        )
    }

    /// `WHERE` with the tenant's key and `condition`.
    fn filter(&self, condition: &str) -> String {
        match (&self.tenant, condition.is_empty()) {
            (Some(t), true) => format!("WHERE tenant = {t}"),
            (Some(t), false) => format!("WHERE tenant = {t} AND {condition}"),
            (None, true) => String::new(),
            (None, false) => format!("WHERE {condition}"),
        }
    }

    /// Every row, by order, each with a first column `has_run_id` (whether the table has
    /// the `run_id` column yet); a single row with only that set when there are none.
    pub(super) fn select_applied(&self) -> String {
        format!(
            "SELECT s.has_run_id, m.* FROM (SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass({table_l}) \
             AND attname = 'run_id' AND NOT attisdropped) AS has_run_id) AS s \
             LEFT JOIN (SELECT {COLUMNS} FROM {table} {filter}) AS m ON true ORDER BY m.migration_order",
            table_l = literal(&self.table),
            table = self.table,
            filter = self.filter("")
        )
    }

    /// `UPDATE ... SET assignments` of the row of `order` (and the run id, when set).
    fn update(&self, assignments: &str, order: i64) -> String {
        format!(
            "UPDATE {} SET {assignments}{} {}",
            self.table,
            self.run_assignment(),
            self.filter(&format!("migration_order = {order}"))
        )
    }

    /// `INSERT INTO table AS t (columns) VALUES (row), ...`, with the tenant's key where
    /// shared; each row's values are in the order of [`COLUMNS`].
    fn insert(&self, rows: &[String]) -> String {
        let (mut columns, key) = match &self.tenant {
            Some(t) => (format!("tenant, {COLUMNS}"), format!("{t}, ")),
            None => (COLUMNS.to_owned(), String::new()),
        };
        let run = match &self.run {
            Some(r) => {
                columns.push_str(", run_id");
                format!(", {r}")
            }
            None => String::new(),
        };
        let values: Vec<String> = rows
            .iter()
            .map(|row| format!("({key}{row}{run})"))
            .collect();
        format!(
            "INSERT INTO {} AS t ({columns}) VALUES {}",
            self.table,
            values.join(", ")
        )
    }

    /// `ON CONFLICT (key)`: the row of one migration.
    fn conflict(&self) -> &'static str {
        match self.tenant {
            Some(_) => "ON CONFLICT (tenant, migration_order)",
            None => "ON CONFLICT (migration_order)",
        }
    }

    /// The values of a row of `migration` with `status` and these SQL expressions for the
    /// times, duration and error.
    fn row(
        migration: &Migration,
        status: MigrationStatus,
        times: [&str; 3],
        error: &str,
    ) -> String {
        let [started_at, finished_at, duration] = times;
        format!(
            "{order}, {name}, {checksum}, '{status}', {started_at}, {finished_at}, {duration}, {error}",
            order = migration.order(),
            name = literal(migration.name()),
            checksum = literal(migration.checksum()),
            status = status.as_str(),
        )
    }

    /// Upserts `rows` (of [`Tracking::row`]), in one statement.
    fn upsert(&self, rows: &[String]) -> String {
        format!(
            "{} {} DO UPDATE SET name = excluded.name, checksum = excluded.checksum, \
             status = excluded.status, started_at = excluded.started_at, finished_at = excluded.finished_at, \
             duration_ms = excluded.duration_ms, error = excluded.error{}",
            self.insert(rows),
            self.conflict(),
            self.run_excluded(),
        )
    }

    /// Upserts the `completed` rows of these migrations, each timed as the client
    /// measured it (several migrations of one transaction, each with its own times).
    fn completed(&self, done: &[(&Migration, Timing)], now: Instant) -> String {
        let rows: Vec<String> = done
            .iter()
            .map(|&(migration, timing)| {
                let (started, finished) = timing.ago(now);
                let duration = timing.duration().as_millis().to_string();
                Self::row(
                    migration,
                    MigrationStatus::Completed,
                    [&ago(started), &ago(finished), &duration],
                    "NULL",
                )
            })
            .collect();
        self.upsert(&rows)
    }

    /// Records a failure; a completed row is left alone, and an existing row keeps its
    /// name, checksum and start: those of the attempt that failed (a `started` row's
    /// start is when it began, not when it failed).
    fn failure(
        &self,
        migration: &Migration,
        status: MigrationStatus,
        error: &str,
        timing: Timing,
        now: Instant,
    ) -> String {
        let (started, finished) = timing.ago(now);
        format!(
            "{} {} DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at, \
             error = excluded.error{} WHERE t.status <> 'completed'",
            self.insert(&[Self::row(
                migration,
                status,
                [&ago(started), &ago(finished), "NULL"],
                &literal(error),
            )]),
            self.conflict(),
            self.run_excluded(),
        )
    }

    /// The registry's summary of these rows: the newest completed migration and the
    /// [`fingerprint`](crate::fingerprint) of all completed ones, as one row of two columns.
    pub(super) fn summary(&self) -> String {
        format!(
            "SELECT max(migration_order), encode(sha256(convert_to(coalesce(string_agg(migration_order::text || ':' || checksum, \
             ',' ORDER BY migration_order), ''), 'UTF8')), 'hex') FROM {} {}",
            self.table,
            self.filter("status = 'completed'")
        )
    }
}

/// The shared tracking table of schema per tenant, in the control schema `control_q`.
pub(super) fn shared_table(control_q: &str) -> String {
    format!("{control_q}.mtnt_tenant_migrations")
}

/// Creates the shared tracking table, whose rows go with their tenant's registry row.
pub(super) fn shared_ddl(control_q: &str, registry: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (tenant text NOT NULL REFERENCES {registry} (name) ON DELETE CASCADE, \
         {ROW_DDL}, PRIMARY KEY (tenant, migration_order))",
        shared_table(control_q)
    )
}

/// The condition on a registry row `r` that it places its tenant on `server` (`None`: the
/// default server): a target read on one server does not count a tenant moved to another
/// as registered there. Reads a registry from before servers (no `server` column) too.
pub(super) fn registered_here(server: Option<&crate::ServerName>) -> String {
    match server {
        None => "to_jsonb(r) ->> 'server' IS NULL".to_owned(),
        Some(server) => format!("to_jsonb(r) ->> 'server' = {}", literal(server.as_str())),
    }
}

/// A tenant's registry row, where the registry is in the tenant's database (schema per
/// tenant), with the tenant's schema.
#[derive(Clone, Debug)]
pub(super) struct TenantRow {
    /// The qualified registry table.
    registry: String,
    /// The tenant's name, a literal.
    name: String,
    /// Its schema, a literal.
    schema_l: String,
    /// Its schema, quoted.
    pub(super) schema_q: String,
}

impl TenantRow {
    pub(super) fn new(registry: String, tenant: &Tenant) -> Self {
        Self {
            registry,
            name: literal(tenant.name.as_str()),
            schema_l: literal(&tenant.storage),
            schema_q: quote_ident(&tenant.storage),
        }
    }

    /// The target's state in one statement: every tracking row by order, each with first
    /// columns `schema_exists` and `registered`; a single row with only those set when
    /// there are no tracking rows.
    pub(super) fn select_state(&self, tracking: &Tracking) -> String {
        format!(
            "SELECT s.schema_exists, s.registered, m.* FROM (SELECT to_regnamespace({schema}) IS NOT NULL AS schema_exists, \
             EXISTS (SELECT FROM {registry} r WHERE r.name = {name} AND {here}) AS registered) AS s \
             LEFT JOIN ({rows}) AS m ON true ORDER BY m.migration_order",
            schema = literal(&self.schema_q),
            registry = self.registry,
            name = self.name,
            here = registered_here(None),
            rows = format_args!("SELECT {COLUMNS} FROM {} {}", tracking.table, tracking.filter("")),
        )
    }

    /// The registry row in line with the tracking rows: newest completed migration and
    /// fingerprint, and `failure` set (`None`: kept).
    fn summary_update(&self, tracking: &Tracking, failure: Option<&str>) -> String {
        format!(
            "UPDATE {} SET (applied_order, fingerprint) = ({}), {}updated_at = now() WHERE name = {}",
            self.registry,
            tracking.summary(),
            failure.map_or(String::new(), |f| format!("{f}, ")),
            self.name
        )
    }
}

/// Whether `records` bring the registry's fingerprint in line themselves, so that their
/// transaction sets [`OWN_BOOKKEEPING`].
pub(super) fn own_bookkeeping(records: &[Record<'_>]) -> bool {
    records.iter().any(|r| {
        matches!(
            r,
            Record::Registry { .. } | Record::RegistryFailure { .. } | Record::DropTenant
        )
    })
}

/// Appends `OWN_BOOKKEEPING; ` when `yes`.
pub(super) fn push_bookkeeping(sql: &mut String, yes: bool) {
    if yes {
        sql.push_str(OWN_BOOKKEEPING);
        sql.push_str("; ");
    }
}

/// Appends the statements of `records`, each followed by `; `: those of `tracking`, and
/// those of the registry row `row` where the target has one. The `completed` rows of
/// several migrations go in one multi-row upsert.
pub(super) fn push_records(
    sql: &mut String,
    tracking: &Tracking,
    row: Option<&TenantRow>,
    records: &[Record<'_>],
) -> Result<()> {
    let mut push = |statement: String| {
        sql.push_str(&statement);
        sql.push_str("; ");
    };
    let finished_up: Vec<(&Migration, Timing)> = records
        .iter()
        .filter_map(|r| match *r {
            Record::Finished {
                migration,
                direction: Direction::Up,
                timing,
            } => Some((migration, timing)),
            _ => None,
        })
        .collect();
    let mut finished_pushed = false;
    let now = Instant::now();
    for record in records {
        let statement = match *record {
            Record::Started {
                migration,
                direction: Direction::Up,
            } => tracking.upsert(&[Tracking::row(
                migration,
                MigrationStatus::Started,
                ["now()", "NULL", "NULL"],
                "NULL",
            )]),
            Record::Started {
                migration,
                direction: Direction::Down,
            } => tracking.update(
                "status = 'started', started_at = now(), finished_at = NULL, duration_ms = NULL, error = NULL",
                migration.order(),
            ),
            Record::Finished {
                direction: Direction::Up,
                ..
            } => {
                if std::mem::replace(&mut finished_pushed, true) {
                    continue;
                }
                tracking.completed(&finished_up, now)
            }
            Record::Finished {
                migration,
                direction: Direction::Down,
                timing,
            } => {
                let (started, finished) = timing.ago(now);
                tracking.update(
                    &format!(
                        "status = 'pending', started_at = {}, finished_at = {}, duration_ms = {}, error = NULL",
                        ago(started),
                        ago(finished),
                        timing.duration().as_millis()
                    ),
                    migration.order(),
                )
            }
            Record::Failed {
                migration,
                status,
                error,
                timing,
            } => tracking.failure(migration, status, error, timing, now),
            Record::Marked { migration, status } => tracking.upsert(&[Tracking::row(
                migration,
                status,
                [
                    "now()",
                    "clock_timestamp()",
                    "(extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint",
                ],
                "NULL",
            )]),
            Record::Checksum { order, checksum } => {
                tracking.update(&format!("checksum = {}", literal(checksum)), order)
            }
            ref registry => {
                let Some(row) = row else {
                    return Err(Error::Invalid(format!(
                        "mtnt bug: {registry:?} asked of a PostgreSQL target whose registry is in another database"
                    )));
                };
                row_statement(row, tracking, registry)
            }
        };
        push(statement);
    }
    Ok(())
}

/// The statement of a record of the registry row or the storage.
fn row_statement(row: &TenantRow, tracking: &Tracking, record: &Record<'_>) -> String {
    match *record {
        Record::Registry { clear_failure } => row.summary_update(
            tracking,
            clear_failure.then_some("failed_order = NULL, last_error = NULL"),
        ),
        Record::RegistryFailure { order, error } => row.summary_update(
            tracking,
            Some(&format!(
                "failed_order = {order}, last_error = {}",
                literal(error)
            )),
        ),
        Record::Register { state } => format!(
            "INSERT INTO {} (name, schema_name, state) VALUES ({}, {}, '{}')",
            row.registry,
            row.name,
            row.schema_l,
            state.as_str()
        ),
        Record::State { state } => format!(
            "UPDATE {} SET state = '{}', updated_at = now() WHERE name = {}",
            row.registry,
            state.as_str(),
            row.name
        ),
        Record::CreateStorage => format!("CREATE SCHEMA {}", row.schema_q),
        Record::TakeStorage { from } => {
            format!(
                "ALTER SCHEMA {} RENAME TO {}",
                quote_ident(from),
                row.schema_q
            )
        }
        Record::DropTenant => format!(
            "DROP SCHEMA IF EXISTS {} CASCADE; DELETE FROM {} WHERE name = {}",
            row.schema_q, row.registry, row.name
        ),
        // The tracking records are handled by the caller.
        _ => String::new(),
    }
}
