//! Test support

pub mod postgres;
pub mod sqlite;
