//! The engine layer: the primitives every engine provides (`api.rs`), and each engine's
//! SQL dialect and connection handling, behind its cargo feature.

mod api;
mod connect;
mod engine;
mod lease;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod sql;

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod tls;

pub(crate) use api::with_fingerprints;
pub use api::{
    classify_common, strip_qualifier, Backend, Capabilities, Connection, Direction, ErrorClass,
    JournalEntry, MigrationTimeouts, ObjectKind, Record, RegistryRow, RegistryState, SchemaObject,
    Target, TargetState, Timing, TEMPLATE_STORAGE,
};
pub use connect::{connect, ConnectOptions};
pub use engine::{Engine, Tenancy};
pub(crate) use lease::{connection_tag, host_name, random_fraction};
pub use lease::{Heartbeat, LeaseStore, RunIdentity, RunLease};
#[cfg(feature = "mysql")]
pub use mysql::MySqlBackend;
#[cfg(feature = "postgres")]
pub use postgres::{PgDatabaseBackend, PostgresBackend, TenantConnection, TenantPools};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteBackend;
