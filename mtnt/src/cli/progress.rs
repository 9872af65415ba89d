use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{Error, Progress, TenantName};

/// A progress bar on a terminal; plain log lines (every 10 % and every failure) elsewhere.
pub(crate) struct FleetProgress {
    verb: &'static str,
    bar: Option<ProgressBar>,
    total: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    started: Instant,
}

impl FleetProgress {
    pub(crate) fn new(verb: &'static str, allow_bar: bool) -> Self {
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
            bar,
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            started: Instant::now(),
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
                let line = format!("failed: tenant {tenant}: {error}");
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
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
            None => {
                let total = self.total.load(Ordering::Relaxed).max(1);
                let step = (total / 10).max(1);
                if done.is_multiple_of(step) || done == total {
                    let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-6);
                    let eta = total.saturating_sub(done) as f64 / rate.max(1e-6);
                    eprintln!(
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
