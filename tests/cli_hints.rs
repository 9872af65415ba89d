//! The `fix:` lines: the library's messages say what happened and name no CLI flag; the
//! command line adds what to run next (`mtnt::cli_fix`), with the flags it needs (`tenant
//! drop NAME --yes`, `repair --tenant NAME --order ... --mark completed`). On a real
//! PostgreSQL database per test, with the test app `tests/support/app.rs`.
#![cfg(feature = "postgres")]

use assert_cmd::Command;
use mtnt_test_support::cli::{run_expecting, test_app};
use mtnt_test_support::postgres::TestDb;

fn app(url: &str) -> Command {
    let mut cmd = test_app(url);
    cmd.arg("--no-progress");
    cmd
}

/// Runs `args`, expecting `code`, and returns (stdout, stderr).
fn run(url: &str, args: &[&str], code: i32) -> (String, String) {
    run_expecting(app(url), args, code)
}

/// Asserts that `text` has the error line `error` followed, a few lines on, by the fix.
fn error_then_fix(text: &str, error: &str, fix: &str) {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(error))
        .unwrap_or_else(|| panic!("{error:?} missing from:\n{text}"));
    assert!(
        lines[at].starts_with("error: ") || lines[at].starts_with("tenant "),
        "{text}"
    );
    assert!(
        !lines[at].contains("fix:"),
        "the message itself has a fix: {text}"
    );
    let fix_line = format!("  fix: {fix}");
    assert!(
        lines[at + 1..]
            .iter()
            .take(3)
            .any(|l| l.starts_with(&fix_line)),
        "{fix_line:?} missing after {error:?}:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_gets_its_fix_with_the_flags_it_needs() {
    let db = TestDb::create("cli_hints").await;
    let url = &db.url;
    run(url, &["tenant", "create", "acme"], 0);
    run(url, &["tenant", "create", "beta"], 0);

    let (_, stderr) = run(url, &["tenant", "create", "acme"], 1);
    error_then_fix(
        &stderr,
        "error: tenant \"acme\" exists already",
        "pick another name; if `tenant list` shows it as `creating`, an earlier create died \
         half-way: remove it with `tenant drop acme --yes` and create it again",
    );
    let (_, stderr) = run(url, &["migrate", "--tenant", "nobody"], 1);
    error_then_fix(
        &stderr,
        "error: unknown tenant \"nobody\": no tenant of that name is registered",
        "check the name with `tenant list`, or create the tenant with `tenant create nobody`",
    );
    let (_, stderr) = run(url, &["migrate", "--to", "2030_01_01_0001"], 1);
    error_then_fix(
        &stderr,
        "error: no registered migration has order 2030_01_01_0001",
        "pick an order from `list`",
    );
    let (_, stderr) = run(url, &["rollback", "--tenant", "acme", "--steps", "1"], 1);
    error_then_fix(
        &stderr,
        "error: cannot roll back tenant acme: migration 2024_01_03_0001 add_account_names has no down function",
        "roll back to an order at or after it (`rollback --to ORDER`)",
    );
    let (_, stderr) = run(url, &["tenant", "drop", "acme"], 1);
    error_then_fix(
        &stderr,
        "error: dropping tenant acme deletes all its data",
        "run `tenant drop acme --yes` to confirm",
    );

    // Failures of a run: the fix follows the tenant's line in the summary.
    let pool = db.pool(1).await;
    sqlx::raw_sql(
        "UPDATE public.mtnt_tenant_migrations SET checksum = 'tampered' \
         WHERE tenant = 'acme' AND migration_order = 202401010002; \
         UPDATE public.mtnt_tenant_migrations SET status = 'started' \
         WHERE tenant = 'beta' AND migration_order = 202401030001; \
         UPDATE public.mtnt_tenants SET applied_order = 202401020001 WHERE name = 'beta'",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (stdout, _) = run(url, &["migrate"], 1);
    error_then_fix(
        &stdout,
        "tenant acme failed: migration 2024_01_01_0002 create_accounts was changed after it was applied to the tenant",
        "revert the edit and write a new migration instead; if the edit is intended \
         (formatting, comments in SQL), record the new checksum with `repair --checksums`",
    );
    error_then_fix(
        &stdout,
        "tenant beta failed: migration 2024_01_03_0001 add_account_names in the tenant started and never completed",
        "check the schema, then `repair --tenant beta --order 202401030001 --mark completed` \
         if it took effect, or `repair --tenant beta --order 202401030001 --mark pending` to run it again",
    );

    // A database that does not exist is to be created, not "checked".
    let missing = db
        .url
        .replacen(db.name(), &format!("{}_missing", db.name()), 1);
    let (_, stderr) = run(&missing, &["status"], 1);
    error_then_fix(
        &stderr,
        "error: cannot connect to ",
        &format!(
            "create it with `createdb -h 127.0.0.1 -p 5432 -U postgres {}_missing` (mtnt creates the tables in it), or correct its name in the URL (--database-url or DATABASE_URL)",
            db.name()
        ),
    );
    db.drop_db().await;
}

/// `fn main() -> mtnt::Result<()>` prints the `Debug` form: the message and its causes,
/// not a struct dump, and no CLI flag.
#[tokio::test]
async fn the_debug_form_is_the_message() {
    let error = match mtnt::connect(
        "postgres://postgres@127.0.0.1:1/fleet",
        &mtnt::ConnectOptions::default(),
    )
    .await
    {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(error) => error,
    };
    let debug = format!("{error:?}");
    assert!(
        debug.starts_with("cannot connect to postgres://postgres@127.0.0.1:1/fleet: "),
        "{debug}"
    );
    assert!(!debug.contains("Connect {"), "{debug}");
    assert!(!debug.contains("--database-url"), "{debug}");
    let wrapped = mtnt::Error::Migration {
        target: "tenant acme".to_owned(),
        migration: "2024_01_01_0002 create_accounts".to_owned(),
        reverting: false,
        source: Box::new(mtnt::Error::other(std::io::Error::other("disk full"))),
    };
    assert_eq!(
        format!("{wrapped:?}"),
        "while applying 2024_01_01_0002 create_accounts to tenant acme: disk full"
    );
}
