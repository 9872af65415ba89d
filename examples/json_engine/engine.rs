//! A document-store engine for mtnt, written outside mtnt against its public API only: a
//! directory of JSON documents, one per tenant, the shape a MongoDB-style store has.
//!
//! # Files
//!
//! - `mtnt_control.json`, the control document: the tenant registry (`tenants`: name to
//!   storage, state, created_at, applied_order, failed_order, last_error), and the public
//!   target (its `collections` and its tracking rows, `migrations`);
//! - `<tenant>.json`, one document per tenant: its `collections` and its tracking rows;
//! - `<tenant>.lock`, `mtnt_control.lock`: the targets' lock files, locked exclusively
//!   (`File::try_lock`) by the connection that works on the target, until it is released
//!   or dropped; `mtnt_control.write.lock` guards each read-modify-write of the control
//!   document.
//!
//! Every document is written whole to a temporary file, flushed, and renamed over the old
//! one: a crash leaves the old document or the new one, never half of one.
//!
//! # Transactions
//!
//! `begin` reads the target's document into memory; the migration's statements and mtnt's
//! records change that snapshot; `commit` writes it (one rename), `rollback` forgets it. So
//! the engine has transactional DDL: a failed migration leaves nothing behind. The registry
//! lives in another file than a tenant's document, so it is a cache written after the
//! tenant commits, which mtnt heals when it is stale; creating a tenant's document is no
//! part of a transaction, so `tenant create` is made atomic by compensation.
//!
//! A migration with `transaction = false` works on the document directly: each
//! [`Ctx::execute`](mtnt::Ctx::execute) call is written when it returns (statements that
//! ran before a failing one stay), and changes made through [`JsonSession::collections`]
//! are written with the next `execute` or when the migration returns.
//!
//! # Statements
//!
//! `Ctx::execute` takes statements separated by `;` or line ends (a JSON value may span
//! lines); `-- ` starts a comment line. Names are `[A-Za-z_][A-Za-z0-9_]*`.
//!
//! | statement | does |
//! |---|---|
//! | `CREATE COLLECTION [IF NOT EXISTS] accounts` | an empty collection; an error when it exists |
//! | `DROP COLLECTION [IF EXISTS] accounts` | removes it with its documents |
//! | `INSERT INTO accounts {"email": "a@b.c"}` | appends a document (a JSON object) |
//! | `ADD FIELD accounts.name DEFAULT "x"` | sets the field in every document lacking it |
//! | `REMOVE FIELD accounts.name` | removes the field from every document |
//! | `DELETE FROM accounts WHERE email = "a@b.c"` | removes the documents whose field equals the value |
//! | `FAIL "reason"` | fails with the reason; `FAIL TRANSIENT "reason"` fails with a transient error, which mtnt retries |
//!
//! Every statement of a call is parsed before the first runs. A statement that fails
//! changes nothing. [`mtnt::Ctx::custom`]`::<`[`JsonSession`]`>()` gives typed access to
//! the collections.

use std::any::Any;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use mtnt::{
    Backend, BoxFuture, Capabilities, Connection, Ctx, CtxConn, CustomConnection, Engine, Error,
    ErrorClass, JournalEntry, LeaseStore, MigrationTimeouts, ObjectKind, Record, RegistryRow,
    RegistryState, Result, SchemaObject, Target, TargetState, Tenancy, Tenant, TenantName,
    TenantRecord, TenantState,
};
use serde_json::Value;

#[path = "documents.rs"]
mod documents;
#[path = "statements.rs"]
mod statements;

use documents::{
    create_control, io_error, open_lock_file, read_control, update_control, write_json, Place,
    Stamp,
};
pub use documents::{Collections, RegistryEntry, TargetDoc, TrackingRow, CONTROL_FILE};
pub use statements::JsonError;

/// The engine's name, as [`Ctx::engine`](mtnt::Ctx::engine) reports it.
pub const ENGINE: Engine = Engine::Custom("JSON documents");

/// A directory of JSON documents: the control document and one document per tenant.
#[derive(Clone, Debug)]
pub struct JsonBackend {
    dir: PathBuf,
}

