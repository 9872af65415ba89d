//! `mtnt::run!(saas_migrations)` keeps the migrations of another crate linked in.

use assert_cmd::Command;
use predicates::prelude::*;

#[test]
fn migrations_of_the_library_crate_are_registered() {
    Command::cargo_bin("saas-app")
        .unwrap()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "2026_11_23_0001  public  create_plans",
        ))
        .stdout(predicate::str::contains(
            "2026_11_23_0004  tenant  add_account_plan",
        ))
        .stdout(predicate::str::contains(
            "examples/saas/migrations/src/migrations/",
        ));
}
