//! Where PostgreSQL keeps a target's tracking rows, and the SQL that reads and writes them.
//!
//! Schema per tenant keeps every tenant's rows in one shared table of the control schema,
//! `mtnt_tenant_migrations`, keyed on (tenant, order): a tracking table in each tenant
//! schema would add a table, its TOAST table and two indexes (four files and their
//! catalog rows) to every tenant, about a quarter of the server's work of migrating a
//! new tenant. The public migrations, and each tenant database of database per tenant,
//! have a `mtnt_migrations` table of their own.

use std::time::Duration;

use super::sql::quote_literal;
use crate::{Migration, MigrationStatus};

/// The columns of a tracking row, in the order [`Tracking::select_applied`] returns them.
const COLUMNS: &str =
    "migration_order, name, checksum, status, started_at, finished_at, duration_ms, error";

/// The columns and checks a tracking row has wherever it is kept.
const ROW_DDL: &str = "migration_order bigint NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'started', 'failed', 'completed')),
    started_at timestamptz,
    finished_at timestamptz,
    duration_ms bigint,
    error text";

/// The tracking rows of one target.
#[derive(Clone, Debug)]
pub(super) struct Tracking {
    /// The qualified table.
    table: String,
    /// The tenant's name as a literal, when the table is shared by all tenants.
    tenant: Option<String>,
}

impl Tracking {
    /// The table `schema_q.mtnt_migrations`, of one target alone.
    pub(super) fn own(schema_q: &str) -> Self {
        Self {
            table: format!("{schema_q}.mtnt_migrations"),
            tenant: None,
        }
    }

    /// The rows of `tenant` in the shared table of the control schema `control_q`.
    pub(super) fn shared(control_q: &str, tenant: &str) -> Self {
        Self {
            table: shared_table(control_q),
            tenant: Some(quote_literal(tenant)),
        }
    }

    /// Whether the table is shared (and created by `prepare`, never by a session).
    pub(super) fn is_shared(&self) -> bool {
        self.tenant.is_some()
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

    /// Every row, by order.
    pub(super) fn select_applied(&self) -> String {
        format!(
            "SELECT {COLUMNS} FROM {} {} ORDER BY migration_order",
            self.table,
            self.filter("")
        )
    }

    /// Every row, by order, each with a first column `schema_exists`: whether the schema
    /// `schema_q` exists. A single row with only that column set when there are no rows.
    pub(super) fn select_applied_and_schema(&self, schema_q: &str) -> String {
        format!(
            "SELECT s.schema_exists, m.* FROM (SELECT to_regnamespace({}) IS NOT NULL AS schema_exists) AS s \
             LEFT JOIN (SELECT {COLUMNS} FROM {} {}) AS m ON true ORDER BY m.migration_order",
            quote_literal(schema_q),
            self.table,
            self.filter("")
        )
    }

    /// `UPDATE ... SET assignments` of the row of `order`.
    pub(super) fn update(&self, assignments: &str, order: i64) -> String {
        format!(
            "UPDATE {} SET {assignments} {}",
            self.table,
            self.filter(&format!("migration_order = {order}"))
        )
    }

    /// `INSERT INTO table (columns) VALUES (row), ...`, with the tenant's key where shared;
    /// each row's values are in the order of [`COLUMNS`].
    fn insert(&self, rows: &[String]) -> String {
        let (columns, key) = match &self.tenant {
            Some(t) => (format!("tenant, {COLUMNS}"), format!("{t}, ")),
            None => (COLUMNS.to_owned(), String::new()),
        };
        let values: Vec<String> = rows.iter().map(|row| format!("({key}{row})")).collect();
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
            name = quote_literal(migration.name()),
            checksum = quote_literal(migration.checksum()),
            status = status.as_str(),
        )
    }

    /// Upserts `rows` (of [`Tracking::row`]).
    fn upsert(&self, rows: &[String]) -> String {
        format!(
            "{} {} DO UPDATE SET name = excluded.name, checksum = excluded.checksum, \
             status = excluded.status, started_at = excluded.started_at, finished_at = excluded.finished_at, \
             duration_ms = excluded.duration_ms, error = excluded.error",
            self.insert(rows),
            self.conflict(),
        )
    }

    /// Upserts the row of `migration` with `status`, timed from the transaction start
    /// (and, when `finished`, ending now).
    pub(super) fn record(
        &self,
        migration: &Migration,
        status: MigrationStatus,
        finished: bool,
    ) -> String {
        let times = if finished {
            [
                "now()",
                "clock_timestamp()",
                "(extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint",
            ]
        } else {
            ["now()", "NULL", "NULL"]
        };
        self.upsert(&[Self::row(migration, status, times, "NULL")])
    }

    /// Upserts the rows of `completed` migrations, in one statement: each started and
    /// finished the given time before this statement (several migrations recorded at
    /// once, each with its own times).
    pub(super) fn record_measured(&self, completed: &[(&Migration, Duration, Duration)]) -> String {
        let rows: Vec<String> = completed
            .iter()
            .map(|&(migration, started_ago, finished_ago)| {
                let started = format!(
                    "clock_timestamp() - interval '{} microseconds'",
                    started_ago.as_micros()
                );
                let finished = format!(
                    "clock_timestamp() - interval '{} microseconds'",
                    finished_ago.as_micros()
                );
                let duration = started_ago
                    .saturating_sub(finished_ago)
                    .as_millis()
                    .to_string();
                Self::row(
                    migration,
                    MigrationStatus::Completed,
                    [&started, &finished, &duration],
                    "NULL",
                )
            })
            .collect();
        self.upsert(&rows)
    }

    /// Records a failure of `migration` with `status` and the error `$1` (a bound
    /// parameter); a completed row is left alone.
    pub(super) fn record_failure(&self, migration: &Migration, status: MigrationStatus) -> String {
        // An existing row keeps its name, checksum and start: those of the attempt that
        // failed (a `started` row's start is when it began, not when it failed).
        format!(
            "{} {} DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at, \
             error = excluded.error WHERE t.status <> 'completed'",
            self.insert(&[Self::row(
                migration,
                status,
                ["now()", "clock_timestamp()", "NULL"],
                "$1"
            )]),
            self.conflict(),
        )
    }

    /// The fingerprint of [`Tracking::summary`] alone, as a scalar subquery.
    pub(super) fn fingerprint(&self) -> String {
        format!("(SELECT f FROM ({}) AS s (o, f))", self.summary())
    }

    /// The newest completed migration of [`Tracking::summary`] alone, as a query.
    pub(super) fn applied_order(&self) -> String {
        format!("SELECT o FROM ({}) AS s (o, f)", self.summary())
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
