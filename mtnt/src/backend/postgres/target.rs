//! The one [`Connection`] of both PostgreSQL models, told by a [`Spec`] what differs:
//! the tracking rows (shared or a table of its own), whether the registry row is in the
//! target's database, the search path, and how to tell that the tenant is registered.
//!
//! Round trips of a tenant of a fleet run: the lock and the read in one; BEGIN, the
//! missing storage, the search path, the timeouts and the bookkeeping flag in one; the
//! migrations; every record, the registry and COMMIT in one; the unlock in one.

use std::ops::{Deref, DerefMut};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Connection as _, PgConnection, Postgres, Row};

use super::tracking::{
    add_run_column, own_bookkeeping, push_bookkeeping, push_records, TenantRow, Tracking,
};
use super::{is_code, tag_sql, timeouts_sql, try_lock_sql, RESET_SESSION, UNLOCK_ALL};
use crate::backend::{Connection, MigrationTimeouts, Record, TargetState};
use crate::ctx::{exec_postgres, CtxConn};
use crate::migration::BoxFuture;
use crate::{AppliedMigration, Ctx, Error, MigrationStatus, Result, Tenant};

/// The connection of a target: pooled (schema per tenant, and the control database), or
/// one of its own to a tenant database (database per tenant).
pub(super) enum PgConn {
    /// From the backend's pool; back to it on release.
    Pooled(PoolConnection<Postgres>),
    /// Of its own; `None` only once release took it to close it.
    Owned(Option<PgConnection>),
}

impl Deref for PgConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self {
            PgConn::Pooled(conn) => conn,
            PgConn::Owned(conn) => conn.as_ref().expect("taken only by release"),
        }
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            PgConn::Pooled(conn) => conn,
            PgConn::Owned(conn) => conn.as_mut().expect("taken only by release"),
        }
    }
}

/// Where the registry is in another database (database per tenant): how a read tells
/// whether the tenant is registered.
pub(super) struct Probe<'a> {
    /// The control database's pool.
    pub(super) pool: &'a PgPool,
    /// One boolean, with the tenant's name as `$1`.
    pub(super) sql: String,
    /// The tenant's name.
    pub(super) name: &'a str,
}

/// Whether the tenant is registered: true without a probe (the public target, and a
/// registry in the target's database, which the read itself asks).
fn registered<'f>(probe: Option<&'f Probe<'_>>) -> BoxFuture<'f, Result<bool>> {
    Box::pin(async move {
        match probe {
            Some(p) => Ok(sqlx::query_scalar(&p.sql)
                .bind(p.name)
                .fetch_one(p.pool)
                .await?),
            None => Ok(true),
        }
    })
}

/// What differs between the targets of the two models.
pub(super) struct Spec<'a> {
    /// The tenant, or `None` for the public target.
    pub(super) tenant: Option<&'a Tenant>,
    /// The lock key (see `mod.rs`).
    pub(super) lock_key: String,
    /// The search path migrations run with.
    pub(super) search_path: String,
    /// Where the tracking rows are.
    pub(super) tracking: Tracking,
    /// What makes the tenant's storage before a tracking table of its own in it (a
    /// schema on another server), where the read may find it missing.
    pub(super) storage_ddl: Option<String>,
    /// The tenant's registry row and schema, where the registry is in this database
    /// (schema per tenant): records write it in the target's transaction, and the read
    /// tells whether the schema and the row exist.
    pub(super) row: Option<TenantRow>,
    /// Where the registry is in another database.
    pub(super) probe: Option<Probe<'a>>,
}

/// A connection working on one target.
pub(super) struct PgTarget<'a> {
    conn: PgConn,
    spec: Spec<'a>,
    locked: bool,
    /// A transaction is open, or may be (a statement that opened one failed).
    in_transaction: bool,
    /// What the target lacks (a tenant's schema, a tracking table), created with the
    /// next change, in its transaction.
    setup: Option<String>,
    /// The setup went out in the open transaction: done once that commits.
    setup_sent: bool,
    discarded: bool,
    released: bool,
    /// The last read found a tracking table of its own (made before run ids) without
    /// the `run_id` column; with a run set, the locked read adds it.
    run_column_missing: bool,
    /// A fleet run's id is set ([`Connection::set_run`]).
    run_set: bool,
}

