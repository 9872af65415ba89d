//! The behaviour suite's core scenarios on an engine written outside mtnt, against its
//! public API alone: the JSON document engine of `examples/json_engine/` (a directory of
//! JSON documents), driven through [`mtnt::Migrator`]. What the engine stored is read from
//! the JSON files themselves, not only through mtnt.
//!
//! Needs no engine feature: `cargo test --no-default-features --test json_engine`.

// Orders are written YYYY_MM_DD_NNNN, as in the attribute.
#![allow(clippy::inconsistent_digit_grouping)]

// The demo's engine, compiled into this test as it is; the test uses only part of it.
#[allow(dead_code)]
#[path = "../examples/json_engine/engine.rs"]
mod engine;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::{JsonBackend, JsonError};
use mtnt::{
    Backend, Error, ErrorClass, MigrateOptions, MigrationSet, MigrationStatus, Migrator,
    MigratorBuilder, RollbackTarget, SafetySettings, Scope, Target, Tenant, TenantName,
};
use serde_json::{json, Value};

/// Tenants fail on purpose by name: `-bad` fails `add_projects`, `-stuck` fails its down
/// function, `-flaky` fails the non-transactional `tag_accounts` (each until the name is
/// in [`FIXED`]), `-cold` fails `warm_up` once with a transient error. `-slow` takes 50 ms
/// in `create_ledger` and 100 ms in `seed_admin`.
mod migrations {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::time::Duration;

    use mtnt::{Ctx, Result};

    use super::engine::JsonSession;

    pub const PLANS: i64 = 2024_01_01_0001;
    pub const LEDGER: i64 = 2024_01_01_0002;
    pub const ACCOUNTS: i64 = 2024_01_01_0003;
    pub const PROJECTS: i64 = 2024_01_01_0004;
    pub const SEED: i64 = 2024_01_01_0005;
    pub const TAG: i64 = 2024_02_01_0001;
    pub const WARM: i64 = 2024_02_01_0002;
    pub const FEATURES: i64 = 2024_03_01_0001;

    /// Tenants whose failure was "fixed".
    pub static FIXED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    /// Tenants that failed `warm_up` once already.
    static WARMED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

    fn tenant(ctx: &Ctx<'_>) -> String {
        ctx.tenant().expect("a tenant migration").name.to_string()
    }

    fn named(ctx: &Ctx<'_>, suffix: &str) -> bool {
        tenant(ctx).ends_with(suffix)
    }

    fn fails(ctx: &Ctx<'_>, suffix: &str) -> bool {
        named(ctx, suffix) && !FIXED.lock().unwrap().contains(&tenant(ctx))
    }

    pub mod fleet {
        use super::*;

        #[mtnt::migration(scope = "public", order = 2024_01_01_0001)]
        async fn create_plans(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute(r#"CREATE COLLECTION plans; INSERT INTO plans {"name": "free"}"#)
                .await
        }

        // No down function: irreversible.
        #[mtnt::migration(scope = "tenant", order = 2024_01_01_0002)]
        async fn create_ledger(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("CREATE COLLECTION ledger").await?;
            if named(ctx, "-slow") {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        }

        #[mtnt::migration(scope = "tenant", order = 2024_01_01_0003, down = drop_accounts)]
        async fn create_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("CREATE COLLECTION accounts").await
        }

        async fn drop_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("DROP COLLECTION accounts").await
        }

        #[mtnt::migration(scope = "tenant", order = 2024_01_01_0004, down = drop_projects)]
        async fn add_projects(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("CREATE COLLECTION projects").await?;
            if fails(ctx, "-bad") {
                ctx.execute(r#"FAIL "projects refused""#).await?;
            }
            Ok(())
        }

        async fn drop_projects(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("DROP COLLECTION projects").await?;
            if fails(ctx, "-stuck") {
                return Err(mtnt::Error::other("the down function gave up halfway"));
            }
            Ok(())
        }

        /// Typed access to the engine's connection.
        #[mtnt::migration(scope = "tenant", order = 2024_01_01_0005, down = remove_admin)]
        async fn seed_admin(ctx: &mut Ctx<'_>) -> Result<()> {
            if named(ctx, "-slow") {
                // Long enough for a second run to arrive while this one holds the tenant.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let email = format!("admin@{}.example", tenant(ctx));
            let accounts = ctx.custom::<JsonSession>()?.collection("accounts")?;
            accounts.push(serde_json::json!({ "email": email, "admin": true }));
            Ok(())
        }

        async fn remove_admin(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("DELETE FROM accounts WHERE admin = true").await
        }
    }

    pub mod nontx {
        use super::*;

        #[mtnt::migration(
            scope = "tenant",
            order = 2024_02_01_0001,
            transaction = false,
            down = untag_accounts
        )]
        async fn tag_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("ADD FIELD accounts.tagged DEFAULT true")
                .await?;
            // Typed changes outside a transaction are written when the migration returns.
            for account in ctx.custom::<JsonSession>()?.collection("accounts")? {
                account["tagged_by"] = serde_json::json!("typed");
            }
            if fails(ctx, "-flaky") {
                ctx.execute(r#"FAIL "flaky lost its nerve""#).await?;
            }
            Ok(())
        }

        async fn untag_accounts(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("REMOVE FIELD accounts.tagged").await
        }
    }

    pub mod retry {
        use super::*;

        #[mtnt::migration(scope = "tenant", order = 2024_02_01_0002)]
        async fn warm_up(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute("CREATE COLLECTION cache").await?;
            if named(ctx, "-cold") && WARMED.lock().unwrap().insert(tenant(ctx)) {
                ctx.execute(r#"FAIL TRANSIENT "still cold""#).await?;
            }
            Ok(())
        }
    }

    pub mod later {
        use super::*;

