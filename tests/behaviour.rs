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
use mtnt_test_support::{create_tenants, escape_like, scenarios};
use predicates::prelude::*;

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
    plan_groups_a_mixed_fleet_and_changes_nothing,
    a_failing_canary_stops_the_run,
    waves_pause_between_them,
    an_error_budget_stops_the_run_early,
    only_failed_retries_the_failed_tenants_alone,
    fleet_rollback_is_refused_for_all_when_one_tenant_is_irreversible,
    exec_runs_in_every_tenant_and_reports_failures,
    status_check_gates_a_deploy,
    status_shows_drifted_needs_repair_and_out_of_order,
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

// ---------------------------------------------------------------------------------------
// Rollout control (issue 13): plan, canary, waves, error budget, --only-failed, fleet
// rollback, exec, and a status that says each condition and gates a deploy.

const TRACKING_COLUMNS: [&str; 8] = [
    "migration_order",
    "name",
    "checksum",
    "status",
    "started_at",
    "finished_at",
    "duration_ms",
    "error",
];

const REGISTRY_COLUMNS: [&str; 8] = [
    "name",
    "schema_name",
    "state",
    "created_at",
    "applied_order",
    "failed_order",
    "last_error",
    "updated_at",
];

/// Every row of `table` in `place`, each as one text (every column; on PostgreSQL the whole
/// row), sorted.
async fn rows(m: &Model, place: Place<'_>, table: &str, columns: &[&str]) -> Vec<String> {
    let quoted = |f: &str| {
        columns
            .iter()
            .map(|c| format!("{f}({c})"))
            .collect::<Vec<_>>()
    };
    let sql = match m.kind().engine() {
        Engine::Postgres => format!("SELECT t::text FROM {table} t ORDER BY 1"),
        Engine::MySql => format!(
            "SELECT CONCAT_WS('|', {}) FROM {table} ORDER BY 1",
            quoted("QUOTE").join(", ")
        ),
        Engine::Sqlite => format!(
            "SELECT {} FROM {table} ORDER BY 1",
            quoted("quote").join(" || '|' || ")
        ),
        Engine::Custom(name) => unreachable!("no model runs on {name}"),
    };
    m.texts(place, &sql).await
}

/// The registry, the public tracking rows and every tracking row of `tenants`: what
/// "nothing changed" compares.
async fn snapshot(m: &Model, tenants: &[&String]) -> Vec<Vec<String>> {
    let mut all = vec![
        rows(m, Place::Control, "mtnt_tenants", &REGISTRY_COLUMNS).await,
        rows(m, Place::Control, "mtnt_migrations", &TRACKING_COLUMNS).await,
    ];
    for tenant in tenants {
        all.push(
            rows(
                m,
                Place::Tenant(tenant),
                "mtnt_migrations",
                &TRACKING_COLUMNS,
            )
            .await,
        );
    }
    all
}

/// The app's migrations (`mtnt-portable-app`: every set here): the public ones, and the
/// tenant migrations up to `to`.
fn app_to(to: i64) -> MigrationSet {
    let all = MigrationSet::registered_in("behaviour::migrations").unwrap();
    MigrationSet::new(
        all.iter()
            .filter(|m| m.scope() == Scope::Public || m.order() <= to),
    )
    .unwrap()
}

/// Runs `cmd`: its exit code, stdout and stderr.
fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates each of `tenants` with the command line: every migration of the app applied.
fn cli_create(m: &Model, tenants: &[&String]) {
    for tenant in tenants {
        app(m).args(["tenant", "create", tenant]).assert().success();
    }
}

/// Where `tenant` was at between the first start and the last finish of its migrations
/// newer than `after`, in milliseconds of the engine's clock.
async fn run_window(m: &Model, tenant: &str, after: i64) -> (i64, i64) {
    let millis = |agg: &str| match m.kind().engine() {
        Engine::Postgres => format!("(extract(epoch FROM {agg}) * 1000)::bigint"),
        Engine::MySql => format!("CAST(UNIX_TIMESTAMP({agg}) * 1000 AS SIGNED)"),
        Engine::Sqlite => format!("CAST((julianday({agg}) - 2440587.5) * 86400000 AS INTEGER)"),
        Engine::Custom(name) => unreachable!("no model runs on {name}"),
    };
    let place = Place::Tenant(tenant);
    let of =
        |agg: String| format!("SELECT {agg} FROM mtnt_migrations WHERE migration_order > {after}");
    let start = m.int(place, &of(millis("min(started_at)"))).await;
    let end = m.int(place, &of(millis("max(finished_at)"))).await;
    (
        start.unwrap_or_else(|| panic!("{tenant}: no migration started")),
        end.unwrap_or_else(|| panic!("{tenant}: no migration finished")),
    )
}

/// The tenant migrations of the app after `create_accounts`, as the plan lists them.
const AFTER_ACCOUNTS: &str = "2024_01_01_0004 add_projects, 2024_01_01_0005 backfill_admin, \
    2024_02_01_0001 create_items, 2024_02_01_0002 index_items, 2024_02_01_0003 create_notes, \
    2024_02_01_0004 create_tags";

/// Puts `drift` (an edited migration), `repair` (a migration outside a transaction left
/// started) and `order` (a migration older than the newest applied one pending) in the
/// conditions migrate refuses or applies out of order.
async fn drift_repair_and_order(m: &Model, drift: &str, repair: &str, order: &str) {
    m.execute(
        Place::Tenant(drift),
        &format!(
            "UPDATE mtnt_migrations SET checksum = 'tampered' WHERE migration_order = {ACCOUNTS}"
        ),
    )
    .await;
    m.execute(
        Place::Tenant(repair),
        &format!("UPDATE mtnt_migrations SET status = 'started' WHERE migration_order = {INDEX}"),
    )
    .await;
    app(m)
        .args(["repair", "--tenant", order, "--order", "2024_01_01_0004"])
        .args(["--mark", "pending"])
        .assert()
        .success();
}

/// A plan's group as the test compares it: condition, applied order, tenants, and the
/// orders it would apply.
type Group = (String, Option<i64>, Vec<String>, Vec<i64>);

