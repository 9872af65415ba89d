//! Fault tests on the real MySQL/MariaDB server: four runner processes over one fleet,
//! and runners killed with SIGKILL at random moments (`tests/pg_faults.rs` has the
//! PostgreSQL ones and explains the app).
//!
//! MySQL commits DDL at once, so every migration there is tracked `started` before and
//! `completed` after: a killed run may leave a tenant visibly `started` with some of the
//! migration's DDL done, and the next run stops that tenant with the repair command
//! unless the migration is idempotent. Nothing else may be half done, and nothing may
//! run twice.
#![cfg(feature = "mysql")]
#![cfg(not(feature = "inventory"))]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mtnt_test_support::mysql::TestControl;
use sqlx::{MySqlPool, Row};

const A: i64 = 202401020001;
const B: i64 = 202401020002;
const INDEX: i64 = 202401020003;
const C: i64 = 202401020004;
const D: i64 = 202401020005;
const ORDERS: [i64; 4] = [A, B, INDEX, C];
const UP_TO_C: &str = "2024_01_02_0004";

fn app(control: &TestControl) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("mtnt-fault-app"));
    cmd.env("DATABASE_URL", &control.url)
        .env(
            "MTNT_TEST_LEDGER",
            format!("`{}`.fault_ledger", control.control()),
        )
        .env_remove("MTNT_LOG")
        .env_remove("MTNT_TEST_SLEEP_MS")
        .arg("--no-progress")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mtnt-fault-app did not finish within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.wait_with_output().expect("collect output")
}

async fn run(cmd: &mut Command) -> Output {
    finish(cmd.spawn().expect("start mtnt-fault-app")).await
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Replaces the fleet with `n` new tenant databases, adopted with nothing applied.
async fn reset_fleet(control: &TestControl, pool: &MySqlPool, n: usize) -> Vec<String> {
    let db = control.control();
    let old: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?",
    )
    .bind(format!("{}%", control.tenant_prefix().replace('_', "\\_")))
    .fetch_all(pool)
    .await
    .unwrap();
    for name in &old {
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::raw_sql(&format!(
        "DELETE FROM `{db}`.mtnt_tenants; DELETE FROM `{db}`.fault_ledger"
    ))
    .execute(pool)
    .await
    .unwrap();
    let names: Vec<String> = (0..n)
        .map(|i| control.tenant(&format!("f{i:03}")))
        .collect();
    for name in &names {
        sqlx::raw_sql(&format!("CREATE DATABASE `{name}`"))
            .execute(pool)
            .await
            .unwrap();
    }
    let pattern = format!("{}f%", control.tenant_prefix().replace('_', "\\_"));
    let out = run(app(control).args(["tenant", "adopt", "--schema-like", &pattern])).await;
    assert!(out.status.success(), "{}", text(&out));
    names
}

#[derive(Debug, Default)]
struct Check {
    complete: usize,
    /// Tenants with a migration left `started`, by name, with whether it is idempotent.
    started: BTreeMap<String, bool>,
    violations: Vec<String>,
}

/// Compares each tenant's tables, column, index and ledger entries with its tracking rows.
async fn check_fleet(control: &TestControl, pool: &MySqlPool, names: &[String]) -> Check {
    // A killed runner's server threads may still be finishing a statement.
    let like = format!("{}%", control.tenant_prefix().replace('_', "\\_"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Query' AND ID <> CONNECTION_ID() AND DB LIKE ?",
        )
        .bind(&like)
        .fetch_one(pool)
        .await
        .unwrap();
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let union = names
        .iter()
        .map(|n| {
            format!("SELECT '{n}' AS tenant, migration_order, status FROM `{n}`.mtnt_migrations")
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let status: BTreeMap<(String, i64), String> = sqlx::query(&union)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get("tenant"), r.get("migration_order")), r.get("status")))
        .collect();
    let tables: BTreeSet<(String, String)> = sqlx::query(
        "SELECT CAST(TABLE_SCHEMA AS CHAR) AS s, CAST(TABLE_NAME AS CHAR) AS t FROM information_schema.TABLES WHERE TABLE_SCHEMA LIKE ?",
    )
    .bind(&like)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("s"), r.get("t")))
    .collect();
    let noted: BTreeSet<String> = sqlx::query_scalar(
        "SELECT CAST(TABLE_SCHEMA AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_NAME = 'a' AND COLUMN_NAME = 'note' AND TABLE_SCHEMA LIKE ?",
    )
    .bind(&like)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let indexed: BTreeSet<String> = sqlx::query_scalar(
        "SELECT DISTINCT CAST(TABLE_SCHEMA AS CHAR) FROM information_schema.STATISTICS WHERE INDEX_NAME = 'a_note' AND TABLE_SCHEMA LIKE ?",
    )
    .bind(&like)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let ledger: BTreeMap<(String, i64), i64> = sqlx::query(&format!(
        "SELECT tenant, migration, count(*) AS n FROM `{}`.fault_ledger GROUP BY tenant, migration",
        control.control()
    ))
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| ((r.get("tenant"), r.get("migration")), r.get("n")))
    .collect();

    let mut check = Check::default();
    for t in names {
        let st = |o: i64| {
            status
                .get(&(t.clone(), o))
                .map(String::as_str)
                .unwrap_or("absent")
        };
        let done = |o: i64| st(o) == "completed";
        let runs = |o: i64| *ledger.get(&(t.clone(), o)).unwrap_or(&0);
        let has = |table: &str| tables.contains(&(t.clone(), table.to_owned()));
        let mut bad = |why: String| check.violations.push(format!("tenant {t}: {why}"));
        let all = [A, B, INDEX, C, D];
        let first_open = all.iter().position(|&o| !done(o)).unwrap_or(all.len());
        for (i, &o) in all.iter().enumerate() {
            if i > first_open && st(o) != "absent" && st(o) != "pending" {
                bad(format!("{o} is {} after an unfinished migration", st(o)));
            }
            let idempotent = o == INDEX;
            if runs(o) > 1 && !idempotent {
                bad(format!("{o} ran {} times", runs(o)));
            }
            let effects = match o {
                A => [has("a"), true],
                B => [has("b"), noted.contains(t)],
                INDEX => [indexed.contains(t), true],
                C => [has("c"), true],
                _ => [has("d"), true],
            };
            match st(o) {
                "completed" if effects.contains(&false) || runs(o) < 1 => bad(format!(
                    "{o} completed but its DDL or ledger entry is missing"
                )),
                "started" => {
                    check.started.insert(t.clone(), idempotent);
                }
                "completed" => {}
                other if effects[0] || (o == B && effects[1]) || runs(o) > 0 => {
                    bad(format!("{o} is {other} but left something behind"))
                }
                _ => {}
            }
        }
        if ORDERS.iter().all(|&o| done(o)) {
            check.complete += 1;
        }
    }
    check
}

