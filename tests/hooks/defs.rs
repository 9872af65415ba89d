//! The migrations and hooks of the hook tests (`tests/hooks.rs`), and of their CLI binary
//! (`mtnt-hooks-app`, `tests/hooks/app.rs`).
//!
//! The hooks record what they see in [`EVENTS`], each event naming its tenant (or, for a
//! run hook, the tenants the run was asked for), so that the tests of every model running
//! at once find their own events by their tenant prefix. They act on the tenant too,
//! which the tests read back from the engine itself. Tenants steer them by the end of
//! their name: `-refuse` (its `before_tenant` fails), `-panic` (its `before_tenant`
//! panics), `-grumpy` (an `after_tenant` fails), `-norun` (a run naming it fails
//! `before_run`), `-sulky` (a run naming it fails `after_run`) and `-bad` (a migration
//! fails).

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

use std::sync::Mutex;

/// What the hooks saw, in order.
pub static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn record(event: String) {
    EVENTS.lock().unwrap().push(event);
}

/// The events that name a tenant starting with `prefix`, in order, with the prefix cut
/// out of them.
pub fn events(prefix: &str) -> Vec<String> {
    EVENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.contains(prefix))
        .map(|e| e.replace(prefix, ""))
        .collect()
}

pub const ITEMS: i64 = 2024_01_01_0002;
pub const TAGS: i64 = 2024_01_01_0003;
pub const NOTES: i64 = 2024_01_01_0004;
pub const FEATURES: i64 = 2024_02_01_0001;

/// The migrations: v1 is `plans` and `items`; v2 adds `tags`, `notes` (which fails in
/// `-bad` tenants) and the public `features`.
mod set {
    use mtnt::{Ctx, Error, Result};

    #[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
    async fn create_plans(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE plans (id INTEGER PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0002)]
    async fn create_items(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(100))")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0003)]
    async fn create_tags(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0004)]
    async fn create_notes(ctx: &mut Ctx<'_>) -> Result<()> {
        if ctx
            .tenant()
            .is_some_and(|t| t.name.as_str().ends_with("-bad"))
        {
            return Err(Error::other("notes are refused in -bad tenants"));
        }
        ctx.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
            .await
    }

    #[mtnt::migration(scope = "public", order = 2024_02_01_0001)]
    async fn create_features(ctx: &mut Ctx<'_>) -> Result<()> {
        ctx.execute("CREATE TABLE features (id INTEGER PRIMARY KEY)")
            .await
    }
}

/// The hooks, one of each kind and a second `after_tenant`, which runs after the first
/// (by name).
mod hook_fns {
    use mtnt::{Ctx, Error, Result, RunInfo, TenantName, TenantOutcome};

    use super::record;

    fn tenant(ctx: &Ctx<'_>) -> String {
        ctx.tenant()
            .expect("a tenant hook has a tenant")
            .name
            .to_string()
    }

    fn named(run: &RunInfo<'_>) -> String {
        let names: Vec<&str> = run.tenants().iter().map(TenantName::as_str).collect();
        names.join(",")
    }

    fn asks_for(run: &RunInfo<'_>, suffix: &str) -> bool {
        run.tenants().iter().any(|t| t.as_str().ends_with(suffix))
    }

    #[mtnt::hook(before_run)]
    async fn run_started(run: &RunInfo<'_>) -> Result<()> {
        assert!(run.report().is_none());
        record(format!(
            "before_run {} [{}] of {}",
            run.command(),
            named(run),
            run.tenant_count()
        ));
        if asks_for(run, "-norun") {
            return Err(Error::other("not now"));
        }
        Ok(())
    }

    #[mtnt::hook(after_run)]
    async fn run_ended(run: &RunInfo<'_>) -> Result<()> {
        let report = run.report().expect("after_run has the report");
        record(format!(
            "after_run {} [{}] migrated {} failed {}",
            run.command(),
            named(run),
            report.tenants_migrated,
            report.failures.len()
        ));
        if asks_for(run, "-sulky") {
            return Err(Error::other("sulky run hook"));
        }
        Ok(())
    }

    /// Marks the tenant with a table of its own: proof that it runs in the tenant.
    #[mtnt::hook(before_tenant)]
    async fn mark(ctx: &mut Ctx<'_>) -> Result<()> {
        let tenant = tenant(ctx);
        if tenant.ends_with("-panic") {
            panic!("a bug in a hook");
        }
        if tenant.ends_with("-refuse") {
            record(format!("{tenant} before refused"));
            return Err(Error::other("refused by the hook"));
        }
        ctx.execute("CREATE TABLE hook_marks (id INTEGER)").await?;
        record(format!("{tenant} before"));
        Ok(())
    }

    /// Seeds a new tenant, and records every outcome.
    #[mtnt::hook(after_tenant)]
    async fn outcome(ctx: &mut Ctx<'_>, outcome: &TenantOutcome<'_>) -> Result<()> {
        let tenant = tenant(ctx);
        let what = match outcome {
            TenantOutcome::Migrated { applied } => format!("migrated {applied}"),
            TenantOutcome::Created { applied } => {
                ctx.execute("INSERT INTO items (id, name) VALUES (1, 'seeded')")
                    .await?;
                format!("created {applied}")
            }
            TenantOutcome::Failed {
                error,
                applied,
                creating,
            } => format!("failed {applied} creating={creating}: {error}"),
            other => panic!("a new outcome: {other:?}"),
        };
        record(format!("{tenant} after {what}"));
        Ok(())
    }

    #[mtnt::hook(after_tenant, name = "z_grumpy")]
    async fn grumpy(ctx: &mut Ctx<'_>, _outcome: &TenantOutcome<'_>) -> Result<()> {
        let tenant = tenant(ctx);
        if tenant.ends_with("-grumpy") {
            record(format!("{tenant} grumpy"));
            return Err(Error::other("grumpy hook"));
        }
        Ok(())
    }
}

/// A migration that fails transiently, once, in `-flaky` tenants (on PostgreSQL, with a
/// serialization failure), so that the run tries the tenant again.
pub mod flaky {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use mtnt::{Ctx, Result};

    /// The tenants whose first attempt failed already.
    static FAILED_ONCE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

    #[mtnt::migration(scope = "tenant", order = 2024_01_01_0005)]
    async fn create_flags(ctx: &mut Ctx<'_>) -> Result<()> {
        let tenant = ctx.tenant().map(|t| t.name.to_string()).unwrap_or_default();
        if tenant.ends_with("-flaky") && FAILED_ONCE.lock().unwrap().insert(tenant) {
            return ctx
                .execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'a transient failure' \
                     USING ERRCODE = 'serialization_failure'; END $$",
                )
                .await;
        }
        ctx.execute("CREATE TABLE flags (id INTEGER PRIMARY KEY)")
            .await
    }
}
