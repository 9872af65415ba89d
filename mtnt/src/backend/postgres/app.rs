//! The application's side of a fleet across servers: where a tenant lives, and a pooled
//! connection scoped to it.
//!
//! Schema per tenant: one pool per server. A scoped connection sets `search_path` when it
//! is checked out, and the pool resets it when the connection comes back
//! (`after_release`), before anyone else can check it out; a connection that cannot be
//! reset (a broken one) is closed instead. So a tenant's search path never leaks into the
//! next user of the pooled connection, whatever the code that held it did (the mikro-orm
//! #6573 class of bug).
//!
//! Database per tenant: a PostgreSQL session belongs to one database, so the pools are per
//! tenant database (on its server), the least recently used closed beyond a bound.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres};

use super::super::sql::quote_ident;
use super::database::PgDatabaseBackend;
use super::schema::PostgresBackend;
use crate::backend::Backend;
use crate::ctx::exec_postgres;
use crate::{Error, Result, ServerName, Tenant, TenantName, TenantState};

/// Pools for the application's own queries, each connection scoped to a tenant when
/// checked out ([`TenantPools::acquire`]): one pool per server with a schema per tenant
/// ([`TenantPools::new`]), one per tenant database with a database per tenant
/// ([`TenantPools::for_databases`]). Every checkout looks the tenant up in the registry
/// (one indexed read), so a tenant that moved (`tenant move`) is found on its new server.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> mtnt::Result<()> {
/// let backend = mtnt::PostgresBackend::new(pool);
/// let pools = mtnt::TenantPools::new(backend, 10);
/// let acme = mtnt::TenantName::new("acme")?;
/// let mut conn = pools.acquire(&acme).await?;
/// // Unqualified names are acme's tables, on acme's server.
/// let n: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
///     .fetch_one(&mut *conn)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TenantPools {
    registry: Registry,
    max_connections: u32,
    /// The most pools of tenant databases kept open at once.
    max_databases: usize,
    pools: tokio::sync::Mutex<Pools>,
}

/// The registry the tenants are looked up in, which says the tenancy model.
#[derive(Debug)]
enum Registry {
    Schemas(PostgresBackend),
    Databases(Box<PgDatabaseBackend>),
}

/// The open pools: by server, and (database per tenant) by server and tenant database,
/// each with when it was last used.
#[derive(Debug, Default)]
struct Pools {
    servers: HashMap<ServerName, PgPool>,
    databases: HashMap<(ServerName, String), (PgPool, u64)>,
    uses: u64,
}

/// How many pools of tenant databases [`TenantPools::for_databases`] keeps open at once
/// unless told ([`TenantPools::max_databases`]).
const DEFAULT_MAX_DATABASE_POOLS: usize = 64;

/// A pooled connection whose `search_path` is one tenant's schema, then `public`; back to
/// the pool (its `search_path` reset) when dropped. Derefs to the [`PgConnection`].
#[derive(Debug)]
pub struct TenantConnection {
    conn: PoolConnection<Postgres>,
    tenant: Tenant,
}

impl TenantConnection {
    /// The tenant it is scoped to, with its server and schema.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }
}

impl Deref for TenantConnection {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for TenantConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// What a connection is reset with on its way back to the pool.
const RESET: &str = "RESET search_path";

impl TenantPools {
    /// Pools of at most `max_connections` each, one per server of `backend`'s registry
    /// (schema per tenant).
    pub fn new(backend: PostgresBackend, max_connections: u32) -> Self {
        Self::of(Registry::Schemas(backend), max_connections)
    }

    /// Pools of at most `max_connections` each, one per tenant database (on its server) of
    /// `backend`'s registry (database per tenant); at most 64 open at once unless told
    /// ([`TenantPools::max_databases`]), the least recently used closed first.
    pub fn for_databases(backend: PgDatabaseBackend, max_connections: u32) -> Self {
        Self::of(Registry::Databases(Box::new(backend)), max_connections)
    }

    /// At most `n` pools of tenant databases open at once (database per tenant): with
    /// `max_connections` each, at most `n` times that many connections.
    pub fn max_databases(mut self, n: usize) -> Self {
        self.max_databases = n.max(1);
        self
    }