impl JsonBackend {
    /// The engine over `dir`, which is created if missing.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(io_error("cannot create the directory", &dir))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The control document's file.
    pub fn control_file(&self) -> PathBuf {
        self.dir.join(CONTROL_FILE)
    }

    /// The file that holds (or would hold) a tenant's document.
    pub fn tenant_file(&self, tenant: &TenantName) -> PathBuf {
        self.dir.join(format!("{tenant}.json"))
    }

    /// Where a target's document lives, after checking that a tenant's storage is a valid
    /// tenant name (so that it cannot hold `/` or `..` and leave the directory).
    fn place(&self, target: Target<'_>) -> Result<Place> {
        let Some(tenant) = target.tenant() else {
            return Ok(Place::public(&self.dir));
        };
        TenantName::new(tenant.storage.as_str()).map_err(|e| {
            Error::Corrupt(format!(
                "tenant {} has an invalid storage name: {e}",
                tenant.name
            ))
        })?;
        Ok(Place::tenant(&self.dir, &tenant.storage))
    }

    /// Changes the registry entry of `tenant`, if it exists.
    fn update_entry(&self, tenant: &Tenant, change: impl FnOnce(&mut RegistryEntry)) -> Result<()> {
        update_control(&self.dir, |control| {
            if let Some(entry) = control.tenants.get_mut(tenant.name.as_str()) {
                change(entry);
            }
            Ok(())
        })
    }
}

fn record_of(name: &str, entry: &RegistryEntry) -> Result<TenantRecord> {
    let corrupt = |e: Error| Error::Corrupt(format!("tenant registry: {e}"));
    Ok(TenantRecord {
        tenant: Tenant {
            name: TenantName::new(name).map_err(corrupt)?,
            storage: entry.storage.clone(),
            server: None,
        },
        state: TenantState::parse(&entry.state)?,
        created_at: entry.created_at,
        applied_order: entry.applied_order,
        failed_order: entry.failed_order,
        last_error: entry.last_error.clone(),
    })
}

