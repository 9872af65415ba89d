//! `--format json`: a run's events as JSON Lines on stdout, one object per line, for a
//! deploy pipeline or a log shipper to read while the run goes (the README's "Events"
//! table is the schema). Every event has `"v"` (the schema's version, 1), `"event"` and
//! `"at"` (RFC 3339, UTC); the human output goes to stderr meanwhile.
//!
//! [`JsonEvents`] is a [`Progress`]: the protocol reports through it as through the
//! progress bar, which it drives too (on stderr).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::hints::cli_fix;
use super::say;
use crate::{Error, MigrateReport, Migration, Progress, TenantName};

/// The version of the event schema: a field may be added within a version, never
/// removed or changed.
pub(crate) const SCHEMA_VERSION: u64 = 1;

/// The run's events as JSON Lines on stdout, around an inner progress display.
pub(crate) struct JsonEvents<'a> {
    inner: &'a dyn Progress,
    /// `migrate`, `rollback`, `exec`, `tenant create`, `tenant adopt`.
    command: &'static str,
    /// `postgres-schema`, `postgres-database`, `mysql-database`, `sqlite-file`.
    model: String,
    /// The options of the command, as given.
    options: Value,
    /// The fleet run's id, once it has one (`Progress::run_id`).
    run_id: Mutex<Option<String>>,
    /// Whether `run_started` is out.
    started: AtomicBool,
    clock: Instant,
}

/// Milliseconds, as the events count durations.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The SQLSTATE of the database error inside `error`, where there is one (PostgreSQL and
/// MySQL report one; SQLite's numeric result codes are not SQLSTATEs).
pub(crate) fn sqlstate(error: &Error) -> Option<String> {
    match error {
        Error::Sql(sqlx::Error::Database(db)) => db
            .code()
            .map(|c| c.into_owned())
            .filter(|c| c.len() == 5 && c.chars().all(|c| c.is_ascii_alphanumeric())),
        Error::Migration { source, .. } | Error::GaveUp { source, .. } => sqlstate(source),
        _ => None,
    }
}

/// The migration an error names (`2024_01_01_0003 add_index`), if it names one.
fn failed_migration(error: &Error) -> Option<&str> {
    match error {
        Error::Migration { migration, .. } => Some(migration),
        Error::GaveUp { source, .. } => failed_migration(source),
        _ => None,
    }
}

/// A failure's fields: the error (its password scrubbed, as everything printed), the
/// migration it names, its SQLSTATE, and the fix the CLI would print.
pub(crate) fn error_fields(error: &Error) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("error".into(), say::clean(&error.to_string()).into());
    fields.insert("migration".into(), failed_migration(error).into());
    fields.insert("sqlstate".into(), sqlstate(error).into());
    fields.insert(
        "fix".into(),
        cli_fix(error).map(|f| say::clean(&f).into_owned()).into(),
    );
    fields
}

impl<'a> JsonEvents<'a> {
    /// Events of `command` (with `options`) on `model`, driving `inner` too. Sends the
    /// human output to stderr from now on.
    pub(crate) fn new(
        inner: &'a dyn Progress,
        command: &'static str,
        model: String,
        options: Value,
    ) -> Self {
        say::human_to_stderr();
        Self {
            inner,
            command,
            model,
            options,
            run_id: Mutex::new(None),
            started: AtomicBool::new(false),
            clock: Instant::now(),
        }
    }

    fn run_id(&self) -> Option<String> {
        self.run_id.lock().ok().and_then(|id| id.clone())
    }

    /// Prints one event: `v`, `event`, `at`, then `fields`. The first event of a run is
    /// always `run_started`.
    fn emit(&self, event: &str, fields: Map<String, Value>) {
        if event != "run_started" {
            self.announce();
        }
        let mut object = Map::new();
        object.insert("v".into(), SCHEMA_VERSION.into());
        object.insert("event".into(), event.into());
        object.insert(
            "at".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into(),
        );
        object.extend(fields);
        say::event(&Value::Object(object).to_string());
    }

    /// `run_started`, unless it is out already: the command, the run id (`null` for the
    /// commands that are no fleet run, and for a fleet run that failed before it had
    /// one), who runs it, the model and the options.
    pub(crate) fn announce(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let fields = json!({
            "command": self.command,
            "run_id": self.run_id(),
            "runner": {
                "host": crate::backend::host_name(),
                "pid": std::process::id(),
                "mtnt_version": env!("CARGO_PKG_VERSION"),
            },
            "model": self.model,
            "options": self.options,
        });
        self.emit("run_started", object(fields));
    }

