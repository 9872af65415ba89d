//! The arguments of `#[mtnt::migration(...)]`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitInt, LitStr, Path, Token};

use crate::order::parse_order;
use crate::Errors;

/// Every accepted key, in the order the error messages list them.
const KEYS: [&str; 9] = [
    "scope",
    "order",
    "name",
    "down",
    "transaction",
    "idempotent",
    "enabled",
    "lock_timeout",
    "statement_timeout",
];

/// Where a migration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Public,
    Tenant,
}

/// The parsed and validated arguments.
pub(crate) struct MigrationArgs {
    pub(crate) scope: Scope,
    /// The `YYYYMMDDNNNN` value of `order`.
    pub(crate) order: i64,
    /// `name = "..."`, already checked to be non-empty and printable.
    pub(crate) name: Option<LitStr>,
    /// `down = path`.
    pub(crate) down: Option<Path>,
    pub(crate) transaction: bool,
    pub(crate) idempotent: bool,
    pub(crate) enabled: bool,
    /// `lock_timeout = "5s"`, in milliseconds (0: no limit).
    pub(crate) lock_timeout_ms: Option<u64>,
    /// `statement_timeout = "10m"`, in milliseconds (0: no limit).
    pub(crate) statement_timeout_ms: Option<u64>,
}

/// One `key = value` pair, before the value is checked.
struct KeyValue {
    key: Ident,
    value: Expr,
}

impl Parse for KeyValue {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // `parse_any` so that a keyword used as a key gets "unknown key", not a syntax error.
        let key = input.call(Ident::parse_any)?;
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(KeyValue { key, value })
    }
}

impl Parse for MigrationArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let pairs = Punctuated::<KeyValue, Token![,]>::parse_terminated(input)?;

        let mut errors = Errors::default();
        let mut seen: Vec<String> = Vec::new();
        let mut scope = None;
        let mut order = None;
        let mut name = None;
        let mut down = None;
        let mut transaction = true;
        let mut idempotent = false;
        let mut enabled = true;
        let mut lock_timeout_ms = None;
        let mut statement_timeout_ms = None;

        for KeyValue { key, value } in pairs {
            let key_str = key.unraw().to_string();
            if !KEYS.contains(&key_str.as_str()) {
                errors.push(syn::Error::new_spanned(
                    &key,
                    format!("unknown key `{key}`, expected one of: {}", KEYS.join(", ")),
                ));
                continue;
            }
            if seen.contains(&key_str) {
                errors.push(syn::Error::new_spanned(
                    &key,
                    format!("duplicate key `{key_str}`"),
                ));
                continue;
            }
            let value = strip_groups(&value);
            let result = match key_str.as_str() {
                "scope" => parse_scope(value).map(|s| scope = Some(s)),
                "order" => parse_order_expr(value).map(|o| order = Some(o)),
                "name" => parse_name(value).map(|n| name = Some(n)),
                "down" => parse_down(value).map(|d| down = Some(d)),
                "transaction" => parse_bool(&key_str, value).map(|b| transaction = b),
                "idempotent" => parse_bool(&key_str, value).map(|b| idempotent = b),
                "enabled" => parse_bool(&key_str, value).map(|b| enabled = b),
                "lock_timeout" => {
                    parse_duration(&key_str, value).map(|d| lock_timeout_ms = Some(d))
                }
                "statement_timeout" => {
                    parse_duration(&key_str, value).map(|d| statement_timeout_ms = Some(d))
                }
                _ => unreachable!("every key of KEYS is handled"),
            };
            if let Err(e) = result {
                errors.push(e);
            }
            seen.push(key_str);
        }

        // A key that was given with a bad value already has its error; only report absent ones.
        if !seen.iter().any(|k| k == "scope") {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing `scope`; add scope = \"public\" or scope = \"tenant\"",
            ));
        }
        if !seen.iter().any(|k| k == "order") {
            errors.push(syn::Error::new(
                Span::call_site(),
                "missing `order`; add order = YYYY_MM_DD_NNNN, for example order = 2024_01_01_0001",
            ));
        }

        if let Some(error) = errors.into_inner() {
            return Err(error);
        }
        match (scope, order) {
            (Some(scope), Some(order)) => Ok(MigrationArgs {
                scope,
                order,
                name,
                down,
                transaction,
                idempotent,
                enabled,
                lock_timeout_ms,
                statement_timeout_ms,
            }),
            _ => unreachable!("a missing or invalid scope or order was reported above"),
        }
    }
}