        #[mtnt::migration(scope = "public", order = 2024_03_01_0001)]
        async fn create_features(ctx: &mut Ctx<'_>) -> Result<()> {
            ctx.execute(r#"CREATE COLLECTION features; INSERT INTO features {"name": "sso"}"#)
                .await
        }
    }
}

use migrations::{ACCOUNTS, FEATURES, FIXED, LEDGER, PLANS, PROJECTS, SEED, TAG, WARM};

const TENANT_ORDERS: [i64; 4] = [LEDGER, ACCOUNTS, PROJECTS, SEED];

fn name(s: &str) -> TenantName {
    TenantName::new(s).unwrap()
}

/// The registered migrations of the named modules of `migrations`, up to `to`.
fn set(modules: &[&str], to: i64) -> MigrationSet {
    let all = modules.iter().flat_map(|module| {
        MigrationSet::registered_in(&format!("json_engine::migrations::{module}"))
            .unwrap()
            .iter()
            .collect::<Vec<_>>()
    });
    MigrationSet::new(all.filter(|m| m.order() <= to)).unwrap()
}

fn fleet_to(to: i64) -> MigrationSet {
    set(&["fleet"], to)
}

/// A directory of JSON documents, and what is in its files.
struct Docs {
    dir: tempfile::TempDir,
}

impl Docs {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, tenant: &str) -> PathBuf {
        self.path().join(format!("{tenant}.json"))
    }

    fn builder(&self, set: MigrationSet) -> MigratorBuilder {
        Migrator::builder(JsonBackend::open(self.path()).unwrap()).migrations(set)
    }

    fn migrator(&self, set: MigrationSet) -> Migrator {
        self.builder(set).build().unwrap()
    }

