use std::fmt::Write;

use crate::migration::format_order;
use crate::{MigrateReport, MigrationSet, StatusReport, TenantRecord};

fn order_or_none(order: Option<i64>) -> String {
    order.map_or_else(|| "-".to_owned(), format_order)
}

/// Lays out rows as columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

pub(crate) fn migrate_report(report: &MigrateReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "public: {} migration(s) applied",
        report.public_applied
    );
    let _ =
        writeln!(
        out,
        "tenants: {} total, {} migrated ({} migrations), {} already current, {} failed{} in {:.2}s",
        report.tenants_total,
        report.tenants_migrated,
        report.migrations_applied,
        report.tenants_current,
        report.failures.len(),
        if report.tenants_skipped > 0 {
            let why = if report.stopped.is_some() { "not started" } else { "--fail-fast" };
            format!(", {} skipped ({why})", report.tenants_skipped)
        } else {
            String::new()
        },
        report.elapsed.as_secs_f64()
    );
    if let Some(why) = &report.stopped {
        let _ = writeln!(out, "stopped early: {why}");
    }
    if !report.failures.is_empty() {
        let _ = writeln!(out, "failed tenants:");
        for failure in &report.failures {
            let _ = writeln!(out, "  {}: {}", failure.tenant, failure.error);
        }
    }
    for failure in &report.hook_failures {
        let _ = writeln!(out, "warning: {failure}");
    }
    out
}

pub(crate) fn status_report(report: &StatusReport) -> String {
    let mut out = String::new();
    let public = &report.public;
    let _ = write!(
        out,
        "public: at {}, {} pending",
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
    let rows: Vec<Vec<String>> = report
        .tenants
        .iter()
        .map(|t| {
            let state = match (&t.failed, t.pending) {
                (Some(f), _) => format!(
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
                (None, 0) => "current".to_owned(),
                (None, n) => format!("{n} behind"),
            };
            vec![
                t.tenant.to_string(),
                t.storage.clone(),
                t.state.as_str().to_owned(),
                order_or_none(t.applied_order),
                t.pending.to_string(),
                state,
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &["TENANT", "SCHEMA", "STATE", "APPLIED", "PENDING", "STATUS"],
            &rows,
        ));
    }
    out.push_str(&report.summary());
    out.push('\n');
    out
}

pub(crate) fn tenant_list(records: &[TenantRecord]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.tenant.name.to_string(),
                r.tenant.storage.clone(),
                r.state.as_str().to_owned(),
                order_or_none(r.applied_order),
                r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    let mut out = table(&["TENANT", "SCHEMA", "STATE", "APPLIED", "CREATED"], &rows);
    let _ = writeln!(out, "{} tenant(s)", records.len());
    out
}

pub(crate) fn migration_list(set: &MigrationSet) -> String {
    let rows: Vec<Vec<String>> = set
        .iter()
        .map(|m| {
            vec![
                format_order(m.order()),
                m.scope().to_string(),
                m.name().to_owned(),
                if m.is_reversible() { "yes" } else { "no" }.to_owned(),
                if m.is_transactional() { "yes" } else { "no" }.to_owned(),
                if m.is_enabled() { "yes" } else { "no" }.to_owned(),
                m.location().to_string(),
            ]
        })
        .collect();
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
        &rows,
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
