//! Test support

pub mod mysql;
pub mod postgres;
pub mod sqlite;
