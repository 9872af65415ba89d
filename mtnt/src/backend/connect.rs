use std::path::PathBuf;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection;

use super::mysql::MySqlBackend;
use super::pg_database::PgDatabaseBackend;
use super::postgres::PostgresBackend;
use super::sqlite::SqliteBackend;
use crate::{redact_url, Backend, Error, Result, Tenancy};

/// How [`connect`] builds a backend from a URL.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// The tenancy model; `None` picks the engine's default (schema on PostgreSQL,
    /// database on MySQL, file on SQLite).
    pub tenancy: Option<Tenancy>,
    /// The PostgreSQL control schema holding the registry and public migrations.
    pub control_schema: String,
    /// The most connections mtnt opens to one server.
    pub max_connections: u32,
    /// The lock and statement timeouts of migrations (PostgreSQL).
    pub timeouts: super::control::Timeouts,
    /// How many of a tenant's pending migrations share a transaction (PostgreSQL).
    pub transactions: super::control::Transactions,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            tenancy: None,
            control_schema: "public".to_owned(),
            max_connections: 8,
            timeouts: super::control::Timeouts::default(),
            transactions: super::control::Transactions::default(),
        }
    }
}

/// Opens the backend a database URL names:
///
/// | URL | model |
/// |---|---|
/// | `postgres://user@host/db` | a schema per tenant in `db` |
/// | `postgres://user@host/control` with [`Tenancy::Database`] (`--tenancy database`) | a database per tenant on the server; `control` holds the registry (see [`PgDatabaseBackend`]) |
/// | `mysql://user@host/control`, `mariadb://...` | a database per tenant; `control` holds the registry (see [`MySqlBackend`]) |
/// | `sqlite://./tenants/`, `sqlite:tenants` | a file per tenant in the relative directory `tenants` |
/// | `sqlite:///var/lib/app/tenants` | a file per tenant in the absolute directory `/var/lib/app/tenants` |
///
/// A SQLite URL names a directory, not a file: it is created if missing and holds
/// `mtnt_control.db` (registry and public migrations) and one `<tenant>.db` per tenant
/// (see [`SqliteBackend`]).
///
/// Errors name the URL with its password redacted.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Box<dyn Backend>> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
    match scheme {
        "postgres" | "postgresql" => {
            match options.tenancy {
                None | Some(Tenancy::Schema) | Some(Tenancy::Database) => {}
                Some(other) => {
                    return Err(Error::BadUrl {
                        url: redact_url(url),
                        reason: format!(
                            "PostgreSQL has no tenancy {other:?}; use schema or database"
                        ),
                    })
                }
            }
            let connect_error = |source| super::tls::connect_error(url, source);
            let connect_options: PgConnectOptions = url.parse().map_err(connect_error)?;
            let per_database = options.tenancy == Some(Tenancy::Database);
            if per_database && connect_options.get_database().is_none_or(str::is_empty) {
                return Err(Error::BadUrl {
                    url: redact_url(url),
                    reason: "with --tenancy database, name the control database that holds the tenant registry, as in postgres://postgres@127.0.0.1/control".to_owned(),
                });
            }
            // Direct connections first: a pool retries a refused connection until its
            // acquire timeout, while a user with a wrong URL wants to hear so at once. They
            // also refuse a pooler in transaction mode (see pg_pooler.rs).
            let connect_options = super::pg_pooler::first_connections(url, connect_options).await?;
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(30))
                .connect_lazy_with(connect_options);
            if per_database {
                return Ok(Box::new(
                    PgDatabaseBackend::new(pool)?
                        .with_control_schema(&options.control_schema)?
                        .with_timeouts(options.timeouts)
                        .with_transactions(options.transactions),
                ));
            }
            Ok(Box::new(
                PostgresBackend::new(pool)
                    .with_control_schema(&options.control_schema)?
                    .with_timeouts(options.timeouts)
                    .with_transactions(options.transactions),
            ))
        }
        "sqlite" => {
            match options.tenancy {
                None | Some(Tenancy::File) => {}
                Some(other) => {
                    return Err(Error::BadUrl {
                        url: redact_url(url),
                        reason: format!("tenancy {other:?} is not supported on SQLite, which keeps one file per tenant; use file"),
                    })
                }
            }
            let dir = sqlite_dir(url).map_err(|reason| Error::BadUrl {
                url: redact_url(url),
                reason,
            })?;
            Ok(Box::new(
                SqliteBackend::open(dir)
                    .await?
                    .with_transactions(options.transactions),
            ))
        }
        "mysql" | "mariadb" => {
            match options.tenancy {
                None | Some(Tenancy::Database) => {}
                Some(other) => {
                    return Err(Error::BadUrl {
                        url: redact_url(url),
                        reason: format!(
                            "tenancy {other:?} is not supported on MySQL, where a schema is a database; use database"
                        ),
                    })
                }
            }
            let bad_url = |reason: String| Error::BadUrl {
                url: redact_url(url),
                reason,
            };
            let (server_url, control) = mysql_control(url).map_err(bad_url)?;
            let connect_error = |source| super::tls::connect_error(url, source);
            let connect_options: MySqlConnectOptions = server_url.parse().map_err(connect_error)?;
            // One direct connection first, as for PostgreSQL: fail at once when unreachable.
            MySqlConnection::connect_with(&connect_options)
                .await
                .map_err(connect_error)?
                .close()
                .await
                .ok();
            let pool = MySqlPoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(30))
                .connect_lazy_with(connect_options);
            Ok(Box::new(MySqlBackend::new(pool, &control)?))
        }
        _ => Err(Error::BadUrl {
            url: redact_url(url),
            reason: "expected a URL starting with postgres://, mysql:// or sqlite://".to_owned(),
        }),
    }
}

