//! What the code that `#[mtnt::migration]` generates calls, besides the registry.

use std::future::Future;

use crate::{Ctx, Result};

/// The down function a `down = path` names: an `async fn(ctx: &mut Ctx<'_>) -> Result<()>`.
///
/// The marker `M` and the second impl, which never applies, are there for the error
/// message: with a single blanket impl the compiler would report the impl's failing
/// condition (`Result<(), Error>` is not a future), not this trait's message.
#[diagnostic::on_unimplemented(
    message = "`down` must name an `async fn(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()>`",
    label = "not an `async fn(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()>`",
    note = "the down function has the same signature as the migration: an `async fn` that takes `ctx: &mut mtnt::Ctx<'_>` and returns `mtnt::Result<()>`"
)]
pub trait DownFn<'a, 'c: 'a, M> {
    /// What calling it returns.
    type Future: Future<Output = Result<()>> + 'a;

    /// Calls it.
    fn call(self, ctx: &'a mut Ctx<'c>) -> Self::Future;
}

impl<'a, 'c: 'a, F, Fut> DownFn<'a, 'c, (Fut,)> for F
where
    F: FnOnce(&'a mut Ctx<'c>) -> Fut,
    Fut: Future<Output = Result<()>> + 'a,
{
    type Future = Fut;

    fn call(self, ctx: &'a mut Ctx<'c>) -> Fut {
        self(ctx)
    }
}

mod sealed {
    /// Implemented by nothing.
    #[allow(unreachable_pub)] // nominally public: it bounds a public impl
    pub trait Never {}
}

impl<'a, 'c: 'a, F: sealed::Never> DownFn<'a, 'c, ()> for F {
    type Future = std::future::Pending<Result<()>>;

    fn call(self, _: &'a mut Ctx<'c>) -> Self::Future {
        unreachable!("no type implements sealed::Never")
    }
}

/// Calls the down function `down`; the macro's down shim boxes what it returns.
pub fn call_down<'a, 'c: 'a, M, F: DownFn<'a, 'c, M>>(down: F, ctx: &'a mut Ctx<'c>) -> F::Future {
    down.call(ctx)
}
