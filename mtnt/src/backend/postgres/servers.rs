//! The servers of a PostgreSQL fleet: the control registry's `mtnt_servers` table (name
//! and URL without password), and one pool per server, made the first time a tenant of
//! that server is worked on.
//!
//! A server that cannot be reached is remembered as such for the life of the backend:
//! its tenants fail at once with [`Error::ServerUnreachable`] instead of each waiting for
//! a connect timeout, and the next run (a new backend) tries it again. A server that goes
//! down mid-run is found out by the connections it cuts: one new connection tells a lost
//! session from a lost server ([`Servers::gone`]).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Postgres};

use super::pooler;
use crate::migration::BoxFuture;
use crate::{Error, Result, ServerName};

/// How long a tenant waits for a connection of its server's pool: past it, the server
/// counts as unreachable for the rest of the run.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the one connection that checks a server after a cut session may take: a
/// server that does not answer in that time counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a tenant waits for a connection of its server's pool before the server is
/// checked ([`Servers::check`]); the wait goes on while it answers.
const SLOW_ACQUIRE: Duration = Duration::from_secs(2);

/// Connections left free on a server beside a run's tenants (as on the control server):
/// for the check after a cut session, and for whoever else needs one.
const KEEP_FREE: i64 = 2;

/// What is known of one server.
#[derive(Debug)]
enum Known {
    /// Reached: its pool.
    Pool(PgPool),
    /// Not reached: why (password scrubbed).
    Unreachable(String),
}

/// The servers beside the control database's own, and their pools.
#[derive(Debug)]
pub(super) struct Servers {
    /// The qualified `mtnt_servers` table.
    pub(super) table: String,
    /// The size of each server's pool.
    max_connections: u32,
    /// Held across a first connect, so that a fleet's tenants of one server connect it once.
    known: tokio::sync::Mutex<HashMap<ServerName, Known>>,
}

/// The `CREATE TABLE` of the servers table `table`.
pub(super) fn servers_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (name text PRIMARY KEY, url text NOT NULL, \
         added_at timestamptz NOT NULL DEFAULT now(), cordoned boolean NOT NULL DEFAULT false)"
    )
}

impl Servers {
    pub(super) fn new(control_q: &str, max_connections: u32) -> Self {
        Self {
            table: format!("{control_q}.mtnt_servers"),
            max_connections: max_connections.max(1),
            known: Default::default(),
        }
    }

