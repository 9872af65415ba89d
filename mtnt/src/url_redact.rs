//! Keeping passwords out of messages: [`redact_url`] for a URL, [`Redactor`] for any text
//! that may quote a password of a known URL (a server's error message, a log line).

use std::borrow::Cow;

/// Query-string and connection-string keys whose values are passwords.
const PASSWORD_KEYS: [&str; 5] = ["password", "passwd", "pass", "pwd", "sslpassword"];

/// Passwords shorter than this are replaced in free text only where they stand alone (not
/// inside a longer word), so that a short password does not garble every message.
const ANYWHERE: usize = 8;

/// Replaces every password in a database URL with `***`, for messages and logs: the
/// user-info password (`postgres://app:secret@db/main`), password parameters of the query
/// string (`?password=secret`, also `postgresql:///db?host=/run&password=secret`), a
/// user-info part that lost its `//` (`postgres:secret@db/main`) and `password=secret` in
/// a key/value connection string. An unparseable URL keeps none of its user-info.
///
/// ```
/// assert_eq!(
///     mtnt::redact_url("postgres://app:s3cret@db:5432/main"),
///     "postgres://app:***@db:5432/main"
/// );
/// assert_eq!(
///     mtnt::redact_url("postgres://app@db/main?sslmode=require&password=s3cret"),
///     "postgres://app@db/main?sslmode=require&password=***"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let mut spans = query_password_spans(url);
    spans.extend(user_info_password_span(url));
    replace_spans(url, spans)
}

/// Removes the passwords of one database URL from any text: the URL's own forms (see
/// [`redact_url`]) and the password itself wherever it is quoted, raw, percent-encoded or
/// decoded, escaped as in JSON or `{:?}` (a server's error message can quote it, as in
/// `database "secret@db/main" does not exist` for a URL that lost its `//`).
///
/// ```
/// let redactor = mtnt::Redactor::for_url("postgres:s3cret-pw@db/main");
/// assert_eq!(
///     redactor.redact(r#"database "s3cret-pw@db/main" does not exist"#),
///     r#"database "***@db/main" does not exist"#
/// );
/// ```
///
/// A password shorter than 8 characters is replaced where it stands alone (between
/// characters other than letters and digits), not inside a longer word.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Every form of every password, longest first.
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor for the passwords that `url` carries (none: it changes nothing).
    pub fn for_url(url: &str) -> Self {
        let mut raw: Vec<String> = Vec::new();
        for (start, end) in query_password_spans(url)
            .into_iter()
            .chain(user_info_password_span(url))
        {
            raw.push(url[start..end].to_owned());
        }
        let mut secrets = Vec::new();
        for secret in raw {
            let decoded = percent_decode(&secret);
            let form_decoded = percent_decode(&secret.replace('+', " "));
            for form in [
                secret.clone(),
                decoded.clone(),
                form_decoded,
                percent_encode(&decoded),
            ] {
                for variant in [
                    form.escape_debug().to_string(),
                    json_escape(&form),
                    form.clone(),
                ] {
                    if !variant.is_empty() && !secrets.contains(&variant) {
                        secrets.push(variant);
                    }
                }
            }
        }
        // Longest first, so that a form containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    /// Whether the URL had a password at all.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every form of the password replaced by `***`.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.secrets {
            if let Some(replaced) = replace_secret(&out, secret) {
                out = Cow::Owned(replaced);
            }
        }
        out
    }
}

/// `text` with `secret` replaced by `***`, or `None` when it does not occur.
fn replace_secret(text: &str, secret: &str) -> Option<String> {
    let alone = secret.chars().count() < ANYWHERE;
    let is_word = |c: char| c.is_alphanumeric();
    let mut out = String::new();
    let mut rest = 0;
    let mut from = 0;
    let mut found = false;
    while let Some(at) = text[from..].find(secret) {
        let start = from + at;
        let end = start + secret.len();
        let standalone = !alone
            || (!text[..start].chars().next_back().is_some_and(is_word)
                && !text[end..].chars().next().is_some_and(is_word));
        if standalone {
            out.push_str(&text[rest..start]);
            out.push_str("***");
            rest = end;
            found = true;
            from = end;
        } else {
            from = start + secret.chars().next().map_or(1, char::len_utf8);
        }
    }
    found.then(|| {
        out.push_str(&text[rest..]);
        out
    })
}

/// The byte ranges of password values of `password=...` parameters: after `?`, `&`, `;`
/// or white space (a URL's query string or a key/value connection string).
fn query_password_spans(text: &str) -> Vec<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let mut spans = Vec::new();
    for key in PASSWORD_KEYS {
        let needle = format!("{key}=");
        let mut from = 0;
        while let Some(at) = lower[from..].find(&needle) {
            let start = from + at;
            from = start + needle.len();
            let at_boundary = text[..start]
                .chars()
                .next_back()
                .is_none_or(|c| matches!(c, '?' | '&' | ';') || c.is_whitespace());
            if !at_boundary {
                continue;
            }
            let value_start = start + needle.len();
            let value = &text[value_start..];
            let len = if let Some(quoted) = value.strip_prefix('\'') {
                // libpq quotes values with spaces: password='a b'
                quoted.find('\'').map_or(value.len(), |end| end + 2)
            } else {
                value
                    .find(|c: char| matches!(c, '&' | '#' | ';') || c.is_whitespace())
                    .unwrap_or(value.len())
            };
            if len > 0 {
                let (mut s, mut e) = (value_start, value_start + len);
                if text[s..e].starts_with('\'') && text[s..e].ends_with('\'') && e - s >= 2 {
                    s += 1;
                    e -= 1;
                }
                if e > s {
                    spans.push((s, e));
                }
            }
        }
    }
    spans
}

