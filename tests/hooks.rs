//! Hooks (`#[mtnt::hook(...)]`) against the real engines, on every tenancy model: each
//! kind runs, and when; a failing `before_tenant` fails its tenant only, with nothing
//! applied; `after_tenant` sees failures; a failing `after_tenant` or `after_run` is a
//! warning; a failing `before_run` stops the run before any change; `tenant create` runs
//! the tenant hooks and is all or nothing with them (the seed use). The rules are those of
//! `mtnt-macros/src/hook.md`.
//!
//! The migrations and hooks are in `hooks/defs.rs`, which says how tenants steer them by
//! their names; the CLI binary `mtnt-hooks-app` has them behind `mtnt::run!()`.
//!
//! `cargo test --test hooks sqlite` runs the SQLite half alone (no server needed).

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]
// A build without any engine has no scenario to run.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports)
)]

use assert_cmd::Command;
use mtnt::{
    Engine, Error, HookKind, Hooks, MigrateOptions, MigrateReport, MigrationSet, Migrator,
    SafetySettings, TenantName, TenantState,
};
use mtnt_test_support::models::{Model, Place};
use mtnt_test_support::{create_tenants, scenarios};
use predicates::prelude::*;

#[path = "hooks/defs.rs"]
mod defs;

use defs::{events, FEATURES, ITEMS, NOTES, TAGS};

scenarios!(
    each_kind_runs_only_where_there_is_work,
    failing_before_tenant_fails_only_that_tenant,
    after_tenant_sees_failures,
    failing_after_hooks_are_warnings,
    failing_before_run_stops_the_run,
    tenant_create_runs_the_tenant_hooks,
    the_cli_runs_every_registered_hook,
);

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

/// The migrations up to `to`.
fn set_to(to: i64) -> MigrationSet {
    let all = MigrationSet::registered_in("hooks::defs::set").unwrap();
    MigrationSet::new(all.iter().filter(|m| m.order() <= to)).unwrap()
}

fn hooks() -> Hooks {
    Hooks::registered_in("hooks::defs::hook_fns").unwrap()
}

/// A migrator with every migration and every hook of this file.
async fn with_hooks(m: &Model) -> Migrator {
    m.builder(set_to(FEATURES))
        .await
        .hooks(hooks())
        .build()
        .unwrap()
}

/// This test's tenants `bases`, created at v1 by a migrator without hooks.
async fn created_at_v1<const N: usize>(m: &Model, bases: [&str; N]) -> [String; N] {
    let v1 = m.migrator(set_to(ITEMS)).await;
    let names = bases.map(|b| m.tenant(b));
    create_tenants(&v1, &names).await;
    names
}

/// Migrates the named tenants.
async fn migrate(migrator: &Migrator, tenants: &[String]) -> mtnt::Result<MigrateReport> {
    let options = MigrateOptions::new().tenants(tenants.iter().map(|t| name(t)));
    migrator.migrate(&options).await
}

async fn status(m: &Model, tenant: &str, order: i64) -> Option<String> {
    m.status(Place::Tenant(tenant), order).await
}

