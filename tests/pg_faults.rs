//! Fault tests against the real PostgreSQL server with real processes: runners killed
//! with SIGKILL at random moments, four runners over one fleet, connections terminated
//! mid-run, a tenant whose table another session locks, a stale lease, interrupted
//! non-transactional migrations, hostile input and passwords in output.
//!
//! The app under test is `tests/support/fault_app.rs` (binary `mtnt-fault-app`). Every
//! test checks the fleet with `check_fleet`: a tenant is half-migrated when the tables,
//! columns and index in its schema, or the ledger of migration runs, disagree with its
//! tracking rows.
//!
//! The registry mechanism does not matter here, so the suite runs once (not again under
//! `--features inventory`), which keeps CI short.
#![cfg(feature = "postgres")]
#![cfg(not(feature = "inventory"))]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mtnt_test_support::faults::{iterations, Rng};
use mtnt_test_support::postgres::TestDb;
use sqlx::{PgPool, Row};

const A: i64 = 202401020001;
const B: i64 = 202401020002;
const INDEX: i64 = 202401020003;
const C: i64 = 202401020004;
const D: i64 = 202401020005;
/// Every tenant migration but the non-idempotent `create_d`.
const UP_TO_C: &str = "2024_01_02_0004";

fn app(db: &TestDb) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("mtnt-fault-app"));
    cmd.env("DATABASE_URL", &db.url)
        .env_remove("MTNT_LOG")
        .env_remove("MTNT_TEST_SLEEP_MS")
        .arg("--no-progress")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs to the end (at most two minutes).
async fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Output {
    let child = cmd.borrow_mut().spawn().expect("start mtnt-fault-app");
    finish(child).await
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

fn text(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn tenant_name(i: usize) -> String {
    format!("t{i:03}")
}

/// A database whose public migration ran (the ledger exists), and no tenant yet.
async fn fleet_db(prefix: &str) -> (TestDb, PgPool) {
    let db = TestDb::create(prefix).await;
    // The tests kill clients, never the server, so commits need not wait for the disk.
    let admin = db.pool(1).await;
    sqlx::raw_sql(&format!(
        "ALTER DATABASE \"{}\" SET synchronous_commit = off",
        db.name()
    ))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let out = run(app(&db).arg("migrate")).await;
    assert!(out.status.success(), "{}", text(&out));
    let pool = db.pool(4).await;
    (db, pool)
}

/// Replaces every tenant with `n` new, empty ones (schemas registered, nothing applied),
/// and empties the ledger and the lease table.
async fn reset_fleet(pool: &PgPool, n: usize) {
    let schemas: Vec<String> = sqlx::query_scalar("SELECT schema_name FROM public.mtnt_tenants")
        .fetch_all(pool)
        .await
        .unwrap();
    for chunk in schemas.chunks(50) {
        let sql: String = chunk
            .iter()
            .map(|s| format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE;"))
            .collect();
        sqlx::raw_sql(&format!("BEGIN; {sql} COMMIT"))
            .execute(pool)
            .await
            .unwrap();
    }
    let mut sql = String::from(
        "BEGIN; DELETE FROM public.mtnt_tenants; TRUNCATE public.fault_ledger; \
         DELETE FROM public.mtnt_runs;",
    );
    for i in 0..n {
        let name = tenant_name(i);
        sql.push_str(&format!(
            "CREATE SCHEMA {name}; INSERT INTO public.mtnt_tenants (name, schema_name, state) VALUES ('{name}', '{name}', 'active');"
        ));
    }
    sql.push_str("COMMIT");
    sqlx::raw_sql(&sql).execute(pool).await.unwrap();
}

/// What `check_fleet` found.
#[derive(Debug, Default)]
struct Check {
    tenants: usize,
    /// Tenants with every migration of `expect` completed.
    complete: usize,
    /// Tenants with a migration left `started`.
    started: usize,
    /// Extra runs of the idempotent migration (re-runs after an interruption).
    reruns: usize,
    violations: Vec<String>,
}

/// Compares every tenant's schema and ledger entries with its tracking rows.
///
/// A tenant is consistent when its completed migrations are a prefix of the migration
/// order (at most one `started` non-transactional migration after them), each completed
/// transactional migration's objects exist and it ran exactly once, and no migration that
/// is not completed left anything behind (a `started` one may have done anything).
async fn check_fleet(pool: &PgPool, expect: &[i64]) -> Check {
    // A killed runner's server sessions may still be finishing a statement or a commit:
    // wait until they are gone, then read everything in one snapshot.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name LIKE 'mtnt %'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if busy == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *conn)
        .await
        .unwrap();
    let check = check_in_snapshot(&mut conn, expect).await;
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await.unwrap();
    check
}

async fn check_in_snapshot(pool: &mut sqlx::PgConnection, expect: &[i64]) -> Check {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM public.mtnt_tenants ORDER BY name")
            .fetch_all(&mut *pool)
            .await
            .unwrap();
    let mut status: BTreeMap<(String, i64), String> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT tenant, migration_order, status FROM public.mtnt_tenant_migrations WHERE tenant = ANY($1)",
    )
    .bind(&names)
    .fetch_all(&mut *pool)
    .await
    .unwrap();
    for row in rows {
        status.insert(
            (row.get("tenant"), row.get("migration_order")),
            row.get("status"),
        );
    }
    let tables: BTreeSet<(String, String)> = sqlx::query(
        "SELECT schemaname::text AS s, tablename::text AS t FROM pg_tables WHERE schemaname = ANY($1)",
    )
    .bind(&names)
    .fetch_all(&mut *pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("s"), r.get("t")))
    .collect();
    let noted: BTreeSet<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.columns \
         WHERE table_name = 'a' AND column_name = 'note' AND table_schema = ANY($1)",
    )
    .bind(&names)
    .fetch_all(&mut *pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let indexed: BTreeSet<String> = sqlx::query_scalar(
        "SELECT schemaname::text FROM pg_indexes WHERE indexname = 'a_note' AND schemaname = ANY($1)",
    )
    .bind(&names)
    .fetch_all(&mut *pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let ledger: BTreeMap<(String, i64), i64> = sqlx::query(
        "SELECT tenant, migration, count(*) AS n FROM public.fault_ledger GROUP BY 1, 2",
    )
    .fetch_all(&mut *pool)
    .await
    .unwrap()
    .iter()
    .map(|r| ((r.get("tenant"), r.get("migration")), r.get("n")))
    .collect();

    let mut check = Check {
        tenants: names.len(),
        ..Check::default()
    };
    for t in &names {
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

        let orders = [A, B, INDEX, C, D];
        let first_open = orders
            .iter()
            .position(|&o| !done(o))
            .unwrap_or(orders.len());
        for (i, &o) in orders.iter().enumerate() {
            if i > first_open && done(o) {
                bad(format!("{o} completed after an unfinished migration"));
            }
            if st(o) == "started" && (i != first_open || !(o == INDEX || o == D)) {
                bad(format!("{o} is started, which only the first unfinished non-transactional migration may be"));
            }
        }
        for (o, objects) in [
            (A, has("a")),
            (B, has("b") && noted.contains(t)),
            (C, has("c")),
        ] {
            let any = match o {
                B => has("b") || noted.contains(t),
                _ => objects,
            };
            if done(o) && (!objects || runs(o) != 1) {
                bad(format!(
                    "{o} completed, but objects present: {objects}, ran {} times",
                    runs(o)
                ));
            }
            if !done(o) && (any || runs(o) != 0) {
                bad(format!(
                    "{o} is {}, but objects present: {any}, ran {} times",
                    st(o),
                    runs(o)
                ));
            }
        }
        match st(INDEX) {
            "completed" if !indexed.contains(t) || runs(INDEX) < 1 => bad(format!(
                "{INDEX} completed without its index or ledger entry"
            )),
            "completed" => check.reruns += (runs(INDEX) - 1) as usize,
            "started" => {}
            other if indexed.contains(t) || runs(INDEX) != 0 => {
                bad(format!("{INDEX} is {other} but ran {} times", runs(INDEX)))
            }
            _ => {}
        }
        if runs(D) > 1 {
            bad(format!("the non-idempotent {D} ran {} times", runs(D)));
        }
        match st(D) {
            "completed" if !has("d") || runs(D) != 1 => {
                bad(format!("{D} completed without its table"))
            }
            "completed" | "started" => {}
            other if has("d") || runs(D) != 0 => {
                bad(format!("{D} is {other} but its table exists"))
            }
            _ => {}
        }
        if orders.iter().any(|&o| st(o) == "started") {
            check.started += 1;
        }
        if expect.iter().all(|&o| done(o)) {
            check.complete += 1;
        }
    }
    check
}

/// The `N migrated` of a migrate report.
fn migrated(output: &Output) -> usize {
    let out = stdout(output);
    let line = out
        .lines()
        .find(|l| l.starts_with("tenants:"))
        .unwrap_or_else(|| panic!("no summary line in\n{}", text(output)));
    line.split(", ")
        .find_map(|part| {
            part.strip_suffix(" migrations)")
                .and(part.split(' ').next())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the migrated count of {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_never_half_migrates() {
    const TENANTS: usize = 200;
    // Sized for CI (about 40 s on 2 cores, with the MySQL loop under a minute); raise it
    // with MTNT_FAULT_ITERATIONS for a longer hunt.
    let iterations = iterations(8);
    let started = Instant::now();
    let (db, pool) = fleet_db("faults_kill").await;
    let mut rng = Rng::from_env_or_time();

    let (mut checked, mut killed_mid_run, mut left_started, mut reruns) = (0, 0, 0, 0);
    let mut violations = Vec::new();
    for iteration in 0..iterations {
        reset_fleet(&pool, TENANTS).await;
        // Kill once a random number of tenants has made progress, plus a random few
        // milliseconds, so that kills land anywhere: before the first tenant, inside a
        // migration, between two, inside a commit, near the end.
        let target = rng.range(0, TENANTS as u64) as i64;
        let jitter = Duration::from_millis(rng.range(0, 15));
        let mut child = app(&db).args(["migrate", "--to", UP_TO_C]).spawn().unwrap();
        let mut finished_first = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                finished_first = true;
                break;
            }
            let progressed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM public.mtnt_tenants WHERE applied_order IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if progressed >= target {
                tokio::time::sleep(jitter).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let delay = format!("{target} tenants + {jitter:?}");
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        let after_kill = check_fleet(&pool, &[A, B, INDEX, C]).await;
        checked += after_kill.tenants;
        left_started += after_kill.started;
        if !finished_first && after_kill.complete < TENANTS {
            killed_mid_run += 1;
        }
        violations.extend(
            after_kill
                .violations
                .iter()
                .map(|v| format!("iteration {iteration}, after kill at {delay}: {v}")),
        );

        // The same command again finishes the fleet.
        let out = run({
            let mut c = app(&db);
            c.args(["migrate", "--to", UP_TO_C]);
            c
        })
        .await;
        assert!(
            out.status.success(),
            "iteration {iteration}: {}",
            text(&out)
        );
        let after_rerun = check_fleet(&pool, &[A, B, INDEX, C]).await;
        checked += after_rerun.tenants;
        reruns += after_rerun.reruns;
        assert_eq!(after_rerun.complete, TENANTS, "iteration {iteration}");
        violations.extend(
            after_rerun
                .violations
                .iter()
                .map(|v| format!("iteration {iteration}, after the re-run: {v}")),
        );
    }
    eprintln!(
        "kill -9 loop: {iterations} runs on {TENANTS} tenants, \
         {killed_mid_run} killed mid-run, {checked} tenant checks, {left_started} tenants left visibly `started`, \
         {reruns} idempotent re-runs, {} half-migrated, in {:.1}s",
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        killed_mid_run >= iterations / 2,
        "most kills must land mid-run"
    );
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_runners_split_one_fleet() {
    const TENANTS: usize = 200;
    let (db, pool) = fleet_db("faults_four").await;
    reset_fleet(&pool, TENANTS).await;
    let children: Vec<Child> = (0..4)
        .map(|_| {
            app(&db)
                .env("MTNT_TEST_SLEEP_MS", "2")
                .args(["migrate", "--to", UP_TO_C])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs = Vec::new();
    for child in children {
        outputs.push(finish(child).await);
    }
    for out in &outputs {
        assert!(out.status.success(), "a runner failed: {}", text(out));
    }
    let split: Vec<usize> = outputs.iter().map(migrated).collect();
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    eprintln!(
        "four runners: tenants migrated per runner {split:?}, {} tenants checked, {} complete, {} violations",
        check.tenants,
        check.complete,
        check.violations.len()
    );
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.complete, TENANTS);
    assert_eq!(
        check.reruns, 0,
        "nothing was interrupted, so nothing ran twice"
    );
    assert_eq!(
        split.iter().sum::<usize>(),
        TENANTS,
        "each tenant migrated by exactly one runner"
    );
    assert!(
        split.iter().filter(|&&n| n > 0).count() >= 2,
        "the runners shared the work: {split:?}"
    );
    let runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.mtnt_runs WHERE state = 'finished' AND command = 'migrate'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(runs, 4, "every runner recorded its lease and finished it");

    // --shard pins a static split: two shards together cover the fleet once.
    reset_fleet(&pool, 40).await;
    let one = run({
        let mut c = app(&db);
        c.args(["migrate", "--to", UP_TO_C, "--shard", "1/2"]);
        c
    })
    .await;
    assert!(one.status.success(), "{}", text(&one));
    let half = check_fleet(&pool, &[A, B, INDEX, C]).await;
    assert_eq!(half.complete, migrated(&one));
    assert!(half.complete > 0 && half.complete < 40, "{}", half.complete);
    let two = run({
        let mut c = app(&db);
        c.env("MTNT_SHARD", "2/2")
            .args(["migrate", "--to", UP_TO_C]);
        c
    })
    .await;
    assert!(two.status.success(), "{}", text(&two));
    assert_eq!(migrated(&one) + migrated(&two), 40);
    assert_eq!(check_fleet(&pool, &[A, B, INDEX, C]).await.complete, 40);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_retried_or_reported() {
    const TENANTS: usize = 100;
    let (db, pool) = fleet_db("faults_term").await;
    reset_fleet(&pool, TENANTS).await;
    let child = app(&db)
        .env("MTNT_TEST_SLEEP_MS", "15")
        .args([
            "migrate",
            "--to",
            UP_TO_C,
            "--retry-backoff",
            "20ms",
            "--retries",
            "5",
        ])
        .spawn()
        .unwrap();
    let mut terminated = 0i64;
    for wait in [400, 300, 300] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        terminated += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    }
    let out = finish(child).await;
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    eprintln!(
        "pg_terminate_backend: {terminated} sessions ended, exit {:?}, {} of {} tenants complete, {} violations",
        out.status.code(),
        check.complete,
        check.tenants,
        check.violations.len()
    );
    assert!(terminated > 0, "the run had connections to end");
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    if out.status.success() {
        assert_eq!(check.complete, TENANTS, "{}", text(&out));
    } else {
        // Every incomplete tenant, and only those, is named as failed.
        let report = stdout(&out);
        let failed: BTreeSet<String> = report
            .lines()
            .filter_map(|l| l.strip_prefix("  "))
            .filter_map(|l| l.split(':').next())
            .filter(|name| name.len() == 4 && name.starts_with('t'))
            .map(str::to_owned)
            .collect();
        let incomplete = TENANTS - check.complete;
        assert_eq!(failed.len(), incomplete, "{}", text(&out));
    }
    // Whatever happened, the same command finishes the fleet.
    let out = run({
        let mut c = app(&db);
        c.args(["migrate", "--to", UP_TO_C]);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.complete, TENANTS);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_tenant_times_out_and_fails_alone() {
    const TENANTS: usize = 20;
    let (db, pool) = fleet_db("faults_locked").await;
    reset_fleet(&pool, TENANTS).await;
    let out = run({
        let mut c = app(&db);
        c.args(["migrate", "--to", "2024_01_02_0001"]);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));

    // A long report query holds t007.a; create_b (lock_timeout = "300ms") must alter it.
    let mut blocker = pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE t007.a IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let clock = Instant::now();
    let out = run({
        let mut c = app(&db);
        c.args([
            "migrate",
            "--to",
            UP_TO_C,
            "--retries",
            "2",
            "--retry-backoff",
            "50ms",
        ]);
        c
    })
    .await;
    let took = clock.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(report.contains("19 migrated"), "{report}");
    assert!(report.contains("1 failed"), "{report}");
    assert!(
        report.contains("tenant t007 failed at 2024_01_02_0002 create_b: error returned from database: canceling statement due to lock timeout (gave up after 3 attempts)"),
        "{report}"
    );
    assert!(
        took < Duration::from_secs(20),
        "a locked tenant must not stall the run: {took:?}"
    );
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.complete, TENANTS - 1);

    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *blocker)
        .await
        .unwrap();
    drop(blocker);
    let out = run({
        let mut c = app(&db);
        c.args(["migrate", "--to", UP_TO_C]);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("1 migrated"), "{}", text(&out));
    assert_eq!(
        check_fleet(&pool, &[A, B, INDEX, C]).await.complete,
        TENANTS
    );
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_is_taken_over_and_a_lost_lease_stops_the_runner() {
    const TENANTS: usize = 30;
    let (db, pool) = fleet_db("faults_lease").await;
    reset_fleet(&pool, TENANTS).await;
    let lease_flags = [
        "--heartbeat-interval",
        "200ms",
        "--heartbeat-retries",
        "1",
        "--unlock-deadline",
        "1s",
    ];
    // Runner A takes a lease and is killed mid-run.
    let mut a = app(&db)
        .env("MTNT_TEST_SLEEP_MS", "100")
        .args(["migrate", "--to", UP_TO_C])
        .args(lease_flags)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let a_run: String = loop {
        let row: Option<String> =
            sqlx::query_scalar("SELECT run_id FROM public.mtnt_runs WHERE state = 'running'")
                .fetch_optional(&pool)
                .await
                .unwrap_or(None);
        if let Some(id) = row {
            break id;
        }
        assert!(Instant::now() < deadline, "runner A took no lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = run(app(&db).arg("status")).await;
    assert!(
        stdout(&status).contains(&format!("running: migrate run {a_run} on ")),
        "{}",
        text(&status)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill().unwrap();
    a.wait().unwrap();
    // Its lease still says running: nobody could tell it died.
    let state: String = sqlx::query_scalar("SELECT state FROM public.mtnt_runs WHERE run_id = $1")
        .bind(&a_run)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "running");

    // Past the unlock deadline, runner B takes the lease over and finishes the fleet.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let out = run({
        let mut c = app(&db);
        c.args(["migrate", "--to", UP_TO_C]).args(lease_flags);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let row = sqlx::query(
        "SELECT a.state, a.taken_over_by, b.state AS b_state FROM public.mtnt_runs a \
         JOIN public.mtnt_runs b ON b.run_id = a.taken_over_by WHERE a.run_id = $1",
    )
    .bind(&a_run)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("state"), "taken_over");
    assert_eq!(row.get::<String, _>("b_state"), "finished");
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.complete, TENANTS);

    // A runner on a machine that vanished: its lease went stale, but the server still
    // keeps its session, which holds a tenant's lock. Taking the lease over ends that
    // session, so the tenant is migrated now instead of when the server notices.
    reset_fleet(&pool, TENANTS).await;
    let mut ghost = pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET application_name = 'mtnt vanished-pod 4242 beef'; \
         SELECT pg_advisory_lock(hashtext('mtnt'), hashtext('tenant:t005')); \
         INSERT INTO public.mtnt_runs (run_id, host, pid, command, app_name, started_at, heartbeat_at, state) \
         VALUES ('ghost', 'vanished-pod', 4242, 'migrate', 'mtnt vanished-pod 4242 beef', \
                 now() - interval '1 hour', now() - interval '1 hour', 'running')",
    )
    .execute(&mut *ghost)
    .await
    .unwrap();
    let out = run(app(&db)
        .args(["migrate", "--to", UP_TO_C])
        .args(lease_flags))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        sqlx::raw_sql("SELECT 1")
            .execute(&mut *ghost)
            .await
            .is_err(),
        "the vanished runner's session was not ended"
    );
    drop(ghost);
    let state: String =
        sqlx::query_scalar("SELECT state FROM public.mtnt_runs WHERE run_id = 'ghost'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "taken_over");
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.complete, TENANTS);

    // A runner that cannot refresh its lease stops starting tenants and fails.
    reset_fleet(&pool, TENANTS).await;
    let c = app(&db)
        .env("MTNT_TEST_SLEEP_MS", "100")
        .args(["migrate", "--to", UP_TO_C, "--concurrency", "2"])
        .args(lease_flags)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    sqlx::raw_sql("ALTER TABLE public.mtnt_runs RENAME TO mtnt_runs_away")
        .execute(&pool)
        .await
        .unwrap();
    let out = finish(c).await;
    sqlx::raw_sql("ALTER TABLE public.mtnt_runs_away RENAME TO mtnt_runs")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains("stopped early: lost contact with the database: could not refresh the run lease 2 times in a row"),
        "{report}"
    );
    assert!(report.contains("skipped (not started)"), "{report}");
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert!(check.complete < TENANTS, "{}", check.complete);
    pool.close().await;
    db.drop_db().await;
}

/// Waits until `n` tenants have migration `order` `started`.
async fn wait_started(pool: &PgPool, order: i64, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut started = 0;
        for i in 0..n {
            let sql = format!(
                "SELECT count(*) FROM public.mtnt_tenant_migrations WHERE tenant = '{}' \
                 AND migration_order = {order} AND status = 'started'",
                tenant_name(i)
            );
            started += sqlx::query_scalar::<_, i64>(&sql)
                .fetch_one(pool)
                .await
                .unwrap_or(0);
        }
        if started as usize == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {started} of {n} started {order}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_non_transactional_migrations() {
    const TENANTS: usize = 4;
    let (db, pool) = fleet_db("faults_nontx").await;
    reset_fleet(&pool, TENANTS).await;
    let out = run({
        let mut c = app(&db);
        c.args(["migrate", "--to", "2024_01_02_0002"]);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));

    // Idempotent: killed between `started` and `completed`, it simply runs again.
    let mut child = app(&db)
        .env("MTNT_TEST_SLEEP_MS", "5000")
        .args(["migrate", "--to", "2024_01_02_0003"])
        .spawn()
        .unwrap();
    wait_started(&pool, INDEX, TENANTS).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let check = check_fleet(&pool, &[A, B, INDEX]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.started, TENANTS);
    let out = run({
        let mut c = app(&db);
        c.args(["migrate", "--to", UP_TO_C]);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.complete, TENANTS);

    // Not idempotent: the tenant stops with the repair command, until it is repaired.
    let mut child = app(&db)
        .env("MTNT_TEST_SLEEP_MS", "5000")
        .arg("migrate")
        .spawn()
        .unwrap();
    wait_started(&pool, D, TENANTS).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let out = run(app(&db).arg("migrate")).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(report.contains(&format!("{TENANTS} failed")), "{report}");
    // One group: every tenant failed the same way, each is named once, with the repair.
    assert!(
        report.contains(&format!("{TENANTS} tenants failed: migration 2024_01_02_0005 create_d in the tenant started and never completed")),
        "{report}"
    );
    assert!(report.contains("\n    t000, t001, t002,"), "{report}");
    assert!(
        report.contains("fix, for each NAME above: check the schema, then `repair --tenant NAME --order 202401020005 --mark completed`"),
        "{report}"
    );
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.started, TENANTS);
    // The table exists (the kill came after CREATE TABLE): mark it completed.
    for i in 0..TENANTS {
        let out = run({
            let mut c = app(&db);
            c.args([
                "repair",
                "--tenant",
                &tenant_name(i),
                "--order",
                "2024_01_02_0005",
                "--mark",
                "completed",
            ]);
            c
        })
        .await;
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = run(app(&db).arg("migrate")).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("{TENANTS} already current")),
        "{}",
        text(&out)
    );
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_changes() {
    let (db, pool) = fleet_db("faults_input").await;
    reset_fleet(&pool, 3).await;
    let out = run({
        let mut c = app(&db);
        c.args(["migrate", "--to", "2024_01_02_0001"]);
        c
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let hostile = [
        "x\"; DROP SCHEMA public; --",
        "Robert'); DROP TABLE mtnt_tenants;--",
        "../../etc/passwd",
        "a b",
        "ünïcode",
        "",
        "t\n",
        "pg_catalog",
        "public",
        "mtnt_runs",
        "$(reboot)",
        "`id`",
        &"x".repeat(51),
    ];
    for name in hostile {
        for args in [
            vec!["tenant", "create", name],
            vec!["migrate", "--tenant", name],
            vec!["rollback", "--tenant", name, "--all"],
        ] {
            let out = run({
                let mut c = app(&db);
                c.args(&args);
                c
            })
            .await;
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("invalid tenant name"),
                "{args:?}: {}",
                text(&out)
            );
        }
    }
    // Unknown tenant, unknown order, bad shard: refused, nothing changed.
    for (args, message) in [
        (
            vec!["migrate", "--tenant", "nobody"],
            "unknown tenant \"nobody\"",
        ),
        (
            vec!["migrate", "--to", "2030_01_01_0001"],
            "no registered migration has order 2030_01_01_0001",
        ),
        (
            vec!["rollback", "--tenant", "t000", "--to", "2030_01_01_0001"],
            "no registered migration has order",
        ),
        (vec!["migrate", "--shard", "5/4"], "invalid shard 5/4"),
        (vec!["migrate", "--lock-timeout", "5"], "has no unit"),
        (
            vec!["migrate", "--unlock-deadline", "2s"],
            "fix: raise --unlock-deadline",
        ),
    ] {
        let out = run({
            let mut c = app(&db);
            c.args(&args);
            c
        })
        .await;
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{args:?}: {}",
            text(&out)
        );
    }
    // A database ahead of the code: refused before the public schema or any tenant moves.
    sqlx::raw_sql(
        "INSERT INTO public.mtnt_tenant_migrations (tenant, migration_order, name, checksum, status) \
         VALUES ('t001', 209901010001, 'from_the_future', 'x', 'completed'); \
         UPDATE public.mtnt_tenants SET applied_order = 209901010001 WHERE name = 't001'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = run(app(&db).arg("migrate")).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "tenant t001 has migration 2099_01_01_0001 from_the_future applied, which this binary does not know; nothing was run"
        ),
        "{}",
        text(&out)
    );
    let check = check_fleet(&pool, &[A]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    let behind: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.mtnt_tenant_migrations WHERE tenant = 't000' AND status = 'completed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(behind, 1, "t000 was not migrated");

    // A password never shows, not on success, not on failure, not in trace logs.
    let with_password = db.url.replacen("postgres@", "postgres:s3cret-pw@", 1);
    assert!(with_password.contains("s3cret-pw"), "{with_password}");
    for (url, args) in [
        (with_password.as_str(), vec!["status"]),
        (with_password.as_str(), vec!["migrate", "--to", "nonsense"]),
        (with_password.as_str(), vec!["migrate"]),
        (
            "postgres://app:s3cret-pw@127.0.0.1:1/fleet",
            vec!["migrate"],
        ),
        ("mysql://app:s3cret-pw@127.0.0.1:1/fleet", vec!["status"]),
        ("postgres://app:s3cret-pw@[::1", vec!["status"]),
    ] {
        let out = run({
            let mut c = app(&db);
            c.env("DATABASE_URL", url)
                .env("MTNT_LOG", "trace")
                .args(&args);
            c
        })
        .await;
        let all = text(&out);
        assert!(
            !all.contains("s3cret-pw"),
            "{args:?} with {url} leaked the password:\n{all}"
        );
    }
    let out = run({
        let mut c = app(&db);
        c.env("DATABASE_URL", "postgres://app:s3cret-pw@127.0.0.1:1/fleet")
            .arg("migrate");
        c
    })
    .await;
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot connect to postgres://app:***@127.0.0.1:1/fleet"));
    let leases: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.mtnt_runs WHERE concat_ws(' ', run_id, host, command, app_name) LIKE '%s3cret%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leases, 0);
    pool.close().await;
    db.drop_db().await;
}

#[test]
fn two_migrations_at_one_order_are_refused() {
    fn noop<'a, 'c>(
        _: &'a mut mtnt::Ctx<'c>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = mtnt::Result<()>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }
    let make = |name: &'static str, line: u32| -> &'static mtnt::Migration {
        Box::leak(Box::new(mtnt::Migration {
            __order: 202401010001,
            __name: name,
            __scope: mtnt::Scope::Tenant,
            __up: noop,
            __down: None,
            __transaction: true,
            __idempotent: false,
            __enabled: true,
            __lock_timeout_ms: None,
            __statement_timeout_ms: None,
            __checksum: "x",
            __location: mtnt::Location {
                file: "m.rs",
                line,
                module_path: "m",
            },
        }))
    };
    let error = mtnt::MigrationSet::new([make("one", 1), make("two", 9)]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "two migrations have order 2024_01_01_0001: one at m.rs:1 and two at m.rs:9; give one of them another order"
    );
    assert_eq!(
        mtnt::cli_fix(&error).as_deref(),
        Some("give one of them another order (`cargo mtnt new` picks the next free one)")
    );
}

mod leak {
    #[mtnt::migration(scope = "tenant", order = 2031_01_01_0001)]
    async fn create_t(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE t (id bigint)").await
    }

    // Fails in one tenant, panics in another: neither may keep its tenant's lock.
    #[mtnt::migration(scope = "tenant", order = 2031_01_01_0002)]
    async fn break_some(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        match ctx.tenant().map(|t| t.name.to_string()).as_deref() {
            Some("fails") => ctx.execute("SELECT * FROM no_such_table").await,
            Some("panics") => panic!("a bug in a migration"),
            _ => ctx.execute("ALTER TABLE t ADD COLUMN note text").await,
        }
    }
}

/// Unlike sqlx's migrator, which keeps its lock when a migration fails, mtnt releases a
/// tenant's lock on every exit path, while the process goes on.
#[tokio::test]
async fn failed_and_panicking_migrations_release_their_locks() {
    let db = TestDb::create("faults_leak").await;
    let pool = db.pool(6).await;
    let migrator = mtnt::Migrator::builder(mtnt::PostgresBackend::new(pool.clone()))
        .migrations(mtnt::MigrationSet::registered_in("pg_faults::leak").unwrap())
        .build()
        .unwrap();
    for name in ["fails", "panics", "works"] {
        let name = mtnt::TenantName::new(name).unwrap();
        sqlx::raw_sql(&format!("CREATE SCHEMA {name}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    migrator.adopt("%s", None).await.unwrap();
    let report = migrator
        .migrate(&mtnt::MigrateOptions::new())
        .await
        .unwrap();
    let failed: Vec<String> = report
        .failures
        .iter()
        .map(|f| format!("{}: {}", f.tenant, f.error))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(failed[0].contains("no_such_table"), "{failed:#?}");
    assert!(
        failed[1].contains("the migration panicked: a bug in a migration"),
        "{failed:#?}"
    );
    // The unlock runs on a spawned task as the session is dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} advisory locks still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the lease says the run ended.
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM public.mtnt_runs")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(states, ["failed"]);
    pool.close().await;
    db.drop_db().await;
}

mod held {
    #[mtnt::migration(scope = "tenant", order = 2032_01_01_0001, down = drop_t)]
    async fn create_t(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE t (id bigint)").await
    }

    async fn drop_t(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("DROP TABLE t").await
    }
}

/// `rollback` and `repair` wait for a tenant another run holds, but at most the unlock
/// deadline, then say so and change nothing; once it is free they go ahead.
#[tokio::test]
async fn rollback_and_repair_wait_for_a_held_tenant_at_most_the_deadline() {
    let db = TestDb::create("faults_held").await;
    let pool = db.pool(4).await;
    let migrator = mtnt::Migrator::builder(mtnt::PostgresBackend::new(pool.clone()))
        .migrations(mtnt::MigrationSet::registered_in("pg_faults::held").unwrap())
        .safety(
            mtnt::SafetySettings::new()
                .heartbeat_interval(Duration::from_millis(100))
                .heartbeat_retries(1)
                .unlock_deadline(Duration::from_millis(800)),
        )
        .build()
        .unwrap();
    let acme = mtnt::TenantName::new("acme").unwrap();
    migrator.create_tenant(&acme).await.unwrap();

    // Another run's session holds acme's lock.
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('mtnt'), hashtext('tenant:acme'))")
        .execute(&mut *other)
        .await
        .unwrap();
    let started = Instant::now();
    let bounded = Duration::from_secs(10);
    let error = tokio::time::timeout(bounded, migrator.rollback(&acme, mtnt::RollbackTarget::All))
        .await
        .expect("rollback waited past its deadline")
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(error, mtnt::Error::Busy { .. }),
        "{error:?}: {error}"
    );
    assert!(error.to_string().contains("tenant acme"), "{error}");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let error = tokio::time::timeout(
        bounded,
        migrator.mark(Some(&acme), 203201010001, mtnt::MigrationStatus::Pending),
    )
    .await
    .expect("repair --mark waited past its deadline")
    .unwrap_err();
    assert!(matches!(error, mtnt::Error::Busy { .. }), "{error}");
    let error = tokio::time::timeout(
        bounded,
        migrator.repair_checksums(std::slice::from_ref(&acme)),
    )
    .await
    .expect("repair --checksums waited past its deadline")
    .unwrap_err();
    assert!(matches!(error, mtnt::Error::Busy { .. }), "{error}");
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('acme.t')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(table.as_deref(), Some("acme.t"), "nothing was reverted");

    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);
    let report = migrator
        .rollback(&acme, mtnt::RollbackTarget::All)
        .await
        .unwrap();
    assert_eq!(report.reverted.len(), 1);
    pool.close().await;
    db.drop_db().await;
}

/// A runner killed with SIGKILL leaves its lease `running`; once its heartbeat is older
/// than the unlock deadline, `status` shows it stale, with when it was last seen, and its
/// JSON lists it apart from the running runs (before: `running: ...`, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_killed_run_stale() {
    let (db, pool) = fleet_db("faults_stale_status").await;
    reset_fleet(&pool, 10).await;
    let deadline_flags = ["--heartbeat-interval", "200ms", "--unlock-deadline", "1s"];
    let mut a = app(&db)
        .env("MTNT_TEST_SLEEP_MS", "200")
        .args(["migrate", "--to", UP_TO_C, "--concurrency", "1"])
        .args(deadline_flags)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let a_run: String = loop {
        let row: Option<String> =
            sqlx::query_scalar("SELECT run_id FROM public.mtnt_runs WHERE state = 'running'")
                .fetch_optional(&pool)
                .await
                .unwrap_or(None);
        if let Some(id) = row {
            break id;
        }
        assert!(Instant::now() < deadline, "the runner took no lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill().unwrap();
    a.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let status = run(app(&db).arg("status").args(deadline_flags)).await;
    let out = stdout(&status);
    assert!(
        out.contains(&format!("stale: migrate run {a_run} on ")),
        "{}",
        text(&status)
    );
    assert!(out.contains(", last seen "), "{out}");
    assert!(out.contains(" ago): not running"), "{out}");
    assert!(!out.contains("running: migrate run"), "{out}");

    let json = run(app(&db).args(["status", "--json"]).args(deadline_flags)).await;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(
        value["running"].as_array().map(Vec::len),
        Some(0),
        "{value}"
    );
    let stale = value["stale_runs"].as_array().expect("stale_runs");
    assert_eq!(stale.len(), 1, "{value}");
    assert_eq!(stale[0]["run_id"], a_run.as_str());
    assert_eq!(stale[0]["stale"], true);
    assert!(stale[0]["silent_secs"].as_f64().unwrap() >= 1.0, "{value}");

    // With a deadline it has not passed yet, the same lease is still a running one.
    let status = run(app(&db).args(["status", "--unlock-deadline", "1h"])).await;
    assert!(
        stdout(&status).contains(&format!("running: migrate run {a_run} on ")),
        "{}",
        text(&status)
    );
    pool.close().await;
    db.drop_db().await;
}

/// A registry row inserted by hand with a name mtnt refuses fails alone: `migrate` runs the
/// rest of the fleet and exits non-zero naming the row, its table and how to fix it;
/// `status` and `tenant list` show the fleet and the row apart. Before, all three failed for
/// the whole fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_registry_name_fails_only_its_row() {
    const TENANTS: usize = 5;
    let (db, pool) = fleet_db("faults_bad_row").await;
    reset_fleet(&pool, TENANTS).await;
    sqlx::raw_sql(
        "INSERT INTO public.mtnt_tenants (name, schema_name, state) VALUES ('Bad Name', 'bad_schema', 'active')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = run(app(&db).args(["migrate", "--to", UP_TO_C])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains(
            "registry row \"Bad Name\" failed: the tenant registry \"public\".mtnt_tenants has a row named \"Bad Name\", which is not a valid tenant name (it must start with a lowercase letter)"
        ),
        "{}",
        text(&out)
    );
    assert!(
        report.contains("`DELETE FROM \"public\".mtnt_tenants WHERE name = 'Bad Name'`"),
        "{report}"
    );
    assert!(report.contains("1 failed"), "{report}");
    let check = check_fleet(&pool, &[A, B, INDEX, C]).await;
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    assert_eq!(check.complete, TENANTS, "the rest of the fleet migrates");

    let status = run(app(&db).arg("status")).await;
    let shown = stdout(&status);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        shown.contains("0/5 tenants current, 5 behind, 0 failed"),
        "{shown}"
    );
    assert!(
        shown.contains("registry row \"Bad Name\" failed"),
        "{shown}"
    );
    let check_gate = run(app(&db).args(["status", "--check"])).await;
    assert_eq!(check_gate.status.code(), Some(1), "{}", text(&check_gate));
    let json = run(app(&db).args(["status", "--json"])).await;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(
        value["invalid_registry_rows"][0]["name"], "Bad Name",
        "{value}"
    );

    let list = run(app(&db).args(["tenant", "list"])).await;
    assert_eq!(list.status.code(), Some(1), "{}", text(&list));
    assert!(stdout(&list).contains("t004"), "{}", text(&list));
    assert!(
        String::from_utf8_lossy(&list.stderr).contains("registry row \"Bad Name\" failed"),
        "{}",
        text(&list)
    );
    pool.close().await;
    db.drop_db().await;
}

/// Two `tenant adopt` runs over the same 30 unregistered schemas at once: each schema is
/// registered once, both runs succeed, and a run that finds a schema adopted by the other
/// says so in those words, never with the raw duplicate-key error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adopts_split_the_schemas() {
    const SCHEMAS: usize = 30;
    let (db, pool) = fleet_db("faults_adopt_race").await;
    reset_fleet(&pool, 0).await;
    let mut sql = String::new();
    for i in 0..SCHEMAS {
        sql.push_str(&format!(
            "CREATE SCHEMA race{i:02}; CREATE TABLE race{i:02}.a (id bigint PRIMARY KEY);"
        ));
    }
    sqlx::raw_sql(&sql).execute(&pool).await.unwrap();
    let adopt = || {
        app(&db)
            .args(["tenant", "adopt", "--schema-like", "race%"])
            .spawn()
            .unwrap()
    };
    let started = Instant::now();
    let (a, b) = (adopt(), adopt());
    let (a, b) = (finish(a).await, finish(b).await);
    eprintln!("adopt race: both runs done in {:?}", started.elapsed());
    let mut adopted = 0;
    let mut taken = 0;
    for out in [&a, &b] {
        assert!(out.status.success(), "{}", text(out));
        let all = text(out);
        assert!(!all.contains("duplicate key"), "{all}");
        adopted += stdout(out)
            .lines()
            .filter(|l| l.starts_with("adopted race"))
            .count();
        taken += all.matches("already adopted by another run").count();
    }
    eprintln!("adopt race: {adopted} adopted, {taken} found adopted by the other run");
    assert_eq!(adopted, SCHEMAS);
    let registered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.mtnt_tenants WHERE name LIKE 'race%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(registered as usize, SCHEMAS);
    pool.close().await;
    db.drop_db().await;
}
