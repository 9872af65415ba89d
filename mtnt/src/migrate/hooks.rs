//! Hooks: async functions that `#[mtnt::hook(...)]` registers to run around a fleet run
//! (`before_run`, `after_run`) and around each tenant a run migrates or `tenant create`
//! makes (`before_tenant`, `after_tenant`). The rules are documented once, with the
//! attribute (`mtnt-macros/src/hook.md`).
//!
//! They live in the migrate layer because they run inside its runs and see its report.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use futures_util::FutureExt;
use serde::Serialize;

use super::protocol::Protocol;
use super::MigrateReport;
use crate::backend::{Connection, ErrorClass, Target};
use crate::migration::{BoxFuture, MigrationFn};
use crate::{Ctx, Error, Location, Result, TenantName};

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// Once per fleet run (`migrate`, `rollback`, `exec`), before anything changes.
    BeforeRun,
    /// Before a tenant's first pending migration, on its locked connection.
    BeforeTenant,
    /// After a tenant's migrations, whether they succeeded or not, with the outcome.
    AfterTenant,
    /// Once per fleet run, after the last tenant, with the report.
    AfterRun,
}

impl HookKind {
    /// Every kind, in the order a run meets them.
    pub const ALL: [HookKind; 4] = [
        HookKind::BeforeRun,
        HookKind::BeforeTenant,
        HookKind::AfterTenant,
        HookKind::AfterRun,
    ];

    /// `"before_run"`, `"before_tenant"`, `"after_tenant"` or `"after_run"`: the word the
    /// attribute takes.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::BeforeRun => "before_run",
            HookKind::BeforeTenant => "before_tenant",
            HookKind::AfterTenant => "after_tenant",
            HookKind::AfterRun => "after_run",
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// An `after_tenant` hook, as the macro registers it.
pub type AfterTenantFn =
    for<'a, 'c, 'o> fn(&'a mut Ctx<'c>, &'a TenantOutcome<'o>) -> BoxFuture<'a, Result<()>>;

/// A `before_run` or `after_run` hook, as the macro registers it.
pub type RunHookFn = for<'a, 'r> fn(&'a RunInfo<'r>) -> BoxFuture<'a, Result<()>>;

/// A hook's function, by kind: the kind and the signature cannot disagree.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub enum HookFn {
    BeforeRun(RunHookFn),
    BeforeTenant(MigrationFn),
    AfterTenant(AfterTenantFn),
    AfterRun(RunHookFn),
}

/// One registered hook: what `#[mtnt::hook(...)]` produces.
///
/// Built by the macro; read it through the accessors.
pub struct Hook {
    #[doc(hidden)]
    pub __name: &'static str,
    #[doc(hidden)]
    pub __function: HookFn,
    #[doc(hidden)]
    pub __enabled: bool,
    #[doc(hidden)]
    pub __location: Location,
}

impl Hook {
    /// When it runs.
    pub fn kind(&self) -> HookKind {
        match self.__function {
            HookFn::BeforeRun(_) => HookKind::BeforeRun,
            HookFn::BeforeTenant(_) => HookKind::BeforeTenant,
            HookFn::AfterTenant(_) => HookKind::AfterTenant,
            HookFn::AfterRun(_) => HookKind::AfterRun,
        }
    }

    /// Its name (the function's unless `name = "..."` was given).
    pub fn name(&self) -> &'static str {
        self.__name
    }

    /// Whether it runs at all (`enabled = false` keeps it registered but inert).
    pub fn is_enabled(&self) -> bool {
        self.__enabled
    }

    /// Where it was declared.
    pub fn location(&self) -> Location {
        self.__location
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("kind", &self.kind())
            .field("name", &self.__name)
            .field("enabled", &self.__enabled)
            .field("location", &self.__location)
            .finish()
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} hook {}", self.kind(), self.__name)
    }
}

/// The hooks a [`Migrator`](crate::Migrator) runs ([`MigratorBuilder::hooks`](crate::MigratorBuilder::hooks)).
///
/// A migrator runs none unless it is given some; `mtnt::run!()` gives its migrator every
/// registered hook ([`Hooks::registered`]).
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// By kind, then name.
    all: Vec<&'static Hook>,
}

