//! Run bookkeeping in the control schema: the leases of running runners, and the
//! checks a run makes before it changes anything.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Result, TenantName};

/// Who a runner is, as its lease records it.
#[derive(Clone, Debug)]
pub struct RunIdentity {
    /// Unique per run.
    pub run_id: String,
    /// The machine (pod) name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// What it runs (`migrate`); never its arguments, which may hold a password.
    pub command: String,
    /// The tag its database connections carry (PostgreSQL `application_name`), so that a
    /// runner that took over its lease can end them.
    pub connection_tag: String,
}

/// One row of the lease table: a runner that is (or was) running.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RunLease {
    /// The run.
    pub run_id: String,
    /// Its machine.
    pub host: String,
    /// Its process id.
    pub pid: i64,
    /// Its command.
    pub command: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// `running`, `finished`, `failed`, `lost` (it stopped itself) or `taken_over`.
    pub state: String,
    /// The run that took its lease over, if one did.
    pub taken_over_by: Option<String>,
}

/// The heartbeat's answer.
#[derive(Debug, Default)]
pub struct Heartbeat {
    /// Whether the lease is still this runner's (false: it was taken over).
    pub held: bool,
    /// Stale leases of other runners this heartbeat took over.
    pub taken_over: Vec<RunLease>,
}

/// Run leases and preflight checks, for backends that keep them (PostgreSQL).
///
/// Leases are not exclusive: every runner of a fleet holds one, so that `mtnt status`
/// can say who is running and a runner that lost the database stops itself. What keeps
/// two runners off one tenant is the tenant's own lock.
#[async_trait]
pub trait RunControl: Send + Sync {
    /// Records a new running lease for `me`, first taking over every lease whose
    /// heartbeat is older than `stale_after`; returns those.
    async fn acquire(&self, me: &RunIdentity, stale_after: Duration) -> Result<Vec<RunLease>>;

    /// Refreshes `me`'s lease and takes over stale ones of others.
    async fn heartbeat(&self, me: &RunIdentity, stale_after: Duration) -> Result<Heartbeat>;

    /// Ends `me`'s lease with `state` (`finished`, `failed` or `lost`).
    async fn release(&self, me: &RunIdentity, state: &str) -> Result<()>;

    /// Ends the database sessions of runners whose leases were taken over, so that the
    /// tenant locks of a runner on a vanished machine are freed at once instead of when
    /// the server notices the dead connection. Returns how many sessions were ended.
    async fn end_sessions(&self, taken_over: &[RunLease]) -> Result<u64>;

    /// The leases of running runners, oldest first.
    async fn running(&self) -> Result<Vec<RunLease>>;

    /// A tenant (among `only`, or all when empty) whose newest applied migration is none
    /// of `known`: the database is ahead of this binary. Returns the tenant, the order
    /// and its recorded name.
    async fn ahead_of_code(
        &self,
        known: &[i64],
        only: &[TenantName],
    ) -> Result<Option<(TenantName, i64, String)>>;
}

/// This machine's name: `HOSTNAME` (a Kubernetes pod's name), else `/etc/hostname`.
pub(crate) fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The tag this process's tenant sessions carry (PostgreSQL `application_name`, at most
/// 63 bytes): `mtnt <host> <pid> <nonce>`, the same for every run of the process.
pub(crate) fn connection_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let nonce = (crate::migrate::random_fraction() * 1e9) as u64;
        let tail = format!(" {} {nonce:x}", std::process::id());
        let host: String = host_name()
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(63 - 5 - tail.len())
            .collect();
        format!("mtnt {host}{tail}")
    })
}

/// The lock timeout and statement timeout each migration runs with, unless its
/// attribute says otherwise (`lock_timeout = "..."`, `statement_timeout = "..."`).
///
/// Defaults: lock timeout 5 s, no statement timeout. `Some(Duration::ZERO)` and `None`
/// both mean no limit. PostgreSQL only, for now.
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
/// is transactional (PostgreSQL and SQLite; MySQL commits each DDL statement, so it runs
/// each migration on its own).
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
