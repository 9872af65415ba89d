use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    parse_duration, ServerName, Shard, Tenancy, TenantName, TenantOrder, Transactions, WaveSize,
};

/// The most tenants a run migrates at once: each holds a connection, and no server gives
/// one client more than this.
pub(crate) const MAX_CONCURRENCY: usize = crate::MAX_CONCURRENCY;

/// Migrates the shared schema and every tenant of a multi-tenant database.
///
/// The options of each command come first in its help, then the ones every command
/// takes, under Database, Run, Output and Safety.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    /// The database: postgres://user@host/db, mysql://user@host/control or sqlite://./tenants/
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Database"
    )]
    pub(crate) database_url: Option<String>,

    /// How tenants are isolated; given on the first run, then recorded in the registry (default: the
    /// recorded one, else from the URL: schema on PostgreSQL)
    #[arg(
        long,
        env = "MTNT_TENANCY",
        value_enum,
        global = true,
        help_heading = "Database"
    )]
    pub(crate) tenancy: Option<TenancyArg>,

    /// The PostgreSQL schema holding the tenant registry and the public migrations
    #[arg(
        long,
        env = "MTNT_CONTROL_SCHEMA",
        default_value = "public",
        value_name = "SCHEMA",
        global = true,
        help_heading = "Database"
    )]
    pub(crate) control_schema: String,

    /// How many finished runs the control journal keeps, for status and the report (0: none)
    #[arg(
        long,
        env = "MTNT_RUN_HISTORY",
        default_value_t = crate::DEFAULT_RUN_HISTORY,
        value_name = "N",
        global = true,
        help_heading = "Run"
    )]
    pub(crate) run_history: usize,

    /// Create tenants by replaying every migration, never by copying the tenant template
    /// (SQLite copies a migrated template file by default, which migrate keeps current)
    #[arg(long, env = "MTNT_NO_TEMPLATE", global = true, help_heading = "Run")]
    pub(crate) no_template: bool,

    /// Spare schemas migrate keeps ready for tenant create to take (PostgreSQL schema per
    /// tenant): a create that takes one renames it instead of replaying every migration
    #[arg(
        long,
        env = "MTNT_SPARES",
        default_value_t = 0,
        value_name = "N",
        global = true,
        help_heading = "Run"
    )]
    pub(crate) spares: usize,

    /// How many tenants are migrated at once, 1 to 1024 (each uses one connection; default
    /// 8, on MySQL and MariaDB 4)
    #[arg(
        long,
        env = "MTNT_CONCURRENCY",
        value_name = "N",
        value_parser = parse_concurrency,
        global = true,
        help_heading = "Run"
    )]
    pub(crate) concurrency: Option<usize>,

    /// How many of one server's tenants are migrated at once, within --concurrency (a
    /// fleet on several servers: `server list`); default: no limit but --concurrency
    #[arg(
        long,
        env = "MTNT_PER_SERVER_CONCURRENCY",
        value_name = "N",
        value_parser = parse_concurrency,
        global = true,
        help_heading = "Run"
    )]
    pub(crate) per_server_concurrency: Option<usize>,

    /// Transactions of a tenant's upgrade (PostgreSQL, SQLite): per-tenant makes it atomic
    #[arg(
        long,
        env = "MTNT_TRANSACTIONS",
        value_enum,
        default_value = "per-tenant",
        global = true,
        help_heading = "Run"
    )]
    pub(crate) transactions: TransactionsArg,

    /// Print no progress: neither bars on a terminal nor the "migrate 40/400 tenants" lines
    /// elsewhere (waves, retries and failures are still reported as they happen)
    #[arg(long, global = true, help_heading = "Output")]
    pub(crate) no_progress: bool,

    /// Print only errors and the closing summary, with failures grouped: no progress,
    /// tables or per-tenant lines (--json and `list` print as usual)
    #[arg(short, long, global = true, help_heading = "Output")]
    pub(crate) quiet: bool,

    /// Name every tenant in plans and in the lists of tenants not started (by default a
    /// list shows its first 20 names, then how many more; failed tenants are always named),
    /// and list every tenant in status's table (by default, beyond 1000 tenants, only
    /// those not current)
    #[arg(short, long, global = true, help_heading = "Output")]
    pub(crate) verbose: bool,

    /// How migrate, rollback, exec, tenant create and tenant adopt report: json prints
    /// JSON Lines events on stdout (the README's "Events"), the human output on stderr
    #[arg(
        long,
        value_enum,
        env = "MTNT_FORMAT",
        default_value = "text",
        value_name = "FORMAT",
        global = true,
        help_heading = "Output"
    )]
    pub(crate) format: FormatArg,

    /// How the diagnostic log on stderr is written (its level comes from MTNT_LOG or
    /// RUST_LOG, e.g. mtnt=debug for the run, tenant and migration spans)
    #[arg(
        long,
        value_enum,
        env = "MTNT_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT",
        global = true,
        help_heading = "Output"
    )]
    pub(crate) log_format: FormatArg,

    #[command(flatten)]
    pub(crate) safety: SafetyArgs,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Parses `--concurrency`: a whole number from 1 to [`MAX_CONCURRENCY`].
