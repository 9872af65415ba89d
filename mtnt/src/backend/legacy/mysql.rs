use std::ops::{Deref, DerefMut};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlDatabaseError, MySqlPool, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, MySql, MySqlConnection, Row};

use super::invoke::{connection_lost, exec_mysql, invoke};
use super::sql::quote_ident_mysql;
use crate::ctx::CtxConn;
use crate::migration::BoxFuture;
use crate::{
    AppliedMigration, Backend, Ctx, Direction, Engine, Error, Migration, MigrationStatus, Result,
    Session, Target, Tenancy, Tenant, TenantName, TenantRecord, TenantState,
};

/// The current time in UTC with microseconds, whatever the session's `time_zone`.
const NOW: &str = "UTC_TIMESTAMP(6)";

/// Databases that are never tenants.
const SYSTEM_DATABASES: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// The longest error text stored in a tracking or registry row.
const MAX_ERROR_BYTES: usize = 60_000;

/// MySQL or MariaDB with one database per tenant, all on one server.
///
/// The database named in the URL (`mysql://user@host/control`) is the control database:
/// it holds the tenant registry `mtnt_tenants`, the tracking table `mtnt_migrations` of
/// public migrations, and whatever the public migrations create. It is created on first
/// use if missing. Each tenant is a database named like the tenant (`acme`, `big-co`),
/// with its own `mtnt_migrations`. Timestamps are `DATETIME(6)` in UTC.
///
/// One pool serves the whole server. A session takes one connection and selects the
/// target's database with `USE`, so migrations can name their tables unqualified; mtnt's
/// own SQL always names the database. A tenant migration reaches shared tables as
/// `` `control`.table ``. Because MySQL binds a prepared statement to the database that
/// was current when it was prepared, the connection's statement cache is cleared whenever
/// a session selects a database; migrations can use typed `sqlx::query(...)` calls on
/// [`Ctx::mysql`](crate::Ctx::mysql) freely.
///
/// Concurrent runs on one target (two deploys) take turns on a named lock (`GET_LOCK`)
/// that the session holds until it ends.
///
/// # No transactional DDL
///
/// MySQL commits every DDL statement (`CREATE`, `ALTER`, `DROP`, ...) on the spot, so the
/// server cannot roll back a migration that changed the schema. mtnt therefore
///
/// 1. records the migration as `started` (committed) before it runs;
/// 2. runs it with autocommit off (`SET autocommit = 0; START TRANSACTION`), so that a
///    migration that only changes data rolls back completely, and data changes after its
///    last DDL statement do too;
/// 3. on success records it `completed` (or `pending` after a down) and updates the
///    registry row in one transaction, which also records the next migration `started`
///    (step 1 of the next): one commit, one round trip between two migrations;
/// 4. on failure rolls back and leaves the row `started`, with the error. mtnt cannot know
///    whether the migration ran DDL before it failed, so every failure is treated as
///    possibly half-applied: the tenant's registry row shows the failure in `status`, and
///    the next `migrate` refuses the tenant until someone checks its schema and runs
///    `repair --tenant X --order N --mark completed` (it took effect) or `--mark pending`
///    (run it again). Migrations declared `idempotent = true` are simply run again.
///    A failed down function leaves its row `started` the same way, and `rollback`
///    refuses to go past it until it is repaired.
///
/// Keep each MySQL migration to one DDL statement (plus data changes) where you can, so
/// that a failure leaves a state that is easy to judge.
///
/// # Creating and dropping tenants
///
/// `create_tenant` registers the tenant as `creating`, creates its database, its tracking
/// table and runs its migrations. When anything fails it drops the database and deletes
/// the registry row again: the creation is atomic by compensation, not by transaction. A
/// process that dies midway leaves the tenant `creating` (the fleet skips it), and
/// `tenant drop` removes what is left.
#[derive(Clone, Debug)]
pub struct MySqlBackend {
    pool: MySqlPool,
    control: String,
    control_q: String,
}

impl MySqlBackend {
    /// A backend on `pool` whose control database is `control`.
    ///
    /// The pool's connections need no default database; every session selects its own.
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
            control_q: quote_ident_mysql(control),
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

    fn select_records(&self) -> String {
        format!(
            "SELECT name, schema_name, state, created_at, applied_order, failed_order, last_error FROM {}",
            self.registry()
        )
    }

    fn record_from_row(row: &MySqlRow) -> Result<TenantRecord> {
        let name = TenantName::new(text(row, "name")?)
            .map_err(|e| Error::Corrupt(format!("tenant registry: {e}")))?;
        Ok(TenantRecord {
            tenant: Tenant {
                name,
                schema: text(row, "schema_name")?,
            },
            state: TenantState::parse(&text(row, "state")?)?,
            created_at: row.try_get("created_at")?,
            applied_order: row.try_get("applied_order")?,
            failed_order: row.try_get("failed_order")?,
            last_error: opt_text(row, "last_error")?,
        })
    }

