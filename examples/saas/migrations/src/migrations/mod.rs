//! Database migrations, one file each. `cargo mtnt new` adds them here, sorted by order.

mod m202611230001_create_plans;
mod m202611230002_create_accounts;
mod m202611230003_create_invoices;
mod m202611230004_add_account_plan;
