//! `report --html FILE`: the fleet on one self-contained page (inline CSS and SVG, no
//! script, no external asset), to attach to a ticket or publish as a CI artifact. A plain
//! function of the report data, so that other data (drift results, run history) is one
//! more field of [`FleetPage`].

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::migration::format_order;
use crate::{Condition, RunLease, RunRecord, StatusReport, TenantName, TenantStatus};

/// Tenants whose schema differs from the expected one in the same way (what the `drift`
/// command finds); the report lists each group. Nothing fills it yet.
#[derive(Clone, Debug)]
pub(crate) struct DriftGroup {
    /// What differs, in one line.
    pub(crate) summary: String,
    /// The tenants.
    pub(crate) tenants: Vec<TenantName>,
}

/// The groups of `report`: the tenants at one order that drifted the same way (one
/// schema fingerprint), then the tenants whose schema could not be read.
pub(crate) fn drift_groups(report: &crate::DriftReport) -> Vec<DriftGroup> {
    let mut groups: Vec<DriftGroup> = Vec::new();
    for order in &report.orders {
        let at = order
            .applied_order
            .map_or_else(|| "no migration".to_owned(), format_order);
        groups.extend(order.ways().into_iter().map(|way| {
            let what: Vec<String> = way.differences.iter().map(ToString::to_string).collect();
            DriftGroup {
                summary: format!("at {at}: {}", what.join("; ")),
                tenants: way.tenants.into_iter().cloned().collect(),
            }
        }));
    }
    for unreadable in &report.unreadable {
        groups.push(DriftGroup {
            summary: format!("schema could not be read: {}", unreadable.error),
            tenants: vec![unreadable.tenant.clone()],
        });
    }
    groups
}

/// What the page shows.
pub(crate) struct FleetPage<'a> {
    /// Where the public migrations run (`public (schema public)`): the page's heading.
    pub(crate) title: &'a str,
    /// The tenancy model (`postgres-schema`).
    pub(crate) model: &'a str,
    /// Where every tenant stands (`Migrator::status`).
    pub(crate) status: &'a StatusReport,
    /// The runs holding a lease now (`Migrator::running`).
    pub(crate) runs: &'a [RunLease],
    /// The newest finished runs of the control journal (`Migrator::runs`), newest first.
    pub(crate) history: &'a [RunRecord],
    /// The drift check's groups ([`drift_groups`]), when it ran (`report --drift`).
    pub(crate) drift_groups: Option<&'a [DriftGroup]>,
    /// When the data was read.
    pub(crate) generated_at: DateTime<Utc>,
}

