//! A PostgreSQL cluster of a test's own, made with initdb and pg_ctl in a temporary
//! directory on a free port: for what a test must not do to the shared servers (fill
//! their connections, stop them, require passwords). Stopped and removed on drop.
//!
//! [`Cluster::start`] returns `None`, saying so, where the PostgreSQL 15 binaries are
//! missing; a test then skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// How a [`Cluster`] is set up.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `max_connections`.
    pub max_connections: u32,
    /// A password of the `postgres` role: TCP connections then need it (scram-sha-256);
    /// the cluster's own Unix socket stays trusted. `None`: trust everywhere.
    pub password: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            max_connections: 100,
            password: None,
        }
    }
}

/// A PostgreSQL cluster of the test's own.
pub struct Cluster {
    /// Its directory: the data, the log and the socket.
    pub dir: tempfile::TempDir,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
    config: ClusterConfig,
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
    /// A new cluster, started; `None` where initdb is missing.
    pub fn start(config: ClusterConfig) -> Option<Cluster> {
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
        let data = dir.path().join("data");
        let mut initdb = pg_command("initdb", as_postgres);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--no-sync"]);
        match &config.password {
            Some(password) => {
                let file = dir.path().join("pwfile");
                std::fs::write(&file, password).unwrap();
                if as_postgres {
                    Command::new("chown")
                        .arg("postgres")
                        .arg(&file)
                        .output()
                        .unwrap();
                }
                initdb
                    .args(["--auth-local", "trust", "--auth-host", "scram-sha-256"])
                    .arg(format!("--pwfile={}", file.display()));
            }
            None => {
                initdb.args(["-A", "trust"]);
            }
        }
        let out = initdb.output().unwrap();
        assert!(out.status.success(), "initdb: {out:?}");
        let cluster = Cluster {
            dir,
            port: free_port(),
            as_postgres,
            config,
        };
        cluster.start_again();
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the cluster (again, after [`Cluster::stop`]) on its port, waiting until it
    /// accepts connections.
    pub fn start_again(&self) {
        let out = pg_command("pg_ctl", self.as_postgres)
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {} -c max_connections={} -c listen_addresses=127.0.0.1 \
                 -k {} -c fsync=off -c synchronous_commit=off",
                self.port,
                self.config.max_connections,
                self.dir.path().display()
            ))
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {out:?}");
    }

    /// Stops the cluster at once (`pg_ctl stop -m immediate`: every session cut, as a
    /// crash or a lost machine would), waiting until it is down.
    pub fn stop(&self) {
        let out = pg_command("pg_ctl", self.as_postgres)
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    /// The URL of database `db`, as the `postgres` role, with no password in it.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection to `db` as the `postgres` role (with the password, if the cluster
    /// has one).
    pub async fn connect(&self, db: &str) -> sqlx::Result<PgConnection> {
        let mut options: PgConnectOptions = self.url(db).parse().unwrap();
        if let Some(password) = &self.config.password {
            options = options.password(password);
        }
        options.connect().await
    }

    /// Runs `sql` on `db`.
    pub async fn execute(&self, db: &str, sql: &str) {
        let mut conn = self.connect(db).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    /// Opens connections until the server refuses one; holds them.
    pub async fn fill(&self) -> Vec<PgConnection> {
        let mut held = Vec::new();
        while let Ok(conn) = self.connect("postgres").await {
            held.push(conn);
            assert!(held.len() < 500, "the server never refused a connection");
        }
        held
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl", self.as_postgres)
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
