//! Where each tenant stands, for `status` (and `plan`), without changing anything.
//!
//! The registry is read in bulk. A tenant's row proves its state only when the engine
//! keeps fingerprints and the row's fingerprint is exactly that of the code's enabled
//! migrations up to its applied order (so no migration below it is missing, none has
//! changed, none is unknown), with no recorded failure. Every other tenant has its tracking
//! rows read — a connection, no lock, no write — and is classified from them the way a run
//! would plan it: so `status` never calls a tenant current that `migrate` would change or
//! refuse.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use super::fingerprint::fingerprint;
use super::plan::plan_up;
use crate::backend::{Backend, Target};
use crate::migration::format_order;
use crate::{
    AppliedMigration, Error, Migration, MigrationSet, MigrationStatus, Result, Scope, ServerName,
    TenantRecord,
};

/// Where a tenant (or the public schema) stands against this binary's migrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Condition {
    /// Every enabled migration is applied, as the code has it.
    Current,
    /// Migrations are pending, all newer than the newest applied one.
    Behind,
    /// Pending migrations include one older than the newest applied one (merged from
    /// another branch); `migrate` applies it.
    OutOfOrder,
    /// A migration failed last time; the next run tries it again.
    Failed,
    /// An applied migration's code changed since: `migrate` refuses the tenant until the
    /// edit is reverted or its checksum repaired.
    Drifted,
    /// A migration started and never completed outside a transaction (or on an engine
    /// that commits DDL at once): `migrate` refuses the tenant until it is repaired.
    NeedsRepair,
    /// The tenant has a migration applied that this binary does not know.
    Ahead,
    /// `tenant create` has not finished it.
    Creating,
}

