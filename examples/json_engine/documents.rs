//! The files of the JSON engine: the documents, how they are written so that a crash never
//! leaves half of one, the lock files, and how mtnt's bookkeeping [`Record`]s change the
//! tracking rows of a document.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use mtnt::{AppliedMigration, Direction, Error, Migration, MigrationStatus, Record, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The control document: the tenant registry, the public tracking rows and the public
/// collections. Tenant names never start with `mtnt`, so no tenant document is named so.
pub const CONTROL_FILE: &str = "mtnt_control.json";
/// The public target's lock, held by a run for as long as it works on the public target.
const CONTROL_LOCK: &str = "mtnt_control.lock";
/// Held for one read-modify-write of the control document (never across an `.await`),
/// so that registry writes and public commits do not overwrite each other.
const CONTROL_WRITE_LOCK: &str = "mtnt_control.write.lock";

/// A document's collections: name to documents (JSON objects).
pub type Collections = BTreeMap<String, Vec<Value>>;

/// What one target holds: its collections and its tracking rows (ordered by order).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TargetDoc {
    /// The data migrations make.
    #[serde(default)]
    pub collections: Collections,
    /// mtnt's tracking rows. A document made without mtnt has none.
    #[serde(default)]
    pub migrations: Vec<TrackingRow>,
}

/// The control document.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ControlDoc {
    /// The tenant registry, by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, RegistryEntry>,
    /// The public target.
    #[serde(flatten)]
    pub public: TargetDoc,
    /// mtnt's journal: `[kind, key, at, body]`, oldest first.
    #[serde(default)]
    pub journal: Vec<[String; 4]>,
}

/// One tenant of the registry. `applied_order`, `failed_order` and `last_error` are a cache
/// of the tenant document's tracking rows, written after the tenant document commits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// The stem of the tenant's document.
    pub storage: String,
    /// `active` or `creating`.
    pub state: String,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// Its newest completed migration.
    pub applied_order: Option<i64>,
    /// The migration that failed last, until a run gets past it.
    pub failed_order: Option<i64>,
    /// That failure's error.
    pub last_error: Option<String>,
}

/// One tracking row, as mtnt's SQL engines keep them in `mtnt_migrations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackingRow {
    /// The migration's order.
    pub order: i64,
    /// Its name when recorded.
    pub name: String,
    /// Its checksum when recorded.
    pub checksum: String,
    /// `pending`, `started`, `failed` or `completed`.
    pub status: String,
    /// When the last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// How long it took.
    pub duration_ms: Option<i64>,
    /// The error of the last failed attempt.
    pub error: Option<String>,
}

impl TrackingRow {
    fn new(migration: &Migration, status: MigrationStatus) -> Self {
        Self {
            order: migration.order(),
            name: migration.name().to_owned(),
            checksum: migration.checksum().to_owned(),
            status: status.as_str().to_owned(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            error: None,
        }
    }

    /// The row as mtnt reads it.
    pub fn to_applied(&self) -> Result<AppliedMigration> {
        Ok(AppliedMigration {
            order: self.order,
            name: self.name.clone(),
            checksum: self.checksum.clone(),
            status: MigrationStatus::parse(&self.status)?,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
            error: self.error.clone(),
        })
    }
}

/// The moment a commit writes its records, on both clocks.
#[derive(Clone, Copy, Debug)]
pub struct Stamp(DateTime<Utc>, Instant);

impl Stamp {
    /// Now.
    pub fn now() -> Self {
        Self(Utc::now(), Instant::now())
    }
}

impl TargetDoc {
    fn row(&mut self, order: i64) -> Option<&mut TrackingRow> {
        self.migrations.iter_mut().find(|r| r.order == order)
    }

    /// Inserts `row`, or replaces the row of its order; rows stay ordered.
    fn put(&mut self, row: TrackingRow) {
        match self
            .migrations
            .binary_search_by_key(&row.order, |r| r.order)
        {
            Ok(i) => self.migrations[i] = row,
            Err(i) => self.migrations.insert(i, row),
        }
    }

