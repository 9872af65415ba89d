//! Schema drift between tenants: each tenant's actual schema, as its engine's catalog
//! describes it, compared with the other tenants at the same applied order.
//!
//! Tenants at one order group by the fingerprint of their schema; the largest group is the
//! reference (on a tie, the one whose first tenant sorts first), and every tenant of another
//! group is an outlier, named with what differs from the reference. Only one description
//! per distinct schema is kept, so memory grows with the names, not with the schemas.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::backend::{Backend, ObjectKind, SchemaObject};
use crate::{Result, TenantName, TenantRecord, TenantState};

/// How one tenant's schema differs from its reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "difference", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Difference {
    /// The reference has the object; the tenant has not.
    Missing {
        /// What it is.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// Its definition in the reference.
        definition: String,
    },
    /// The tenant has an object the reference has not.
    Extra {
        /// What it is.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// Its definition in the tenant.
        definition: String,
    },
    /// Both have the object, defined differently.
    Changed {
        /// What it is.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// Its definition in the reference.
        expected: String,
        /// Its definition in the tenant.
        found: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Missing { kind, name, .. } => write!(f, "{} {name} missing", kind.as_str()),
            Difference::Extra {
                kind,
                name,
                definition,
            } if definition.is_empty() => write!(f, "{} {name} extra", kind.as_str()),
            Difference::Extra {
                kind,
                name,
                definition,
            } => write!(f, "{} {name} extra ({definition})", kind.as_str()),
            Difference::Changed {
                kind,
                name,
                expected,
                found,
            } => write!(f, "{} {name} changed: {expected} -> {found}", kind.as_str()),
        }
    }
}

/// A tenant whose schema is not its reference's.
#[derive(Clone, Debug, Serialize)]
pub struct DriftedTenant {
    /// The tenant.
    pub tenant: TenantName,
    /// The fingerprint of its schema (tenants with the same one drifted the same way).
    pub fingerprint: String,
    /// What differs, in the order of kind and name.
    pub differences: Vec<Difference>,
}

/// The tenants at one applied order.
#[derive(Clone, Debug, Serialize)]
pub struct OrderDrift {
    /// The order their newest migration has (`None`: none applied yet).
    pub applied_order: Option<i64>,
    /// How many tenants are at it.
    pub tenants: usize,
    /// The fingerprint of the reference schema.
    pub reference: String,
    /// How many tenants have the reference schema.
    pub reference_tenants: usize,
    /// The tenants whose schema is another, by name.
    pub drifted: Vec<DriftedTenant>,
}

/// The tenants at one order that drifted the same way (one schema fingerprint).
#[derive(Clone, Debug)]
pub struct DriftWay<'a> {
    /// The fingerprint of their schema.
    pub fingerprint: &'a str,
    /// The tenants, by name.
    pub tenants: Vec<&'a TenantName>,
    /// What differs from the reference.
    pub differences: &'a [Difference],
}

impl OrderDrift {
    /// The drifted tenants grouped by how they drifted, in the order of their first
    /// tenant's name.
    pub fn ways(&self) -> Vec<DriftWay<'_>> {
        let mut ways: Vec<DriftWay<'_>> = Vec::new();
        for d in &self.drifted {
            match ways.iter_mut().find(|w| w.fingerprint == d.fingerprint) {
                Some(way) => way.tenants.push(&d.tenant),
                None => ways.push(DriftWay {
                    fingerprint: &d.fingerprint,
                    tenants: vec![&d.tenant],
                    differences: &d.differences,
                }),
            }
        }
        ways
    }
}

/// A tenant whose schema could not be read.
#[derive(Clone, Debug, Serialize)]
pub struct UnreadableTenant {
    /// The tenant.
    pub tenant: TenantName,
    /// Why.
    pub error: String,
}

/// What [`Migrator::drift`](crate::Migrator::drift) found.
#[derive(Clone, Debug, Serialize)]
pub struct DriftReport {
    /// When the check ran.
    pub checked_at: chrono::DateTime<chrono::Utc>,
    /// How many tenants were compared (those registered `active`).
    pub tenants: usize,
    /// The tenants by applied order, oldest first.
    pub orders: Vec<OrderDrift>,
    /// Tenants whose schema could not be read, by name.
    pub unreadable: Vec<UnreadableTenant>,
}

impl DriftReport {
    /// How many tenants drifted from their reference.
    pub fn drifted(&self) -> usize {
        self.orders.iter().map(|o| o.drifted.len()).sum()
    }

    /// No tenant drifted and every tenant was read.
    pub fn is_clean(&self) -> bool {
        self.drifted() == 0 && self.unreadable.is_empty()
    }
}

/// Tenants described per call of [`Backend::describe`].
const PAGE: usize = 500;

/// The tenants of one fingerprint at one order.
struct Group {
    tenants: Vec<TenantName>,
    objects: Vec<SchemaObject>,
}

