//! `tenant move`: a tenant's schema (or database, with a database per tenant) copied to
//! another server (DDL and data, by `pg_dump`, whose data is `COPY`), its row counts
//! checked table by table, the registry switched in one transaction of the control
//! database, then the source dropped.
//!
//! The caller holds the tenant's lock on its source server throughout, so no migration
//! runs meanwhile. Until the switch commits, the tenant is served from the source: a
//! failure before it drops the partial copy.
//!
//! Writes are paused for the copy ([`Freeze`]): a transaction on the source holds every
//! table of the tenant in `EXCLUSIVE` mode, so the application's reads go on and its
//! writes wait. A write acknowledged before the pause is in the copy; one that waited
//! never commits at the source: after the switch, a schema goes within that transaction;
//! a tenant database (or a kept source) is made read-only within it (a statement trigger
//! on every table) and the waiting sessions are ended, then a database is dropped. The
//! application's retry finds the tenant on its new server. A journal entry (`move`, keyed by the tenant)
//! says a move is under way, so that a re-run after a crash finishes it: a copy left on the
//! destination before the switch is dropped and made again; a source left after the switch
//! is dropped.

use std::process::Stdio;

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection as _, PgConnection, Row};

use super::super::sql::quote_ident;
use super::schema::PostgresBackend;
use super::tracking::{shared_table, Tracking, COLUMNS};
use crate::backend::{Backend, JournalEntry};
use crate::ctx::exec_postgres;
use crate::{Error, Result, ServerName, Tenant};

/// The journal kind of moves under way.
const MOVE: &str = "move";

/// How many moves under way the journal keeps: all of them.
const KEEP: usize = 1 << 30;

/// What a tenant's storage is, as a move copies it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Storage {
    /// A schema of the server's database, its tracking rows in the shared table on the
    /// default server and in a table of the schema elsewhere.
    Schema,
    /// A database of its own, its tracking table inside it.
    Database,
}

impl Storage {
    fn what(self) -> &'static str {
        match self {
            Storage::Schema => "schema",
            Storage::Database => "database",
        }
    }
}

/// The `application_name` of the `pg_dump` and `psql` sessions that copy `tenant`: a
/// re-run after a crash ends them by it ([`PostgresBackend::end_copies`]).
fn copy_session_name(tenant: &Tenant) -> String {
    format!("mtnt move {}", tenant.storage)
}

/// The libpq connection of `options` for `pg_dump` and `psql`, its sessions named
/// `app_name`: its parameters as arguments, its password in the environment (never on a
/// command line).
fn libpq(
    command: &str,
    options: &PgConnectOptions,
    password: Option<String>,
    app_name: &str,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(command);
    cmd.arg("--host")
        .arg(options.get_host())
        .arg("--port")
        .arg(options.get_port().to_string())
        .arg("--username")
        .arg(options.get_username())
        .arg("--dbname")
        .arg(options.get_database().unwrap_or("postgres"))
        .env_remove("PGPASSWORD")
        .env("PGAPPNAME", app_name)
        .kill_on_drop(true);
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    cmd
}

/// The password in `options`, if it has one (sqlx keeps no getter for it).
fn password_of(options: &PgConnectOptions) -> Option<String> {
    let url = sqlx::ConnectOptions::to_url_lossy(options);
    url.password()
        .map(crate::url_redact::percent_decode)
        .filter(|p| !p.is_empty())
}

impl PostgresBackend {
    /// The pool and connect options of `server` (`None`: the default server).
    async fn server_of(&self, server: Option<&ServerName>) -> Result<(PgPool, PgConnectOptions)> {
        let pool = self.pool_of(server).await?;
        let options = pool.connect_options().as_ref().clone();
        Ok((pool, options))
    }

    /// The move of `tenant` under way, if the journal has one: (from, to), `None` for the
    /// default server.
    async fn move_under_way(
        &self,
        tenant: &Tenant,
    ) -> Result<Option<(Option<ServerName>, Option<ServerName>)>> {
        let entries = self.journal_read(MOVE, KEEP).await?;
        let Some(entry) = entries.into_iter().find(|e| e.key == tenant.name.as_str()) else {
            return Ok(None);
        };
        let body: serde_json::Value = serde_json::from_str(&entry.body).map_err(|e| {
            Error::Corrupt(format!(
                "journal entry of the move of tenant {}: {e}",
                tenant.name
            ))
        })?;
        let server = |key: &str| -> Result<Option<ServerName>> {
            body[key].as_str().map(ServerName::new).transpose()
        };
        Ok(Some((server("from")?, server("to")?)))
    }

