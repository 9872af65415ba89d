use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::claim::FleetClaims;
use super::fingerprint::current_fingerprints;
use super::protocol::{Claim, FleetOp, Protocol};
use super::rollout::{Canary, Rollout, TenantOrder};
use super::source::TenantSource;
use super::{FailedTenant, MigrateReport, Progress};
use crate::backend::{with_fingerprints, Backend};
use crate::{Error, Result, ServerName, Tenant, TenantName, TenantRecord, TenantState};

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
            State::Listed(records) => Ok(Some((
                with_fingerprints(backend, records).await?,
                State::Done,
            ))),
            State::Paging { source, after } => {
                // One query per page where the registry row has the fingerprint: with
                // it, this is all an up-to-date tenant costs.
                let page = match source {
                    None => {
                        backend
                            .tenant_page_with_fingerprints(after.as_ref(), page_size)
                            .await?
                    }
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
                        with_fingerprints(backend, records).await?
                    }
                };
                let next = if page.len() < page_size {
                    State::Done
                } else {
                    State::Paging {
                        source,
                        after: page.last().map(|(r, _)| r.tenant.name.clone()),
                    }
                };
                Ok(Some((page, next)))
            }
        }
    })
    .map_ok(|page| stream::iter(interleave_by_server(page).into_iter().map(Ok)))
    .try_flatten()
}

/// `page` with the tenants of its servers taken in turn (first of server 1, first of
/// server 2, ..., second of server 1, ...), each server's in their order: workers that
/// take tenants in this order keep every server busy, where the registry's order by name
/// could hand them a long run of one server's tenants.
fn interleave_by_server(
    page: Vec<(TenantRecord, Option<String>)>,
) -> Vec<(TenantRecord, Option<String>)> {
    let server = |(record, _): &(TenantRecord, Option<String>)| record.tenant.server.clone();
    let first = page.first().map(server);
    if page.iter().all(|item| Some(server(item)) == first) {
        return page;
    }
    let total = page.len();
    type Queue = VecDeque<(TenantRecord, Option<String>)>;
    let mut queues: Vec<(Option<ServerName>, Queue)> = Vec::new();
    for item in page {
        let of = server(&item);
        match queues.iter_mut().find(|(s, _)| *s == of) {
            Some((_, queue)) => queue.push_back(item),
            None => queues.push((of, VecDeque::from([item]))),
        }
    }
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        out.extend(queues.iter_mut().filter_map(|(_, queue)| queue.pop_front()));
    }
    out
}

/// The budget per server of a run: at most `per_server` of one server's tenants at once,
/// within the run's concurrency; on a server other than the control database's, no more
/// than it has connections free for ([`Backend::server_connection_budget`], asked the
/// first time one of its tenants comes up; a lowered budget is said through
/// [`Progress::warning`], as the run's own concurrency is).
pub(crate) struct ServerSlots<'a> {
    per_server: Option<usize>,
    /// The run's concurrency: what a server's budget is lowered from without `per_server`.
    concurrency: usize,
    backend: &'a dyn Backend,
    progress: &'a dyn Progress,
    /// Each server's slots, once known.
    slots: Mutex<HashMap<String, Arc<OnceCell<Slots>>>>,
}

/// One server's slots; `None`: no budget but the run's.
type Slots = Option<Arc<Semaphore>>;

impl<'a> ServerSlots<'a> {
    /// `per_server` tenants of each server at once; `None`: no budget but the run's
    /// `concurrency` (and each other server's connections).
    pub(crate) fn new(
        per_server: Option<usize>,
        concurrency: usize,
        backend: &'a dyn Backend,
        progress: &'a dyn Progress,
    ) -> Self {
        Self {
            per_server: per_server.map(|n| n.max(1)),
            concurrency: concurrency.max(1),
            backend,
            progress,
            slots: Mutex::default(),
        }
    }

    /// Waits for a slot of `server` (`None`: the control database's own), held until the
    /// permit drops; none without a budget.
    async fn take(&self, server: Option<&ServerName>) -> Option<OwnedSemaphorePermit> {
        let name = server.map_or(crate::DEFAULT_SERVER, ServerName::as_str);
        let cell = self
            .slots
            .lock()
            .ok()?
            .entry(name.to_owned())
            .or_default()
            .clone();
        let semaphore = cell
            .get_or_init(|| async {
                let budget = match server {
                    Some(server) => self.budget(server).await,
                    None => self.per_server,
                };
                budget.map(|n| Arc::new(Semaphore::new(n.max(1))))
            })
            .await
            .clone()?;
        semaphore.acquire_owned().await.ok()
    }

