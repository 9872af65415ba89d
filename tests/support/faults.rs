//! What the kill -9 loops share: their size and a seeded generator of kill moments.

/// How many rounds a kill -9 loop runs: `MTNT_FAULT_ITERATIONS`, else `default` (the size
/// CI runs).
pub fn iterations(default: usize) -> usize {
    std::env::var("MTNT_FAULT_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `MTNT_FAULT_SEED`, else from the clock.
    pub fn from_env_or_time() -> Self {
        let seed = std::env::var("MTNT_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("fault seed {seed} (set MTNT_FAULT_SEED to replay)");
        Rng(seed)
    }

    /// The next number, 31 bits.
    pub fn next_u31(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u31() % (hi - lo).max(1)
    }
}
