//! The PostgreSQL run leases, of both models: `mtnt_runs` in the control schema.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row;

use super::tracking::shared_table;
use crate::backend::{Heartbeat, LeaseStore, RunIdentity, RunLease};
use crate::ctx::exec_postgres;
use crate::{Error, Result, TenantName};

/// [`LeaseStore`] on a PostgreSQL control schema.
pub(super) struct PgLeases {
    pool: PgPool,
    runs: String,
    registry: String,
    /// The shared tracking table of schema per tenant.
    tracking: String,
}

impl PgLeases {
    /// Leases in `control_q.mtnt_runs`, tenants in `registry`.
    pub(super) fn new(pool: PgPool, control_q: &str, registry: String) -> Self {
        Self {
            pool,
            runs: format!("{control_q}.mtnt_runs"),
            registry,
            tracking: shared_table(control_q),
        }
    }

    fn take_over_sql(&self) -> String {
        format!(
            "UPDATE {runs} SET state = 'taken_over', taken_over_by = $1, finished_at = now() \
             WHERE state = 'running' AND run_id <> $1 \
             AND heartbeat_at < now() - make_interval(secs => $2::float8) \
             RETURNING {columns}",
            runs = self.runs,
            columns = COLUMNS,
        )
    }
}

const COLUMNS: &str =
    "run_id, host, pid, command, started_at, heartbeat_at, state, taken_over_by, app_name, \
     extract(epoch FROM now() - heartbeat_at)::float8 AS silent_secs";

fn lease_from_row(row: &PgRow) -> Result<RunLease> {
    Ok(RunLease {
        run_id: row.try_get("run_id")?,
        host: row.try_get("host")?,
        pid: row.try_get("pid")?,
        command: row.try_get("command")?,
        started_at: row.try_get("started_at")?,
        heartbeat_at: row.try_get("heartbeat_at")?,
        state: row.try_get("state")?,
        taken_over_by: row.try_get("taken_over_by")?,
        silent_secs: row.try_get("silent_secs")?,
        stale: false,
    })
}

/// The tag of the connections of a taken-over run, kept beside its lease.
fn tags(rows: &[PgRow]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| r.try_get::<String, _>("app_name").ok())
        .collect()
}

