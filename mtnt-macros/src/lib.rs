//! Procedural macros for [mtnt](https://docs.rs/mtnt): the `#[mtnt::migration]` attribute.
//!
//! Use it through the `mtnt` crate (`#[mtnt::migration(...)]`); the generated code
//! refers to `::mtnt::__private` and does not work without it.
#![warn(missing_docs, unreachable_pub)]

mod args;
mod errors;
mod expand;

use proc_macro::TokenStream;

use crate::errors::Errors;

// The one documentation of the attribute, which `mtnt` re-exports as it is; its examples
// need `mtnt`, so they run as mtnt's doctests (see `mtnt/src/lib.rs`).
#[doc = include_str!("migration.md")]
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
