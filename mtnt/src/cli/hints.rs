//! The `fix:` lines the command line prints after an error: what to run or change next,
//! in terms of its own commands and flags. The library's messages say what happened and
//! name no flag; this is the only place that maps an [`Error`] to a command line.

use crate::{Condition, Error};

/// The fix the mtnt command line suggests for `error`, if it knows one: the commands and
/// flags to use next (`repair --tenant acme --order ... --mark completed`, `tenant drop acme
/// --yes`, `--unlock-deadline`...). Wrapped errors (a failed migration, retries that gave
/// up) get the fix of their cause.
///
/// ```
/// let error = mtnt::Error::UnknownTenant("acme".to_owned());
/// assert_eq!(
///     mtnt::cli_fix(&error).as_deref(),
///     Some("check the name with `tenant list`, or create the tenant with `tenant create acme`")
/// );
/// ```
pub fn cli_fix(error: &Error) -> Option<String> {
    Some(match error {
        Error::Migration { source, .. } | Error::GaveUp { source, .. } => return cli_fix(source),
        Error::Connect { url, source } => connect_fix(url, source),
        Error::TenancyMismatch { recorded, .. } => format!(
            "leave out --tenancy (and MTNT_TENANCY): the recorded tenancy {} is used; the \
             tenancy model of a registry never changes",
            recorded.as_str()
        ),
        Error::NoRegistry { other_schemas, .. } => match other_schemas.as_slice() {
            [] => "check the URL (--database-url or DATABASE_URL), or run `migrate` to set it up"
                .to_owned(),
            [one, ..] => format!(
                "pass --control-schema {one} (or MTNT_CONTROL_SCHEMA) to use that registry, \
                 or run `migrate` to set up a new one here"
            ),
        },
        Error::BadUrl { .. } => {
            "give a URL like postgres://user@host/db, mysql://user@host/control or \
             sqlite://./tenants/ with --database-url or DATABASE_URL"
                .to_owned()
        }
        Error::EmptyRegistry => return None,
        Error::DuplicateOrder { .. } => {
            "give one of them another order (`cargo mtnt new` picks the next free one)".to_owned()
        }
        Error::UnknownTenant(name) => format!(
            "check the name with `tenant list`, or create the tenant with `tenant create {name}`"
        ),
        Error::TenantExists(name) => format!(
            "pick another name; if `tenant list` shows it as `creating`, an earlier create died \
             half-way: remove it with `tenant drop {name} --yes` and create it again"
        ),
        Error::UnknownOrder(_) => "pick an order from `list`".to_owned(),
        Error::UnknownServer { server, .. } => format!(
            "check the name with `server list`, or register it with `server add {server} URL`"
        ),
        Error::ServerExists(server) => format!(
            "pick another name, or `server remove {server}` first (refused while it holds tenants)"
        ),
        Error::ServerInUse { server, .. } => format!(
            "`server drain {server}` moves every tenant elsewhere (or `tenant move NAME --to SERVER` one by one, or drop them); `tenant list` shows which are on {server}"
        ),
        Error::ServerNotAdded { server, .. } => format!(
            "check the URL and that the server is up, with its password in {} or the password file; `server add --no-check` registers it without connecting",
            server.password_variable()
        ),
        Error::SameServer { other, .. } => format!(
            "place tenants on server {other}, or check the URL (`server list` shows each server's)"
        ),
        Error::ServerCordoned { server } => format!(
            "name another server (`server list`), or let {server} take tenants again with `server uncordon {server}`"
        ),
        Error::NoServerTakesTenants { .. } => {
            "let a server take tenants again with `server uncordon NAME` (`server list` shows which are cordoned), or add one with `server add NAME URL`".to_owned()
        }
        Error::OneServer { .. } => {
            "leave out --server: every tenant is on the server of --database-url".to_owned()
        }
        Error::ServerUnreachable { server, .. } => format!(
            "check that server {server} is up and its URL (`server list`) right, with its password in {}; the next `migrate` picks its tenants up",
            server.password_sources()
        ),
        Error::Irreversible { .. } => {
            "roll back to an order at or after it (`rollback --to ORDER`), \
             or give it a down function (`down = ...` in its attribute)"
                .to_owned()
        }
        Error::ChecksumMismatch { .. } => CHECKSUM_FIX.to_owned(),
        Error::UnknownApplied { .. } => UNKNOWN_APPLIED_FIX.to_owned(),
        Error::Interrupted {
            tenant_flag, order, ..
        } => interrupted_fix(tenant_flag, &order.to_string()),
        Error::Busy { .. } => {
            "run the same command again once the other run is done (`status` lists the running \
             runs), or raise --unlock-deadline"
                .to_owned()
        }
        Error::StorageMissing { tenant, .. } => format!(
            "restore it, or remove the tenant with `tenant drop {tenant} --yes` (which deletes \
             its registry row and tracking rows)"
        ),
        Error::StorageExists { tenant, .. } => format!(
            "register it with `tenant adopt --schema-like '{}'`, or pick another tenant name",
            escape_like(tenant.as_str())
        ),
        Error::LeaseOutlivesDeadline { .. } => {
            "raise --unlock-deadline, or lower --heartbeat-interval or --heartbeat-retries"
                .to_owned()
        }
        Error::Tls { fix, .. } => fix.clone(),
        Error::TransactionPooler { .. } => "point --database-url (DATABASE_URL) at PostgreSQL itself, or at a session-pooled pool (PgBouncer: pool_mode = session, for example a second [databases] entry with pool_mode=session)".to_owned(),
        Error::Panicked { .. } => {
            "the migration's code panicked: fix it and run the same command again; the tenant was left as the error says".to_owned()
        }
        Error::TenantGone { .. } => {
            "nothing to do: the tenant no longer exists (`tenant list` shows the registry)".to_owned()
        }
        Error::InvalidIndex { indexes, .. } => invalid_index_fix(indexes),
        Error::InvalidRegistryName { table, name, .. } => {
            let name = name.replace('\'', "''");
            format!(
                "rename the row to a valid tenant name (`UPDATE {table} SET name = 'new_name' WHERE name = '{name}'`, if its storage is that tenant's) or delete it (`DELETE FROM {table} WHERE name = '{name}'`)"
            )
        }
        Error::Sql(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| TOO_MANY_CONNECTIONS.contains(&&*c)) =>
        {
            TOO_MANY_CONNECTIONS_FIX.to_owned()
        }
        Error::InvalidTenantName { .. }
        | Error::InvalidServerName { .. }
        | Error::DuplicateName { .. }
        | Error::DuplicateHook { .. }
        // What a hook needs is the hook's business: its error says what failed.
        | Error::Hook { .. }
        | Error::Sql(_)
        | Error::Other(_)
        | Error::WrongEngine { .. }
        | Error::Corrupt(_)
        | Error::Io { .. }
        | Error::Invalid(_) => return None,
    })
}

