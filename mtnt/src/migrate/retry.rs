//! Which errors are worth another try, and how long to wait before it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Error;

/// SQLSTATEs of transient PostgreSQL (and MySQL, where they share them) failures.
const TRANSIENT_SQLSTATES: [&str; 11] = [
    "55P03", // lock_not_available: lock_timeout, NOWAIT
    "40001", // serialization_failure (MySQL: deadlock too)
    "40P01", // deadlock_detected
    "57P01", // admin_shutdown: pg_terminate_backend
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now
    "08000", // connection_exception
    "08001", // sqlclient_unable_to_establish_sqlconnection
    "08003", // connection_does_not_exist
    "08006", // connection_failure
    "53300", // too_many_connections
];

/// MySQL error numbers of transient failures.
const TRANSIENT_MYSQL: [u16; 4] = [
    1205, // lock wait timeout
    1213, // deadlock
    2006, // server has gone away
    2013, // lost connection during query
];

/// Whether `error` is a transient failure that may well pass on another try: a lock
/// timeout, a serialization failure, a deadlock or a dropped connection.
///
/// A retry is safe: the failed attempt was rolled back (or, for a non-transactional
/// migration, left `started`, which the next attempt refuses unless it is idempotent).
pub(crate) fn is_transient(error: &Error) -> bool {
    match error {
        Error::Migration { source, .. } => is_transient(source),
        Error::Sql(sql) => is_transient_sql(sql),
        _ => false,
    }
}

fn is_transient_sql(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                if TRANSIENT_MYSQL.contains(&mysql.number()) {
                    return true;
                }
            }
            db.code()
                .is_some_and(|code| TRANSIENT_SQLSTATES.contains(&code.as_ref()))
        }
        _ => false,
    }
}

/// The pause before retry number `attempt` (1 for the first retry): `base` doubled per
/// attempt, at most 10 s, with up to 50 % random jitter so that runners that failed
/// together do not retry together.
pub(crate) fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(Duration::from_secs(10));
    let jitter = capped.mul_f64(random_fraction() * 0.5);
    capped + jitter
}

/// A number in [0, 1) that differs between calls, processes and hosts; jitter needs
/// no more than that.
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

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(is_transient(&Error::Sql(sqlx::Error::PoolTimedOut)));
        assert!(!is_transient(&Error::Sql(sqlx::Error::RowNotFound)));
        assert!(!is_transient(&Error::UnknownOrder("x".into())));
        let wrapped = Error::Migration {
            target: "tenant a".into(),
            migration: "m".into(),
            reverting: false,
            source: Box::new(Error::Sql(sqlx::Error::Io(std::io::Error::other("reset")))),
        };
        assert!(is_transient(&wrapped));
    }
}
