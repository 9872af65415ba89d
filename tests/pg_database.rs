//! What only PostgreSQL with one database per tenant (`--tenancy database`,
//! [`PgDatabaseBackend`]) has: a connection of its own per tenant session, closed when the
//! session ends, and a URL or pool that must name the control database. The behaviour every
//! model shares (fleet, failures, rollback, create, concurrent runs, checksums, adopt, CLI)
//! is proven on this model by `tests/behaviour.rs`. Each test works in a [`Model`] of its own: a fresh control
//! database and a tenant prefix unique to the test, whose tenant databases are dropped when
//! it ends, even when it fails.
#![cfg(feature = "postgres")]
// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use std::str::FromStr;
use std::time::Duration;

use assert_cmd::Command;
use mtnt::{MigrateOptions, MigrationSet, PgDatabaseBackend};
use mtnt_test_support::create_tenants;
use mtnt_test_support::like_prefix;
use mtnt_test_support::models::{Kind, Model, Place};
use predicates::prelude::PredicateBooleanExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

// The behaviour suite's migrations; this file uses the main set.
#[allow(dead_code)]
#[path = "behaviour/migrations.rs"]
mod migrations;

use migrations::{ACCOUNTS, BACKFILL};

/// The behaviour suite's main set up to `to`.
fn fleet_to(to: i64) -> MigrationSet {
    MigrationSet::new(
        MigrationSet::registered_in("pg_database::migrations::fleet")
            .unwrap()
            .iter()
            .filter(|m| m.order() <= to),
    )
    .unwrap()
}

/// A control database and tenant prefix of the test's own.
async fn model(label: &str) -> Model {
    Model::new(Kind::PgDatabase, label).await
}

/// How many sessions are connected to a tenant database of this test, after waiting (a
/// little) for the count to reach zero.
async fn tenant_connections(model: &Model) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE '{}'",
        like_prefix(model.prefix())
    );
    let mut count = 0;
    for _ in 0..40 {
        count = model.int(Place::Control, &sql).await.unwrap_or(0);
        if count == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    count
}

// This model only: a tenant session holds a connection to the tenant's database of its own,
// outside the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_closes_its_tenant_connection() {
    let model = model("pgdb_sessions").await;
    let names: Vec<String> = (1..=4).map(|i| model.tenant(&format!("acme{i}"))).collect();
    create_tenants(&model.migrator(fleet_to(ACCOUNTS)).await, &names).await;
    assert_eq!(tenant_connections(&model).await, 0);

    let all = model
        .builder(fleet_to(BACKFILL))
        .await
        .concurrency(2)
        .build()
        .unwrap();
    let report = all.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 8);
    assert_eq!(tenant_connections(&model).await, 0);
    all.status(&[]).await.unwrap();
    assert_eq!(tenant_connections(&model).await, 0);

    model.finish().await;
}

// This model only: the control database is the one the URL names.
#[test]
fn a_url_without_a_database_names_no_control_database() {
    Command::cargo_bin("mtnt-portable-app")
        .unwrap()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432")
        .env_remove("PGDATABASE")
        .args(["--no-progress", "--tenancy", "database", "status"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("name the control database"));
}

// This model only: `PgDatabaseBackend::new` takes the control database from the pool.
#[tokio::test]
async fn a_pool_without_a_database_is_refused() {
    let options = PgConnectOptions::new().host("127.0.0.1");
    if options.get_database().is_some() {
        // PGDATABASE is set in this environment: nothing to check.
        return;
    }
    let pool = PgPoolOptions::new().connect_lazy_with(options);
    let err = PgDatabaseBackend::new(pool).unwrap_err();
    assert!(
        err.to_string().contains("name the control database"),
        "{err}"
    );
}

// This model only: a tenant database can vanish under its registry row (a create that
// died before `CREATE DATABASE`, or a database dropped by hand). A run reports the tenant
// as failed, naming it and its database, and `tenant drop` still removes the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_database_is_gone_fails_alone_and_can_be_dropped() {
    let model = model("pgdb_gone").await;
    let names: Vec<String> = ["kept", "gone"].iter().map(|b| model.tenant(b)).collect();
    let migrator = model.migrator(fleet_to(ACCOUNTS)).await;
    create_tenants(&migrator, &names).await;
    model
        .execute(
            Place::Control,
            &format!("DROP DATABASE \"{}\" WITH (FORCE)", names[1]),
        )
        .await;

    let report = model
        .migrator(fleet_to(BACKFILL))
        .await
        .migrate(&MigrateOptions::new())
        .await
        .unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].tenant.as_str(), names[1]);
    let error = &report.failures[0].error;
    assert!(
        matches!(error, mtnt::Error::StorageMissing { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&names[1]), "{error}");

    let gone = mtnt::TenantName::new(names[1].as_str()).unwrap();
    migrator.drop_tenant(&gone).await.unwrap();
    let left: Vec<String> = migrator
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.tenant.name.to_string())
        .collect();
    assert_eq!(left, [names[0].clone()]);
    model.finish().await;
}

// This model (and MySQL, tests/mysql.rs): a tenant named like the control database is
// refused before any SQL, as an invalid tenant name with no fix to follow (`tenant adopt`
// would take the control database for a tenant); its registry row and the control
// database stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_named_like_the_control_database_is_refused() {
    let model = model("pgdb_ctlname").await;
    // A control database with a valid tenant name (the test's prefix: dropped with it).
    let ctl = model.tenant("ctl");
    model
        .execute(Place::Control, &format!("CREATE DATABASE \"{ctl}\""))
        .await;
    use sqlx::ConnectOptions as _;
    let url = sqlx::postgres::PgConnectOptions::from_str(&mtnt_test_support::postgres::admin_url())
        .unwrap()
        .database(&ctl)
        .to_url_lossy()
        .to_string();
    let backend = mtnt::connect(
        &url,
        &mtnt::ConnectOptions::new().tenancy(mtnt::Tenancy::Database),
    )
    .await
    .unwrap();
    let m = mtnt::Migrator::builder_boxed(backend)
        .migrations(fleet_to(ACCOUNTS))
        .build()
        .unwrap();
    let error = m
        .create_tenant(&mtnt::TenantName::new(ctl.clone()).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, mtnt::Error::InvalidTenantName { name, .. } if *name == ctl),
        "{error:?}"
    );
    assert!(error.to_string().contains("control database"), "{error}");
    assert_eq!(mtnt::cli_fix(&error), None, "{error}");
    assert!(m.tenants().await.unwrap().is_empty());
    // The CLI says the same, with no fix.
    Command::cargo_bin("mtnt-portable-app")
        .unwrap()
        .env("DATABASE_URL", &url)
        .args([
            "--no-progress",
            "--tenancy",
            "database",
            "tenant",
            "create",
            &ctl,
        ])
        .assert()
        .code(1)
        .stderr(predicates::str::contains(
            "it is the name of the control database",
        ))
        .stderr(predicates::str::contains("fix:").not());

    model.finish().await;
}
