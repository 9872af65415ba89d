//! Connection exhaustion (issue 11) on a private PostgreSQL cluster with
//! `max_connections = 20`, made with initdb and pg_ctl in a temporary directory on a free
//! port (the shared server is never filled: other tests run there). Skipped, saying so,
//! where `/usr/lib/postgresql/15/bin/initdb` is missing.
//!
//! A fleet run with `--concurrency 200` on a server with few free connections lowers its
//! concurrency to what the server can give and says so, instead of failing tenants with
//! "too many clients" (database per tenant) or stalling on pool timeouts; when the server
//! refuses a connection during the run, the run takes a worker off and says so; when no
//! connection is free at all, the fix names --concurrency and max_connections.
#![cfg(feature = "postgres")]
#![cfg(not(feature = "inventory"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of the test's own; stopped and removed on drop.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `program` of the PostgreSQL binaries, run as the `postgres` user when this is root
/// (initdb refuses root).
fn pg_command(program: &str, as_postgres: bool) -> Command {
    let path = Path::new(BIN).join(program);
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

impl Cluster {
    fn start(max_connections: u32) -> Option<Cluster> {
        if !Path::new(BIN).join("initdb").exists() {
            eprintln!("skipped: no initdb at {BIN} for a private PostgreSQL cluster");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if as_postgres {
            let out = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let data: PathBuf = dir.path().join("data");
        let out = pg_command("initdb", as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let port = free_port();
        let out = pg_command("pg_ctl", as_postgres)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -c max_connections={max_connections} -c listen_addresses=127.0.0.1 \
                 -k {} -c fsync=off -c synchronous_commit=off",
                dir.path().display()
            ))
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {out:?}");
        Some(Cluster {
            dir,
            port,
            as_postgres,
        })
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    async fn connect(&self, db: &str) -> sqlx::Result<PgConnection> {
        let options: PgConnectOptions = self.url(db).parse().unwrap();
        options.connect().await
    }

    async fn execute(&self, db: &str, sql: &str) {
        let mut conn = self.connect(db).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    /// Opens connections until the server refuses one; holds them.
    async fn fill(&self) -> Vec<PgConnection> {
        let mut held = Vec::new();
        while let Ok(conn) = self.connect("postgres").await {
            held.push(conn);
            assert!(held.len() < 100, "the server never refused a connection");
        }
        held
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl", self.as_postgres)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn app(url: &str, database_model: bool) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("mtnt-fault-app"));
    cmd.env("DATABASE_URL", url)
        .env_remove("MTNT_LOG")
        .arg("--no-progress")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if database_model {
        cmd.args(["--tenancy", "database"]);
    }
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

async fn wait_output(cmd: &mut Command) -> Output {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "mtnt-fault-app did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.wait_with_output().unwrap()
}

const TENANTS: usize = 24;

/// Registers `TENANTS` empty tenants (schemas, or databases) through `tenant adopt`.
async fn fleet(cluster: &Cluster, control: &str, database_model: bool) {
    cluster
        .execute("postgres", &format!("CREATE DATABASE {control}"))
        .await;
    for i in 0..TENANTS {
        if database_model {
            cluster
                .execute("postgres", &format!("CREATE DATABASE {control}_t{i:02}"))
                .await;
        } else {
            cluster
                .execute(control, &format!("CREATE SCHEMA {control}_t{i:02}"))
                .await;
        }
    }
    let out = wait_output(app(&cluster.url(control), database_model).args([
        "tenant",
        "adopt",
        "--schema-like",
        &format!("{control}\\_t%"),
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{TENANTS} adopted")),
        "{}",
        text(&out)
    );
}

async fn exhaustion(cluster: &Cluster, control: &str, database_model: bool) {
    fleet(cluster, control, database_model).await;
    let url = cluster.url(control);
    let exec = |sleep: &str| {
        let mut cmd = app(&url, database_model);
        cmd.args([
            "exec",
            "--sql",
            &format!("SELECT pg_sleep({sleep})"),
            "--concurrency",
            "200",
            "--retries",
            "8",
        ]);
        cmd
    };

    // Near max_connections: 12 of the 20 held by others. Before, database per tenant
    // failed tenants with "sorry, too many clients already" after its retries.
    let mut others = Vec::new();
    for _ in 0..12 {
        others.push(cluster.connect("postgres").await.unwrap());
    }
    let started = Instant::now();
    let out = wait_output(&mut exec("0.05")).await;
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: concurrency 200 lowered to "),
        "{}",
        text(&out)
    );
    assert!(!stderr.contains("too many clients"), "{}", text(&out));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    eprintln!("near max_connections: {TENANTS} tenants in {took:?}");
    drop(others);

    // The server fills up during the run: the refused connections take workers off, and
    // the tenants are retried until the others let go.
    let mut run = exec("0.4");
    let log = cluster.dir.path().join(format!("{control}.stderr"));
    run.stderr(std::fs::File::create(&log).unwrap());
    let started = Instant::now();
    let child = run.spawn().unwrap();
    // Once tenants run (their statements seen on the server), every free slot is taken.
    let mut watcher = cluster.connect("postgres").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(0.4)'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if running > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no tenant ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every slot the run frees is grabbed too, for a second and a half.
    let mut held = cluster.fill().await;
    held.push(watcher);
    let until = Instant::now() + Duration::from_millis(1500);
    let grabbers: Vec<_> = (0..3)
        .map(|_| {
            let url = cluster.url("postgres");
            tokio::spawn(async move {
                let options: PgConnectOptions = url.parse().unwrap();
                let mut mine = Vec::new();
                while Instant::now() < until {
                    match options.connect().await {
                        Ok(conn) => mine.push(conn),
                        Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                }
                mine.len()
            })
        })
        .collect();
    let mut filled = held.len();
    for grabber in grabbers {
        filled += grabber.await.unwrap();
    }
    drop(held);
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().unwrap();
    eprintln!("mid-run fill: the run took {:?}", started.elapsed());
    let stderr = std::fs::read_to_string(&log).unwrap();
    let refused = stderr.matches("the server refused a connection").count();
    eprintln!("filled mid-run with {filled} connections; refused-connection warnings: {refused}");
    assert!(out.status.success(), "{}", text(&out));
    if database_model {
        // A tenant session opens a connection of its own: refused, it takes a worker off.
        // (Schema per tenant keeps its pooled connections, and waits for a new one.)
        assert!(refused > 0, "{}", text(&out));
        assert!(
            stderr.contains("tenants at once from now on")
                || stderr.contains("tenant at once from now on"),
            "{}",
            text(&out)
        );
    }

    // No connection free at all: the fix says what to change.
    let held = cluster.fill().await;
    let started = Instant::now();
    let out = wait_output(&mut exec("0")).await;
    eprintln!("no connection free: refused in {:?}", started.elapsed());
    drop(held);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("too many clients"), "{}", text(&out));
    assert!(
        stderr.contains(
            "fix: the server has no free connection (max_connections): lower --concurrency"
        ),
        "{}",
        text(&out)
    );
    assert!(stderr.contains("raise max_connections"), "{}", text(&out));
    assert!(
        !stderr.contains("check that the server is running"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_near_max_connections_gets_fewer_workers() {
    let Some(cluster) = Cluster::start(20) else {
        return;
    };
    exhaustion(&cluster, "dbm", true).await;
    exhaustion(&cluster, "scm", false).await;
}
