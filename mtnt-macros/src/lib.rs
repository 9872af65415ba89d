//! Procedural macros for [mtnt](https://docs.rs/mtnt): the `#[mtnt::migration]` and
//! `#[mtnt::hook]` attributes.
//!
//! Use them through the `mtnt` crate (`#[mtnt::migration(...)]`); the generated code
//! refers to `::mtnt::__private` and does not work without it.
#![warn(missing_docs, unreachable_pub)]

mod args;
mod errors;
mod expand;

use proc_macro::TokenStream;

use crate::errors::Errors;

// The one documentation of the attribute, which `mtnt` re-exports as it is; its examples
// need `mtnt`, so they run as mtnt's doctests (see `mtnt/src/lib.rs`), not as this
// crate's, which cannot name `mtnt`.
#[cfg_attr(not(doctest), doc = include_str!("migration.md"))]
#[proc_macro_attribute]
pub fn migration(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute::<args::MigrationArgs>(
        args,
        item,
        "#[mtnt::migration] goes on an `async fn`",
        |_| expand::Shape::migration(),
        expand::expand,
    )
}

// Documented like `migration`, in hook.md.
#[cfg_attr(not(doctest), doc = include_str!("hook.md"))]
#[proc_macro_attribute]
pub fn hook(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute::<args::HookArgs>(
        args,
        item,
        "#[mtnt::hook] goes on an `async fn`",
        |args| expand::Shape::hook(args::HookArgs::kind_of(args)),
        expand::expand_hook,
    )
}

/// Parses the attribute's arguments as `A` and the item as a function of the shape
/// `shape` gives for the arguments, and expands them with `expand`; on any error, emits
/// the item unchanged with every error found.
fn attribute<A: syn::parse::Parse>(
    args: TokenStream,
    item: TokenStream,
    not_a_function: &str,
    shape: impl FnOnce(proc_macro2::TokenStream) -> expand::Shape,
    expand: impl FnOnce(&A, &syn::ItemFn) -> proc_macro2::TokenStream,
) -> TokenStream {
    let original = proc_macro2::TokenStream::from(item.clone());
    let mut errors = Errors::default();

    let shape = shape(args.clone().into());
    let args = syn::parse::<A>(args).map_err(|e| errors.push(e)).ok();
    let func = syn::parse::<syn::ItemFn>(item)
        .map_err(|e| errors.push(syn::Error::new(e.span(), not_a_function)))
        .ok();
    if let Some(func) = &func {
        if let Err(e) = expand::check_function(func, &shape) {
            errors.push(e);
        }
    }

    match (args, func, errors.into_inner()) {
        (Some(args), Some(func), None) => expand(&args, &func).into(),
        // Keep the item so that IDEs and the rest of the crate still see the function.
        (_, _, error) => {
            let error = error.map(|e| e.to_compile_error());
            quote::quote!(#original #error).into()
        }
    }
}