    /// The pool of `server`, connected (and checked) the first time. A boxed `Send`
    /// future, like `exec_postgres`: sqlx's executors leave an `async fn`'s future
    /// unprovably `Send` inside `async_trait` methods.
    pub(super) fn pool<'a>(
        &'a self,
        control: &'a PgPool,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<PgPool>> {
        Box::pin(self.pool_inner(control, server))
    }

    /// A connection of `server`'s pool. A server that stops answering mid-run is
    /// remembered as unreachable: its other tenants fail at once, not each after the
    /// acquire timeout. A pool that timed out on a server that answers (all its
    /// connections taken) is the tenant's failure, retried, not the server's.
    pub(super) fn acquire<'a>(
        &'a self,
        control: &'a PgPool,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<PoolConnection<Postgres>>> {
        Box::pin(async move {
            let pool = self.pool(control, server).await?;
            // The pool retries a refused connection until its acquire timeout; once the
            // server is found lost (the pool closed), that wait ends at once.
            let mut closed = pool.close_event();
            let acquire = closed.do_until(pool.acquire());
            tokio::pin!(acquire);
            let acquired = tokio::select! {
                acquired = &mut acquire => acquired,
                () = tokio::time::sleep(SLOW_ACQUIRE) => {
                    // A wait this long may be for a server that went down with no session
                    // of this run open to be cut: one new connection tells.
                    if let Some(gone) = self.check(server).await {
                        return Err(gone);
                    }
                    acquire.await
                }
            };
            match acquired {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) | Err(e) if cut_session(&e) => match self.gone(server, &e).await {
                    Some(gone) => Err(gone),
                    None => Err(e.into()),
                },
                Ok(Err(e)) | Err(e) => Err(self.lost(server, &e).await),
            }
        })
    }

    /// `server` failed to connect with `error`: remembered as unreachable (its pool
    /// closed, which ends its tenants' waits for a connection), and the error its tenants
    /// fail with. The first reason stays: every tenant of the server fails with the same.
    pub(super) async fn lost(&self, server: &ServerName, error: &sqlx::Error) -> Error {
        let mut known = self.known.lock().await;
        if let Some(Known::Unreachable(why)) = known.get(server) {
            return unreachable(server, why.clone());
        }
        let why = crate::redact_url(&error.to_string());
        let before = known.insert(server.clone(), Known::Unreachable(why.clone()));
        drop(known);
        if let Some(Known::Pool(pool)) = before {
            // Marked closed now; the sessions still checked out close as they come back,
            // which this need not wait for.
            tokio::spawn(async move { pool.close().await });
        }
        unreachable(server, why)
    }

    /// Whether `error`, which cut a session on `server`, means the server is gone: one
    /// new connection decides (a session ended by `pg_terminate_backend` leaves the
    /// server up, and the tenant is retried). The error the server's tenants fail with
    /// when it is gone; `None` when the server answers, or `error` is not of a lost
    /// connection.
    pub(super) fn gone<'a>(
        &'a self,
        server: &'a ServerName,
        error: &'a sqlx::Error,
    ) -> BoxFuture<'a, Option<Error>> {
        Box::pin(async move {
            if !cut_session(error) {
                return None;
            }
            self.check(server).await
        })
    }

    /// Whether `server`, connected in this run, is gone: one new connection decides. The
    /// error its tenants fail with when it is; `None` while it answers.
    fn check<'a>(&'a self, server: &'a ServerName) -> BoxFuture<'a, Option<Error>> {
        Box::pin(async move {
            let pool = match self.known.lock().await.get(server) {
                Some(Known::Unreachable(why)) => return Some(unreachable(server, why.clone())),
                Some(Known::Pool(pool)) => pool.clone(),
                // Not connected in this run: nothing of it was cut.
                None => return None,
            };
            let options = pool.connect_options().as_ref().clone();
            let checked =
                tokio::time::timeout(CHECK_TIMEOUT, PgConnection::connect_with(&options)).await;
            match checked {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    None
                }
                Ok(Err(e)) if cut_session(&e) => Some(self.lost(server, &e).await),
                // Up, but refusing this one (too many clients, a password since changed):
                // the tenant's own error says more.
                Ok(Err(_)) => None,
                Err(_) => {
                    let silent = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer to a new connection within {CHECK_TIMEOUT:?}"),
                    );
                    Some(self.lost(server, &sqlx::Error::Io(silent)).await)
                }
            }
        })
    }

    /// How many of its tenants at once `server` has connections for, one each: what it
    /// takes (`max_connections` less the superuser reserve and the client sessions
    /// connected now), with [`KEEP_FREE`] left over; `pooled`: the connections of this
    /// backend's pool there are its tenants' to use (schema per tenant), else they are
    /// taken (database per tenant, whose tenants connect on their own). `None` when the
    /// server cannot be asked: its tenants fail on their own.
    pub(super) fn budget<'a>(
        &'a self,
        control: &'a PgPool,
        server: &'a ServerName,
        pooled: bool,
    ) -> BoxFuture<'a, Option<usize>> {
        Box::pin(async move {
            let pool = self.pool(control, server).await.ok()?;
            let (max, reserved, used): (i32, i32, i64) = sqlx::query_as(
                "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, \
                 (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            let mut free = i64::from(max - reserved) - used - KEEP_FREE;
            if pooled {
                free = (free + i64::from(pool.size())).min(i64::from(self.max_connections));
            }
            Some(usize::try_from(free.max(1)).unwrap_or(1))
        })
    }

    async fn pool_inner(&self, control: &PgPool, server: &ServerName) -> Result<PgPool> {
        let mut known = self.known.lock().await;
        match known.get(server) {
            Some(Known::Pool(pool)) => return Ok(pool.clone()),
            Some(Known::Unreachable(why)) => return Err(unreachable(server, why.clone())),
            None => {}
        }
        let url = self.url(control, server).await?;
        match self.connect(server, &url).await {
            Ok(pool) => {
                known.insert(server.clone(), Known::Pool(pool.clone()));
                Ok(pool)
            }
            Err(e) => {
                let why = crate::redact_url(&e.to_string());
                known.insert(server.clone(), Known::Unreachable(why.clone()));
                Err(unreachable(server, why))
            }
        }
    }

    /// The stored URL of `server`.
    async fn url(&self, control: &PgPool, server: &ServerName) -> Result<String> {
        let url: Option<String> =
            sqlx::query_scalar(&format!("SELECT url FROM {} WHERE name = $1", self.table))
                .bind(server.as_str())
                .fetch_optional(control)
                .await
                .or_else(|e| {
                    // A registry from before servers: no server but the default.
                    if super::is_code(&e, "42P01") {
                        Ok(None)
                    } else {
                        Err(e)
                    }
                })?;
        url.ok_or_else(|| Error::UnknownServer {
            server: server.clone(),
            default: crate::DEFAULT_SERVER,
        })
    }

    /// A pool of `url` with the server's password, after first connections that check it
    /// (a pool would retry a refused connection until its acquire timeout).
    pub(super) async fn connect(&self, server: &ServerName, url: &str) -> Result<PgPool> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|source| super::super::tls::connect_error(url, source))?;
        let (options, password_from, ignored_file) = with_password(server, url, options);
        let options = pooler::first_connections(url, options)
            .await
            .map_err(|e| refused(server, password_from, ignored_file, e))?;
        Ok(PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options))
    }
}

