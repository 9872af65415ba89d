//! What a fleet read asks of every tenant file: the tenants' fingerprints, computed from
//! their tracking tables on one connection.

use std::path::Path;
use std::str::FromStr as _;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, Executor as _, Row as _, SqliteConnection};

use super::SqliteBackend;
use crate::backend::Backend as _;
use crate::{fingerprint, Result, TenantName};

/// `file:` URI of `path`, read-only: SQLite opens no missing file in `mode=ro`, so a read
/// creates no tenant.
fn read_only_uri(path: &Path) -> String {
    let path = path
        .to_string_lossy()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");
    format!("file:{path}?mode=ro")
}

impl SqliteBackend {
    /// Computed from the tenants' own tracking tables, not cached in the registry:
    /// reading the files sees hand edits and interrupted runs as they are. One in-memory
    /// connection attaches each registered tenant's file read-only in turn, reads its
    /// tracking rows and detaches it, so that a tenant costs no connection (and no thread)
    /// of its own. A tenant whose file or tracking table cannot be read, or with a row
    /// that is not `completed` (a `started` migration, a `pending` one after a revert), is
    /// left out, so it gets a session and the full check.
    pub(super) async fn fingerprints_of(
        &self,
        names: &[TenantName],
    ) -> Result<Vec<(TenantName, String)>> {
        let records = self.tenant_records(names).await?;
        let mut fingerprints = Vec::with_capacity(records.len());
        if records.is_empty() {
            return Ok(fingerprints);
        }
        let mut conn =
            SqliteConnection::connect_with(&SqliteConnectOptions::from_str("sqlite::memory:")?)
                .await?;
        for record in records {
            let Ok(path) = self.path_of(&record.tenant) else {
                continue;
            };
            let attached = sqlx::query("ATTACH DATABASE ?1 AS tenant")
                .bind(read_only_uri(&path))
                .execute(&mut conn)
                .await;
            if attached.is_err() {
                continue;
            }
            let rows = sqlx::query(
                "SELECT migration_order, checksum, status = 'completed' AS completed \
                 FROM tenant.mtnt_migrations ORDER BY migration_order",
            )
            .fetch_all(&mut conn)
            .await;
            conn.execute("DETACH DATABASE tenant").await?;
            let Ok(rows) = rows else { continue };
            let mut completed = Vec::with_capacity(rows.len());
            for row in &rows {
                if !row.try_get::<bool, _>("completed")? {
                    break;
                }
                completed.push((
                    row.try_get::<i64, _>("migration_order")?,
                    row.try_get::<&str, _>("checksum")?,
                ));
            }
            if completed.len() == rows.len() {
                fingerprints.push((record.tenant.name, fingerprint(completed)));
            }
        }
        conn.close().await?;
        Ok(fingerprints)
    }
}