    fn read(path: &Path) -> Option<Value> {
        let bytes = std::fs::read(path).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// A tenant's document.
    fn doc(&self, tenant: &str) -> Option<Value> {
        Self::read(&self.file(tenant))
    }

    fn control(&self) -> Value {
        Self::read(&self.path().join("mtnt_control.json")).expect("no control document")
    }

    /// The registry entry of a tenant, from the control document.
    fn registry(&self, tenant: &str) -> Option<Value> {
        self.control()["tenants"].get(tenant).cloned()
    }

    /// `(applied_order, failed_order)` of the registry entry.
    fn cached(&self, tenant: &str) -> (Value, Value) {
        let entry = self
            .registry(tenant)
            .unwrap_or_else(|| panic!("{tenant} unregistered"));
        (
            entry["applied_order"].clone(),
            entry["failed_order"].clone(),
        )
    }

    /// A collection of a tenant's document (`None`: no such collection).
    fn collection(&self, tenant: &str, collection: &str) -> Option<Vec<Value>> {
        let doc = self.doc(tenant)?;
        doc["collections"].get(collection)?.as_array().cloned()
    }

    fn has(&self, tenant: &str, collection: &str) -> bool {
        self.collection(tenant, collection).is_some()
    }

    /// The tracking row of `order` in a document.
    fn row_in(doc: &Value, order: i64) -> Option<Value> {
        doc["migrations"]
            .as_array()?
            .iter()
            .find(|r| r["order"] == json!(order))
            .cloned()
    }

    fn row(&self, tenant: &str, order: i64) -> Option<Value> {
        Self::row_in(&self.doc(tenant)?, order)
    }

    fn status(&self, tenant: &str, order: i64) -> Option<String> {
        self.row(tenant, order)
            .map(|r| r["status"].as_str().unwrap().to_owned())
    }

    fn statuses(&self, tenant: &str, orders: &[i64]) -> Vec<Option<String>> {
        orders.iter().map(|&o| self.status(tenant, o)).collect()
    }

    fn assert_completed(&self, tenant: &str, orders: &[i64]) {
        let completed: Vec<Option<String>> = orders
            .iter()
            .map(|_| Some("completed".to_owned()))
            .collect();
        assert_eq!(self.statuses(tenant, orders), completed, "{tenant}");
    }

    /// Every migration of `set` in `scope` is recorded completed in `doc` with its name,
    /// checksum, timestamps in order and no error.
    fn assert_tracked(doc: &Value, set: &MigrationSet, scope: Scope) {
        for migration in set.scope(scope) {
            let row = Self::row_in(doc, migration.order())
                .unwrap_or_else(|| panic!("no row for {migration}"));
            assert_eq!(row["name"], json!(migration.name()), "{row}");
            assert_eq!(row["checksum"], json!(migration.checksum()), "{row}");
            assert_eq!(row["status"], json!("completed"), "{row}");
            assert_eq!(row["error"], Value::Null, "{row}");
            let time = |field: &str| {
                chrono::DateTime::parse_from_rfc3339(row[field].as_str().unwrap()).unwrap()
            };
            assert!(time("started_at") <= time("finished_at"), "{row}");
            assert!(row["duration_ms"].as_i64().unwrap() >= 0, "{row}");
        }
    }

    /// The admin documents the typed migration inserted in a tenant.
    fn admins(&self, tenant: &str) -> usize {
        self.collection(tenant, "accounts")
            .unwrap_or_default()
            .iter()
            .filter(|d| d["admin"] == json!(true))
            .count()
    }

    /// Files a crashed write would leave: none may stay after a write that finished.
    fn temporary_files(&self) -> Vec<String> {
        std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.contains(".tmp-"))
            .collect()
    }
}

async fn create(migrator: &Migrator, names: &[&str]) {
    for n in names {
        migrator
            .create_tenant(&name(n))
            .await
            .unwrap_or_else(|e| panic!("create {n}: {e}"));
    }
}

async fn summary(migrator: &Migrator) -> String {
    migrator.status(&[]).await.unwrap().summary()
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
}

// ---------------------------------------------------------------------------------------

/// A fleet created at one version and migrated to the next in pages; the public migration
/// runs once, in the control document; the registry is current, and a stale cache is
/// healed by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_fleet() {
    let docs = Docs::new();
    let names: Vec<String> = (1..=6).map(|i| format!("f{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let v1 = docs.migrator(fleet_to(ACCOUNTS));
    create(&v1, &names).await;
    for n in &names {
        let entry = docs.registry(n).unwrap();
        assert_eq!(entry["state"], json!("active"), "{entry}");
        assert_eq!(entry["storage"], json!(n), "{entry}");
        assert_eq!(docs.cached(n), (json!(ACCOUNTS), Value::Null));
        assert!(entry["created_at"].as_str().is_some(), "{entry}");
        assert!(!docs.has(n, "projects"));
    }

    let full = docs
        .builder(fleet_to(SEED))
        .concurrency(3)
        .page_size(2)
        .build()
        .unwrap();
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(
        (
            report.public_applied,
            report.tenants_total,
            report.tenants_migrated,
            report.migrations_applied
        ),
        (0, 6, 6, 12),
        "create_tenant applied the public migration already"
    );
    for n in &names {
        for collection in ["ledger", "accounts", "projects"] {
            assert!(docs.has(n, collection), "{n}: {collection}");
        }
        assert!(
            !docs.has(n, "plans"),
            "the public migration leaked into {n}"
        );
        let doc = docs.doc(n).unwrap();
        assert_eq!(doc["migrations"].as_array().unwrap().len(), 4, "{doc}");
        Docs::assert_tracked(&doc, full.migrations(), Scope::Tenant);
        assert_eq!(
            docs.collection(n, "accounts").unwrap(),
            [json!({"email": format!("admin@{n}.example"), "admin": true})]
        );
        assert_eq!(docs.cached(n), (json!(SEED), Value::Null));
    }
    let control = docs.control();
    assert_eq!(control["collections"]["plans"], json!([{"name": "free"}]));
    Docs::assert_tracked(&control, full.migrations(), Scope::Public);
    assert_eq!(control["migrations"].as_array().unwrap().len(), 1);

    let again = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(
        (
            again.public_applied,
            again.tenants_current,
            again.migrations_applied
        ),
        (0, 6, 0)
    );
    let status = full.status(&[]).await.unwrap();
    assert_eq!(status.summary(), "6/6 tenants current, 0 behind, 0 failed");
    assert_eq!(
        (status.public.applied_order, status.public.pending),
        (Some(PLANS), 0)
    );
    assert_eq!(status.latest_tenant_order, Some(SEED));

    // The registry is a cache of the tenant documents: status, with no fingerprints to
    // trust it by, reads the document instead of a stale entry, and the next run that
    // reads the tenant sets the entry right.
    let path = docs.path().join("mtnt_control.json");
    let mut control = docs.control();
    control["tenants"]["f02"]["applied_order"] = Value::Null;
    control["tenants"]["f02"]["failed_order"] = json!(SEED);
    control["tenants"]["f02"]["last_error"] = json!("stale");
    std::fs::write(&path, serde_json::to_vec_pretty(&control).unwrap()).unwrap();
    assert_eq!(
        summary(&full).await,
        "6/6 tenants current, 0 behind, 0 failed"
    );
    let healed = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((healed.tenants_current, healed.migrations_applied), (6, 0));
    assert_eq!(docs.cached("f02"), (json!(SEED), Value::Null));
    assert_eq!(docs.registry("f02").unwrap()["last_error"], Value::Null);
    assert_eq!(
        summary(&full).await,
        "6/6 tenants current, 0 behind, 0 failed"
    );
    assert!(
        docs.temporary_files().is_empty(),
        "{:?}",
        docs.temporary_files()
    );
}

/// One tenant fails; the others complete; the failed migration is rolled back whole and
/// recorded in the tenant document and the registry; fixed, the next run finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tenant_does_not_block_the_others() {
    let docs = Docs::new();
    let good = ["alpha", "bravo", "charlie"];
    let bad = "x-bad";
    create(
        &docs.migrator(fleet_to(ACCOUNTS)),
        &["alpha", "bravo", bad, "charlie"],
    )
    .await;

    let full = docs.migrator(fleet_to(SEED));
    let report = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(!report.is_success());
    assert_eq!(
        (
            report.tenants_total,
            report.tenants_migrated,
            report.migrations_applied
        ),
        (4, 3, 6)
    );
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let failure = &report.failures[0];
    assert_eq!(failure.tenant.as_str(), bad);
    assert!(
        matches!(
            failure.error,
            Error::Migration {
                reverting: false,
                ..
            }
        ),
        "{:?}",
        failure.error
    );
    assert_contains(
        &failure.error.to_string(),
        &[
            "tenant x-bad",
            "2024_01_01_0004 add_projects",
            "projects refused",
        ],
    );
    for g in good {
        assert!(docs.has(g, "projects"), "{g}");
        assert_eq!(docs.admins(g), 1, "{g}");
        assert_eq!(docs.cached(g), (json!(SEED), Value::Null), "{g}");
    }

    // The failed migration was rolled back whole: its collection is not in the document,
    // its row says `failed` with the error, and nothing after it ran.
    assert!(docs.has(bad, "accounts"));
    assert!(
        !docs.has(bad, "projects"),
        "the failed migration was not rolled back"
    );
    assert_eq!(docs.status(bad, ACCOUNTS).as_deref(), Some("completed"));
    let row = docs.row(bad, PROJECTS).unwrap();
    assert_eq!(row["status"], json!("failed"), "{row}");
    assert!(
        row["error"].as_str().unwrap().contains("projects refused"),
        "{row}"
    );
    assert_eq!(docs.status(bad, SEED), None);
    assert_eq!(docs.cached(bad), (json!(ACCOUNTS), json!(PROJECTS)));
    let last_error = docs.registry(bad).unwrap()["last_error"].clone();
    assert!(
        last_error.as_str().unwrap().contains("projects refused"),
        "{last_error}"
    );

    let status = full.status(&[]).await.unwrap();
    assert_eq!(status.summary(), "3/4 tenants current, 0 behind, 1 failed");
    let bad_status = status
        .tenants
        .iter()
        .find(|t| t.tenant.as_str() == bad)
        .unwrap();
    assert_eq!(
        (bad_status.applied_order, bad_status.pending),
        (Some(ACCOUNTS), 2)
    );
    let failed = bad_status.failed.as_ref().unwrap();
    assert_eq!(
        (failed.order, failed.name),
        (PROJECTS, Some("add_projects"))
    );

    // Still broken: the same tenant fails again, nothing else changes.
    let again = full.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((again.tenants_current, again.failures.len()), (3, 1));

    // Fixed: the re-run finishes the tenant and clears the failure.
    FIXED.lock().unwrap().insert(bad.to_owned());
    let fixed = full
        .migrate(&MigrateOptions::new().tenants([name(bad)]))
        .await
        .unwrap();
    assert!(fixed.is_success(), "{:?}", fixed.failures);
    assert_eq!((fixed.tenants_migrated, fixed.migrations_applied), (1, 2));
    docs.assert_completed(bad, &TENANT_ORDERS);
    assert_eq!(docs.row(bad, PROJECTS).unwrap()["error"], Value::Null);
    assert_eq!(docs.cached(bad), (json!(SEED), Value::Null));
    assert_eq!(
        summary(&full).await,
        "4/4 tenants current, 0 behind, 0 failed"
    );
}

/// `create_tenant`: registry entry, document and every migration, or nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tenant_is_all_or_nothing() {
    let docs = Docs::new();
    let migrator = docs.migrator(fleet_to(SEED));
    let slow = "acme-slow";
    let tenant = migrator.create_tenant(&name(slow)).await.unwrap();
    assert_eq!(
        (tenant.name.as_str(), tenant.storage.as_str()),
        (slow, slow)
    );
    let doc = docs.doc(slow).unwrap();
    Docs::assert_tracked(&doc, migrator.migrations(), Scope::Tenant);
    assert_eq!(docs.admins(slow), 1);
    // The timestamps time each migration although they shared one transaction.
    let time = |order: i64, field: &str| {
        let row = Docs::row_in(&doc, order).unwrap();
        chrono::DateTime::parse_from_rfc3339(row[field].as_str().unwrap()).unwrap()
    };
    assert!(
        Docs::row_in(&doc, LEDGER).unwrap()["duration_ms"]
            .as_i64()
            .unwrap()
            >= 50
    );
    assert!(time(LEDGER, "finished_at") <= time(ACCOUNTS, "started_at"));
    let entry = docs.registry(slow).unwrap();
    assert_eq!(entry["state"], json!("active"));
    assert_eq!(docs.cached(slow), (json!(SEED), Value::Null));

