#[mtnt::hook(before_tenant)]
fn seed(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx;
    Ok(())
}

#[mtnt::hook(after_tenant)]
fn notify(ctx: &mut mtnt::Ctx<'_>, outcome: &mtnt::TenantOutcome<'_>) -> mtnt::Result<()> {
    let _ = (ctx, outcome);
    Ok(())
}

fn main() {}
