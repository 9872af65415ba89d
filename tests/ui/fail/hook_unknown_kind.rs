#[mtnt::hook(before_migrate)]
async fn seed(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx;
    Ok(())
}

fn main() {}
