//! The commands that run over the fleet: `migrate` (and its dry run), `plan`, `rollback`
//! and `exec`, with the rollout flags they share.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Mutex;

use super::args::{ExecArgs, MigrateArgs, PlanArgs, RollbackArgs};
use super::events::JsonEvents;
use super::output::{self, count, Verb, Words};
use super::plan;
use super::progress::{FleetProgress, Verbosity};
use super::say::{self, outln};
use crate::migration::format_order;
use crate::{
    Error, MigrateOptions, MigrateReport, Migrator, Progress, Result, RollbackTarget, Rollout,
    TenantName,
};

/// How the command line prints: the words of the tenancy model and the output flags.
pub(crate) struct Printing<'a> {
    pub(crate) words: &'a Words,
    pub(crate) verbosity: Verbosity,
    /// `--quiet`: errors and the summary only.
    pub(crate) quiet: bool,
    /// `--verbose`: no list of names cut short.
    pub(crate) verbose: bool,
    /// `--format json`: the run's events on stdout, and the model they name.
    pub(crate) events: Option<String>,
}

impl Printing<'_> {
    /// The JSON events of `command` around `inner`, with `--format json`.
    pub(crate) fn events<'a>(
        &self,
        inner: &'a dyn Progress,
        command: &'static str,
        options: serde_json::Value,
    ) -> Option<JsonEvents<'a>> {
        self.events
            .clone()
            .map(|model| JsonEvents::new(inner, command, model, options))
    }
}

