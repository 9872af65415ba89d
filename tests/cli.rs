//! The command line that `mtnt::run!()` gives, where no database is involved: `list`, a
//! missing URL and an unreachable server, the help's layout, `--version`, and the bounds
//! of `--concurrency` (also `MigratorBuilder::concurrency`), with the test app
//! (`tests/support/app.rs`). The commands that work on a database (create, migrate, status
//! and `--json`, rollback, tenant list and drop, bad tenant names) are driven on every
//! engine by `tests/behaviour.rs` with `mtnt-portable-app`; what they print is in
//! `tests/cli_output.rs`, their fix lines in `tests/cli_hints.rs`, and that no password
//! shows in `tests/redaction.rs`.

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

/// The lines of `args --help`.
fn help(args: &[&str]) -> String {
    let out = app().args(args).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Where `line` starts in `text`, panicking when it is not there.
fn line_at(text: &str, line: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(line))
        .unwrap_or_else(|| panic!("{line:?} missing from:\n{text}"))
}

#[test]
fn help_puts_the_commands_own_options_first_and_the_shared_ones_under_headings() {
    for (args, own) in [
        (vec!["migrate"], "--tenant <NAME>"),
        (vec!["status"], "--json"),
        (vec!["rollback"], "--steps <N>"),
        (vec!["tenant", "drop"], "--yes"),
        (vec!["plan"], "--only-failed"),
        (vec!["exec"], "--sql <TEXT>"),
    ] {
        let text = help(&args);
        let options = line_at(&text, "Options:");
        let database = line_at(&text, "Database:");
        let run = line_at(&text, "Run:");
        let output = line_at(&text, "Output:");
        let safety = line_at(&text, "Safety:");
        assert!(options < line_at(&text, own), "{args:?}:\n{text}");
        assert!(line_at(&text, own) < database, "{args:?}:\n{text}");
        assert!(database < line_at(&text, "--database-url <URL>"));
        assert!(database < line_at(&text, "--control-schema"));
        assert!(run < line_at(&text, "--concurrency <N>"));
        assert!(output < line_at(&text, "--no-progress"));
        assert!(output < line_at(&text, "-q, --quiet"));
        assert!(safety < line_at(&text, "--deadline <DURATION>"));
        assert!(safety < line_at(&text, "--statement-timeout <DURATION>"));
        assert!(
            database < run && run < output && output < safety,
            "{args:?}:\n{text}"
        );
    }
    // The rollout flags under a heading of their own, after the command's and before the
    // shared ones.
    for args in [["migrate"], ["rollback"], ["exec"]] {
        let text = help(&args);
        let rollout = line_at(&text, "Rollout:");
        assert!(line_at(&text, "Options:") < rollout, "{args:?}:\n{text}");
        for flag in [
            "--canary <N>",
            "--canary-tenant <NAME>",
            "--wave-size <N|P%>",
            "--wave-pause <DURATION>",
            "--max-failures <N>",
            "--max-failure-rate <P%>",
            "--only-failed",
            "--order-by <ORDER>",
        ] {
            let at = line_at(&text, flag);
            assert!(
                rollout < at && at < line_at(&text, "Database:"),
                "{flag}:\n{text}"
            );
        }
    }
    let text = help(&["migrate"]);
    let deadline = line_at(&text, "--deadline <DURATION>");
    assert!(
        text.lines()
            .nth(deadline + 1)
            .unwrap()
            .contains("(0: no limit)"),
        "{text}"
    );
    let short = String::from_utf8(app().args(["tenant", "-h"]).output().unwrap().stdout).unwrap();
    assert!(
        short.starts_with("Create, list, adopt and drop tenants\n"),
        "{short}"
    );
    for command in ["create", "list", "adopt", "drop"] {
        assert!(short.contains(&format!("\n  {command} ")), "{short}");
    }
}

#[test]
fn version_and_about_are_the_apps() {
    // The test app's package is mtnt-suite, which has no description.
    app()
        .arg("--version")
        .assert()
        .success()
        .stdout(format!("mtnt-suite {}\n", env!("CARGO_PKG_VERSION")));
    app()
        .args(["status", "--version"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("mtnt-suite-status 0."));
    let text = help(&[]);
    assert!(
        text.starts_with("Database migrations of mtnt-suite: the public schema and every tenant\n"),
        "{text}"
    );
    assert!(!text.contains("written as async Rust functions"), "{text}");
}

#[cfg(feature = "postgres")]
#[test]
fn concurrency_is_bounded_with_a_clear_error() {
    for (flag, env) in [
        (Some("18446744073709551614"), None),
        (Some("1000000000"), None),
        (Some("0"), None),
        (None, Some("18446744073709551614")),
        (None, Some("1000000000")),
    ] {
        let mut cmd = app();
        cmd.env("DATABASE_URL", "postgres://app@127.0.0.1:1/fleet");
        if let Some(value) = flag {
            cmd.args(["--concurrency", value]);
        }
        if let Some(value) = env {
            cmd.env("MTNT_CONCURRENCY", value);
        }
        cmd.arg("status")
            .assert()
            .code(2)
            .stderr(predicate::str::contains("'--concurrency <N>'"))
            .stderr(predicate::str::contains(
                "out of range: give a number of tenants from 1 to 1024",
            ))
            .stderr(predicate::str::contains("panicked").not())
            .stderr(predicate::str::contains("memory allocation").not());
    }
    // 1024 is accepted: the run gets as far as the (unreachable) database.
    app()
        .env("DATABASE_URL", "postgres://app@127.0.0.1:1/fleet")
        .args(["--concurrency", "1024", "status"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot connect"));
}

/// A migration for the migrator below to have (it never runs).
#[cfg(feature = "sqlite")]
#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001)]
async fn never_run(_ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    Ok(())
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn the_library_refuses_a_concurrency_above_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let backend = mtnt::SqliteBackend::open(dir.path().to_path_buf())
        .await
        .unwrap();
    let error = match mtnt::Migrator::builder(backend)
        .concurrency(mtnt::MAX_CONCURRENCY + 1)
        .build()
    {
        Ok(_) => panic!("a concurrency above MAX_CONCURRENCY was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("a concurrency of 1025 tenants is more than the 1024"),
        "{error}"
    );
    let backend = mtnt::SqliteBackend::open(dir.path().to_path_buf())
        .await
        .unwrap();
    if let Err(error) = mtnt::Migrator::builder(backend)
        .concurrency(mtnt::MAX_CONCURRENCY)
        .build()
    {
        panic!("the bound itself was refused: {error}");
    }
}