    fn of(registry: Registry, max_connections: u32) -> Self {
        Self {
            registry,
            max_connections: max_connections.max(1),
            max_databases: DEFAULT_MAX_DATABASE_POOLS,
            pools: Default::default(),
        }
    }

    fn backend(&self) -> &dyn Backend {
        match &self.registry {
            Registry::Schemas(backend) => backend,
            Registry::Databases(backend) => &**backend,
        }
    }

    /// Where the tenant `name` lives: its server and schema (or database), from the
    /// registry (one indexed read). [`Error::UnknownTenant`] when it is not registered, or
    /// still being created.
    pub async fn locate(&self, name: &TenantName) -> Result<Tenant> {
        let mut records = self
            .backend()
            .tenant_records(std::slice::from_ref(name))
            .await?;
        match records.pop() {
            Some(record) if record.state == TenantState::Active => Ok(record.tenant),
            _ => Err(Error::UnknownTenant(name.to_string())),
        }
    }

    /// A connection scoped to the tenant, on its server: with a schema per tenant, its
    /// `search_path` set to the tenant's schema (then `public`) until it goes back to the
    /// pool; with a database per tenant, a connection of the tenant's database.
    pub async fn acquire(&self, name: &TenantName) -> Result<TenantConnection> {
        let tenant = self.locate(name).await?;
        let conn = match &self.registry {
            Registry::Schemas(_) => {
                let mut conn = self.server_connection(tenant.server.as_ref()).await?;
                let set = format!(
                    "SET search_path TO {}, public",
                    quote_ident(&tenant.storage)
                );
                exec_postgres(&mut conn, &set).await?;
                conn
            }
            Registry::Databases(backend) => {
                let pool = self.database_pool(backend, &tenant).await?;
                pool.acquire().await?
            }
        };
        Ok(TenantConnection { conn, tenant })
    }

    /// The pool of the tenant's database, opened (and the least recently used one closed,
    /// beyond the bound) when it has none.
    async fn database_pool(&self, backend: &PgDatabaseBackend, tenant: &Tenant) -> Result<PgPool> {
        let key = (
            tenant.server.clone().unwrap_or_default(),
            tenant.storage.clone(),
        );
        let mut pools = self.pools.lock().await;
        pools.uses += 1;
        let now = pools.uses;
        if let Some((pool, used)) = pools.databases.get_mut(&key) {
            *used = now;
            return Ok(pool.clone());
        }
        let options = backend.options_of(tenant).await?;
        while pools.databases.len() >= self.max_databases {
            let oldest = pools
                .databases
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| key.clone())
                .expect("at least one pool");
            // Dropped, it closes its connections as they come back.
            pools.databases.remove(&oldest);
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .connect_lazy_with(options);
        pools.databases.insert(key, (pool.clone(), now));
        Ok(pool)
    }

    /// A connection of `server`'s pool (`None`: the control database's own) with the
    /// server's default `search_path`, for what is not a tenant's.
    pub async fn server_connection(
        &self,
        server: Option<&ServerName>,
    ) -> Result<PoolConnection<Postgres>> {
        let server = server.cloned().unwrap_or_default();
        let pool = {
            let mut pools = self.pools.lock().await;
            match pools.servers.get(&server) {
                Some(pool) => pool.clone(),
                None => {
                    let options = self.options_of(&server).await?;
                    let pool = self.pool(options);
                    pools.servers.insert(server, pool.clone());
                    pool
                }
            }
        };
        Ok(pool.acquire().await?)
    }

    /// The connect options of `server`: those of the migrations' pool for it.
    async fn options_of(&self, server: &ServerName) -> Result<PgConnectOptions> {
        let registry = match &self.registry {
            Registry::Schemas(backend) => backend,
            Registry::Databases(backend) => backend.registry(),
        };
        let pool = registry
            .pool_of(Some(server).filter(|s| !s.is_default()))
            .await?;
        Ok(pool.connect_options().as_ref().clone())
    }

    /// A pool that resets `search_path` on every connection it takes back, and closes one
    /// that cannot be reset.
    fn pool(&self, options: PgConnectOptions) -> PgPool {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .after_release(|conn, _| {
                Box::pin(async move { Ok(exec_postgres(conn, RESET).await.is_ok()) })
            })
            .connect_lazy_with(options)
    }
}
