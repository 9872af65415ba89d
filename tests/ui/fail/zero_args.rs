#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001)]
async fn create_accounts() -> mtnt::Result<()> {
    Ok(())
}

fn main() {}
