use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::migration::{BoxFuture, MigrationFn};
use crate::{Ctx, Error, Result};

/// Runs an up or down function, turning a panic into an error so that one bad
/// migration fails its tenant instead of the whole run.
pub(crate) async fn invoke(function: MigrationFn, ctx: &mut Ctx<'_>) -> Result<()> {
    match AssertUnwindSafe(function(ctx)).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            Err(Error::other(format!("the migration panicked: {message}")))
        }
    }
}

/// Whether an error means the connection itself is gone, so no bookkeeping can follow.
pub(crate) fn connection_lost(error: &Error) -> bool {
    matches!(
        error,
        Error::Sql(
            sqlx::Error::Io(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Protocol(_)
        )
    )
}

macro_rules! raw_sql_fn {
    ($name:ident, $conn:ty) => {
        /// Runs raw SQL (one or more statements) on one connection.
        ///
        /// A named function with a concrete connection type and a boxed `Send` future,
        /// because sqlx's generic `execute` trips the compiler's higher-ranked `Send`
        /// check inside `async_trait` methods and migration futures.
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

raw_sql_fn!(exec_postgres, sqlx::PgConnection);
raw_sql_fn!(exec_sqlite, sqlx::SqliteConnection);
raw_sql_fn!(exec_mysql, sqlx::MySqlConnection);
