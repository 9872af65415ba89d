#[mtnt::migration(scope = "tenant", order = 2024_01_01_0001)]
struct CreateAccounts;

fn main() {}
