use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use super::args::{Cli, Command, MarkArg, TenantCommand};
use super::fleet::{self, Printing};
use super::hints::cli_fix;
use super::output::{self, count, Words};
use super::progress::{FleetProgress, Verbosity};
use super::say::{self, errln, outln};
use crate::{
    connect, ConnectOptions, Error, Hooks, MigrationSet, MigrationStatus, Migrator, Result,
    SafetySettings, Timeouts,
};

/// Parses the command line, runs the command and returns the process exit code:
/// 0 only when everything asked for succeeded. `--version` and the help show mtnt's own
/// name; `mtnt::run!()` calls [`run_cli_as`] with the app's.
pub fn run_cli() -> i32 {
    run_app(None)
}

/// [`run_cli`] for the app `name` at `version` (its crate's `CARGO_PKG_NAME` and
/// `CARGO_PKG_VERSION`), described by `description` (`CARGO_PKG_DESCRIPTION`, may be
/// empty): what `--version` and the help say.
pub fn run_cli_as(name: &'static str, version: &'static str, description: &'static str) -> i32 {
    run_app(Some((name, version, description)))
}

fn run_app(app: Option<(&'static str, &'static str, &'static str)>) -> i32 {
    let mut command = Cli::command();
    if let Some((name, version, description)) = app {
        let about = if description.trim().is_empty() {
            format!("Database migrations of {name}: the public schema and every tenant")
        } else {
            description.to_owned()
        };
        command = command.name(name).version(version).about(about);
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // From here on nothing printed shows the URL's password, panics and logs included.
    say::install(cli.database_url.as_deref());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("MTNT_LOG"))
        .with_writer(say::LogWriter::new)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => {
            if code == ExitCode::SUCCESS {
                0
            } else {
                1
            }
        }
        Err(error) => {
            print_error(&error);
            1
        }
    }
}

