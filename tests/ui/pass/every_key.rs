// Every optional key, in any order, with a trailing comma, and a `down` given by a path.

use mtnt::{Ctx, Result};

#[mtnt::migration(
    enabled = false,
    idempotent = true,
    transaction = false,
    down = rollbacks::drop_email_index,
    name = "add_email_index",
    order = 2024_03_15_0001,
    scope = "tenant",
    lock_timeout = "2s",
    statement_timeout = "0",
)]
pub async fn create_index(ctx: &mut Ctx<'_>) -> Result<()> {
    ctx.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email)")
        .await
}

#[mtnt::migration(
    scope = "public",
    order = 2024_03_15_0002,
    transaction = true,
    idempotent = false,
    enabled = true
)]
async fn explicit_defaults(ctx: &mut Ctx<'_>) -> Result<()> {
    ctx.execute("SELECT 1").await
}

mod rollbacks {
    pub(crate) async fn drop_email_index(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("DROP INDEX IF EXISTS accounts_email").await
    }
}

fn main() {}
