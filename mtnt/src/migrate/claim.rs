//! How a fleet run claims targets: a tenant another runner holds is skipped and come
//! back to at the end (waiting at most the unlock deadline), transient failures are
//! retried with backoff, and no tenant is started once the run must stop (its lease
//! was lost, or its deadline passed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lease::Lease;
use super::protocol::{Attempts, Claim, FleetOp, Protocol};
use super::retry::backoff;
use super::safety::{format_duration, SafetySettings, Shard};
use crate::backend::{Connection, ErrorClass, Target};
use crate::{Error, Result, TenantName, TenantRecord};

/// How many tenants a fleet run works on at once: its concurrency, lowered by one each
/// time the server refuses a connection ([`ErrorClass::TooManyConnections`]), down to one,
/// so that a server near `max_connections` gets fewer workers instead of every worker
/// retrying for connections it cannot give.
pub(crate) struct Workers {
    slots: tokio::sync::Semaphore,
    size: AtomicUsize,
    /// Slots to take out of use as their holders give them back.
    debt: AtomicUsize,
}

impl Workers {
    pub(crate) fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            slots: tokio::sync::Semaphore::new(size),
            size: AtomicUsize::new(size),
            debt: AtomicUsize::new(0),
        }
    }

    /// Waits for a free slot; the slot is given back when the returned guard drops.
    async fn slot(&self) -> Slot<'_> {
        Slot {
            permit: self.slots.acquire().await.ok(),
            workers: self,
        }
    }

    /// One worker fewer, unless only one is left; the new number of workers.
    fn shed(&self) -> Option<usize> {
        let mut size = self.size.load(Ordering::Relaxed);
        loop {
            if size <= 1 {
                return None;
            }
            match self
                .size
                .compare_exchange(size, size - 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => size = now,
            }
        }
        if self.slots.forget_permits(1) == 0 {
            self.debt.fetch_add(1, Ordering::Relaxed);
        }
        Some(size - 1)
    }
}

/// A slot of [`Workers`], held while a tenant is worked on.
struct Slot<'w> {
    permit: Option<tokio::sync::SemaphorePermit<'w>>,
    workers: &'w Workers,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let owed = self
            .workers
            .debt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
            .is_ok();
        if owed {
            if let Some(permit) = self.permit.take() {
                permit.forget();
            }
        }
    }
}

/// The state of one fleet run that the claim logic needs.
pub(crate) struct FleetClaims<'a> {
    settings: &'a SafetySettings,
    lease: Option<&'a Lease>,
    shard: Option<Shard>,
    started: Instant,
    deferred: Mutex<Vec<TenantRecord>>,
    workers: Workers,
}

impl<'a> FleetClaims<'a> {
    /// `concurrency`: tenants at once, at most.
    pub(crate) fn new(
        settings: &'a SafetySettings,
        lease: Option<&'a Lease>,
        shard: Option<Shard>,
        concurrency: usize,
    ) -> Self {
        Self {
            settings,
            lease,
            shard,
            started: Instant::now(),
            deferred: Mutex::new(Vec::new()),
            workers: Workers::new(concurrency),
        }
    }

    /// Why no further tenant may start, if it may not.
    pub(crate) fn stop_reason(&self) -> Option<String> {
        if let Some(why) = self.lease.and_then(Lease::lost) {
            return Some(why);
        }
        match self.settings.deadline {
            Some(deadline) if !deadline.is_zero() && self.started.elapsed() >= deadline => Some(
                format!("the run deadline of {} passed", format_duration(deadline)),
            ),
            _ => None,
        }
    }

    /// Whether this run migrates the tenant (`--shard`).
    pub(crate) fn owns(&self, tenant: &TenantName) -> bool {
        self.shard.is_none_or(|shard| shard.contains(tenant))
    }

