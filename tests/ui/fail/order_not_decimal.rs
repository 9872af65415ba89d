#[mtnt::migration(scope = "tenant", order = 0x2024_0101_0001)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
        .await
}

fn main() {}
