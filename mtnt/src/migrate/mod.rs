mod executor;
mod migrator;
mod options;
mod plan;
mod progress;
mod report;
mod source;

pub use migrator::{Migrator, MigratorBuilder};
pub use options::{MigrateOptions, RollbackTarget};
pub use progress::Progress;
pub use report::{
    FailedMigration, FailedTenant, MigrateReport, PublicStatus, RollbackReport, StatusReport,
    TenantStatus,
};
pub use source::{RegistrySource, TenantSource};
