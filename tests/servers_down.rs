//! A server of the fleet lost mid-run, and a server with few free connections (issue 15),
//! on both PostgreSQL models. The control database is the model's (5432); the second
//! server, `eu-2`, is a private cluster of the test's own ([`Cluster`]), which a test may
//! stop (`pg_ctl stop -m immediate`: every session cut, as a crash would) and start again,
//! or start with `max_connections = 20`. Skipped, saying so, where the PostgreSQL 15
//! binaries are missing.
//!
//! The app is the fault app (`tests/support/fault_app.rs`): its tenant migrations sleep
//! `MTNT_TEST_SLEEP_MS` in the database, so a run is mid-way when the server goes, and
//! each appends to a ledger in its own transaction, so the test can count how often each
//! really ran.
#![cfg(feature = "postgres")]
// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mtnt_test_support::cluster::{Cluster, ClusterConfig};
use mtnt_test_support::like_prefix;
use mtnt_test_support::models::{Kind, Model, Place};
use sqlx::{Connection as _, PgConnection};

/// The fault app's tenant migrations, in order.
const ORDERS: [i64; 5] = [
    2024_01_02_0001,
    2024_01_02_0002,
    2024_01_02_0003,
    2024_01_02_0004,
    2024_01_02_0005,
];

/// The last of its transactional tenant migrations: a run up to it that is cut leaves
/// each tenant at a migration boundary (the two non-transactional ones after it would
/// leave a tenant to repair, which is not what this tests).
const TRANSACTIONAL_UP_TO: &str = "2024_01_02_0002";

/// The ledger's table, as the fault app names it.
const LEDGER_DDL: &str = "CREATE TABLE public.fault_ledger (tenant text NOT NULL, \
     migration bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())";

/// The database of `eu-2` that holds the tenant schemas (schema per tenant); with a
/// database per tenant, the tenant databases are made from `postgres`.
const EU2_DB: &str = "eu";

