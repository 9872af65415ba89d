pub mod scaffold;

/// Runs the CLI; returns the process exit code.
pub fn run_cli() -> i32 {
    0
}