    /// Applies one bookkeeping record, written at `now`.
    pub fn apply(&mut self, record: &Record<'_>, now: Stamp) -> Result<()> {
        let Stamp(now, clock) = now;
        // A `Timing` holds instants: each becomes a timestamp as far back from `now` as it
        // lies before `clock`, the same instant, so that the timestamps of the migrations
        // of one commit keep their order.
        let at = |instant: Instant| {
            now - TimeDelta::from_std(clock.saturating_duration_since(instant))
                .unwrap_or(TimeDelta::zero())
        };
        match *record {
            Record::Started {
                migration,
                direction: Direction::Up,
            } => {
                let mut row = TrackingRow::new(migration, MigrationStatus::Started);
                row.started_at = Some(now);
                self.put(row);
            }
            Record::Started {
                migration,
                direction: Direction::Down,
            } => {
                if let Some(row) = self.row(migration.order()) {
                    row.status = MigrationStatus::Started.as_str().to_owned();
                    row.error = None;
                }
            }
            Record::Finished {
                migration,
                direction,
                timing,
            } => {
                let status = match direction {
                    Direction::Up => MigrationStatus::Completed,
                    Direction::Down => MigrationStatus::Pending,
                };
                let mut row = TrackingRow::new(migration, status);
                row.started_at = Some(at(timing.started));
                row.finished_at = Some(at(timing.finished));
                row.duration_ms = Some(timing.duration().as_millis() as i64);
                self.put(row);
            }
            Record::Failed {
                migration,
                status,
                error,
                timing,
            } => {
                let finish = |row: &mut TrackingRow| {
                    row.status = status.as_str().to_owned();
                    row.finished_at = Some(at(timing.finished));
                    row.duration_ms = Some(timing.duration().as_millis() as i64);
                    row.error = Some(error.to_owned());
                };
                match self.row(migration.order()) {
                    // What completed is never overwritten by a failure.
                    Some(row) if row.status == MigrationStatus::Completed.as_str() => {}
                    Some(row) => finish(row),
                    None => {
                        let mut row = TrackingRow::new(migration, status);
                        row.started_at = Some(at(timing.started));
                        finish(&mut row);
                        self.put(row);
                    }
                }
            }
            Record::Marked { migration, status } => {
                let mut row = TrackingRow::new(migration, status);
                row.started_at = Some(now);
                row.finished_at = Some(now);
                row.duration_ms = Some(0);
                self.put(row);
            }
            Record::Checksum { order, checksum } => {
                if let Some(row) = self.row(order) {
                    if row.status == MigrationStatus::Completed.as_str() {
                        row.checksum = checksum.to_owned();
                    }
                }
            }
            // Registry and storage records come only with capabilities this engine does not
            // claim (the registry in the target's transaction, transactional storage).
            ref other => {
                return Err(Error::Invalid(format!(
                    "the JSON engine keeps its registry outside the target documents and cannot write {other:?}"
                )))
            }
        }
        Ok(())
    }
}

/// Where a target's document lives: the control document (public target) or a tenant's.
#[derive(Clone, Debug)]
pub struct Place {
    dir: PathBuf,
    /// The tenant document's stem; `None` for the public target.
    storage: Option<String>,
}

impl Place {
    /// The public target, in the control document of `dir`.
    pub fn public(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            storage: None,
        }
    }

    /// A tenant's document, `<storage>.json` in `dir`; `storage` is checked by the caller.
    pub fn tenant(dir: &Path, storage: &str) -> Self {
        Self {
            dir: dir.to_owned(),
            storage: Some(storage.to_owned()),
        }
    }

    /// The document's file.
    pub fn document(&self) -> PathBuf {
        match &self.storage {
            None => self.dir.join(CONTROL_FILE),
            Some(stem) => self.dir.join(format!("{stem}.json")),
        }
    }