/// `text` safe in HTML text and attribute values: tenant names, errors and details are
/// user data.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em; color: #1f2328; background: #ffffff; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; }
.meta { color: #57606a; font-size: 0.9em; }
.summary { font-size: 1.2em; font-weight: 600; padding: 0.6em 0.9em; border-radius: 6px; display: inline-block; }
.ok { background: #dafbe1; color: #116329; }
.bad { background: #ffebe9; color: #a40e26; }
.chips span { display: inline-block; margin: 0.2em 0.4em 0.2em 0; padding: 0.2em 0.6em; border-radius: 1em; font-size: 0.9em; color: #ffffff; }
table { border-collapse: collapse; margin-top: 0.5em; }
th, td { text-align: left; padding: 0.3em 0.8em; border-bottom: 1px solid #d0d7de; vertical-align: top; }
th { background: #f6f8fa; }
td.error { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85em; white-space: pre-wrap; max-width: 60em; }
";

/// The colour of a condition, in the chips and the problem table.
fn colour(condition: Condition) -> &'static str {
    match condition {
        Condition::Current => "#1a7f37",
        Condition::Behind => "#bf8700",
        Condition::OutOfOrder => "#9a6700",
        Condition::Failed => "#cf222e",
        Condition::Drifted => "#8250df",
        Condition::NeedsRepair => "#bc4c00",
        Condition::Ahead => "#0969da",
        Condition::Creating => "#57606a",
        #[allow(unreachable_patterns)]
        _ => "#57606a",
    }
}

/// The page.
pub(crate) fn render(page: &FleetPage<'_>) -> String {
    let status = page.status;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>mtnt fleet report</title>\n<style>{STYLE}</style>\n</head>\n<body>"
    );
    let _ = writeln!(out, "<h1>Fleet report</h1>");
    let _ = writeln!(
        out,
        "<p class=\"meta\">{} &middot; {} &middot; read {}</p>",
        escape(page.title),
        escape(page.model),
        page.generated_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let _ = writeln!(
        out,
        "<p class=\"summary {}\" id=\"summary\">{}</p>",
        if status.is_current() { "ok" } else { "bad" },
        escape(&status.summary())
    );
    let public = &status.public;
    let _ = writeln!(
        out,
        "<p>Public migrations: at {}, {} pending{}.</p>",
        public
            .applied_order
            .map_or_else(|| "none".to_owned(), format_order),
        public.pending,
        match &public.failed {
            Some(f) => format!(
                ", <strong>failed at {} {}</strong>",
                format_order(f.order),
                escape(f.name.unwrap_or("(unknown)"))
            ),
            None => String::new(),
        }
    );
    chips(&mut out, status);
    let _ = writeln!(out, "<h2>Tenants per applied migration</h2>");
    out.push_str(&order_chart(status));
    problems(&mut out, status);
    match page.drift_groups {
        None => {}
        Some([]) => {
            let _ = writeln!(
                out,
                "<h2>Drift</h2>\n<p>No tenant's schema differs from the others at its order.</p>"
            );
        }
        Some(groups) => {
            let _ = writeln!(
                out,
                "<h2>Drift</h2>\n<table id=\"drift\">\n<tr><th>Difference</th><th>Tenants</th></tr>"
            );
            for group in groups {
                let names: Vec<String> = group.tenants.iter().map(|t| escape(t.as_str())).collect();
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(&group.summary),
                    names.join(", ")
                );
            }
            let _ = writeln!(out, "</table>");
        }
    }
    runs(&mut out, page.runs);
    history(&mut out, page.history);
    every_tenant(&mut out, status);
    let _ = writeln!(out, "</body>\n</html>");
    out
}

/// One chip per condition any tenant is in.
fn chips(out: &mut String, status: &StatusReport) {
    let mut counts: Vec<(Condition, usize)> = Vec::new();
    for t in &status.tenants {
        match counts.iter_mut().find(|(c, _)| *c == t.condition) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.condition, 1)),
        }
    }
    counts.sort_by_key(|(c, _)| (*c != Condition::Current, c.as_str()));
    let _ = write!(out, "<p class=\"chips\">");
    for (condition, n) in counts {
        let _ = write!(
            out,
            "<span style=\"background: {}\">{n} {}</span>",
            colour(condition),
            escape(condition.as_str())
        );
    }
    let _ = writeln!(out, "</p>");
}

/// An SVG bar chart: how many tenants stand at each applied order (the binary's newest
/// in green).
pub(crate) fn order_chart(status: &StatusReport) -> String {
    let mut by_order: BTreeMap<Option<i64>, usize> = BTreeMap::new();
    for t in &status.tenants {
        *by_order.entry(t.applied_order).or_default() += 1;
    }
    let (width, height, top, bottom, left) = (960.0_f64, 320.0_f64, 24.0, 90.0, 50.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"tenants per applied migration\">"
    );
    let _ = writeln!(
        svg,
        "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"#f6f8fa\"/>"
    );
    if by_order.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"16\" fill=\"#57606a\">no tenants</text>\n</svg>",
            width / 2.0,
            height / 2.0
        );
        return svg;
    }
    let max = by_order.values().copied().max().unwrap_or(1).max(1) as f64;
    let plot = height - top - bottom;
    let slot = (width - left - 10.0) / by_order.len() as f64;
    let bar = (slot * 0.7).min(80.0);
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#8c959f\"/>",
        top + plot,
        width - 10.0,
        top + plot
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\" fill=\"#57606a\">{}</text>",
        left - 6.0,
        top + 4.0,
        max as usize
    );
    for (i, (order, n)) in by_order.iter().enumerate() {
        let h = (*n as f64 / max * plot).max(1.0);
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let y = top + plot - h;
        let fill = match order {
            None => "#8c959f",
            Some(o) if Some(*o) == status.latest_tenant_order => "#2da44e",
            Some(_) => "#d4a72c",
        };
        let name = order.map_or_else(|| "none".to_owned(), format_order);
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{fill}\"><title>{}: {n}</title></rect>",
            escape(&name)
        );
        let cx = x + bar / 2.0;
        let _ = writeln!(
            svg,
            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#1f2328\">{n}</text>",
            y - 4.0
        );
        let ly = top + plot + 14.0;
        let _ = writeln!(
            svg,
            "<text x=\"{cx:.1}\" y=\"{ly:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#57606a\" transform=\"rotate(-35 {cx:.1} {ly:.1})\">{}</text>",
            escape(&name)
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

/// The tenants that need someone: failed, needs repair, drifted, ahead, out of order,
/// creating; each with its error or reason.
fn problems(out: &mut String, status: &StatusReport) {
    let troubled: Vec<&TenantStatus> = status
        .tenants
        .iter()
        .filter(|t| !matches!(t.condition, Condition::Current | Condition::Behind))
        .collect();
    let _ = writeln!(out, "<h2>Tenants that need attention</h2>");
    if !status.invalid_registry_rows.is_empty() {
        let _ = writeln!(
            out,
            "<p>Registry rows that name no valid tenant (nothing is done for them):</p>\n<table id=\"invalid\">\n<tr><th>Table</th><th>Name</th><th>Why</th></tr>"
        );
        for row in &status.invalid_registry_rows {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&row.table),
                escape(&row.name),
                escape(row.reason)
            );
        }
        let _ = writeln!(out, "</table>");
    }
    if troubled.is_empty() {
        let _ = writeln!(out, "<p>None.</p>");
        return;
    }
    let _ = writeln!(
        out,
        "<table id=\"problems\">\n<tr><th>Tenant</th><th>Condition</th><th>Applied</th><th>Migration</th><th>Error</th></tr>"
    );
    for t in troubled {
        let (migration, error) = match &t.failed {
            Some(f) => (
                format!(
                    "{} {}",
                    format_order(f.order),
                    f.name.unwrap_or("(unknown)")
                ),
                f.error
                    .clone()
                    .or_else(|| t.detail.clone())
                    .unwrap_or_default(),
            ),
            None => (String::new(), t.detail.clone().unwrap_or_default()),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td style=\"color: {}\">{}</td><td>{}</td><td>{}</td><td class=\"error\">{}</td></tr>",
            escape(t.tenant.as_str()),
            colour(t.condition),
            escape(t.condition.as_str()),
            t.applied_order.map_or_else(|| "-".to_owned(), format_order),
            escape(&migration),
            escape(&error)
        );
    }
    let _ = writeln!(out, "</table>");
}

