use std::fmt;

use serde::Serialize;

use crate::{Error, Result, ServerName};

/// The longest tenant name: leaves room in PostgreSQL's 63-byte identifiers and
/// MySQL's 64-character database names for a prefix.
pub(crate) const MAX_LEN: usize = 50;

/// Prefixes of the engines' own names and of mtnt's, never a tenant's.
pub(crate) const RESERVED_PREFIXES: [&str; 2] = ["pg_", "mtnt"];

/// Names the databases reserve, never a tenant's.
pub(crate) const RESERVED_NAMES: [&str; 8] = [
    "public",
    "information_schema",
    "mysql",
    "sys",
    "performance_schema",
    "postgres",
    "template0",
    "template1",
];

/// A validated tenant name: 1 to 50 of `a-z 0-9 _ -`, starting with a letter.
///
/// Validation happens before any SQL is built, and every identifier is quoted as well.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    /// Checks a tenant name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let invalid = |reason| {
            Err(Error::InvalidTenantName {
                name: name.clone(),
                reason,
            })
        };
        if name.is_empty() {
            return invalid("it is empty");
        }
        if name.len() > MAX_LEN {
            return invalid("it is longer than 50 characters");
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return invalid("it must start with a lowercase letter");
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(Error::InvalidTenantName {
                reason: if bad.is_ascii_uppercase() {
                    "it has an uppercase letter"
                } else if bad.is_whitespace() {
                    "it has white space"
                } else if bad == '"' || bad == '\'' || bad == '`' || bad == ';' {
                    "it has a quote or semicolon"
                } else {
                    "it has a character other than a-z, 0-9, '_' and '-'"
                },
                name,
            });
        }
        if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return invalid("names starting with pg_ or mtnt are reserved");
        }
        if RESERVED_NAMES.contains(&name.as_str()) {
            return invalid("it is a name the database reserves");
        }
        Ok(Self(name))
    }

    /// A name mtnt reserves for its own storage (the template), which [`TenantName::new`]
    /// refuses, so that it never names a tenant.
    pub(crate) fn reserved(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name; honours width, fill and alignment (`{:<16}`), like `str`.
impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl std::str::FromStr for TenantName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// A tenant as migrations see it: its name and where its data lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// The tenant's name.
    pub name: TenantName,
    /// Where its data lives: its schema (PostgreSQL schema per tenant), its database, or
    /// the stem of its file.
    pub storage: String,
    /// The server it is on; `None`: the control database's own
    /// ([`DEFAULT_SERVER`](crate::DEFAULT_SERVER)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerName>,
}

impl Tenant {
    /// A tenant whose storage is named like the tenant.
    pub fn new(name: TenantName) -> Self {
        Self {
            storage: name.as_str().to_owned(),
            name,
            server: None,
        }
    }

    /// This tenant on `server` (the default server: `None`).
    pub fn on(mut self, server: Option<ServerName>) -> Self {
        self.server = server.filter(|s| !s.is_default());
        self
    }

    /// The name of its server ([`DEFAULT_SERVER`](crate::DEFAULT_SERVER) when on the
    /// control database's own).
    pub fn server_name(&self) -> &str {
        self.server
            .as_ref()
            .map_or(crate::DEFAULT_SERVER, ServerName::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["acme", "a", "tenant_0001", "big-co", &"a".repeat(50)] {
            assert!(TenantName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_hostile_and_malformed_names() {
        for bad in [
            "",
            "x\"; DROP SCHEMA public; --",
            "Acme",
            "1acme",
            "_acme",
            "acme corp",
            "acme'",
            "public",
            "pg_catalog",
            "mtnt_x",
            "acme\0",
            "ä",
            &"a".repeat(51),
        ] {
            let err = TenantName::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid tenant name"), "{bad}: {err}");
        }
    }

    /// Names and other values shown in tables line up with `{:<N}` like strings do.
    #[test]
    #[allow(clippy::inconsistent_digit_grouping)] // orders are written `YYYY_MM_DD_NNNN`
    fn names_honour_width_and_alignment() {
        let acme = TenantName::new("acme").unwrap();
        assert_eq!(format!("{acme:<8}|"), "acme    |");
        assert_eq!(format!("{acme:>8}|"), "    acme|");
        assert_eq!(format!("{acme:.^8}|"), "..acme..|");
        assert_eq!(format!("{acme}|"), "acme|");
        let order = crate::Order::new(2024_01_01_0001).unwrap();
        assert_eq!(format!("{order:<18}|"), "2024_01_01_0001   |");
        assert_eq!(format!("{:<8}|", crate::Scope::Tenant), "tenant  |");
        assert_eq!(format!("{:<12}|", crate::Engine::Sqlite), "SQLite      |");
        assert_eq!(format!("{:<9}|", crate::Condition::Current), "current  |");
        assert_eq!(
            format!("{:>5}|", crate::Shard::new(1, 4).unwrap()),
            "  1/4|"
        );
        assert_eq!(
            format!("{:<14}|", crate::HookKind::BeforeRun),
            "before_run    |"
        );
        assert_eq!(format!("{:<9}|", crate::RunCommand::Migrate), "migrate  |");
    }
}

/// Where a registered tenant stands in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// In use; migrated by `migrate`.
    Active,
    /// `tenant create` is under way, or died half-way (remove it with `tenant drop NAME --yes`).
    Creating,
}

impl TenantState {
    /// The name stored in the registry table.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Creating => "creating",
        }
    }

    /// The state a registry row's text names; [`Error::Corrupt`] for any other text.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(TenantState::Active),
            "creating" => Ok(TenantState::Creating),
            other => Err(Error::Corrupt(format!(
                "unknown tenant state {other:?} in the tenant registry"
            ))),
        }
    }
}

/// One row of the tenant registry: a tenant and the cached summary of its tracking table,
/// so that fleet-wide questions need one query.
#[derive(Clone, Debug, Serialize)]
pub struct TenantRecord {
    /// The tenant.
    #[serde(flatten)]
    pub tenant: Tenant,
    /// Its life-cycle state.
    pub state: TenantState,
    /// When it was registered.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The order of its newest completed migration, if any.
    pub applied_order: Option<i64>,
    /// The order of the migration that failed last, until a run gets past it.
    pub failed_order: Option<i64>,
    /// The error of that failure.
    pub last_error: Option<String>,
}
