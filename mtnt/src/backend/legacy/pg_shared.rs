//! What the two PostgreSQL backends share: the tracking table, its rows, the migrations of
//! a new tenant, and the connection a session holds.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, Postgres};

use super::invoke::{exec_postgres, invoke};
use super::pg_tracking::Tracking;
use crate::ctx::CtxConn;
use crate::{Ctx, Error, Migration, Result, Target, Tenant};

/// Whether `error` is a database error with SQLSTATE `code`.
pub(super) fn is_db_code(error: &sqlx::Error, code: &str) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(code))
}

/// Runs the up functions of a new tenant's `migrations` on `conn`, inside the caller's
/// open transaction, recording each as `completed` in `tracking`.
pub(super) async fn apply_new_tenant(
    conn: &mut PgConnection,
    tenant: &Tenant,
    tracking: &Tracking,
    migrations: &[&'static Migration],
) -> Result<()> {
    for &migration in migrations {
        let started = Instant::now();
        let mut ctx = Ctx::new(Some(tenant), CtxConn::Postgres(&mut *conn));
        invoke(migration.up(), &mut ctx)
            .await
            .map_err(|e| Error::Migration {
                target: Target::Tenant(tenant).to_string(),
                migration: migration.to_string(),
                reverting: false,
                source: Box::new(e),
            })?;
        // Recorded as it finishes (in the same transaction), so that each row has its
        // own start and end; `now()` would give every row the transaction's start.
        let record = tracking.record_measured(&[(migration, started.elapsed(), Duration::ZERO)]);
        exec_postgres(conn, &record).await?;
    }
    Ok(())
}

/// The connection of a session: pooled (schema per tenant, and the control database), or
/// one of its own to a tenant database (database per tenant), closed when dropped.
pub(super) enum PgConn {
    /// From the backend's pool; goes back to it when dropped.
    Pooled(PoolConnection<Postgres>),
    /// A connection of its own; `None` only while it is being closed.
    Owned(Option<PgConnection>),
}

impl PgConn {
    /// Makes sure the connection is not reused (an owned one never is).
    pub(super) fn close_on_drop(&mut self) {
        if let PgConn::Pooled(conn) = self {
            conn.close_on_drop();
        }
    }
}

impl From<PoolConnection<Postgres>> for PgConn {
    fn from(conn: PoolConnection<Postgres>) -> Self {
        PgConn::Pooled(conn)
    }
}

impl From<PgConnection> for PgConn {
    fn from(conn: PgConnection) -> Self {
        PgConn::Owned(Some(conn))
    }
}

impl Deref for PgConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self {
            PgConn::Pooled(conn) => conn,
            PgConn::Owned(conn) => conn.as_ref().expect("only taken on drop"),
        }
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            PgConn::Pooled(conn) => conn,
            PgConn::Owned(conn) => conn.as_mut().expect("only taken on drop"),
        }
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        let PgConn::Owned(conn) = self else { return };
        let Some(conn) = conn.take() else { return };
        // A polite goodbye where a runtime can run it; otherwise the socket just closes.
        // Either way the server ends the session, with its transaction and advisory locks.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = conn.close().await;
            });
        }
    }
}
