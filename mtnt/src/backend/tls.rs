//! Tells a TLS failure of mtnt's first connection apart from an unreachable server, so that
//! the error says what is wrong with the certificate or the TLS settings, and how to fix it.
//!
//! sqlx takes the TLS settings from the URL: `sslmode` (`disable`, `prefer`, the default,
//! `require`, `verify-ca`, `verify-full`) and `sslrootcert` on PostgreSQL (or `PGSSLMODE`
//! and `PGSSLROOTCERT`), `ssl-mode` (`DISABLED`, `PREFERRED`, the default, `REQUIRED`,
//! `VERIFY_CA`, `VERIFY_IDENTITY`) and `ssl-ca` on MySQL. It verifies certificates with
//! rustls against the Mozilla roots built in plus the certificates of `sslrootcert`.

use rustls::CertificateError;

use crate::{redact_url, Error};

/// The error of a failed first connection to `url`: [`Error::Tls`] when TLS is what
/// failed, [`Error::BadUrl`] for a misspelt TLS mode, [`Error::Connect`] otherwise.
pub(super) fn connect_error(url: &str, source: sqlx::Error) -> Error {
    let settings = Settings::of(url);
    // A misspelt mode is a bad URL, not a failed connection.
    if let sqlx::Error::Configuration(message) = &source {
        if message.to_string().contains("ssl_mode") {
            let values = if settings.postgres {
                "sslmode=disable, prefer, require, verify-ca or verify-full"
            } else {
                "ssl-mode=DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"
            };
            return Error::BadUrl {
                url: redact_url(url),
                reason: format!(
                    "{}; use {values}",
                    message
                        .to_string()
                        .trim_start_matches("error with configuration: ")
                ),
            };
        }
    }
    match problem(&settings, &source) {
        Some((problem, fix)) => Error::Tls {
            url: redact_url(url),
            problem,
            fix,
            source,
        },
        None => Error::Connect {
            url: redact_url(url),
            source,
        },
    }
}

/// The TLS settings a URL names, as the messages spell them.
struct Settings {
    postgres: bool,
    host: String,
    /// The mode's parameter as written, and its value (`None`: the default).
    mode_key: String,
    mode: Option<String>,
    /// The CA parameter as written, and the path (or PEM) it names.
    ca_key: String,
    ca: Option<String>,
}

impl Settings {
    fn of(url: &str) -> Settings {
        let parsed = url::Url::parse(url).ok();
        let postgres = !matches!(
            parsed.as_ref().map(url::Url::scheme),
            Some("mysql" | "mariadb")
        );
        let (mut mode_key, mut ca_key) = if postgres {
            ("sslmode", "sslrootcert")
        } else {
            ("ssl-mode", "ssl-ca")
        };
        let (mut mode, mut ca) = (None, None);
        for (key, value) in parsed.iter().flat_map(url::Url::query_pairs) {
            match &*key {
                "sslmode" | "ssl-mode" => {
                    mode_key = if key == "sslmode" {
                        "sslmode"
                    } else {
                        "ssl-mode"
                    };
                    mode = Some(value.into_owned());
                }
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" | "sslca" => {
                    ca_key = match &*key {
                        "sslrootcert" => "sslrootcert",
                        "ssl-root-cert" => "ssl-root-cert",
                        "ssl-ca" => "ssl-ca",
                        _ => "sslca",
                    };
                    ca = Some(value.into_owned());
                }
                _ => {}
            }
        }
        if postgres {
            // sqlx reads these when the URL does not set them, as libpq does.
            mode = mode.or_else(|| std::env::var("PGSSLMODE").ok());
            ca = ca.or_else(|| std::env::var("PGSSLROOTCERT").ok());
        }
        Settings {
            postgres,
            host: parsed
                .as_ref()
                .and_then(url::Url::host_str)
                .unwrap_or("localhost")
                .to_owned(),
            mode_key: mode_key.to_owned(),
            mode,
            ca_key: ca_key.to_owned(),
            ca,
        }
    }

    /// `sslmode=require` (`ssl-mode=REQUIRED`): the mode that encrypts without checking.
    fn require(&self) -> String {
        let value = if self.postgres { "require" } else { "REQUIRED" };
        format!("{}={value}", self.mode_key)
    }

    /// `sslmode=verify-ca` (`ssl-mode=VERIFY_CA`).
    fn verify_ca(&self) -> String {
        let value = if self.postgres {
            "verify-ca"
        } else {
            "VERIFY_CA"
        };
        format!("{}={value}", self.mode_key)
    }

    /// `sslmode=prefer` (`ssl-mode=PREFERRED`).
    fn prefer(&self) -> String {
        let value = if self.postgres { "prefer" } else { "PREFERRED" };
        format!("{}={value}", self.mode_key)
    }

    /// `sslmode=require` as the URL has it, or `the default sslmode (prefer)`.
    fn mode(&self) -> String {
        match &self.mode {
            Some(mode) => format!("{}={mode}", self.mode_key),
            None => format!("the default {} ({})", self.mode_key, self.prefer()),
        }
    }

    /// `sslrootcert=/etc/ca.pem`, or `sslrootcert=<PEM text>` for an inline certificate.
    fn ca(&self) -> Option<String> {
        let ca = self.ca.as_deref()?;
        Some(if ca.trim_start().starts_with("-----BEGIN") {
            format!("{}=<the PEM certificate in the URL>", self.ca_key)
        } else {
            format!("{}={ca}", self.ca_key)
        })
    }
}

