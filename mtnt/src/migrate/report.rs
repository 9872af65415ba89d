use std::time::Duration;

use serde::Serialize;

use crate::{Error, TenantName, TenantState};

/// A tenant whose migration failed. Serialized with the error's message.
#[derive(Debug, Serialize)]
pub struct FailedTenant {
    /// The tenant.
    pub tenant: TenantName,
    /// What failed; names the migration and carries the database error.
    #[serde(serialize_with = "error_message")]
    pub error: Error,
}

fn error_message<S: serde::Serializer>(error: &Error, s: S) -> Result<S::Ok, S::Error> {
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
    /// Tenants not started because of `fail_fast`.
    pub tenants_skipped: usize,
    /// Tenants that failed, each with its error.
    pub failures: Vec<FailedTenant>,
    /// Wall time of the run.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
    /// Why the run stopped starting tenants before the end (its lease was lost, or its
    /// deadline passed); the tenants it did not start are counted in `tenants_skipped`.
    pub stopped: Option<String>,
}

impl MigrateReport {
    /// Whether every tenant asked for is up to date now.
    pub fn is_success(&self) -> bool {
        self.failures.is_empty() && self.tenants_skipped == 0 && self.stopped.is_none()
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
    /// Its schema (database, file).
    pub schema: String,
    /// Its life-cycle state.
    pub state: TenantState,
    /// Its newest applied migration.
    pub applied_order: Option<i64>,
    /// How many enabled tenant migrations are newer than that.
    pub pending: usize,
    /// The migration it failed at, until a run gets past it.
    pub failed: Option<FailedMigration>,
}

impl TenantStatus {
    /// Up to date and not failed.
    pub fn is_current(&self) -> bool {
        self.pending == 0 && self.failed.is_none()
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
    /// How many are behind without a failure.
    pub behind: usize,
    /// How many have a failed migration.
    pub failed: usize,
}

impl StatusReport {
    /// `998/1000 tenants current, 2 behind, 0 failed`.
    pub fn summary(&self) -> String {
        format!(
            "{}/{} tenants current, {} behind, {} failed",
            self.current,
            self.tenants.len(),
            self.behind,
            self.failed
        )
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
