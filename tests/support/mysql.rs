//! A throwaway control database per test on the MySQL/MariaDB server named by
//! `MTNT_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`).
//!
//! Tests run in parallel on one server, so each [`TestControl`] has a unique control
//! database `mtnt_t_<prefix>_<pid>_<n>` and a unique tenant prefix `t<pid>_<n>_`: name
//! every tenant of the test with [`TestControl::tenant`]. Dropping the `TestControl`
//! removes the control database and every database that starts with its tenant prefix.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{ConnectOptions, Connection, MySqlConnection, Row};

/// The server URL, without a database.
pub fn server_url() -> String {
    std::env::var("MTNT_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

async fn admin() -> MySqlConnection {
    let options: MySqlConnectOptions = server_url()
        .parse()
        .expect("MTNT_TEST_MYSQL_URL is not a MySQL URL");
    options.connect().await.unwrap_or_else(|e| {
        panic!(
            "cannot reach the test MySQL/MariaDB server at {} ({e}); start it or set MTNT_TEST_MYSQL_URL",
            mtnt::redact_url(&server_url())
        )
    })
}

/// The databases whose names start with `prefix`.
async fn databases_with_prefix(conn: &mut MySqlConnection, prefix: &str) -> Vec<String> {
    let rows =
        sqlx::query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?")
            .bind(crate::like_prefix(prefix))
            .fetch_all(&mut *conn)
            .await
            .expect("list databases");
    rows.iter().map(|r| text(r, 0)).collect()
}

/// Drops the control database and every database that starts with the tenant prefix.
async fn cleanup(control: &str, tenant_prefix: &str) {
    let mut conn = admin().await;
    let mut doomed = databases_with_prefix(&mut conn, tenant_prefix).await;
    doomed.push(control.to_owned());
    for db in doomed {
        let sql = format!("DROP DATABASE IF EXISTS `{}`", db.replace('`', "``"));
        if let Err(e) = sqlx::raw_sql(&sql).execute(&mut conn).await {
            eprintln!("warning: could not drop test database {db}: {e}");
        }
    }
    let _ = conn.close().await;
}

/// A unique control database and tenant prefix for one test; both are removed on drop.
pub struct TestControl {
    /// `mysql://.../<control>`: the URL to give mtnt.
    pub url: String,
    control: String,
    tenant_prefix: String,
}

impl TestControl {
    /// Reserves a control database `mtnt_t_<prefix>_<pid>_<n>` (mtnt creates it on first
    /// use) and removes databases a crashed earlier run with the same names left behind.
    pub async fn new(prefix: &str) -> TestControl {
        let prefix: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(24)
            .collect();
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let control = format!("mtnt_t_{prefix}_{pid}_{n}");
        let tenant_prefix = format!("t{pid}_{n}_");
        cleanup(&control, &tenant_prefix).await;
        let url = format!("{}/{control}", server_url().trim_end_matches('/'));
        TestControl {
            url,
            control,
            tenant_prefix,
        }
    }

    /// The control database.
    pub fn control(&self) -> &str {
        &self.control
    }

    /// This test's name for tenant `base`: `t<pid>_<n>_<base>`.
    pub fn tenant(&self, base: &str) -> String {
        let name = format!("{}{base}", self.tenant_prefix);
        assert!(
            name.len() <= 50,
            "tenant name {name} is longer than 50 characters"
        );
        name
    }

    /// The tenant prefix, for `LIKE` patterns (escape its `_` as `\_`).
    pub fn tenant_prefix(&self) -> &str {
        &self.tenant_prefix
    }

    /// A pool on the server with at most `max` connections and no default database.
    pub async fn pool(&self, max: u32) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(max)
            .connect(&server_url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", mtnt::redact_url(&server_url())))
    }

    /// Removes the control database and the tenant databases of this test now.
    pub async fn cleanup(mut self) {
        cleanup(&self.control, &self.tenant_prefix).await;
        self.tenant_prefix.clear();
    }
}

impl Drop for TestControl {
    fn drop(&mut self) {
        if self.tenant_prefix.is_empty() {
            return;
        }
        let (control, prefix) = (self.control.clone(), self.tenant_prefix.clone());
        crate::block_on_in_thread(
            &format!("test database {}", self.control),
            move || async move { cleanup(&control, &prefix).await },
        );
    }
}

/// A text column read as bytes (binary collations and `information_schema` columns both work).
fn text(row: &sqlx::mysql::MySqlRow, index: usize) -> String {
    let bytes: Vec<u8> = row.get(index);
    String::from_utf8(bytes).expect("UTF-8 text")
}

fn opt_text(row: &sqlx::mysql::MySqlRow, index: usize) -> Option<String> {
    let bytes: Option<Vec<u8>> = row.get(index);
    bytes.map(|b| String::from_utf8(b).expect("UTF-8 text"))
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// Whether database `db` exists.
pub async fn database_exists(pool: &MySqlPool, db: &str) -> bool {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?")
            .bind(db)
            .fetch_optional(pool)
            .await
            .expect("query information_schema.SCHEMATA");
    found.is_some()
}

/// Whether `db.table` exists.
pub async fn table_exists(pool: &MySqlPool, db: &str, table: &str) -> bool {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
    )
    .bind(db)
    .bind(table)
    .fetch_optional(pool)
    .await
    .expect("query information_schema.TABLES");
    found.is_some()
}

/// Runs raw SQL (one or more statements) on the server.
pub async fn execute(pool: &MySqlPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// One row of a database's `mtnt_migrations`, read with plain SQL.
#[derive(Clone, Debug)]
pub struct TrackingRow {
    /// The migration's order.
    pub migration_order: i64,
    /// `pending`, `started`, `failed` or `completed`.
    pub status: String,
    /// Start of the last attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// End of the last attempt.
    pub finished_at: Option<DateTime<Utc>>,
    /// Duration of the last attempt.
    pub duration_ms: Option<i64>,
    /// Error of the last failed attempt.
    pub error: Option<String>,
}

/// The tracking row of one migration in database `db`, if there is one.
pub async fn tracking_row(pool: &MySqlPool, db: &str, order: i64) -> Option<TrackingRow> {
    let sql = format!(
        "SELECT migration_order, status, started_at, finished_at, duration_ms, error \
         FROM {}.mtnt_migrations WHERE migration_order = ?",
        quote(db)
    );
    let row = sqlx::query(&sql)
        .bind(order)
        .fetch_optional(pool)
        .await
        .unwrap_or_else(|e| panic!("read {db}.mtnt_migrations: {e}"))?;
    Some(TrackingRow {
        migration_order: row.get(0),
        status: text(&row, 1),
        started_at: row.get(2),
        finished_at: row.get(3),
        duration_ms: row.get(4),
        error: opt_text(&row, 5),
    })
}

/// One row of the tenant registry, read with plain SQL.
#[derive(Clone, Debug)]
pub struct RegistryRow {
    /// `active` or `creating`.
    pub state: String,
    /// Cached newest completed migration.
    pub applied_order: Option<i64>,
    /// Cached failed migration.
    pub failed_order: Option<i64>,
    /// Cached error.
    pub last_error: Option<String>,
}

/// The registry row of tenant `name` in the control database `control`, if any.
pub async fn registry_row(pool: &MySqlPool, control: &str, name: &str) -> Option<RegistryRow> {
    let sql = format!(
        "SELECT state, applied_order, failed_order, last_error FROM {}.mtnt_tenants WHERE name = ?",
        quote(control)
    );
    let row = sqlx::query(&sql)
        .bind(name)
        .fetch_optional(pool)
        .await
        .unwrap_or_else(|e| panic!("read {control}.mtnt_tenants: {e}"))?;
    Some(RegistryRow {
        state: text(&row, 0),
        applied_order: row.get(1),
        failed_order: row.get(2),
        last_error: opt_text(&row, 3),
    })
}
