use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};

use super::control::{RunControl, Timeouts, Transactions};
use super::invoke::{connection_lost, exec_postgres};
use super::pg_shared::{apply_new_tenant, is_db_code};
use super::pg_tracking::Tracking;
use super::postgres::PostgresBackend;
use super::sql::quote_ident;
use crate::{
    AppliedMigration, Backend, Direction, Engine, Error, Migration, MigrationStatus, Result,
    Session, Target, Tenancy, Tenant, TenantName, TenantRecord,
};

/// The schema of a tenant database that holds its tables and its tracking table.
const TENANT_SCHEMA: &str = "public";

/// PostgreSQL with one database per tenant, all on one server (`--tenancy database`).
///
/// The database the pool connects to (`postgres://user@host/control`) is the control
/// database. Its control schema (default `public`) holds what it holds in
/// [`PostgresBackend`]: the tenant registry `mtnt_tenants` (the same columns), the tracking
/// table of public migrations, and whatever public migrations create. Each tenant is a
/// database of the same server named like the tenant (`acme`, `big-co`), whose `public`
/// schema holds the tenant's tables and its own `mtnt_migrations`. Tenant migrations cannot
/// see the control database's tables: they are in another database.
///
/// # Connections
///
/// The control database has the pool. A tenant session opens one connection of its own to
/// the tenant's database and closes it when the session ends, so a run holds at most
/// `concurrency` tenant connections plus the pool, never one per tenant of the fleet.
/// [`PgDatabaseBackend::tenant_connect_options`] gives the options it connects with.
///
/// # Consistency
///
/// Each migration and its tracking row commit in one transaction in the tenant database
/// (PostgreSQL DDL is transactional): a failure leaves the tenant at its previous
/// migration, with a `failed` row. Concurrent runs on one tenant take turns on an advisory
/// lock in the tenant's database, held by the session.
///
/// The tenant's tracking table is the truth about its migrations. The registry row's
/// `applied_order`, `failed_order` and `last_error` are a cache (two databases cannot
/// commit atomically): written right after the tenant database commits, and brought back
/// in line whenever a session reads the tenant's tracking table, for example on the next
/// `migrate`. A failed write of the cache is logged, not returned: the migration did commit.
///
/// # Creating and dropping tenants
///
/// `CREATE DATABASE` cannot run in a transaction, so `create_tenant` is atomic by
/// compensation: it registers the tenant as `creating`, creates the database, then creates
/// the tracking table and runs the migrations in one transaction in it, and marks the
/// tenant `active`. When anything fails it drops the database (`WITH (FORCE)`) and deletes
/// the row. A process that dies midway leaves the tenant `creating` (the fleet skips it);
/// `tenant drop` removes what is left. Dropping uses `DROP DATABASE ... WITH (FORCE)`,
/// which needs PostgreSQL 13 or newer, and ends the sessions still connected to it.
#[derive(Clone, Debug)]
pub struct PgDatabaseBackend {
    control: PostgresBackend,
    options: PgConnectOptions,
    control_db: String,
}

impl PgDatabaseBackend {
    /// A backend on `pool`, a pool of the control database, whose control schema is
    /// `public`. Tenant connections use the pool's connect options with another database.
    pub fn new(pool: PgPool) -> Result<Self> {
        let options = PgConnectOptions::clone(&pool.connect_options());
        let control_db = options
            .get_database()
            .filter(|db| !db.is_empty())
            .ok_or_else(|| {
                Error::Invalid(
                    "name the control database that holds the tenant registry, as in postgres://postgres@127.0.0.1/control"
                        .to_owned(),
                )
            })?
            .to_owned();
        Ok(Self {
            control: PostgresBackend::new(pool),
            options,
            control_db,
        })
    }

    /// Puts the registry and the public migrations in another schema of the control database.
    pub fn with_control_schema(mut self, schema: &str) -> Result<Self> {
        self.control = self.control.with_control_schema(schema)?;
        Ok(self)
    }

    /// How many of a tenant's pending migrations share a transaction (see
    /// [`PostgresBackend::with_transactions`]).
    pub fn with_transactions(mut self, transactions: Transactions) -> Self {
        self.control = self.control.with_transactions(transactions);
        self
    }