/// The fault app for `model`.
fn app(model: &Model) -> Command {
    let mut cmd = model.command(env!("CARGO_BIN_EXE_mtnt-fault-app"));
    cmd.env_remove("MTNT_TEST_SLEEP_MS")
        .env_remove("MTNT_TEST_LEDGER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits for `child` (a guard against a hang, not a measure: generous), and its output.
async fn finish(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.wait_with_output().unwrap()
}

/// Runs the app with `args`, expecting exit code `code`; its output.
async fn run(model: &Model, args: &[&str], code: i32) -> Output {
    let out = finish(app(model).args(args).spawn().unwrap(), &args.join(" ")).await;
    assert_eq!(out.status.code(), Some(code), "{args:?}\n{}", text(&out));
    out
}

/// `eu-2`, registered in the model's control registry.
async fn add_eu2(model: &Model, cluster: &Cluster) {
    let url = match model.kind() {
        Kind::PgSchema => {
            cluster
                .execute("postgres", &format!("CREATE DATABASE {EU2_DB}"))
                .await;
            cluster.execute(EU2_DB, LEDGER_DDL).await;
            cluster.url(EU2_DB)
        }
        _ => cluster.url("postgres"),
    };
    run(model, &["server", "add", "eu-2", &url], 0).await;
}

/// Makes the storage of tenants `names` on `eu-2` (`cluster`) or on the default server
/// (`None`), with a ledger where the tenant's migrations find it, and registers them with
/// `tenant adopt` on that server: tenants with every migration still to run.
async fn adopt(model: &Model, cluster: Option<&Cluster>, names: &[String]) {
    for name in names {
        match (model.kind(), cluster) {
            (Kind::PgSchema, Some(cluster)) => {
                cluster
                    .execute(EU2_DB, &format!("CREATE SCHEMA \"{name}\""))
                    .await
            }
            (Kind::PgSchema, None) => {
                model
                    .execute(Place::Control, &format!("CREATE SCHEMA \"{name}\""))
                    .await
            }
            (_, Some(cluster)) => {
                cluster
                    .execute("postgres", &format!("CREATE DATABASE \"{name}\""))
                    .await;
                cluster.execute(name, LEDGER_DDL).await;
            }
            (_, None) => model.make_storage(name, LEDGER_DDL).await,
        }
    }
    let pattern = like_prefix(model.prefix());
    let mut args = vec!["tenant", "adopt", "--schema-like", &pattern];
    if cluster.is_some() {
        args.extend(["--server", "eu-2"]);
    }
    let out = run(model, &args, 0).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{} adopted", names.len())),
        "{}",
        text(&out)
    );
}

/// A connection to where `tenant`'s tables are on `eu-2`, and the tenant's tracking table
/// there.
async fn on_eu2(model: &Model, cluster: &Cluster, tenant: &str) -> (PgConnection, String) {
    match model.kind() {
        Kind::PgSchema => (
            cluster.connect(EU2_DB).await.unwrap(),
            format!("\"{tenant}\".mtnt_migrations"),
        ),
        _ => (
            cluster.connect(tenant).await.unwrap(),
            "mtnt_migrations".to_owned(),
        ),
    }
}

/// What really happened to `tenant`: its tracking rows (order and status, by order) and
/// its ledger entries (the orders that ran to their commit, each time they did), read on
/// its server, `eu-2` (`cluster`) or the default one.
async fn history(
    model: &Model,
    cluster: Option<&Cluster>,
    tenant: &str,
) -> (Vec<(i64, String)>, Vec<i64>) {
    let rows =
        "SELECT migration_order::text || ' ' || status FROM {tracking} ORDER BY migration_order";
    let ledger = format!(
        "SELECT migration::text FROM public.fault_ledger WHERE tenant = '{tenant}' ORDER BY migration"
    );
    let (rows, ledger) = match cluster {
        Some(cluster) => {
            let (mut conn, tracking) = on_eu2(model, cluster, tenant).await;
            // Made by the tenant's first migration: a tenant never started has none.
            let made: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&tracking)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            let rows: Vec<String> = match made {
                true => sqlx::query_scalar(&rows.replace("{tracking}", &tracking))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap(),
                false => Vec::new(),
            };
            let ledger: Vec<String> = sqlx::query_scalar(&ledger)
                .fetch_all(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            (rows, ledger)
        }
        None => {
            let place = match model.kind() {
                Kind::PgSchema => Place::Control,
                _ => Place::Tenant(tenant),
            };
            let tracking = match model.kind() {
                Kind::PgSchema => {
                    format!("public.mtnt_tenant_migrations WHERE tenant = '{tenant}'")
                }
                _ => "mtnt_migrations".to_owned(),
            };
            (
                model
                    .texts(
                        Place::Tenant(tenant),
                        &rows.replace("{tracking}", &tracking),
                    )
                    .await,
                model.texts(place, &ledger).await,
            )
        }
    };
    let rows = rows
        .iter()
        .map(|r| {
            let (order, status) = r.split_once(' ').unwrap();
            (order.parse().unwrap(), status.to_owned())
        })
        .collect();
    (rows, ledger.iter().map(|o| o.parse().unwrap()).collect())
}

/// Every one of `tenants` (on `cluster`, or the default server) has each of [`ORDERS`]
/// recorded completed once, and applied once by its ledger.
async fn all_migrated_once(model: &Model, cluster: Option<&Cluster>, tenants: &[String]) {
    for name in tenants {
        assert_eq!(
            history(model, cluster, name).await,
            exactly(&ORDERS),
            "{name}"
        );
    }
}

/// Every migration of `orders` completed once, and nothing else.
fn exactly(orders: &[i64]) -> (Vec<(i64, String)>, Vec<i64>) {
    (
        orders
            .iter()
            .map(|o| (*o, "completed".to_owned()))
            .collect(),
        orders.to_vec(),
    )
}

/// Waits until a tenant migration runs on `cluster` (its sleep seen in
/// `pg_stat_activity`), while `child` runs.
async fn wait_for_a_tenant_running(cluster: &Cluster, child: &mut Child, log: &Path) {
    let mut watcher = cluster.connect("postgres").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%' AND state = 'active'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if running > 0 {
            break;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            panic!(
                "no tenant ran on eu-2 while the run lasted:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = watcher.close().await;
}

const TENANTS: usize = 20;

mtnt_test_support::scenarios_pg!(a_server_lost_mid_run_fails_its_tenants_in_one_line);

/// `eu-2` stopped while its tenants migrate: the run exits non-zero, its tenants (those
/// cut mid-migration as well as those not started) are one line naming the server, none
/// named on its own; the default server's tenants all complete; no tenant is left
/// half-migrated. `status` says which server it cannot read, and exits non-zero. Once
/// `eu-2` is back, the next run finishes every tenant, each migration run once.
async fn a_server_lost_mid_run_fails_its_tenants_in_one_line(model: &Model) {
    let Some(cluster) = Cluster::start(ClusterConfig::default()) else {
        return;
    };
    add_eu2(model, &cluster).await;
    let local: Vec<String> = (0..TENANTS)
        .map(|i| model.tenant(&format!("a{i:02}")))
        .collect();
    let remote: Vec<String> = (0..TENANTS)
        .map(|i| model.tenant(&format!("b{i:02}")))
        .collect();
    // The public migration first: it makes the default server's ledger.
    run(model, &["migrate"], 0).await;
    adopt(model, None, &local).await;
    adopt(model, Some(&cluster), &remote).await;

    let log = cluster.dir.path().join("migrate.log");
    let mut child = app(model)
        .env("MTNT_TEST_SLEEP_MS", "400")
        .args([
            "migrate",
            "--to",
            TRANSACTIONAL_UP_TO,
            "--concurrency",
            "8",
            "--per-server-concurrency",
            "4",
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    wait_for_a_tenant_running(&cluster, &mut child, &log).await;
    cluster.stop();
    let status = finish(child, "the run with eu-2 stopped").await.status;
    let out = format!(
        "{}{}",
        std::fs::read_to_string(&log).unwrap(),
        std::fs::read_to_string(log.with_extension("err")).unwrap()
    );
    eprintln!("the run with eu-2 stopped:\n{out}");
    assert_eq!(status.code(), Some(1), "{out}");

    // The default server's tenants all completed.
    let two = &ORDERS[..2];
    for name in &local {
        assert_eq!(
            history(model, None, name).await,
            exactly(two),
            "{name}\n{out}"
        );
    }

    // `status` while eu-2 is down: per server, non-zero, at once.
    let down = run(model, &["status", "--by-server"], 1).await;
    let down = text(&down);
    eprintln!("status with eu-2 stopped:\n{down}");
    assert!(
        down.contains(&format!(
            "server eu-2 unreachable: {TENANTS} tenants not read ("
        )),
        "{down}"
    );
    assert!(down.contains("fix: check that server eu-2 is up"), "{down}");
    assert!(
        down.contains(&format!("server default: 0/{TENANTS} tenants current")),
        "{down}"
    );
    let json = run(model, &["status", "--json"], 1).await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let unreachable = &json["unreachable_servers"];
    assert_eq!(unreachable.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(unreachable[0]["server"], "eu-2", "{json}");
    assert_eq!(unreachable[0]["tenants"], TENANTS, "{json}");

    // eu-2's tenants: one line for all those not migrated, as the run went and at its end;
    // none named, whether it was cut mid-migration or never started.
    cluster.start_again();
    let mut not_migrated = 0;
    for name in &remote {
        let (rows, ledger) = history(model, Some(&cluster), name).await;
        // No tenant half-migrated: each migration committed whole (its tracking row and
        // its ledger entry) or not at all.
        let completed: Vec<i64> = rows
            .iter()
            .filter(|(_, s)| s == "completed")
            .map(|(o, _)| *o)
            .collect();
        assert_eq!(
            rows.len(),
            completed.len(),
            "{name}: a row not completed: {rows:?}"
        );
        assert_eq!(completed, ledger, "{name}: tracking rows against what ran");
        assert!(two.starts_with(&completed), "{name}: {completed:?}");
        if completed != two {
            not_migrated += 1;
        }
        assert!(!out.contains(name.as_str()), "{name} named:\n{out}");
    }
    assert!(not_migrated > 0, "eu-2 was stopped after its run:\n{out}");
    let line = format!("server eu-2 unreachable: {not_migrated} tenants not migrated (");
    assert!(out.contains(&line), "{line}\n{out}");
    assert_eq!(
        out.matches("server eu-2 unreachable").count(),
        2,
        "one line as it happens, one in the summary:\n{out}"
    );
    let why = out[out.find(&line).unwrap() + line.len()..]
        .lines()
        .next()
        .unwrap();
    // Found lost by the connections it cut, not after a pool's acquire timeout.
    assert!(!why.contains("timed out"), "{why}\n{out}");
    assert!(out.contains("fix: check that server eu-2 is up"), "{out}");

    // eu-2 back: the next run finishes every tenant, each migration run once.
    let again = run(model, &["migrate"], 0).await;
    let again = text(&again);
    assert!(!again.contains("unreachable"), "{again}");
    run(model, &["status", "--check"], 0).await;
    all_migrated_once(model, None, &local).await;
    all_migrated_once(model, Some(&cluster), &remote).await;
}

mtnt_test_support::scenarios_pg!(a_server_with_few_free_connections_gets_fewer_tenants_at_once);

/// A fleet on `eu-2`, a server with `max_connections = 20`, larger than what it has
/// connections for, run with `--per-server-concurrency 40`: its budget is lowered to its
/// free connections, saying so, and no tenant is refused a connection.
async fn a_server_with_few_free_connections_gets_fewer_tenants_at_once(model: &Model) {
    let Some(cluster) = Cluster::start(ClusterConfig {
        max_connections: 20,
        ..ClusterConfig::default()
    }) else {
        return;
    };
    add_eu2(model, &cluster).await;
    let remote: Vec<String> = (0..30).map(|i| model.tenant(&format!("b{i:02}"))).collect();
    adopt(model, Some(&cluster), &remote).await;
    let out = finish(
        app(model)
            .env("MTNT_TEST_SLEEP_MS", "200")
            .args([
                "migrate",
                "--concurrency",
                "40",
                "--per-server-concurrency",
                "40",
            ])
            .spawn()
            .unwrap(),
        "the run on eu-2",
    )
    .await;
    let out = text(&out);
    eprintln!("the run on eu-2:\n{out}");
    assert!(out.contains("status Some(0)"), "{out}");
    assert!(
        out.contains("warning: server eu-2: per-server concurrency 40 lowered to "),
        "{out}"
    );
    assert!(!out.contains("too many clients"), "{out}");
    assert!(!out.contains("refused a connection"), "{out}");
    run(model, &["status", "--check"], 0).await;
    all_migrated_once(model, Some(&cluster), &remote).await;
}

mtnt_test_support::scenarios_pg!(a_server_lost_between_its_tenants_is_found_at_once);

/// `eu-2` stopped while no session of the run is open there (a canary of `eu-2` done,
/// the run in its soak pause): the wave's tenants of `eu-2` find it lost by one new
/// connection (the reason is the server's refusal, not a pool's timeout), and are one
/// line; the default server's tenants complete. (That the check comes after a short
/// wait rather than the pool's 30 s acquire timeout shows only in how long the run
/// took, which this prints and, machines being noisy, does not assert.)
async fn a_server_lost_between_its_tenants_is_found_at_once(model: &Model) {
    let Some(cluster) = Cluster::start(ClusterConfig::default()) else {
        return;
    };
    add_eu2(model, &cluster).await;
    let local: Vec<String> = (0..3).map(|i| model.tenant(&format!("a{i:02}"))).collect();
    let remote: Vec<String> = (0..6).map(|i| model.tenant(&format!("b{i:02}"))).collect();
    run(model, &["migrate"], 0).await;
    adopt(model, None, &local).await;
    adopt(model, Some(&cluster), &remote).await;

    let log = cluster.dir.path().join("migrate.log");
    let child = app(model)
        .args([
            "migrate",
            "--canary-tenant",
            &remote[0],
            // Long enough for the test to stop eu-2 in it (were it late, the wave's
            // sessions would be cut instead: found lost too, the other way).
            "--wave-pause",
            "5s",
        ])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    // The canary done: its registry row (a cache for a tenant on eu-2) follows its commit.
    let done = format!(
        "SELECT count(*) FROM mtnt_tenants WHERE name = '{}' AND applied_order = {}",
        remote[0], ORDERS[4]
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while model.int(Place::Control, &done).await != Some(1) {
        assert!(Instant::now() < deadline, "the canary never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The cluster runs with synchronous_commit off: an immediate stop may lose its last
    // commits (the canary's last tracking row) unless they are on disk first.
    cluster.execute("postgres", "CHECKPOINT").await;
    cluster.stop();
    let status = finish(child, "the run with eu-2 stopped").await.status;
    let out = format!(
        "{}{}",
        std::fs::read_to_string(&log).unwrap(),
        std::fs::read_to_string(log.with_extension("err")).unwrap()
    );
    eprintln!("the run with eu-2 stopped in its pause:\n{out}");
    assert_eq!(status.code(), Some(1), "{out}");
    let line = format!(
        "server eu-2 unreachable: {} tenants not migrated (",
        remote.len() - 1
    );
    assert!(out.contains(&line), "{line}\n{out}");
    let why = out[out.find(&line).unwrap() + line.len()..]
        .lines()
        .next()
        .unwrap();
    assert!(!why.contains("timed out"), "{why}\n{out}");
    for name in &remote[1..] {
        assert!(!out.contains(name.as_str()), "{name} named:\n{out}");
    }
    all_migrated_once(model, None, &local).await;

    cluster.start_again();
    run(model, &["migrate"], 0).await;
    run(model, &["status", "--check"], 0).await;
    all_migrated_once(model, Some(&cluster), &remote).await;
}