    /// `tenant_finished` or `tenant_failed` of one tenant.
    fn tenant_outcome(&self, tenant: &TenantName, outcome: Result<usize, &Error>) {
        match outcome {
            Ok(n) => self.emit(
                "tenant_finished",
                object(json!({ "tenant": tenant.as_str(), "migrations": n })),
            ),
            Err(error) => {
                let mut fields = object(json!({ "tenant": tenant.as_str() }));
                fields.extend(error_fields(error));
                self.emit("tenant_failed", fields);
            }
        }
    }

    /// `run_finished` of a fleet run: its counts and duration, or the error that ended
    /// it before its tenants.
    pub(crate) fn fleet_finished(&self, result: Result<&MigrateReport, &Error>) {
        let fields = match result {
            Ok(report) => object(json!({
                "ok": report.is_success(),
                "tenants": {
                    "total": report.tenants_total,
                    "migrated": report.tenants_migrated,
                    "current": report.tenants_current,
                    "failed": report.failures.len(),
                    "not_started": report.tenants_skipped,
                    "creating": report.tenants_creating.len(),
                    "gone": report.tenants_gone.len(),
                },
                "migrations": report.migrations_applied,
                "public_migrations": report.public_applied,
                "stopped": report.stopped.as_deref().map(|s| say::clean(s).into_owned()),
                "hook_failures": report.hook_failures.len(),
                "invalid_registry_rows": report.invalid_registry_rows.len(),
            })),
            Err(error) => {
                let mut fields = object(json!({ "ok": false }));
                fields.extend(error_fields(error));
                fields
            }
        };
        self.finished(fields);
    }

    /// `run_finished` with `fields` (`ok` and the counts), the run id and the duration.
    pub(crate) fn finished(&self, mut fields: Map<String, Value>) {
        fields.insert("run_id".into(), self.run_id().into());
        fields.insert("duration_ms".into(), millis(self.clock.elapsed()).into());
        self.emit("run_finished", fields);
    }
}

/// No display besides the events (`tenant create` has no progress bar).
pub(crate) struct NoDisplay;

impl Progress for NoDisplay {}

/// The fields of a `json!({...})` object.
pub(crate) fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl Progress for JsonEvents<'_> {
    fn run_id(&self, run_id: &str) {
        if let Ok(mut id) = self.run_id.lock() {
            *id = Some(run_id.to_owned());
        }
        self.announce();
        self.inner.run_id(run_id);
    }

    fn start(&self, total: u64) {
        self.inner.start(total);
    }

    fn tenant_started(&self, tenant: &TenantName) {
        self.emit(
            "tenant_started",
            object(json!({ "tenant": tenant.as_str() })),
        );
        self.inner.tenant_started(tenant);
    }

    fn migration_done(
        &self,
        tenant: Option<&TenantName>,
        migration: &Migration,
        reverted: bool,
        elapsed: Duration,
    ) {
        self.emit(
            if reverted {
                "migration_reverted"
            } else {
                "migration_applied"
            },
            object(json!({
                "tenant": tenant.map(TenantName::as_str),
                "order": migration.order(),
                "name": migration.name(),
                "duration_ms": millis(elapsed),
            })),
        );
        self.inner
            .migration_done(tenant, migration, reverted, elapsed);
    }

    fn tenant_done(&self, tenant: &TenantName, outcome: Result<usize, &Error>) {
        self.tenant_outcome(tenant, outcome);
        self.inner.tenant_done(tenant, outcome);
    }

    fn wave(&self, number: usize, waves: usize, tenants: usize) {
        self.emit(
            "wave_started",
            object(json!({
                "wave": number,
                "waves": waves,
                "canary": number == 0,
                "tenants": tenants,
            })),
        );
        self.inner.wave(number, waves, tenants);
    }

    fn retrying(&self, target: &str, attempt: u32, attempts: u32, error: &Error, pause: Duration) {
        let mut fields = object(json!({
            "target": target,
            "attempt": attempt,
            "attempts": attempts,
            "pause_ms": millis(pause),
        }));
        fields.extend(error_fields(error));
        self.emit("retrying", fields);
        self.inner.retrying(target, attempt, attempts, error, pause);
    }

    fn finish(&self) {
        self.inner.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlstate_is_found_through_the_wrappers_and_only_where_there_is_one() {
        let plain = Error::Invalid("no".to_owned());
        assert_eq!(sqlstate(&plain), None);
        let wrapped = Error::GaveUp {
            attempts: 2,
            source: Box::new(Error::Migration {
                target: "tenant acme".to_owned(),
                migration: "2024_01_01_0003 add_index".to_owned(),
                reverting: false,
                source: Box::new(plain),
            }),
        };
        assert_eq!(
            failed_migration(&wrapped),
            Some("2024_01_01_0003 add_index")
        );
        assert_eq!(sqlstate(&wrapped), None);
    }
}
