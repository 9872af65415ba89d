//! `status --prometheus`: the fleet's standing as Prometheus gauges in the text format,
//! for node_exporter's textfile collector (`my-app status --prometheus > /var/lib/
//! node_exporter/mtnt.prom.tmp && mv ...`). The README's "Metrics" lists them.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::migration::format_order;
use crate::{Condition, RunLease, StatusReport};

/// Every condition, so that a gauge reads 0 rather than vanishing when no tenant is in it.
const CONDITIONS: [Condition; 8] = [
    Condition::Current,
    Condition::Behind,
    Condition::OutOfOrder,
    Condition::Failed,
    Condition::Drifted,
    Condition::NeedsRepair,
    Condition::Ahead,
    Condition::Creating,
];

/// A condition's label value: its JSON name (`current`, `needs-repair`).
fn condition_label(condition: Condition) -> String {
    serde_json::to_value(condition)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| condition.as_str().replace(' ', "-"))
}

/// A label value, escaped as the text format wants (`\\`, `\"`, `\n`).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

/// The gauges of `report` (and the runs in `running`) on `model`.
pub(crate) fn prometheus(report: &StatusReport, running: &[RunLease], model: &str) -> String {
    let model = label(model);
    let mut out = String::new();

    header(
        &mut out,
        "mtnt_tenants",
        "Tenants by condition, as `status` classifies them.",
    );
    for condition in CONDITIONS {
        let n = report
            .tenants
            .iter()
            .filter(|t| t.condition == condition)
            .count();
        let _ = writeln!(
            out,
            "mtnt_tenants{{model=\"{model}\",condition=\"{}\"}} {n}",
            condition_label(condition)
        );
    }

    header(
        &mut out,
        "mtnt_tenants_by_state",
        "Tenants by registry state (creating: `tenant create` has not finished them).",
    );
    for state in [crate::TenantState::Active, crate::TenantState::Creating] {
        let n = report.tenants.iter().filter(|t| t.state == state).count();
        let _ = writeln!(
            out,
            "mtnt_tenants_by_state{{model=\"{model}\",state=\"{}\"}} {n}",
            state.as_str()
        );
    }

    header(
        &mut out,
        "mtnt_tenants_at_order",
        "Tenants by their newest applied migration (order \"none\": nothing applied).",
    );
    let mut by_order: BTreeMap<Option<i64>, usize> = BTreeMap::new();
    for tenant in &report.tenants {
        *by_order.entry(tenant.applied_order).or_default() += 1;
    }
    for (order, n) in &by_order {
        let order = order.map_or_else(|| "none".to_owned(), format_order);
        let _ = writeln!(
            out,
            "mtnt_tenants_at_order{{model=\"{model}\",order=\"{order}\"}} {n}"
        );
    }

    header(
        &mut out,
        "mtnt_invalid_registry_rows",
        "Registry rows whose name is no valid tenant name (nothing is done for them).",
    );
    let _ = writeln!(
        out,
        "mtnt_invalid_registry_rows{{model=\"{model}\"}} {}",
        report.invalid_registry_rows.len()
    );

    header(
        &mut out,
        "mtnt_tenant_migrations_pending",
        "Tenant migrations that `migrate` would apply, over all tenants.",
    );
    let pending: usize = report.tenants.iter().map(|t| t.pending).sum();
    let _ = writeln!(
        out,
        "mtnt_tenant_migrations_pending{{model=\"{model}\"}} {pending}"
    );

    header(
        &mut out,
        "mtnt_latest_tenant_order",
        "The newest tenant migration of this binary, as a number (YYYYMMDDNNNN).",
    );
    if let Some(order) = report.latest_tenant_order {
        let _ = writeln!(out, "mtnt_latest_tenant_order{{model=\"{model}\"}} {order}");
    }

    header(
        &mut out,
        "mtnt_public_migrations_pending",
        "Public migrations not applied yet.",
    );
    let _ = writeln!(
        out,
        "mtnt_public_migrations_pending{{model=\"{model}\"}} {}",
        report.public.pending
    );
    header(
        &mut out,
        "mtnt_public_failed",
        "1 when the last public migration failed and is not applied yet.",
    );
    let _ = writeln!(
        out,
        "mtnt_public_failed{{model=\"{model}\"}} {}",
        u8::from(report.public.failed.is_some())
    );

    header(
        &mut out,
        "mtnt_runs_running",
        "Runners holding a run lease now (engines that keep leases).",
    );
    let _ = writeln!(
        out,
        "mtnt_runs_running{{model=\"{model}\"}} {}",
        running.len()
    );
    header(
        &mut out,
        "mtnt_run_duration_seconds",
        "How long each running run has been going.",
    );
    let now = chrono::Utc::now();
    for run in running {
        let seconds = (now - run.started_at).num_milliseconds().max(0) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "mtnt_run_duration_seconds{{model=\"{model}\",run_id=\"{}\",command=\"{}\",host=\"{}\"}} {seconds:.3}",
            label(&run.run_id),
            label(&run.command),
            label(&run.host)
        );
    }

    if let Some(last) = &report.last_run {
        // From the control journal: the newest finished run, for an alert on a slow or
        // failing deploy after its runner is gone.
        for (name, help, value) in [
            (
                "mtnt_last_run_duration_seconds",
                "How long the newest finished fleet run took.",
                last.duration().as_secs_f64(),
            ),
            (
                "mtnt_last_run_finished_timestamp_seconds",
                "When the newest finished fleet run ended (Unix time).",
                last.finished_at.timestamp_millis() as f64 / 1000.0,
            ),
            (
                "mtnt_last_run_failed_tenants",
                "Tenants that failed in the newest finished fleet run.",
                last.failed as f64,
            ),
        ] {
            header(&mut out, name, help);
            let _ = writeln!(
                out,
                "{name}{{model=\"{model}\",command=\"{}\"}} {value:.3}",
                label(&last.command)
            );
        }
    }
    if let Some(check) = &report.last_drift {
        header(
            &mut out,
            "mtnt_schema_drifted_tenants",
            "Tenants whose schema differed from the others at their order in the last drift check.",
        );
        let _ = writeln!(
            out,
            "mtnt_schema_drifted_tenants{{model=\"{model}\"}} {}",
            check.drifted.len()
        );
    }

    header(
        &mut out,
        "mtnt_status_timestamp_seconds",
        "When these gauges were read (Unix time).",
    );
    let _ = writeln!(
        out,
        "mtnt_status_timestamp_seconds{{model=\"{model}\"}} {:.3}",
        now.timestamp_millis() as f64 / 1000.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gauge_has_help_and_type_and_the_fleet_counts() {
        let report = crate::cli::report_html::tests::fleet("boom");
        let text = prometheus(&report, &[], "postgres-schema");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{name}");
        }
        assert!(text.contains("mtnt_tenants{model=\"postgres-schema\",condition=\"current\"} 1\n"));
        assert!(text.contains("mtnt_tenants{model=\"postgres-schema\",condition=\"failed\"} 1\n"));
        assert!(text.contains("mtnt_tenants{model=\"postgres-schema\",condition=\"drifted\"} 0\n"));
        assert!(text.contains(
            "mtnt_tenants_at_order{model=\"postgres-schema\",order=\"2024_01_01_0002\"} 1\n"
        ));
        assert!(text.contains("mtnt_runs_running{model=\"postgres-schema\"} 0\n"));
        assert!(text.contains("mtnt_invalid_registry_rows{model=\"postgres-schema\"} 1\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(condition_label(Condition::NeedsRepair), "needs-repair");
        assert_eq!(condition_label(Condition::OutOfOrder), "out-of-order");
    }
}