/// The tenants that fail a migration commit nothing of a failed attempt where DDL is
/// transactional (each tenant's pending migrations share one transaction); MySQL commits
/// each migration before the next.
fn committed_before_notes(m: &Model) -> usize {
    match m.kind().engine() {
        Engine::MySql => 1,
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// Each kind runs once per run or once per tenant with work: the run hooks around the
/// run, the tenant hooks (in the tenant, on its connection) around the pending migrations
/// of each behind tenant; a current tenant gets no hooks, so a no-op run runs none.
async fn each_kind_runs_only_where_there_is_work(m: &Model) {
    let [a, b, c] = created_at_v1(m, ["a", "b", "c"]).await;
    let p = m.prefix();
    // `c` is brought up to date without hooks.
    let plain = m.migrator(set_to(FEATURES)).await;
    let report = migrate(&plain, std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(report.tenants_migrated, 1);
    assert!(events(p).is_empty(), "{:?}", events(p));

    let migrator = with_hooks(m).await;
    let all = [a.clone(), b.clone(), c.clone()];
    let report = migrate(&migrator, &all).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert!(
        report.hook_failures.is_empty(),
        "{:?}",
        report.hook_failures
    );
    assert_eq!((report.tenants_migrated, report.tenants_current), (2, 1));
    // a and b run concurrently: their events may interleave.
    let seen = events(p);
    assert_eq!(
        seen.first().map(String::as_str),
        Some("before_run migrate [a,b,c] of 3")
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("after_run migrate [a,b,c] migrated 2 failed 0")
    );
    for t in ["a", "b"] {
        let of_t: Vec<&str> = seen
            .iter()
            .map(String::as_str)
            .filter(|e| e.starts_with(&format!("{t} ")))
            .collect();
        assert_eq!(
            of_t,
            [format!("{t} before"), format!("{t} after migrated 2")]
        );
    }
    assert!(!seen.iter().any(|e| e.starts_with("c ")), "{seen:?}");
    assert_eq!(seen.len(), 6, "{seen:?}");
    // The before_tenant hook ran in each tenant it ran for, before its migrations.
    for t in [&a, &b] {
        assert!(m.table_exists(Place::Tenant(t), "hook_marks").await, "{t}");
        assert_eq!(status(m, t, NOTES).await.as_deref(), Some("completed"));
    }
    assert!(!m.table_exists(Place::Tenant(&c), "hook_marks").await);

    // Nothing to do: the run hooks run, no tenant hook does.
    let report = migrate(&migrator, &all).await.unwrap();
    assert_eq!(report.tenants_current, 3);
    let again: Vec<String> = events(p).split_off(6);
    assert_eq!(
        again,
        [
            "before_run migrate [a,b,c] of 3",
            "after_run migrate [a,b,c] migrated 0 failed 0"
        ]
    );
    // Nor over the whole fleet (whose run hooks name no tenant).
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.tenants_current, 3);
    assert_eq!(events(p).len(), 8);

    // The other fleet commands run the run hooks, not the tenant hooks.
    struct Quiet;
    impl mtnt::Progress for Quiet {}
    let options = MigrateOptions::new().tenants([name(&a)]);
    let report = migrator
        .exec("SELECT 1", true, &options, &Quiet)
        .await
        .unwrap();
    assert_eq!(report.migrations_applied, 1, "the tenants it ran in");
    assert_eq!(
        events(p).split_off(8),
        [
            "before_run exec [a] of 1",
            "after_run exec [a] migrated 1 failed 0"
        ]
    );
}

/// A failing `before_tenant` hook fails its tenant, with an error naming the hook and the
/// tenant, before any of its migrations; the `after_tenant` hooks hear of it; the other
/// tenants are migrated.
async fn failing_before_tenant_fails_only_that_tenant(m: &Model) {
    let [x, y, z] = created_at_v1(m, ["x-refuse", "y", "z-panic"]).await;
    let p = m.prefix();
    let migrator = with_hooks(m).await;
    let report = migrate(&migrator, &[x.clone(), y.clone()]).await.unwrap();
    assert_eq!((report.tenants_migrated, report.failures.len()), (1, 1));
    let failure = &report.failures[0];
    assert_eq!(failure.tenant.as_str(), x);
    match &failure.error {
        Error::Hook {
            kind: HookKind::BeforeTenant,
            hook,
            tenant: Some(tenant),
            ..
        } => assert_eq!((hook.as_str(), tenant.as_str()), ("mark", x.as_str())),
        other => panic!("not a before_tenant hook failure: {other:?}"),
    }
    let message = format!(
        "the before_tenant hook mark failed for tenant {x}: refused by the hook; none of its pending migrations ran"
    );
    assert_eq!(failure.error.to_string(), message);
    // Nothing applied: not a row, not a table.
    for order in [TAGS, NOTES] {
        assert_eq!(status(m, &x, order).await, None, "{order}");
    }
    assert!(!m.table_exists(Place::Tenant(&x), "tags").await);
    let record = migrator
        .backend()
        .tenant_records(&[name(&x)])
        .await
        .unwrap();
    assert_eq!(record[0].applied_order, Some(ITEMS));
    // The other tenant went on.
    assert_eq!(status(m, &y, NOTES).await.as_deref(), Some("completed"));

    let of_x: Vec<String> = events(p)
        .into_iter()
        .filter(|e| e.starts_with("x-refuse "))
        .collect();
    let message = message.replace(p, "");
    assert_eq!(
        of_x,
        [
            "x-refuse before refused".to_owned(),
            format!("x-refuse after failed 0 creating=false: {message}"),
        ]
    );
    assert!(events(p).contains(&"y after migrated 2".to_owned()));
    assert!(events(p).contains(&"after_run migrate [x-refuse,y] migrated 1 failed 1".to_owned()));

    // A hook that panics fails like one that returns an error.
    let report = migrate(&migrator, std::slice::from_ref(&z)).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    assert_eq!(
        report.failures[0].error.to_string(),
        format!("the before_tenant hook mark failed for tenant {z}: it panicked: a bug in a hook; none of its pending migrations ran")
    );
    assert_eq!(status(m, &z, TAGS).await, None);
}

/// `after_tenant` runs after a failed migration too, with the error and what committed
/// before it.
async fn after_tenant_sees_failures(m: &Model) {
    let [z] = created_at_v1(m, ["z-bad"]).await;
    let p = m.prefix();
    let migrator = with_hooks(m).await;
    let report = migrate(&migrator, std::slice::from_ref(&z)).await.unwrap();
    assert_eq!(report.failures.len(), 1);
    let error = report.failures[0].error.to_string();
    assert!(error.contains("create_notes"), "{error}");
    let applied = committed_before_notes(m);
    assert_eq!(
        events(p),
        [
            "before_run migrate [z-bad] of 1".to_owned(),
            "z-bad before".to_owned(),
            format!(
                "z-bad after failed {applied} creating=false: {}",
                error.replace(p, "")
            ),
            "after_run migrate [z-bad] migrated 0 failed 1".to_owned(),
        ]
    );
    let tags = if applied == 1 {
        Some("completed")
    } else {
        None
    };
    assert_eq!(status(m, &z, TAGS).await.as_deref(), tags);
}

/// A failing `after_tenant` hook is a warning: the tenant's migrations stay committed, it
/// counts as migrated, the other `after_tenant` hooks run, and the run succeeds; the next
/// run finds the tenant current. A failing `after_run` hook is a warning too.
async fn failing_after_hooks_are_warnings(m: &Model) {
    let [w, v, u] = created_at_v1(m, ["w-grumpy", "v", "u-sulky"]).await;
    let p = m.prefix();
    let migrator = with_hooks(m).await;
    let report = migrate(&migrator, &[w.clone(), v.clone()]).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.tenants_migrated, 2);
    assert_eq!(report.hook_failures.len(), 1, "{:?}", report.hook_failures);
    let warning = &report.hook_failures[0];
    assert_eq!(
        (
            warning.kind,
            warning.hook,
            warning.tenant.as_ref().map(TenantName::as_str)
        ),
        (HookKind::AfterTenant, "z_grumpy", Some(w.as_str()))
    );
    assert_eq!(
        warning.to_string(),
        format!("the after_tenant hook z_grumpy failed for tenant {w}: grumpy hook")
    );
    for order in [TAGS, NOTES] {
        assert_eq!(status(m, &w, order).await.as_deref(), Some("completed"));
    }
    let of_w: Vec<String> = events(p)
        .into_iter()
        .filter(|e| e.starts_with("w-grumpy "))
        .collect();
    assert_eq!(
        of_w,
        [
            "w-grumpy before",
            "w-grumpy after migrated 2",
            "w-grumpy grumpy"
        ]
    );
    // Nothing left to do, so no hook runs again.
    let before = events(p).len();
    let report = migrate(&migrator, std::slice::from_ref(&w)).await.unwrap();
    assert_eq!(report.tenants_current, 1);
    assert!(report.hook_failures.is_empty());
    assert_eq!(events(p).len(), before + 2, "the run hooks only");

    let report = migrate(&migrator, std::slice::from_ref(&u)).await.unwrap();
    assert!(report.is_success());
    assert_eq!(report.tenants_migrated, 1);
    assert_eq!(report.hook_failures.len(), 1);
    let warning = &report.hook_failures[0];
    assert_eq!(
        (warning.kind, warning.hook, warning.tenant.is_none()),
        (HookKind::AfterRun, "run_ended", true)
    );
    assert_eq!(
        warning.to_string(),
        "the after_run hook run_ended failed: sulky run hook"
    );
}

/// A failing `before_run` hook stops the run before any change: no public migration, no
/// tenant, no `after_run`; the run's lease is released, so the next run goes ahead.
async fn failing_before_run_stops_the_run(m: &Model) {
    let [n] = created_at_v1(m, ["n-norun"]).await;
    let p = m.prefix();
    let migrator = with_hooks(m).await;
    let error = migrate(&migrator, std::slice::from_ref(&n))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Hook {
                kind: HookKind::BeforeRun,
                tenant: None,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the before_run hook run_started failed: not now; the run stopped before any change"
    );
    assert!(!m.table_exists(Place::Control, "features").await);
    assert_eq!(status(m, &n, TAGS).await, None);
    assert_eq!(events(p), ["before_run migrate [n-norun] of 1"]);

    let report = migrate(
        &m.migrator(set_to(FEATURES)).await,
        std::slice::from_ref(&n),
    )
    .await
    .unwrap();
    assert_eq!((report.public_applied, report.tenants_migrated), (1, 1));
}

/// `tenant create` runs the tenant hooks (no run hooks): `before_tenant` in the new
/// tenant before its first migration, `after_tenant` after its last, where it seeds it;
/// a failing hook fails the create and the tenant is removed again; a failing migration
/// is heard by `after_tenant` before the tenant is removed.
async fn tenant_create_runs_the_tenant_hooks(m: &Model) {
    let p = m.prefix();
    let migrator = with_hooks(m).await;
    let s1 = m.tenant("s1");
    let tenant = migrator.create_tenant(&name(&s1)).await.unwrap();
    assert_eq!(tenant.name.as_str(), s1);
    assert_eq!(events(p), ["s1 before", "s1 after created 3"]);
    let seeded = m
        .int(
            Place::Tenant(&s1),
            "SELECT count(*) FROM items WHERE name = 'seeded'",
        )
        .await;
    assert_eq!(seeded, Some(1));
    assert!(m.table_exists(Place::Tenant(&s1), "hook_marks").await);
    let records = migrator
        .backend()
        .tenant_records(&[name(&s1)])
        .await
        .unwrap();
    assert_eq!(
        (records[0].state, records[0].applied_order),
        (TenantState::Active, Some(NOTES))
    );

    let s2 = m.tenant("s2-refuse");
    let error = migrator.create_tenant(&name(&s2)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("the before_tenant hook mark failed for tenant {s2}: refused by the hook; none of its pending migrations ran")
    );
    let s3 = m.tenant("s3-grumpy");
    let error = migrator.create_tenant(&name(&s3)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("the after_tenant hook z_grumpy failed for tenant {s3}: grumpy hook")
    );
    let s4 = m.tenant("s4-bad");
    let error = migrator.create_tenant(&name(&s4)).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("create_notes"), "{message}");
    for t in [&s2, &s3, &s4] {
        assert!(!m.storage_exists(t).await, "{t} was not removed");
        let records = migrator.backend().tenant_records(&[name(t)]).await.unwrap();
        assert!(records.is_empty(), "{t}: {records:?}");
    }
    // With the transactional engines, the failed migration took the earlier ones of its
    // transaction with it.
    let applied = match m.kind().engine() {
        Engine::MySql => 2,
        _ => 0,
    };
    let seen = events(p);
    assert_eq!(
        seen[2..],
        [
            "s2-refuse before refused".to_owned(),
            format!(
                "s2-refuse after failed 0 creating=true: {}",
                format!("the before_tenant hook mark failed for tenant {s2}: refused by the hook; none of its pending migrations ran").replace(p, "")
            ),
            "s3-grumpy before".to_owned(),
            "s3-grumpy after created 3".to_owned(),
            "s3-grumpy grumpy".to_owned(),
            "s4-bad before".to_owned(),
            format!(
                "s4-bad after failed {applied} creating=true: {}",
                message.replace(p, "")
            ),
        ]
    );
    assert!(!seen.iter().any(|e| e.contains("_run")), "{seen:?}");
    // The survivor is a tenant like any other.
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.tenants_current, 1);
}

