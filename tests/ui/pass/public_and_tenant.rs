// The two scopes with every default, and a tenant migration with a `down`.

#[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE plans (id bigserial PRIMARY KEY, name text NOT NULL)")
        .await
}

#[mtnt::migration(scope = "tenant", order = 2024_01_01_0002, down = drop_accounts)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text UNIQUE)")
        .await
}

async fn drop_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("DROP TABLE accounts").await
}

fn main() {}
