//! One behaviour, proven on every engine: each scenario below is one async function that
//! takes a [`Model`], and `scenarios!` turns it into one test per tenancy model, named
//! `<scenario>::<model>` (`migrate_fleet::sqlite`, `migrate_fleet::pg_schema`,
//! `migrate_fleet::pg_database`, `migrate_fleet::mysql`), so a failure names the model.
//!
//! The migrations are written once, in portable SQL (`behaviour/migrations.rs`); where the
//! engines really differ (MySQL commits DDL at once), the scenario says so with a `match`
//! on the engine and asserts what that engine guarantees. The state is always read from the
//! engine itself, not through mtnt.
//!
//! `cargo test --test behaviour sqlite` runs the SQLite half alone (no server needed);
//! `cargo test --test behaviour migrate_fleet` one scenario on every model.

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]
// A build without any engine has no scenario to run.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports)
)]

#[path = "behaviour/migrations.rs"]
mod migrations;

use assert_cmd::Command;
use migrations::{
    ACCOUNTS, BACKFILL, FEATURES, FIXED, INDEX, ITEMS, LEDGER, NOTES, PLANS, PROJECTS, TAGS,
};
use mtnt::{
    Engine, Error, MigrateOptions, MigrateReport, MigrationSet, MigrationStatus, Migrator,
    RollbackTarget, Scope, TenantName, TenantState, TenantStatus,
};
use mtnt_test_support::models::{Kind, Model, Place};
use mtnt_test_support::{create_tenants, escape_like};
use predicates::prelude::*;

/// One test per model for each scenario, in a module named after the scenario; a scenario
/// that SQLite does not pass because of a documented limit says why, and is ignored there.
macro_rules! scenarios {
    ($($scenario:ident $(: sqlite ignored = $why:literal)?),* $(,)?) => {$(
        mod $scenario {
            use mtnt_test_support::models::{Kind, Model};

            async fn run(kind: Kind) {
                let model = Model::new(kind, stringify!($scenario)).await;
                super::$scenario(&model).await;
                model.finish().await;
            }

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[ignore = $why])?
            async fn sqlite() {
                run(Kind::Sqlite).await
            }

            #[cfg(feature = "postgres")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg_schema() {
                run(Kind::PgSchema).await
            }

            #[cfg(feature = "postgres")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg_database() {
                run(Kind::PgDatabase).await
            }

            #[cfg(feature = "mysql")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                run(Kind::MySql).await
            }
        }
    )*};
}

scenarios!(
    migrate_fleet,
    failing_tenant_is_isolated,
    rollback_by_steps_and_to_an_order,
    irreversible_rollback_is_refused_and_changes_nothing,
    failing_down_function,
    create_tenant_is_all_or_nothing,
    non_transactional_migrations,
    concurrent_runs_apply_each_migration_once,
    checksum_drift_is_refused_until_repaired,
    unknown_applied_migration_is_refused,
    adopt_registers_existing_storage,
    cli_status_and_json,
    bad_tenant_names_are_rejected_before_any_sql,
    every_command_waits_for_the_tenant_lock,
    per_migration_transactions_are_honoured,
    hooks_run_around_each_tenant_with_work,
);

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

/// The main set's migrations up to `to`.
fn fleet_to(to: i64) -> MigrationSet {
    let all = MigrationSet::registered_in("behaviour::migrations::fleet").unwrap();
    MigrationSet::new(all.iter().filter(|m| m.order() <= to)).unwrap()
}

/// The non-transactional set's migrations up to `to`.
fn nontx_to(to: i64) -> MigrationSet {
    let all = MigrationSet::registered_in("behaviour::migrations::nontx").unwrap();
    MigrationSet::new(all.iter().filter(|m| m.order() <= to)).unwrap()
}

/// A migrator with the whole main set, and this test's tenants `bases` created with it.
async fn created<const N: usize>(m: &Model, bases: [&str; N]) -> (Migrator, [String; N]) {
    let migrator = m.migrator(fleet_to(BACKFILL)).await;
    let names = bases.map(|b| m.tenant(b));
    create_tenants(&migrator, &names).await;
    (migrator, names)
}

/// The status of each of `orders` in the tenant's tracking table.
async fn statuses(m: &Model, tenant: &str, orders: &[i64]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for order in orders {
        out.push(m.status(Place::Tenant(tenant), *order).await);
    }
    out
}

/// Asserts that each of `orders` is recorded `completed` in `tenant`.
async fn assert_completed(m: &Model, tenant: &str, orders: &[i64]) {
    let completed: Vec<Option<String>> = orders
        .iter()
        .map(|_| Some("completed".to_owned()))
        .collect();
    assert_eq!(statuses(m, tenant, orders).await, completed, "{tenant}");
}

/// The error recorded with migration `order` in `place`.
async fn recorded_error(m: &Model, place: Place<'_>, order: i64) -> String {
    m.text(
        place,
        &format!("SELECT error FROM mtnt_migrations WHERE migration_order = {order}"),
    )
    .await
    .unwrap_or_else(|| panic!("no error recorded for {order} in {place:?}"))
}

/// Migrates every tenant, which must succeed.
async fn migrate_ok(migrator: &Migrator) -> MigrateReport {
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    report
}

/// Asserts the fleet's summary line and returns where `tenant` stands.
async fn tenant_status(migrator: &Migrator, summary: &str, tenant: &str) -> TenantStatus {
    let status = migrator.status(&[]).await.unwrap();
    assert_eq!(status.summary(), summary);
    status
        .tenants
        .into_iter()
        .find(|t| t.tenant.as_str() == tenant)
        .unwrap_or_else(|| panic!("{tenant} is not in the status"))
}

/// Asserts the fleet's summary line, as `status` prints it.
async fn assert_summary(migrator: &Migrator, summary: &str) {
    assert_eq!(migrator.status(&[]).await.unwrap().summary(), summary);
}

const TENANT_ORDERS: [i64; 4] = [LEDGER, ACCOUNTS, PROJECTS, BACKFILL];

/// The registry row of `tenant` as `(state, applied, failed, last_error)`, through mtnt.
async fn registry(
    migrator: &Migrator,
    tenant: &str,
) -> Option<(TenantState, Option<i64>, Option<i64>, Option<String>)> {
    let mut records = migrator
        .backend()
        .tenant_records(&[name(tenant)])
        .await
        .unwrap();
    records
        .pop()
        .map(|r| (r.state, r.applied_order, r.failed_order, r.last_error))
}

/// Asserts that every migration of `set` in `scope` is recorded `completed` in `place`, with
/// its name and checksum, timestamps in order and no error.
async fn assert_tracked(m: &Model, place: Place<'_>, set: &MigrationSet, scope: Scope) {
    for migration in set.scope(scope) {
        let checksum = m
            .text(
                place,
                &format!(
                    "SELECT checksum FROM mtnt_migrations WHERE migration_order = {} AND name = '{}' \
                     AND status = 'completed' AND started_at <= finished_at AND duration_ms >= 0 \
                     AND error IS NULL",
                    migration.order(),
                    migration.name()
                ),
            )
            .await;
        assert_eq!(
            checksum.as_deref(),
            Some(migration.checksum()),
            "{place:?}: {} {}",
            migration.order(),
            migration.name()
        );
    }
}

