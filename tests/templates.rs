//! Tenant templates (SQLite, the engine that copies a tenant's storage whole) and spare
//! schemas (PostgreSQL schema per tenant): a tenant copied from the template, or made of a
//! spare, is the tenant a replay makes (catalog and tracking rows); a migration that asks
//! for its tenant makes creation replay; the template and the spares follow new and
//! changed migrations; a failed create leaves nothing.
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

#[cfg(feature = "sqlite")]
#[path = "templates/sqlite.rs"]
mod sqlite;

#[cfg(feature = "postgres")]
#[path = "templates/postgres.rs"]
mod postgres;
