/// Replaces the password of a database URL with `***`, for messages and logs.
///
/// ```
/// assert_eq!(
///     mtnt::redact_url("postgres://app:s3cret@db:5432/main"),
///     "postgres://app:***@db:5432/main"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Unparseable: keep the scheme and host part only, never a possible password.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
            }
            _ => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

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
}