fn parse_concurrency(s: &str) -> Result<usize, String> {
    let range = format!(
        "give a number of tenants from 1 to {MAX_CONCURRENCY} (on the command line or in MTNT_CONCURRENCY)"
    );
    match s.trim().parse::<i128>() {
        Ok(n) if (1..=MAX_CONCURRENCY as i128).contains(&n) => Ok(n as usize),
        Ok(_) => Err(format!("out of range: {range}")),
        Err(_) if is_integer(s.trim()) => Err(format!("out of range: {range}")),
        Err(_) => Err(format!("not a number: {range}")),
    }
}

/// Whether `s` is written as a whole number, however large.
fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// Text for people, or JSON for programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum FormatArg {
    /// Lines for people
    Text,
    /// One JSON object per line
    Json,
}

/// The tenancy model.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum TenancyArg {
    /// One schema per tenant (PostgreSQL)
    Schema,
    /// One database per tenant (PostgreSQL, MySQL)
    Database,
    /// One file per tenant (SQLite)
    File,
}

/// How many of a tenant's pending migrations share a transaction.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum TransactionsArg {
    /// One transaction for a tenant's consecutive transactional migrations: the tenant
    /// is upgraded entirely or not at all
    PerTenant,
    /// One transaction per migration: a failure keeps the migrations before it
    PerMigration,
}

impl From<TransactionsArg> for Transactions {
    fn from(arg: TransactionsArg) -> Self {
        match arg {
            TransactionsArg::PerTenant => Transactions::PerTenant,
            TransactionsArg::PerMigration => Transactions::PerMigration,
        }
    }
}

