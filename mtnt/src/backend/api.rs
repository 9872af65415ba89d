//! The primitives an engine provides: connections, locks, tracking rows, registry rows
//! and storage, in its SQL dialect. What a run does with them (claim, plan, apply,
//! record, fail, retry; create, adopt and drop a tenant) is written once, in
//! `migrate/protocol.rs` and `migrate/tenants.rs`, and picks its path from the engine's
//! [`Capabilities`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::lease::LeaseStore;
use crate::{
    AppliedMigration, Ctx, Engine, Error, Migration, MigrationStatus, Result, Server, ServerName,
    Tenancy, Tenant, TenantName, TenantRecord, TenantState,
};

/// Each of `records` with its fingerprint ([`Backend::fingerprints`], read per 1000
/// names; `None` for all without [`Capabilities::fingerprints`]), in their order.
pub(crate) async fn with_fingerprints<B: Backend + ?Sized>(
    backend: &B,
    records: Vec<TenantRecord>,
) -> Result<Vec<(TenantRecord, Option<String>)>> {
    let mut fingerprints = Vec::new();
    if backend.capabilities().fingerprints {
        for page in records.chunks(1000) {
            let names: Vec<TenantName> = page.iter().map(|r| r.tenant.name.clone()).collect();
            fingerprints.extend(backend.fingerprints(&names).await?);
        }
    }
    fingerprints.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(records
        .into_iter()
        .map(|record| {
            let fingerprint = fingerprints
                .binary_search_by(|(name, _)| name.cmp(&record.tenant.name))
                .ok()
                .map(|i| std::mem::take(&mut fingerprints[i].1));
            (record, fingerprint)
        })
        .collect())
}

/// What a session or a migration works on: the shared control schema, or one tenant.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// The control schema (or control database, or control file) that public migrations
    /// change.
    Public,
    /// One tenant.
    Tenant(&'a Tenant),
}

impl<'a> Target<'a> {
    /// The tenant, unless this is the public target.
    pub fn tenant(self) -> Option<&'a Tenant> {
        match self {
            Target::Public => None,
            Target::Tenant(t) => Some(t),
        }
    }
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Public => f.write_str("the public schema"),
            Target::Tenant(t) => write!(f, "tenant {}", t.name),
        }
    }
}

/// Up or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Apply.
    Up,
    /// Revert.
    Down,
}

/// What an engine can do; the protocol picks its path from these, never from the
/// engine's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// DDL takes part in transactions (PostgreSQL, SQLite): a failed transactional
    /// migration is rolled back whole, and several can share one transaction. Without it
    /// (MySQL, which commits each DDL statement), every migration is recorded `started`
    /// in a commit of its own before it runs and `completed` after it: the started /
    /// completed chain, which leaves a failure visible as `started`.
    pub transactional_ddl: bool,
    /// The registry row can be written in the target's own transaction (registry and
    /// tracking rows in one database). Without it the registry is a cache: written after
    /// the target commits ([`Backend::write_registry`]) and healed when a run reads the
    /// target.
    pub registry_in_target_transaction: bool,
    /// Creating and dropping a tenant's storage takes part in a transaction (a
    /// PostgreSQL schema): a tenant is created, with its first migrations, in one
    /// transaction. Without it, creating is made atomic by compensation.
    pub transactional_storage: bool,
    /// [`Backend::fingerprints`] answers: a fleet run skips, without a session, every
    /// tenant whose fingerprint says it is current.
    pub fingerprints: bool,
    /// [`Backend::copy_storage`] copies a storage whole (a file): `tenant create` copies
    /// a migrated template (storage [`TEMPLATE_STORAGE`]) instead of replaying every
    /// migration, where that gives the same tenant.
    pub storage_templates: bool,
    /// [`Record::TakeStorage`] renames a storage in the tenant's transaction (a
    /// PostgreSQL schema) and [`Backend::spare_storages`] lists them: `tenant create` can
    /// take a spare, a storage migrated ahead of time, instead of replaying every
    /// migration.
    pub storage_spares: bool,
    /// Tenants can be placed on other servers than the registry's ([`Backend::servers`],
    /// [`Backend::add_server`]); without it, every tenant is on the server of the URL.
    pub servers: bool,
}