impl Hooks {
    /// No hooks.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every hook registered with `#[mtnt::hook(...)]` in this binary.
    ///
    /// Fails when two hooks of one kind share a name.
    pub fn registered() -> Result<Self> {
        Self::new(crate::__private::registered_hooks())
    }

    /// The registered hooks in module `prefix` or its submodules (for binaries that hold
    /// several independent sets, and for tests).
    pub fn registered_in(prefix: &str) -> Result<Self> {
        Self::new(
            crate::__private::registered_hooks()
                .into_iter()
                .filter(|h| crate::migration::in_module(h.location().module_path, prefix)),
        )
    }

    /// Validates and orders the given hooks: by kind, then by name, which is the order
    /// hooks of one kind run in.
    pub fn new(hooks: impl IntoIterator<Item = &'static Hook>) -> Result<Self> {
        let mut all: Vec<&'static Hook> = hooks.into_iter().collect();
        all.sort_by_key(|h| (h.kind(), h.name(), h.location().file, h.location().line));
        for pair in all.windows(2) {
            if pair[0].kind() == pair[1].kind() && pair[0].name() == pair[1].name() {
                return Err(Error::DuplicateHook {
                    kind: pair[0].kind(),
                    name: pair[0].name().to_owned(),
                    first: pair[0].location().to_string(),
                    second: pair[1].location().to_string(),
                });
            }
        }
        Ok(Self { all })
    }

    /// Every hook, by kind, then name.
    pub fn iter(&self) -> impl Iterator<Item = &'static Hook> + '_ {
        self.all.iter().copied()
    }

    /// The enabled hooks of one kind, in the order they run.
    pub fn of(&self, kind: HookKind) -> impl Iterator<Item = &'static Hook> + '_ {
        self.iter()
            .filter(move |h| h.kind() == kind && h.is_enabled())
    }

    /// Whether no hook is registered here.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Whether an enabled `before_tenant` or `after_tenant` hook is here.
    pub(crate) fn has_tenant_hooks(&self) -> bool {
        self.of(HookKind::BeforeTenant)
            .chain(self.of(HookKind::AfterTenant))
            .next()
            .is_some()
    }
}

/// How one tenant's migrations ended, as an `after_tenant` hook sees it.
///
/// Tenant hooks run only for a tenant that had migrations to apply (and for every
/// `tenant create`): a current tenant gets none, so there is no "current" outcome.
#[derive(Debug)]
#[non_exhaustive]
pub enum TenantOutcome<'a> {
    /// `migrate` applied its pending migrations: `applied` of them.
    Migrated {
        /// How many migrations were applied (over every attempt of this run).
        applied: usize,
    },
    /// `tenant create` made it, with its `applied` migrations; it turns `active` once
    /// every `after_tenant` hook succeeded.
    Created {
        /// How many migrations were applied.
        applied: usize,
    },
    /// A migration or a `before_tenant` hook failed; the tenant is one of the run's
    /// failures.
    Failed {
        /// What failed; names the migration (or the hook) and the tenant.
        error: &'a Error,
        /// How many migrations committed before the failure. Under `migrate` they stay
        /// committed; under `tenant create` the tenant is removed again after the hooks.
        applied: usize,
        /// Whether the tenant was being created (`tenant create`): it is removed again.
        creating: bool,
    },
}

impl TenantOutcome<'_> {
    /// How many migrations were applied.
    pub fn applied(&self) -> usize {
        match self {
            TenantOutcome::Migrated { applied }
            | TenantOutcome::Created { applied }
            | TenantOutcome::Failed { applied, .. } => *applied,
        }
    }

    /// The error of a failed tenant.
    pub fn error(&self) -> Option<&Error> {
        match self {
            TenantOutcome::Failed { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether every pending migration was applied.
    pub fn is_success(&self) -> bool {
        self.error().is_none()
    }
}

/// Which fleet run a `before_run` or `after_run` hook is called for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunCommand {
    /// [`Migrator::migrate`](crate::Migrator::migrate).
    Migrate,
    /// [`Migrator::rollback_fleet`](crate::Migrator::rollback_fleet).
    Rollback,
    /// [`Migrator::exec`](crate::Migrator::exec).
    Exec,
}

impl RunCommand {
    /// `"migrate"`, `"rollback"` or `"exec"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunCommand::Migrate => "migrate",
            RunCommand::Rollback => "rollback",
            RunCommand::Exec => "exec",
        }
    }
}

