//! The migrations of the example SaaS app: a library crate, as in a real workspace, so that
//! the app binary, its admin tools and its tests share them.

mod migrations;