/// An [`Error`] that shows, in its `Debug` form, the message, its causes and the `fix:`
/// line the mtnt command line prints ([`cli_fix`]): for `fn main() -> Result<(),
/// mtnt::Report>` in a binary that drives the library and whose users know mtnt's
/// commands and flags (`?` converts an [`Error`]).
///
/// ```
/// let report = mtnt::Report::from(mtnt::Error::UnknownTenant("acme".to_owned()));
/// assert_eq!(
///     format!("{report:?}"),
///     "unknown tenant \"acme\": no tenant of that name is registered\n  \
///      fix: check the name with `tenant list`, or create the tenant with `tenant create acme`"
/// );
/// ```
///
/// ```no_run
/// #[tokio::main]
/// async fn main() -> Result<(), mtnt::Report> {
///     let migrator = mtnt::Migrator::connect("sqlite://./tenants/").await?;
///     migrator.migrate(&mtnt::MigrateOptions::new()).await?;
///     Ok(())
/// }
/// ```
///
/// `Error`'s own `Debug` form (`fn main() -> mtnt::Result<()>`) is the message with its
/// causes and no fix, since the fixes name the command line's flags.
pub struct Report(pub Error);

impl Report {
    /// The error.
    pub fn into_inner(self) -> Error {
        self.0
    }
}

impl From<Error> for Report {
    fn from(error: Error) -> Self {
        Report(error)
    }
}

/// The message, each cause it does not quote, and the fix.
impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)?;
        if let Some(fix) = cli_fix(&self.0) {
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}

/// The error's message.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// PostgreSQL too_many_connections, MySQL ER_CON_COUNT_ERROR.
const TOO_MANY_CONNECTIONS: [&str; 2] = ["53300", "1040"];

const TOO_MANY_CONNECTIONS_FIX: &str = "the server has no free connection (max_connections): \
     lower --concurrency, wait for other clients to finish, or raise max_connections on the server";

const CHECKSUM_FIX: &str = "revert the edit and write a new migration instead; if the edit is \
     intended (formatting, comments in SQL), record the new checksum with `repair --checksums`";

const UNKNOWN_APPLIED_FIX: &str =
    "deploy the code that has this migration, or roll it back with the binary that has it";