impl Condition {
    /// The word `status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Current => "current",
            Condition::Behind => "behind",
            Condition::OutOfOrder => "out of order",
            Condition::Failed => "failed",
            Condition::Drifted => "drifted",
            Condition::NeedsRepair => "needs repair",
            Condition::Ahead => "ahead of this binary",
            Condition::Creating => "creating",
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One tenant's standing: its condition, what a run would apply, and why.
#[derive(Clone, Debug)]
pub(crate) struct Standing {
    pub(crate) condition: Condition,
    /// What `migrate` would apply, in order (empty where it would refuse).
    pub(crate) pending: Vec<&'static Migration>,
    /// The reason, for the conditions that have one (the refusal's message).
    pub(crate) detail: Option<String>,
    /// The migration a failed tenant failed at.
    pub(crate) failed_order: Option<i64>,
    /// Why the tenant's server could not be reached, when that is why it could not be
    /// read.
    pub(crate) unreachable: Option<String>,
}

/// Classifies a target from its tracking rows, as a run would plan it.
pub(crate) fn classify_rows(
    target: Target<'_>,
    rows: &[AppliedMigration],
    set: &MigrationSet,
    scope: Scope,
    recorded_failure: Option<i64>,
    to: Option<i64>,
) -> Standing {
    let standing = |condition, pending, detail: Option<String>| Standing {
        condition,
        pending,
        detail,
        failed_order: None,
        unreachable: None,
    };
    match plan_up(target, rows, set, scope, to) {
        Err(e @ Error::ChecksumMismatch { .. }) => {
            standing(Condition::Drifted, Vec::new(), Some(e.to_string()))
        }
        Err(e @ Error::Interrupted { .. }) => {
            standing(Condition::NeedsRepair, Vec::new(), Some(e.to_string()))
        }
        Err(e @ Error::UnknownApplied { .. }) => {
            standing(Condition::Ahead, Vec::new(), Some(e.to_string()))
        }
        Err(e) => standing(Condition::Failed, Vec::new(), Some(e.to_string())),
        Ok(steps) => {
            let newest = rows
                .iter()
                .filter(|r| r.status == MigrationStatus::Completed)
                .map(|r| r.order)
                .max();
            let failed_row = rows
                .iter()
                .find(|r| r.status == MigrationStatus::Failed && r.error.is_some());
            let failed = recorded_failure
                .filter(|order| steps.iter().any(|m| m.order() == *order))
                .or(failed_row
                    .filter(|r| steps.iter().any(|m| m.order() == r.order))
                    .map(|r| r.order));
            let older = newest.and_then(|n| {
                steps
                    .iter()
                    .find(|m| m.order() < n)
                    .map(|m| (*m, format_order(n)))
            });
            let (condition, detail) = if failed.is_some() {
                (Condition::Failed, failed_row.and_then(|r| r.error.clone()))
            } else if steps.is_empty() {
                (Condition::Current, None)
            } else if let Some((oldest, newest)) = older {
                // Merged from another branch: say which one, since it runs out of order.
                let detail = format!(
                    "{} {} is pending, older than {newest}, the newest applied migration",
                    format_order(oldest.order()),
                    oldest.name()
                );
                (Condition::OutOfOrder, Some(detail))
            } else {
                (Condition::Behind, None)
            };
            Standing {
                failed_order: failed,
                ..standing(condition, steps, detail)
            }
        }
    }
}

/// The fingerprint of each prefix of the enabled tenant migrations, by the prefix's
/// newest order (`None`: the empty prefix).
fn prefix_fingerprints(set: &MigrationSet) -> HashMap<Option<i64>, String> {
    let enabled: Vec<&Migration> = set
        .scope(Scope::Tenant)
        .filter(|m| m.is_enabled())
        .collect();
    (0..=enabled.len())
        .map(|len| {
            let prefix = &enabled[..len];
            (
                prefix.last().map(|m| m.order()),
                fingerprint(prefix.iter().map(|m| (m.order(), m.checksum()))),
            )
        })
        .collect()
}

/// The standing of each of `records` (in their order), each with its fingerprint
/// ([`Backend::tenant_page_with_fingerprints`]): from the registry row where it proves it,
/// else from the tenant's tracking rows, read `concurrency` at a time.
pub(crate) async fn standings(
    backend: &dyn Backend,
    set: &MigrationSet,
    records: &[(TenantRecord, Option<String>)],
    concurrency: usize,
    to: Option<i64>,
) -> Result<Vec<Standing>> {
    let prefixes = prefix_fingerprints(set);
    let enabled: Vec<&'static Migration> = set
        .scope(Scope::Tenant)
        .filter(|m| m.is_enabled())
        .collect();
    let outcomes = stream::iter(records.iter().map(|(record, fingerprint)| {
        let proven = record.failed_order.is_none()
            && fingerprint
                .as_ref()
                .is_some_and(|f| prefixes.get(&record.applied_order) == Some(f));
        let prefixes = &prefixes;
        let enabled = &enabled;
        async move {
            if record.state == crate::TenantState::Creating {
                return Ok(Standing {
                    condition: Condition::Creating,
                    pending: Vec::new(),
                    detail: None,
                    failed_order: None,
                    unreachable: None,
                });
            }
            if proven {
                let _ = prefixes;
                let pending: Vec<&'static Migration> = enabled
                    .iter()
                    .copied()
                    .filter(|m| record.applied_order.is_none_or(|a| m.order() > a))
                    .filter(|m| to.is_none_or(|to| m.order() <= to))
                    .collect();
                return Ok(Standing {
                    condition: if pending.is_empty() {
                        Condition::Current
                    } else {
                        Condition::Behind
                    },
                    pending,
                    detail: None,
                    failed_order: None,
                    unreachable: None,
                });
            }
            let target = Target::Tenant(&record.tenant);
            let state = match backend.connect(target).await {
                Ok(mut conn) => {
                    let state = conn.read().await;
                    conn.release().await;
                    state
                }
                Err(e) => Err(e),
            };
            let state = match state {
                Ok(state) => state,
                // One unreadable tenant is that tenant's failure, not the fleet's.
                Err(Error::ServerUnreachable { server, source }) => {
                    // Said once for the server ([`crate::StatusReport::unreachable_servers`]).
                    return Ok(Standing {
                        condition: Condition::Failed,
                        pending: Vec::new(),
                        detail: Some(format!("its server {server} could not be reached")),
                        failed_order: None,
                        unreachable: Some(source.to_string()),
                    });
                }
                Err(e) => {
                    return Ok(Standing {
                        condition: Condition::Failed,
                        pending: Vec::new(),
                        detail: Some(format!("its tracking rows could not be read: {e}")),
                        failed_order: None,
                        unreachable: None,
                    })
                }
            };
            Ok::<_, Error>(classify_rows(
                target,
                &state.applied,
                set,
                Scope::Tenant,
                record.failed_order,
                to,
            ))
        }
    }))
    .buffered(concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    outcomes.into_iter().collect()
}

/// One migration of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PlannedMigration {
    /// Its order.
    pub order: i64,
    /// Its name.
    pub name: &'static str,
}

/// Tenants in the same place with the same migrations to apply.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct PlanGroup {
    /// Where they stand.
    pub condition: Condition,
    /// Their newest applied migration.
    pub applied_order: Option<i64>,
    /// The migration failed tenants failed at (the first tenant's).
    pub failed_order: Option<i64>,
    /// What `migrate` would apply to each, in order.
    pub apply: Vec<PlannedMigration>,
    /// Why, for failed, drifted, out-of-order and needs-repair tenants (the first
    /// tenant's reason).
    pub detail: Option<String>,
    /// The tenants, by name.
    pub tenants: Vec<crate::TenantName>,
}