    // A tenant whose migration fails leaves no document and no registry entry, and can be
    // tried again.
    for _ in 0..2 {
        let error = migrator.create_tenant(&name("y-bad")).await.unwrap_err();
        assert!(matches!(error, Error::Migration { .. }), "{error:?}");
        assert_contains(
            &error.to_string(),
            &[
                "tenant y-bad",
                "2024_01_01_0004 add_projects",
                "projects refused",
            ],
        );
        assert!(
            docs.doc("y-bad").is_none(),
            "the failed tenant's document is left"
        );
        assert!(
            docs.registry("y-bad").is_none(),
            "its registry entry is left"
        );
    }
    assert_eq!(docs.control()["tenants"].as_object().unwrap().len(), 1);
    assert_eq!(
        docs.control()["collections"]["plans"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A name is taken once; the existing tenant is untouched.
    let before = std::fs::read(docs.file(slow)).unwrap();
    match migrator.create_tenant(&name(slow)).await {
        Err(Error::TenantExists(n)) => assert_eq!(n, slow),
        other => panic!("expected TenantExists, got {other:?}"),
    }
    assert_eq!(std::fs::read(docs.file(slow)).unwrap(), before);

    // A document named like the tenant that mtnt did not make is never taken over.
    let squatter = br#"{"collections": {"keep": [{"id": 7}]}}"#;
    std::fs::write(docs.file("squatter"), squatter).unwrap();
    let error = migrator.create_tenant(&name("squatter")).await.unwrap_err();
    assert!(matches!(error, Error::StorageExists { .. }), "{error:?}");
    assert!(docs.registry("squatter").is_none());
    assert_eq!(std::fs::read(docs.file("squatter")).unwrap(), squatter);

    // Dropping removes the document and the registry entry.
    migrator.drop_tenant(&tenant.name).await.unwrap();
    assert!(docs.doc(slow).is_none());
    assert!(docs.registry(slow).is_none());
    assert!(
        docs.temporary_files().is_empty(),
        "{:?}",
        docs.temporary_files()
    );
}

/// Rollback runs the down functions, by steps and to an order, in one tenant only; one
/// that passes an irreversible migration is refused before any change; a failing down
/// function is rolled back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_runs_down_functions() {
    let docs = Docs::new();
    let migrator = docs.migrator(fleet_to(SEED));
    create(&migrator, &["acme", "globex", "z-stuck"]).await;

    let one = migrator
        .rollback(&name("acme"), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(one.reverted, [(SEED, "seed_admin")]);
    assert_eq!(docs.admins("acme"), 0, "the down function did not run");
    let row = docs.row("acme", SEED).unwrap();
    assert_eq!(row["status"], json!("pending"), "{row}");
    assert!(
        row["finished_at"].is_string() && row["error"].is_null(),
        "{row}"
    );
    assert_eq!(docs.cached("acme"), (json!(PROJECTS), Value::Null));
    assert_eq!(docs.admins("globex"), 1, "the other tenant was touched");

    let to = migrator
        .rollback(&name("acme"), RollbackTarget::To(ACCOUNTS))
        .await
        .unwrap();
    assert_eq!(to.reverted, [(PROJECTS, "add_projects")]);
    assert!(!docs.has("acme", "projects") && docs.has("acme", "accounts"));
    assert_eq!(
        docs.statuses("acme", &TENANT_ORDERS),
        ["completed", "completed", "pending", "pending"].map(|s| Some(s.to_owned()))
    );
    assert_eq!(docs.cached("acme"), (json!(ACCOUNTS), Value::Null));
    assert_eq!(
        summary(&migrator).await,
        "2/3 tenants current, 1 behind, 0 failed"
    );

    // Irreversible: refused before any down function runs; the document is as it was.
    let before = std::fs::read(docs.file("globex")).unwrap();
    for how_far in [RollbackTarget::Steps(4), RollbackTarget::All] {
        let error = migrator
            .rollback(&name("globex"), how_far)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Irreversible { .. }), "{error:?}");
        assert_contains(
            &error.to_string(),
            &[
                "tenant globex",
                "2024_01_01_0002 create_ledger",
                "nothing was changed",
            ],
        );
        assert_eq!(std::fs::read(docs.file("globex")).unwrap(), before);
    }

