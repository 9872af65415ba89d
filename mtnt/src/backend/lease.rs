//! Run leases in the control schema: who runs (host, pid, start, heartbeat), so that
//! `status` can say so, a runner that lost the database stops itself, and a runner that
//! went silent is taken over; and the check a run makes before it changes anything.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Seconds since its last heartbeat, by the database server's clock.
    pub silent_secs: f64,
    /// A `running` lease whose heartbeat is older than the unlock deadline: its runner
    /// died without ending it (`kill -9`, a lost machine) or lost the database. It runs
    /// nothing; the next run takes the lease over. Set by
    /// [`Migrator::running`](crate::Migrator::running).
    pub stale: bool,
}

/// The heartbeat's answer.
#[derive(Debug, Default)]
pub struct Heartbeat {
    /// Whether the lease is still this runner's (false: it was taken over).
    pub held: bool,
    /// Stale leases of other runners this heartbeat took over.
    pub taken_over: Vec<RunLease>,
}

/// Run leases and the preflight check, for engines that keep them (PostgreSQL).
///
/// Leases are not exclusive: every runner of a fleet holds one, so that `mtnt status`
/// can say who is running and a runner that lost the database stops itself. What keeps
/// two runners off one tenant is the tenant's own lock.
#[async_trait]
pub trait LeaseStore: Send + Sync {
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
        let nonce = (random_fraction() * 1e9) as u64;
        let tail = format!(" {} {nonce:x}", std::process::id());
        let host: String = host_name()
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(63 - 5 - tail.len())
            .collect();
        format!("mtnt {host}{tail}")
    })
}

/// A number in [0, 1) that differs between calls, processes and hosts; jitter and
/// nonces need no more than that.
pub(crate) fn random_fraction() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        ^ nanos
        ^ (u64::from(std::process::id()) << 32);
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}
