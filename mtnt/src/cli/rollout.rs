//! The rollout flags of `migrate`, `rollback` and `exec` (`--canary`, `--wave-size`,
//! `--max-failures`, ...) as the library's [`Rollout`], and in words for a dry run.

use std::time::Duration;

use super::args::RolloutArgs;
use super::output::count;
use crate::{Canary, Rollout, WaveSize};

impl RolloutArgs {
    /// The library's rollout.
    pub(crate) fn rollout(&self) -> Rollout {
        let canary = match (self.canary, self.canary_tenants.as_slice()) {
            (Some(n), _) => Canary::First(usize::try_from(n).unwrap_or(usize::MAX)),
            (None, []) => match self.canary_per_server {
                Some(n) => Canary::PerServer(usize::try_from(n).unwrap_or(usize::MAX)),
                None => Canary::None,
            },
            (None, names) => Canary::Tenants(names.to_vec()),
        };
        Rollout {
            canary,
            wave_size: self.wave_size,
            wave_pause: self.pause(),
            max_failures: self
                .max_failures
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_failure_rate: self.max_failure_rate,
            only_failed: self.only_failed,
            servers: self.servers.clone(),
            order_by: self.order_by.into(),
        }
    }

    /// The soak pause between waves.
    pub(crate) fn pause(&self) -> Duration {
        self.wave_pause.unwrap_or(Duration::ZERO)
    }

    /// Whether any flag asks for more than every tenant at once, by name.
    pub(crate) fn is_set(&self) -> bool {
        self.rollout() != Rollout::default()
    }

    /// `canary of 10 tenants, then waves of 10% with a pause of 1m; stops starting tenants
    /// once 1% have failed`: what a dry run says about the rollout it plans.
    pub(crate) fn describe(&self) -> Option<String> {
        if !self.is_set() {
            return None;
        }
        let mut parts = Vec::new();
        match (self.canary, self.canary_tenants.as_slice()) {
            (Some(n), _) => parts.push(format!(
                "a canary of the first {} alone",
                count(usize::try_from(n).unwrap_or(usize::MAX), "tenant")
            )),
            (None, []) => {
                if let Some(n) = self.canary_per_server {
                    parts.push(format!(
                        "a canary of the first {} of each server alone",
                        count(usize::try_from(n).unwrap_or(usize::MAX), "tenant")
                    ));
                }
            }
            (None, names) => parts.push(format!(
                "a canary of {} alone",
                names
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        let rest = if parts.is_empty() { "" } else { "the rest " };
        match self.wave_size {
            Some(WaveSize::Tenants(n)) => {
                parts.push(format!("{rest}in waves of {}", count(n, "tenant")))
            }
            Some(WaveSize::Percent(p)) => {
                parts.push(format!("{rest}in waves of {p}% of the tenants"))
            }
            _ if !parts.is_empty() => parts.push(format!("{rest}at once")),
            _ => {}
        }
        if !self.pause().is_zero() {
            parts.push(format!(
                "a pause of {} between them",
                mtnt_syntax::format_duration(self.pause())
            ));
        }
        match (self.max_failures, self.max_failure_rate) {
            (Some(n), Some(p)) => parts.push(format!(
                "no tenant started once {n} (or {p}% of the tenants) have failed"
            )),
            (Some(n), None) => parts.push(format!("no tenant started once {n} have failed")),
            (None, Some(p)) => parts.push(format!(
                "no tenant started once {p}% of the tenants have failed"
            )),
            (None, None) => {}
        }
        if self.only_failed {
            parts.push("only the tenants whose last attempt failed".to_owned());
        }
        if !self.servers.is_empty() {
            let names: Vec<&str> = self.servers.iter().map(|s| s.as_str()).collect();
            parts.push(format!(
                "only the tenants of server{} {}",
                if names.len() == 1 { "" } else { "s" },
                names.join(", ")
            ));
        }
        match self.order_by {
            super::args::OrderArg::Name => {}
            super::args::OrderArg::Created => parts.push("oldest tenant first".to_owned()),
            super::args::OrderArg::Size => parts.push("smallest tenant first".to_owned()),
        }
        Some(parts.join("; "))
    }
}
