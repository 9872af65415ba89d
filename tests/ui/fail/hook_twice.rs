#[mtnt::hook(before_run)]
#[mtnt::hook(after_run)]
async fn log(run: &mtnt::RunInfo<'_>) -> mtnt::Result<()> {
    let _ = run;
    Ok(())
}

fn main() {}
