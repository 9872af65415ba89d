//! Migration `create_plans`, created by `cargo mtnt new`.
//!
//! Runs once, in the shared (public) schema or control database, inside a transaction
//! (add `transaction = false` to the attribute for statements that cannot).
//! Irreversible: it has no down function.

#[mtnt::migration(scope = "public", order = 2026_11_23_0001)]
async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE plans (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, seats integer NOT NULL); INSERT INTO plans (name, seats) VALUES ('free', 3), ('team', 50)").await
}