/// How to settle a migration that started and never completed, in the target that
/// `tenant_flag` names (`--tenant acme `, `--public `).
fn interrupted_fix(tenant_flag: &str, order: &str) -> String {
    format!(
        "check the schema, then `repair {tenant_flag}--order {order} --mark completed` if it \
         took effect, or `repair {tenant_flag}--order {order} --mark pending` to run it again"
    )
}

/// The fix for tenants that `status` or `plan` finds in `condition`, where it takes a
/// hand: `tenant` is the one tenant (else the fix says NAME), `detail` the reason, which
/// names the migration. Behind, out-of-order and failed tenants need only `migrate`.
pub(crate) fn condition_fix(
    condition: Condition,
    tenant: Option<&str>,
    detail: Option<&str>,
) -> Option<String> {
    Some(match condition {
        Condition::Drifted => CHECKSUM_FIX.to_owned(),
        Condition::NeedsRepair => {
            let flag = format!("--tenant {} ", tenant.unwrap_or("NAME"));
            let order = detail
                .and_then(order_in)
                .map_or_else(|| "ORDER".to_owned(), |o| o.to_string());
            interrupted_fix(&flag, &order)
        }
        Condition::Ahead => UNKNOWN_APPLIED_FIX.to_owned(),
        Condition::Creating => creating_fix(tenant.unwrap_or("NAME")),
        _ => return None,
    })
}

/// The line under a `status` table that leaves out the `n` current tenants of a large
/// fleet.
pub(crate) fn unlisted_current_line(n: usize) -> String {
    format!("({n} current tenants not listed; --verbose lists every tenant)\n")
}

/// The fix for a tenant left `creating`, which no run migrates.
pub(crate) fn creating_fix(tenant: &str) -> String {
    format!(
        "a `tenant create` under way finishes it; one that died half-way is finished by \
         dropping it (`tenant drop {tenant} --yes`) and creating it again (`tenant create {tenant}`)"
    )
}

/// The first migration order (`2024_01_01_0003`) written in `text`.
fn order_in(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(14)).find_map(|i| {
        let word = text.get(i..i + 15)?;
        let shaped = word.bytes().enumerate().all(|(j, b)| match j {
            4 | 7 | 10 => b == b'_',
            _ => b.is_ascii_digit(),
        });
        let alone = |at: Option<&u8>| at.is_none_or(|b| !b.is_ascii_alphanumeric());
        (shaped && alone(i.checked_sub(1).and_then(|j| bytes.get(j))) && alone(bytes.get(i + 15)))
            .then(|| super::args::parse_order(word).ok())
            .flatten()
    })
}

/// Drop the invalid indexes and migrate again (the retry builds them anew), or rebuild
/// them in place.
fn invalid_index_fix(indexes: &[String]) -> String {
    let each = |sql: &str| {
        indexes
            .iter()
            .map(|i| format!("{sql} {i};"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "drop {it} (`{}`) and run `migrate` again, which builds {it} anew; or rebuild {it} in place (`{}`) and run `migrate` again",
        each("DROP INDEX CONCURRENTLY"),
        each("REINDEX INDEX CONCURRENTLY"),
        it = if indexes.len() == 1 { "it" } else { "them" },
    )
}

/// What to check when the database at `url` (its password redacted) cannot be reached,
/// from what the driver says.
fn connect_fix(url: &str, source: &sqlx::Error) -> String {
    const URL: &str = "the URL (--database-url or DATABASE_URL)";
    match source {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // PostgreSQL invalid_catalog_name: the database the URL names is not there.
            Some("3D000") => match createdb(url) {
                Some(command) => format!(
                    "create it with `{command}` (mtnt creates the tables in it), or correct \
                     its name in {URL}"
                ),
                None => format!(
                    "create the database first (createdb NAME), or correct its name in {URL}"
                ),
            },
            // MySQL ER_BAD_DB_ERROR.
            Some("1049") => {
                format!(
                    "create the database first (createdb NAME, or CREATE DATABASE), or correct \
                     its name in {URL}"
                )
            }
            // PostgreSQL invalid_password / invalid_authorization_specification, MySQL
            // ER_ACCESS_DENIED_ERROR.
            Some("28P01") | Some("28000") | Some("1045") => {
                format!("check the user name and password of {URL}")
            }
            Some(code) if TOO_MANY_CONNECTIONS.contains(&code) => {
                TOO_MANY_CONNECTIONS_FIX.to_owned()
            }
            _ => format!("check {URL} and the server's log"),
        },
        sqlx::Error::Tls(_) => format!("check the TLS settings (sslmode) of {URL}"),
        sqlx::Error::Configuration(_) => format!("correct {URL}"),
        _ => format!("check that the server is running and that {URL} is right"),
    }
}

/// The `createdb` command that creates the database a `postgres://` URL names, with its
/// host, port and user (never a password).
fn createdb(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let name = parsed.path().trim_start_matches('/');
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let mut command = format!(
        "createdb -h {} -p {}",
        parsed.host_str().unwrap_or("localhost"),
        parsed.port().unwrap_or(5432)
    );
    if !parsed.username().is_empty() {
        command.push_str(&format!(" -U {}", parsed.username()));
    }
    command.push(' ');
    command.push_str(name);
    Some(command)
}

/// `text` as a SQL `LIKE` pattern that matches only itself.
fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%")
}

