//! What only the SQLite backend (one file per tenant) has: URLs that name a directory, WAL
//! journaling of the tenant files, and `adopt` meeting a file that is no database. The
//! behaviour every engine shares (fleet, failures, rollback, create, checksums, adopt, CLI)
//! is proven on SQLite by `tests/behaviour.rs`.

use mtnt::{ConnectOptions, Error, MigrationSet, Migrator, SqliteBackend, Tenancy, TenantName};
use mtnt_test_support::sqlite::{open_file, sqlite_dir};
use sqlx::Connection;

// The behaviour suite's migrations; this file uses the main set only.
#[allow(dead_code)]
#[path = "behaviour/migrations.rs"]
mod migrations;

/// The behaviour suite's main set.
fn fleet() -> MigrationSet {
    MigrationSet::registered_in("sqlite::migrations::fleet").unwrap()
}

async fn migrator(dir: &std::path::Path) -> Migrator {
    Migrator::builder(SqliteBackend::open(dir).await.unwrap())
        .migrations(fleet())
        .build()
        .unwrap()
}

// SQLite only: the journal mode is a property of a SQLite file.
#[tokio::test]
async fn tenant_files_use_wal_journaling() {
    let dir = sqlite_dir();
    let m = migrator(dir.path()).await;
    m.create_tenant(&TenantName::new("acme").unwrap())
        .await
        .unwrap();
    for file in ["acme.db", "mtnt_control.db"] {
        let mut conn = open_file(&dir.path().join(file)).await;
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal", "{file}");
        conn.close().await.unwrap();
    }
}

// SQLite only: a server never hands a schema or database over that is not one.
#[tokio::test]
async fn adopt_names_a_file_that_is_no_database() {
    let dir = sqlite_dir();
    let m = migrator(dir.path()).await;
    std::fs::write(
        dir.path().join("broken.db"),
        b"this is no SQLite file, just text long enough",
    )
    .unwrap();
    let error = m.adopt("broken", None).await.unwrap_err();
    assert!(error.to_string().contains("broken.db"), "{error}");
    assert!(m.tenants().await.unwrap().is_empty());
}

// SQLite only: the URL forms of `sqlite:` (the behaviour suite uses `sqlite:///abs/dir`).
#[tokio::test]
async fn connect_takes_sqlite_urls_naming_a_directory() {
    let dir = sqlite_dir();
    let tenants = dir.path().join("nested").join("tenants");
    let url = format!("sqlite://{}", tenants.display());
    let backend = mtnt::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (backend.engine(), backend.tenancy()),
        (mtnt::Engine::Sqlite, Tenancy::File)
    );
    backend.prepare().await.unwrap();
    assert!(tenants.join("mtnt_control.db").is_file());

    let mut options = ConnectOptions::default();
    options.tenancy = Some(Tenancy::Schema);
    let error = mtnt::connect(&url, &options).await.err().unwrap();
    assert!(matches!(error, Error::BadUrl { .. }), "{error}");
    assert!(error.to_string().contains("use file"), "{error}");

    let error = mtnt::connect("sqlite::memory:", &ConnectOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(error, Error::BadUrl { .. }), "{error}");
}