/// `error: <message>`, each cause the message does not quote, and the fix.
fn print_error(error: &Error) {
    let message = error.to_string();
    errln!("error: {message}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        // `Error::Migration` and friends already print their cause inline.
        if !message.contains(&text) {
            errln!("  caused by: {text}");
        }
        source = cause.source();
    }
    if let Some(fix) = cli_fix(error) {
        errln!("  fix: {fix}");
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let migrations = MigrationSet::registered()?;
    // The binary's own: every registered hook runs (a library user picks them).
    let hooks = Hooks::registered()?;
    if let Command::List(args) = &cli.command {
        if args.json {
            outln!(
                "{}",
                serde_json::to_string_pretty(&output::migration_list_json(&migrations))
                    .expect("serializable")
            );
        } else {
            say::out_raw(&output::migration_list(&migrations));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let url = cli.database_url.as_deref().ok_or_else(|| {
        Error::Invalid("no database given\n  fix: pass --database-url URL or set DATABASE_URL (postgres://user@host/db, mysql://user@host/control, sqlite://./tenants/)".to_owned())
    })?;
    let options = ConnectOptions {
        tenancy: cli.tenancy.map(Into::into),
        control_schema: cli.control_schema.clone(),
        // At most MAX_CONCURRENCY + 2: the parser bounds --concurrency.
        max_connections: u32::try_from(cli.concurrency.saturating_add(2)).unwrap_or(u32::MAX),
    };
    let safety = SafetySettings::new()
        .deadline(Some(cli.safety.deadline).filter(|d| !d.is_zero()))
        .unlock_deadline(cli.safety.unlock_deadline)
        .heartbeat_interval(cli.safety.heartbeat_interval)
        .heartbeat_retries(cli.safety.heartbeat_retries)
        .retries(cli.safety.retries)
        .retry_backoff(cli.safety.retry_backoff);
    let backend = connect(url, &options).await?;
    let words = Words::new(backend.tenancy(), url, &cli.control_schema);
    let migrator = Migrator::builder_boxed(backend)
        .migrations(migrations)
        .hooks(hooks)
        .concurrency(cli.concurrency)
        .run_history(cli.run_history)
        .safety(safety)
        .timeouts(Timeouts {
            lock: Some(cli.safety.lock_timeout),
            statement: Some(cli.safety.statement_timeout),
        })
        .transactions(cli.transactions.into())
        .build()?;
    let quiet = cli.quiet;
    let verbosity = if quiet {
        Verbosity::Nothing
    } else if cli.no_progress {
        Verbosity::Failures
    } else {
        Verbosity::Progress
    };
    let printing = Printing {
        words: &words,
        verbosity,
        quiet,
        verbose: cli.verbose,
    };
    match cli.command {
        Command::List(_) => unreachable!("handled above"),
        Command::Migrate(args) => fleet::migrate(&migrator, args, &printing).await,
        Command::Plan(args) => fleet::plan(&migrator, args, &printing).await,
        Command::Rollback(args) => fleet::rollback(&migrator, args, &printing).await,
        Command::Exec(args) => fleet::exec(&migrator, args, &printing).await,
        Command::Status(args) if args.run.is_some() => {
            let run_id = args.run.as_deref().unwrap_or_default();
            let report = migrator.run_status(run_id, &args.tenants).await?;
            if args.json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serializable")
                );
            } else {
                say::out_raw(&output::run_report(&report, quiet));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let report = migrator.status(&args.tenants).await?;
            // Who is migrating the fleet right now (the run leases).
            let running = migrator.running().await?;
            if args.json {
                let mut value = serde_json::to_value(&report).expect("serializable");
                value["summary"] = serde_json::Value::String(report.summary());
                // A stale lease is a dead run's: listed apart, never as running.
                let (stale, live): (Vec<_>, Vec<_>) = running.iter().partition(|r| r.stale);
                value["running"] = serde_json::to_value(&live).expect("serializable");
                value["stale_runs"] = serde_json::to_value(&stale).expect("serializable");
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("serializable")
                );
            } else {
                say::out_raw(&output::status_report(&report, &words, quiet));
                for run in running.iter().filter(|_| !quiet) {
                    outln!("{}", output::run_line(run));
                }
            }
            if args.check && !report.is_current() {
                // A deploy gate: the reason goes where a pipeline's log shows it.
                let mut why = Vec::new();
                if report.public.pending > 0 || report.public.failed.is_some() {
                    why.push(format!(
                        "{} has {}{}",
                        words.public,
                        count(report.public.pending, "pending migration"),
                        if report.public.failed.is_some() {
                            ", one failed"
                        } else {
                            ""
                        }
                    ));
                }
                if report.current < report.tenants.len() {
                    why.push(report.summary());
                }
                errln!("not current: {}", why.join("; "));
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drift(args) => {
            let report = migrator.drift(&args.tenants).await?;
            if args.json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serializable")
                );
            } else {
                say::out_raw(&output::drift_report(&report, quiet));
            }
            // Like diff(1): 1 when something differs, so a pipeline can gate on it.
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Tenant(TenantCommand::Create { name }) => {
            // Tenant migrations may rely on the public ones: those run first, and are said.
            let public = migrator.migrate_public().await?;
            if public > 0 {
                outln!(
                    "{}: applied {} first",
                    words.public,
                    count(public, "pending migration")
                );
            }
            let tenant = migrator.create_tenant(&name).await?;
            outln!(
                "created tenant {} ({}) with every tenant migration applied",
                tenant.name,
                words.storage_of(&tenant.storage)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant(TenantCommand::List { json }) => {
            let records = migrator.tenants().await?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&records).expect("serializable")
                );
            } else {
                say::out_raw(&output::tenant_list(&records, &words, quiet));
            }
            // Rows no tenant name can be made of: listed apart, and not a success.
            let invalid = migrator.invalid_registry_rows().await?;
            if invalid.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                errln!("{}", output::invalid_registry_rows(&invalid).trim_end());
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Tenant(TenantCommand::Adopt {
            schema_like,
            baseline,
        }) => {
            let progress = FleetProgress::new("adopt", verbosity);
            let (adopted, skipped) = migrator
                .adopt_with_progress(&schema_like, baseline, &progress)
                .await?;
            for tenant in adopted.iter().filter(|_| !quiet) {
                outln!(
                    "adopted {} ({})",
                    tenant.name,
                    words.storage_of(&tenant.storage)
                );
            }
            for name in &skipped {
                errln!("skipped {name:?}: not a valid tenant name (lowercase letters, digits, '_' or '-', starting with a letter)");
            }
            outln!("{} adopted, {} skipped", adopted.len(), skipped.len());
            Ok(if skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Tenant(TenantCommand::Drop { name, yes }) => {
            if !yes {
                return Err(Error::Invalid(format!(
                    "dropping tenant {name} deletes all its data\n  fix: run `tenant drop {name} --yes` to confirm"
                )));
            }
            let record = migrator
                .backend()
                .tenant_records(std::slice::from_ref(&name))
                .await?
                .pop()
                .ok_or_else(|| Error::UnknownTenant(name.to_string()))?;
            migrator.drop_tenant(&name).await?;
            outln!(
                "dropped tenant {name}: its {} and its registry row",
                words.storage_of(&record.tenant.storage)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Repair(args) => {
            if args.checksums {
                let changed = migrator.repair_checksums(&args.tenants).await?;
                outln!(
                    "recorded new checksums for {}",
                    count(changed, "applied migration")
                );
                return Ok(ExitCode::SUCCESS);
            }
            let order = args.order.expect("clap requires --order with --mark");
            let status = match args
                .mark
                .expect("clap group requires --checksums or --mark")
            {
                MarkArg::Completed => MigrationStatus::Completed,
                MarkArg::Pending => MigrationStatus::Pending,
            };
            let tenant = match (args.public, args.tenants.as_slice()) {
                (true, _) => None,
                (false, [one]) => Some(one),
                _ => {
                    return Err(Error::Invalid(
                        "repair --mark needs exactly one --tenant NAME, or --public".to_owned(),
                    ))
                }
            };
            migrator.mark(tenant, order, status).await?;
            outln!(
                "marked {} as {} in {}",
                crate::migration::format_order(order),
                status.as_str(),
                tenant.map_or_else(|| words.public.clone(), |t| format!("tenant {t}"))
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
