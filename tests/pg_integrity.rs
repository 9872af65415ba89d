//! What only PostgreSQL shows of a fleet's consistency: the `search_path` a migration outside
//! a transaction leaves on a pooled connection, and a run cancelled in the middle of a
//! migration (no transaction or advisory lock left behind). Checksum drift, interrupted and
//! idempotent non-transactional migrations and unknown applied migrations are proven on
//! every engine by `tests/behaviour.rs`.
#![cfg(feature = "postgres")]
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{MigrateOptions, MigrationSet, Migrator, PostgresBackend};
use mtnt_test_support::create_tenants;
use mtnt_test_support::postgres::{table_exists, tracking_row, TestDb};
use sqlx::PgPool;

// The behaviour suite's migrations; this file uses the non-transactional set.
#[allow(dead_code)]
#[path = "behaviour/migrations.rs"]
mod migrations;

fn migrator(pool: &PgPool, set: MigrationSet) -> Migrator {
    Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(set)
        .build()
        .unwrap()
}

fn registered(prefix: &str) -> MigrationSet {
    MigrationSet::registered_in(prefix).unwrap()
}

// PostgreSQL only: `search_path` is a PostgreSQL session setting, which mtnt sets for the
// whole session (not `SET LOCAL`) when a migration runs outside a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_transactional_migrations_leave_no_search_path_behind() {
    let db = TestDb::create("nontx").await;
    let pool = db.pool(4).await;
    let all = registered("pg_integrity::migrations::nontx");
    let first = MigrationSet::new(all.iter().take(1)).unwrap();
    create_tenants(&migrator(&pool, first), &["acme", "globex"]).await;

    let report = migrator(&pool, all)
        .migrate(&MigrateOptions::new())
        .await
        .unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 6);
    for t in ["acme", "globex"] {
        assert!(table_exists(&pool, t, "tags").await, "{t}");
    }
    let mut connections = Vec::new();
    for _ in 0..pool.size() {
        connections.push(pool.acquire().await.unwrap());
    }
    for conn in &mut connections {
        let path: String = sqlx::query_scalar("SHOW search_path")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(
            path, "\"$user\", public",
            "a pooled connection kept a tenant search path"
        );
    }
    drop(connections);

    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------
// A run cancelled in the middle of a migration (the deploy was killed, a timeout fired).

mod cancelled {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static SLOW: AtomicBool = AtomicBool::new(true);

    pub mod v1 {
        #[mtnt::migration(scope = "tenant", order = 2024_08_05_0001)]
        async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
            ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
                .await
        }
    }

    #[mtnt::migration(scope = "tenant", order = 2024_08_05_0002)]
    async fn create_reports(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE reports (id bigserial PRIMARY KEY)")
            .await?;
        if SLOW.load(Ordering::SeqCst) {
            ctx.execute("SELECT pg_sleep(1.5)").await?;
        }
        Ok(())
    }
}

// PostgreSQL only: pg_sleep, pg_stat_activity and pg_locks show what a cancelled run left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_run_leaves_no_transaction_or_lock_behind() {
    let db = TestDb::create("cancelled").await;
    let pool = db.pool(3).await;
    create_tenants(
        &migrator(&pool, registered("pg_integrity::cancelled::v1")),
        &["acme"],
    )
    .await;
    let full = migrator(&pool, registered("pg_integrity::cancelled"));

    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        full.migrate(&MigrateOptions::new()),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the slow migration finished within 300 ms"
    );
    cancelled::SLOW.store(false, std::sync::atomic::Ordering::SeqCst);

    // The next run waits for the abandoned connection to be dealt with, then applies the
    // migration once: the cancelled transaction was rolled back, not committed later.
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 1);
    assert!(table_exists(&pool, "acme", "reports").await);
    assert_eq!(
        tracking_row(&pool, "acme", 2024_08_05_0002)
            .await
            .unwrap()
            .status,
        "completed"
    );

    // No connection of this database sits in a transaction or holds an advisory lock.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let in_transaction: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_transaction, 0);
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(locks, 0);

    pool.close().await;
    db.drop_db().await;
}
