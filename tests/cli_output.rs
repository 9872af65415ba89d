//! What the command line prints, on a real PostgreSQL database per test (schema per
//! tenant, the test app `tests/support/app.rs`): `--no-progress` and `--quiet`, identical
//! failures grouped, the tenant named once, plurals, the words of the tenancy model and
//! of the control schema, and the public migrations that `tenant create` applies first.
//! The other tenancy models' words are asserted by `tests/behaviour.rs`.
#![cfg(feature = "postgres")]

use assert_cmd::Command;
use mtnt_test_support::cli::{run_expecting, test_app};
use mtnt_test_support::postgres::TestDb;

fn app(url: &str) -> Command {
    test_app(url)
}

/// Runs `args`, expecting `code`, and returns (stdout, stderr).
fn run(url: &str, args: &[&str], code: i32) -> (String, String) {
    run_expecting(app(url), args, code)
}

/// Creates `names` as tenants.
fn create(url: &str, names: &[String]) {
    for name in names {
        run(url, &["--no-progress", "tenant", "create", name], 0);
    }
}

/// Marks the tenant's last migration (add_account_names, which has no down function)
/// pending again, as if never run; with `undo`, its column is dropped too, so that the
/// next migrate applies it again (without, the next migrate fails: the column exists).
async fn unapply_last(db: &TestDb, name: &str, undo: bool) {
    run(
        &db.url,
        &[
            "repair",
            "--tenant",
            name,
            "--order",
            "2024_01_03_0001",
            "--mark",
            "pending",
        ],
        0,
    );
    if undo {
        let pool = db.pool(1).await;
        sqlx::raw_sql(&format!("ALTER TABLE {name}.accounts DROP COLUMN name"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

/// `n` tenants `f01`, `f02`, ... that fail at add_account_names with one error: it is
/// marked pending, and its column exists already.
async fn failing_fleet(db: &TestDb, n: usize) -> Vec<String> {
    let names: Vec<String> = (1..=n).map(|i| format!("f{i:02}")).collect();
    create(&db.url, &names);
    for name in &names {
        unapply_last(db, name, false).await;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_failures_are_grouped_and_the_tenant_is_named_once() {
    let db = TestDb::create("cli_grouped").await;
    let names = failing_fleet(&db, 12).await;
    create(&db.url, &["good".to_owned()]);
    unapply_last(&db, "good", true).await;

    let (stdout, stderr) = run(&db.url, &["--no-progress", "migrate"], 1);
    assert!(
        stdout
            .contains("tenants: 13 total, 1 migrated (1 migration), 0 already current, 12 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "12 tenants failed at 2024_01_03_0001 add_account_names: error returned from database: \
             column \"name\" of relation \"accounts\" already exists\n    f01, f02, f03,"
        ),
        "{stdout}"
    );
    for name in &names {
        assert_eq!(stdout.matches(name.as_str()).count(), 1, "{name}: {stdout}");
    }
    // One paragraph for the twelve, not a line (or three) each.
    assert!(stdout.lines().count() <= 5, "{stdout}");
    // As it happens, the first failure of the kind is shown, saying the tenant once.
    let live: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" failed at "))
        .collect();
    assert_eq!(live.len(), 1, "{stderr}");
    let first = live[0].split_whitespace().nth(1).unwrap();
    assert_eq!(live[0].matches(first).count(), 1, "{stderr}");
    assert!(
        live[0].starts_with(&format!(
            "tenant {first} failed at 2024_01_03_0001 add_account_names: error returned"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("while applying"), "{stderr}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_progress_prints_no_progress_and_quiet_only_errors_and_the_summary() {
    let db = TestDb::create("cli_quiet").await;
    let names: Vec<String> = (1..=3).map(|i| format!("q{i}")).collect();
    create(&db.url, &names);

    // Without a terminal, progress is plain lines; --no-progress drops them.
    let (_, stderr) = run(&db.url, &["migrate"], 0);
    assert!(stderr.contains("migrate 3/3 tenants"), "{stderr}");
    let (stdout, stderr) = run(&db.url, &["--no-progress", "migrate"], 0);
    assert_eq!(stderr, "", "--no-progress printed progress");
    assert!(stdout.contains("3 already current"), "{stdout}");

    // --quiet: the summary and errors only.
    let failing = failing_fleet(&db, 2).await;
    let (stdout, stderr) = run(&db.url, &["--quiet", "migrate"], 1);
    assert_eq!(stderr, "", "--quiet printed failures as they happened");
    assert!(
        stdout.contains("2 tenants failed at 2024_01_03_0001"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("    {}, {}\n", failing[0], failing[1])));
    let (stdout, _) = run(&db.url, &["-q", "status"], 0);
    assert_eq!(
        stdout,
        "public (schema public): at 2024_01_01_0001, 0 pending\n3/5 tenants current, 0 behind, 2 failed\n",
        "--quiet status printed its table"
    );
    let (stdout, _) = run(&db.url, &["--quiet", "tenant", "list"], 0);
    assert_eq!(stdout, "5 tenants\n");
    // --json is what it was asked for, also with --quiet.
    let (stdout, _) = run(&db.url, &["-q", "status", "--json"], 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["tenants"].as_array().unwrap().len(), 5);
    unapply_last(&db, "q1", true).await;
    let (stdout, _) = run(
        &db.url,
        &["-q", "rollback", "--tenant", "q1", "--steps", "2"],
        0,
    );
    assert_eq!(stdout, "tenant q1: reverted 2 migrations\n");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn words_say_what_there_is_and_how_many() {
    let db = TestDb::create("cli_words").await;
    // The first tenant create applies the public migration first, and says so.
    let (stdout, _) = run(&db.url, &["tenant", "create", "acme"], 0);
    assert_eq!(
        stdout,
        "public (schema public): applied 1 pending migration first\n\
         created tenant acme (schema acme) with every tenant migration applied\n"
    );
    let (stdout, _) = run(&db.url, &["tenant", "create", "beta"], 0);
    assert_eq!(
        stdout,
        "created tenant beta (schema beta) with every tenant migration applied\n"
    );
    let (stdout, _) = run(&db.url, &["--no-progress", "migrate"], 0);
    assert!(
        stdout.starts_with("public (schema public): 0 migrations applied\n"),
        "{stdout}"
    );
    assert!(stdout.contains("0 migrated (0 migrations)"), "{stdout}");
    unapply_last(&db, "beta", true).await;
    let (stdout, _) = run(&db.url, &["--no-progress", "migrate"], 0);
    assert!(stdout.contains("1 migrated (1 migration),"), "{stdout}");
    let (stdout, _) = run(&db.url, &["repair", "--checksums"], 0);
    assert_eq!(stdout, "recorded new checksums for 0 applied migrations\n");
    let (stdout, _) = run(&db.url, &["tenant", "list"], 0);
    assert!(stdout.starts_with("TENANT  SCHEMA  STATE"), "{stdout}");
    assert!(stdout.ends_with("\n2 tenants\n"), "{stdout}");
    let (stdout, _) = run(&db.url, &["tenant", "drop", "beta", "--yes"], 0);
    assert_eq!(
        stdout,
        "dropped tenant beta: its schema beta and its registry row\n"
    );
    let (stdout, _) = run(&db.url, &["tenant", "list"], 0);
    assert!(stdout.ends_with("\n1 tenant\n"), "{stdout}");

    // Another control schema is named as such.
    let ops = ["--control-schema", "ops"];
    let (stdout, _) = run(
        &db.url,
        &[&ops[..], &["tenant", "create", "gamma"]].concat(),
        0,
    );
    assert!(
        stdout.starts_with("public (schema ops): applied 1 pending migration first\n"),
        "{stdout}"
    );
    let (stdout, _) = run(&db.url, &[&ops[..], &["status"]].concat(), 0);
    assert!(
        stdout.starts_with("public (schema ops): at 2024_01_01_0001, 0 pending\nTENANT  SCHEMA"),
        "{stdout}"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_is_one_line_in_the_normal_output() {
    let db = TestDb::create("cli_retries").await;
    create(&db.url, &["acme".to_owned()]);
    unapply_last(&db, "acme", true).await;
    // Another session holds the table add_account_names alters: each attempt times out.
    let pool = db.pool(1).await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::raw_sql("LOCK TABLE acme.accounts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (stdout, stderr) = run(
        &db.url,
        &[
            "--no-progress",
            "--lock-timeout",
            "100ms",
            "--retries",
            "2",
            "--retry-backoff",
            "50ms",
            "migrate",
        ],
        1,
    );
    holder.rollback().await.unwrap();
    let retries: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tenant acme: attempt "))
        .collect();
    assert_eq!(retries.len(), 2, "{stderr}");
    for (i, line) in retries.iter().enumerate() {
        assert!(
            line.starts_with(&format!("tenant acme: attempt {} of 3 failed (", i + 1)),
            "{stderr}"
        );
        assert!(line.contains("lock timeout); trying again in "), "{stderr}");
        assert!(line.ends_with("ms"), "{stderr}");
    }
    assert!(stdout.contains("(gave up after 3 attempts)"), "{stdout}");
    // The lock is gone: the same run goes through, without a retry.
    let (_, stderr) = run(&db.url, &["--no-progress", "migrate"], 0);
    assert_eq!(stderr, "");
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_of_several_tenants_reports_each() {
    let db = TestDb::create("cli_rollback_each").await;
    let names: Vec<String> = ["ra", "rb"].map(str::to_owned).to_vec();
    create(&db.url, &names);
    // Their last migration (irreversible) unapplied: the two before it can be reverted.
    for name in &names {
        unapply_last(&db, name, true).await;
    }
    let (stdout, _) = run(
        &db.url,
        &[
            "--no-progress",
            "rollback",
            "--tenant",
            "ra",
            "--tenant",
            "rb",
            "--steps",
            "1",
        ],
        0,
    );
    assert!(
        stdout.starts_with("tenant ra: reverted 1 migration\ntenant rb: reverted 1 migration\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tenants: 2 total, 2 rolled back (2 migrations reverted), 0 with nothing to revert, 0 failed"),
        "{stdout}"
    );
    // Named in the order given, and a tenant with nothing to revert says so.
    let (stdout, _) = run(
        &db.url,
        &[
            "--no-progress",
            "rollback",
            "--tenant",
            "rb",
            "--tenant",
            "ra",
            "--to",
            "2024_01_02_0001",
        ],
        0,
    );
    assert!(
        stdout.starts_with("tenant rb: nothing to roll back\ntenant ra: nothing to roll back\n"),
        "{stdout}"
    );
    // --quiet keeps to the summary.
    let (stdout, _) = run(
        &db.url,
        &[
            "-q", "rollback", "--tenant", "ra", "--tenant", "rb", "--steps", "1",
        ],
        0,
    );
    assert!(
        stdout.starts_with("tenants: 2 total, 2 rolled back"),
        "{stdout}"
    );
    db.drop_db().await;
}

/// A fleet run's id starts its progress output (not with `--no-progress`) and is named
/// in its summary, with the command that shows what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_run_prints_its_id_first_and_in_its_summary() {
    let db = TestDb::create("cli_run_id").await;
    create(&db.url, &["r1".to_owned(), "r2".to_owned()]);
    let (stdout, stderr) = run(&db.url, &["migrate"], 0);
    let first = stderr.lines().next().unwrap_or_default();
    let id = first
        .strip_prefix("migrate run ")
        .unwrap_or_else(|| panic!("the progress does not start with the run id:\n{stderr}"));
    assert!(
        stdout.contains(&format!(
            "\nrun {id} (status --run {id} shows what it did)\n"
        )),
        "{stdout}"
    );
    let (_, stderr) = run(&db.url, &["--no-progress", "migrate"], 0);
    assert_eq!(stderr, "");
    let (stdout, _) = run(&db.url, &["status", "--run", id], 0);
    assert_eq!(
        stdout,
        format!("run {id}: 0 tenants, 0 migrations applied, 0 failed\n")
    );
    db.drop_db().await;
}
