use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::control::{RunControl, Transactions};
use crate::{
    AppliedMigration, Engine, Error, Migration, MigrationStatus, Progress, Result, Tenancy, Tenant,
    TenantName, TenantRecord,
};

/// What a session or a migration works on: the shared control schema, or one tenant.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// The control schema (or control database) that public migrations change.
    Public,
    /// One tenant.
    Tenant(&'a Tenant),
}

impl<'a> Target<'a> {
    /// The tenant, unless this is the public target.
    pub fn tenant(self) -> Option<&'a Tenant> {
        match self {
            Target::Public => None,
            Target::Tenant(t) => Some(t),
        }
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Public => f.write_str("the public schema"),
            Target::Tenant(t) => write!(f, "tenant {}", t.name),
        }
    }
}

/// Up or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Apply.
    Up,
    /// Revert.
    Down,
}

/// The engine-specific half of mtnt: bookkeeping tables, tenants and sessions.
///
/// The planner, executor, reports and CLI are written once against this trait;
/// a store mtnt does not ship can be supported by implementing it (and [`Session`])
/// outside the crate and handing it to [`Migrator::builder`](crate::Migrator::builder).
#[async_trait]
pub trait Backend: Send + Sync {
    /// The engine.
    fn engine(&self) -> Engine;

    /// How tenants are isolated.
    fn tenancy(&self) -> Tenancy;

    /// Creates mtnt's control tables (tenant registry, public tracking table) if missing.
    async fn prepare(&self) -> Result<()>;