    // A failing down function: the one before it was reverted, its own transaction was
    // rolled back, so its collection is back and its row still `completed`.
    let error = migrator
        .rollback(&name("z-stuck"), RollbackTarget::Steps(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Migration {
                reverting: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert_contains(
        &error.to_string(),
        &[
            "while reverting",
            "add_projects",
            "tenant z-stuck",
            "gave up halfway",
        ],
    );
    assert_eq!(docs.status("z-stuck", SEED).as_deref(), Some("pending"));
    assert!(
        docs.has("z-stuck", "projects"),
        "the down function was not rolled back"
    );
    assert_eq!(
        docs.status("z-stuck", PROJECTS).as_deref(),
        Some("completed")
    );
    assert_eq!(docs.cached("z-stuck"), (json!(PROJECTS), Value::Null));
    FIXED.lock().unwrap().insert("z-stuck".to_owned());
    let fixed = migrator
        .rollback(&name("z-stuck"), RollbackTarget::Steps(1))
        .await
        .unwrap();
    assert_eq!(fixed.reverted, [(PROJECTS, "add_projects")]);
    assert!(!docs.has("z-stuck", "projects"));

    // Migrating again re-applies what was reverted.
    let back = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(back.is_success(), "{:?}", back.failures);
    assert_eq!((back.tenants_migrated, back.migrations_applied), (2, 4));
    for t in ["acme", "z-stuck"] {
        docs.assert_completed(t, &TENANT_ORDERS);
        assert_eq!(docs.admins(t), 1, "{t}");
    }
    assert_eq!(
        summary(&migrator).await,
        "3/3 tenants current, 0 behind, 0 failed"
    );
}

/// Two runs at once, each with its own backend over the same directory: every migration is
/// applied once, the public one too, and neither run fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_at_once_apply_each_migration_once() {
    let docs = Docs::new();
    let names = ["c1-slow", "c2-slow", "c3-slow", "c4-slow"];
    create(&docs.migrator(fleet_to(ACCOUNTS)), &names).await;
    let everything = set(&["fleet", "later"], FEATURES);
    let (a, b) = (docs.migrator(everything.clone()), docs.migrator(everything));
    let options = MigrateOptions::new();
    let (ra, rb) = tokio::join!(a.migrate(&options), b.migrate(&options));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let errors: Vec<String> = ra
        .failures
        .iter()
        .chain(&rb.failures)
        .map(|f| format!("{}: {}", f.tenant, f.error))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        ra.public_applied + rb.public_applied,
        1,
        "the public migration ran twice or not at all"
    );
    assert_eq!(
        ra.migrations_applied + rb.migrations_applied,
        4 * 2,
        "a tenant migration ran twice or not at all"
    );
    assert_eq!(
        docs.control()["collections"]["features"],
        json!([{"name": "sso"}])
    );
    for n in names {
        docs.assert_completed(n, &TENANT_ORDERS);
        assert_eq!(docs.admins(n), 1, "{n}: the typed insert ran twice");
    }
    assert_eq!(summary(&a).await, "4/4 tenants current, 0 behind, 0 failed");
    assert!(
        docs.temporary_files().is_empty(),
        "{:?}",
        docs.temporary_files()
    );
}

/// `drop_tenant` waits for the tenant's lock: it fails after the unlock deadline while
/// another run holds it, changing nothing, and goes through once the holder releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_drop_waits_for_the_tenant_lock() {
    let docs = Docs::new();
    let migrator = docs.migrator(fleet_to(SEED));
    create(&migrator, &["acme"]).await;

    // Another process's run holds the tenant: its own backend over the same directory.
    let other = JsonBackend::open(docs.path()).unwrap();
    let acme = Tenant::new(name("acme"));
    let mut holder = other.connect(Target::Tenant(&acme)).await.unwrap();
    assert!(holder.try_lock().await.unwrap());

    let impatient = docs
        .builder(fleet_to(SEED))
        .safety(
            SafetySettings::new()
                .unlock_deadline(Duration::from_millis(200))
                .heartbeat_interval(Duration::from_millis(50))
                .heartbeat_retries(1),
        )
        .build()
        .unwrap();
    let error = impatient.drop_tenant(&name("acme")).await.unwrap_err();
    assert!(matches!(error, Error::Busy { .. }), "{error:?}");
    assert!(docs.doc("acme").is_some() && docs.registry("acme").is_some());

