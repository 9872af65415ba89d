//! Migrations for multi-tenant databases, written as async Rust functions.
//!
//! ```no_run
//! #[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
//! async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
//!     ctx.execute("CREATE TABLE plans (id bigserial PRIMARY KEY, name text NOT NULL)").await
//! }
//!
//! #[mtnt::migration(scope = "tenant", order = 2024_01_01_0002, down = drop_accounts)]
//! async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
//!     ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text UNIQUE)").await
//! }
//!
//! async fn drop_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
//!     ctx.execute("DROP TABLE accounts").await
//! }
//!
//! fn main() {
//!     mtnt::run!()
//! }
//! ```
//!
//! See the README for the CLI, the engines and the library API ([`Migrator`]).
#![warn(missing_docs, unreachable_pub)]
// The examples show `fn main` because that is where `mtnt::run!()` belongs.
#![allow(clippy::needless_doctest_main)]

// Lets the macro's `::mtnt::...` paths resolve inside this crate's own tests.
extern crate self as mtnt;

// Layers point one way: the core types (migration, tenant, ctx, error) <- backend (the
// engine primitives and each engine's dialect) <- migrate (the protocol, written once)
// <- cli.
mod backend;
#[cfg(feature = "cli")]
mod cli;
mod ctx;
mod error;
mod macro_support;
mod migrate;
mod migration;
mod server;
mod tenant;
mod url_redact;

/// The sqlx that mtnt links, for typed queries in migrations: `use mtnt::sqlx;` (a
/// separately added sqlx of another version would not fit the [`Ctx`] connections).
pub use sqlx;

#[cfg(feature = "mysql")]
pub use backend::MySqlBackend;
#[cfg(feature = "sqlite")]
pub use backend::SqliteBackend;
pub use backend::{
    classify_common, connect, strip_qualifier, Backend, Capabilities, ConnectOptions, Connection,
    Direction, Engine, ErrorClass, JournalEntry, MigrationTimeouts, ObjectKind, Record,
    RegistryRow, RegistryState, SchemaObject, Target, TargetState, Tenancy, Timing,
    TEMPLATE_STORAGE,
};
pub use backend::{Heartbeat, LeaseStore, RunIdentity, RunLease};
#[cfg(feature = "postgres")]
pub use backend::{PgDatabaseBackend, PostgresBackend, TenantConnection, TenantPools};
#[cfg(feature = "cli")]
pub use cli::{cli_fix, Report};
pub use ctx::{Ctx, CtxConn, CustomConnection};
pub use error::{Error, Result};
pub use migrate::{
    default_concurrency, fingerprint, Condition, DrainReport, FailedMigration, FailedTenant,
    InvalidRegistryRow, MigrateOptions, MigrateReport, Migrator, MigratorBuilder, PlanGroup,
    PlanReport, PlannedMigration, Progress, PublicStatus, RegistrySource, RollbackReport,
    RollbackTarget, StatusReport, TemplateChange, TenantSource, TenantStatus, Timeouts,
    Transactions,
};
pub use migrate::{parse_duration, Canary, Rollout, SafetySettings, Shard, TenantOrder, WaveSize};
pub use migrate::{
    AfterTenantFn, Hook, HookFailure, HookKind, Hooks, RunCommand, RunHookFn, RunInfo,
    TenantOutcome,
};
pub use migrate::{ConditionCounts, ServerPlan, ServerStatus, UnreachableServer};
pub use migrate::{Difference, DriftReport, DriftWay, DriftedTenant, OrderDrift, UnreadableTenant};
pub use migrate::{DriftCheck, RunRecord, DEFAULT_RUN_HISTORY};
pub use migrate::{RunReport, RunTenant};
pub use migration::{
    AppliedMigration, BoxFuture, Location, Migration, MigrationSet, MigrationStatus, Scope,
};
pub use mtnt_syntax::{DurationError, Order, OrderError};
pub use server::{
    url_without_password, FewestTenants, Placement, Server, ServerName, DEFAULT_SERVER,
};
pub use tenant::{Tenant, TenantName, TenantRecord, TenantState};
pub use url_redact::{redact_url, Redactor};

/// The most tenants one run migrates at once ([`MigratorBuilder::concurrency`],
/// `--concurrency`): each holds a connection of its own.
pub const MAX_CONCURRENCY: usize = 1024;

// Documented once each, in mtnt-macros/src/migration.md and hook.md, which rustdoc
// shows here as they are.
pub use mtnt_macros::{hook, migration};

/// Runs the examples of the attribute's documentation, which live in the macro crate.
#[cfg(doctest)]
#[doc = include_str!("../../mtnt-macros/src/migration.md")]
struct MigrationAttributeDocs;

/// Compiles the README's examples (the quickstart, hooks and the library), so that
/// they stay true to the API as a crate outside mtnt sees it.
#[cfg(all(doctest, feature = "postgres", feature = "cli"))]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

