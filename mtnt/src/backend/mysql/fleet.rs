//! What a fleet run asks of the whole server: the tenants' fingerprints, computed from
//! their tracking tables on one connection, and how many connections it may open.

use std::collections::HashSet;

use sqlx::{MySqlConnection, Row};

use super::dialect::{
    applied_from_row, error_number, opt_text, text, text_literal, ER_NO_SUCH_TABLE,
};
use super::{quote, target, tenant_name, MySqlBackend};
use crate::{AppliedMigration, Error, Result, Tenant, TenantName};

impl MySqlBackend {
    /// The registered tenants among `chunk` with their databases.
    async fn databases(
        &self,
        conn: &mut MySqlConnection,
        chunk: &[TenantName],
    ) -> Result<Vec<(String, String)>> {
        let placeholders = vec!["?"; chunk.len()].join(", ");
        let sql = format!(
            "SELECT name, schema_name FROM {} WHERE name IN ({placeholders})",
            self.registry()
        );
        let mut query = sqlx::query(&sql);
        for name in chunk {
            query = query.bind(name.as_str());
        }
        let rows = query.fetch_all(&mut *conn).await?;
        rows.iter()
            .map(|row| Ok((text(row, "name")?, text(row, "schema_name")?)))
            .collect()
    }

    /// Those of `registered` whose database has a tracking table.
    async fn tracked(
        conn: &mut MySqlConnection,
        registered: Vec<(String, String)>,
    ) -> Result<Vec<(String, String)>> {
        // A list of constants, not a join with the registry: that makes the server look
        // at every database on it (1.5 s for 1000 tenants among 2000 databases against
        // 20 ms).
        let placeholders = vec!["?"; registered.len()].join(", ");
        let sql = format!(
            "SELECT TABLE_SCHEMA AS db FROM information_schema.TABLES \
             WHERE TABLE_NAME = 'mtnt_migrations' AND TABLE_SCHEMA IN ({placeholders})"
        );
        let mut query = sqlx::query(&sql);
        for (_, db) in &registered {
            query = query.bind(db.as_str());
        }
        let with_table = query
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| text(row, "db"))
            .collect::<Result<HashSet<_>>>()?;
        // Matched here as bytes: the server compares database names without case.
        Ok(registered
            .into_iter()
            .filter(|(_, db)| with_table.contains(db))
            .collect())
    }

    /// Computed from the tenants' own tracking tables, not cached in the registry:
    /// reading the tables sees hand edits and interrupted runs as they are. Per page of
    /// names, the registry gives their databases, one query finds those that have a
    /// tracking table, and one `UNION ALL` query hashes each table's rows with
    /// [`fingerprint`](crate::fingerprint)'s definition. A tenant with a row that is not
    /// `completed` (a `started` migration, a `pending` one after a revert) is left out,
    /// so it gets a session and the full check.
    pub(super) async fn fingerprints_of(
        &self,
        names: &[TenantName],
    ) -> Result<Vec<(TenantName, String)>> {
        let mut fingerprints = Vec::with_capacity(names.len());
        if names.is_empty() {
            return Ok(fingerprints);
        }
        let mut conn = self.pool.acquire().await?;
        // Bounded IN lists and UNIONs: a server caps placeholders and open tables.
        for chunk in names.chunks(1000) {
            let registered = self.databases(&mut conn, chunk).await?;
            if registered.is_empty() {
                continue;
            }
            let tracked = Self::tracked(&mut conn, registered).await?;
            if tracked.is_empty() {
                continue;
            }
            let union = tracked
                .iter()
                .enumerate()
                .map(|(i, (_, db))| {
                    format!(
                        "SELECT {i} AS k, IF(MAX(status <> 'completed'), NULL, \
                         SHA2(COALESCE(GROUP_CONCAT(CONCAT(migration_order, ':', checksum) \
                         ORDER BY migration_order SEPARATOR ','), ''), 256)) AS fingerprint \
                         FROM {}.mtnt_migrations",
                        quote(db)
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
            let mut result = target::batch(&mut conn, &sql).await;
            if let Some(e) = result.error.take() {
                // Its `group_concat_max_len` may still be raised.
                conn.close_on_drop();
                // A tenant database dropped since the first query: this page gets
                // sessions, which report it properly.
                if error_number(&e) == Some(ER_NO_SUCH_TABLE) {
                    return Ok(fingerprints);
                }
                return Err(Error::other(format!(
                    "reading the fingerprints of {} tenant tracking tables: {e}",
                    tracked.len()
                )));
            }
            let rows = result.rows(2)?;
            for row in rows {
                let k: i64 = row.try_get("k")?;
                let Some(fingerprint) = opt_text(row, "fingerprint")? else {
                    continue;
                };
                let (name, _) = usize::try_from(k)
                    .ok()
                    .and_then(|k| tracked.get(k))
                    .ok_or_else(|| Error::Corrupt(format!("fingerprint row {k} of no tenant")))?;
                fingerprints.push((tenant_name(name.clone())?, fingerprint));
            }
        }
        Ok(fingerprints)
    }

    /// The tracking rows the fleet run `run_id` wrote last, of `tenants`: per 1000
    /// tenants, one query finds the tracking tables that have a `run_id` column and one
    /// `UNION ALL` query reads their rows of the run.
    pub(super) async fn run_rows_of(
        &self,
        run_id: &str,
        tenants: &[Tenant],
    ) -> Result<Vec<(TenantName, AppliedMigration)>> {
        let mut out = Vec::new();
        let mut conn = self.pool.acquire().await?;
        for chunk in tenants.chunks(1000) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT TABLE_SCHEMA AS db FROM information_schema.COLUMNS \
                 WHERE TABLE_NAME = 'mtnt_migrations' AND COLUMN_NAME = 'run_id' \
                 AND TABLE_SCHEMA IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql);
            for tenant in chunk {
                query = query.bind(tenant.storage.as_str());
            }
            let with_column = query
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|row| text(row, "db"))
                .collect::<Result<HashSet<_>>>()?;
            let tracked: Vec<&Tenant> = chunk
                .iter()
                .filter(|t| with_column.contains(&t.storage))
                .collect();
            if tracked.is_empty() {
                continue;
            }
            let run = text_literal(run_id);
            let union = tracked
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    format!(
                        "SELECT {i} AS k, migration_order, name, checksum, status, started_at, finished_at, \
                         duration_ms, error FROM {}.mtnt_migrations WHERE run_id = {run}",
                        quote(&t.storage)
                    )
                })
                .collect::<Vec<_>>()
                .join(" UNION ALL ");
            let mut result = target::batch(&mut conn, &union).await;
            if let Some(e) = result.error.take() {
                return Err(Error::other(format!(
                    "reading the rows of run {run_id} in {} tenant tracking tables: {e}",
                    tracked.len()
                )));
            }
            for row in result.rows(0)? {
                let k: i64 = row.try_get("k")?;
                let tenant = usize::try_from(k)
                    .ok()
                    .and_then(|k| tracked.get(k))
                    .ok_or_else(|| Error::Corrupt(format!("tracking row {k} of no tenant")))?;
                out.push((tenant.name.clone(), applied_from_row(row)?));
            }
        }
        out.sort_by(|a, b| (&a.0, a.1.order).cmp(&(&b.0, b.1.order)));
        Ok(out)
    }

    /// The data and index length of each tenant database's tables, per 1000 tenants in
    /// one query (InnoDB's estimates, as `information_schema.TABLES` has them).
    pub(super) async fn sizes_of(&self, tenants: &[Tenant]) -> Result<Vec<(TenantName, u64)>> {
        let mut out = Vec::with_capacity(tenants.len());
        for chunk in tenants.chunks(1000) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT TABLE_SCHEMA AS db, CAST(COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) AS SIGNED) AS bytes \
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA IN ({placeholders}) GROUP BY TABLE_SCHEMA"
            );
            let mut query = sqlx::query(&sql);
            for tenant in chunk {
                query = query.bind(tenant.storage.as_str());
            }
            let mut bytes = std::collections::HashMap::new();
            for row in query.fetch_all(&self.pool).await? {
                bytes.insert(text(&row, "db")?, row.try_get::<i64, _>("bytes")?);
            }
            // Matched here as bytes: the server compares database names without case.
            out.extend(chunk.iter().filter_map(|t| {
                bytes
                    .get(&t.storage)
                    .map(|&b| (t.name.clone(), u64::try_from(b).unwrap_or(0)))
            }));
        }
        Ok(out)
    }

    /// The pool's size less one, and no more than the server has free (when it says).
    pub(super) async fn budget(&self) -> Result<Option<usize>> {
        let pool = i64::from(self.pool.options().get_max_connections().saturating_sub(1));
        let server: Option<(i64, i64)> = sqlx::query_as(
            "SELECT CAST(@@GLOBAL.max_connections AS SIGNED), CAST(VARIABLE_VALUE AS SIGNED) \
             FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME = 'THREADS_CONNECTED'",
        )
        .fetch_optional(&self.pool)
        .await
        .unwrap_or(None);
        // Connections this pool holds already count among the server's used ones.
        let free = server.map_or(pool, |(max, used)| max - used + i64::from(self.pool.size()));
        Ok(Some(usize::try_from(free.min(pool).max(1)).unwrap_or(1)))
    }
}
