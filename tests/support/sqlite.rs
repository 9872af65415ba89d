//! Helpers for tests on the SQLite backend: a throwaway tenant directory and direct
//! connections to the files in it, to check what mtnt wrote.

use std::path::Path;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// A fresh, empty directory for a [`mtnt::SqliteBackend`]; deleted when dropped.
pub fn sqlite_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mtnt-sqlite-")
        .tempdir()
        .expect("create a temporary directory")
}

/// A connection to an existing database file (never creates one).
pub async fn open_file(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false);
    SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// A connection to a database file, creating it if missing (to stage files for `adopt`).
pub async fn create_file(path: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Whether the database behind `conn` has a table named `table`.
pub async fn table_exists(conn: &mut SqliteConnection, table: &str) -> bool {
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .bind(table)
            .fetch_optional(&mut *conn)
            .await
            .expect("query sqlite_master");
    found.is_some()
}

/// One row of a `mtnt_migrations` tracking table: status and error.
pub async fn tracking_row(
    conn: &mut SqliteConnection,
    order: i64,
) -> Option<(String, Option<String>)> {
    sqlx::query_as("SELECT status, error FROM mtnt_migrations WHERE migration_order = ?1")
        .bind(order)
        .fetch_optional(&mut *conn)
        .await
        .expect("query mtnt_migrations")
}
