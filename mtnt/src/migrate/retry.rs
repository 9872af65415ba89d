//! How long to wait before another try.

use std::time::Duration;

use crate::backend::random_fraction;

/// The pause before retry number `attempt` (1 for the first retry): `base` doubled per
/// attempt, at most 10 s, with up to 50 % random jitter so that runners that failed
/// together do not retry together.
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(Duration::from_secs(10));
    let jitter = capped.mul_f64(random_fraction() * 0.5);
    capped + jitter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let first = backoff(base, 1);
        assert!(first >= base && first <= base.mul_f64(1.5), "{first:?}");
        let third = backoff(base, 3);
        assert!(third >= Duration::from_millis(400), "{third:?}");
        assert!(backoff(base, 30) <= Duration::from_secs(15));
    }
}