    /// The lock and statement timeouts of migrations whose attribute sets none (see
    /// [`PostgresBackend::with_timeouts`]).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.control = self.control.with_timeouts(timeouts);
        self
    }

    /// The pool of the control database.
    pub fn pool(&self) -> &PgPool {
        self.control.pool()
    }

    /// The control database: tenant registry, public tracking table, public tables.
    pub fn control_database(&self) -> &str {
        &self.control_db
    }

    /// The options of the control database's connections.
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// The options a session connects to the database of `tenant` with.
    pub fn tenant_connect_options(&self, tenant: &Tenant) -> PgConnectOptions {
        self.options.clone().database(&tenant.schema)
    }

    fn check_not_control(&self, tenant: &Tenant) -> Result<()> {
        if tenant.schema == self.control_db {
            return Err(Error::Invalid(format!(
                "tenant {} would use the control database {} as its database\n  fix: pick another tenant name",
                tenant.name, self.control_db
            )));
        }
        Ok(())
    }

    /// One connection of its own to the database of `tenant`.
    async fn connect_tenant(&self, tenant: &Tenant) -> Result<PgConnection> {
        self.check_not_control(tenant)?;
        match PgConnection::connect_with(&self.tenant_connect_options(tenant)).await {
            Ok(conn) => Ok(conn),
            Err(e) if is_db_code(&e, "3D000") => Err(Error::Invalid(format!(
                "database {} of tenant {} does not exist\n  fix: restore it, or remove the tenant with `tenant drop {} --yes`",
                tenant.schema, tenant.name, tenant.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one statement on a pooled connection of the control database.
    async fn exec_control(&self, sql: &str) -> Result<(), sqlx::Error> {
        let mut conn = self.pool().acquire().await?;
        exec_postgres(&mut conn, sql).await
    }

    /// Removes a tenant's registry row (only while it is `creating`, when `creating_only`).
    async fn delete_row(&self, tenant: &Tenant, creating_only: bool) -> Result<()> {
        let mut sql = format!("DELETE FROM {} WHERE name = $1", self.control.registry());
        if creating_only {
            sql.push_str(" AND state = 'creating'");
        }
        sqlx::query(&sql)
            .bind(tenant.name.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Fills the new database of a tenant: tracking table and `migrations`, one transaction.
    async fn fill_new_database(
        &self,
        tenant: &Tenant,
        migrations: &[&'static Migration],
    ) -> Result<()> {
        let mut conn = self.connect_tenant(tenant).await?;
        let schema_q = quote_ident(TENANT_SCHEMA);
        let tracking = Tracking::own(&schema_q);
        let result = async {
            exec_postgres(
                &mut conn,
                &format!(
                    "BEGIN; {}; SET LOCAL search_path TO {schema_q}",
                    tracking.own_ddl()
                ),
            )
            .await?;
            apply_new_tenant(&mut conn, tenant, &tracking, migrations).await?;
            exec_postgres(&mut conn, "COMMIT").await?;
            Ok(())
        }
        .await;
        // Closing ends a transaction that is still open, so the database can be dropped.
        let _ = conn.close().await;
        result
    }

    /// Creates the tracking table in an existing database and records `baseline` in it;
    /// returns its newest completed migration.
    async fn baseline_database(
        &self,
        tenant: &Tenant,
        baseline: &[&'static Migration],
    ) -> Result<Option<i64>> {
        let mut conn = self.connect_tenant(tenant).await?;
        let schema_q = quote_ident(TENANT_SCHEMA);
        let tracking = Tracking::own(&schema_q);
        let mut sql = format!("BEGIN; {};", tracking.own_ddl());
        for migration in baseline {
            sql.push_str(&tracking.record(migration, MigrationStatus::Completed, true));
            sql.push(';');
        }
        sql.push_str("COMMIT");
        let result = async {
            exec_postgres(&mut conn, &sql).await?;
            let applied: Option<i64> = sqlx::query_scalar(&tracking.applied_order())
                .fetch_one(&mut conn)
                .await?;
            Ok(applied)
        }
        .await;
        let _ = conn.close().await;
        result
    }
}

#[async_trait]
impl Backend for PgDatabaseBackend {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    fn tenancy(&self) -> Tenancy {
        Tenancy::Database
    }

    async fn prepare(&self) -> Result<()> {
        self.control.prepare().await
    }

    async fn tenant_page(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>> {
        self.control.tenant_page(after, limit).await
    }

    async fn tenant_count(&self) -> Result<u64> {
        self.control.tenant_count().await
    }

    async fn tenant_records(&self, names: &[TenantName]) -> Result<Vec<TenantRecord>> {
        self.control.tenant_records(names).await
    }

    async fn session<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Session + 'a>> {
        let Target::Tenant(tenant) = target else {
            return self.control.session(Target::Public).await;
        };
        let conn = self.connect_tenant(tenant).await?;
        Ok(Box::new(TenantDbSession {
            inner: self.control.tenant_database_session(conn, tenant),
            backend: self,
            tenant,
            completed: None,
        }))
    }

    async fn create_tenant(
        &self,
        tenant: &Tenant,
        migrations: &[&'static Migration],
        activate: bool,
    ) -> Result<()> {
        self.check_not_control(tenant)?;
        // The registry's unique name claims the tenant before anything is created.
        let claim = sqlx::query(&format!(
            "INSERT INTO {} (name, schema_name, state) VALUES ($1, $2, 'creating')",
            self.control.registry()
        ))
        .bind(tenant.name.as_str())
        .bind(&tenant.schema)
        .execute(self.pool())
        .await;
        match claim {
            Err(e) if is_db_code(&e, "23505") => {
                return Err(Error::TenantExists(tenant.name.to_string()))
            }
            other => other?,
        };
        let db_q = quote_ident(&tenant.schema);
        if let Err(e) = self.exec_control(&format!("CREATE DATABASE {db_q}")).await {
            // Nothing was created: only the claim goes.
            let _ = self.delete_row(tenant, true).await;
            if is_db_code(&e, "42P04") {
                return Err(Error::Invalid(format!(
                    "database {} exists already but is not a registered tenant\n  fix: register it with `tenant adopt --schema-like {}`",
                    tenant.schema, tenant.schema
                )));
            }
            return Err(e.into());
        }
        let mut result = self.fill_new_database(tenant, migrations).await;
        if result.is_ok() {
            result = sqlx::query(&format!(
                "UPDATE {} SET state = $1, applied_order = $2, updated_at = now() WHERE name = $3",
                self.control.registry()
            ))
            .bind(if activate { "active" } else { "creating" })
            .bind(migrations.iter().map(|m| m.order()).max())
            .bind(tenant.name.as_str())
            .execute(self.pool())
            .await
            .map(drop)
            .map_err(Error::from);
        }
        let Err(error) = result else {
            return Ok(());
        };
        // Compensate: nothing of the tenant may stay. The database goes first, then the row
        // that claims it.
        if let Err(e) = self
            .exec_control(&format!("DROP DATABASE IF EXISTS {db_q} WITH (FORCE)"))
            .await
        {
            // The row stays (state `creating`) so that `tenant drop` can finish the job.
            tracing::warn!(tenant = %tenant.name, "could not drop the database of a failed tenant creation: {e}");
            return Err(error);
        }
        if let Err(e) = self.delete_row(tenant, true).await {
            tracing::warn!(tenant = %tenant.name, "could not delete the registry row of a failed tenant creation: {e}");
        }
        Err(error)
    }

    async fn activate_tenant(&self, tenant: &Tenant) -> Result<()> {
        self.control.activate_tenant(tenant).await
    }

    /// The run leases of the control database.
    fn run_control(&self) -> Option<Arc<dyn RunControl>> {
        self.control.run_control()
    }

    async fn drop_tenant(&self, tenant: &Tenant) -> Result<()> {
        self.check_not_control(tenant)?;
        // DROP DATABASE cannot join a transaction: the database first, then the row, so
        // that a failure in between leaves a row that `tenant drop` can remove again.
        self.exec_control(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&tenant.schema)
        ))
        .await?;
        self.delete_row(tenant, false).await
    }

    async fn adopt(
        &self,
        like: &str,
        baseline: &[&'static Migration],
    ) -> Result<(Vec<Tenant>, Vec<String>)> {
        let sql = format!(
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1 AND NOT datistemplate \
             AND datallowconn AND datname NOT IN ('postgres', $2) \
             AND datname NOT IN (SELECT schema_name FROM {}) ORDER BY datname",
            self.control.registry()
        );
        let databases: Vec<String> = sqlx::query_scalar(&sql)
            .bind(like)
            .bind(&self.control_db)
            .fetch_all(self.pool())
            .await?;
        let mut adopted = Vec::new();
        let mut skipped = Vec::new();
        for database in databases {
            let Ok(name) = TenantName::new(database.clone()) else {
                skipped.push(database);
                continue;
            };
            let tenant = Tenant {
                name,
                schema: database,
            };
            let applied = self.baseline_database(&tenant, baseline).await?;
            sqlx::query(&format!(
                "INSERT INTO {} (name, schema_name, state, applied_order) VALUES ($1, $2, 'active', $3)",
                self.control.registry()
            ))
            .bind(tenant.name.as_str())
            .bind(&tenant.schema)
            .bind(applied)
            .execute(self.pool())
            .await?;
            adopted.push(tenant);
        }
        Ok((adopted, skipped))
    }
}

/// A tenant session: the schema-per-tenant session on the tenant database's connection,
/// plus the registry cache in the control database, written after each commit there.
struct TenantDbSession<'a> {
    inner: Box<dyn Session + 'a>,
    backend: &'a PgDatabaseBackend,
    tenant: &'a Tenant,
    /// The completed orders of the tenant's tracking table, once this session has read it.
    completed: Option<BTreeSet<i64>>,
}

impl TenantDbSession<'_> {
    fn completed_from(rows: &[AppliedMigration]) -> BTreeSet<i64> {
        rows.iter()
            .filter(|r| r.status == MigrationStatus::Completed)
            .map(|r| r.order)
            .collect()
    }

    /// Notes that `order` is now completed (or not), reading the tracking table if this
    /// session has not yet.
    async fn note(&mut self, order: i64, completed: bool) -> Result<()> {
        match &mut self.completed {
            Some(set) if completed => drop(set.insert(order)),
            Some(set) => drop(set.remove(&order)),
            None => {
                let rows = self.inner.applied().await?;
                self.completed = Some(Self::completed_from(&rows));
            }
        }
        Ok(())
    }

    /// After a successful change: the newest completed migration, and no failure.
    async fn refresh_registry(&mut self, order: i64, completed: bool) {
        let result = async {
            self.note(order, completed).await?;
            let applied = self.completed.as_ref().and_then(|c| c.last().copied());
            sqlx::query(&format!(
                "UPDATE {} SET applied_order = $1, failed_order = NULL, last_error = NULL, updated_at = now() \
                 WHERE name = $2",
                self.backend.control.registry()
            ))
            .bind(applied)
            .bind(self.tenant.name.as_str())
            .execute(self.backend.pool())
            .await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(tenant = %self.tenant.name, "could not update the tenant registry after a commit (the next run corrects it): {e}");
        }
    }

    async fn record_failure(&mut self, migration: &Migration, error: &Error) {
        let result = sqlx::query(&format!(
            "UPDATE {} SET failed_order = $1, last_error = $2, updated_at = now() WHERE name = $3",
            self.backend.control.registry()
        ))
        .bind(migration.order())
        .bind(error.to_string())
        .bind(self.tenant.name.as_str())
        .execute(self.backend.pool())
        .await;
        if let Err(e) = result {
            tracing::warn!(tenant = %self.tenant.name, "could not record the failure of {migration} in the tenant registry: {e}");
        }
    }
}

#[async_trait]
impl Session for TenantDbSession<'_> {
    async fn applied(&mut self) -> Result<Vec<AppliedMigration>> {
        let rows = self.inner.applied().await?;
        let completed = Self::completed_from(&rows);
        // The registry is a cache of this table: heal it when an earlier run could not
        // write it after the tenant database committed. A no-op when it is in line.
        let done: Vec<i64> = completed.iter().copied().collect();
        sqlx::query(&format!(
            "UPDATE {} SET applied_order = $1, \
             failed_order = CASE WHEN failed_order = ANY($2) THEN NULL ELSE failed_order END, \
             last_error = CASE WHEN failed_order = ANY($2) THEN NULL ELSE last_error END, \
             updated_at = now() \
             WHERE name = $3 AND (applied_order IS DISTINCT FROM $1 OR failed_order = ANY($2))",
            self.backend.control.registry()
        ))
        .bind(completed.last().copied())
        .bind(&done)
        .bind(self.tenant.name.as_str())
        .execute(self.backend.pool())
        .await?;
        self.completed = Some(completed);
        Ok(rows)
    }

    async fn lock(&mut self) -> Result<()> {
        self.inner.lock().await
    }

    async fn try_lock(&mut self) -> Result<bool> {
        self.inner.try_lock().await
    }

    async fn apply(&mut self, migration: &'static Migration, direction: Direction) -> Result<()> {
        let result = self.inner.apply(migration, direction).await;
        match &result {
            Ok(()) => {
                self.refresh_registry(migration.order(), direction == Direction::Up)
                    .await
            }
            // As the tracking table: failures of up functions, unless the connection died.
            Err(error) if direction == Direction::Up && !connection_lost(error) => {
                self.record_failure(migration, error).await
            }
            Err(_) => {}
        }
        result
    }

    async fn set_checksum(&mut self, order: i64, checksum: &str) -> Result<()> {
        self.inner.set_checksum(order, checksum).await
    }

    async fn mark(&mut self, migration: &'static Migration, status: MigrationStatus) -> Result<()> {
        self.inner.mark(migration, status).await?;
        self.refresh_registry(migration.order(), status == MigrationStatus::Completed)
            .await;
        Ok(())
    }
}
