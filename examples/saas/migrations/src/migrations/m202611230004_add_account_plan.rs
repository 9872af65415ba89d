//! Migration `add_account_plan`, created by `cargo mtnt new`.
//!
//! Runs in every tenant's schema or database, inside a transaction
//! (add `transaction = false` to the attribute for statements that cannot).

#[mtnt::migration(scope = "tenant", order = 2026_11_23_0004, down = add_account_plan_down)]
async fn add_account_plan(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    // Schema change and backfill in one transaction: typed sqlx calls on the live connection.
    ctx.execute("ALTER TABLE accounts ADD COLUMN plan text")
        .await?;
    let free: String = sqlx::query_scalar("SELECT name FROM public.plans ORDER BY seats LIMIT 1")
        .fetch_one(ctx.postgres()?)
        .await?;
    sqlx::query("UPDATE accounts SET plan = $1 WHERE plan IS NULL")
        .bind(free)
        .execute(ctx.postgres()?)
        .await?;
    ctx.execute("ALTER TABLE accounts ALTER COLUMN plan SET NOT NULL")
        .await
}

async fn add_account_plan_down(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("ALTER TABLE accounts DROP COLUMN plan").await
}
