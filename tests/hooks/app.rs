//! The hook tests' CLI binary (`mtnt-hooks-app`): their migrations and hooks behind
//! `mtnt::run!()`, which runs every registered hook.

// The constants and the event log are for the tests; the binary only registers.
#[allow(dead_code)]
mod defs;

fn main() {
    mtnt::run!()
}
