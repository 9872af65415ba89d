#[mtnt::hook]
async fn seed(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx;
    Ok(())
}

#[mtnt::hook(name = "notify")]
async fn notify(run: &mtnt::RunInfo<'_>) -> mtnt::Result<()> {
    let _ = run;
    Ok(())
}

fn main() {}
