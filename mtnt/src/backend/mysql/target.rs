//! One connection working on one MySQL target: its named lock, its tracking rows, and
//! the autocommit-off transactions that migrations run in.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use sqlx::mysql::MySqlRow;
use sqlx::pool::PoolConnection;
use sqlx::{Either, MySql, MySqlConnection, Row};

use super::dialect::{
    add_run_column, applied_from_row, error_number, probe_run_column, select_tracking,
    text_literal, tracking_ddl, Books, ER_BAD_DB_ERROR, ER_BAD_FIELD_ERROR, ER_NO_SUCH_TABLE,
};
use super::MySqlBackend;
use crate::backend::{Connection, MigrationTimeouts, Record, Target, TargetState};
use crate::ctx::{exec_mysql, CtxConn};
use crate::migration::BoxFuture;
use crate::{Ctx, Error, Result};

/// The most a session's lock timeouts take, in seconds (MySQL's maximum of
/// `lock_wait_timeout`: a year).
const MAX_LOCK_SECONDS: u64 = 31_536_000;

/// What a multi-statement round trip returned: the rows of each statement that ran (and
/// those the failed one sent before its error), and the error that stopped it.
pub(super) struct Batch {
    sets: Vec<Vec<MySqlRow>>,
    pub(super) error: Option<sqlx::Error>,
}

impl Batch {
    /// The rows of statement `i`, or the error that kept it from running.
    pub(super) fn rows(&mut self, i: usize) -> std::result::Result<&[MySqlRow], sqlx::Error> {
        // A statement ran when a later set was started, at its end.
        if i + 1 < self.sets.len() {
            return Ok(&self.sets[i]);
        }
        Err(self.error.take().unwrap_or_else(|| {
            sqlx::Error::Protocol(format!("statement {i} of a batch returned nothing"))
        }))
    }

    /// The integer the single-row statement `i` returned (`None` for SQL `NULL`).
    fn scalar(&mut self, i: usize) -> std::result::Result<Option<i64>, sqlx::Error> {
        match self.rows(i)?.first() {
            Some(row) => row.try_get(0),
            None => Ok(None),
        }
    }
}

/// Sends several statements in one unprepared round trip and collects what they return.
///
/// A named function with a concrete connection type and a boxed `Send` future, like
/// [`exec_mysql`], because sqlx's generic executors trip the compiler's higher-ranked
/// `Send` check inside `async_trait` methods.
pub(super) fn batch<'a>(conn: &'a mut MySqlConnection, sql: &'a str) -> BoxFuture<'a, Batch> {
    Box::pin(async move {
        let mut sets = vec![Vec::new()];
        // A plain `&str` has no arguments: sqlx sends it unprepared, all at once. Each
        // statement ends with one `Left`.
        let mut stream = sqlx::Executor::fetch_many(conn, sql);
        while let Some(item) = stream.next().await {
            match item {
                Ok(Either::Left(_)) => sets.push(Vec::new()),
                Ok(Either::Right(row)) => sets.last_mut().expect("never empty").push(row),
                Err(error) => {
                    return Batch {
                        sets,
                        error: Some(error),
                    }
                }
            }
        }
        Batch { sets, error: None }
    })
}

/// Appends `statement` to `sql`; its index.
fn push(sql: &mut Vec<String>, statement: String) -> usize {
    sql.push(statement);
    sql.len() - 1
}

/// The whole seconds (rounded up, at least one) MySQL's lock timeouts take for `lock`.
fn lock_seconds(lock: Option<Duration>) -> Option<u64> {
    lock.map(|d| (d.as_secs() + u64::from(d.subsec_nanos() > 0)).clamp(1, MAX_LOCK_SECONDS))
}

/// A pooled connection on one target.
///
/// Selects the target's database (`USE`) before a migration runs, so that migrations can
/// name their tables unqualified; mtnt's own SQL always names the database. Dropped
/// without [`Connection::release`] (a cancelled run), it is closed, which rolls back and
/// ends its lock.
pub(super) struct MySqlTarget<'a> {
    backend: &'a MySqlBackend,
    target: Target<'a>,
    /// Taken by `release` only.
    conn: Option<PoolConnection<MySql>>,
    db_q: String,
    /// The lock's name, as SQL.
    lock_name: String,
    locked: bool,
    /// Autocommit is off: a transaction is open, or opens with the next statement.
    in_transaction: bool,
    /// The target's database is the connection's default.
    selected: bool,
    /// Whether the tracking table exists; `None` until known.
    tracking: Option<bool>,
    /// The lock timeouts set on the session, in seconds (`None`: the session's own).
    lock_timeout: Option<u64>,
    /// Nothing failed half-way: the session is as mtnt believes it is.
    clean: bool,
    discarded: bool,
    /// The fleet run whose id the rows written carry, as a literal.
    run: Option<String>,
}