    let started = Instant::now();
    let acme_name = name("acme");
    let (dropped, ()) = tokio::join!(migrator.drop_tenant(&acme_name), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            docs.doc("acme").is_some(),
            "dropped under another run's lock"
        );
        assert!(docs.registry("acme").is_some());
        holder.release().await;
    });
    dropped.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(docs.doc("acme").is_none());
    assert!(docs.registry("acme").is_none());
    assert_eq!(
        summary(&migrator).await,
        "0/0 tenants current, 0 behind, 0 failed"
    );
}

/// `status` counts current, behind and failed tenants, and pending public migrations, from
/// the control document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts() {
    let docs = Docs::new();
    create(
        &docs.migrator(fleet_to(ACCOUNTS)),
        &["behind", "current", "w-bad"],
    )
    .await;
    let full = docs.migrator(fleet_to(SEED));
    let report = full
        .migrate(&MigrateOptions::new().tenants([name("current"), name("w-bad")]))
        .await
        .unwrap();
    assert_eq!(report.failures.len(), 1);
    let with_later = docs.migrator(set(&["fleet", "later"], FEATURES));
    let status = with_later.status(&[]).await.unwrap();
    assert_eq!(status.summary(), "1/3 tenants current, 1 behind, 1 failed");
    assert_eq!(
        (status.public.applied_order, status.public.pending),
        (Some(PLANS), 1)
    );
    let by_name = |n: &str| {
        status
            .tenants
            .iter()
            .find(|t| t.tenant.as_str() == n)
            .unwrap()
    };
    assert_eq!(
        (by_name("behind").applied_order, by_name("behind").pending),
        (Some(ACCOUNTS), 2)
    );
    assert_eq!(by_name("w-bad").failed.as_ref().unwrap().order, PROJECTS);
    assert_eq!(by_name("current").pending, 0);
    // The counts are those of the control document's registry.
    let control = docs.control();
    let applied: Vec<&Value> = ["behind", "current", "w-bad"]
        .iter()
        .map(|n| &control["tenants"][n]["applied_order"])
        .collect();
    assert_eq!(applied, [&json!(ACCOUNTS), &json!(SEED), &json!(ACCOUNTS)]);
    let only = with_later.status(&[name("current")]).await.unwrap();
    assert_eq!(only.summary(), "1/1 tenants current, 0 behind, 0 failed");
}

/// `adopt` registers documents made without mtnt, recording a baseline of migrations they
/// already reflect; invalid names are skipped, the data is kept, and what a crashed write
/// leaves (a temporary file) is no document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_registers_existing_documents() {
    let docs = Docs::new();
    let legacy = br#"{"collections": {"ledger": [], "accounts": [{"email": "old@example.com"}]}}"#;
    for tenant in ["legacy-a", "legacy-b", "Legacy_c"] {
        std::fs::write(docs.file(tenant), legacy).unwrap();
    }
    std::fs::write(docs.file("unrelated"), br#"{"collections": {"keep": []}}"#).unwrap();
    std::fs::write(docs.path().join("legacy-z.json.tmp-1-1"), b"{\"collec").unwrap();
    let migrator = docs.migrator(fleet_to(SEED));

    match migrator.adopt("%egacy%", Some(2099_01_01_0001)).await {
        Err(Error::UnknownOrder(_)) => {}
        other => panic!("expected UnknownOrder, got {other:?}"),
    }
    let (adopted, skipped) = migrator.adopt("%egacy%", Some(ACCOUNTS)).await.unwrap();
    let adopted: Vec<&str> = adopted.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(adopted, ["legacy-a", "legacy-b"]);
    assert_eq!(skipped, ["Legacy_c"]);
    for tenant in ["legacy-a", "legacy-b"] {
        let entry = docs.registry(tenant).unwrap();
        assert_eq!(entry["state"], json!("active"), "{entry}");
        assert_eq!(docs.cached(tenant), (json!(ACCOUNTS), Value::Null));
        Docs::assert_tracked(
            &docs.doc(tenant).unwrap(),
            &fleet_to(ACCOUNTS),
            Scope::Tenant,
        );
        assert_eq!(docs.status(tenant, PROJECTS), None);
    }
    assert!(docs.registry("Legacy_c").is_none());
    assert!(docs.doc("Legacy_c").unwrap().get("migrations").is_none());
    let (again, _) = migrator.adopt("%egacy%", Some(ACCOUNTS)).await.unwrap();
    assert!(again.is_empty());

    // migrate applies what comes after the baseline, and keeps the data.
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!((report.tenants_migrated, report.migrations_applied), (2, 4));
    for tenant in ["legacy-a", "legacy-b"] {
        assert!(docs.has(tenant, "projects"), "{tenant}");
        let accounts = docs.collection(tenant, "accounts").unwrap();
        assert_eq!(accounts[0], json!({"email": "old@example.com"}));
        assert_eq!(docs.admins(tenant), 1);
        assert_eq!(docs.cached(tenant), (json!(SEED), Value::Null));
    }
    assert!(docs.doc("unrelated").unwrap().get("migrations").is_none());

    // Without a baseline every tenant migration runs on the adopted document.
    let (adopted, _) = migrator.adopt("unrelated", None).await.unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(docs.cached("unrelated"), (Value::Null, Value::Null));
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!((report.tenants_migrated, report.migrations_applied), (1, 4));
    assert!(docs.has("unrelated", "keep") && docs.has("unrelated", "projects"));
    assert_eq!(
        summary(&migrator).await,
        "3/3 tenants current, 0 behind, 0 failed"
    );
}

