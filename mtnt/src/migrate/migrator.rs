use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::claim::{lock_waiting, run_waiting, FleetClaims};
use super::drift::{self, DriftReport};
use super::fleet::{migrate_fleet, FleetRun, Tenants};
use super::hooks::{self, HookFailures, Hooks, RunCommand, RunInfo};
use super::inspect::{classify_rows, standings, Condition, PlanReport, PlannedMigration};
use super::journal::{self, RunRecord};
use super::lease::{new_identity, Lease};
use super::progress::Silent;
use super::protocol::{Claim, FleetOp, Protocol};
use super::report::{
    ConditionCounts, DrainReport, FailedMigration, FailedTenant, PublicStatus, RollbackReport,
    StatusReport, TenantStatus, UnreachableServer,
};
use super::runs::RunReport;
use super::template::TemplateChange;
use super::tenants::Adopted;
use super::{
    Canary, MigrateOptions, MigrateReport, Progress, RollbackTarget, SafetySettings, TenantSource,
    Timeouts, Transactions,
};
use crate::backend::{
    connect, with_fingerprints, Backend, ConnectOptions, Connection, ErrorClass, RegistryState,
    Target,
};
use crate::migration::format_order;
use crate::{
    Engine, Error, Migration, MigrationSet, MigrationStatus, Placement, Result, Scope, Server,
    ServerName, Tenant, TenantName, TenantRecord,
};

/// Runs migrations over a fleet: the library API behind the CLI.
///
/// ```no_run
/// # async fn demo() -> mtnt::Result<()> {
/// let migrator = mtnt::Migrator::connect("postgres://postgres@127.0.0.1/app").await?;
/// let report = migrator.migrate(&mtnt::MigrateOptions::new()).await?;
/// for failure in &report.failures {
///     eprintln!("{}: {}", failure.tenant, failure.error);
/// }
/// # Ok(()) }
/// ```
pub struct Migrator {
    backend: Box<dyn Backend>,
    migrations: MigrationSet,
    source: Option<Box<dyn TenantSource>>,
    concurrency: usize,
    per_server_concurrency: Option<usize>,
    page_size: usize,
    safety: SafetySettings,
    timeouts: Timeouts,
    transactions: Transactions,
    hooks: Hooks,
    run_history: usize,
    /// The server the `tenant` tracing spans name (host and port, no password).
    server: Option<String>,
    /// Whether tenants are created from a template where the engine can.
    templates: bool,
    /// How many spare storages `migrate` keeps, where the engine can rename storage.
    spares: usize,
    /// Where a new tenant goes when no server is named.
    placement: Arc<dyn Placement>,
}

/// How many tenants a run migrates at once unless told ([`MigratorBuilder::concurrency`],
/// `--concurrency`): 8 on PostgreSQL and SQLite, enough that the server's cores stay busy
/// while some tenants wait on a file sync (PostgreSQL 15 syncs each new index as it builds
/// it); 4 on MySQL and MariaDB, where each DDL statement commits and more sessions at once
/// made the same fleet slower (the benchmark, 100 tenants: 1.39x four plain sessions at 4,
/// 2.28x at 8).
pub fn default_concurrency(engine: Engine) -> usize {
    match engine {
        Engine::MySql => 4,
        _ => 8,
    }
}

/// Builds a [`Migrator`].
pub struct MigratorBuilder {
    backend: Box<dyn Backend>,
    migrations: Option<MigrationSet>,
    source: Option<Box<dyn TenantSource>>,
    concurrency: Option<usize>,
    per_server_concurrency: Option<usize>,
    page_size: usize,
    safety: SafetySettings,
    timeouts: Timeouts,
    transactions: Transactions,
    hooks: Hooks,
    run_history: usize,
    /// The server the `tenant` tracing spans name (host and port, no password).
    server: Option<String>,
    /// Whether tenants are created from a template where the engine can.
    templates: bool,
    /// How many spare storages `migrate` keeps, where the engine can rename storage.
    spares: usize,
    placement: Arc<dyn Placement>,
}

impl MigratorBuilder {
    /// The migrations to run; default: every registered one ([`MigrationSet::registered`]).
    pub fn migrations(mut self, migrations: MigrationSet) -> Self {
        self.migrations = Some(migrations);
        self
    }

