// Typed sqlx queries through `ctx.postgres()?`, `?` on sqlx errors, and a non-transactional
// idempotent backfill.

#[mtnt::migration(
    scope = "tenant",
    order = 2024_02_01_0001,
    transaction = false,
    idempotent = true
)]
async fn backfill_names(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM accounts WHERE name IS NULL")
        .fetch_all(ctx.postgres()?)
        .await?;
    for (id,) in rows {
        sqlx::query("UPDATE accounts SET name = 'user ' || id WHERE id = $1")
            .bind(id)
            .execute(ctx.postgres()?)
            .await?;
    }
    Ok(())
}

#[mtnt::migration(scope = "tenant", order = 2024_02_01_0002, down = undo_count)]
async fn count_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let tenant = ctx.tenant().map(|t| t.name.to_string());
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM accounts")
        .fetch_one(ctx.postgres()?)
        .await?;
    let _ = (tenant, n);
    Ok(())
}

async fn undo_count(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx.engine();
    Ok(())
}

fn main() {}