impl<'a> MySqlTarget<'a> {
    pub(super) fn new(
        backend: &'a MySqlBackend,
        target: Target<'a>,
        conn: PoolConnection<MySql>,
    ) -> Self {
        let (db_q, key) = match target {
            Target::Public => (
                backend.control_q.clone(),
                format!("public:{}", backend.control),
            ),
            // Tenant databases are server-wide, whatever control database registers them.
            Target::Tenant(t) => (super::quote(&t.storage), format!("tenant:{}", t.storage)),
        };
        Self {
            backend,
            target,
            conn: Some(conn),
            db_q,
            // A lock name has at most 64 characters: the key is hashed.
            lock_name: format!("CONCAT('mtnt:', SHA1({}))", text_literal(&key)),
            locked: false,
            in_transaction: false,
            selected: false,
            tracking: None,
            lock_timeout: None,
            clean: true,
            discarded: false,
            run: None,
        }
    }

    fn conn(&mut self) -> &mut MySqlConnection {
        self.conn
            .as_mut()
            .expect("the connection is only taken by release")
    }

    fn registry(&self) -> String {
        self.backend.registry()
    }

    /// Sends `sql` in one round trip; a failure leaves the session in doubt.
    async fn send(&mut self, sql: &[String]) -> Result<()> {
        if sql.is_empty() {
            return Ok(());
        }
        let joined = sql.join("; ");
        let result = exec_mysql(self.conn(), &joined).await;
        self.clean &= result.is_ok();
        Ok(result?)
    }

    /// The error of a tenant's database that is gone, else `error`.
    fn missing_storage(&self, error: sqlx::Error) -> Error {
        match (self.target, error_number(&error)) {
            (Target::Tenant(t), Some(ER_BAD_DB_ERROR)) => Error::storage_missing(t),
            _ => error.into(),
        }
    }

    /// The statements that make the connection ready for a migration function: the
    /// tracking table where it may be missing (DDL, so only outside a transaction) and
    /// the target's database as the default.
    fn setup(&self, sql: &mut Vec<String>) {
        if !self.in_transaction && self.tracking != Some(true) {
            sql.push(tracking_ddl(&self.db_q));
        }
        if !self.selected {
            sql.push(format!("USE {}", self.db_q));
        }
    }

    /// The statements that give the session `lock` as its lock timeouts (row locks and
    /// metadata locks: what a DDL statement waits for), and the seconds set.
    fn timeouts(&self, lock: Option<Duration>, sql: &mut Vec<String>) -> Option<u64> {
        let wanted = lock_seconds(lock);
        match (self.lock_timeout, wanted) {
            (old, new) if old == new => {}
            (old, Some(n)) => {
                if old.is_none() {
                    sql.push(
                        "SET @mtnt_lock_wait_timeout = @@SESSION.lock_wait_timeout, \
                         @mtnt_innodb_lock_wait_timeout = @@SESSION.innodb_lock_wait_timeout"
                            .to_owned(),
                    );
                }
                sql.push(format!(
                    "SET SESSION lock_wait_timeout = {n}, SESSION innodb_lock_wait_timeout = {n}"
                ));
            }
            (Some(_), None) => sql.push(
                "SET SESSION lock_wait_timeout = @mtnt_lock_wait_timeout, \
                 SESSION innodb_lock_wait_timeout = @mtnt_innodb_lock_wait_timeout"
                    .to_owned(),
            ),
            (None, None) => {}
        }
        wanted
    }