/// A tenant whose migration fails transiently is tried again; its hooks run once: the
/// `before_tenant` hook (which would fail a second time: its table exists) before the
/// first attempt, the `after_tenant` hook after the attempt that ends it, with the
/// migrations of every attempt. PostgreSQL only: the transient failure is its SQLSTATE.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_tenant_gets_its_hooks_once() {
    let m = Model::new(mtnt_test_support::models::Kind::PgSchema, "hooks_retry").await;
    let [r] = created_at_v1(&m, ["r-flaky"]).await;
    let p = m.prefix();
    let flaky = MigrationSet::registered_in("hooks::defs::flaky").unwrap();
    let set = MigrationSet::new(set_to(FEATURES).iter().chain(flaky.iter())).unwrap();
    let migrator = m
        .builder(set)
        .await
        .hooks(hooks())
        .safety(SafetySettings::new().retry_backoff(std::time::Duration::from_millis(10)))
        .build()
        .unwrap();
    let report = migrate(&migrator, std::slice::from_ref(&r)).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert!(
        report.hook_failures.is_empty(),
        "{:?}",
        report.hook_failures
    );
    assert_eq!((report.tenants_migrated, report.migrations_applied), (1, 3));
    assert_eq!(
        events(p),
        [
            "before_run migrate [r-flaky] of 1",
            "r-flaky before",
            "r-flaky after migrated 3",
            "after_run migrate [r-flaky] migrated 1 failed 0",
        ]
    );
    m.finish().await;
}

