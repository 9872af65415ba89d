//! From a URL to an engine: the scheme picks the engine (compiled in by its feature),
//! which parses the rest.

use super::api::Backend;
use super::engine::Tenancy;
use crate::{redact_url, Error, Result};

/// How [`connect`] builds a backend from a URL.
///
/// The struct is `#[non_exhaustive]`: outside mtnt, start from [`ConnectOptions::new`]
/// (the defaults) and set what differs.
///
/// ```no_run
/// # async fn demo() -> mtnt::Result<()> {
/// use mtnt::{ConnectOptions, Migrator, Tenancy};
///
/// let options = ConnectOptions::new()
///     .tenancy(Tenancy::Database)
///     .max_connections(16);
/// let backend = mtnt::connect("postgres://postgres@127.0.0.1/control", &options).await?;
/// let migrator = Migrator::builder_boxed(backend).concurrency(8).build()?;
/// # let _ = migrator; Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// The tenancy model; `None` picks the one the registry records, else the engine's
    /// default (schema on PostgreSQL, database on MySQL, file on SQLite). A model that
    /// contradicts the recorded one is refused ([`Error::TenancyMismatch`]), before
    /// anything changes.
    pub tenancy: Option<Tenancy>,
    /// The PostgreSQL control schema holding the registry and public migrations.
    pub control_schema: String,
    /// The most connections mtnt opens to one server (default 10: the default
    /// concurrency of 8 and two for the control registry).
    pub max_connections: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            tenancy: None,
            control_schema: "public".to_owned(),
            max_connections: 10,
        }
    }
}

impl ConnectOptions {
    /// The defaults: the engine's default tenancy, control schema `public`, at most 8
    /// connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`tenancy`](Self::tenancy): the tenancy model, where the URL allows two
    /// (PostgreSQL: [`Tenancy::Schema`] by default, or [`Tenancy::Database`]).
    pub fn tenancy(mut self, tenancy: Tenancy) -> Self {
        self.tenancy = Some(tenancy);
        self
    }

    /// Sets [`control_schema`](Self::control_schema).
    pub fn control_schema(mut self, schema: impl Into<String>) -> Self {
        self.control_schema = schema.into();
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, connections: u32) -> Self {
        self.max_connections = connections;
        self
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
/// A SQLite URL names a directory, not a file: the first command that writes creates it if
/// missing (a read never does), and it holds
/// `mtnt_control.db` (registry and public migrations) and one `<tenant>.db` per tenant
/// (see [`SqliteBackend`]).
///
/// Errors name the URL with its password redacted.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Box<dyn Backend>> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
    let feature = match scheme {
        "postgres" | "postgresql" => "postgres",
        "sqlite" => "sqlite",
        "mysql" | "mariadb" => "mysql",
        _ => {
            return Err(Error::BadUrl {
                url: redact_url(url),
                reason: "expected a URL starting with postgres://, mysql:// or sqlite://"
                    .to_owned(),
            })
        }
    };
    match feature {
        #[cfg(feature = "postgres")]
        "postgres" => super::postgres::connect(url, options).await,
        #[cfg(feature = "sqlite")]
        "sqlite" => super::sqlite::connect(url, options).await,
        #[cfg(feature = "mysql")]
        "mysql" => super::mysql::connect(url, options).await,
        _ => {
            let _ = options;
            Err(Error::BadUrl {
                url: redact_url(url),
                reason: format!(
                    "this binary was built without mtnt's `{feature}` feature; enable it in Cargo.toml"
                ),
            })
        }
    }
}

/// Decodes `%XX` escapes of a URL path.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(super) fn percent_decode(text: &str) -> std::result::Result<String, String> {
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
