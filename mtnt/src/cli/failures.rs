//! Failed tenants, as the command line shows them: each failure once, saying the tenant
//! once, and tenants that failed for one reason in one group (80 tenants failing at one
//! migration with one error are one paragraph, not 80).

use std::fmt::Write;

use super::hints::cli_fix;
use super::output::thousands;
use crate::{Error, FailedTenant, ServerName, TenantName};

/// The longest line the tenant names of a group are wrapped at.
const WIDTH: usize = 100;

/// One failure, without the tenant it happened to.
pub(crate) struct Failure {
    /// `at 2024_01_01_0003 add_index`, `reverting 2024_...`, or empty when the error
    /// names no migration.
    pub(crate) at: String,
    /// What went wrong, with `tenant <name>` said as "the tenant".
    pub(crate) cause: String,
    /// The CLI's fix, if any.
    pub(crate) fix: Option<String>,
    /// What two tenants failing for the same reason share: the failure with the tenant's
    /// name replaced.
    pub(crate) key: String,
    /// The server that could not be reached, when that is the failure: the line names
    /// the server, not the tenant.
    server: Option<ServerName>,
}

impl Failure {
    /// `error` of `tenant`, taken apart.
    pub(crate) fn of(tenant: &TenantName, error: &Error) -> Self {
        let (at, cause) = split(error);
        let cause = the_tenant(&cause, tenant.as_str());
        let fix = cli_fix(error);
        let server = unreachable(error).map(|(server, _)| server.clone());
        let key = match &server {
            // One kind per server, whatever migration (if any) each of its tenants was at
            // when the server went: one line tells them all.
            Some(server) => format!("unreachable\n{server}"),
            None => format!(
                "{at}\n{}\n{}",
                anonymous(&cause, tenant.as_str(), "<tenant>"),
                fix.as_deref()
                    .map(|f| anonymous(f, tenant.as_str(), "NAME"))
                    .unwrap_or_default()
            ),
        };
        Self {
            at,
            cause,
            fix,
            key,
            server,
        }
    }

    /// `tenant acme failed at 2024_01_01_0003 add_index: <cause>`, for progress lines;
    /// `server eu-2 unreachable: <cause>; its tenants are not migrated` for the tenants
    /// of a server that could not be reached.
    pub(crate) fn line(&self, tenant: &TenantName) -> String {
        match &self.server {
            Some(_) => format!("{}; its tenants are not migrated", indent(&self.cause)),
            None => format!("tenant {tenant} failed{}: {}", self.at, indent(&self.cause)),
        }
    }
}

/// `(" at <migration>", cause)` of an error: the migration it names, and the error
/// inside the wrapper that names it (with retries noted).
fn split(error: &Error) -> (String, String) {
    match error {
        Error::Migration {
            migration,
            reverting,
            source,
            ..
        } => {
            let verb = if *reverting { "reverting" } else { "at" };
            (format!(" {verb} {migration}"), source.to_string())
        }
        Error::GaveUp { attempts, source } => {
            let (at, cause) = split(source);
            (at, format!("{cause} (gave up after {attempts} attempts)"))
        }
        other => (String::new(), other.to_string()),
    }
}

/// Whether `c` can be part of a tenant name.
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The byte offsets at which `word` stands alone in `text` (not inside a longer name).
fn occurrences(text: &str, word: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let start = from + at;
        let end = start + word.len();
        if !text[..start].chars().next_back().is_some_and(name_char)
            && !text[end..].chars().next().is_some_and(name_char)
        {
            found.push(start);
        }
        from = end;
    }
    found
}

/// `text` with `tenant <name>` (after a space or at the start) said as "the tenant": the
/// line names the tenant already.
pub(crate) fn the_tenant(text: &str, name: &str) -> String {
    let phrase = format!("tenant {name}");
    let mut out = String::new();
    let mut rest = 0;
    for start in occurrences(text, &phrase) {
        if start > 0 && !text[..start].ends_with(char::is_whitespace) {
            continue;
        }
        out.push_str(&text[rest..start]);
        out.push_str("the tenant");
        rest = start + phrase.len();
    }
    out.push_str(&text[rest..]);
    out
}

