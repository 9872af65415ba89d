use std::time::Instant;

use super::claim::{lock_waiting, migrate_waiting, Guard};
use super::executor::{migrate_fleet, rollback_target, FleetRun, Tenants};
use super::lease::Lease;
use super::progress::Silent;
use super::report::{FailedMigration, PublicStatus, RollbackReport, StatusReport, TenantStatus};
use super::{
    MigrateOptions, MigrateReport, Progress, RollbackTarget, SafetySettings, TenantSource,
};
use crate::backend::{connect, ConnectOptions};
use crate::migration::format_order;
use crate::{
    Backend, Direction, Error, Migration, MigrationSet, MigrationStatus, Result, Scope, Target,
    Tenant, TenantName, TenantRecord,
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
    page_size: usize,
    safety: SafetySettings,
}

/// Builds a [`Migrator`].
pub struct MigratorBuilder {
    backend: Box<dyn Backend>,
    migrations: Option<MigrationSet>,
    source: Option<Box<dyn TenantSource>>,
    concurrency: usize,
    page_size: usize,
    safety: SafetySettings,
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

    /// How many tenants are migrated at once (default 4, at most
    /// [`MAX_CONCURRENCY`](crate::MAX_CONCURRENCY): more fails at [`build`](Self::build));
    /// keep it below the pool size.
    pub fn concurrency(mut self, tenants: usize) -> Self {
        self.concurrency = tenants.max(1);
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

    /// Validates the migrations and settings and builds the migrator.
    pub fn build(self) -> Result<Migrator> {
        if self.concurrency > crate::MAX_CONCURRENCY {
            return Err(Error::Invalid(format!(
                "a concurrency of {} tenants is more than the {} one run migrates at once",
                self.concurrency,
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
            concurrency: self.concurrency,
            page_size: self.page_size,
            safety: self.safety,
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
            concurrency: 4,
            page_size: 1000,
            safety: SafetySettings::default(),
        }
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

    fn check_order(&self, order: Option<i64>) -> Result<()> {
        match order {
            Some(order) if self.migrations.get(order).is_none() => {
                Err(Error::UnknownOrder(format_order(order)))
            }
            _ => Ok(()),
        }
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
        let started = Instant::now();
        self.check_order(options.to)?;
        self.backend.prepare().await?;
        let tenants = if options.tenants.is_empty() {
            match &self.source {
                Some(source) => Tenants::Source(&**source),
                None => Tenants::Registry,
            }
        } else {
            Tenants::Listed(self.records(&options.tenants).await?)
        };
        self.refuse_ahead_of_code(&options.tenants).await?;
        let concurrency = self.fleet_concurrency().await?;
        let lease = Lease::acquire(&*self.backend, &self.safety, "migrate").await?;
        let guard = Guard::new(&self.safety, lease.as_ref(), options.shard);
        let public_applied = migrate_waiting(
            &*self.backend,
            Target::Public,
            &self.migrations,
            options.to,
            &self.safety,
        )
        .await;
        let public_applied = match public_applied {
            Ok(n) => n,
            Err(e) => {
                if let Some(lease) = lease {
                    lease.release("failed").await;
                }
                return Err(e);
            }
        };
        let mut report = MigrateReport {
            public_applied,
            ..MigrateReport::default()
        };
        let total = match &tenants {
            Tenants::Listed(records) => records.len() as u64,
            _ => self.backend.tenant_count().await?,
        };
        progress.start(total);
        let result = migrate_fleet(
            &*self.backend,
            &self.migrations,
            tenants,
            FleetRun {
                to: options.to,
                concurrency,
                page_size: self.page_size,
                fail_fast: options.fail_fast,
            },
            &guard,
            progress,
            &mut report,
        )
        .await;
        progress.finish();
        if let Some(lease) = lease {
            if let Some(why) = lease.lost() {
                report.stopped = Some(why);
            }
            let ok = result.is_ok() && report.is_success();
            lease.release(if ok { "finished" } else { "failed" }).await;
        }
        result?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// The configured concurrency, lowered to what the pool and the server allow.
    async fn fleet_concurrency(&self) -> Result<usize> {
        Ok(match self.backend.session_budget().await? {
            Some(budget) if budget < self.concurrency => {
                tracing::warn!(
                    "concurrency {} lowered to {budget}: that many connections are free in the pool and on the server",
                    self.concurrency
                );
                budget.max(1)
            }
            _ => self.concurrency,
        })
    }

    /// Refuses, before anything changes, a run over tenants (`names`, or all) of which
    /// one has a migration applied that this binary does not know.
    async fn refuse_ahead_of_code(&self, names: &[TenantName]) -> Result<()> {
        let Some(control) = self.backend.run_control() else {
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
    /// no leases).
    pub async fn running(&self) -> Result<Vec<crate::RunLease>> {
        match self.backend.run_control() {
            Some(control) => control.running().await,
            None => Ok(Vec::new()),
        }
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
        self.backend.prepare().await?;
        let record = self.records(std::slice::from_ref(tenant)).await?.remove(0);
        let reverted = rollback_target(
            &*self.backend,
            Target::Tenant(&record.tenant),
            &self.migrations,
            how_far,
            &self.safety,
        )
        .await?;
        Ok(RollbackReport {
            tenant: tenant.clone(),
            reverted: reverted.iter().map(|m| (m.order(), m.name())).collect(),
        })
    }

    /// Where the public schema and each tenant (or the named ones) stand, from the
    /// registry in one query per page.
    pub async fn status(&self, names: &[TenantName]) -> Result<StatusReport> {
        self.backend.prepare().await?;
        let public_rows = self
            .backend
            .session(Target::Public)
            .await?
            .applied()
            .await?;
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
        let records = if names.is_empty() {
            self.all_records().await?
        } else {
            self.records(names).await?
        };
        let enabled: Vec<i64> = self
            .migrations
            .scope(Scope::Tenant)
            .filter(|m| m.is_enabled())
            .map(|m| m.order())
            .collect();
        let tenants: Vec<TenantStatus> = records
            .into_iter()
            .map(|record| TenantStatus {
                pending: enabled
                    .iter()
                    .filter(|&&o| record.applied_order.is_none_or(|a| o > a))
                    .count(),
                // A recorded failure of a migration this binary does not run (disabled, or
                // not in its code: a reverted deploy) is nothing it can retry or report on.
                failed: record
                    .failed_order
                    .filter(|order| enabled.contains(order))
                    .map(|order| FailedMigration {
                        order,
                        name: self.migrations.get(order).map(Migration::name),
                        error: record.last_error.clone(),
                    }),
                applied_order: record.applied_order,
                state: record.state,
                schema: record.tenant.schema,
                tenant: record.tenant.name,
            })
            .collect();
        let failed = tenants.iter().filter(|t| t.failed.is_some()).count();
        let current = tenants.iter().filter(|t| t.is_current()).count();
        Ok(StatusReport {
            latest_tenant_order: enabled.last().copied(),
            public,
            current,
            behind: tenants.len() - current - failed,
            failed,
            tenants,
        })
    }

    async fn all_records(&self) -> Result<Vec<TenantRecord>> {
        let mut all = Vec::new();
        loop {
            let page = self
                .backend
                .tenant_page(
                    all.last().map(|r: &TenantRecord| &r.tenant.name),
                    self.page_size,
                )
                .await?;
            let done = page.len() < self.page_size;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Every registered tenant, by name.
    pub async fn tenants(&self) -> Result<Vec<TenantRecord>> {
        self.backend.prepare().await?;
        self.all_records().await
    }

    /// Registers a tenant, creates its schema and applies every enabled tenant migration,
    /// all or nothing: when a migration fails, the schema and the registry row are gone again.
    pub async fn create_tenant(&self, name: &TenantName) -> Result<Tenant> {
        self.backend.prepare().await?;
        self.migrate_public_first().await?;
        let tenant = Tenant::new(name.clone());
        let all: Vec<&'static Migration> = self
            .migrations
            .scope(Scope::Tenant)
            .filter(|m| m.is_enabled())
            .collect();
        // Everything up to the first non-transactional migration runs in one transaction;
        // the rest (if any) runs after it, and a failure there drops the tenant again.
        let split = all
            .iter()
            .position(|m| !m.is_transactional())
            .unwrap_or(all.len());
        let (atomic, rest) = all.split_at(split);
        self.backend
            .create_tenant(&tenant, atomic, rest.is_empty())
            .await?;
        if !rest.is_empty() {
            let outcome = async {
                let mut session = self.backend.session(Target::Tenant(&tenant)).await?;
                for &migration in rest {
                    session.apply(migration, Direction::Up).await.map_err(|e| {
                        Error::Migration {
                            target: Target::Tenant(&tenant).to_string(),
                            migration: migration.to_string(),
                            reverting: false,
                            source: Box::new(e),
                        }
                    })?;
                }
                Ok::<_, Error>(())
            }
            .await;
            if let Err(error) = outcome {
                if let Err(cleanup) = self.backend.drop_tenant(&tenant).await {
                    tracing::error!(tenant = %tenant.name, "could not remove the half-created tenant: {cleanup}");
                }
                return Err(error);
            }
            self.backend.activate_tenant(&tenant).await?;
        }
        Ok(tenant)
    }

    /// Applies the pending public migrations alone (what [`Migrator::create_tenant`] and
    /// [`Migrator::migrate`] do first), and returns how many ran.
    pub async fn migrate_public(&self) -> Result<usize> {
        self.backend.prepare().await?;
        migrate_waiting(
            &*self.backend,
            Target::Public,
            &self.migrations,
            None,
            &self.safety,
        )
        .await
    }

    async fn migrate_public_first(&self) -> Result<()> {
        migrate_waiting(
            &*self.backend,
            Target::Public,
            &self.migrations,
            None,
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
        self.check_order(baseline)?;
        self.backend.prepare().await?;
        let baseline: Vec<&'static Migration> = match baseline {
            None => Vec::new(),
            Some(order) => self
                .migrations
                .scope(Scope::Tenant)
                .filter(|m| m.is_enabled() && m.order() <= order)
                .collect(),
        };
        let result = self
            .backend
            .adopt_with_progress(like, &baseline, progress)
            .await;
        progress.finish();
        result
    }

    /// Records the code's checksum for every applied migration whose code changed, in the
    /// public schema and every tenant (or the named ones). Returns how many rows changed.
    pub async fn repair_checksums(&self, names: &[TenantName]) -> Result<usize> {
        self.backend.prepare().await?;
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
        let mut session = self.backend.session(target).await?;
        lock_waiting(&mut *session, target, &self.safety).await?;
        let mut changed = 0;
        for row in session.applied().await? {
            if let Some(m) = self.migrations.get(row.order) {
                if row.status == MigrationStatus::Completed && row.checksum != m.checksum() {
                    session.set_checksum(row.order, m.checksum()).await?;
                    changed += 1;
                }
            }
        }
        Ok(changed)
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
        self.backend.prepare().await?;
        match tenant {
            None => {
                let mut session = self.backend.session(Target::Public).await?;
                lock_waiting(&mut *session, Target::Public, &self.safety).await?;
                session.mark(migration, status).await
            }
            Some(name) => {
                let record = self.records(std::slice::from_ref(name)).await?.remove(0);
                let target = Target::Tenant(&record.tenant);
                let mut session = self.backend.session(target).await?;
                lock_waiting(&mut *session, target, &self.safety).await?;
                session.mark(migration, status).await
            }
        }
    }
}