    async fn forget_move(&self, tenant: &Tenant) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM {}.mtnt_journal WHERE kind = $1 AND entry_key = $2",
            self.control_q()
        ))
        .bind(MOVE)
        .bind(tenant.name.as_str())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Drops the storage of `tenant` on `server`, if it is there (a database with the
    /// sessions still in it: the lock's, a killed move's).
    async fn drop_storage_on(
        &self,
        tenant: &Tenant,
        server: Option<&ServerName>,
        storage: Storage,
    ) -> Result<()> {
        let pool = self.pool_of(server).await?;
        let mut conn = pool.acquire().await?;
        let name = quote_ident(&tenant.storage);
        let sql = match storage {
            Storage::Schema => format!("DROP SCHEMA IF EXISTS {name} CASCADE"),
            Storage::Database => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        };
        exec_postgres(&mut conn, &sql).await?;
        Ok(())
    }

    /// Whether the storage of `tenant` exists on `pool`'s server.
    async fn storage_on(pool: &PgPool, tenant: &Tenant, storage: Storage) -> Result<bool> {
        let query = match storage {
            Storage::Schema => sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
                .bind(quote_ident(&tenant.storage)),
            Storage::Database => {
                sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
                    .bind(tenant.storage.clone())
            }
        };
        Ok(query.fetch_one(pool).await?)
    }

    /// Ends the sessions of an earlier move of `tenant` that copy it (`pg_dump`, `psql`,
    /// and a tenant database's `CREATE DATABASE`) on `pool`'s server, waiting (a few
    /// seconds at most) until they are gone. A move killed with SIGKILL leaves its
    /// children running, and the server finishes the statement it was running: their copy
    /// would commit after this run dropped the partial one and clash with this run's copy.
    /// Ended, their transactions roll back. Only a move of this tenant, whose lock the caller holds,
    /// names its sessions so (truncated, like the server does, to 63 bytes).
    async fn end_copies(pool: &PgPool, tenant: &Tenant) -> Result<()> {
        sqlx::query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE application_name = left($1, 63) AND pid <> pg_backend_pid()",
        )
        .bind(copy_session_name(tenant))
        .fetch_all(pool)
        .await?;
        Ok(())
    }

    /// Moves the tenant `read` (as the caller read it from the registry; the caller holds
    /// its lock), whose storage is `storage`, to `to` (`None`: the default server); see
    /// the module's documentation.
    pub(super) async fn move_storage(
        &self,
        read: &Tenant,
        to: Option<&ServerName>,
        keep_source: bool,
        storage: Storage,
    ) -> Result<()> {
        let under_way = self.move_under_way(read).await?;
        let mut tenant = read.clone();
        if under_way.is_some() {
            // A killed move's sessions end first (what they ran commits or rolls back),
            // then the registry is read again: its switch may have committed since.
            for server in [read.server.as_ref(), to] {
                Self::end_copies(&self.pool_of(server).await?, read).await?;
            }
            Self::end_copies(self.pool(), read).await?;
            if let Some(server) = self.server_in_registry(read).await? {
                tenant.server = server;
            }
        }
        let tenant = &tenant;
        if tenant.server.as_ref() == to {
            // Switched already: what a crashed move left at its source goes.
            if let Some((from, _)) = under_way {
                if !keep_source && from.as_ref() != to {
                    self.drop_storage_on(tenant, from.as_ref(), storage).await?;
                }
                self.forget_move(tenant).await?;
                return Ok(());
            }
            return Err(Error::Invalid(format!(
                "tenant {} is on server {} already",
                tenant.name,
                tenant.server_name()
            )));
        }
        let (src_pool, mut src) = self.server_of(tenant.server.as_ref()).await?;
        let (dst_pool, mut dst) = self.server_of(to).await?;
        if storage == Storage::Database {
            src = src.database(&tenant.storage);
            dst = dst.database(&tenant.storage);
        }
        if Self::storage_on(&dst_pool, tenant, storage).await? {
            match &under_way {
                // The partial copy of a move that died before its switch.
                Some((_, dest)) if dest.as_ref() == to => {
                    self.drop_storage_on(tenant, to, storage).await?
                }
                _ => {
                    return Err(Error::StorageExists {
                        tenant: tenant.name.clone(),
                        storage: format!(
                            "{} {} on server {}",
                            storage.what(),
                            tenant.storage,
                            to.map_or(crate::DEFAULT_SERVER, ServerName::as_str)
                        ),
                    })
                }
            }
        }
        let body = serde_json::json!({
            "from": tenant.server.as_ref().map(ServerName::as_str),
            "to": to.map(ServerName::as_str),
        });
        self.journal_write(
            &JournalEntry {
                kind: MOVE.to_owned(),
                key: tenant.name.to_string(),
                at: chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string(),
                body: body.to_string(),
            },
            KEEP,
        )
        .await?;
        let freeze = match Freeze::start(tenant, &src, storage).await {
            Ok(freeze) => freeze,
            Err(e) => {
                let _ = self.forget_move(tenant).await;
                return Err(e);
            }
        };
        let copied = async {
            match storage {
                Storage::Schema => {
                    self.copy_storage(tenant, &src, &dst, storage).await?;
                    self.copy_tracking(tenant, &dst_pool, to).await?;
                    let (mut here, mut there) =
                        (src_pool.acquire().await?, dst_pool.acquire().await?);
                    Self::check_counts(tenant, Some(&tenant.storage), &mut here, &mut there).await
                }
                Storage::Database => {
                    // From template0: the dump brings everything, template1 may hold more.
                    // On a session named like the copy's: a re-run after a kill ends a
                    // CREATE DATABASE still running (it would clash with the re-run's).
                    let options = PgConnectOptions::clone(&dst_pool.connect_options())
                        .application_name(&copy_session_name(tenant));
                    let mut conn = PgConnection::connect_with(&options).await?;
                    let created = exec_postgres(
                        &mut conn,
                        &format!(
                            "CREATE DATABASE {} TEMPLATE template0",
                            quote_ident(&tenant.storage)
                        ),
                    )
                    .await;
                    let _ = conn.close().await;
                    created?;
                    self.copy_storage(tenant, &src, &dst, storage).await?;
                    let mut here = PgConnection::connect_with(&src).await?;
                    let mut there = PgConnection::connect_with(&dst).await?;
                    let checked = Self::check_counts(tenant, None, &mut here, &mut there).await;
                    let _ = here.close().await;
                    let _ = there.close().await;
                    checked
                }
            }
        }
        .await;
        if let Err(e) = copied {
            self.abandon(tenant, to, storage, freeze).await;
            return Err(e);
        }
        if let Err(e) = self.switch(tenant, to, storage).await {
            // A commit whose answer was lost may have switched: the registry says.
            match self.server_in_registry(tenant).await {
                Ok(Some(server)) if server.as_ref() == to => {}
                Ok(_) => {
                    self.abandon(tenant, to, storage, freeze).await;
                    return Err(e);
                }
                // Unknown whether it switched: nothing is dropped, the journal's entry
                // stays, and running the move again finishes or undoes it.
                Err(_) => {
                    freeze.release().await;
                    return Err(e);
                }
            }
        }
        if storage == Storage::Schema && !keep_source {
            freeze.drop_schema(tenant).await?;
        } else {
            // Not DROP DATABASE ... WITH (FORCE) with the freeze open: it ends the sessions
            // one by one, and a held writer whose lock the ended freeze let go could commit
            // before its own end came (an acknowledged write lost: seen in CI). The source is
            // made read-only first, inside the freeze.
            freeze.end_writers(tenant, storage).await?;
            if !keep_source {
                self.drop_storage_on(tenant, tenant.server.as_ref(), storage)
                    .await?;
            }
        }
        self.forget_move(tenant).await
    }

    /// A move that failed before its switch: served from the source still, the tenant's
    /// partial copy on `to` goes, its writes resume, and the move is forgotten.
    async fn abandon(
        &self,
        tenant: &Tenant,
        to: Option<&ServerName>,
        storage: Storage,
        freeze: Freeze,
    ) {
        let _ = self.drop_storage_on(tenant, to, storage).await;
        freeze.release().await;
        let _ = self.forget_move(tenant).await;
    }

    /// The server of the tenant in the registry (`None` inside: the default server;
    /// `None` outside: not registered).
    async fn server_in_registry(&self, tenant: &Tenant) -> Result<Option<Option<ServerName>>> {
        let server: Option<Option<String>> = sqlx::query_scalar(&format!(
            "SELECT server FROM {} WHERE name = $1",
            self.registry()
        ))
        .bind(tenant.name.as_str())
        .fetch_optional(self.pool())
        .await?;
        server
            .map(|s| s.as_deref().map(ServerName::new).transpose())
            .transpose()
    }

    /// `pg_dump` of the source (its schema `-n`, or its whole database) into `psql` on
    /// the destination, in one transaction there.
    async fn copy_storage(
        &self,
        tenant: &Tenant,
        src: &PgConnectOptions,
        dst: &PgConnectOptions,
        storage: Storage,
    ) -> Result<()> {
        let failed = |what: &str, detail: String| {
            Error::Invalid(format!(
                "tenant {}: moving its {}: {what}: {detail}",
                tenant.name,
                storage.what()
            ))
        };
        let app_name = copy_session_name(tenant);
        let mut dump = libpq("pg_dump", src, password_of(src), &app_name);
        if storage == Storage::Schema {
            dump.arg("--schema").arg(&tenant.storage);
        }
        dump.arg("--no-owner")
            .arg("--no-privileges")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut dump = dump
            .spawn()
            .map_err(|e| failed("cannot run pg_dump", e.to_string()))?;
        let dumped: Stdio = dump
            .stdout
            .take()
            .expect("piped")
            .try_into()
            .map_err(|e: std::io::Error| failed("pg_dump's output", e.to_string()))?;
        let mut restore = libpq("psql", dst, password_of(dst), &app_name);
        restore
            .args([
                "--no-psqlrc",
                "--quiet",
                "--single-transaction",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .stdin(dumped)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let restore = restore
            .spawn()
            .map_err(|e| failed("cannot run psql", e.to_string()))?;
        let (dumped, restored) = tokio::join!(dump.wait_with_output(), restore.wait_with_output());
        let dumped = dumped.map_err(|e| failed("pg_dump", e.to_string()))?;
        let restored = restored.map_err(|e| failed("psql", e.to_string()))?;
        if !dumped.status.success() {
            return Err(failed(
                "pg_dump failed",
                crate::redact_url(&String::from_utf8_lossy(&dumped.stderr)),
            ));
        }
        if !restored.status.success() {
            return Err(failed(
                "psql failed",
                crate::redact_url(&String::from_utf8_lossy(&restored.stderr)),
            ));
        }
        Ok(())
    }

    /// The tracking rows on the destination: to a server other than the default one, in a
    /// tracking table of the tenant's schema there (copied with the schema when it had one;
    /// from the shared table otherwise). To the default server, they go into the shared
    /// table with the switch.
    async fn copy_tracking(
        &self,
        tenant: &Tenant,
        dst_pool: &PgPool,
        to: Option<&ServerName>,
    ) -> Result<()> {
        if to.is_none() || tenant.server.is_some() {
            return Ok(());
        }
        let schema_q = quote_ident(&tenant.storage);
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, run_id FROM {} WHERE tenant = $1 ORDER BY migration_order",
            shared_table(self.control_q())
        ))
        .bind(tenant.name.as_str())
        .fetch_all(self.pool())
        .await?;
        let mut conn = dst_pool.acquire().await?;
        exec_postgres(&mut conn, &Tracking::own(&schema_q).own_ddl()).await?;
        for row in rows {
            sqlx::query(&format!(
                "INSERT INTO {schema_q}.mtnt_migrations ({COLUMNS}, run_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ))
            .bind(row.try_get::<i64, _>("migration_order")?)
            .bind(row.try_get::<String, _>("name")?)
            .bind(row.try_get::<String, _>("checksum")?)
            .bind(row.try_get::<String, _>("status")?)
            .bind(row.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>("started_at")?)
            .bind(row.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>("finished_at")?)
            .bind(row.try_get::<Option<i64>, _>("duration_ms")?)
            .bind(row.try_get::<Option<String>, _>("error")?)
            .bind(row.try_get::<Option<String>, _>("run_id")?)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Every table of the tenant's schema `schema` (`None`: of every schema but the
    /// system's, for a tenant database) has as many rows on the destination as on the
    /// source.
    async fn check_counts(
        tenant: &Tenant,
        schema: Option<&str>,
        src: &mut PgConnection,
        dst: &mut PgConnection,
    ) -> Result<()> {
        let src_tables: Vec<(i64, String, String)> = sqlx::query_as(TENANT_TABLES)
            .bind(schema)
            .fetch_all(&mut *src)
            .await?;
        for (_, schema, table) in src_tables {
            let count = format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(&schema),
                quote_ident(&table)
            );
            let here: i64 = sqlx::query_scalar(&count).fetch_one(&mut *src).await?;
            let there: i64 = sqlx::query_scalar(&count).fetch_one(&mut *dst).await?;
            if here != there {
                return Err(Error::Invalid(format!(
                    "tenant {}: table {table} has {here} rows at the source and {there} in the copy; the tenant stays where it is",
                    tenant.name
                )));
            }
        }
        Ok(())
    }

    /// The registry row (and, for a schema between the default server and another, the
    /// tracking rows of the shared table) switched to `to` in one transaction of the
    /// control database.
    async fn switch(
        &self,
        tenant: &Tenant,
        to: Option<&ServerName>,
        storage: Storage,
    ) -> Result<()> {
        let schema_q = quote_ident(&tenant.storage);
        let shared = shared_table(self.control_q());
        let name = super::literal(tenant.name.as_str());
        let mut sql = String::from("BEGIN; ");
        let shared_tracking = storage == Storage::Schema;
        if to.is_none() && shared_tracking {
            // Onto the default server: its rows into the shared table, the copied table gone.
            sql.push_str(&format!(
                "INSERT INTO {shared} (tenant, {COLUMNS}, run_id) SELECT {name}, {COLUMNS}, run_id FROM {schema_q}.mtnt_migrations; \
                 DROP TABLE {schema_q}.mtnt_migrations; "
            ));
        }
        let from = match &tenant.server {
            Some(server) => format!("server = {}", super::literal(server.as_str())),
            None => {
                if shared_tracking {
                    sql.push_str(&format!("DELETE FROM {shared} WHERE tenant = {name}; "));
                }
                "server IS NULL".to_owned()
            }
        };
        let to_l = to.map_or("NULL".to_owned(), |s| super::literal(s.as_str()));
        sql.push_str(&format!(
            "UPDATE {} SET server = {to_l}, fingerprint = NULL, updated_at = now() WHERE name = {name} AND {from}; COMMIT",
            self.registry()
        ));
        // On a session named like the copy's: a re-run after a kill waits for it to end.
        let options = PgConnectOptions::clone(&self.pool().connect_options())
            .application_name(&copy_session_name(tenant));
        let mut conn = PgConnection::connect_with(&options).await?;
        let switched = exec_postgres(&mut conn, &sql).await;
        if switched.is_err() {
            let _ = exec_postgres(&mut conn, "ROLLBACK").await;
        }
        let _ = conn.close().await;
        Ok(switched?)
    }
}

/// How long the pause waits for the application's transactions on the tenant's tables to
/// end, and the source's drop for its readers.
const FREEZE_LOCK_TIMEOUT: &str = "10s";

/// The tables of the tenant at the source: of the schema `$1`, or (`$1` NULL, a tenant
/// database) of every schema but the system's.
const TENANT_TABLES: &str = "SELECT c.oid::int8, n.nspname::text, c.relname::text FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND CASE WHEN $1::text IS NULL \
     THEN n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' \
     ELSE n.nspname = $1 END ORDER BY 2, 3";

/// The application's writes to a tenant paused while it is copied: a transaction on the
/// source, its session named like the copy's (a re-run after a kill ends it), holding
/// every table of the tenant in `EXCLUSIVE` mode, which lets reads (and `pg_dump`) go on
/// and makes writes wait. Released (rolled back) when the move fails; otherwise it ends
/// with the source ([`Freeze::drop_schema`]) or after ending the sessions it held back
/// ([`Freeze::end_writers`]). A crash ends it with the connection.
struct Freeze {
    conn: PgConnection,
    /// The frozen tables' oids.
    tables: Vec<i64>,
}

impl Freeze {
    async fn start(tenant: &Tenant, src: &PgConnectOptions, storage: Storage) -> Result<Freeze> {
        let options = src.clone().application_name(&copy_session_name(tenant));
        let mut conn = PgConnection::connect_with(&options).await?;
        exec_postgres(
            &mut conn,
            &format!("BEGIN; SET LOCAL lock_timeout = '{FREEZE_LOCK_TIMEOUT}'"),
        )
        .await?;
        let schema = (storage == Storage::Schema).then_some(tenant.storage.as_str());
        let tables: Vec<(i64, String, String)> = sqlx::query_as(TENANT_TABLES)
            .bind(schema)
            .fetch_all(&mut conn)
            .await?;
        if !tables.is_empty() {
            let names: Vec<String> = tables
                .iter()
                .map(|(_, schema, table)| format!("{}.{}", quote_ident(schema), quote_ident(table)))
                .collect();
            let locked = exec_postgres(
                &mut conn,
                &format!("LOCK TABLE {} IN EXCLUSIVE MODE", names.join(", ")),
            )
            .await;
            if let Err(e) = locked {
                let _ = conn.close().await;
                if super::is_code(&e, "55P03") {
                    return Err(Error::Invalid(format!(
                        "tenant {}: moving its {}: its writes could not be paused within {FREEZE_LOCK_TIMEOUT}: \
                         a transaction of the application held one of its tables all along; \
                         the tenant stays where it is, move it again when that transaction has ended",
                        tenant.name,
                        storage.what()
                    )));
                }
                return Err(e.into());
            }
        }
        Ok(Freeze {
            conn,
            tables: tables.into_iter().map(|(oid, _, _)| oid).collect(),
        })
    }

    /// Writes resume at the source (the move failed before its switch).
    async fn release(mut self) {
        let _ = exec_postgres(&mut self.conn, "ROLLBACK").await;
        let _ = self.conn.close().await;
    }

    /// Ends the other sessions that wait on or hold a lock on the frozen tables: their
    /// transactions roll back, so what they were writing never commits at the source.
    async fn end_lockers(&mut self) -> Result<()> {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'relation' AND relation::int8 = ANY($1) \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND pid <> pg_backend_pid()",
        )
        .bind(&self.tables)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(())
    }

    /// The source schema dropped in the freeze's transaction: the writes it held back
    /// fail (the tables are gone) instead of committing at a source no one reads. A
    /// session that read the tenant meanwhile is ended, so the drop neither waits on it nor
    /// deadlocks with it; a deadlock that happens anyway is retried.
    async fn drop_schema(mut self, tenant: &Tenant) -> Result<()> {
        let drop = format!(
            "SAVEPOINT mtnt_drop; DROP SCHEMA {} CASCADE; RELEASE SAVEPOINT mtnt_drop",
            quote_ident(&tenant.storage)
        );
        let mut last = None;
        for _ in 0..3 {
            self.end_lockers().await?;
            match exec_postgres(&mut self.conn, &drop).await {
                Ok(()) => {
                    exec_postgres(&mut self.conn, "COMMIT").await?;
                    let _ = self.conn.close().await;
                    return Ok(());
                }
                Err(e) => {
                    exec_postgres(&mut self.conn, "ROLLBACK TO SAVEPOINT mtnt_drop").await?;
                    last = Some(e);
                }
            }
        }
        let e = last.expect("three attempts");
        self.release().await;
        Err(Error::Invalid(format!(
            "tenant {} is moved, but its source schema {} could not be dropped: {e}; \
             running the move again drops it",
            tenant.name, tenant.storage
        )))
    }

    /// The source kept, read-only: every table of it refuses writes from now on (a
    /// statement trigger), the sessions held back on its tables (or, for a tenant
    /// database, in it) are ended, then the freeze ends.
    async fn end_writers(mut self, tenant: &Tenant, storage: Storage) -> Result<()> {
        // A writer that looked the tenant up before the switch may reach the kept copy
        // after the freeze ends: every write there fails from now on (read_only_sql_transaction),
        // so that its retry looks the tenant up again.
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid::int8 = ANY($1) ORDER BY 1, 2",
        )
        .bind(&self.tables)
        .fetch_all(&mut self.conn)
        .await?;
        let mut sql = String::new();
        let mut schemas: Vec<&str> = tables.iter().map(|(schema, _)| schema.as_str()).collect();
        schemas.dedup();
        for schema in schemas {
            sql.push_str(&format!(
                "CREATE OR REPLACE FUNCTION {}.mtnt_moved() RETURNS trigger LANGUAGE plpgsql AS $mtnt$ BEGIN \
                 RAISE EXCEPTION 'tenant % has moved to another server: this is its kept source, read-only', {} \
                 USING ERRCODE = '25006'; END $mtnt$; ",
                quote_ident(schema),
                super::literal(tenant.name.as_str())
            ));
        }
        for (schema, table) in &tables {
            sql.push_str(&format!(
                "CREATE TRIGGER mtnt_moved BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {}.{} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {}.mtnt_moved(); ",
                quote_ident(schema),
                quote_ident(table),
                quote_ident(schema)
            ));
        }
        if !sql.is_empty() {
            exec_postgres(&mut self.conn, &sql).await?;
        }
        match storage {
            Storage::Schema => self.end_lockers().await?,
            Storage::Database => {
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&tenant.storage)
                .fetch_all(&mut self.conn)
                .await?;
            }
        }
        exec_postgres(&mut self.conn, "COMMIT").await?;
        let _ = self.conn.close().await;
        Ok(())
    }
}
