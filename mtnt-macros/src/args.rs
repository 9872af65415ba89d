//! The arguments of `#[mtnt::migration(...)]`.

use mtnt_syntax::Order;
use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitInt, LitStr, Path, Token};

use crate::errors::Errors;

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
    /// `order = YYYY_MM_DD_NNNN`, with a date that exists.
    pub(crate) order: Order,
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
        // Keys given with a value that was rejected (their error is already reported).
        let mut rejected: Vec<String> = Vec::new();
        let mut idempotent_key = None;
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
                "idempotent" => parse_bool(&key_str, value).map(|b| {
                    idempotent = b;
                    idempotent_key = Some(key.clone());
                }),
                "enabled" => parse_bool(&key_str, value).map(|b| enabled = b),
                "lock_timeout" => parse_timeout(&key_str, value).map(|d| lock_timeout_ms = Some(d)),
                "statement_timeout" => {
                    parse_timeout(&key_str, value).map(|d| statement_timeout_ms = Some(d))
                }
                _ => unreachable!("every key of KEYS is handled"),
            };
            if let Err(e) = result {
                errors.push(e);
                rejected.push(key_str.clone());
            }
            seen.push(key_str);
        }

        // On PostgreSQL and SQLite only a migration outside a transaction can be left
        // `started` by an interrupted run, which is when the runner reads `idempotent` (on
        // MySQL, whose DDL commits at once, any failure leaves it `started`, but the rule
        // is the same everywhere: `idempotent` goes with `transaction = false`). Not
        // checked when `transaction` itself was rejected: its value is unknown.
        if let Some(key) = idempotent_key.filter(|_| idempotent && transaction) {
            if !rejected.iter().any(|k| k == "transaction") {
                errors.push(syn::Error::new_spanned(
                    key,
                    "`idempotent` only matters for a migration that runs outside a transaction; \
                     add `transaction = false`, or remove `idempotent = true`",
                ));
            }
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

fn parse_order_expr(value: &Expr) -> syn::Result<Order> {
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

fn parse_order_lit(int: &LitInt) -> syn::Result<Order> {
    let suffix = int.suffix();
    if !suffix.is_empty() {
        return Err(syn::Error::new_spanned(
            int,
            format!(
                "`order` must not have a type suffix (`{suffix}`); write it as YYYY_MM_DD_NNNN"
            ),
        ));
    }
    let text = int.to_string();
    let lower = text.to_ascii_lowercase();
    if ["0x", "0o", "0b"]
        .iter()
        .any(|prefix| lower.starts_with(prefix))
    {
        return Err(syn::Error::new_spanned(
            int,
            format!("`order` must be a decimal literal in the form YYYY_MM_DD_NNNN, not {text}"),
        ));
    }
    // The same rules as the CLI's `--to` (mtnt_syntax): 12 digits, a date that exists.
    text.parse::<Order>()
        .map_err(|e| syn::Error::new_spanned(int, format!("`order` {e}")))
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

/// `lock_timeout = "5s"`: a duration in the runtime's syntax (`mtnt_syntax::parse_duration`:
/// `"500ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"`, `"0"` for no limit), in whole milliseconds
/// and at most what PostgreSQL accepts; returned in milliseconds.
fn parse_timeout(key: &str, value: &Expr) -> syn::Result<u64> {
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
    let duration = mtnt_syntax::parse_duration(&text)
        .map_err(|e| syn::Error::new_spanned(s, format!("`{key}`: {e}")))?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(syn::Error::new_spanned(
            s,
            format!(
                "`{key}`: {text:?} is not a whole number of milliseconds, the unit of \
                 PostgreSQL's timeouts; write for example \"{}ms\"",
                duration.as_millis() + 1
            ),
        ));
    }
    u64::try_from(duration.as_millis())
        .ok()
        .filter(|ms| *ms <= i32::MAX as u64)
        .ok_or_else(|| {
            syn::Error::new_spanned(
                s,
                format!(
                    "`{key}`: {text:?} is longer than PostgreSQL accepts ({}ms, about 24 days); \
                     write a shorter duration, or \"0\" for no limit",
                    i32::MAX
                ),
            )
        })
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
        assert_eq!(args.order.get(), 202401010002);
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

    #[test]
    fn idempotent_needs_transaction_false() {
        let expected =
            "`idempotent` only matters for a migration that runs outside a transaction; \
                        add `transaction = false`, or remove `idempotent = true`";
        assert_eq!(
            err(r#"scope = "tenant", order = 2024_01_01_0001, idempotent = true"#),
            expected
        );
        assert_eq!(
            err(
                r#"idempotent = true, transaction = true, scope = "tenant", order = 2024_01_01_0001"#
            ),
            expected
        );
        // Either order of the keys, and `idempotent = false` is the harmless default.
        assert!(parse(
            r#"idempotent = true, transaction = false, scope = "tenant", order = 2024_01_01_0001"#
        )
        .is_ok());
        assert!(parse(r#"scope = "tenant", order = 2024_01_01_0001, idempotent = false"#).is_ok());
        // A rejected `transaction` has its own error only.
        assert_eq!(
            err(
                r#"scope = "tenant", order = 2024_01_01_0001, transaction = no, idempotent = true"#
            ),
            "`transaction` must be `true` or `false`"
        );
    }

    #[test]
    fn timeouts_share_the_runtime_syntax() {
        let ok = |timeout: &str| {
            parse(&format!(
                r#"scope = "tenant", order = 2024_01_01_0001, lock_timeout = "{timeout}""#
            ))
            .map(|args| args.lock_timeout_ms)
        };
        assert_eq!(ok("1.5s"), Ok(Some(1_500)));
        assert_eq!(ok("500ms"), Ok(Some(500)));
        assert_eq!(ok("2min"), Ok(Some(120_000)));
        assert_eq!(ok("1h"), Ok(Some(3_600_000)));
        assert_eq!(ok("off"), Ok(Some(0)));
        assert_eq!(ok("2147483647ms"), Ok(Some(2_147_483_647)));
        assert_eq!(
            ok("5").unwrap_err(),
            "`lock_timeout`: \"5\" has no unit; write a duration such as 500ms, 5s, 1.5s, 2m or 1h, or 0 for no limit"
        );
        assert_eq!(
            ok("0.5ms").unwrap_err(),
            "`lock_timeout`: \"0.5ms\" is not a whole number of milliseconds, the unit of \
             PostgreSQL's timeouts; write for example \"1ms\""
        );
        assert_eq!(
            ok("25d").unwrap_err(),
            "`lock_timeout`: \"25d\" has the unknown unit \"d\"; write a duration such as 500ms, 5s, 1.5s, 2m or 1h, or 0 for no limit (units: ms, s or sec, m or min, h)"
        );
        assert!(ok("600h")
            .unwrap_err()
            .contains("longer than PostgreSQL accepts"));
        assert!(ok("2147483648ms")
            .unwrap_err()
            .contains("longer than PostgreSQL accepts"));
    }

    #[test]
    fn orders_share_the_runtime_rules() {
        let order = |order: &str| {
            parse(&format!(r#"scope = "tenant", order = {order}"#)).map(|args| args.order.get())
        };
        assert_eq!(order("2024_01_01_0001"), Ok(202401010001));
        assert_eq!(order("202401010001"), Ok(202401010001));
        assert_eq!(
            order("2024_01_01_001").unwrap_err(),
            "`order` 2024_01_01_001 has 11 digits, but an order has 12; \
             write it as YYYY_MM_DD_NNNN, for example 2024_01_01_0001"
        );
        assert_eq!(
            order("2023_02_29_0001").unwrap_err(),
            "`order` 2023_02_29_0001 does not start with a real date YYYY_MM_DD: \
             2023-02 has 28 days, not 29"
        );
        assert_eq!(
            order("0x2024_0101_0001").unwrap_err(),
            "`order` must be a decimal literal in the form YYYY_MM_DD_NNNN, not 0x2024_0101_0001"
        );
        assert!(order("0b1").unwrap_err().contains("decimal"));
        assert!(order("0o17").unwrap_err().contains("decimal"));
    }
}