#[async_trait]
impl LeaseStore for PgLeases {
    async fn acquire(&self, me: &RunIdentity, stale_after: Duration) -> Result<Vec<RunLease>> {
        let ddl = format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock(hashtext('mtnt.prepare'));
             CREATE TABLE IF NOT EXISTS {runs} (
                run_id text PRIMARY KEY,
                host text NOT NULL,
                pid bigint NOT NULL,
                command text NOT NULL,
                app_name text NOT NULL,
                started_at timestamptz NOT NULL DEFAULT now(),
                heartbeat_at timestamptz NOT NULL DEFAULT now(),
                finished_at timestamptz,
                state text NOT NULL CHECK (state IN ('running', 'finished', 'failed', 'lost', 'taken_over')),
                taken_over_by text
             );
             DELETE FROM {runs} WHERE finished_at < now() - interval '30 days';
             COMMIT",
            runs = self.runs
        );
        let mut conn = self.pool.acquire().await?;
        if let Err(e) = exec_postgres(&mut conn, &ddl).await {
            if exec_postgres(&mut conn, "ROLLBACK").await.is_err() {
                conn.close_on_drop();
            }
            return Err(e.into());
        }
        let stale = sqlx::query(&self.take_over_sql())
            .bind(&me.run_id)
            .bind(stale_after.as_secs_f64())
            .fetch_all(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO {} (run_id, host, pid, command, app_name, state) VALUES ($1, $2, $3, $4, $5, 'running')",
            self.runs
        ))
        .bind(&me.run_id)
        .bind(&me.host)
        .bind(i64::from(me.pid))
        .bind(&me.command)
        .bind(&me.connection_tag)
        .execute(&mut *conn)
        .await?;
        stale.iter().map(lease_from_row).collect()
    }

    async fn heartbeat(&self, me: &RunIdentity, stale_after: Duration) -> Result<Heartbeat> {
        // One round trip: refresh this lease, take over the stale ones of others.
        let sql = format!(
            "WITH mine AS (UPDATE {runs} SET heartbeat_at = now() WHERE run_id = $1 AND state = 'running' RETURNING 1), \
             stale AS ({take_over}) \
             SELECT (SELECT count(*) FROM mine) AS held, stale.* FROM (SELECT 1) AS one LEFT JOIN stale ON true",
            runs = self.runs,
            take_over = self.take_over_sql(),
        );
        let rows = sqlx::query(&sql)
            .bind(&me.run_id)
            .bind(stale_after.as_secs_f64())
            .fetch_all(&self.pool)
            .await?;
        let held = rows
            .first()
            .map(|r| r.try_get::<i64, _>("held"))
            .transpose()?
            .unwrap_or(0)
            > 0;
        let mut taken_over = Vec::new();
        for row in &rows {
            if row.try_get::<Option<String>, _>("run_id")?.is_some() {
                taken_over.push(lease_from_row(row)?);
            }
        }
        Ok(Heartbeat { held, taken_over })
    }

    async fn release(&self, me: &RunIdentity, state: &str) -> Result<()> {
        sqlx::query(&format!(
            "UPDATE {} SET state = $2, finished_at = now(), heartbeat_at = now() WHERE run_id = $1 AND state = 'running'",
            self.runs
        ))
        .bind(&me.run_id)
        .bind(state)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn end_sessions(&self, taken_over: &[RunLease]) -> Result<u64> {
        if taken_over.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = taken_over.iter().map(|l| l.run_id.as_str()).collect();
        let rows = sqlx::query(&format!(
            "SELECT app_name FROM {} WHERE run_id = ANY($1)",
            self.runs
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        // Every database: with a database per tenant, the locks sit in the tenant databases.
        // The tags are unique per process, so no other client's session matches.
        let tags = tags(&rows);
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = ANY($1) AND pid <> pg_backend_pid()) AS t",
        )
        .bind(&tags)
        .fetch_one(&self.pool)
        .await?;
        Ok(ended as u64)
    }

    async fn running(&self) -> Result<Vec<RunLease>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE state = 'running' ORDER BY started_at",
            self.runs
        );
        match sqlx::query(&sql).fetch_all(&self.pool).await {
            Ok(rows) => rows.iter().map(lease_from_row).collect(),
            // No run has taken a lease yet.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn ahead_of_code(
        &self,
        known: &[i64],
        only: &[TenantName],
    ) -> Result<Option<(TenantName, i64, String)>> {
        let names: Vec<&str> = only.iter().map(TenantName::as_str).collect();
        let row = sqlx::query(&format!(
            "SELECT name, schema_name, applied_order FROM {} \
             WHERE applied_order IS NOT NULL AND applied_order <> ALL($1) \
             AND (cardinality($2::text[]) = 0 OR name = ANY($2)) ORDER BY name LIMIT 1",
            self.registry
        ))
        .bind(known)
        .bind(&names)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let name: String = row.try_get("name")?;
        let order: i64 = row.try_get("applied_order")?;
        // Database per tenant keeps the rows in the tenant's database: unknown here.
        let recorded: Option<String> = sqlx::query_scalar(&format!(
            "SELECT name FROM {} WHERE tenant = $1 AND migration_order = $2",
            self.tracking
        ))
        .bind(&name)
        .bind(order)
        .fetch_optional(&self.pool)
        .await
        .unwrap_or(None);
        let name =
            TenantName::new(name).map_err(|e| Error::Corrupt(format!("tenant registry: {e}")))?;
        Ok(Some((
            name,
            order,
            recorded.unwrap_or_else(|| "(unknown)".to_owned()),
        )))
    }
}