    /// Removes a tenant's registry row (only while it is `creating`, when `creating_only`).
    async fn delete_row(&self, tenant: &Tenant, creating_only: bool) -> Result<()> {
        let mut sql = format!("DELETE FROM {} WHERE name = ?", self.registry());
        if creating_only {
            sql.push_str(" AND state = 'creating'");
        }
        sqlx::query(&sql)
            .bind(tenant.name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Fills the new database of a tenant on `conn`: tracking table and `migrations`, then
    /// the registry row, committed together (as far as MySQL lets DDL join a transaction).
    async fn fill_new_database(
        &self,
        conn: &mut TargetConn,
        tenant: &Tenant,
        migrations: &[&'static Migration],
        activate: bool,
    ) -> Result<()> {
        let db_q = quote_ident_mysql(&tenant.schema);
        use_database(conn, &db_q).await?;
        conn.in_transaction = true;
        exec_mysql(
            conn,
            &format!(
                "{}; SET autocommit = 0; START TRANSACTION",
                tracking_ddl(&db_q)
            ),
        )
        .await?;
        for &migration in migrations {
            let clock = Instant::now();
            let mut ctx = Ctx::new(Some(tenant), CtxConn::MySql(conn));
            invoke(migration.up(), &mut ctx)
                .await
                .map_err(|e| Error::Migration {
                    target: Target::Tenant(tenant).to_string(),
                    migration: migration.to_string(),
                    reverting: false,
                    source: Box::new(e),
                })?;
            let micros = clock.elapsed().as_micros() as i64;
            sqlx::query(&format!(
                "INSERT INTO {db_q}.mtnt_migrations \
                 (migration_order, name, checksum, status, started_at, finished_at, duration_ms, error) \
                 VALUES (?, ?, ?, 'completed', {NOW} - INTERVAL ? MICROSECOND, {NOW}, ?, NULL)"
            ))
            .bind(migration.order())
            .bind(migration.name())
            .bind(migration.checksum())
            .bind(micros)
            .bind(micros / 1000)
            .execute(&mut **conn)
            .await?;
        }
        sqlx::query(&format!(
            "UPDATE {} SET state = ?, applied_order = ?, updated_at = {NOW} WHERE name = ?",
            self.registry()
        ))
        .bind(if activate { "active" } else { "creating" })
        .bind(migrations.iter().map(|m| m.order()).max())
        .bind(tenant.name.as_str())
        .execute(&mut **conn)
        .await?;
        exec_mysql(conn, "COMMIT; SET autocommit = 1").await?;
        conn.in_transaction = false;
        Ok(())
    }
}

/// `ER_DUP_ENTRY`.
const ER_DUP_ENTRY: u16 = 1062;
/// `ER_DB_CREATE_EXISTS`.
const ER_DB_CREATE_EXISTS: u16 = 1007;
/// `ER_BAD_DB_ERROR`: unknown database.
const ER_BAD_DB_ERROR: u16 = 1049;
/// `ER_NO_SUCH_TABLE`.
const ER_NO_SUCH_TABLE: u16 = 1146;

/// Makes `db_q` the connection's default database, for the unqualified names of migrations.
///
/// MySQL binds a prepared statement to the database that was the default when it was
/// prepared, and sqlx caches prepared statements per connection: a pooled connection that
/// worked on another tenant would run a migration's `sqlx::query("INSERT INTO accounts ...")`
/// against that tenant's table. So the cache is cleared as the database changes.
async fn use_database(conn: &mut MySqlConnection, db_q: &str) -> Result<(), sqlx::Error> {
    exec_mysql(conn, &format!("USE {db_q}")).await?;
    if conn.cached_statements_size() > 0 {
        conn.clear_cached_statements().await?;
    }
    Ok(())
}

/// Runs several statements in one unprepared round trip and returns the rows they yield.
///
/// A named function with a concrete connection type and a boxed `Send` future, like
/// [`exec_mysql`], because sqlx's generic executors trip the compiler's higher-ranked
/// `Send` check inside `async_trait` methods.
fn fetch_all_unprepared<'a>(
    conn: &'a mut MySqlConnection,
    sql: &'a str,
) -> BoxFuture<'a, Result<Vec<MySqlRow>, sqlx::Error>> {
    // A plain `&str` has no arguments: sqlx sends it unprepared, several statements at once.
    Box::pin(async move { sqlx::Executor::fetch_all(conn, sql).await })
}

/// The server's error number of a database error.
fn error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// A text column, read as bytes: columns with a binary collation (`utf8mb4_bin`, which
/// the registry uses so that names sort like Rust strings) carry the protocol's binary
/// flag, which sqlx will not decode into `String`.
fn text(row: &MySqlRow, column: &str) -> Result<String> {
    let bytes: Vec<u8> = row.try_get(column)?;
    String::from_utf8(bytes)
        .map_err(|e| Error::Corrupt(format!("column {column} is not UTF-8: {e}")))
}

fn opt_text(row: &MySqlRow, column: &str) -> Result<Option<String>> {
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    bytes
        .map(|b| {
            String::from_utf8(b)
                .map_err(|e| Error::Corrupt(format!("column {column} is not UTF-8: {e}")))
        })
        .transpose()
}

/// The error text to store, cut at a character boundary below [`MAX_ERROR_BYTES`].
fn error_text(error: &Error) -> String {
    let mut message = error.to_string();
    if message.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" [...]");
    }
    message
}

