use std::rc::Rc;

#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let table = Rc::new("accounts");
    ctx.execute("SELECT 1").await?;
    ctx.execute(&format!("CREATE TABLE {table} (id bigserial PRIMARY KEY)"))
        .await
}

fn main() {}
