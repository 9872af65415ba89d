use super::journal::{DriftCheck, RunRecord};
use std::time::Duration;

use serde::Serialize;

use super::hooks::HookFailure;
use super::inspect::{Condition, PlannedMigration};
use super::template::TemplateChange;
use crate::{Error, ServerName, TenantName, TenantState};

/// A tenant whose migration failed. Serialized with the error's message.
#[derive(Debug, Serialize)]
pub struct FailedTenant {
    /// The tenant.
    pub tenant: TenantName,
    /// What failed; names the migration and carries the database error.
    #[serde(serialize_with = "error_message")]
    pub error: Error,
}

/// What [`Migrator::drain_server`](crate::Migrator::drain_server) did: the tenants moved
/// (each with the server it went to) and those that stayed, with why.
#[derive(Debug, Default, Serialize)]
pub struct DrainReport {
    /// The tenants moved, each with its new server.
    pub moved: Vec<(TenantName, ServerName)>,
    /// The tenants that failed to move: each still where it was.
    pub failed: Vec<FailedTenant>,
}

/// A row of the tenant registry whose name is no valid tenant name (inserted by hand):
/// nothing is done for it, the rest of the fleet runs, and a run or `status` with one is
/// not a success.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InvalidRegistryRow {
    /// The registry table (or file), qualified.
    pub table: String,
    /// The name in the row, as stored.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl InvalidRegistryRow {
    /// From an [`Error::InvalidRegistryName`] (`None` for any other error).
    pub(crate) fn of(error: Error) -> Option<Self> {
        match error {
            Error::InvalidRegistryName {
                table,
                name,
                reason,
            } => Some(Self {
                table,
                name,
                reason,
            }),
            _ => None,
        }
    }

    /// The row as the error it is, for its message and fix.
    pub fn error(&self) -> Error {
        Error::InvalidRegistryName {
            table: self.table.clone(),
            name: self.name.clone(),
            reason: self.reason,
        }
    }
}

pub(super) fn error_message<S: serde::Serializer>(error: &Error, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(error)
}

fn seconds<S: serde::Serializer>(elapsed: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(elapsed.as_secs_f64())
}

/// What [`Migrator::migrate`](crate::Migrator::migrate) did. Serialized with each
/// failure's error message and `elapsed` in seconds.
#[derive(Debug, Default, Serialize)]
#[non_exhaustive]
pub struct MigrateReport {
    /// The run's id, which its lease and every tracking row it wrote carry (`status
    /// --run ID`); `None` only in a report no fleet run made.
    pub run_id: Option<String>,
    /// Public migrations applied.
    pub public_applied: usize,
    /// Tenants looked at.
    pub tenants_total: usize,
    /// Tenants that had migrations applied.
    pub tenants_migrated: usize,
    /// Tenants that were up to date already.
    pub tenants_current: usize,
    /// Tenant migrations applied, over all tenants.
    pub migrations_applied: usize,
    /// Tenants not started: the run stopped first (see `stopped`).
    pub tenants_skipped: usize,
    /// Their names.
    pub not_started: Vec<TenantName>,
    /// Tenants that failed, each with its error.
    pub failures: Vec<FailedTenant>,
    /// Tenants that were dropped while this run waited for them; nothing was created
    /// for them.
    pub tenants_gone: Vec<TenantName>,
    /// Tenants left `creating` (a `tenant create` under way, or one that died half-way):
    /// not migrated. Finish one by dropping it and creating it again.
    pub tenants_creating: Vec<TenantName>,
    /// The tenants that took longest (migrated or failed), with their time, slowest
    /// first: at most ten.
    pub slowest: Vec<(TenantName, Duration)>,
    /// Wall time of the run.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
    /// Why the run stopped starting tenants before the end (a failure with fail-fast, a
    /// failed canary, the spent error budget, its lease lost, its deadline passed); the
    /// tenants it did not start are counted in `tenants_skipped`.
    pub stopped: Option<String>,
    /// Warnings: the `after_tenant` and `after_run` hooks that failed. They change no
    /// outcome (a tenant's migrations stay committed, and it counts as migrated), nor
    /// [`MigrateReport::is_success`].
    pub hook_failures: Vec<HookFailure>,
    /// Registry rows whose name is no valid tenant name, of a run over the whole registry:
    /// nothing was done for them (the rest of the fleet ran), and the run is not a success.
    pub invalid_registry_rows: Vec<InvalidRegistryRow>,
    /// What bringing the tenant template up to date did after the tenants (a `migrate`
    /// to the newest migration, on an engine that creates tenants from a template):
    /// `None` when nothing changed or no template is used.
    pub template: Option<TemplateChange>,
}