async fn fleet(prefix: &str) -> (TestControl, MySqlPool) {
    let control = TestControl::new(prefix).await;
    let out = run(app(&control).arg("migrate")).await;
    assert!(out.status.success(), "{}", text(&out));
    let pool = control.pool(4).await;
    (control, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_runners_split_one_mysql_fleet() {
    const TENANTS: usize = 40;
    let (control, pool) = fleet("myfaults_four").await;
    let names = reset_fleet(&control, &pool, TENANTS).await;
    let children: Vec<Child> = (0..4)
        .map(|_| {
            app(&control)
                .args(["migrate", "--to", UP_TO_C])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut migrated = Vec::new();
    for child in children {
        let out = finish(child).await;
        assert!(out.status.success(), "a runner failed: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let n: usize = stdout
            .split(", ")
            .find(|p| p.ends_with(" migrations)"))
            .and_then(|p| p.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{stdout}"));
        migrated.push(n);
    }
    let check = check_fleet(&control, &pool, &names).await;
    eprintln!(
        "MySQL four runners: migrated per runner {migrated:?}, {} complete, {} violations",
        check.complete,
        check.violations.len()
    );
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.complete, TENANTS);
    assert_eq!(
        migrated.iter().sum::<usize>(),
        TENANTS,
        "each tenant migrated once"
    );
    pool.close().await;
    control.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_mysql_leaves_only_visible_started_tenants() {
    const TENANTS: usize = 30;
    // Sized for CI (about 15 s); MTNT_FAULT_ITERATIONS raises it.
    let iterations = std::env::var("MTNT_FAULT_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let started = std::time::Instant::now();
    let (control, pool) = fleet("myfaults_kill").await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("MySQL fault seed {seed}");
    let mut rng = seed;
    let mut next = move |hi: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % hi.max(1)
    };
    let (mut checked, mut stopped, mut violations) = (0, 0, Vec::new());
    for iteration in 0..iterations {
        let names = reset_fleet(&control, &pool, TENANTS).await;
        let target = next(TENANTS as u64) as i64;
        let jitter = Duration::from_millis(next(20));
        let mut child = app(&control)
            .args(["migrate", "--to", UP_TO_C])
            .spawn()
            .unwrap();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let progressed: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM `{}`.mtnt_tenants WHERE applied_order IS NOT NULL",
                control.control()
            ))
            .fetch_one(&pool)
            .await
            .unwrap();
            if progressed >= target {
                tokio::time::sleep(jitter).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        let after_kill = check_fleet(&control, &pool, &names).await;
        checked += TENANTS;
        violations.extend(
            after_kill
                .violations
                .iter()
                .map(|v| format!("iteration {iteration} after kill: {v}")),
        );

        // The same command again: complete, except the tenants visibly stopped at a
        // non-idempotent `started` migration, which fail naming `repair`.
        let out = run(app(&control).args(["migrate", "--to", UP_TO_C])).await;
        let after = check_fleet(&control, &pool, &names).await;
        checked += TENANTS;
        violations.extend(
            after
                .violations
                .iter()
                .map(|v| format!("iteration {iteration} after re-run: {v}")),
        );
        let blocked: Vec<&String> = after_kill
            .started
            .iter()
            .filter(|(_, idempotent)| !**idempotent)
            .map(|(t, _)| t)
            .collect();
        stopped += blocked.len();
        assert_eq!(
            after.complete,
            TENANTS - blocked.len(),
            "iteration {iteration}: {}",
            text(&out)
        );
        assert_eq!(out.status.success(), blocked.is_empty(), "{}", text(&out));
        let report = String::from_utf8_lossy(&out.stdout);
        // Each stopped tenant gets the repair command: its own when it stopped alone,
        // or named in the group of tenants stopped at one migration.
        for t in blocked {
            let alone = report.contains(&format!("repair --tenant {t} --order"));
            let grouped = report.contains("`repair --tenant NAME --order")
                && report.lines().any(|line| {
                    line.starts_with("    ") && line.split([',', ' ']).any(|word| word == t)
                });
            assert!(alone || grouped, "{t}: {report}");
        }
    }
    eprintln!(
        "MySQL kill -9 loop: {iterations} runs on {TENANTS} tenants, {checked} tenant checks, \
         {stopped} tenants stopped at a started migration with the repair message, {} half-migrated, in {:.1}s",
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    pool.close().await;
    control.cleanup().await;
}
