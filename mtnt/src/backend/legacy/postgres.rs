use std::ops::{Deref, DerefMut};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};

use super::control::{RunControl, Timeouts, Transactions};
use super::invoke::{connection_lost, exec_postgres, invoke};
use super::pg_lease::PgControl;
use super::pg_lock;
use super::pg_shared::{apply_new_tenant, is_db_code, PgConn};
use super::pg_tracking::{shared_ddl, shared_table, Tracking};
use super::sql::{quote_ident, quote_literal};
use crate::ctx::CtxConn;
use crate::migrate::Silent;
use crate::migration::BoxFuture;
use crate::{
    AppliedMigration, Backend, Ctx, Direction, Engine, Error, Migration, MigrationStatus, Progress,
    Result, Session, Target, Tenancy, Tenant, TenantName, TenantRecord, TenantState,
};

/// PostgreSQL with one schema per tenant, all in one database.
///
/// The control schema (default `public`) holds the tenant registry `mtnt_tenants`, the
/// tracking table of public migrations `mtnt_migrations`, and the tracking rows of every
/// tenant, `mtnt_tenant_migrations` (see `pg_tracking.rs` for why they are shared).
#[derive(Clone, Debug)]
pub struct PostgresBackend {
    pool: PgPool,
    control: String,
    control_q: String,
    timeouts: Timeouts,
    transactions: Transactions,
}

impl PostgresBackend {
    /// A backend on `pool` whose control schema is `public`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            control: "public".to_owned(),
            control_q: quote_ident("public"),
            timeouts: Timeouts::default(),
            transactions: Transactions::default(),
        }
    }

    /// The lock and statement timeouts of migrations whose attribute sets none
    /// (default: [`Timeouts::default`]).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// How many of a tenant's pending migrations share a transaction (default:
    /// [`Transactions::PerTenant`]).
    pub fn with_transactions(mut self, transactions: Transactions) -> Self {
        self.transactions = transactions;
        self
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
        Ok(self)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) fn registry(&self) -> String {
        format!("{}.mtnt_tenants", self.control_q)
    }

    fn record_from_row(row: &PgRow) -> Result<TenantRecord> {
        let name: String = row.try_get("name")?;
        let name =
            TenantName::new(name).map_err(|e| Error::Corrupt(format!("tenant registry: {e}")))?;
        Ok(TenantRecord {
            tenant: Tenant {
                name,
                schema: row.try_get("schema_name")?,
            },
            state: TenantState::parse(row.try_get("state")?)?,
            created_at: row.try_get("created_at")?,
            applied_order: row.try_get("applied_order")?,
            failed_order: row.try_get("failed_order")?,
            last_error: row.try_get("last_error")?,
        })
    }

    /// The search path of tenant migrations: the tenant's schema, then the control schema
    /// (so tenant tables can reference shared ones unqualified), then `public`. The same
    /// for `create_tenant` and `migrate`.
    fn tenant_search_path(&self, schema_q: &str) -> String {
        if self.control == "public" {
            format!("{schema_q}, public")
        } else {
            format!("{schema_q}, {}, public", self.control_q)
        }
    }

    /// Brings the registry row of `tenant` in line with its tracking rows: newest
    /// completed migration, fingerprint, no failure.
    fn registry_update(&self, tenant: &Tenant, tracking: &Tracking) -> String {
        format!(
            "UPDATE {registry} SET (applied_order, fingerprint) = ({summary}), \
             failed_order = NULL, last_error = NULL, updated_at = now() WHERE name = {name}",
            registry = self.registry(),
            summary = tracking.summary(),
            name = quote_literal(tenant.name.as_str()),
        )
    }

    fn select_records(&self) -> String {
        format!(
            "SELECT name, schema_name, state, created_at, applied_order, failed_order, last_error FROM {}",
            self.registry()
        )
    }
}

/// Makes any change of the shared tracking table clear the changed tenants' fingerprints
/// in the registry: a change made by hand (a row deleted to run a migration again, an
/// edited checksum) leaves none, so a fleet run opens a session for the tenant and checks
/// its tracking rows in full. Transactions that write the new fingerprint themselves set
/// [`OWN_BOOKKEEPING`] and skip the trigger. As its owner: whoever may edit the tracking
/// table may clear the fingerprint, without a grant on the registry.
fn tracking_trigger_sql(control_q: &str, registry: &str) -> String {
    let table = shared_table(control_q);
    let control_l = quote_literal(control_q);
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
        table_l = quote_literal(&table),
    )
}