    /// Where tenants come from; default: the backend's registry table.
    pub fn source(mut self, source: impl TenantSource + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// How many tenants are migrated at once (default [`default_concurrency`]; at most
    /// [`MAX_CONCURRENCY`](crate::MAX_CONCURRENCY): more fails at [`build`](Self::build));
    /// keep it below the pool size.
    pub fn concurrency(mut self, tenants: usize) -> Self {
        self.concurrency = Some(tenants.max(1));
        self
    }

    /// How many tenants of one server a fleet run migrates at once, within
    /// [`concurrency`](Self::concurrency) (default: no limit but that): the run takes the
    /// servers' tenants in turn, so every server is kept busy.
    pub fn per_server_concurrency(mut self, tenants: usize) -> Self {
        self.per_server_concurrency = Some(tenants.max(1));
        self
    }

    /// How many finished fleet runs the control journal keeps (default 100; 0 keeps
    /// none): `status`, `runs` and the fleet report show them.
    pub fn run_history(mut self, runs: usize) -> Self {
        self.run_history = runs;
        self
    }

    /// How many tenants are read from the source per query (default 1000).
    pub fn page_size(mut self, tenants: usize) -> Self {
        self.page_size = tenants.max(1);
        self
    }

    /// Deadlines, heartbeat and retries of fleet runs (default: [`SafetySettings::new`]).
    pub fn safety(mut self, settings: SafetySettings) -> Self {
        self.safety = settings;
        self
    }

    /// The lock and statement timeouts of migrations whose attribute sets none
    /// (default: [`Timeouts::default`]).
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// How many of a tenant's pending migrations share a transaction, where the engine's
    /// DDL is transactional (default: [`Transactions::PerTenant`]).
    pub fn transactions(mut self, transactions: Transactions) -> Self {
        self.transactions = transactions;
        self
    }

    /// The hooks to run (`#[mtnt::hook(...)]`); default: none. `mtnt::run!()` passes
    /// every registered one ([`Hooks::registered`]); a library user picks them, for
    /// example with [`Hooks::registered_in`], so that a migrator runs only the hooks it
    /// is meant to.
    pub fn hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// Whether `tenant create` copies a migrated template instead of replaying every
    /// migration, where the engine can copy a tenant's storage (SQLite) and the copy is
    /// the same tenant (default: true). `migrate` keeps the template current; a
    /// migration that asks for its tenant ([`Ctx::tenant`](crate::Ctx::tenant)), and
    /// tenant hooks, make tenants be created by replay anyway.
    pub fn templates(mut self, enabled: bool) -> Self {
        self.templates = enabled;
        self
    }

    /// How many spare schemas `migrate` keeps ready with every enabled tenant migration
    /// applied, for `tenant create` to take (PostgreSQL schema per tenant; default 0: none).
    /// Taking one is a rename in the transaction that registers the tenant, instead of
    /// replaying its migrations; when none is left, the tenant replays them. Spares are
    /// never registered (no command lists them), are dropped and made again when the
    /// migrations change, and are not made where a migration asks for its tenant, runs
    /// outside a transaction, or writes its schema's name into a definition (each makes a
    /// taken spare differ from a replayed tenant).
    pub fn spares(mut self, spares: usize) -> Self {
        self.spares = spares;
        self
    }

    /// The server (`host:port`, never a password) that the `tenant` tracing spans name;
    /// the command line sets it from the database URL.
    pub fn server(mut self, host: impl Into<String>) -> Self {
        self.server = Some(host.into());
        self
    }

    /// Where [`Migrator::create_tenant`] places a tenant when no server is named
    /// (default: [`FewestTenants`](crate::FewestTenants)).
    pub fn placement(mut self, placement: impl Placement + 'static) -> Self {
        self.placement = Arc::new(placement);
        self
    }

    /// Validates the migrations and settings and builds the migrator.
    pub fn build(self) -> Result<Migrator> {
        let concurrency = self
            .concurrency
            .unwrap_or_else(|| default_concurrency(self.backend.engine()));
        if concurrency > crate::MAX_CONCURRENCY {
            return Err(Error::Invalid(format!(
                "a concurrency of {} tenants is more than the {} one run migrates at once",
                concurrency,
                crate::MAX_CONCURRENCY
            )));
        }
        self.safety.validate()?;
        let migrations = match self.migrations {
            Some(set) => set,
            None => MigrationSet::registered()?,
        };
        Ok(Migrator {
            backend: self.backend,
            migrations,
            source: self.source,
            concurrency,
            per_server_concurrency: self.per_server_concurrency,
            page_size: self.page_size,
            safety: self.safety,
            timeouts: self.timeouts,
            transactions: self.transactions,
            hooks: self.hooks,
            run_history: self.run_history,
            server: self.server,
            templates: self.templates,
            spares: self.spares,
            placement: self.placement,
        })
    }
}

impl Migrator {
    /// Starts building a migrator on a backend (for example a
    /// [`PostgresBackend`](crate::PostgresBackend) made from your own pool).
    pub fn builder(backend: impl Backend + 'static) -> MigratorBuilder {
        Self::builder_boxed(Box::new(backend))
    }

    /// Like [`Migrator::builder`], for a backend that is boxed already.
    pub fn builder_boxed(backend: Box<dyn Backend>) -> MigratorBuilder {
        MigratorBuilder {
            backend,
            migrations: None,
            source: None,
            concurrency: None,
            per_server_concurrency: None,
            page_size: 1000,
            safety: SafetySettings::default(),
            timeouts: Timeouts::default(),
            transactions: Transactions::default(),
            hooks: Hooks::none(),
            run_history: journal::DEFAULT_RUN_HISTORY,
            server: None,
            templates: true,
            spares: 0,
            placement: Arc::new(crate::FewestTenants),
        }
    }

    /// The protocol over this migrator's backend, migrations, hooks and policy.
    fn protocol<'p>(&'p self, progress: &'p dyn Progress) -> Protocol<'p> {
        Protocol {
            progress,
            backend: &*self.backend,
            caps: self.backend.capabilities(),
            set: &self.migrations,
            timeouts: self.timeouts,
            transactions: self.transactions,
            hooks: &self.hooks,
            hook_failures: None,
            run_id: None,
            server: self.server.as_deref(),
            identity_read: None,
            templates: self.templates,
            spares: self.spares,
        }
    }

