//! What `plan` (and `migrate --dry-run`) prints: the public migrations, then the tenants in
//! groups that would get the same migrations ("9,812 tenants at 2024_03_01_0002: apply
//! ..."), the ones `migrate` would refuse with their reason and fix, and the totals.

use std::fmt::Write;

use super::failures::{anonymous, name_list, the_tenant};
use super::hints::condition_fix;
use super::output::{count, tenants, thousands, Words};
use crate::migration::format_order;
use crate::{Condition, PlanGroup, PlanReport, PlannedMigration};

/// How many migrations a line lists unless told to list them all.
const MIGRATIONS_SHOWN: usize = 10;

/// `2024_04_01_0001 add_invoices, 2024_04_02_0001 backfill_totals`.
fn migrations(list: &[PlannedMigration], all: bool) -> String {
    let shown = if all {
        list
    } else {
        &list[..list.len().min(MIGRATIONS_SHOWN)]
    };
    let mut text = shown
        .iter()
        .map(|m| format!("{} {}", format_order(m.order), m.name))
        .collect::<Vec<_>>()
        .join(", ");
    if shown.len() < list.len() {
        let _ = write!(text, " and {} more", list.len() - shown.len());
    }
    text
}

/// `at 2024_03_01_0002`, or `with nothing applied`.
fn at(applied: Option<i64>) -> String {
    applied.map_or_else(
        || "with nothing applied".to_owned(),
        |o| format!("at {}", format_order(o)),
    )
}

/// The plan, as text. `rollout` describes the canary, waves and budget of a dry run;
/// `all`: every name and migration listed; `quiet`: the public schema and the totals only.
pub(crate) fn render(
    plan: &PlanReport,
    words: &Words,
    rollout: Option<&str>,
    all: bool,
    quiet: bool,
    by_server: bool,
) -> String {
    let mut out = String::new();
    public(&mut out, plan, words, all);
    for group in plan.groups.iter().filter(|_| !quiet) {
        render_group(&mut out, group, all);
    }
    if let Some(rollout) = rollout {
        let _ = writeln!(out, "rollout: {rollout}");
    }
    if by_server {
        for server in &plan.servers {
            let _ = writeln!(
                out,
                "server {}: {}, {} to migrate ({})",
                server.server,
                tenants(server.tenants),
                thousands(server.with_work),
                count(server.migrations, "migration")
            );
        }
    }
    let total: usize = plan.groups.iter().map(|g| g.tenants.len()).sum();
    let of = |keep: &dyn Fn(&PlanGroup) -> bool| -> usize {
        plan.groups
            .iter()
            .filter(|g| keep(g))
            .map(|g| g.tenants.len())
            .sum()
    };
    let to_migrate = of(&|g| !g.apply.is_empty() && migrates(g.condition));
    let current = of(&|g| g.condition == Condition::Current);
    let creating = of(&|g| g.condition == Condition::Creating);
    let refused = total - to_migrate - current - creating;
    let mut summary = format!(
        "{}: {} to migrate ({}), {} current",
        tenants(total),
        thousands(to_migrate),
        if plan.migrations == 1 {
            "1 migration".to_owned()
        } else {
            format!("{} migrations", thousands(plan.migrations))
        },
        thousands(current)
    );
    if refused > 0 {
        let _ = write!(summary, ", {} refused", thousands(refused));
    }
    if creating > 0 {
        let _ = write!(summary, ", {} creating", thousands(creating));
    }
    let _ = writeln!(out, "{summary}; nothing was changed");
    out
}

/// Whether `migrate` runs tenants in `condition`.
fn migrates(condition: Condition) -> bool {
    matches!(
        condition,
        Condition::Behind | Condition::OutOfOrder | Condition::Failed
    )
}

