//! MySQL and MariaDB, a database per tenant: the registry, storage and fingerprints
//! here, one target's connection in `target.rs`, the bookkeeping SQL in `dialect.rs`.

mod catalog;
mod dialect;
mod fleet;
mod target;
mod urls;

pub(super) use urls::connect;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::{Connection as _, Row};

use self::dialect::{opt_text, text, tracking_ddl, NOW};
use self::target::MySqlTarget;
use super::api::{
    Backend, Capabilities, Connection, ErrorClass, JournalEntry, RegistryRow, RegistryState,
    SchemaObject, Target,
};
use super::engine::{Engine, Tenancy};
use super::lease::LeaseStore;
use super::sql::quote_ident_mysql as quote;
use super::sql::{invalid_names, valid_page};
use crate::ctx::exec_mysql;
use crate::{Error, Result, Tenant, TenantName, TenantRecord, TenantState};

/// Databases that are never tenants.
const SYSTEM_DATABASES: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// MySQL or MariaDB with one database per tenant, all on one server.
///
/// The database named in the URL (`mysql://user@host/control`) is the control database:
/// it holds the tenant registry `mtnt_tenants`, the tracking table `mtnt_migrations` of
/// public migrations, and whatever the public migrations create. It is created on first
/// use if missing. Each tenant is a database named like the tenant (`acme`, `big-co`),
/// with its own `mtnt_migrations`; a tenant named like the control database is refused.
/// Timestamps are `DATETIME(6)` in UTC.
///
/// One pool serves the whole server. A target's connection selects the target's
/// database with `USE` before a migration runs, so migrations can name their tables
/// unqualified; mtnt's own SQL always names the database. A tenant migration reaches
/// shared tables as `` `control`.table ``. Because MySQL binds a prepared statement to the
/// database that was current when it was prepared, the connection's statement cache is
/// cleared before it works on a target; migrations can use typed `sqlx::query(...)` calls
/// on [`Ctx::mysql`](crate::Ctx::mysql) freely.
///
/// Concurrent runs on one target take turns on a named lock (`GET_LOCK`) that its
/// connection holds until it is released or closed.
///
/// # No transactional DDL
///
/// MySQL commits every DDL statement (`CREATE`, `ALTER`, `DROP`, ...) on the spot, so the
/// server cannot roll back a migration that changed the schema. Every migration therefore
/// goes through mtnt's started / completed chain: it is recorded `started` in a commit
/// before it runs; it runs with autocommit off (unless `transaction = false`), so that a
/// migration that only changes data rolls back whole, and data changes after its last
/// DDL statement do too; its `completed` row, the registry row and the next migration's
/// `started` row are committed together, in one round trip. A failure rolls back what it
/// can and leaves the row `started` with the error: mtnt cannot know whether the
/// migration ran DDL before it failed, so the next `migrate` refuses the tenant until
/// someone checks its schema and marks the migration `completed` (it took effect) or
/// `pending` (run it again) with `repair`. Migrations declared `idempotent = true` are
/// simply run again. Keep each MySQL migration to one DDL statement (plus data changes)
/// where you can, so that a failure leaves a state that is easy to judge.
///
/// # Timeouts
///
/// A migration's lock timeout is set, rounded up to whole seconds, as the session's
/// `lock_wait_timeout` (metadata locks: what DDL waits for) and `innodb_lock_wait_timeout`
/// (row locks) while it runs; the session's own values are restored when the connection
/// is released. The statement timeout is not applied: MySQL's `max_execution_time` limits
/// `SELECT`s only, and MariaDB's `max_statement_time` is another variable.
///
/// # Creating and dropping tenants
///
/// DDL cannot join a transaction, so a tenant is created by compensation: registered as
/// `creating`, its database and tracking table created, migrated, then marked `active`;
/// when a step fails, what the earlier ones made is removed. A process that dies midway
/// leaves the tenant `creating` (the fleet skips it), and `tenant drop` removes what is
/// left.
#[derive(Clone, Debug)]
pub struct MySqlBackend {
    pool: MySqlPool,
    control: String,
    control_q: String,
}

