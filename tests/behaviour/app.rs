//! The behaviour suite's CLI binary (`mtnt-portable-app`): the portable migrations of
//! `migrations.rs` behind `mtnt::run!()`, so that the suite can drive the command line on
//! every engine (the PostgreSQL-flavoured `mtnt-test-app` runs on PostgreSQL only).

// The orders and FIXED are for the suite; the binary only registers the migrations.
#[allow(dead_code)]
mod migrations;

fn main() {
    mtnt::run!()
}