/// Splits a MySQL URL into the server URL (no database: sessions pick theirs with `USE`)
/// and the control database it names.
fn mysql_control(url: &str) -> std::result::Result<(String, String), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let control = parsed.path().trim_start_matches('/').to_owned();
    let control = percent_decode(&control)?;
    if control.is_empty() || control.contains('/') {
        return Err("name the control database that holds the tenant registry, as in mysql://root@127.0.0.1/control".to_owned());
    }
    parsed.set_path("");
    Ok((parsed.to_string(), control))
}

/// Decodes `%XX` escapes of a URL path.
fn percent_decode(text: &str) -> std::result::Result<String, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' && tail.len() >= 2 {
            let hex = std::str::from_utf8(&tail[..2]).map_err(|e| e.to_string())?;
            bytes.push(
                u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad escape %{hex} in the database name"))?,
            );
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

/// The directory a `sqlite:` URL names: `sqlite://./dir/`, `sqlite:///abs/dir` or `sqlite:dir`.
fn sqlite_dir(url: &str) -> std::result::Result<PathBuf, String> {
    let rest = url.strip_prefix("sqlite:").unwrap_or(url);
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.contains('?') || path.contains('#') {
        return Err("SQLite URLs take no parameters here; name the tenant directory only, as in sqlite://./tenants/".to_owned());
    }
    if path.is_empty() || path.starts_with(':') {
        return Err("name the directory that holds the tenant files, as in sqlite://./tenants/ (in-memory databases cannot hold a file per tenant)".to_owned());
    }
    let dir = PathBuf::from(path);
    let looks_like_file = dir
        .extension()
        .is_some_and(|e| e == "db" || e == "sqlite" || e == "sqlite3");
    if dir.is_file() || (looks_like_file && !dir.is_dir()) {
        return Err(format!(
            "{path} looks like a database file, but mtnt keeps one file per tenant in a directory; name the directory, as in sqlite://./tenants/"
        ));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::{mysql_control, sqlite_dir};
    use std::path::PathBuf;

    #[test]
    fn mysql_urls_name_the_control_database() {
        assert_eq!(
            mysql_control("mysql://root:pw@127.0.0.1:3306/control?ssl-mode=disabled"),
            Ok((
                "mysql://root:pw@127.0.0.1:3306?ssl-mode=disabled".to_owned(),
                "control".to_owned()
            ))
        );
        assert_eq!(
            mysql_control("mariadb://root@db/app%2Dcontrol").map(|(_, c)| c),
            Ok("app-control".to_owned())
        );
        assert!(mysql_control("mysql://root@127.0.0.1")
            .unwrap_err()
            .contains("name the control database"));
        assert!(mysql_control("mysql://root@127.0.0.1/").is_err());
    }

    #[test]
    fn sqlite_urls_name_directories() {
        assert_eq!(
            sqlite_dir("sqlite://./tenants/"),
            Ok(PathBuf::from("./tenants/"))
        );
        assert_eq!(
            sqlite_dir("sqlite:///abs/dir"),
            Ok(PathBuf::from("/abs/dir"))
        );
        assert_eq!(sqlite_dir("sqlite:tenants"), Ok(PathBuf::from("tenants")));
        assert!(sqlite_dir("sqlite::memory:").is_err());
        assert!(sqlite_dir("sqlite://").is_err());
        assert!(sqlite_dir("sqlite://./app.db").is_err());
        assert!(sqlite_dir("sqlite://./t?mode=rwc").is_err());
    }
}