impl MySqlBackend {
    /// A backend on `pool` whose control database is `control`.
    ///
    /// The pool's connections need no default database; every target selects its own.
    pub fn new(pool: MySqlPool, control: &str) -> Result<Self> {
        if control.is_empty()
            || control.len() > 64
            || !control
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
        {
            return Err(Error::Invalid(format!(
                "invalid control database {control:?}: use 1 to 64 letters, digits, '_', '-' and '$'"
            )));
        }
        Ok(Self {
            pool,
            control: control.to_owned(),
            control_q: quote(control),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The control database: tenant registry, public tracking table, public tables.
    pub fn control_database(&self) -> &str {
        &self.control
    }

    fn registry(&self) -> String {
        format!("{}.mtnt_tenants", self.control_q)
    }

    /// The table of recorded settings (the tenancy model).
    fn journal(&self) -> String {
        format!("{}.mtnt_journal", self.control_q)
    }

    fn settings(&self) -> String {
        format!("{}.mtnt_settings", self.control_q)
    }

    fn select_records(&self) -> String {
        format!(
            "SELECT name, schema_name, state, created_at, applied_order, failed_order, last_error FROM {}",
            self.registry()
        )
    }

    /// `None` for a row whose name is no valid tenant name.
    fn record_from_row(row: &MySqlRow) -> Result<Option<TenantRecord>> {
        let Ok(name) = TenantName::new(text(row, "name")?) else {
            return Ok(None);
        };
        Ok(Some(TenantRecord {
            tenant: Tenant {
                name,
                storage: text(row, "schema_name")?,
                server: None,
            },
            state: TenantState::parse(&text(row, "state")?)?,
            created_at: row.try_get("created_at")?,
            applied_order: row.try_get("applied_order")?,
            failed_order: row.try_get("failed_order")?,
            last_error: opt_text(row, "last_error")?,
        }))
    }

    /// Refuses a tenant whose database would be the control database, before any SQL.
    fn check_not_control(&self, tenant: &Tenant) -> Result<()> {
        // Compared without case: servers with `lower_case_table_names` do too.
        if tenant.storage.eq_ignore_ascii_case(&self.control) {
            return Err(Error::InvalidTenantName {
                name: tenant.name.to_string(),
                reason: "it is the name of the control database",
            });
        }
        Ok(())
    }

    /// Runs one or more statements on a pooled connection.
    async fn exec(&self, sql: &str) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        exec_mysql(&mut conn, sql).await?;
        Ok(())
    }
}

fn tenant_name(name: String) -> Result<TenantName> {
    TenantName::new(name).map_err(|e| Error::Corrupt(format!("tenant registry: {e}")))
}

#[async_trait]
impl Backend for MySqlBackend {
    fn engine(&self) -> Engine {
        Engine::MySql
    }

    fn tenancy(&self) -> Tenancy {
        Tenancy::Database
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_registry_in_target_transaction()
            .with_fingerprints()
    }

    fn classify(&self, error: &Error) -> ErrorClass {
        dialect::classify(error)
    }

    async fn prepare(&self) -> Result<()> {
        self.exec(&format!(
            "CREATE DATABASE IF NOT EXISTS {control} CHARACTER SET utf8mb4;
             CREATE TABLE IF NOT EXISTS {registry} (
                name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
                schema_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL UNIQUE,
                state VARCHAR(16) NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'creating')),
                created_at DATETIME(6) NOT NULL,
                applied_order BIGINT NULL,
                failed_order BIGINT NULL,
                last_error MEDIUMTEXT NULL,
                updated_at DATETIME(6) NOT NULL
             ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
             {tracking};
             CREATE TABLE IF NOT EXISTS {settings} (
                name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
                value VARCHAR(255) NOT NULL
             ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
             INSERT IGNORE INTO {settings} (name, value) VALUES ('tenancy', 'database')",
            control = self.control_q,
            registry = self.registry(),
            tracking = tracking_ddl(&self.control_q),
            settings = self.settings(),
        ))
        .await
    }

    async fn registry_state(&self) -> Result<RegistryState> {
        let tables = sqlx::query(
            "SELECT TABLE_NAME AS t FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? \
             AND TABLE_NAME IN ('mtnt_tenants', 'mtnt_settings')",
        )
        .bind(&self.control)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| text(r, "t"))
        .collect::<Result<Vec<_>>>()?;
        if !tables.iter().any(|t| t == "mtnt_tenants") {
            let options = self.pool.connect_options();
            return Ok(RegistryState::Missing {
                place: format!(
                    "control database {} on {}:{}",
                    self.control,
                    options.get_host(),
                    options.get_port()
                ),
                other_schemas: Vec::new(),
            });
        }
        if !tables.iter().any(|t| t == "mtnt_settings") {
            return Ok(RegistryState::Unrecorded);
        }
        let recorded = sqlx::query(&format!(
            "SELECT value FROM {} WHERE name = 'tenancy'",
            self.settings()
        ))
        .fetch_optional(&self.pool)
        .await?
        .map(|r| text(&r, "value"))
        .transpose()?;
        match recorded {
            None => Ok(RegistryState::Unrecorded),
            Some(name) => Tenancy::parse(&name)
                .map(RegistryState::Recorded)
                .ok_or_else(|| {
                    Error::Corrupt(format!("{} records tenancy {name:?}", self.settings()))
                }),
        }
    }

    async fn tenant_page(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>> {
        let sql = format!(
            "{} WHERE (? IS NULL OR name > ?) ORDER BY name LIMIT ?",
            self.select_records()
        );
        valid_page(after, limit, async |after, limit| {
            let rows = sqlx::query(&sql)
                .bind(after.as_deref())
                .bind(after.as_deref())
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|row| Ok((text(row, "name")?, Self::record_from_row(row)?)))
                .collect()
        })
        .await
    }

    async fn invalid_registry_rows(&self) -> Result<Vec<Error>> {
        let rows = sqlx::query(&format!("SELECT name FROM {}", self.registry()))
            .fetch_all(&self.pool)
            .await?;
        let names = rows
            .iter()
            .map(|row| text(row, "name"))
            .collect::<Result<Vec<_>>>()?;
        Ok(invalid_names(&self.registry(), names))
    }

    async fn tenant_count(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", self.registry()))
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u64)
    }