impl Capabilities {
    /// An engine with none of the capabilities: every migration chained, the registry a
    /// cache, creation by compensation, a session for every tenant.
    pub const NONE: Capabilities = Capabilities {
        transactional_ddl: false,
        registry_in_target_transaction: false,
        transactional_storage: false,
        fingerprints: false,
        storage_templates: false,
        storage_spares: false,
        servers: false,
    };

    /// These capabilities with transactional DDL.
    pub const fn with_transactional_ddl(mut self) -> Self {
        self.transactional_ddl = true;
        self
    }

    /// These capabilities with the registry in the target's transaction.
    pub const fn with_registry_in_target_transaction(mut self) -> Self {
        self.registry_in_target_transaction = true;
        self
    }

    /// These capabilities with transactional storage.
    pub const fn with_transactional_storage(mut self) -> Self {
        self.transactional_storage = true;
        self
    }

    /// These capabilities with fingerprints in the registry.
    pub const fn with_fingerprints(mut self) -> Self {
        self.fingerprints = true;
        self
    }

    /// These capabilities with spare storages.
    pub const fn with_storage_spares(mut self) -> Self {
        self.storage_spares = true;
        self
    }

    /// These capabilities with storage templates.
    pub const fn with_storage_templates(mut self) -> Self {
        self.storage_templates = true;
        self
    }

    /// These capabilities with servers.
    pub const fn with_servers(mut self) -> Self {
        self.servers = true;
        self
    }
}

/// The storage of the template that `tenant create` copies where the engine has
/// [`Capabilities::storage_templates`]: never registered, and no tenant's storage, since
/// tenant names never start with `mtnt`. [`Connection::read`] of it reads its tracking
/// rows although it has no registry row.
pub const TEMPLATE_STORAGE: &str = "mtnt_template";

/// What kind of failure an engine error is, for the protocol's decisions (retry, discard
/// the connection, report a name clash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// A unique key was violated (a tenant registered twice).
    UniqueViolation,
    /// The storage to create exists already (schema, database, file).
    StorageExists,
    /// The storage to use does not exist.
    StorageMissing,
    /// Worth another try: a lock timeout, a deadlock, a serialization failure, a server
    /// restarting, too many connections.
    Transient,
    /// The connection is gone or in an unknown state: nothing more can be sent on it.
    ConnectionLost,
    /// The server refused a connection: it has as many as it takes (PostgreSQL
    /// `too_many_connections`, MySQL `ER_CON_COUNT_ERROR`). Worth another try, with fewer
    /// tenants at once: a fleet run lowers its concurrency by one each time.
    TooManyConnections,
    /// Anything else.
    Other,
}

/// The part of [`Backend::classify`] that is the same on every engine: wrappers looked
/// through, mtnt's own typed errors, and the sqlx errors that mean the connection is gone.
/// `Err` hands back a database error, whose class only the engine's own codes tell.
pub fn classify_common(error: &Error) -> std::result::Result<ErrorClass, &sqlx::Error> {
    match error {
        Error::Migration { source, .. } | Error::GaveUp { source, .. } => classify_common(source),
        Error::StorageExists { .. } => Ok(ErrorClass::StorageExists),
        Error::StorageMissing { .. } => Ok(ErrorClass::StorageMissing),
        Error::TenantExists(_) => Ok(ErrorClass::UniqueViolation),
        Error::Sql(sql) | Error::Connect { source: sql, .. } => match sql {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Ok(ErrorClass::ConnectionLost),
            sqlx::Error::Database(_) => Err(sql),
            _ => Ok(ErrorClass::Other),
        },
        _ => Ok(ErrorClass::Other),
    }
}

/// The lock and statement timeouts one migration runs with (its attribute's, else the
/// run's defaults). `None` means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationTimeouts {
    /// How long a statement waits for a lock.
    pub lock: Option<Duration>,
    /// How long one statement may run.
    pub statement: Option<Duration>,
}

