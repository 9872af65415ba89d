// What `#[mtnt::hook]` registers, read back at run time: each kind, name, enabled flag
// and location, in the order hooks of one kind run (by name).

mod hooks {
    use mtnt::{Ctx, Result, RunInfo, TenantOutcome};

    #[mtnt::hook(before_run)]
    pub async fn check_window(run: &RunInfo<'_>) -> Result<()> {
        let _ = (
            run.command(),
            run.tenants(),
            run.tenant_count(),
            run.report(),
        );
        Ok(())
    }

    /// Doc comments and other attributes stay on the function.
    #[mtnt::hook(before_tenant, name = "b_prepare")]
    #[allow(clippy::needless_return)]
    async fn prepare(ctx: &mut Ctx<'_>) -> Result<()> {
        return ctx.execute("SELECT 1").await;
    }

    #[mtnt::hook(before_tenant, name = "a_first")]
    async fn first(ctx: &mut mtnt::Ctx<'_>) -> mtnt::Result<()> {
        let _ = ctx.tenant();
        Ok(())
    }

    #[mtnt::hook(after_tenant)]
    async fn notify(ctx: &mut Ctx<'_>, outcome: &TenantOutcome<'_>) -> Result<()> {
        if let Some(error) = outcome.error() {
            let _ = (ctx.tenant(), error.to_string(), outcome.applied());
        }
        Ok(())
    }

    // Trailing commas, keys in any order after the kind, and a raw identifier.
    #[mtnt::hook(after_run, enabled = false, name = "warm")]
    async fn r#warm_caches(run: &RunInfo<'_>) -> Result<()> {
        let _ = run.report().map(|r| r.tenants_migrated);
        Ok(())
    }

    #[mtnt::hook(after_run)]
    async fn r#loop(_: &RunInfo<'_>) -> Result<()> {
        Ok(())
    }

    // The attribute may come from a macro_rules! expansion.
    macro_rules! run_hook {
        ($kind:ident, $name:ident) => {
            #[mtnt::hook($kind)]
            async fn $name(_run: &mtnt::RunInfo<'_>) -> mtnt::Result<()> {
                Ok(())
            }
        };
    }
    run_hook!(before_run, from_macro);
}

// Two hooks of one kind with one name: registered, but refused as a set.
mod clash {
    mod a {
        #[mtnt::hook(after_run, name = "same")]
        async fn one(_run: &mtnt::RunInfo<'_>) -> mtnt::Result<()> {
            Ok(())
        }
    }
    mod b {
        #[mtnt::hook(after_run, name = "same")]
        async fn two(_run: &mtnt::RunInfo<'_>) -> mtnt::Result<()> {
            Ok(())
        }
    }
}

fn main() {
    use mtnt::{HookKind, Hooks};

    let hooks = Hooks::registered_in(concat!(module_path!(), "::hooks")).expect("valid hooks");
    let all: Vec<_> = hooks
        .iter()
        .map(|h| (h.kind(), h.name(), h.is_enabled()))
        .collect();
    assert_eq!(
        all,
        [
            (HookKind::BeforeRun, "check_window", true),
            (HookKind::BeforeRun, "from_macro", true),
            (HookKind::BeforeTenant, "a_first", true),
            (HookKind::BeforeTenant, "b_prepare", true),
            (HookKind::AfterTenant, "notify", true),
            (HookKind::AfterRun, "loop", true),
            (HookKind::AfterRun, "warm", false),
        ]
    );
    // The disabled one is left out of what runs.
    let after_run: Vec<_> = hooks.of(HookKind::AfterRun).map(|h| h.name()).collect();
    assert_eq!(after_run, ["loop"]);

    let prepare = hooks.iter().find(|h| h.name() == "b_prepare").unwrap();
    assert!(
        prepare.location().file.ends_with("hooks.rs"),
        "{}",
        prepare.location()
    );
    assert_eq!(
        prepare.location().line,
        21,
        "the line of the fn, not of the attribute"
    );
    assert_eq!(
        prepare.location().module_path,
        concat!(module_path!(), "::hooks")
    );
    assert_eq!(prepare.to_string(), "before_tenant hook b_prepare");

    // Every registered hook includes these.
    assert!(Hooks::registered_in(module_path!()).is_err(), "the clash");
    let error = Hooks::registered_in(concat!(module_path!(), "::clash"))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("two after_run hooks are named \"same\": at "),
        "{error}"
    );
    assert!(Hooks::none().is_empty());
}
