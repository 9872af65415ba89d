//! mtnt in one minute, on SQLite (one database file per tenant, no server):
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! Version 1 of an app creates three tenants; version 2 adds two migrations and migrates
//! the fleet; then one tenant is rolled back one step. The files stay in
//! `target/quickstart-tenants/` for a look with `sqlite3` afterwards.

// Migration orders are written YYYY_MM_DD_NNNN, like in the attributes.
#![allow(clippy::inconsistent_digit_grouping)]

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

use mtnt::{
    Ctx, MigrateOptions, MigrationSet, Migrator, Result, RollbackTarget, SqliteBackend,
    StatusReport, TenantName,
};

/// Runs once, in the control file `mtnt_control.db`.
#[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
async fn create_plans(ctx: &mut Ctx<'_>) -> Result<()> {
    ctx.execute(
        "CREATE TABLE plans (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
         INSERT INTO plans (name) VALUES ('free'), ('pro')",
    )
    .await
}

/// Runs in every tenant file. No `down`: a rollback never passes it.
#[mtnt::migration(scope = "tenant", order = 2024_01_01_0002)]
async fn create_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
    ctx.execute(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
         INSERT INTO accounts (email) VALUES ('ada.lovelace@example.com'), ('alan.turing@example.com')",
    )
    .await
}

#[mtnt::migration(scope = "tenant", order = 2024_02_01_0001, down = drop_display_name)]
async fn add_display_name(ctx: &mut Ctx<'_>) -> Result<()> {
    ctx.execute("ALTER TABLE accounts ADD COLUMN display_name TEXT")
        .await
}

async fn drop_display_name(ctx: &mut Ctx<'_>) -> Result<()> {
    ctx.execute("ALTER TABLE accounts DROP COLUMN display_name")
        .await
}

/// A data migration: typed sqlx queries on the tenant's connection, in the migration's
/// transaction.
#[mtnt::migration(scope = "tenant", order = 2024_02_01_0002, down = clear_display_names)]
async fn backfill_display_names(ctx: &mut Ctx<'_>) -> Result<()> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, email FROM accounts WHERE display_name IS NULL")
            .fetch_all(ctx.sqlite()?)
            .await?;
    for (id, email) in rows {
        // "ada.lovelace@example.com" -> "Ada Lovelace"
        let local = email.split('@').next().unwrap_or_default();
        let name: Vec<String> = local.split('.').map(capitalize).collect();
        sqlx::query("UPDATE accounts SET display_name = ?1 WHERE id = ?2")
            .bind(name.join(" "))
            .bind(id)
            .execute(ctx.sqlite()?)
            .await?;
    }
    Ok(())
}

async fn clear_display_names(ctx: &mut Ctx<'_>) -> Result<()> {
    ctx.execute("UPDATE accounts SET display_name = NULL").await
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `202402010002` -> `2024_02_01_0002`.
fn order(order: Option<i64>) -> String {
    match order {
        Some(o) => {
            let s = format!("{o:012}");
            format!("{}_{}_{}_{}", &s[0..4], &s[4..6], &s[6..8], &s[8..])
        }
        None => "-".to_owned(),
    }
}

fn print_status(status: &StatusReport) {
    println!(
        "  {:<10} {:<17} {:>7}  state",
        "tenant", "applied", "pending"
    );
    for t in &status.tenants {
        let state = match (&t.failed, t.pending) {
            (Some(f), _) => format!("failed at {}", order(Some(f.order))),
            (None, 0) => "current".to_owned(),
            (None, _) => "behind".to_owned(),
        };
        println!(
            "  {:<10} {:<17} {:>7}  {state}",
            t.tenant.as_str(),
            order(t.applied_order),
            t.pending
        );
    }
    println!("  {}", status.summary());
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/quickstart-tenants");
    // Start from scratch on every run.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(mtnt::Error::other)?;
    }
    println!("SQLite tenants in {}/\n", dir.display());

    // Version 1 of the app knows the first two migrations.
    let all = MigrationSet::registered()?;
    let v1 = MigrationSet::new(all.iter().filter(|m| m.order() < 2024_02_01_0000))?;
    let migrator = Migrator::builder(SqliteBackend::open(&dir).await?)
        .migrations(v1)
        .build()?;
    let names: Vec<TenantName> = ["acme", "globex", "initech"]
        .into_iter()
        .map(TenantName::new)
        .collect::<Result<_>>()?;
    for name in &names {
        // Registry row, file and every tenant migration, all or nothing.
        migrator.create_tenant(name).await?;
        println!("created tenant {:<8} -> {name}.db", name.as_str());
    }

    // Version 2 ships two more migrations: migrate the fleet.
    let migrator = Migrator::builder(SqliteBackend::open(&dir).await?)
        .migrations(all)
        .build()?;
    let report = migrator.migrate(&MigrateOptions::new()).await?;
    println!(
        "\nmigrate: {} migrations applied to {} tenants in {:.0?}",
        report.migrations_applied, report.tenants_migrated, report.elapsed
    );
    for failure in &report.failures {
        println!("  {} failed: {}", failure.tenant, failure.error);
    }
    print_status(&migrator.status(&[]).await?);

    // The backfill's work, read straight from acme's file.
    let acme_file = SqliteConnectOptions::new().filename(dir.join("acme.db"));
    let mut conn = SqliteConnection::connect_with(&acme_file).await?;
    let accounts: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT email, display_name FROM accounts ORDER BY id")
            .fetch_all(&mut conn)
            .await?;
    conn.close().await?;
    println!("\nacme.db accounts after the backfill:");
    for (email, display_name) in accounts {
        println!(
            "  {email:<26} {}",
            display_name.as_deref().unwrap_or("NULL")
        );
    }

    let acme = &names[0];
    let rolled = migrator.rollback(acme, RollbackTarget::Steps(1)).await?;
    for (o, name) in &rolled.reverted {
        println!(
            "\nrollback {acme} by one step: reverted {} {name}",
            order(Some(*o))
        );
    }
    print_status(&migrator.status(&[]).await?);
    println!("\nrun `cargo run --example quickstart` again to start over");
    Ok(())
}