impl From<TenancyArg> for Tenancy {
    fn from(arg: TenancyArg) -> Self {
        match arg {
            TenancyArg::Schema => Tenancy::Schema,
            TenancyArg::Database => Tenancy::Database,
            TenancyArg::File => Tenancy::File,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Apply pending migrations: public ones first, then every tenant (or the named ones)
    Migrate(MigrateArgs),
    /// Show what migrate would do, tenants grouped by what they would get; changes nothing
    Plan(PlanArgs),
    /// Revert migrations of the named tenants (or all of them), newest first
    Rollback(RollbackArgs),
    /// Run one SQL statement or script in every tenant (or the named ones); not recorded
    Exec(ExecArgs),
    /// Show where the public schema and each tenant stand
    Status(StatusArgs),
    /// Compare each tenant's actual schema with the other tenants at its order; changes nothing
    Drift(DriftArgs),
    /// Write a report of the fleet: one self-contained HTML page
    Report(ReportArgs),
    /// Create, list, adopt and drop tenants
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Register, list and remove the database servers tenants are placed on
    #[command(subcommand)]
    Server(ServerCommand),
    /// List every registered migration
    List(ListArgs),
    /// Fix bookkeeping by hand: accept changed checksums, mark an interrupted migration
    Repair(RepairArgs),
}

/// Deadlines, heartbeat, retries and timeouts (README section "Safety"). Durations are
/// written 500ms, 5s, 2m or 1h.
#[derive(Debug, Args)]
#[command(next_help_heading = "Safety")]
pub(crate) struct SafetyArgs {
    /// Time budget of the whole run (0: no limit): after it no further tenant starts, and the run fails
    #[arg(long, env = "MTNT_DEADLINE", default_value = "0", value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub(crate) deadline: Duration,
    /// How long a tenant another run holds is waited for, and how old a run lease's heartbeat may get before the lease is taken over
    #[arg(long, env = "MTNT_UNLOCK_DEADLINE", default_value = "60s", value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub(crate) unlock_deadline: Duration,
    /// How often a run refreshes its lease
    #[arg(long, env = "MTNT_HEARTBEAT_INTERVAL", default_value = "5s", value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub(crate) heartbeat_interval: Duration,
    /// Failed lease refreshes in a row after which a run stops starting tenants and exits non-zero
    #[arg(
        long,
        env = "MTNT_HEARTBEAT_RETRIES",
        default_value_t = 3,
        value_name = "N",
        global = true
    )]
    pub(crate) heartbeat_retries: u32,
    /// How often a tenant is retried after a lock timeout, serialization failure, deadlock or dropped connection
    #[arg(
        long,
        env = "MTNT_RETRIES",
        default_value_t = 3,
        value_name = "N",
        global = true
    )]
    pub(crate) retries: u32,
    /// The first pause before a retry; doubled each time (at most 10s), with jitter
    #[arg(long, env = "MTNT_RETRY_BACKOFF", default_value = "200ms", value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub(crate) retry_backoff: Duration,
    /// lock_timeout of each migration unless its attribute sets one (PostgreSQL; 0: no limit)
    #[arg(long, env = "MTNT_LOCK_TIMEOUT", default_value = "5s", value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub(crate) lock_timeout: Duration,
    /// statement_timeout of each migration unless its attribute sets one (PostgreSQL; 0: no limit)
    #[arg(long, env = "MTNT_STATEMENT_TIMEOUT", default_value = "0", value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub(crate) statement_timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Only this tenant (repeatable); default: every tenant
    #[arg(long = "tenant", value_name = "NAME")]
    pub(crate) tenants: Vec<TenantName>,
    /// Stop at this order (YYYY_MM_DD_NNNN), inclusive
    #[arg(long, value_name = "ORDER", value_parser = parse_order)]
    pub(crate) to: Option<i64>,
    /// Start no further tenant after the first failure
    #[arg(long)]
    pub(crate) fail_fast: bool,
    /// Only the tenants of static part I of N (1-based), e.g. 2/4; concurrent runners split the fleet without it too
    #[arg(long, env = "MTNT_SHARD", value_name = "I/N", value_parser = parse_shard)]
    pub(crate) shard: Option<Shard>,
    /// Print what it would do (as `plan` does) and change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// With --dry-run: print the plan as JSON
    #[arg(long, requires = "dry_run")]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) rollout: RolloutArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// Only this tenant (repeatable); default: every tenant
    #[arg(long = "tenant", value_name = "NAME")]
    pub(crate) tenants: Vec<TenantName>,
    /// Stop at this order (YYYY_MM_DD_NNNN), inclusive
    #[arg(long, value_name = "ORDER", value_parser = parse_order)]
    pub(crate) to: Option<i64>,
    /// Only the tenants of static part I of N (1-based), e.g. 2/4
    #[arg(long, env = "MTNT_SHARD", value_name = "I/N", value_parser = parse_shard)]
    pub(crate) shard: Option<Shard>,
    /// Only the tenants whose last attempt failed
    #[arg(long)]
    pub(crate) only_failed: bool,
    /// Only the tenants placed on this server (repeatable; `server list`); default: every
    /// server
    #[arg(long = "server", value_name = "SERVER")]
    pub(crate) servers: Vec<ServerName>,
    /// Print one JSON document instead of the groups
    #[arg(long)]
    pub(crate) json: bool,
    /// Count the tenants with work by server, as well (JSON: `servers`)
    #[arg(long)]
    pub(crate) by_server: bool,
}

/// Canary, waves, error budget, selection and order of a fleet run (README section
/// "Rolling out to a big fleet").
#[derive(Debug, Args)]
#[command(next_help_heading = "Rollout")]
#[command(group(
    clap::ArgGroup::new("staged")
        .multiple(true)
        .args(["canary", "canary_tenants", "canary_per_server", "wave_size"])
))]
pub(crate) struct RolloutArgs {
    /// The first N tenants go first and alone: any failure among them stops the run before the rest start
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), conflicts_with_all = ["canary_tenants", "canary_per_server"])]
    pub(crate) canary: Option<u64>,
    /// This tenant goes first, with the other canaries and alone (repeatable)
    #[arg(
        long = "canary-tenant",
        value_name = "NAME",
        conflicts_with = "canary_per_server"
    )]
    pub(crate) canary_tenants: Vec<TenantName>,
    /// The first N tenants of each server go first and alone (a fleet over several servers)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) canary_per_server: Option<u64>,
    /// The rest in waves of N tenants, or P% of the tenants
    #[arg(long, value_name = "N|P%", value_parser = WaveSize::parse)]
    pub(crate) wave_size: Option<WaveSize>,
    /// The soak pause after the canary and between two waves (500ms, 30s, 1m, 1h)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "staged")]
    pub(crate) wave_pause: Option<Duration>,
    /// Error budget: start no further tenant once N have failed (those running finish)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_failures: Option<u64>,
    /// Error budget: start no further tenant once failures reach P% of the tenants (at least one)
    #[arg(long, value_name = "P%", value_parser = parse_percent)]
    pub(crate) max_failure_rate: Option<f64>,
    /// Only the tenants whose last attempt failed
    #[arg(long)]
    pub(crate) only_failed: bool,
    /// The order tenants are taken in (and canaries picked from)
    #[arg(long, value_enum, value_name = "ORDER", default_value = "name")]
    pub(crate) order_by: OrderArg,
    /// Only the tenants placed on this server (repeatable; `server list`); default: every
    /// server
    #[arg(long = "server", value_name = "SERVER")]
    pub(crate) servers: Vec<ServerName>,
}

