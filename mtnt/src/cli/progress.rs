use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::failures::Failure;
use super::say::{clean, errln};
use crate::{Error, Progress, TenantName};

/// How much a run prints while it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verbosity {
    /// A bar on a terminal, lines every 10 % elsewhere, and each new kind of failure.
    Progress,
    /// No progress (`--no-progress`), each new kind of failure still.
    Failures,
    /// Nothing (`--quiet`): the summary says it all.
    Nothing,
}

/// A progress bar on a terminal; plain log lines (every 10 %) elsewhere; the first failure
/// of each kind as it happens (the summary groups them all).
pub(crate) struct FleetProgress {
    verb: &'static str,
    verbosity: Verbosity,
    bar: Option<ProgressBar>,
    total: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    started: Instant,
    /// The kinds of failure shown so far.
    shown: Mutex<HashSet<String>>,
}

impl FleetProgress {
    pub(crate) fn new(verb: &'static str, verbosity: Verbosity) -> Self {
        let allow_bar = verbosity == Verbosity::Progress;
        let bar = (allow_bar && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} tenants  {per_sec}  eta {eta}  {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(verb);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            verb,
            verbosity,
            bar,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            started: Instant::now(),
            shown: Mutex::new(HashSet::new()),
        }
    }
}

impl Progress for FleetProgress {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    fn tenant_done(&self, tenant: &TenantName, outcome: Result<usize, &Error>) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let failed = match outcome {
            Err(error) => {
                let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
                let failure = Failure::of(tenant, error);
                let new_kind = self
                    .shown
                    .lock()
                    .map_or(true, |mut shown| shown.insert(failure.key.clone()));
                if new_kind && self.verbosity != Verbosity::Nothing {
                    // Later tenants failing the same way are counted, and listed at the end.
                    let line = failure.line(tenant);
                    match &self.bar {
                        Some(bar) => bar.println(clean(&line)),
                        None => errln!("{line}"),
                    }
                }
                failed
            }
            Ok(_) => self.failed.load(Ordering::Relaxed),
        };
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
                }
            }
            None if self.verbosity != Verbosity::Progress => {}
            None => {
                let total = self.total.load(Ordering::Relaxed).max(1);
                let step = (total / 10).max(1);
                if done.is_multiple_of(step) || done == total {
                    let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-6);
                    let eta = total.saturating_sub(done) as f64 / rate.max(1e-6);
                    errln!(
                        "{} {done}/{total} tenants ({rate:.0}/s, eta {eta:.0}s, {failed} failed)",
                        self.verb
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
