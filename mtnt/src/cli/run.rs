use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use tracing::Instrument;

use super::args::{Cli, Command, FormatArg, MarkArg, ServerCommand, TenantCommand};
use super::events::{self, JsonEvents, NoDisplay};
use super::fleet::{self, Printing};
use super::hints::cli_fix;
use super::output::{self, count, Words};
use super::progress::{FleetProgress, Verbosity};
use super::say::{self, errln, outln};
use crate::{
    connect, ConnectOptions, Error, Hooks, MigrationSet, MigrationStatus, Migrator, Result,
    SafetySettings, Timeouts,
};

/// How many finished runs the fleet report lists.
const REPORT_RUNS: usize = 20;

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
    let telemetry = init_log(cli.log_format);
    let code = run_logged(cli);
    // Outside the runtime: the exporter's last batch goes out on a thread of its own.
    telemetry.finish();
    code
}

fn run_logged(cli: Cli) -> i32 {
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
    let span = run_span(&cli);
    match runtime.block_on(run(cli).instrument(span)) {
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

/// The diagnostic log on stderr: its level from `MTNT_LOG`, else `RUST_LOG` (errors
/// only when neither is set), as text or (`--log-format json`) one JSON object per
/// line; each span's end is logged with its duration (`time.busy`, `time.idle`).
/// With the `otel` feature and an OTLP endpoint set, mtnt's spans are also exported
/// (`super::otel`); the returned guard exports the last of them when dropped.
fn init_log(format: FormatArg) -> Telemetry {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = ["MTNT_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|var| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|_| EnvFilter::from_env(var))
        })
        .unwrap_or_else(|| EnvFilter::new("error"));
    #[cfg(feature = "otel")]
    if let Some((otel, exporter)) = super::otel::layer() {
        let open = OpenSpans::default();
        // Each layer its own filter: the log's level does not hide spans from the exporter.
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(
                fmt_layer(format),
                super::otel::Fresh(filter),
            ))
            .with(otel)
            .with(open.clone())
            .try_init();
        return Telemetry {
            open,
            exporter: Some(exporter),
        };
    }
    // The log alone: its filter is the subscriber's.
    let open = OpenSpans::default();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer(format))
        .with(open.clone())
        .try_init();
    Telemetry {
        open,
        #[cfg(feature = "otel")]
        exporter: None,
    }
}

/// Counts mtnt's spans not closed yet. A span closes when its last handle drops, and
/// sqlx's SQLite worker threads hold a handle of the span of each command they run
/// until just after they answer it: the `run` span can end on such a thread, after
/// the command returned. The process waits for that close before it exits, or its
/// log line (and its export) would be lost. The outermost layer: a span's close reaches
/// it after the log and the exporter handled it.
#[derive(Clone, Default)]
struct OpenSpans(std::sync::Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>);

/// How long the end of the command waits for the last spans to close; they close
/// within microseconds, unless a handle leaked.
const SPAN_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl OpenSpans {
    fn is_counted(metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target().starts_with("mtnt")
    }

    fn add(&self, delta: isize) {
        let (count, closed) = &*self.0;
        let mut count = count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            closed.notify_all();
        }
    }

    /// Returns once every counted span closed, or after `limit`.
    fn wait_closed(&self, limit: std::time::Duration) {
        let (count, closed) = &*self.0;
        let count = count.lock().unwrap_or_else(|e| e.into_inner());
        let _ = closed.wait_timeout_while(count, limit, |open| *open > 0);
    }
}

impl<S> tracing_subscriber::Layer<S> for OpenSpans
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if Self::is_counted(attrs.metadata()) {
            self.add(1);
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if ctx
            .metadata(&id)
            .is_some_and(|metadata| Self::is_counted(metadata))
        {
            self.add(-1);
        }
    }
}