fn public(out: &mut String, plan: &PlanReport, words: &Words, all: bool) {
    let label = &words.public;
    let detail = plan
        .public_detail
        .as_deref()
        .and_then(|d| d.lines().next())
        .unwrap_or("");
    match plan.public_condition {
        Condition::Current => {
            let _ = writeln!(out, "{label}: nothing to apply");
        }
        Condition::Behind | Condition::OutOfOrder => {
            let _ = writeln!(out, "{label}: apply {}", migrations(&plan.public, all));
        }
        Condition::Failed if !plan.public.is_empty() => {
            let _ = writeln!(
                out,
                "{label}: failed last time: retry {}",
                migrations(&plan.public, all)
            );
            let _ = writeln!(out, "    error: {detail}");
        }
        condition => {
            let _ = writeln!(
                out,
                "{label}: {condition}: migrate stops here, before any tenant"
            );
            if !detail.is_empty() {
                let _ = writeln!(out, "    {detail}");
            }
        }
    }
}

fn render_group(out: &mut String, group: &PlanGroup, all: bool) {
    let n = group.tenants.len();
    let who = tenants(n);
    let apply = migrations(&group.apply, all);
    let header = match group.condition {
        Condition::Current => format!("{} current", thousands(n)),
        Condition::Behind => format!("{who} {}: apply {apply}", at(group.applied_order)),
        Condition::OutOfOrder => {
            format!(
                "{who} out of order {}: apply {apply}",
                at(group.applied_order)
            )
        }
        Condition::Failed if !group.apply.is_empty() => {
            let failed_at = group.failed_order.map(|order| {
                let name = group
                    .apply
                    .iter()
                    .find(|m| m.order == order)
                    .map(|m| format!(" {}", m.name))
                    .unwrap_or_default();
                format!(" at {}{name}", format_order(order))
            });
            format!(
                "{who} failed{}: retry {apply}",
                failed_at.unwrap_or_default()
            )
        }
        Condition::Failed => format!("{who} failed: nothing migrate could retry"),
        Condition::Drifted => format!("{who} drifted: not migrated until repaired"),
        Condition::NeedsRepair => format!(
            "{who} {} repair: not migrated until repaired",
            if n == 1 { "needs" } else { "need" }
        ),
        Condition::Ahead => format!("{who} ahead of this binary: not migrated"),
        Condition::Creating => {
            format!("{who} creating: not migrated until `tenant create` finishes")
        }
    };
    let _ = writeln!(out, "{header}");
    let first = group.tenants.first().map(|t| t.as_str()).unwrap_or("");
    if let Some(detail) = group.detail.as_deref() {
        let line = detail.lines().next().unwrap_or("");
        let line = if n == 1 {
            the_tenant(line, first)
        } else {
            anonymous(line, first, "<tenant>")
        };
        let label = if group.condition == Condition::Failed {
            "error: "
        } else {
            ""
        };
        let _ = writeln!(out, "    {label}{line}");
    }
    // The names of tenants that are up to date are noise, unless asked for.
    if group.condition != Condition::Current || all {
        let names: Vec<&crate::TenantName> = group.tenants.iter().collect();
        out.push_str(&name_list(&names, all));
    }
    let one = (n == 1).then_some(first);
    if let Some(fix) = condition_fix(group.condition, one, one.and(group.detail.as_deref())) {
        let _ = writeln!(
            out,
            "  fix{}: {fix}",
            if n == 1 { "" } else { ", for each" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_of_migrations_are_cut() {
        let list: Vec<PlannedMigration> = (1..=12)
            .map(|i| PlannedMigration {
                order: 202401010000 + i,
                name: "m",
            })
            .collect();
        let text = migrations(&list, false);
        assert!(
            text.starts_with("2024_01_01_0001 m, 2024_01_01_0002 m"),
            "{text}"
        );
        assert!(text.ends_with("2024_01_01_0010 m and 2 more"), "{text}");
        assert!(migrations(&list, true).ends_with("2024_01_01_0012 m"));
        assert_eq!(at(None), "with nothing applied");
        assert_eq!(thousands(9812), "9,812");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(185), "185");
        assert_eq!(tenants(1), "1 tenant");
    }
}
