use std::time::Duration;

use crate::{Error, Migration, TenantName};

/// Hears about a fleet run as it goes; the CLI draws a progress bar with it.
pub trait Progress: Send + Sync {
    /// The fleet run's id, as the tracking rows it writes and its lease record it
    /// (`status --run ID`), before it changes anything.
    fn run_id(&self, _run_id: &str) {}
    /// The run starts on `total` tenants.
    fn start(&self, _total: u64) {}
    /// Work on a tenant begins: its connection and lock are next. Tenants whose registry
    /// row proves them current are not started (only [`Progress::tenant_done`]).
    fn tenant_started(&self, _tenant: &TenantName) {}
    /// A migration of `tenant` (`None`: the public schema) is committed: applied, or
    /// reverted when `reverted`; its function ran for `elapsed`.
    fn migration_done(
        &self,
        _tenant: Option<&TenantName>,
        _migration: &Migration,
        _reverted: bool,
        _elapsed: Duration,
    ) {
    }
    /// A tenant is done: `Ok(n)` with the migrations it applied (or reverted), or its error.
    fn tenant_done(&self, _tenant: &TenantName, _outcome: Result<usize, &Error>) {}
    /// A wave of `tenants` starts: number 0 is the canary, then 1 to `waves`.
    fn wave(&self, _number: usize, _waves: usize, _tenants: usize) {}
    /// The soak pause after wave `after` (0: the canary) is left out: that wave changed
    /// nothing, every tenant of it being current already (a re-run going over the waves
    /// an earlier run finished).
    fn pause_skipped(&self, _after: usize) {}
    /// An attempt on `target` failed transiently (`error`); attempt `attempt + 1` of
    /// `attempts` follows after `pause`.
    fn retrying(
        &self,
        _target: &str,
        _attempt: u32,
        _attempts: u32,
        _error: &Error,
        _pause: Duration,
    ) {
    }
    /// Something the run changed on its own that the user should hear of (its
    /// concurrency lowered to the connections the server has free).
    fn warning(&self, _message: &str) {}
    /// The run is over.
    fn finish(&self) {}
}

/// No progress output.
pub(crate) struct Silent;

impl Progress for Silent {}