    /// Runs `work` on a connection to `target` holding its lock (waiting at most the
    /// unlock deadline), then releases it.
    async fn locked<'t, T>(
        &self,
        target: Target<'t>,
        work: impl for<'c> AsyncFnOnce(&'c mut dyn Connection) -> Result<T>,
    ) -> Result<T> {
        let mut conn = match self.backend.connect(target).await {
            Ok(conn) => conn,
            // Its storage went with the tenant, dropped since its registry row was read.
            Err(e) => {
                return Err(match target {
                    Target::Tenant(tenant)
                        if self.backend.classify(&e) == ErrorClass::StorageMissing
                            && super::protocol::dropped_meanwhile(&*self.backend, tenant)
                                .await? =>
                    {
                        Error::TenantGone {
                            tenant: tenant.name.clone(),
                        }
                    }
                    _ => e,
                })
            }
        };
        let result = async {
            lock_waiting(&mut *conn, target, &self.safety).await?;
            work(&mut *conn).await
        }
        .await;
        conn.release().await;
        result
    }

    /// Connects to `url` with default options and uses every registered migration.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder_boxed(connect(url, &ConnectOptions::default()).await?).build()
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The migrations, by order.
    pub fn migrations(&self) -> &MigrationSet {
        &self.migrations
    }

    /// The hooks it runs.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    fn check_order(&self, order: Option<i64>) -> Result<()> {
        match order {
            Some(order) if self.migrations.get(order).is_none() => {
                Err(Error::UnknownOrder(format_order(order)))
            }
            _ => Ok(()),
        }
    }

    /// What the registry records, read without writing; a backend of another tenancy
    /// model than the recorded one is refused.
    async fn check_recorded(&self) -> Result<RegistryState> {
        let state = self.backend.registry_state().await?;
        if let RegistryState::Recorded(recorded) = state {
            let given = self.backend.tenancy();
            if recorded != given {
                return Err(Error::TenancyMismatch { recorded, given });
            }
        }
        Ok(state)
    }

    /// Before a command that only reads: the registry has to exist, and nothing is
    /// created where it does not.
    async fn ready_to_read(&self) -> Result<()> {
        match self.check_recorded().await? {
            RegistryState::Missing {
                place,
                other_schemas,
            } => Err(Error::NoRegistry {
                place,
                other_schemas,
            }),
            _ => Ok(()),
        }
    }

    /// Before a command that writes: the recorded tenancy model checked before anything
    /// changes, then the control tables created and the model recorded where missing.
    async fn ready_to_write(&self) -> Result<()> {
        let before = self.check_recorded().await?;
        self.backend.prepare().await?;
        if !matches!(before, RegistryState::Recorded(_)) {
            // A first run of another model may have recorded its model meanwhile.
            self.check_recorded().await?;
        }
        Ok(())
    }

    /// The registry rows of `names`, failing on the first unknown one before anything runs.
    async fn records(&self, names: &[TenantName]) -> Result<Vec<TenantRecord>> {
        let records = self.backend.tenant_records(names).await?;
        if let Some(missing) = names
            .iter()
            .find(|n| !records.iter().any(|r| &r.tenant.name == *n))
        {
            return Err(Error::UnknownTenant(missing.to_string()));
        }
        Ok(records)
    }

    /// Applies the public migrations, then brings every tenant (or the named ones) up to date.
    ///
    /// A failing tenant does not stop the others: it is listed in
    /// [`MigrateReport::failures`]. An `Err` means nothing per-tenant could run (bad
    /// options, unreachable database, a failing public migration).
    pub async fn migrate(&self, options: &MigrateOptions) -> Result<MigrateReport> {
        self.migrate_with_progress(options, &Silent).await
    }

    /// [`Migrator::migrate`], reporting each tenant to `progress` as it finishes.
    pub async fn migrate_with_progress(
        &self,
        options: &MigrateOptions,
        progress: &dyn Progress,
    ) -> Result<MigrateReport> {
        self.check_order(options.to)?;
        self.fleet_run(
            FleetOp::Migrate { to: options.to },
            RunCommand::Migrate,
            options,
            progress,
        )
        .await
    }

    /// Reverts migrations in every tenant of `options` (its tenants, or all of them), with
    /// the same fan-out, locks, canary, waves and error budget as `migrate`. Refuses,
    /// before any tenant changes, when an irreversible migration is in the way in any of
    /// them. The report counts reverted migrations as `migrations_applied`.
    pub async fn rollback_fleet(
        &self,
        how_far: RollbackTarget,
        options: &MigrateOptions,
        progress: &dyn Progress,
    ) -> Result<MigrateReport> {
        if let RollbackTarget::To(order) = how_far {
            self.check_order(Some(order))?;
        }
        self.ready_to_write().await?;
        self.refuse_irreversible(how_far, options).await?;
        self.fleet_run(
            FleetOp::Rollback { how_far },
            RunCommand::Rollback,
            options,
            progress,
        )
        .await
    }

    /// Runs `sql` (one statement or a script) in every tenant of `options`, with the same
    /// fan-out, locks, canary, waves and error budget as `migrate`, in a transaction or
    /// (`transaction = false`, for `VACUUM` and the like) not. Nothing is recorded as a
    /// migration; the report counts the tenants it ran in as `migrations_applied`.
    pub async fn exec(
        &self,
        sql: &str,
        transaction: bool,
        options: &MigrateOptions,
        progress: &dyn Progress,
    ) -> Result<MigrateReport> {
        self.fleet_run(
            FleetOp::Exec { sql, transaction },
            RunCommand::Exec,
            options,
            progress,
        )
        .await
    }

    /// Refuses a fleet rollback that an irreversible migration blocks in any selected
    /// tenant, reading every one first (no lock, no write).
    async fn refuse_irreversible(
        &self,
        how_far: RollbackTarget,
        options: &MigrateOptions,
    ) -> Result<()> {
        let records = if options.tenants.is_empty() {
            self.all_records().await?
        } else {
            self.records(&options.tenants).await?
        };
        for record in records
            .iter()
            .filter(|r| options.shard.is_none_or(|s| s.contains(&r.tenant.name)))
        {
            let target = Target::Tenant(&record.tenant);
            let mut conn = self.backend.connect(target).await?;
            let state = conn.read().await;
            conn.release().await;
            let state = state?;
            super::plan::plan_down(
                target,
                &state.applied,
                &self.migrations,
                Scope::Tenant,
                how_far,
            )
            .map(drop)?;
        }
        Ok(())
    }

    /// One fleet run of `op`: the `before_run` hooks, the public migrations (for
    /// `migrate`), the tenants, then the `after_run` hooks, under a lease.
    async fn fleet_run(
        &self,
        op: FleetOp<'_>,
        command: RunCommand,
        options: &MigrateOptions,
        progress: &dyn Progress,
    ) -> Result<MigrateReport> {
        let started = Instant::now();
        let started_at = chrono::Utc::now();
        self.ready_to_write().await?;
        let tenants = if options.tenants.is_empty() {
            match &self.source {
                Some(source) => Tenants::Source(&**source),
                None => Tenants::Registry,
            }
        } else {
            Tenants::Listed(self.records(&options.tenants).await?)
        };
        self.refuse_ahead_of_code(&options.tenants).await?;
        self.known_servers(&options.rollout.servers).await?;
        if let Canary::Tenants(names) = &options.rollout.canary {
            // A misspelt canary is refused before the public migrations run.
            self.records(names).await?;
        }
        let concurrency = self.fleet_concurrency(progress).await?;
        let me = new_identity(command.as_str());
        let lease = Lease::acquire(&*self.backend, &self.safety, &me).await?;
        progress.run_id(&me.run_id);
        let claims = FleetClaims::new(&self.safety, lease.as_ref(), options.shard, concurrency);
        let hook_failures = HookFailures::default();
        let protocol = Protocol {
            hook_failures: Some(&hook_failures),
            run_id: Some(&me.run_id),
            ..self.protocol(progress)
        };
        let run = |tenant_count, report| RunInfo {
            command,
            tenants: &options.tenants,
            tenant_count,
            report,
        };
        // Everything before the tenants: a failure here ends the run with an error.
        let prelude = async {
            let total = match &tenants {
                Tenants::Listed(records) => records.len() as u64,
                _ if !options.rollout.servers.is_empty() => self
                    .backend
                    .servers()
                    .await?
                    .iter()
                    .filter(|s| options.rollout.servers.contains(&s.name))
                    .map(|s| s.tenants)
                    .sum(),
                _ => self.backend.tenant_count().await?,
            };
            hooks::before_run(&self.hooks, &run(total, None)).await?;
            let public_applied = match op {
                FleetOp::Migrate { to } => {
                    run_waiting(
                        &protocol,
                        Target::Public,
                        None,
                        FleetOp::Migrate { to },
                        &self.safety,
                    )
                    .await?
                }
                _ => Claim::Done(0),
            };
            Ok::<_, Error>((total, public_applied))
        };
        let (total, public_applied) = match prelude.await {
            Ok((total, Claim::Done(n))) => (total, n),
            Ok((total, _)) => (total, 0),
            Err(e) => {
                if let Some(lease) = lease {
                    lease.release("failed").await;
                }
                return Err(e);
            }
        };
        let mut report = MigrateReport {
            run_id: Some(me.run_id.clone()),
            public_applied,
            ..MigrateReport::default()
        };
        progress.start(total);
        let result = migrate_fleet(
            &protocol,
            tenants,
            FleetRun {
                op,
                concurrency,
                per_server: self.per_server_concurrency,
                page_size: self.page_size,
                fail_fast: options.fail_fast,
                rollout: options.rollout.clone(),
                total: total as usize,
            },
            &claims,
            progress,
            &mut report,
        )
        .await;
        progress.finish();
        if options.tenants.is_empty() && self.source.is_none() && result.is_ok() {
            // One hand-inserted row with an invalid name fails only itself.
            match self.invalid_registry_rows().await {
                Ok(rows) => report.invalid_registry_rows = rows,
                Err(e) => tracing::warn!("could not look for invalid registry rows: {e}"),
            }
        }
        if let Some(lease) = lease {
            if let Some(why) = lease.lost() {
                report.stopped = Some(why);
            }
            let ok = result.is_ok() && report.is_success();
            lease.release(if ok { "finished" } else { "failed" }).await;
        }
        result?;
        if matches!(op, FleetOp::Migrate { to: None }) {
            // Kept current here, so that `tenant create` finds it so.
            match self.protocol(progress).refresh_template(&self.safety).await {
                Ok(change) => report.template = change,
                Err(e) => {
                    let message = format!(
                        "could not bring the tenant template up to date (tenant create replays the migrations until it is): {e}"
                    );
                    tracing::warn!("{message}");
                    progress.warning(&message);
                }
            }
        }
        report.elapsed = started.elapsed();
        report.hook_failures = hook_failures.into_inner().unwrap_or_default();
        report
            .hook_failures
            .sort_by(|a, b| (&a.tenant, a.hook).cmp(&(&b.tenant, b.hook)));
        let after = hooks::after_run(&self.hooks, &run(total, Some(&report))).await;
        report.hook_failures.extend(after);
        let shaped_by = run_options(concurrency, options);
        if let Err(e) = journal::record_run(
            &*self.backend,
            &me,
            started_at,
            shaped_by,
            &report,
            self.run_history,
        )
        .await
        {
            // The run's work is committed; only its history entry is missing.
            tracing::warn!("could not keep the run in the control journal: {e}");
        }
        Ok(report)
    }

    /// The configured concurrency, lowered to what the pool and the server allow.
    async fn fleet_concurrency(&self, progress: &dyn Progress) -> Result<usize> {
        Ok(match self.backend.connection_budget().await? {
            Some(budget) if budget < self.concurrency => {
                // Fewer workers rather than workers waiting for connections the server
                // cannot give (a pool's acquire times out only after 30 s).
                let message = format!(
                    "concurrency {} lowered to {budget}: the pool and the server (max_connections, less the sessions connected now) have connections for that many tenants at once",
                    self.concurrency
                );
                tracing::warn!("{message}");
                progress.warning(&message);
                budget.max(1)
            }
            _ => self.concurrency,
        })
    }

    /// Refuses, before anything changes, a run over tenants (`names`, or all) of which
    /// one has a migration applied that this binary does not know.
    async fn refuse_ahead_of_code(&self, names: &[TenantName]) -> Result<()> {
        let Some(control) = self.backend.leases() else {
            return Ok(());
        };
        let known: Vec<i64> = self
            .migrations
            .scope(Scope::Tenant)
            .map(Migration::order)
            .collect();
        match control.ahead_of_code(&known, names).await? {
            None => Ok(()),
            Some((tenant, order, name)) => Err(Error::UnknownApplied {
                target: format!("tenant {tenant}"),
                order: format_order(order),
                name,
            }),
        }
    }

    /// The leases of the runs working on the fleet now (empty where the backend keeps
    /// no leases). A lease whose heartbeat is older than the unlock deadline is
    /// [`stale`](crate::RunLease::stale): its runner is dead, and the next run takes it
    /// over.
    pub async fn running(&self) -> Result<Vec<crate::RunLease>> {
        let mut leases = match self.backend.leases() {
            Some(control) => control.running().await?,
            None => Vec::new(),
        };
        let deadline = self.safety.unlock_deadline.as_secs_f64();
        for lease in &mut leases {
            lease.stale = lease.silent_secs > deadline;
        }
        Ok(leases)
    }

    /// Reverts tenant migrations of one tenant, newest first. Refuses, before changing
    /// anything, when an irreversible migration is in the way.
    pub async fn rollback(
        &self,
        tenant: &TenantName,
        how_far: RollbackTarget,
    ) -> Result<RollbackReport> {
        if let RollbackTarget::To(order) = how_far {
            self.check_order(Some(order))?;
        }
        self.ready_to_write().await?;
        let record = self.records(std::slice::from_ref(tenant)).await?.remove(0);
        let target = Target::Tenant(&record.tenant);
        let protocol = self.protocol(&Silent);
        let reverted = self
            .locked(target, async |conn| {
                protocol
                    .rollback_locked(conn, target, Some(&record), how_far)
                    .await
            })
            .await?;
        Ok(RollbackReport {
            tenant: tenant.clone(),
            reverted: reverted.iter().map(|m| (m.order(), m.name())).collect(),
        })
    }

    /// Where the public schema and each tenant (or the named ones) stand, from the
    /// registry in one query per page.
    pub async fn status(&self, names: &[TenantName]) -> Result<StatusReport> {
        self.ready_to_read().await?;
        let public_rows = {
            let mut conn = self.backend.connect(Target::Public).await?;
            let state = conn.read().await;
            conn.release().await;
            state?.applied
        };
        let public_done: Vec<i64> = public_rows
            .iter()
            .filter(|r| r.status == MigrationStatus::Completed)
            .map(|r| r.order)
            .collect();
        let public = PublicStatus {
            applied_order: public_done.iter().copied().max(),
            pending: self
                .migrations
                .scope(Scope::Public)
                .filter(|m| m.is_enabled() && !public_done.contains(&m.order()))
                .count(),
            failed: public_rows
                .iter()
                .find(|r| r.status != MigrationStatus::Completed && r.error.is_some())
                .map(|r| FailedMigration {
                    order: r.order,
                    name: self.migrations.get(r.order).map(Migration::name),
                    error: r.error.clone(),
                }),
        };
        let records = self.records_with_fingerprints(names).await?;
        let standings = standings(
            &*self.backend,
            &self.migrations,
            &records,
            self.concurrency,
            None,
        )
        .await?;
        let mut unreachable_servers: Vec<UnreachableServer> = Vec::new();
        for ((record, _), standing) in records.iter().zip(&standings) {
            let (Some(why), Some(server)) = (&standing.unreachable, &record.tenant.server) else {
                continue;
            };
            match unreachable_servers.iter_mut().find(|u| &u.server == server) {
                Some(known) => known.tenants += 1,
                None => unreachable_servers.push(UnreachableServer {
                    server: server.clone(),
                    tenants: 1,
                    error: why.clone(),
                }),
            }
        }
        unreachable_servers.sort_by(|a, b| a.server.cmp(&b.server));
        let tenants: Vec<TenantStatus> = records
            .into_iter()
            .zip(standings)
            .map(|((record, _), standing)| TenantStatus {
                pending: standing.pending.len(),
                oldest_pending: standing.pending.first().map(|m| PlannedMigration {
                    order: m.order(),
                    name: m.name(),
                }),
                // A recorded failure of a migration this binary does not run (disabled, or
                // not in its code: a reverted deploy) is nothing it can retry or report on.
                failed: record
                    .failed_order
                    .filter(|_| standing.condition == Condition::Failed)
                    .filter(|order| {
                        self.migrations
                            .get(*order)
                            .is_some_and(Migration::is_enabled)
                    })
                    .map(|order| FailedMigration {
                        order,
                        name: self.migrations.get(order).map(Migration::name),
                        error: record.last_error.clone(),
                    }),
                condition: standing.condition,
                detail: standing.detail,
                applied_order: record.applied_order,
                state: record.state,
                server: record
                    .tenant
                    .server
                    .unwrap_or_else(ServerName::default_server),
                storage: record.tenant.storage,
                tenant: record.tenant.name,
            })
            .collect();
        let counts = ConditionCounts::of(&tenants);
        Ok(StatusReport {
            latest_tenant_order: self
                .migrations
                .scope(Scope::Tenant)
                .filter(|m| m.is_enabled())
                .map(Migration::order)
                .last(),
            public,
            current: counts.current,
            behind: counts.behind,
            failed: counts.failed,
            out_of_order: counts.out_of_order,
            drifted: counts.drifted,
            needs_repair: counts.needs_repair,
            ahead: counts.ahead,
            creating: counts.creating,
            last_drift: journal::last_drift(&*self.backend).await?,
            last_run: journal::runs(&*self.backend, 1).await?.pop(),
            invalid_registry_rows: if names.is_empty() {
                self.invalid_registry_rows().await?
            } else {
                Vec::new()
            },
            unreachable_servers,
            tenants,
        })
    }

    /// What [`Migrator::migrate`] would do with `options` (the tenants, up to the newest
    /// migration), grouped by identical pending lists, without changing anything: the
    /// registry is read in bulk, and only tenants whose registry row cannot prove their
    /// state have their tracking rows read (no lock, no write).
    pub async fn plan(&self, options: &MigrateOptions) -> Result<PlanReport> {
        self.ready_to_read().await?;
        self.known_servers(&options.rollout.servers).await?;
        let public = {
            let mut conn = self.backend.connect(Target::Public).await?;
            let state = conn.read().await;
            conn.release().await;
            state?
        };
        let public = classify_rows(
            Target::Public,
            &public.applied,
            &self.migrations,
            Scope::Public,
            None,
            options.to,
        );
        let mut records = self.records_with_fingerprints(&options.tenants).await?;
        records.retain(|(r, _)| options.rollout.takes(r));
        if let Some(shard) = options.shard {
            records.retain(|(r, _)| shard.contains(&r.tenant.name));
        }
        let standings = standings(
            &*self.backend,
            &self.migrations,
            &records,
            self.concurrency,
            options.to,
        )
        .await?;
        Ok(PlanReport::new(
            public,
            records.into_iter().map(|(r, _)| r),
            standings,
        ))
    }

    /// The registry rows of `names` (every tenant's when empty), failing on the first
    /// unknown one, each with its fingerprint
    /// ([`Backend::tenant_page_with_fingerprints`]).
    async fn records_with_fingerprints(
        &self,
        names: &[TenantName],
    ) -> Result<Vec<(TenantRecord, Option<String>)>> {
        if !names.is_empty() {
            return with_fingerprints(&*self.backend, self.records(names).await?).await;
        }
        self.every_page(
            |(record, _): &(TenantRecord, _)| &record.tenant.name,
            async |after| {
                self.backend
                    .tenant_page_with_fingerprints(after, self.page_size)
                    .await
            },
        )
        .await
    }

    /// Every item of the registry, read by `page` a page at a time after the `name` of
    /// the last item read.
    async fn every_page<T>(
        &self,
        name: impl Fn(&T) -> &TenantName,
        page: impl AsyncFn(Option<&TenantName>) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let mut all = Vec::new();
        loop {
            let next = page(all.last().map(&name)).await?;
            let done = next.len() < self.page_size;
            all.extend(next);
            if done {
                return Ok(all);
            }
        }
    }

    async fn all_records(&self) -> Result<Vec<TenantRecord>> {
        self.every_page(
            |record: &TenantRecord| &record.tenant.name,
            async |after| self.backend.tenant_page(after, self.page_size).await,
        )
        .await
    }

    /// Schema drift: each tenant's actual schema (or the named tenants'), read from its
    /// engine's catalog, compared with the other tenants at the same applied order. Reads
    /// only and takes no lock; see [`DriftReport`] for what it finds.
    pub async fn drift(&self, names: &[TenantName]) -> Result<DriftReport> {
        self.ready_to_read().await?;
        let records = if names.is_empty() {
            self.all_records().await?
        } else {
            self.records(names).await?
        };
        let report = drift::check(&*self.backend, records).await?;
        if let Err(e) = journal::record_drift(&*self.backend, &report).await {
            tracing::warn!("could not keep the drift check in the control journal: {e}");
        }
        Ok(report)
    }

    /// The newest `limit` finished fleet runs the control journal keeps, newest first
    /// (see [`MigratorBuilder::run_history`]).
    pub async fn runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        self.ready_to_read().await?;
        journal::runs(&*self.backend, limit).await
    }

    /// The rows of the tenant registry whose name is no valid tenant name (inserted by
    /// hand), which every other registry read leaves out.
    pub async fn invalid_registry_rows(&self) -> Result<Vec<crate::InvalidRegistryRow>> {
        Ok(self
            .backend
            .invalid_registry_rows()
            .await?
            .into_iter()
            .filter_map(crate::InvalidRegistryRow::of)
            .collect())
    }

    /// Every registered tenant, by name.
    pub async fn tenants(&self) -> Result<Vec<TenantRecord>> {
        self.ready_to_read().await?;
        self.all_records().await
    }

    /// Registers a tenant, creates its schema and applies every enabled tenant migration,
    /// all or nothing: when a migration fails, the schema and the registry row are gone again.
    pub async fn create_tenant(&self, name: &TenantName) -> Result<Tenant> {
        self.create_tenant_with_progress(name, &Silent).await
    }

    /// [`Migrator::create_tenant`], reporting each migration to `progress` as it is
    /// committed.
    pub async fn create_tenant_with_progress(
        &self,
        name: &TenantName,
        progress: &dyn Progress,
    ) -> Result<Tenant> {
        self.create_tenant_on_with_progress(name, None, progress)
            .await
    }

    /// [`Migrator::create_tenant`] on `server`; `None`: where the [`Placement`] puts it
    /// (see [`MigratorBuilder::placement`]).
    pub async fn create_tenant_on(
        &self,
        name: &TenantName,
        server: Option<&ServerName>,
    ) -> Result<Tenant> {
        self.create_tenant_on_with_progress(name, server, &Silent)
            .await
    }

    /// [`Migrator::create_tenant_on`], reporting each migration to `progress` as it is
    /// committed.
    pub async fn create_tenant_on_with_progress(
        &self,
        name: &TenantName,
        server: Option<&ServerName>,
        progress: &dyn Progress,
    ) -> Result<Tenant> {
        self.check_server_named(server)?;
        self.ready_to_write().await?;
        let server = match server {
            Some(server) => self.open_server(server).await?,
            None => self.place(name, None).await?,
        };
        self.migrate_public_first().await?;
        let tenant = Tenant::new(name.clone()).on(Some(server));
        let protocol = self.protocol(progress);
        let change = protocol
            .create_tenant(&tenant, &self.safety)
            .instrument(protocol.tenant_span(name))
            .await?;
        if let Some(change) = change {
            tracing::info!(tenant = %name, ?change, "the tenant template was brought up to date");
        }
        Ok(tenant)
    }

    /// Brings the tenant template (or the spares, see [`MigratorBuilder::spares`]) up to
    /// date with the enabled tenant migrations (what `migrate` does after the tenants, and
    /// `tenant create` before it copies the template): what changed, or `None` where
    /// nothing did or neither is used (the engine cannot copy storage, templates are off,
    /// or tenant hooks are registered).
    pub async fn refresh_template(&self) -> Result<Option<TemplateChange>> {
        self.ready_to_write().await?;
        self.protocol(&Silent).refresh_template(&self.safety).await
    }

    /// Refuses a server other than the default one where the engine has no servers, before
    /// anything is read.
    fn check_server_named(&self, server: Option<&ServerName>) -> Result<()> {
        if server.is_some_and(|s| !s.is_default()) && !self.backend.capabilities().servers {
            return Err(Error::OneServer {
                engine: self.backend.engine(),
            });
        }
        Ok(())
    }

    /// `server` as the server of a new (or moved) tenant: [`Error::UnknownServer`] when it
    /// is not registered, [`Error::ServerCordoned`] when it takes no new tenants.
    async fn open_server(&self, server: &ServerName) -> Result<ServerName> {
        if registered(&self.backend.servers().await?, server)?.cordoned {
            return Err(Error::ServerCordoned {
                server: server.clone(),
            });
        }
        Ok(server.clone())
    }

    /// Where the [`Placement`] puts the tenant `name`, among the servers that take new
    /// tenants, `but` (a server being drained) left out.
    async fn place(&self, name: &TenantName, but: Option<&ServerName>) -> Result<ServerName> {
        let open: Vec<Server> = self
            .backend
            .servers()
            .await?
            .into_iter()
            .filter(|s| !s.cordoned && Some(&s.name) != but)
            .collect();
        if open.is_empty() {
            return Err(Error::NoServerTakesTenants { but: but.cloned() });
        }
        Ok(self.placement.place(name, &open))
    }

    /// Each of `servers` (a selection of a run), checked against the registry before
    /// anything is written.
    async fn known_servers(&self, servers: &[ServerName]) -> Result<()> {
        if servers.is_empty() {
            return Ok(());
        }
        for server in servers {
            self.check_server_named(Some(server))?;
        }
        let listed = self.backend.servers().await?;
        for server in servers {
            registered(&listed, server)?;
        }
        Ok(())
    }

    /// `server`, checked against the registry: [`Error::UnknownServer`] when it is not
    /// registered.
    async fn known_server(&self, server: &ServerName) -> Result<ServerName> {
        if !server.is_default() {
            registered(&self.backend.servers().await?, server)?;
        }
        Ok(server.clone())
    }

    /// Moves the tenant `name` to `server`, under its lock (waiting at most the unlock
    /// deadline): see [`Backend::move_tenant`]. Running it again after a crash finishes
    /// the move or cleans up after it.
    pub async fn move_tenant(
        &self,
        name: &TenantName,
        server: &ServerName,
        keep_source: bool,
    ) -> Result<Tenant> {
        self.check_server_named(Some(server))?;
        self.ready_to_write().await?;
        let to = Some(self.open_server(server).await?).filter(|s| !s.is_default());
        let record = self.records(std::slice::from_ref(name)).await?.remove(0);
        let tenant = record.tenant;
        self.locked(Target::Tenant(&tenant), async |_| {
            self.backend
                .move_tenant(&tenant, to.as_ref(), keep_source)
                .await
        })
        .await?;
        Ok(Tenant {
            server: to,
            ..tenant.clone()
        })
    }

    /// The servers of the fleet, the default one first, each with its tenant count. Only
    /// reads.
    pub async fn servers(&self) -> Result<Vec<Server>> {
        self.ready_to_read().await?;
        self.backend.servers().await
    }

    /// Registers the server `name` at `url`, stored without its password: connections take
    /// it from [`ServerName::password_variable`] or the password file. First it connects:
    /// a server that does not answer is not added ([`Error::ServerNotAdded`]), nor one that
    /// is a registered server under another name ([`Error::SameServer`]).
    pub async fn add_server(&self, name: &ServerName, url: &str) -> Result<()> {
        self.add_server_checked(name, url, true).await
    }

    /// [`Migrator::add_server`] without connecting to it: for a server that is not up yet.
    pub async fn add_server_unchecked(&self, name: &ServerName, url: &str) -> Result<()> {
        self.add_server_checked(name, url, false).await
    }

    async fn add_server_checked(&self, name: &ServerName, url: &str, check: bool) -> Result<()> {
        self.check_server_named(Some(name))?;
        crate::url_without_password(url)?;
        self.ready_to_write().await?;
        self.backend.add_server(name, url, check).await
    }

    /// Cordons the server `name` (`cordoned`: it keeps its tenants but takes no new ones,
    /// [`Server::cordoned`]) or lets it take them again. The default server can be
    /// cordoned too.
    pub async fn cordon_server(&self, name: &ServerName, cordoned: bool) -> Result<()> {
        self.check_server_named(Some(name))?;
        self.ready_to_write().await?;
        self.backend.cordon_server(name, cordoned).await
    }

    /// Moves every tenant off the server `from`, which is cordoned first (no new tenant
    /// lands there meanwhile): each to `to`, or where the [`Placement`] puts it among the
    /// other servers that take tenants, one [`Migrator::move_tenant`] after the other.
    /// `each` hears of every tenant as its move ends. A tenant that fails to move stays
    /// where it was, and the others move on; running it again moves what is left. The
    /// server can then be removed.
    pub async fn drain_server(
        &self,
        from: &ServerName,
        to: Option<&ServerName>,
        keep_source: bool,
        each: &mut (dyn FnMut(&TenantName, &Result<Tenant>) + Send),
    ) -> Result<DrainReport> {
        self.check_server_named(Some(from))?;
        self.ready_to_write().await?;
        if to == Some(from) {
            return Err(Error::Invalid(format!(
                "server {from} cannot be drained onto itself; name another server, or none to place each tenant"
            )));
        }
        if let Some(to) = to {
            self.open_server(to).await?;
        }
        self.backend.cordon_server(from, true).await?;
        let on_it = Some(from).filter(|s| !s.is_default());
        let tenants: Vec<TenantName> = self
            .all_records()
            .await?
            .into_iter()
            .filter(|r| r.tenant.server.as_ref() == on_it)
            .map(|r| r.tenant.name)
            .collect();
        let mut report = DrainReport::default();
        for name in tenants {
            let moved = match to {
                Some(to) => Ok(to.clone()),
                None => self.place(&name, Some(from)).await,
            };
            let moved = match moved {
                Ok(to) => self.move_tenant(&name, &to, keep_source).await,
                Err(e) => Err(e),
            };
            each(&name, &moved);
            match moved {
                Ok(tenant) => report.moved.push((name, tenant.server.unwrap_or_default())),
                Err(error) => report.failed.push(FailedTenant {
                    tenant: name,
                    error,
                }),
            }
        }
        Ok(report)
    }

    /// Removes the server `name` from the registry; [`Error::ServerInUse`] while tenants
    /// are placed on it.
    pub async fn remove_server(&self, name: &ServerName) -> Result<()> {
        self.check_server_named(Some(name))?;
        self.ready_to_write().await?;
        self.backend.remove_server(name).await
    }

    /// The registry row of the tenant `name`: [`Error::UnknownTenant`] when there is none,
    /// [`Error::NoRegistry`] where mtnt never ran. Only reads.
    pub async fn tenant(&self, name: &TenantName) -> Result<TenantRecord> {
        self.ready_to_read().await?;
        Ok(self.records(std::slice::from_ref(name)).await?.remove(0))
    }

    /// Removes a tenant: its storage with all its data, and its registry row, once no
    /// other run works on it (waiting at most the unlock deadline).
    pub async fn drop_tenant(&self, name: &TenantName) -> Result<()> {
        self.ready_to_write().await?;
        let record = self.records(std::slice::from_ref(name)).await?.remove(0);
        self.protocol(&Silent)
            .drop_tenant(&record.tenant, &self.safety)
            .await
    }

    /// Applies the pending public migrations alone (what [`Migrator::create_tenant`] and
    /// [`Migrator::migrate`] do first), and returns how many ran.
    pub async fn migrate_public(&self) -> Result<usize> {
        self.ready_to_write().await?;
        match run_waiting(
            &self.protocol(&Silent),
            Target::Public,
            None,
            FleetOp::Migrate { to: None },
            &self.safety,
        )
        .await?
        {
            Claim::Done(n) => Ok(n),
            _ => Ok(0),
        }
    }

    async fn migrate_public_first(&self) -> Result<()> {
        run_waiting(
            &self.protocol(&Silent),
            Target::Public,
            None,
            FleetOp::Migrate { to: None },
            &self.safety,
        )
        .await
        .map(drop)
    }

    /// Registers existing schemas matching the SQL `LIKE` pattern as tenants. With
    /// `baseline`, every tenant migration up to that order is recorded as applied
    /// without running (the schemas already have those tables).
    pub async fn adopt(
        &self,
        like: &str,
        baseline: Option<i64>,
    ) -> Result<(Vec<Tenant>, Vec<String>)> {
        self.adopt_with_progress(like, baseline, &Silent).await
    }

    /// [`Migrator::adopt`], reporting each tenant to `progress` as it is registered.
    pub async fn adopt_with_progress(
        &self,
        like: &str,
        baseline: Option<i64>,
        progress: &dyn Progress,
    ) -> Result<(Vec<Tenant>, Vec<String>)> {
        self.adopt_on(like, baseline, None, progress).await
    }

    /// [`Migrator::adopt_with_progress`] of the storage on `server` (`None`: the control
    /// database's own).
    pub async fn adopt_on(
        &self,
        like: &str,
        baseline: Option<i64>,
        server: Option<&ServerName>,
        progress: &dyn Progress,
    ) -> Result<(Vec<Tenant>, Vec<String>)> {
        self.check_order(baseline)?;
        self.check_server_named(server)?;
        self.ready_to_write().await?;
        let server = match server {
            Some(server) => Some(self.known_server(server).await?).filter(|s| !s.is_default()),
            None => None,
        };
        let baseline: Vec<&'static Migration> = match baseline {
            None => Vec::new(),
            Some(order) => self
                .migrations
                .scope(Scope::Tenant)
                .filter(|m| m.is_enabled() && m.order() <= order)
                .collect(),
        };
        let result = self
            .protocol(progress)
            .adopt(like, server.as_ref(), &baseline, &self.safety, progress)
            .await;
        progress.finish();
        let Adopted {
            tenants,
            invalid,
            taken,
        } = result?;
        for name in taken {
            tracing::info!(tenant = %name, "another run adopted it meanwhile");
        }
        Ok((tenants, invalid))
    }

    /// Records the code's checksum for every applied migration whose code changed, in the
    /// public schema and every tenant (or the named ones). Returns how many rows changed.
    pub async fn repair_checksums(&self, names: &[TenantName]) -> Result<usize> {
        self.ready_to_write().await?;
        let mut changed = self.repair_target(Target::Public).await?;
        let records = if names.is_empty() {
            self.all_records().await?
        } else {
            self.records(names).await?
        };
        for record in &records {
            changed += self.repair_target(Target::Tenant(&record.tenant)).await?;
        }
        Ok(changed)
    }

    async fn repair_target(&self, target: Target<'_>) -> Result<usize> {
        let protocol = self.protocol(&Silent);
        self.locked(target, async |conn| {
            protocol.repair_checksums_locked(conn, target).await
        })
        .await
    }

    /// Sets the tracking status of one migration in one tenant (or the public schema when
    /// `tenant` is `None`) without running it: `Completed` after checking by hand that an
    /// interrupted migration took effect, `Pending` to have it run again.
    pub async fn mark(
        &self,
        tenant: Option<&TenantName>,
        order: i64,
        status: MigrationStatus,
    ) -> Result<()> {
        self.check_order(Some(order))?;
        let migration = self.migrations.get(order).expect("checked above");
        self.ready_to_write().await?;
        let protocol = self.protocol(&Silent);
        let record = match tenant {
            None => None,
            Some(name) => Some(self.records(std::slice::from_ref(name)).await?.remove(0)),
        };
        let target = match &record {
            None => Target::Public,
            Some(record) => Target::Tenant(&record.tenant),
        };
        self.locked(target, async |conn| {
            protocol.mark_locked(conn, target, migration, status).await
        })
        .await
    }
}

