//! The migrate layer: the protocol (once, over the engine primitives of `backend/`), the
//! tenant life cycle, the fleet scheduler, and the `Migrator` API over them.

mod claim;
mod drift;
mod fingerprint;
mod fleet;
mod hooks;
mod inspect;
mod journal;
mod lease;
mod migrator;
mod options;
mod plan;
mod progress;
mod protocol;
mod report;
mod retry;
mod rollout;
mod runs;
mod safety;
mod source;
mod spares;
mod template;
mod tenants;

pub use drift::{Difference, DriftReport, DriftWay, DriftedTenant, OrderDrift, UnreadableTenant};
pub use fingerprint::fingerprint;
#[doc(hidden)]
pub use hooks::HookFn;
pub use hooks::{
    AfterTenantFn, Hook, HookFailure, HookKind, Hooks, RunCommand, RunHookFn, RunInfo,
    TenantOutcome,
};
pub use inspect::{Condition, PlanGroup, PlanReport, PlannedMigration, ServerPlan};
pub use journal::{DriftCheck, RunRecord, DEFAULT_RUN_HISTORY};
pub use migrator::{default_concurrency, Migrator, MigratorBuilder};
pub use options::{MigrateOptions, RollbackTarget, Timeouts, Transactions};
pub use progress::Progress;
#[cfg(feature = "cli")]
pub(crate) use protocol::model_label;
pub use report::{
    ConditionCounts, DrainReport, FailedMigration, FailedTenant, InvalidRegistryRow, MigrateReport,
    PublicStatus, RollbackReport, ServerStatus, StatusReport, TenantStatus, UnreachableServer,
};
pub use rollout::{Canary, Rollout, TenantOrder, WaveSize};
pub use runs::{RunReport, RunTenant};
pub use safety::{parse_duration, SafetySettings, Shard};
pub use source::{RegistrySource, TenantSource};
pub use template::TemplateChange;
