//! The test apps' command lines, as the CLI tests drive them.

use assert_cmd::Command;

/// The test app (`tests/support/app.rs`) against `url`, with none of the environment
/// variables that would steer it from outside the test.
pub fn test_app(url: &str) -> Command {
    let mut cmd =
        Command::cargo_bin("mtnt-test-app").expect("the test app is built with the tests");
    cmd.env("DATABASE_URL", url)
        .env_remove("MTNT_LOG")
        .env_remove("MTNT_CONCURRENCY")
        .env_remove("MTNT_CONTROL_SCHEMA")
        .env_remove("MTNT_TENANCY");
    cmd
}

/// Runs `cmd` with `args`, expecting the exit code `code`, and returns (stdout, stderr);
/// a different code panics with both.
pub fn run_expecting(mut cmd: Command, args: &[&str], code: i32) -> (String, String) {
    let out = cmd.args(args).output().expect("the test app runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}