/// `text` with the tenant's name replaced by `placeholder` wherever it stands alone.
pub(crate) fn anonymous(text: &str, name: &str, placeholder: &str) -> String {
    let mut out = String::new();
    let mut rest = 0;
    for start in occurrences(text, name) {
        out.push_str(&text[rest..start]);
        out.push_str(placeholder);
        rest = start + name.len();
    }
    out.push_str(&text[rest..]);
    out
}

/// The lines after the first indented to line up under the message.
fn indent(text: &str) -> String {
    text.trim_end().replace('\n', "\n    ")
}

/// The server whose being unreachable failed the tenant, if that is why, and why it
/// could not be reached: the [`Error::ServerUnreachable`] inside whatever names the
/// migration.
fn unreachable(error: &Error) -> Option<(&ServerName, &Error)> {
    match error {
        Error::ServerUnreachable { server, source } => Some((server, source)),
        Error::Migration { source, .. } | Error::GaveUp { source, .. } => unreachable(source),
        _ => None,
    }
}

/// One line per server that could not be reached (`server eu-2 unreachable: 2,431
/// tenants not migrated`), with why and the fix; the tenants of a server are not named,
/// a down server can hold thousands.
fn render_unreachable(failures: &[&FailedTenant]) -> String {
    let mut servers: Vec<(&ServerName, &Error, usize)> = Vec::new();
    for failed in failures {
        let Some((server, why)) = unreachable(&failed.error) else {
            continue;
        };
        match servers.iter_mut().find(|(s, _, _)| *s == server) {
            Some((_, _, n)) => *n += 1,
            None => servers.push((server, why, 1)),
        }
    }
    servers.sort_by_key(|(server, _, _)| *server);
    let mut out = String::new();
    for (server, why, n) in servers {
        out.push_str(&unreachable_line(server, n, "migrated", &why.to_string()));
    }
    out
}

/// `server eu-2 unreachable: 2,431 tenants not <done> (<why>)` and its fix: the line of a
/// server that could not be reached, for `migrate` (not migrated) and `status` (not read).
pub(crate) fn unreachable_line(
    server: &ServerName,
    tenants: usize,
    done: &str,
    why: &str,
) -> String {
    let mut out = format!(
        "server {server} unreachable: {} tenant{} not {done} ({})\n",
        thousands(tenants),
        if tenants == 1 { "" } else { "s" },
        indent(why)
    );
    let error = Error::ServerUnreachable {
        server: server.clone(),
        source: Box::new(Error::Invalid(why.to_owned())),
    };
    if let Some(fix) = cli_fix(&error) {
        let _ = writeln!(out, "  fix: {fix}");
    }
    out
}

/// The failed tenants, grouped by what failed, largest group first; the tenants of a
/// server that could not be reached in one line per server, first.
pub(crate) fn render(failures: &[FailedTenant]) -> String {
    let (unreachable, failures): (Vec<&FailedTenant>, Vec<&FailedTenant>) = failures
        .iter()
        .partition(|f| unreachable(&f.error).is_some());
    let mut out = render_unreachable(&unreachable);
    out.push_str(&render_reachable(&failures));
    out
}

