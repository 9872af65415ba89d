#[mtnt::hook(before_tenant)]
async fn seed(ctx: &mut mtnt::Ctx<'_>) -> Option<()> {
    let _ = ctx;
    Some(())
}

#[mtnt::hook(after_run)]
async fn done(run: &mtnt::RunInfo<'_>) {
    let _ = run;
}

fn main() {}