/// Set in a transaction that updates the registry's fingerprint along with the tracking
/// rows: the trigger of [`tracking_trigger_sql`] need not clear it first.
const OWN_BOOKKEEPING: &str = "SET LOCAL mtnt.bookkeeping = on";

#[async_trait]
impl Backend for PostgresBackend {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    fn tenancy(&self) -> Tenancy {
        Tenancy::Schema
    }

    async fn prepare(&self) -> Result<()> {
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
             DO $mtnt$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = {registry_l}::regclass
                               AND attname = 'fingerprint' AND NOT attisdropped) THEN
                    ALTER TABLE {registry} ADD COLUMN fingerprint text;
                END IF;
                {trigger}
             END $mtnt$;
             COMMIT",
            control = self.control_q,
            registry = self.registry(),
            registry_l = quote_literal(&self.registry()),
            tracking = Tracking::own(&self.control_q).own_ddl(),
            shared = shared_ddl(&self.control_q, &self.registry()),
            trigger = tracking_trigger_sql(&self.control_q, &self.registry()),
        );
        let mut conn = self.pool.acquire().await?;
        if let Err(e) = exec_postgres(&mut conn, &sql).await {
            let _ = exec_postgres(&mut conn, "ROLLBACK").await;
            return Err(e.into());
        }
        Ok(())
    }

    async fn tenant_page(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>> {
        let sql = format!(
            "{} WHERE ($1::text IS NULL OR name > $1) ORDER BY name LIMIT $2",
            self.select_records()
        );
        let rows = sqlx::query(&sql)
            .bind(after.map(TenantName::as_str))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::record_from_row).collect()
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
            self.select_records()
        );
        let names: Vec<&str> = names.iter().map(TenantName::as_str).collect();
        let rows = sqlx::query(&sql).bind(&names).fetch_all(&self.pool).await?;
        rows.iter().map(Self::record_from_row).collect()
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

    async fn session_budget(&self) -> Result<Option<usize>> {
        // Connections this pool holds already count among the server's used ones.
        let (max, reserved, used): (i32, i32, i64) = sqlx::query_as(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, \
             (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
        )
        .fetch_one(&self.pool)
        .await?;
        let server_free = i64::from(max - reserved) - used + i64::from(self.pool.size());
        let pool = self.pool.options().get_max_connections().saturating_sub(1);
        Ok(Some(
            usize::try_from(server_free.min(i64::from(pool)).max(1)).unwrap_or(1),
        ))
    }

    async fn session<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Session + 'a>> {
        let lock_key = match target {
            Target::Public => format!("public:{}", self.control),
            Target::Tenant(t) => format!("tenant:{}", t.schema),
        };
        let conn = TargetLock {
            conn: Some(self.pool.acquire().await?.into()),
            locked: false,
        };
        let schema_q = match target {
            Target::Public => self.control_q.clone(),
            Target::Tenant(t) => quote_ident(&t.schema),
        };
        let search_path = match target {
            Target::Public => self.control_q.clone(),
            Target::Tenant(_) => self.tenant_search_path(&schema_q),
        };
        let tracking = match target {
            Target::Public => Tracking::own(&schema_q),
            Target::Tenant(t) => Tracking::shared(&self.control_q, t.name.as_str()),
        };
        let registry_update = match target {
            Target::Public => None,
            Target::Tenant(t) => Some(self.registry_update(t, &tracking)),
        };
        Ok(Box::new(PgSession {
            backend: self,
            conn,
            target,
            lock_key,
            schema_q,
            search_path,
            tracking,
            registry_update,
            setup: None,
        }))
    }

    async fn create_tenant(
        &self,
        tenant: &Tenant,
        migrations: &[&'static Migration],
        activate: bool,
    ) -> Result<()> {
        let schema_q = quote_ident(&tenant.schema);
        let mut conn = self.pool.acquire().await?;
        let begin = format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock(hashtext('mtnt'), hashtext({lock_key}));
             INSERT INTO {registry} (name, schema_name, state) VALUES ({name}, {schema}, 'creating');
             CREATE SCHEMA {schema_q};
             {OWN_BOOKKEEPING};
             SET LOCAL search_path TO {search_path}",
            search_path = self.tenant_search_path(&schema_q),
            registry = self.registry(),
            name = quote_literal(tenant.name.as_str()),
            schema = quote_literal(&tenant.schema),
            lock_key = quote_literal(&pg_lock::tenant_key(&tenant.schema)),
        );
        let tracking = Tracking::shared(&self.control_q, tenant.name.as_str());
        let result = async {
            if let Err(e) = exec_postgres(&mut conn, &begin).await {
                if is_db_code(&e, "23505") {
                    return Err(Error::TenantExists(tenant.name.to_string()));
                }
                if is_db_code(&e, "42P06") {
                    return Err(Error::Invalid(format!(
                        "schema {} exists already but is not a registered tenant\n  fix: register it with `tenant adopt --schema-like {}`",
                        tenant.schema, tenant.schema
                    )));
                }
                return Err(e.into());
            }
            apply_new_tenant(&mut conn, tenant, &tracking, migrations).await?;
            let finish = format!(
                "UPDATE {registry} SET state = '{state}', (applied_order, fingerprint) = ({summary}), updated_at = now() \
                 WHERE name = {name}; COMMIT",
                registry = self.registry(),
                state = if activate { "active" } else { "creating" },
                summary = tracking.summary(),
                name = quote_literal(tenant.name.as_str()),
            );
            exec_postgres(&mut conn, &finish).await?;
            Ok(())
        }
        .await;
        if result.is_err() && exec_postgres(&mut conn, "ROLLBACK").await.is_err() {
            conn.close_on_drop();
        }
        result
    }

    async fn activate_tenant(&self, tenant: &Tenant) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE {} SET state = 'active', updated_at = now() WHERE name = $1",
            self.registry()
        ))
        .bind(tenant.name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn drop_tenant(&self, tenant: &Tenant) -> Result<()> {
        let sql = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('mtnt'), hashtext({})); {OWN_BOOKKEEPING}; \
             DROP SCHEMA IF EXISTS {} CASCADE; DELETE FROM {} WHERE name = {}; COMMIT",
            quote_literal(&pg_lock::tenant_key(&tenant.schema)),
            quote_ident(&tenant.schema),
            self.registry(),
            quote_literal(tenant.name.as_str())
        );
        let mut conn = self.pool.acquire().await?;
        if let Err(e) = exec_postgres(&mut conn, &sql).await {
            let _ = exec_postgres(&mut conn, "ROLLBACK").await;
            return Err(e.into());
        }
        Ok(())
    }

    fn run_control(&self) -> Option<std::sync::Arc<dyn RunControl>> {
        Some(std::sync::Arc::new(PgControl::new(
            self.pool.clone(),
            &self.control_q,
            self.registry(),
        )))
    }

    async fn adopt(
        &self,
        like: &str,
        baseline: &[&'static Migration],
    ) -> Result<(Vec<Tenant>, Vec<String>)> {
        self.adopt_with_progress(like, baseline, &Silent).await
    }

    async fn adopt_with_progress(
        &self,
        like: &str,
        baseline: &[&'static Migration],
        progress: &dyn Progress,
    ) -> Result<(Vec<Tenant>, Vec<String>)> {
        let sql = format!(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1 AND nspname NOT LIKE 'pg\\_%' \
             AND nspname NOT IN ('information_schema', $2) \
             AND nspname NOT IN (SELECT schema_name FROM {}) ORDER BY nspname",
            self.registry()
        );
        let schemas: Vec<String> = sqlx::query_scalar(&sql)
            .bind(like)
            .bind(&self.control)
            .fetch_all(&self.pool)
            .await?;
        let mut adopted = Vec::new();
        let mut skipped = Vec::new();
        progress.start(
            schemas
                .iter()
                .filter(|s| TenantName::new(s.as_str()).is_ok())
                .count() as u64,
        );
        let mut conn = self.pool.acquire().await?;
        for schema in schemas {
            let Ok(name) = TenantName::new(schema.clone()) else {
                skipped.push(schema);
                continue;
            };
            let tenant = Tenant { name, schema };
            let tracking = Tracking::shared(&self.control_q, tenant.name.as_str());
            let mut sql = format!(
                "BEGIN; {OWN_BOOKKEEPING}; INSERT INTO {registry} (name, schema_name, state, applied_order) VALUES ({name}, {schema}, 'active', {applied});",
                registry = self.registry(),
                name = quote_literal(tenant.name.as_str()),
                schema = quote_literal(&tenant.schema),
                applied = baseline.iter().map(|m| m.order()).max().map_or("NULL".to_owned(), |o| o.to_string()),
            );
            for migration in baseline {
                sql.push_str(&tracking.record(migration, MigrationStatus::Completed, true));
                sql.push(';');
            }
            sql.push_str(&format!(
                "UPDATE {registry} SET fingerprint = {fingerprint} WHERE name = {name}; COMMIT",
                registry = self.registry(),
                fingerprint = tracking.fingerprint(),
                name = quote_literal(tenant.name.as_str()),
            ));
            if let Err(e) = exec_postgres(&mut conn, &sql).await {
                let _ = exec_postgres(&mut conn, "ROLLBACK").await;
                let error = Error::from(e);
                progress.tenant_done(&tenant.name, Err(&error));
                return Err(error);
            }
            progress.tenant_done(&tenant.name, Ok(baseline.len()));
            adopted.push(tenant);
        }
        Ok((adopted, skipped))
    }
}

/// A session's pooled connection, which may hold the session-level advisory lock of its
/// target ([`Session::lock`]), so that two runs (two deploys, a `migrate` and a `repair`)
/// never write to one target at once.
///
/// When locked, dropping it releases the lock on a spawned task before the connection goes
/// back to the pool; a connection left inside a transaction (a run cancelled
/// mid-migration), or one that cannot be unlocked, is closed instead, which ends both.
struct TargetLock {
    conn: Option<PgConn>,
    locked: bool,
}

impl TargetLock {
    async fn lock(&mut self, key: &str, target: Target<'_>) -> Result<()> {
        if self.locked {
            return Ok(());
        }
        // Set before the first lock query, so that a cancelled wait still unlocks on drop.
        self.locked = true;
        let free: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('mtnt'), hashtext($1))")
                .bind(key)
                .fetch_one(&mut **self)
                .await?;
        if !free {
            tracing::info!("another mtnt run is working on {target}; waiting for it to finish");
            sqlx::query("SELECT pg_advisory_lock(hashtext('mtnt'), hashtext($1))")
                .bind(key)
                .execute(&mut **self)
                .await?;
        }
        Ok(())
    }

    fn close_on_drop(&mut self) {
        if let Some(conn) = &mut self.conn {
            conn.close_on_drop();
        }
    }
}

