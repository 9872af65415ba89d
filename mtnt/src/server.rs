//! The database servers of a fleet: their names, where a new tenant goes
//! ([`Placement`]), and the password of a server, which the control registry never holds.

use std::fmt;

use serde::Serialize;

use crate::{Error, Result, TenantName};

/// The longest server name: it is part of an environment variable's name too.
const MAX_LEN: usize = 40;

/// The name of the control database's own server, which every fleet has without
/// configuration: tenants registered before servers existed are on it.
pub const DEFAULT_SERVER: &str = "default";

/// A validated server name: 1 to 40 of `a-z 0-9 _ -`, starting with a letter.
///
/// Checked before any SQL, like a [`TenantName`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServerName(String);

impl ServerName {
    /// Checks a server name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_LEN {
            Some("it is longer than 40 characters")
        } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            Some("it must start with a lowercase letter")
        } else if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            Some("it has a character other than a-z, 0-9, '_' and '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidServerName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The control database's own server ([`DEFAULT_SERVER`]).
    pub fn default_server() -> Self {
        Self(DEFAULT_SERVER.to_owned())
    }

    /// Whether this is the control database's own server.
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_SERVER
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The environment variable that holds the server's password:
    /// `MTNT_SERVER_<NAME>_PASSWORD`, the name in capitals with `-` as `_` (so `eu-2`
    /// and `eu_2` share one).
    pub fn password_variable(&self) -> String {
        format!(
            "MTNT_SERVER_{}_PASSWORD",
            self.0.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// Where the server's password is looked for, as messages name it: the variable, else
    /// the password file libpq reads (`PGPASSFILE`, by default `~/.pgpass`).
    pub fn password_sources(&self) -> String {
        format!(
            "{} or a line for it in the file PGPASSFILE names (~/.pgpass by default, mode 0600)",
            self.password_variable()
        )
    }

    /// The password from [`ServerName::password_variable`], if it is set. Without one,
    /// the driver looks in `PGPASSFILE` (or `~/.pgpass`) as libpq does.
    pub fn password(&self) -> Option<String> {
        std::env::var(self.password_variable())
            .ok()
            .filter(|p| !p.is_empty())
    }
}

/// The password for `user` on `database` at `host:port` from the password file, read as
/// libpq reads it (sqlx's own reading keeps the password field's `\:` and `\\` escaped,
/// so pg_dump and mtnt would disagree on it): the file `PGPASSFILE` names, else
/// `~/.pgpass`. `Ok(None)`: no file, or no line for the server; `Err`: why the file was
/// ignored (others may read it, or it cannot be read).
#[cfg(feature = "postgres")]
pub(crate) fn password_from_file(
    host: &str,
    port: u16,
    database: &str,
    user: &str,
) -> std::result::Result<Option<String>, String> {
    let path = match std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        Some(path) => std::path::PathBuf::from(path),
        None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => std::path::Path::new(&home).join(".pgpass"),
            None => return Ok(None),
        },
    };
    let shown = path.display();
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("the password file {shown} cannot be read: {e}")),
    };
    if !meta.is_file() {
        return Err(format!("the password file {shown} is not a plain file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // As libpq: a file others may read holds no secret worth trusting.
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "the password file {shown} was ignored: group or others may read it (chmod 0600 it)"
            ));
        }
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("the password file {shown} cannot be read: {e}"))?;
    Ok(password_in(&text, host, port, database, user))
}

/// The password of the first line of password-file `text` that matches; a field `*`
/// matches anything, `\` escapes the next character (`:` and `\`).
#[cfg(feature = "postgres")]
fn password_in(text: &str, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let fields = fields_of(line.trim_end_matches('\r'));
            let [h, p, d, u, password, ..] = fields.as_slice() else {
                return None;
            };
            let matches = |field: &str, value: &str| field == "*" || field == value;
            (matches(h, host) && matches(p, &port) && matches(d, database) && matches(u, user))
                .then(|| password.clone())
        })
        .filter(|p| !p.is_empty())
}

/// The `:`-separated fields of a password-file line, unescaped.
#[cfg(feature = "postgres")]
fn fields_of(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field at least").push(next);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("one field at least").push(c),
        }
    }
    fields
}

/// The control database's own server.
impl Default for ServerName {
    fn default() -> Self {
        Self::default_server()
    }
}