/// When a migration ran, measured on the client: the engine turns it into timestamps
/// relative to the moment it writes the record.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// When its function was called.
    pub started: Instant,
    /// When its function returned.
    pub finished: Instant,
}

impl Timing {
    /// How long before `now` the migration started and finished. One `now` serves every
    /// row of a write, so that rows of one transaction keep their order.
    pub fn ago(&self, now: Instant) -> (Duration, Duration) {
        (
            now.saturating_duration_since(self.started),
            now.saturating_duration_since(self.finished),
        )
    }

    /// How long the function ran.
    pub fn duration(&self) -> Duration {
        self.finished - self.started
    }
}

/// One bookkeeping write the protocol asks of a connection ([`Connection::write`],
/// [`Connection::commit`]); the engine turns a list of them into as few round trips as
/// it can.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Record<'a> {
    /// The migration is about to run outside a transaction (or the engine commits DDL):
    /// up, its row is inserted or reset as `started` with a fresh start; down, the
    /// completed row becomes `started`.
    Started {
        /// The migration.
        migration: &'static Migration,
        /// Which function runs.
        direction: Direction,
    },
    /// The migration's function succeeded: up, the row is `completed` (inserted, or the
    /// `started` row updated); down, the row is `pending`.
    Finished {
        /// The migration.
        migration: &'static Migration,
        /// Which function ran.
        direction: Direction,
        /// When it ran.
        timing: Timing,
    },
    /// The migration failed: its row gets `status` (`failed` after a rollback, `started`
    /// where what it did is unknown) and the error; an existing row keeps its name,
    /// checksum and start, and a `completed` row is never overwritten.
    Failed {
        /// The migration.
        migration: &'static Migration,
        /// `failed` or `started`.
        status: MigrationStatus,
        /// The error text, passwords scrubbed.
        error: &'a str,
        /// When it ran.
        timing: Timing,
    },
    /// `repair --mark`: the row is set to `status` without running anything.
    Marked {
        /// The migration.
        migration: &'static Migration,
        /// The new status.
        status: MigrationStatus,
    },
    /// `repair --checksums`: a completed row gets the code's checksum.
    Checksum {
        /// The migration's order.
        order: i64,
        /// The checksum of its code.
        checksum: &'a str,
    },
    /// The tenant's registry row in line with its tracking rows (newest completed order,
    /// fingerprint where kept), and, with `clear_failure`, no recorded failure. Only on
    /// engines with [`Capabilities::registry_in_target_transaction`]; never for the public
    /// target.
    Registry {
        /// Whether a recorded failure is cleared too.
        clear_failure: bool,
    },
    /// The tenant's registry row records a failure at `order`, with its newest completed
    /// order recomputed. As [`Record::Registry`], only where the registry is in the
    /// target's transaction.
    RegistryFailure {
        /// The failed migration's order.
        order: i64,
        /// The error text.
        error: &'a str,
    },
    /// A new registry row for the tenant, in `state` (`tenant create` on engines with
    /// [`Capabilities::transactional_storage`]); a unique violation when it exists.
    Register {
        /// Its state.
        state: TenantState,
    },
    /// The registry row's state.
    State {
        /// The new state.
        state: TenantState,
    },
    /// Creates the tenant's storage (engines with transactional storage).
    CreateStorage,
    /// Renames the storage `from` (a spare, see [`Capabilities::storage_spares`]) to the
    /// tenant's; an error of class [`ErrorClass::StorageMissing`] when `from` is gone (taken
    /// by another run), of class [`ErrorClass::StorageExists`] when the tenant's exists.
    TakeStorage {
        /// The storage renamed.
        from: &'a str,
    },
    /// Drops the tenant's storage if it exists, and its registry row (engines with
    /// transactional storage).
    DropTenant,
}