/// `options` of `server` (from its stored `url`) with its password, as libpq would find it:
/// the server's variable, else the URL's or `PGPASSWORD`, else the password file. Also where
/// it came from (`None`: nowhere), and why the password file was ignored, if it was.
///
/// Parsing the URL read the password file already, but sqlx keeps the escapes (`\:`, `\\`)
/// of its password field: the file is read again here as libpq reads it, so that mtnt and
/// the pg_dump and psql of a move use the same password.
fn with_password(
    server: &ServerName,
    url: &str,
    options: PgConnectOptions,
) -> (PgConnectOptions, Option<String>, Option<String>) {
    if let Some(password) = server.password() {
        return (
            options.password(&password),
            Some(server.password_variable()),
            None,
        );
    }
    libpq_password(url, options)
}

/// `options` of `url` with the password libpq would use: the URL's or `PGPASSWORD`, else
/// the password file read as libpq reads it (see [`with_password`]); where it came from,
/// and why the file was ignored. The control database's URL takes it so too.
pub(super) fn libpq_password(
    url: &str,
    mut options: PgConnectOptions,
) -> (PgConnectOptions, Option<String>, Option<String>) {
    if url_has_password(url) || std::env::var_os("PGPASSWORD").is_some_and(|p| !p.is_empty()) {
        return (
            options,
            Some("the server's URL or PGPASSWORD".to_owned()),
            None,
        );
    }
    let user = options.get_username().to_owned();
    let database = options.get_database().unwrap_or(&user).to_owned();
    match crate::server::password_from_file(
        options.get_host(),
        options.get_port(),
        &database,
        &user,
    ) {
        Ok(Some(password)) => {
            options = options.password(&password);
            (options, Some("the password file".to_owned()), None)
        }
        Ok(None) => (options, None, None),
        Err(why) => (options, None, Some(why)),
    }
}

/// Whether `url` carries a password (user-info or `password=`).
fn url_has_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.password().is_some()
            || u.query_pairs()
                .any(|(k, _)| k.eq_ignore_ascii_case("password"))
    })
}

/// `error` of a first connection to `server`, saying which password the server refused
/// (`password_from`: where it came from; `None`: mtnt found none, and `ignored_file` says
/// why the password file did not count), so that the operator knows which one to correct.
fn refused(
    server: &ServerName,
    password_from: Option<String>,
    ignored_file: Option<String>,
    error: Error,
) -> Error {
    let Error::Connect {
        source: sqlx::Error::Database(db),
        ..
    } = &error
    else {
        return error;
    };
    // invalid_password, invalid_authorization_specification (no pg_hba.conf entry).
    if !matches!(db.code().as_deref(), Some("28P01" | "28000")) {
        return error;
    }
    let which = match password_from {
        Some(from) => format!("the password from {from} was refused"),
        None => match ignored_file {
            Some(why) => format!(
                "no password was found in {}: {why}",
                server.password_sources()
            ),
            None => format!("no password was found in {}", server.password_sources()),
        },
    };
    Error::Invalid(format!("{error} ({which})"))
}

/// Whether `error` is of a connection the server cut or never made: an I/O error, a
/// closed connection, a shutdown (`57P01`, `57P02`, `57P03`) or a connection exception
/// (`08...`).
pub(super) fn cut_session(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// The database error inside `error`, through the wrappers that name a migration.
pub(super) fn sql_cause(error: &Error) -> Option<&sqlx::Error> {
    match error {
        Error::Sql(sql) | Error::Connect { source: sql, .. } => Some(sql),
        Error::Migration { source, .. } | Error::GaveUp { source, .. } => sql_cause(source),
        _ => None,
    }
}

fn unreachable(server: &ServerName, why: String) -> Error {
    Error::ServerUnreachable {
        server: server.clone(),
        source: Box::new(Error::Invalid(why)),
    }
}
