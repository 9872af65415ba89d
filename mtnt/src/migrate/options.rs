use std::time::Duration;

use super::rollout::Rollout;
use super::Shard;
use crate::TenantName;

/// What [`Migrator::migrate`](crate::Migrator::migrate) does.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct MigrateOptions {
    /// Only these tenants (after the public migrations); empty means every tenant.
    pub tenants: Vec<TenantName>,
    /// Stop at this order (inclusive) instead of the newest migration.
    pub to: Option<i64>,
    /// Start no further tenant after the first failure.
    pub fail_fast: bool,
    /// Only the tenants of this static part of the fleet (`--shard I/N`).
    pub shard: Option<Shard>,
    /// Canary, waves, error budget, selection and order of the tenants.
    pub rollout: Rollout,
}

impl MigrateOptions {
    /// Every tenant, up to the newest migration, continuing past failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only these tenants.
    pub fn tenants(mut self, tenants: impl IntoIterator<Item = TenantName>) -> Self {
        self.tenants = tenants.into_iter().collect();
        self
    }

    /// Stop at this order (inclusive), written as in the attribute; an
    /// [`Order`](crate::Order) parsed from text gives its digits with `get()`.
    ///
    /// ```
    /// use mtnt::{MigrateOptions, Order};
    ///
    /// let options = MigrateOptions::new().to(2024_01_01_0002);
    /// assert_eq!(options.to, Some(2024_01_01_0002));
    /// let order: Order = "2024_01_01_0002".parse()?;
    /// assert_eq!(MigrateOptions::new().to(order.get()).to, Some(2024_01_01_0002));
    /// # Ok::<(), mtnt::OrderError>(())
    /// ```
    pub fn to(mut self, order: i64) -> Self {
        self.to = Some(order);
        self
    }

    /// Start no further tenant after the first failure.
    pub fn fail_fast(mut self, yes: bool) -> Self {
        self.fail_fast = yes;
        self
    }

    /// Only the tenants of this shard.
    pub fn shard(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }

    /// How the run rolls out over the fleet.
    pub fn rollout(mut self, rollout: Rollout) -> Self {
        self.rollout = rollout;
        self
    }

    /// Only the tenants placed on these servers ([`Rollout::servers`]); call it after
    /// [`MigrateOptions::rollout`], which sets them too.
    pub fn servers(mut self, servers: impl IntoIterator<Item = crate::ServerName>) -> Self {
        self.rollout.servers = servers.into_iter().collect();
        self
    }
}

/// How far [`Migrator::rollback`](crate::Migrator::rollback) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollbackTarget {
    /// Revert the newest N applied migrations.
    Steps(usize),
    /// Revert every applied migration newer than this order; the one at it stays.
    To(i64),
    /// Revert every applied migration.
    All,
}

/// The lock timeout and statement timeout each migration runs with, unless its
/// attribute says otherwise (`lock_timeout = "..."`, `statement_timeout = "..."`).
///
/// Defaults: lock timeout 5 s, no statement timeout. `Some(Duration::ZERO)` and `None`
/// both mean no limit. Engines apply what they can (PostgreSQL both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a statement waits for a table lock before failing (and being retried).
    pub lock: Option<Duration>,
    /// How long one statement may run.
    pub statement: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            lock: Some(Duration::from_secs(5)),
            statement: None,
        }
    }
}

/// How many of a tenant's pending migrations share a transaction, where the engine's DDL
/// is transactional (PostgreSQL and SQLite; MySQL commits each DDL statement, so each
/// migration goes through the started / completed chain).
///
/// [`PerTenant`](Self::PerTenant), the default, makes a tenant's whole upgrade atomic:
/// the tenant is either where it was or at the target, never in between, and a fleet run
/// costs one commit per tenant. A migration with `transaction = false` runs on its own
/// and splits the upgrade there. [`PerMigration`](Self::PerMigration) commits each
/// migration, so a failure keeps the ones before it, and holds each migration's locks
/// only as long as that migration runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transactions {
    /// One transaction for a tenant's consecutive transactional migrations.
    #[default]
    PerTenant,
    /// One transaction per migration.
    PerMigration,
}