/// The name; honours width, fill and alignment (`{:<12}`), like `str`.
impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl std::str::FromStr for ServerName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// One server of the fleet as the control registry lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Server {
    /// Its name.
    pub name: ServerName,
    /// Its URL, without a password (the default server's is the control URL's, redacted).
    pub url: String,
    /// How many tenants the registry places on it.
    pub tenants: u64,
    /// Cordoned (`server cordon`): it keeps its tenants but takes no new ones; placement
    /// passes it over, and no tenant is created on it or moved to it.
    pub cordoned: bool,
}

/// Where `tenant create` places a tenant when no server is named: a pluggable strategy
/// ([`MigratorBuilder::placement`](crate::MigratorBuilder::placement)); the default is
/// [`FewestTenants`].
pub trait Placement: Send + Sync + fmt::Debug {
    /// The server of the new tenant `tenant`, one of `servers`: those that take new
    /// tenants (never empty; cordoned ones are left out), the default server first when it
    /// is among them, the others by name.
    fn place(&self, tenant: &TenantName, servers: &[Server]) -> ServerName;
}

/// The server with the fewest tenants; of several, the first listed (the default
/// server, then by name), so placement is the same on every runner.
#[derive(Clone, Copy, Debug, Default)]
pub struct FewestTenants;

impl Placement for FewestTenants {
    fn place(&self, _tenant: &TenantName, servers: &[Server]) -> ServerName {
        servers
            .iter()
            .enumerate()
            .min_by_key(|(at, s)| (s.tenants, *at))
            .map_or_else(ServerName::default_server, |(_, s)| s.name.clone())
    }
}

/// `url` without its password (user-info or `password=` parameter): what the registry
/// stores. A URL that does not parse is refused, naming it redacted.
pub fn url_without_password(url: &str) -> Result<String> {
    let bad = |reason: String| Error::BadUrl {
        url: crate::redact_url(url),
        reason,
    };
    let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host".to_owned()));
    }
    parsed
        .set_password(None)
        .map_err(|()| bad("it cannot hold a user".to_owned()))?;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("password"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["eu-2", "default", "a", "us_east_1"] {
            assert!(ServerName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Eu", "2eu", "eu 2", "eu;drop", &"a".repeat(41)] {
            assert!(ServerName::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ServerName::new("eu-2").unwrap().password_variable(),
            "MTNT_SERVER_EU_2_PASSWORD"
        );
    }

    #[test]
    fn passwords_leave_the_url() {
        assert_eq!(
            url_without_password("postgres://app:s3cret@db:5433/main?sslmode=require&password=x")
                .unwrap(),
            "postgres://app@db:5433/main?sslmode=require"
        );
        assert_eq!(
            url_without_password("postgres://app@db/main").unwrap(),
            "postgres://app@db/main"
        );
        assert!(url_without_password("not a url").is_err());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn password_file_lines_are_read_as_libpq_reads_them() {
        let text = "# a comment:*:*:*:no\n\
                    db.example:5432:*:app:first\n\
                    *:5433:main:app:s\\:e\\\\cret:ignored\r\n\
                    *:*:*:*:\n\
                    *:*:*:other:any\n";
        let find = |host, port, db, user| password_in(text, host, port, db, user);
        assert_eq!(
            find("db.example", 5432, "x", "app").as_deref(),
            Some("first")
        );
        assert_eq!(find("h", 5433, "main", "app").as_deref(), Some("s:e\\cret"));
        // The empty password of the catch-all line is none.
        assert_eq!(find("h", 5433, "other", "app"), None);
        assert_eq!(find("a comment", 1, "*", "*"), None);
    }

    #[test]
    fn fewest_tenants_first_listed_on_a_tie() {
        let server = |name: &str, tenants| Server {
            name: ServerName::new(name).unwrap(),
            url: String::new(),
            tenants,
            cordoned: false,
        };
        let t = TenantName::new("acme").unwrap();
        let servers = [server("default", 3), server("eu-1", 1), server("eu-2", 1)];
        assert_eq!(FewestTenants.place(&t, &servers).as_str(), "eu-1");
        let servers = [server("default", 0), server("eu-1", 0)];
        assert_eq!(FewestTenants.place(&t, &servers).as_str(), "default");
    }
}