/// What went wrong and how to fix it, when `error` is a TLS failure.
fn problem(settings: &Settings, error: &sqlx::Error) -> Option<(String, String)> {
    if let Some(tls) = rustls_error(error) {
        return Some(handshake_problem(settings, tls));
    }
    match error {
        sqlx::Error::Tls(message) if message.to_string().contains("does not support TLS") => Some((
            format!("{} asks for TLS, but the server does not offer it", settings.mode()),
            format!(
                "turn TLS on in the server ({}), or use {}, which connects without TLS when the server offers none",
                if settings.postgres {
                    "ssl = on with ssl_cert_file and ssl_key_file in postgresql.conf"
                } else {
                    "ssl_cert and ssl_key in the [mariadbd] or [mysqld] section of its configuration"
                },
                settings.prefer()
            ),
        )),
        sqlx::Error::Tls(message) => Some((
            match settings.ca() {
                Some(ca) => format!("cannot use {ca}: {message}"),
                None => format!("the TLS set-up failed: {message}"),
            },
            format!(
                "point {} at a PEM file of the CA certificates to trust",
                settings.ca_key
            ),
        )),
        // sqlx reads the CA file when the handshake starts; a missing file is an I/O error.
        sqlx::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) && unreadable(settings) =>
        {
            Some((
            format!("cannot read {}: {io}", settings.ca()?),
            format!(
                "check the path in {} (the process that runs mtnt reads it)",
                settings.ca_key
            ),
        ))
        }
        _ => None,
    }
}

/// Whether the URL names a CA file that this process cannot read.
fn unreadable(settings: &Settings) -> bool {
    settings.ca.as_deref().is_some_and(|ca| {
        !ca.trim_start().starts_with("-----BEGIN") && std::fs::File::open(ca).is_err()
    })
}

fn handshake_problem(settings: &Settings, error: &rustls::Error) -> (String, String) {
    let rustls::Error::InvalidCertificate(certificate) = error else {
        return (
            format!("the TLS handshake failed: {error}"),
            format!(
                "check the server's TLS settings and {} in the URL",
                settings.mode_key
            ),
        );
    };
    let unchecked = format!(
        "or use {} to encrypt without checking the certificate",
        settings.require()
    );
    match certificate {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => match settings.ca() {
            Some(ca) => (
                format!("the server's certificate is not trusted by {ca}: {error}"),
                format!(
                    "set {} to the certificate of the CA that signed the server's certificate (for a self-signed certificate, that certificate itself), {unchecked}",
                    settings.ca_key
                ),
            ),
            None => (
                format!(
                    "the server's certificate is not signed by a CA mtnt trusts (the Mozilla roots built in; the URL names no {}): {error}",
                    settings.ca_key
                ),
                format!(
                    "name the CA that signed it with {}=/path/to/ca.pem, {unchecked}",
                    settings.ca_key
                ),
            ),
        },
        // rustls from 0.23.24 has `...Context` variants of these three; the workspace holds it
        // below that (see Cargo.toml), and the catch-all below still shows its words.
        CertificateError::NotValidForName => (
            format!(
                "the server's certificate is not valid for the host name {}: {error}",
                settings.host
            ),
            format!(
                "connect with a host name the certificate names (its subject alternative names), or use {} to check the CA but not the name",
                settings.verify_ca()
            ),
        ),
        CertificateError::Expired | CertificateError::NotValidYet => (
            format!("the server's certificate is outside its validity period: {error}"),
            format!("renew the server's certificate or check this machine's clock, {unchecked}"),
        ),
        _ => (
            format!("the server's certificate was rejected: {error}"),
            format!("check the server's certificate, {unchecked}"),
        ),
    }
}

/// The rustls error behind `error`: sqlx passes handshake failures on as I/O errors.
fn rustls_error(error: &sqlx::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{connect_error, Settings};
    use crate::Error;

    #[test]
    fn settings_come_from_the_url() {
        let pg =
            Settings::of("postgres://u:pw@db.example/app?sslmode=verify-ca&sslrootcert=/ca.pem");
        assert!(pg.postgres);
        assert_eq!(pg.host, "db.example");
        assert_eq!(pg.mode(), "sslmode=verify-ca");
        assert_eq!(pg.ca().as_deref(), Some("sslrootcert=/ca.pem"));
        let my = Settings::of("mysql://root@db/control?ssl-mode=VERIFY_CA&ssl-ca=%2Fca.pem");
        assert!(!my.postgres);
        assert_eq!(my.mode(), "ssl-mode=VERIFY_CA");
        assert_eq!(my.ca().as_deref(), Some("ssl-ca=/ca.pem"));
        assert_eq!(my.require(), "ssl-mode=REQUIRED");
    }

    #[test]
    fn a_server_without_tls_is_a_tls_error_and_a_refused_connection_is_not() {
        let url = "postgres://u:secret@db/app?sslmode=require";
        let error = connect_error(url, sqlx::Error::Tls("server does not support TLS".into()));
        assert!(matches!(error, Error::Tls { .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains("sslmode=require asks for TLS"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        // The fix travels as a field; the CLI prints it.
        let Error::Tls { fix, .. } = &error else {
            unreachable!()
        };
        assert!(fix.contains("sslmode=prefer"), "{fix}");

        let error = connect_error(
            "mysql://root@db/control?ssl-mode=verify-ca",
            sqlx::Error::Configuration("unknown value \"verify-ca\" for `ssl_mode`".into()),
        );
        assert!(matches!(error, Error::BadUrl { .. }), "{error}");
        assert!(error.to_string().contains("VERIFY_CA"), "{error}");

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = connect_error(url, sqlx::Error::Io(refused));
        assert!(matches!(error, Error::Connect { .. }), "{error}");
    }
}