    /// The budget of `server`, another than the control database's: `per_server`,
    /// lowered to what the server has connections for.
    async fn budget(&self, server: &ServerName) -> Option<usize> {
        let free = match self.backend.server_connection_budget(server).await {
            Ok(free) => free,
            Err(e) => {
                // Its tenants say what is wrong with it, each as it connects.
                tracing::debug!("could not ask server {server} for its free connections: {e}");
                None
            }
        };
        let wanted = self.per_server.unwrap_or(self.concurrency);
        match free {
            Some(free) if free < wanted => {
                // Fewer of its tenants at once rather than tenants refused a connection
                // ("too many clients") or waiting for one the server cannot give.
                let what = match self.per_server {
                    Some(_) => "per-server concurrency",
                    None => "concurrency",
                };
                let message = format!(
                    "server {server}: {what} {wanted} lowered to {free}: the server (max_connections, less the sessions connected now) has connections for that many of its tenants at once"
                );
                tracing::warn!("{message}");
                self.progress.warning(&message);
                Some(free)
            }
            _ => self.per_server,
        }
    }
}

/// How a fleet run goes.
pub(crate) struct FleetRun<'a> {
    /// What to do to each tenant.
    pub(crate) op: FleetOp<'a>,
    /// Tenants at once.
    pub(crate) concurrency: usize,
    /// Tenants of one server at once.
    pub(crate) per_server: Option<usize>,
    /// Tenants read per query.
    pub(crate) page_size: usize,
    /// Start no tenant after a failure.
    pub(crate) fail_fast: bool,
    /// Canary, waves, budget, selection and order.
    pub(crate) rollout: Rollout,
    /// How many tenants the run looks at (for percentages).
    pub(crate) total: usize,
}

/// When a run stops starting tenants: the first failure with fail-fast, a failed canary,
/// a spent error budget, a lost lease or a passed deadline.
struct Stop<'a> {
    stopped: AtomicBool,
    why: Mutex<Option<String>>,
    failures: AtomicUsize,
    budget: Option<usize>,
    fail_fast: bool,
    claims: &'a FleetClaims<'a>,
}

impl Stop<'_> {
    fn now(&self, why: String) {
        if let Ok(mut slot) = self.why.lock() {
            slot.get_or_insert(why);
        }
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn is_stopped(&self) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return true;
        }
        match self.claims.stop_reason() {
            Some(why) => {
                self.now(why);
                true
            }
            None => false,
        }
    }

    fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.fail_fast {
            self.now(
                "a tenant failed, and the run stops at the first failure (fail fast)".to_owned(),
            );
        }
        if let Some(budget) = self.budget {
            if failures >= budget {
                self.now(format!(
                    "the error budget of {budget} failed tenant{} is spent",
                    if budget == 1 { "" } else { "s" }
                ));
            }
        }
    }

    fn reason(&self) -> Option<String> {
        self.why.lock().ok().and_then(|w| w.clone())
    }
}

/// How many of the slowest tenants a report keeps.
const SLOWEST: usize = 10;

/// Adds a tenant's outcome, which took `took`, to the report and the progress.
fn account(
    report: &mut MigrateReport,
    progress: &dyn Progress,
    tenant: TenantName,
    outcome: TenantOutcome,
    took: Duration,
) {
    if matches!(
        outcome,
        TenantOutcome::Migrated(_) | TenantOutcome::Failed(_)
    ) {
        let at = report.slowest.partition_point(|(_, d)| *d >= took);
        if at < SLOWEST {
            report.slowest.insert(at, (tenant.clone(), took));
            report.slowest.truncate(SLOWEST);
        }
    }
    match outcome {
        // Counted when it comes back in the second pass; another shard's: not counted.
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
        TenantOutcome::NotStarted => {
            report.tenants_skipped += 1;
            report.not_started.push(tenant);
        }
        TenantOutcome::Gone => report.tenants_gone.push(tenant),
        TenantOutcome::Failed(error) => {
            progress.tenant_done(&tenant, Err(&error));
            report.failures.push(FailedTenant { tenant, error });
        }
    }
    report.tenants_total += 1;
}

