use std::fmt;

use serde::Serialize;

/// The database engine behind a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
    /// MySQL or MariaDB.
    MySql,
    /// An engine implemented outside mtnt, by its name.
    Custom(&'static str),
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Engine::Postgres => "PostgreSQL",
            Engine::Sqlite => "SQLite",
            Engine::MySql => "MySQL",
            Engine::Custom(name) => name,
        })
    }
}

/// How tenants are isolated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tenancy {
    /// One schema per tenant in one database (PostgreSQL).
    Schema,
    /// One database per tenant on one server (PostgreSQL, MySQL).
    Database,
    /// One file per tenant in a directory (SQLite).
    File,
}

impl Tenancy {
    /// Its name, as recorded in the registry and given to `--tenancy`: `schema`,
    /// `database` or `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tenancy::Schema => "schema",
            Tenancy::Database => "database",
            Tenancy::File => "file",
        }
    }

    /// The model named `name` ([`Tenancy::as_str`]).
    pub fn parse(name: &str) -> Option<Tenancy> {
        [Tenancy::Schema, Tenancy::Database, Tenancy::File]
            .into_iter()
            .find(|t| t.as_str() == name)
    }
}

impl fmt::Display for Tenancy {
    /// `database (a database per tenant)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (a {} per tenant)", self.as_str(), self.as_str())
    }
}
