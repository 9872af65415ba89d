use sqlx::{MySqlConnection, PgConnection, SqliteConnection};

use crate::backend::{exec_mysql, exec_postgres, exec_sqlite};
use crate::{Engine, Error, Result, Scope, Tenant};

/// What a migration function gets: the tenant it runs for and the live connection,
/// already inside the migration's transaction (unless `transaction = false`).
///
/// ```no_run
/// #[mtnt::migration(scope = "tenant", order = 2024_02_01_0001)]
/// async fn backfill_names(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
///     let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM accounts WHERE name IS NULL")
///         .fetch_all(ctx.postgres()?)
///         .await?;
///     for (id,) in rows {
///         sqlx::query("UPDATE accounts SET name = 'user ' || id WHERE id = $1")
///             .bind(id)
///             .execute(ctx.postgres()?)
///             .await?;
///     }
///     Ok(())
/// }
/// # fn main() {}
/// ```
pub struct Ctx<'c> {
    tenant: Option<&'c Tenant>,
    conn: CtxConn<'c>,
}

/// The engine connection a [`Ctx`] hands out.
#[non_exhaustive]
pub enum CtxConn<'c> {
    /// PostgreSQL (schema or database per tenant).
    Postgres(&'c mut PgConnection),
    /// SQLite (file per tenant).
    Sqlite(&'c mut SqliteConnection),
    /// MySQL or MariaDB (database per tenant).
    MySql(&'c mut MySqlConnection),
}

impl<'c> Ctx<'c> {
    /// Builds a context; backends call this, migrations receive it.
    pub fn new(tenant: Option<&'c Tenant>, conn: CtxConn<'c>) -> Self {
        Self { tenant, conn }
    }

    /// The tenant this migration runs for, or `None` for a public migration.
    pub fn tenant(&self) -> Option<&Tenant> {
        self.tenant
    }

    /// Public or tenant.
    pub fn scope(&self) -> Scope {
        if self.tenant.is_some() {
            Scope::Tenant
        } else {
            Scope::Public
        }
    }

    /// Which engine the connection belongs to.
    pub fn engine(&self) -> Engine {
        match self.conn {
            CtxConn::Postgres(_) => Engine::Postgres,
            CtxConn::Sqlite(_) => Engine::Sqlite,
            CtxConn::MySql(_) => Engine::MySql,
        }
    }

    /// Runs one or more SQL statements (separated by `;`) in the migration's transaction.
    pub async fn execute(&mut self, sql: &str) -> Result<()> {
        match &mut self.conn {
            CtxConn::Postgres(c) => exec_postgres(c, sql).await,
            CtxConn::Sqlite(c) => exec_sqlite(c, sql).await,
            CtxConn::MySql(c) => exec_mysql(c, sql).await,
        }
        .map_err(Error::from)
    }

    /// The PostgreSQL connection, for typed `sqlx::query` calls.
    ///
    /// Fails with [`Error::WrongEngine`] on another engine.
    pub fn postgres(&mut self) -> Result<&mut PgConnection> {
        let actual = self.engine();
        match &mut self.conn {
            CtxConn::Postgres(c) => Ok(c),
            _ => Err(Error::WrongEngine {
                wanted: Engine::Postgres,
                actual,
            }),
        }
    }

    /// The SQLite connection, for typed `sqlx::query` calls.
    pub fn sqlite(&mut self) -> Result<&mut SqliteConnection> {
        let actual = self.engine();
        match &mut self.conn {
            CtxConn::Sqlite(c) => Ok(c),
            _ => Err(Error::WrongEngine {
                wanted: Engine::Sqlite,
                actual,
            }),
        }
    }

    /// The MySQL/MariaDB connection, for typed `sqlx::query` calls.
    pub fn mysql(&mut self) -> Result<&mut MySqlConnection> {
        let actual = self.engine();
        match &mut self.conn {
            CtxConn::MySql(c) => Ok(c),
            _ => Err(Error::WrongEngine {
                wanted: Engine::MySql,
                actual,
            }),
        }
    }
}
