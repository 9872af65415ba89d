//! What one fleet run did, read back from the tracking rows that carry its id (`status
//! --run ID`).

use serde::Serialize;

use crate::{AppliedMigration, MigrationStatus, TenantName};

/// One tenant's tracking rows that a run wrote last.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RunTenant {
    /// The tenant.
    pub tenant: TenantName,
    /// The migrations the run applied (their rows are `completed`), by order.
    pub applied: Vec<AppliedMigration>,
    /// The migrations the run reverted (their rows are `pending`), by order.
    pub reverted: Vec<AppliedMigration>,
    /// The migrations that failed in the run: `failed` (rolled back), or `started` (it
    /// failed or was interrupted outside a transaction), with the error where recorded.
    pub failed: Vec<AppliedMigration>,
}

/// What the fleet run `run_id` did, per tenant: the tracking rows whose last write was
/// the run's (a later run that writes a row again takes it over).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct RunReport {
    /// The run.
    pub run_id: String,
    /// The tenants with rows of the run, by name.
    pub tenants: Vec<RunTenant>,
}

impl RunReport {
    /// Groups `rows` (by tenant, then order) per tenant.
    pub(crate) fn new(run_id: &str, mut rows: Vec<(TenantName, AppliedMigration)>) -> Self {
        rows.sort_by(|a, b| (&a.0, a.1.order).cmp(&(&b.0, b.1.order)));
        let mut tenants: Vec<RunTenant> = Vec::new();
        for (tenant, row) in rows {
            if tenants.last().is_none_or(|t| t.tenant != tenant) {
                tenants.push(RunTenant {
                    tenant,
                    applied: Vec::new(),
                    reverted: Vec::new(),
                    failed: Vec::new(),
                });
            }
            let entry = tenants.last_mut().expect("pushed above");
            match row.status {
                MigrationStatus::Completed => entry.applied.push(row),
                MigrationStatus::Pending => entry.reverted.push(row),
                MigrationStatus::Failed | MigrationStatus::Started => entry.failed.push(row),
            }
        }
        RunReport {
            run_id: run_id.to_owned(),
            tenants,
        }
    }

    /// `run ID: 3 tenants, 12 migrations applied, 1 failed` (and reverted, where any).
    pub fn summary(&self) -> String {
        let sum = |f: fn(&RunTenant) -> usize| self.tenants.iter().map(f).sum::<usize>();
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut out = format!(
            "run {}: {}, {} applied",
            self.run_id,
            plural(self.tenants.len(), "tenant", "tenants"),
            plural(sum(|t| t.applied.len()), "migration", "migrations"),
        );
        let reverted = sum(|t| t.reverted.len());
        if reverted > 0 {
            out.push_str(&format!(", {reverted} reverted"));
        }
        out.push_str(&format!(", {} failed", sum(|t| t.failed.len())));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(order: i64, status: MigrationStatus) -> AppliedMigration {
        AppliedMigration {
            order,
            name: format!("m{order}"),
            checksum: String::new(),
            status,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            error: None,
        }
    }

    #[test]
    fn rows_are_grouped_per_tenant_by_what_the_run_did() {
        let t = |n: &str| TenantName::new(n).unwrap();
        let report = RunReport::new(
            "r1",
            vec![
                (t("beta"), row(2, MigrationStatus::Failed)),
                (t("acme"), row(2, MigrationStatus::Completed)),
                (t("acme"), row(1, MigrationStatus::Completed)),
                (t("beta"), row(1, MigrationStatus::Completed)),
                (t("gamma"), row(3, MigrationStatus::Pending)),
                (t("gamma"), row(4, MigrationStatus::Started)),
            ],
        );
        let orders = |rows: &[AppliedMigration]| rows.iter().map(|r| r.order).collect::<Vec<_>>();
        let shown: Vec<_> = report
            .tenants
            .iter()
            .map(|t| {
                (
                    t.tenant.to_string(),
                    orders(&t.applied),
                    orders(&t.reverted),
                    orders(&t.failed),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("acme".to_owned(), vec![1, 2], vec![], vec![]),
                ("beta".to_owned(), vec![1], vec![], vec![2]),
                ("gamma".to_owned(), vec![], vec![3], vec![4]),
            ]
        );
        assert_eq!(
            report.summary(),
            "run r1: 3 tenants, 3 migrations applied, 1 reverted, 2 failed"
        );
        assert_eq!(
            RunReport::new("r2", Vec::new()).summary(),
            "run r2: 0 tenants, 0 migrations applied, 0 failed"
        );
    }
}