/// Compares the schemas of `records` (those `active`), describing a page at a time.
pub(crate) async fn check(
    backend: &dyn Backend,
    records: impl IntoIterator<Item = TenantRecord>,
) -> Result<DriftReport> {
    let checked_at = chrono::Utc::now();
    let mut orders: BTreeMap<Option<i64>, HashMap<String, Group>> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut tenants = 0;
    let mut page = Vec::with_capacity(PAGE);
    let mut records = records
        .into_iter()
        .filter(|r| r.state == TenantState::Active)
        .peekable();
    while records.peek().is_some() {
        page.clear();
        page.extend(records.by_ref().take(PAGE));
        let targets: Vec<_> = page.iter().map(|r| r.tenant.clone()).collect();
        let described = backend.describe(&targets).await?;
        for (record, objects) in page.iter().zip(described) {
            tenants += 1;
            let objects = match objects {
                Ok(objects) => objects,
                Err(e) => {
                    unreadable.push(UnreadableTenant {
                        tenant: record.tenant.name.clone(),
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            let group = orders
                .entry(record.applied_order)
                .or_default()
                .entry(schema_fingerprint(&objects))
                .or_insert_with(|| Group {
                    tenants: Vec::new(),
                    objects,
                });
            group.tenants.push(record.tenant.name.clone());
        }
    }
    unreadable.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    Ok(DriftReport {
        checked_at,
        tenants,
        orders: orders
            .into_iter()
            .map(|(order, groups)| compare(order, groups))
            .collect(),
        unreadable,
    })
}

/// The reference of the groups at one order, and how each other group differs from it.
fn compare(applied_order: Option<i64>, groups: HashMap<String, Group>) -> OrderDrift {
    let mut groups: Vec<(String, Group)> = groups.into_iter().collect();
    for (_, group) in &mut groups {
        group.tenants.sort();
    }
    // The largest group first; on a tie, the one whose first tenant sorts first.
    groups.sort_by(|(_, a), (_, b)| {
        b.tenants
            .len()
            .cmp(&a.tenants.len())
            .then_with(|| a.tenants[0].cmp(&b.tenants[0]))
    });
    let tenants = groups.iter().map(|(_, g)| g.tenants.len()).sum();
    let mut groups = groups.into_iter();
    let (reference, reference_group) = groups.next().expect("an order has a tenant");
    let mut drifted: Vec<DriftedTenant> = groups
        .flat_map(|(fingerprint, group)| {
            let differences = differences(&reference_group.objects, &group.objects);
            group.tenants.into_iter().map(move |tenant| DriftedTenant {
                tenant,
                fingerprint: fingerprint.clone(),
                differences: differences.clone(),
            })
        })
        .collect();
    drifted.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    OrderDrift {
        applied_order,
        tenants,
        reference,
        reference_tenants: reference_group.tenants.len(),
        drifted,
    }
}

/// What `found` has other than `expected`; both sorted, as [`Backend::describe`] gives them.
pub(crate) fn differences<'a>(
    expected: &'a [SchemaObject],
    found: &'a [SchemaObject],
) -> Vec<Difference> {
    let key = |o: &'a SchemaObject| (o.kind, o.name.as_str());
    let expected: BTreeMap<_, &SchemaObject> = expected.iter().map(|o| (key(o), o)).collect();
    let found: BTreeMap<_, &SchemaObject> = found.iter().map(|o| (key(o), o)).collect();
    let mut out = Vec::new();
    for (&(kind, name), object) in &expected {
        match found.get(&(kind, name)) {
            None => out.push(Difference::Missing {
                kind,
                name: name.to_owned(),
                definition: object.definition.clone(),
            }),
            Some(other) if other.definition != object.definition => out.push(Difference::Changed {
                kind,
                name: name.to_owned(),
                expected: object.definition.clone(),
                found: other.definition.clone(),
            }),
            Some(_) => {}
        }
    }
    for (&(kind, name), object) in &found {
        if !expected.contains_key(&(kind, name)) {
            out.push(Difference::Extra {
                kind,
                name: name.to_owned(),
                definition: object.definition.clone(),
            });
        }
    }
    out.sort_by(|a, b| diff_key(a).cmp(&diff_key(b)));
    out
}

fn diff_key(d: &Difference) -> (ObjectKind, &str) {
    match d {
        Difference::Missing { kind, name, .. }
        | Difference::Extra { kind, name, .. }
        | Difference::Changed { kind, name, .. } => (*kind, name),
    }
}

/// A short hex digest of a sorted description.
fn schema_fingerprint(objects: &[SchemaObject]) -> String {
    let mut hash = Sha256::new();
    for o in objects {
        hash.update(o.kind.as_str());
        hash.update([0]);
        hash.update(&o.name);
        hash.update([0]);
        hash.update(&o.definition);
        hash.update([b'\n']);
    }
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, def: &str) -> SchemaObject {
        SchemaObject::new(ObjectKind::Column, name, def)
    }

    #[test]
    fn differences_name_what_is_missing_extra_and_changed() {
        let reference = vec![
            column("accounts.email", "text"),
            column("accounts.id", "bigint not null"),
            SchemaObject::new(ObjectKind::Index, "accounts_email_idx", "CREATE INDEX ..."),
        ];
        let mut tenant = vec![
            column("accounts.email", "character varying(100)"),
            column("accounts.id", "bigint not null"),
            column("accounts.note", "text"),
        ];
        tenant.sort();
        let found: Vec<String> = differences(&reference, &tenant)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "column accounts.email changed: text -> character varying(100)",
                "column accounts.note extra (text)",
                "index accounts_email_idx missing",
            ]
        );
        assert!(differences(&reference, &reference).is_empty());
    }

    #[test]
    fn the_largest_group_is_the_reference() {
        let name = |n: &str| TenantName::new(n).unwrap();
        let mut groups = HashMap::new();
        groups.insert(
            "a".to_owned(),
            Group {
                tenants: vec![name("t3")],
                objects: vec![],
            },
        );
        groups.insert(
            "b".to_owned(),
            Group {
                tenants: vec![name("t2"), name("t1")],
                objects: vec![column("x.y", "int")],
            },
        );
        let order = compare(Some(1), groups);
        assert_eq!(order.reference, "b");
        assert_eq!(order.reference_tenants, 2);
        assert_eq!(order.drifted.len(), 1);
        assert_eq!(order.drifted[0].tenant.as_str(), "t3");
        assert_eq!(
            order.drifted[0].differences[0].to_string(),
            "column x.y missing"
        );
    }
}