/// The stderr log's layer, as text or JSON lines.
fn fmt_layer<S>(format: FormatArg) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::Layer;
    let fmt = tracing_subscriber::fmt::layer()
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(say::LogWriter::new);
    match format {
        FormatArg::Text => fmt.boxed(),
        FormatArg::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
}

/// What the log needs at the end of the command: the spans still open, and with the
/// `otel` feature, the exporter of the spans still in its batch.
struct Telemetry {
    open: OpenSpans,
    #[cfg(feature = "otel")]
    exporter: Option<super::otel::Exporter>,
}

impl Telemetry {
    /// Waits for the last spans to close, exports the spans not exported yet (the `run`
    /// span ends last), then stops.
    fn finish(self) {
        self.open.wait_closed(SPAN_CLOSE_WAIT);
        #[cfg(feature = "otel")]
        if let Some(exporter) = self.exporter {
            exporter.shutdown();
        }
    }
}

/// The server of `url` as logs and events name it: `host:port` (never the user or the
/// password), or the directory of a SQLite URL.
pub(crate) fn server_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "sqlite" => url
            .trim_start_matches("sqlite:")
            .trim_start_matches("//")
            .to_owned(),
        Ok(parsed) => match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// The `run` span around the whole command: its name, the server, and the run id once
/// the run holds a lease.
fn run_span(cli: &Cli) -> tracing::Span {
    let command = match &cli.command {
        Command::Migrate(_) => "migrate",
        Command::Plan(_) => "plan",
        Command::Rollback(_) => "rollback",
        Command::Exec(_) => "exec",
        Command::Status(_) => "status",
        Command::Report(_) => "report",
        Command::Drift(_) => "drift",
        Command::Tenant(TenantCommand::Create { .. }) => "tenant create",
        Command::Tenant(TenantCommand::List { .. }) => "tenant list",
        Command::Tenant(TenantCommand::Adopt { .. }) => "tenant adopt",
        Command::Tenant(TenantCommand::Drop { .. }) => "tenant drop",
        Command::Tenant(TenantCommand::Move { .. }) => "tenant move",
        Command::Server(ServerCommand::Add { .. }) => "server add",
        Command::Server(ServerCommand::List { .. }) => "server list",
        Command::Server(ServerCommand::Remove { .. }) => "server remove",
        Command::Server(ServerCommand::Cordon { .. }) => "server cordon",
        Command::Server(ServerCommand::Uncordon { .. }) => "server uncordon",
        Command::Server(ServerCommand::Drain { .. }) => "server drain",
        Command::List(_) => "list",
        Command::Repair(_) => "repair",
    };
    let host = cli
        .database_url
        .as_deref()
        .map(server_of)
        .unwrap_or_default();
    tracing::debug_span!(
        "run",
        command,
        host = %host,
        run_id = tracing::field::Empty,
    )
}

