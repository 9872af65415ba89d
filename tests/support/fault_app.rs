//! The app the fault tests (`tests/pg_faults.rs`) kill, run four at a time, cut off and
//! block: a public ledger and five tenant migrations, one of them outside a transaction
//! and idempotent, one outside a transaction and not.
//!
//! Every migration appends `(tenant, order)` to `public.fault_ledger` as its last step,
//! in its own transaction where it has one, so the tests can count how often each
//! migration really ran. `MTNT_TEST_SLEEP_MS` makes every tenant migration sleep that
//! long (in the database) before its ledger entry, so that a kill lands mid-migration.
//!
//! The same app runs on MySQL/MariaDB (`tests/mysql_faults.rs`), where the ledger is
//! `<control database>.fault_ledger`, named by `MTNT_TEST_LEDGER`.

use mtnt::Ctx;

fn sleep_ms() -> u64 {
    std::env::var("MTNT_TEST_SLEEP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn is_mysql(ctx: &mut Ctx<'_>) -> bool {
    ctx.engine() == mtnt::Engine::MySql
}

/// Sleeps, then records that `order` ran in this tenant.
async fn finish(ctx: &mut Ctx<'_>, order: i64) -> mtnt::Result<()> {
    let ms = sleep_ms();
    if ms > 0 {
        let sleep = if is_mysql(ctx) {
            "DO SLEEP"
        } else {
            "SELECT pg_sleep"
        };
        ctx.execute(&format!("{sleep}({})", ms as f64 / 1000.0))
            .await?;
    }
    let tenant = ctx.tenant().map(|t| t.name.to_string()).unwrap_or_default();
    let ledger =
        std::env::var("MTNT_TEST_LEDGER").unwrap_or_else(|_| "public.fault_ledger".to_owned());
    ctx.execute(&format!(
        "INSERT INTO {ledger} (tenant, migration) VALUES ('{tenant}', {order})"
    ))
    .await
}

#[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
async fn create_ledger(ctx: &mut Ctx<'_>) -> mtnt::Result<()> {
    if is_mysql(ctx) {
        return ctx
            .execute(
                "CREATE TABLE fault_ledger (tenant varchar(64) NOT NULL, migration bigint NOT NULL, \
                 at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
            )
            .await;
    }
    ctx.execute(
        "CREATE TABLE fault_ledger (tenant text NOT NULL, migration bigint NOT NULL, \
         at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .await
}

#[mtnt::migration(scope = "tenant", order = 2024_01_02_0001)]
async fn create_a(ctx: &mut Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE a (id bigint PRIMARY KEY)")
        .await?;
    finish(ctx, 202401020001).await
}

// A short lock timeout of its own: the locked-table test blocks `a` and expects this
// migration to time out quickly, be retried, and then fail for that tenant only.
#[mtnt::migration(scope = "tenant", order = 2024_01_02_0002, lock_timeout = "300ms")]
async fn create_b(ctx: &mut Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE b (id bigint)").await?;
    ctx.execute("ALTER TABLE a ADD COLUMN note text").await?;
    finish(ctx, 202401020002).await
}

#[mtnt::migration(
    scope = "tenant",
    order = 2024_01_02_0003,
    transaction = false,
    idempotent = true
)]
async fn index_a(ctx: &mut Ctx<'_>) -> mtnt::Result<()> {
    let index = if is_mysql(ctx) {
        "CREATE INDEX IF NOT EXISTS a_note ON a (note(20))"
    } else {
        "CREATE INDEX IF NOT EXISTS a_note ON a (note)"
    };
    ctx.execute(index).await?;
    finish(ctx, 202401020003).await
}

#[mtnt::migration(scope = "tenant", order = 2024_01_02_0004)]
async fn create_c(ctx: &mut Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE c (id bigint)").await?;
    finish(ctx, 202401020004).await
}

// Not idempotent: re-running it after an interruption would fail on the existing table,
// so an interrupted run must stop this tenant and name `repair`.
#[mtnt::migration(scope = "tenant", order = 2024_01_02_0005, transaction = false)]
async fn create_d(ctx: &mut Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("CREATE TABLE d (id bigint)").await?;
    finish(ctx, 202401020005).await
}

fn main() {
    mtnt::run!()
}
