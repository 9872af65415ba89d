//! The migration protocol, written once for every engine: claim a target, plan, apply,
//! record, keep the registry in line, fail, and heal the registry where it is a cache.
//!
//! How migrations are applied follows the engine's [`Capabilities`]:
//! - with transactional DDL, consecutive transactional migrations of a tenant share one
//!   transaction ([`Transactions::PerTenant`]) or get one each
//!   ([`Transactions::PerMigration`]), their tracking rows and the registry row written
//!   with them;
//! - a migration outside a transaction, and every migration on an engine whose DDL
//!   commits at once, goes through the started / completed chain: its row is committed
//!   `started` before it runs and `completed` after it, so what a crash leaves is
//!   visible. The commit after one migration is the commit before the next (one round
//!   trip): every committed state is one that two commits could leave too.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::FutureExt;
use tracing::Instrument;

use super::claim::is_transient;
use super::hooks::{HookFailures, Hooks, TenantOutcome};
use super::plan::{plan_down, plan_up};
use super::{Progress, Timeouts, Transactions};
use crate::backend::{
    Backend, Capabilities, Connection, Direction, ErrorClass, MigrationTimeouts, Record,
    RegistryRow, Target, TargetState, Timing,
};
use crate::migration::MigrationFn;
use crate::{
    Ctx, Error, Migration, MigrationSet, MigrationStatus, Result, RollbackTarget, Scope,
    TenantRecord,
};

/// How a claim on a target ended.
#[derive(Debug)]
pub(crate) enum Claim<T> {
    /// Done, with what it did.
    Done(T),
    /// Another run holds the target; nothing was changed.
    Busy,
    /// The tenant's registry row is gone (the tenant was dropped while this run waited
    /// for it): nothing was changed, and nothing was created.
    Gone,
}

/// What a fleet run does to each tenant.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FleetOp<'a> {
    /// Applies pending migrations up to `to`.
    Migrate {
        /// The newest order to apply.
        to: Option<i64>,
    },
    /// Reverts migrations.
    Rollback {
        /// How far.
        how_far: RollbackTarget,
    },
    /// Runs a statement (or script) that is not a migration.
    Exec {
        /// The statements.
        sql: &'a str,
        /// Whether they run in a transaction.
        transaction: bool,
    },
}

/// One run's view of the engine: the backend, its capabilities, the migrations, and the
/// run's policy.
#[derive(Clone, Copy)]
pub(crate) struct Protocol<'a> {
    pub(crate) backend: &'a dyn Backend,
    pub(crate) caps: Capabilities,
    pub(crate) set: &'a MigrationSet,
    pub(crate) timeouts: Timeouts,
    pub(crate) transactions: Transactions,
    /// Hears about retries.
    pub(crate) progress: &'a dyn Progress,
    /// The hooks of the run.
    pub(crate) hooks: &'a Hooks,
    /// Where a fleet run collects its `after_tenant` failures (elsewhere they are
    /// logged).
    pub(crate) hook_failures: Option<&'a HookFailures>,
    /// The fleet run's id, which every tracking row it writes carries.
    pub(crate) run_id: Option<&'a str>,
    /// The server the `tenant` tracing spans name.
    pub(crate) server: Option<&'a str>,
    /// Set when a migration asks for its tenant ([`Ctx::tenant`]): while a template is
    /// built, such a migration makes it unusable.
    pub(crate) identity_read: Option<&'a AtomicBool>,
    /// Whether `tenant create` copies a template and `migrate` keeps it current, where
    /// the engine can (see `template.rs`).
    pub(crate) templates: bool,
    /// How many spare storages `migrate` keeps for `tenant create` to take, where the
    /// engine can rename storage (see `spares.rs`).
    pub(crate) spares: usize,
}

/// What the attempts of one claim on a target share.
#[derive(Default)]
pub(crate) struct Attempts {
    /// The migrations every attempt committed, also those that failed after some (so that
    /// retries add up).
    pub(crate) committed: AtomicUsize,
    /// The tenant's `before_tenant` hooks succeeded in an earlier attempt: a retry does
    /// not run them again, and its end runs the `after_tenant` hooks.
    pub(crate) hooks_began: AtomicBool,
}

/// Runs an up or down function, turning a panic into [`Error::Panicked`] so that one
/// bad migration fails its tenant instead of the whole run.
pub(crate) async fn invoke(function: MigrationFn, ctx: &mut Ctx<'_>) -> Result<()> {
    match AssertUnwindSafe(function(ctx)).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            Err(Error::Panicked { message })
        }
    }
}

