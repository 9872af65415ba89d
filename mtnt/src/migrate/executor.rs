use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::claim::{lock_waiting, Guard};
use super::fingerprint::current_fingerprints;
use super::plan::{plan_down, plan_up};
use super::source::TenantSource;
use super::SafetySettings;
use super::{FailedTenant, MigrateReport, Progress};
use crate::{
    Backend, Direction, Error, MigrationSet, Result, RollbackTarget, Scope, Target, TenantName,
    TenantRecord, TenantState,
};

fn wrap(
    target: Target<'_>,
    migration: &crate::Migration,
    direction: Direction,
    error: Error,
) -> Error {
    Error::Migration {
        target: target.to_string(),
        migration: migration.to_string(),
        reverting: direction == Direction::Down,
        source: Box::new(error),
    }
}

/// Brings one target up to `to`; returns how many migrations ran, or `None` at once,
/// changing nothing, when another run holds the target's lock (see `claim.rs`).
pub(crate) async fn migrate_target_claim(
    backend: &dyn Backend,
    target: Target<'_>,
    set: &MigrationSet,
    to: Option<i64>,
) -> Result<Option<usize>> {
    let scope = match target {
        Target::Public => Scope::Public,
        Target::Tenant(_) => Scope::Tenant,
    };
    let mut session = backend.session(target).await?;
    if matches!(target, Target::Public)
        && plan_up(target, &session.applied().await?, set, scope, to).is_ok_and(|s| s.is_empty())
    {
        // The public target is read by every run and every `tenant create`, and is
        // nearly always up to date: that needs no lock, so that sign-ups never queue.
        return Ok(Some(0));
    }
    // A fleet run comes here only for a tenant whose registry row does not show it up to
    // date: lock and read at once.
    let Some(applied) = session.try_lock_applied().await? else {
        return Ok(None);
    };
    let steps = plan_up(target, &applied, set, scope, to)?;
    session
        .apply_up(&steps)
        .await
        .map_err(|(i, e)| wrap(target, steps[i], Direction::Up, e))?;
    Ok(Some(steps.len()))
}

/// Reverts migrations of one target, newest first; refuses before any change when an
/// irreversible migration is in the way. Returns the reverted migrations.
pub(crate) async fn rollback_target(
    backend: &dyn Backend,
    target: Target<'_>,
    set: &MigrationSet,
    how_far: RollbackTarget,
    settings: &SafetySettings,
) -> Result<Vec<&'static crate::Migration>> {
    let scope = match target {
        Target::Public => Scope::Public,
        Target::Tenant(_) => Scope::Tenant,
    };
    let mut session = backend.session(target).await?;
    lock_waiting(&mut *session, target, settings).await?;
    let applied = session.applied().await?;
    let steps = plan_down(target, &applied, set, scope, how_far)?;
    for migration in &steps {
        session
            .apply(migration, Direction::Down)
            .await
            .map_err(|e| wrap(target, migration, Direction::Down, e))?;
    }
    Ok(steps)
}

/// Where the fleet's tenants come from.
pub(crate) enum Tenants<'a> {
    /// Every registered tenant, page by page.
    Registry,
    /// A user-supplied source, page by page.
    Source(&'a dyn TenantSource),
    /// These registry rows (tenants named on the command line).
    Listed(Vec<TenantRecord>),
}

/// The registry rows of the fleet with their fingerprints ([`Backend::fingerprints`]), one
/// page at a time, so memory does not grow with it.
fn pages<'a>(
    backend: &'a dyn Backend,
    tenants: Tenants<'a>,
    page_size: usize,
) -> impl futures_util::Stream<Item = Result<(TenantRecord, Option<String>)>> + 'a {
    enum State<'a> {
        Paging {
            source: Option<&'a dyn TenantSource>,
            after: Option<TenantName>,
        },
        Listed(Vec<TenantRecord>),
        Done,
    }
    let state = match tenants {
        Tenants::Registry => State::Paging {
            source: None,
            after: None,
        },
        Tenants::Source(source) => State::Paging {
            source: Some(source),
            after: None,
        },
        Tenants::Listed(records) => State::Listed(records),
    };
    stream::try_unfold(state, move |state| async move {
        match state {
            State::Done => Ok(None),
            State::Listed(records) => Ok(Some((records, State::Done))),
            State::Paging { source, after } => {
                let page = match source {
                    None => backend.tenant_page(after.as_ref(), page_size).await?,
                    Some(source) => {
                        let names = source.page(after.as_ref(), page_size).await?;
                        let mut records = backend.tenant_records(&names).await?;
                        if records.len() < names.len() {
                            let missing = names
                                .iter()
                                .find(|n| !records.iter().any(|r| &r.tenant.name == *n));
                            return Err(Error::UnknownTenant(
                                missing.map(|n| n.to_string()).unwrap_or_default(),
                            ));
                        }
                        records.sort_by(|a, b| a.tenant.name.cmp(&b.tenant.name));
                        records
                    }
                };
                let next = if page.len() < page_size {
                    State::Done
                } else {
                    State::Paging {
                        source,
                        after: page.last().map(|r| r.tenant.name.clone()),
                    }
                };
                Ok(Some((page, next)))
            }
        }
    })
    .and_then(move |page| async move {
        // One query per page: with the registry rows, this is all an up-to-date tenant costs.
        let names: Vec<TenantName> = page.iter().map(|r| r.tenant.name.clone()).collect();
        let mut fingerprints = backend.fingerprints(&names).await?;
        fingerprints.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(page.into_iter().map(move |record| {
            let fingerprint = fingerprints
                .binary_search_by(|(name, _)| name.cmp(&record.tenant.name))
                .ok()
                .map(|i| std::mem::take(&mut fingerprints[i].1));
            Ok((record, fingerprint))
        }))
    })
    .map_ok(stream::iter)
    .try_flatten()
}

