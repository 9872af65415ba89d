//! Migration `create_invoices`, created by `cargo mtnt new`.
//!
//! Runs in every tenant's schema or database, inside a transaction
//! (add `transaction = false` to the attribute for statements that cannot).

#[mtnt::migration(scope = "tenant", order = 2026_11_23_0003, down = create_invoices_down)]
async fn create_invoices(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute(
        "CREATE TABLE invoices (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts (id), cents bigint NOT NULL);
         CREATE INDEX invoices_account_id ON invoices (account_id)",
    )
    .await
}

async fn create_invoices_down(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("DROP TABLE invoices").await
}
