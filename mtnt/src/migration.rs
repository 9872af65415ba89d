use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Ctx, Error, Result};

/// The future an up or down function returns once boxed by the macro.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An up or down function, as the macro registers it.
pub type MigrationFn = for<'a, 'c> fn(&'a mut Ctx<'c>) -> BoxFuture<'a, Result<()>>;

/// Where a migration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Once, in the shared control schema (or control database).
    Public,
    /// In every tenant.
    Tenant,
}

impl Scope {
    /// `"public"` or `"tenant"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Public => "public",
            Scope::Tenant => "tenant",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where in the source a migration was declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file, as `file!()` gives it.
    pub file: &'static str,
    /// The line of the `#[mtnt::migration]` function.
    pub line: u32,
    /// The module path of the function.
    pub module_path: &'static str,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}:{}", self.file, self.line))
    }
}

/// One registered migration: what `#[mtnt::migration]` produces.
///
/// Built by the macro; read it through the accessors.
pub struct Migration {
    #[doc(hidden)]
    pub __order: i64,
    #[doc(hidden)]
    pub __name: &'static str,
    #[doc(hidden)]
    pub __scope: Scope,
    #[doc(hidden)]
    pub __up: MigrationFn,
    #[doc(hidden)]
    pub __down: Option<MigrationFn>,
    #[doc(hidden)]
    pub __transaction: bool,
    #[doc(hidden)]
    pub __idempotent: bool,
    #[doc(hidden)]
    pub __enabled: bool,
    #[doc(hidden)]
    pub __lock_timeout_ms: Option<u64>,
    #[doc(hidden)]
    pub __statement_timeout_ms: Option<u64>,
    #[doc(hidden)]
    pub __checksum: &'static str,
    #[doc(hidden)]
    pub __location: Location,
}

impl Migration {
    /// The `YYYYMMDDNNNN` order that sorts migrations.
    pub fn order(&self) -> i64 {
        self.__order
    }
    /// The migration's name (the function name unless `name = "..."` was given).
    pub fn name(&self) -> &'static str {
        self.__name
    }
    /// Public or tenant.
    pub fn scope(&self) -> Scope {
        self.__scope
    }
    /// Whether a down function was given.
    pub fn is_reversible(&self) -> bool {
        self.__down.is_some()
    }
    /// Whether the migration runs inside a transaction (the default).
    pub fn is_transactional(&self) -> bool {
        self.__transaction
    }
    /// Whether the migration may be re-run after an interrupted non-transactional run.
    pub fn is_idempotent(&self) -> bool {
        self.__idempotent
    }
    /// Whether the migration runs at all (`enabled = false` keeps it registered but inert).
    pub fn is_enabled(&self) -> bool {
        self.__enabled
    }
    /// The lock timeout its attribute sets (`lock_timeout = "5s"`), overriding the run's;
    /// `Some(Duration::ZERO)` is no limit.
    pub fn lock_timeout(&self) -> Option<std::time::Duration> {
        self.__lock_timeout_ms.map(std::time::Duration::from_millis)
    }
    /// The statement timeout its attribute sets (`statement_timeout = "10m"`).
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        self.__statement_timeout_ms
            .map(std::time::Duration::from_millis)
    }
    /// Checksum of the up function's tokens, to detect edits of applied migrations.
    pub fn checksum(&self) -> &'static str {
        self.__checksum
    }
    /// Where it was declared.
    pub fn location(&self) -> Location {
        self.__location
    }
    /// The up or down function; `Irreversible` for a down the migration does not have.
    pub(crate) fn function(
        &self,
        direction: crate::Direction,
        target: crate::Target<'_>,
    ) -> Result<MigrationFn> {
        match direction {
            crate::Direction::Up => Ok(self.__up),
            crate::Direction::Down => self.__down.ok_or_else(|| Error::Irreversible {
                target: target.to_string(),
                migration: self.to_string(),
            }),
        }
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("order", &self.__order)
            .field("name", &self.__name)
            .field("scope", &self.__scope)
            .field("reversible", &self.is_reversible())
            .field("transaction", &self.__transaction)
            .field("enabled", &self.__enabled)
            .field("location", &self.__location)
            .finish()
    }
}

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", format_order(self.__order), self.__name)
    }
}

