// The attribute and the runtime read orders and durations with the same rules
// (mtnt-syntax): a fractional timeout, and an order that prints as it is written.

use std::time::Duration;

#[mtnt::migration(
    scope = "tenant",
    order = 2024_02_29_0001,
    lock_timeout = "1.5s",
    statement_timeout = "2min"
)]
async fn leap_day(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("SELECT 1").await
}

#[mtnt::migration(scope = "tenant", order = 2024_03_01_0001, lock_timeout = "off")]
async fn no_lock_limit(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
    ctx.execute("SELECT 1").await
}

fn main() {
    let set = mtnt::MigrationSet::registered_in(module_path!()).expect("valid set");
    let all: Vec<_> = set.iter().collect();

    let leap_day = all[0];
    let order: mtnt::Order = "2024_02_29_0001".parse().unwrap();
    assert_eq!(leap_day.order(), order.get());
    assert_eq!(leap_day.to_string(), format!("{order} leap_day"));
    assert_eq!(leap_day.lock_timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(leap_day.lock_timeout(), mtnt::parse_duration("1.5s").ok());
    assert_eq!(leap_day.statement_timeout(), Some(Duration::from_secs(120)));

    assert_eq!(all[1].lock_timeout(), Some(Duration::ZERO));
    assert_eq!(all[1].statement_timeout(), None);

    // The CLI's `--to` rejects the dates the attribute rejects.
    assert!("2023_02_29_0001".parse::<mtnt::Order>().is_err());
}