impl Deref for TargetLock {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("the connection is only taken on drop")
    }
}

impl DerefMut for TargetLock {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("the connection is only taken on drop")
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        if !self.locked {
            return;
        }
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            conn.close_on_drop();
            return;
        };
        runtime.spawn(async move {
            // Outside a transaction block, `now()` is the start of this statement, sent
            // alone with the simple protocol (the extended one starts the clocks apart).
            if !matches!(unlock_all(&mut conn).await, Ok(true)) {
                conn.close_on_drop();
            }
        });
    }
}

/// Releases every advisory lock of the connection; whether it is outside a transaction.
///
/// A named function with a concrete connection type and a boxed `Send` future, like
/// `exec_postgres`, because the generic executor trips the compiler's higher-ranked `Send`
/// check inside a spawned task.
fn unlock_all(conn: &mut PgConnection) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    // A plain `&str` has no arguments, so sqlx sends it with the simple protocol.
    const SQL: &str =
        "SELECT now() = statement_timestamp() FROM (SELECT pg_advisory_unlock_all()) AS u";
    Box::pin(async move { sqlx::Executor::fetch_one(conn, SQL).await?.try_get(0) })
}

impl PostgresBackend {
    /// A session of [`PgDatabaseBackend`](super::PgDatabaseBackend) on `conn`, a connection
    /// of its own to the database of `tenant`: migrations and the tracking table in that
    /// database's `public` schema, the advisory lock taken there. `self` is the control
    /// side; no registry update joins the tenant's transactions (the registry is in
    /// another database), so the caller keeps the registry's cache in line.
    pub(super) fn tenant_database_session<'a>(
        &'a self,
        conn: PgConnection,
        tenant: &'a Tenant,
    ) -> Box<dyn Session + 'a> {
        Box::new(PgSession {
            backend: self,
            conn: TargetLock {
                conn: Some(conn.into()),
                locked: false,
            },
            target: Target::Tenant(tenant),
            lock_key: pg_lock::tenant_key(&tenant.schema),
            schema_q: quote_ident("public"),
            search_path: quote_ident("public"),
            tracking: Tracking::own(&quote_ident("public")),
            registry_update: None,
            setup: None,
        })
    }
}

