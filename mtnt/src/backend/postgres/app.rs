//! The application's side of a fleet across servers (schema per tenant): where a tenant
//! lives, and a pooled connection scoped to it, from one pool per server.
//!
//! A scoped connection sets `search_path` when it is checked out, and the pool resets it
//! when the connection comes back (`after_release`), before anyone else can check it out;
//! a connection that cannot be reset (a broken one) is closed instead. So a tenant's search
//! path never leaks into the next user of the pooled connection, whatever the code that
//! held it did (the mikro-orm #6573 class of bug).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres};

use super::super::sql::quote_ident;
use super::schema::PostgresBackend;
use crate::backend::Backend;
use crate::ctx::exec_postgres;
use crate::{Error, Result, ServerName, Tenant, TenantName, TenantState};

/// One pool per server for the application's own queries, each connection scoped to a
/// tenant when checked out ([`TenantPools::acquire`]). Schema per tenant.
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
    backend: PostgresBackend,
    max_connections: u32,
    pools: tokio::sync::Mutex<HashMap<ServerName, PgPool>>,
}

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
    /// Pools of at most `max_connections` each, on the servers of `backend`'s registry.
    pub fn new(backend: PostgresBackend, max_connections: u32) -> Self {
        Self {
            backend,
            max_connections: max_connections.max(1),
            pools: Default::default(),
        }
    }

    /// Where the tenant `name` lives: its server and schema, from the registry (one
    /// indexed read). [`Error::UnknownTenant`] when it is not registered, or still being
    /// created.
    pub async fn locate(&self, name: &TenantName) -> Result<Tenant> {
        let mut records = self
            .backend
            .tenant_records(std::slice::from_ref(name))
            .await?;
        match records.pop() {
            Some(record) if record.state == TenantState::Active => Ok(record.tenant),
            _ => Err(Error::UnknownTenant(name.to_string())),
        }
    }

    /// A connection of the tenant's server, its `search_path` set to the tenant's schema
    /// (then `public`) until it goes back to the pool.
    pub async fn acquire(&self, name: &TenantName) -> Result<TenantConnection> {
        let tenant = self.locate(name).await?;
        let mut conn = self.server_connection(tenant.server.as_ref()).await?;
        let set = format!(
            "SET search_path TO {}, public",
            quote_ident(&tenant.storage)
        );
        exec_postgres(&mut conn, &set).await?;
        Ok(TenantConnection { conn, tenant })
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
            match pools.get(&server) {
                Some(pool) => pool.clone(),
                None => {
                    let options = self.options_of(&server).await?;
                    let pool = self.pool(options);
                    pools.insert(server, pool.clone());
                    pool
                }
            }
        };
        Ok(pool.acquire().await?)
    }

    /// The connect options of `server`: those of the migrations' pool for it.
    async fn options_of(&self, server: &ServerName) -> Result<PgConnectOptions> {
        let pool = self
            .backend
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