/// `plan` (and `migrate --dry-run`, the same output) on a mixed fleet: tenants grouped by
/// what migrate would do, exactly, with the reason of each refusal, and nothing changed.
async fn plan_groups_a_mixed_fleet_and_changes_nothing(m: &Model) {
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    let [b1, b2, bad] = ["b1", "b2", "x-bad"].map(|b| m.tenant(b));
    create_tenants(&v1, &[&b1, &b2, &bad]).await;
    // x-bad's last attempt failed.
    let failed = m
        .migrator(fleet_to(BACKFILL))
        .await
        .migrate(&MigrateOptions::new().tenants([name(&bad)]))
        .await
        .unwrap();
    assert_eq!(failed.failures.len(), 1, "{failed:?}");
    let [c1, c2, drift, order, repair] =
        ["c1", "c2", "drift", "order", "repair"].map(|b| m.tenant(b));
    cli_create(m, &[&c1, &c2, &drift, &order, &repair]);
    drift_repair_and_order(m, &drift, &repair, &order).await;
    let everyone = [&b1, &b2, &bad, &c1, &c2, &drift, &order, &repair];
    let before = snapshot(m, &everyone).await;

    let plan = json(app(m).args(["plan", "--json"]));
    assert_eq!(plan["public"], serde_json::json!([]));
    assert_eq!(plan["public_condition"], "current");
    let groups: Vec<Group> = plan["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["condition"].as_str().unwrap().to_owned(),
                g["applied_order"].as_i64(),
                g["tenants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect(),
                g["apply"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["order"].as_i64().unwrap())
                    .collect(),
            )
        })
        .collect();
    let after_accounts = vec![PROJECTS, BACKFILL, ITEMS, INDEX, NOTES, TAGS];
    let group = |condition: &str, applied, tenants: &[&String], apply: Vec<i64>| {
        (
            condition.to_owned(),
            Some(applied),
            tenants.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            apply,
        )
    };
    // MySQL commits DDL at once: the failed migration is left started, and needs repair.
    let bad_group = match m.kind().engine() {
        Engine::MySql => group("needs-repair", ACCOUNTS, &[&bad], vec![]),
        _ => group("failed", ACCOUNTS, &[&bad], after_accounts.clone()),
    };
    // The largest group first, then by applied order, then by the first tenant.
    assert_eq!(
        groups,
        [
            group("behind", ACCOUNTS, &[&b1, &b2], after_accounts.clone()),
            group("current", TAGS, &[&c1, &c2], vec![]),
            bad_group,
            group("drifted", TAGS, &[&drift], vec![]),
            group("out-of-order", TAGS, &[&order], vec![PROJECTS]),
            group("needs-repair", TAGS, &[&repair], vec![]),
        ]
    );
    let mysql = m.kind() == Kind::MySql;
    assert_eq!(plan["migrations"], if mysql { 13 } else { 19 });
    if !mysql {
        assert_eq!(plan["groups"][2]["failed_order"], PROJECTS);
        let error = plan["groups"][2]["detail"].as_str().unwrap();
        assert!(error.contains("no_such_table"), "{error}");
    }

    let (code, text, stderr) = output(app(m).arg("plan"));
    assert_eq!(code, 0, "{text}{stderr}");
    assert_contains(
        &text,
        &[
            &format!("{}: nothing to apply\n", public_label(m)),
            &format!("2 tenants at 2024_01_01_0003: apply {AFTER_ACCOUNTS}\n    {b1}, {b2}\n"),
            "2 current\n",
            "1 tenant drifted: not migrated until repaired\n    migration 2024_01_01_0003 \
             create_accounts was changed after it was applied to the tenant (recorded \
             checksum tampered,",
            &format!("\n    {drift}\n  fix: revert the edit"),
            &format!(
                "1 tenant out of order at 2024_02_01_0004: apply 2024_01_01_0004 add_projects\n    \
                 2024_01_01_0004 add_projects is pending, older than 2024_02_01_0004, the newest \
                 applied migration\n    {order}\n"
            ),
            "1 tenant needs repair: not migrated until repaired\n    migration 2024_02_01_0002 \
             index_items in the tenant started and never completed",
            &format!("`repair --tenant {repair} --order 202402010002 --mark completed`"),
            if mysql {
                "8 tenants: 3 to migrate (13 migrations), 2 current, 3 refused; nothing was changed\n"
            } else {
                "8 tenants: 4 to migrate (19 migrations), 2 current, 2 refused; nothing was changed\n"
            },
        ],
    );
    if !mysql {
        assert_contains(
            &text,
            &[&format!(
                "1 tenant failed at 2024_01_01_0004 add_projects: retry {AFTER_ACCOUNTS}\n    error: "
            )],
        );
    }
    // The names of current tenants only when asked for.
    assert!(!text.contains(&format!("    {c1}, {c2}\n")), "{text}");
    let verbose = output(app(m).args(["plan", "--verbose"])).1;
    assert!(
        verbose.contains(&format!("2 current\n    {c1}, {c2}\n")),
        "{verbose}"
    );
    // migrate --dry-run prints the same, and says the rollout it would take.
    assert_eq!(
        output(app(m).args(["migrate", "--dry-run"])),
        (0, text, String::new())
    );
    let dry = json(app(m).args(["migrate", "--dry-run", "--json"]));
    assert_eq!(dry, plan);
    let (_, staged, _) = output(
        app(m)
            .args(["migrate", "--dry-run", "--canary", "2"])
            .args([
                "--wave-size",
                "10%",
                "--wave-pause",
                "1m",
                "--max-failure-rate",
                "1%",
            ]),
    );
    assert_contains(
        &staged,
        &[
            "\nrollout: a canary of the first 2 tenants alone; the rest in waves of 10% of the \
           tenants; a pause of 1m between them; no tenant started once 1% of the tenants have \
           failed\n",
        ],
    );
    // A selection, and the failed tenants alone.
    let some = json(app(m).args(["plan", "--json", "--tenant", &b1, "--tenant", &c1]));
    assert_eq!(some["groups"].as_array().unwrap().len(), 2, "{some}");
    let failed = json(app(m).args(["plan", "--json", "--only-failed"]));
    assert_eq!(failed["groups"].as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed["groups"][0]["tenants"], serde_json::json!([bad]));

    // Nothing changed: not a registry row, not a tracking row, anywhere.
    assert_eq!(snapshot(m, &everyone).await, before);
}

