// A run hook gets the run, not a connection; after_tenant gets the outcome by reference.
#[mtnt::hook(before_run)]
async fn start(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx;
    Ok(())
}

#[mtnt::hook(after_tenant)]
async fn notify(ctx: &mut mtnt::Ctx<'_>, outcome: mtnt::TenantOutcome<'_>) -> mtnt::Result<()> {
    let _ = (ctx, outcome);
    Ok(())
}

fn main() {}
