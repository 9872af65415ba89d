//! A runner's lease: a row in the control schema saying who runs (host, pid, start),
//! refreshed by a heartbeat task. Several runners hold leases at once (they split the
//! fleet through the tenant locks); the lease makes them visible, lets a runner stop
//! itself when it lost the database, and lets the others take over (and end the
//! sessions of) a runner that went silent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::safety::{format_duration, SafetySettings};
use crate::backend::{connection_tag, Backend, LeaseStore, RunIdentity, RunLease};
use crate::Result;

/// A held lease; its heartbeat runs until it is released or dropped.
pub(crate) struct Lease {
    control: Arc<dyn LeaseStore>,
    me: RunIdentity,
    lost: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn describe(lease: &RunLease) -> String {
    format!(
        "run {} (host {}, pid {}, started {}, last heartbeat {})",
        lease.run_id,
        lease.host,
        lease.pid,
        lease.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        lease.heartbeat_at.format("%H:%M:%S UTC"),
    )
}

/// Logs the takeover of stale leases and ends their runners' sessions.
async fn take_over(control: &dyn LeaseStore, stale: &[RunLease], settings: &SafetySettings) {
    for lease in stale {
        tracing::warn!(
            "took over the lease of {}: no heartbeat for longer than the unlock deadline {}",
            describe(lease),
            format_duration(settings.unlock_deadline)
        );
    }
    match control.end_sessions(stale).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!("ended {n} database session(s) of the runs taken over"),
        Err(e) => tracing::warn!("could not end the sessions of the runs taken over: {e}"),
    }
}

/// Who this process's run of `command` is: a new run id (unique per run: the process's
/// nonce and a random part), this host, pid and connection tag. Every fleet run has one,
/// whether or not the engine keeps leases; the tracking rows it writes carry its id.
pub(crate) fn new_identity(command: &str) -> RunIdentity {
    let tag = connection_tag();
    RunIdentity {
        run_id: format!(
            "{}-{:08x}",
            tag.rsplit(' ').next().unwrap_or("run"),
            (crate::backend::random_fraction() * f64::from(u32::MAX)) as u32
        ),
        host: crate::backend::host_name(),
        pid: std::process::id(),
        command: command.to_owned(),
        connection_tag: tag.to_owned(),
    }
}

impl Lease {
    /// Takes a lease for the run `me` if the backend keeps leases (`None` otherwise),
    /// after taking over stale ones, and starts its heartbeat.
    pub(crate) async fn acquire(
        backend: &dyn Backend,
        settings: &SafetySettings,
        me: &RunIdentity,
    ) -> Result<Option<Lease>> {
        let Some(control) = backend.leases() else {
            return Ok(None);
        };
        let me = me.clone();
        let stale = control.acquire(&me, settings.unlock_deadline).await?;
        take_over(&*control, &stale, settings).await;
        let lost = Arc::new(Mutex::new(None));
        let task = tokio::spawn(heartbeat(
            control.clone(),
            me.clone(),
            settings.clone(),
            lost.clone(),
        ));
        tracing::debug!(run = %me.run_id, "took the run lease");
        Ok(Some(Lease {
            control,
            me,
            lost,
            task,
        }))
    }

    /// Why the runner must stop, once its heartbeat has failed too often or its lease
    /// was taken over.
    pub(crate) fn lost(&self) -> Option<String> {
        self.lost.lock().map(|g| g.clone()).unwrap_or(None)
    }

    /// Stops the heartbeat and records how the run ended (`finished`, `failed`, `lost`).
    pub(crate) async fn release(self, state: &str) {
        self.task.abort();
        let state = if self.lost().is_some() { "lost" } else { state };
        if let Err(e) = self.control.release(&self.me, state).await {
            tracing::warn!("could not record the end of run {}: {e}", self.me.run_id);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn heartbeat(
    control: Arc<dyn LeaseStore>,
    me: RunIdentity,
    settings: SafetySettings,
    lost: Arc<Mutex<Option<String>>>,
) {
    let interval = settings.heartbeat_interval;
    let mut failures = 0u32;
    let set_lost = |why: String| {
        tracing::error!("{why}; starting no further tenant");
        if let Ok(mut guard) = lost.lock() {
            *guard = Some(why);
        }
    };
    loop {
        tokio::time::sleep(interval).await;
        let beat = tokio::time::timeout(
            interval.max(Duration::from_millis(500)),
            control.heartbeat(&me, settings.unlock_deadline),
        )
        .await;
        match beat {
            Ok(Ok(beat)) if beat.held => {
                failures = 0;
                if !beat.taken_over.is_empty() {
                    take_over(&*control, &beat.taken_over, &settings).await;
                }
            }
            Ok(Ok(_)) => {
                set_lost(format!(
                    "the run lease of {} was taken over by another runner (no heartbeat within the unlock deadline {})",
                    me.run_id,
                    format_duration(settings.unlock_deadline)
                ));
                return;
            }
            failed => {
                failures += 1;
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {}", format_duration(interval)),
                };
                if failures > settings.heartbeat_retries {
                    set_lost(format!(
                        "lost contact with the database: could not refresh the run lease {failures} times in a row (last: {why})"
                    ));
                    return;
                }
                tracing::warn!(
                    "could not refresh the run lease (attempt {failures} of {}): {why}",
                    settings.heartbeat_retries + 1
                );
            }
        }
    }
}