/// Whether `text` matches the SQL `LIKE` `pattern`: `%` is any run of characters, `_` one
/// character, `\` escapes the next one.
fn like(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some(('_', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some(('\\', rest)) if !rest.is_empty() => {
                t.first() == Some(&rest[0]) && go(&rest[1..], &t[1..])
            }
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    go(&p, &t)
}

#[async_trait]
impl Backend for JsonBackend {
    fn engine(&self) -> Engine {
        ENGINE
    }

    fn tenancy(&self) -> Tenancy {
        Tenancy::File
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_transactional_ddl()
    }

    fn classify(&self, error: &Error) -> ErrorClass {
        match error {
            Error::TenantExists(_) => ErrorClass::UniqueViolation,
            Error::StorageExists { .. } => ErrorClass::StorageExists,
            Error::StorageMissing { .. } => ErrorClass::StorageMissing,
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut => {
                    ErrorClass::Transient
                }
                _ => ErrorClass::Other,
            },
            Error::Other(inner) => match inner.downcast_ref::<JsonError>() {
                Some(JsonError::Transient(_)) => ErrorClass::Transient,
                _ => ErrorClass::Other,
            },
            _ => ErrorClass::Other,
        }
    }

    async fn prepare(&self) -> Result<()> {
        create_control(&self.dir)
    }

    async fn registry_state(&self) -> Result<RegistryState> {
        // This engine has one tenancy model, so its control document is its record.
        Ok(if self.dir.join(documents::CONTROL_FILE).is_file() {
            RegistryState::Recorded(Tenancy::File)
        } else {
            RegistryState::Missing {
                place: format!("directory {}", self.dir.display()),
                other_schemas: Vec::new(),
            }
        })
    }

    async fn tenant_page(
        &self,
        after: Option<&TenantName>,
        limit: usize,
    ) -> Result<Vec<TenantRecord>> {
        let control = read_control(&self.dir)?;
        control
            .tenants
            .iter()
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() > a.as_str()))
            .take(limit)
            .map(|(name, entry)| record_of(name, entry))
            .collect()
    }

    async fn tenant_count(&self) -> Result<u64> {
        Ok(read_control(&self.dir)?.tenants.len() as u64)
    }

    async fn tenant_records(&self, names: &[TenantName]) -> Result<Vec<TenantRecord>> {
        let control = read_control(&self.dir)?;
        let mut records = names
            .iter()
            .filter_map(|n| control.tenants.get_key_value(n.as_str()))
            .map(|(name, entry)| record_of(name, entry))
            .collect::<Result<Vec<_>>>()?;
        records.sort_by(|a, b| a.tenant.name.cmp(&b.tenant.name));
        records.dedup_by(|a, b| a.tenant.name == b.tenant.name);
        Ok(records)
    }

    async fn fingerprints(&self, _names: &[TenantName]) -> Result<Vec<(TenantName, String)>> {
        // Not claimed in the capabilities: mtnt opens every tenant instead.
        Ok(Vec::new())
    }

    async fn connection_budget(&self) -> Result<Option<usize>> {
        Ok(None)
    }

    async fn connect<'a>(&'a self, target: Target<'a>) -> Result<Box<dyn Connection + 'a>> {
        let place = self.place(target)?;
        Ok(Box::new(JsonConnection {
            backend: self,
            target,
            lock: None,
            session: JsonSession {
                place,
                mode: Mode::Idle,
            },
        }))
    }

    async fn register(
        &self,
        tenant: &Tenant,
        state: TenantState,
        applied_order: Option<i64>,
    ) -> Result<()> {
        update_control(&self.dir, |control| {
            if control.tenants.contains_key(tenant.name.as_str()) {
                return Err(Error::TenantExists(tenant.name.to_string()));
            }
            let entry = RegistryEntry {
                storage: tenant.storage.clone(),
                state: state.as_str().to_owned(),
                created_at: Utc::now(),
                applied_order,
                failed_order: None,
                last_error: None,
            };
            control.tenants.insert(tenant.name.to_string(), entry);
            Ok(())
        })
    }

    async fn set_state(&self, tenant: &Tenant, state: TenantState) -> Result<()> {
        self.update_entry(tenant, |entry| entry.state = state.as_str().to_owned())
    }

    async fn unregister(&self, tenant: &Tenant, only_creating: bool) -> Result<()> {
        update_control(&self.dir, |control| {
            let creating = TenantState::Creating.as_str();
            let name = tenant.name.as_str();
            if !only_creating
                || control
                    .tenants
                    .get(name)
                    .is_some_and(|e| e.state == creating)
            {
                control.tenants.remove(name);
            }
            Ok(())
        })
    }

    async fn write_registry(&self, tenant: &Tenant, row: RegistryRow<'_>) -> Result<()> {
        self.update_entry(tenant, |entry| {
            entry.applied_order = row.applied_order;
            entry.failed_order = row.failure.map(|(order, _)| order);
            entry.last_error = row.failure.map(|(_, error)| error.to_owned());
        })
    }

    async fn create_storage(&self, tenant: &Tenant) -> Result<()> {
        let path = self.place(Target::Tenant(tenant))?.document();
        match write_json(&path, &TargetDoc::default(), true) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::StorageExists {
                    tenant: tenant.name.clone(),
                    storage: tenant.storage.clone(),
                })
            }
            other => other,
        }
    }

    async fn drop_storage(&self, tenant: &Tenant) -> Result<()> {
        let path = self.place(Target::Tenant(tenant))?.document();
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error("cannot delete", &path)(e))
            }
            _ => Ok(()),
        }
    }

    async fn unregistered_storage(&self, pattern: &str) -> Result<Vec<String>> {
        let registered = read_control(&self.dir)?.tenants;
        let entries = fs::read_dir(&self.dir).map_err(io_error("cannot list", &self.dir))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("cannot list", &self.dir))?;
            let file = entry.file_name();
            let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            let taken = registered.values().any(|e| e.storage == stem);
            if !stem.starts_with("mtnt") && !taken && like(pattern, stem) {
                found.push(stem.to_owned());
            }
        }
        found.sort();
        Ok(found)
    }

    async fn describe(&self, tenants: &[Tenant]) -> Result<Vec<Result<Vec<SchemaObject>>>> {
        // A document store's schema is its collections; their documents are data.
        Ok(tenants
            .iter()
            .map(|tenant| {
                let doc = Place::tenant(&self.dir, &tenant.storage).load()?;
                let doc = doc.ok_or_else(|| Error::storage_missing(tenant))?;
                Ok(doc
                    .collections
                    .keys()
                    .map(|name| SchemaObject::new(ObjectKind::Table, name.as_str(), ""))
                    .collect())
            })
            .collect())
    }

    async fn journal_write(&self, entry: &JournalEntry, keep: usize) -> Result<()> {
        update_control(&self.dir, |control| {
            let journal = &mut control.journal;
            journal.retain(|[kind, key, ..]| !(kind == &entry.kind && key == &entry.key));
            journal.push([
                entry.kind.clone(),
                entry.key.clone(),
                entry.at.clone(),
                entry.body.clone(),
            ]);
            let of_kind = journal.iter().filter(|e| e[0] == entry.kind).count();
            let mut extra = of_kind.saturating_sub(keep);
            journal.retain(|e| {
                let drop = extra > 0 && e[0] == entry.kind;
                extra -= usize::from(drop);
                !drop
            });
            Ok(())
        })
    }

    async fn journal_read(&self, kind: &str, limit: usize) -> Result<Vec<JournalEntry>> {
        let control = read_control(&self.dir)?;
        Ok(control
            .journal
            .into_iter()
            .rev()
            .filter(|e| e[0] == kind)
            .take(limit)
            .map(|[kind, key, at, body]| JournalEntry {
                kind,
                key,
                at,
                body,
            })
            .collect())
    }

    fn leases(&self) -> Option<Arc<dyn LeaseStore>> {
        None
    }
}

