//! The servers of a PostgreSQL fleet: the control registry's `mtnt_servers` table (name
//! and URL without password), and one pool per server, made the first time a tenant of
//! that server is worked on.
//!
//! A server that cannot be reached is remembered as such for the life of the backend:
//! its tenants fail at once with [`Error::ServerUnreachable`] instead of each waiting for
//! a connect timeout, and the next run (a new backend) tries it again.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Postgres;

use super::pooler;
use crate::migration::BoxFuture;
use crate::{Error, Result, ServerName};

/// How long a tenant waits for a connection of its server's pool: past it, the server
/// counts as unreachable for the rest of the run.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// acquire timeout.
    pub(super) fn acquire<'a>(
        &'a self,
        control: &'a PgPool,
        server: &'a ServerName,
    ) -> BoxFuture<'a, Result<PoolConnection<Postgres>>> {
        Box::pin(async move {
            let pool = self.pool(control, server).await?;
            match pool.acquire().await {
                Ok(conn) => Ok(conn),
                Err(e) => Err(self.lost(server, &e).await),
            }
        })
    }

    /// `server` failed to connect with `error`: remembered as unreachable (its pool
    /// closed), and the error its tenants fail with.
    pub(super) async fn lost(&self, server: &ServerName, error: &sqlx::Error) -> Error {
        let why = crate::redact_url(&error.to_string());
        let before = self
            .known
            .lock()
            .await
            .insert(server.clone(), Known::Unreachable(why.clone()));
        if let Some(Known::Pool(pool)) = before {
            pool.close().await;
        }
        unreachable(server, why)
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
    mut options: PgConnectOptions,
) -> (PgConnectOptions, Option<String>, Option<String>) {
    if let Some(password) = server.password() {
        return (
            options.password(&password),
            Some(server.password_variable()),
            None,
        );
    }
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

fn unreachable(server: &ServerName, why: String) -> Error {
    Error::ServerUnreachable {
        server: server.clone(),
        source: Box::new(Error::Invalid(why)),
    }
}
