// What the macro registers, read back at run time: order, name, scope, flags,
// checksum and the location of the function.

mod migrations {
    /// Doc comments and other attributes stay on the function.
    #[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
    #[allow(clippy::needless_return)]
    pub async fn create_plans(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        return ctx
            .execute("CREATE TABLE plans (id bigserial PRIMARY KEY)")
            .await;
    }

    #[mtnt::migration(
        scope = "tenant",
        order = 2024_01_01_0002,
        name = "accounts",
        down = drop_accounts,
        transaction = false,
        idempotent = true,
        enabled = false
    )]
    async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)")
            .await
    }

    async fn drop_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("DROP TABLE accounts").await
    }

    // A raw identifier names the migration without its `r#`.
    #[mtnt::migration(scope = "tenant", order = 2024_01_02_0001)]
    async fn r#type(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute("CREATE TYPE mood AS ENUM ('ok')").await
    }

    // The attribute's arguments may come from a macro_rules! expansion.
    macro_rules! migration_at {
        ($order:expr, $name:ident) => {
            #[mtnt::migration(scope = "tenant", order = $order)]
            async fn $name(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
                ctx.execute("SELECT 1").await
            }
        };
    }
    migration_at!(2024_01_03_0001, from_macro);
}

fn main() {
    use mtnt::{MigrationSet, Scope};

    let set = MigrationSet::registered_in(module_path!()).expect("valid set");
    let all: Vec<_> = set.iter().collect();
    let orders: Vec<i64> = all.iter().map(|m| m.order()).collect();
    assert_eq!(
        orders,
        [202401010001, 202401010002, 202401020001, 202401030001]
    );

    let plans = all[0];
    assert_eq!(plans.name(), "create_plans");
    assert_eq!(plans.scope(), Scope::Public);
    assert!(!plans.is_reversible());
    assert!(plans.is_transactional());
    assert!(!plans.is_idempotent());
    assert!(plans.is_enabled());
    assert_eq!(plans.checksum().len(), 32);
    assert!(plans
        .checksum()
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert!(
        plans.location().file.ends_with("registered.rs"),
        "{}",
        plans.location()
    );
    assert_eq!(
        plans.location().line,
        8,
        "the line of the fn, not of the attribute"
    );
    assert_eq!(
        plans.location().module_path,
        concat!(module_path!(), "::migrations")
    );

    let accounts = all[1];
    assert_eq!(accounts.name(), "accounts");
    assert_eq!(accounts.scope(), Scope::Tenant);
    assert!(accounts.is_reversible());
    assert!(!accounts.is_transactional());
    assert!(accounts.is_idempotent());
    assert!(!accounts.is_enabled());
    assert_eq!(accounts.location().line, 23);
    assert_ne!(accounts.checksum(), plans.checksum());

    assert_eq!(all[2].name(), "type");
    assert_eq!(all[3].name(), "from_macro");
}