/// The order of a fleet run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OrderArg {
    /// By tenant name
    Name,
    /// Oldest tenant first
    Created,
    /// Smallest tenant first, by its size on disk
    Size,
}

impl From<OrderArg> for TenantOrder {
    fn from(arg: OrderArg) -> Self {
        match arg {
            OrderArg::Name => TenantOrder::Name,
            OrderArg::Created => TenantOrder::Created,
            OrderArg::Size => TenantOrder::Size,
        }
    }
}

/// Parses `1%` or `1`: a percentage above 0, at most 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    let number = s.trim().strip_suffix('%').unwrap_or(s.trim());
    match number.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!(
            "invalid percentage {s:?}: give a number above 0 and at most 100, e.g. 1% or 0.5%"
        )),
    }
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse().map_err(|e: crate::Error| e.to_string())
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("how_far").required(true).args(["steps", "to", "all"])))]
#[command(group(clap::ArgGroup::new("which").required(true).args(["tenants", "all_tenants"])))]
pub(crate) struct RollbackArgs {
    /// A tenant to roll back (repeatable)
    #[arg(long = "tenant", value_name = "NAME")]
    pub(crate) tenants: Vec<TenantName>,
    /// Roll back every tenant (never the default)
    #[arg(long)]
    pub(crate) all_tenants: bool,
    /// Revert the newest N applied migrations
    #[arg(long, value_name = "N")]
    pub(crate) steps: Option<usize>,
    /// Revert every migration newer than this order (YYYY_MM_DD_NNNN)
    #[arg(long, value_name = "ORDER", value_parser = parse_order)]
    pub(crate) to: Option<i64>,
    /// Revert every applied migration
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) rollout: RolloutArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("script").required(true).args(["sql", "file"])))]
pub(crate) struct ExecArgs {
    /// The SQL to run in each tenant: one statement or a script
    #[arg(long, value_name = "TEXT")]
    pub(crate) sql: Option<String>,
    /// Read the SQL from this file
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Run it outside a transaction (VACUUM, CREATE INDEX CONCURRENTLY and the like)
    #[arg(long)]
    pub(crate) no_transaction: bool,
    /// Only this tenant (repeatable); default: every tenant
    #[arg(long = "tenant", value_name = "NAME")]
    pub(crate) tenants: Vec<TenantName>,
    #[command(flatten)]
    pub(crate) rollout: RolloutArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Only this tenant (repeatable)
    #[arg(long = "tenant", value_name = "NAME")]
    pub(crate) tenants: Vec<TenantName>,
    /// Print one JSON document instead of a table
    #[arg(long, conflicts_with = "prometheus")]
    pub(crate) json: bool,
    /// Print Prometheus gauges (text format) for node_exporter's textfile collector
    #[arg(long)]
    pub(crate) prometheus: bool,
    /// Exit 1, with the summary on stderr, unless the public schema and every tenant are current (a deploy gate)
    #[arg(long)]
    pub(crate) check: bool,
    /// What the fleet run ID (as migrate, rollback and exec print it) did: per tenant, the migrations it applied, reverted and failed
    #[arg(long = "run", value_name = "ID", conflicts_with = "check")]
    pub(crate) run: Option<String>,
    /// Group the tenants by server, with a summary per server (JSON: `servers`)
    #[arg(long, conflicts_with = "run")]
    pub(crate) by_server: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DriftArgs {
    /// Only this tenant (repeatable); it is compared with the others at its order among those named
    #[arg(long = "tenant", value_name = "NAME")]
    pub(crate) tenants: Vec<TenantName>,
    /// Print one JSON document instead of text
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// Write the report to this HTML file: inline styles and charts, no script, no link
    #[arg(long, value_name = "FILE")]
    pub(crate) html: PathBuf,
    /// Also compare each tenant's actual schema with the others at its order, as `drift`
    /// does (reads every tenant's catalog)
    #[arg(long)]
    pub(crate) drift: bool,
    /// Only this tenant (repeatable); default: every tenant
    #[arg(long = "tenant", value_name = "NAME")]
    pub(crate) tenants: Vec<TenantName>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCommand {
    /// Register a tenant, create its schema and apply every tenant migration, atomically
    Create {
        /// The tenant's name: lowercase letters, digits, '_' and '-', starting with a letter
        name: TenantName,
        /// The server to place it on (`server list`); default: the one with the fewest tenants
        #[arg(long, value_name = "SERVER")]
        server: Option<ServerName>,
    },
    /// List the registered tenants
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Register schemas that exist already (moving an existing deployment onto mtnt)
    Adopt {
        /// SQL LIKE pattern of the schema (database, file) names, e.g. 'tenant_%'
        #[arg(long, value_name = "PATTERN")]
        schema_like: String,
        /// Record every tenant migration up to this order as applied without running it
        #[arg(long, value_name = "ORDER", value_parser = parse_order)]
        baseline: Option<i64>,
        /// The server whose schemas (databases) to register (`server list`); default: the
        /// control database's own
        #[arg(long, value_name = "SERVER")]
        server: Option<ServerName>,
    },
    /// Move a tenant to another server: its writes paused (reads go on), its schema
    /// (database) copied (DDL and data), row counts checked, the registry switched, the
    /// source dropped; run again after a crash to finish
    Move {
        /// The tenant
        name: TenantName,
        /// The server to move it to (`server list`)
        #[arg(long, value_name = "SERVER")]
        to: ServerName,
        /// Keep the source schema (database) after the switch, read-only (the writes held
        /// back at the switch are ended, not let through to it)
        #[arg(long)]
        keep_source: bool,
    },
    /// Delete a tenant: its schema (database, file) with all its data, and its registry row
    Drop {
        /// The tenant
        name: TenantName,
        /// Confirm that the tenant's data is to be deleted
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServerCommand {
    /// Register a server; its URL is stored without the password, which comes from
    /// MTNT_SERVER_<NAME>_PASSWORD or PGPASSFILE/.pgpass when connecting
    Add {
        /// The server's name: lowercase letters, digits, '_' and '-', starting with a letter
        name: ServerName,
        /// Its URL, as postgres://user@host:5433/db (for database per tenant, the
        /// database to connect to for creating tenant databases)
        url: String,
        /// Register it without connecting first (a server that is not up yet); by
        /// default it must answer and not be a registered server under another name
        #[arg(long)]
        no_check: bool,
    },
    /// List the servers with how many tenants each holds (the control database's own is
    /// `default`)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a server that holds no tenants
    Remove {
        /// The server
        name: ServerName,
    },
    /// Stop placing new tenants on a server (it keeps its tenants, `migrate` still runs
    /// them); `default` for the control database's own
    Cordon {
        /// The server
        name: ServerName,
    },
    /// Let a cordoned server take new tenants again
    Uncordon {
        /// The server
        name: ServerName,
    },
    /// Move every tenant off a server, one after the other: cordoned first, each tenant to
    /// --to or placed among the other servers; run again to move what failed. Then
    /// `server remove` can remove it
    Drain {
        /// The server
        name: ServerName,
        /// The server to move them all to (default: each where placement puts it)
        #[arg(long, value_name = "SERVER")]
        to: Option<ServerName>,
        /// Keep each tenant's source schema (database) after its switch
        #[arg(long)]
        keep_source: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["checksums", "mark"])))]
pub(crate) struct RepairArgs {
    /// Record the code's checksum for applied migrations whose code changed on purpose
    #[arg(long)]
    pub(crate) checksums: bool,
    /// Set one migration's status without running it (needs --order and --tenant or --public)
    #[arg(long, value_enum, requires = "order")]
    pub(crate) mark: Option<MarkArg>,
    /// The migration to mark (YYYY_MM_DD_NNNN)
    #[arg(long, value_name = "ORDER", value_parser = parse_order)]
    pub(crate) order: Option<i64>,
    /// The tenant (repeatable with --checksums; default: every tenant)
    #[arg(long = "tenant", value_name = "NAME")]
    pub(crate) tenants: Vec<TenantName>,
    /// Mark a public migration instead of a tenant's
    #[arg(long, conflicts_with = "tenants")]
    pub(crate) public: bool,
}

/// What `repair --mark` records.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum MarkArg {
    /// It took effect: record it as applied
    Completed,
    /// Run it again on the next migrate
    Pending,
}

/// Parses `2024_01_01_0001` or `202401010001`; the date must exist, as in the attribute.
pub(crate) fn parse_order(s: &str) -> Result<i64, mtnt_syntax::OrderError> {
    s.parse::<mtnt_syntax::Order>().map(mtnt_syntax::Order::get)
}
