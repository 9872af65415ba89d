use std::path::PathBuf;

use crate::{Engine, HookKind, Scope, ServerName, Tenancy, Tenant, TenantName};

/// The result type of mtnt and of migration functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mtnt.
#[non_exhaustive]
///
/// Messages say what happened, with its context; the mtnt command line prints a `fix:`
/// line after them (see [`cli_fix`](crate::cli_fix)). The `Debug` form is the message with
/// its causes, so that `fn main() -> mtnt::Result<()>` prints something readable; the
/// fixes name the command line's commands and flags, so only
/// [`Report`](crate::Report) (feature `cli`: `fn main() -> Result<(), mtnt::Report>`)
/// adds them.
#[derive(thiserror::Error)]
pub enum Error {
    /// A database call failed (inside a migration, or in mtnt's own bookkeeping). The
    /// message is the driver's, with PostgreSQL's DETAIL and HINT where the server sent
    /// them (`Key (email)=(a@b.c) is duplicated.`), as SQLite and MySQL put theirs in the
    /// message itself.
    #[error("{}", sql_message(.0))]
    Sql(#[source] sqlx::Error),

    /// The database named by the URL could not be reached.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, with its password replaced by `***`.
        url: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },

    /// The server was reached, but a TLS connection to it could not be set up: its
    /// certificate is not trusted or names another host, or it offers no TLS.
    #[error("cannot connect to {url} over TLS: {problem}")]
    Tls {
        /// The URL, with its password replaced by `***`.
        url: String,
        /// What is wrong, with the TLS library's own words.
        problem: String,
        /// What to change.
        fix: String,
        /// The failure.
        #[source]
        source: sqlx::Error,
    },

