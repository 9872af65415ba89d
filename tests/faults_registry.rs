//! A registry row inserted by hand with a name mtnt refuses fails alone on MySQL/MariaDB
//! and SQLite too (`tests/pg_faults.rs` shows it on PostgreSQL through the CLI): the rest
//! of the fleet migrates, `status` and the tenant list leave the row out and name it.
#![cfg(any(feature = "mysql", feature = "sqlite"))]
#![cfg(not(feature = "inventory"))]

use mtnt::{MigrateOptions, MigrationSet};
use mtnt_test_support::create_tenants;
use mtnt_test_support::models::{Kind, Model, Place};

// The behaviour suite's migrations; this file uses the main set.
#[allow(dead_code)]
#[path = "behaviour/migrations.rs"]
mod migrations;

fn fleet() -> MigrationSet {
    MigrationSet::registered_in("faults_registry::migrations::fleet").unwrap()
}

async fn an_invalid_registry_name_fails_only_its_row(kind: Kind) {
    let model = Model::new(kind, "bad_registry_row").await;
    let names = [model.tenant("a"), model.tenant("b")];
    create_tenants(&model.migrator(fleet()).await, &names).await;
    model
        .execute(
            Place::Control,
            "INSERT INTO mtnt_tenants (name, schema_name, state, created_at, updated_at) \
             VALUES ('Bad Name', 'bad_storage', 'active', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        )
        .await;
    let migrator = model.migrator(fleet()).await;
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.tenants_current, 2, "{report:?}");
    assert_eq!(report.invalid_registry_rows.len(), 1, "{report:?}");
    assert_eq!(report.invalid_registry_rows[0].name, "Bad Name");
    assert!(!report.is_success());
    let message = report.invalid_registry_rows[0].error().to_string();
    assert!(message.contains("mtnt_tenants"), "{message}");
    let fix = mtnt::cli_fix(&report.invalid_registry_rows[0].error()).unwrap();
    assert!(fix.contains("WHERE name = 'Bad Name'"), "{fix}");
    assert_eq!(migrator.tenants().await.unwrap().len(), 2);
    let status = migrator.status(&[]).await.unwrap();
    assert_eq!(status.tenants.len(), 2);
    assert_eq!(status.invalid_registry_rows.len(), 1);
    model.finish().await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_registry_name_fails_only_its_row_mysql() {
    an_invalid_registry_name_fails_only_its_row(Kind::MySql).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_registry_name_fails_only_its_row_sqlite() {
    an_invalid_registry_name_fails_only_its_row(Kind::Sqlite).await;
}
