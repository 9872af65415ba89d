//! A throwaway PostgreSQL database per test.
//!
//! Tests run in parallel, so each one creates its own database on the server named by
//! `MTNT_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and drops it
//! when done: call [`TestDb::drop_db`] at the end of the test; if the test panics first,
//! `Drop` removes the database from a helper thread.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};

/// The admin URL: a database on the test server that always exists.
pub fn admin_url() -> String {
    std::env::var("MTNT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The admin URL of the second server, for the fleet tests across servers
/// (`tests/servers.rs`): `MTNT_TEST_PG2_URL`, default
/// `postgres://postgres@127.0.0.1:5433/postgres` (`scripts/test` starts that cluster).
pub fn second_admin_url() -> String {
    std::env::var("MTNT_TEST_PG2_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/postgres".to_owned())
}

/// A uniquely named database that is dropped after the test.
pub struct TestDb {
    /// The URL of the test database.
    pub url: String,
    name: String,
    /// The admin URL of its server.
    admin: String,
    dropped: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name(prefix: &str) -> String {
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
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "mtnt_t_{prefix}_{}_{n}_{:x}",
        std::process::id(),
        nanos & 0xfffff
    )
}

async fn admin_of(url: &str) -> PgConnection {
    let options: PgConnectOptions = url.parse().expect("the admin URL is not a PostgreSQL URL");
    options.connect().await.unwrap_or_else(|e| {
        panic!(
            "cannot reach the test PostgreSQL server at {} ({e}); start it (scripts/test --setup-only) or set MTNT_TEST_PG_URL / MTNT_TEST_PG2_URL",
            mtnt::redact_url(url)
        )
    })
}

async fn drop_database(admin: &str, name: &str) {
    let mut conn = admin_of(admin).await;
    drop_on(&mut conn, name).await;
    let _ = conn.close().await;
}

async fn drop_on(conn: &mut PgConnection, name: &str) {
    let sql = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    if let Err(e) = sqlx::raw_sql(&sql).execute(&mut *conn).await {
        eprintln!("warning: could not drop test database {name}: {e}");
    }
}

/// Drops every database whose name starts with `prefix` (the tenant databases of a test),
/// closing their connections by force.
pub async fn drop_databases_with_prefix(prefix: &str) {
    drop_databases_with_prefix_on(&admin_url(), prefix).await
}

/// [`drop_databases_with_prefix`] on the server of the admin URL `admin`.
pub async fn drop_databases_with_prefix_on(admin: &str, prefix: &str) {
    let mut conn = admin_of(admin).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(crate::like_prefix(prefix))
            .fetch_all(&mut conn)
            .await
            .expect("list databases");
    for name in names {
        drop_on(&mut conn, &name).await;
    }
    let _ = conn.close().await;
}

impl TestDb {
    /// Creates an empty database named `mtnt_t_<prefix>_<pid>_<n>_<random>`.
    pub async fn create(prefix: &str) -> TestDb {
        Self::create_on(&admin_url(), prefix).await
    }

    /// [`TestDb::create`] on the server of the admin URL `admin`.
    pub async fn create_on(admin: &str, prefix: &str) -> TestDb {
        let name = unique_name(prefix);
        let mut conn = admin_of(admin).await;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        let options: PgConnectOptions = admin.parse().expect("admin URL");
        let url = options.database(&name).to_url_lossy().to_string();
        TestDb {
            url,
            name,
            admin: admin.to_owned(),
            dropped: false,
        }
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A pool on the test database with at most `max` connections.
    pub async fn pool(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    /// Drops the database (closing its connections first, by force).
    pub async fn drop_db(mut self) {
        self.dropped = true;
        drop_database(&self.admin, &self.name).await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        crate::block_on_in_thread(
            &format!("test database {}", self.name),
            move || async move { drop_database(&admin, &name).await },
        );
    }
}

/// Whether `schema` exists.
pub async fn schema_exists(pool: &PgPool, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .expect("query pg_namespace")
}

/// Whether `schema.table` exists.
pub async fn table_exists(pool: &PgPool, schema: &str, table: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2)",
    )
    .bind(schema)
    .bind(table)
    .fetch_one(pool)
    .await
    .expect("query pg_tables")
}

/// Whether `schema.table` has `column`.
pub async fn column_exists(pool: &PgPool, schema: &str, table: &str, column: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = $2 AND column_name = $3)",
    )
    .bind(schema)
    .bind(table)
    .bind(column)
    .fetch_one(pool)
    .await
    .expect("query information_schema.columns")
}

/// One tracking row of a tenant, read with plain SQL.
#[derive(Clone, Debug)]
pub struct TrackingRow {
    /// The migration's order.
    pub migration_order: i64,
    /// Its recorded name.
    pub name: String,
    /// Its recorded checksum.
    pub checksum: String,
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

/// The tracking rows of `tenant` (schema per tenant, control schema `public`), by order.
pub async fn tracking_rows(pool: &PgPool, tenant: &str) -> Vec<TrackingRow> {
    let rows = sqlx::query(
        "SELECT migration_order, name, checksum, status, started_at, finished_at, duration_ms, error \
         FROM public.mtnt_tenant_migrations WHERE tenant = $1 ORDER BY migration_order",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
    .unwrap_or_else(|e| panic!("read the tracking rows of {tenant}: {e}"));
    rows.iter()
        .map(|row| TrackingRow {
            migration_order: row.get("migration_order"),
            name: row.get("name"),
            checksum: row.get("checksum"),
            status: row.get("status"),
            started_at: row.get("started_at"),
            finished_at: row.get("finished_at"),
            duration_ms: row.get("duration_ms"),
            error: row.get("error"),
        })
        .collect()
}

/// The tracking row of one migration of `tenant`, if there is one.
pub async fn tracking_row(pool: &PgPool, tenant: &str, order: i64) -> Option<TrackingRow> {
    tracking_rows(pool, tenant)
        .await
        .into_iter()
        .find(|r| r.migration_order == order)
}

/// One row of the tenant registry `public.mtnt_tenants`, read with plain SQL.
#[derive(Clone, Debug)]
pub struct RegistryRow {
    /// The tenant name.
    pub name: String,
    /// Its schema.
    pub schema_name: String,
    /// `active` or `creating`.
    pub state: String,
    /// Cached newest completed migration.
    pub applied_order: Option<i64>,
    /// Cached failed migration.
    pub failed_order: Option<i64>,
    /// Cached error.
    pub last_error: Option<String>,
}

/// Every row of `public.mtnt_tenants`, by name.
pub async fn registry_rows(pool: &PgPool) -> Vec<RegistryRow> {
    let rows = sqlx::query(
        "SELECT name, schema_name, state, applied_order, failed_order, last_error FROM public.mtnt_tenants ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .expect("read public.mtnt_tenants");
    rows.iter()
        .map(|row| RegistryRow {
            name: row.get("name"),
            schema_name: row.get("schema_name"),
            state: row.get("state"),
            applied_order: row.get("applied_order"),
            failed_order: row.get("failed_order"),
            last_error: row.get("last_error"),
        })
        .collect()
}

/// The registry row of one tenant, if it is registered.
pub async fn registry_row(pool: &PgPool, name: &str) -> Option<RegistryRow> {
    registry_rows(pool)
        .await
        .into_iter()
        .find(|r| r.name == name)
}
