//! Procedural macros for [mtnt](https://docs.rs/mtnt): the `#[mtnt::migration]` attribute.
//!
//! Use it through the `mtnt` crate (`#[mtnt::migration(...)]`); the generated code
//! refers to `::mtnt::__private` and does not work without it.
#![warn(missing_docs, unreachable_pub)]

mod args;
mod expand;
mod order;

use proc_macro::TokenStream;

/// Registers an async function as a migration.
///
/// ```ignore
/// #[mtnt::migration(scope = "tenant", order = 2024_01_01_0002, down = drop_accounts)]
/// async fn create_accounts(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
///     ctx.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY)").await
/// }
/// ```
///
/// Keys: `scope` (`"public"` or `"tenant"`, required), `order` (a `YYYY_MM_DD_NNNN`
/// integer literal, required), `name = "..."`, `down = path`, `transaction = bool`
/// (default `true`), `idempotent = bool` (default `false`), `enabled = bool`
/// (default `true`).
#[proc_macro_attribute]
pub fn migration(args: TokenStream, item: TokenStream) -> TokenStream {
    let original = proc_macro2::TokenStream::from(item.clone());
    let mut errors = Errors::default();

    let args = syn::parse::<args::MigrationArgs>(args)
        .map_err(|e| errors.push(e))
        .ok();
    let func = syn::parse::<syn::ItemFn>(item)
        .map_err(|e| {
            errors.push(syn::Error::new(
                e.span(),
                "#[mtnt::migration] goes on an `async fn`",
            ))
        })
        .ok();
    if let Some(func) = &func {
        if let Err(e) = expand::check_function(func) {
            errors.push(e);
        }
    }

    match (args, func, errors.into_inner()) {
        (Some(args), Some(func), None) => expand::expand(&args, &func).into(),
        // Keep the item so that IDEs and the rest of the crate still see the function.
        (_, _, error) => {
            let error = error.map(|e| e.to_compile_error());
            quote::quote!(#original #error).into()
        }
    }
}

/// Collects several errors into one, reported together.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn into_inner(self) -> Option<syn::Error> {
        self.0
    }
}