/// The number of accounts in `tenant` whose email is its admin's.
async fn admins(m: &Model, tenant: &str) -> i64 {
    m.int(
        Place::Tenant(tenant),
        &format!("SELECT count(*) FROM accounts WHERE email = 'admin@{tenant}.example'"),
    )
    .await
    .unwrap()
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// Ten tenants created at one version, then migrated to the next in pages, four at a
/// time; the public migration runs once, in the control schema (database, file).
async fn migrate_fleet(m: &Model) {
    let names: Vec<String> = (1..=10).map(|i| m.tenant(&format!("f{i:02}"))).collect();
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    create_tenants(&v1, &names).await;
    let records = v1.tenants().await.unwrap();
    assert_eq!(records.len(), 10);
    for record in &records {
        assert_eq!(
            (record.state, record.applied_order),
            (TenantState::Active, Some(ACCOUNTS)),
            "{record:?}"
        );
        assert_eq!(record.tenant.storage, record.tenant.name.as_str());
    }

    let full = m
        .builder(fleet_to(BACKFILL))
        .await
        .concurrency(4)
        .page_size(4)
        .build()
        .unwrap();
    let report = migrate_ok(&full).await;
    assert_eq!(
        (
            report.public_applied,
            report.tenants_total,
            report.tenants_migrated,
            report.migrations_applied
        ),
        (0, 10, 10, 20),
        "create_tenant applied the public migration already"
    );

    for n in &names {
        let tenant = Place::Tenant(n);
        for table in ["ledger", "accounts", "projects"] {
            assert!(m.table_exists(tenant, table).await, "{n}: {table}");
        }
        assert!(
            !m.table_exists(tenant, "plans").await,
            "the public migration leaked into {n}"
        );
        let completed = m
            .int(
                tenant,
                "SELECT count(*) FROM mtnt_migrations WHERE status = 'completed' AND error IS NULL",
            )
            .await;
        assert_eq!(completed, Some(4), "{n}");
        // The typed sqlx backfill ran in this tenant, on its own connection.
        let admin_name = m
            .text(
                tenant,
                &format!("SELECT name FROM accounts WHERE email = 'admin@{n}.example'"),
            )
            .await;
        assert_eq!(admin_name, Some(format!("{n}:admin@{n}.example")));
    }
    assert_tracked(
        m,
        Place::Tenant(&names[7]),
        full.migrations(),
        Scope::Tenant,
    )
    .await;
    for record in full.tenants().await.unwrap() {
        assert_eq!(
            (record.applied_order, record.failed_order),
            (Some(BACKFILL), None),
            "{record:?}"
        );
    }

    // The public migration ran once, in the control schema, and is tracked there.
    assert!(m.table_exists(Place::Control, "plans").await);
    assert_eq!(
        m.int(Place::Control, "SELECT count(*) FROM plans").await,
        Some(1)
    );
    assert_tracked(m, Place::Control, full.migrations(), Scope::Public).await;

    // A second run finds nothing to do.
    let again = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(
        (
            again.public_applied,
            again.tenants_current,
            again.migrations_applied
        ),
        (0, 10, 0)
    );

    let status = full.status(&[]).await.unwrap();
    assert_eq!(
        status.summary(),
        "10/10 tenants current, 0 behind, 0 failed"
    );
    assert_eq!(
        (status.public.applied_order, status.public.pending),
        (Some(PLANS), 0)
    );
    assert_eq!(status.latest_tenant_order, Some(BACKFILL));

    // Where the registry sits in another database than the tenant (a file per tenant, a
    // PostgreSQL database per tenant), its applied order is a cache of the tenant's tracking
    // table, written after the tenant commits: a stale one is set right by the next run
    // that reads the tenant. (A schema per tenant and MySQL commit the registry row in the
    // migration's own transaction, so it cannot go stale there.)
    if matches!(m.kind(), Kind::Sqlite | Kind::PgDatabase) {
        m.execute(
            Place::Control,
            &format!(
                "UPDATE mtnt_tenants SET applied_order = NULL, failed_order = {BACKFILL}, \
                 last_error = 'stale' WHERE name = '{}'",
                names[1]
            ),
        )
        .await;
        // These engines keep no fingerprints, so status trusts no registry row and reads
        // the tenant's tracking rows instead: the stale cache does not mislead it.
        assert_summary(&full, "10/10 tenants current, 0 behind, 0 failed").await;
        let healed = full.migrate(&MigrateOptions::new()).await.unwrap();
        assert_eq!((healed.tenants_current, healed.migrations_applied), (10, 0));
        assert_eq!(
            registry(&full, &names[1]).await.unwrap(),
            (TenantState::Active, Some(BACKFILL), None, None)
        );
        assert_summary(&full, "10/10 tenants current, 0 behind, 0 failed").await;
    }
}

/// One tenant fails; the others complete; the failed tenant is left where its engine can
/// leave it, and is finished once the cause is fixed.
async fn failing_tenant_is_isolated(m: &Model) {
    let bad = m.tenant("x-bad");
    let good: Vec<String> = ["alpha", "bravo", "charlie"].map(|b| m.tenant(b)).to_vec();
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    create_tenants(&v1, &good).await;
    create_tenants(&v1, std::slice::from_ref(&bad)).await;

    let full = m.migrator(fleet_to(BACKFILL)).await;
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(!report.is_success());
    assert_eq!(
        (
            report.tenants_total,
            report.tenants_migrated,
            report.migrations_applied
        ),
        (4, 3, 6)
    );
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let failure = &report.failures[0];
    assert_eq!(failure.tenant.as_str(), bad);
    assert!(
        matches!(
            failure.error,
            Error::Migration {
                reverting: false,
                ..
            }
        ),
        "{:?}",
        failure.error
    );
    assert_contains(
        &failure.error.to_string(),
        &[
            &format!("tenant {bad}"),
            "2024_01_01_0004 add_projects",
            "no_such_table",
        ],
    );

    for g in &good {
        assert!(m.table_exists(Place::Tenant(g), "projects").await, "{g}");
        assert_eq!(admins(m, g).await, 1, "{g}");
        assert_eq!(registry(&full, g).await.unwrap().1, Some(BACKFILL), "{g}");
    }

    // The bad tenant: its earlier migrations stand, nothing after the failure ran.
    let place = Place::Tenant(&bad);
    assert!(m.table_exists(place, "accounts").await);
    assert_eq!(
        m.status(place, ACCOUNTS).await.as_deref(),
        Some("completed")
    );
    assert_eq!(m.status(place, BACKFILL).await, None);
    match m.kind().engine() {
        // MySQL committed the CREATE TABLE before the failure: the table stays, and the row
        // stays `started`, since mtnt cannot tell what of the migration took effect.
        Engine::MySql => {
            assert!(m.table_exists(place, "projects").await);
            assert_eq!(m.status(place, PROJECTS).await.as_deref(), Some("started"));
        }
        // Transactional DDL: the failed migration was rolled back as a whole.
        _ => {
            assert!(
                !m.table_exists(place, "projects").await,
                "the failed migration's DDL was not rolled back"
            );
            assert_eq!(m.status(place, PROJECTS).await.as_deref(), Some("failed"));
        }
    }
    let error = recorded_error(m, place, PROJECTS).await;
    assert!(error.contains("no_such_table"), "{error}");
    let (state, applied, failed, last_error) = registry(&full, &bad).await.unwrap();
    assert_eq!(
        (state, applied, failed),
        (TenantState::Active, Some(ACCOUNTS), Some(PROJECTS))
    );
    assert!(last_error.unwrap().contains("no_such_table"));

    // MySQL left the row `started` (its DDL may have taken effect): migrate refuses it
    // until it is repaired, and status says so.
    let bad_summary = match m.kind().engine() {
        Engine::MySql => "3/4 tenants current, 0 behind, 0 failed, 1 need repair",
        _ => "3/4 tenants current, 0 behind, 1 failed",
    };
    let bad_status = tenant_status(&full, bad_summary, &bad).await;
    // Pending: what migrate would apply, nothing where it refuses.
    let bad_pending = if m.kind() == Kind::MySql { 0 } else { 2 };
    assert_eq!(
        (bad_status.applied_order, bad_status.pending),
        (Some(ACCOUNTS), bad_pending)
    );
    if m.kind() == Kind::MySql {
        // Status names the migration and why; the CLI adds the repair (`--mark`), and
        // the error is in the registry row.
        assert_eq!(bad_status.condition, mtnt::Condition::NeedsRepair);
        let detail = bad_status.detail.as_deref().unwrap();
        assert!(detail.contains("2024_01_01_0004 add_projects"), "{detail}");
        assert!(detail.contains("started and never completed"), "{detail}");
    } else {
        let failed = bad_status.failed.as_ref().unwrap();
        assert_eq!(
            (failed.order, failed.name),
            (PROJECTS, Some("add_projects"))
        );
        assert!(failed.error.as_deref().unwrap().contains("no_such_table"));
    }

    // A binary without the failed migration (the deploy was reverted) sees nothing failed,
    // and refuses the tenants that are ahead of it, changing nothing; on MySQL that includes
    // the failed tenant, whose `started` row may have taken effect. (A backend may refuse
    // the whole run up front instead of tenant by tenant: the same refusal, earlier.)
    if m.kind() == Kind::MySql {
        // Status classifies as a run plans: each tenant has a migration v1 does not know
        // (the failed one's `started` row included).
        assert_summary(
            &v1,
            "0/4 tenants current, 0 behind, 0 failed, 4 ahead of this binary",
        )
        .await;
    } else {
        // No registry row proves a tenant current for v1 (their fingerprints are of
        // migrations it does not have), so status reads the tracking rows: the good tenants
        // have migrations v1 does not know; the bad one's failed row is no applied one.
        assert_summary(
            &v1,
            "1/4 tenants current, 0 behind, 0 failed, 3 ahead of this binary",
        )
        .await;
    }
    match v1.migrate(&MigrateOptions::new()).await {
        Ok(reverted) => {
            let ahead: Vec<&str> = reverted
                .failures
                .iter()
                .map(|f| f.tenant.as_str())
                .collect();
            let mut expected: Vec<&str> = good.iter().map(String::as_str).collect();
            if m.kind() == Kind::MySql {
                expected.push(&bad);
            }
            assert_eq!(ahead, expected);
            assert!(reverted
                .failures
                .iter()
                .all(|f| matches!(f.error, Error::UnknownApplied { .. })));
        }
        Err(error) => assert!(matches!(error, Error::UnknownApplied { .. }), "{error:?}"),
    }
    assert_summary(&full, bad_summary).await;

    // Still broken: the same tenant fails again, nothing else changes.
    let again = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((again.tenants_current, again.failures.len()), (3, 1));
    let error = &again.failures[0].error;
    match m.kind().engine() {
        // MySQL refuses to guess, and says how to go on.
        Engine::MySql => {
            assert!(matches!(error, Error::Interrupted { .. }), "{error:?}");
            assert_contains(&error.to_string(), &["started and never completed"]);
            assert_contains(
                &mtnt::cli_fix(error).unwrap(),
                &[
                    &format!("repair --tenant {bad} --order {PROJECTS} --mark completed"),
                    "--mark pending",
                ],
            );
        }
        _ => {
            assert!(matches!(error, Error::Migration { .. }), "{error:?}")
        }
    }

    // Fixed: the re-run finishes the tenant and clears the failure.
    FIXED.lock().unwrap().insert(bad.clone());
    let expected_applied = match m.kind().engine() {
        Engine::MySql => {
            // The table is there: it took effect.
            full.mark(Some(&name(&bad)), PROJECTS, MigrationStatus::Completed)
                .await
                .unwrap();
            assert_eq!(
                registry(&full, &bad).await.unwrap(),
                (TenantState::Active, Some(PROJECTS), None, None)
            );
            1
        }
        _ => 2,
    };
    let fixed = full
        .migrate(&MigrateOptions::new().tenants([name(&bad)]))
        .await
        .unwrap();
    assert!(fixed.is_success(), "{:?}", fixed.failures);
    assert_eq!(
        (fixed.tenants_migrated, fixed.migrations_applied),
        (1, expected_applied)
    );
    assert_completed(m, &bad, &TENANT_ORDERS).await;
    assert_eq!(
        registry(&full, &bad).await.unwrap(),
        (TenantState::Active, Some(BACKFILL), None, None)
    );
    assert_summary(&full, "4/4 tenants current, 0 behind, 0 failed").await;
}

/// Rollback by steps and to an order, one tenant only; unknown orders and tenants are
/// refused; migrate re-applies what was reverted.
async fn rollback_by_steps_and_to_an_order(m: &Model) {
    let (migrator, [acme, globex]) = created(m, ["acme", "globex"]).await;
    let place = Place::Tenant(&acme);

    let one = migrator
        .rollback(&name(&acme), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(one.reverted, [(BACKFILL, "backfill_admin")]);
    assert_eq!(
        admins(m, &acme).await,
        0,
        "the backfill's down removed its row"
    );
    assert_eq!(m.status(place, BACKFILL).await.as_deref(), Some("pending"));
    assert_eq!(
        m.int(
            place,
            &format!(
                "SELECT count(*) FROM mtnt_migrations WHERE migration_order = {BACKFILL} \
                 AND finished_at IS NOT NULL AND error IS NULL"
            )
        )
        .await,
        Some(1)
    );
    assert_eq!(registry(&migrator, &acme).await.unwrap().1, Some(PROJECTS));
    // The other tenant is untouched.
    assert_eq!(admins(m, &globex).await, 1);
    assert_eq!(
        registry(&migrator, &globex).await.unwrap().1,
        Some(BACKFILL)
    );

    // To an order: everything newer is reverted, the one at it stays.
    let to = migrator
        .rollback(&name(&acme), RollbackTarget::To(ACCOUNTS))
        .await
        .unwrap();
    assert_eq!(to.reverted, [(PROJECTS, "add_projects")]);
    assert!(!m.table_exists(place, "projects").await);
    assert!(m.table_exists(place, "accounts").await);
    assert_eq!(
        statuses(m, &acme, &TENANT_ORDERS).await,
        ["completed", "completed", "pending", "pending"].map(|s| Some(s.to_owned()))
    );
    assert_eq!(registry(&migrator, &acme).await.unwrap().1, Some(ACCOUNTS));

    // Rolling back to where it stands reverts nothing.
    let none = migrator
        .rollback(&name(&acme), RollbackTarget::To(ACCOUNTS))
        .await
        .unwrap();
    assert!(none.reverted.is_empty());

    match migrator
        .rollback(&name(&acme), RollbackTarget::To(2099_01_01_0001))
        .await
    {
        Err(Error::UnknownOrder(order)) => assert_eq!(order, "2099_01_01_0001"),
        other => panic!("expected UnknownOrder, got {other:?}"),
    }
    let nobody = m.tenant("nobody");
    match migrator
        .rollback(&name(&nobody), RollbackTarget::Steps(1))
        .await
    {
        Err(Error::UnknownTenant(tenant)) => assert_eq!(tenant, nobody),
        other => panic!("expected UnknownTenant, got {other:?}"),
    }
    assert!(m.table_exists(place, "accounts").await);

    let acme_status =
        tenant_status(&migrator, "1/2 tenants current, 1 behind, 0 failed", &acme).await;
    assert_eq!(
        (acme_status.applied_order, acme_status.pending),
        (Some(ACCOUNTS), 2)
    );

    // Migrating again re-applies the reverted migrations.
    let back = migrate_ok(&migrator).await;
    assert_eq!((back.tenants_migrated, back.migrations_applied), (1, 2));
    assert!(m.table_exists(place, "projects").await);
    assert_eq!(admins(m, &acme).await, 1);
    assert_completed(m, &acme, &TENANT_ORDERS).await;
    assert_eq!(registry(&migrator, &acme).await.unwrap().1, Some(BACKFILL));
}

/// A rollback that would have to pass a migration without a down function is refused up
/// front, before any down function runs.
async fn irreversible_rollback_is_refused_and_changes_nothing(m: &Model) {
    let (migrator, [acme]) = created(m, ["acme"]).await;
    let place = Place::Tenant(&acme);

    for how_far in [RollbackTarget::Steps(4), RollbackTarget::All] {
        let error = migrator.rollback(&name(&acme), how_far).await.unwrap_err();
        assert!(matches!(error, Error::Irreversible { .. }), "{error:?}");
        assert_contains(
            &error.to_string(),
            &[
                &format!("tenant {acme}"),
                "2024_01_01_0002 create_ledger",
                "nothing was changed",
            ],
        );
        assert_completed(m, &acme, &TENANT_ORDERS).await;
        assert!(
            m.table_exists(place, "projects").await,
            "a down function ran"
        );
        assert_eq!(admins(m, &acme).await, 1, "a down function ran");
        assert_eq!(registry(&migrator, &acme).await.unwrap().1, Some(BACKFILL));
    }

    // Down to the irreversible one is fine; one more step is refused.
    let report = migrator
        .rollback(&name(&acme), RollbackTarget::To(LEDGER))
        .await
        .unwrap();
    assert_eq!(
        report.reverted,
        [
            (BACKFILL, "backfill_admin"),
            (PROJECTS, "add_projects"),
            (ACCOUNTS, "create_accounts")
        ]
    );
    assert!(!m.table_exists(place, "accounts").await);
    let error = migrator
        .rollback(&name(&acme), RollbackTarget::Steps(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Irreversible { .. }), "{error:?}");
    assert!(m.table_exists(place, "ledger").await);
    assert_eq!(m.status(place, LEDGER).await.as_deref(), Some("completed"));
    assert_eq!(registry(&migrator, &acme).await.unwrap().1, Some(LEDGER));
}

/// A down function that fails after its DDL: rolled back with its transaction where DDL is
/// transactional; on MySQL the DROP stands and the row stays `started` until repaired.
async fn failing_down_function(m: &Model) {
    let (migrator, [stuck]) = created(m, ["x-stuck"]).await;
    let place = Place::Tenant(&stuck);

    // Two steps: the backfill's down succeeds, add_projects' down fails.
    let error = migrator
        .rollback(&name(&stuck), RollbackTarget::Steps(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Migration {
                reverting: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert_contains(
        &error.to_string(),
        &[
            "while reverting",
            "2024_01_01_0004 add_projects",
            &format!("tenant {stuck}"),
            "the down function gave up halfway",
        ],
    );
    assert_eq!(m.status(place, BACKFILL).await.as_deref(), Some("pending"));
    assert_eq!(admins(m, &stuck).await, 0);

    match m.kind().engine() {
        Engine::MySql => {
            assert!(
                !m.table_exists(place, "projects").await,
                "MySQL committed the DROP"
            );
            assert_eq!(m.status(place, PROJECTS).await.as_deref(), Some("started"));
            assert_eq!(registry(&migrator, &stuck).await.unwrap().2, Some(PROJECTS));
            assert_summary(
                &migrator,
                "0/1 tenants current, 0 behind, 0 failed, 1 need repair",
            )
            .await;
            // Neither a further rollback nor a migrate goes past the half-reverted migration.
            let error = migrator
                .rollback(&name(&stuck), RollbackTarget::Steps(1))
                .await
                .unwrap_err();
            assert!(matches!(error, Error::Interrupted { .. }), "{error:?}");
            assert!(m.table_exists(place, "accounts").await);
            let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
            assert!(
                matches!(report.failures[0].error, Error::Interrupted { .. }),
                "{:?}",
                report.failures
            );
            // The table is gone: mark it pending, and migrate brings it back.
            migrator
                .mark(Some(&name(&stuck)), PROJECTS, MigrationStatus::Pending)
                .await
                .unwrap();
        }
        _ => {
            assert!(
                m.table_exists(place, "projects").await,
                "the down function's DDL was not rolled back"
            );
            assert_eq!(
                m.status(place, PROJECTS).await.as_deref(),
                Some("completed")
            );
            assert_eq!(registry(&migrator, &stuck).await.unwrap().1, Some(PROJECTS));
            assert_summary(&migrator, "0/1 tenants current, 1 behind, 0 failed").await;
            // Fixed, the rollback goes through.
            FIXED.lock().unwrap().insert(stuck.clone());
            let report = migrator
                .rollback(&name(&stuck), RollbackTarget::Steps(1))
                .await
                .unwrap();
            assert_eq!(report.reverted, [(PROJECTS, "add_projects")]);
            assert!(!m.table_exists(place, "projects").await);
        }
    }
    migrate_ok(&migrator).await;
    assert!(m.table_exists(place, "projects").await);
    assert_completed(m, &stuck, &TENANT_ORDERS).await;
    assert_summary(&migrator, "1/1 tenants current, 0 behind, 0 failed").await;
}

/// `create_tenant`: registry row, storage and every migration, or nothing. PostgreSQL
/// schema-per-tenant and SQLite do it in one transaction; PostgreSQL database-per-tenant and
/// MySQL by compensation (the storage is dropped again), which this test sees the same way;
/// their documented limit, a process dying midway, leaves the tenant `creating`.
async fn create_tenant_is_all_or_nothing(m: &Model) {
    let migrator = m.migrator(fleet_to(BACKFILL)).await;
    let slow = m.tenant("acme-slow");
    let tenant = migrator.create_tenant(&name(&slow)).await.unwrap();
    assert_eq!(
        (tenant.name.as_str(), tenant.storage.as_str()),
        (&*slow, &*slow)
    );
    let place = Place::Tenant(&slow);
    for table in ["ledger", "accounts", "projects"] {
        assert!(m.table_exists(place, table).await, "{table}");
    }
    assert_eq!(admins(m, &slow).await, 1);
    assert_tracked(m, place, migrator.migrations(), Scope::Tenant).await;
    // The timestamps time each migration, although they share one transaction:
    // create_ledger took 50 ms, and create_accounts started after it ended.
    let timed = m
        .int(
            place,
            &format!(
                "SELECT count(*) FROM mtnt_migrations l, mtnt_migrations a \
                 WHERE l.migration_order = {LEDGER} AND a.migration_order = {ACCOUNTS} \
                 AND l.duration_ms >= 50 AND l.started_at < l.finished_at \
                 AND l.finished_at <= a.started_at"
            ),
        )
        .await;
    assert_eq!(
        timed,
        Some(1),
        "the tracking rows do not time each migration"
    );
    let (state, applied, failed, _) = registry(&migrator, &slow).await.unwrap();
    assert_eq!(
        (state, applied, failed),
        (TenantState::Active, Some(BACKFILL), None)
    );

    // A tenant whose migration fails leaves no storage and no registry row, and can be
    // tried again (nothing half-made blocks the name).
    let bad = m.tenant("x-bad");
    for _ in 0..2 {
        let error = migrator.create_tenant(&name(&bad)).await.unwrap_err();
        assert!(matches!(error, Error::Migration { .. }), "{error:?}");
        assert_contains(
            &error.to_string(),
            &[
                &format!("tenant {bad}"),
                "2024_01_01_0004 add_projects",
                "no_such_table",
            ],
        );
        assert!(
            !m.storage_exists(&bad).await,
            "the failed tenant's storage is left"
        );
        assert!(
            registry(&migrator, &bad).await.is_none(),
            "the failed tenant's registry row is left"
        );
    }
    assert_eq!(migrator.backend().tenant_count().await.unwrap(), 1);
    assert_eq!(
        m.int(Place::Control, "SELECT count(*) FROM plans").await,
        Some(1),
        "the public migration ran again"
    );

    // Names are taken once; the existing tenant is untouched.
    m.execute(
        place,
        "INSERT INTO accounts (email) VALUES ('someone@example.com')",
    )
    .await;
    match migrator.create_tenant(&name(&slow)).await {
        Err(Error::TenantExists(n)) => assert_eq!(n, slow),
        other => panic!("expected TenantExists, got {other:?}"),
    }
    assert_eq!(m.int(place, "SELECT count(*) FROM accounts").await, Some(2));

    // Storage named like a tenant that mtnt did not make is never taken over.
    let squatter = m.tenant("squatter");
    m.make_storage(
        &squatter,
        "CREATE TABLE keep (id INTEGER); INSERT INTO keep VALUES (7)",
    )
    .await;
    let error = migrator.create_tenant(&name(&squatter)).await.unwrap_err();
    // The CLI adds the fix (`tenant adopt`) to this typed error; tests/cli_* check it.
    assert!(
        matches!(error, mtnt::Error::StorageExists { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("is not a registered tenant"),
        "{error}"
    );
    assert!(registry(&migrator, &squatter).await.is_none());
    assert!(
        !m.table_exists(Place::Tenant(&squatter), "mtnt_migrations")
            .await
    );
    assert_eq!(
        m.int(
            Place::Tenant(&squatter),
            "SELECT count(*) FROM keep WHERE id = 7"
        )
        .await,
        Some(1)
    );

    // Dropping removes the storage and the row.
    migrator.drop_tenant(&tenant.name).await.unwrap();
    assert!(!m.storage_exists(&slow).await);
    assert_eq!(migrator.backend().tenant_count().await.unwrap(), 0);
}

/// `transaction = false`: `create_tenant` runs them after the transactional prefix and still
/// removes everything on failure; a failure during `migrate` leaves the row `started` (it
/// could not be rolled back) until it is marked; an idempotent one is simply run again.
async fn non_transactional_migrations(m: &Model) {
    let migrator = m.migrator(nontx_to(TAGS)).await;
    let orders = [ITEMS, INDEX, NOTES, TAGS];
    let steady = m.tenant("steady");
    create_tenants(&migrator, std::slice::from_ref(&steady)).await;
    assert!(m.index_exists(Place::Tenant(&steady), "items_sku").await);
    assert!(m.table_exists(Place::Tenant(&steady), "tags").await);
    assert_completed(m, &steady, &orders).await;
    assert_eq!(
        registry(&migrator, &steady).await.unwrap(),
        (TenantState::Active, Some(TAGS), None, None)
    );

    // A failure in the non-transactional step, or after it, removes everything of the tenant.
    for (base, cause) in [
        ("x-flaky", "flaky lost its nerve"),
        ("x-doomed", "no_such_table"),
    ] {
        let doomed = m.tenant(base);
        let error = migrator.create_tenant(&name(&doomed)).await.unwrap_err();
        assert!(error.to_string().contains(cause), "{error}");
        assert!(!m.storage_exists(&doomed).await, "{doomed} was left");
        assert!(registry(&migrator, &doomed).await.is_none());
    }

    // During `migrate`: the row stays `started`, with the error.
    let flaky = m.tenant("x-flaky");
    let place = Place::Tenant(&flaky);
    create_tenants(
        &m.migrator(nontx_to(ITEMS)).await,
        std::slice::from_ref(&flaky),
    )
    .await;
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(
        m.index_exists(place, "items_sku").await,
        "it could not be rolled back"
    );
    assert_eq!(m.status(place, INDEX).await.as_deref(), Some("started"));
    let error = recorded_error(m, place, INDEX).await;
    assert!(error.contains("flaky lost its nerve"), "{error}");
    let (_, applied, failed, _) = registry(&migrator, &flaky).await.unwrap();
    assert_eq!((applied, failed), (Some(ITEMS), Some(INDEX)));
    // Left `started`: migrate refuses it until it is repaired, and status says so.
    assert_summary(
        &migrator,
        "1/2 tenants current, 0 behind, 0 failed, 1 need repair",
    )
    .await;

    // The next run refuses to guess, and nothing after it runs.
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    let error = &report.failures[0].error;
    assert!(matches!(error, Error::Interrupted { .. }), "{error:?}");
    assert_contains(
        &error.to_string(),
        &[
            "2024_02_01_0002 index_items",
            &format!("tenant {flaky}"),
            "not declared idempotent",
        ],
    );
    assert_contains(
        &mtnt::cli_fix(error).unwrap(),
        &[
            &format!("repair --tenant {flaky} --order {INDEX} --mark completed"),
            "--mark pending",
        ],
    );
    assert!(!m.table_exists(place, "notes").await);

    // Checked by hand and marked completed: the rest runs and the failure clears.
    migrator
        .mark(Some(&name(&flaky)), INDEX, MigrationStatus::Completed)
        .await
        .unwrap();
    assert_eq!(m.status(place, INDEX).await.as_deref(), Some("completed"));
    let report = migrate_ok(&migrator).await;
    assert_eq!(report.migrations_applied, 2);
    assert_eq!(
        registry(&migrator, &flaky).await.unwrap(),
        (TenantState::Active, Some(TAGS), None, None)
    );

    // An interrupted idempotent migration is run again without asking.
    m.execute(
        place,
        &format!(
            "DROP TABLE tags; UPDATE mtnt_migrations SET status = 'started', finished_at = NULL \
             WHERE migration_order = {TAGS}"
        ),
    )
    .await;
    let report = migrate_ok(&migrator).await;
    assert_eq!(report.migrations_applied, 1);
    assert!(m.table_exists(place, "tags").await);
    assert_completed(m, &flaky, &orders).await;

    // A run that died inside the non-transactional migration, before the index was made
    // and before the later migrations ran: refused until marked; marked pending, it runs
    // again, and the rest after it.
    let drop_index = match m.kind().engine() {
        Engine::MySql => "DROP INDEX items_sku ON items",
        _ => "DROP INDEX items_sku",
    };
    let place = Place::Tenant(&steady);
    m.execute(
        place,
        &format!(
            "{drop_index}; DROP TABLE notes; DROP TABLE tags;
             DELETE FROM mtnt_migrations WHERE migration_order > {INDEX};
             UPDATE mtnt_migrations SET status = 'started', finished_at = NULL, duration_ms = NULL
             WHERE migration_order = {INDEX}"
        ),
    )
    .await;
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].tenant.as_str(), steady);
    let error = &report.failures[0].error;
    assert!(matches!(error, Error::Interrupted { .. }), "{error:?}");
    assert!(
        !m.table_exists(place, "notes").await,
        "it ran past the interrupted one"
    );
    migrator
        .mark(Some(&name(&steady)), INDEX, MigrationStatus::Pending)
        .await
        .unwrap();
    assert_eq!(m.status(place, INDEX).await.as_deref(), Some("pending"));
    let report = migrate_ok(&migrator).await;
    assert_eq!(report.migrations_applied, 3);
    assert!(m.index_exists(place, "items_sku").await);
    assert_completed(m, &steady, &orders).await;
    assert_summary(&migrator, "2/2 tenants current, 0 behind, 0 failed").await;
}

/// Two runs at once (two deploys, each with its own pool): every migration is applied once,
/// the public one too, and neither run fails.
async fn concurrent_runs_apply_each_migration_once(m: &Model) {
    let names: Vec<String> = (1..=4).map(|i| m.tenant(&format!("c{i}-slow"))).collect();
    create_tenants(&m.migrator(fleet_to(ACCOUNTS)).await, &names).await;
    let everything = MigrationSet::registered_in("behaviour::migrations").unwrap();
    let (a, b) = (
        m.migrator(everything.clone()).await,
        m.migrator(everything).await,
    );
    let options = MigrateOptions::new();
    let (ra, rb) = tokio::join!(a.migrate(&options), b.migrate(&options));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let errors: Vec<String> = ra
        .failures
        .iter()
        .chain(&rb.failures)
        .map(|f| format!("{}: {}", f.tenant, f.error))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        ra.public_applied + rb.public_applied,
        1,
        "the public migration ran twice or not at all"
    );
    assert_eq!(
        ra.migrations_applied + rb.migrations_applied,
        4 * 6,
        "a tenant migration ran twice or not at all"
    );
    assert_eq!(
        m.int(Place::Control, "SELECT count(*) FROM features").await,
        Some(1)
    );
    let orders: Vec<i64> = a
        .migrations()
        .scope(Scope::Tenant)
        .map(|m| m.order())
        .collect();
    for n in &names {
        assert_completed(m, n, &orders).await;
        assert_eq!(admins(m, n).await, 1, "{n}: the backfill ran twice");
    }
    assert_summary(&a, "4/4 tenants current, 0 behind, 0 failed").await;
}

/// An applied migration edited afterwards is refused, in a tenant or in the public schema,
/// until `repair_checksums` records the new checksum.
async fn checksum_drift_is_refused_until_repaired(m: &Model) {
    let (a, b) = (m.tenant("a"), m.tenant("b"));
    create_tenants(
        &m.migrator(fleet_to(ACCOUNTS)).await,
        &[a.clone(), b.clone()],
    )
    .await;
    let full = m.migrator(fleet_to(BACKFILL)).await;
    let code_checksum = full.migrations().get(ACCOUNTS).unwrap().checksum();

    // Someone edited create_accounts after it was applied to tenant a.
    m.execute(
        Place::Tenant(&a),
        &format!(
            "UPDATE mtnt_migrations SET checksum = 'tampered' WHERE migration_order = {ACCOUNTS}"
        ),
    )
    .await;
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let failure = &report.failures[0];
    assert_eq!(failure.tenant.as_str(), a);
    match &failure.error {
        Error::ChecksumMismatch {
            recorded, current, ..
        } => assert_eq!(
            (recorded.as_str(), current.as_str()),
            ("tampered", code_checksum)
        ),
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    assert_contains(
        &failure.error.to_string(),
        &[
            "2024_01_01_0003 create_accounts",
            &format!("tenant {a}"),
            "nothing was run",
        ],
    );
    assert_contains(
        &mtnt::cli_fix(&failure.error).unwrap(),
        &["repair --checksums"],
    );
    // Nothing ran in a; b went on.
    assert!(!m.table_exists(Place::Tenant(&a), "projects").await);
    assert_eq!(m.status(Place::Tenant(&a), PROJECTS).await, None);
    assert_eq!(registry(&full, &a).await.unwrap().1, Some(ACCOUNTS));
    assert!(m.table_exists(Place::Tenant(&b), "projects").await);

    let error = full
        .rollback(&name(&a), RollbackTarget::Steps(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::ChecksumMismatch { .. }), "{error:?}");
    assert!(
        m.table_exists(Place::Tenant(&a), "accounts").await,
        "it was rolled back"
    );

    // repair_checksums records the code's checksum, and only where it differs.
    assert_eq!(full.repair_checksums(&[]).await.unwrap(), 1);
    assert_eq!(
        m.text(
            Place::Tenant(&a),
            &format!("SELECT checksum FROM mtnt_migrations WHERE migration_order = {ACCOUNTS}")
        )
        .await
        .as_deref(),
        Some(code_checksum)
    );
    assert_eq!(full.repair_checksums(&[]).await.unwrap(), 0);
    let report = migrate_ok(&full).await;
    assert_eq!((report.tenants_migrated, report.tenants_current), (1, 1));
    assert!(m.table_exists(Place::Tenant(&a), "projects").await);

    // Drift in the public schema stops the whole run before any tenant.
    m.execute(
        Place::Control,
        &format!("UPDATE mtnt_migrations SET checksum = 'edited' WHERE migration_order = {PLANS}"),
    )
    .await;
    match full.migrate(&MigrateOptions::new()).await {
        Err(Error::ChecksumMismatch {
            target, migration, ..
        }) => assert_eq!(
            (target.as_str(), migration.as_str()),
            ("the public schema", "2024_01_01_0001 create_plans")
        ),
        other => panic!("expected ChecksumMismatch, got {other:?}"),
    }
    // Repairing only named tenants still repairs the public schema.
    assert_eq!(full.repair_checksums(&[name(&b)]).await.unwrap(), 1);
    migrate_ok(&full).await;
}

/// A tracking table with a migration this binary does not know (a newer deploy applied it)
/// is refused before anything runs, in a tenant or in the public schema.
async fn unknown_applied_migration_is_refused(m: &Model) {
    let (ahead, normal) = (m.tenant("ahead"), m.tenant("normal"));
    create_tenants(
        &m.migrator(fleet_to(ACCOUNTS)).await,
        &[ahead.clone(), normal.clone()],
    )
    .await;
    let full = m.migrator(fleet_to(BACKFILL)).await;
    let future = "INSERT INTO mtnt_migrations (migration_order, name, checksum, status) VALUES";

    // In the public schema: the run stops before any tenant.
    m.execute(
        Place::Control,
        &format!("{future} (209901010002, 'public_future', 'abc', 'completed')"),
    )
    .await;
    match full.migrate(&MigrateOptions::new()).await {
        Err(Error::UnknownApplied { target, .. }) => assert_eq!(target, "the public schema"),
        other => panic!("expected UnknownApplied, got {other:?}"),
    }
    assert!(!m.table_exists(Place::Tenant(&normal), "projects").await);
    m.execute(
        Place::Control,
        "DELETE FROM mtnt_migrations WHERE migration_order = 209901010002",
    )
    .await;

    // In a tenant: that tenant is refused, the others go on.
    m.execute(
        Place::Tenant(&ahead),
        &format!("{future} (209901010001, 'from_the_future', 'abc', 'completed')"),
    )
    .await;

    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].tenant.as_str(), ahead);
    match &report.failures[0].error {
        Error::UnknownApplied {
            target,
            order,
            name,
        } => assert_eq!(
            (target.as_str(), order.as_str(), name.as_str()),
            (
                format!("tenant {ahead}").as_str(),
                "2099_01_01_0001",
                "from_the_future"
            )
        ),
        other => panic!("expected UnknownApplied, got {other:?}"),
    }
    assert!(report.failures[0]
        .error
        .to_string()
        .contains("this binary does not know"));
    assert!(
        !m.table_exists(Place::Tenant(&ahead), "projects").await,
        "a migration ran in a tenant that is ahead"
    );
    assert!(m.table_exists(Place::Tenant(&normal), "projects").await);

    // Rolling back is refused as well, before anything changes.
    let error = full
        .rollback(&name(&ahead), RollbackTarget::Steps(1))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UnknownApplied { .. }), "{error:?}");
    assert!(m.table_exists(Place::Tenant(&ahead), "accounts").await);
}

/// `adopt` registers storage made without mtnt (an existing deployment), recording a
/// baseline of migrations it already reflects; invalid names are skipped.
async fn adopt_registers_existing_storage(m: &Model) {
    let (a, b) = (m.tenant("legacy-a"), m.tenant("legacy-b"));
    let invalid = m.tenant("Legacy_c");
    let id = migrations::id_column(m.kind().engine());
    // What the migrations up to the baseline would have made, by hand.
    for tenant in [&a, &b, &invalid] {
        m.make_storage(
            tenant,
            &format!(
                "CREATE TABLE ledger (id BIGINT PRIMARY KEY, note TEXT);
                 CREATE TABLE accounts ({id}, email VARCHAR(255) UNIQUE, name VARCHAR(255));
                 INSERT INTO accounts (email) VALUES ('old@example.com')"
            ),
        )
        .await;
    }
    let unrelated = m.tenant("unrelated");
    m.make_storage(&unrelated, "CREATE TABLE keep (id INTEGER)")
        .await;
    let migrator = m.migrator(fleet_to(BACKFILL)).await;
    let pattern = format!("{}%egacy%", escape_like(m.prefix()));

    match migrator.adopt(&pattern, Some(2099_01_01_0001)).await {
        Err(Error::UnknownOrder(_)) => {}
        other => panic!("expected UnknownOrder, got {other:?}"),
    }
    let (adopted, skipped) = migrator.adopt(&pattern, Some(ACCOUNTS)).await.unwrap();
    let adopted: Vec<&str> = adopted.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(adopted, [a.as_str(), b.as_str()]);
    assert_eq!(
        skipped,
        std::slice::from_ref(&invalid),
        "an invalid tenant name is adopted"
    );

    let records = migrator.tenants().await.unwrap();
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(
            (record.state, record.applied_order, record.failed_order),
            (TenantState::Active, Some(ACCOUNTS), None),
            "{record:?}"
        );
        assert_eq!(record.tenant.storage, record.tenant.name.as_str());
    }
    let baseline = fleet_to(ACCOUNTS);
    assert_tracked(m, Place::Tenant(&a), &baseline, Scope::Tenant).await;

    // Adopting again finds nothing new.
    let (again, _) = migrator.adopt(&pattern, Some(ACCOUNTS)).await.unwrap();
    assert!(again.is_empty());

    // migrate applies only what comes after the baseline, and keeps the data.
    let report = migrate_ok(&migrator).await;
    assert_eq!((report.tenants_migrated, report.migrations_applied), (2, 4));
    for tenant in [&a, &b] {
        let place = Place::Tenant(tenant);
        assert!(m.table_exists(place, "projects").await, "{tenant}");
        assert_eq!(
            m.int(
                place,
                "SELECT count(*) FROM accounts WHERE email = 'old@example.com'"
            )
            .await,
            Some(1)
        );
        assert_eq!(registry(&migrator, tenant).await.unwrap().1, Some(BACKFILL));
    }
    assert!(
        !m.table_exists(Place::Tenant(&invalid), "mtnt_migrations")
            .await
    );
    assert!(
        !m.table_exists(Place::Tenant(&unrelated), "mtnt_migrations")
            .await
    );

    // Without a baseline every tenant migration runs on the adopted storage.
    let (adopted, _) = migrator
        .adopt(&format!("{}unrelated", escape_like(m.prefix())), None)
        .await
        .unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(registry(&migrator, &unrelated).await.unwrap().1, None);
    let report = migrate_ok(&migrator).await;
    assert_eq!(
        (
            report.tenants_migrated,
            report.migrations_applied,
            report.tenants_current
        ),
        (1, 4, 2)
    );
    assert!(m.table_exists(Place::Tenant(&unrelated), "projects").await);
    assert_summary(&migrator, "3/3 tenants current, 0 behind, 0 failed").await;
}

