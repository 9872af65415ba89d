use std::fmt::Write;

use super::failures;
use super::hints::{condition_fix, creating_fix, unlisted_current_line};
use crate::migration::format_order;
use crate::{
    Condition, DriftReport, MigrateReport, Migration, MigrationSet, StatusReport, Tenancy,
    TenantName, TenantRecord, TenantStatus,
};

fn order_or_none(order: Option<i64>) -> String {
    order.map_or_else(|| "-".to_owned(), format_order)
}

/// A table of `items`, a row of `cells` each, every column as wide as its widest cell and
/// separated from the next by two spaces.
/// The cells of a row are made twice (for the widths, then for its line) rather than
/// kept: a table of 100,000 tenants holds one row of cells at a time.
fn table<T>(header: &[&str], items: &[T], cells: impl Fn(&T) -> Vec<String>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for item in items {
        for (w, cell) in widths.iter_mut().zip(cells(item)) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line_len = widths.iter().map(|w| w + 2).sum::<usize>();
    let mut out = String::with_capacity(line_len * (items.len() + 1));
    let mut line = |row: &[&str]| {
        let start = out.len();
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(out, "{cell:<w$}  ");
        }
        out.truncate(out[start..].trim_end().len() + start);
        out.push('\n');
    };
    line(header);
    for item in items {
        let row = cells(item);
        let row: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&row);
    }
    out
}

/// `1 migration`, `0 migrations`, `2 tenants`.
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// How the output names where things live, by tenancy model.
pub(crate) struct Words {
    /// What holds a tenant's data: `schema`, `database` or `file`.
    pub(crate) storage: &'static str,
    /// Where the public migrations run, with its real name: `public (schema ops)`.
    pub(crate) public: String,
    tenancy: Tenancy,
}

impl Words {
    /// The words for a backend of `tenancy` reached at `url`, with `control_schema`.
    pub(crate) fn new(tenancy: Tenancy, url: &str, control_schema: &str) -> Self {
        let database = || control_database(url);
        let (storage, public) = match tenancy {
            Tenancy::Schema => ("schema", format!("public (schema {control_schema})")),
            Tenancy::Database if url.starts_with("postgres") => (
                "database",
                match database() {
                    Some(db) => format!("public (database {db}, schema {control_schema})"),
                    None => format!("public (schema {control_schema})"),
                },
            ),
            Tenancy::Database => (
                "database",
                match database() {
                    Some(db) => format!("public (database {db})"),
                    None => "public".to_owned(),
                },
            ),
            Tenancy::File => ("file", "public (file mtnt_control.db)".to_owned()),
        };
        Self {
            storage,
            public,
            tenancy,
        }
    }

    /// `schema acme`, `database acme`, `file acme.db`.
    pub(crate) fn storage_of(&self, schema: &str) -> String {
        match self.tenancy {
            Tenancy::File => format!("file {schema}.db"),
            _ => format!("{} {schema}", self.storage),
        }
    }

    /// The storage column's heading: `SCHEMA`, `DATABASE` or `FILE`.
    fn column(&self) -> String {
        self.storage.to_ascii_uppercase()
    }

    /// A tenant's storage as the table shows it.
    fn cell(&self, schema: &str) -> String {
        match self.tenancy {
            Tenancy::File => format!("{schema}.db"),
            _ => schema.to_owned(),
        }
    }
}

/// The database a PostgreSQL or MySQL URL names.
fn control_database(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let path = parsed.path().trim_start_matches('/');
    (!path.is_empty()).then(|| crate::url_redact::percent_decode(path))
}

/// The fleet command a report is of, which words its summary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    /// `migrate`: the public migrations, then the tenants.
    Migrate,
    /// `rollback` over several tenants.
    Rollback,
    /// `exec`: a statement in each tenant.
    Exec,
}