/// A string literal for mtnt's own multi-statement SQL, which has no placeholders: hex
/// with a character set introducer, so that no `sql_mode` (`NO_BACKSLASH_ESCAPES`) or
/// content can change how it reads.
fn text_literal(value: &str) -> String {
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

/// The tracking table of one database.
fn tracking_ddl(db_q: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db_q}.mtnt_migrations (
            migration_order BIGINT NOT NULL PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            checksum VARCHAR(255) NOT NULL,
            status VARCHAR(16) NOT NULL CHECK (status IN ('pending', 'started', 'failed', 'completed')),
            started_at DATETIME(6) NULL,
            finished_at DATETIME(6) NULL,
            duration_ms BIGINT NULL,
            error MEDIUMTEXT NULL
        ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
    )
}

#[async_trait]
impl Backend for MySqlBackend {
    fn engine(&self) -> Engine {
        Engine::MySql
    }

    fn tenancy(&self) -> Tenancy {
        Tenancy::Database
    }

    async fn prepare(&self) -> Result<()> {
        let sql = format!(
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
             {tracking}",
            control = self.control_q,
            registry = self.registry(),
            tracking = tracking_ddl(&self.control_q),
        );
        let mut conn = self.pool.acquire().await?;
        exec_mysql(&mut conn, &sql).await?;
        Ok(())
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
        let after = after.map(TenantName::as_str);
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
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
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut records = Vec::with_capacity(names.len());
        // Bounded IN lists: a server caps the placeholders of one statement.
        for chunk in names.chunks(1000) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "{} WHERE name IN ({placeholders}) ORDER BY name",
                self.select_records()
            );
            let mut query = sqlx::query(&sql);
            for name in chunk {
                query = query.bind(name.as_str());
            }
            let rows = query.fetch_all(&self.pool).await?;
            for row in &rows {
                records.push(Self::record_from_row(row)?);
            }
        }
        records.sort_by(|a, b| a.tenant.name.cmp(&b.tenant.name));
        Ok(records)
    }

    /// Computed from the tenants' own tracking tables, not cached in the registry: a
    /// MySQL commit cannot hold DDL and the registry together, and reading the tables
    /// sees hand edits and interrupted runs as they are. Per page of names, the registry
    /// gives their databases, one query finds those that have a tracking table, and one
    /// `UNION ALL` query
    /// hashes each table's rows with [`fingerprint`](crate::fingerprint)'s definition.
    /// A tenant with a row that is not `completed` (a `started` migration, a `pending`
    /// one after a revert) is left out, so it gets a session and the full check.
    async fn fingerprints(&self, names: &[TenantName]) -> Result<Vec<(TenantName, String)>> {
        let mut fingerprints = Vec::with_capacity(names.len());
        if names.is_empty() {
            return Ok(fingerprints);
        }
        let mut conn = self.pool.acquire().await?;
        // Bounded IN lists and UNIONs: a server caps placeholders and open tables.
        for chunk in names.chunks(1000) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT name, schema_name FROM {} WHERE name IN ({placeholders})",
                self.registry()
            );
            let mut query = sqlx::query(&sql);
            for name in chunk {
                query = query.bind(name.as_str());
            }
            let registered = query
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|row| Ok((text(row, "name")?, text(row, "schema_name")?)))
                .collect::<Result<Vec<_>>>()?;
            if registered.is_empty() {
                continue;
            }
            // A list of constants, not a join with the registry: that makes the server
            // look at every database on it (1.5 s for 1000 tenants among 2000 databases
            // against 20 ms).
            let placeholders = vec!["?"; registered.len()].join(", ");
            let sql = format!(
                "SELECT TABLE_SCHEMA AS db FROM information_schema.TABLES \
                 WHERE TABLE_NAME = 'mtnt_migrations' AND TABLE_SCHEMA IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql);
            for (_, schema) in &registered {
                query = query.bind(schema.as_str());
            }
            let with_table = query
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|row| text(row, "db"))
                .collect::<Result<std::collections::HashSet<_>>>()?;
            // Matched here as bytes: the server compares database names without case.
            let tracked: Vec<_> = registered
                .into_iter()
                .filter(|(_, schema)| with_table.contains(schema))
                .collect();
            if tracked.is_empty() {
                continue;
            }
            let union = tracked
                .iter()
                .enumerate()
                .map(|(i, (_, schema))| {
                    format!(
                        "SELECT {i} AS k, IF(MAX(status <> 'completed'), NULL, \
                         SHA2(COALESCE(GROUP_CONCAT(CONCAT(migration_order, ':', checksum) \
                         ORDER BY migration_order SEPARATOR ','), ''), 256)) AS fingerprint \
                         FROM {}.mtnt_migrations",
                        quote_ident_mysql(schema)
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            // GROUP_CONCAT cuts its result at `group_concat_max_len` (1024 bytes on MySQL
            // by default, a dozen migrations), which would hash a prefix: raised for this
            // statement and set back, in one round trip.
            let sql = format!(
                "SET @mtnt_group_concat_max_len = @@SESSION.group_concat_max_len; \
                 SET SESSION group_concat_max_len = 4294967295; {union}; \
                 SET SESSION group_concat_max_len = @mtnt_group_concat_max_len"
            );
            let rows = match fetch_all_unprepared(&mut conn, &sql).await {
                Ok(rows) => rows,
                // A tenant database dropped since the first query: this page gets
                // sessions, which report it properly.
                Err(e) if error_number(&e) == Some(ER_NO_SUCH_TABLE) => {
                    conn.close_on_drop();
                    return Ok(fingerprints);
                }
                Err(e) => {
                    // Its `group_concat_max_len` may still be raised.
                    conn.close_on_drop();
                    return Err(Error::other(format!(
                        "reading the fingerprints of {} tenant tracking tables: {e}",
                        tracked.len()
                    )));
                }
            };
            for row in &rows {
                let k: i64 = row.try_get("k")?;
                let Some(fingerprint) = opt_text(row, "fingerprint")? else {
                    continue;
                };
                let (name, _) = usize::try_from(k)
                    .ok()
                    .and_then(|k| tracked.get(k))
                    .ok_or_else(|| Error::Corrupt(format!("fingerprint row {k} of no tenant")))?;
                let name = TenantName::new(name.clone())
                    .map_err(|e| Error::Corrupt(format!("tenant registry: {e}")))?;
                fingerprints.push((name, fingerprint));
            }
        }
        Ok(fingerprints)
    }

    async fn session<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Session + 'a>> {
        let mut conn = self.pool.acquire().await?;
        let db_q = match target {
            Target::Public => self.control_q.clone(),
            Target::Tenant(t) => quote_ident_mysql(&t.schema),
        };
        if let Err(e) = use_database(&mut conn, &db_q).await {
            if let (Target::Tenant(t), Some(ER_BAD_DB_ERROR)) = (target, error_number(&e)) {
                return Err(Error::Invalid(format!(
                    "database {} of tenant {} does not exist\n  fix: restore it, or remove the tenant with `tenant drop {}`",
                    t.schema, t.name, t.name
                )));
            }
            return Err(e.into());
        }
        let lock_key = match target {
            Target::Public => format!("public:{}", self.control),
            // Tenant databases are server-wide, whatever control database registers them.
            Target::Tenant(t) => format!("tenant:{}", t.schema),
        };
        let conn = TargetConn::new(conn, lock_key);
        Ok(Box::new(MySqlSession {
            backend: self,
            conn,
            target,
            db_q,
        }))
    }

    async fn create_tenant(
        &self,
        tenant: &Tenant,
        migrations: &[&'static Migration],
        activate: bool,
    ) -> Result<()> {
        let claim = sqlx::query(&format!(
            "INSERT INTO {} (name, schema_name, state, created_at, updated_at) VALUES (?, ?, 'creating', {NOW}, {NOW})",
            self.registry()
        ))
        .bind(tenant.name.as_str())
        .bind(&tenant.schema)
        .execute(&self.pool)
        .await;
        match claim {
            Err(e) if error_number(&e) == Some(ER_DUP_ENTRY) => {
                return Err(Error::TenantExists(tenant.name.to_string()))
            }
            other => other?,
        };
        let db_q = quote_ident_mysql(&tenant.schema);
        let created = async {
            let mut conn = self.pool.acquire().await?;
            exec_mysql(
                &mut conn,
                &format!("CREATE DATABASE {db_q} CHARACTER SET utf8mb4"),
            )
            .await?;
            Ok::<_, sqlx::Error>(conn)
        }
        .await;
        let mut conn = match created {
            // Closed if dropped inside the transaction (a cancelled creation).
            Ok(conn) => TargetConn::new(conn, String::new()),
            Err(e) => {
                // Nothing was created: only the claim goes.
                let _ = self.delete_row(tenant, true).await;
                if error_number(&e) == Some(ER_DB_CREATE_EXISTS) {
                    return Err(Error::Invalid(format!(
                        "database {} exists already but is not a registered tenant\n  fix: register it with `tenant adopt --schema-like {}`",
                        tenant.schema, tenant.schema
                    )));
                }
                return Err(e.into());
            }
        };
        let Err(error) = self
            .fill_new_database(&mut conn, tenant, migrations, activate)
            .await
        else {
            return Ok(());
        };
        // Compensate: nothing of the tenant may stay. The database goes first, then the
        // row that claims it.
        if exec_mysql(&mut conn, "ROLLBACK; SET autocommit = 1")
            .await
            .is_ok()
        {
            conn.in_transaction = false;
        }
        drop(conn);
        let dropped = async {
            let mut conn = self.pool.acquire().await?;
            exec_mysql(&mut conn, &format!("DROP DATABASE IF EXISTS {db_q}")).await
        }
        .await;
        if let Err(e) = dropped {
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
        sqlx::query(&format!(
            "UPDATE {} SET state = 'active', updated_at = {NOW} WHERE name = ?",
            self.registry()
        ))
        .bind(tenant.name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn drop_tenant(&self, tenant: &Tenant) -> Result<()> {
        // DDL cannot join a transaction: the database first, then the row, so that a
        // failure in between leaves a row that `tenant drop` can remove again.
        let mut conn = self.pool.acquire().await?;
        exec_mysql(
            &mut conn,
            &format!(
                "DROP DATABASE IF EXISTS {}",
                quote_ident_mysql(&tenant.schema)
            ),
        )
        .await?;
        drop(conn);
        self.delete_row(tenant, false).await
    }

    async fn adopt(
        &self,
        like: &str,
        baseline: &[&'static Migration],
    ) -> Result<(Vec<Tenant>, Vec<String>)> {
        // Compared as bytes: case-sensitive, like database names on most servers.
        let rows = sqlx::query(
            "SELECT SCHEMA_NAME AS db FROM information_schema.SCHEMATA \
             WHERE CAST(SCHEMA_NAME AS BINARY) LIKE CAST(? AS BINARY) ORDER BY db",
        )
        .bind(like)
        .fetch_all(&self.pool)
        .await?;
        let registered_rows = sqlx::query(&format!("SELECT schema_name FROM {}", self.registry()))
            .fetch_all(&self.pool)
            .await?;
        let registered = registered_rows
            .iter()
            .map(|r| text(r, "schema_name"))
            .collect::<Result<Vec<_>>>()?;
        let mut databases = rows
            .iter()
            .map(|r| text(r, "db"))
            .collect::<Result<Vec<_>>>()?;
        databases.retain(|db| {
            !SYSTEM_DATABASES.contains(&db.as_str())
                && *db != self.control
                && !registered.contains(db)
        });
        databases.sort();

        let mut adopted = Vec::new();
        let mut skipped = Vec::new();
        let mut conn = TargetConn::new(self.pool.acquire().await?, String::new());
        for db in databases {
            let Ok(name) = TenantName::new(db.clone()) else {
                skipped.push(db);
                continue;
            };
            let tenant = Tenant { name, schema: db };
            let db_q = quote_ident_mysql(&tenant.schema);
            // The table commits on its own (DDL); the rows and the registration together.
            conn.in_transaction = true;
            exec_mysql(
                &mut conn,
                &format!("{}; START TRANSACTION", tracking_ddl(&db_q)),
            )
            .await?;
            let result = async {
                for migration in baseline {
                    sqlx::query(&upsert_sql(&db_q, NOW, "0"))
                        .bind(migration.order())
                        .bind(migration.name())
                        .bind(migration.checksum())
                        .bind(MigrationStatus::Completed.as_str())
                        .bind(migration.name())
                        .bind(migration.checksum())
                        .bind(MigrationStatus::Completed.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
                // From the table, not the baseline: an adopted database may bring rows of
                // its own, and the registry must agree with them for the fleet's fast path.
                sqlx::query(&format!(
                    "INSERT INTO {} (name, schema_name, state, created_at, applied_order, updated_at) \
                     SELECT ?, ?, 'active', {NOW}, max(migration_order), {NOW} \
                     FROM {db_q}.mtnt_migrations WHERE status = 'completed'",
                    self.registry()
                ))
                .bind(tenant.name.as_str())
                .bind(&tenant.schema)
                .execute(&mut *conn)
                .await?;
                exec_mysql(&mut conn, "COMMIT").await?;
                Ok::<_, Error>(())
            }
            .await;
            if let Err(e) = result {
                if exec_mysql(&mut conn, "ROLLBACK").await.is_ok() {
                    conn.in_transaction = false;
                }
                return Err(e);
            }
            conn.in_transaction = false;
            adopted.push(tenant);
        }
        Ok((adopted, skipped))
    }
}

/// Inserts or overwrites a tracking row, with `finished_at` and `duration_ms` as given
/// (SQL expressions). Binds: order, name, checksum, status, then name, checksum, status again.
fn upsert_sql(db_q: &str, finished_at: &str, duration_ms: &str) -> String {
    format!(
        "INSERT INTO {db_q}.mtnt_migrations \
         (migration_order, name, checksum, status, started_at, finished_at, duration_ms, error) \
         VALUES (?, ?, ?, ?, {NOW}, {finished_at}, {duration_ms}, NULL) \
         ON DUPLICATE KEY UPDATE name = ?, checksum = ?, status = ?, started_at = {NOW}, \
         finished_at = {finished_at}, duration_ms = {duration_ms}, error = NULL"
    )
}

/// A session's pooled connection, which may hold the target's named lock
/// ([`Session::lock`], `GET_LOCK`) and may be inside a migration's transaction.
///
/// Dropped while inside a transaction (a run cancelled mid-migration), it is closed, which
/// rolls back and releases the lock. Dropped holding the lock, it releases the lock on a
/// spawned task before going back to the pool, or is closed when that fails.
struct TargetConn {
    conn: Option<PoolConnection<MySql>>,
    lock_key: String,
    locked: bool,
    in_transaction: bool,
}

impl TargetConn {
    fn new(conn: PoolConnection<MySql>, lock_key: String) -> Self {
        Self {
            conn: Some(conn),
            lock_key,
            locked: false,
            in_transaction: false,
        }
    }

    async fn lock(&mut self, target: Target<'_>) -> Result<()> {
        if self.locked {
            return Ok(());
        }
        // Set before the first lock query, so that a cancelled wait still unlocks on drop.
        self.locked = true;
        // A lock name has at most 64 characters: hash the key.
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT('mtnt:', SHA1(?)), 0)")
            .bind(self.lock_key.clone())
            .fetch_one(&mut **self)
            .await?;
        if got != Some(1) {
            tracing::info!("another mtnt run is working on {target}; waiting for it to finish");
            // A year: MariaDB and MySQL agree on positive timeouts only.
            let got: Option<i64> =
                sqlx::query_scalar("SELECT GET_LOCK(CONCAT('mtnt:', SHA1(?)), 31536000)")
                    .bind(self.lock_key.clone())
                    .fetch_one(&mut **self)
                    .await?;
            if got != Some(1) {
                return Err(Error::other(format!(
                    "could not take the mtnt lock of {target}"
                )));
            }
        }
        Ok(())
    }

    /// Takes the lock if it is free, without waiting (a fleet run skips a tenant another
    /// runner holds); whether it is held now.
    async fn try_lock(&mut self) -> Result<bool> {
        if self.locked {
            return Ok(true);
        }
        // Set first, so that a cancelled attempt still unlocks on drop.
        self.locked = true;
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT('mtnt:', SHA1(?)), 0)")
            .bind(self.lock_key.clone())
            .fetch_one(&mut **self)
            .await?;
        self.locked = got == Some(1);
        Ok(self.locked)
    }

    fn close_on_drop(&mut self) {
        if let Some(conn) = &mut self.conn {
            conn.close_on_drop();
        }
    }
}

impl Deref for TargetConn {
    type Target = MySqlConnection;
    fn deref(&self) -> &MySqlConnection {
        self.conn
            .as_ref()
            .expect("the connection is only taken on drop")
    }
}

impl DerefMut for TargetConn {
    fn deref_mut(&mut self) -> &mut MySqlConnection {
        self.conn
            .as_mut()
            .expect("the connection is only taken on drop")
    }
}

impl Drop for TargetConn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.in_transaction {
            conn.close_on_drop();
            return;
        }
        if !self.locked {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            conn.close_on_drop();
            return;
        };
        runtime.spawn(async move {
            if exec_mysql(&mut conn, "DO RELEASE_ALL_LOCKS()")
                .await
                .is_err()
            {
                conn.close_on_drop();
            }
        });
    }
}

struct MySqlSession<'a> {
    backend: &'a MySqlBackend,
    conn: TargetConn,
    target: Target<'a>,
    db_q: String,
}

impl MySqlSession<'_> {
    async fn run(&mut self, sql: &str) -> Result<()> {
        exec_mysql(&mut self.conn, sql).await?;
        Ok(())
    }

    /// Turns autocommit off and starts a transaction: after a DDL statement's implicit
    /// commit, the statements that follow are in a transaction again.
    async fn begin(&mut self) -> Result<()> {
        self.conn.in_transaction = true;
        self.run("SET autocommit = 0; START TRANSACTION").await
    }

    async fn commit(&mut self) -> Result<()> {
        self.run("COMMIT; SET autocommit = 1").await?;
        self.conn.in_transaction = false;
        Ok(())
    }

    /// Ends a failed transaction and turns autocommit back on; a connection that cannot
    /// do that is not reused.
    async fn rollback(&mut self) {
        if exec_mysql(&mut self.conn, "ROLLBACK; SET autocommit = 1")
            .await
            .is_ok()
        {
            self.conn.in_transaction = false;
        } else {
            self.conn.close_on_drop();
        }
    }

    /// The registry update that follows a successful change: the cached newest completed
    /// migration, and no failure. Its name is spliced in as a literal so that it can
    /// travel with other statements in one round trip.
    fn registry_update(&self) -> Option<String> {
        match self.target {
            Target::Public => None,
            Target::Tenant(t) => Some(format!(
                "UPDATE {registry} SET applied_order = (SELECT max(migration_order) FROM {db_q}.mtnt_migrations \
                 WHERE status = 'completed'), failed_order = NULL, last_error = NULL, updated_at = {NOW} \
                 WHERE name = {name}",
                registry = self.backend.registry(),
                db_q = self.db_q,
                name = text_literal(t.name.as_str()),
            )),
        }
    }

    async fn update_registry(&mut self) -> Result<()> {
        if let Some(sql) = self.registry_update() {
            self.run(&sql).await?;
        }
        Ok(())
    }

    /// The statements that record `migration` as about to run. A down also refreshes the
    /// registry's cached newest completed migration, which the row leaves: the registry
    /// agrees with the tracking table after every commit.
    fn started_sql(&self, migration: &Migration, direction: Direction) -> Vec<String> {
        let db_q = &self.db_q;
        let order = migration.order();
        match direction {
            Direction::Up => {
                let (name, checksum) = (
                    text_literal(migration.name()),
                    text_literal(migration.checksum()),
                );
                vec![format!(
                    "INSERT INTO {db_q}.mtnt_migrations \
                     (migration_order, name, checksum, status, started_at, finished_at, duration_ms, error) \
                     VALUES ({order}, {name}, {checksum}, 'started', {NOW}, NULL, NULL, NULL) \
                     ON DUPLICATE KEY UPDATE name = {name}, checksum = {checksum}, status = 'started', \
                     started_at = {NOW}, finished_at = NULL, duration_ms = NULL, error = NULL"
                )]
            }
            Direction::Down => {
                let mut sql = vec![format!(
                    "UPDATE {db_q}.mtnt_migrations SET status = 'started', started_at = {NOW}, \
                     finished_at = NULL, duration_ms = NULL, error = NULL WHERE migration_order = {order}"
                )];
                if let Target::Tenant(t) = self.target {
                    sql.push(format!(
                        "UPDATE {registry} SET applied_order = (SELECT max(migration_order) \
                         FROM {db_q}.mtnt_migrations WHERE status = 'completed'), updated_at = {NOW} \
                         WHERE name = {name}",
                        registry = self.backend.registry(),
                        name = text_literal(t.name.as_str()),
                    ));
                }
                sql
            }
        }
    }

    /// Sends bookkeeping statements in one round trip and commits them together, with
    /// autocommit left off afterwards when `then_autocommit_off` (the next function runs
    /// inside a transaction). `autocommit_off` says how the connection is set now.
    async fn commit_bookkeeping(
        &mut self,
        statements: Vec<String>,
        autocommit_off: bool,
        then_autocommit_off: bool,
    ) -> Result<()> {
        let mut sql = Vec::with_capacity(statements.len() + 3);
        if !autocommit_off {
            sql.push("START TRANSACTION".to_owned());
        }
        sql.extend(statements);
        sql.push("COMMIT".to_owned());
        match (autocommit_off, then_autocommit_off) {
            (true, false) => sql.push("SET autocommit = 1".to_owned()),
            (false, true) => sql.push("SET autocommit = 0".to_owned()),
            _ => {}
        }
        // Closed if dropped mid-flight: a cancelled commit must not go back to the pool.
        self.conn.in_transaction = true;
        self.run(&sql.join("; ")).await?;
        self.conn.in_transaction = then_autocommit_off;
        Ok(())
    }

    /// Rolls back after a failed migration (or its failed bookkeeping) and records the
    /// failure; the error is handed back.
    async fn fail(&mut self, migration: &Migration, error: Error) -> Error {
        if connection_lost(&error) {
            self.conn.close_on_drop();
            return error;
        }
        self.rollback().await;
        // Best effort: the migration error matters more than a failed bookkeeping write.
        if let Err(e) = self.record_failure(migration, &error).await {
            tracing::warn!(
                "could not record the failure of {migration} in {}: {e}",
                self.target
            );
        }
        error
    }

    /// Runs the `direction` functions of `migrations` in order, stopping at the first
    /// failure, whose index it returns with the error.
    ///
    /// Each migration is recorded `started` in a commit before its function runs, and
    /// `completed` (`pending` after a down) with the registry row in a commit after it,
    /// as the type's docs say. The commit after one migration is the commit before the
    /// next: its `completed` row, the registry row and the next `started` row travel in
    /// one multi-statement round trip and one transaction (one log flush), so every
    /// committed state is one the old two commits could leave too: either the previous
    /// migration is still `started`, or it is `completed` and the next is `started`.
    async fn run_chain(
        &mut self,
        migrations: &[&'static Migration],
        direction: Direction,
    ) -> std::result::Result<(), (usize, Error)> {
        let Some(&first) = migrations.first() else {
            return Ok(());
        };
        self.lock().await.map_err(|e| (0, e))?;
        let mut function = first.function(direction, self.target).map_err(|e| (0, e))?;
        let started = self.started_sql(first, direction);
        if let Err(error) = self
            .commit_bookkeeping(started, false, first.is_transactional())
            .await
        {
            // Nothing ran and nothing was recorded: no failure to note.
            if connection_lost(&error) {
                self.conn.close_on_drop();
            } else {
                self.rollback().await;
            }
            return Err((0, error));
        }
        let tenant = self.target.tenant();
        for (i, &migration) in migrations.iter().enumerate() {
            let clock = Instant::now();
            let mut ctx = Ctx::new(tenant, CtxConn::MySql(&mut self.conn));
            if let Err(error) = invoke(function, &mut ctx).await {
                return Err((i, self.fail(migration, error).await));
            }
            let next = migrations
                .get(i + 1)
                .map(|&m| (m, m.function(direction, self.target)));
            let mut statements = vec![self.finished_sql(migration, direction, clock)];
            statements.extend(self.registry_update());
            if let Some((next, Ok(_))) = &next {
                statements.extend(self.started_sql(next, direction));
            }
            let then_autocommit_off = matches!(&next, Some((m, Ok(_))) if m.is_transactional());
            if let Err(error) = self
                .commit_bookkeeping(
                    statements,
                    migration.is_transactional(),
                    then_autocommit_off,
                )
                .await
            {
                return Err((i, self.fail(migration, error).await));
            }
            match next {
                None => break,
                Some((_, Err(error))) => return Err((i + 1, error)),
                Some((_, Ok(f))) => function = f,
            }
        }
        Ok(())
    }

    /// The statement that records the end of a successful run.
    fn finished_sql(&self, migration: &Migration, direction: Direction, clock: Instant) -> String {
        let status = match direction {
            Direction::Up => MigrationStatus::Completed,
            Direction::Down => MigrationStatus::Pending,
        };
        format!(
            "UPDATE {}.mtnt_migrations SET status = '{}', finished_at = {NOW}, duration_ms = {}, \
             error = NULL WHERE migration_order = {}",
            self.db_q,
            status.as_str(),
            clock.elapsed().as_millis() as i64,
            migration.order()
        )
    }

    /// Keeps the row `started` with the error, and notes the failure in the registry, whose
    /// cached newest completed migration drops below a down that failed halfway.
    async fn record_failure(&mut self, migration: &Migration, error: &Error) -> Result<()> {
        let message = error_text(error);
        sqlx::query(&format!(
            "UPDATE {}.mtnt_migrations SET finished_at = {NOW}, error = ? WHERE migration_order = ? AND status = 'started'",
            self.db_q
        ))
        .bind(&message)
        .bind(migration.order())
        .execute(&mut *self.conn)
        .await?;
        if let Target::Tenant(t) = self.target {
            sqlx::query(&format!(
                "UPDATE {registry} SET applied_order = (SELECT max(migration_order) FROM {db_q}.mtnt_migrations \
                 WHERE status = 'completed'), failed_order = ?, last_error = ?, updated_at = {NOW} WHERE name = ?",
                registry = self.backend.registry(),
                db_q = self.db_q,
            ))
            .bind(migration.order())
            .bind(&message)
            .bind(t.name.as_str())
            .execute(&mut *self.conn)
            .await?;
        }
        Ok(())
    }
}

fn applied_from_row(row: &MySqlRow) -> Result<AppliedMigration> {
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

#[async_trait]
impl Session for MySqlSession<'_> {
    async fn applied(&mut self) -> Result<Vec<AppliedMigration>> {
        let sql = format!(
            "SELECT migration_order, name, checksum, status, started_at, finished_at, duration_ms, error \
             FROM {}.mtnt_migrations ORDER BY migration_order",
            self.db_q
        );
        let rows = match sqlx::query(&sql).fetch_all(&mut *self.conn).await {
            Ok(rows) => rows,
            // An adopted or hand-made database without a tracking table yet.
            Err(e) if error_number(&e) == Some(ER_NO_SUCH_TABLE) => {
                self.run(&tracking_ddl(&self.db_q)).await?;
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        rows.iter().map(applied_from_row).collect()
    }

    async fn lock(&mut self) -> Result<()> {
        self.conn.lock(self.target).await
    }

    async fn try_lock(&mut self) -> Result<bool> {
        self.conn.try_lock().await
    }

    async fn apply(&mut self, migration: &'static Migration, direction: Direction) -> Result<()> {
        self.run_chain(&[migration], direction)
            .await
            .map_err(|(_, error)| error)
    }

    async fn apply_up(
        &mut self,
        migrations: &[&'static Migration],
    ) -> std::result::Result<(), (usize, Error)> {
        self.run_chain(migrations, Direction::Up).await
    }

    async fn set_checksum(&mut self, order: i64, checksum: &str) -> Result<()> {
        self.lock().await?;
        sqlx::query(&format!(
            "UPDATE {}.mtnt_migrations SET checksum = ? WHERE migration_order = ?",
            self.db_q
        ))
        .bind(checksum)
        .bind(order)
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }

    async fn mark(&mut self, migration: &'static Migration, status: MigrationStatus) -> Result<()> {
        self.lock().await?;
        self.begin().await?;
        let result = async {
            sqlx::query(&upsert_sql(&self.db_q, NOW, "0"))
                .bind(migration.order())
                .bind(migration.name())
                .bind(migration.checksum())
                .bind(status.as_str())
                .bind(migration.name())
                .bind(migration.checksum())
                .bind(status.as_str())
                .execute(&mut *self.conn)
                .await?;
            self.update_registry().await?;
            self.commit().await
        }
        .await;
        if result.is_err() {
            self.rollback().await;
        }
        result
    }
}