/// Whether a tenant whose storage is missing was dropped: its registry row is gone, now or
/// within a few seconds. Where storage is not transactional, `tenant drop` removes the
/// storage and then the row, so a run can find the one gone and the other still there;
/// a row that stays means the storage is missing for real.
pub(crate) async fn dropped_meanwhile(
    backend: &dyn Backend,
    tenant: &crate::Tenant,
) -> Result<bool> {
    for attempt in 0..20 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        if backend
            .tenant_records(std::slice::from_ref(&tenant.name))
            .await?
            .is_empty()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Wraps a migration's failure with the migration and the target.
pub(crate) fn wrap(
    target: Target<'_>,
    migration: &Migration,
    direction: Direction,
    error: Error,
) -> Error {
    Error::Migration {
        target: target.to_string(),
        migration: migration.to_string(),
        reverting: direction == Direction::Down,
        source: Box::new(error),
    }
}

impl Protocol<'_> {
    /// The `tenant` span of the work on one tenant (the log shows its duration).
    pub(crate) fn tenant_span(&self, tenant: &crate::TenantName) -> tracing::Span {
        tracing::debug_span!(
            "tenant",
            tenant = %tenant,
            model = %model_label(self.backend),
            host = self.server.unwrap_or(""),
        )
    }
}

/// The tenancy model of `backend` as logs and events name it: `postgres-schema`,
/// `postgres-database`, `mysql-database`, `sqlite-file` (a custom engine's name first).
pub(crate) fn model_label(backend: &dyn Backend) -> String {
    let engine = match backend.engine() {
        crate::Engine::Postgres => "postgres",
        crate::Engine::MySql => "mysql",
        crate::Engine::Sqlite => "sqlite",
        crate::Engine::Custom(name) => name,
    };
    let tenancy = match backend.tenancy() {
        crate::Tenancy::Schema => "schema",
        crate::Tenancy::Database => "database",
        crate::Tenancy::File => "file",
    };
    format!("{engine}-{tenancy}")
}

/// The `migration` span of one up or down function (the log shows its duration); it
/// names its tenant too, so that a log query needs no span list.
pub(crate) fn migration_span(
    target: Target<'_>,
    migration: &Migration,
    direction: Direction,
) -> tracing::Span {
    tracing::debug_span!(
        "migration",
        tenant = target.tenant().map(|t| t.name.as_str()),
        order = migration.order(),
        // Not `name`: the JSON log gives the span's own name that key.
        migration = migration.name(),
        reverting = direction == Direction::Down,
    )
}

fn scope_of(target: Target<'_>) -> Scope {
    match target {
        Target::Public => Scope::Public,
        Target::Tenant(_) => Scope::Tenant,
    }
}

/// The orders of a target's completed migrations, kept up to date as a run changes them,
/// for the registry's cached summary.
pub(crate) struct Completed(pub(crate) BTreeSet<i64>);

impl Completed {
    pub(crate) fn of(state: &TargetState) -> Self {
        Self(
            state
                .applied
                .iter()
                .filter(|r| r.status == MigrationStatus::Completed)
                .map(|r| r.order)
                .collect(),
        )
    }

    fn newest(&self) -> Option<i64> {
        self.0.last().copied()
    }

    fn note(&mut self, migration: &Migration, direction: Direction) {
        match direction {
            Direction::Up => self.0.insert(migration.order()),
            Direction::Down => self.0.remove(&migration.order()),
        };
    }
}

/// What `tenant create` adds to a transaction of migrations.
#[derive(Clone, Copy, Default)]
pub(crate) struct Parts<'r> {
    /// Written first, in the transaction.
    pub(crate) prelude: &'r [Record<'r>],
    /// Committed with the migrations' records.
    pub(crate) finish: &'r [Record<'r>],
    /// Whether a failure is recorded (not when the transaction registered the tenant:
    /// the rollback took its registry row).
    pub(crate) record_failure: bool,
}

impl Parts<'_> {
    /// A plain transaction of migrations.
    pub(crate) fn plain() -> Self {
        Self {
            record_failure: true,
            ..Self::default()
        }
    }
}

/// A chained migration whose `completed` record waits to travel with the next commit.
pub(crate) struct Pending {
    index: usize,
    migration: &'static Migration,
    timing: Timing,
}

