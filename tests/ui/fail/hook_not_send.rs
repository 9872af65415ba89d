#[mtnt::hook(after_tenant)]
async fn notify(ctx: &mut mtnt::Ctx<'_>, outcome: &mtnt::TenantOutcome<'_>) -> mtnt::Result<()> {
    let counter = std::rc::Rc::new(outcome.applied());
    ctx.execute("SELECT 1").await?;
    let _ = counter;
    Ok(())
}

fn main() {}