/// `, on server eu-2` for a tenant on another server than the control database's.
fn on_server(tenant: &crate::Tenant) -> String {
    tenant
        .server
        .as_ref()
        .map_or(String::new(), |s| format!(", on server {s}"))
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
        // At most MAX_CONCURRENCY + 2: the parser bounds --concurrency. Without it, room
        // for the largest default of any engine.
        max_connections: u32::try_from(cli.concurrency.unwrap_or(8).saturating_add(2))
            .unwrap_or(u32::MAX),
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
    let mut builder = Migrator::builder_boxed(backend);
    if let Some(per_server) = cli.per_server_concurrency {
        builder = builder.per_server_concurrency(per_server);
    }
    if let Some(concurrency) = cli.concurrency {
        builder = builder.concurrency(concurrency);
    }
    let migrator = builder
        .migrations(migrations)
        .hooks(hooks)
        .run_history(cli.run_history)
        .templates(!cli.no_template)
        .spares(cli.spares)
        .safety(safety)
        .timeouts(Timeouts {
            lock: Some(cli.safety.lock_timeout),
            statement: Some(cli.safety.statement_timeout),
        })
        .transactions(cli.transactions.into())
        .server(server_of(url))
        .build()?;
    let model = crate::migrate::model_label(migrator.backend());
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
        events: (cli.format == FormatArg::Json).then(|| model.clone()),
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
            if args.prometheus {
                say::out_raw(&super::metrics::prometheus(&report, &running, &model));
            } else if args.json {
                let mut value = serde_json::to_value(&report).expect("serializable");
                value["summary"] = serde_json::Value::String(report.summary());
                if args.by_server {
                    value["servers"] =
                        serde_json::to_value(report.by_server()).expect("serializable");
                }
                // A stale lease is a dead run's: listed apart, never as running.
                let (stale, live): (Vec<_>, Vec<_>) = running.iter().partition(|r| r.stale);
                value["running"] = serde_json::to_value(&live).expect("serializable");
                value["stale_runs"] = serde_json::to_value(&stale).expect("serializable");
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("serializable")
                );
            } else {
                say::out_raw(&output::status_report(
                    &report,
                    &words,
                    quiet,
                    cli.verbose,
                    args.by_server,
                ));
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
            // What it says of a server it could not reach is not the fleet's state.
            Ok(match report.unreachable_servers.is_empty() {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            })
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
        Command::Report(args) => {
            let report = migrator.status(&args.tenants).await?;
            let running = migrator.running().await?;
            let drift = match args.drift {
                true => Some(super::report_html::drift_groups(
                    &migrator.drift(&args.tenants).await?,
                )),
                false => None,
            };
            let page = super::report_html::render(&super::report_html::FleetPage {
                title: &words.public,
                model: &model,
                status: &report,
                runs: &running,
                history: &migrator.runs(REPORT_RUNS).await?,
                drift_groups: drift.as_deref(),
                generated_at: chrono::Utc::now(),
            });
            std::fs::write(&args.html, say::clean(&page).as_bytes()).map_err(|source| {
                Error::Io {
                    action: "cannot write the report",
                    path: args.html.clone(),
                    source,
                }
            })?;
            outln!("wrote {}: {}", args.html.display(), report.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(ServerCommand::Add {
            name,
            url,
            no_check,
        }) => {
            if no_check {
                migrator.add_server_unchecked(&name, &url).await?;
            } else {
                migrator.add_server(&name, &url).await?;
            }
            outln!(
                "added server {name}: {} ({}its password from {})",
                crate::url_without_password(&url)?,
                if no_check {
                    "not connected; "
                } else {
                    "connected; "
                },
                name.password_sources()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(ServerCommand::List { json }) => {
            let servers = migrator.servers().await?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&servers).expect("serializable")
                );
            } else {
                say::out_raw(&output::server_list(&servers, quiet));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(ServerCommand::Remove { name }) => {
            migrator.remove_server(&name).await?;
            outln!("removed server {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(ServerCommand::Cordon { name }) => {
            migrator.cordon_server(&name, true).await?;
            outln!("cordoned server {name}: it keeps its tenants and takes no new ones");
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(ServerCommand::Uncordon { name }) => {
            migrator.cordon_server(&name, false).await?;
            outln!("server {name} takes new tenants again");
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(ServerCommand::Drain {
            name,
            to,
            keep_source,
        }) => {
            let report = migrator
                .drain_server(&name, to.as_ref(), keep_source, &mut |tenant, moved| {
                    if let Ok(moved) = moved {
                        outln!("moved tenant {tenant} to server {}", moved.server_name());
                    }
                })
                .await?;
            if !report.failed.is_empty() {
                say::out_raw(&super::failures::render(&report.failed));
            }
            outln!(
                "drained server {name}: {} moved, {} failed{}",
                report.moved.len(),
                report.failed.len(),
                if report.failed.is_empty() {
                    format!("; it is cordoned, `server remove {name}` removes it")
                } else {
                    "; they stay where they were, run it again to move them".to_owned()
                }
            );
            Ok(if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Tenant(TenantCommand::Create { name, server }) if printing.events.is_some() => {
            let events = JsonEvents::new(
                &NoDisplay,
                "tenant create",
                model.clone(),
                serde_json::json!({ "tenant": name.as_str() }),
            );
            events.announce();
            use crate::Progress as _;
            let result = async {
                let public = migrator.migrate_public().await?;
                events.tenant_started(&name);
                let created = migrator
                    .create_tenant_on_with_progress(&name, server.as_ref(), &events)
                    .await;
                let applied = migrator
                    .migrations()
                    .iter()
                    .filter(|m| m.scope() == crate::Scope::Tenant && m.is_enabled())
                    .count();
                match &created {
                    Ok(_) => events.tenant_done(&name, Ok(applied)),
                    Err(error) => events.tenant_done(&name, Err(error)),
                }
                created.map(|tenant| (public, tenant))
            }
            .await;
            let mut fields = events::object(serde_json::json!({
                "ok": result.is_ok(),
                "tenant": name.as_str(),
            }));
            if let Err(error) = &result {
                fields.extend(events::error_fields(error));
            }
            events.finished(fields);
            let (public, tenant) = result?;
            if public > 0 {
                outln!(
                    "{}: applied {} first",
                    words.public,
                    count(public, "pending migration")
                );
            }
            outln!(
                "created tenant {} ({}) with every tenant migration applied",
                tenant.name,
                words.storage_of(&tenant.storage)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant(TenantCommand::Create { name, server }) => {
            // Tenant migrations may rely on the public ones: those run first, and are said.
            let public = migrator.migrate_public().await?;
            if public > 0 {
                outln!(
                    "{}: applied {} first",
                    words.public,
                    count(public, "pending migration")
                );
            }
            let tenant = migrator.create_tenant_on(&name, server.as_ref()).await?;
            outln!(
                "created tenant {} ({}{}) with every tenant migration applied",
                tenant.name,
                words.storage_of(&tenant.storage),
                on_server(&tenant)
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
            server,
        }) => {
            let progress = FleetProgress::new("adopt", verbosity);
            let events = printing.events(
                &progress,
                "tenant adopt",
                serde_json::json!({ "schema_like": schema_like, "baseline": baseline }),
            );
            if let Some(events) = &events {
                events.announce();
            }
            let adopting: &dyn crate::Progress = match &events {
                Some(events) => events,
                None => &progress,
            };
            let result = migrator
                .adopt_on(&schema_like, baseline, server.as_ref(), adopting)
                .await;
            if let Some(events) = &events {
                let fields = match &result {
                    Ok((adopted, skipped)) => events::object(serde_json::json!({
                        "ok": skipped.is_empty(),
                        "adopted": adopted.len(),
                        "skipped": skipped,
                    })),
                    Err(error) => {
                        let mut fields = events::object(serde_json::json!({ "ok": false }));
                        fields.extend(events::error_fields(error));
                        fields
                    }
                };
                events.finished(fields);
            }
            let (adopted, skipped) = result?;
            for tenant in adopted.iter().filter(|_| !quiet) {
                outln!(
                    "adopted {} ({}{})",
                    tenant.name,
                    words.storage_of(&tenant.storage),
                    on_server(tenant)
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
        Command::Tenant(TenantCommand::Move {
            name,
            to,
            keep_source,
        }) => {
            let from = migrator.tenant(&name).await?.tenant;
            let moved = migrator.move_tenant(&name, &to, keep_source).await?;
            outln!(
                "moved tenant {name} from server {} to server {}{}",
                from.server_name(),
                moved.server_name(),
                if keep_source {
                    " (its source schema kept)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenant(TenantCommand::Drop { name, yes }) => {
            if !yes {
                return Err(Error::Invalid(format!(
                    "dropping tenant {name} deletes all its data\n  fix: run `tenant drop {name} --yes` to confirm"
                )));
            }
            let record = migrator.tenant(&name).await?;
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
