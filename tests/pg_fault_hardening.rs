//! Fault hardening on PostgreSQL (issue 11), on the real server, in both tenancy models:
//! an index that a failed `CREATE INDEX CONCURRENTLY` left invalid is never recorded
//! completed, and the run's lock timeout does not cut short such a migration's waits for
//! older snapshots.
//!
//! The registry mechanism does not matter here, so the suite runs once (not again under
//! `--features inventory`).
#![cfg(feature = "postgres")]
#![cfg(not(feature = "inventory"))]
// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use std::time::{Duration, Instant};

use mtnt::{MigrateOptions, MigrationSet, Timeouts};
use mtnt_test_support::create_tenants;
use mtnt_test_support::models::{Kind, Model, Place};
use mtnt_test_support::postgres::admin_url;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

const USERS: i64 = 2024_09_01_0001;
const UNIQUE_EMAIL: i64 = 2024_09_01_0002;

mod index {
    /// Tenants whose name ends in `dup` get two users with one email, so that a unique
    /// index over it cannot be built.
    #[mtnt::migration(scope = "tenant", order = 2024_09_01_0001)]
    async fn create_users(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE users (id bigserial PRIMARY KEY, email text)")
            .await?;
        if ctx.tenant().unwrap().name.as_str().ends_with("dup") {
            ctx.execute("INSERT INTO users (email) VALUES ('a@x'), ('a@x')")
                .await?;
        }
        Ok(())
    }

    /// The usual way to add an index to a big table without blocking writes; idempotent,
    /// so that an interrupted run re-runs it.
    #[mtnt::migration(
        scope = "tenant",
        order = 2024_09_01_0002,
        transaction = false,
        idempotent = true
    )]
    async fn unique_email(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email ON users (email)")
            .await
    }
}

fn set_to(to: i64) -> MigrationSet {
    MigrationSet::new(
        MigrationSet::registered_in("pg_fault_hardening::index")
            .unwrap()
            .iter()
            .filter(|m| m.order() <= to),
    )
    .unwrap()
}

/// `(valid, ready)` of the tenant's index `users_email`, if it exists.
async fn index_state(model: &Model, tenant: &str) -> Option<String> {
    model
        .text(
            Place::Tenant(tenant),
            "SELECT i.indisvalid::text || ' ' || i.indisready::text FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = 'users_email' AND c.relnamespace = to_regnamespace(current_schema())",
        )
        .await
}