/// Migrates many tenants, `concurrency` at a time, each tenant's migrations in order,
/// rolled out as `run.rollout` says: canary tenants first and alone, then waves with a
/// pause between them, until the error budget is spent.
///
/// Within a wave, tenants are handed out one by one from a shared stream, so a slow
/// tenant never idles the others; a failing tenant is reported and the rest go on. Without
/// waves, canary or another order, the registry is streamed page by page, so memory does
/// not grow with the fleet.
pub(crate) async fn migrate_fleet(
    protocol: &Protocol<'_>,
    tenants: Tenants<'_>,
    run: FleetRun<'_>,
    claims: &FleetClaims<'_>,
    progress: &dyn Progress,
    report: &mut MigrateReport,
) -> Result<()> {
    let FleetRun {
        op,
        concurrency,
        per_server,
        page_size,
        fail_fast,
        rollout,
        total,
    } = run;
    let backend = protocol.backend;
    let stop = Stop {
        stopped: AtomicBool::new(false),
        why: Mutex::new(None),
        failures: AtomicUsize::new(0),
        budget: rollout.budget(total),
        fail_fast,
        claims,
    };
    let selection = rollout.clone();
    let records = pages(backend, tenants, page_size)
        .try_filter(move |(record, _)| std::future::ready(selection.takes(record)));
    let slots = ServerSlots::new(per_server, concurrency, backend, progress);
    let wave = Wave {
        protocol,
        op,
        concurrency,
        slots: &slots,
        stop: &stop,
        current: match op {
            FleetOp::Migrate { to } => current_fingerprints(protocol.set, to),
            _ => Vec::new(),
        },
    };
    if !rollout.needs_waves() {
        wave.run(records, progress, report).await?;
    } else {
        let mut all: Vec<(TenantRecord, Option<String>)> = records.try_collect().await?;
        match rollout.order_by {
            TenantOrder::Created => all.sort_by(|a, b| {
                (a.0.created_at, &a.0.tenant.name).cmp(&(b.0.created_at, &b.0.tenant.name))
            }),
            TenantOrder::Size => {
                let tenants: Vec<Tenant> = all.iter().map(|(r, _)| r.tenant.clone()).collect();
                let sizes: HashMap<TenantName, u64> =
                    backend.tenant_sizes(&tenants).await?.into_iter().collect();
                let size = |r: &TenantRecord| sizes.get(&r.tenant.name).copied().unwrap_or(0);
                all.sort_by(|a, b| {
                    (size(&a.0), &a.0.tenant.name).cmp(&(size(&b.0), &b.0.tenant.name))
                });
            }
            _ => {}
        }
        let canary: Vec<_> = match &rollout.canary {
            Canary::None => Vec::new(),
            Canary::First(n) => all.drain(..(*n).min(all.len())).collect(),
            Canary::Tenants(names) => {
                if let Some(missing) = names
                    .iter()
                    .find(|n| !all.iter().any(|(r, _)| &r.tenant.name == *n))
                {
                    return Err(Error::UnknownTenant(missing.to_string()));
                }
                let (canary, rest) = all
                    .into_iter()
                    .partition(|(r, _)| names.contains(&r.tenant.name));
                all = rest;
                canary
            }
            Canary::PerServer(n) => {
                let mut taken: HashMap<Option<ServerName>, usize> = HashMap::new();
                let (canary, rest) = all.into_iter().partition(|(r, _)| {
                    let of_server = taken.entry(r.tenant.server.clone()).or_default();
                    *of_server += 1;
                    *of_server <= *n
                });
                all = rest;
                interleave_by_server(canary)
            }
        };
        // Each wave takes tenants of every server in turn, so that a wave is spread over
        // the fleet as the run is (each server's tenants keep the run's order).
        let all = interleave_by_server(all);
        let size = rollout.wave_size.map_or(all.len(), |w| w.of(total)).max(1);
        let waves = all.len().div_ceil(size);
        let mut first = true;
        // What the tenants of the last wave changed (migrated or failed): a wave that
        // changed nothing (every tenant current: an earlier run did it) needs no soak
        // pause, so a re-run goes straight to the wave the earlier run stopped in.
        let changed = |report: &MigrateReport| report.tenants_migrated + report.failures.len();
        let mut last_changed = true;
        if !canary.is_empty() {
            progress.wave(0, waves, canary.len());
            let before = report.failures.len();
            let changed_before = changed(report);
            wave.run(stream::iter(canary.into_iter().map(Ok)), progress, report)
                .await?;
            last_changed = changed(report) > changed_before;
            let failed = report.failures.len() - before;
            if failed > 0 {
                stop.now(format!(
                    "{failed} canary tenant{} failed",
                    if failed == 1 { "" } else { "s" }
                ));
            }
            first = false;
        }
        let mut rest = all.into_iter();
        for number in 1..=waves {
            let tenants: Vec<_> = rest.by_ref().take(size).collect();
            if !first && !stop.is_stopped() && !rollout.wave_pause.is_zero() {
                if last_changed {
                    tokio::time::sleep(rollout.wave_pause).await;
                } else {
                    progress.pause_skipped(number - 1);
                }
            }
            first = false;
            if !stop.is_stopped() {
                progress.wave(number, waves, tenants.len());
            }
            let changed_before = changed(report);
            wave.run(stream::iter(tenants.into_iter().map(Ok)), progress, report)
                .await?;
            last_changed = changed(report) > changed_before;
        }
    }
    // The tenants other runners held: wait for each (at most the unlock deadline) and
    // re-plan; usually the other runner has migrated it and nothing is left to do.
    let deferred = claims.take_deferred();
    let stop = &stop;
    let slots = &slots;
    let outcomes = stream::iter(deferred)
        .map(|record| async move {
            if stop.is_stopped() {
                return (
                    record.tenant.name,
                    TenantOutcome::NotStarted,
                    Duration::ZERO,
                );
            }
            let _slot = slots.take(record.tenant.server.as_ref()).await;
            let started = Instant::now();
            let outcome = TenantOutcome::from(
                claims
                    .waiting(protocol, &record, op)
                    .instrument(protocol.tenant_span(&record.tenant.name))
                    .await,
            );
            if matches!(outcome, TenantOutcome::Failed(_)) {
                stop.failed();
            }
            (record.tenant.name, outcome, started.elapsed())
        })
        .buffer_unordered(concurrency.max(1));
    let mut outcomes = std::pin::pin!(outcomes);
    while let Some((tenant, outcome, took)) = outcomes.next().await {
        account(report, progress, tenant, outcome, took);
    }
    if report.tenants_skipped > 0 {
        report.stopped = stop.reason();
    }
    report.failures.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    report.not_started.sort();
    Ok(())
}

