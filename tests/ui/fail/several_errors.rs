// Every problem is reported at once: the arguments and the signature.
#[mtnt::migration(scope = "tenant", order = 2024_02_30_0001, idempotent = yes)]
fn create_accounts(ctx: &mut mtnt::Ctx<'_>, table: &str) {
    let _ = (ctx, table);
}

fn main() {}