    /// The database URL is malformed or names an engine mtnt does not support.
    #[error("unsupported database URL {url}: {reason}")]
    BadUrl {
        /// The URL, with its password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A migration function returned an error of its own.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),

    /// Applying or reverting one migration failed; wraps the cause with the migration and tenant.
    #[error("while {verb} {migration} {preposition} {target}: {source}", verb = if *.reverting { "reverting" } else { "applying" }, preposition = if *.reverting { "in" } else { "to" })]
    Migration {
        /// `"tenant acme"` or `"the public schema"`.
        target: String,
        /// `order name` of the migration.
        migration: String,
        /// Whether it was the down function.
        reverting: bool,
        /// What failed.
        #[source]
        source: Box<Error>,
    },

    /// A hook failed where its failure stops what it ran for: a `before_run` hook (the
    /// run stops before any change), a `before_tenant` hook (the tenant fails before its
    /// first migration), or any tenant hook of `tenant create` (the tenant is removed
    /// again). Wraps the hook's own error with its kind, name and tenant.
    #[error("the {kind} hook {hook} failed{}: {source}{}", .tenant.as_ref().map(|t| format!(" for tenant {t}")).unwrap_or_default(), hook_consequence(*.kind))]
    Hook {
        /// Its kind.
        kind: HookKind,
        /// Its name.
        hook: String,
        /// The tenant it ran for (tenant hooks).
        tenant: Option<TenantName>,
        /// What the hook returned (or its panic).
        #[source]
        source: Box<Error>,
    },

    /// Two hooks of one kind share one name.
    #[error("two {kind} hooks are named {name:?}: at {first} and at {second}; rename one of them, or set name = \"...\" in its attribute")]
    DuplicateHook {
        /// Their kind.
        kind: HookKind,
        /// The shared name.
        name: String,
        /// Location of the first.
        first: String,
        /// Location of the second.
        second: String,
    },

    /// No migration is registered in this binary.
    #[error("no migrations are registered in this binary: annotate async functions with #[mtnt::migration(...)]; if they live in another crate, name that crate in mtnt::run!(that_crate) (or reference any item of it), or the linker drops them")]
    EmptyRegistry,

    /// Two migrations share one order.
    #[error(
        "two migrations have order {order}: {first} and {second}; give one of them another order"
    )]
    DuplicateOrder {
        /// The order, `YYYY_MM_DD_NNNN`.
        order: String,
        /// The first, with its source location.
        first: String,
        /// The second, with its source location.
        second: String,
    },

    /// Two migrations of one scope share one name.
    #[error("two {scope} migrations are named {name:?}: at {first} and at {second}; rename one of them, or set name = \"...\" in its attribute")]
    DuplicateName {
        /// The shared name.
        name: String,
        /// Their scope.
        scope: Scope,
        /// Location of the first.
        first: String,
        /// Location of the second.
        second: String,
    },

    /// A tenant name is not acceptable; nothing was sent to the database.
    #[error("invalid tenant name {name:?}: {reason} (a tenant name has 1 to 50 characters of lowercase letters, digits, '_' or '-', starting with a letter)")]
    InvalidTenantName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A server name is not acceptable; nothing was sent to the database.
    #[error("invalid server name {name:?}: {reason} (a server name has 1 to 40 characters of lowercase letters, digits, '_' or '-', starting with a letter)")]
    InvalidServerName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A server named on the command line or in the API is not in the control registry.
    #[error("unknown server \"{server}\": no server of that name is registered (the control database's own is \"{default}\")")]
    UnknownServer {
        /// The name as given.
        server: ServerName,
        /// The name of the default server.
        default: &'static str,
    },

    /// `server add` named a server that is registered already.
    #[error("server {0} is registered already; remove it first to change its URL")]
    ServerExists(ServerName),

    /// `server add` could not connect to the server, so it was not registered.
    #[error("server {server} was not added: {source}")]
    ServerNotAdded {
        /// The server.
        server: ServerName,
        /// Why it could not be reached, password scrubbed.
        #[source]
        source: Box<Error>,
    },

    /// `server add` named the server (or, with a database per tenant, the cluster) of a
    /// server registered already: its tenants would share one place under two names.
    #[error("server {server} is {what} of server {other} (PostgreSQL system identifier {system_identifier}); a server is registered once")]
    SameServer {
        /// The server being added.
        server: ServerName,
        /// The registered server it is.
        other: ServerName,
        /// `the database` (schema per tenant: another database of the same cluster is
        /// another server) or `the PostgreSQL cluster` (database per tenant).
        what: &'static str,
        /// The cluster's `system_identifier`.
        system_identifier: String,
    },

    /// A server that still holds tenants cannot be removed.
    #[error("server {server} holds {tenants} tenant(s); move or drop them before removing it")]
    ServerInUse {
        /// The server.
        server: ServerName,
        /// How many tenants the registry places on it.
        tenants: u64,
    },

    /// A tenant was to be created on (or moved to) a cordoned server, which takes no new
    /// tenants.
    #[error("server {server} is cordoned: it takes no new tenants")]
    ServerCordoned {
        /// The server.
        server: ServerName,
    },

    /// A tenant was to be placed, but every server of the fleet is cordoned (or, draining
    /// one, every other).
    #[error("no server takes new tenants: every server{} is cordoned", match but { Some(s) => format!(" but {s}, which is being drained,"), None => String::new() })]
    NoServerTakesTenants {
        /// The server being drained, left out.
        but: Option<ServerName>,
    },

    /// The engine keeps every tenant on the one server of its URL: no servers can be
    /// registered, and a tenant placed nowhere else.
    #[error("the {engine} engine keeps every tenant on the server of its URL; servers of a fleet need PostgreSQL (schema or database per tenant)")]
    OneServer {
        /// The engine.
        engine: Engine,
    },

    /// A server of the fleet could not be reached: its tenants were not worked on.
    #[error("server {server} unreachable: {source}")]
    ServerUnreachable {
        /// The server.
        server: ServerName,
        /// The first failure to connect, password scrubbed.
        #[source]
        source: Box<Error>,
    },

    /// A row of the tenant registry has a name that is no valid tenant name (it was
    /// inserted by hand); no SQL is built with it, and only that row fails: the rest of
    /// the fleet runs.
    #[error("the tenant registry {table} has a row named {name:?}, which is not a valid tenant name ({reason}); nothing was done for that row")]
    InvalidRegistryName {
        /// The registry table (or file), qualified.
        table: String,
        /// The name in the row, as stored.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A tenant named on the command line or in the API is not registered.
    #[error("unknown tenant {0:?}: no tenant of that name is registered")]
    UnknownTenant(String),

    /// `tenant create` named a tenant that exists already.
    #[error("tenant {0:?} exists already (if its state is `creating`, an earlier create died half-way, and it has to be dropped before it can be created again)")]
    TenantExists(String),

    /// `--to` named an order that no registered migration has.
    #[error("no registered migration has order {0}")]
    UnknownOrder(String),

    /// A rollback would have to pass an irreversible migration.
    #[error("cannot roll back {target}: migration {migration} has no down function, and the rollback would have to revert it; nothing was changed")]
    Irreversible {
        /// `"tenant acme"` or `"the public schema"`.
        target: String,
        /// `order name` of the irreversible migration.
        migration: String,
    },

    /// An applied migration's code changed since it was applied.
    #[error("migration {migration} was changed after it was applied to {target} (recorded checksum {recorded}, code checksum {current}); nothing was run")]
    ChecksumMismatch {
        /// `"tenant acme"` or `"the public schema"`.
        target: String,
        /// `order name`.
        migration: String,
        /// Checksum in the tracking table.
        recorded: String,
        /// Checksum of the code.
        current: String,
    },

    /// The database has an applied migration this binary does not know (it is ahead of the code).
    #[error("{target} has migration {order} {name} applied, which this binary does not know; nothing was run")]
    UnknownApplied {
        /// `"tenant acme"` or `"the public schema"`.
        target: String,
        /// Its order.
        order: String,
        /// Its recorded name.
        name: String,
    },

    /// A migration began and never finished: it ran outside a transaction, or failed on MySQL.
    #[error("migration {migration} in {target} started and never completed (it ran outside a transaction, or on MySQL, which commits DDL at once, it failed; or the run died while it ran), and it is not declared idempotent; nothing was run")]
    Interrupted {
        /// `"tenant acme"` or `"the public schema"`.
        target: String,
        /// `order name`.
        migration: String,
        /// How the command line names the target: `--tenant acme ` or `--public `; only
        /// the CLI's fix line uses it.
        tenant_flag: String,
        /// The order as digits.
        order: i64,
    },

    /// Another run held the target's lock for longer than the unlock deadline.
    #[error("{target} is locked by another mtnt run, which kept it longer than the unlock deadline ({waited}); it was not migrated")]
    Busy {
        /// `"tenant acme"` or `"the public schema"`.
        target: String,
        /// How long this run waited.
        waited: String,
    },

    /// A transient failure (lock timeout, serialization failure, deadlock, dropped
    /// connection) that persisted through every retry.
    #[error("{source} (gave up after {attempts} attempts)")]
    GaveUp {
        /// How many times it was tried.
        attempts: u32,
        /// The last failure.
        source: Box<Error>,
    },

    /// A migration asked the [`Ctx`](crate::Ctx) for another engine's connection.
    #[error("this migration asked for a {wanted} connection, but it runs on {actual}")]
    WrongEngine {
        /// What it asked for.
        wanted: Engine,
        /// What it runs on.
        actual: Engine,
    },

    /// A tracking or registry table holds something mtnt did not write.
    #[error("corrupt mtnt bookkeeping: {0}")]
    Corrupt(String),

    /// A file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What mtnt was doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// An option or argument is not acceptable.
    #[error("{0}")]
    Invalid(String),

    /// The run lease's settings would let another runner take over a live run: a runner
    /// may go `silent` without refreshing its lease (`attempts` heartbeats of
    /// `heartbeat_interval` failing in a row) before it gives up, which is not less than
    /// the unlock deadline after which others take its lease over
    /// ([`SafetySettings::validate`](crate::SafetySettings::validate)).
    #[error("a runner may go {silent} without refreshing its lease (heartbeat interval {heartbeat_interval} x {attempts} attempts), which is not less than the unlock deadline {unlock_deadline}: another runner would take over a live run")]
    LeaseOutlivesDeadline {
        /// How long a runner may go without refreshing its lease.
        silent: String,
        /// The heartbeat interval.
        heartbeat_interval: String,
        /// The heartbeats that may fail before the runner gives up (retries + 1).
        attempts: u32,
        /// The unlock deadline.
        unlock_deadline: String,
    },

    /// The URL leads to a connection pooler in transaction or statement mode, through
    /// which session advisory locks, session settings and prepared statements would leak
    /// between connections; nothing was changed.
    #[error("{url} leads to a connection pooler in transaction or statement mode (such as PgBouncer with pool_mode = transaction): {evidence}; mtnt needs a session per connection (session advisory locks, session SET, prepared statements), so nothing was changed")]
    TransactionPooler {
        /// The URL, with its password replaced by `***`.
        url: String,
        /// What showed it.
        evidence: String,
    },

    /// A migration function panicked; its tenant failed, the run went on.
    #[error("the migration panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },

    /// A tenant was dropped while a command waited for its lock; nothing was changed or
    /// created for it.
    #[error("tenant {tenant} was dropped while this run was waiting for it; nothing was changed")]
    TenantGone {
        /// The tenant.
        tenant: TenantName,
    },

    /// A schema (database, file) exists where a new tenant's would be made, and no
    /// registered tenant owns it; it is never taken over.
    #[error("{storage} exists already but is not a registered tenant; it was left as it is")]
    StorageExists {
        /// The tenant that would have used it.
        tenant: TenantName,
        /// What exists: `schema acme`, `database acme`, `file ./tenants/acme.db`.
        storage: String,
    },

    /// The registry records another tenancy model than the one this run was given (by
    /// [`ConnectOptions::tenancy`](crate::ConnectOptions::tenancy), or a backend of
    /// another model); nothing was changed. The model of a registry never changes.
    #[error("the mtnt registry was set up with tenancy {recorded}, but this run was given tenancy {given}; nothing was changed")]
    TenancyMismatch {
        /// The model the registry records.
        recorded: Tenancy,
        /// The model this run was given.
        given: Tenancy,
    },

    /// A command that only reads (status, the tenant list, a plan) found no mtnt registry
    /// where the URL leads; nothing was created.
    #[error("{place} has no mtnt registry: nothing has been migrated here{}", elsewhere(.other_schemas))]
    NoRegistry {
        /// Where the engine looked (`database postgres on 127.0.0.1:5432, schema public`,
        /// `directory ./tenants`), without password.
        place: String,
        /// Other schemas of that database that hold an mtnt registry (PostgreSQL).
        other_schemas: Vec<String>,
    },

    /// A migration that ran outside a transaction left invalid indexes in its target
    /// (PostgreSQL `pg_index.indisvalid` or `indisready` false): a `CREATE INDEX
    /// CONCURRENTLY` that failed or was cancelled (a duplicate key, a timeout, a killed
    /// session) leaves its index behind, unused by queries but kept up by every write,
    /// and the `IF NOT EXISTS` of a retry skips it. The migration is recorded `failed`.
    #[error("{target} has {} after the migration: a CREATE INDEX CONCURRENTLY that failed or was cancelled leaves its index invalid (unused by queries, still updated by every write), and IF NOT EXISTS then skips it; the migration was recorded failed, not completed", invalid_indexes(.indexes))]
    InvalidIndex {
        /// `"tenant acme"` or `"the public schema"`.
        target: String,
        /// The invalid indexes, schema-qualified and quoted as SQL wants them
        /// (`"acme"."items_sku"`).
        indexes: Vec<String>,
    },

    /// A registered tenant's schema (database, file) is gone.
    #[error("{storage} of tenant {tenant} does not exist, but the tenant is registered")]
    StorageMissing {
        /// The tenant.
        tenant: TenantName,
        /// What is missing: `schema acme`, `database acme`, `file ./tenants/acme.db`.
        storage: String,
    },
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Error::Sql(error)
    }
}

