use std::process::ExitCode;

use clap::Parser;

use super::args::{Cli, Command, MarkArg, RollbackArgs, TenantCommand};
use super::output;
use super::progress::FleetProgress;
use crate::{
    connect, ConnectOptions, Error, Hooks, MigrateOptions, MigrationSet, MigrationStatus,
    Migrator, Result, RollbackTarget, SafetySettings, Timeouts,
};

/// Parses the command line, runs the command and returns the process exit code:
/// 0 only when everything asked for succeeded.
pub fn run_cli() -> i32 {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("MTNT_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
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
            eprintln!("error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                // `Error::Migration` and friends already print their cause inline.
                if !error.to_string().contains(&cause.to_string()) {
                    eprintln!("  caused by: {cause}");
                }
                source = cause.source();
            }
            1
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let migrations = MigrationSet::registered()?;
    // The binary's own: every registered hook runs (a library user picks them).
    let hooks = Hooks::registered()?;
    if let Command::List(args) = &cli.command {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&output::migration_list_json(&migrations))
                    .expect("serializable")
            );
        } else {
            print!("{}", output::migration_list(&migrations));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let url = cli.database_url.as_deref().ok_or_else(|| {
        Error::Invalid("no database given\n  fix: pass --database-url URL or set DATABASE_URL (postgres://user@host/db, sqlite://./tenants/)".to_owned())
    })?;
    let options = ConnectOptions {
        tenancy: cli.tenancy.map(Into::into),
        control_schema: cli.control_schema.clone(),
        max_connections: (cli.concurrency + 2) as u32,
    };
    let safety = SafetySettings::new()
        .deadline(Some(cli.safety.deadline).filter(|d| !d.is_zero()))
        .unlock_deadline(cli.safety.unlock_deadline)
        .heartbeat_interval(cli.safety.heartbeat_interval)
        .heartbeat_retries(cli.safety.heartbeat_retries)
        .retries(cli.safety.retries)
        .retry_backoff(cli.safety.retry_backoff);
    let backend = connect(url, &options).await?;
    let migrator = Migrator::builder_boxed(backend)
        .migrations(migrations)
        .hooks(hooks)
        .concurrency(cli.concurrency)
        .safety(safety)
        .timeouts(Timeouts {
            lock: Some(cli.safety.lock_timeout),
            statement: Some(cli.safety.statement_timeout),
        })
        .transactions(cli.transactions.into())
        .build()?;
    let show_progress = !cli.no_progress;
    match cli.command {
        Command::List(_) => unreachable!("handled above"),
        Command::Migrate(args) => {
            let options = MigrateOptions::new()
                .tenants(args.tenants)
                .to(args.to)
                .fail_fast(args.fail_fast)
                .shard(args.shard);
            let progress = FleetProgress::new("migrate", show_progress);
            let report = migrator.migrate_with_progress(&options, &progress).await?;
            print!("{}", output::migrate_report(&report));
            Ok(if report.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Rollback(RollbackArgs {
            tenant,
            steps,
            to,
            all,
        }) => {
            let how_far = match (steps, to, all) {
                (Some(n), _, _) => RollbackTarget::Steps(n),
                (_, Some(order), _) => RollbackTarget::To(order),
                _ => RollbackTarget::All,
            };
            let report = migrator.rollback(&tenant, how_far).await?;
            if report.reverted.is_empty() {
                println!("tenant {tenant}: nothing to roll back");
            }
            for (order, name) in &report.reverted {
                println!(
                    "tenant {tenant}: reverted {} {name}",
                    crate::migration::format_order(*order)
                );
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
                value["running"] = serde_json::to_value(&running).expect("serializable");
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("serializable")
                );
            } else {
                print!("{}", output::status_report(&report));
                for run in &running {
                    println!(
                        "running: {} run {} on {} (pid {}) since {}, last heartbeat {}",
                        run.command,
                        run.run_id,
                        run.host,
                        run.pid,
                        run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        run.heartbeat_at.format("%H:%M:%S UTC"),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant(TenantCommand::Create { name }) => {
            let tenant = migrator.create_tenant(&name).await?;
            println!(
                "created tenant {} (schema {}) with every tenant migration applied",
                tenant.name, tenant.storage
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant(TenantCommand::List { json }) => {
            let records = migrator.tenants().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&records).expect("serializable")
                );
            } else {
                print!("{}", output::tenant_list(&records));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant(TenantCommand::Adopt {
            schema_like,
            baseline,
        }) => {
            let progress = FleetProgress::new("adopt", show_progress);
            let (adopted, skipped) = migrator
                .adopt_with_progress(&schema_like, baseline, &progress)
                .await?;
            for tenant in &adopted {
                println!("adopted {}", tenant.name);
            }
            for name in &skipped {
                eprintln!("skipped {name:?}: not a valid tenant name (lowercase letters, digits, '_' or '-', starting with a letter)");
            }
            println!("{} adopted, {} skipped", adopted.len(), skipped.len());
            Ok(if skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Tenant(TenantCommand::Drop { name, yes }) => {
            if !yes {
                return Err(Error::Invalid(format!(
                    "dropping tenant {name} deletes all its data\n  fix: add --yes to confirm"
                )));
            }
            migrator.drop_tenant(&name).await?;
            println!("dropped tenant {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Repair(args) => {
            if args.checksums {
                let changed = migrator.repair_checksums(&args.tenants).await?;
                println!("recorded new checksums for {changed} applied migration(s)");
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
            println!(
                "marked {} as {} in {}",
                crate::migration::format_order(order),
                status.as_str(),
                tenant.map_or_else(|| "the public schema".to_owned(), |t| format!("tenant {t}"))
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
