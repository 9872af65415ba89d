#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001, down = drop_accounts)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
        .await
}

async fn drop_accounts(ctx: &mut mtnt::Ctx<'_>) -> Result<(), String> {
    ctx.execute("DROP TABLE accounts")
        .await
        .map_err(|e| e.to_string())
}

fn main() {}
