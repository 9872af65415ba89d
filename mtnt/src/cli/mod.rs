mod args;
mod output;
mod progress;
mod run;
pub mod scaffold;

pub use run::run_cli;