/// The failed CIC leaves an invalid index; the idempotent retry's `IF NOT EXISTS` skips
/// it. Before the check, the retry recorded the migration completed with the index
/// invalid, and migrate succeeded.
async fn invalid_index_is_never_recorded_completed(kind: Kind) {
    let model = Model::new(kind, "invalid_index").await;
    let ok = model.tenant("ok");
    let dup = model.tenant("dup");
    create_tenants(&model.migrator(set_to(USERS)).await, &[&ok, &dup]).await;
    let v2 = model.migrator(set_to(UNIQUE_EMAIL)).await;

    // First run: the CIC fails on the duplicate and leaves its index invalid.
    let first = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(first.tenants_migrated, 1, "{first:?}");
    assert_eq!(first.failures.len(), 1, "{first:?}");
    let state = index_state(&model, &dup).await;
    assert!(
        state.as_deref().is_some_and(|s| s.starts_with("false ")),
        "a failed unique CIC leaves an invalid index: {state:?}"
    );

    // The retry (idempotent) skips the leftover: the tenant must fail again, the row
    // must not say completed, and the error names the index and its fix.
    let second = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(
        model
            .status(Place::Tenant(&dup), UNIQUE_EMAIL)
            .await
            .as_deref(),
        Some("failed"),
        "{second:?}"
    );
    assert_eq!(second.failures.len(), 1, "{second:?}");
    let failure = &second.failures[0];
    assert_eq!(failure.tenant.as_str(), dup);
    let message = failure.error.to_string();
    let schema = model
        .text(Place::Tenant(&dup), "SELECT current_schema()")
        .await
        .unwrap();
    // The names of this test need no quotes: format('%I.%I') leaves them bare.
    assert!(schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
    let index = format!("{schema}.users_email");
    assert!(
        message.contains(&format!("the invalid index {index}")),
        "{message}"
    );
    assert!(
        message.contains("recorded failed, not completed"),
        "{message}"
    );
    let fix = mtnt::cli_fix(&failure.error).unwrap();
    assert!(
        fix.contains(&format!("DROP INDEX CONCURRENTLY {index};")),
        "{fix}"
    );
    assert!(
        fix.contains(&format!("REINDEX INDEX CONCURRENTLY {index};")),
        "{fix}"
    );
    assert_eq!(
        model
            .status(Place::Tenant(&ok), UNIQUE_EMAIL)
            .await
            .as_deref(),
        Some("completed")
    );

    // The fix works: without the duplicate and the leftover, the retry builds the index.
    model
        .execute(
            Place::Tenant(&dup),
            "DELETE FROM users WHERE id = (SELECT max(id) FROM users)",
        )
        .await;
    model
        .execute(Place::Tenant(&dup), "DROP INDEX CONCURRENTLY users_email")
        .await;
    let third = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(third.failures.is_empty(), "{third:?}");
    assert_eq!(
        model
            .status(Place::Tenant(&dup), UNIQUE_EMAIL)
            .await
            .as_deref(),
        Some("completed")
    );
    assert_eq!(
        index_state(&model, &dup).await.as_deref(),
        Some("true true")
    );
    model.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_index_is_never_recorded_completed_schema_per_tenant() {
    invalid_index_is_never_recorded_completed(Kind::PgSchema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_index_is_never_recorded_completed_database_per_tenant() {
    invalid_index_is_never_recorded_completed(Kind::PgDatabase).await;
}

/// A CIC waits for every transaction with an older snapshot in its database: with the
/// run's lock timeout (200ms here) those waits would be cut short and leave an invalid
/// index. It waits for the snapshot to go instead, and completes.
async fn run_lock_timeout_spares_cic_snapshot_waits(kind: Kind) {
    let model = Model::new(kind, "cic_waits").await;
    let t = model.tenant("acme");
    create_tenants(&model.migrator(set_to(USERS)).await, &[&t]).await;
    let database = model
        .text(Place::Tenant(&t), "SELECT current_database()")
        .await
        .unwrap();
    let options: PgConnectOptions = admin_url().parse().unwrap();
    let mut holder = options.database(&database).connect().await.unwrap();
    // A snapshot older than the CIC: it waits for it (twice).
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class")
        .execute(&mut holder)
        .await
        .unwrap();
    let v2 = model
        .builder(set_to(UNIQUE_EMAIL))
        .await
        .timeouts(Timeouts {
            lock: Some(Duration::from_millis(200)),
            statement: None,
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let run = tokio::spawn(async move { v2.migrate(&MigrateOptions::new()).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !run.is_finished(),
        "the CIC did not wait for the old snapshot"
    );
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    let report = run.await.unwrap().unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(
        model
            .status(Place::Tenant(&t), UNIQUE_EMAIL)
            .await
            .as_deref(),
        Some("completed")
    );
    assert_eq!(index_state(&model, &t).await.as_deref(), Some("true true"));
    model.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_lock_timeout_spares_cic_snapshot_waits_schema_per_tenant() {
    run_lock_timeout_spares_cic_snapshot_waits(Kind::PgSchema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_lock_timeout_spares_cic_snapshot_waits_database_per_tenant() {
    run_lock_timeout_spares_cic_snapshot_waits(Kind::PgDatabase).await;
}

mod gone {
    /// Slow for tenants whose name ends in `a_slow`, so that another tenant can be dropped
    /// while the run works on this one.
    #[mtnt::migration(scope = "tenant", order = 2024_09_02_0001)]
    async fn slow(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        if ctx.tenant().unwrap().name.as_str().ends_with("a_slow") {
            ctx.execute("SELECT pg_sleep(1.5)").await?;
        }
        ctx.execute("CREATE TABLE slow (id bigint)").await
    }
}

/// A tenant dropped (`tenant drop`) after the run read its registry row and before the
/// run reached it is reported gone, in the user's terms, and nothing is created for it.
/// Before, database per tenant failed it with "database ... does not exist, but the
/// tenant is registered" (the connection to its database came before the lock).
async fn a_tenant_dropped_during_the_run_is_gone(kind: Kind) {
    let model = Model::new(kind, "dropped_mid_run").await;
    let slow = model.tenant("a_slow");
    let dropped = model.tenant("b_gone");
    create_tenants(&model.migrator(set_to(USERS)).await, &[&slow, &dropped]).await;
    let set = MigrationSet::new(
        set_to(USERS).iter().chain(
            MigrationSet::registered_in("pg_fault_hardening::gone")
                .unwrap()
                .iter(),
        ),
    )
    .unwrap();
    let run = model.builder(set).await.concurrency(1).build().unwrap();
    let running = tokio::spawn(async move { run.migrate(&MigrateOptions::new()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!running.is_finished());
    model
        .migrator(set_to(USERS))
        .await
        .drop_tenant(&mtnt::TenantName::new(dropped.as_str()).unwrap())
        .await
        .unwrap();
    let report = running.await.unwrap().unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        report
            .tenants_gone
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>(),
        [dropped.as_str()],
        "{report:?}"
    );
    assert_eq!(report.tenants_migrated, 1, "{report:?}");
    assert!(
        !model.storage_exists(&dropped).await,
        "the dropped tenant was recreated"
    );
    model.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_dropped_during_the_run_is_gone_schema_per_tenant() {
    a_tenant_dropped_during_the_run_is_gone(Kind::PgSchema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_dropped_during_the_run_is_gone_database_per_tenant() {
    a_tenant_dropped_during_the_run_is_gone(Kind::PgDatabase).await;
}

/// Registry rows with invalid names between valid ones, with pages of two: each page is
/// filled past them, so that no tenant after them is missed (a page cut short by them
/// would read as the last), and each row is named once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_registry_rows_do_not_cut_the_pages_short() {
    let model = Model::new(Kind::PgSchema, "bad_rows_pages").await;
    let first = model.tenant("a1");
    let second = model.tenant("a2");
    create_tenants(&model.migrator(set_to(USERS)).await, &[&first, &second]).await;
    for bad in [" x", " y", " z"] {
        model
            .execute(
                Place::Control,
                &format!(
                    "INSERT INTO mtnt_tenants (name, schema_name, state) VALUES ('{first}{bad}', 'nowhere{bad}', 'active')"
                ),
            )
            .await;
    }
    let v2 = model
        .builder(set_to(UNIQUE_EMAIL))
        .await
        .page_size(2)
        .build()
        .unwrap();
    let report = v2.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.tenants_migrated, 2, "{report:?}");
    assert_eq!(report.invalid_registry_rows.len(), 3, "{report:?}");
    assert!(!report.is_success());
    let listed = v2.tenants().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let status = v2.status(&[]).await.unwrap();
    assert_eq!(status.tenants.len(), 2);
    assert_eq!(status.invalid_registry_rows.len(), 3);
    assert!(!status.is_current());
    model.finish().await;
}

/// The registry's invalid rows are found by a condition in SQL (not by reading every
/// name): a row breaking each rule of a tenant name is found, and no valid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_invalid_registry_name_is_found() {
    let model = Model::new(Kind::PgSchema, "bad_rows_kinds").await;
    let first = model.tenant("a1");
    create_tenants(&model.migrator(set_to(USERS)).await, &[&first]).await;
    let long = "a".repeat(51);
    let bad = [
        "",
        long.as_str(),
        "Acme",
        "1acme",
        "ac me",
        "caf\u{e9}",
        "acme;",
        "pg_acme",
        "mtnt_acme",
        "public",
        "template1",
        "information_schema",
    ];
    for (i, name) in bad.iter().enumerate() {
        model
            .execute(
                Place::Control,
                &format!(
                    "INSERT INTO mtnt_tenants (name, schema_name, state) VALUES ('{name}', 'nowhere{i}', 'active')"
                ),
            )
            .await;
    }
    let migrator = model.migrator(set_to(USERS)).await;
    let mut found: Vec<String> = migrator
        .invalid_registry_rows()
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.name)
        .collect();
    found.sort();
    let mut expected: Vec<String> = bad.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(migrator.tenants().await.unwrap().len(), 1);
    model.finish().await;
}
