//! How a fleet run rolls out: canary tenants first and alone, then waves with a soak pause
//! between them, an error budget that stops new tenants once spent, and which tenants
//! (only the failed ones) in which order.

use std::time::Duration;

use crate::TenantName;

/// Tenants that go first, alone: a failure among them stops the run before any other
/// tenant starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Canary {
    /// No canary.
    #[default]
    None,
    /// The first N tenants of the run's order.
    First(usize),
    /// These tenants.
    Tenants(Vec<TenantName>),
    /// The first N tenants of each server, in the run's order: a migration that breaks
    /// on one server's version or settings stops the run there.
    PerServer(usize),
}

/// How many tenants one wave holds.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum WaveSize {
    /// This many tenants.
    Tenants(usize),
    /// This percentage (0 < p <= 100) of the run's tenants, rounded up.
    Percent(f64),
}

impl WaveSize {
    /// Parses `100` or `10%`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid wave size {text:?}: give a number of tenants (100) or a percentage (10%)"
            )
        };
        match text.strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(WaveSize::Percent(p)),
                _ => Err(bad()),
            },
            None => match text.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(WaveSize::Tenants(n)),
                _ => Err(bad()),
            },
        }
    }

    /// The tenants of one wave of a run over `total` tenants (at least 1).
    pub fn of(self, total: usize) -> usize {
        match self {
            WaveSize::Tenants(n) => n.max(1),
            WaveSize::Percent(p) => ((total as f64 * p / 100.0).ceil() as usize).max(1),
        }
    }
}

/// The order tenants are taken in; stable from run to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TenantOrder {
    /// By name (the default; the registry is read page by page, so memory stays flat).
    #[default]
    Name,
    /// Oldest first, by the registry's creation time.
    Created,
    /// Smallest first, by the tenant's size on disk where the engine can tell
    /// ([`Backend::tenant_sizes`](crate::Backend::tenant_sizes): a PostgreSQL schema's
    /// tables, a database, a SQLite file), read for all tenants in one query where it
    /// can; ties, and tenants it cannot size (counted as 0), by name.
    Size,
}

/// The rollout of one fleet run (see [`MigrateOptions`](crate::MigrateOptions)).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Rollout {
    /// Tenants first and alone.
    pub canary: Canary,
    /// The rest in waves of this size; `None`: all at once.
    pub wave_size: Option<WaveSize>,
    /// The soak pause between two waves.
    pub wave_pause: Duration,
    /// Start no tenant once this many have failed.
    pub max_failures: Option<usize>,
    /// Start no tenant once failures exceed this percentage of the run's tenants.
    pub max_failure_rate: Option<f64>,
    /// Only the tenants whose last attempt failed.
    pub only_failed: bool,
    /// Only the tenants placed on these servers (a fleet over several servers); empty:
    /// every server.
    pub servers: Vec<crate::ServerName>,
    /// The order tenants are taken in.
    pub order_by: TenantOrder,
}

impl Rollout {
    /// Whether the run takes the tenant of `record` by its selection: only failed ones,
    /// only those of some servers.
    pub(crate) fn takes(&self, record: &crate::TenantRecord) -> bool {
        (!self.only_failed || record.failed_order.is_some())
            && (self.servers.is_empty()
                || self.servers.iter().any(|s| match &record.tenant.server {
                    Some(on) => on == s,
                    None => s.is_default(),
                }))
    }

    /// How many failures the run may have in all over `total` tenants; `None`: no limit.
    pub(crate) fn budget(&self, total: usize) -> Option<usize> {
        let by_rate = self
            .max_failure_rate
            .map(|p| ((total as f64 * p / 100.0).floor() as usize).max(1));
        match (self.max_failures, by_rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the run has to hold its tenants in memory (waves, an order other than by
    /// name, named canaries) instead of streaming the registry page by page.
    pub(crate) fn needs_waves(&self) -> bool {
        self.wave_size.is_some()
            || self.order_by != TenantOrder::Name
            || self.canary != Canary::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_sizes() {
        assert_eq!(WaveSize::parse("10%"), Ok(WaveSize::Percent(10.0)));
        assert_eq!(WaveSize::parse("100"), Ok(WaveSize::Tenants(100)));
        assert!(WaveSize::parse("0").is_err());
        assert!(WaveSize::parse("101%").is_err());
        assert!(WaveSize::parse("x").is_err());
        assert_eq!(WaveSize::Percent(10.0).of(10_000), 1000);
        assert_eq!(WaveSize::Percent(10.0).of(5), 1);
    }

    #[test]
    fn budgets() {
        let rollout = Rollout {
            max_failure_rate: Some(1.0),
            ..Rollout::default()
        };
        assert_eq!(rollout.budget(10_000), Some(100));
        assert_eq!(rollout.budget(10), Some(1));
        let both = Rollout {
            max_failures: Some(2),
            ..rollout
        };
        assert_eq!(both.budget(10_000), Some(2));
        assert_eq!(Rollout::default().budget(10), None);
    }
}
