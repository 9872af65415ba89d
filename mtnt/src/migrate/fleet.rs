use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::claim::FleetClaims;
use super::fingerprint::current_fingerprints;
use super::protocol::{Claim, Protocol};
use super::source::TenantSource;
use super::{FailedTenant, MigrateReport, Progress};
use crate::backend::Backend;
use crate::{Error, Result, TenantName, TenantRecord, TenantState};

/// Where one tenant of a fleet run ended.
#[derive(Debug)]
pub(crate) enum TenantOutcome {
    /// Up to date already (by its registry row, or by its tracking rows).
    Current,
    /// This many migrations were applied.
    Migrated(usize),
    /// It failed; the error names the migration.
    Failed(Error),
    /// Another runner held it; it comes back in the second pass.
    Deferred,
    /// The run stopped (fail-fast, lost lease, deadline) before it started.
    NotStarted,
    /// `tenant create` has not finished it (it is under way, or died half-way).
    Creating,
    /// Another shard's.
    OtherShard,
    /// It was dropped while this run waited for it.
    Gone,
}

impl From<Result<Claim<usize>>> for TenantOutcome {
    fn from(claim: Result<Claim<usize>>) -> Self {
        match claim {
            Ok(Claim::Done(0)) => TenantOutcome::Current,
            Ok(Claim::Done(n)) => TenantOutcome::Migrated(n),
            Ok(Claim::Busy) => TenantOutcome::Deferred,
            Ok(Claim::Gone) => TenantOutcome::Gone,
            Err(error) => TenantOutcome::Failed(error),
        }
    }
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
    with_fingerprints: bool,
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
        let mut fingerprints = if with_fingerprints {
            backend.fingerprints(&names).await?
        } else {
            Vec::new()
        };
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
    protocol: &Protocol<'_>,
    tenants: Tenants<'_>,
    run: FleetRun,
    claims: &FleetClaims<'_>,
    progress: &dyn Progress,
    report: &mut MigrateReport,
) -> Result<()> {
    let FleetRun {
        to,
        concurrency,
        page_size,
        fail_fast,
    } = run;
    let backend = protocol.backend;
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let current = current_fingerprints(protocol.set, to);
    let current = &current;
    let outcomes = pages(backend, tenants, page_size, protocol.caps.fingerprints)
        .map(|record| async move {
            let (record, fingerprint) = record?;
            if !claims.owns(&record.tenant.name) {
                return Ok((record.tenant.name, TenantOutcome::OtherShard));
            }
            if record.state == TenantState::Creating {
                // `tenant create` owns it until it is active.
                return Ok((record.tenant.name, TenantOutcome::Creating));
            }
            if stop.load(Ordering::Relaxed) || claims.stop_reason().is_some() {
                return Ok((record.tenant.name, TenantOutcome::NotStarted));
            }
            if record.failed_order.is_none()
                && fingerprint.is_some_and(|f| {
                    current
                        .iter()
                        .any(|(c, applied)| *c == f && *applied == record.applied_order)
                })
            {
                // Up to date by its registry row: no session, no round trip.
                return Ok((record.tenant.name, TenantOutcome::Current));
            }
            let outcome = TenantOutcome::from(claims.first_pass(protocol, &record, to).await);
            if matches!(outcome, TenantOutcome::Failed(_)) && fail_fast {
                stop.store(true, Ordering::Relaxed);
            }
            Ok::<_, Error>((record.tenant.name, outcome))
        })
        .buffer_unordered(concurrency.max(1));
    let mut account = |tenant: TenantName, outcome: TenantOutcome| {
        match outcome {
            // Counted when it comes back in the second pass; not ours: not counted.
            TenantOutcome::Deferred | TenantOutcome::OtherShard => return,
            TenantOutcome::Creating => report.tenants_creating.push(tenant),
            TenantOutcome::Current => {
                report.tenants_current += 1;
                progress.tenant_done(&tenant, Ok(0));
            }
            TenantOutcome::Migrated(n) => {
                report.tenants_migrated += 1;
                report.migrations_applied += n;
                progress.tenant_done(&tenant, Ok(n));
            }
            TenantOutcome::NotStarted => report.tenants_skipped += 1,
            TenantOutcome::Gone => {
                report.tenants_gone.push(tenant);
            }
            TenantOutcome::Failed(error) => {
                progress.tenant_done(&tenant, Err(&error));
                report.failures.push(FailedTenant { tenant, error });
            }
        }
        report.tenants_total += 1;
    };
    let mut outcomes = std::pin::pin!(outcomes);
    while let Some(next) = outcomes.next().await {
        let (tenant, outcome) = next?;
        account(tenant, outcome);
    }
    // The tenants other runners held: wait for each (at most the unlock deadline) and
    // re-plan; usually the other runner has migrated it and nothing is left to do.
    let deferred = claims.take_deferred();
    let outcomes = stream::iter(deferred)
        .map(|record| async move {
            if stop.load(Ordering::Relaxed) || claims.stop_reason().is_some() {
                return (record.tenant.name, TenantOutcome::NotStarted);
            }
            let outcome = TenantOutcome::from(claims.waiting(protocol, &record, to).await);
            if matches!(outcome, TenantOutcome::Failed(_)) && fail_fast {
                stop.store(true, Ordering::Relaxed);
            }
            (record.tenant.name, outcome)
        })
        .buffer_unordered(concurrency.max(1));
    let mut outcomes = std::pin::pin!(outcomes);
    while let Some((tenant, outcome)) = outcomes.next().await {
        account(tenant, outcome);
    }
    if report.tenants_skipped > 0 && !stop.load(Ordering::Relaxed) {
        report.stopped = claims.stop_reason();
    }
    report.failures.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    Ok(())
}
