//! The command line that `mtnt::run!()` gives, where no database is involved: `list`, a
//! missing URL and an unreachable server, with the test app (`tests/support/app.rs`). The
//! commands that work on a database (create, migrate, status and `--json`, rollback,
//! tenant list and drop, bad tenant names) are driven on every engine by
//! `tests/behaviour.rs` with `mtnt-portable-app`.

use assert_cmd::Command;
use predicates::prelude::*;

fn app() -> Command {
    let mut cmd =
        Command::cargo_bin("mtnt-test-app").expect("the test app is built with the tests");
    cmd.env_remove("DATABASE_URL")
        .env_remove("MTNT_LOG")
        .arg("--no-progress");
    cmd
}

#[test]
fn list_needs_no_database() {
    app()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "2024_01_02_0001  tenant  create_invoices",
        ))
        .stdout(predicate::str::contains("tests/support/app.rs:"));
}

#[cfg(feature = "postgres")]
#[test]
fn an_unreachable_database_is_named_without_its_password() {
    app()
        .env("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/fleet")
        .arg("status")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "cannot connect to postgres://app:***@127.0.0.1:1/fleet",
        ))
        .stderr(predicate::str::contains("hunter2").not());
}

#[test]
fn a_missing_url_says_how_to_give_one() {
    app()
        .arg("status")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "pass --database-url URL or set DATABASE_URL",
        ));
}
