//! PostgreSQL with one schema per tenant, all in one database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::super::sql::{invalid_names, quote_ident, valid_page};
use super::catalog;
use super::lease::PgLeases;
use super::servers::{servers_ddl, sql_cause, Servers};
use super::target::applied_from_row;
use super::target::{PgConn, PgTarget, Probe, Spec};
use super::tracking::{registered_here, shared_ddl, shared_table, TenantRow, Tracking, COLUMNS};
use super::{classify, is_code, literal, maybe_invalid_name, public_key, tenant_key};
use crate::backend::{
    Backend, Capabilities, Connection, ErrorClass, JournalEntry, LeaseStore, RegistryRow,
    RegistryState, SchemaObject, Target,
};
use crate::ctx::exec_postgres;
use crate::{
    AppliedMigration, Engine, Error, Result, Server, ServerName, Tenancy, Tenant, TenantName,
    TenantRecord, TenantState,
};

/// Tenants whose schemas one catalog query of `drift` describes.
const DESCRIBE_PAGE: usize = 250;

/// What a server being added must not share with a registered one: with a schema per
/// tenant, the database (another database of one cluster is another server); with a
/// database per tenant, the cluster (tenant databases of both would collide).
#[derive(Clone, Copy, Debug)]
pub(super) enum Distinct {
    Database,
    Cluster,
}

/// The setting that cordons the default server, which has no row in the servers table.
const DEFAULT_CORDONED: &str = "default_server_cordoned";

/// Catalog queries of `drift` at once.
const DESCRIBE_CONNECTIONS: usize = 2;

/// PostgreSQL with one schema per tenant, all in one database.
///
/// The control schema (default `public`) holds the tenant registry `mtnt_tenants`, the
/// tracking table of public migrations `mtnt_migrations`, and the tracking rows of every
/// tenant, `mtnt_tenant_migrations` (shared: see `tracking.rs` for why). A tenant's
/// migrations, its tracking rows and its registry row (with the fingerprint of its
/// completed migrations) commit in one transaction, and a tenant is created, with its
/// first migrations, in one transaction too.
#[derive(Clone, Debug)]
pub struct PostgresBackend {
    pool: PgPool,
    control: String,
    control_q: String,
    /// The other servers of the fleet and their pools.
    servers: Arc<Servers>,
    /// The registry has its `server` column (set once seen: a registry from before
    /// servers gets it from the next writing command, and reads make nothing).
    server_column: Arc<AtomicBool>,
}

/// Makes any change of the shared tracking table clear the changed tenants' fingerprints
/// in the registry: a change made by hand (a row deleted to run a migration again, an
/// edited checksum) leaves none, so a fleet run opens a session for the tenant and checks
/// its tracking rows in full. Transactions that write the new fingerprint themselves set
/// `OWN_BOOKKEEPING` and skip the trigger. As its owner: whoever may edit the tracking
/// table may clear the fingerprint, without a grant on the registry.
fn tracking_trigger_sql(control_q: &str, registry: &str) -> String {
    let table = shared_table(control_q);
    let control_l = literal(control_q);
    format!(
        "IF NOT EXISTS (SELECT FROM pg_proc WHERE proname = 'mtnt_tenant_tracking_changed'
                        AND pronamespace = {control_l}::regnamespace) THEN
            CREATE FUNCTION {control_q}.mtnt_tenant_tracking_changed() RETURNS trigger
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
            BEGIN
                IF TG_LEVEL = 'STATEMENT' THEN
                    UPDATE {registry} SET fingerprint = NULL WHERE fingerprint IS NOT NULL;
                    RETURN NULL;
                END IF;
                IF TG_OP <> 'INSERT' THEN
                    UPDATE {registry} SET fingerprint = NULL WHERE name = OLD.tenant AND fingerprint IS NOT NULL;
                END IF;
                IF TG_OP <> 'DELETE' THEN
                    UPDATE {registry} SET fingerprint = NULL WHERE name = NEW.tenant AND fingerprint IS NOT NULL;
                END IF;
                RETURN NULL;
            END $fn$;
         END IF;
         IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = {table_l}::regclass AND tgname = 'mtnt_changed') THEN
            CREATE TRIGGER mtnt_changed AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW
            WHEN (pg_catalog.current_setting('mtnt.bookkeeping', true) IS DISTINCT FROM 'on')
            EXECUTE FUNCTION {control_q}.mtnt_tenant_tracking_changed();
            CREATE TRIGGER mtnt_truncated AFTER TRUNCATE ON {table} FOR EACH STATEMENT
            EXECUTE FUNCTION {control_q}.mtnt_tenant_tracking_changed();
         END IF;",
        table_l = literal(&table),
    )
}

/// The sizes of `rows` (storage, bytes) by the tenant of each storage.
pub(super) fn sizes_by_storage(
    tenants: &[Tenant],
    rows: Vec<(String, i64)>,
) -> Vec<(TenantName, u64)> {
    let by_storage: std::collections::HashMap<String, i64> = rows.into_iter().collect();
    tenants
        .iter()
        .filter_map(|t| {
            by_storage
                .get(&t.storage)
                .map(|&bytes| (t.name.clone(), u64::try_from(bytes).unwrap_or(0)))
        })
        .collect()
}