/// `adopt` registers a document only once it holds the tenant's lock: registered without
/// it, the tenant would be open to a fleet run before its baseline is recorded, and that
/// run would apply the baseline's migrations to a document that reflects them already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_registers_under_the_tenant_lock() {
    let docs = Docs::new();
    let legacy = br#"{"collections": {"ledger": [], "accounts": []}}"#;
    std::fs::write(docs.file("legacy-d"), legacy).unwrap();
    let migrator = docs.migrator(fleet_to(SEED));
    migrator.migrate(&MigrateOptions::new()).await.unwrap();

    let other = JsonBackend::open(docs.path()).unwrap();
    let tenant = Tenant::new(name("legacy-d"));
    let mut holder = other.connect(Target::Tenant(&tenant)).await.unwrap();
    assert!(holder.try_lock().await.unwrap());
    let (adopted, ()) = tokio::join!(migrator.adopt("legacy-d", Some(ACCOUNTS)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            docs.registry("legacy-d").is_none(),
            "registered while another run held the tenant, before its baseline was recorded"
        );
        holder.release().await;
    });
    assert_eq!(adopted.unwrap().0.len(), 1);
    assert_eq!(docs.cached("legacy-d"), (json!(ACCOUNTS), Value::Null));
    docs.assert_completed("legacy-d", &[LEDGER, ACCOUNTS]);
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 2);
}

/// `transaction = false`: the migration writes the document directly, so a failure keeps
/// what it did and leaves its row `started` until it is marked; in `create_tenant` the
/// compensation still removes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_transactional_migration_writes_through() {
    let docs = Docs::new();
    let with_tag = set(&["fleet", "nontx"], TAG);
    let migrator = docs.migrator(with_tag.clone());
    create(&migrator, &["steady"]).await;
    docs.assert_completed("steady", &[LEDGER, ACCOUNTS, PROJECTS, SEED, TAG]);
    assert_eq!(
        docs.collection("steady", "accounts").unwrap()[0]["tagged"],
        json!(true)
    );
    assert_eq!(
        docs.collection("steady", "accounts").unwrap()[0]["tagged_by"],
        json!("typed")
    );

    let error = migrator.create_tenant(&name("v-flaky")).await.unwrap_err();
    assert!(
        error.to_string().contains("flaky lost its nerve"),
        "{error}"
    );
    assert!(docs.doc("v-flaky").is_none() && docs.registry("v-flaky").is_none());

    create(&docs.migrator(fleet_to(SEED)), &["x-flaky"]).await;
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    // What ran before the failure is on disk: there was no transaction to roll back.
    assert_eq!(
        docs.collection("x-flaky", "accounts").unwrap()[0]["tagged"],
        json!(true)
    );
    let row = docs.row("x-flaky", TAG).unwrap();
    assert_eq!(row["status"], json!("started"), "{row}");
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("flaky lost its nerve"),
        "{row}"
    );
    assert_eq!(docs.cached("x-flaky"), (json!(SEED), json!(TAG)));

    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    let error = &report.failures[0].error;
    assert!(matches!(error, Error::Interrupted { .. }), "{error:?}");
    assert_contains(
        &error.to_string(),
        &["tag_accounts", "tenant x-flaky", "not declared idempotent"],
    );
    migrator
        .mark(Some(&name("x-flaky")), TAG, MigrationStatus::Completed)
        .await
        .unwrap();
    assert_eq!(docs.status("x-flaky", TAG).as_deref(), Some("completed"));
    let report = migrator.migrate(&MigrateOptions::new()).await.unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(docs.cached("x-flaky"), (json!(TAG), Value::Null));
    assert_eq!(
        summary(&migrator).await,
        "2/2 tenants current, 0 behind, 0 failed"
    );
}

/// The engine's `classify` says which failures are worth another try, and mtnt retries
/// them: a transient failure costs one more attempt, not a failed tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried() {
    let docs = Docs::new();
    let backend = JsonBackend::open(docs.path()).unwrap();
    let transient = Error::other(JsonError::Transient("busy".to_owned()));
    let failed = Error::other(JsonError::Failed("no".to_owned()));
    assert_eq!(backend.classify(&transient), ErrorClass::Transient);
    assert_eq!(backend.classify(&failed), ErrorClass::Other);
    assert_eq!(
        backend.classify(&Error::TenantExists("acme".to_owned())),
        ErrorClass::UniqueViolation
    );

    create(&docs.migrator(fleet_to(SEED)), &["u-cold"]).await;
    let migrator = docs
        .builder(set(&["fleet", "retry"], WARM))
        .safety(SafetySettings::new().retry_backoff(Duration::from_millis(10)))
        .build()
        .unwrap();
    let heard = Heard::default();
    let report = migrator
        .migrate_with_progress(&MigrateOptions::new(), &heard)
        .await
        .unwrap();
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(report.migrations_applied, 1);
    let retries = heard.retries.lock().unwrap().clone();
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_contains(&retries[0], &["tenant u-cold", "still cold"]);
    assert_eq!(docs.status("u-cold", WARM).as_deref(), Some("completed"));
    assert_eq!(docs.row("u-cold", WARM).unwrap()["error"], Value::Null);
    assert_eq!(docs.collection("u-cold", "cache"), Some(vec![]));
    assert_eq!(docs.cached("u-cold"), (json!(WARM), Value::Null));
}

/// What a run reports as it goes: the retries it makes.
#[derive(Default)]
struct Heard {
    retries: std::sync::Mutex<Vec<String>>,
}

impl mtnt::Progress for Heard {
    fn retrying(&self, target: &str, _: u32, _: u32, error: &Error, _: Duration) {
        self.retries
            .lock()
            .unwrap()
            .push(format!("{target}: {error}"));
    }
}