/// What every wave of one run shares.
struct Wave<'a> {
    protocol: &'a Protocol<'a>,
    op: FleetOp<'a>,
    concurrency: usize,
    slots: &'a ServerSlots<'a>,
    stop: &'a Stop<'a>,
    /// The fingerprints a tenant is up to date with.
    current: Vec<(String, Option<i64>)>,
}

impl Wave<'_> {
    /// Runs the tenants of `records`, `concurrency` at a time.
    async fn run(
        &self,
        records: impl futures_util::Stream<Item = Result<(TenantRecord, Option<String>)>>,
        progress: &dyn Progress,
        report: &mut MigrateReport,
    ) -> Result<()> {
        let outcomes = records
            .map(|record| async move {
                let (record, fingerprint) = record?;
                let claims = self.stop.claims;
                if !claims.owns(&record.tenant.name) {
                    return Ok((
                        record.tenant.name,
                        TenantOutcome::OtherShard,
                        Duration::ZERO,
                    ));
                }
                if record.state == TenantState::Creating {
                    // `tenant create` owns it until it is active.
                    return Ok((record.tenant.name, TenantOutcome::Creating, Duration::ZERO));
                }
                if self.stop.is_stopped() {
                    return Ok((
                        record.tenant.name,
                        TenantOutcome::NotStarted,
                        Duration::ZERO,
                    ));
                }
                if record.failed_order.is_none()
                    && fingerprint.is_some_and(|f| {
                        self.current
                            .iter()
                            .any(|(c, applied)| *c == f && *applied == record.applied_order)
                    })
                {
                    // Up to date by its registry row: no session, no round trip.
                    return Ok((record.tenant.name, TenantOutcome::Current, Duration::ZERO));
                }
                let _slot = self.slots.take(record.tenant.server.as_ref()).await;
                let started = Instant::now();
                self.protocol.progress.tenant_started(&record.tenant.name);
                let outcome = TenantOutcome::from(
                    claims
                        .first_pass(self.protocol, &record, self.op)
                        .instrument(self.protocol.tenant_span(&record.tenant.name))
                        .await,
                );
                if matches!(outcome, TenantOutcome::Failed(_)) {
                    self.stop.failed();
                }
                Ok::<_, Error>((record.tenant.name, outcome, started.elapsed()))
            })
            .buffer_unordered(self.concurrency.max(1));
        let mut outcomes = std::pin::pin!(outcomes);
        while let Some(next) = outcomes.next().await {
            let (tenant, outcome, took) = next?;
            account(report, progress, tenant, outcome, took);
        }
        Ok(())
    }
}