/// A connection to one target: its lock, and the [`JsonSession`] migrations work with.
pub struct JsonConnection<'a> {
    backend: &'a JsonBackend,
    target: Target<'a>,
    /// The locked lock file; closing it (on drop) ends the lock.
    lock: Option<File>,
    session: JsonSession,
}

impl JsonConnection<'_> {
    /// Every write happens under the target's lock.
    fn locked(&self) -> Result<()> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(Error::Invalid(format!(
                "{} was written without its lock",
                self.target
            ))),
        }
    }

    /// The target's document as on disk; a registered tenant's must exist.
    fn load(&self) -> Result<TargetDoc> {
        self.session.place.load()?.ok_or_else(|| match self.target {
            Target::Tenant(tenant) => Error::storage_missing(tenant),
            Target::Public => Error::Corrupt("the control document vanished".to_owned()),
        })
    }
}

#[async_trait]
impl Connection for JsonConnection<'_> {
    async fn try_lock(&mut self) -> Result<bool> {
        if self.lock.is_some() {
            return Ok(true);
        }
        let path = self.session.place.lock_file();
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => {
                self.lock = Some(file);
                Ok(true)
            }
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(io_error("cannot lock", &path)(e)),
        }
    }

    async fn read(&mut self) -> Result<TargetState> {
        if let Target::Tenant(tenant) = self.target {
            if !read_control(&self.backend.dir)?
                .tenants
                .contains_key(tenant.name.as_str())
            {
                return Ok(TargetState::default());
            }
        }
        let doc = match &self.session.mode {
            Mode::Transaction(doc) => doc.clone(),
            _ => self.load()?,
        };
        Ok(TargetState {
            applied: doc
                .migrations
                .iter()
                .map(TrackingRow::to_applied)
                .collect::<Result<_>>()?,
            registered: true,
        })
    }

    async fn try_lock_and_read(&mut self) -> Result<Option<TargetState>> {
        if !self.try_lock().await? {
            return Ok(None);
        }
        self.read().await.map(Some)
    }

    // Timeouts: no statement of this engine waits for a lock, and statements are not
    // interrupted, so there is nothing to set.
    async fn begin(&mut self, _timeouts: MigrationTimeouts) -> Result<()> {
        self.locked()?;
        self.session.mode = Mode::Transaction(self.load()?);
        Ok(())
    }

    async fn set_timeouts(&mut self, _timeouts: MigrationTimeouts) -> Result<()> {
        Ok(())
    }

    async fn enter_autocommit(&mut self, _timeouts: MigrationTimeouts) -> Result<()> {
        self.locked()?;
        self.session.mode = Mode::Autocommit {
            work: self.load()?,
            dirty: false,
        };
        Ok(())
    }

    async fn leave_autocommit(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.session.mode, Mode::Idle) {
            Mode::Autocommit { work, dirty: true } => self.session.place.store(&work),
            _ => Ok(()),
        }
    }

    async fn write(&mut self, records: &[Record<'_>]) -> Result<()> {
        let Mode::Transaction(doc) = &mut self.session.mode else {
            return Err(Error::Invalid(
                "records written outside a transaction".to_owned(),
            ));
        };
        let now = Stamp::now();
        records.iter().try_for_each(|r| doc.apply(r, now))
    }

    async fn commit(
        &mut self,
        records: &[Record<'_>],
        then: Option<MigrationTimeouts>,
    ) -> Result<()> {
        self.locked()?;
        let mut doc = match std::mem::replace(&mut self.session.mode, Mode::Idle) {
            Mode::Transaction(doc) => doc,
            _ => self.load()?,
        };
        let now = Stamp::now();
        records.iter().try_for_each(|r| doc.apply(r, now))?;
        self.session.place.store(&doc)?;
        if then.is_some() {
            // The next transaction starts from what was just written.
            self.session.mode = Mode::Transaction(doc);
        }
        Ok(())
    }

    async fn rollback(&mut self) {
        if let Mode::Transaction(_) = self.session.mode {
            self.session.mode = Mode::Idle;
        }
    }

    fn discard(&mut self) {
        self.session.mode = Mode::Idle;
        self.lock = None;
    }

    fn ctx(&mut self) -> Ctx<'_> {
        Ctx::new(self.target.tenant(), CtxConn::Custom(&mut self.session))
    }

    async fn release(self: Box<Self>) {
        if let Some(lock) = &self.lock {
            let _ = lock.unlock();
        }
    }
}