/// For [`Error::NoRegistry`]: the other schemas that hold a registry, if any.
fn elsewhere(schemas: &[String]) -> String {
    match schemas {
        [] => String::new(),
        [one] => format!(" (schema {one} of that database holds one)"),
        more => format!(" (schemas {} of that database hold one)", more.join(", ")),
    }
}

/// The driver's message of `error`, with the DETAIL and HINT of a PostgreSQL error.
fn sql_message(error: &sqlx::Error) -> String {
    let message = error.to_string();
    #[cfg(feature = "postgres")]
    if let Some(pg) = error
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
    {
        let mut message = message;
        if let Some(detail) = pg.detail() {
            message.push_str("; DETAIL: ");
            message.push_str(detail);
        }
        if let Some(hint) = pg.hint() {
            message.push_str("; HINT: ");
            message.push_str(hint);
        }
        return message;
    }
    message
}

/// `the invalid index "acme"."a"`, `the invalid indexes "acme"."a", "acme"."b"`.
fn invalid_indexes(indexes: &[String]) -> String {
    match indexes {
        [one] => format!("the invalid index {one}"),
        many => format!("the invalid indexes {}", many.join(", ")),
    }
}

/// What the failure of a hook of `kind` did, for [`Error::Hook`]'s message.
fn hook_consequence(kind: HookKind) -> &'static str {
    match kind {
        HookKind::BeforeRun => "; the run stopped before any change",
        HookKind::BeforeTenant => "; none of its pending migrations ran",
        HookKind::AfterTenant | HookKind::AfterRun => "",
    }
}

impl std::fmt::Debug for Error {
    /// The message, then each cause it does not quote already, one per line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.to_string();
        f.write_str(&message)?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                write!(f, "\n  caused by: {text}")?;
            }
            source = cause.source();
        }
        Ok(())
    }
}

impl Error {
    /// Wraps any error a migration wants to report.
    pub fn other(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Other(error.into())
    }

    /// [`Error::StorageMissing`] for `tenant`, its storage named as the registry has it.
    pub fn storage_missing(tenant: &Tenant) -> Self {
        Error::StorageMissing {
            tenant: tenant.name.clone(),
            storage: tenant.storage.clone(),
        }
    }
}
