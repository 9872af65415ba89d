//! From a `mysql://` or `mariadb://` URL to a backend.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Connection as _, MySqlConnection};

use super::MySqlBackend;
use crate::backend::api::Backend;
use crate::backend::connect::{percent_decode, ConnectOptions};
use crate::backend::engine::Tenancy;
use crate::{redact_url, Error, Result};

/// Opens the backend of a `mysql://` or `mariadb://` URL, which names the control
/// database.
pub(in crate::backend) async fn connect(
    url: &str,
    options: &ConnectOptions,
) -> Result<Box<dyn Backend>> {
    let bad_url = |reason: String| Error::BadUrl {
        url: redact_url(url),
        reason,
    };
    match options.tenancy {
        None | Some(Tenancy::Database) => {}
        Some(other) => {
            return Err(bad_url(format!(
                "tenancy {other:?} is not supported on MySQL, where a schema is a database; use database"
            )))
        }
    }
    if options.control_schema != ConnectOptions::default().control_schema {
        return Err(Error::Invalid(format!(
            "MySQL has no control schema: the registry and the public migrations are in the control database that the URL names, so control schema {:?} has no meaning there",
            options.control_schema
        )));
    }
    let (server_url, control) = control_database(url).map_err(bad_url)?;
    let connect_error = |source| super::super::tls::connect_error(url, source);
    let connect_options: MySqlConnectOptions = server_url.parse().map_err(connect_error)?;
    // One direct connection first: a pool retries a refused connection until its
    // acquire timeout, while a user with a wrong URL wants to hear so at once.
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

/// Splits a MySQL URL into the server URL (no database: targets pick theirs with `USE`)
/// and the control database it names.
fn control_database(url: &str) -> std::result::Result<(String, String), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let control = percent_decode(parsed.path().trim_start_matches('/'))?;
    if control.is_empty() || control.contains('/') {
        return Err("name the control database that holds the tenant registry, as in mysql://root@127.0.0.1/control".to_owned());
    }
    parsed.set_path("");
    Ok((parsed.to_string(), control))
}

#[cfg(test)]
mod tests {
    use super::control_database;

    #[test]
    fn urls_name_the_control_database() {
        assert_eq!(
            control_database("mysql://root:pw@127.0.0.1:3306/control?ssl-mode=disabled"),
            Ok((
                "mysql://root:pw@127.0.0.1:3306?ssl-mode=disabled".to_owned(),
                "control".to_owned()
            ))
        );
        assert_eq!(
            control_database("mariadb://root@db/app%2Dcontrol").map(|(_, c)| c),
            Ok("app-control".to_owned())
        );
        assert!(control_database("mysql://root@127.0.0.1")
            .unwrap_err()
            .contains("name the control database"));
        assert!(control_database("mysql://root@127.0.0.1/").is_err());
    }
}
