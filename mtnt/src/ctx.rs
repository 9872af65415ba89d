use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "mysql")]
use sqlx::MySqlConnection;
#[cfg(feature = "postgres")]
use sqlx::PgConnection;
#[cfg(feature = "sqlite")]
use sqlx::SqliteConnection;

use crate::migration::BoxFuture;
use crate::{Engine, Error, Result, Scope, Tenant};

/// What a migration function gets: the tenant it runs for and the live connection,
/// already inside the migration's transaction (unless `transaction = false`).
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// #[mtnt::migration(scope = "tenant", order = 2024_02_01_0001)]
/// async fn backfill_names(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
///     use mtnt::sqlx;
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
    /// Set when the migration asks for its tenant: a template built by such a migration
    /// would carry the template's identity into every copy.
    identity_read: Option<&'c AtomicBool>,
}

/// The engine connection a [`Ctx`] hands out.
#[non_exhaustive]
pub enum CtxConn<'c> {
    /// PostgreSQL (schema or database per tenant).
    #[cfg(feature = "postgres")]
    Postgres(&'c mut PgConnection),
    /// SQLite (file per tenant).
    #[cfg(feature = "sqlite")]
    Sqlite(&'c mut SqliteConnection),
    /// MySQL or MariaDB (database per tenant).
    #[cfg(feature = "mysql")]
    MySql(&'c mut MySqlConnection),
    /// The connection of an engine implemented outside mtnt.
    Custom(&'c mut dyn CustomConnection),
}

/// The connection of an engine implemented outside mtnt, as a migration sees it:
/// [`Ctx::execute`] sends it text in the engine's own language, and [`Ctx::custom`]
/// hands it out for typed calls.
pub trait CustomConnection: Send {
    /// The engine's name.
    fn engine(&self) -> Engine;

    /// Runs one or more statements in the engine's language.
    fn execute<'a>(&'a mut self, statements: &'a str) -> BoxFuture<'a, Result<()>>;

    /// The connection itself, for [`Ctx::custom`].
    fn as_any(&mut self) -> &mut dyn Any;
}

impl<'c> Ctx<'c> {
    /// Builds a context; engines call this, migrations receive it.
    pub fn new(tenant: Option<&'c Tenant>, conn: CtxConn<'c>) -> Self {
        Self {
            tenant,
            conn,
            identity_read: None,
        }
    }

    /// This context, noting in `flag` whether the migration asks for its tenant.
    pub(crate) fn watched(mut self, flag: Option<&'c AtomicBool>) -> Self {
        self.identity_read = flag;
        self
    }

    /// The tenant this migration runs for, or `None` for a public migration.
    ///
    /// A tenant migration that calls this is never copied from a template on
    /// `tenant create`: its result may depend on the tenant, so every tenant replays it.
    pub fn tenant(&self) -> Option<&Tenant> {
        if let Some(flag) = self.identity_read {
            flag.store(true, Ordering::Relaxed);
        }
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
        match &self.conn {
            #[cfg(feature = "postgres")]
            CtxConn::Postgres(_) => Engine::Postgres,
            #[cfg(feature = "sqlite")]
            CtxConn::Sqlite(_) => Engine::Sqlite,
            #[cfg(feature = "mysql")]
            CtxConn::MySql(_) => Engine::MySql,
            CtxConn::Custom(c) => c.engine(),
        }
    }

    /// Runs one or more SQL statements (separated by `;`) in the migration's transaction.
    pub async fn execute(&mut self, sql: &str) -> Result<()> {
        match &mut self.conn {
            #[cfg(feature = "postgres")]
            CtxConn::Postgres(c) => exec_postgres(c, sql).await.map_err(Error::from),
            #[cfg(feature = "sqlite")]
            CtxConn::Sqlite(c) => exec_sqlite(c, sql).await.map_err(Error::from),
            #[cfg(feature = "mysql")]
            CtxConn::MySql(c) => exec_mysql(c, sql).await.map_err(Error::from),
            CtxConn::Custom(c) => c.execute(sql).await,
        }
    }

    #[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
    fn wrong_engine(&self, wanted: Engine) -> Error {
        Error::WrongEngine {
            wanted,
            actual: self.engine(),
        }
    }

    /// The PostgreSQL connection, for typed `sqlx::query` calls.
    ///
    /// Fails with [`Error::WrongEngine`] on another engine.
    #[cfg(feature = "postgres")]
    pub fn postgres(&mut self) -> Result<&mut PgConnection> {
        let error = self.wrong_engine(Engine::Postgres);
        match &mut self.conn {
            CtxConn::Postgres(c) => Ok(c),
            _ => Err(error),
        }
    }

    /// The SQLite connection, for typed `sqlx::query` calls.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&mut self) -> Result<&mut SqliteConnection> {
        let error = self.wrong_engine(Engine::Sqlite);
        match &mut self.conn {
            CtxConn::Sqlite(c) => Ok(c),
            _ => Err(error),
        }
    }

    /// The MySQL/MariaDB connection, for typed `sqlx::query` calls.
    #[cfg(feature = "mysql")]
    pub fn mysql(&mut self) -> Result<&mut MySqlConnection> {
        let error = self.wrong_engine(Engine::MySql);
        match &mut self.conn {
            CtxConn::MySql(c) => Ok(c),
            _ => Err(error),
        }
    }

    /// The connection of an engine implemented outside mtnt, as its own type `C`.
    pub fn custom<C: Any>(&mut self) -> Result<&mut C> {
        let actual = self.engine();
        let wanted = std::any::type_name::<C>();
        match &mut self.conn {
            CtxConn::Custom(c) => c.as_any().downcast_mut::<C>(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
        .ok_or_else(|| {
            Error::Invalid(format!(
                "this migration asked for a {wanted} connection, but it runs on {actual}"
            ))
        })
    }
}

/// Defines a function that runs raw SQL (one or more statements) on one connection.
///
/// A named function with a concrete connection type and a boxed `Send` future, because
/// sqlx's generic `execute` trips the compiler's higher-ranked `Send` check inside
/// `async_trait` methods and migration futures.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
macro_rules! raw_sql_fn {
    ($name:ident, $conn:ty) => {
        /// Runs raw SQL (one or more statements) on one connection.
        pub(crate) fn $name<'a>(
            conn: &'a mut $conn,
            sql: &'a str,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            // A plain `&str` has no arguments, so sqlx sends it unprepared: several
            // statements in one round trip.
            Box::pin(async move { sqlx::Executor::execute(conn, sql).await.map(drop) })
        }
    };
}

#[cfg(feature = "postgres")]
raw_sql_fn!(exec_postgres, PgConnection);
#[cfg(feature = "sqlite")]
raw_sql_fn!(exec_sqlite, SqliteConnection);
#[cfg(feature = "mysql")]
raw_sql_fn!(exec_mysql, MySqlConnection);