/// What `migrate` would do, grouped: the public migrations, then the tenants by their
/// identical pending lists. Computed without changing anything.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct PlanReport {
    /// The public migrations that would run.
    pub public: Vec<PlannedMigration>,
    /// Where the public schema stands: anything but current or behind stops `migrate`
    /// before any tenant.
    pub public_condition: Condition,
    /// Why, where the public schema is not current or behind.
    pub public_detail: Option<String>,
    /// The groups, the largest first.
    pub groups: Vec<PlanGroup>,
    /// Tenant migrations that would run, over all tenants.
    pub migrations: usize,
    /// The same by server, the default server first (`plan --by-server`).
    pub servers: Vec<ServerPlan>,
}

/// One server's part of a [`PlanReport`].
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct ServerPlan {
    /// The server.
    pub server: ServerName,
    /// Its tenants in the plan.
    pub tenants: usize,
    /// How many of them `migrate` would apply migrations to.
    pub with_work: usize,
    /// Tenant migrations that would run on it.
    pub migrations: usize,
}

impl PlanReport {
    pub(crate) fn new(
        public: Standing,
        records: impl IntoIterator<Item = TenantRecord>,
        standings: Vec<Standing>,
    ) -> Self {
        let planned = |m: &&'static Migration| PlannedMigration {
            order: m.order(),
            name: m.name(),
        };
        let mut groups: HashMap<(Condition, Option<i64>, Vec<PlannedMigration>), PlanGroup> =
            HashMap::new();
        let mut migrations = 0;
        let mut servers: Vec<ServerPlan> = Vec::new();
        for (record, standing) in records.into_iter().zip(standings) {
            let apply: Vec<PlannedMigration> = standing.pending.iter().map(planned).collect();
            let server_name = record
                .tenant
                .server
                .clone()
                .unwrap_or_else(ServerName::default_server);
            let at = match servers.iter().position(|s| s.server == server_name) {
                Some(at) => at,
                None => {
                    servers.push(ServerPlan {
                        server: server_name,
                        ..ServerPlan::default()
                    });
                    servers.len() - 1
                }
            };
            servers[at].tenants += 1;
            if matches!(
                standing.condition,
                Condition::Current | Condition::Behind | Condition::OutOfOrder | Condition::Failed
            ) {
                migrations += apply.len();
                servers[at].migrations += apply.len();
                servers[at].with_work += usize::from(!apply.is_empty());
            }
            let key = (standing.condition, record.applied_order, apply.clone());
            groups
                .entry(key)
                .or_insert_with(|| PlanGroup {
                    condition: standing.condition,
                    applied_order: record.applied_order,
                    failed_order: standing.failed_order,
                    apply,
                    detail: standing.detail.clone(),
                    tenants: Vec::new(),
                })
                .tenants
                .push(record.tenant.name);
        }
        let mut groups: Vec<PlanGroup> = groups.into_values().collect();
        groups.sort_by(|a, b| {
            b.tenants
                .len()
                .cmp(&a.tenants.len())
                .then(a.applied_order.cmp(&b.applied_order))
                // Stable from run to run: no two groups share a tenant.
                .then_with(|| a.tenants.first().cmp(&b.tenants.first()))
        });
        servers.sort_by(|a, b| {
            (!a.server.is_default(), &a.server).cmp(&(!b.server.is_default(), &b.server))
        });
        PlanReport {
            public: public.pending.iter().map(planned).collect(),
            public_condition: public.condition,
            public_detail: public.detail,
            groups,
            migrations,
            servers,
        }
    }
}