/// Runs a fleet command's `run` with `progress`, or with the JSON events around it,
/// which end with `run_finished`.
async fn reported<'a, F, Fut>(
    progress: &'a dyn Progress,
    events: Option<&'a JsonEvents<'a>>,
    run: F,
) -> Result<MigrateReport>
where
    F: FnOnce(&'a dyn Progress) -> Fut,
    Fut: std::future::Future<Output = Result<MigrateReport>>,
{
    let Some(events) = events else {
        return run(progress).await;
    };
    let result = run(events).await;
    events.fleet_finished(result.as_ref());
    result
}

/// The rollout flags, as the `run_started` event shows them.
fn rollout_json(args: &super::args::RolloutArgs) -> serde_json::Value {
    serde_json::json!({
        "canary": args.canary,
        "canary_per_server": args.canary_per_server,
        "canary_tenants": args.canary_tenants.iter().map(TenantName::as_str).collect::<Vec<_>>(),
        "wave_size": args.wave_size.map(|w| match w {
            crate::WaveSize::Tenants(n) => n.to_string(),
            crate::WaveSize::Percent(p) => format!("{p}%"),
        }),
        "wave_pause_ms": args.wave_pause.map(|p| p.as_millis() as u64),
        "max_failures": args.max_failures,
        "max_failure_rate": args.max_failure_rate,
        "only_failed": args.only_failed,
        "order_by": format!("{:?}", args.order_by).to_lowercase(),
    })
}

fn names(tenants: &[TenantName]) -> Vec<&str> {
    tenants.iter().map(TenantName::as_str).collect()
}

/// 0 only when every tenant asked for is done: a failure, a spent error budget or a
/// stop before the end is 1.
fn exit(report: &MigrateReport) -> ExitCode {
    if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub(crate) async fn migrate(
    migrator: &Migrator,
    args: MigrateArgs,
    p: &Printing<'_>,
) -> Result<ExitCode> {
    let mut options = MigrateOptions::new()
        .tenants(args.tenants)
        .fail_fast(args.fail_fast)
        .shard(args.shard)
        .rollout(args.rollout.rollout());
    options.to = args.to;
    if args.dry_run {
        let rollout = args.rollout.describe();
        return show_plan(migrator, &options, args.json, false, rollout.as_deref(), p).await;
    }
    let progress = FleetProgress::new("migrate", p.verbosity).pause(args.rollout.pause());
    let events = p.events(
        &progress,
        "migrate",
        serde_json::json!({
            "tenants": names(&options.tenants),
            "to": options.to,
            "fail_fast": options.fail_fast,
            "shard": options.shard.map(|s| s.to_string()),
            "rollout": rollout_json(&args.rollout),
        }),
    );
    let report = reported(&progress, events.as_ref(), |progress| {
        migrator.migrate_with_progress(&options, progress)
    })
    .await?;
    say::out_raw(&output::fleet_report(
        &report,
        p.words,
        Verb::Migrate,
        p.verbose,
    ));
    Ok(exit(&report))
}

pub(crate) async fn plan(
    migrator: &Migrator,
    args: PlanArgs,
    p: &Printing<'_>,
) -> Result<ExitCode> {
    let mut options = MigrateOptions::new()
        .tenants(args.tenants)
        .shard(args.shard)
        .rollout(Rollout {
            only_failed: args.only_failed,
            servers: args.servers,
            ..Rollout::default()
        });
    options.to = args.to;
    show_plan(migrator, &options, args.json, args.by_server, None, p).await
}

/// Prints what `migrate` would do with `options`, changing nothing.
async fn show_plan(
    migrator: &Migrator,
    options: &MigrateOptions,
    json: bool,
    by_server: bool,
    rollout: Option<&str>,
    p: &Printing<'_>,
) -> Result<ExitCode> {
    if let Some(order) = options.to {
        if migrator.migrations().get(order).is_none() {
            return Err(Error::UnknownOrder(format_order(order)));
        }
    }
    let plan = migrator.plan(options).await?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&plan).expect("serializable")
        );
    } else {
        say::out_raw(&plan::render(
            &plan, p.words, rollout, p.verbose, p.quiet, by_server,
        ));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn rollback(
    migrator: &Migrator,
    args: RollbackArgs,
    p: &Printing<'_>,
) -> Result<ExitCode> {
    let how_far = match (args.steps, args.to, args.all) {
        (Some(n), _, _) => RollbackTarget::Steps(n),
        (_, Some(order), _) => RollbackTarget::To(order),
        _ => RollbackTarget::All,
    };
    if let ([tenant], false, false, None) = (
        args.tenants.as_slice(),
        args.all_tenants,
        args.rollout.is_set(),
        &p.events,
    ) {
        let report = migrator.rollback(tenant, how_far).await?;
        if report.reverted.is_empty() {
            outln!("tenant {tenant}: nothing to roll back");
        } else if p.quiet {
            outln!(
                "tenant {tenant}: reverted {}",
                count(report.reverted.len(), "migration")
            );
        }
        if !p.quiet {
            for (order, name) in &report.reverted {
                outln!("tenant {tenant}: reverted {} {name}", format_order(*order));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Several tenants, or all of them (clap requires --all-tenants for that).
    let named = args.tenants.clone();
    let options = MigrateOptions::new()
        .tenants(args.tenants)
        .rollout(args.rollout.rollout());
    let progress = Outcomes {
        inner: FleetProgress::new("rollback", p.verbosity).pause(args.rollout.pause()),
        reverted: Mutex::new(HashMap::new()),
    };
    let events = p.events(
        &progress,
        "rollback",
        serde_json::json!({
            "tenants": names(&options.tenants),
            "all_tenants": args.all_tenants,
            "steps": args.steps,
            "to": args.to,
            "all": args.all,
            "rollout": rollout_json(&args.rollout),
        }),
    );
    let report = reported(&progress, events.as_ref(), |progress| {
        migrator.rollback_fleet(how_far, &options, progress)
    })
    .await?;
    // Each tenant named on the command line gets its line, as one alone does; a failed
    // one is in the failures below, one not started in the list of those.
    if !p.quiet {
        let reverted = progress.reverted.into_inner().unwrap_or_default();
        for tenant in &named {
            match reverted.get(tenant) {
                Some(0) => outln!("tenant {tenant}: nothing to roll back"),
                Some(&n) => outln!("tenant {tenant}: reverted {}", count(n, "migration")),
                None => {}
            }
        }
    }
    say::out_raw(&output::fleet_report(
        &report,
        p.words,
        Verb::Rollback,
        p.verbose,
    ));
    Ok(exit(&report))
}

/// The progress of a fleet run, which also keeps how many migrations each tenant that
/// succeeded reverted.
struct Outcomes {
    inner: FleetProgress,
    reverted: Mutex<HashMap<TenantName, usize>>,
}

impl Progress for Outcomes {
    fn run_id(&self, run_id: &str) {
        self.inner.run_id(run_id);
    }

    fn start(&self, total: u64) {
        self.inner.start(total);
    }

    fn tenant_done(&self, tenant: &TenantName, outcome: std::result::Result<usize, &Error>) {
        if let (Ok(n), Ok(mut reverted)) = (&outcome, self.reverted.lock()) {
            reverted.insert(tenant.clone(), *n);
        }
        self.inner.tenant_done(tenant, outcome);
    }

    fn wave(&self, number: usize, waves: usize, tenants: usize) {
        self.inner.wave(number, waves, tenants);
    }

    fn retrying(
        &self,
        target: &str,
        attempt: u32,
        attempts: u32,
        error: &Error,
        pause: std::time::Duration,
    ) {
        self.inner.retrying(target, attempt, attempts, error, pause);
    }

    fn finish(&self) {
        self.inner.finish();
    }
}

pub(crate) async fn exec(
    migrator: &Migrator,
    args: ExecArgs,
    p: &Printing<'_>,
) -> Result<ExitCode> {
    let sql = match (args.sql, args.file) {
        (Some(sql), _) => sql,
        (None, Some(path)) => std::fs::read_to_string(&path).map_err(|source| Error::Io {
            action: "cannot read the SQL file",
            path,
            source,
        })?,
        (None, None) => unreachable!("clap requires --sql or --file"),
    };
    if sql.trim().is_empty() {
        return Err(Error::Invalid(
            "the SQL to run is empty: give a statement with --sql TEXT or a file with --file PATH"
                .to_owned(),
        ));
    }
    let options = MigrateOptions::new()
        .tenants(args.tenants)
        .rollout(args.rollout.rollout());
    let progress = FleetProgress::new("exec", p.verbosity).pause(args.rollout.pause());
    let events = p.events(
        &progress,
        "exec",
        serde_json::json!({
            "tenants": names(&options.tenants),
            "transaction": !args.no_transaction,
            "sql_bytes": sql.len(),
            "rollout": rollout_json(&args.rollout),
        }),
    );
    let report = reported(&progress, events.as_ref(), |progress| {
        migrator.exec(&sql, !args.no_transaction, &options, progress)
    })
    .await?;
    say::out_raw(&output::fleet_report(
        &report,
        p.words,
        Verb::Exec,
        p.verbose,
    ));
    Ok(exit(&report))
}