    /// Registered tenants ordered by name, after `after`, at most `limit`.
    async fn tenant_page(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>>;

    /// How many tenants are registered.
    async fn tenant_count(&self) -> Result<u64>;

    /// The registry rows of the named tenants; names that are not registered are left out.
    async fn tenant_records(&self, names: &[TenantName]) -> Result<Vec<TenantRecord>>;

    /// The [`fingerprint`](crate::fingerprint)s of the completed migrations of the named
    /// tenants, as their registry rows recorded them; tenants without one are left out.
    ///
    /// A fleet run skips, without a session, every tenant whose recorded fingerprint says
    /// it is up to date and that has no recorded failure. A backend that returns them must
    /// therefore keep each in line with the tenant's tracking table: written in the same
    /// transaction as every change of the completed rows (apply, revert, `mark`,
    /// `set_checksum`, create, adopt), or, where the registry cannot join that transaction,
    /// cleared before a change that could make an older fingerprint look current (a
    /// revert, a mark, a checksum repair) and written after it. The default returns none:
    /// every tenant gets a session.
    async fn fingerprints(&self, names: &[TenantName]) -> Result<Vec<(TenantName, String)>> {
        let _ = names;
        Ok(Vec::new())
    }

    /// How many sessions can be open at once without waiting for a connection: the
    /// pool's size less one (for reading the registry while sessions run), and no more
    /// than the server has connections free. `None`: no such limit is known. A fleet run
    /// lowers its concurrency to this.
    async fn session_budget(&self) -> Result<Option<usize>> {
        Ok(None)
    }

    /// Opens a session that runs the migrations of one target on one connection.
    async fn session<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Session + 'a>>;

    /// Registers a tenant, creates its schema (database, file) and its tracking table, and
    /// applies `migrations` (all transactional), all or nothing: on failure nothing of the
    /// tenant is left. With `activate` the tenant is `active` when this returns, otherwise
    /// it stays `creating` until [`Backend::activate_tenant`].
    async fn create_tenant(
        &self,
        tenant: &Tenant,
        migrations: &[&'static Migration],
        activate: bool,
    ) -> Result<()>;

    /// Marks a tenant made by [`Backend::create_tenant`] as `active`.
    async fn activate_tenant(&self, tenant: &Tenant) -> Result<()>;

    /// Removes a tenant: its schema (database, file) with all its data, and its registry row.
    async fn drop_tenant(&self, tenant: &Tenant) -> Result<()>;

    /// Registers existing schemas (databases, files) whose names match the SQL `LIKE`
    /// pattern and are not registered yet, creates their tracking tables and records
    /// `baseline` as completed in them (the migrations the schemas already reflect).
    /// Names that are not valid tenant names are skipped and returned as the second list.
    async fn adopt(
        &self,
        like: &str,
        baseline: &[&'static Migration],
    ) -> Result<(Vec<Tenant>, Vec<String>)>;

    /// The run leases and preflight checks of the control schema, if the backend keeps
    /// them; without, runs take no lease (see the README section "Safety").
    fn run_control(&self) -> Option<Arc<dyn RunControl>> {
        None
    }

    /// [`Backend::adopt`], telling `progress` about each tenant as it is registered (for
    /// the progress bar of `tenant adopt`). The default reports them all once `adopt`
    /// returns.
    async fn adopt_with_progress(
        &self,
        like: &str,
        baseline: &[&'static Migration],
        progress: &dyn Progress,
    ) -> Result<(Vec<Tenant>, Vec<String>)> {
        let (adopted, skipped) = self.adopt(like, baseline).await?;
        progress.start(adopted.len() as u64);
        for tenant in &adopted {
            progress.tenant_done(&tenant.name, Ok(baseline.len()));
        }
        Ok((adopted, skipped))
    }
}

/// One connection working on one target.
#[async_trait]
pub trait Session: Send {
    /// The rows of the target's tracking table, by order (creating the table if missing).
    async fn applied(&mut self) -> Result<Vec<AppliedMigration>>;

    /// Waits until no other run works on this target, and keeps it for this session (until
    /// it is dropped), so that concurrent runs (two deploys) take turns instead of applying
    /// one migration twice. Callers lock, then read [`Session::applied`] again to plan.
    /// Idempotent; the default does nothing (for engines that serialise otherwise).
    async fn lock(&mut self) -> Result<()> {
        Ok(())
    }

    /// Takes the target's lock like [`Session::lock`] if no other run holds it, without
    /// waiting; returns whether it is held now. A fleet run skips a tenant another runner
    /// holds and comes back to it at the end. The default waits ([`Session::lock`]).
    async fn try_lock(&mut self) -> Result<bool> {
        self.lock().await.map(|()| true)
    }

    /// [`Session::try_lock`], then, if the lock is held, [`Session::applied`] read under
    /// it; `None` when another run holds the target. A backend may do both in one round
    /// trip.
    async fn try_lock_applied(&mut self) -> Result<Option<Vec<AppliedMigration>>> {
        if !self.try_lock().await? {
            return Ok(None);
        }
        self.applied().await.map(Some)
    }

    /// Runs one migration's up or down function and records it, atomically where the
    /// engine allows: on error the target is left at the previous migration and the
    /// tracking row says `failed` with the error.
    async fn apply(&mut self, migration: &'static Migration, direction: Direction) -> Result<()>;

    /// How this session groups a target's pending migrations into transactions
    /// ([`Session::apply_up`]); the default, for engines that cannot group them:
    /// [`Transactions::PerMigration`].
    fn transactions(&self) -> Transactions {
        Transactions::PerMigration
    }

    /// Runs the up functions of `migrations` in order and records them, stopping at the
    /// first failure, whose index it returns with the error. With
    /// [`Transactions::PerTenant`] consecutive transactional migrations go to
    /// [`Session::apply_together`], so that a failure also undoes the ones before it in
    /// that transaction; the others to [`Session::apply`], one by one.
    async fn apply_up(
        &mut self,
        migrations: &[&'static Migration],
    ) -> std::result::Result<(), (usize, Error)> {
        let mut i = 0;
        while i < migrations.len() {
            let together = match self.transactions() {
                Transactions::PerTenant => migrations[i..]
                    .iter()
                    .take_while(|m| m.is_transactional())
                    .count(),
                _ => 0,
            };
            if together == 0 {
                self.apply(migrations[i], Direction::Up)
                    .await
                    .map_err(|e| (i, e))?;
                i += 1;
            } else {
                self.apply_together(&migrations[i..i + together])
                    .await
                    .map_err(|(k, e)| (i + k, e))?;
                i += together;
            }
        }
        Ok(())
    }

    /// Runs the up functions of `batch`, transactional migrations, in one transaction
    /// with their tracking rows, for [`Session::apply_up`]; on a failure nothing of
    /// `batch` stays applied, the failed migration is recorded, and its index returned.
    /// The default applies each on its own.
    async fn apply_together(
        &mut self,
        batch: &[&'static Migration],
    ) -> std::result::Result<(), (usize, Error)> {
        for (i, &migration) in batch.iter().enumerate() {
            self.apply(migration, Direction::Up)
                .await
                .map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Overwrites the recorded checksum of an applied migration (`repair --checksums`).
    async fn set_checksum(&mut self, order: i64, checksum: &str) -> Result<()>;

    /// Sets the status of a tracking row (`repair --mark`).
    async fn mark(&mut self, migration: &'static Migration, status: MigrationStatus) -> Result<()>;
}
