use std::rc::Rc;

#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001, down = drop_accounts)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
        .await
}

async fn drop_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let table = Rc::new("accounts");
    ctx.execute("SELECT 1").await?;
    ctx.execute(&format!("DROP TABLE {table}")).await
}

fn main() {}
