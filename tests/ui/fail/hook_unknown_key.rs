#[mtnt::hook(before_tenant, order = 2024_01_01_0001)]
async fn seed(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx;
    Ok(())
}

fn main() {}
