#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>, table: &str) -> mtnt::Result<()> {
    ctx.execute(table).await
}

fn main() {}
