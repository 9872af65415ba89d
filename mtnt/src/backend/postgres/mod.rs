//! PostgreSQL, in two tenancy models: a schema per tenant ([`PostgresBackend`], the
//! default) and a database per tenant ([`PgDatabaseBackend`]). This file holds their
//! shared dialect: literals, lock keys and statements, timeouts, error classes, and the
//! URL; `tracking.rs` the bookkeeping SQL, `target.rs` the one [`Connection`] of both.
//!
//! A target's lock is a session advisory lock keyed on `(hashtext('mtnt'),
//! hashtext(key))`, where the key names the schema (`tenant:<schema>`, or
//! `public:<control schema>`); advisory locks are per database, so the lock is in effect
//! keyed on (database, schema). Older runners and tests hold the same keys.
//!
//! [`Connection`]: crate::Connection

mod app;
mod catalog;
mod database;
mod lease;
mod moving;
mod pooler;
mod schema;
mod servers;
mod target;
mod tracking;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use app::{TenantConnection, TenantPools};
pub use database::PgDatabaseBackend;
pub use schema::PostgresBackend;

use super::sql::quote_literal;
use super::{connection_tag, Backend, ConnectOptions, ErrorClass, MigrationTimeouts, Tenancy};
use crate::{redact_url, Error, Result};

/// A string literal that reads the same whatever `standard_conforming_strings` says:
/// `E'...'` with doubled backslashes where the text has one.
fn literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E{}", quote_literal(&value.replace('\\', "\\\\")))
    } else {
        quote_literal(value)
    }
}

/// A condition on the registry's `name` that holds for every name that is no valid tenant
/// name, and for a few valid ones ([`crate::TenantName::new`] decides): the registry's
/// invalid rows are found without reading every name.
fn maybe_invalid_name() -> String {
    use crate::tenant::{MAX_LEN, RESERVED_NAMES, RESERVED_PREFIXES};
    let prefixes: Vec<String> = RESERVED_PREFIXES
        .iter()
        .map(|p| format!("left(name, {}) = {}", p.len(), literal(p)))
        .collect();
    let names: Vec<String> = RESERVED_NAMES.iter().map(|n| literal(n)).collect();
    format!(
        "name !~ '^[a-z][a-z0-9_-]{{0,{}}}$' OR octet_length(name) > {MAX_LEN} OR {} OR name IN ({})",
        MAX_LEN - 1,
        prefixes.join(" OR "),
        names.join(", ")
    )
}

/// The lock key of a tenant's schema (or database).
fn tenant_key(storage: &str) -> String {
    format!("tenant:{storage}")
}

/// The lock key of the public target of the control schema `control`.
fn public_key(control: &str) -> String {
    format!("public:{control}")
}

/// Tags the connection with this process's [`connection_tag`], so that a runner that
/// takes over this one's lease can find and end its sessions.
fn tag_sql() -> String {
    format!(
        "SELECT set_config('application_name', {}, false)",
        literal(connection_tag())
    )
}

/// Tries the lock `key` once, without waiting, and tags the connection ([`tag_sql`]) in
/// the same statement: one row, one column `free`.
fn try_lock_sql(key: &str) -> String {
    format!(
        "SELECT pg_try_advisory_lock(hashtext('mtnt'), hashtext({})) AS free FROM ({}) AS tag",
        literal(key),
        tag_sql()
    )
}

/// Releases every advisory lock of the connection; the one column says whether it is
/// outside a transaction block: there, `now()` is the start of this statement, sent
/// alone with the simple protocol.
const UNLOCK_ALL: &str =
    "SELECT now() = statement_timestamp() FROM (SELECT pg_advisory_unlock_all()) AS u";

/// Set in a transaction that writes the registry's fingerprint along with the tracking
/// rows: the tracking table's trigger (see `schema.rs`) need not clear it first.
const OWN_BOOKKEEPING: &str = "SET LOCAL mtnt.bookkeeping = on";

/// A timeout in PostgreSQL's milliseconds: 0 is no limit, and a nonzero one is at least 1.
fn millis(d: Option<Duration>) -> u128 {
    d.map_or(0, |d| d.as_millis().max(u128::from(!d.is_zero())))
}

/// `SET [LOCAL] lock_timeout = ..; SET [LOCAL] statement_timeout = ..`; plain `SET`
/// outside a transaction, undone by [`RESET_SESSION`].
fn timeouts_sql(timeouts: MigrationTimeouts, local: bool) -> String {
    let set = if local { "SET LOCAL" } else { "SET" };
    format!(
        "{set} lock_timeout = {}; {set} statement_timeout = {}",
        millis(timeouts.lock),
        millis(timeouts.statement)
    )
}

