//! No password of the database URL shows in anything the command line prints, wherever
//! it sits in the URL (user-info, `?password=`, `postgresql:///db?host=..&password=..`, a
//! URL that lost its `//`, percent-encoded, a key/value string) and whatever prints it:
//! mtnt's errors, the server's own error text, progress and failure lines, the summary,
//! tables, `--json`, trace logs (`MTNT_LOG=trace`) and a panic message. Driven against the
//! real servers: a wrong database, an unreachable port, a wrong password (MariaDB), and
//! runs that succeed (PostgreSQL trusts local connections, whatever the password; on
//! MariaDB the test makes a user with that password).
#![cfg(all(feature = "postgres", feature = "mysql"))]

use std::process::Output;

use assert_cmd::Command;
use mtnt_test_support::mysql::TestControl;
use mtnt_test_support::postgres::TestDb;

/// The password of every URL below, and its percent-encoded twin's decoded form.
const SECRET: &str = "Zq9-Hunter-2pw";
const ENCODED: &str = "Zq9%40Hunter%202pw";
const DECODED: &str = "Zq9@Hunter 2pw";

fn command(bin: &str, url: &str) -> Command {
    let mut cmd = Command::cargo_bin(bin).expect("the test apps are built with the tests");
    cmd.env("DATABASE_URL", url)
        .env("MTNT_LOG", "trace")
        .env_remove("MTNT_TEST_LEAK")
        .env_remove("MTNT_CONTROL_SCHEMA");
    cmd
}

/// stdout and stderr of `out`, as one text.
fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `args` of `bin` with `url`, expecting `code`, and asserts that no form of the
/// password shows; returns what it printed.
fn clean(bin: &str, url: &str, args: &[&str], code: i32) -> String {
    clean_with(command(bin, url), url, args, code)
}

fn clean_with(mut cmd: Command, url: &str, args: &[&str], code: i32) -> String {
    let out = cmd.args(args).output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?} with {url}:\n{all}");
    for form in [SECRET, ENCODED, DECODED, "Zq9", "Hunter"] {
        assert!(
            !all.contains(form),
            "{args:?} with {url} printed {form:?}:\n{all}"
        );
    }
    all
}

