//! A small app as users write it, for the binary-level CLI tests (`tests/cli.rs`).

#[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE plans (id bigserial PRIMARY KEY, name text NOT NULL)")
        .await
}

#[mtnt::migration(scope = "tenant", order = 2024_01_01_0002, down = drop_accounts)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text UNIQUE)")
        .await
}

async fn drop_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("DROP TABLE accounts").await
}

#[mtnt::migration(scope = "tenant", order = 2024_01_02_0001, down = drop_invoices)]
async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    // A tenant named `broken` fails here, so the tests can see one bad tenant among good ones.
    if ctx.tenant().is_some_and(|t| t.name.as_str() == "broken") {
        ctx.execute(
            "CREATE TABLE invoices (id bigserial PRIMARY KEY); SELECT * FROM no_such_table",
        )
        .await?;
    }
    ctx.execute("CREATE TABLE IF NOT EXISTS invoices (id bigserial PRIMARY KEY, account_id bigint REFERENCES accounts (id))")
        .await
}

async fn drop_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("DROP TABLE invoices").await
}

#[mtnt::migration(scope = "tenant", order = 2024_01_03_0001)]
async fn add_account_names(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    // A careless migration that panics with the database URL in its message, for the
    // redaction tests (tests/redaction.rs): tenant `leaky`, when MTNT_TEST_LEAK is set.
    if ctx.tenant().is_some_and(|t| t.name.as_str() == "leaky")
        && std::env::var_os("MTNT_TEST_LEAK").is_some()
    {
        panic!(
            "cannot go on with {}",
            std::env::var("DATABASE_URL").unwrap_or_default()
        );
    }
    ctx.execute("ALTER TABLE accounts ADD COLUMN name text NOT NULL DEFAULT ''")
        .await
}

fn main() {
    mtnt::run!()
}