/// The positions of `tenants` by the server they are on (the default server's first).
pub(super) fn by_server(tenants: &[Tenant]) -> Vec<(Option<&ServerName>, Vec<usize>)> {
    let mut groups: Vec<(Option<&ServerName>, Vec<usize>)> = Vec::new();
    for (at, tenant) in tenants.iter().enumerate() {
        let server = tenant.server.as_ref();
        match groups.iter_mut().find(|(s, _)| *s == server) {
            Some((_, positions)) => positions.push(at),
            None => groups.push((server, vec![at])),
        }
    }
    groups.sort_by_key(|(s, _)| s.is_some());
    groups
}

impl PostgresBackend {
    /// The schemas of one page of tenants of one server, in one catalog query.
    async fn describe_page(&self, page: &[Tenant]) -> Result<Vec<Result<Vec<SchemaObject>>>> {
        let pool = self
            .pool_of(page.first().and_then(|t| t.server.as_ref()))
            .await?;
        let mut conn = pool.acquire().await?;
        let schemas: Vec<&str> = page.iter().map(|t| t.storage.as_str()).collect();
        let objects = catalog::describe(&mut conn, &schemas).await?;
        Ok(page
            .iter()
            .zip(objects)
            .map(|(tenant, objects)| objects.ok_or_else(|| Error::storage_missing(tenant)))
            .collect())
    }

    /// A backend on `pool` whose control schema is `public`.
    pub fn new(pool: PgPool) -> Self {
        let control_q = quote_ident("public");
        Self {
            servers: Arc::new(Servers::new(
                &control_q,
                pool.options().get_max_connections(),
            )),
            pool,
            control: "public".to_owned(),
            control_q,
            server_column: Arc::default(),
        }
    }

