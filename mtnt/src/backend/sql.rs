//! Quoting for the identifiers and literals that mtnt splices into its own SQL.
//!
//! Tenant names are validated before they get here; quoting is the second line of defence.

/// Quotes an identifier for PostgreSQL and SQLite: `"name"`, doubling inner quotes.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
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
