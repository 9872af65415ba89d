//! `tenant move`: a tenant's schema copied to another server (DDL and data, by `pg_dump`,
//! whose data is `COPY`), its row counts checked table by table, the registry switched in
//! one transaction of the control database, then the source dropped.
//!
//! The caller holds the tenant's lock on its source server throughout, so no migration
//! runs meanwhile. Until the switch commits, the tenant is served from the source: a
//! failure before it drops the partial copy. A journal entry (`move`, keyed by the tenant)
//! says a move is under way, so that a re-run after a crash finishes it: a copy left on the
//! destination before the switch is dropped and made again; a source left after the switch
//! is dropped.

use std::process::Stdio;

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::Row;

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

/// The libpq connection of `options` for `pg_dump` and `psql`: its parameters as
/// arguments, its password in the environment (never on a command line).
fn libpq(
    command: &str,
    options: &PgConnectOptions,
    password: Option<String>,
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

    /// Drops the schema of `tenant` on `server`, if it is there.
    async fn drop_schema_on(&self, tenant: &Tenant, server: Option<&ServerName>) -> Result<()> {
        let pool = self.pool_of(server).await?;
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

    /// Whether the schema of `tenant` exists on `pool`'s server.
    async fn schema_on(pool: &PgPool, tenant: &Tenant) -> Result<bool> {
        Ok(sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
            .bind(quote_ident(&tenant.storage))
            .fetch_one(pool)
            .await?)
    }

    /// Moves `tenant` (whose lock the caller holds) to `to` (`None`: the default server);
    /// see the module's documentation.
    pub(super) async fn move_schema(
        &self,
        tenant: &Tenant,
        to: Option<&ServerName>,
        keep_source: bool,
    ) -> Result<()> {
        let under_way = self.move_under_way(tenant).await?;
        if tenant.server.as_ref() == to {
            // Switched already: what a crashed move left at its source goes.
            if let Some((from, _)) = under_way {
                if !keep_source && from.as_ref() != to {
                    self.drop_schema_on(tenant, from.as_ref()).await?;
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
        let (src_pool, src) = self.server_of(tenant.server.as_ref()).await?;
        let (dst_pool, dst) = self.server_of(to).await?;
        if Self::schema_on(&dst_pool, tenant).await? {
            match &under_way {
                // The partial copy of a move that died before its switch.
                Some((_, dest)) if dest.as_ref() == to => self.drop_schema_on(tenant, to).await?,
                _ => {
                    return Err(Error::StorageExists {
                        tenant: tenant.name.clone(),
                        storage: format!(
                            "schema {} on server {}",
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
        let copied = async {
            self.copy_schema(tenant, &src, &dst).await?;
            self.copy_tracking(tenant, &dst_pool, to).await?;
            self.check_counts(tenant, &src_pool, &dst_pool).await
        }
        .await;
        if let Err(e) = copied {
            // Served from the source still: the partial copy goes.
            let _ = self.drop_schema_on(tenant, to).await;
            let _ = self.forget_move(tenant).await;
            return Err(e);
        }
        if let Err(e) = self.switch(tenant, to).await {
            let _ = self.drop_schema_on(tenant, to).await;
            let _ = self.forget_move(tenant).await;
            return Err(e);
        }
        if !keep_source {
            self.drop_schema_on(tenant, tenant.server.as_ref()).await?;
        }
        self.forget_move(tenant).await
    }

    /// `pg_dump -n schema` of the source into `psql` on the destination, in one
    /// transaction there.
    async fn copy_schema(
        &self,
        tenant: &Tenant,
        src: &PgConnectOptions,
        dst: &PgConnectOptions,
    ) -> Result<()> {
        let failed = |what: &str, detail: String| {
            Error::Invalid(format!(
                "tenant {}: moving its schema: {what}: {detail}",
                tenant.name
            ))
        };
        let mut dump = libpq("pg_dump", src, password_of(src));
        dump.arg("--schema")
            .arg(&tenant.storage)
            .arg("--no-owner")
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
        let mut restore = libpq("psql", dst, password_of(dst));
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

    /// Every table of the tenant's schema has as many rows on the destination as on the
    /// source.
    async fn check_counts(&self, tenant: &Tenant, src: &PgPool, dst: &PgPool) -> Result<()> {
        let tables =
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                      WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1";
        let src_tables: Vec<String> = sqlx::query_scalar(tables)
            .bind(&tenant.storage)
            .fetch_all(src)
            .await?;
        let schema_q = quote_ident(&tenant.storage);
        for table in src_tables {
            let count = format!("SELECT count(*) FROM {schema_q}.{}", quote_ident(&table));
            let here: i64 = sqlx::query_scalar(&count).fetch_one(src).await?;
            let there: i64 = sqlx::query_scalar(&count).fetch_one(dst).await?;
            if here != there {
                return Err(Error::Invalid(format!(
                    "tenant {}: table {table} has {here} rows at the source and {there} in the copy; the tenant stays where it is",
                    tenant.name
                )));
            }
        }
        Ok(())
    }

    /// The registry row (and, between the default server and another, the tracking rows of
    /// the shared table) switched to `to` in one transaction of the control database.
    async fn switch(&self, tenant: &Tenant, to: Option<&ServerName>) -> Result<()> {
        let schema_q = quote_ident(&tenant.storage);
        let shared = shared_table(self.control_q());
        let name = super::literal(tenant.name.as_str());
        let mut sql = String::from("BEGIN; ");
        if to.is_none() {
            // Onto the default server: its rows into the shared table, the copied table gone.
            sql.push_str(&format!(
                "INSERT INTO {shared} (tenant, {COLUMNS}, run_id) SELECT {name}, {COLUMNS}, run_id FROM {schema_q}.mtnt_migrations; \
                 DROP TABLE {schema_q}.mtnt_migrations; "
            ));
        }
        let from = match &tenant.server {
            Some(server) => format!("server = {}", super::literal(server.as_str())),
            None => {
                sql.push_str(&format!("DELETE FROM {shared} WHERE tenant = {name}; "));
                "server IS NULL".to_owned()
            }
        };
        let to_l = to.map_or("NULL".to_owned(), |s| super::literal(s.as_str()));
        sql.push_str(&format!(
            "UPDATE {} SET server = {to_l}, fingerprint = NULL, updated_at = now() WHERE name = {name} AND {from}; COMMIT",
            self.registry()
        ));
        let mut conn = self.pool().acquire().await?;
        if let Err(e) = exec_postgres(&mut conn, &sql).await {
            let _ = exec_postgres(&mut conn, "ROLLBACK").await;
            return Err(e.into());
        }
        Ok(())
    }
}
