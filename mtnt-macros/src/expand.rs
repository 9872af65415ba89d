//! Checks the annotated function and generates its registration.

use proc_macro2::{Delimiter, Group, Literal, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use sha2::{Digest, Sha256};
use syn::ext::IdentExt;
use syn::{FnArg, ItemFn, ReturnType};

use crate::args::{MigrationArgs, Scope};
use crate::errors::Errors;

const SIGNATURE: &str = "async fn(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()>";

/// Rejects what the generated code cannot call.
///
/// Argument and return types are left to the compiler: the generated call is spanned at
/// the user's tokens so its errors point there.
pub(crate) fn check_function(func: &ItemFn) -> syn::Result<()> {
    let sig = &func.sig;
    let mut errors = Errors::default();
    let mut error = |tokens: &dyn ToTokens, message: String| {
        errors.push(syn::Error::new_spanned(tokens, message));
    };

    // A second `#[mtnt::migration]` would register the function twice under one name.
    for attr in &func.attrs {
        let path = attr.path();
        let is_migration = path.segments.last().is_some_and(|s| s.ident == "migration")
            && (path.segments.len() == 1 || path.segments[0].ident == "mtnt");
        if is_migration {
            error(
                attr,
                "#[mtnt::migration] is given more than once on this function".into(),
            );
        }
    }

    if let Some(constness) = &sig.constness {
        error(constness, "a migration cannot be a `const fn`".into());
    }
    if let Some(unsafety) = &sig.unsafety {
        error(unsafety, "a migration cannot be an `unsafe fn`".into());
    }
    if let Some(abi) = &sig.abi {
        error(abi, "a migration cannot have an `extern` ABI".into());
    }
    if sig.asyncness.is_none() {
        error(
            &sig.fn_token,
            format!("a migration must be an `async fn`; expected `{SIGNATURE}`"),
        );
    }
    if !sig.generics.params.is_empty() {
        error(
            &sig.generics,
            format!("a migration cannot be generic; expected `{SIGNATURE}`"),
        );
    } else if let Some(where_clause) = &sig.generics.where_clause {
        error(
            where_clause,
            "a migration cannot have a `where` clause".into(),
        );
    }
    if let Some(variadic) = &sig.variadic {
        error(variadic, "a migration cannot be variadic".into());
    }

    if let Some(receiver) = sig.inputs.iter().find_map(|arg| match arg {
        FnArg::Receiver(receiver) => Some(receiver),
        FnArg::Typed(_) => None,
    }) {
        error(
            receiver,
            "a migration cannot take `self`; make it a free function".into(),
        );
    } else if sig.inputs.is_empty() {
        errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            format!(
                "a migration takes one argument, `ctx: &mut mtnt::Ctx<'_>`; expected `{SIGNATURE}`"
            ),
        ));
    } else if sig.inputs.len() > 1 {
        errors.push(syn::Error::new_spanned(
            &sig.inputs,
            format!(
                "a migration takes exactly one argument, `ctx: &mut mtnt::Ctx<'_>`, not {}",
                sig.inputs.len()
            ),
        ));
    }

    if let ReturnType::Default = sig.output {
        errors.push(syn::Error::new_spanned(
            sig,
            "a migration must return `mtnt::Result<()>`; add `-> mtnt::Result<()>`",
        ));
    }

    match errors.into_inner() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Generates the function, its boxed up and down shims and the registration.
