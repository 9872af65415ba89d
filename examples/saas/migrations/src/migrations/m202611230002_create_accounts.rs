//! Migration `create_accounts`, created by `cargo mtnt new`.
//!
//! Runs in every tenant's schema or database, inside a transaction
//! (add `transaction = false` to the attribute for statements that cannot).

#[mtnt::migration(scope = "tenant", order = 2026_11_23_0002, down = create_accounts_down)]
async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, created_at timestamptz NOT NULL DEFAULT now())").await
}

async fn create_accounts_down(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("DROP TABLE accounts").await
}
