use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::Connection;

use super::postgres::PostgresBackend;
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
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self { tenancy: None, control_schema: "public".to_owned(), max_connections: 8 }
    }
}

/// Opens the backend a database URL names:
///
/// | URL | model |
/// |---|---|
/// | `postgres://user@host/db` | a schema per tenant in `db` |
///
/// Errors name the URL with its password redacted.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Box<dyn Backend>> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
    match scheme {
        "postgres" | "postgresql" => {
            match options.tenancy {
                None | Some(Tenancy::Schema) => {}
                Some(other) => {
                    return Err(Error::BadUrl {
                        url: redact_url(url),
                        reason: format!("tenancy {other:?} is not supported on PostgreSQL yet; use schema"),
                    })
                }
            }
            let connect_error = |source| Error::Connect { url: redact_url(url), source };
            let connect_options: PgConnectOptions = url.parse().map_err(connect_error)?;
            // One direct connection first: a pool retries a refused connection until its
            // acquire timeout, while a user with a wrong URL wants to hear so at once.
            PgConnection::connect_with(&connect_options).await.map_err(connect_error)?.close().await.ok();
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(30))
                .connect_lazy_with(connect_options);
            Ok(Box::new(PostgresBackend::new(pool).with_control_schema(&options.control_schema)?))
        }
        _ => Err(Error::BadUrl {
            url: redact_url(url),
            reason: "expected a URL starting with postgres://, mysql:// or sqlite://".to_owned(),
        }),
    }
}