/// How a fleet run goes.
pub(crate) struct FleetRun {
    /// The newest order to apply.
    pub(crate) to: Option<i64>,
    /// Tenants at once.
    pub(crate) concurrency: usize,
    /// Tenants read per query.
    pub(crate) page_size: usize,
    /// Start no tenant after a failure.
    pub(crate) fail_fast: bool,
}

/// Migrates many tenants, `concurrency` at a time, each tenant's migrations in order.
///
/// Tenants are handed out one by one from a shared stream, so a slow tenant never idles
/// the others; a failing tenant is reported and the rest go on (unless `fail_fast`).
pub(crate) async fn migrate_fleet(
    backend: &dyn Backend,
    set: &MigrationSet,
    tenants: Tenants<'_>,
    run: FleetRun,
    guard: &Guard<'_>,
    progress: &dyn Progress,
    report: &mut MigrateReport,
) -> Result<()> {
    let FleetRun {
        to,
        concurrency,
        page_size,
        fail_fast,
    } = run;
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let current = current_fingerprints(set, to);
    let current = &current;
    let outcomes = pages(backend, tenants, page_size)
        .map(|record| async move {
            let (record, fingerprint) = record?;
            if record.state == TenantState::Creating || !guard.owns(&record.tenant.name) {
                // `tenant create` owns it until it is active; another shard owns it.
                return Ok((record.tenant.name, None));
            }
            if stop.load(Ordering::Relaxed) || guard.stop_reason().is_some() {
                return Ok((record.tenant.name, Some(Err(None))));
            }
            if record.failed_order.is_none()
                && fingerprint.is_some_and(|f| {
                    current
                        .iter()
                        .any(|(c, applied)| *c == f && *applied == record.applied_order)
                })
            {
                // Up to date by its registry row: no session, no round trip.
                return Ok((record.tenant.name, Some(Ok(0))));
            }
            // `None`: another runner holds it; it comes back in the second pass below.
            let Some(outcome) = guard.first_pass(backend, &record, set, to).await else {
                return Ok((record.tenant.name, None));
            };
            if outcome.is_err() && fail_fast {
                stop.store(true, Ordering::Relaxed);
            }
            Ok::<_, Error>((record.tenant.name, Some(outcome.map_err(Some))))
        })
        .buffer_unordered(concurrency.max(1));
    let mut account = |tenant: TenantName, outcome: std::result::Result<usize, Option<Error>>| {
        report.tenants_total += 1;
        match outcome {
            Ok(n) => {
                if n == 0 {
                    report.tenants_current += 1;
                } else {
                    report.tenants_migrated += 1;
                    report.migrations_applied += n;
                }
                progress.tenant_done(&tenant, Ok(n));
            }
            Err(None) => report.tenants_skipped += 1,
            Err(Some(error)) => {
                progress.tenant_done(&tenant, Err(&error));
                report.failures.push(FailedTenant { tenant, error });
            }
        }
    };
    let mut outcomes = std::pin::pin!(outcomes);
    while let Some(next) = outcomes.next().await {
        let (tenant, outcome) = next?;
        let Some(outcome) = outcome else { continue };
        account(tenant, outcome);
    }
    // The tenants other runners held: wait for each (at most the unlock deadline) and
    // re-plan; usually the other runner has migrated it and nothing is left to do.
    let deferred = guard.take_deferred();
    let outcomes = stream::iter(deferred)
        .map(|record| async move {
            if stop.load(Ordering::Relaxed) || guard.stop_reason().is_some() {
                return (record.tenant.name, Err(None));
            }
            let target = Target::Tenant(&record.tenant);
            let outcome = guard.waiting(backend, target, set, to).await;
            if outcome.is_err() && fail_fast {
                stop.store(true, Ordering::Relaxed);
            }
            (record.tenant.name, outcome.map_err(Some))
        })
        .buffer_unordered(concurrency.max(1));
    let mut outcomes = std::pin::pin!(outcomes);
    while let Some((tenant, outcome)) = outcomes.next().await {
        account(tenant, outcome);
    }
    if report.tenants_skipped > 0 && !stop.load(Ordering::Relaxed) {
        report.stopped = guard.stop_reason();
    }
    report.failures.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    Ok(())
}