/// The CLI app: `mtnt::run!()` runs every registered hook. `tenant create` seeds, or fails
/// and leaves nothing; a failing `after_tenant` hook is a warning on stdout, with exit
/// code 0; a failing `before_run` hook is the run's error.
async fn the_cli_runs_every_registered_hook(m: &Model) {
    let app = || Command::from_std(m.command(assert_cmd::cargo::cargo_bin("mtnt-hooks-app")));
    let [w, n] = created_at_v1(m, ["w-grumpy", "n-norun"]).await;
    let s1 = m.tenant("s1");
    app().args(["tenant", "create", &s1]).assert().success();
    let seeded = m
        .int(
            Place::Tenant(&s1),
            "SELECT count(*) FROM items WHERE name = 'seeded'",
        )
        .await;
    assert_eq!(seeded, Some(1));
    let s2 = m.tenant("s2-refuse");
    app()
        .args(["tenant", "create", &s2])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "error: the before_tenant hook mark failed for tenant {s2}: refused by the hook; none of its pending migrations ran"
        )));
    assert!(!m.storage_exists(&s2).await);

    app()
        .args(["migrate", "--tenant", &w])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "warning: the after_tenant hook z_grumpy failed for tenant {w}: grumpy hook\n"
        )));
    assert_eq!(status(m, &w, NOTES).await.as_deref(), Some("completed"));
    app()
        .args(["migrate", "--tenant", &n])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
        "error: the before_run hook run_started failed: not now; the run stopped before any change",
    ));
    assert_eq!(status(m, &n, NOTES).await, None);
}
