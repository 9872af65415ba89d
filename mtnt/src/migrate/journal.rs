//! What mtnt keeps of its own work in the control journal ([`Backend::journal_write`]):
//! each finished fleet run (the run history) and the last schema drift check, so that
//! `status` and the fleet report show them after the runner is gone.

use serde::{Deserialize, Serialize};

use super::drift::DriftReport;
use super::report::MigrateReport;
use super::template::TemplateChange;
use crate::backend::{Backend, JournalEntry, RunIdentity};
use crate::Result;

/// The kind of a finished run's entry.
const RUN: &str = "run";
/// The kind of the drift check's entry.
const DRIFT: &str = "drift";

/// How many finished runs the journal keeps unless told otherwise
/// ([`MigratorBuilder::run_history`](crate::MigratorBuilder::run_history)).
pub const DEFAULT_RUN_HISTORY: usize = 100;

/// A finished fleet run, as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunRecord {
    /// Its id (`status --run ID` shows what it did per tenant).
    pub run_id: String,
    /// `migrate`, `rollback` or `exec`.
    pub command: String,
    /// The machine it ran on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When it finished.
    pub finished_at: chrono::DateTime<chrono::Utc>,
    /// The options that shape a run: concurrency, the tenants named, the rollout.
    pub options: String,
    /// Tenants looked at.
    pub tenants: usize,
    /// Tenants it changed.
    pub changed: usize,
    /// Tenants current already.
    pub current: usize,
    /// Tenants that failed.
    pub failed: usize,
    /// Tenants not started (the run stopped first).
    pub not_started: usize,
    /// Migrations applied or reverted (tenants a statement ran in, for `exec`).
    pub migrations: usize,
    /// Why it stopped early, if it did.
    pub stopped: Option<String>,
    /// The slowest tenants with their time in milliseconds, slowest first.
    pub slowest: Vec<(String, u64)>,
}

impl RunRecord {
    /// How long it ran.
    pub fn duration(&self) -> std::time::Duration {
        (self.finished_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }

    /// Tenants per second over the whole run.
    pub fn tenants_per_second(&self) -> f64 {
        self.tenants as f64 / self.duration().as_secs_f64().max(0.001)
    }
}

/// The last schema drift check, as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DriftCheck {
    /// When it ran.
    pub checked_at: chrono::DateTime<chrono::Utc>,
    /// Tenants compared.
    pub tenants: usize,
    /// Tenants whose schema differed from the others at their order, by name.
    pub drifted: Vec<String>,
    /// Tenants whose schema could not be read.
    pub unreadable: usize,
}

fn stamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Keeps `report` of the run `me` (started at `started_at`) among the newest `keep` runs.
pub(crate) async fn record_run(
    backend: &dyn Backend,
    me: &RunIdentity,
    started_at: chrono::DateTime<chrono::Utc>,
    options: String,
    report: &MigrateReport,
    keep: usize,
) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let finished_at = chrono::Utc::now();
    let record = RunRecord {
        run_id: me.run_id.clone(),
        command: me.command.clone(),
        host: me.host.clone(),
        pid: me.pid,
        started_at,
        finished_at,
        options,
        tenants: report.tenants_total,
        changed: report.tenants_migrated,
        current: report.tenants_current,
        failed: report.failures.len() + report.invalid_registry_rows.len(),
        not_started: report.tenants_skipped,
        migrations: report.migrations_applied,
        stopped: report.stopped.clone(),
        slowest: report
            .slowest
            .iter()
            .map(|(t, d)| (t.to_string(), d.as_millis() as u64))
            .collect(),
    };
    let entry = JournalEntry {
        kind: RUN.to_owned(),
        key: record.run_id.clone(),
        at: stamp(finished_at),
        body: serde_json::to_string(&record).expect("serializable"),
    };
    backend.journal_write(&entry, keep).await
}

/// The newest `limit` finished runs, newest first; an entry this binary cannot read is
/// left out.
pub(crate) async fn runs(backend: &dyn Backend, limit: usize) -> Result<Vec<RunRecord>> {
    Ok(backend
        .journal_read(RUN, limit)
        .await?
        .iter()
        .filter_map(|e| serde_json::from_str(&e.body).ok())
        .collect())
}

/// Keeps the outcome of `report` as the last drift check.
pub(crate) async fn record_drift(backend: &dyn Backend, report: &DriftReport) -> Result<()> {
    let check = DriftCheck {
        checked_at: report.checked_at,
        tenants: report.tenants,
        drifted: report
            .orders
            .iter()
            .flat_map(|o| o.drifted.iter().map(|d| d.tenant.to_string()))
            .collect(),
        unreadable: report.unreadable.len(),
    };
    let entry = JournalEntry {
        kind: DRIFT.to_owned(),
        key: "last".to_owned(),
        at: stamp(report.checked_at),
        body: serde_json::to_string(&check).expect("serializable"),
    };
    backend.journal_write(&entry, 1).await
}

/// The last drift check, if one ran.
pub(crate) async fn last_drift(backend: &dyn Backend) -> Result<Option<DriftCheck>> {
    Ok(backend
        .journal_read(DRIFT, 1)
        .await?
        .first()
        .and_then(|e| serde_json::from_str(&e.body).ok()))
}

/// The kind of the entry saying why the template (or the spares) cannot be used.
const TEMPLATE: &str = "template";

/// Why the template or the spares cannot serve the migrations whose
/// [`fingerprint`](crate::fingerprint) is `migrations` (a migration asks for its tenant,
/// say): with those migrations, `tenant create` replays without building them again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TenantSpecific {
    /// The fingerprint of the enabled tenant migrations at the time.
    pub(crate) migrations: String,
    /// Why (a [`TemplateChange::Unusable`] or the like).
    pub(crate) why: TemplateChange,
}

/// Keeps `found` as the only template entry.
pub(crate) async fn record_tenant_specific(
    backend: &dyn Backend,
    found: &TenantSpecific,
) -> Result<()> {
    let entry = JournalEntry {
        kind: TEMPLATE.to_owned(),
        key: "unusable".to_owned(),
        at: stamp(chrono::Utc::now()),
        body: serde_json::to_string(found).expect("serializable"),
    };
    backend.journal_write(&entry, 1).await
}

/// The last migration found to ask for its tenant, if any.
pub(crate) async fn tenant_specific(backend: &dyn Backend) -> Result<Option<TenantSpecific>> {
    Ok(backend
        .journal_read(TEMPLATE, 1)
        .await?
        .first()
        .and_then(|e| serde_json::from_str(&e.body).ok()))
}