    /// Puts the registry and the public migrations in another schema.
    pub fn with_control_schema(mut self, schema: &str) -> Result<Self> {
        if schema.is_empty()
            || schema.len() > 63
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::Invalid(format!(
                "invalid control schema {schema:?}: use 1 to 63 letters, digits and '_'"
            )));
        }
        self.control = schema.to_owned();
        self.control_q = quote_ident(schema);
        self.servers = Arc::new(Servers::new(
            &self.control_q,
            self.pool.options().get_max_connections(),
        ));
        Ok(self)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The control schema, quoted.
    pub(super) fn control_q(&self) -> &str {
        &self.control_q
    }

    /// The qualified registry table.
    pub(super) fn registry(&self) -> String {
        format!("{}.mtnt_tenants", self.control_q)
    }

    /// `None` for a row whose name is no valid tenant name.
    fn record_from_row(row: &PgRow) -> Result<Option<TenantRecord>> {
        let name: String = row.try_get("name")?;
        let Ok(name) = TenantName::new(name) else {
            return Ok(None);
        };
        let server = row
            .try_get::<Option<String>, _>("server")?
            .map(ServerName::new)
            .transpose()
            .map_err(|e| Error::Corrupt(format!("tenant registry, tenant {name}: {e}")))?;
        Ok(Some(TenantRecord {
            tenant: Tenant {
                name,
                storage: row.try_get("schema_name")?,
                server,
            },
            state: TenantState::parse(row.try_get("state")?)?,
            created_at: row.try_get("created_at")?,
            applied_order: row.try_get("applied_order")?,
            failed_order: row.try_get("failed_order")?,
            last_error: row.try_get("last_error")?,
        }))
    }

    /// A page of [`Backend::tenant_page`], each record with the column `fingerprint` when
    /// `extra` is `, fingerprint` (else `None`).
    async fn page_of(
        &self,
        after: Option<&TenantName>,
        limit: usize,
        extra: &str,
    ) -> Result<Vec<(TenantRecord, Option<String>)>> {
        let sql = format!(
            "{} WHERE ($1::text IS NULL OR name > $1) ORDER BY name LIMIT $2",
            self.select_records(extra).await?
        );
        valid_page(after, limit, async |after, limit| {
            let rows = sqlx::query(&sql)
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|row| {
                    let fingerprint = match extra.is_empty() {
                        true => None,
                        false => row.try_get::<Option<String>, _>("fingerprint")?,
                    };
                    Ok((
                        row.try_get::<String, _>("name")?,
                        Self::record_from_row(row)?.map(|record| (record, fingerprint)),
                    ))
                })
                .collect()
        })
        .await
    }

    /// The registry's columns of a [`TenantRecord`], then `extra`; a registry from before
    /// servers reads as every tenant on the default server.
    async fn select_records(&self, extra: &str) -> Result<String> {
        let server = if self.has_server_column().await? {
            "server"
        } else {
            "NULL::text AS server"
        };
        Ok(format!(
            "SELECT name, schema_name, state, created_at, applied_order, failed_order, last_error, {server}{extra} FROM {}",
            self.registry()
        ))
    }

    /// Whether the registry has its `server` column yet.
    async fn has_server_column(&self) -> Result<bool> {
        if self.server_column.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let has: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass($1) \
             AND attname = 'server' AND NOT attisdropped)",
        )
        .bind(self.registry())
        .fetch_one(&self.pool)
        .await?;
        self.server_column.store(has, Ordering::Relaxed);
        Ok(has)
    }

    /// The pool of the server `tenant` is on: the control pool for the default server.
    pub(super) async fn pool_of(&self, server: Option<&ServerName>) -> Result<PgPool> {
        match server {
            None => Ok(self.pool.clone()),
            Some(server) => self.servers.pool(&self.pool, server).await,
        }
    }

    /// Those of `storages` that no registry row names.
    pub(super) async fn not_registered(&self, storages: Vec<String>) -> Result<Vec<String>> {
        let registered: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT schema_name FROM {} WHERE schema_name = ANY($1)",
            self.registry()
        ))
        .bind(&storages)
        .fetch_all(&self.pool)
        .await?;
        Ok(storages
            .into_iter()
            .filter(|s| !registered.contains(s))
            .collect())
    }

    /// [`Servers::budget`] of `server`.
    pub(super) async fn server_budget(&self, server: &ServerName, pooled: bool) -> Option<usize> {
        self.servers.budget(&self.pool, server, pooled).await
    }

    /// `server` failed to connect with `error`: see [`Servers::lost`].
    pub(super) async fn server_lost(&self, server: &ServerName, error: &sqlx::Error) -> Error {
        self.servers.lost(server, error).await
    }

    /// How a read of a tenant whose registry is in another database (or on another
    /// server) tells whether the tenant is registered.
    pub(super) fn registered_probe<'a>(&'a self, tenant: &'a Tenant) -> Probe<'a> {
        Probe {
            pool: &self.pool,
            sql: format!(
                "SELECT EXISTS (SELECT FROM {} r WHERE r.name = $1 AND {})",
                self.registry(),
                registered_here(tenant.server.as_ref())
            ),
            name: tenant.name.as_str(),
        }
    }

    /// The control database's own server as `server list` shows it: its URL without a
    /// password.
    fn default_server_url(&self) -> String {
        let options = self.pool.connect_options();
        format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        )
    }

    /// [`Backend::servers`] of this registry.
    pub(super) async fn servers_of(&self) -> Result<Vec<Server>> {
        let default = Server {
            name: ServerName::default_server(),
            url: self.default_server_url(),
            tenants: 0,
            cordoned: false,
        };
        let listed: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(&self.servers.table)
            .fetch_one(&self.pool)
            .await?;
        if listed.is_none() || !self.has_server_column().await? {
            return Ok(vec![Server {
                tenants: self.tenant_count().await?,
                ..default
            }]);
        }
        let rows: Vec<(Option<String>, Option<String>, i64, bool)> = sqlx::query_as(&format!(
            // One scan of the registry for all servers: a count per server in a subquery
            // was planned as parallel and JIT-compiled (the servers table's estimate), 80 ms
            // of every `tenant create` at 10,000 tenants. `cordoned` read through jsonb:
            // a registry from before cordons has no such column, and a read adds none.
            "SELECT s.name, s.url, coalesce(c.tenants, 0), s.cordoned \
             FROM (SELECT NULL::text AS name, NULL::text AS url, \
                     coalesce((SELECT value = 'true' FROM {settings} WHERE name = '{DEFAULT_CORDONED}'), false) AS cordoned \
                   UNION ALL SELECT name, url, coalesce((to_jsonb(t) ->> 'cordoned')::boolean, false) FROM {servers} t) AS s \
             LEFT JOIN (SELECT server, count(*) AS tenants FROM {registry} GROUP BY server) AS c \
             ON c.server IS NOT DISTINCT FROM s.name \
             ORDER BY s.name NULLS FIRST",
            registry = self.registry(),
            servers = self.servers.table,
            settings = self.settings(),
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(name, url, tenants, cordoned)| {
                let tenants = u64::try_from(tenants).unwrap_or(0);
                Ok(match (name, url) {
                    (Some(name), Some(url)) => Server {
                        name: ServerName::new(name)
                            .map_err(|e| Error::Corrupt(format!("{}: {e}", self.servers.table)))?,
                        url,
                        tenants,
                        cordoned,
                    },
                    _ => Server {
                        tenants,
                        cordoned,
                        ..default.clone()
                    },
                })
            })
            .collect()
    }

    /// [`Backend::add_server`] of this registry.
    pub(super) async fn add_server_of(
        &self,
        name: &ServerName,
        url: &str,
        check: Option<Distinct>,
    ) -> Result<()> {
        if name.is_default() {
            return Err(Error::ServerExists(name.clone()));
        }
        if let Some(distinct) = check {
            let registered: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT FROM {} WHERE name = $1)",
                self.servers.table
            ))
            .bind(name.as_str())
            .fetch_one(&self.pool)
            .await?;
            if registered {
                return Err(Error::ServerExists(name.clone()));
            }
            self.check_new_server(name, url, distinct).await?;
        }
        let url = crate::url_without_password(url)?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO {} (name, url) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            self.servers.table
        ))
        .bind(name.as_str())
        .bind(&url)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::ServerExists(name.clone()));
        }
        Ok(())
    }

    /// The server `name` at `url` answers (with its password), and is not a server
    /// registered already: the same database (or, `Distinct::Cluster`, the same cluster) as
    /// the default server or a registered one that answers.
    async fn check_new_server(
        &self,
        name: &ServerName,
        url: &str,
        distinct: Distinct,
    ) -> Result<()> {
        let not_added = |e: Error| Error::ServerNotAdded {
            server: name.clone(),
            source: Box::new(e),
        };
        let pool = self.servers.connect(name, url).await.map_err(not_added)?;
        let identity = Self::identity(&pool).await.map_err(not_added);
        pool.close().await;
        let (system_identifier, database) = identity?;
        for server in self.servers_of().await? {
            let other = if server.name.is_default() {
                Self::identity(&self.pool).await
            } else {
                // A registered server that does not answer now cannot be told apart.
                match self.pool_of(Some(&server.name)).await {
                    Ok(pool) => Self::identity(&pool).await,
                    Err(_) => continue,
                }
            };
            let Ok((other_id, other_db)) = other else {
                continue;
            };
            let same = match distinct {
                Distinct::Database => other_id == system_identifier && other_db == database,
                Distinct::Cluster => other_id == system_identifier,
            };
            if same {
                return Err(Error::SameServer {
                    server: name.clone(),
                    other: server.name,
                    what: match distinct {
                        Distinct::Database => "the database",
                        Distinct::Cluster => "the PostgreSQL cluster",
                    },
                    system_identifier,
                });
            }
        }
        Ok(())
    }

    /// The cluster's system identifier and the database of `pool`.
    async fn identity(pool: &PgPool) -> Result<(String, String)> {
        Ok(sqlx::query_as(
            "SELECT system_identifier::text, current_database()::text FROM pg_control_system()",
        )
        .fetch_one(pool)
        .await?)
    }

    /// [`Backend::cordon_server`] of this registry: the default server's cordon is a
    /// setting, the others' a column of the servers table.
    pub(super) async fn cordon_server_of(&self, name: &ServerName, cordoned: bool) -> Result<()> {
        let done = if name.is_default() {
            sqlx::query(&format!(
                "INSERT INTO {} (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                self.settings()
            ))
            .bind(DEFAULT_CORDONED)
            .bind(cordoned.to_string())
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query(&format!(
                "UPDATE {} SET cordoned = $2 WHERE name = $1",
                self.servers.table
            ))
            .bind(name.as_str())
            .bind(cordoned)
            .execute(&self.pool)
            .await?
        };
        if done.rows_affected() == 0 {
            return Err(Error::UnknownServer {
                server: name.clone(),
                default: crate::DEFAULT_SERVER,
            });
        }
        Ok(())
    }

    /// [`Backend::remove_server`] of this registry: refused while it holds tenants (the
    /// registry's foreign key refuses it too, should a tenant be placed meanwhile).
    pub(super) async fn remove_server_of(&self, name: &ServerName) -> Result<()> {
        let unknown = || Error::UnknownServer {
            server: name.clone(),
            default: crate::DEFAULT_SERVER,
        };
        if name.is_default() {
            return Err(Error::Invalid(format!(
                "server {name} is the control database's own; it cannot be removed"
            )));
        }
        let tenants: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT (SELECT count(*) FROM {} WHERE server = s.name) FROM {} s WHERE s.name = $1",
            self.registry(),
            self.servers.table
        ))
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        match tenants {
            None => return Err(unknown()),
            Some(0) => {}
            Some(n) => {
                return Err(Error::ServerInUse {
                    server: name.clone(),
                    tenants: u64::try_from(n).unwrap_or(0),
                })
            }
        }
        let deleted = sqlx::query(&format!(
            "DELETE FROM {} WHERE name = $1",
            self.servers.table
        ))
        .bind(name.as_str())
        .execute(&self.pool)
        .await;
        match deleted {
            Ok(done) if done.rows_affected() == 0 => Err(unknown()),
            Ok(_) => Ok(()),
            // A tenant placed there since the count: the foreign key keeps it.
            Err(e) if is_code(&e, "23503") => Err(Error::ServerInUse {
                server: name.clone(),
                tenants: 1,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The search path of tenant migrations: the tenant's schema, then the control schema
    /// (so tenant tables can reference shared ones unqualified), then `public`.
    /// The connections a fleet run needs beside its tenants' (registry reads, the
    /// lease's heartbeat), which [`Backend::connection_budget`] leaves free.
    pub(super) const CONTROL_CONNECTIONS: i64 = 2;

    /// How many more connections the server would accept now, counting those this pool
    /// holds (they are its own to use): `max_connections` less the superuser reserve and
    /// the client sessions connected.
    pub(super) async fn server_free(&self) -> Result<i64> {
        let (max, reserved, used): (i32, i32, i64) = sqlx::query_as(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, \
             (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(i64::from(max - reserved) - used + i64::from(self.pool.size()))
    }

    fn tenant_search_path(&self, schema_q: &str) -> String {
        if self.control == "public" {
            format!("{schema_q}, public")
        } else {
            format!("{schema_q}, {}, public", self.control_q)
        }
    }

    /// The public target: the control schema, with a tracking table of its own.
    fn public_spec(&self) -> Spec<'static> {
        Spec {
            tenant: None,
            lock_key: public_key(&self.control),
            search_path: self.control_q.clone(),
            tracking: Tracking::own(&self.control_q),
            storage_ddl: None,
            row: None,
            probe: None,
        }
    }

    /// Runs `sql` (several statements) on a pooled connection.
    async fn exec(&self, sql: &str) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        exec_postgres(&mut conn, sql).await?;
        Ok(())
    }

    /// Runs one statement with the tenant's name as `$1`.
    async fn on_row(&self, sql: &str, tenant: &Tenant) -> Result<()> {
        sqlx::query(sql)
            .bind(tenant.name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The qualified table of recorded settings: the tenancy model and the control schema
    /// the registry was set up with.
    fn journal(&self) -> String {
        format!("{}.mtnt_journal", self.control_q)
    }

    pub(super) fn settings(&self) -> String {
        format!("{}.mtnt_settings", self.control_q)
    }

    /// Where the registry is, for messages: `database app on 127.0.0.1:5432, schema
    /// public`.
    pub(super) fn place(&self) -> String {
        let options = self.pool.connect_options();
        let database = options
            .get_database()
            .filter(|d| !d.is_empty())
            .unwrap_or(options.get_username());
        format!(
            "database {database} on {}:{}, schema {}",
            options.get_host(),
            options.get_port(),
            self.control
        )
    }

    /// [`Backend::prepare`] for a backend of `tenancy` on this control schema (schema
    /// per tenant, or the control database of database per tenant).
    pub(super) async fn prepare_for(&self, tenancy: Tenancy) -> Result<()> {
        // The advisory lock serialises concurrent first runs, whose CREATE ... IF NOT EXISTS
        // would otherwise race on the catalog.
        let sql = format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock(hashtext('mtnt.prepare'));
             CREATE SCHEMA IF NOT EXISTS {control};
             CREATE TABLE IF NOT EXISTS {registry} (
                name text PRIMARY KEY,
                schema_name text NOT NULL UNIQUE,
                state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'creating')),
                created_at timestamptz NOT NULL DEFAULT now(),
                applied_order bigint,
                failed_order bigint,
                last_error text,
                updated_at timestamptz NOT NULL DEFAULT now(),
                fingerprint text
             );
             {tracking};
             {shared};
             CREATE TABLE IF NOT EXISTS {settings} (name text PRIMARY KEY, value text NOT NULL);
             {servers};
             INSERT INTO {settings} (name, value) VALUES ('tenancy', {tenancy}), ('control_schema', {control_l})
                ON CONFLICT (name) DO NOTHING;
             DO $mtnt$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = {registry_l}::regclass
                               AND attname = 'fingerprint' AND NOT attisdropped) THEN
                    ALTER TABLE {registry} ADD COLUMN fingerprint text;
                END IF;
                IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = {registry_l}::regclass
                               AND attname = 'server' AND NOT attisdropped) THEN
                    ALTER TABLE {registry} ADD COLUMN server text REFERENCES {servers_table} (name);
                END IF;
                IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = {servers_l}::regclass
                               AND attname = 'cordoned' AND NOT attisdropped) THEN
                    ALTER TABLE {servers_table} ADD COLUMN cordoned boolean NOT NULL DEFAULT false;
                END IF;
                IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = {shared_l}::regclass
                               AND attname = 'run_id' AND NOT attisdropped) THEN
                    ALTER TABLE {shared_table} ADD COLUMN run_id text;
                END IF;
                {trigger}
             END $mtnt$;
             COMMIT",
            control = self.control_q,
            registry = self.registry(),
            registry_l = literal(&self.registry()),
            shared_table = shared_table(&self.control_q),
            shared_l = literal(&shared_table(&self.control_q)),
            settings = self.settings(),
            tenancy = literal(tenancy.as_str()),
            control_l = literal(&self.control),
            tracking = Tracking::own(&self.control_q).own_ddl(),
            shared = shared_ddl(&self.control_q, &self.registry()),
            trigger = tracking_trigger_sql(&self.control_q, &self.registry()),
            servers = servers_ddl(&self.servers.table),
            servers_table = self.servers.table,
            servers_l = literal(&self.servers.table),
        );
        let mut conn = self.pool.acquire().await?;
        if let Err(e) = exec_postgres(&mut conn, &sql).await {
            if exec_postgres(&mut conn, "ROLLBACK").await.is_err() {
                conn.close_on_drop();
            }
            return Err(e.into());
        }
        self.server_column.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The model of a registry set up before mtnt recorded it, from where its tenants
    /// are: database per tenant when some are databases of the server and none a schema
    /// of this database; `None` when nothing tells.
    pub(super) async fn legacy_tenancy(&self) -> Result<Option<Tenancy>> {
        let (schemas, databases): (bool, bool) = sqlx::query_as(&format!(
            "SELECT EXISTS (SELECT FROM {registry} r JOIN pg_namespace n ON n.nspname = r.schema_name), \
             EXISTS (SELECT FROM {registry} r JOIN pg_database d ON d.datname = r.schema_name)",
            registry = self.registry()
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok(match (schemas, databases) {
            (false, true) => Some(Tenancy::Database),
            (true, false) => Some(Tenancy::Schema),
            _ => None,
        })
    }

    /// [`Backend::registry_state`] of this control schema: catalog reads, and the recorded
    /// model where there is one.
    pub(super) async fn registry_state_of(&self) -> Result<RegistryState> {
        let (registry, settings): (bool, bool) =
            sqlx::query_as("SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL")
                .bind(self.registry())
                .bind(self.settings())
                .fetch_one(&self.pool)
                .await?;
        if !registry {
            let other_schemas = sqlx::query_scalar(
                "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = 'mtnt_tenants' AND c.relkind IN ('r', 'p') ORDER BY 1",
            )
            .fetch_all(&self.pool)
            .await?;
            return Ok(RegistryState::Missing {
                place: self.place(),
                other_schemas,
            });
        }
        if !settings {
            return Ok(RegistryState::Unrecorded);
        }
        let recorded: Option<String> = sqlx::query_scalar(&format!(
            "SELECT value FROM {} WHERE name = 'tenancy'",
            self.settings()
        ))
        .fetch_optional(&self.pool)
        .await?;
        match recorded {
            None => Ok(RegistryState::Unrecorded),
            Some(name) => Tenancy::parse(&name)
                .filter(|t| *t != Tenancy::File)
                .map(RegistryState::Recorded)
                .ok_or_else(|| {
                    Error::Corrupt(format!("{} records tenancy {name:?}", self.settings()))
                }),
        }
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    fn tenancy(&self) -> Tenancy {
        Tenancy::Schema
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_transactional_ddl()
            .with_registry_in_target_transaction()
            .with_transactional_storage()
            .with_fingerprints()
            .with_storage_spares()
            .with_servers()
    }

    fn classify(&self, error: &Error) -> ErrorClass {
        classify(error)
    }

    async fn prepare(&self) -> Result<()> {
        self.prepare_for(Tenancy::Schema).await
    }

    async fn registry_state(&self) -> Result<RegistryState> {
        self.registry_state_of().await
    }

    async fn tenant_page(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>> {
        let page = self.page_of(after, limit, "").await?;
        Ok(page.into_iter().map(|(record, _)| record).collect())
    }

    async fn tenant_page_with_fingerprints(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<(TenantRecord, Option<String>)>> {
        self.page_of(after, limit, ", fingerprint").await
    }

    async fn invalid_registry_rows(&self) -> Result<Vec<Error>> {
        let names: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT name FROM {} WHERE {}",
            self.registry(),
            maybe_invalid_name()
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(invalid_names(&self.registry(), names))
    }

    async fn tenant_count(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", self.registry()))
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u64)
    }

    async fn tenant_records(&self, names: &[TenantName]) -> Result<Vec<TenantRecord>> {
        let sql = format!(
            "{} WHERE name = ANY($1) ORDER BY name",
            self.select_records("").await?
        );
        let names: Vec<&str> = names.iter().map(TenantName::as_str).collect();
        let rows = sqlx::query(&sql).bind(&names).fetch_all(&self.pool).await?;
        rows.iter()
            .filter_map(|row| Self::record_from_row(row).transpose())
            .collect()
    }

    async fn fingerprints(&self, names: &[TenantName]) -> Result<Vec<(TenantName, String)>> {
        let sql = format!(
            "SELECT name, fingerprint FROM {} WHERE name = ANY($1) AND fingerprint IS NOT NULL",
            self.registry()
        );
        let names: Vec<&str> = names.iter().map(TenantName::as_str).collect();
        let rows: Vec<(String, String)> = sqlx::query_as(&sql)
            .bind(&names)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(name, fingerprint)| {
                TenantName::new(name)
                    .map(|name| (name, fingerprint))
                    .map_err(|e| Error::Corrupt(format!("tenant registry: {e}")))
            })
            .collect()
    }

    async fn connection_budget(&self) -> Result<Option<usize>> {
        // Two connections beside the tenants' (registry reads, the lease's heartbeat):
        // a pool that needs one more than the server gives waits its whole acquire timeout.
        let server_free = self.server_free().await? - Self::CONTROL_CONNECTIONS;
        let pool = self.pool.options().get_max_connections().saturating_sub(1);
        Ok(Some(
            usize::try_from(server_free.min(i64::from(pool)).max(1)).unwrap_or(1),
        ))
    }

    async fn server_connection_budget(&self, server: &ServerName) -> Result<Option<usize>> {
        Ok(self.server_budget(server, true).await)
    }

    async fn server_gone(&self, tenant: &Tenant, error: &Error) -> Option<Error> {
        let server = tenant.server.as_ref()?;
        self.servers.gone(server, sql_cause(error)?).await
    }

    async fn connect<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Connection + 'a>> {
        let spec = match target {
            Target::Public => self.public_spec(),
            Target::Tenant(tenant) if tenant.server.is_some() => {
                // On another server: the tracking rows are in the tenant's schema there,
                // and the registry row, here, is a cache (as with database per tenant).
                let server = tenant.server.as_ref().expect("matched");
                let conn = self.servers.acquire(&self.pool, server).await?;
                let schema_q = quote_ident(&tenant.storage);
                let spec = Spec {
                    tenant: Some(tenant),
                    lock_key: tenant_key(&tenant.storage),
                    search_path: format!("{schema_q}, public"),
                    tracking: Tracking::own(&schema_q),
                    storage_ddl: Some(format!("CREATE SCHEMA IF NOT EXISTS {schema_q}")),
                    row: None,
                    probe: Some(self.registered_probe(tenant)),
                };
                return Ok(Box::new(PgTarget::new(PgConn::Pooled(conn), spec)));
            }
            Target::Tenant(tenant) => {
                let row = TenantRow::new(self.registry(), tenant);
                Spec {
                    tenant: Some(tenant),
                    lock_key: tenant_key(&tenant.storage),
                    search_path: self.tenant_search_path(&row.schema_q),
                    tracking: Tracking::shared(&self.control_q, tenant.name.as_str()),
                    storage_ddl: None,
                    row: Some(row),
                    probe: None,
                }
            }
        };
        let conn = PgConn::Pooled(self.pool.acquire().await?);
        Ok(Box::new(PgTarget::new(conn, spec)))
    }

    async fn register(
        &self,
        tenant: &Tenant,
        state: TenantState,
        applied_order: Option<i64>,
    ) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {} (name, schema_name, state, applied_order, server) VALUES ($1, $2, $3, $4, $5)",
            self.registry()
        ))
        .bind(tenant.name.as_str())
        .bind(&tenant.storage)
        .bind(state.as_str())
        .bind(applied_order)
        .bind(tenant.server.as_ref().map(ServerName::as_str))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_state(&self, tenant: &Tenant, state: TenantState) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET state = '{}', updated_at = now() WHERE name = $1",
            self.registry(),
            state.as_str()
        );
        self.on_row(&sql, tenant).await
    }

    async fn unregister(&self, tenant: &Tenant, only_creating: bool) -> Result<()> {
        let mut sql = format!("DELETE FROM {} WHERE name = $1", self.registry());
        if only_creating {
            sql.push_str(" AND state = 'creating'");
        }
        self.on_row(&sql, tenant).await
    }

    async fn write_registry(&self, tenant: &Tenant, row: RegistryRow<'_>) -> Result<()> {
        // Written from outside the tracking rows' transaction: no fingerprint vouches
        // for them.
        sqlx::query(&format!(
            "UPDATE {} SET applied_order = $2, failed_order = $3, last_error = $4, fingerprint = NULL, \
             updated_at = now() WHERE name = $1",
            self.registry()
        ))
        .bind(tenant.name.as_str())
        .bind(row.applied_order)
        .bind(row.failure.map(|(order, _)| order))
        .bind(row.failure.map(|(_, error)| error))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn create_storage(&self, tenant: &Tenant) -> Result<()> {
        let schema_q = quote_ident(&tenant.storage);
        if tenant.server.is_none() {
            // The tracking rows are in the shared table already.
            return self.exec(&format!("CREATE SCHEMA {schema_q}")).await;
        }
        let pool = self.pool_of(tenant.server.as_ref()).await?;
        let mut conn = pool.acquire().await?;
        let sql = format!(
            "BEGIN; CREATE SCHEMA {schema_q}; {}; COMMIT",
            Tracking::own(&schema_q).own_ddl()
        );
        if let Err(e) = exec_postgres(&mut conn, &sql).await {
            let _ = exec_postgres(&mut conn, "ROLLBACK").await;
            return Err(e.into());
        }
        Ok(())
    }

    async fn drop_storage(&self, tenant: &Tenant) -> Result<()> {
        let pool = self.pool_of(tenant.server.as_ref()).await?;
        let mut conn = pool.acquire().await?;
        exec_postgres(
            &mut conn,
            &format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(&tenant.storage)
            ),
        )
        .await?;
        Ok(())
    }

    async fn unregistered_storage(&self, like: &str) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1 AND nspname NOT LIKE 'pg\\_%' \
             AND nspname NOT LIKE 'mtnt%' \
             AND nspname NOT IN ('information_schema', $2) \
             AND nspname NOT IN (SELECT schema_name FROM {}) ORDER BY nspname",
            self.registry()
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(like)
            .bind(&self.control)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn spare_storages(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname::text, $1) \
             ORDER BY nspname",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn unregistered_storage_on(
        &self,
        server: &ServerName,
        like: &str,
    ) -> Result<Vec<String>> {
        let on_server: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1 AND nspname NOT LIKE 'pg\\_%' \
             AND nspname NOT IN ('information_schema', 'public') ORDER BY nspname",
        )
        .bind(like)
        .fetch_all(&self.pool_of(Some(server)).await?)
        .await?;
        self.not_registered(on_server).await
    }

    async fn describe(&self, tenants: &[Tenant]) -> Result<Vec<Result<Vec<SchemaObject>>>> {
        // A page per query keeps each answer (some rows per object) a bounded size; the
        // catalog's deparsers cost the server CPU, so pages go on a few connections at once.
        // Each server's tenants on that server, answered in the order asked.
        let mut described: Vec<Option<Result<Vec<SchemaObject>>>> =
            tenants.iter().map(|_| None).collect();
        for (server, positions) in by_server(tenants) {
            let group: Vec<Tenant> = positions.iter().map(|&at| tenants[at].clone()).collect();
            let pages: Vec<_> = group
                .chunks(DESCRIBE_PAGE)
                .map(|page| self.describe_page(page))
                .collect();
            let pages: Result<Vec<Vec<_>>> = futures_util::stream::iter(pages)
                .buffered(DESCRIBE_CONNECTIONS)
                .try_collect()
                .await;
            match (pages, server) {
                (Ok(pages), _) => {
                    for (at, objects) in positions.into_iter().zip(pages.into_iter().flatten()) {
                        described[at] = Some(objects);
                    }
                }
                // Another server that fails leaves its own tenants unread, not the rest.
                (Err(e), Some(_)) => {
                    let why = e.to_string();
                    for at in positions {
                        described[at] = Some(Err(Error::Invalid(why.clone())));
                    }
                }
                (Err(e), None) => return Err(e),
            }
        }
        Ok(described.into_iter().flatten().collect())
    }

    async fn run_rows(
        &self,
        run_id: &str,
        tenants: &[Tenant],
        _concurrency: usize,
    ) -> Result<Vec<(TenantName, AppliedMigration)>> {
        // The default server's tenants' rows are in one table: one query.
        let sql = format!(
            "SELECT tenant, {COLUMNS} FROM {} WHERE run_id = $1 AND tenant = ANY($2) \
             ORDER BY tenant, migration_order",
            shared_table(&self.control_q)
        );
        let names: Vec<&str> = tenants
            .iter()
            .filter(|t| t.server.is_none())
            .map(|t| t.name.as_str())
            .collect();
        let rows = sqlx::query(&sql)
            .bind(run_id)
            .bind(&names)
            .fetch_all(&self.pool)
            .await?;
        let mut found: Vec<(TenantName, AppliedMigration)> = rows
            .iter()
            .map(|row| {
                let name = TenantName::new(row.try_get::<String, _>("tenant")?)
                    .map_err(|e| Error::Corrupt(format!("tracking table: {e}")))?;
                Ok((name, applied_from_row(row)?))
            })
            .collect::<Result<_>>()?;
        // A tenant on another server has its rows in its schema there: a query each.
        for tenant in tenants.iter().filter(|t| t.server.is_some()) {
            let pool = self.pool_of(tenant.server.as_ref()).await?;
            let sql = format!(
                "SELECT {COLUMNS} FROM {}.mtnt_migrations WHERE run_id = $1 ORDER BY migration_order",
                quote_ident(&tenant.storage)
            );
            match sqlx::query(&sql).bind(run_id).fetch_all(&pool).await {
                Ok(rows) => {
                    for row in &rows {
                        found.push((tenant.name.clone(), applied_from_row(row)?));
                    }
                }
                // No tracking table (or none with run ids) yet: no rows of the run.
                Err(e) if is_code(&e, "42P01") || is_code(&e, "42703") => {}
                Err(e) => return Err(e.into()),
            }
        }
        found.sort_by(|a, b| (&a.0, a.1.order).cmp(&(&b.0, b.1.order)));
        Ok(found)
    }

    async fn tenant_sizes(&self, tenants: &[Tenant]) -> Result<Vec<(TenantName, u64)>> {
        // A schema's tables (with their indexes and TOAST) and materialized views.
        let sql = "SELECT n.nspname::text, COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                   FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm') \
                   WHERE n.nspname = ANY($1) GROUP BY n.nspname";
        let mut sizes = Vec::new();
        for (server, positions) in by_server(tenants) {
            let group: Vec<Tenant> = positions.iter().map(|&at| tenants[at].clone()).collect();
            let schemas: Vec<&str> = group.iter().map(|t| t.storage.as_str()).collect();
            let pool = self.pool_of(server).await?;
            let rows: Vec<(String, i64)> =
                sqlx::query_as(sql).bind(&schemas).fetch_all(&pool).await?;
            sizes.extend(sizes_by_storage(&group, rows));
        }
        Ok(sizes)
    }

    async fn journal_write(&self, entry: &JournalEntry, keep: usize) -> Result<()> {
        let table = self.journal();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (kind text NOT NULL, entry_key text NOT NULL, \
             at text NOT NULL, body text NOT NULL, PRIMARY KEY (kind, entry_key))"
        );
        if let Err(e) = sqlx::query(&create).execute(&self.pool).await {
            // Two first writers at once: the loser's CREATE meets the winner's table.
            if !is_code(&e, "23505") && !is_code(&e, "42P07") {
                return Err(e.into());
            }
        }
        sqlx::query(&format!(
            "INSERT INTO {table} (kind, entry_key, at, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (kind, entry_key) DO UPDATE SET at = EXCLUDED.at, body = EXCLUDED.body"
        ))
        .bind(&entry.kind)
        .bind(&entry.key)
        .bind(&entry.at)
        .bind(&entry.body)
        .execute(&self.pool)
        .await?;
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE kind = $1 AND at < (SELECT at FROM {table} WHERE kind = $1 \
             ORDER BY at DESC OFFSET $2 LIMIT 1)"
        ))
        .bind(&entry.kind)
        .bind(keep.saturating_sub(1) as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn journal_read(&self, kind: &str, limit: usize) -> Result<Vec<JournalEntry>> {
        let table = self.journal();
        let kept: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(&table)
            .fetch_one(&self.pool)
            .await?;
        if kept.is_none() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(&format!(
            "SELECT kind, entry_key, at, body FROM {table} WHERE kind = $1 ORDER BY at DESC LIMIT $2"
        ))
        .bind(kind)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(JournalEntry::from).collect())
    }

    async fn servers(&self) -> Result<Vec<Server>> {
        self.servers_of().await
    }

    async fn move_tenant(
        &self,
        tenant: &Tenant,
        to: Option<&ServerName>,
        keep_source: bool,
    ) -> Result<()> {
        self.move_storage(tenant, to, keep_source, super::moving::Storage::Schema)
            .await
    }

    async fn add_server(&self, name: &ServerName, url: &str, check: bool) -> Result<()> {
        self.add_server_of(name, url, check.then_some(Distinct::Database))
            .await
    }

    async fn remove_server(&self, name: &ServerName) -> Result<()> {
        self.remove_server_of(name).await
    }

    async fn cordon_server(&self, name: &ServerName, cordoned: bool) -> Result<()> {
        self.cordon_server_of(name, cordoned).await
    }

    fn capabilities_of(&self, tenant: &Tenant) -> Capabilities {
        if tenant.server.is_some() {
            // The registry is in another database than the tenant's rows: a cache.
            Capabilities::NONE.with_transactional_ddl().with_servers()
        } else {
            self.capabilities()
        }
    }

    fn leases(&self) -> Option<Arc<dyn LeaseStore>> {
        Some(Arc::new(PgLeases::new(
            self.pool.clone(),
            &self.control_q,
            self.registry(),
        )))
    }
}