    /// The target's lock file. Lock files are never deleted: a waiter that opened one
    /// before it was deleted would lock the deleted file, while a newcomer locks a new one.
    pub fn lock_file(&self) -> PathBuf {
        match &self.storage {
            None => self.dir.join(CONTROL_LOCK),
            Some(stem) => self.dir.join(format!("{stem}.lock")),
        }
    }

    /// The target's document as on disk; `None` for a tenant whose document is missing.
    pub fn load(&self) -> Result<Option<TargetDoc>> {
        match &self.storage {
            None => Ok(Some(read_control(&self.dir)?.public)),
            Some(_) => read_json(&self.document()),
        }
    }

    /// Replaces the target's document on disk with `doc`, atomically. The public target
    /// shares its file with the registry, which other runs write meanwhile: its part is
    /// swapped in under the control document's write lock.
    pub fn store(&self, doc: &TargetDoc) -> Result<()> {
        match &self.storage {
            None => update_control(&self.dir, |control| {
                control.public = doc.clone();
                Ok(())
            }),
            Some(_) => write_json(&self.document(), doc, false),
        }
    }
}

/// The `Error::Io` of `action` on `path`.
pub fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// A JSON file; `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt(format!("{} is no valid document: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("cannot read", path)(e)),
    }
}

/// Writes `value` to `path` as a whole or not at all: into a temporary file, flushed to
/// disk, then renamed over `path` (or, with `create_new`, linked to `path`, which fails
/// with `AlreadyExists` when it exists), and the directory flushed. A crash leaves the old
/// file or the new one, and at worst a stray `*.json.tmp-*` file, which nothing reads.
pub fn write_json(path: &Path, value: &impl Serialize, create_new: bool) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let file = File::create(&tmp).map_err(io_error("cannot create", &tmp))?;
        let mut out = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut out, value).map_err(Error::other)?;
        out.write_all(b"\n")
            .map_err(io_error("cannot write", &tmp))?;
        let file = out
            .into_inner()
            .map_err(|e| io_error("cannot write", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io_error("cannot flush", &tmp))?;
        if create_new {
            fs::hard_link(&tmp, path).map_err(io_error("cannot create", path))?;
        } else {
            fs::rename(&tmp, path).map_err(io_error("cannot replace", path))?;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("cannot flush", dir))
    })();
    // After a rename there is nothing left to remove; after a link, or a failure, there is.
    let _ = fs::remove_file(&tmp);
    result
}

/// Opens (creating it if missing) a lock file.
pub fn open_lock_file(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_error("cannot open the lock file", path))
}

/// The control document of `dir` (empty when it does not exist yet).
pub fn read_control(dir: &Path) -> Result<ControlDoc> {
    Ok(read_json(&dir.join(CONTROL_FILE))?.unwrap_or_default())
}

/// Creates the control document of `dir` if it does not exist.
pub fn create_control(dir: &Path) -> Result<()> {
    match write_json(&dir.join(CONTROL_FILE), &ControlDoc::default(), true) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(())
        }
        other => other,
    }
}

/// Reads, changes and writes the control document under its write lock. The lock is
/// waited for on this thread: every holder holds it for one read-modify-write of a small
/// file, never across an `.await`.
pub fn update_control<T>(
    dir: &Path,
    change: impl FnOnce(&mut ControlDoc) -> Result<T>,
) -> Result<T> {
    let lock_path = dir.join(CONTROL_WRITE_LOCK);
    let lock = open_lock_file(&lock_path)?;
    lock.lock().map_err(io_error("cannot lock", &lock_path))?;
    let result = (|| {
        let mut control = read_control(dir)?;
        let value = change(&mut control)?;
        write_json(&dir.join(CONTROL_FILE), &control, false)?;
        Ok(value)
    })();
    let _ = lock.unlock();
    result
}
