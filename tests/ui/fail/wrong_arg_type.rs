#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001)]
async fn create_accounts(sql: &str) -> mtnt::Result<()> {
    let _ = sql;
    Ok(())
}

fn main() {}
