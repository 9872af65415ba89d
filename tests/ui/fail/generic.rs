#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001)]
async fn create_accounts<T: Default>(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = T::default();
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
        .await
}

fn main() {}
