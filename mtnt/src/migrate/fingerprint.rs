//! Fingerprints of applied migrations: how a fleet run tells an up-to-date tenant from
//! its registry row alone, without opening a session.

use sha2::{Digest, Sha256};

use crate::{MigrationSet, Scope};

/// The fingerprint of a tenant's completed migrations: the SHA-256, in lowercase hex, of
/// `order:checksum` of each completed migration by order, joined with `,` (the empty
/// string when none is completed).
///
/// Backends store it in the tenant registry with every change of the tenant's tracking
/// table, in the same transaction (see [`Backend::fingerprints`](crate::Backend::fingerprints)).
/// PostgreSQL computes the same value in SQL:
///
/// ```sql
/// SELECT encode(sha256(convert_to(coalesce(string_agg(migration_order::text || ':' || checksum,
///        ',' ORDER BY migration_order), ''), 'UTF8')), 'hex')
/// FROM mtnt_tenant_migrations WHERE tenant = 'acme' AND status = 'completed'
/// ```
///
/// ```
/// assert_eq!(
///     mtnt::fingerprint([(202401010001, "ab12")]),
///     mtnt::fingerprint([(202401010001, "ab12")].iter().map(|&(o, c)| (o, c)))
/// );
/// assert_ne!(mtnt::fingerprint([(202401010001, "ab12")]), mtnt::fingerprint([]));
/// ```
pub fn fingerprint<'a>(completed: impl IntoIterator<Item = (i64, &'a str)>) -> String {
    let mut hasher = Sha256::new();
    for (i, (order, checksum)) in completed.into_iter().enumerate() {
        if i > 0 {
            hasher.update(b",");
        }
        hasher.update(order.to_string().as_bytes());
        hasher.update(b":");
        hasher.update(checksum.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprints a tenant is up to date with, for a run up to `to` (or the newest
/// migration), each with the newest order it stands for: those of the enabled tenant
/// migrations up to `to`, and of each longer prefix of the enabled migrations (a tenant
/// past `to` is current too).
///
/// A tenant whose recorded fingerprint is one of these has exactly such a prefix
/// completed, each with the checksum the code has now, so planning it would find nothing
/// to run and nothing to refuse: no changed checksum, no unknown migration, no gap left
/// by a migration added below the newest applied one. Any other tenant (a pending,
/// changed, unknown, disabled-but-applied or missing migration) gets a session and the
/// full check. So does a tenant whose registry row's `applied_order` disagrees with its
/// fingerprint (the row was edited by hand).
pub(crate) fn current_fingerprints(
    set: &MigrationSet,
    to: Option<i64>,
) -> Vec<(String, Option<i64>)> {
    let enabled: Vec<_> = set
        .scope(Scope::Tenant)
        .filter(|m| m.is_enabled())
        .collect();
    let needed = enabled
        .iter()
        .take_while(|m| to.is_none_or(|to| m.order() <= to))
        .count();
    (needed..=enabled.len())
        .map(|len| {
            let prefix = &enabled[..len];
            (
                fingerprint(prefix.iter().map(|m| (m.order(), m.checksum()))),
                prefix.last().map(|m| m.order()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn matches_the_sql_definition() {
        // printf '' | sha256sum, and printf '202401010001:ab,202401010002:cd' | sha256sum
        assert_eq!(
            fingerprint([]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            fingerprint([(202401010001, "ab"), (202401010002, "cd")]),
            "0b62acab92c07cda5718a03c7c88c3cad5b26a687f5e3b5e3b9768216e9376b7"
        );
    }
}