/// Looks through the invisible groups that `macro_rules!` wraps `$x:expr` in.
fn strip_groups(mut expr: &Expr) -> &Expr {
    while let Expr::Group(group) = expr {
        expr = &group.expr;
    }
    expr
}

fn parse_scope(value: &Expr) -> syn::Result<Scope> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => match s.value().as_str() {
            "public" => Ok(Scope::Public),
            "tenant" => Ok(Scope::Tenant),
            other => Err(syn::Error::new_spanned(
                s,
                format!("unknown scope {other:?}, expected \"public\" or \"tenant\""),
            )),
        },
        Expr::Path(p) if p.path.is_ident("public") || p.path.is_ident("tenant") => {
            let word = p.path.get_ident().map(Ident::to_string).unwrap_or_default();
            Err(syn::Error::new_spanned(
                value,
                format!("`scope` must be a string: scope = \"{word}\""),
            ))
        }
        _ => Err(syn::Error::new_spanned(
            value,
            "`scope` must be a string, \"public\" or \"tenant\"",
        )),
    }
}

fn parse_order_expr(value: &Expr) -> syn::Result<i64> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => parse_order_lit(int),
        _ => Err(syn::Error::new_spanned(
            value,
            "`order` must be an integer literal in the form YYYY_MM_DD_NNNN, for example order = 2024_01_01_0001",
        )),
    }
}

fn parse_order_lit(int: &LitInt) -> syn::Result<i64> {
    let suffix = int.suffix();
    if !suffix.is_empty() {
        return Err(syn::Error::new_spanned(
            int,
            format!(
                "`order` must not have a type suffix (`{suffix}`); write it as YYYY_MM_DD_NNNN"
            ),
        ));
    }
    parse_order(&int.to_string()).map_err(|message| syn::Error::new_spanned(int, message))
}