impl<'a> Protocol<'a> {
    /// The timeouts `migration` runs with: its attribute's, else the run's.
    ///
    /// The run's lock timeout applies to transactional migrations only. A migration
    /// outside a transaction is typically `CREATE INDEX CONCURRENTLY`, whose waits for
    /// older snapshots count as lock waits: cut short, it leaves an invalid index behind
    /// (and a retry's `IF NOT EXISTS` would skip it). It waits as long as it must, unless
    /// its own attribute sets `lock_timeout`.
    pub(crate) fn timeouts_of(&self, migration: &Migration) -> MigrationTimeouts {
        let none_if_zero = |d: Option<std::time::Duration>| d.filter(|d| !d.is_zero());
        let run_lock = self.timeouts.lock.filter(|_| migration.is_transactional());
        MigrationTimeouts {
            lock: none_if_zero(migration.lock_timeout().or(run_lock)),
            statement: none_if_zero(migration.statement_timeout().or(self.timeouts.statement)),
        }
    }

    /// The run's timeouts, for what is not a migration (`exec`, hooks).
    pub(crate) fn run_timeouts(&self) -> MigrationTimeouts {
        MigrationTimeouts {
            lock: self.timeouts.lock.filter(|d| !d.is_zero()),
            statement: self.timeouts.statement.filter(|d| !d.is_zero()),
        }
    }