/// Every tenant, folded (an HTML `details`, no script).
fn every_tenant(out: &mut String, status: &StatusReport) {
    let _ = writeln!(
        out,
        "<h2>All tenants</h2>\n<details><summary>{} tenants</summary>\n<table id=\"tenants\">\n<tr><th>Tenant</th><th>Storage</th><th>State</th><th>Applied</th><th>Pending</th><th>Condition</th></tr>",
        status.tenants.len()
    );
    for t in &status.tenants {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style=\"color: {}\">{}</td></tr>",
            escape(t.tenant.as_str()),
            escape(&t.storage),
            escape(t.state.as_str()),
            t.applied_order.map_or_else(|| "-".to_owned(), format_order),
            t.pending,
            colour(t.condition),
            escape(t.condition.as_str())
        );
    }
    let _ = writeln!(out, "</table>\n</details>");
}

/// The runs holding a lease now.
fn runs(out: &mut String, runs: &[RunLease]) {
    let _ = writeln!(out, "<h2>Runs</h2>");
    if runs.is_empty() {
        let _ = writeln!(out, "<p>No run is going now.</p>");
        return;
    }
    let _ = writeln!(
        out,
        "<table>\n<tr><th>Run</th><th>Command</th><th>Host</th><th>Pid</th><th>Started</th><th>Last heartbeat</th><th>State</th></tr>"
    );
    for run in runs {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&run.run_id),
            escape(&run.command),
            escape(&run.host),
            run.pid,
            run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            run.heartbeat_at.format("%H:%M:%S UTC"),
            escape(&run.state)
        );
    }
    let _ = writeln!(out, "</table>");
}

/// The finished runs: when, how long, how fast, what they did, and their slowest tenants.
fn history(out: &mut String, history: &[RunRecord]) {
    let _ = writeln!(out, "<h2>Last runs</h2>");
    if history.is_empty() {
        let _ = writeln!(out, "<p>No finished run is recorded.</p>");
        return;
    }
    let _ = writeln!(
        out,
        "<table id=\"history\">\n<tr><th>Run</th><th>Command</th><th>Host</th><th>Finished</th><th>Duration</th><th>Tenants/s</th><th>Tenants</th><th>Changed</th><th>Failed</th><th>Not started</th><th>Slowest tenants</th></tr>"
    );
    for run in history {
        let slowest: Vec<String> = run
            .slowest
            .iter()
            .take(3)
            .map(|(tenant, ms)| format!("{} ({ms} ms)", escape(tenant)))
            .collect();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td{}>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&run.run_id),
            escape(&run.command),
            escape(&run.host),
            run.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
            escape(&mtnt_syntax::format_duration(run.duration())),
            run.tenants_per_second(),
            run.tenants,
            run.changed,
            if run.failed > 0 { " class=\"bad\"" } else { "" },
            run.failed,
            run.not_started,
            slowest.join(", ")
        );
    }
    let _ = writeln!(out, "</table>");
}

