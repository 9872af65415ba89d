// after_tenant takes the outcome too; the run hooks take only the run.
#[mtnt::hook(after_tenant)]
async fn notify(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx;
    Ok(())
}

#[mtnt::hook(before_run)]
async fn start(run: &mtnt::RunInfo<'_>, ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = (run, ctx);
    Ok(())
}

#[mtnt::hook(after_run)]
async fn done() -> mtnt::Result<()> {
    Ok(())
}

fn main() {}