    /// The first pass over a tenant: does `op` to it unless another runner holds it, in
    /// which case it is set aside for [`FleetClaims::take_deferred`].
    pub(crate) async fn first_pass(
        &self,
        protocol: &Protocol<'_>,
        record: &TenantRecord,
        op: FleetOp<'_>,
    ) -> Result<Claim<usize>> {
        let target = Target::Tenant(&record.tenant);
        let attempts = Attempts::default();
        let _slot = self.workers.slot().await;
        let claim = retried(
            protocol,
            self.settings,
            target,
            Some(&self.workers),
            |last| protocol.run_op(target, Some(record), op, &attempts, last),
        )
        .await?;
        let claim = counted(claim, &attempts);
        if let Claim::Busy = claim {
            tracing::debug!(tenant = %record.tenant.name, "held by another run; coming back to it");
            if let Ok(mut deferred) = self.deferred.lock() {
                deferred.push(record.clone());
            }
        }
        Ok(claim)
    }

    /// The tenants the first pass set aside.
    pub(crate) fn take_deferred(&self) -> Vec<TenantRecord> {
        self.deferred
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Does `op` to a tenant, waiting (try-lock with backoff) at most the unlock deadline
    /// while another run holds it. Usually that run has migrated it meanwhile, and there
    /// is nothing left to do.
    pub(crate) async fn waiting(
        &self,
        protocol: &Protocol<'_>,
        record: &TenantRecord,
        op: FleetOp<'_>,
    ) -> Result<Claim<usize>> {
        let _slot = self.workers.slot().await;
        waiting_with(
            protocol,
            Target::Tenant(&record.tenant),
            Some(record),
            op,
            self.settings,
            Some(&self.workers),
        )
        .await
    }
}

/// Does `op` to a target, waiting (try-lock with backoff) at most the unlock deadline
/// while another run holds it, with retries of transient failures. Never [`Claim::Busy`].
pub(crate) async fn run_waiting(
    protocol: &Protocol<'_>,
    target: Target<'_>,
    record: Option<&TenantRecord>,
    op: FleetOp<'_>,
    settings: &SafetySettings,
) -> Result<Claim<usize>> {
    waiting_with(protocol, target, record, op, settings, None).await
}

/// [`run_waiting`], lowering `workers` when the server refuses a connection.
async fn waiting_with(
    protocol: &Protocol<'_>,
    target: Target<'_>,
    record: Option<&TenantRecord>,
    op: FleetOp<'_>,
    settings: &SafetySettings,
    workers: Option<&Workers>,
) -> Result<Claim<usize>> {
    let mut wait = Wait::new(settings.unlock_deadline);
    let attempts = Attempts::default();
    loop {
        let claim = retried(protocol, settings, target, workers, |last| {
            protocol.run_op(target, record, op, &attempts, last)
        })
        .await?;
        if !matches!(claim, Claim::Busy) {
            return Ok(counted(claim, &attempts));
        }
        wait.again(target).await?;
    }
}

/// A finished claim counts every migration its attempts committed: an attempt that failed
/// transiently after committing some (one transaction per migration, or the chain) leaves
/// fewer for the retry that finishes.
fn counted(claim: Claim<usize>, attempts: &Attempts) -> Claim<usize> {
    match claim {
        Claim::Done(_) => Claim::Done(attempts.committed.load(Ordering::Relaxed)),
        other => other,
    }
}

/// Takes `conn`'s lock on `target`, waiting (try-lock with backoff) at most the unlock
/// deadline while another run holds it: for the commands that work on one target
/// (`rollback`, `repair`, `tenant create` and `drop`), which would otherwise wait
/// without end.
pub(crate) async fn lock_waiting(
    conn: &mut dyn Connection,
    target: Target<'_>,
    settings: &SafetySettings,
) -> Result<()> {
    let mut wait = Wait::new(settings.unlock_deadline);
    while !conn.try_lock().await? {
        wait.again(target).await?;
    }
    Ok(())
}

/// The pauses between attempts on a target another run holds: doubling from 50 ms up
/// to 2 s, for at most `deadline` in all.
struct Wait {
    since: Instant,
    deadline: Duration,
    pause: Duration,
    announced: bool,
}

impl Wait {
    fn new(deadline: Duration) -> Self {
        Self {
            since: Instant::now(),
            deadline,
            pause: Duration::from_millis(50),
            announced: false,
        }
    }