/// Runs one statement with the simple protocol and returns its rows (a named function
/// with a boxed `Send` future, like `exec_postgres`).
fn fetch_unprepared<'a>(
    conn: &'a mut PgConnection,
    sql: &'a str,
) -> BoxFuture<'a, Result<Vec<PgRow>, sqlx::Error>> {
    // A plain `&str` has no arguments, so sqlx sends it with the simple protocol.
    Box::pin(sqlx::Executor::fetch_all(conn, sql))
}

/// Runs several statements with the simple protocol and returns the rows of each,
/// statement by statement (a named function with a boxed
/// `Send` future, like `exec_postgres`).
fn fetch_results<'a>(
    conn: &'a mut PgConnection,
    sql: &'a str,
) -> BoxFuture<'a, Result<Vec<Vec<PgRow>>, sqlx::Error>> {
    Box::pin(async move {
        use futures_util::TryStreamExt;
        let mut results = vec![Vec::new()];
        let mut stream = sqlx::Executor::fetch_many(conn, sql);
        while let Some(item) = stream.try_next().await? {
            match item {
                sqlx::Either::Left(_) => results.push(Vec::new()),
                sqlx::Either::Right(row) => results.last_mut().expect("never empty").push(row),
            }
        }
        // Each statement's rows end with its completion; nothing follows the last one.
        results.pop();
        Ok(results)
    })
}