    /// A connection to `target` that writes the run's id on the tracking rows.
    async fn connect<'t>(&self, target: Target<'t>) -> Result<Box<dyn Connection + 't>>
    where
        'a: 't,
    {
        let mut conn = self.backend.connect(target).await?;
        if let Some(run_id) = self.run_id {
            conn.set_run(run_id);
        }
        Ok(conn)
    }

    fn registry_in_transaction(&self, target: Target<'_>) -> bool {
        self.caps_for(target).registry_in_target_transaction && target.tenant().is_some()
    }

    /// What the engine can do for `target`: a tenant on another server than the registry
    /// has fewer capabilities ([`Backend::capabilities_of`]).
    pub(crate) fn caps_for(&self, target: Target<'_>) -> Capabilities {
        match target {
            Target::Tenant(tenant) => self.backend.capabilities_of(tenant),
            Target::Public => self.caps,
        }
    }

    /// Tells the progress that `migration` of `target` is committed.
    fn committed(
        &self,
        target: Target<'_>,
        migration: &Migration,
        direction: Direction,
        timing: Timing,
    ) {
        self.progress.migration_done(
            target.tenant().map(|t| &t.name),
            migration,
            direction == Direction::Down,
            timing.finished.saturating_duration_since(timing.started),
        );
    }

    /// Brings one target up to `to`, unless another run holds it. `record` is the
    /// tenant's registry row as this run read it (`None` for the public target).
    /// `attempts` is shared by the attempts of one claim; `last` says that a failure of
    /// this one will not be retried.
    pub(crate) async fn migrate_target(
        &self,
        target: Target<'_>,
        record: Option<&TenantRecord>,
        to: Option<i64>,
        attempts: &Attempts,
        last: bool,
    ) -> Result<Claim<usize>> {
        let scope = scope_of(target);
        let Some(mut conn) = self.connect_registered(target).await? else {
            return Ok(Claim::Gone);
        };
        if matches!(target, Target::Public) {
            // The public target is read by every run and every `tenant create`, and is
            // nearly always up to date: that needs no lock, so that sign-ups never queue.
            let state = conn.read().await?;
            if plan_up(target, &state.applied, self.set, scope, to).is_ok_and(|s| s.is_empty()) {
                conn.release().await;
                return Ok(Claim::Done(0));
            }
        }
        let Some(state) = conn.try_lock_and_read().await? else {
            conn.release().await;
            return Ok(Claim::Busy);
        };
        let outcome = self
            .migrate_locked(&mut *conn, target, record, &state, to, attempts, last)
            .await;
        conn.release().await;
        outcome
    }

    /// Does `op` to one target, unless another run holds it; `attempts.committed`
    /// counts the migrations applied or reverted (the tenants a statement ran in, for
    /// `Exec`). `last`: a failure of this attempt will not be retried.
    pub(crate) async fn run_op(
        &self,
        target: Target<'_>,
        record: Option<&TenantRecord>,
        op: FleetOp<'_>,
        attempts: &Attempts,
        last: bool,
    ) -> Result<Claim<usize>> {
        let committed = &attempts.committed;
        let (how_far, sql, transaction) = match op {
            FleetOp::Migrate { to } => {
                return self
                    .migrate_target(target, record, to, attempts, last)
                    .await
            }
            FleetOp::Rollback { how_far } => (Some(how_far), "", false),
            FleetOp::Exec { sql, transaction } => (None, sql, transaction),
        };
        let Some(mut conn) = self.connect_registered(target).await? else {
            return Ok(Claim::Gone);
        };
        let Some(state) = conn.try_lock_and_read().await? else {
            conn.release().await;
            return Ok(Claim::Busy);
        };
        if !state.registered {
            conn.release().await;
            return Ok(Claim::Gone);
        }
        let outcome = match how_far {
            Some(how_far) => self
                .rollback_locked(&mut *conn, target, record, how_far)
                .await
                .map(|reverted| reverted.len()),
            None => self
                .exec_locked(&mut *conn, sql, transaction)
                .await
                .map(|()| 1),
        };
        conn.release().await;
        let n = outcome?;
        committed.fetch_add(n, Ordering::Relaxed);
        Ok(Claim::Done(n))
    }

    /// A connection to `target`; `None` when its storage is missing because the tenant was
    /// dropped after this run read its registry row (database and file per tenant, whose
    /// connection is to the tenant's own storage): that is [`Claim::Gone`], not a failure.
    async fn connect_registered<'t>(
        &self,
        target: Target<'t>,
    ) -> Result<Option<Box<dyn Connection + 't>>>
    where
        'a: 't,
    {
        match self.connect(target).await {
            Ok(conn) => Ok(Some(conn)),
            Err(error) => match target {
                Target::Tenant(tenant)
                    if self.backend.classify(&error) == ErrorClass::StorageMissing
                        && dropped_meanwhile(self.backend, tenant).await? =>
                {
                    Ok(None)
                }
                _ => Err(error),
            },
        }
    }

    /// Runs `sql` on a locked target, in a transaction or not; nothing is recorded.
    async fn exec_locked(
        &self,
        conn: &mut dyn Connection,
        sql: &str,
        transaction: bool,
    ) -> Result<()> {
        let timeouts = self.run_timeouts();
        let result = if transaction {
            match conn.begin(timeouts).await {
                Ok(()) => match conn.ctx().execute(sql).await {
                    Ok(()) => conn.commit(&[], None).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        } else {
            match conn.enter_autocommit(timeouts).await {
                Ok(()) => {
                    let result = conn.ctx().execute(sql).await;
                    let left = conn.leave_autocommit().await;
                    result.and(left)
                }
                Err(e) => Err(e),
            }
        };
        if let Err(error) = result {
            self.abandon(conn, &error).await;
            return Err(error);
        }
        Ok(())
    }

    /// Brings a locked target up to `to`, with the tenant hooks around its migrations:
    /// `before_tenant` once per claim, before the first migration (only when there is
    /// one to apply), and `after_tenant` at the end of the attempt that ends the claim,
    /// unless its connection was lost.
    #[allow(clippy::too_many_arguments)]
    async fn migrate_locked(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        record: Option<&TenantRecord>,
        state: &TargetState,
        to: Option<i64>,
        attempts: &Attempts,
        last: bool,
    ) -> Result<Claim<usize>> {
        if !state.registered {
            return Ok(Claim::Gone);
        }
        self.heal_registry(target, record, state).await;
        let hooks = target.tenant().is_some() && self.has_tenant_hooks();
        let began = hooks && attempts.hooks_began.load(Ordering::Relaxed);
        let committed = &attempts.committed;
        let failed = async |conn: &mut dyn Connection, error: &Error| {
            let outcome = TenantOutcome::Failed {
                error,
                applied: committed.load(Ordering::Relaxed),
                creating: false,
            };
            self.after_tenant_reported(conn, target, &outcome).await;
        };
        let steps = match plan_up(target, &state.applied, self.set, scope_of(target), to) {
            Ok(steps) => steps,
            Err(error) => {
                if began {
                    failed(conn, &error).await;
                }
                return Err(error);
            }
        };
        if steps.is_empty() && !began {
            return Ok(Claim::Done(0));
        }
        if hooks && !began {
            if let Err(before) = self.before_tenant(conn, target).await {
                if !before.lost {
                    failed(conn, &before.error).await;
                }
                return Err(before.error);
            }
            attempts.hooks_began.store(true, Ordering::Relaxed);
        }
        let before = Completed::of(state);
        let mut completed = Completed::of(state);
        let outcome = self
            .apply(conn, target, &mut completed, &steps, Direction::Up)
            .await;
        committed.fetch_add(completed.0.difference(&before.0).count(), Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                if hooks {
                    let outcome = TenantOutcome::Migrated {
                        applied: committed.load(Ordering::Relaxed),
                    };
                    self.after_tenant_reported(conn, target, &outcome).await;
                }
                Ok(Claim::Done(steps.len()))
            }
            Err((i, error)) => {
                // A lost connection was discarded; a failure that is retried gets its
                // hooks at the end of the attempt that ends the claim.
                let lost = self.backend.classify(&error) == ErrorClass::ConnectionLost;
                let retried = !last && is_transient(self, &error);
                let error = wrap(target, steps[i], Direction::Up, error);
                if hooks && !lost && !retried {
                    failed(conn, &error).await;
                }
                Err(error)
            }
        }
    }

    /// Reverts migrations of a target whose lock `conn` holds, newest first; refuses
    /// before any change when an irreversible migration is in the way.
    pub(crate) async fn rollback_locked(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        record: Option<&TenantRecord>,
        how_far: RollbackTarget,
    ) -> Result<Vec<&'static Migration>> {
        let state = self.read_registered(conn, target).await?;
        self.heal_registry(target, record, &state).await;
        let steps = plan_down(target, &state.applied, self.set, scope_of(target), how_far)?;
        self.apply(
            conn,
            target,
            &mut Completed::of(&state),
            &steps,
            Direction::Down,
        )
        .await
        .map_err(|(i, e)| wrap(target, steps[i], Direction::Down, e))?;
        Ok(steps)
    }

    /// Reads a locked target; a tenant dropped meanwhile is an error.
    async fn read_registered(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
    ) -> Result<TargetState> {
        let state = conn.read().await?;
        match target {
            Target::Tenant(t) if !state.registered => Err(Error::TenantGone {
                tenant: t.name.clone(),
            }),
            _ => Ok(state),
        }
    }

    /// Records the code's checksum for each completed migration whose code changed;
    /// returns how many.
    pub(crate) async fn repair_checksums_locked(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
    ) -> Result<usize> {
        let state = self.read_registered(conn, target).await?;
        let mut records = Vec::new();
        for row in &state.applied {
            if let Some(m) = self.set.get(row.order) {
                if row.status == MigrationStatus::Completed && row.checksum != m.checksum() {
                    records.push(Record::Checksum {
                        order: row.order,
                        checksum: m.checksum(),
                    });
                }
            }
        }
        if records.is_empty() {
            return Ok(0);
        }
        let changed = records.len();
        if self.registry_in_transaction(target) {
            records.push(Record::Registry {
                clear_failure: false,
            });
        }
        self.commit_or_roll_back(conn, &records).await?;
        Ok(changed)
    }

    /// Sets the tracking status of one migration without running it (`repair --mark`).
    pub(crate) async fn mark_locked(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        migration: &'static Migration,
        status: MigrationStatus,
    ) -> Result<()> {
        if migration.scope() != scope_of(target) {
            return Err(Error::Invalid(format!(
                "migration {migration} is a {} migration; it cannot be marked in {target}",
                migration.scope()
            )));
        }
        let state = self.read_registered(conn, target).await?;
        let row = state.applied.iter().find(|r| r.order == migration.order());
        if status == MigrationStatus::Completed && row.is_none() {
            return Err(Error::Invalid(format!(
                "migration {migration} never ran in {target}; marking it completed would skip it for good, so nothing was changed"
            )));
        }
        let mut records = vec![Record::Marked { migration, status }];
        if self.registry_in_transaction(target) {
            records.push(Record::Registry {
                clear_failure: true,
            });
        }
        self.commit_or_roll_back(conn, &records).await?;
        let mut completed = Completed::of(&state);
        completed.0.remove(&migration.order());
        if status == MigrationStatus::Completed {
            completed.0.insert(migration.order());
        }
        self.after_commit(target, &completed).await;
        Ok(())
    }

    async fn commit_or_roll_back(
        &self,
        conn: &mut dyn Connection,
        records: &[Record<'_>],
    ) -> Result<()> {
        if let Err(error) = conn.commit(records, None).await {
            self.abandon(conn, &error).await;
            return Err(error);
        }
        Ok(())
    }

    /// Ends whatever transaction a failure left: a lost connection is discarded, any
    /// other rolled back.
    async fn abandon(&self, conn: &mut dyn Connection, error: &Error) {
        if self.backend.classify(error) == ErrorClass::ConnectionLost {
            conn.discard();
        } else {
            conn.rollback().await;
        }
    }

    /// Runs the `direction` functions of `steps` in order on a locked target and records
    /// them, stopping at the first failure, whose index it returns with the error.
    pub(crate) async fn apply(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        completed: &mut Completed,
        steps: &[&'static Migration],
        direction: Direction,
    ) -> std::result::Result<(), (usize, Error)> {
        let mut pending: Option<Pending> = None;
        let mut i = 0;
        while i < steps.len() {
            let migration = steps[i];
            if self.caps.transactional_ddl && migration.is_transactional() {
                let together = match (direction, self.transactions) {
                    (Direction::Up, Transactions::PerTenant) => steps[i..]
                        .iter()
                        .take_while(|m| m.is_transactional())
                        .count(),
                    _ => 1,
                };
                let batch = &steps[i..i + together];
                self.run_transaction(
                    conn,
                    target,
                    i,
                    batch,
                    direction,
                    &mut pending,
                    completed,
                    Parts::plain(),
                )
                .await?;
                i += together;
            } else {
                self.run_chained(
                    conn,
                    target,
                    i,
                    migration,
                    direction,
                    &mut pending,
                    completed,
                )
                .await?;
                i += 1;
            }
        }
        if let Some(last) = pending.take() {
            let records = self.finished_records(target, &last, direction);
            if let Err(error) = conn.commit(&records, None).await {
                return Err((
                    last.index,
                    self.fail(
                        conn,
                        target,
                        last.migration,
                        direction,
                        error,
                        last.timing,
                        completed,
                    )
                    .await,
                ));
            }
            completed.note(last.migration, direction);
            self.committed(target, last.migration, direction, last.timing);
            self.after_commit(target, completed).await;
        }
        Ok(())
    }

    /// The records of a chained migration that finished, with the registry row.
    fn finished_records(
        &self,
        target: Target<'_>,
        done: &Pending,
        direction: Direction,
    ) -> Vec<Record<'static>> {
        let mut records = vec![Record::Finished {
            migration: done.migration,
            direction,
            timing: done.timing,
        }];
        if self.registry_in_transaction(target) {
            records.push(Record::Registry {
                clear_failure: true,
            });
        }
        records
    }

    /// Runs `batch` (transactional migrations, on an engine with transactional DDL) in
    /// one transaction with their records, the registry row, and `finish` (the records
    /// `tenant create` adds); `prelude` is written first, in the transaction. On a failure
    /// nothing of the batch stays, and the failed migration is recorded `failed`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_transaction(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        first_index: usize,
        batch: &[&'static Migration],
        direction: Direction,
        pending: &mut Option<Pending>,
        completed: &mut Completed,
        parts: Parts<'_>,
    ) -> std::result::Result<(), (usize, Error)> {
        let Parts {
            prelude,
            finish,
            record_failure,
        } = parts;
        let functions = batch
            .iter()
            .enumerate()
            .map(|(k, m)| {
                m.function(direction, target)
                    .map_err(|e| (first_index + k, e))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut timeouts = self.timeouts_of(batch[0]);
        // A chained migration's `completed` record commits with the opening of this
        // transaction: one round trip.
        let opened = match pending.take() {
            Some(done) => {
                let records = self.finished_records(target, &done, direction);
                match conn.commit(&records, Some(timeouts)).await {
                    Ok(()) => {
                        completed.note(done.migration, direction);
                        self.committed(target, done.migration, direction, done.timing);
                        self.after_commit(target, completed).await;
                        Ok(())
                    }
                    Err(error) => {
                        let error = self
                            .fail(
                                conn,
                                target,
                                done.migration,
                                direction,
                                error,
                                done.timing,
                                completed,
                            )
                            .await;
                        return Err((done.index, error));
                    }
                }
            }
            None => conn.begin(timeouts).await,
        };
        let opened = match opened {
            Ok(()) if !prelude.is_empty() => conn.write(prelude).await,
            other => other,
        };
        if let Err(error) = opened {
            // Nothing ran: nothing to record.
            self.abandon(conn, &error).await;
            return Err((first_index, error));
        }
        let mut timings = Vec::with_capacity(batch.len());
        let mut failure = None;
        for (k, (&migration, function)) in batch.iter().zip(functions).enumerate() {
            let wanted = self.timeouts_of(migration);
            if wanted != timeouts {
                if let Err(error) = conn.set_timeouts(wanted).await {
                    failure = Some((k, error, Instant::now()));
                    break;
                }
                timeouts = wanted;
            }
            let started = Instant::now();
            if let Err(error) = invoke(function, &mut conn.ctx().watched(self.identity_read))
                .instrument(migration_span(target, migration, direction))
                .await
            {
                failure = Some((k, error, started));
                break;
            }
            timings.push(Timing {
                started,
                finished: Instant::now(),
            });
        }
        if failure.is_none() {
            let mut records: Vec<Record<'_>> = batch
                .iter()
                .zip(&timings)
                .map(|(&migration, &timing)| Record::Finished {
                    migration,
                    direction,
                    timing,
                })
                .collect();
            if self.registry_in_transaction(target) {
                records.push(Record::Registry {
                    clear_failure: true,
                });
            }
            records.extend_from_slice(finish);
            if let Err(error) = conn.commit(&records, None).await {
                // A deferred constraint of one of them, or the connection: the last one
                // is named, as the commit came after it.
                let started = timings.last().map_or_else(Instant::now, |t| t.started);
                failure = Some((batch.len() - 1, error, started));
            }
        }
        let Some((k, error, started)) = failure else {
            for (&migration, &timing) in batch.iter().zip(&timings) {
                completed.note(migration, direction);
                self.committed(target, migration, direction, timing);
            }
            self.after_commit(target, completed).await;
            return Ok(());
        };
        if !record_failure {
            self.abandon(conn, &error).await;
            return Err((first_index + k, error));
        }
        let timing = Timing {
            started,
            finished: Instant::now(),
        };
        let error = self
            .fail(conn, target, batch[k], direction, error, timing, completed)
            .await;
        Err((first_index + k, error))
    }

    /// Runs one migration through the started / completed chain: outside a transaction,
    /// or on an engine whose DDL commits at once. Its `completed` record is left in
    /// `pending`, to travel with the next commit.
    #[allow(clippy::too_many_arguments)]
    async fn run_chained(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        index: usize,
        migration: &'static Migration,
        direction: Direction,
        pending: &mut Option<Pending>,
        completed: &mut Completed,
    ) -> std::result::Result<(), (usize, Error)> {
        let function = migration
            .function(direction, target)
            .map_err(|e| (index, e))?;
        let timeouts = self.timeouts_of(migration);
        let in_transaction = migration.is_transactional();
        let previous = pending.take();
        let mut records = match &previous {
            Some(done) => self.finished_records(target, done, direction),
            None => Vec::new(),
        };
        records.push(Record::Started {
            migration,
            direction,
        });
        if direction == Direction::Down && self.registry_in_transaction(target) {
            // The row leaves `completed`: the registry's newest completed order follows.
            records.push(Record::Registry {
                clear_failure: false,
            });
        }
        if let Err(error) = conn
            .commit(&records, in_transaction.then_some(timeouts))
            .await
        {
            return Err(match previous {
                // The commit was the previous migration's `completed`.
                Some(done) => {
                    let error = self
                        .fail(
                            conn,
                            target,
                            done.migration,
                            direction,
                            error,
                            done.timing,
                            completed,
                        )
                        .await;
                    (done.index, error)
                }
                // Nothing ran and nothing was recorded: no failure to note.
                None => {
                    self.abandon(conn, &error).await;
                    (index, error)
                }
            });
        }
        if let Some(done) = &previous {
            completed.note(done.migration, direction);
            self.committed(target, done.migration, direction, done.timing);
        }
        if direction == Direction::Down {
            completed.note(migration, Direction::Down);
        }
        if previous.is_some() || direction == Direction::Down {
            self.after_commit(target, completed).await;
        }
        let started = Instant::now();
        let mut result = Ok(());
        if !in_transaction {
            result = conn.enter_autocommit(timeouts).await;
        }
        if result.is_ok() {
            result = invoke(function, &mut conn.ctx().watched(self.identity_read))
                .instrument(migration_span(target, migration, direction))
                .await;
        }
        if !in_transaction {
            if result.is_ok() {
                // What the function left (PostgreSQL: no invalid index) before the row
                // can say `completed`.
                result = conn.verify_after_autocommit().await;
            }
            let left = conn.leave_autocommit().await;
            if result.is_ok() {
                result = left;
            }
        }
        let timing = Timing {
            started,
            finished: Instant::now(),
        };
        if let Err(error) = result {
            let error = self
                .fail(conn, target, migration, direction, error, timing, completed)
                .await;
            return Err((index, error));
        }
        *pending = Some(Pending {
            index,
            migration,
            timing,
        });
        Ok(())
    }

    /// The one failure path: ends what the failure left open, records the failure in the
    /// tracking rows and the registry (best effort: the migration's error matters more
    /// than a failed bookkeeping write), and hands the error back.
    ///
    /// A rolled-back transactional migration is recorded `failed`; a chained one stays
    /// `started`, with the error, since what it did is unknown. A lost connection can
    /// record nothing: it is discarded.
    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        migration: &'static Migration,
        direction: Direction,
        error: Error,
        timing: Timing,
        completed: &Completed,
    ) -> Error {
        if self.backend.classify(&error) == ErrorClass::ConnectionLost {
            conn.discard();
            return error;
        }
        // A transaction the migration left open would swallow the bookkeeping.
        conn.rollback().await;
        let rolled_back = self.caps.transactional_ddl && migration.is_transactional();
        if rolled_back && direction == Direction::Down {
            // The row is `completed` again, as before the attempt.
            return error;
        }
        // A function that returned, and whose result the engine's check refused (an
        // invalid index), did all it does: nothing was cut short, so its row is `failed`,
        // and the next run tries it again (once the error's fix is applied).
        let refused = matches!(error, Error::InvalidIndex { .. });
        let status = if rolled_back || refused {
            MigrationStatus::Failed
        } else {
            MigrationStatus::Started
        };
        let message = error.to_string();
        let mut records = vec![Record::Failed {
            migration,
            status,
            error: &message,
            timing,
        }];
        if self.registry_in_transaction(target) {
            records.push(Record::RegistryFailure {
                order: migration.order(),
                error: &message,
            });
        }
        if let Err(e) = conn.commit(&records, None).await {
            tracing::warn!("could not record the failure of {migration} in {target}: {e}");
            self.abandon(conn, &e).await;
        }
        if let Target::Tenant(tenant) = target {
            if !self.caps_for(target).registry_in_target_transaction {
                let row = RegistryRow {
                    applied_order: completed.newest(),
                    failure: Some((migration.order(), &message)),
                };
                if let Err(e) = self.backend.write_registry(tenant, row).await {
                    tracing::warn!(tenant = %tenant.name, "could not record the failure of {migration} in the tenant registry: {e}");
                }
            }
        }
        error
    }

    /// After a commit that changed a tenant's completed migrations, where the registry is
    /// a cache: its summary follows (a failed write is logged; the next run heals it).
    async fn after_commit(&self, target: Target<'_>, completed: &Completed) {
        let Target::Tenant(tenant) = target else {
            return;
        };
        if self.caps_for(target).registry_in_target_transaction {
            return;
        }
        let row = RegistryRow {
            applied_order: completed.newest(),
            failure: None,
        };
        if let Err(e) = self.backend.write_registry(tenant, row).await {
            tracing::warn!(tenant = %tenant.name, "could not update the tenant registry after a commit (the next run corrects it): {e}");
        }
    }

    /// Where the registry is a cache, brings a tenant's row in line with the tracking
    /// rows read under the lock, when an earlier run could not write it after its commit.
    async fn heal_registry(
        &self,
        target: Target<'_>,
        record: Option<&TenantRecord>,
        state: &TargetState,
    ) {
        let (Target::Tenant(tenant), Some(record)) = (target, record) else {
            return;
        };
        if self.caps_for(target).registry_in_target_transaction {
            return;
        }
        let completed = Completed::of(state);
        let truth = completed.newest();
        // A recorded failure of a migration that has completed since is cleared too.
        let failure_done = record
            .failed_order
            .is_some_and(|f| completed.0.contains(&f));
        if record.applied_order == truth && !failure_done {
            return;
        }
        let failure = match (failure_done, record.failed_order) {
            (false, Some(order)) => Some((order, record.last_error.as_deref().unwrap_or(""))),
            _ => None,
        };
        let row = RegistryRow {
            applied_order: truth,
            failure,
        };
        if let Err(e) = self.backend.write_registry(tenant, row).await {
            tracing::warn!(tenant = %tenant.name, "could not heal the tenant registry: {e}");
        }
    }
}
