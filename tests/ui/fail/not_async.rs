#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001)]
fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx;
    Ok(())
}

fn main() {}