/// What a migration's [`Ctx`] holds on this engine: the target's document, as the
/// migration sees it. `ctx.custom::<JsonSession>()` hands it out for typed access.
pub struct JsonSession {
    place: Place,
    mode: Mode,
}

enum Mode {
    /// No migration runs.
    Idle,
    /// In a transaction, on this snapshot.
    Transaction(TargetDoc),
    /// Outside a transaction: `work` is written after each `execute`, and at the end when
    /// typed access may have changed it.
    Autocommit { work: TargetDoc, dirty: bool },
}

impl JsonSession {
    /// The collections, in the migration's transaction (or, outside one, written with the
    /// next `execute` or when the migration returns).
    pub fn collections(&mut self) -> Result<&mut Collections> {
        match &mut self.mode {
            Mode::Transaction(doc) => Ok(&mut doc.collections),
            Mode::Autocommit { work, dirty } => {
                *dirty = true;
                Ok(&mut work.collections)
            }
            Mode::Idle => Err(Error::other(JsonError::NoMigration)),
        }
    }

    /// The documents of a collection that must exist.
    pub fn collection(&mut self, name: &str) -> Result<&mut Vec<Value>> {
        statements::collection_mut(self.collections()?, name).map_err(Error::other)
    }

    /// Runs `text`'s statements on the collections.
    fn run(&mut self, text: &str) -> Result<()> {
        let statements = statements::parse(text).map_err(Error::other)?;
        let collections = self.collections()?;
        let result = statements.iter().try_for_each(|s| s.apply(collections));
        if let Mode::Autocommit { work, dirty } = &mut self.mode {
            // What ran stays, as with DDL that commits at once.
            self.place.store(work)?;
            *dirty = false;
        }
        result.map_err(Error::other)
    }
}

impl CustomConnection for JsonSession {
    fn engine(&self) -> Engine {
        ENGINE
    }

    fn execute<'a>(&'a mut self, statements: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.run(statements) })
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_patterns() {
        use super::like;
        assert!(like("%", "") && like("ac%", "acme") && like("%me", "acme"));
        assert!(like("a_me", "acme") && !like("a_me", "acmme") && !like("acme", "Acme"));
        assert!(like("t\\_%", "t_1") && !like("t\\_%", "tx1") && !like("_%_", "a"));
    }
}
