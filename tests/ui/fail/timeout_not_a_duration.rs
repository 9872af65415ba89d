#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001, lock_timeout = "5", statement_timeout = 30)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
        .await
}

fn main() {}