impl MigrateReport {
    /// Whether every tenant asked for is up to date now.
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
            && self.tenants_skipped == 0
            && self.stopped.is_none()
            && self.invalid_registry_rows.is_empty()
    }
}

/// What [`Migrator::rollback`](crate::Migrator::rollback) reverted.
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct RollbackReport {
    /// The tenant.
    pub tenant: TenantName,
    /// `(order, name)` of each reverted migration, newest first.
    pub reverted: Vec<(i64, &'static str)>,
}

/// The migration a tenant failed at.
#[derive(Clone, Debug, Serialize)]
pub struct FailedMigration {
    /// Its order.
    pub order: i64,
    /// Its name, if this binary knows it.
    pub name: Option<&'static str>,
    /// The recorded error.
    pub error: Option<String>,
}

/// Where one tenant stands.
#[derive(Clone, Debug, Serialize)]
pub struct TenantStatus {
    /// The tenant.
    pub tenant: TenantName,
    /// The server it is on ([`DEFAULT_SERVER`](crate::DEFAULT_SERVER): the control
    /// database's own).
    pub server: ServerName,
    /// Its storage: schema, database or file stem.
    pub storage: String,
    /// Its life-cycle state.
    pub state: TenantState,
    /// Its newest applied migration.
    pub applied_order: Option<i64>,
    /// How many migrations `migrate` would apply (none where it would refuse the tenant).
    pub pending: usize,
    /// The first of them.
    pub oldest_pending: Option<PlannedMigration>,
    /// The migration it failed at, until a run gets past it.
    pub failed: Option<FailedMigration>,
    /// Where it stands.
    pub condition: Condition,
    /// Why, for a drifted, failed, out-of-order or needs-repair tenant.
    pub detail: Option<String>,
}

impl TenantStatus {
    /// Every enabled migration applied, as the code has it.
    pub fn is_current(&self) -> bool {
        self.condition == Condition::Current
    }
}

/// Where the public schema stands.
#[derive(Clone, Debug, Serialize)]
pub struct PublicStatus {
    /// Newest applied public migration.
    pub applied_order: Option<i64>,
    /// Public migrations not applied yet.
    pub pending: usize,
    /// The public migration that failed last, if it is not applied yet.
    pub failed: Option<FailedMigration>,
}

/// The whole fleet at a glance: what `status` prints.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct StatusReport {
    /// The newest enabled tenant migration's order.
    pub latest_tenant_order: Option<i64>,
    /// The public schema.
    pub public: PublicStatus,
    /// Each tenant asked for, by name.
    pub tenants: Vec<TenantStatus>,
    /// How many tenants are current.
    pub current: usize,
    /// How many are behind without a failure (out of order included).
    pub behind: usize,
    /// How many have a failed migration.
    pub failed: usize,
    /// How many have pending migrations older than their newest applied one.
    pub out_of_order: usize,
    /// How many have an applied migration whose code changed.
    pub drifted: usize,
    /// How many have a migration that started and never completed.
    pub needs_repair: usize,
    /// How many have a migration this binary does not know.
    pub ahead: usize,
    /// How many `tenant create` has not finished.
    pub creating: usize,
    /// The last schema drift check (`drift`), if one ran.
    pub last_drift: Option<DriftCheck>,
    /// The newest finished fleet run the control journal keeps.
    pub last_run: Option<RunRecord>,
    /// Registry rows whose name is no valid tenant name: not among `tenants`, and the
    /// fleet is not current while one is there.
    pub invalid_registry_rows: Vec<InvalidRegistryRow>,
    /// The servers whose tenants could not be read, because the server could not be
    /// reached (its tenants are among `tenants`, failed, with no migration named).
    pub unreachable_servers: Vec<UnreachableServer>,
}

/// A server whose tenants `status` could not read: it could not be reached.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct UnreachableServer {
    /// The server.
    pub server: ServerName,
    /// How many of its tenants could not be read.
    pub tenants: usize,
    /// Why (the first failure to connect, password scrubbed).
    pub error: String,
}

