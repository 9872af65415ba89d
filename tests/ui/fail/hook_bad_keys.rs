// Two kinds, a kind as a key, a key without a value, values of the wrong kind, a
// repeated key: every error at once.
#[mtnt::hook(before_tenant, after_tenant)]
async fn one(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx;
    Ok(())
}

#[mtnt::hook(kind = "before_run")]
async fn two(run: &mtnt::RunInfo<'_>) -> mtnt::Result<()> {
    let _ = run;
    Ok(())
}

#[mtnt::hook(after_run, name, enabled = "no", name = "x", name = "y")]
async fn three(run: &mtnt::RunInfo<'_>) -> mtnt::Result<()> {
    let _ = run;
    Ok(())
}

#[mtnt::hook(before_tenant = true, name = "")]
async fn four(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    let _ = ctx;
    Ok(())
}

fn main() {}
