//! The syntax that `#[mtnt::migration]` and the mtnt runtime and CLI share, so that the
//! attribute and the command line accept the same text and print it the same way:
//!
//! - [`Order`]: a migration's `YYYY_MM_DD_NNNN` order, whose date must exist;
//! - [`parse_duration`] and [`format_duration`]: `500ms`, `5s`, `1.5s`, `2m`, `1h`, and
//!   `0` for no limit.
//!
//! It has no dependencies, so the proc-macro crate can use it as well.
#![warn(missing_docs, unreachable_pub)]
// Orders are written `YYYY_MM_DD_NNNN`, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

mod duration;
mod order;

pub use duration::{format_duration, parse_duration, DurationError};
pub use order::{format_order, Order, OrderError};
