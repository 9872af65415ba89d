mod args;
mod failures;
mod hints;
mod output;
mod progress;
mod run;
#[macro_use]
mod say;
pub mod scaffold;

pub use hints::cli_fix;
pub use run::{run_cli, run_cli_as};