///
/// `check_function` must have accepted `func`.
pub(crate) fn expand(args: &MigrationArgs, func: &ItemFn) -> TokenStream {
    let ident = &func.sig.ident;
    let name = match &args.name {
        Some(name) => name.value(),
        None => ident.unraw().to_string(),
    };
    let name = Literal::string(&name);
    let order = Literal::i64_suffixed(args.order.get());
    let checksum = Literal::string(&checksum(func));
    let scope = match args.scope {
        Scope::Public => quote!(::mtnt::__private::Scope::Public),
        Scope::Tenant => quote!(::mtnt::__private::Scope::Tenant),
    };
    let transaction = args.transaction;
    let idempotent = args.idempotent;
    let enabled = args.enabled;
    let option = |ms: Option<u64>| match ms {
        Some(ms) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };
    let lock_timeout = option(args.lock_timeout_ms);
    let statement_timeout = option(args.statement_timeout_ms);

    let FnArg::Typed(arg) = &func.sig.inputs[0] else {
        unreachable!("check_function rejects `self`")
    };
    let ReturnType::Type(_, return_type) = &func.sig.output else {
        unreachable!("check_function rejects a missing return type")
    };

    // `&mut *ctx` spans the whole argument type, so a wrong type is underlined in full.
    let (arg_first, arg_last) = token_range(&arg.ty);
    let reborrow = quote_spanned!(arg_first=> &mut *);
    let ctx = quote_spanned!(arg_last=> ctx);
    let ctx_arg = quote!(#reborrow #ctx);
    // Pinned and boxed over the range of the return type: a wrong output type or a
    // future that is not `Send` is reported there.
    let up_call = spanned_call(
        token_range(return_type),
        quote!(::std::boxed::Box::pin),
        quote!(#ident(#ctx_arg)),
    );
    let up_shim = format_ident!("__mtnt_up_{}", ident);
    let up_fn = shim(&up_shim, up_call);

    let (down_fn, down_value) = match &args.down {
        Some(down) => {
            let down_shim = format_ident!("__mtnt_down_{}", ident);
            let range = token_range(down);
            // `call_down(path, ctx)`, boxed, both spanned over the path: a path that is not
            // an `async fn(&mut Ctx<'_>) -> Result<()>` gets the message of `call_down`'s
            // bound there, and a future that is not `Send` is reported there by the boxing.
            let call = spanned_call(
                range,
                quote!(::mtnt::__private::call_down),
                quote!(#down, ctx),
            );
            let body = spanned_call(range, quote!(::std::boxed::Box::pin), call);
            (
                shim(&down_shim, body),
                quote!(::core::option::Option::Some(#down_shim)),
            )
        }
        None => (quote!(), quote!(::core::option::Option::None)),
    };

    let static_ident = format_ident!("__MTNT_MIGRATION_{}", ident);
    // `line!()` spanned at the function name reports the function's line, not the attribute's.
    let line = quote_spanned!(ident.span()=> ::core::line!());

    quote! {
        #func

        #up_fn
        #down_fn

        ::mtnt::__private::register!(#static_ident = ::mtnt::__private::Migration {
            __order: #order,
            __name: #name,
            __scope: #scope,
            __up: #up_shim,
            __down: #down_value,
            __transaction: #transaction,
            __idempotent: #idempotent,
            __enabled: #enabled,
            __lock_timeout_ms: #lock_timeout,
            __statement_timeout_ms: #statement_timeout,
            __checksum: #checksum,
            __location: ::mtnt::__private::Location {
                file: ::core::file!(),
                line: #line,
                module_path: ::core::module_path!(),
            },
        });
    }
}

/// A function with the signature the registry stores, boxing `body`.
fn shim(ident: &syn::Ident, body: TokenStream) -> TokenStream {
    quote! {
        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #ident<'a, 'c>(
            ctx: &'a mut ::mtnt::__private::Ctx<'c>,
        ) -> ::mtnt::__private::BoxFuture<'a, ::mtnt::__private::Result<()>> {
            #body
        }
    }
}

/// `func(args)`, where the path starts at `first` and the parentheses sit at `last`,
/// so that the compiler's span for the whole call runs from `first` to `last`.
fn spanned_call((first, last): (Span, Span), func: TokenStream, args: TokenStream) -> TokenStream {
    let func = respan(func, first);
    let args = parens(args, last);
    quote!(#func #args)
}

/// The spans of the first and the last token of `tokens`.
fn token_range(tokens: &dyn ToTokens) -> (Span, Span) {
    let mut iter = tokens.to_token_stream().into_iter();
    let first = iter.next().map_or_else(Span::call_site, |t| t.span());
    let last = iter.last().map_or(first, |t| t.span());
    (first, last)
}

/// Gives every token of `tokens` (not nested groups' contents) the span `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}

/// Lowercase hex of the first 16 bytes of the sha256 of the function's tokens.
///
/// The tokens are written out one by one, each followed by a space, rather than with
/// `TokenStream::to_string`, whose spacing has changed between compiler versions: an
/// upgrade of the toolchain must not look like an edit of every applied migration.
/// Doc comments and trailing commas (which rustfmt adds or removes as lines are wrapped)
/// are left out for the same reason: they do not change what the migration does.
fn checksum(func: &ItemFn) -> String {
    let mut func = func.clone();
    func.attrs.retain(|attr| !attr.path().is_ident("doc"));
    let mut text = String::new();
    write_tokens(func.to_token_stream(), &mut text);
    let digest = Sha256::digest(text.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn write_tokens(tokens: TokenStream, out: &mut String) {
    let mut tokens = tokens.into_iter().peekable();
    while let Some(token) = tokens.next() {
        match token {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                out.push(' ');
                write_tokens(group.stream(), out);
                out.push_str(close);
            }
            TokenTree::Ident(ident) => out.push_str(&ident.to_string()),
            TokenTree::Punct(punct) if punct.as_char() == ',' && tokens.peek().is_none() => {
                continue
            }
            TokenTree::Punct(punct) => out.push(punct.as_char()),
            TokenTree::Literal(literal) => out.push_str(&literal.to_string()),
        }
        out.push(' ');
    }
}

/// `(stream)`, with the parentheses at `span`.
fn parens(stream: TokenStream, span: Span) -> TokenTree {
    let mut group = Group::new(Delimiter::Parenthesis, stream);
    group.set_span(span);
    TokenTree::Group(group)
}

#[cfg(test)]
mod tests {
    use super::checksum;

    fn sum(source: &str) -> String {
        checksum(&syn::parse_str(source).unwrap())
    }

    #[test]
    fn checksum_is_hex_and_ignores_formatting_and_docs() {
        let a = sum("async fn m(ctx: &mut Ctx<'_>) -> Result<()> { ctx.execute(\"A\").await }");
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let b = sum(
            "/// Creates A.\nasync fn m(\n    ctx: &mut Ctx<'_>,\n) -> Result<()> {\n    ctx.execute(\"A\")\n        .await\n}",
        );
        assert_eq!(a, b);
        let c = sum("async fn m(ctx: &mut Ctx<'_>,) -> Result<()> { ctx.execute(\"A\",).await }");
        assert_eq!(a, c);
    }

    #[test]
    fn checksum_changes_with_the_code() {
        let a = sum("async fn m(ctx: &mut Ctx<'_>) -> Result<()> { ctx.execute(\"A\").await }");
        let b = sum("async fn m(ctx: &mut Ctx<'_>) -> Result<()> { ctx.execute(\"B\").await }");
        let c = sum("async fn n(ctx: &mut Ctx<'_>) -> Result<()> { ctx.execute(\"A\").await }");
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