struct PgSession<'a> {
    backend: &'a PostgresBackend,
    conn: TargetLock,
    target: Target<'a>,
    lock_key: String,
    schema_q: String,
    search_path: String,
    tracking: Tracking,
    registry_update: Option<String>,
    /// Creates the target's missing tracking table (and a tenant's missing schema: a
    /// registered tenant that was never migrated), sent with the next change, in its
    /// transaction.
    setup: Option<String>,
}

impl PgSession<'_> {
    /// The applied migrations in the rows of [`Tracking::select_applied_and_schema`];
    /// notes whether the tenant's schema must be created.
    fn applied_from_shared(&mut self, rows: &[PgRow]) -> Result<Vec<AppliedMigration>> {
        // A registered tenant without a schema yet (registered in bulk, or its schema is
        // to be made by mtnt) gets it with its first change, in that transaction.
        let schema_exists: bool = match rows.first() {
            Some(row) => row.try_get("schema_exists")?,
            None => true,
        };
        self.setup = (!schema_exists).then(|| format!("CREATE SCHEMA {}", self.schema_q));
        rows.iter()
            .filter(|row| {
                row.try_get::<Option<i64>, _>("migration_order")
                    .is_ok_and(|order| order.is_some())
            })
            .map(applied_from_row)
            .collect()
    }

    async fn run(&mut self, sql: &str) -> Result<()> {
        exec_postgres(&mut self.conn, sql).await?;
        Ok(())
    }

    /// Ends a failed transaction; a connection that cannot even roll back is not reused.
    async fn rollback(&mut self) {
        if exec_postgres(&mut self.conn, "ROLLBACK").await.is_err() {
            self.conn.close_on_drop();
        }
    }

    /// Creates the missing schema or tracking table now, on its own, if
    /// [`PgSession::setup`] is pending.
    async fn run_setup(&mut self) -> Result<()> {
        if let Some(setup) = self.setup.clone() {
            // Two runners may create it at once; the loser's error means it exists.
            if let Err(e) = self.run(&setup).await {
                if !pg_lock::lost_creation_race(&e) {
                    return Err(e);
                }
            }
            self.setup = None;
        }
        Ok(())
    }

    async fn record_failure(
        &mut self,
        migration: &Migration,
        error: &Error,
        status: MigrationStatus,
    ) -> Result<()> {
        if !self.tracking.is_shared() {
            // The failed transaction took a new tracking table with it: the failure needs
            // a row.
            self.run_setup().await?;
        }
        let message = error.to_string();
        sqlx::query(&self.tracking.record_failure(migration, status))
            .bind(&message)
            .execute(&mut *self.conn)
            .await?;
        // Without a registry update, the registry is in another database (database per
        // tenant), whose backend records the failure there.
        if let (Target::Tenant(t), Some(_)) = (self.target, &self.registry_update) {
            sqlx::query(&format!(
                "UPDATE {} SET failed_order = $1, last_error = $2, updated_at = now() WHERE name = $3",
                self.backend.registry()
            ))
            .bind(migration.order())
            .bind(&message)
            .bind(t.name.as_str())
            .execute(&mut *self.conn)
            .await?;
        }
        Ok(())
    }

    fn commit_sql(&self, record: &str) -> String {
        match &self.registry_update {
            Some(update) => format!("{record}; {update}; COMMIT"),
            None => format!("{record}; COMMIT"),
        }
    }

    /// Opens the transaction of `first` (and the migrations after it): the pending setup,
    /// the search path, `first`'s timeouts.
    async fn begin(&mut self, first: &Migration) -> Result<()> {
        let begin = format!(
            "BEGIN; {}{}SET LOCAL search_path TO {}{}",
            self.setup
                .as_deref()
                .map_or(String::new(), |s| format!("{s}; ")),
            if self.registry_update.is_some() {
                format!("{OWN_BOOKKEEPING}; ")
            } else {
                String::new()
            },
            self.search_path,
            pg_lock::timeouts_sql(first, self.backend.timeouts, true)
        );
        if let Err(error) = self.run(&begin).await {
            // Creating a missing schema can fail (no CREATE privilege): end the transaction.
            self.rollback().await;
            return Err(error);
        }
        Ok(())
    }

    /// Runs `batch`, transactional migrations, in one transaction with their tracking
    /// rows and the registry update; on a failure, rolls all of them back and records
    /// the failed one. Returns the index of the failed migration with its error.
    async fn apply_batch(
        &mut self,
        batch: &[&'static Migration],
    ) -> std::result::Result<(), (usize, Error)> {
        self.lock().await.map_err(|e| (0, e))?;
        let mut functions = Vec::with_capacity(batch.len());
        for (i, migration) in batch.iter().enumerate() {
            functions.push(
                migration
                    .function(Direction::Up, self.target)
                    .map_err(|e| (i, e))?,
            );
        }
        self.begin(batch[0]).await.map_err(|e| (0, e))?;
        let mut finished = Vec::with_capacity(batch.len());
        let mut failure = None;
        for (i, (&migration, function)) in batch.iter().zip(functions).enumerate() {
            let timeouts = pg_lock::timeouts_sql(migration, self.backend.timeouts, true);
            if i > 0 && timeouts != pg_lock::timeouts_sql(batch[i - 1], self.backend.timeouts, true)
            {
                if let Err(error) = self.run(timeouts.trim_start_matches("; ")).await {
                    failure = Some((i, error));
                    break;
                }
            }
            let started = Instant::now();
            let mut ctx = Ctx::new(self.target.tenant(), CtxConn::Postgres(&mut self.conn));
            if let Err(error) = invoke(function, &mut ctx).await {
                failure = Some((i, error));
                break;
            }
            finished.push((started, Instant::now()));
        }
        if failure.is_none() {
            let now = Instant::now();
            let completed: Vec<_> = batch
                .iter()
                .zip(&finished)
                .map(|(&migration, (started, done))| (migration, now - *started, now - *done))
                .collect();
            let records = self.tracking.record_measured(&completed);
            if let Err(error) = self.run(&self.commit_sql(&records)).await {
                // A deferred constraint of one of them, or the connection: the last one
                // is named, as the commit came after it.
                failure = Some((batch.len() - 1, error));
            }
        }
        let Some((i, error)) = failure else {
            self.setup = None;
            return Ok(());
        };
        if connection_lost(&error) {
            self.conn.close_on_drop();
            return Err((i, error));
        }
        self.rollback().await;
        // Best effort: the migration error matters more than a failed bookkeeping write.
        let _ = self
            .record_failure(batch[i], &error, MigrationStatus::Failed)
            .await;
        Err((i, error))
    }

    async fn apply_in_transaction(
        &mut self,
        migration: &'static Migration,
        direction: Direction,
    ) -> Result<()> {
        let function = migration.function(direction, self.target)?;
        self.begin(migration).await?;
        let mut ctx = Ctx::new(self.target.tenant(), CtxConn::Postgres(&mut self.conn));
        let mut result = invoke(function, &mut ctx).await;
        if result.is_ok() {
            let record = match direction {
                Direction::Up => self.tracking.record(migration, MigrationStatus::Completed, true),
                Direction::Down => self.tracking.update(
                    "status = 'pending', started_at = now(), finished_at = clock_timestamp(), \
                     duration_ms = (extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint, error = NULL",
                    migration.order(),
                ),
            };
            result = self.run(&self.commit_sql(&record)).await;
        }
        if let Err(error) = result {
            if connection_lost(&error) {
                self.conn.close_on_drop();
                return Err(error);
            }
            self.rollback().await;
            if direction == Direction::Up {
                // Best effort: the migration error matters more than a failed bookkeeping write.
                let _ = self
                    .record_failure(migration, &error, MigrationStatus::Failed)
                    .await;
            }
            return Err(error);
        }
        self.setup = None;
        Ok(())
    }

    async fn apply_outside_transaction(
        &mut self,
        migration: &'static Migration,
        direction: Direction,
    ) -> Result<()> {
        let function = migration.function(direction, self.target)?;
        self.run_setup().await?;
        if direction == Direction::Up {
            self.run(
                &self
                    .tracking
                    .record(migration, MigrationStatus::Started, false),
            )
            .await?;
        }
        self.run(&format!(
            "SET search_path TO {}{}",
            self.search_path,
            pg_lock::timeouts_sql(migration, self.backend.timeouts, false)
        ))
        .await?;
        let mut ctx = Ctx::new(self.target.tenant(), CtxConn::Postgres(&mut self.conn));
        let result = invoke(function, &mut ctx).await;
        let reset = self
            .run(&format!("RESET search_path{}", pg_lock::RESET_TIMEOUTS_SQL))
            .await;
        if let Err(error) = result {
            if direction == Direction::Up && !connection_lost(&error) {
                // The row stays `started`: what the migration did before failing is unknown.
                let _ = self
                    .record_failure(migration, &error, MigrationStatus::Started)
                    .await;
            }
            return Err(error);
        }
        reset?;
        let record = match direction {
            Direction::Up => self.tracking.update(
                "status = 'completed', finished_at = clock_timestamp(), \
                 duration_ms = (extract(epoch FROM clock_timestamp() - started_at) * 1000)::bigint, error = NULL",
                migration.order(),
            ),
            Direction::Down => self.tracking.update(
                "status = 'pending', finished_at = clock_timestamp(), error = NULL",
                migration.order(),
            ),
        };
        self.run(&format!("BEGIN; {}", self.commit_sql(&record)))
            .await
    }
}

