//! UI tests of `#[mtnt::migration]`: what compiles, and the errors of what does not.
//!
//! Regenerate the expected errors with `TRYBUILD=overwrite cargo test --test macro_ui`
//! and read every changed `.stderr` before committing it.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
