// `idempotent` decides whether an interrupted migration is re-run, and only a migration
// outside a transaction can be interrupted half way.
#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001, idempotent = true)]
async fn backfill_names(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("UPDATE accounts SET name = email WHERE name IS NULL")
        .await
}

fn main() {}