impl fmt::Display for RunCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a `before_run` or `after_run` hook gets: the run, and after it the report.
#[derive(Clone, Copy, Debug)]
pub struct RunInfo<'a> {
    pub(crate) command: RunCommand,
    pub(crate) tenants: &'a [TenantName],
    pub(crate) tenant_count: u64,
    pub(crate) report: Option<&'a MigrateReport>,
}

impl<'a> RunInfo<'a> {
    /// Which run.
    pub fn command(&self) -> RunCommand {
        self.command
    }

    /// The tenants it was asked for by name; empty when it runs over the whole fleet.
    pub fn tenants(&self) -> &'a [TenantName] {
        self.tenants
    }

    /// How many tenants the run looks at (the named ones, or the registered ones when it
    /// started).
    pub fn tenant_count(&self) -> u64 {
        self.tenant_count
    }

    /// The run's report: `Some` for `after_run`, `None` for `before_run`.
    pub fn report(&self) -> Option<&'a MigrateReport> {
        self.report
    }
}

/// A hook that failed without failing what it ran for (an `after_tenant` or `after_run`
/// hook): reported as a warning in [`MigrateReport::hook_failures`]. Serialized with the
/// error's message.
#[derive(Debug, Serialize)]
pub struct HookFailure {
    /// Its kind.
    pub kind: HookKind,
    /// Its name.
    pub hook: &'static str,
    /// The tenant it ran for (`after_tenant`).
    pub tenant: Option<TenantName>,
    /// What the hook returned (or its panic).
    #[serde(serialize_with = "super::report::error_message")]
    pub error: Error,
}

impl fmt::Display for HookFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} hook {} failed", self.kind, self.hook)?;
        if let Some(tenant) = &self.tenant {
            write!(f, " for tenant {tenant}")?;
        }
        write!(f, ": {}", self.error)
    }
}

impl HookFailure {
    fn into_error(self) -> Error {
        Error::Hook {
            kind: self.kind,
            hook: self.hook.to_owned(),
            tenant: self.tenant,
            source: Box::new(self.error),
        }
    }
}

/// Awaits a hook, turning a panic into an error so that a bad hook fails what it ran
/// for instead of the whole run.
async fn call(future: BoxFuture<'_, Result<()>>) -> Result<()> {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_owned());
            Err(Error::other(format!("it panicked: {message}")))
        }
    }
}

/// Runs the enabled `before_run` hooks in order; the first failure stops them and the run.
pub(crate) async fn before_run(hooks: &Hooks, run: &RunInfo<'_>) -> Result<()> {
    for hook in hooks.of(HookKind::BeforeRun) {
        let HookFn::BeforeRun(function) = hook.__function else {
            unreachable!("Hooks::of filters by kind")
        };
        if let Err(error) = call(function(run)).await {
            return Err(HookFailure {
                kind: HookKind::BeforeRun,
                hook: hook.name(),
                tenant: None,
                error,
            }
            .into_error());
        }
    }
    Ok(())
}

/// Runs every enabled `after_run` hook; their failures are logged and returned.
pub(crate) async fn after_run(hooks: &Hooks, run: &RunInfo<'_>) -> Vec<HookFailure> {
    let mut failures = Vec::new();
    for hook in hooks.of(HookKind::AfterRun) {
        let HookFn::AfterRun(function) = hook.__function else {
            unreachable!("Hooks::of filters by kind")
        };
        if let Err(error) = call(function(run)).await {
            let failure = HookFailure {
                kind: HookKind::AfterRun,
                hook: hook.name(),
                tenant: None,
                error,
            };
            tracing::warn!("{failure}");
            failures.push(failure);
        }
    }
    failures
}