/// `db`'s URL with `password` in its user-info.
fn pg_url(db: &TestDb, password: &str) -> String {
    db.url
        .replacen("postgres@", &format!("postgres:{password}@"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_never_show_the_password() {
    const APP: &str = "mtnt-test-app";
    let db = TestDb::create("redact_pg_errors").await;
    let name = db.name().to_owned();
    let missing = format!("{name}_missing");
    for (url, args, what) in [
        // A database that does not exist: the server's error names the database.
        (
            format!("postgres://postgres:{SECRET}@127.0.0.1:5432/{missing}"),
            vec!["status"],
            format!("database \"{missing}\" does not exist"),
        ),
        (
            format!("postgres://postgres@127.0.0.1:5432/{missing}?password={SECRET}"),
            vec!["migrate"],
            format!("?password=***: error returned from database: database \"{missing}\" does not exist"),
        ),
        (
            format!("postgresql:///{missing}?host=127.0.0.1&user=postgres&password={SECRET}"),
            vec!["tenant", "list"],
            "&password=***".to_owned(),
        ),
        (
            format!("postgres://postgres:{ENCODED}@127.0.0.1:5432/{missing}"),
            vec!["status", "--json"],
            "postgres://postgres:***@127.0.0.1:5432/".to_owned(),
        ),
        // The `//` is missing: the password becomes part of the database name, which
        // the server quotes in its error.
        (
            format!("postgres:{SECRET}@127.0.0.1:5432/{name}"),
            vec!["status"],
            "cannot connect to postgres:***@127.0.0.1:5432/".to_owned(),
        ),
        // Nobody listens.
        (
            format!("postgres://postgres:{SECRET}@127.0.0.1:1/{name}"),
            vec!["migrate"],
            "cannot connect to postgres://postgres:***@127.0.0.1:1/".to_owned(),
        ),
        (
            format!("postgres://postgres@127.0.0.1:1/{name}?sslmode=disable&password={SECRET}"),
            vec!["tenant", "create", "acme"],
            "?sslmode=disable&password=***".to_owned(),
        ),
        // Unparseable URLs, and a key/value string mtnt does not take.
        (
            format!("postgres://postgres:{SECRET}@[::1"),
            vec!["status"],
            "postgres://postgres:***@[::1".to_owned(),
        ),
        (
            format!("host=127.0.0.1 user=postgres password={SECRET} dbname={name}"),
            vec!["status"],
            "password=***".to_owned(),
        ),
    ] {
        let all = clean(APP, &url, &args, 1);
        assert!(all.contains(&what), "{url}: {what:?} missing:\n{all}");
        assert!(all.contains("  fix: "), "{url}: no fix:\n{all}");
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_never_show_the_password() {
    const APP: &str = "mtnt-test-app";
    let db = TestDb::create("redact_pg_runs").await;
    let name = db.name().to_owned();
    // The server trusts local connections: each of these connects, whatever the password.
    let urls = [
        pg_url(&db, SECRET),
        pg_url(&db, ENCODED),
        format!(
            "{}{}password={SECRET}",
            db.url,
            if db.url.contains('?') { '&' } else { '?' }
        ),
        format!("postgresql:///{name}?host=127.0.0.1&user=postgres&password={SECRET}"),
    ];
    for (i, url) in urls.iter().enumerate() {
        let tenant = format!("acme{i}");
        clean(APP, url, &["tenant", "create", &tenant], 0);
        clean(APP, url, &["migrate"], 0);
        clean(APP, url, &["status"], 0);
        clean(APP, url, &["status", "--json"], 0);
        clean(APP, url, &["tenant", "list", "--json"], 0);
    }

    // A migration that panics with the URL in its message: the panic, the failure as it
    // happens, the summary, and the error recorded for status and its JSON.
    let url = pg_url(&db, SECRET);
    clean(APP, &url, &["tenant", "create", "leaky"], 0);
    clean(
        APP,
        &url,
        &[
            "repair",
            "--tenant",
            "leaky",
            "--order",
            "2024_01_03_0001",
            "--mark",
            "pending",
        ],
        0,
    );
    let mut leak = command(APP, &url);
    leak.env("MTNT_TEST_LEAK", "1");
    let all = clean_with(leak, &url, &["migrate"], 1);
    let shown = "cannot go on with postgres://postgres:***@127.0.0.1:5432/";
    assert!(all.contains("panicked at tests/support/app.rs"), "{all}");
    assert!(all.matches(shown).count() >= 3, "{all}");
    assert!(
        all.contains(&format!("tenant leaky failed at 2024_01_03_0001 add_account_names: the migration panicked: {shown}")),
        "{all}"
    );
    let all = clean(APP, &url, &["status"], 0);
    assert!(all.contains(shown), "{all}");
    let all = clean(APP, &url, &["status", "--json"], 0);
    assert!(all.contains(shown), "{all}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_never_shows_the_password() {
    const APP: &str = "mtnt-portable-app";
    let control = TestControl::new("redact_my").await;
    let db = control.control().to_owned();
    for (url, what) in [
        // root has no password on the test server: a password is a wrong one.
        (
            format!("mysql://root:{SECRET}@127.0.0.1:3306/{db}"),
            "Access denied for user 'root'",
        ),
        (
            format!("mariadb://root:{ENCODED}@127.0.0.1:3306/{db}"),
            "mariadb://root:***@127.0.0.1:3306/",
        ),
        (
            format!("mysql://root:{SECRET}@127.0.0.1:1/{db}"),
            "cannot connect to mysql://root:***@127.0.0.1:1/",
        ),
        // No `//`: mtnt cannot find the control database in it.
        (
            format!("mysql:root:{SECRET}@127.0.0.1:3306/{db}"),
            "mysql:root:***@127.0.0.1:3306/",
        ),
    ] {
        let all = clean(APP, &url, &["status"], 1);
        assert!(all.contains(what), "{url}: {what:?} missing:\n{all}");
    }

    // A user with this password, for runs that succeed.
    let pool = control.pool(1).await;
    let user = format!("u{}", control.tenant_prefix().trim_end_matches('_'));
    sqlx::raw_sql(&format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY '{SECRET}'; GRANT ALL ON *.* TO '{user}'@'%'"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let url = format!("mysql://{user}:{SECRET}@127.0.0.1:3306/{db}");
    let tenant = control.tenant("acme");
    let outcome = std::panic::catch_unwind(|| {
        clean(APP, &url, &["tenant", "create", &tenant], 0);
        clean(APP, &url, &["migrate"], 0);
        clean(APP, &url, &["status"], 0);
        clean(APP, &url, &["status", "--json"], 0);
        clean(APP, &url, &["tenant", "list"], 0);
    });
    sqlx::raw_sql(&format!("DROP USER '{user}'@'%'"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    control.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
