//! PostgreSQL with one database per tenant, all on one server.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection as _, PgConnection};

use super::super::sql::quote_ident;
use super::catalog;
use super::schema::{by_server, sizes_by_storage, PostgresBackend};
use super::servers::cut_session;
use super::target::{applied_from_row, PgConn, PgTarget, Spec};
use super::tracking::{Tracking, COLUMNS};
use super::{classify, is_code, tenant_key};
use crate::backend::{
    Backend, Capabilities, Connection, ErrorClass, JournalEntry, LeaseStore, RegistryRow,
    RegistryState, SchemaObject, Target,
};
use crate::ctx::exec_postgres;
use crate::migration::BoxFuture;
use crate::{
    AppliedMigration, Engine, Error, Result, Server, ServerName, Tenancy, Tenant, TenantName,
    TenantRecord, TenantState,
};

/// The schema of a tenant database that holds its tables and its tracking table.
const TENANT_SCHEMA: &str = "public";

/// How many tenant databases `drift` reads at once.
const DESCRIBE_CONNECTIONS: usize = 4;

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
/// The control database has the pool. A tenant connection is one of its own to the
/// tenant's database, closed when released, so a run holds at most `concurrency` tenant
/// connections plus the pool, never one per tenant of the fleet.
/// [`PgDatabaseBackend::tenant_connect_options`] gives the options it connects with.
///
/// # Consistency
///
/// Migrations and their tracking rows commit in one transaction in the tenant database
/// (PostgreSQL DDL is transactional). Concurrent runs on one tenant take turns on an
/// advisory lock in the tenant's database. The tenant's tracking table is the truth about
/// its migrations; the registry row's `applied_order`, `failed_order` and `last_error`
/// are a cache (two databases cannot commit atomically), written after the tenant
/// database commits and brought back in line when a run reads the tenant.
///
/// # Creating and dropping tenants
///
/// `CREATE DATABASE` cannot run in a transaction, so creating a tenant is atomic by
/// compensation: registered as `creating`, its database created and migrated, then
/// `active`; when a step fails, the database is dropped and the row deleted. Dropping
/// uses `DROP DATABASE ... WITH (FORCE)` (PostgreSQL 13 or newer), which ends the
/// sessions still connected to it.
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

    /// Puts the registry and the public migrations in another schema of the control
    /// database.
    pub fn with_control_schema(mut self, schema: &str) -> Result<Self> {
        self.control = self.control.with_control_schema(schema)?;
        Ok(self)
    }

    /// The pool of the control database.
    pub fn pool(&self) -> &PgPool {
        self.control.pool()
    }

    /// The control database: tenant registry, public tracking table, public tables.
    pub fn control_database(&self) -> &str {
        &self.control_db
    }

    /// The backend of the registry (in the control database) and of the servers' pools.
    pub(super) fn registry(&self) -> &PostgresBackend {
        &self.control
    }

    /// The options of the control database's connections.
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.options
    }

    /// The options a tenant connection connects to the database of `tenant` with.
    pub fn tenant_connect_options(&self, tenant: &Tenant) -> PgConnectOptions {
        self.options.clone().database(&tenant.storage)
    }

    /// Refuses a tenant whose database would be the control database, before any SQL,
    /// as MySQL does.
    fn check_not_control(&self, tenant: &Tenant) -> Result<()> {
        if tenant.storage == self.control_db {
            return Err(Error::InvalidTenantName {
                name: tenant.name.to_string(),
                reason: "it is the name of the control database",
            });
        }
        Ok(())
    }

    /// The rows of `sql` (a run's tracking rows, the run id as `$1`) in the database of
    /// `tenant`: none where it has no database, no tracking table, or no `run_id` column.
    /// A connection of its own to the database of `tenant`; [`Error::StorageMissing`]
    /// when there is none.
    async fn connect_tenant(&self, tenant: &Tenant) -> Result<PgConnection> {
        self.check_not_control(tenant)?;
        match PgConnection::connect_with(&self.options_of(tenant).await?).await {
            Ok(conn) => Ok(conn),
            Err(e) if is_code(&e, "3D000") => Err(Error::storage_missing(tenant)),
            // Another server that stopped answering (or is shutting down): its other
            // tenants fail at once.
            Err(e) if cut_session(&e) && tenant.server.is_some() => {
                let server = tenant.server.as_ref().expect("matched");
                Err(self.control.server_lost(server, &e).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// [`PgDatabaseBackend::tenant_connect_options`] on the tenant's own server.
    pub(super) async fn options_of(&self, tenant: &Tenant) -> Result<PgConnectOptions> {
        match &tenant.server {
            None => Ok(self.tenant_connect_options(tenant)),
            Some(server) => Ok(self
                .control
                .pool_of(Some(server))
                .await?
                .connect_options()
                .as_ref()
                .clone()
                .database(&tenant.storage)),
        }
    }

    async fn tenant_run_rows(
        &self,
        tenant: &Tenant,
        sql: &str,
        run_id: &str,
    ) -> Result<Vec<(TenantName, AppliedMigration)>> {
        let options = self.options_of(tenant).await?;
        let mut conn = match PgConnection::connect_with(&options).await {
            Ok(conn) => conn,
            Err(e) if is_code(&e, "3D000") => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let rows = sqlx::query(sql).bind(run_id).fetch_all(&mut conn).await;
        let _ = conn.close().await;
        match rows {
            Ok(rows) => rows
                .iter()
                .map(|row| Ok((tenant.name.clone(), applied_from_row(row)?)))
                .collect(),
            Err(e) if is_code(&e, "42P01") || is_code(&e, "42703") => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one statement on a pooled connection of the server of `tenant` (the control
    /// database's pool for the default server).
    async fn exec_on_server(&self, tenant: &Tenant, sql: &str) -> Result<()> {
        let pool = self.control.pool_of(tenant.server.as_ref()).await?;
        let mut conn = pool.acquire().await?;
        exec_postgres(&mut conn, sql).await?;
        Ok(())
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

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_transactional_ddl().with_servers()
    }

    fn classify(&self, error: &Error) -> ErrorClass {
        classify(error)
    }

    async fn prepare(&self) -> Result<()> {
        self.control.prepare_for(Tenancy::Database).await
    }

    async fn registry_state(&self) -> Result<RegistryState> {
        self.control.registry_state_of().await
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

    async fn invalid_registry_rows(&self) -> Result<Vec<Error>> {
        self.control.invalid_registry_rows().await
    }

    async fn fingerprints(&self, _names: &[TenantName]) -> Result<Vec<(TenantName, String)>> {
        // The registry cannot join the tenant's transactions: no fingerprint would vouch
        // for the tracking rows.
        Ok(Vec::new())
    }

    async fn connection_budget(&self) -> Result<Option<usize>> {
        // A tenant session is a connection of its own to the tenant's database, and reads
        // whether the tenant is registered on the control pool meanwhile: two connections
        // per tenant at once, at most.
        let server_free = self.control.server_free().await? - PostgresBackend::CONTROL_CONNECTIONS;
        let pool = self
            .pool()
            .options()
            .get_max_connections()
            .saturating_sub(1);
        let budget = (server_free / 2).min(i64::from(pool)).max(1);
        Ok(Some(usize::try_from(budget).unwrap_or(1)))
    }

    async fn server_connection_budget(&self, server: &ServerName) -> Result<Option<usize>> {
        // A tenant session is a connection of its own there; the control pool's
        // connections (for whether the tenant is registered) are on the default server.
        Ok(self.control.server_budget(server, false).await)
    }

    async fn server_gone(&self, tenant: &Tenant, error: &Error) -> Option<Error> {
        self.control.server_gone(tenant, error).await
    }

    async fn connect<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Connection + 'a>> {
        let Target::Tenant(tenant) = target else {
            return self.control.connect(Target::Public).await;
        };
        let conn = self.connect_tenant(tenant).await?;
        let schema_q = quote_ident(TENANT_SCHEMA);
        let spec = Spec {
            tenant: Some(tenant),
            lock_key: tenant_key(&tenant.storage),
            search_path: schema_q.clone(),
            tracking: Tracking::own(&schema_q),
            storage_ddl: None,
            row: None,
            probe: Some(self.control.registered_probe(tenant)),
        };
        Ok(Box::new(PgTarget::new(PgConn::Owned(Some(conn)), spec)))
    }

    async fn register(
        &self,
        tenant: &Tenant,
        state: TenantState,
        applied_order: Option<i64>,
    ) -> Result<()> {
        self.check_not_control(tenant)?;
        self.control.register(tenant, state, applied_order).await
    }

    async fn set_state(&self, tenant: &Tenant, state: TenantState) -> Result<()> {
        self.control.set_state(tenant, state).await
    }

    async fn unregister(&self, tenant: &Tenant, only_creating: bool) -> Result<()> {
        self.control.unregister(tenant, only_creating).await
    }

    async fn write_registry(&self, tenant: &Tenant, row: RegistryRow<'_>) -> Result<()> {
        self.control.write_registry(tenant, row).await
    }

    async fn create_storage(&self, tenant: &Tenant) -> Result<()> {
        self.check_not_control(tenant)?;
        // The tracking table comes with the tenant's first transaction.
        self.exec_on_server(
            tenant,
            &format!("CREATE DATABASE {}", quote_ident(&tenant.storage)),
        )
        .await
    }

    async fn drop_storage(&self, tenant: &Tenant) -> Result<()> {
        self.check_not_control(tenant)?;
        self.exec_on_server(
            tenant,
            &format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&tenant.storage)
            ),
        )
        .await
    }

    async fn unregistered_storage(&self, like: &str) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1 AND NOT datistemplate \
             AND datallowconn AND datname NOT IN ('postgres', $2) \
             AND datname NOT IN (SELECT schema_name FROM {}) ORDER BY datname",
            self.control.registry()
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(like)
            .bind(&self.control_db)
            .fetch_all(self.pool())
            .await?)
    }

    async fn unregistered_storage_on(
        &self,
        server: &ServerName,
        like: &str,
    ) -> Result<Vec<String>> {
        let pool = self.control.pool_of(Some(server)).await?;
        let on_server: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1 AND NOT datistemplate \
             AND datallowconn AND datname NOT IN ('postgres', current_database()) ORDER BY datname",
        )
        .bind(like)
        .fetch_all(&pool)
        .await?;
        self.control.not_registered(on_server).await
    }

    async fn describe(&self, tenants: &[Tenant]) -> Result<Vec<Result<Vec<SchemaObject>>>> {
        let describe_one = async |tenant: &Tenant| -> Result<Vec<SchemaObject>> {
            let mut conn = self.connect_tenant(tenant).await?;
            let described = catalog::describe(&mut conn, &[TENANT_SCHEMA]).await;
            let _ = conn.close().await;
            Ok(described?.remove(0).unwrap_or_default())
        };
        // A database is read on a connection of its own: a few at once.
        Ok(futures_util::stream::iter(tenants)
            .map(describe_one)
            .buffered(DESCRIBE_CONNECTIONS)
            .collect()
            .await)
    }

    async fn journal_write(&self, entry: &JournalEntry, keep: usize) -> Result<()> {
        self.control.journal_write(entry, keep).await
    }

    async fn journal_read(&self, kind: &str, limit: usize) -> Result<Vec<JournalEntry>> {
        self.control.journal_read(kind, limit).await
    }

    fn leases(&self) -> Option<Arc<dyn LeaseStore>> {
        self.control.leases()
    }

    async fn servers(&self) -> Result<Vec<Server>> {
        self.control.servers_of().await
    }

    async fn move_tenant(
        &self,
        tenant: &Tenant,
        to: Option<&ServerName>,
        keep_source: bool,
    ) -> Result<()> {
        self.check_not_control(tenant)?;
        self.control
            .move_storage(tenant, to, keep_source, super::moving::Storage::Database)
            .await
    }

    async fn add_server(&self, name: &ServerName, url: &str, check: bool) -> Result<()> {
        self.control
            .add_server_of(name, url, check.then_some(super::schema::Distinct::Cluster))
            .await
    }

    async fn remove_server(&self, name: &ServerName) -> Result<()> {
        self.control.remove_server_of(name).await
    }

    async fn cordon_server(&self, name: &ServerName, cordoned: bool) -> Result<()> {
        self.control.cordon_server_of(name, cordoned).await
    }

    async fn run_rows(
        &self,
        run_id: &str,
        tenants: &[Tenant],
        concurrency: usize,
    ) -> Result<Vec<(TenantName, AppliedMigration)>> {
        // Each tenant's rows are in its own database: one connection and query each.
        let sql = format!(
            "SELECT {COLUMNS} FROM {}.mtnt_migrations WHERE run_id = $1 ORDER BY migration_order",
            quote_ident(TENANT_SCHEMA)
        );
        let reads: Vec<BoxFuture<'_, Result<Vec<(TenantName, AppliedMigration)>>>> = tenants
            .iter()
            .map(|tenant| Box::pin(self.tenant_run_rows(tenant, &sql, run_id)) as BoxFuture<'_, _>)
            .collect();
        let per_tenant: Vec<_> = stream::iter(reads)
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
        Ok(per_tenant.into_iter().flatten().collect())
    }

    async fn tenant_sizes(&self, tenants: &[Tenant]) -> Result<Vec<(TenantName, u64)>> {
        let mut sizes = Vec::new();
        for (server, positions) in by_server(tenants) {
            let group: Vec<Tenant> = positions.iter().map(|&at| tenants[at].clone()).collect();
            let databases: Vec<&str> = group.iter().map(|t| t.storage.as_str()).collect();
            let pool = self.control.pool_of(server).await?;
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT datname::text, pg_database_size(oid) FROM pg_database WHERE datname = ANY($1)",
            )
            .bind(&databases)
            .fetch_all(&pool)
            .await?;
            sizes.extend(sizes_by_storage(&group, rows));
        }
        Ok(sizes)
    }
}