#[cfg(test)]
#[allow(clippy::inconsistent_digit_grouping)]
pub(crate) mod tests {
    use super::*;
    use crate::{FailedMigration, PublicStatus, TenantState};

    /// A fleet of two: `acme` current at `2024_01_01_0002`, `globex` failed at
    /// `2024_01_01_0003` with `error`.
    pub(crate) fn fleet(error: &str) -> StatusReport {
        let tenant = |name: &str, condition, applied, failed| TenantStatus {
            tenant: TenantName::new(name).unwrap(),
            server: crate::ServerName::default_server(),
            storage: name.to_owned(),
            state: TenantState::Active,
            applied_order: Some(applied),
            pending: 0,
            oldest_pending: None,
            failed,
            condition,
            detail: None,
        };
        StatusReport {
            latest_tenant_order: Some(2024_01_01_0003),
            public: PublicStatus {
                applied_order: Some(2024_01_01_0001),
                pending: 0,
                failed: None,
            },
            tenants: vec![
                tenant("acme", Condition::Current, 2024_01_01_0003, None),
                tenant(
                    "globex",
                    Condition::Failed,
                    2024_01_01_0002,
                    Some(FailedMigration {
                        order: 2024_01_01_0003,
                        name: Some("add_index"),
                        error: Some(error.to_owned()),
                    }),
                ),
            ],
            current: 1,
            behind: 0,
            failed: 1,
            out_of_order: 0,
            drifted: 0,
            needs_repair: 0,
            ahead: 0,
            creating: 0,
            last_drift: None,
            last_run: None,
            invalid_registry_rows: vec![crate::InvalidRegistryRow {
                table: "public.mtnt_tenants".to_owned(),
                name: "<b>Bad Name</b>".to_owned(),
                reason: "not a valid tenant name",
            }],
            unreachable_servers: Vec::new(),
        }
    }

    #[test]
    fn the_page_names_the_tenants_and_escapes_their_errors() {
        let status = fleet("column \"<script>alert(1)</script>\" & more");
        let drift = [DriftGroup {
            summary: "index <i> missing".to_owned(),
            tenants: vec![TenantName::new("globex").unwrap()],
        }];
        let page = render(&FleetPage {
            title: "public (schema public)",
            model: "postgres-schema",
            status: &status,
            runs: &[],
            history: &[RunRecord {
                run_id: "r1".to_owned(),
                command: "migrate".to_owned(),
                host: "deploy-1".to_owned(),
                pid: 7,
                started_at: Utc::now() - chrono::Duration::seconds(4),
                finished_at: Utc::now(),
                options: "concurrency 4".to_owned(),
                tenants: 2,
                changed: 1,
                current: 0,
                failed: 1,
                not_started: 0,
                migrations: 1,
                stopped: None,
                slowest: vec![("<b>globex</b>".to_owned(), 1200)],
            }],
            drift_groups: Some(&drift),
            generated_at: Utc::now(),
        });
        assert!(page.contains("1/2 tenants current, 0 behind, 1 failed"));
        // The run history: the finished run with its speed and its slowest tenant, escaped.
        assert!(
            page.contains("<td>r1</td><td>migrate</td><td>deploy-1</td>"),
            "{page}"
        );
        assert!(
            page.contains("&lt;b&gt;globex&lt;/b&gt; (1200 ms)"),
            "{page}"
        );
        assert!(page.contains("<td>acme</td>") && page.contains("<td>globex</td>"));
        assert!(page.contains("&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot; &amp; more"));
        assert!(!page.contains("<script>") && !page.contains("<i>"));
        assert!(page.contains("index &lt;i&gt; missing"));
        assert!(page.contains("&lt;b&gt;Bad Name&lt;/b&gt;") && !page.contains("<b>"));
        // Two bars: one tenant at each order, the newest in green.
        assert_eq!(page.matches("<rect x=").count() - 1, 2);
        assert!(page.contains("#2da44e"));
    }

    #[test]
    fn user_data_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }
}
