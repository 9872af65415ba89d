//! Test support

pub mod sqlite;