/// The byte range of the password in the user-info part: `scheme://user:PASSWORD@host`,
/// or, when the `//` is missing (`scheme:user:PASSWORD@host`, `scheme:PASSWORD@host`),
/// everything between the scheme and the `@`, which the URL parser takes for a path.
fn user_info_password_span(url: &str) -> Option<(usize, usize)> {
    let colon = url.find(':')?;
    let scheme = &url[..colon];
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let after_scheme = colon + 1;
    let (authority_start, slashes) = if url[after_scheme..].starts_with("//") {
        (after_scheme + 2, true)
    } else {
        (after_scheme, false)
    };
    // The user-info ends at the last `@` before the query string (a password may hold `/`).
    let query = url[authority_start..]
        .find(['?', '#'])
        .map_or(url.len(), |q| authority_start + q);
    let at = authority_start + url[authority_start..query].rfind('@')?;
    let user_info = &url[authority_start..at];
    match user_info.find(':') {
        Some(c) if at > authority_start + c + 1 => Some((authority_start + c + 1, at)),
        Some(_) => None,
        // `scheme:secret@host` (no `//`): the user meant `scheme://user:secret@host` or
        // `scheme://secret@host`; hide it whole.
        None if !slashes && !user_info.is_empty() => Some((authority_start, at)),
        None => None,
    }
}

/// `text` with each of `spans` replaced by `***`.
fn replace_spans(text: &str, mut spans: Vec<(usize, usize)>) -> String {
    spans.sort();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    for (start, end) in spans {
        if start < rest {
            continue;
        }
        out.push_str(&text[rest..start]);
        out.push_str("***");
        rest = end;
    }
    out.push_str(&text[rest..]);
    out
}

/// Decodes `%XX` escapes; anything else (also a malformed escape) is kept as it is.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes every byte other than ASCII letters and digits as `%XX`, as sqlx writes a
/// password back into a URL.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `text` as it appears inside a JSON string.
fn json_escape(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::{redact_url, Redactor};

    #[test]
    fn hides_passwords() {
        assert_eq!(
            redact_url("mysql://root:pw@127.0.0.1/x"),
            "mysql://root:***@127.0.0.1/x"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://./tenants/"), "sqlite://./tenants/");
        assert!(!redact_url("postgres://u:p%40ss@h/db").contains("p%40ss"));
    }

    #[test]
    fn hides_every_form() {
        for (url, redacted) in [
            (
                "postgres://app:Secret@127.0.0.1:5432/db",
                "postgres://app:***@127.0.0.1:5432/db",
            ),
            (
                "postgres://app@127.0.0.1/db?password=Secret",
                "postgres://app@127.0.0.1/db?password=***",
            ),
            (
                "postgres://app@127.0.0.1/db?sslmode=disable&PASSWORD=Secret&application_name=x",
                "postgres://app@127.0.0.1/db?sslmode=disable&PASSWORD=***&application_name=x",
            ),
            (
                "postgresql:///db?host=127.0.0.1&password=Secret",
                "postgresql:///db?host=127.0.0.1&password=***",
            ),
            ("postgres:Secret@127.0.0.1/db", "postgres:***@127.0.0.1/db"),
            (
                "postgres:app:Secret@127.0.0.1/db",
                "postgres:app:***@127.0.0.1/db",
            ),
            (
                "postgres://app:Se/cr@t@127.0.0.1/db",
                "postgres://app:***@127.0.0.1/db",
            ),
            ("postgres://app:Secret@[::1", "postgres://app:***@[::1"),
            (
                "mysql://root:Secret@127.0.0.1:3306/control",
                "mysql://root:***@127.0.0.1:3306/control",
            ),
            (
                "mariadb://root:Se%40cret@db/control?ssl-mode=disabled",
                "mariadb://root:***@db/control?ssl-mode=disabled",
            ),
            (
                "host=127.0.0.1 user=app password=Secret dbname=db",
                "host=127.0.0.1 user=app password=*** dbname=db",
            ),
            (
                "host=127.0.0.1 password='Sec ret' dbname=db",
                "host=127.0.0.1 password='***' dbname=db",
            ),
            (
                "postgres://app@h/db?passwordless=1",
                "postgres://app@h/db?passwordless=1",
            ),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn scrubs_text_of_every_form() {
        let r = Redactor::for_url("postgres://app:S%40cret%20pw@h/db?password=Other+Pw");
        for text in [
            "S%40cret%20pw",
            "S@cret pw",
            "\"S@cret pw\"",
            "Other+Pw",
            "Other Pw",
            "Other%2BPw",
        ] {
            let scrubbed = r.redact(text);
            for secret in ["S%40cret", "S@cret", "cret pw", "Other", "%2BPw"] {
                assert!(!scrubbed.contains(secret), "{text} -> {scrubbed}");
            }
        }
        let r = Redactor::for_url("postgres:Secret@127.0.0.1/db");
        assert_eq!(
            r.redact(r#"database "Secret@127.0.0.1/db" does not exist"#),
            r#"database "***@127.0.0.1/db" does not exist"#
        );
        // A short password is replaced where it stands alone only.
        let r = Redactor::for_url("mysql://root:pw@127.0.0.1/x");
        assert_eq!(
            r.redact("pw: using password: YES, pw"),
            "***: using password: YES, ***"
        );
        assert!(Redactor::for_url("postgres://app@h/db").is_empty());
        assert_eq!(
            Redactor::for_url("postgres://app@h/db").redact("app"),
            "app"
        );
    }
}