/// [`render`] of the tenants whose server was reached.
fn render_reachable(failures: &[&FailedTenant]) -> String {
    // Each group: the first failure, its tenant, and every tenant that failed that way.
    let mut groups: Vec<(Failure, &TenantName, Vec<&TenantName>)> = Vec::new();
    for failed in failures {
        let failure = Failure::of(&failed.tenant, &failed.error);
        match groups.iter_mut().find(|(g, _, _)| g.key == failure.key) {
            Some((_, _, tenants)) => tenants.push(&failed.tenant),
            None => groups.push((failure, &failed.tenant, vec![&failed.tenant])),
        }
    }
    // Stable: groups of one size keep the order their first failure came in.
    groups.sort_by_key(|(_, _, tenants)| std::cmp::Reverse(tenants.len()));
    let mut out = String::new();
    for (failure, first, tenants) in &mut groups {
        tenants.sort();
        if let [tenant] = tenants.as_slice() {
            let _ = writeln!(out, "{}", failure.line(tenant));
            if let Some(fix) = &failure.fix {
                let _ = writeln!(out, "  fix: {fix}");
            }
            continue;
        }
        let first = first.as_str();
        let _ = writeln!(
            out,
            "{} tenants failed{}: {}",
            tenants.len(),
            failure.at,
            indent(&anonymous(&failure.cause, first, "<tenant>"))
        );
        out.push_str(&wrap_names(tenants));
        if let Some(fix) = &failure.fix {
            let general = anonymous(fix, first, "NAME");
            if general == *fix {
                let _ = writeln!(out, "  fix: {fix}");
            } else {
                let _ = writeln!(out, "  fix, for each NAME above: {general}");
            }
        }
    }
    out
}

/// How many names a list shows unless told to show them all.
pub(crate) const NAMES_SHOWN: usize = 20;

/// The names as [`wrap_names`] lays them out; unless `all`, only the first
/// [`NAMES_SHOWN`], then how many more there are.
pub(crate) fn name_list(tenants: &[&TenantName], all: bool) -> String {
    if all || tenants.len() <= NAMES_SHOWN {
        return wrap_names(tenants);
    }
    let mut out = wrap_names(&tenants[..NAMES_SHOWN]);
    out.pop();
    out.push_str(&format!(
        " and {} more (--verbose names them all)\n",
        super::output::thousands(tenants.len() - NAMES_SHOWN)
    ));
    out
}