/// Whether `module_path` is the module `prefix` or one of its submodules.
pub(crate) fn in_module(module_path: &str, prefix: &str) -> bool {
    module_path
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// Formats an order as `YYYY_MM_DD_NNNN`, the way users write it.
pub(crate) use mtnt_syntax::format_order;

/// The validated, ordered set of migrations a [`Migrator`](crate::Migrator) runs.
#[derive(Clone, Debug)]
pub struct MigrationSet {
    all: Vec<&'static Migration>,
}

impl MigrationSet {
    /// Every migration registered with `#[mtnt::migration]` in this binary.
    ///
    /// Fails when none is registered, or two share an order or a name.
    pub fn registered() -> Result<Self> {
        Self::new(crate::__private::registered())
    }

    /// The registered migrations in module `prefix` or its submodules
    /// (for binaries that hold several independent migration sets, and for tests).
    pub fn registered_in(prefix: &str) -> Result<Self> {
        Self::new(
            crate::__private::registered()
                .into_iter()
                .filter(|m| in_module(m.location().module_path, prefix)),
        )
    }

    /// Validates and orders the given migrations.
    pub fn new(migrations: impl IntoIterator<Item = &'static Migration>) -> Result<Self> {
        let mut all: Vec<&'static Migration> = migrations.into_iter().collect();
        if all.is_empty() {
            return Err(Error::EmptyRegistry);
        }
        all.sort_by_key(|m| (m.order(), m.location().file, m.location().line));
        for pair in all.windows(2) {
            if pair[0].order() == pair[1].order() {
                return Err(Error::DuplicateOrder {
                    order: format_order(pair[0].order()),
                    first: format!("{} at {}", pair[0].name(), pair[0].location()),
                    second: format!("{} at {}", pair[1].name(), pair[1].location()),
                });
            }
        }
        let mut by_name: Vec<&'static Migration> = all.clone();
        by_name.sort_by_key(|m| (m.scope(), m.name()));
        for pair in by_name.windows(2) {
            if pair[0].scope() == pair[1].scope() && pair[0].name() == pair[1].name() {
                return Err(Error::DuplicateName {
                    name: pair[0].name().to_owned(),
                    scope: pair[0].scope(),
                    first: pair[0].location().to_string(),
                    second: pair[1].location().to_string(),
                });
            }
        }
        Ok(Self { all })
    }

    /// All migrations, by order.
    pub fn iter(&self) -> impl Iterator<Item = &'static Migration> + '_ {
        self.all.iter().copied()
    }

    /// The migrations of one scope, by order.
    pub fn scope(&self, scope: Scope) -> impl Iterator<Item = &'static Migration> + '_ {
        self.iter().filter(move |m| m.scope() == scope)
    }

    /// The migration with this order, if any.
    pub fn get(&self, order: i64) -> Option<&'static Migration> {
        self.all
            .binary_search_by_key(&order, |m| m.order())
            .ok()
            .map(|i| self.all[i])
    }

    /// The order of the newest enabled migration of a scope, up to `limit`.
    pub fn latest(&self, scope: Scope, limit: Option<i64>) -> Option<i64> {
        self.scope(scope)
            .filter(|m| m.is_enabled() && limit.is_none_or(|l| m.order() <= l))
            .map(|m| m.order())
            .last()
    }
}

/// The state of one migration in a tracking table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationStatus {
    /// Known but not applied (or rolled back, or reset by `repair`).
    Pending,
    /// A non-transactional migration began and did not finish.
    Started,
    /// The last attempt failed; the transaction was rolled back.
    Failed,
    /// Applied.
    Completed,
}

impl MigrationStatus {
    /// The lowercase name stored in the tracking table.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::Pending => "pending",
            MigrationStatus::Started => "started",
            MigrationStatus::Failed => "failed",
            MigrationStatus::Completed => "completed",
        }
    }

    /// The status a tracking row's text names; [`Error::Corrupt`] for any other text.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => MigrationStatus::Pending,
            "started" => MigrationStatus::Started,
            "failed" => MigrationStatus::Failed,
            "completed" => MigrationStatus::Completed,
            other => {
                return Err(Error::Corrupt(format!(
                    "unknown migration status {other:?} in a tracking table"
                )))
            }
        })
    }
}

/// One row of a tracking table.
#[derive(Clone, Debug, Serialize)]
pub struct AppliedMigration {
    /// The migration's order.
    pub order: i64,
    /// Its name when it was recorded.
    pub name: String,
    /// Its checksum when it was recorded.
    pub checksum: String,
    /// Where it stands.
    pub status: MigrationStatus,
    /// When the last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the last attempt finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// How long the last attempt took, in milliseconds.
    pub duration_ms: Option<i64>,
    /// The error of the last failed attempt.
    pub error: Option<String>,
}
