//! The knobs that keep a fleet run safe under crashes, concurrency and slow tenants:
//! deadlines, the run lease's heartbeat, retries, and a static shard of the fleet.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result, TenantName};

/// How a fleet run protects itself and the fleet; see the README section "Safety".
///
/// | setting | default | CLI flag | environment |
/// |---|---|---|---|
/// | [`deadline`](Self::deadline) | none | `--deadline` | `MTNT_DEADLINE` |
/// | [`unlock_deadline`](Self::unlock_deadline) | 60 s | `--unlock-deadline` | `MTNT_UNLOCK_DEADLINE` |
/// | [`heartbeat_interval`](Self::heartbeat_interval) | 5 s | `--heartbeat-interval` | `MTNT_HEARTBEAT_INTERVAL` |
/// | [`heartbeat_retries`](Self::heartbeat_retries) | 3 | `--heartbeat-retries` | `MTNT_HEARTBEAT_RETRIES` |
/// | [`retries`](Self::retries) | 3 | `--retries` | `MTNT_RETRIES` |
/// | [`retry_backoff`](Self::retry_backoff) | 200 ms | `--retry-backoff` | `MTNT_RETRY_BACKOFF` |
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SafetySettings {
    /// The whole run's time budget: after it no further tenant is started; the ones not
    /// started are reported as skipped and the run fails. `None`: no limit.
    pub deadline: Option<Duration>,
    /// How long a lock held by another run is waited for: a tenant another runner keeps
    /// longer than this is reported failed (busy), and a run lease whose heartbeat is
    /// older than this is taken over (its runner is presumed dead).
    pub unlock_deadline: Duration,
    /// How often a runner refreshes its lease.
    pub heartbeat_interval: Duration,
    /// How many heartbeats in a row may fail before the runner stops starting tenants
    /// and exits non-zero (it has lost contact with the database).
    pub heartbeat_retries: u32,
    /// How often a tenant whose migration hit a transient error (lock timeout,
    /// serialization failure, deadlock, dropped connection) is tried again.
    pub retries: u32,
    /// The first pause before a retry; it doubles each time (at most 10 s), with jitter.
    pub retry_backoff: Duration,
}

impl Default for SafetySettings {
    fn default() -> Self {
        Self {
            deadline: None,
            unlock_deadline: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_retries: 3,
            retries: 3,
            retry_backoff: Duration::from_millis(200),
        }
    }
}

impl SafetySettings {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`deadline`](Self::deadline).
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets [`unlock_deadline`](Self::unlock_deadline).
    pub fn unlock_deadline(mut self, deadline: Duration) -> Self {
        self.unlock_deadline = deadline;
        self
    }

    /// Sets [`heartbeat_interval`](Self::heartbeat_interval).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets [`heartbeat_retries`](Self::heartbeat_retries).
    pub fn heartbeat_retries(mut self, retries: u32) -> Self {
        self.heartbeat_retries = retries;
        self
    }

    /// Sets [`retries`](Self::retries).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets [`retry_backoff`](Self::retry_backoff).
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Checks that a runner gives up its lease before others may take it over: the
    /// heartbeat must be able to fail `heartbeat_retries + 1` times within the unlock
    /// deadline.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval.is_zero() {
            return Err(Error::Invalid(
                "the heartbeat interval must be longer than 0".to_owned(),
            ));
        }
        let silent = self.heartbeat_interval * (self.heartbeat_retries + 1);
        if silent >= self.unlock_deadline {
            return Err(Error::LeaseOutlivesDeadline {
                silent: format_duration(silent),
                heartbeat_interval: format_duration(self.heartbeat_interval),
                attempts: self.heartbeat_retries + 1,
                unlock_deadline: format_duration(self.unlock_deadline),
            });
        }
        Ok(())
    }
}

/// A static part of the fleet: `--shard 2/4` is the second of four disjoint parts.
///
/// A tenant belongs to shard `hash(name) % count + 1` (FNV-1a of the name), so the split
/// is the same in every process and does not move when tenants are added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// Shard `index` (1-based) of `count`.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index == 0 || index > count {
            return Err(Error::Invalid(format!(
                "invalid shard {index}/{count}: write I/N with 1 <= I <= N, e.g. 1/4"
            )));
        }
        Ok(Self { index, count })
    }

    /// Which shard (1-based).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Of how many.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether the tenant belongs to this shard.
    pub fn contains(&self, tenant: &TenantName) -> bool {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in tenant.as_str().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash % u64::from(self.count) == u64::from(self.index - 1)
    }
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "{s:?} is not a shard: write I/N with 1 <= I <= N, e.g. 1/4"
            ))
        };
        let (index, count) = s.split_once('/').ok_or_else(bad)?;
        let index = index.trim().parse().map_err(|_| bad())?;
        let count = count.trim().parse().map_err(|_| bad())?;
        Shard::new(index, count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}/{}", self.index, self.count))
    }
}

// One syntax for the CLI's duration flags and the attribute's timeouts; documented there.
pub use mtnt_syntax::parse_duration;

pub(crate) use mtnt_syntax::format_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("off"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5")
            .unwrap_err()
            .to_string()
            .contains("no unit"));
        assert!(parse_duration("5d")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn shards_split_the_fleet() {
        assert!("0/4".parse::<Shard>().is_err());
        assert!("5/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
        let shards: Vec<Shard> = (1..=4).map(|i| Shard::new(i, 4).unwrap()).collect();
        let mut sizes = [0; 4];
        for n in 0..400 {
            let name = TenantName::new(format!("t{n}")).unwrap();
            let owners: Vec<usize> = (0..4).filter(|&i| shards[i].contains(&name)).collect();
            assert_eq!(owners.len(), 1);
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&s| s > 50), "{sizes:?}");
    }

    #[test]
    fn the_lease_outlives_the_heartbeat() {
        assert!(SafetySettings::new().validate().is_ok());
        let bad = SafetySettings::new().unlock_deadline(Duration::from_secs(10));
        let error = bad.validate().unwrap_err();
        assert!(
            matches!(error, Error::LeaseOutlivesDeadline { attempts: 4, .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("20s"), "{message}");
        // The library names no CLI flag: the fix is the command line's (cli_fix).
        assert!(!message.contains("--"), "{message}");
        assert!(!message.contains("fix:"), "{message}");
    }
}