#[cfg(test)]
mod tests {
    use super::cli_fix;
    use crate::{Error, TenantName};

    #[test]
    fn a_tenant_that_needs_repair_gets_the_repair_of_its_migration() {
        let detail =
            "migration 2024_02_01_0002 index_items in tenant acme started and never completed";
        let fix = super::condition_fix(crate::Condition::NeedsRepair, Some("acme"), Some(detail))
            .unwrap();
        assert!(
            fix.contains("`repair --tenant acme --order 202402010002 --mark completed`"),
            "{fix}"
        );
        let fix = super::condition_fix(crate::Condition::NeedsRepair, None, None).unwrap();
        assert!(
            fix.contains("`repair --tenant NAME --order ORDER --mark pending`"),
            "{fix}"
        );
        assert_eq!(
            super::order_in("at 2024_01_01_0004 add"),
            Some(202401010004)
        );
        assert_eq!(super::order_in("x2024_01_01_0004"), None);
        assert_eq!(super::order_in("2024_13_01_0004"), None);
        assert!(super::condition_fix(crate::Condition::Behind, None, None).is_none());
        let fix = super::creating_fix("acme");
        assert!(fix.contains("`tenant drop acme --yes`"), "{fix}");
        assert!(fix.contains("`tenant create acme`"), "{fix}");
    }

    #[test]
    fn wrapped_errors_get_the_fix_of_their_cause() {
        let interrupted = Error::Interrupted {
            target: "tenant acme".to_owned(),
            migration: "2024_01_01_0003 add_index".to_owned(),
            tenant_flag: "--tenant acme ".to_owned(),
            order: 202401010003,
        };
        let wrapped = Error::GaveUp {
            attempts: 3,
            source: Box::new(Error::Migration {
                target: "tenant acme".to_owned(),
                migration: "2024_01_01_0003 add_index".to_owned(),
                reverting: false,
                source: Box::new(interrupted),
            }),
        };
        let fix = cli_fix(&wrapped).unwrap();
        assert!(
            fix.contains("`repair --tenant acme --order 202401010003 --mark completed`"),
            "{fix}"
        );
        assert!(
            fix.contains("`repair --tenant acme --order 202401010003 --mark pending`"),
            "{fix}"
        );
    }

    #[test]
    fn fixes_of_invalid_indexes_rows_and_full_servers() {
        let fix = cli_fix(&Error::InvalidIndex {
            target: "tenant acme".to_owned(),
            indexes: vec!["acme.a".to_owned(), "acme.b".to_owned()],
        })
        .unwrap();
        assert_eq!(
            fix,
            "drop them (`DROP INDEX CONCURRENTLY acme.a; DROP INDEX CONCURRENTLY acme.b;`) and run \
             `migrate` again, which builds them anew; or rebuild them in place (`REINDEX INDEX \
             CONCURRENTLY acme.a; REINDEX INDEX CONCURRENTLY acme.b;`) and run `migrate` again"
        );
        let fix = cli_fix(&Error::InvalidRegistryName {
            table: "public.mtnt_tenants".to_owned(),
            name: "O'Hara".to_owned(),
            reason: "it has an uppercase letter",
        })
        .unwrap();
        assert!(
            fix.contains("`DELETE FROM public.mtnt_tenants WHERE name = 'O''Hara'`"),
            "{fix}"
        );
        assert!(fix.contains("rename the row"), "{fix}");
    }

    #[test]
    fn dropping_a_tenant_is_confirmed_in_every_fix() {
        for error in [
            Error::TenantExists("acme".to_owned()),
            Error::StorageMissing {
                tenant: TenantName::new("acme").unwrap(),
                storage: "database acme".to_owned(),
            },
        ] {
            let fix = cli_fix(&error).unwrap();
            assert!(fix.contains("`tenant drop acme --yes`"), "{fix}");
        }
        let fix = cli_fix(&Error::StorageExists {
            tenant: TenantName::new("big_co").unwrap(),
            storage: "schema big_co".to_owned(),
        })
        .unwrap();
        assert!(fix.contains(r"--schema-like 'big\_co'"), "{fix}");
    }

