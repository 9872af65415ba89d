mod claim;
mod executor;
mod fingerprint;
mod lease;
mod migrator;
mod options;
mod plan;
mod progress;
mod report;
mod retry;
mod safety;
mod source;

pub use fingerprint::fingerprint;
pub use migrator::{Migrator, MigratorBuilder};
pub use options::{MigrateOptions, RollbackTarget};
pub use progress::Progress;
pub(crate) use progress::Silent;
pub use report::{
    FailedMigration, FailedTenant, MigrateReport, PublicStatus, RollbackReport, StatusReport,
    TenantStatus,
};
pub(crate) use retry::random_fraction;
pub use safety::{parse_duration, SafetySettings, Shard};
pub use source::{RegistrySource, TenantSource};