/// Undoes the session settings of a migration outside a transaction.
const RESET_SESSION: &str = "RESET search_path; RESET lock_timeout; RESET statement_timeout";

/// SQLSTATEs worth another try.
const TRANSIENT: [&str; 6] = [
    "55P03", // lock_not_available: lock_timeout, NOWAIT
    "40001", // serialization_failure
    "40P01", // deadlock_detected
    "57P01", // admin_shutdown: pg_terminate_backend
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now
];

/// What kind of failure a PostgreSQL error is.
fn classify(error: &Error) -> ErrorClass {
    let sql = match super::classify_common(error) {
        Ok(class) => return class,
        Err(sql) => sql,
    };
    match sql {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("23505") => ErrorClass::UniqueViolation,
            Some("42P06" | "42P04") => ErrorClass::StorageExists,
            Some("3D000" | "3F000") => ErrorClass::StorageMissing,
            Some("53300") => ErrorClass::TooManyConnections,
            Some(code) if code.starts_with("08") || TRANSIENT.contains(&code) => {
                ErrorClass::Transient
            }
            _ => ErrorClass::Other,
        },
        _ => ErrorClass::Other,
    }
}

/// Whether `error` is a database error with SQLSTATE `code`.
fn is_code(error: &sqlx::Error, code: &str) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(code))
}

/// The backend of a `postgres://` URL: schema per tenant, or database per tenant with
/// [`Tenancy::Database`].
pub(super) async fn connect(url: &str, options: &ConnectOptions) -> Result<Box<dyn Backend>> {
    let bad_url = |reason: String| Error::BadUrl {
        url: redact_url(url),
        reason,
    };
    match options.tenancy {
        None | Some(Tenancy::Schema | Tenancy::Database) => {}
        Some(other) => {
            return Err(bad_url(format!(
                "PostgreSQL has no tenancy {other:?}; use schema or database"
            )))
        }
    }
    let connect_error = |source| super::tls::connect_error(url, source);
    let connect_options: PgConnectOptions = url.parse().map_err(connect_error)?;
    // sqlx's own reading of the password file keeps its escapes (`\:`, `\\`).
    let (connect_options, _, _) = servers::libpq_password(url, connect_options);
    // Direct connections first: a pool retries a refused connection until its acquire
    // timeout, while a user with a wrong URL wants to hear so at once. They also refuse a
    // pooler in transaction mode (see pooler.rs).
    let connect_options = pooler::first_connections(url, connect_options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(connect_options.clone());
    let control =
        PostgresBackend::new(pool.clone()).with_control_schema(&options.control_schema)?;
    // The model the registry records wins over the URL's default, and contradicts a
    // model asked for: read before the backend is chosen, changing nothing.
    let recorded = match control.registry_state_of().await? {
        super::RegistryState::Recorded(recorded) => Some(recorded),
        // Set up before the model was recorded: where its tenants are tells (the next
        // writing command records the model).
        super::RegistryState::Unrecorded => control.legacy_tenancy().await?,
        _ => None,
    };
    let tenancy = match (options.tenancy, recorded) {
        (Some(given), Some(recorded)) if given != recorded => {
            return Err(Error::TenancyMismatch { recorded, given })
        }
        (given, recorded) => given.or(recorded).unwrap_or(Tenancy::Schema),
    };
    if tenancy == Tenancy::Schema {
        return Ok(Box::new(control));
    }
    if connect_options.get_database().is_none_or(str::is_empty) {
        return Err(bad_url(
            "with --tenancy database, name the control database that holds the tenant registry, as in postgres://postgres@127.0.0.1/control".to_owned(),
        ));
    }
    Ok(Box::new(
        PgDatabaseBackend::new(pool)?.with_control_schema(&options.control_schema)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_survive_either_string_setting() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\b'"), r"E'a\\b'''");
    }

    #[test]
    fn lock_keys_and_timeouts() {
        assert_eq!(tenant_key("acme"), "tenant:acme");
        assert_eq!(public_key("public"), "public:public");
        let t = MigrationTimeouts {
            lock: Some(Duration::from_micros(10)),
            statement: None,
        };
        assert_eq!(
            timeouts_sql(t, true),
            "SET LOCAL lock_timeout = 1; SET LOCAL statement_timeout = 0"
        );
    }

    #[test]
    fn classes() {
        let lost = Error::Sql(sqlx::Error::PoolTimedOut);
        assert_eq!(classify(&lost), ErrorClass::ConnectionLost);
        let wrapped = Error::Migration {
            target: "tenant a".into(),
            migration: "m".into(),
            reverting: false,
            source: Box::new(lost),
        };
        assert_eq!(classify(&wrapped), ErrorClass::ConnectionLost);
        assert_eq!(classify(&Error::Invalid("x".into())), ErrorClass::Other);
    }
}