/// How many of some tenants are in each condition: a [`StatusReport`]'s, or one
/// server's ([`StatusReport::by_server`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConditionCounts {
    /// How many tenants.
    pub tenants: usize,
    /// How many are current.
    pub current: usize,
    /// How many are behind without a failure (out of order included).
    pub behind: usize,
    /// How many have a failed migration.
    pub failed: usize,
    /// How many have pending migrations older than their newest applied one.
    pub out_of_order: usize,
    /// How many have an applied migration whose code changed.
    pub drifted: usize,
    /// How many have a migration that started and never completed.
    pub needs_repair: usize,
    /// How many have a migration this binary does not know.
    pub ahead: usize,
    /// How many `tenant create` has not finished.
    pub creating: usize,
}

impl ConditionCounts {
    /// The counts of `tenants`.
    pub fn of<'a>(tenants: impl IntoIterator<Item = &'a TenantStatus>) -> Self {
        let mut counts = Self::default();
        for tenant in tenants {
            counts.tenants += 1;
            match tenant.condition {
                Condition::Current => counts.current += 1,
                Condition::Behind => counts.behind += 1,
                Condition::OutOfOrder => {
                    counts.behind += 1;
                    counts.out_of_order += 1;
                }
                Condition::Failed => counts.failed += 1,
                Condition::Drifted => counts.drifted += 1,
                Condition::NeedsRepair => counts.needs_repair += 1,
                Condition::Ahead => counts.ahead += 1,
                Condition::Creating => counts.creating += 1,
            }
        }
        counts
    }

    /// `998/1000 tenants current, 2 behind, 0 failed`, then the other conditions that
    /// any tenant is in (`, 1 drifted, 1 needs repair`).
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{}/{} tenants current, {} behind, {} failed",
            self.current, self.tenants, self.behind, self.failed
        );
        for (n, what) in [
            (self.out_of_order, "out of order"),
            (self.drifted, "drifted"),
            (self.needs_repair, "need repair"),
            (self.ahead, "ahead of this binary"),
            (self.creating, "creating"),
        ] {
            if n > 0 {
                out.push_str(&format!(", {n} {what}"));
            }
        }
        out
    }
}

/// One server's tenants in a [`StatusReport`] (`status --by-server`).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ServerStatus {
    /// The server.
    pub server: ServerName,
    /// Its tenants' conditions.
    #[serde(flatten)]
    pub counts: ConditionCounts,
}

impl StatusReport {
    /// The counts of every tenant of the report.
    pub fn counts(&self) -> ConditionCounts {
        ConditionCounts {
            tenants: self.tenants.len(),
            current: self.current,
            behind: self.behind,
            failed: self.failed,
            out_of_order: self.out_of_order,
            drifted: self.drifted,
            needs_repair: self.needs_repair,
            ahead: self.ahead,
            creating: self.creating,
        }
    }

    /// The counts of each server's tenants, by server name (the default server first).
    pub fn by_server(&self) -> Vec<ServerStatus> {
        let mut servers: Vec<&ServerName> = self.tenants.iter().map(|t| &t.server).collect();
        servers.sort_by_key(|s| (!s.is_default(), *s));
        servers.dedup();
        servers
            .into_iter()
            .map(|server| ServerStatus {
                server: server.clone(),
                counts: ConditionCounts::of(self.tenants.iter().filter(|t| &t.server == server)),
            })
            .collect()
    }

    /// `998/1000 tenants current, 2 behind, 0 failed`, then the other conditions that
    /// any tenant is in (`, 1 drifted, 1 needs repair`).
    pub fn summary(&self) -> String {
        self.counts().summary()
    }
}

impl StatusReport {
    /// Whether every tenant and the public schema are current: what `status --check`
    /// gates a deploy on.
    pub fn is_current(&self) -> bool {
        self.current == self.tenants.len()
            && self.invalid_registry_rows.is_empty()
            && self.unreachable_servers.is_empty()
            && self.public.pending == 0
            && self.public.failed.is_none()
    }
}

#[cfg(test)]
mod serialize_tests {
    use super::*;

    #[test]
    fn a_migrate_report_serializes_with_its_errors() {
        let report = MigrateReport {
            tenants_total: 1,
            failures: vec![FailedTenant {
                tenant: TenantName::new("acme").unwrap(),
                error: Error::UnknownTenant("acme".to_owned()),
            }],
            elapsed: Duration::from_millis(1500),
            ..MigrateReport::default()
        };
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["tenants_total"], 1);
        assert_eq!(value["elapsed"], 1.5);
        assert_eq!(value["failures"][0]["tenant"], "acme");
        assert_eq!(
            value["failures"][0]["error"],
            "unknown tenant \"acme\": no tenant of that name is registered"
        );
    }
}
