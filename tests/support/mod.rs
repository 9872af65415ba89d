//! Test support

pub mod cli;
pub mod cluster;
pub mod faults;
pub mod models;
pub mod mysql;
pub mod postgres;
pub mod sqlite;

use std::future::Future;

/// One test per tenancy model for each scenario `async fn scenario(&Model)` of the
/// calling file, in a module named after the scenario (`scenario::sqlite`,
/// `scenario::pg_schema`, `scenario::pg_database`, `scenario::mysql`), each behind its
/// engine's feature; a scenario
/// that SQLite does not pass because of a documented limit says why, and is ignored there.
#[macro_export]
macro_rules! scenarios {
    ($($scenario:ident $(: sqlite ignored = $why:literal)?),* $(,)?) => {$(
        mod $scenario {
            use $crate::models::{Kind, Model};

            async fn run(kind: Kind) {
                let model = Model::new(kind, stringify!($scenario)).await;
                super::$scenario(&model).await;
                model.finish().await;
            }

            #[cfg(feature = "sqlite")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[ignore = $why])?
            async fn sqlite() {
                run(Kind::Sqlite).await
            }

            #[cfg(feature = "postgres")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg_schema() {
                run(Kind::PgSchema).await
            }

            #[cfg(feature = "postgres")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg_database() {
                run(Kind::PgDatabase).await
            }

            #[cfg(feature = "mysql")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                run(Kind::MySql).await
            }
        }
    )*};
}

/// [`scenarios!`] on the two PostgreSQL models alone (`scenario::pg_schema`,
/// `scenario::pg_database`): what only PostgreSQL has, as fleets across servers.
#[macro_export]
macro_rules! scenarios_pg {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use $crate::models::{Kind, Model};

            async fn run(kind: Kind) {
                let model = Model::new(kind, stringify!($scenario)).await;
                super::$scenario(&model).await;
                model.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg_schema() {
                run(Kind::PgSchema).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg_database() {
                run(Kind::PgDatabase).await
            }
        }
    )*};
}

/// Runs the future `cleanup` makes to completion from a `Drop`, which cannot await and may
/// run inside a runtime: on a thread of its own, with a runtime of its own. `what` names it
/// in warnings.
pub fn block_on_in_thread<F, Fut>(what: &str, cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let joined = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(cleanup()),
            Err(e) => eprintln!("warning: no runtime to clean up with: {e}"),
        }
    })
    .join();
    if joined.is_err() {
        eprintln!("warning: cleaning up {what} panicked");
    }
}

/// Creates each of the tenants `names` with `migrator`, panicking with the name on failure.
pub async fn create_tenants<S: AsRef<str>>(migrator: &mtnt::Migrator, names: &[S]) {
    for n in names {
        let n = n.as_ref();
        let name = mtnt::TenantName::new(n).unwrap_or_else(|e| panic!("{e}"));
        migrator
            .create_tenant(&name)
            .await
            .unwrap_or_else(|e| panic!("create {n}: {e}"));
    }
}

/// `text` with the SQL `LIKE` wildcards `_` and `%` (and the escape `\\`) escaped.
pub fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('_', "\\_")
        .replace('%', "\\%")
}

/// The SQL `LIKE` pattern of the names that start with `prefix`.
pub fn like_prefix(prefix: &str) -> String {
    format!("{}%", escape_like(prefix))
}