fn parse_name(value: &Expr) -> syn::Result<LitStr> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(s), ..
    }) = value
    else {
        return Err(syn::Error::new_spanned(
            value,
            "`name` must be a string literal, for example name = \"create_accounts\"",
        ));
    };
    let name = s.value();
    if name.trim().is_empty() {
        return Err(syn::Error::new_spanned(s, "`name` must not be empty"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '\'' || c == '"' || c == '\\')
    {
        return Err(syn::Error::new_spanned(
            s,
            "`name` must not contain quotes, backslashes or control characters",
        ));
    }
    Ok(s.clone())
}

fn parse_down(value: &Expr) -> syn::Result<Path> {
    match value {
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => Ok(p.path.clone()),
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Err(syn::Error::new_spanned(
            s,
            format!("`down` must be a path, not a string: down = {}", s.value()),
        )),
        _ => Err(syn::Error::new_spanned(
            value,
            "`down` must be the path of an async fn, for example down = drop_accounts",
        )),
    }
}

fn parse_bool(key: &str, value: &Expr) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{key}` must be `true` or `false`"),
        )),
    }
}

/// A duration string, `"500ms"`, `"5s"`, `"2m"` (or `"2min"`), `"1h"`, or `"0"` for no
/// limit, in milliseconds; the same syntax as the CLI's `--lock-timeout`.
fn parse_duration(key: &str, value: &Expr) -> syn::Result<u64> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(s), ..
    }) = value
    else {
        return Err(syn::Error::new_spanned(
            value,
            format!(
                "`{key}` must be a string such as \"5s\", \"500ms\", \"2m\" or \"0\" (no limit)"
            ),
        ));
    };
    let text = s.value();
    let text = text.trim();
    if matches!(text, "0" | "off" | "none") {
        return Ok(0);
    }
    let bad = |why: &str| {
        syn::Error::new_spanned(
            s,
            format!("`{key}`: {why}; write a duration such as \"5s\", \"500ms\", \"2m\", \"1h\", or \"0\" for no limit"),
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad(&format!("{text:?} has no unit")))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| bad(&format!("{text:?} does not start with a whole number")))?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" | "sec" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        other => return Err(bad(&format!("unknown unit {other:?}"))),
    };
    number
        .checked_mul(factor)
        .filter(|ms| *ms <= i32::MAX as u64)
        .ok_or_else(|| bad("it is longer than PostgreSQL accepts (about 24 days)"))
}

#[cfg(test)]
mod tests {
    use super::{MigrationArgs, Scope};

    fn parse(s: &str) -> Result<MigrationArgs, String> {
        syn::parse_str::<MigrationArgs>(s).map_err(|e| {
            e.into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        })
    }

    fn err(s: &str) -> String {
        match parse(s) {
            Ok(_) => panic!("accepted {s}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_all_keys() {
        let args = parse(
            r#"scope = "tenant", order = 2024_01_01_0002, name = "accounts", down = m::drop,
               transaction = false, idempotent = true, enabled = false,"#,
        )
        .unwrap();
        assert_eq!(args.scope, Scope::Tenant);
        assert_eq!(args.order, 202401010002);
        assert_eq!(args.name.unwrap().value(), "accounts");
        assert!(args.down.is_some());
        assert!(!args.transaction);
        assert!(args.idempotent);
        assert!(!args.enabled);
    }

    #[test]
    fn parses_timeouts() {
        let args = parse(
            r#"scope = "tenant", order = 2024_01_01_0002, lock_timeout = "2s", statement_timeout = "0""#,
        )
        .unwrap();
        assert_eq!(args.lock_timeout_ms, Some(2000));
        assert_eq!(args.statement_timeout_ms, Some(0));
        assert!(
            err(r#"scope = "tenant", order = 2024_01_01_0002, lock_timeout = 5"#)
                .contains("must be a string")
        );
        assert!(
            err(r#"scope = "tenant", order = 2024_01_01_0002, lock_timeout = "5""#)
                .contains("has no unit")
        );
        assert!(
            err(r#"scope = "tenant", order = 2024_01_01_0002, lock_timeout = "5d""#)
                .contains("unknown unit")
        );
    }

    #[test]
    fn defaults() {
        let args = parse(r#"order = 2024_01_01_0001, scope = "public""#).unwrap();
        assert_eq!(args.scope, Scope::Public);
        assert!(args.name.is_none() && args.down.is_none());
        assert!(args.transaction && !args.idempotent && args.enabled);
    }

    #[test]
    fn reports_every_error() {
        let e = err(r#"foo = 1, scope = "x", scope = "tenant", transaction = 1"#);
        assert_eq!(
            e,
            "unknown key `foo`, expected one of: scope, order, name, down, transaction, idempotent, enabled, lock_timeout, statement_timeout \
             | unknown scope \"x\", expected \"public\" or \"tenant\" \
             | duplicate key `scope` \
             | `transaction` must be `true` or `false` \
             | missing `order`; add order = YYYY_MM_DD_NNNN, for example order = 2024_01_01_0001"
        );
    }

    #[test]
    fn empty_args_name_both_required_keys() {
        let e = err("");
        assert!(e.starts_with("missing `scope`"), "{e}");
        assert!(e.contains("missing `order`"), "{e}");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(err(r#"scope = "tenant", order = "2024_01_01_0001""#).contains("integer literal"));
        assert!(err(r#"scope = "tenant", order = 2024_01_01_0001u64"#).contains("suffix"));
        assert!(err(r#"scope = tenant, order = 2024_01_01_0001"#).contains("scope = \"tenant\""));
        assert!(
            err(r#"scope = "tenant", order = 2024_01_01_0001, name = """#)
                .contains("must not be empty")
        );
        assert!(
            err(r#"scope = "tenant", order = 2024_01_01_0001, name = "it's""#).contains("quotes")
        );
        assert!(
            err(r#"scope = "tenant", order = 2024_01_01_0001, down = "x""#)
                .contains("not a string")
        );
        assert!(err(r#"scope = "tenant", order = 2024_02_30_0001"#).contains("2024-02 has 29 days"));
    }
}