/// The fleet commands beyond `migrate` run on the engine too: `exec` runs a statement in
/// every tenant's transaction without recording it, and `rollback_fleet` reverts in every
/// tenant, refusing before any change when an irreversible migration is in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_exec_and_rollback() {
    let docs = Docs::new();
    let migrator = docs.migrator(fleet_to(SEED));
    create(&migrator, &["acme", "globex"]).await;
    let quiet = Heard::default();
    let all = MigrateOptions::new();

    let ran = migrator
        .exec(
            r#"ADD FIELD accounts.plan DEFAULT "free""#,
            true,
            &all,
            &quiet,
        )
        .await
        .unwrap();
    assert!(ran.is_success(), "{:?}", ran.failures);
    assert_eq!(ran.migrations_applied, 2);
    for t in ["acme", "globex"] {
        assert_eq!(
            docs.collection(t, "accounts").unwrap()[0]["plan"],
            json!("free")
        );
        assert_eq!(
            docs.doc(t).unwrap()["migrations"].as_array().unwrap().len(),
            4
        );
    }
    // A statement that fails in its transaction changes nothing there.
    let before = std::fs::read(docs.file("acme")).unwrap();
    let failed = migrator
        .exec(
            "CREATE COLLECTION extra; DROP COLLECTION nothing",
            true,
            &all,
            &quiet,
        )
        .await
        .unwrap();
    assert_eq!(failed.failures.len(), 2, "{:?}", failed.failures);
    assert_eq!(std::fs::read(docs.file("acme")).unwrap(), before);

    let before = [docs.file("acme"), docs.file("globex")].map(|f| std::fs::read(f).unwrap());
    let error = migrator
        .rollback_fleet(RollbackTarget::All, &all, &quiet)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Irreversible { .. }), "{error:?}");
    let after = [docs.file("acme"), docs.file("globex")].map(|f| std::fs::read(f).unwrap());
    assert_eq!(after, before, "a tenant changed before the refusal");

    let reverted = migrator
        .rollback_fleet(RollbackTarget::Steps(1), &all, &quiet)
        .await
        .unwrap();
    assert!(reverted.is_success(), "{:?}", reverted.failures);
    assert_eq!(reverted.migrations_applied, 2);
    for t in ["acme", "globex"] {
        assert_eq!(docs.admins(t), 0, "{t}");
        assert_eq!(docs.status(t, SEED).as_deref(), Some("pending"));
        assert_eq!(docs.cached(t), (json!(PROJECTS), Value::Null));
    }
    assert_eq!(
        summary(&migrator).await,
        "0/2 tenants current, 2 behind, 0 failed"
    );
}

/// A connection dropped without `release` (a cancelled run) ends its lock and its open
/// transaction, which leaves the document as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_ends_its_lock_and_transaction() {
    let docs = Docs::new();
    create(&docs.migrator(fleet_to(ACCOUNTS)), &["acme"]).await;
    let before = std::fs::read(docs.file("acme")).unwrap();
    let backend = JsonBackend::open(docs.path()).unwrap();
    let acme = Tenant::new(name("acme"));
    let mut first = backend.connect(Target::Tenant(&acme)).await.unwrap();
    let mut second = backend.connect(Target::Tenant(&acme)).await.unwrap();
    assert!(first.try_lock_and_read().await.unwrap().is_some());
    assert!(second.try_lock_and_read().await.unwrap().is_none());
    first.begin(Default::default()).await.unwrap();
    first
        .ctx()
        .execute("CREATE COLLECTION half_done")
        .await
        .unwrap();
    drop(first);
    let state = second
        .try_lock_and_read()
        .await
        .unwrap()
        .expect("the lock was leaked");
    assert_eq!(state.applied.len(), 2);
    assert_eq!(std::fs::read(docs.file("acme")).unwrap(), before);
    second.release().await;
}

/// The public target shares the control document with the registry: a public commit
/// keeps what registry writes changed while its transaction was open, and its changes are
/// invisible until it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_commits_keep_registry_writes() {
    let docs = Docs::new();
    let backend = JsonBackend::open(docs.path()).unwrap();
    backend.prepare().await.unwrap();
    let mut public = backend.connect(Target::Public).await.unwrap();
    assert!(public.try_lock().await.unwrap());
    public.begin(Default::default()).await.unwrap();
    public
        .ctx()
        .execute(r#"CREATE COLLECTION plans; INSERT INTO plans {"name": "free"}"#)
        .await
        .unwrap();
    let acme = Tenant::new(name("acme"));
    backend
        .register(&acme, mtnt::TenantState::Active, None)
        .await
        .unwrap();
    assert!(docs.control()["collections"].get("plans").is_none());
    public.commit(&[], None).await.unwrap();
    public.release().await;
    let control = docs.control();
    assert_eq!(control["collections"]["plans"], json!([{"name": "free"}]));
    assert_eq!(control["tenants"]["acme"]["state"], json!("active"));
    let error = backend
        .register(&acme, mtnt::TenantState::Active, None)
        .await
        .unwrap_err();
    assert_eq!(backend.classify(&error), ErrorClass::UniqueViolation);
}

/// Each write replaces the document whole (a new file renamed over the old), so that a
/// reader or a crash never meets half of one: a reader that opened the document before a
/// run still reads the whole document as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_replaced_whole() {
    use std::io::Read;
    let docs = Docs::new();
    create(&docs.migrator(fleet_to(ACCOUNTS)), &["acme"]).await;
    let (doc, control) = (docs.file("acme"), docs.path().join("mtnt_control.json"));
    let before = [
        std::fs::read(&doc).unwrap(),
        std::fs::read(&control).unwrap(),
    ];
    let mut readers = [&doc, &control].map(|p| std::fs::File::open(p).unwrap());
    let report = docs
        .migrator(fleet_to(SEED))
        .migrate(&MigrateOptions::new())
        .await
        .unwrap();
    assert_eq!(report.migrations_applied, 2);
    for ((reader, old), path) in readers.iter_mut().zip(&before).zip([&doc, &control]) {
        let mut seen = Vec::new();
        reader.read_to_end(&mut seen).unwrap();
        assert_eq!(&seen, old, "{} was written in place", path.display());
        assert_ne!(
            &std::fs::read(path).unwrap(),
            old,
            "{} was not written",
            path.display()
        );
    }
    assert!(
        docs.temporary_files().is_empty(),
        "{:?}",
        docs.temporary_files()
    );
}