/// How the CLI names a tenant's storage on this model.
fn storage(m: &Model, tenant: &str) -> String {
    match m.kind() {
        Kind::Sqlite => format!("file {tenant}.db"),
        Kind::PgSchema => format!("schema {tenant}"),
        Kind::PgDatabase | Kind::MySql => format!("database {tenant}"),
    }
}

/// How the CLI names where the public migrations run on this model.
fn public_label(m: &Model) -> String {
    match m.kind() {
        Kind::Sqlite => "public (file mtnt_control.db)".to_owned(),
        Kind::PgSchema => "public (schema public)".to_owned(),
        Kind::PgDatabase => format!("public (database {}, schema public)", m.control_name()),
        Kind::MySql => format!("public (database {})", m.control_name()),
    }
}

/// The portable CLI app, run on this model.
fn app(m: &Model) -> Command {
    Command::from_std(m.command(assert_cmd::cargo::cargo_bin("mtnt-portable-app")))
}

/// Runs `cmd`, which must succeed, and parses what it printed as JSON.
fn json(cmd: &mut Command) -> serde_json::Value {
    let output = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&output).unwrap()
}

/// The command line on each engine: create, migrate, status and `status --json`, rollback.
async fn cli_status_and_json(m: &Model) {
    let names = ["acme", "beta", "gamma"].map(|b| m.tenant(b));
    let [acme, beta, gamma] = &names;
    for n in &names {
        // The first create applies the public migrations first, and says so.
        let public_first = format!("{}: applied 2 pending migrations first\n", public_label(m));
        let says_public = predicate::str::contains(public_first);
        app(m)
            .args(["tenant", "create", n])
            .assert()
            .success()
            .stdout(predicate::str::contains(format!(
                "created tenant {n} ({}) with every tenant migration applied",
                storage(m, n)
            )))
            .stdout(if n == acme {
                says_public.boxed()
            } else {
                says_public.not().boxed()
            });
    }
    // A tenant whose migration fails: nothing of it remains.
    let bad = m.tenant("x-bad");
    app(m)
        .args(["tenant", "create", &bad])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "while applying 2024_01_01_0004 add_projects to tenant {bad}"
        )))
        .stderr(predicate::str::contains("no_such_table"));
    assert!(!m.storage_exists(&bad).await);
    assert_eq!(
        m.int(
            Place::Control,
            &format!("SELECT count(*) FROM mtnt_tenants WHERE name = '{bad}'")
        )
        .await,
        Some(0)
    );
    app(m)
        .args(["tenant", "create", acme])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "tenant \"{acme}\" exists already"
        )));

    app(m)
        .arg("migrate")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "tenants: 3 total, 0 migrated (0 migrations), 3 already current, 0 failed",
        ));
    app(m)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "{}: at 2024_03_01_0001, 0 pending",
            public_label(m)
        )))
        .stdout(predicate::str::contains(
            "3/3 tenants current, 0 behind, 0 failed",
        ));

    // Rolling back past the irreversible create_ledger is refused, and nothing changes.
    app(m)
        .args(["rollback", "--tenant", beta, "--steps", "9"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "2024_01_01_0002 create_ledger has no down function",
        ));
    assert_eq!(
        m.int(
            Place::Tenant(beta),
            "SELECT count(*) FROM mtnt_migrations WHERE status = 'completed'"
        )
        .await,
        Some(8)
    );
    app(m)
        .args(["rollback", "--tenant", beta, "--to", "2024_02_01_0004"])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing to roll back"));

    // A tenant behind shows in status, in the summary and in the JSON.
    app(m)
        .args(["rollback", "--tenant", gamma, "--steps", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "tenant {gamma}: reverted 2024_02_01_0004 create_tags"
        )));
    assert!(!m.table_exists(Place::Tenant(gamma), "tags").await);
    app(m)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("1 behind"))
        .stdout(predicate::str::contains(
            "2/3 tenants current, 1 behind, 0 failed",
        ));
    let status = json(app(m).args(["status", "--json"]));
    assert_eq!(status["summary"], "2/3 tenants current, 1 behind, 0 failed");
    assert_eq!(status["public"]["applied_order"], FEATURES);
    assert_eq!(status["latest_tenant_order"], TAGS);
    assert_eq!(status["tenants"].as_array().unwrap().len(), 3);
    let g = &status["tenants"][2];
    assert_eq!(g["tenant"], gamma.as_str());
    assert_eq!(g["storage"], gamma.as_str());
    assert_eq!(g["state"], "active");
    assert_eq!(g["applied_order"], NOTES);
    assert_eq!(g["pending"], 1);
    assert_eq!(g["failed"], serde_json::Value::Null);

    app(m)
        .args(["migrate", "--tenant", gamma])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "tenants: 1 total, 1 migrated (1 migration)",
        ));
    assert!(m.table_exists(Place::Tenant(gamma), "tags").await);

    let list = json(app(m).args(["tenant", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 3);
    app(m)
        .args(["tenant", "drop", beta, "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("dropped tenant {beta}")));
    assert!(!m.storage_exists(beta).await);
    let column = match m.kind() {
        Kind::Sqlite => "FILE",
        Kind::PgSchema => "SCHEMA",
        Kind::PgDatabase | Kind::MySql => "DATABASE",
    };
    app(m)
        .args(["tenant", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\n2 tenants\n"))
        .stdout(predicate::function(move |out: &str| {
            out.lines()
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                == ["TENANT", column, "STATE", "APPLIED", "CREATED"]
        }));
}

/// Hostile and invalid tenant names never become a `TenantName`, so no SQL, path or
/// identifier is built from them: the CLI rejects them while parsing its arguments.
async fn bad_tenant_names_are_rejected_before_any_sql(m: &Model) {
    let acme = m.tenant("acme");
    app(m).args(["tenant", "create", &acme]).assert().success();
    let p = m.prefix();
    let hostile = [
        format!("{p}x\"; DROP SCHEMA public; --"),
        format!("{p}x'; DROP TABLE mtnt_tenants; --"),
        format!("{p}x`; DROP DATABASE mysql; --"),
        format!("{p}../../etc/passwd"),
        format!("{p}a b"),
        format!("{p}Acme"),
        "x".repeat(51),
        "public".to_owned(),
        "mysql".to_owned(),
        "postgres".to_owned(),
        "pg_toast".to_owned(),
        "mtnt_tenants".to_owned(),
        "mtnt_control".to_owned(),
        "1abc".to_owned(),
        String::new(),
    ];
    for bad in &hostile {
        match TenantName::new(bad.as_str()) {
            Err(Error::InvalidTenantName { name, .. }) => assert_eq!(&name, bad),
            other => panic!("{bad:?} was accepted: {other:?}"),
        }
        for args in [
            vec!["tenant", "create", bad.as_str()],
            vec!["migrate", "--tenant", bad.as_str()],
            vec!["rollback", "--tenant", bad.as_str(), "--steps", "1"],
            vec!["status", "--tenant", bad.as_str()],
        ] {
            app(m)
                .args(&args)
                .assert()
                .code(2)
                .stderr(predicate::str::contains("invalid tenant name"));
        }
    }
    app(m)
        .args(["tenant", "create", &hostile[0]])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("it has a quote or semicolon"));

    // Other bad input is refused too, before it changes anything.
    let nobody = m.tenant("nobody");
    app(m)
        .args(["migrate", "--tenant", &nobody])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "unknown tenant \"{nobody}\""
        )));
    app(m)
        .args(["migrate", "--to", "2030_01_01_0001"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "no registered migration has order 2030_01_01_0001",
        ));
    app(m)
        .args(["migrate", "--to", "yesterday"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("write it as YYYY_MM_DD_NNNN"));
    app(m)
        .args(["rollback", "--tenant", &acme])
        .assert()
        .code(2);

    // Nothing was made or changed: one tenant, its storage alone, the control intact.
    assert_eq!(m.storage_count().await, 1);
    assert!(m.table_exists(Place::Tenant(&acme), "accounts").await);
    assert!(m.table_exists(Place::Control, "mtnt_tenants").await);
    app(m)
        .args(["tenant", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\n1 tenant\n"));
    app(m)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "1/1 tenants current, 0 behind, 0 failed",
        ));
}

/// Every command that changes a tenant takes its lock first, on every model (they used
/// to differ: `tenant drop` took it on PostgreSQL only, and raced a fleet run elsewhere).
/// While another run holds the tenant, drop, rollback, repair and mark wait at most the
/// unlock deadline and change nothing; once it is free, they proceed.
async fn every_command_waits_for_the_tenant_lock(m: &Model) {
    let (_, [held, free]) = created(m, ["held", "free"]).await;
    // A heartbeat short enough for the short deadline (the builder checks that a runner
    // gives up its lease before others may take it over).
    let safety = mtnt::SafetySettings::new()
        .unlock_deadline(std::time::Duration::from_millis(300))
        .heartbeat_interval(std::time::Duration::from_millis(50))
        .heartbeat_retries(1);
    let migrator = m
        .builder(fleet_to(BACKFILL))
        .await
        .safety(safety)
        .build()
        .unwrap();
    let record = migrator
        .backend()
        .tenant_records(&[name(&held)])
        .await
        .unwrap()
        .pop()
        .expect("registered");
    // Another run: a connection of its own holding the tenant's lock.
    let backend = m.backend().await;
    let mut other = backend
        .connect(mtnt::Target::Tenant(&record.tenant))
        .await
        .unwrap();
    assert!(other.try_lock().await.unwrap(), "the lock is free at first");

    let busy = |e: Error| assert!(matches!(e, Error::Busy { .. }), "{e}");
    busy(migrator.drop_tenant(&name(&held)).await.unwrap_err());
    busy(
        migrator
            .rollback(&name(&held), RollbackTarget::Steps(1))
            .await
            .unwrap_err(),
    );
    busy(migrator.repair_checksums(&[name(&held)]).await.unwrap_err());
    busy(
        migrator
            .mark(Some(&name(&held)), BACKFILL, MigrationStatus::Pending)
            .await
            .unwrap_err(),
    );
    // Nothing changed.
    assert!(m.storage_exists(&held).await);
    assert!(registry(&migrator, &held).await.is_some());
    assert_completed(m, &held, &[BACKFILL]).await;

    // The tenant next to it is not held: it is dropped at once.
    migrator.drop_tenant(&name(&free)).await.unwrap();
    assert!(!m.storage_exists(&free).await);

    other.release().await;
    migrator.drop_tenant(&name(&held)).await.unwrap();
    assert!(!m.storage_exists(&held).await);
    assert!(registry(&migrator, &held).await.is_none());
}

/// The run's policy is the migrator's, the same on every model (`connect` used to drop
/// it for MySQL): with one transaction per migration, a failure keeps the migrations
/// before it; with one per tenant (the default), it takes them with it where the engine's
/// DDL is transactional. MySQL commits DDL at once, so it keeps them either way.
async fn per_migration_transactions_are_honoured(m: &Model) {
    let per_migration = m.tenant("pm-bad");
    let per_tenant = m.tenant("pt-bad");
    let v1 = m.migrator(fleet_to(LEDGER)).await;
    create_tenants(&v1, &[&per_migration, &per_tenant]).await;
    let mut kept = Vec::new();
    for (tenant, transactions) in [
        (&per_migration, mtnt::Transactions::PerMigration),
        (&per_tenant, mtnt::Transactions::PerTenant),
    ] {
        let migrator = m
            .builder(fleet_to(BACKFILL))
            .await
            .transactions(transactions)
            .build()
            .unwrap();
        let report = migrator
            .migrate(&MigrateOptions::new().tenants([name(tenant)]))
            .await
            .unwrap();
        assert_eq!(report.failures.len(), 1, "{report:?}");
        kept.push(m.status(Place::Tenant(tenant), ACCOUNTS).await);
    }
    match m.kind().engine() {
        Engine::MySql => assert_eq!(
            kept,
            [Some("completed".to_owned()), Some("completed".to_owned())]
        ),
        _ => assert_eq!(
            kept,
            [Some("completed".to_owned()), None],
            "per migration, per tenant"
        ),
    }
}

/// The hooks of `hooks_run_around_each_tenant_with_work` (here, not in `migrations.rs`:
/// the portable CLI app would run them in every scenario). They record each tenant's
/// events under its name.
mod scenario_hooks {
    use std::sync::Mutex;

    use mtnt::{Ctx, Result, TenantOutcome};

    pub static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn tenant(ctx: &Ctx<'_>) -> String {
        ctx.tenant()
            .expect("a tenant hook has a tenant")
            .name
            .to_string()
    }

    #[mtnt::hook(before_tenant)]
    async fn before(ctx: &mut Ctx<'_>) -> Result<()> {
        let tenant = tenant(ctx);
        // In the tenant, on its connection: its tables are there.
        ctx.execute("SELECT count(*) FROM accounts").await?;
        EVENTS.lock().unwrap().push(format!("{tenant} before"));
        Ok(())
    }

    #[mtnt::hook(after_tenant)]
    async fn after(ctx: &mut Ctx<'_>, outcome: &TenantOutcome<'_>) -> Result<()> {
        let tenant = tenant(ctx);
        let what = match outcome.error() {
            None => format!("applied {}", outcome.applied()),
            Some(error) => format!("failed: {error}"),
        };
        EVENTS.lock().unwrap().push(format!("{tenant} {what}"));
        Ok(())
    }
}

/// Hooks around a fleet run: `before_tenant` and `after_tenant` run once for each
/// tenant with migrations to apply, on its connection, and hear of its failure; tenants
/// with nothing to apply get none, so a second run runs only the failing tenant's.
async fn hooks_run_around_each_tenant_with_work(m: &Model) {
    let [good, bad] = ["good", "y-bad"].map(|b| m.tenant(b));
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    create_tenants(&v1, &[good.clone(), bad.clone()]).await;
    let hooks = mtnt::Hooks::registered_in("behaviour::scenario_hooks").unwrap();
    let full = m
        .builder(fleet_to(BACKFILL))
        .await
        .hooks(hooks)
        .build()
        .unwrap();
    let events = || -> Vec<String> {
        scenario_hooks::EVENTS
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.starts_with(m.prefix()))
            .cloned()
            .collect()
    };
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((report.tenants_migrated, report.failures.len()), (1, 1));
    let error = report.failures[0].error.to_string();
    let of = |tenant: &str| -> Vec<String> {
        events()
            .into_iter()
            .filter(|e| e.starts_with(&format!("{tenant} ")))
            .collect()
    };
    assert_eq!(
        of(&good),
        [format!("{good} before"), format!("{good} applied 2")]
    );
    assert_eq!(
        of(&bad),
        [format!("{bad} before"), format!("{bad} failed: {error}")]
    );
    assert_completed(m, &good, &TENANT_ORDERS).await;

    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((report.tenants_current, report.failures.len()), (1, 1));
    assert_eq!(of(&good).len(), 2, "no hooks for a current tenant");
    match m.kind().engine() {
        // The failure left its migration `started` (MySQL commits DDL at once): the run
        // refuses the tenant when it plans, before any hook.
        Engine::MySql => {
            assert!(
                matches!(report.failures[0].error, Error::Interrupted { .. }),
                "{:?}",
                report.failures[0].error
            );
            assert_eq!(of(&bad).len(), 2);
        }
        _ => assert_eq!(of(&bad).len(), 4, "its hooks ran again with its migrations"),
    }
}
