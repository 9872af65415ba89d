//! A second server that needs a password (issue 15): a private cluster whose TCP
//! connections need scram-sha-256, beside the control database on `MTNT_TEST_PG_URL`
//! (trust). The password reaches mtnt from `MTNT_SERVER_EU2_PASSWORD` or from the file
//! `PGPASSFILE` names, never from the registry, and never shows in what mtnt prints:
//! stdout, stderr, JSON, or its debug log.
#![cfg(feature = "postgres")]

use std::path::{Path, PathBuf};
use std::process::Command;

use mtnt_test_support::cluster::{Cluster, ClusterConfig};
use mtnt_test_support::models::{Kind, Model, Place};
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection as _;

/// The cluster's password: distinctive, so that finding it in output is no accident, and
/// with what URLs and password files must escape (`:` `@` `%` `/` `\\`, a space, non-ASCII).
const PASSWORD: &str = "Qx7v:R@uth%Se cret/41\\é";
/// A password the cluster refuses.
const WRONG: &str = "Wz3kWrongGuess93";

/// The server's name, and the variable its password is read from (`ServerName::password_variable`).
const EU2: &str = "eu2";
const VARIABLE: &str = "MTNT_SERVER_EU2_PASSWORD";

/// Where the password of a command's run comes from.
enum Auth<'a> {
    /// Nowhere: no variable, no password file.
    None,
    /// `MTNT_SERVER_EU2_PASSWORD`.
    Env(&'a str),
    /// `PGPASSFILE`, naming this file.
    File(&'a Path),
}

/// The second server, `eu2`: the private cluster with a password, and where the test's
/// tenants go on it (a database `tenants` for their schemas, or the `postgres` database to
/// create tenant databases from).
struct Eu2 {
    cluster: Cluster,
    kind: Kind,
    /// An empty home directory for the commands, so that no `~/.pgpass` of the machine's
    /// answers for the cluster.
    home: tempfile::TempDir,
}

impl Eu2 {
    /// `None` where the PostgreSQL binaries for a private cluster are missing.
    async fn start(model: &Model) -> Option<Eu2> {
        let cluster = Cluster::start(ClusterConfig {
            password: Some(PASSWORD.to_owned()),
            ..ClusterConfig::default()
        })?;
        if model.kind() == Kind::PgSchema {
            cluster.execute("postgres", "CREATE DATABASE tenants").await;
        }
        Some(Eu2 {
            cluster,
            kind: model.kind(),
            home: tempfile::tempdir().unwrap(),
        })
    }

    /// The database the registered URL names.
    fn db(&self) -> &'static str {
        match self.kind {
            Kind::PgSchema => "tenants",
            _ => "postgres",
        }
    }

    /// The URL as the registry must hold it: no password.
    fn url(&self) -> String {
        self.cluster.url(self.db())
    }

    /// The URL as an operator may paste it into `server add`: with the password.
    fn url_with_password(&self) -> String {
        let url = self
            .url()
            .replacen("postgres@", &format!("postgres:{}@", encoded(PASSWORD)), 1);
        assert_ne!(url, self.url());
        url
    }

    /// A password file (mode 0600) with the cluster's line, any database.
    fn password_file(&self, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.home.path().join(format!("pgpass-{mode:o}"));
        std::fs::write(
            &path,
            format!(
                "# the private cluster\n127.0.0.1:{}:*:postgres:{}\n",
                self.cluster.port,
                PASSWORD.replace('\\', "\\\\").replace(':', "\\:")
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Whether `tenant` has its schema (database) on the cluster.
    async fn storage_exists(&self, tenant: &str) -> bool {
        let mut conn = self.cluster.connect(self.db()).await.unwrap();
        let sql = match self.kind {
            Kind::PgDatabase => "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
            _ => "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)",
        };
        let found = sqlx::query_scalar(sql)
            .bind(tenant)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        found
    }

    /// Registers `tenant` on the cluster as a tenant with empty storage and nothing
    /// applied, for a `migrate` to work on.
    async fn register_bare(&self, model: &Model, tenant: &str) {
        match self.kind {
            Kind::PgDatabase => {
                self.cluster
                    .execute("postgres", &format!("CREATE DATABASE \"{tenant}\""))
                    .await
            }
            _ => {
                self.cluster
                    .execute(self.db(), &format!("CREATE SCHEMA \"{tenant}\""))
                    .await
            }
        }
        model
            .execute(
                Place::Control,
                &format!(
                    "INSERT INTO mtnt_tenants (name, schema_name, server) VALUES ('{tenant}', '{tenant}', '{EU2}')"
                ),
            )
            .await;
    }

    /// Runs `sql` where `tenant`'s tables are on the cluster.
    async fn tenant_execute(&self, tenant: &str, sql: &str) {
        let (db, sql) = match self.kind {
            Kind::PgDatabase => (tenant, sql.to_owned()),
            _ => (self.db(), format!("SET search_path TO \"{tenant}\"; {sql}")),
        };
        self.cluster.execute(db, &sql).await;
    }

    /// Whether `tenant` has the table `table` on the cluster.
    async fn table_exists(&self, tenant: &str, table: &str) -> bool {
        let schema = match self.kind {
            Kind::PgDatabase => "public",
            _ => tenant,
        };
        self.tenant_int(
            tenant,
            &format!(
                "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = '{schema}' AND tablename = '{table}'"
            ),
        )
        .await
            > 0
    }

    /// An integer from `sql` run where `tenant`'s tables are on the cluster.
    async fn tenant_int(&self, tenant: &str, sql: &str) -> i64 {
        let db = match self.kind {
            Kind::PgDatabase => tenant,
            _ => self.db(),
        };
        let mut conn = self.cluster.connect(db).await.unwrap();
        if self.kind == Kind::PgSchema {
            sqlx::raw_sql(&format!("SET search_path TO \"{tenant}\""))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        n
    }

    /// The test app for `model`, its password for the cluster from `auth` alone, its
    /// debug log on (it goes to stderr, which is checked as the rest).
    fn app(&self, model: &Model, auth: Auth<'_>) -> Command {
        let mut cmd = model.command(env!("CARGO_BIN_EXE_mtnt-test-app"));
        cmd.env_remove(VARIABLE)
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env("HOME", self.home.path())
            .env("MTNT_LOG", "debug");
        match auth {
            Auth::None => {}
            Auth::Env(password) => {
                cmd.env(VARIABLE, password);
            }
            Auth::File(path) => {
                cmd.env("PGPASSFILE", path);
            }
        }
        cmd
    }
}

/// `text` percent-encoded as URLs carry it: every byte but ASCII letters and digits.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What a command printed.
struct Out {
    stdout: String,
    stderr: String,
}

impl Out {
    /// Everything printed: what the password checks read.
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// What a failed assertion shows: the output without the debug log.
    fn brief(&self) -> String {
        let mut text = self.stdout.clone();
        for line in self.stderr.lines().filter(|l| !l.contains("DEBUG")) {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// Runs `cmd` with `args`, expecting exit code `code`; checks that neither the cluster's
/// password nor the wrong one is anywhere in stdout or stderr, in any form ([`forms`]).
fn run(mut cmd: Command, args: &[&str], code: i32) -> Out {
    let out = cmd.args(args).output().expect("the command runs");
    let printed = Out {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let all = printed.all().to_lowercase();
    for secret in forms(PASSWORD).into_iter().chain(forms(WRONG)) {
        let leaks: Vec<&str> = all
            .lines()
            .filter(|l| l.contains(&secret.to_lowercase()))
            .collect();
        assert!(leaks.is_empty(), "{args:?} printed a password:\n{leaks:#?}");
    }
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}\n{}",
        printed.brief()
    );
    printed
}

/// `password` as text may carry it: as it is, percent-encoded (URLs), and escaped as JSON
/// strings, Rust's `{:?}` and `COPY` data escape a backslash.
fn forms(password: &str) -> [String; 3] {
    [
        password.to_owned(),
        encoded(password),
        password.replace('\\', "\\\\"),
    ]
}

/// The error of a command that failed for want of the right password: it names the
/// server and both places the password can come from.
fn assert_names_the_fix(out: &Out) {
    let (all, brief) = (out.all(), out.brief());
    assert!(all.contains("server eu2"), "{brief}");
    assert!(all.contains(VARIABLE), "{brief}");
    assert!(all.contains("PGPASSFILE"), "{brief}");
}

/// `status --json`: each tenant's (name, server).
fn status_servers(out: &Out) -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}\n{}", out.stdout));
    let tenants = json["tenants"]
        .as_array()
        .unwrap_or_else(|| panic!("no tenants in {json}"));
    let mut servers: Vec<(String, String)> = tenants
        .iter()
        .map(|t| {
            (
                t["tenant"].as_str().unwrap().to_owned(),
                t["server"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    servers.sort();
    servers
}

/// Makes a move of `tenant` fail in `psql` on the destination, after `pg_dump` and `psql`
/// both connected: a row the check constraint refuses in the sessions of a move (named
/// `mtnt move ...`) and accepts elsewhere.
async fn guard_against_moves(model: &Model, tenant: &str) {
    model
        .execute(
            Place::Tenant(tenant),
            "CREATE FUNCTION not_in_a_move() RETURNS boolean LANGUAGE sql \
             AS $$ SELECT current_setting('application_name') NOT LIKE 'mtnt move%' $$; \
             CREATE TABLE guarded (id int CHECK (not_in_a_move())); \
             INSERT INTO guarded VALUES (1)",
        )
        .await;
}

async fn unguard(model: &Model, tenant: &str) {
    model
        .execute(
            Place::Tenant(tenant),
            "DROP TABLE guarded; DROP FUNCTION not_in_a_move()",
        )
        .await;
}

/// The rows of `accounts` of `tenant` on the control database's own server.
async fn accounts_here(model: &Model, tenant: &str) -> Option<i64> {
    model
        .int(Place::Tenant(tenant), "SELECT count(*) FROM accounts")
        .await
}

mtnt_test_support::scenarios_pg!(a_password_from_the_environment_reaches_the_server_and_no_output);

/// `server add` with a password in the URL stores and shows it without; with no password
/// (or a wrong one) the commands that need the server fail naming it and where its password
/// comes from; with `MTNT_SERVER_EU2_PASSWORD` the tenant is created, migrated, listed,
/// moved away and back (pg_dump and psql get the password too), and dropped. No output has
/// a password, a failed move's included.
async fn a_password_from_the_environment_reaches_the_server_and_no_output(model: &Model) {
    let Some(eu2) = Eu2::start(model).await else {
        return;
    };
    let app = |auth| eu2.app(model, auth);
    let [a, b, c] = ["a", "b", "c"].map(|t| model.tenant(t));

    let out = run(
        app(Auth::None),
        &["server", "add", EU2, &eu2.url_with_password()],
        0,
    );
    assert!(out.all().contains("added server eu2"), "{}", out.brief());
    assert!(out.all().contains(&eu2.url()), "{}", out.brief());
    assert_names_the_fix(&out);
    let stored = model
        .text(
            Place::Control,
            "SELECT url FROM mtnt_servers WHERE name = 'eu2'",
        )
        .await;
    assert_eq!(stored, Some(eu2.url()));
    let out = run(app(Auth::None), &["server", "list"], 0);
    assert!(out.stdout.contains(&eu2.url()), "{}", out.brief());
    let out = run(app(Auth::None), &["server", "list", "--json"], 0);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let listed = json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == EU2)
        .unwrap_or_else(|| panic!("eu2 not listed: {json}"));
    assert_eq!(listed["url"].as_str(), Some(eu2.url().as_str()));

    // No password anywhere: the create fails naming the server and the fix, and leaves
    // nothing behind.
    let out = run(
        app(Auth::None),
        &["tenant", "create", &a, "--server", EU2],
        1,
    );
    assert_names_the_fix(&out);
    assert!(
        out.all().contains("no password was found"),
        "{}",
        out.brief()
    );
    assert!(!eu2.storage_exists(&a).await);
    let registered = format!("SELECT count(*) FROM mtnt_tenants WHERE name = '{a}'");
    assert_eq!(model.int(Place::Control, &registered).await, Some(0));
    // A wrong password: the same, and neither password is echoed (run checks).
    let out = run(
        app(Auth::Env(WRONG)),
        &["tenant", "create", &a, "--server", EU2],
        1,
    );
    assert_names_the_fix(&out);
    assert!(
        out.all().contains("password authentication failed"),
        "{}",
        out.brief()
    );
    let refused = format!("the password from {VARIABLE} was refused");
    assert!(out.all().contains(&refused), "{}", out.brief());

    let out = run(
        app(Auth::Env(PASSWORD)),
        &["tenant", "create", &a, "--server", EU2],
        0,
    );
    assert!(out.all().contains("on server eu2"), "{}", out.brief());
    assert!(eu2.storage_exists(&a).await);
    run(app(Auth::None), &["tenant", "create", &b], 0);
    eu2.register_bare(model, &c).await;

    // Without the password (or with a wrong one), migrate fails eu2's tenants in one line
    // naming the fix, in its JSON events too.
    for (auth, why) in [
        (Auth::None, "no password was found"),
        (Auth::Env(WRONG), refused.as_str()),
    ] {
        let out = run(app(auth), &["migrate", "--format", "json"], 1);
        assert_names_the_fix(&out);
        assert!(out.all().contains(why), "{}", out.brief());
        assert!(
            out.all()
                .contains("server eu2 unreachable: 2 tenants not migrated"),
            "{}",
            out.brief()
        );
    }
    assert!(!eu2.table_exists(&c, "accounts").await);
    // The status says so per tenant and per server, in JSON, without either password, and
    // is no success while a server cannot be read.
    let out = run(app(Auth::Env(WRONG)), &["status", "--json"], 1);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        json["unreachable_servers"][0]["server"], EU2,
        "{}",
        out.stdout
    );
    let detail = json["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == c.as_str())
        .map(|t| t["detail"].to_string())
        .unwrap_or_else(|| panic!("{c} not in {json}"));
    assert!(
        detail.contains("server eu2 could not be reached"),
        "{detail}"
    );
    let why = json["unreachable_servers"][0]["error"].to_string();
    assert!(why.contains(&refused), "{why}");

    let out = run(app(Auth::Env(PASSWORD)), &["migrate"], 0);
    assert!(out.all().contains("1 migrated"), "{}", out.brief());
    assert_eq!(eu2.tenant_int(&c, "SELECT count(*) FROM accounts").await, 0);
    let out = run(app(Auth::Env(PASSWORD)), &["status", "--json"], 0);
    assert_eq!(
        status_servers(&out),
        [
            (a.clone(), EU2.to_owned()),
            (b.clone(), "default".to_owned()),
            (c.clone(), EU2.to_owned())
        ]
    );

    // Away from eu2 and back: pg_dump reads it, then psql writes it, with the password.
    eu2.tenant_execute(&a, "INSERT INTO accounts (email) VALUES ('x@example.com')")
        .await;
    run(
        app(Auth::Env(PASSWORD)),
        &["tenant", "move", &a, "--to", "default"],
        0,
    );
    assert!(!eu2.storage_exists(&a).await);
    assert_eq!(accounts_here(model, &a).await, Some(1));
    // A move that fails in psql on eu2: its error has no password either (run checks).
    guard_against_moves(model, &a).await;
    let out = run(
        app(Auth::Env(PASSWORD)),
        &["tenant", "move", &a, "--to", EU2],
        1,
    );
    assert!(out.all().contains("psql failed"), "{}", out.brief());
    assert!(!eu2.storage_exists(&a).await);
    assert_eq!(accounts_here(model, &a).await, Some(1));
    unguard(model, &a).await;
    // Without the password the move cannot start, and says why.
    let out = run(app(Auth::None), &["tenant", "move", &a, "--to", EU2], 1);
    assert_names_the_fix(&out);
    run(
        app(Auth::Env(PASSWORD)),
        &["tenant", "move", &a, "--to", EU2],
        0,
    );
    assert!(!model.storage_exists(&a).await);
    assert_eq!(eu2.tenant_int(&a, "SELECT count(*) FROM accounts").await, 1);
    let out = run(app(Auth::Env(PASSWORD)), &["status", "--json"], 0);
    assert_eq!(status_servers(&out)[0], (a.clone(), EU2.to_owned()));

    let out = run(app(Auth::None), &["tenant", "drop", &a, "--yes"], 1);
    assert_names_the_fix(&out);
    assert!(eu2.storage_exists(&a).await);
    run(
        app(Auth::Env(PASSWORD)),
        &["tenant", "drop", &a, "--yes"],
        0,
    );
    assert!(!eu2.storage_exists(&a).await);

    // Nor did any of it (errors, runs, journal) land in the control database.
    let server: PgConnectOptions = mtnt_test_support::postgres::admin_url().parse().unwrap();
    let mut dump = Command::new("pg_dump");
    dump.arg("--data-only")
        .args(["--host", server.get_host()])
        .args(["--port", &server.get_port().to_string()])
        .args(["--username", server.get_username()])
        .args(["--dbname", &model.control_name()]);
    let out = run(dump, &[], 0);
    assert!(out.stdout.contains(&eu2.url()), "{}", out.brief());
}

mtnt_test_support::scenarios_pg!(a_password_file_serves_as_the_variable_does);

/// With no variable, the line of the file `PGPASSFILE` names (mode 0600) gives the
/// password: create, migrate, status, move away and back, drop. A file others can read is
/// ignored, as libpq ignores it: the commands fail naming the fix.
async fn a_password_file_serves_as_the_variable_does(model: &Model) {
    let Some(eu2) = Eu2::start(model).await else {
        return;
    };
    let app = |auth| eu2.app(model, auth);
    let file = eu2.password_file(0o600);
    let loose = eu2.password_file(0o644);
    let (a, b) = (model.tenant("a"), model.tenant("b"));
    // `server add` connects first: with no password it adds nothing, and says where one goes.
    let out = run(app(Auth::None), &["server", "add", EU2, &eu2.url()], 1);
    assert!(
        out.all().contains("server eu2 was not added"),
        "{}",
        out.brief()
    );
    assert_names_the_fix(&out);
    run(
        app(Auth::File(&file)),
        &["server", "add", EU2, &eu2.url()],
        0,
    );

    let out = run(
        app(Auth::File(&loose)),
        &["tenant", "create", &a, "--server", EU2],
        1,
    );
    assert_names_the_fix(&out);
    assert!(
        out.all().contains("no password was found"),
        "{}",
        out.brief()
    );
    assert!(out.all().contains("(chmod 0600 it)"), "{}", out.brief());
    run(
        app(Auth::File(&file)),
        &["tenant", "create", &a, "--server", EU2],
        0,
    );
    assert!(eu2.storage_exists(&a).await);
    eu2.register_bare(model, &b).await;
    let out = run(app(Auth::File(&file)), &["migrate"], 0);
    assert!(out.all().contains("1 migrated"), "{}", out.brief());
    assert_eq!(eu2.tenant_int(&b, "SELECT count(*) FROM accounts").await, 0);
    let out = run(app(Auth::File(&file)), &["status", "--json"], 0);
    assert_eq!(
        status_servers(&out),
        [(a.clone(), EU2.to_owned()), (b.clone(), EU2.to_owned())]
    );

    run(
        app(Auth::File(&file)),
        &["tenant", "move", &a, "--to", "default"],
        0,
    );
    assert!(!eu2.storage_exists(&a).await);
    assert_eq!(accounts_here(model, &a).await, Some(0));
    run(
        app(Auth::File(&file)),
        &["tenant", "move", &a, "--to", EU2],
        0,
    );
    assert!(eu2.storage_exists(&a).await);
    assert!(!model.storage_exists(&a).await);

    run(app(Auth::File(&file)), &["tenant", "drop", &a, "--yes"], 0);
    assert!(!eu2.storage_exists(&a).await);
}

/// The control database's URL, without a password, takes it from the password file as
/// libpq reads it (its `\:` and `\\` escapes undone), as a server's does: a password with
/// `:` and `\` works there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_database_takes_its_password_from_the_file_as_libpq_reads_it() {
    use std::os::unix::fs::PermissionsExt;
    let Some(cluster) = Cluster::start(ClusterConfig {
        password: Some(PASSWORD.to_owned()),
        ..ClusterConfig::default()
    }) else {
        return;
    };
    cluster.execute("postgres", "CREATE DATABASE control").await;
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("pgpass");
    std::fs::write(
        &file,
        format!(
            "127.0.0.1:{}:control:postgres:{}\n",
            cluster.port,
            PASSWORD.replace('\\', "\\\\").replace(':', "\\:")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let app = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mtnt-test-app"));
        cmd.env("DATABASE_URL", cluster.url("control"))
            .env_remove("PGPASSWORD")
            .env_remove(VARIABLE)
            .env("PGPASSFILE", &file)
            .env("HOME", home.path())
            .env("MTNT_LOG", "debug")
            .arg("--no-progress");
        cmd
    };
    run(app(), &["migrate"], 0);
    run(app(), &["tenant", "create", "acme"], 0);
    let out = run(app(), &["tenant", "list"], 0);
    assert!(out.stdout.contains("acme"), "{}", out.brief());
}