    async fn tenant_records(&self, names: &[TenantName]) -> Result<Vec<TenantRecord>> {
        let mut records = Vec::with_capacity(names.len());
        // Bounded IN lists: a server caps the placeholders of one statement.
        for chunk in names.chunks(1000) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!("{} WHERE name IN ({placeholders})", self.select_records());
            let mut query = sqlx::query(&sql);
            for name in chunk {
                query = query.bind(name.as_str());
            }
            for row in &query.fetch_all(&self.pool).await? {
                records.extend(Self::record_from_row(row)?);
            }
        }
        records.sort_by(|a, b| a.tenant.name.cmp(&b.tenant.name));
        Ok(records)
    }

    async fn fingerprints(&self, names: &[TenantName]) -> Result<Vec<(TenantName, String)>> {
        self.fingerprints_of(names).await
    }

    async fn connection_budget(&self) -> Result<Option<usize>> {
        self.budget().await
    }

    async fn connect<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Connection + 'a>> {
        if let Target::Tenant(tenant) = target {
            self.check_not_control(tenant)?;
        }
        let mut conn = self.pool.acquire().await?;
        if conn.cached_statements_size() > 0 {
            conn.clear_cached_statements().await?;
        }
        Ok(Box::new(MySqlTarget::new(self, target, conn)))
    }

    async fn register(
        &self,
        tenant: &Tenant,
        state: TenantState,
        applied_order: Option<i64>,
    ) -> Result<()> {
        self.check_not_control(tenant)?;
        sqlx::query(&format!(
            "INSERT INTO {} (name, schema_name, state, created_at, applied_order, updated_at) \
             VALUES (?, ?, ?, {NOW}, ?, {NOW})",
            self.registry()
        ))
        .bind(tenant.name.as_str())
        .bind(&tenant.storage)
        .bind(state.as_str())
        .bind(applied_order)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_state(&self, tenant: &Tenant, state: TenantState) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE {} SET state = ?, updated_at = {NOW} WHERE name = ?",
            self.registry()
        ))
        .bind(state.as_str())
        .bind(tenant.name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unregister(&self, tenant: &Tenant, only_creating: bool) -> Result<()> {
        let mut sql = format!("DELETE FROM {} WHERE name = ?", self.registry());
        if only_creating {
            sql.push_str(" AND state = 'creating'");
        }
        sqlx::query(&sql)
            .bind(tenant.name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Not used: the registry row is written in the target's transaction. Written as
    /// asked all the same.
    async fn write_registry(&self, tenant: &Tenant, row: RegistryRow<'_>) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE {} SET applied_order = ?, failed_order = ?, last_error = ?, updated_at = {NOW} \
             WHERE name = ?",
            self.registry()
        ))
        .bind(row.applied_order)
        .bind(row.failure.map(|(order, _)| order))
        .bind(row.failure.map(|(_, error)| error))
        .bind(tenant.name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn create_storage(&self, tenant: &Tenant) -> Result<()> {
        self.check_not_control(tenant)?;
        let db_q = quote(&tenant.storage);
        let mut conn = self.pool.acquire().await?;
        // Two round trips: the database is dropped again only when this call made it.
        exec_mysql(
            &mut conn,
            &format!("CREATE DATABASE {db_q} CHARACTER SET utf8mb4"),
        )
        .await?;
        if let Err(error) = exec_mysql(&mut conn, &tracking_ddl(&db_q)).await {
            if let Err(e) = exec_mysql(&mut conn, &format!("DROP DATABASE {db_q}")).await {
                tracing::warn!(tenant = %tenant.name, "could not drop the new database after its tracking table failed: {e}");
            }
            return Err(error.into());
        }
        Ok(())
    }

    async fn drop_storage(&self, tenant: &Tenant) -> Result<()> {
        self.check_not_control(tenant)?;
        self.exec(&format!(
            "DROP DATABASE IF EXISTS {}",
            quote(&tenant.storage)
        ))
        .await
    }

    async fn unregistered_storage(&self, like: &str) -> Result<Vec<String>> {
        // Compared as bytes: case-sensitive, like database names on most servers.
        let rows = sqlx::query(
            "SELECT SCHEMA_NAME AS db FROM information_schema.SCHEMATA \
             WHERE CAST(SCHEMA_NAME AS BINARY) LIKE CAST(? AS BINARY) ORDER BY db",
        )
        .bind(like)
        .fetch_all(&self.pool)
        .await?;
        let registered = sqlx::query(&format!("SELECT schema_name FROM {}", self.registry()))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| text(r, "schema_name"))
            .collect::<Result<HashSet<_>>>()?;
        let mut databases = rows
            .iter()
            .map(|r| text(r, "db"))
            .collect::<Result<Vec<_>>>()?;
        databases.retain(|db| {
            !SYSTEM_DATABASES.contains(&db.as_str())
                && !db.eq_ignore_ascii_case(&self.control)
                && !registered.contains(db)
        });
        databases.sort();
        Ok(databases)
    }

    async fn describe(&self, tenants: &[Tenant]) -> Result<Vec<Result<Vec<SchemaObject>>>> {
        self.describe_databases(tenants).await
    }

    async fn journal_write(&self, entry: &JournalEntry, keep: usize) -> Result<()> {
        let table = self.journal();
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (kind VARCHAR(32) NOT NULL, \
             entry_key VARCHAR(191) NOT NULL, at VARCHAR(40) NOT NULL, body LONGTEXT NOT NULL, \
             PRIMARY KEY (kind, entry_key)) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        ))
        .execute(&self.pool)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {table} (kind, entry_key, at, body) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE at = VALUES(at), body = VALUES(body)"
        ))
        .bind(&entry.kind)
        .bind(&entry.key)
        .bind(&entry.at)
        .bind(&entry.body)
        .execute(&self.pool)
        .await?;
        // MariaDB takes no LIMIT in an IN subquery: the oldest entry kept, then the rest.
        let oldest_kept = sqlx::query(&format!(
            "SELECT at FROM {table} WHERE kind = ? ORDER BY at DESC LIMIT 1 OFFSET ?"
        ))
        .bind(&entry.kind)
        .bind(keep.saturating_sub(1) as u64)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = oldest_kept {
            sqlx::query(&format!("DELETE FROM {table} WHERE kind = ? AND at < ?"))
                .bind(&entry.kind)
                .bind(text(&row, "at")?)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn journal_read(&self, kind: &str, limit: usize) -> Result<Vec<JournalEntry>> {
        let kept: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? \
             AND TABLE_NAME = 'mtnt_journal'",
        )
        .bind(&self.control)
        .fetch_optional(&self.pool)
        .await?;
        if kept.is_none() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT kind, entry_key, at, body FROM {} WHERE kind = ? ORDER BY at DESC LIMIT ?",
            self.journal()
        ))
        .bind(kind)
        .bind(limit as u64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(JournalEntry {
                    kind: text(row, "kind")?,
                    key: text(row, "entry_key")?,
                    at: text(row, "at")?,
                    body: text(row, "body")?,
                })
            })
            .collect()
    }

    fn leases(&self) -> Option<Arc<dyn LeaseStore>> {
        None
    }

    async fn run_rows(
        &self,
        run_id: &str,
        tenants: &[Tenant],
        _concurrency: usize,
    ) -> Result<Vec<(TenantName, crate::AppliedMigration)>> {
        self.run_rows_of(run_id, tenants).await
    }

    async fn tenant_sizes(&self, tenants: &[Tenant]) -> Result<Vec<(TenantName, u64)>> {
        self.sizes_of(tenants).await
    }
}
