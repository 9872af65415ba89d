mod connect;
mod engine;
mod postgres;
mod session;
mod sqlite;
mod sql;

pub use connect::connect;
pub use engine::{Engine, Tenancy};
pub use session::{Backend, Direction, Session, Target};