/// The indexes of the current schema (the target's, first in the search path) that a
/// failed or cancelled `CREATE INDEX CONCURRENTLY` left invalid (or not even ready), each
/// as `"schema"."index"`.
const INVALID_INDEXES: &str = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i \
     JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = current_schema() AND NOT (i.indisvalid AND i.indisready) ORDER BY 1";

/// Runs several statements with the simple protocol: the rows of each statement that
/// completed, and the error that ended the rest, if one did (a named function with a
/// boxed `Send` future, like `exec_postgres`).
fn fetch_results<'a>(
    conn: &'a mut PgConnection,
    sql: &'a str,
) -> BoxFuture<'a, (Vec<Vec<PgRow>>, Option<sqlx::Error>)> {
    Box::pin(async move {
        let mut results = vec![Vec::new()];
        let mut stream = sqlx::Executor::fetch_many(conn, sql);
        let error = loop {
            match stream.try_next().await {
                Ok(Some(sqlx::Either::Left(_))) => results.push(Vec::new()),
                Ok(Some(sqlx::Either::Right(row))) => {
                    results.last_mut().expect("never empty").push(row)
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        // The last entry holds the rows of a statement that did not complete.
        results.pop();
        (results, error)
    })
}

pub(super) fn applied_from_row(row: &PgRow) -> Result<AppliedMigration> {
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

impl<'a> PgTarget<'a> {
    pub(super) fn new(conn: PgConn, spec: Spec<'a>) -> Self {
        Self {
            conn,
            spec,
            locked: false,
            in_transaction: false,
            setup: None,
            setup_sent: false,
            discarded: false,
            released: false,
            run_column_missing: false,
            run_set: false,
        }
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        exec_postgres(&mut self.conn, sql).await?;
        Ok(())
    }

    /// The statement that reads the target.
    fn read_sql(&self) -> String {
        match &self.spec.row {
            Some(row) => row.select_state(&self.spec.tracking),
            None => self.spec.tracking.select_applied(),
        }
    }

    /// The state in the rows of [`PgTarget::read_sql`] (or the error that ended it),
    /// noting what the target lacks.
    fn state_from(&mut self, rows: &[PgRow], error: Option<sqlx::Error>) -> Result<TargetState> {
        match (error, &self.spec.row) {
            (None, _) => {}
            // A table of its own that is missing yet: it comes with the first change.
            (Some(e), None) if is_code(&e, "42P01") => {
                let own = self.spec.tracking.own_ddl();
                self.setup = Some(match &self.spec.storage_ddl {
                    Some(storage) => format!("{storage}; {own}"),
                    None => own,
                });
                return Ok(TargetState {
                    applied: Vec::new(),
                    registered: true,
                });
            }
            (Some(e), _) => return Err(e.into()),
        }
        let mut registered = true;
        if let Some(row) = &self.spec.row {
            let first = rows.first();
            // A registered tenant without a schema (registered in bulk, or dropped by
            // hand) gets it with its first change, in that transaction.
            let schema_exists = first.map_or(Ok(true), |r| r.try_get("schema_exists"))?;
            registered = first.map_or(Ok(false), |r| r.try_get("registered"))?;
            self.setup =
                (!schema_exists).then(|| format!("CREATE SCHEMA IF NOT EXISTS {}", row.schema_q));
        } else {
            self.setup = None;
            // A table of its own made before run ids (the shared one gets the column in
            // `prepare`).
            let has_run_id = rows
                .first()
                .map_or(Ok(true), |r| r.try_get::<bool, _>("has_run_id"))?;
            self.run_column_missing = !has_run_id;
        }
        let applied = rows
            .iter()
            .filter(|r| {
                r.try_get::<Option<i64>, _>("migration_order")
                    .is_ok_and(|o| o.is_some())
            })
            .map(applied_from_row)
            .collect::<Result<_>>()?;
        Ok(TargetState {
            applied,
            registered,
        })
    }

    /// Under the target's lock, with a run set: adds the `run_id` column to a tracking
    /// table of its own made before run ids, once, so that the rows the run writes carry
    /// its id.
    async fn ensure_run_column(&mut self) -> Result<()> {
        if self.run_set && self.run_column_missing {
            let alter = add_run_column(self.spec.tracking.table());
            self.exec(&alter).await?;
            self.run_column_missing = false;
        }
        Ok(())
    }

    /// `BEGIN; ...`: the setup (with `with_setup`), the bookkeeping flag, the search
    /// path and `timeouts`.
    fn begin_sql(&mut self, timeouts: MigrationTimeouts, with_setup: bool) -> String {
        let mut sql = "BEGIN; ".to_owned();
        if with_setup {
            if let Some(setup) = &self.setup {
                sql.push_str(setup);
                sql.push_str("; ");
                self.setup_sent = true;
            }
        }
        // A tenant's transaction commits with its registry row, fingerprint included.
        push_bookkeeping(&mut sql, self.spec.row.is_some());
        sql.push_str(&format!(
            "SET LOCAL search_path TO {}; {}",
            self.spec.search_path,
            timeouts_sql(timeouts, true)
        ));
        sql
    }

    /// Sends `sql`, which opens a transaction or goes on in one (and, with `commits`,
    /// commits it): after a failure one is taken to be open, for the rollback;
    /// `open_after` says whether one is open after success.
    async fn send(&mut self, sql: &str, commits: bool, open_after: bool) -> Result<()> {
        self.in_transaction = true;
        self.exec(sql).await?;
        self.in_transaction = open_after;
        if commits && self.setup_sent {
            self.setup = None;
            self.setup_sent = false;
        }
        Ok(())
    }
}

#[async_trait]
impl Connection for PgTarget<'_> {
    async fn try_lock(&mut self) -> Result<bool> {
        if self.locked {
            return Ok(true);
        }
        // Set first: whatever happens to the statement, release unlocks.
        self.locked = true;
        let row =
            sqlx::Executor::fetch_one(&mut *self.conn, try_lock_sql(&self.spec.lock_key).as_str())
                .await?;
        self.locked = row.try_get("free")?;
        Ok(self.locked)
    }

    async fn read(&mut self) -> Result<TargetState> {
        // Unprepared: the statement names the target, so a prepared one would only fill
        // the connection's cache.
        let sql = self.read_sql();
        let ((mut results, error), registered) = futures_util::future::join(
            fetch_results(&mut self.conn, &sql),
            registered(self.spec.probe.as_ref()),
        )
        .await;
        let rows = results.pop().unwrap_or_default();
        let mut state = self.state_from(&rows, error)?;
        state.registered &= registered?;
        Ok(state)
    }

    async fn try_lock_and_read(&mut self) -> Result<Option<TargetState>> {
        if self.locked {
            let state = self.read().await?;
            self.ensure_run_column().await?;
            return Ok(Some(state));
        }
        // The read is a statement of its own after the lock, so that it sees what the
        // run that held the lock before committed. Set first, as in `try_lock`.
        self.locked = true;
        let sql = format!("{}; {}", try_lock_sql(&self.spec.lock_key), self.read_sql());
        let ((results, error), registered) = futures_util::future::join(
            fetch_results(&mut self.conn, &sql),
            registered(self.spec.probe.as_ref()),
        )
        .await;
        let mut results = results.into_iter();
        let Some(lock) = results.next() else {
            return Err(error.map_or_else(
                || Error::Corrupt("the lock query returned nothing".to_owned()),
                Error::from,
            ));
        };
        self.locked = match lock.first() {
            Some(row) => row.try_get("free")?,
            None => return Err(Error::Corrupt("the lock query returned no row".to_owned())),
        };
        if !self.locked {
            return Ok(None);
        }
        let table_missing = error.as_ref().is_some_and(|e| is_code(e, "42P01"));
        let rows = results.next().unwrap_or_default();
        let mut state = self.state_from(&rows, error)?;
        if table_missing {
            // The failed read rolled back the implicit transaction, and the connection's
            // tag with it; the lock, a session's, stays.
            self.exec(&tag_sql()).await?;
        }
        self.ensure_run_column().await?;
        state.registered &= registered?;
        Ok(Some(state))
    }

    async fn begin(&mut self, timeouts: MigrationTimeouts) -> Result<()> {
        let sql = self.begin_sql(timeouts, true);
        self.send(&sql, false, true).await
    }

    async fn set_timeouts(&mut self, timeouts: MigrationTimeouts) -> Result<()> {
        self.exec(&timeouts_sql(timeouts, true)).await
    }

    async fn enter_autocommit(&mut self, timeouts: MigrationTimeouts) -> Result<()> {
        let mut sql = String::new();
        if let Some(setup) = &self.setup {
            sql.push_str(setup);
            sql.push_str("; ");
        }
        sql.push_str(&format!(
            "SET search_path TO {}; {}",
            self.spec.search_path,
            timeouts_sql(timeouts, false)
        ));
        self.exec(&sql).await?;
        self.setup = None;
        Ok(())
    }

    async fn leave_autocommit(&mut self) -> Result<()> {
        self.exec(RESET_SESSION).await
    }

    async fn verify_after_autocommit(&mut self) -> Result<()> {
        // The target's schema is the first of the search path set for the migration.
        let indexes: Vec<String> = sqlx::query_scalar(INVALID_INDEXES)
            .fetch_all(&mut *self.conn)
            .await?;
        if indexes.is_empty() {
            return Ok(());
        }
        Err(Error::InvalidIndex {
            target: match self.spec.tenant {
                Some(tenant) => format!("tenant {}", tenant.name),
                None => "the public schema".to_owned(),
            },
            indexes,
        })
    }

    async fn write(&mut self, records: &[Record<'_>]) -> Result<()> {
        let mut sql = String::new();
        push_records(
            &mut sql,
            &self.spec.tracking,
            self.spec.row.as_ref(),
            records,
        )?;
        self.send(&sql, false, true).await
    }

    async fn commit(
        &mut self,
        records: &[Record<'_>],
        then: Option<MigrationTimeouts>,
    ) -> Result<()> {
        let mut sql = String::new();
        if !self.in_transaction {
            if records.is_empty() && then.is_none() {
                return Ok(());
            }
            sql.push_str("BEGIN; ");
            if let Some(setup) = &self.setup {
                sql.push_str(setup);
                sql.push_str("; ");
                self.setup_sent = true;
            }
            push_bookkeeping(
                &mut sql,
                self.spec.row.is_some() && own_bookkeeping(records),
            );
        }
        push_records(
            &mut sql,
            &self.spec.tracking,
            self.spec.row.as_ref(),
            records,
        )?;
        sql.push_str("COMMIT");
        if let Some(timeouts) = then {
            sql.push_str("; ");
            sql.push_str(&self.begin_sql(timeouts, false));
        }
        self.send(&sql, true, then.is_some()).await
    }

    async fn rollback(&mut self) {
        if !self.in_transaction || self.discarded {
            return;
        }
        self.setup_sent = false;
        if self.exec("ROLLBACK").await.is_err() {
            self.discard();
        }
        self.in_transaction = false;
    }

    fn discard(&mut self) {
        self.discarded = true;
        self.locked = false;
        if let PgConn::Pooled(conn) = &mut self.conn {
            conn.close_on_drop();
        }
    }

    fn ctx(&mut self) -> Ctx<'_> {
        Ctx::new(self.spec.tenant, CtxConn::Postgres(&mut self.conn))
    }

    fn set_run(&mut self, run_id: &str) {
        self.spec.tracking.set_run(run_id);
        self.run_set = true;
    }

    async fn release(mut self: Box<Self>) {
        self.released = true;
        match &mut self.conn {
            PgConn::Owned(conn) => {
                // Closing ends the session, its transaction and its locks.
                if let Some(conn) = conn.take() {
                    let _ = conn.close().await;
                }
            }
            PgConn::Pooled(conn) => {
                if self.discarded {
                    return;
                }
                let reusable = if self.in_transaction {
                    false
                } else if self.locked {
                    // A plain `&str` has no arguments, so sqlx sends it with the simple
                    // protocol, alone.
                    let outside = sqlx::Executor::fetch_one(&mut **conn, UNLOCK_ALL).await;
                    matches!(outside.map(|row| row.try_get::<bool, _>(0)), Ok(Ok(true)))
                } else {
                    true
                };
                if !reusable {
                    conn.close_on_drop();
                }
            }
        }
    }
}

impl Drop for PgTarget<'_> {
    fn drop(&mut self) {
        // Dropped without release (a cancelled run): in whatever state the connection
        // is, closing it ends its transaction and its locks. An owned one closes as it
        // is dropped.
        if !self.released {
            if let PgConn::Pooled(conn) = &mut self.conn {
                conn.close_on_drop();
            }
        }
    }
}
