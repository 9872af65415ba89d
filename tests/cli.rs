//! The command line that `mtnt::run!()` gives, driven as a user would: the test app
//! (`tests/support/app.rs`) run as a process against a real PostgreSQL database.

use assert_cmd::Command;
use mtnt_test_support::postgres::TestDb;
use predicates::prelude::*;

fn app(db: &TestDb) -> Command {
    let mut cmd =
        Command::cargo_bin("mtnt-test-app").expect("the test app is built with the tests");
    cmd.env("DATABASE_URL", &db.url)
        .env_remove("MTNT_LOG")
        .arg("--no-progress");
    cmd
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    let pool = db.pool(1).await;
    let value: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    value
}

#[tokio::test]
async fn a_fleet_through_the_cli() {
    let db = TestDb::create("cli_fleet").await;

    app(&db)
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "2024_01_02_0001  tenant  create_invoices",
        ))
        .stdout(predicate::str::contains("tests/support/app.rs:"));

    for name in ["acme", "beta", "gamma"] {
        app(&db)
            .args(["tenant", "create", name])
            .assert()
            .success()
            .stdout(predicate::str::contains(format!("created tenant {name}")));
    }
    // `broken` fails at create_invoices: nothing of it may remain.
    app(&db)
        .args(["tenant", "create", "broken"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "while applying 2024_01_02_0001 create_invoices to tenant broken",
        ))
        .stderr(predicate::str::contains("no_such_table"));
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'broken'"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM public.mtnt_tenants WHERE name = 'broken'"
        )
        .await,
        0
    );

    app(&db)
        .args(["tenant", "create", "acme"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("tenant \"acme\" exists already"));

    app(&db)
        .arg("migrate")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "tenants: 3 total, 0 migrated (0 migrations), 3 already current, 0 failed",
        ));

    app(&db)
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "public: at 2024_01_01_0001, 0 pending",
        ))
        .stdout(predicate::str::contains(
            "3/3 tenants current, 0 behind, 0 failed",
        ));

    // Rolling back past the irreversible add_account_names is refused, and nothing changes.
    app(&db)
        .args(["rollback", "--tenant", "beta", "--steps", "2"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "2024_01_03_0001 add_account_names has no down function",
        ));
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM beta.mtnt_migrations WHERE status = 'completed'"
        )
        .await,
        3
    );
    app(&db)
        .args(["rollback", "--tenant", "beta", "--to", "2024_01_03_0001"])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing to roll back"));

    // A tenant behind shows in status, in the summary and in the JSON.
    let pool = db.pool(1).await;
    sqlx::raw_sql(
        "ALTER TABLE gamma.accounts DROP COLUMN name;
         UPDATE gamma.mtnt_migrations SET status = 'pending' WHERE migration_order = 202401030001;
         UPDATE public.mtnt_tenants SET applied_order = 202401020001 WHERE name = 'gamma'",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let json = app(&db)
        .args(["status", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let status: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(status["summary"], "2/3 tenants current, 1 behind, 0 failed");
    assert_eq!(status["tenants"][2]["tenant"], "gamma");
    assert_eq!(status["tenants"][2]["pending"], 1);

    app(&db)
        .args(["migrate", "--tenant", "gamma"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "tenants: 1 total, 1 migrated (1 migrations)",
        ));
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'gamma' AND table_name = 'accounts' AND column_name = 'name'").await,
        1
    );

    app(&db)
        .args(["tenant", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("3 tenant(s)"));

    db.drop_db().await;
}

#[tokio::test]
async fn bad_input_is_refused_before_any_sql() {
    let db = TestDb::create("cli_input").await;
    app(&db)
        .args(["tenant", "create", "x\"; DROP SCHEMA public; --"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid tenant name"))
        .stderr(predicate::str::contains("it has a quote or semicolon"));
    app(&db)
        .args(["migrate", "--tenant", "nobody"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown tenant \"nobody\""));
    app(&db)
        .args(["migrate", "--to", "2030_01_01_0001"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "no registered migration has order 2030_01_01_0001",
        ));
    app(&db)
        .args(["migrate", "--to", "yesterday"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("write it as YYYY_MM_DD_NNNN"));
    app(&db)
        .args(["rollback", "--tenant", "acme"])
        .assert()
        .code(2);
    // Nothing above created the registry: no SQL ran for rejected input that clap caught,
    // and the rejected runs changed no tenant.
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'x%'"
        )
        .await,
        0
    );
    db.drop_db().await;
}

#[test]
fn an_unreachable_database_is_named_without_its_password() {
    let mut cmd = Command::cargo_bin("mtnt-test-app").unwrap();
    cmd.env("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/fleet")
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
    Command::cargo_bin("mtnt-test-app")
        .unwrap()
        .env_remove("DATABASE_URL")
        .arg("status")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "pass --database-url URL or set DATABASE_URL",
        ));
}
