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
/// `None` for a row whose name is no valid tenant name (inserted by hand): the registry
/// reads leave it out, and [`Backend::invalid_registry_rows`](super::Backend) names it.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn tenant_record<R>(row: &R) -> Result<Option<TenantRecord>>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
{
    let name: String = row.try_get("name")?;
    let Ok(name) = TenantName::new(name) else {
        return Ok(None);
    };
    let state: String = row.try_get("state")?;
    Ok(Some(TenantRecord {
        tenant: Tenant {
            name,
            storage: row.try_get("schema_name")?,
            server: None,
        },
        state: TenantState::parse(&state)?,
        created_at: row.try_get("created_at")?,
        applied_order: row.try_get("applied_order")?,
        failed_order: row.try_get("failed_order")?,
        last_error: row.try_get("last_error")?,
    }))
}

/// A page of registry rows after `after`, at most `limit`, of valid names only: `fetch`
/// reads the rows after a raw name (`None`: from the first), at most so many, each as its
/// raw name and its record (`None` for a name that is no valid tenant name). Rows with
/// invalid names are passed over and the page filled from the rows after them, so that a
/// page shorter than `limit` still means the last.
#[cfg_attr(
    not(any(feature = "postgres", feature = "sqlite", feature = "mysql")),
    allow(dead_code)
)]
pub(crate) async fn valid_page<T, F, Fut>(
    after: Option<&TenantName>,
    limit: usize,
    mut fetch: F,
) -> Result<Vec<T>>
where
    F: FnMut(Option<String>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<(String, Option<T>)>>>,
{
    let mut page = Vec::new();
    let mut after = after.map(|n| n.as_str().to_owned());
    loop {
        let want = limit - page.len();
        let rows = fetch(after.clone(), want).await?;
        let last = rows.len() < want;
        after = rows.last().map(|(name, _)| name.clone());
        page.extend(rows.into_iter().filter_map(|(_, record)| record));
        if last || page.len() >= limit {
            return Ok(page);
        }
    }
}

/// The registry rows of `names` (every name of the registry `table`) that are no valid
/// tenant name, as [`Error::InvalidRegistryName`].
#[cfg_attr(
    not(any(feature = "postgres", feature = "sqlite", feature = "mysql")),
    allow(dead_code)
)]
pub(crate) fn invalid_names(table: &str, names: Vec<String>) -> Vec<Error> {
    names
        .into_iter()
        .filter_map(|name| match TenantName::new(name.as_str()) {
            Ok(_) => None,
            Err(Error::InvalidTenantName { reason, .. }) => Some(Error::InvalidRegistryName {
                table: table.to_owned(),
                name,
                reason,
            }),
            Err(_) => None,
        })
        .collect()
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
