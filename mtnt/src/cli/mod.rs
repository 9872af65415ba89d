mod args;
mod events;
mod failures;
mod fleet;
mod hints;
mod metrics;
#[cfg(feature = "otel")]
mod otel;
mod output;
mod plan;
mod progress;
mod report_html;
mod rollout;
mod run;
#[macro_use]
mod say;
pub mod scaffold;

pub use hints::{cli_fix, Report};
pub use run::{run_cli, run_cli_as};
