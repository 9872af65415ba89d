use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::failures::Failure;
use super::output::count;
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
    /// The soak pause between waves, which the wave lines announce.
    pause: Duration,
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
            pause: Duration::ZERO,
        }
    }

    /// Announces `pause` between waves in the wave lines.
    pub(crate) fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// Prints an event of the run (a wave, a retry, a failure) unless `--quiet`: above
    /// the bar, or as a line of its own.
    fn event(&self, line: &str) {
        if self.verbosity == Verbosity::Nothing {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(clean(line)),
            None => errln!("{line}"),
        }
    }
}

/// `canary: 10 tenants`, `wave 2/10: 1000 tenants`, saying the soak pause that follows
/// when more waves come.
fn wave_line(number: usize, waves: usize, tenants: usize, pause: Duration) -> String {
    let mut line = if number == 0 {
        format!("canary: {}", count(tenants, "tenant"))
    } else {
        format!("wave {number}/{waves}: {}", count(tenants, "tenant"))
    };
    if number < waves && !pause.is_zero() {
        line.push_str(&format!(
            ", then a pause of {}",
            mtnt_syntax::format_duration(pause)
        ));
    }
    line
}

/// `tenant acme: attempt 1 of 4 failed (<cause>); trying again in 250ms`.
fn retry_line(target: &str, attempt: u32, attempts: u32, error: &Error, pause: Duration) -> String {
    let mut cause = error;
    while let Error::Migration { source, .. } | Error::GaveUp { source, .. } = cause {
        cause = source;
    }
    let cause = cause.to_string();
    format!(
        "{target}: attempt {attempt} of {attempts} failed ({}); trying again in {}",
        cause.lines().next().unwrap_or("").trim(),
        mtnt_syntax::format_duration(pause)
    )
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
                if new_kind {
                    // Later tenants failing the same way are counted, and listed at the end.
                    self.event(&failure.line(tenant));
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

    /// With the progress (not with `--no-progress` or `--quiet`, whose output stays
    /// the events alone; the summary always names the run).
    fn run_id(&self, run_id: &str) {
        // The CLI's `run` span has the field; elsewhere this records nothing.
        tracing::Span::current().record("run_id", run_id);
        if self.verbosity == Verbosity::Progress {
            self.event(&format!("{} run {run_id}", self.verb));
        }
    }

    fn wave(&self, number: usize, waves: usize, tenants: usize) {
        self.event(&wave_line(number, waves, tenants, self.pause));
    }

    fn pause_skipped(&self, after: usize) {
        let wave = match after {
            0 => "the canary".to_owned(),
            n => format!("wave {n}"),
        };
        self.event(&format!(
            "no pause: {wave} changed nothing (every tenant current already)"
        ));
    }

    fn retrying(&self, target: &str, attempt: u32, attempts: u32, error: &Error, pause: Duration) {
        self.event(&retry_line(target, attempt, attempts, error, pause));
    }

    fn warning(&self, message: &str) {
        self.event(&format!("warning: {message}"));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_and_retries_are_one_line_each() {
        let pause = Duration::from_secs(60);
        assert_eq!(
            wave_line(0, 10, 10, pause),
            "canary: 10 tenants, then a pause of 1m"
        );
        assert_eq!(
            wave_line(2, 10, 1000, pause),
            "wave 2/10: 1000 tenants, then a pause of 1m"
        );
        assert_eq!(wave_line(10, 10, 1, pause), "wave 10/10: 1 tenant");
        assert_eq!(wave_line(1, 2, 5, Duration::ZERO), "wave 1/2: 5 tenants");
        let error = Error::Migration {
            target: "tenant acme".to_owned(),
            migration: "2024_01_01_0003 add_index".to_owned(),
            reverting: false,
            source: Box::new(Error::Invalid(
                "canceling statement due to lock timeout\nCONTEXT: x".to_owned(),
            )),
        };
        assert_eq!(
            retry_line("tenant acme", 1, 4, &error, Duration::from_millis(250)),
            "tenant acme: attempt 1 of 4 failed (canceling statement due to lock timeout); trying again in 250ms"
        );
    }
}
