//! Quoting for the identifiers and literals that mtnt splices into its own SQL, and the
//! registry row every engine reads alike.
//!
//! Tenant names are validated before they get here; quoting is the second line of defence.

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::{Error, Result, Tenant, TenantName, TenantRecord, TenantState};

/// Quotes an identifier for PostgreSQL and SQLite: `"name"`, doubling inner quotes.
// SQLite quotes no identifier of its own: its tables have fixed names, its tenants files.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes an identifier for MySQL: `` `name` ``, doubling inner backticks.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) fn quote_ident_mysql(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// Quotes a string literal with standard SQL rules (PostgreSQL with
/// `standard_conforming_strings`, SQLite): `'it''s'`. NUL bytes are dropped because
/// no engine stores them in text.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\0', "").replace('\'', "''"))
}

/// A row of a tenant registry `mtnt_tenants`, whose columns every engine names alike
/// (`schema_name` holds the storage's name).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn tenant_record<R>(row: &R) -> Result<TenantRecord>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    let name: String = row.try_get("name")?;
    let name =
        TenantName::new(name).map_err(|e| Error::Corrupt(format!("tenant registry: {e}")))?;
    let state: String = row.try_get("state")?;
    Ok(TenantRecord {
        tenant: Tenant {
            name,
            storage: row.try_get("schema_name")?,
        },
        state: TenantState::parse(&state)?,
        created_at: row.try_get("created_at")?,
        applied_order: row.try_get("applied_order")?,
        failed_order: row.try_get("failed_order")?,
        last_error: row.try_get("last_error")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident_mysql("a`b"), "`a``b`");
    }
}
