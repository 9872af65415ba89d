use crate::migration::format_order;
use crate::{
    AppliedMigration, Error, Migration, MigrationSet, MigrationStatus, Result, RollbackTarget,
    Scope, Target,
};

fn checked_applied<'r>(
    target: Target<'_>,
    applied: &'r [AppliedMigration],
    set: &MigrationSet,
    scope: Scope,
) -> Result<Vec<(&'r AppliedMigration, &'static Migration)>> {
    let mut known = Vec::with_capacity(applied.len());
    for row in applied {
        let migration = set.get(row.order).filter(|m| m.scope() == scope);
        match (row.status, migration) {
            (MigrationStatus::Completed | MigrationStatus::Started, None) => {
                return Err(Error::UnknownApplied {
                    target: target.to_string(),
                    order: format_order(row.order),
                    name: row.name.clone(),
                })
            }
            (MigrationStatus::Completed, Some(m)) if row.checksum != m.checksum() => {
                return Err(Error::ChecksumMismatch {
                    target: target.to_string(),
                    migration: m.to_string(),
                    recorded: row.checksum.clone(),
                    current: m.checksum().to_owned(),
                })
            }
            (_, Some(m)) => known.push((row, m)),
            (_, None) => {}
        }
    }
    Ok(known)
}

/// The migrations to apply to `target`, in order; fails before anything runs when the
/// target holds changed, unknown or interrupted migrations.
pub(crate) fn plan_up(
    target: Target<'_>,
    applied: &[AppliedMigration],
    set: &MigrationSet,
    scope: Scope,
    to: Option<i64>,
) -> Result<Vec<&'static Migration>> {
    let known = checked_applied(target, applied, set, scope)?;
    let status_of = |order: i64| {
        known
            .iter()
            .find(|(row, _)| row.order == order)
            .map(|(row, _)| row.status)
    };
    let mut steps = Vec::new();
    for migration in set.scope(scope) {
        if !migration.is_enabled() || to.is_some_and(|to| migration.order() > to) {
            continue;
        }
        match status_of(migration.order()) {
            Some(MigrationStatus::Completed) => {}
            Some(MigrationStatus::Started) if !migration.is_idempotent() => {
                return Err(Error::Interrupted {
                    target: target.to_string(),
                    migration: migration.to_string(),
                    tenant_flag: match target {
                        Target::Public => "--public ".to_owned(),
                        Target::Tenant(t) => format!("--tenant {} ", t.name),
                    },
                    order: migration.order(),
                })
            }
            _ => steps.push(migration),
        }
    }
    Ok(steps)
}

/// The migrations to revert in `target`, newest first; fails before anything runs when
/// one of them has no down function, or when a migration is `started` (an interrupted
/// run, or on MySQL a failed up or down whose DDL may have taken effect): reverting the
/// ones below it would leave it half-done on top.
pub(crate) fn plan_down(
    target: Target<'_>,
    applied: &[AppliedMigration],
    set: &MigrationSet,
    scope: Scope,
    how_far: RollbackTarget,
) -> Result<Vec<&'static Migration>> {
    let known = checked_applied(target, applied, set, scope)?;
    if let Some((_, interrupted)) = known
        .iter()
        .find(|(row, _)| row.status == MigrationStatus::Started)
    {
        return Err(Error::Interrupted {
            target: target.to_string(),
            migration: interrupted.to_string(),
            tenant_flag: match target {
                Target::Public => "--public ".to_owned(),
                Target::Tenant(t) => format!("--tenant {} ", t.name),
            },
            order: interrupted.order(),
        });
    }
    let mut completed: Vec<&'static Migration> = known
        .iter()
        .filter(|(row, _)| row.status == MigrationStatus::Completed)
        .map(|(_, m)| *m)
        .collect();
    completed.reverse();
    let steps: Vec<&'static Migration> = match how_far {
        RollbackTarget::Steps(n) => completed.into_iter().take(n).collect(),
        RollbackTarget::To(order) => completed
            .into_iter()
            .take_while(|m| m.order() > order)
            .collect(),
        RollbackTarget::All => completed,
    };
    if let Some(blocker) = steps.iter().find(|m| !m.is_reversible()) {
        return Err(Error::Irreversible {
            target: target.to_string(),
            migration: blocker.to_string(),
        });
    }
    Ok(steps)
}