/// A row of the registry written from outside the target's transaction, where the
/// registry is a cache ([`Backend::write_registry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistryRow<'a> {
    /// The tenant's newest completed migration.
    pub applied_order: Option<i64>,
    /// The recorded failure (order and error), or none.
    pub failure: Option<(i64, &'a str)>,
}

/// What [`Backend::registry_state`] finds where the engine keeps mtnt's registry, read
/// without creating or changing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryState {
    /// No registry: mtnt has never set this place up (or the URL names another place).
    Missing {
        /// Where the engine looked, as the messages name it (`database app on
        /// 127.0.0.1:5432, schema public`, `directory ./tenants`); no password.
        place: String,
        /// Other control schemas of the same database that hold a registry (PostgreSQL),
        /// by name: the URL may be right and the control schema not.
        other_schemas: Vec<String>,
    },
    /// A registry set up before mtnt recorded the tenancy model; the next
    /// [`Backend::prepare`] records it.
    Unrecorded,
    /// A registry with the tenancy model it was set up with.
    Recorded(Tenancy),
}

/// The state of a target, read under its lock.
#[derive(Clone, Debug, Default)]
pub struct TargetState {
    /// Its tracking rows, by order.
    pub applied: Vec<AppliedMigration>,
    /// Whether the tenant's registry row exists (always true for the public target): a
    /// tenant dropped while a run waited for it is not recreated.
    pub registered: bool,
}

/// What kind of schema object a [`SchemaObject`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ObjectKind {
    /// A table.
    Table,
    /// A column of a table or view, named `table.column`.
    Column,
    /// An index.
    Index,
    /// A constraint (primary key, unique, foreign key, check), named `table.constraint`.
    Constraint,
    /// A view or materialized view.
    View,
    /// A function or procedure, named with its argument types.
    Function,
    /// A trigger, named `table.trigger`.
    Trigger,
    /// A sequence.
    Sequence,
}

impl ObjectKind {
    /// The word for it in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Table => "table",
            ObjectKind::Column => "column",
            ObjectKind::Index => "index",
            ObjectKind::Constraint => "constraint",
            ObjectKind::View => "view",
            ObjectKind::Function => "function",
            ObjectKind::Trigger => "trigger",
            ObjectKind::Sequence => "sequence",
        }
    }
}

/// One object of a tenant's schema as the engine's catalog describes it: what `drift`
/// compares between tenants.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SchemaObject {
    /// What it is.
    pub kind: ObjectKind,
    /// Its name within the tenant (no schema or database in it).
    pub name: String,
    /// Its definition in the engine's words (a column's type, nullability and default; an
    /// index's definition ...), with the tenant's own schema or database name taken out,
    /// so that the same object of two tenants reads the same.
    pub definition: String,
}

impl SchemaObject {
    /// An object of `kind` named `name` defined as `definition`.
    pub fn new(kind: ObjectKind, name: impl Into<String>, definition: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            definition: definition.into(),
        }
    }
}

