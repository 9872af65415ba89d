//! An engine that mtnt does not ship, written against mtnt's public API alone: tenants as
//! JSON documents in a directory (see `engine.rs` for the files, the transactions and the
//! statement language), migrated by [`mtnt::Migrator`] like any other engine.
//!
//! ```text
//! cargo run --example json_engine            # in a temporary directory, removed after
//! cargo run --example json_engine -- ./docs  # in ./docs, kept for a look
//! ```
//!
//! The demo creates three tenants at the first version, migrates the fleet to the next,
//! rolls one tenant back by one migration and prints the status.

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

// The tests (tests/json_engine.rs) use more of the engine than the demo does.
#[allow(dead_code)]
mod engine;

use engine::{JsonBackend, JsonSession};
use mtnt::{MigrateOptions, MigrationSet, Migrator, RollbackTarget, TenantName};

/// The first version of the app.
mod v1 {
    use mtnt::{Ctx, Result};

    #[mtnt::migration(scope = "public", order = 2025_01_01_0001)]
    async fn create_plans(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute(
            r#"CREATE COLLECTION plans
               INSERT INTO plans {"name": "free", "seats": 3}
               INSERT INTO plans {"name": "team", "seats": 50}"#,
        )
        .await
    }

    #[mtnt::migration(scope = "tenant", order = 2025_01_01_0002, down = drop_accounts)]
    async fn create_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE COLLECTION accounts").await
    }

    async fn drop_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("DROP COLLECTION accounts").await
    }
}

/// The next version.
mod v2 {
    use super::JsonSession;
    use mtnt::{Ctx, Result};

    /// Typed access: the engine's own connection, as its own type.
    #[mtnt::migration(scope = "tenant", order = 2025_02_01_0001, down = remove_owner)]
    async fn seed_owner(ctx: &mut Ctx<'_>) -> Result<()> {
        let tenant = ctx.tenant().expect("a tenant migration").name.to_string();
        let accounts = ctx.custom::<JsonSession>()?.collection("accounts")?;
        accounts.push(serde_json::json!({ "email": format!("owner@{tenant}.example") }));
        Ok(())
    }

    async fn remove_owner(ctx: &mut Ctx<'_>) -> Result<()> {
        let tenant = ctx.tenant().expect("a tenant migration").name.to_string();
        ctx.execute(&format!(
            r#"DELETE FROM accounts WHERE email = "owner@{tenant}.example""#
        ))
        .await
    }

    #[mtnt::migration(scope = "tenant", order = 2025_02_01_0002, down = remove_roles)]
    async fn add_roles(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute(r#"ADD FIELD accounts.role DEFAULT "member""#)
            .await
    }

    async fn remove_roles(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("REMOVE FIELD accounts.role").await
    }
}

fn migrator(dir: &std::path::Path, prefix: &str) -> mtnt::Result<Migrator> {
    Migrator::builder(JsonBackend::open(dir)?)
        .migrations(MigrationSet::registered_in(prefix)?)
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temporary;
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            temporary = tempfile::tempdir()?;
            temporary.path().to_owned()
        }
    };
    println!("documents in {}", dir.display());

    let first = migrator(&dir, "json_engine::v1")?;
    for name in ["acme", "globex", "initech"] {
        let tenant = first.create_tenant(&TenantName::new(name)?).await?;
        println!(
            "created tenant {} (document {}.json)",
            tenant.name, tenant.storage
        );
    }

    let both = migrator(&dir, "json_engine")?;
    let report = both.migrate(&MigrateOptions::new()).await?;
    println!(
        "migrated: {} public, {} tenant migrations in {} of {} tenants, {} failed",
        report.public_applied,
        report.migrations_applied,
        report.tenants_migrated,
        report.tenants_total,
        report.failures.len()
    );

    let globex = TenantName::new("globex")?;
    let rolled = both.rollback(&globex, RollbackTarget::Steps(1)).await?;
    for (order, name) in &rolled.reverted {
        println!("rolled back {order} {name} in globex");
    }

    let status = both.status(&[]).await?;
    println!("status: {}", status.summary());
    for tenant in &status.tenants {
        println!(
            "  {:<8} applied {:?}, {} pending",
            tenant.tenant.as_str(),
            tenant.applied_order,
            tenant.pending
        );
    }
    let acme = std::fs::read_to_string(dir.join("acme.json"))?;
    println!("acme.json:\n{acme}");
    Ok(())
}