/// Runs the examples of the hook attribute's documentation.
#[cfg(doctest)]
#[doc = include_str!("../../mtnt-macros/src/hook.md")]
struct HookAttributeDocs;

/// Runs the mtnt command line (migrate, rollback, status, tenant, list, repair) and
/// exits the process with its exit code (feature `cli`). `--version` and the help name
/// the calling crate (its `CARGO_PKG_NAME`, `CARGO_PKG_VERSION` and
/// `CARGO_PKG_DESCRIPTION`), not mtnt.
///
/// Name the crates that hold migrations, so that the linker keeps them:
/// `mtnt::run!(my_migrations)`.
///
/// Errors are printed with a `fix:` line ([`cli_fix`]). An app that drives the library
/// from its own `fn main() -> mtnt::Result<()>` gets the message and its causes (the
/// `Debug` form of [`Error`]); with `fn main() -> Result<(), mtnt::Report>` the fix line
/// too ([`Report`]).
///
/// ```no_run
/// fn main() {
///     mtnt::run!()
/// }
/// ```
#[cfg(feature = "cli")]
#[macro_export]
macro_rules! run {
    ($($krate:ident),* $(,)?) => {{
        $(
            #[allow(unused_imports)]
            use $krate as _;
        )*
        ::std::process::exit($crate::__private::run_cli_as(
            ::std::env!("CARGO_PKG_NAME"),
            ::std::env!("CARGO_PKG_VERSION"),
            ::std::env!("CARGO_PKG_DESCRIPTION"),
        ))
    }};
}

#[doc(hidden)]
pub mod __private {
    pub use crate::ctx::Ctx;
    pub use crate::macro_support::{call_down, DownFn};
    pub use crate::migrate::{Hook, HookFn, RunInfo, TenantOutcome};
    pub use crate::migration::{BoxFuture, Location, Migration, MigrationFn, Scope};
    pub use crate::Result;

    #[cfg(not(feature = "inventory"))]
    pub use linkme;

    #[cfg(feature = "inventory")]
    pub use inventory;

    /// Every migration the macro registered, when collected with linkme.
    #[cfg(not(feature = "inventory"))]
    #[linkme::distributed_slice]
    pub static MIGRATIONS: [Migration];

    /// Every hook the macro registered, when collected with linkme.
    #[cfg(not(feature = "inventory"))]
    #[linkme::distributed_slice]
    pub static HOOKS: [Hook];

    #[cfg(feature = "inventory")]
    inventory::collect!(Migration);

    #[cfg(feature = "inventory")]
    inventory::collect!(Hook);

    /// Registers one migration; the macro expands to a call of this.
    #[cfg(not(feature = "inventory"))]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __mtnt_register {
        ($ident:ident = $value:expr) => {
            #[$crate::__private::linkme::distributed_slice($crate::__private::MIGRATIONS)]
            #[linkme(crate = $crate::__private::linkme)]
            #[doc(hidden)]
            #[allow(non_upper_case_globals)]
            static $ident: $crate::__private::Migration = $value;
        };
    }

    #[cfg(feature = "inventory")]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __mtnt_register {
        ($ident:ident = $value:expr) => {
            $crate::__private::inventory::submit! { $value }
        };
    }

    /// Registers one hook; the hook attribute expands to a call of this.
    #[cfg(not(feature = "inventory"))]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __mtnt_register_hook {
        ($ident:ident = $value:expr) => {
            #[$crate::__private::linkme::distributed_slice($crate::__private::HOOKS)]
            #[linkme(crate = $crate::__private::linkme)]
            #[doc(hidden)]
            #[allow(non_upper_case_globals)]
            static $ident: $crate::__private::Hook = $value;
        };
    }

    #[cfg(feature = "inventory")]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __mtnt_register_hook {
        ($ident:ident = $value:expr) => {
            $crate::__private::inventory::submit! { $value }
        };
    }

    pub use crate::__mtnt_register as register;
    pub use crate::__mtnt_register_hook as register_hook;

    /// Every registered migration, in link order.
    pub fn registered() -> Vec<&'static Migration> {
        #[cfg(not(feature = "inventory"))]
        {
            MIGRATIONS.iter().collect()
        }
        #[cfg(feature = "inventory")]
        {
            inventory::iter::<Migration>.into_iter().collect()
        }
    }

    /// Every registered hook, in link order.
    pub fn registered_hooks() -> Vec<&'static Hook> {
        #[cfg(not(feature = "inventory"))]
        {
            HOOKS.iter().collect()
        }
        #[cfg(feature = "inventory")]
        {
            inventory::iter::<Hook>.into_iter().collect()
        }
    }

    #[cfg(feature = "cli")]
    pub use crate::cli::scaffold;
    #[cfg(feature = "cli")]
    pub use crate::cli::{run_cli, run_cli_as};
}
