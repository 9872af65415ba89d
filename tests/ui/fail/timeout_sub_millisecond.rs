#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001, lock_timeout = "0.5ms")]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
        .await
}

fn main() {}