    /// Pauses before the next attempt, or fails with [`Error::Busy`] once the deadline
    /// has passed.
    async fn again(&mut self, target: Target<'_>) -> Result<()> {
        if self.since.elapsed() >= self.deadline {
            return Err(Error::Busy {
                target: target.to_string(),
                waited: format_duration(self.deadline),
            });
        }
        if !self.announced {
            tracing::info!("another mtnt run is working on {target}; waiting for it");
            self.announced = true;
        }
        let left = self.deadline.saturating_sub(self.since.elapsed());
        tokio::time::sleep(self.pause.min(left)).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(2));
        Ok(())
    }
}

/// Whether `error` may well pass on another try (a lock timeout, a deadlock, a dropped
/// connection). A retry is safe: the failed attempt was rolled back, or, for a chained
/// migration, left `started`, which the next attempt refuses unless it is idempotent.
pub(crate) fn is_transient(protocol: &Protocol<'_>, error: &Error) -> bool {
    match error {
        Error::Migration { source, .. } => is_transient(protocol, source),
        // A hook's failure is final, whatever caused it: what a hook does is its own, and
        // running it again is not mtnt's to decide.
        Error::Hook { .. } => false,
        other => matches!(
            protocol.backend.classify(other),
            ErrorClass::Transient | ErrorClass::ConnectionLost | ErrorClass::TooManyConnections
        ),
    }
}

/// `error` with `cause` in place of what it wraps: the migration it names stays.
fn with_cause(error: &Error, cause: Error) -> Error {
    match error {
        Error::Migration {
            target,
            migration,
            reverting,
            ..
        } => Error::Migration {
            target: target.clone(),
            migration: migration.clone(),
            reverting: *reverting,
            source: Box::new(cause),
        },
        _ => cause,
    }
}

/// Runs `attempt` until it succeeds, fails for good, or has failed transiently
/// `settings.retries + 1` times, pausing with backoff and jitter in between. `attempt`
/// is told whether it is the last (a failure will not be retried).
/// A connection the server refused also takes a worker off `workers`, said through
/// [`Progress::warning`](super::Progress::warning).
async fn retried<T, F, Fut>(
    protocol: &Protocol<'_>,
    settings: &SafetySettings,
    target: Target<'_>,
    workers: Option<&Workers>,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0u32;
    loop {
        tries += 1;
        let mut result = attempt(tries > settings.retries).await;
        let mut transient = result
            .as_ref()
            .err()
            .is_some_and(|e| is_transient(protocol, e));
        if let (Err(error), Some(tenant)) = (&result, target.tenant()) {
            // A connection cut by its server going down: not retried (the server's other
            // tenants fail at once too), and failed as the server's, not the tenant's.
            if transient && tenant.server.is_some() {
                if let Some(gone) = protocol.backend.server_gone(tenant, error).await {
                    result = Err(with_cause(error, gone));
                    transient = false;
                }
            }
        }
        match result {
            Ok(value) => return Ok(value),
            Err(error) if transient && tries <= settings.retries => {
                let refused = protocol.backend.classify(&error) == ErrorClass::TooManyConnections;
                if let Some(left) = workers.filter(|_| refused).and_then(Workers::shed) {
                    let message = format!(
                        "the server refused a connection (it has max_connections connected): {left} tenant{} at once from now on",
                        if left == 1 { "" } else { "s" }
                    );
                    tracing::warn!("{message}");
                    protocol.progress.warning(&message);
                }
                let pause = backoff(settings.retry_backoff, tries);
                protocol.progress.retrying(
                    &target.to_string(),
                    tries,
                    settings.retries + 1,
                    &error,
                    pause,
                );
                tracing::warn!(
                    "{target}: attempt {tries} of {} failed ({error}); trying again in {}",
                    settings.retries + 1,
                    format_duration(pause)
                );
                tokio::time::sleep(pause).await;
            }
            Err(error) if transient && tries > 1 => {
                return Err(Error::GaveUp {
                    attempts: tries,
                    source: Box::new(error),
                })
            }
            Err(error) => return Err(error),
        }
    }
}
