//! `cargo mtnt`: project helpers for mtnt, run as a cargo subcommand.
//!
//! Cargo runs `cargo mtnt new ...` as `cargo-mtnt mtnt new ...`; running the binary
//! directly as `cargo-mtnt new ...` works too.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand, ValueEnum};
use mtnt::__private::scaffold;

#[derive(Debug, Parser)]
#[command(name = "cargo", bin_name = "cargo")]
enum Cargo {
    /// Project helpers for mtnt migrations.
    Mtnt(MtntArgs),
}

#[derive(Debug, Args)]
#[command(version, about = "Project helpers for mtnt migrations", long_about = None)]
struct MtntArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a migration file from a stub and declare it in the directory's mod.rs.
    New(NewArgs),
}

#[derive(Debug, Args)]
struct NewArgs {
    /// Name of the migration and of its function: a snake_case Rust identifier, e.g. create_invoices.
    name: String,

    /// Where the migration runs: once in the public schema, or in every tenant.
    #[arg(long, value_enum)]
    scope: ScopeArg,

    /// Directory that holds the migration files and their mod.rs (created if missing).
    #[arg(long, default_value = "src/migrations")]
    dir: PathBuf,

    /// Generate no down function (the migration cannot be rolled back).
    #[arg(long)]
    irreversible: bool,

    /// Use this date (YYYY-MM-DD) instead of today's for the order.
    #[arg(long, env = "MTNT_TODAY", hide = true, value_parser = parse_date)]
    today: Option<NaiveDate>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScopeArg {
    /// Runs once, in the shared (public) schema or control database.
    Public,
    /// Runs in every tenant's schema or database.
    Tenant,
}

impl From<ScopeArg> for mtnt::Scope {
    fn from(scope: ScopeArg) -> Self {
        match scope {
            ScopeArg::Public => mtnt::Scope::Public,
            ScopeArg::Tenant => mtnt::Scope::Tenant,
        }
    }
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| format!("expected YYYY-MM-DD: {e}"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The arguments, with `mtnt` inserted when the binary was not started by cargo.
fn args() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).map(OsString::as_os_str) != Some(OsStr::new("mtnt")) {
        args.insert(1.min(args.len()), "mtnt".into());
    }
    args
}

fn run() -> anyhow::Result<()> {
    let Cargo::Mtnt(mtnt_args) = Cargo::try_parse_from(args()).unwrap_or_else(|e| e.exit());
    match mtnt_args.command {
        Command::New(args) => new(args),
    }
}

fn new(args: NewArgs) -> anyhow::Result<()> {
    let today = args
        .today
        .unwrap_or_else(|| chrono::Local::now().date_naive());
    let request = scaffold::NewMigration {
        name: args.name,
        scope: args.scope.into(),
        dir: args.dir,
        reversible: !args.irreversible,
        today,
    };
    let created = scaffold::create(&request)?;

    if created.dir_created {
        println!("Created directory {}", request.dir.display());
    }
    println!(
        "Created {} ({} migration, order {}{})",
        created.file.display(),
        request.scope,
        scaffold::order_literal(created.order),
        if request.reversible {
            ""
        } else {
            ", irreversible"
        },
    );
    if created.mod_rs_created {
        println!("Created {}", created.mod_rs.display());
    } else {
        println!("Updated {}", created.mod_rs.display());
    }
    if let Some(newest) = created.future_dated {
        println!(
            "note: the newest existing migration, {}, is dated after today; the new one follows it",
            scaffold::order_literal(newest)
        );
    }
    if created.mod_rs_created {
        println!("note: {}", scaffold::parent_module_hint(&request.dir));
    }
    Ok(())
}
