//! The example SaaS app's binary: the whole mtnt CLI over the `saas_migrations` crate.
//!
//! Naming the crate in `mtnt::run!` keeps its migrations linked in; without it the linker
//! drops them, and mtnt reports an empty registry.

fn main() {
    mtnt::run!(saas_migrations)
}