    /// The target's state, taking the lock first (in the same round trip) when `lock`;
    /// `None` when another run holds it.
    async fn read_with(&mut self, lock: bool) -> Result<Option<TargetState>> {
        let mut sql = Vec::new();
        let lock_at =
            lock.then(|| push(&mut sql, format!("SELECT GET_LOCK({}, 0)", self.lock_name)));
        let registry_at = self.target.tenant().map(|t| {
            let exists = format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE name = {})",
                self.registry(),
                text_literal(t.name.as_str())
            );
            push(&mut sql, exists)
        });
        let use_at = (!self.selected).then(|| push(&mut sql, format!("USE {}", self.db_q)));
        let rows_at = push(&mut sql, select_tracking(&self.db_q));
        // Last: its error (a table made before run ids) ends nothing else.
        let probe_at = self
            .run
            .is_some()
            .then(|| push(&mut sql, probe_run_column(&self.db_q)));
        let joined = sql.join("; ");
        let mut result = batch(self.conn(), &joined).await;
        if let Some(i) = lock_at {
            let got = result.scalar(i).inspect_err(|_| self.clean = false)?;
            self.locked = got == Some(1);
            if !self.locked {
                return Ok(None);
            }
        }
        let registered = match registry_at {
            Some(i) => result.scalar(i)? == Some(1),
            None => true,
        };
        let gone = |error: sqlx::Error, this: &Self| {
            if registered || error_number(&error) != Some(ER_BAD_DB_ERROR) {
                return Err(this.missing_storage(error));
            }
            // Dropped while this run waited for it: neither registry row nor database.
            Ok(Some(TargetState::default()))
        };
        if let Some(i) = use_at {
            if let Err(error) = result.rows(i) {
                return gone(error, self);
            }
            self.selected = true;
        }
        let applied = match result.rows(rows_at) {
            Ok(rows) => rows.iter().map(applied_from_row).collect::<Result<_>>()?,
            // An adopted or hand-made database without a tracking table yet: no rows. A
            // read writes nothing; the first write creates it.
            Err(error) if error_number(&error) == Some(ER_NO_SUCH_TABLE) => {
                self.tracking = Some(false);
                return Ok(Some(TargetState {
                    applied: Vec::new(),
                    registered,
                }));
            }
            Err(error) => return gone(error, self),
        };
        self.tracking = Some(true);
        if let Some(i) = probe_at {
            match result.rows(i) {
                Ok(_) => {}
                Err(error) if error_number(&error) == Some(ER_BAD_FIELD_ERROR) => {
                    if self.locked {
                        // Once per table, under the target's lock (DDL: outside any
                        // transaction, which a read never is in).
                        self.send(&[add_run_column(&self.db_q)]).await?;
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Some(TargetState {
            applied,
            registered,
        }))
    }

    /// The statements of `records`.
    fn records(&self, records: &[Record<'_>], sql: &mut Vec<String>) -> Result<()> {
        let registry = self.registry();
        let books = Books {
            db_q: &self.db_q,
            registry: &registry,
            tenant: self.target.tenant(),
            run: self.run.as_deref(),
        };
        let now = std::time::Instant::now();
        records.iter().try_for_each(|r| books.record(r, now, sql))
    }
}

#[async_trait]
impl Connection for MySqlTarget<'_> {
    async fn try_lock(&mut self) -> Result<bool> {
        if self.locked {
            return Ok(true);
        }
        let sql = format!("SELECT GET_LOCK({}, 0)", self.lock_name);
        let got = batch(self.conn(), &sql).await.scalar(0);
        self.clean &= got.is_ok();
        // `NULL`: the server could not take it (killed, out of memory): not held.
        self.locked = got? == Some(1);
        Ok(self.locked)
    }

    async fn read(&mut self) -> Result<TargetState> {
        Ok(self.read_with(false).await?.unwrap_or_default())
    }

    async fn try_lock_and_read(&mut self) -> Result<Option<TargetState>> {
        let lock = !self.locked;
        self.read_with(lock).await
    }

    async fn begin(&mut self, timeouts: MigrationTimeouts) -> Result<()> {
        let mut sql = Vec::new();
        self.setup(&mut sql);
        sql.push("SET autocommit = 0".to_owned());
        let lock_timeout = self.timeouts(timeouts.lock, &mut sql);
        sql.push("START TRANSACTION".to_owned());
        self.in_transaction = true;
        self.send(&sql).await?;
        (self.selected, self.tracking, self.lock_timeout) = (true, Some(true), lock_timeout);
        Ok(())
    }

    async fn set_timeouts(&mut self, timeouts: MigrationTimeouts) -> Result<()> {
        let mut sql = Vec::new();
        let lock_timeout = self.timeouts(timeouts.lock, &mut sql);
        self.send(&sql).await?;
        self.lock_timeout = lock_timeout;
        Ok(())
    }

    async fn enter_autocommit(&mut self, timeouts: MigrationTimeouts) -> Result<()> {
        let mut sql = Vec::new();
        self.setup(&mut sql);
        let lock_timeout = self.timeouts(timeouts.lock, &mut sql);
        self.send(&sql).await?;
        (self.selected, self.tracking, self.lock_timeout) = (true, Some(true), lock_timeout);
        Ok(())
    }

    /// The lock timeouts stay until the next commit sets those of what follows, or
    /// [`Connection::release`] restores the session's own: no round trip of its own.
    async fn leave_autocommit(&mut self) -> Result<()> {
        Ok(())
    }

    async fn write(&mut self, records: &[Record<'_>]) -> Result<()> {
        let mut sql = Vec::new();
        if !self.in_transaction && self.tracking != Some(true) {
            sql.push(tracking_ddl(&self.db_q));
        }
        self.records(records, &mut sql)?;
        self.send(&sql).await?;
        self.tracking = Some(true);
        Ok(())
    }

    /// One round trip: the records and `COMMIT`, and with `then` the session left with
    /// autocommit off for the next migration ("COMMIT; SET autocommit = 0"), so that a
    /// migration that changes data only rolls back whole, and data changes after its
    /// last DDL statement do too.
    async fn commit(
        &mut self,
        records: &[Record<'_>],
        then: Option<MigrationTimeouts>,
    ) -> Result<()> {
        if records.is_empty() && !self.in_transaction && then.is_none() {
            // Nothing to write and nothing open: nothing to send (the timeouts, if set,
            // are restored on release).
            return Ok(());
        }
        let mut sql = Vec::new();
        match then {
            Some(_) => self.setup(&mut sql),
            None if !self.in_transaction && self.tracking != Some(true) => {
                sql.push(tracking_ddl(&self.db_q))
            }
            None => {}
        }
        if !self.in_transaction {
            sql.push("START TRANSACTION".to_owned());
        }
        self.records(records, &mut sql)?;
        sql.push("COMMIT".to_owned());
        match (self.in_transaction, then.is_some()) {
            (true, false) => sql.push("SET autocommit = 1".to_owned()),
            (false, true) => sql.push("SET autocommit = 0".to_owned()),
            _ => {}
        }
        let lock_timeout = self.timeouts(then.and_then(|t| t.lock), &mut sql);
        // Until it is known to have gone through, a transaction may be open.
        self.in_transaction = true;
        self.send(&sql).await?;
        self.in_transaction = then.is_some();
        self.selected |= then.is_some();
        (self.tracking, self.lock_timeout) = (Some(true), lock_timeout);
        Ok(())
    }

    /// Sent whether or not mtnt opened a transaction: a migration outside one may have
    /// left one of its own open, and `START TRANSACTION` would commit it. Only failures
    /// get here.
    async fn rollback(&mut self) {
        if self.discarded {
            return;
        }
        let sql = if self.in_transaction {
            "ROLLBACK; SET autocommit = 1"
        } else {
            "ROLLBACK"
        };
        let result = exec_mysql(self.conn(), sql).await;
        match result {
            Ok(()) => self.in_transaction = false,
            Err(_) => self.discard(),
        }
    }

    fn discard(&mut self) {
        self.discarded = true;
        self.locked = false;
        if let Some(conn) = &mut self.conn {
            conn.close_on_drop();
        }
    }

    fn ctx(&mut self) -> Ctx<'_> {
        let tenant = self.target.tenant();
        Ctx::new(tenant, CtxConn::MySql(self.conn()))
    }

    fn set_run(&mut self, run_id: &str) {
        self.run = Some(text_literal(run_id));
    }

    async fn release(mut self: Box<Self>) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.discarded || self.in_transaction || !self.clean {
            // Closed before this returns, so that the server has let go of the lock when
            // the caller goes on (a pool's close on drop would end it a moment later).
            let _ = conn.close().await;
            return;
        }
        let mut sql = Vec::new();
        if self.locked {
            // With any lock a migration took for itself.
            sql.push("DO RELEASE_ALL_LOCKS()".to_owned());
        }
        self.timeouts(None, &mut sql);
        if !sql.is_empty() && exec_mysql(&mut conn, &sql.join("; ")).await.is_err() {
            conn.close_on_drop();
        }
    }
}

impl Drop for MySqlTarget<'_> {
    fn drop(&mut self) {
        // Not released: maybe mid-transaction or mid-statement, maybe holding the lock.
        // Closing ends all of that on the server; nothing is spawned.
        if let Some(conn) = &mut self.conn {
            conn.close_on_drop();
        }
    }
}