    /// Lease settings that let a live run be taken over are refused by the library in its
    /// own terms; the flags to change are the command line's fix.
    #[test]
    fn lease_settings_get_the_flags_to_change() {
        let error = crate::SafetySettings::new()
            .unlock_deadline(std::time::Duration::from_secs(10))
            .validate()
            .unwrap_err();
        assert_eq!(
            cli_fix(&error).as_deref(),
            Some("raise --unlock-deadline, or lower --heartbeat-interval or --heartbeat-retries")
        );
    }

    #[test]
    fn a_missing_database_gets_the_createdb_of_its_url() {
        assert_eq!(
            super::createdb("postgres://app:***@db.internal:6432/control?sslmode=require")
                .as_deref(),
            Some("createdb -h db.internal -p 6432 -U app control")
        );
        assert_eq!(
            super::createdb("postgres://localhost/control").as_deref(),
            Some("createdb -h localhost -p 5432 control")
        );
        assert_eq!(super::createdb("postgres://app@localhost"), None);
    }

    #[test]
    fn a_recorded_tenancy_and_a_missing_registry_get_their_fixes() {
        let fix = cli_fix(&Error::TenancyMismatch {
            recorded: crate::Tenancy::Database,
            given: crate::Tenancy::Schema,
        })
        .unwrap();
        assert!(
            fix.starts_with(
                "leave out --tenancy (and MTNT_TENANCY): the recorded tenancy database is used"
            ),
            "{fix}"
        );
        let missing = |other_schemas: Vec<String>| {
            cli_fix(&Error::NoRegistry {
                place: "directory ./tenants".to_owned(),
                other_schemas,
            })
            .unwrap()
        };
        assert_eq!(
            missing(Vec::new()),
            "check the URL (--database-url or DATABASE_URL), or run `migrate` to set it up"
        );
        assert!(missing(vec!["mtnt".to_owned()]).starts_with("pass --control-schema mtnt"));
    }

    /// The library's messages name no flag or command of the CLI: those are in the fixes.
    #[test]
    fn library_messages_name_no_cli_flag() {
        let errors = [
            Error::UnknownTenant("acme".to_owned()),
            Error::TenantExists("acme".to_owned()),
            Error::UnknownOrder("2024_01_01_0001".to_owned()),
            Error::Irreversible {
                target: "tenant acme".to_owned(),
                migration: "x".to_owned(),
            },
            Error::ChecksumMismatch {
                target: "tenant acme".to_owned(),
                migration: "x".to_owned(),
                recorded: "a".to_owned(),
                current: "b".to_owned(),
            },
            Error::Interrupted {
                target: "tenant acme".to_owned(),
                migration: "x".to_owned(),
                tenant_flag: "--tenant acme ".to_owned(),
                order: 1,
            },
            Error::Busy {
                target: "tenant acme".to_owned(),
                waited: "1s".to_owned(),
            },
            Error::StorageMissing {
                tenant: TenantName::new("acme").unwrap(),
                storage: "schema acme".to_owned(),
            },
            Error::StorageExists {
                tenant: TenantName::new("acme").unwrap(),
                storage: "schema acme".to_owned(),
            },
            Error::EmptyRegistry,
            crate::SafetySettings::new()
                .unlock_deadline(std::time::Duration::from_secs(10))
                .validate()
                .unwrap_err(),
            Error::TenancyMismatch {
                recorded: crate::Tenancy::Database,
                given: crate::Tenancy::Schema,
            },
            Error::NoRegistry {
                place: "database postgres on 127.0.0.1:5432, schema public".to_owned(),
                other_schemas: vec!["mtnt".to_owned()],
            },
            Error::InvalidIndex {
                target: "tenant acme".to_owned(),
                indexes: vec!["acme.items_sku".to_owned()],
            },
            Error::InvalidRegistryName {
                table: "public.mtnt_tenants".to_owned(),
                name: "Bad".to_owned(),
                reason: "it must start with a lowercase letter",
            },
        ];
        for error in errors {
            let message = error.to_string();
            for cli in [
                "--",
                "fix:",
                "`tenant",
                "`repair",
                "`list`",
                "`status`",
                "cargo mtnt",
            ] {
                assert!(!message.contains(cli), "{cli:?} in {message:?}");
            }
        }
    }
}