impl Migrator {
    /// What the fleet run `run_id` (a [`MigrateReport::run_id`], as `migrate` prints it)
    /// did in every tenant (or the named ones): the tracking rows whose last write was
    /// the run's, read in bulk where the engine can. Changes nothing.
    pub async fn run_status(&self, run_id: &str, names: &[TenantName]) -> Result<RunReport> {
        self.backend.prepare().await?;
        let records = if names.is_empty() {
            self.all_records().await?
        } else {
            self.records(names).await?
        };
        let tenants: Vec<Tenant> = records.into_iter().map(|r| r.tenant).collect();
        let rows = self
            .backend
            .run_rows(run_id, &tenants, self.concurrency)
            .await?;
        Ok(RunReport::new(run_id, rows))
    }
}

/// What shaped a run, for its history entry: never a URL or anything that may hold a
/// password.
fn run_options(concurrency: usize, options: &MigrateOptions) -> String {
    let mut out = format!("concurrency {concurrency}");
    if !options.tenants.is_empty() {
        out.push_str(&format!(", {} tenants named", options.tenants.len()));
    }
    if let Some(to) = options.to {
        out.push_str(&format!(", to {}", format_order(to)));
    }
    if let Some(shard) = options.shard {
        out.push_str(&format!(", shard {shard}"));
    }
    if options.fail_fast {
        out.push_str(", fail fast");
    }
    out
}

/// `server` among the `listed` servers of the registry; [`Error::UnknownServer`] when it is
/// not there.
fn registered<'a>(listed: &'a [Server], server: &ServerName) -> Result<&'a Server> {
    listed
        .iter()
        .find(|s| &s.name == server)
        .ok_or_else(|| Error::UnknownServer {
            server: server.clone(),
            default: crate::DEFAULT_SERVER,
        })
}
