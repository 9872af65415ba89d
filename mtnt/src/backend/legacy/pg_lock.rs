//! PostgreSQL tenant locks and per-migration timeouts.
//!
//! A target's lock is a session advisory lock keyed on `(hashtext('mtnt'),
//! hashtext(key))`, where the key names the schema (`tenant:<schema>`, or
//! `public:<control schema>`); advisory locks are per database, so the lock is in effect
//! keyed on (database, schema).

use std::time::Duration;

use sqlx::PgConnection;

use super::control::{connection_tag, Timeouts};
use super::sql::quote_literal;
use crate::{Migration, Result};

/// The lock key of a tenant schema (see the module docs).
pub(crate) fn tenant_key(schema: &str) -> String {
    format!("tenant:{schema}")
}

/// The statement of [`try_lock`] with its arguments inline, to be sent with the simple
/// protocol along with other statements: one row, one column `free`.
pub(crate) fn try_lock_sql(key: &str) -> String {
    format!(
        "SELECT pg_try_advisory_lock(hashtext('mtnt'), hashtext({})) AS free \
         FROM (SELECT set_config('application_name', {}, false)) AS tag",
        quote_literal(key),
        quote_literal(connection_tag())
    )
}

/// Tries once to take the advisory lock `key` on `conn`, without waiting; tags the
/// connection with this process's [`connection_tag`] in the same round trip, so that a
/// runner that takes over this one's lease can find and end its sessions.
pub(crate) async fn try_lock(conn: &mut PgConnection, key: &str) -> Result<bool> {
    // A plain `&str` has no arguments, so sqlx sends it with the simple protocol: a
    // statement naming the key is not left in the connection's cache.
    let row = sqlx::Executor::fetch_one(conn, try_lock_sql(key).as_str()).await?;
    Ok(sqlx::Row::try_get(&row, "free")?)
}

fn millis(d: Option<Duration>) -> u128 {
    d.map_or(0, |d| d.as_millis().max(u128::from(!d.is_zero())))
}

/// `; SET LOCAL lock_timeout = ..; SET LOCAL statement_timeout = ..` for a migration:
/// its own timeouts where its attribute gives them, else `defaults`. With `local` false
/// (a migration outside a transaction), plain `SET`, undone by [`reset_timeouts_sql`].
pub(crate) fn timeouts_sql(migration: &Migration, defaults: Timeouts, local: bool) -> String {
    let lock = migration.lock_timeout().or(defaults.lock);
    let statement = migration.statement_timeout().or(defaults.statement);
    let set = if local { "SET LOCAL" } else { "SET" };
    format!(
        "; {set} lock_timeout = {}; {set} statement_timeout = {}",
        millis(lock),
        millis(statement)
    )
}

/// Undoes the plain `SET`s of [`timeouts_sql`].
pub(crate) const RESET_TIMEOUTS_SQL: &str = "; RESET lock_timeout; RESET statement_timeout";

/// Whether `error` says that a `CREATE ... IF NOT EXISTS` lost a race with another
/// session creating the same object (the catalog's unique index, or the object itself).
pub(crate) fn lost_creation_race(error: &crate::Error) -> bool {
    matches!(error, crate::Error::Sql(sqlx::Error::Database(db))
        if matches!(db.code().as_deref(), Some("23505" | "42P07" | "42710")))
}
