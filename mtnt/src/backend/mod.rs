mod connect;
mod engine;
mod invoke;
mod mysql;
mod postgres;
mod session;
mod sql;
mod sqlite;

pub use connect::{connect, ConnectOptions};
pub use engine::{Engine, Tenancy};
pub(crate) use invoke::{exec_mysql, exec_postgres, exec_sqlite};
pub use mysql::MySqlBackend;
pub use postgres::PostgresBackend;
pub use session::{Backend, Direction, Session, Target};
pub use sqlite::SqliteBackend;
