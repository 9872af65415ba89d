//! `drift` on PostgreSQL, schema per tenant, for what the behaviour suite's portable SQL
//! cannot make on every engine: views, functions, triggers, check constraints, sequences,
//! and a tenant whose schema is gone. Each kind changed in one tenant is found and named;
//! the tenants left alone are not reported. (Columns and indexes: `tests/behaviour.rs`.)
#![cfg(feature = "postgres")]
// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use mtnt::{MigrationSet, Migrator, PostgresBackend, TenantName};
use mtnt_test_support::postgres::TestDb;

mod schema {
    #[mtnt::migration(scope = "tenant", order = 2024_08_01_0001)]
    async fn create_orders(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        ctx.execute(
            "CREATE SEQUENCE order_numbers;
             CREATE TABLE orders (id bigserial PRIMARY KEY, total numeric CHECK (total >= 0),
                                  number bigint DEFAULT nextval('order_numbers'));
             CREATE VIEW big_orders AS SELECT id, total FROM orders WHERE total > 100;
             CREATE FUNCTION order_total(o orders) RETURNS numeric LANGUAGE sql AS 'SELECT o.total';
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
             CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();",
        )
        .await
    }
}

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_functions_triggers_constraints_and_sequences_are_compared() {
    let db = TestDb::create("drift").await;
    let pool = db.pool(4).await;
    let set = MigrationSet::registered_in("drift::schema").unwrap();
    let migrator = Migrator::builder(PostgresBackend::new(pool.clone()))
        .migrations(set)
        .build()
        .unwrap();
    let tenants = [
        "ok1", "ok2", "ok3", "view", "func", "trig", "chk", "seq", "gone",
    ];
    for t in tenants {
        migrator.create_tenant(&name(t)).await.unwrap();
    }
    let report = migrator.drift(&[]).await.unwrap();
    assert!(report.is_clean(), "{report:#?}");

    for sql in [
        "CREATE OR REPLACE VIEW view.big_orders AS SELECT id, total FROM view.orders WHERE total > 1000",
        "CREATE OR REPLACE FUNCTION func.order_total(o func.orders) RETURNS numeric LANGUAGE sql AS 'SELECT o.total * 2'",
        "DROP TRIGGER orders_touch ON trig.orders",
        "ALTER TABLE chk.orders DROP CONSTRAINT orders_total_check, ADD CONSTRAINT orders_total_check CHECK (total > 0)",
        "ALTER SEQUENCE seq.order_numbers INCREMENT BY 10",
        "DROP SCHEMA gone CASCADE",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }

    let report = migrator.drift(&[]).await.unwrap();
    assert_eq!(report.tenants, tenants.len());
    let order = &report.orders[0];
    assert_eq!(order.reference_tenants, 3, "{report:#?}");
    let said = |tenant: &str| -> String {
        let d = order.drifted.iter().find(|d| d.tenant.as_str() == tenant);
        let d = d.unwrap_or_else(|| panic!("{tenant} not reported: {report:#?}"));
        let what: Vec<String> = d.differences.iter().map(ToString::to_string).collect();
        what.join("; ")
    };
    assert!(
        said("view").starts_with("view big_orders changed: "),
        "{}",
        said("view")
    );
    assert!(said("view").contains("1000"), "{}", said("view"));
    assert!(
        said("func").starts_with("function order_total(o orders) changed: "),
        "{}",
        said("func")
    );
    assert_eq!(said("trig"), "trigger orders.orders_touch missing");
    assert_eq!(
        said("chk"),
        "constraint orders.orders_total_check changed: CHECK ((total >= (0)::numeric)) -> CHECK ((total > (0)::numeric))"
    );
    assert_eq!(
        said("seq"),
        "sequence order_numbers changed: bigint increment 1 -> bigint increment 10"
    );
    assert_eq!(order.drifted.len(), 5, "{report:#?}");
    // The tenant without its schema is not read, and named; the others still are.
    assert_eq!(report.unreadable.len(), 1, "{report:#?}");
    assert_eq!(report.unreadable[0].tenant.as_str(), "gone");
    assert!(report.unreadable[0].error.contains("gone"), "{report:#?}");
    db.drop_db().await;
}
