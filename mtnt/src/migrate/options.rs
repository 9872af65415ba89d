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

    /// Stop at this order.
    pub fn to(mut self, order: Option<i64>) -> Self {
        self.to = order;
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