/// `9812`, `9,812`: counts of tenants, with thousands apart.
pub(crate) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 tenant`, `9,812 tenants`.
pub(crate) fn tenants(n: usize) -> String {
    if n == 1 {
        "1 tenant".to_owned()
    } else {
        format!("{} tenants", thousands(n))
    }
}

/// What `migrate`, `rollback` and `exec` print at the end: the public migrations (for
/// `migrate`), the fleet's counts, why the run stopped early and whom it did not start,
/// the tenants it left alone (creating, dropped meanwhile), and each group of tenants
/// that failed for one reason. `all_names`: no list of names is cut short.
pub(crate) fn fleet_report(
    report: &MigrateReport,
    words: &Words,
    verb: Verb,
    all_names: bool,
) -> String {
    let mut out = String::new();
    if verb == Verb::Migrate {
        let _ = writeln!(
            out,
            "{}: {} applied",
            words.public,
            count(report.public_applied, "migration")
        );
    }
    let done = match verb {
        Verb::Migrate => format!(
            "{} migrated ({}), {} already current",
            report.tenants_migrated,
            count(report.migrations_applied, "migration"),
            report.tenants_current
        ),
        Verb::Rollback => format!(
            "{} rolled back ({} reverted), {} with nothing to revert",
            report.tenants_migrated,
            count(report.migrations_applied, "migration"),
            report.tenants_current
        ),
        Verb::Exec => format!("ran in {}", report.tenants_migrated),
    };
    let _ = writeln!(
        out,
        "tenants: {} total, {done}, {} failed{} in {:.2}s",
        report.tenants_total,
        report.failures.len() + report.invalid_registry_rows.len(),
        if report.tenants_skipped > 0 {
            format!(", {} skipped (not started)", report.tenants_skipped)
        } else {
            String::new()
        },
        report.elapsed.as_secs_f64()
    );
    if let Some(run_id) = &report.run_id {
        let _ = writeln!(
            out,
            "run {run_id} (status --run {run_id} shows what it did)"
        );
    }
    if let Some(why) = &report.stopped {
        let _ = writeln!(out, "stopped early: {why}");
    }
    let names = |list: &[TenantName]| {
        let refs: Vec<&TenantName> = list.iter().collect();
        failures::name_list(&refs, all_names)
    };
    if !report.not_started.is_empty() {
        let _ = writeln!(out, "{} not started:", tenants(report.not_started.len()));
        out.push_str(&names(&report.not_started));
    }
    if !report.tenants_creating.is_empty() {
        let n = report.tenants_creating.len();
        let _ = writeln!(
            out,
            "{} left alone: `tenant create` has not finished {}",
            tenants(n),
            if n == 1 { "it" } else { "them" }
        );
        out.push_str(&names(&report.tenants_creating));
        let fix = match report.tenants_creating.as_slice() {
            [one] => creating_fix(one.as_str()),
            _ => format!("for each NAME above: {}", creating_fix("NAME")),
        };
        let _ = writeln!(out, "  fix: {fix}");
    }
    if !report.tenants_gone.is_empty() {
        let _ = writeln!(
            out,
            "{} dropped while the run waited for {} (nothing was done to {}):",
            tenants(report.tenants_gone.len()),
            if report.tenants_gone.len() == 1 {
                "it"
            } else {
                "them"
            },
            if report.tenants_gone.len() == 1 {
                "it"
            } else {
                "them"
            },
        );
        out.push_str(&names(&report.tenants_gone));
    }
    if let Some(change) = &report.template {
        let _ = writeln!(out, "{change}");
    }
    out.push_str(&failures::render(&report.failures));
    out.push_str(&invalid_registry_rows(&report.invalid_registry_rows));
    for failure in &report.hook_failures {
        let _ = writeln!(out, "warning: {failure}");
    }
    out
}

/// `drift`'s text: per applied order, how many tenants share the reference schema, then
/// each way of drifting with its tenants and differences; the unreadable tenants; a
/// summary line.
pub(crate) fn drift_report(report: &DriftReport, quiet: bool) -> String {
    let mut out = String::new();
    for order in report.orders.iter().filter(|_| !quiet) {
        let _ = write!(
            out,
            "at {}: {}, {} alike",
            order_or_none(order.applied_order),
            count(order.tenants, "tenant"),
            order.reference_tenants
        );
        if !order.drifted.is_empty() {
            let _ = write!(out, ", {} drifted", order.drifted.len());
        }
        out.push('\n');
        // Tenants that drifted the same way are said once, with their names.
        for way in order.ways() {
            let names: Vec<String> = way.tenants.iter().map(ToString::to_string).collect();
            let what: Vec<String> = way.differences.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "  {}: {}", names.join(", "), what.join("; "));
        }
    }
    for u in &report.unreadable {
        let _ = writeln!(out, "tenant {}: schema not read: {}", u.tenant, u.error);
    }
    let _ = write!(
        out,
        "{} of {} drifted from the others at their order",
        report.drifted(),
        count(report.tenants, "tenant")
    );
    if !report.unreadable.is_empty() {
        let _ = write!(out, ", {} not read", report.unreadable.len());
    }
    out.push('\n');
    out
}

/// A fleet larger than this has only its tenants that are not current in the table of
/// `status` (`--verbose`: every tenant), so that 100,000 tenants print a summary.
const STATUS_ALL_ROWS_UP_TO: usize = 1000;

pub(crate) fn status_report(
    report: &StatusReport,
    words: &Words,
    quiet: bool,
    verbose: bool,
    by_server: bool,
) -> String {
    let mut out = String::new();
    let public = &report.public;
    let _ = write!(
        out,
        "{}: at {}, {} pending",
        words.public,
        order_or_none(public.applied_order),
        public.pending
    );
    if let Some(failed) = &public.failed {
        let _ = write!(
            out,
            ", failed at {} {}",
            format_order(failed.order),
            failed.name.unwrap_or("(unknown)")
        );
    }
    out.push('\n');
    let mut listed: Vec<&TenantStatus> =
        match verbose || report.tenants.len() <= STATUS_ALL_ROWS_UP_TO {
            true => report.tenants.iter().collect(),
            false => report.tenants.iter().filter(|t| !t.is_current()).collect(),
        };
    if by_server {
        // Stable: by name within each server.
        listed.sort_by_key(|t| (!t.server.is_default(), &t.server));
    }
    if !listed.is_empty() && !quiet {
        let column = words.column();
        let mut headers = vec!["TENANT"];
        if by_server {
            headers.push("SERVER");
        }
        headers.extend([column.as_str(), "STATE", "APPLIED", "PENDING", "STATUS"]);
        out.push_str(&table(&headers, &listed, |t| {
            let mut row = vec![t.tenant.to_string()];
            if by_server {
                row.push(t.server.to_string());
            }
            row.extend([
                words.cell(&t.storage),
                t.state.as_str().to_owned(),
                order_or_none(t.applied_order),
                t.pending.to_string(),
                condition_cell(t),
            ]);
            row
        }));
    }
    if by_server {
        for server in report.by_server() {
            let _ = writeln!(out, "server {}: {}", server.server, server.counts.summary());
        }
    }
    let unlisted = report.tenants.len() - listed.len();
    if unlisted > 0 && !quiet {
        out.push_str(&unlisted_current_line(unlisted));
    }
    out.push_str(&report.summary());
    out.push('\n');
    // A server down: its tenants' rows say failed; this says why, once for the server.
    for server in &report.unreachable_servers {
        out.push_str(&failures::unreachable_line(
            &server.server,
            server.tenants,
            "read",
            &server.error,
        ));
    }
    if !quiet {
        out.push_str(&journal_lines(report));
    }
    out.push_str(&invalid_registry_rows(&report.invalid_registry_rows));
    // The tenants that migrate refuses until someone repairs them: what to do.
    for condition in [
        Condition::Drifted,
        Condition::NeedsRepair,
        Condition::Ahead,
        Condition::Creating,
    ] {
        let those: Vec<&TenantStatus> = report
            .tenants
            .iter()
            .filter(|t| t.condition == condition)
            .collect();
        let fix = match those.as_slice() {
            [] => None,
            [one] => condition_fix(condition, Some(one.tenant.as_str()), one.detail.as_deref()),
            many => condition_fix(condition, None, None)
                .map(|fix| format!("for each of the {} tenants: {fix}", many.len())),
        };
        if let Some(fix) = fix {
            let _ = writeln!(out, "  fix ({condition}): {fix}");
        }
    }
    out
}

/// The STATUS column: the tenant's condition, with its reason on one line.
fn condition_cell(t: &TenantStatus) -> String {
    let detail = || {
        let text = t.detail.as_deref().unwrap_or("");
        failures::the_tenant(text.lines().next().unwrap_or(""), t.tenant.as_str())
    };
    match t.condition {
        Condition::Current => "current".to_owned(),
        Condition::Behind => format!("{} behind", t.pending),
        Condition::OutOfOrder => match &t.oldest_pending {
            Some(m) => format!(
                "out of order ({} pending, the oldest {} {})",
                t.pending,
                format_order(m.order),
                m.name
            ),
            None => format!("out of order ({} pending)", t.pending),
        },
        Condition::Failed => match &t.failed {
            Some(f) => format!(
                "failed at {} {}: {}",
                format_order(f.order),
                f.name.unwrap_or("(unknown)"),
                f.error
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
            None => format!("failed: {}", detail()),
        },
        Condition::Creating => "creating".to_owned(),
        other => format!("{other}: {}", detail()),
    }
}

pub(crate) fn tenant_list(records: &[TenantRecord], words: &Words, quiet: bool) -> String {
    // A fleet on one server lists no server column.
    let servers = records.iter().any(|r| r.tenant.server.is_some());
    let column = words.column();
    let mut headers = vec!["TENANT", &column];
    if servers {
        headers.push("SERVER");
    }
    headers.extend(["STATE", "APPLIED", "CREATED"]);
    let mut out = if quiet {
        String::new()
    } else {
        table(&headers, records, |r| {
            let mut row = vec![r.tenant.name.to_string(), words.cell(&r.tenant.storage)];
            if servers {
                row.push(r.tenant.server_name().to_owned());
            }
            row.extend([
                r.state.as_str().to_owned(),
                order_or_none(r.applied_order),
                r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]);
            row
        })
    };
    let _ = writeln!(out, "{}", count(records.len(), "tenant"));
    out
}

/// `server list`: each server with its URL (no password) and tenant count.
pub(crate) fn server_list(servers: &[crate::Server], quiet: bool) -> String {
    let mut out = if quiet {
        String::new()
    } else {
        table(&["SERVER", "TENANTS", "PLACING", "URL"], servers, |s| {
            vec![
                s.name.to_string(),
                s.tenants.to_string(),
                if s.cordoned { "cordoned" } else { "yes" }.to_owned(),
                s.url.clone(),
            ]
        })
    };
    let tenants: u64 = servers.iter().map(|s| s.tenants).sum();
    let cordoned = servers.iter().filter(|s| s.cordoned).count();
    let _ = writeln!(
        out,
        "{}, {}{}",
        count(servers.len(), "server"),
        count(tenants as usize, "tenant"),
        if cordoned > 0 {
            format!(", {cordoned} cordoned (taking no new tenants)")
        } else {
            String::new()
        }
    );
    out
}

pub(crate) fn migration_list(set: &MigrationSet) -> String {
    let migrations: Vec<&Migration> = set.iter().collect();
    table(
        &[
            "ORDER",
            "SCOPE",
            "NAME",
            "REVERSIBLE",
            "TRANSACTION",
            "ENABLED",
            "LOCATION",
        ],
        &migrations,
        |m| {
            let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
            vec![
                format_order(m.order()),
                m.scope().to_string(),
                m.name().to_owned(),
                yes(m.is_reversible()),
                yes(m.is_transactional()),
                yes(m.is_enabled()),
                m.location().to_string(),
            ]
        },
    )
}

pub(crate) fn migration_list_json(set: &MigrationSet) -> serde_json::Value {
    serde_json::Value::Array(
        set.iter()
            .map(|m| {
                serde_json::json!({
                    "order": m.order(),
                    "scope": m.scope(),
                    "name": m.name(),
                    "reversible": m.is_reversible(),
                    "transaction": m.is_transactional(),
                    "idempotent": m.is_idempotent(),
                    "enabled": m.is_enabled(),
                    "checksum": m.checksum(),
                    "location": m.location(),
                })
            })
            .collect(),
    )
}

/// A run lease in `status`: `running: migrate run ... on host (pid 12) since ..., last
/// heartbeat ...`, or, for a lease whose heartbeat is older than the unlock deadline, a
/// `stale:` line saying when the dead run was last seen.
pub(crate) fn run_line(run: &crate::RunLease) -> String {
    let who = format!(
        "{} run {} on {} (pid {}) since {}",
        run.command,
        run.run_id,
        run.host,
        run.pid,
        run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    if run.stale {
        let ago = std::time::Duration::from_secs(run.silent_secs.max(0.0) as u64);
        format!(
            "stale: {who}, last seen {} ({} ago): not running (no heartbeat within the unlock \
             deadline: killed, or its machine or its connection is gone); the next run takes \
             its lease over",
            run.heartbeat_at.format("%Y-%m-%d %H:%M:%S UTC"),
            mtnt_syntax::format_duration(ago),
        )
    } else {
        format!(
            "running: {who}, last heartbeat {}",
            run.heartbeat_at.format("%H:%M:%S UTC")
        )
    }
}

/// Each registry row whose name is no valid tenant name, failed alone: what is wrong, then
/// how to rename or delete it.
pub(crate) fn invalid_registry_rows(rows: &[crate::InvalidRegistryRow]) -> String {
    let mut out = String::new();
    for row in rows {
        let error = row.error();
        let _ = writeln!(out, "registry row {:?} failed: {error}", row.name);
        if let Some(fix) = super::hints::cli_fix(&error) {
            let _ = writeln!(out, "  fix: {fix}");
        }
    }
    out
}

/// `status --run ID`: the run's summary, then per tenant what it applied, reverted and
/// failed (`--quiet`: the summary alone).
pub(crate) fn run_report(report: &crate::RunReport, quiet: bool) -> String {
    let mut out = format!("{}\n", report.summary());
    if quiet {
        return out;
    }
    let list = |rows: &[crate::AppliedMigration]| {
        rows.iter()
            .map(|r| format!("{} {}", format_order(r.order), r.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for tenant in &report.tenants {
        if !tenant.applied.is_empty() {
            let _ = writeln!(
                out,
                "tenant {}: applied {}",
                tenant.tenant,
                list(&tenant.applied)
            );
        }
        if !tenant.reverted.is_empty() {
            let _ = writeln!(
                out,
                "tenant {}: reverted {}",
                tenant.tenant,
                list(&tenant.reverted)
            );
        }
        for failed in &tenant.failed {
            let error = failed.error.as_deref().unwrap_or("interrupted");
            let _ = writeln!(
                out,
                "tenant {}: failed at {} {}: {}",
                tenant.tenant,
                format_order(failed.order),
                failed.name,
                error.lines().next().unwrap_or("").trim()
            );
        }
    }
    out
}

/// What the control journal says in `status`: the last drift check, the last run.
fn journal_lines(report: &StatusReport) -> String {
    let mut out = String::new();
    if let Some(check) = &report.last_drift {
        let when = check.checked_at.format("%Y-%m-%d %H:%M UTC");
        let drifted = check.drifted.len();
        let _ = write!(out, "schema drift at the last check ({when}): ");
        if drifted == 0 && check.unreadable == 0 {
            let _ = write!(out, "none among {}", count(check.tenants, "tenant"));
        } else {
            let _ = write!(
                out,
                "{drifted} of {} drifted from the others at their order",
                count(check.tenants, "tenant")
            );
            if check.unreadable > 0 {
                let _ = write!(out, ", {} not read", check.unreadable);
            }
            out.push_str("; `drift` names the differences");
        }
        out.push('\n');
    }
    if let Some(run) = &report.last_run {
        let _ = writeln!(
            out,
            "last run: {} run {} on {}, finished {}: {} in {} ({:.0}/s), {} changed, {} failed{}",
            run.command,
            run.run_id,
            run.host,
            run.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
            count(run.tenants, "tenant"),
            mtnt_syntax::format_duration(run.duration()),
            run.tenants_per_second(),
            run.changed,
            run.failed,
            if run.not_started > 0 {
                format!(", {} not started", run.not_started)
            } else {
                String::new()
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::PublicStatus;

    fn report(tenants: usize, behind: usize) -> StatusReport {
        let tenants: Vec<TenantStatus> = (0..tenants)
            .map(|i| TenantStatus {
                tenant: TenantName::new(format!("t{i:06}")).unwrap(),
                server: crate::ServerName::default_server(),
                storage: format!("t{i:06}"),
                state: crate::TenantState::Active,
                applied_order: Some(1),
                pending: usize::from(i == behind),
                oldest_pending: None,
                failed: None,
                condition: match i == behind {
                    true => Condition::Behind,
                    false => Condition::Current,
                },
                detail: None,
            })
            .collect();
        StatusReport {
            latest_tenant_order: Some(2),
            public: PublicStatus {
                applied_order: None,
                pending: 0,
                failed: None,
            },
            current: tenants.len() - 1,
            behind: 1,
            failed: 0,
            out_of_order: 0,
            drifted: 0,
            needs_repair: 0,
            ahead: 0,
            creating: 0,
            last_drift: None,
            last_run: None,
            invalid_registry_rows: Vec::new(),
            unreachable_servers: Vec::new(),
            tenants,
        }
    }

    #[test]
    fn a_large_fleet_lists_only_its_tenants_not_current_unless_verbose() {
        let words = Words::new(Tenancy::Schema, "postgres://h/db", "public");
        let large = report(STATUS_ALL_ROWS_UP_TO + 1, 7);
        let short = status_report(&large, &words, false, false, false);
        assert!(short.contains("\nt000007 "), "{short}");
        assert!(!short.contains("t000006"), "{short}");
        assert!(
            short.contains(&unlisted_current_line(STATUS_ALL_ROWS_UP_TO)),
            "{short}"
        );
        let all = status_report(&large, &words, false, true, false);
        assert!(all.contains("\nt000006 ") && all.contains("\nt001000 "));
        assert!(!all.contains("not listed"));
        let small = status_report(
            &report(STATUS_ALL_ROWS_UP_TO, 7),
            &words,
            false,
            false,
            false,
        );
        assert!(small.contains("\nt000006 ") && !small.contains("not listed"));
    }
}
