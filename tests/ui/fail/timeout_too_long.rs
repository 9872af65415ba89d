#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001, statement_timeout = "600h")]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
        .await
}

fn main() {}