fn applied_from_row(row: &PgRow) -> Result<AppliedMigration> {
    Ok(AppliedMigration {
        order: row.try_get("migration_order")?,
        name: row.try_get("name")?,
        checksum: row.try_get("checksum")?,
        status: MigrationStatus::parse(row.try_get("status")?)?,
        started_at: row.try_get::<Option<DateTime<Utc>>, _>("started_at")?,
        finished_at: row.try_get::<Option<DateTime<Utc>>, _>("finished_at")?,
        duration_ms: row.try_get("duration_ms")?,
        error: row.try_get("error")?,
    })
}

#[async_trait]
impl Session for PgSession<'_> {
    async fn applied(&mut self) -> Result<Vec<AppliedMigration>> {
        // Unprepared (one round trip): the statement names the target, so a prepared one
        // would never be used again, only fill the connection's cache.
        if self.tracking.is_shared() {
            let sql = self.tracking.select_applied_and_schema(&self.schema_q);
            let rows = fetch_unprepared(&mut self.conn, &sql).await?;
            return self.applied_from_shared(&rows);
        }
        let sql = self.tracking.select_applied();
        let rows = match fetch_unprepared(&mut self.conn, &sql).await {
            Ok(rows) => {
                self.setup = None;
                rows
            }
            // A target without a tracking table yet: it is created with the first change,
            // in its transaction.
            Err(e) if is_db_code(&e, "42P01") => {
                self.setup = Some(self.tracking.own_ddl());
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        rows.iter().map(applied_from_row).collect()
    }

    async fn lock(&mut self) -> Result<()> {
        self.conn.lock(&self.lock_key, self.target).await
    }

    async fn try_lock(&mut self) -> Result<bool> {
        if self.conn.locked {
            return Ok(true);
        }
        // Set first, so that a cancelled attempt still unlocks on drop.
        self.conn.locked = true;
        let free = pg_lock::try_lock(&mut self.conn, &self.lock_key).await?;
        self.conn.locked = free;
        Ok(free)
    }

    async fn try_lock_applied(&mut self) -> Result<Option<Vec<AppliedMigration>>> {
        if self.conn.locked || !self.tracking.is_shared() {
            // A tracking table of its own may be missing, which fails the read: apart.
            if !self.try_lock().await? {
                return Ok(None);
            }
            return self.applied().await.map(Some);
        }
        // Set first, so that a cancelled or failed attempt still unlocks on drop. The read
        // comes after the lock, in a statement of its own, so it sees what the run that
        // held the lock before committed.
        self.conn.locked = true;
        let sql = format!(
            "{}; {}",
            pg_lock::try_lock_sql(&self.lock_key),
            self.tracking.select_applied_and_schema(&self.schema_q)
        );
        let mut results = fetch_results(&mut self.conn, &sql).await?.into_iter();
        let free: bool = match results.next().as_deref() {
            Some([row]) => row.try_get("free")?,
            _ => return Err(Error::Corrupt("the lock query returned no row".to_owned())),
        };
        self.conn.locked = free;
        if !free {
            return Ok(None);
        }
        let rows = results.next().unwrap_or_default();
        self.applied_from_shared(&rows).map(Some)
    }

    fn transactions(&self) -> Transactions {
        self.backend.transactions
    }

    async fn apply_together(
        &mut self,
        batch: &[&'static Migration],
    ) -> std::result::Result<(), (usize, Error)> {
        self.apply_batch(batch).await
    }

    async fn apply(&mut self, migration: &'static Migration, direction: Direction) -> Result<()> {
        self.lock().await?;
        if migration.is_transactional() {
            self.apply_in_transaction(migration, direction).await
        } else {
            self.apply_outside_transaction(migration, direction).await
        }
    }

    async fn set_checksum(&mut self, order: i64, checksum: &str) -> Result<()> {
        self.lock().await?;
        let mut sql = format!(
            "BEGIN; {OWN_BOOKKEEPING}; {};",
            self.tracking
                .update(&format!("checksum = {}", quote_literal(checksum)), order)
        );
        if let (Target::Tenant(t), Some(_)) = (self.target, &self.registry_update) {
            // The fingerprint covers the checksums; a failure stays recorded.
            sql.push_str(&format!(
                "UPDATE {} SET fingerprint = {} WHERE name = {};",
                self.backend.registry(),
                self.tracking.fingerprint(),
                quote_literal(t.name.as_str())
            ));
        }
        sql.push_str("COMMIT");
        if let Err(error) = self.run(&sql).await {
            self.rollback().await;
            return Err(error);
        }
        Ok(())
    }

    async fn mark(&mut self, migration: &'static Migration, status: MigrationStatus) -> Result<()> {
        self.lock().await?;
        let record = self.tracking.record(migration, status, true);
        let sql = format!(
            "BEGIN; {}{}",
            self.setup
                .as_deref()
                .map_or(String::new(), |s| format!("{s}; ")),
            self.commit_sql(&record)
        );
        if let Err(error) = self.run(&sql).await {
            self.rollback().await;
            return Err(error);
        }
        self.setup = None;
        Ok(())
    }
}