/// The names, comma-separated, in lines of at most [`WIDTH`] characters, indented.
fn wrap_names(tenants: &[&TenantName]) -> String {
    let mut out = String::new();
    let mut line = String::from("   ");
    for (i, tenant) in tenants.iter().enumerate() {
        let word = if i + 1 < tenants.len() {
            format!(" {tenant},")
        } else {
            format!(" {tenant}")
        };
        if line.len() + word.len() > WIDTH && line.len() > 3 {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from("   ");
        }
        line.push_str(&word);
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(tenant: &str, error: Error) -> FailedTenant {
        FailedTenant {
            tenant: TenantName::new(tenant).unwrap(),
            error,
        }
    }

    fn index_error(tenant: &str) -> Error {
        Error::Migration {
            target: format!("tenant {tenant}"),
            migration: "2024_01_01_0003 add_index".to_owned(),
            reverting: false,
            source: Box::new(Error::Invalid(format!(
                "relation \"{tenant}.items\" does not exist"
            ))),
        }
    }

    #[test]
    fn identical_failures_are_one_group() {
        let mut failures: Vec<FailedTenant> = (0..80)
            .rev()
            .map(|i| {
                let t = format!("t{i:03}");
                failed(&t, index_error(&t))
            })
            .collect();
        failures.push(failed(
            "globex",
            Error::Migration {
                target: "tenant globex".to_owned(),
                migration: "2024_01_01_0004 add_notes".to_owned(),
                reverting: false,
                source: Box::new(Error::Invalid("division by zero".to_owned())),
            },
        ));
        let text = render(&failures);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "80 tenants failed at 2024_01_01_0003 add_index: relation \"<tenant>.items\" does not exist",
            "{text}"
        );
        assert!(lines[1].starts_with("    t000, t001, t002,"), "{text}");
        assert!(lines.iter().all(|l| l.len() <= WIDTH), "{text}");
        assert!(text.contains(" t079\n"), "{text}");
        assert!(
            text.contains("tenant globex failed at 2024_01_01_0004 add_notes: division by zero"),
            "{text}"
        );
        assert!(lines.len() < 12, "{text}");
    }

    #[test]
    fn the_tenant_is_named_once() {
        let error = Error::GaveUp {
            attempts: 3,
            source: Box::new(Error::Migration {
                target: "tenant globex".to_owned(),
                migration: "2024_01_01_0003 add_index".to_owned(),
                reverting: false,
                source: Box::new(Error::ChecksumMismatch {
                    target: "tenant globex".to_owned(),
                    migration: "2024_01_01_0003 add_index".to_owned(),
                    recorded: "a".to_owned(),
                    current: "b".to_owned(),
                }),
            }),
        };
        let line = Failure::of(&TenantName::new("globex").unwrap(), &error)
            .line(&TenantName::new("globex").unwrap());
        assert_eq!(line.matches("globex").count(), 1, "{line}");
        assert!(line.starts_with("tenant globex failed at 2024_01_01_0003 add_index: migration 2024_01_01_0003 add_index was changed after it was applied to the tenant"), "{line}");
        assert!(line.ends_with("(gave up after 3 attempts)"), "{line}");
    }

    #[test]
    fn a_group_fix_names_each_tenant() {
        let failures: Vec<FailedTenant> = ["t001", "t002"]
            .iter()
            .map(|t| {
                failed(
                    t,
                    Error::Interrupted {
                        target: format!("tenant {t}"),
                        migration: "2024_01_02_0005 create_d".to_owned(),
                        tenant_flag: format!("--tenant {t} "),
                        order: 202401020005,
                    },
                )
            })
            .collect();
        let text = render(&failures);
        assert!(text.starts_with("2 tenants failed: migration 2024_01_02_0005 create_d in the tenant started and never completed"), "{text}");
        assert!(text.contains("    t001, t002\n"), "{text}");
        assert!(
            text.contains("  fix, for each NAME above: check the schema, then `repair --tenant NAME --order 202401020005 --mark completed`"),
            "{text}"
        );
    }

    #[test]
    fn long_name_lists_are_cut_unless_all_are_asked_for() {
        let names: Vec<TenantName> = (0..25)
            .map(|i| TenantName::new(format!("t{i:02}")).unwrap())
            .collect();
        let names: Vec<&TenantName> = names.iter().collect();
        let cut = name_list(&names, false);
        assert!(
            cut.contains(" t19 and 5 more (--verbose names them all)\n"),
            "{cut}"
        );
        assert!(!cut.contains("t20"), "{cut}");
        let all = name_list(&names, true);
        assert!(all.ends_with(" t24\n"), "{all}");
        assert_eq!(name_list(&names[..3], false), "    t00, t01, t02\n");
    }

    #[test]
    fn a_lost_server_is_one_line_whatever_its_tenants_were_at() {
        let eu2 = ServerName::new("eu-2").unwrap();
        let lost = || Error::ServerUnreachable {
            server: eu2.clone(),
            source: Box::new(Error::Invalid("connection refused".to_owned())),
        };
        let cut = |t: &str| Error::Migration {
            target: format!("tenant {t}"),
            migration: "2024_01_02_0001 create_a".to_owned(),
            reverting: false,
            source: Box::new(lost()),
        };
        let failures = vec![
            failed("t1", cut("t1")),
            failed("t2", lost()),
            failed("t3", lost()),
        ];
        let keys: Vec<String> = failures
            .iter()
            .map(|f| Failure::of(&f.tenant, &f.error).key)
            .collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        let text = render(&failures);
        assert!(
            text.starts_with(
                "server eu-2 unreachable: 3 tenants not migrated (connection refused)\n"
            ),
            "{text}"
        );
        assert!(!text.contains("t1"), "{text}");
    }

    #[test]
    fn names_inside_longer_names_stay() {
        assert_eq!(
            anonymous("t1 t10 \"t1\".x at1", "t1", "<tenant>"),
            "<tenant> t10 \"<tenant>\".x at1"
        );
        assert_eq!(
            the_tenant("to tenant t1: tenant t10", "t1"),
            "to the tenant: tenant t10"
        );
    }
}