/// Why the `before_tenant` hooks of a tenant did not all succeed.
pub(crate) struct BeforeFailed {
    /// The hook's failure, as [`Error::Hook`].
    pub(crate) error: Error,
    /// The connection was lost (and discarded): no `after_tenant` hook can run on it.
    pub(crate) lost: bool,
}

impl Protocol<'_> {
    /// Whether tenants get hooks in this run.
    pub(crate) fn has_tenant_hooks(&self) -> bool {
        self.hooks.has_tenant_hooks()
    }

    /// Runs one tenant hook on a locked connection, outside a transaction, with the run's
    /// timeouts. A failed hook's open transaction (if it began one) is rolled back; a
    /// lost connection is discarded (the `bool`).
    async fn call_on(
        &self,
        conn: &mut dyn Connection,
        function: HookFn,
        outcome: Option<&TenantOutcome<'_>>,
    ) -> std::result::Result<(), (Error, bool)> {
        let mut result = conn.enter_autocommit(self.run_timeouts()).await;
        if result.is_ok() {
            result = {
                let mut ctx = conn.ctx();
                let future = match (function, outcome) {
                    (HookFn::BeforeTenant(f), _) => f(&mut ctx),
                    (HookFn::AfterTenant(f), Some(outcome)) => f(&mut ctx, outcome),
                    _ => unreachable!("tenant hooks are called with their arguments"),
                };
                call(future).await
            };
            let left = conn.leave_autocommit().await;
            if result.is_ok() {
                result = left;
            }
        }
        let Err(error) = result else {
            return Ok(());
        };
        let lost = self.backend.classify(&error) == ErrorClass::ConnectionLost;
        if lost {
            conn.discard();
        } else {
            conn.rollback().await;
        }
        Err((error, lost))
    }

    /// Runs the enabled `before_tenant` hooks of `target` (a tenant) in order; the first
    /// failure stops them.
    pub(crate) async fn before_tenant(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
    ) -> std::result::Result<(), BeforeFailed> {
        for hook in self.hooks.of(HookKind::BeforeTenant) {
            if let Err((error, lost)) = self.call_on(conn, hook.__function, None).await {
                let error = HookFailure {
                    kind: HookKind::BeforeTenant,
                    hook: hook.name(),
                    tenant: target.tenant().map(|t| t.name.clone()),
                    error,
                }
                .into_error();
                return Err(BeforeFailed { error, lost });
            }
        }
        Ok(())
    }

    /// Runs every enabled `after_tenant` hook of `target` with `outcome`, until the
    /// connection is lost; returns their failures, each logged.
    pub(crate) async fn after_tenant(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        outcome: &TenantOutcome<'_>,
    ) -> Vec<HookFailure> {
        let mut failures = Vec::new();
        for hook in self.hooks.of(HookKind::AfterTenant) {
            if let Err((error, lost)) = self.call_on(conn, hook.__function, Some(outcome)).await {
                let failure = HookFailure {
                    kind: HookKind::AfterTenant,
                    hook: hook.name(),
                    tenant: target.tenant().map(|t| t.name.clone()),
                    error,
                };
                tracing::warn!("{failure}");
                failures.push(failure);
                if lost {
                    break;
                }
            }
        }
        failures
    }

    /// [`Protocol::after_tenant`] in a fleet run: the failures go to the run's report.
    pub(crate) async fn after_tenant_reported(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        outcome: &TenantOutcome<'_>,
    ) {
        let failures = self.after_tenant(conn, target, outcome).await;
        if failures.is_empty() {
            return;
        }
        if let Some(sink) = self.hook_failures {
            if let Ok(mut sink) = sink.lock() {
                sink.extend(failures);
            }
        }
    }

    /// [`Protocol::after_tenant`] in `tenant create`: the first failure fails the create.
    pub(crate) async fn after_tenant_created(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        outcome: &TenantOutcome<'_>,
    ) -> Result<()> {
        match self
            .after_tenant(conn, target, outcome)
            .await
            .into_iter()
            .next()
        {
            Some(failure) => Err(failure.into_error()),
            None => Ok(()),
        }
    }
}

/// Where a fleet run's tenant protocol puts `after_tenant` failures.
pub(crate) type HookFailures = Mutex<Vec<HookFailure>>;