/// `text` without the qualifier `storage.` (bare, `"quoted"` or `` `quoted` ``) wherever it
/// starts a qualified name: a definition as the catalog prints it for one tenant
/// (`ON acme.accounts`, `nextval('acme.accounts_id_seq')`), made the same for every tenant.
pub fn strip_qualifier(text: &str, storage: &str) -> String {
    let forms = [
        format!("{storage}."),
        format!("\"{}\".", storage.replace('"', "\"\"")),
        format!("`{}`.", storage.replace('`', "``")),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        let starts_name = out
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$'));
        if starts_name {
            for form in &forms {
                if let Some(after) = rest.strip_prefix(form.as_str()) {
                    rest = after;
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().expect("rest is not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// One entry of the control journal: what mtnt keeps of its own work in the control
/// schema (each finished fleet run, the last drift check), so that `status` and the fleet
/// report can show it after the runner is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// What it is about: `run`, `drift`.
    pub kind: String,
    /// Its key within the kind (a run's id); an entry of the same kind and key is replaced.
    pub key: String,
    /// When it was written, RFC 3339 in UTC with microseconds: text that sorts by time.
    pub at: String,
    /// What it says, as JSON.
    pub body: String,
}

impl From<(String, String, String, String)> for JournalEntry {
    /// A journal row as engines select it: `(kind, key, at, body)`.
    fn from((kind, key, at, body): (String, String, String, String)) -> Self {
        JournalEntry {
            kind,
            key,
            at,
            body,
        }
    }
}

/// The engine half of mtnt: its dialect and its connection handling.
///
/// Everything a run does with these primitives is written once in mtnt; an engine that
/// mtnt does not ship can be implemented outside the crate with the public API alone
/// (`examples/json_engine/` does, for a directory of JSON documents) and handed to
/// [`Migrator::builder`](crate::Migrator::builder).
#[async_trait]
pub trait Backend: Send + Sync {
    /// The engine.
    fn engine(&self) -> Engine;

    /// How tenants are isolated.
    fn tenancy(&self) -> Tenancy;

    /// What the engine can do.
    fn capabilities(&self) -> Capabilities;

    /// What kind of failure `error` is. Called with errors of this engine's connections
    /// and of migrations run on them.
    fn classify(&self, error: &Error) -> ErrorClass;

    /// Creates mtnt's control tables (tenant registry, public tracking rows) if missing,
    /// and records [`Backend::tenancy`] in them unless a model is recorded already (the
    /// first one recorded stays).
    async fn prepare(&self) -> Result<()>;

    /// Whether mtnt's registry exists and which tenancy model it records, read without
    /// creating anything: the read-only commands call this instead of
    /// [`Backend::prepare`], and every command refuses a backend whose tenancy
    /// contradicts the recorded one.
    async fn registry_state(&self) -> Result<RegistryState>;

    /// Registered tenants ordered by name, after `after`, at most `limit`.
    async fn tenant_page(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>>;

    /// [`Backend::tenant_page`], each record with its fingerprint as
    /// [`Backend::fingerprints`] gives it (`None`: none, or no
    /// [`Capabilities::fingerprints`]). By default those two reads; an engine that keeps
    /// the fingerprint in the registry row reads both in one query.
    async fn tenant_page_with_fingerprints(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<(TenantRecord, Option<String>)>> {
        let page = self.tenant_page(after, limit).await?;
        with_fingerprints(self, page).await
    }

    /// How many tenants are registered.
    async fn tenant_count(&self) -> Result<u64>;

    /// The rows of the registry whose name is no valid tenant name (inserted by hand), each
    /// as an [`Error::InvalidRegistryName`] naming the table and the row. The other
    /// registry reads ([`Backend::tenant_page`], [`Backend::tenant_records`]) leave them
    /// out, so that one bad row fails only itself. By default there are none.
    async fn invalid_registry_rows(&self) -> Result<Vec<Error>> {
        Ok(Vec::new())
    }

    /// The registry rows of the named tenants; names that are not registered are left out.
    async fn tenant_records(&self, names: &[TenantName]) -> Result<Vec<TenantRecord>>;

    /// The [`fingerprint`](crate::fingerprint)s of the completed migrations of the named
    /// tenants; tenants without one are left out. Called only with
    /// [`Capabilities::fingerprints`]: the engine keeps each in line with the tenant's
    /// tracking rows (written in the same transaction, or computed from them).
    async fn fingerprints(&self, names: &[TenantName]) -> Result<Vec<(TenantName, String)>>;

    /// How many target connections can be open at once without waiting: the pool's size
    /// less one (for the registry reads), and no more than the server has free. `None`:
    /// no such limit is known. A fleet run lowers its concurrency to this.
    async fn connection_budget(&self) -> Result<Option<usize>>;

    /// A connection working on one target; it holds the target's lock once
    /// [`Connection::try_lock`] says so, until [`Connection::release`] or drop.
    async fn connect<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Connection + 'a>>;

    /// A new registry row for `tenant` in `state` with `applied_order`; fails with an
    /// error of class [`ErrorClass::UniqueViolation`] when it exists.
    async fn register(
        &self,
        tenant: &Tenant,
        state: TenantState,
        applied_order: Option<i64>,
    ) -> Result<()>;

    /// Sets the state of a tenant's registry row.
    async fn set_state(&self, tenant: &Tenant, state: TenantState) -> Result<()>;

    /// Deletes a tenant's registry row; with `only_creating`, only while it is
    /// `creating` (the compensation of a failed create).
    async fn unregister(&self, tenant: &Tenant, only_creating: bool) -> Result<()>;

    /// Writes the registry's cached summary of a tenant, where the registry is a cache
    /// (no [`Capabilities::registry_in_target_transaction`]).
    async fn write_registry(&self, tenant: &Tenant, row: RegistryRow<'_>) -> Result<()>;

    /// Creates the storage of a tenant (schema, database, file) with an empty tracking
    /// table; an error of class [`ErrorClass::StorageExists`] when it exists.
    async fn create_storage(&self, tenant: &Tenant) -> Result<()>;

    /// Drops the storage of a tenant with all its data, if it exists.
    async fn drop_storage(&self, tenant: &Tenant) -> Result<()>;

    /// Creates the storage of `tenant` as a copy of `template`'s, tracking rows and all,
    /// never seen half-copied (copied aside, then moved into place); an error of class
    /// [`ErrorClass::StorageExists`] when it exists. Called only with
    /// [`Capabilities::storage_templates`], while the caller holds `template`'s lock.
    async fn copy_storage(&self, template: &Tenant, tenant: &Tenant) -> Result<()> {
        let _ = (template, tenant);
        Err(Error::Invalid(format!(
            "the {} engine cannot copy a tenant's storage",
            self.engine()
        )))
    }

    /// The names of the storages whose name starts with `prefix` (spares, see
    /// [`Capabilities::storage_spares`]), by name. By default: none.
    async fn spare_storages(&self, prefix: &str) -> Result<Vec<String>> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// The names of existing storages (schemas, databases, files) that match the SQL
    /// `LIKE` pattern, are not registered, and are not mtnt's own, by name.
    async fn unregistered_storage(&self, like: &str) -> Result<Vec<String>>;

    /// [`Backend::unregistered_storage`] on the server `server` of the fleet. By default
    /// the engine has one server: [`Error::OneServer`].
    async fn unregistered_storage_on(
        &self,
        server: &ServerName,
        like: &str,
    ) -> Result<Vec<String>> {
        let _ = (server, like);
        Err(Error::OneServer {
            engine: self.engine(),
        })
    }

    /// The schema objects of each of `tenants`, in their order, as the engine's catalog
    /// describes them ([`SchemaObject`]): mtnt's own tables left out, each sorted; an
    /// error for a tenant that cannot be read (its storage missing, say), which leaves the
    /// others described. Only reads, and takes no lock: `drift` compares what it returns.
    /// In bulk where the engine can (one catalog query for many tenants); the outer error
    /// is for a failure that leaves no tenant described.
    async fn describe(&self, tenants: &[Tenant]) -> Result<Vec<Result<Vec<SchemaObject>>>>;

    /// Writes `entry` to the control journal, made when missing (the journal is mtnt's
    /// own bookkeeping, written by the commands that keep it, `drift` among them), then
    /// deletes all but the newest `keep` entries of its kind.
    async fn journal_write(&self, entry: &JournalEntry, keep: usize) -> Result<()>;

    /// The newest `limit` entries of `kind`, newest first; none where no journal is kept
    /// yet (reading makes nothing).
    async fn journal_read(&self, kind: &str, limit: usize) -> Result<Vec<JournalEntry>>;

    /// The servers of the fleet: the control database's own
    /// ([`DEFAULT_SERVER`](crate::DEFAULT_SERVER)) first, then the registered ones by name,
    /// each with how many tenants it holds. Only reads. By default the engine has the
    /// one server of its URL.
    async fn servers(&self) -> Result<Vec<Server>> {
        Ok(vec![Server {
            name: ServerName::default_server(),
            url: String::new(),
            tenants: self.tenant_count().await?,
            cordoned: false,
        }])
    }

    /// Registers the server `name` at `url`, stored without its password (which comes
    /// from [`ServerName::password`] or the engine's password file when connecting).
    /// [`Error::ServerExists`] when it is registered already. With `check`, only a server
    /// that answers and is not a registered one under another name:
    /// [`Error::ServerNotAdded`], [`Error::SameServer`]. By default the engine keeps every
    /// tenant on one server: [`Error::OneServer`].
    async fn add_server(&self, name: &ServerName, url: &str, check: bool) -> Result<()> {
        let _ = (name, url, check);
        Err(Error::OneServer {
            engine: self.engine(),
        })
    }

    /// Removes the server `name` from the registry; [`Error::ServerInUse`] while tenants
    /// are placed on it. By default: [`Error::OneServer`].
    async fn remove_server(&self, name: &ServerName) -> Result<()> {
        let _ = name;
        Err(Error::OneServer {
            engine: self.engine(),
        })
    }

    /// Cordons the server `name` (`cordoned`: it takes no new tenants) or lets it take them
    /// again; the default server too. [`Error::UnknownServer`] when it is not registered.
    /// By default: [`Error::OneServer`].
    async fn cordon_server(&self, name: &ServerName, cordoned: bool) -> Result<()> {
        let _ = (name, cordoned);
        Err(Error::OneServer {
            engine: self.engine(),
        })
    }

    /// Moves `tenant`, whose lock the caller holds, to the server `to` (`None`: the
    /// default server): its storage copied there and checked, the registry switched in one
    /// transaction, the source dropped unless `keep_source`. A failure leaves the tenant
    /// where it was; run again after a crash, it finishes or cleans up. By default the
    /// engine has one server: [`Error::OneServer`].
    async fn move_tenant(
        &self,
        tenant: &Tenant,
        to: Option<&ServerName>,
        keep_source: bool,
    ) -> Result<()> {
        let _ = (tenant, to, keep_source);
        Err(Error::OneServer {
            engine: self.engine(),
        })
    }

    /// How many tenants of the server `server` of the fleet can be worked on at once,
    /// each with its connection there, without the server refusing one: what it has free,
    /// less a few kept free. `None`: no such limit is known (or the server cannot be
    /// asked; its tenants then fail on their own). A fleet run lowers its budget per
    /// server to this.
    async fn server_connection_budget(&self, server: &ServerName) -> Result<Option<usize>> {
        let _ = server;
        Ok(None)
    }

    /// `error` ended an attempt on `tenant`: if it cut the connection because the
    /// tenant's server (another than the registry's) is gone, the error its tenants fail
    /// with ([`Error::ServerUnreachable`]), and the server's other tenants then fail at
    /// once; `None` (by default) when it is the tenant's own failure, retried or not as
    /// it is.
    async fn server_gone(&self, tenant: &Tenant, error: &Error) -> Option<Error> {
        let _ = (tenant, error);
        None
    }

    /// What the engine can do for `tenant`: [`Backend::capabilities`], less what its
    /// server allows (a tenant on another server than the registry's has the registry as
    /// a cache, written after its commits).
    fn capabilities_of(&self, tenant: &Tenant) -> Capabilities {
        let _ = tenant;
        self.capabilities()
    }

    /// The run leases of the control schema, if the engine keeps them; without, runs
    /// take no lease (see the README section "Safety").
    fn leases(&self) -> Option<Arc<dyn LeaseStore>>;

    /// The tracking rows of `tenants` whose last write was by the fleet run `run_id`
    /// (their `run_id` column, see [`Connection::set_run`]), by tenant and order; tenants
    /// without such rows are left out. Read in bulk where the engine can (one query for
    /// many tenants), else `concurrency` tenants at a time. By default the engine records
    /// no run ids and says so.
    async fn run_rows(
        &self,
        run_id: &str,
        tenants: &[Tenant],
        concurrency: usize,
    ) -> Result<Vec<(TenantName, AppliedMigration)>> {
        let _ = (run_id, tenants, concurrency);
        Err(Error::Invalid(format!(
            "the {} engine records no run ids",
            self.engine()
        )))
    }

    /// The on-disk size in bytes of each of `tenants` where the engine can tell (a
    /// schema's tables with their indexes and TOAST, a database, a file), in one query
    /// where it can; tenants it cannot size are left out. By default: none.
    async fn tenant_sizes(&self, tenants: &[Tenant]) -> Result<Vec<(TenantName, u64)>> {
        let _ = tenants;
        Ok(Vec::new())
    }
}

/// One connection working on one target: the engine's dialect for locking it, reading
/// and writing its tracking rows, and running migrations in and outside transactions.
#[async_trait]
pub trait Connection: Send {
    /// Takes the target's lock if no other run holds it, without waiting; whether it is
    /// held now. Idempotent.
    async fn try_lock(&mut self) -> Result<bool>;

    /// The target's state, read now (under the lock, when held). A target without
    /// tracking storage yet reads as no rows; it is created with the first write.
    async fn read(&mut self) -> Result<TargetState>;

    /// [`Connection::try_lock`], then, if the lock is held, [`Connection::read`] under it;
    /// `None` when another run holds the target. One round trip where the engine can.
    async fn try_lock_and_read(&mut self) -> Result<Option<TargetState>>;

    /// Opens a transaction for running migrations with `timeouts`; whatever the target
    /// lacks (a tenant's schema, its tracking table) is created in it.
    async fn begin(&mut self, timeouts: MigrationTimeouts) -> Result<()>;

    /// Changes the timeouts inside the open transaction.
    async fn set_timeouts(&mut self, timeouts: MigrationTimeouts) -> Result<()>;

    /// Prepares the connection to run a migration outside a transaction with
    /// `timeouts` (the target's missing storage created, the session's settings set).
    async fn enter_autocommit(&mut self, timeouts: MigrationTimeouts) -> Result<()>;

    /// Undoes the session settings of [`Connection::enter_autocommit`].
    async fn leave_autocommit(&mut self) -> Result<()>;

    /// Checks what a migration that ran outside a transaction left behind, before
    /// [`Connection::leave_autocommit`]: an error fails the migration (its row is recorded
    /// `failed`, never `completed`). PostgreSQL refuses an index left invalid in the
    /// target's schema ([`Error::InvalidIndex`]): a `CREATE INDEX CONCURRENTLY` that
    /// failed or was cancelled leaves one, and the `IF NOT EXISTS` of an idempotent retry
    /// skips it. By default nothing is checked.
    async fn verify_after_autocommit(&mut self) -> Result<()> {
        Ok(())
    }

    /// Writes `records` in the open transaction.
    async fn write(&mut self, records: &[Record<'_>]) -> Result<()>;

    /// Writes `records` and commits them: with the open transaction, or in one of their
    /// own when none is open. With `then`, a new transaction is open afterwards, as
    /// [`Connection::begin`] opens it; engines send it in the same round trip.
    async fn commit(
        &mut self,
        records: &[Record<'_>],
        then: Option<MigrationTimeouts>,
    ) -> Result<()>;

    /// Ends the open transaction without its changes (none open: nothing happens). A
    /// connection that cannot is discarded.
    async fn rollback(&mut self);

    /// The connection is lost or in an unknown state: it is closed, never reused, and
    /// its lock ends with it.
    fn discard(&mut self);

    /// The context a migration function runs with, on this connection.
    fn ctx(&mut self) -> Ctx<'_>;

    /// The fleet run this connection works for: every tracking row it writes from now on
    /// carries `run_id` (a nullable `run_id` column, which the first locked read adds to
    /// a tracking table that lacks it). Called before the first read. By default the
    /// engine records no run ids.
    fn set_run(&mut self, run_id: &str) {
        let _ = run_id;
    }

    /// Releases the lock and hands the connection back. Dropping the connection instead
    /// (a cancelled run) must release the lock too, by closing the connection if need be.
    async fn release(self: Box<Self>);
}