/// `--canary N` and `--canary-tenant NAME`: those tenants first and alone; one failing
/// stops the run before any other tenant starts, and the summary names those not started.
async fn a_failing_canary_stops_the_run(m: &Model) {
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    let [bad, b, c, d, e] = ["a-bad", "b", "c", "d", "e"].map(|x| m.tenant(x));
    create_tenants(&v1, &[&bad, &b, &c, &d, &e]).await;
    let rest = [&c, &d, &e];
    let untouched = snapshot(m, &rest).await[2..].to_vec();

    // A misspelt canary is refused before anything runs, the public migrations included.
    let nobody = m.tenant("nobody");
    app(m)
        .args(["migrate", "--canary-tenant", &nobody])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "unknown tenant \"{nobody}\""
        )));
    assert_eq!(m.status(Place::Control, FEATURES).await, None);

    let (code, stdout, stderr) = output(app(m).args(["migrate", "--canary", "2"]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.starts_with("canary: 2 tenants\n"), "{stderr}");
    assert!(!stderr.contains("wave"), "{stderr}");
    assert_contains(
        &stdout,
        &[
            "tenants: 5 total, 1 migrated (6 migrations), 0 already current, 1 failed, 3 skipped (not started)",
            "\nstopped early: 1 canary tenant failed\n",
            &format!("\n3 tenants not started:\n    {c}, {d}, {e}\n"),
            &format!("tenant {bad} failed at 2024_01_01_0004 add_projects: "),
        ],
    );
    // The canary beside it went through; the rest is as it was.
    assert_completed(m, &b, &[PROJECTS, BACKFILL, TAGS]).await;
    assert_eq!(snapshot(m, &rest).await[2..], untouched[..]);
    for t in rest {
        assert_eq!(registry(&v1, t).await.unwrap().1, Some(ACCOUNTS), "{t}");
    }

    // A named canary: the same stop.
    let (code, stdout, stderr) = output(app(m).args(["migrate", "--canary-tenant", &bad]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.starts_with("canary: 1 tenant\n"), "{stderr}");
    assert_contains(
        &stdout,
        &[
            "1 failed, 4 skipped (not started)",
            "stopped early: 1 canary tenant failed",
            &format!("4 tenants not started:\n    {b}, {c}, {d}, {e}\n"),
        ],
    );
    assert_eq!(snapshot(m, &rest).await[2..], untouched[..]);

    // A canary that passes lets the rest go, in one wave after it.
    let (code, stdout, stderr) = output(app(m).args(["migrate", "--canary-tenant", &c]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.starts_with("canary: 1 tenant\nwave 1/1: 4 tenants\n"),
        "{stderr}"
    );
    assert_contains(
        &stdout,
        &["tenants: 5 total, 3 migrated (18 migrations), 1 already current, 1 failed in"],
    );
    for t in rest {
        assert_completed(m, t, &[PROJECTS, BACKFILL, TAGS]).await;
    }
}

/// `--wave-size` and `--wave-pause`, oldest tenant first: the second wave starts at least
/// the pause after the first one finished, as the tracking rows' timestamps show.
async fn waves_pause_between_them(m: &Model) {
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    // Created in this order: oldest first, d and c are the first wave (by name, a and b).
    let [d, c, b, a] = ["d", "c", "b", "a"].map(|x| m.tenant(x));
    create_tenants(&v1, &[&d, &c, &b, &a]).await;
    let (code, stdout, stderr) = output(app(m).args(["migrate", "--concurrency", "2"]).args([
        "--wave-size",
        "50%",
        "--wave-pause",
        "1s",
        "--order-by",
        "created",
    ]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stderr,
        "wave 1/2: 2 tenants, then a pause of 1s\nwave 2/2: 2 tenants\n"
    );
    assert_contains(&stdout, &["tenants: 4 total, 4 migrated (24 migrations)"]);
    let mut first_end = i64::MIN;
    for t in [&d, &c] {
        first_end = first_end.max(run_window(m, t, ACCOUNTS).await.1);
    }
    let mut second_start = i64::MAX;
    for t in [&b, &a] {
        second_start = second_start.min(run_window(m, t, ACCOUNTS).await.0);
    }
    // A few milliseconds for the engines' clock readings; the pause is 1000.
    assert!(
        second_start - first_end >= 950,
        "the second wave started {} ms after the first finished",
        second_start - first_end
    );
}

/// `--max-failures 2` over 10 broken tenants: once two have failed no tenant starts (those
/// running finish), the others are not started, listed, and untouched; exit 1.
/// `--max-failure-rate` is the same budget as a share of the tenants.
async fn an_error_budget_stops_the_run_early(m: &Model) {
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    let bad: Vec<String> = (0..10).map(|i| m.tenant(&format!("t{i}-bad"))).collect();
    create_tenants(&v1, &bad).await;
    let (code, stdout, stderr) =
        output(app(m).args(["migrate", "--max-failures", "2", "--concurrency", "2"]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    let (mut tried, mut untouched) = (Vec::new(), Vec::new());
    for t in &bad {
        match m.status(Place::Tenant(t), PROJECTS).await {
            Some(_) => tried.push(t.as_str()),
            None => untouched.push(t.as_str()),
        }
    }
    // At most the budget plus the tenants already running when it was spent.
    assert!((2..=4).contains(&tried.len()), "{tried:?}\n{stdout}");
    assert_contains(
        &stdout,
        &[
            &format!(
                "tenants: 10 total, 0 migrated (0 migrations), 0 already current, {} failed, {} skipped (not started)",
                tried.len(),
                untouched.len()
            ),
            "\nstopped early: the error budget of 2 failed tenants is spent\n",
            &format!("\n{} tenants not started:\n", untouched.len()),
        ],
    );
    let listed = stdout.split("not started:\n").nth(1).unwrap();
    for t in &untouched {
        assert!(
            listed.contains(t),
            "{t} is not listed as not started:\n{stdout}"
        );
        assert_eq!(registry(&v1, t).await.unwrap().2, None, "{t} was started");
    }

    // 20 % of 10 tenants is 2 failures; one at a time, exactly 2 fail.
    let (code, stdout, _) = output(
        app(m)
            .args(["migrate", "--concurrency", "1"])
            .args(["--max-failure-rate", "20%"]),
    );
    assert_eq!(code, 1, "{stdout}");
    assert_contains(
        &stdout,
        &[
            "tenants: 10 total, 0 migrated (0 migrations), 0 already current, 2 failed, 8 skipped (not started)",
            "stopped early: the error budget of 2 failed tenants is spent",
        ],
    );
}

/// `--only-failed`: only the tenants whose last attempt failed are looked at, in plan and
/// in migrate; a tenant merely behind is left for the next full run.
async fn only_failed_retries_the_failed_tenants_alone(m: &Model) {
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    let [good, bad1, bad2] = ["good", "x1-bad", "x2-bad"].map(|x| m.tenant(x));
    create_tenants(&v1, &[&good, &bad1, &bad2]).await;
    app(m).arg("migrate").assert().code(1);
    let late = m.tenant("late");
    create_tenants(&m.migrator(app_to(ACCOUNTS)).await, &[&late]).await;

    let plan = json(app(m).args(["plan", "--only-failed", "--json"]));
    let planned: Vec<&str> = plan["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["tenants"].as_array().unwrap())
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(planned, [bad1.as_str(), bad2.as_str()]);

    let (code, stdout, stderr) = output(app(m).args(["migrate", "--only-failed"]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_contains(
        &stdout,
        &["tenants: 2 total, 0 migrated (0 migrations), 0 already current, 2 failed in"],
    );
    assert_eq!(m.status(Place::Tenant(&late), PROJECTS).await, None);
    assert_eq!(registry(&v1, &late).await.unwrap().1, Some(ACCOUNTS));

    // The next full run takes the tenant that was behind.
    let (_, stdout, _) = output(app(m).arg("migrate"));
    assert_contains(
        &stdout,
        &["tenants: 4 total, 1 migrated (6 migrations), 1 already current, 2 failed"],
    );
}

/// A fleet rollback that an irreversible migration blocks in one selected tenant is
/// refused for all of them, before anything changes; without it, the selected tenants roll
/// back, in waves; every tenant needs --all-tenants.
async fn fleet_rollback_is_refused_for_all_when_one_tenant_is_irreversible(m: &Model) {
    let [a, b] = ["a", "b"].map(|x| m.tenant(x));
    cli_create(m, &[&a, &b]);
    // c has create_ledger alone, which has no down function.
    let c = m.tenant("c");
    create_tenants(&m.migrator(app_to(LEDGER)).await, &[&c]).await;
    let everyone = [&a, &b, &c];
    let before = snapshot(m, &everyone).await;

    for args in [vec!["--all-tenants"], vec!["--tenant", &a, "--tenant", &c]] {
        app(m)
            .arg("rollback")
            .args(&args)
            .args(["--steps", "1", "--canary", "1"])
            .assert()
            .code(1)
            .stderr(predicate::str::contains(format!(
                "error: cannot roll back tenant {c}: migration 2024_01_01_0002 create_ledger has no down function"
            )))
            .stderr(predicate::str::contains("nothing was changed"));
        assert_eq!(snapshot(m, &everyone).await, before, "{args:?}");
    }
    // Every tenant is never the default.
    app(m)
        .args(["rollback", "--steps", "1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--all-tenants"));

    let (code, stdout, stderr) = output(app(m).args([
        "rollback",
        "--tenant",
        &a,
        "--tenant",
        &b,
        "--steps",
        "2",
        "--wave-size",
        "1",
    ]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stderr, "wave 1/2: 1 tenant\nwave 2/2: 1 tenant\n");
    assert_contains(
        &stdout,
        &["tenants: 2 total, 2 rolled back (4 migrations reverted), 0 with nothing to revert, 0 failed in"],
    );
    for t in [&a, &b] {
        assert!(!m.table_exists(Place::Tenant(t), "tags").await, "{t}");
        assert!(!m.table_exists(Place::Tenant(t), "notes").await, "{t}");
        assert!(m.table_exists(Place::Tenant(t), "items").await, "{t}");
    }
    // Down to create_ledger, which every tenant can reach: c has nothing to revert.
    let (code, stdout, _) =
        output(app(m).args(["rollback", "--all-tenants", "--to", "2024_01_01_0002"]));
    assert_eq!(code, 0, "{stdout}");
    assert_contains(
        &stdout,
        &["tenants: 3 total, 2 rolled back (10 migrations reverted), 1 with nothing to revert, 0 failed"],
    );
    for t in everyone {
        assert!(!m.table_exists(Place::Tenant(t), "accounts").await, "{t}");
        assert!(m.table_exists(Place::Tenant(t), "ledger").await, "{t}");
    }
}

/// `exec` runs a statement or a script in every tenant (or the named ones) with the fleet's
/// fan-out and report, records nothing as a migration, and reports a failing tenant
/// like migrate; `--no-transaction` is for statements that cannot run in one.
async fn exec_runs_in_every_tenant_and_reports_failures(m: &Model) {
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|x| m.tenant(x));
    let everyone = [&a, &b, &c, &d];
    cli_create(m, &everyone);
    m.execute(Place::Tenant(&c), "DROP TABLE tags").await;
    let tracking = snapshot(m, &everyone).await;
    let tags = |t: &String| {
        let t = t.clone();
        async move { m.int(Place::Tenant(&t), "SELECT count(*) FROM tags").await }
    };

    let (code, stdout, stderr) =
        output(app(m).args(["exec", "--sql", "INSERT INTO tags (id) VALUES (7)"]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_contains(
        &stdout,
        &[
            "tenants: 4 total, ran in 3, 1 failed in",
            &format!("tenant {c} failed: "),
        ],
    );
    assert!(stdout.contains("tags"), "{stdout}");
    for t in [&a, &b, &d] {
        assert_eq!(tags(t).await, Some(1), "{t}");
    }
    // Not recorded: the tracking rows and the registry are as they were.
    assert_eq!(snapshot(m, &everyone).await, tracking);

    // A script from a file, outside a transaction, in the named tenants only.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fix.sql");
    std::fs::write(
        &file,
        "DELETE FROM tags;\nINSERT INTO tags (id) VALUES (8);\nINSERT INTO tags (id) VALUES (9);\n",
    )
    .unwrap();
    let (code, stdout, stderr) = output(
        app(m)
            .args([
                "exec",
                "--no-transaction",
                "--tenant",
                &a,
                "--tenant",
                &b,
                "--file",
            ])
            .arg(&file),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_contains(&stdout, &["tenants: 2 total, ran in 2, 0 failed in"]);
    assert_eq!(
        (tags(&a).await, tags(&b).await, tags(&d).await),
        (Some(2), Some(2), Some(1))
    );

    // The rollout applies as in migrate: a failing canary stops the rest.
    let (code, stdout, _) =
        output(app(m).args(["exec", "--sql", "DELETE FROM tags", "--canary-tenant", &c]));
    assert_eq!(code, 1, "{stdout}");
    assert_contains(
        &stdout,
        &[
            "1 failed, 3 skipped (not started)",
            "stopped early: 1 canary tenant failed",
        ],
    );
    assert_eq!(tags(&a).await, Some(2));

    // VACUUM cannot run in a transaction: --no-transaction runs it.
    let vacuum = match m.kind().engine() {
        Engine::Postgres => Some("VACUUM tags"),
        Engine::Sqlite => Some("VACUUM"),
        _ => None,
    };
    if let Some(vacuum) = vacuum {
        app(m)
            .args(["exec", "--tenant", &a, "--sql", vacuum])
            .assert()
            .code(1)
            .stdout(predicate::str::contains("transaction"));
        app(m)
            .args(["exec", "--tenant", &a, "--no-transaction", "--sql", vacuum])
            .assert()
            .success()
            .stdout(predicate::str::contains("ran in 1, 0 failed"));
    }
    app(m).args(["exec", "--tenant", &a]).assert().code(2);
}

/// `status --check` exits 0 only when the public schema and every tenant are current, with
/// the summary on stderr otherwise: a deploy gate.
async fn status_check_gates_a_deploy(m: &Model) {
    let [a, b] = ["a", "b"].map(|x| m.tenant(x));
    cli_create(m, &[&a, &b]);
    app(m)
        .args(["status", "--check"])
        .assert()
        .success()
        .stderr("");
    app(m)
        .args(["rollback", "--tenant", &b, "--steps", "1"])
        .assert()
        .success();
    let (code, stdout, stderr) = output(app(m).args(["status", "--check"]));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stderr,
        "not current: 1/2 tenants current, 1 behind, 0 failed\n"
    );
    assert!(
        stdout.contains("1/2 tenants current, 1 behind, 0 failed\n"),
        "{stdout}"
    );
    let out = app(m)
        .args(["status", "--check", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["tenants"][0]["condition"], "current");
    assert_eq!(status["tenants"][1]["condition"], "behind");
    app(m).arg("migrate").assert().success();
    app(m)
        .args(["status", "--check"])
        .assert()
        .success()
        .stderr("");
}

/// `status` says each tenant's condition in its STATUS column — drifted and needs repair
/// with their reason, out of order with its oldest pending migration — counts each in the
/// summary, says the fix of those migrate refuses, and has them in its JSON.
async fn status_shows_drifted_needs_repair_and_out_of_order(m: &Model) {
    let [current, drift, order, repair] =
        ["current", "drift", "order", "repair"].map(|x| m.tenant(x));
    cli_create(m, &[&current, &drift, &order, &repair]);
    drift_repair_and_order(m, &drift, &repair, &order).await;

    let (code, stdout, stderr) = output(app(m).arg("status"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let row = |t: &str| row_of(&stdout, t);
    assert!(row(&current).ends_with("  current"), "{stdout}");
    assert!(
        row(&drift).contains("  drifted: migration 2024_01_01_0003 create_accounts was changed after it was applied to the tenant (recorded checksum tampered, code checksum "),
        "{stdout}"
    );
    assert!(
        row(&order)
            .ends_with("  out of order (1 pending, the oldest 2024_01_01_0004 add_projects)"),
        "{stdout}"
    );
    assert!(
        row(&repair).contains("  needs repair: migration 2024_02_01_0002 index_items in the tenant started and never completed"),
        "{stdout}"
    );
    assert_contains(
        &stdout,
        &[
            "\n1/4 tenants current, 1 behind, 0 failed, 1 out of order, 1 drifted, 1 need repair\n",
            "\n  fix (drifted): revert the edit and write a new migration instead; if the edit is intended (formatting, comments in SQL), record the new checksum with `repair --checksums`\n",
            &format!("\n  fix (needs repair): check the schema, then `repair --tenant {repair} --order 202402010002 --mark completed` if it took effect"),
        ],
    );
    let status = json(app(m).args(["status", "--json"]));
    let of = |t: &str| {
        status["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["tenant"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(of(&drift)["condition"], "drifted");
    assert!(of(&drift)["detail"]
        .as_str()
        .unwrap()
        .contains("recorded checksum tampered"));
    assert_eq!(of(&repair)["condition"], "needs-repair");
    assert!(of(&repair)["detail"]
        .as_str()
        .unwrap()
        .contains("2024_02_01_0002 index_items"));
    assert_eq!(of(&order)["condition"], "out-of-order");
    assert_eq!(of(&order)["oldest_pending"]["order"], PROJECTS);
    assert_eq!(of(&current)["condition"], "current");
    app(m).args(["status", "--check"]).assert().code(1);

    // A tenant that `tenant create` has not finished: status says so, and migrate leaves
    // it alone, naming it with the fix.
    let new = m.tenant("new");
    cli_create(m, &[&new]);
    m.execute(
        Place::Control,
        &format!("UPDATE mtnt_tenants SET state = 'creating' WHERE name = '{new}'"),
    )
    .await;
    let (_, stdout, _) = output(app(m).arg("status"));
    assert!(row_of(&stdout, &new).ends_with("  creating"), "{stdout}");
    assert_contains(
        &stdout,
        &[
            "\n1/5 tenants current, 1 behind, 0 failed, 1 out of order, 1 drifted, 1 need repair, 1 creating\n",
            &format!("\n  fix (creating): a `tenant create` under way finishes it; one that died half-way is finished by dropping it (`tenant drop {new} --yes`) and creating it again (`tenant create {new}`)\n"),
        ],
    );
    let (_, stdout, _) = output(app(m).arg("migrate"));
    assert_contains(
        &stdout,
        &[&format!(
            "\n1 tenant left alone: `tenant create` has not finished it\n    {new}\n  fix: a `tenant create` under way finishes it;"
        )],
    );
}

/// The row of `tenant` in a table printed by the command line.
fn row_of(text: &str, tenant: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(&format!("{tenant} ")))
        .unwrap_or_else(|| panic!("no row of {tenant}:\n{text}"))
        .to_owned()
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

scenarios!(drift_names_each_tenant_that_differs_from_the_others);

/// `drift` on a fleet where three tenants were changed by hand, each another way: a column
/// added, an index dropped, a column's type changed. The two untouched tenants are the
/// reference and are not reported; each changed tenant is named with what differs; the
/// check changes nothing, and exits 1 (0 over the untouched tenants alone).
async fn drift_names_each_tenant_that_differs_from_the_others(m: &Model) {
    let migrator = m.migrator(nontx_to(INDEX)).await;
    let [same1, same2, extra, noidx, retyped] =
        ["same1", "same2", "extra", "noidx", "retyped"].map(|b| m.tenant(b));
    create_tenants(&migrator, &[&same1, &same2, &extra, &noidx, &retyped]).await;
    let report = migrator.drift(&[]).await.unwrap();
    assert!(report.is_clean(), "{report:#?}");

    let engine = m.kind().engine();
    m.execute(
        Place::Tenant(&extra),
        "ALTER TABLE items ADD COLUMN note TEXT",
    )
    .await;
    m.execute(
        Place::Tenant(&noidx),
        match engine {
            Engine::MySql => "DROP INDEX items_sku ON items",
            _ => "DROP INDEX items_sku",
        },
    )
    .await;
    let retype = match engine {
        Engine::Postgres => "ALTER TABLE items ALTER COLUMN sku TYPE VARCHAR(100)".to_owned(),
        Engine::MySql => "ALTER TABLE items MODIFY sku VARCHAR(100)".to_owned(),
        // SQLite cannot change a column's type: the table is made again.
        _ => format!(
            "CREATE TABLE items_new ({}, sku VARCHAR(100)); DROP TABLE items; \
             ALTER TABLE items_new RENAME TO items; CREATE INDEX items_sku ON items (sku)",
            migrations::id_column(engine)
        ),
    };
    m.execute(Place::Tenant(&retyped), &retype).await;
    let everyone = [&same1, &same2, &extra, &noidx, &retyped];
    let before = snapshot(m, &everyone).await;

    let report = migrator.drift(&[]).await.unwrap();
    assert_eq!((report.tenants, report.drifted()), (5, 3), "{report:#?}");
    assert_eq!(report.orders.len(), 1, "{report:#?}");
    let order = &report.orders[0];
    assert_eq!(order.applied_order, Some(INDEX));
    assert_eq!(
        order.reference_tenants, 2,
        "the untouched tenants are the reference"
    );
    let said = |tenant: &str| -> String {
        let d = order.drifted.iter().find(|d| d.tenant.as_str() == tenant);
        let d = d.unwrap_or_else(|| panic!("{tenant} not reported: {report:#?}"));
        let what: Vec<String> = d.differences.iter().map(ToString::to_string).collect();
        what.join("; ")
    };
    let (added, dropped, changed) = (said(&extra), said(&noidx), said(&retyped));
    assert!(added.starts_with("column items.note extra ("), "{added}");
    assert!(added.to_lowercase().contains("text"), "{added}");
    assert!(dropped.contains("items_sku missing"), "{dropped}");
    assert!(!dropped.contains("column"), "{dropped}");
    assert!(changed.contains("column items.sku changed: "), "{changed}");
    assert!(
        changed.contains("64") && changed.contains("100"),
        "{changed}"
    );
    assert!(
        !changed.contains("items_sku"),
        "the index is the same: {changed}"
    );

    // The command line: the same findings, exit 1; JSON; the untouched tenants alone, 0.
    let (code, stdout, stderr) = output(app(m).arg("drift"));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("at 2024_02_01_0002: 5 tenants, 2 alike, 3 drifted"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  {extra}: column items.note extra")),
        "{stdout}"
    );
    assert!(stdout.contains("3 of 5 tenants drifted"), "{stdout}");
    assert!(
        !stdout.contains(&same1) && !stdout.contains(&same2),
        "{stdout}"
    );
    let (code, stdout, _) = output(app(m).args(["drift", "--json"]));
    assert_eq!(code, 1);
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = value["orders"][0]["drifted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tenant"].as_str().unwrap())
        .collect();
    let mut expected = vec![extra.as_str(), noidx.as_str(), retyped.as_str()];
    expected.sort();
    assert_eq!(names, expected);
    app(m)
        .args(["drift", "--tenant", &same1, "--tenant", &same2])
        .assert()
        .success()
        .stdout(predicate::str::contains("0 of 2 tenants drifted"));
    assert_eq!(
        snapshot(m, &everyone).await,
        before,
        "drift changed something"
    );
}

// ---------------------------------------------------------------------------------------
// Run ids, the size order and resuming a stopped rollout (issue 13).

scenarios!(
    run_ids_record_what_each_run_did,
    order_by_size_takes_small_tenants_first,
    a_stopped_rollout_resumes_where_it_stopped,
);

/// The `run_id` recorded with migration `order` in `tenant`'s tracking table.
async fn run_id_of(m: &Model, tenant: &str, order: i64) -> Option<String> {
    m.text(
        Place::Tenant(tenant),
        &format!("SELECT run_id FROM mtnt_migrations WHERE migration_order = {order}"),
    )
    .await
}

/// What `status --run` says through the library: per tenant, the orders applied and
/// failed.
async fn run_shows(migrator: &Migrator, run_id: &str) -> Vec<(String, Vec<i64>, Vec<i64>)> {
    let orders = |rows: &[mtnt::AppliedMigration]| rows.iter().map(|r| r.order).collect();
    migrator
        .run_status(run_id, &[])
        .await
        .unwrap()
        .tenants
        .iter()
        .map(|t| (t.tenant.to_string(), orders(&t.applied), orders(&t.failed)))
        .collect()
}

/// The events a fleet run tells its progress: its id, the waves, the pauses left out.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl mtnt::Progress for Recorder {
    fn run_id(&self, run_id: &str) {
        self.0.lock().unwrap().push(format!("run {run_id}"));
    }
    fn tenant_done(&self, tenant: &TenantName, _outcome: Result<usize, &Error>) {
        self.0.lock().unwrap().push(format!("done {tenant}"));
    }
    fn wave(&self, number: usize, waves: usize, tenants: usize) {
        self.0
            .lock()
            .unwrap()
            .push(format!("wave {number}/{waves}: {tenants}"));
    }
    fn pause_skipped(&self, after: usize) {
        self.0
            .lock()
            .unwrap()
            .push(format!("no pause after {after}"));
    }
}

impl Recorder {
    fn events(&self, prefix: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| !e.starts_with("done ") || e.starts_with(&format!("done {prefix}")))
            .cloned()
            .collect()
    }
}

/// Each fleet run has an id, recorded on every tracking row it writes (also in a tracking
/// table made before run ids, which the run gives the column); `status --run ID`, through
/// the library and the command line, shows exactly the tenants and migrations of that
/// run, and a second run's id only its own.
async fn run_ids_record_what_each_run_did(m: &Model) {
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    let [a, b, c] = ["a", "b", "c-bad"].map(|x| m.tenant(x));
    create_tenants(&v1, &[&a, &b, &c]).await;
    // A database from before run ids: its tracking table has no run_id column.
    match m.kind() {
        Kind::PgSchema => {
            m.execute(
                Place::Control,
                "ALTER TABLE mtnt_tenant_migrations DROP COLUMN run_id",
            )
            .await
        }
        _ => {
            m.execute(
                Place::Tenant(&a),
                "ALTER TABLE mtnt_migrations DROP COLUMN run_id",
            )
            .await
        }
    }

    let v2 = m.migrator(fleet_to(BACKFILL)).await;
    let first = v2
        .migrate(&MigrateOptions::new().tenants([name(&a), name(&c)]))
        .await
        .unwrap();
    assert_eq!((first.tenants_migrated, first.failures.len()), (1, 1));
    let r1 = first.run_id.clone().expect("a fleet run has an id");
    let second = v2
        .migrate(&MigrateOptions::new().tenants([name(&b)]))
        .await
        .unwrap();
    assert!(second.is_success(), "{:?}", second.failures);
    let r2 = second.run_id.clone().unwrap();
    assert_ne!(r1, r2);
    let serialized = serde_json::to_value(&second).unwrap();
    assert_eq!(serialized["run_id"], r2.as_str());

    // On the rows, as the engine has them.
    for order in [PROJECTS, BACKFILL] {
        assert_eq!(run_id_of(m, &a, order).await.as_ref(), Some(&r1), "{a}");
        assert_eq!(run_id_of(m, &b, order).await.as_ref(), Some(&r2), "{b}");
    }
    assert_eq!(run_id_of(m, &c, PROJECTS).await.as_ref(), Some(&r1), "{c}");
    // `tenant create` is no fleet run.
    assert_eq!(run_id_of(m, &a, LEDGER).await, None);

    assert_eq!(
        run_shows(&v2, &r1).await,
        [
            (a.clone(), vec![PROJECTS, BACKFILL], vec![]),
            (c.clone(), vec![], vec![PROJECTS]),
        ]
    );
    assert_eq!(
        run_shows(&v2, &r2).await,
        [(b.clone(), vec![PROJECTS, BACKFILL], vec![])]
    );
    let only_a = v2.run_status(&r1, &[name(&a)]).await.unwrap();
    assert_eq!(only_a.tenants.len(), 1);
    assert_eq!(
        v2.run_status("no-such-run", &[])
            .await
            .unwrap()
            .tenants
            .len(),
        0
    );

    // The command line.
    let (code, stdout, stderr) = output(app(m).args(["status", "--run", &r1]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!(
            "run {r1}: 2 tenants, 2 migrations applied, 1 failed\n\
             tenant {a}: applied 2024_01_01_0004 add_projects, 2024_01_01_0005 backfill_admin\n\
             tenant {c}: failed at 2024_01_01_0004 add_projects: {}\n",
            recorded_error(m, Place::Tenant(&c), PROJECTS)
                .await
                .lines()
                .next()
                .unwrap()
                .trim()
        )
    );
    let doc = json(app(m).args(["status", "--run", &r2, "--json"]));
    assert_eq!(doc["run_id"], r2.as_str());
    let tenants = doc["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1, "{doc}");
    assert_eq!(tenants[0]["tenant"], b.as_str());
    assert_eq!(tenants[0]["applied"].as_array().unwrap().len(), 2);

    // A run of the command line prints its id in the summary; its rows are its own.
    let (code, stdout, stderr) = output(app(m).args(["migrate", "--tenant", &b]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let r3 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no run id in {stdout}"))
        .to_owned();
    assert_contains(
        &stdout,
        &[&format!(
            "\nrun {r3} (status --run {r3} shows what it did)\n"
        )],
    );
    let (_, stdout, _) = output(app(m).args(["status", "--run", &r3]));
    assert!(
        stdout.starts_with(&format!(
            "run {r3}: 1 tenant, 4 migrations applied, 0 failed\ntenant {b}: applied 2024_02_01_0001 "
        )),
        "{stdout}"
    );
    // The earlier runs' rows are as they were.
    assert_eq!(
        run_shows(&v2, &r2).await,
        [(b.clone(), vec![PROJECTS, BACKFILL], vec![])]
    );

    // A fleet rollback's id is on the rows it reverted, which the earlier run gives up.
    let reverted = v2
        .rollback_fleet(
            RollbackTarget::Steps(1),
            &MigrateOptions::new().tenants([name(&a)]),
            &Recorder::default(),
        )
        .await
        .unwrap();
    assert!(reverted.is_success(), "{:?}", reverted.failures);
    let r4 = reverted.run_id.clone().unwrap();
    let report = v2.run_status(&r4, &[]).await.unwrap();
    assert_eq!(
        report.summary(),
        format!("run {r4}: 1 tenant, 0 migrations applied, 1 reverted, 0 failed")
    );
    assert_eq!(report.tenants[0].tenant.as_str(), a);
    assert_eq!(report.tenants[0].reverted[0].order, BACKFILL);
    assert_eq!(
        run_shows(&v2, &r1).await,
        [
            (a.clone(), vec![PROJECTS], vec![]),
            (c.clone(), vec![], vec![PROJECTS]),
        ]
    );
}

/// `--order-by size`: the smallest tenant (on disk, as the engine measures it) first,
/// whatever the names and creation order say.
async fn order_by_size_takes_small_tenants_first(m: &Model) {
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|x| m.tenant(x));
    create_tenants(&v1, &[&a, &b, &c, &d]).await;
    let filler = format!("('{}')", "x".repeat(1000));
    for (tenant, rows) in [(&a, 120), (&b, 30), (&c, 400), (&d, 0)] {
        let place = Place::Tenant(tenant);
        m.execute(place, "CREATE TABLE filler (x VARCHAR(1000))")
            .await;
        if rows > 0 {
            let values = vec![filler.as_str(); rows].join(", ");
            m.execute(place, &format!("INSERT INTO filler (x) VALUES {values}"))
                .await;
        }
        if m.kind().engine() == Engine::MySql {
            // InnoDB's sizes are statistics: brought up to date.
            m.execute(place, "ANALYZE TABLE filler").await;
        }
    }
    let expected = [&d, &b, &a, &c].map(|t| t.to_string());

    // The engine's sizes, in one call.
    let tenants: Vec<mtnt::Tenant> = v1
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.tenant.name.as_str().starts_with(m.prefix()))
        .map(|r| r.tenant)
        .collect();
    let mut sizes = v1.backend().tenant_sizes(&tenants).await.unwrap();
    assert_eq!(sizes.len(), 4, "{sizes:?}");
    sizes.sort_by_key(|(_, bytes)| *bytes);
    assert_eq!(
        sizes.iter().map(|(t, _)| t.to_string()).collect::<Vec<_>>(),
        expected,
        "{sizes:?}"
    );
    assert!(sizes.windows(2).all(|w| w[0].1 < w[1].1), "{sizes:?}");

    let (_, stdout, _) = output(app(m).args(["migrate", "--dry-run", "--order-by", "size"]));
    assert_contains(&stdout, &["smallest tenant first"]);

    // One at a time, so the order they finish in is the order they were taken in.
    let v2 = m
        .builder(fleet_to(BACKFILL))
        .await
        .concurrency(1)
        .build()
        .unwrap();
    let mut rollout = mtnt::Rollout::default();
    rollout.order_by = mtnt::TenantOrder::Size;
    let recorder = Recorder::default();
    let report = v2
        .migrate_with_progress(&MigrateOptions::new().rollout(rollout), &recorder)
        .await
        .unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    let done: Vec<String> = recorder
        .events(m.prefix())
        .into_iter()
        .filter_map(|e| e.strip_prefix("done ").map(str::to_owned))
        .collect();
    assert_eq!(done, expected);
}

/// A waved run that its error budget stops, run again once the cause is fixed, goes on
/// where it stopped: the waves it finished are not redone (their tenants are current, and
/// no soak pause follows a wave that changed nothing), and their tracking rows keep the
/// first run's id and times; only the rest get the second run's id.
async fn a_stopped_rollout_resumes_where_it_stopped(m: &Model) {
    let v1 = m.migrator(fleet_to(ACCOUNTS)).await;
    let names = ["a1", "a2", "b1-bad", "b2", "c1", "c2"].map(|x| m.tenant(x));
    let [a1, a2, bad, b2, c1, c2] = &names;
    create_tenants(&v1, &names).await;
    let full = m
        .builder(fleet_to(BACKFILL))
        .await
        .concurrency(1)
        .build()
        .unwrap();
    let mut rollout = mtnt::Rollout::default();
    rollout.wave_size = Some(mtnt::WaveSize::Tenants(2));
    rollout.wave_pause = std::time::Duration::from_millis(300);
    rollout.max_failures = Some(1);
    let options = MigrateOptions::new().rollout(rollout);

    let recorder = Recorder::default();
    let first = full
        .migrate_with_progress(&options, &recorder)
        .await
        .unwrap();
    let r1 = first.run_id.clone().unwrap();
    assert_eq!(
        (
            first.tenants_migrated,
            first.failures.len(),
            first.tenants_skipped
        ),
        (2, 1, 3)
    );
    assert_eq!(
        first.stopped.as_deref(),
        Some("the error budget of 1 failed tenant is spent")
    );
    assert_eq!(
        recorder.events(m.prefix()),
        [
            format!("run {r1}"),
            "wave 1/3: 2".to_owned(),
            format!("done {a1}"),
            format!("done {a2}"),
            "wave 2/3: 2".to_owned(),
            format!("done {bad}"),
        ]
    );
    let mut columns = TRACKING_COLUMNS.to_vec();
    columns.push("run_id");
    let mut wave_one = Vec::new();
    for t in [a1, a2] {
        wave_one.push(rows(m, Place::Tenant(t), "mtnt_migrations", &columns).await);
    }

    // The cause fixed (on MySQL, whose DDL committed, the interrupted migration is marked
    // done: the table is there), the same run again.
    FIXED.lock().unwrap().insert(bad.clone());
    if m.kind().engine() == Engine::MySql {
        full.mark(Some(&name(bad)), PROJECTS, MigrationStatus::Completed)
            .await
            .unwrap();
    }
    let recorder = Recorder::default();
    let second = full
        .migrate_with_progress(&options, &recorder)
        .await
        .unwrap();
    assert!(second.is_success(), "{:?}", second.failures);
    let r2 = second.run_id.clone().unwrap();
    assert_eq!((second.tenants_migrated, second.tenants_current), (4, 2));
    assert_eq!(
        recorder.events(m.prefix()),
        [
            format!("run {r2}"),
            "wave 1/3: 2".to_owned(),
            format!("done {a1}"),
            format!("done {a2}"),
            // The first wave was done already: no pause after it.
            "no pause after 1".to_owned(),
            "wave 2/3: 2".to_owned(),
            format!("done {bad}"),
            format!("done {b2}"),
            "wave 3/3: 2".to_owned(),
            format!("done {c1}"),
            format!("done {c2}"),
        ]
    );

    // The first wave's rows are untouched: the first run's id and times.
    for (t, before) in [a1, a2].into_iter().zip(&wave_one) {
        assert_eq!(
            &rows(m, Place::Tenant(t), "mtnt_migrations", &columns).await,
            before,
            "{t}"
        );
        assert_eq!(run_id_of(m, t, BACKFILL).await.as_ref(), Some(&r1));
    }
    for t in [b2, c1, c2] {
        for order in [PROJECTS, BACKFILL] {
            assert_eq!(run_id_of(m, t, order).await.as_ref(), Some(&r2), "{t}");
        }
    }
    assert_eq!(run_id_of(m, bad, BACKFILL).await.as_ref(), Some(&r2));
    let mut first_run = vec![
        (a1.clone(), vec![PROJECTS, BACKFILL], vec![]),
        (a2.clone(), vec![PROJECTS, BACKFILL], vec![]),
    ];
    let bad_second = match m.kind().engine() {
        // Marked by hand, the row kept the id of the run that ran it.
        Engine::MySql => {
            first_run.push((bad.clone(), vec![PROJECTS], vec![]));
            vec![BACKFILL]
        }
        _ => vec![PROJECTS, BACKFILL],
    };
    assert_eq!(run_shows(&full, &r1).await, first_run);
    assert_eq!(
        run_shows(&full, &r2).await,
        [
            (bad.clone(), bad_second, vec![]),
            (b2.clone(), vec![PROJECTS, BACKFILL], vec![]),
            (c1.clone(), vec![PROJECTS, BACKFILL], vec![]),
            (c2.clone(), vec![PROJECTS, BACKFILL], vec![]),
        ]
    );
}
