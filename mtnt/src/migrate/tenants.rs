//! A tenant's life cycle, written once for every engine: create (atomic in one
//! transaction where the engine's storage is transactional, else by compensation), adopt
//! existing storage, and drop. Each takes the tenant's lock first, like every other
//! command, so none of them races a run working on the tenant.

use super::claim::lock_waiting;
use super::hooks::TenantOutcome;
use super::protocol::{wrap, Completed, Parts, Protocol};
use super::template::{template_tenant, TemplateChange};
use super::{Progress, SafetySettings};
use crate::backend::{Direction, ErrorClass, Record, RegistryRow, Target, TargetState};
use crate::{
    Error, Migration, MigrationStatus, Result, Scope, ServerName, Tenant, TenantName, TenantState,
};

/// What adopting existing storage did.
#[derive(Debug, Default)]
pub(crate) struct Adopted {
    /// The tenants registered.
    pub(crate) tenants: Vec<Tenant>,
    /// Storage names that are not valid tenant names.
    pub(crate) invalid: Vec<String>,
    /// Storage that another run registered first.
    pub(crate) taken: Vec<TenantName>,
}

impl Protocol<'_> {
    pub(crate) fn enabled_tenant_migrations(&self) -> Vec<&'static Migration> {
        self.set
            .scope(Scope::Tenant)
            .filter(|m| m.is_enabled())
            .collect()
    }

    /// An error of the registry or storage step of `tenant create`, in the user's terms.
    pub(crate) fn creation_error(&self, tenant: &Tenant, error: Error) -> Error {
        match self.backend.classify(&error) {
            ErrorClass::UniqueViolation => Error::TenantExists(tenant.name.to_string()),
            ErrorClass::StorageExists => Error::StorageExists {
                tenant: tenant.name.clone(),
                storage: tenant.storage.clone(),
            },
            _ => error,
        }
    }

    /// Registers a tenant, creates its storage and applies every enabled tenant
    /// migration, with the tenant hooks around them, all or nothing: when anything
    /// fails, neither storage nor registry row is left.
    ///
    /// The hooks run outside a transaction, as in `migrate`, so a create with tenant
    /// hooks is made atomic by compensation on every engine: the tenant stays `creating`
    /// (which fleet runs leave alone) until its `after_tenant` hooks succeeded.
    ///
    /// Where the engine copies storage, the tenant is a copy of the template instead
    /// (see `template.rs`) whenever the template is usable; what bringing the template up
    /// to date changed is returned. Where spares are kept (see `spares.rs`), the tenant
    /// takes one if there is one left.
    pub(crate) async fn create_tenant(
        &self,
        tenant: &Tenant,
        safety: &SafetySettings,
    ) -> Result<Option<TemplateChange>> {
        let all = self.enabled_tenant_migrations();
        // Spares and the template live on the control database's server.
        let here = tenant.server.as_ref().is_none_or(ServerName::is_default);
        if here
            && self.uses_spares()
            && !all.is_empty()
            && self.take_spare(tenant, &all, safety).await?
        {
            return Ok(None);
        }
        let mut change = None;
        if here && self.uses_template() {
            let template = template_tenant();
            let (guard, status) = self.locked_template(&template, &all, safety).await?;
            change = status.change;
            if let Some(error) = &status.failure {
                tracing::warn!(tenant = %tenant.name, "the tenant template could not be built, so the tenant replays its migrations: {error}");
            }
            if status.usable {
                let created = self
                    .create_from_template(&template, tenant, &all, safety)
                    .await;
                guard.release().await;
                return created.map(|()| change);
            }
            guard.release().await;
        }
        let created = if self.caps_for(Target::Tenant(tenant)).transactional_storage
            && !self.has_tenant_hooks()
        {
            self.create_in_transaction(tenant, &all, safety).await
        } else {
            self.create_by_compensation(tenant, &all, safety).await
        };
        created.map(|()| change)
    }

    /// Registers the tenant as `creating` (with the registry's cached summary of `all`
    /// applied), copies the template's storage, checks the copy's tracking rows under
    /// the tenant's lock, then marks it `active`; when a step fails, what the earlier
    /// ones made is removed again. The caller holds the template's lock.
    async fn create_from_template(
        &self,
        template: &Tenant,
        tenant: &Tenant,
        all: &[&'static Migration],
        safety: &SafetySettings,
    ) -> Result<()> {
        let target = Target::Tenant(tenant);
        let applied_order = all.iter().map(|m| m.order()).max();
        self.backend
            .register(tenant, TenantState::Creating, applied_order)
            .await
            .map_err(|e| self.creation_error(tenant, e))?;
        let outcome = async {
            self.backend
                .copy_storage(template, tenant)
                .await
                .map_err(|e| (false, self.creation_error(tenant, e)))?;
            let mut conn = self.backend.connect(target).await.map_err(|e| (true, e))?;
            let checked = async {
                lock_waiting(&mut *conn, target, safety).await?;
                let state = conn.read().await?;
                let copied: Vec<(i64, &str, MigrationStatus)> = state
                    .applied
                    .iter()
                    .map(|r| (r.order, r.checksum.as_str(), r.status))
                    .collect();
                let wanted: Vec<(i64, &str, MigrationStatus)> = all
                    .iter()
                    .map(|m| (m.order(), m.checksum(), MigrationStatus::Completed))
                    .collect();
                if copied != wanted {
                    return Err(Error::Corrupt(format!(
                        "tenant {}: the copy of the template {} does not hold the tenant migrations of the code",
                        tenant.name, template.storage
                    )));
                }
                Ok(())
            }
            .await;
            conn.release().await;
            checked.map_err(|e| (true, e))
        }
        .await;
        if let Err((storage_made, error)) = outcome {
            self.undo_create(tenant, storage_made).await;
            return Err(error);
        }
        self.backend.set_state(tenant, TenantState::Active).await
    }

    /// Removes what a failed create by compensation made: the storage (when it was
    /// made) and the registry row, which is still `creating`. Failures are logged: the
    /// create fails with its own error.
    async fn undo_create(&self, tenant: &Tenant, storage_made: bool) {
        if storage_made {
            if let Err(cleanup) = self.backend.drop_storage(tenant).await {
                tracing::error!(tenant = %tenant.name, "could not remove the storage of the half-created tenant: {cleanup}");
            }
        }
        if let Err(cleanup) = self.backend.unregister(tenant, true).await {
            tracing::error!(tenant = %tenant.name, "could not remove the registry row of the half-created tenant: {cleanup}");
        }
    }

    /// The registry row, the storage and the migrations up to the first one outside a
    /// transaction commit together; the rest run after, and a failure there drops the
    /// tenant again.
    async fn create_in_transaction(
        &self,
        tenant: &Tenant,
        all: &[&'static Migration],
        safety: &SafetySettings,
    ) -> Result<()> {
        let target = Target::Tenant(tenant);
        let split = all
            .iter()
            .position(|m| {
                !(self.caps_for(Target::Tenant(tenant)).transactional_ddl && m.is_transactional())
            })
            .unwrap_or(all.len());
        let (atomic, rest) = all.split_at(split);
        let mut conn = self.backend.connect(target).await?;
        lock_waiting(&mut *conn, target, safety).await?;
        let state = if rest.is_empty() {
            TenantState::Active
        } else {
            TenantState::Creating
        };
        let prelude = [
            Record::Register {
                state: TenantState::Creating,
            },
            Record::CreateStorage,
        ];
        let finish = [Record::State { state }];
        let mut completed = Completed(Default::default());
        let created = if atomic.is_empty() {
            let result = async {
                conn.begin(Default::default()).await?;
                conn.write(&prelude).await?;
                let mut records = Vec::new();
                if self
                    .caps_for(Target::Tenant(tenant))
                    .registry_in_target_transaction
                {
                    records.push(Record::Registry {
                        clear_failure: true,
                    });
                }
                records.extend_from_slice(&finish);
                conn.commit(&records, None).await
            }
            .await;
            if result.is_err() {
                conn.rollback().await;
            }
            result.map_err(|e| (None, e))
        } else {
            let parts = Parts {
                prelude: &prelude,
                finish: &finish,
                record_failure: false,
            };
            self.run_transaction(
                &mut *conn,
                target,
                0,
                atomic,
                Direction::Up,
                &mut None,
                &mut completed,
                parts,
            )
            .await
            .map_err(|(i, e)| (Some(i), e))
        };
        if let Err((i, e)) = created {
            conn.release().await;
            // The registry row or the storage could not be made (the prelude fails as the
            // first migration would).
            if matches!(i, None | Some(0)) && self.is_name_clash(tenant, &e).await {
                return Err(self.creation_error(tenant, e));
            }
            return Err(match i {
                Some(i) => wrap(target, atomic[i], Direction::Up, e),
                None => e,
            });
        }
        if rest.is_empty() {
            conn.release().await;
            return Ok(());
        }
        let outcome = self
            .apply(&mut *conn, target, &mut completed, rest, Direction::Up)
            .await
            .map_err(|(i, e)| wrap(target, rest[i], Direction::Up, e));
        if let Err(error) = outcome {
            if let Err(cleanup) = conn.commit(&[Record::DropTenant], None).await {
                tracing::error!(tenant = %tenant.name, "could not remove the half-created tenant: {cleanup}");
            }
            conn.release().await;
            return Err(error);
        }
        conn.release().await;
        self.backend.set_state(tenant, TenantState::Active).await
    }

    /// Whether `error`, of the transaction that registers `tenant`, creates its storage
    /// and runs its first migrations, is the name taken: the first migration's own
    /// unique violation (duplicates under a new unique index) is not, and the registry
    /// tells which, since the transaction rolled back what it had registered.
    async fn is_name_clash(&self, tenant: &Tenant, error: &Error) -> bool {
        match self.backend.classify(error) {
            ErrorClass::StorageExists => true,
            ErrorClass::UniqueViolation => self
                .backend
                .tenant_records(std::slice::from_ref(&tenant.name))
                .await
                .map_or(true, |found| !found.is_empty()),
            _ => false,
        }
    }

    /// Registers the tenant as `creating`, creates its storage, migrates it like any
    /// tenant (with its hooks), then marks it `active`; when a step fails, what the
    /// earlier ones made is removed again.
    async fn create_by_compensation(
        &self,
        tenant: &Tenant,
        all: &[&'static Migration],
        safety: &SafetySettings,
    ) -> Result<()> {
        let target = Target::Tenant(tenant);
        self.backend
            .register(tenant, TenantState::Creating, None)
            .await
            .map_err(|e| self.creation_error(tenant, e))?;
        let outcome = async {
            self.backend
                .create_storage(tenant)
                .await
                .map_err(|e| (false, self.creation_error(tenant, e)))?;
            let mut conn = self.backend.connect(target).await.map_err(|e| (true, e))?;
            let result = async {
                lock_waiting(&mut *conn, target, safety).await?;
                let state = conn.read().await?;
                let hooks = self.has_tenant_hooks();
                let failed = async |conn: &mut dyn crate::Connection, error: &Error, applied| {
                    let outcome = TenantOutcome::Failed {
                        error,
                        applied,
                        creating: true,
                    };
                    // The create fails with `error` whatever the hooks say.
                    let _ = self.after_tenant(conn, target, &outcome).await;
                };
                if hooks {
                    if let Err(before) = self.before_tenant(&mut *conn, target).await {
                        if !before.lost {
                            failed(&mut *conn, &before.error, 0).await;
                        }
                        return Err(before.error);
                    }
                }
                let mut completed = Completed::of(&state);
                let outcome = self
                    .apply(&mut *conn, target, &mut completed, all, Direction::Up)
                    .await;
                match outcome {
                    Ok(()) if hooks => {
                        let outcome = TenantOutcome::Created { applied: all.len() };
                        self.after_tenant_created(&mut *conn, target, &outcome)
                            .await
                    }
                    Ok(()) => Ok(()),
                    Err((i, error)) => {
                        let lost = self.backend.classify(&error) == ErrorClass::ConnectionLost;
                        let error = wrap(target, all[i], Direction::Up, error);
                        if hooks && !lost {
                            failed(&mut *conn, &error, completed.0.len()).await;
                        }
                        Err(error)
                    }
                }
            }
            .await;
            conn.release().await;
            result.map_err(|e| (true, e))
        }
        .await;
        if let Err((storage_made, error)) = outcome {
            self.undo_create(tenant, storage_made).await;
            return Err(error);
        }
        self.backend.set_state(tenant, TenantState::Active).await
    }

    /// Removes a tenant, its storage with all its data and its registry row, once no
    /// other run works on it (waiting at most the unlock deadline).
    pub(crate) async fn drop_tenant(&self, tenant: &Tenant, safety: &SafetySettings) -> Result<()> {
        let target = Target::Tenant(tenant);
        let mut conn = match self.backend.connect(target).await {
            // Storage that is gone (a create that died before making it, or removed by
            // hand) has no lock to take and nothing to drop: only the row is left.
            Err(e)
                if !self.caps_for(Target::Tenant(tenant)).transactional_storage
                    && self.backend.classify(&e) == ErrorClass::StorageMissing =>
            {
                return self.backend.unregister(tenant, false).await;
            }
            other => other?,
        };
        let result = async {
            lock_waiting(&mut *conn, target, safety).await?;
            if self.caps_for(Target::Tenant(tenant)).transactional_storage {
                if let Err(error) = conn.commit(&[Record::DropTenant], None).await {
                    conn.rollback().await;
                    return Err(error);
                }
                Ok(())
            } else {
                self.backend.drop_storage(tenant).await?;
                self.backend.unregister(tenant, false).await
            }
        }
        .await;
        conn.release().await;
        result
    }

    /// Registers existing storage whose names match the SQL `LIKE` pattern and are not
    /// registered yet, recording `baseline` as completed in each (the migrations the
    /// storage already reflects).
    pub(crate) async fn adopt(
        &self,
        like: &str,
        server: Option<&ServerName>,
        baseline: &[&'static Migration],
        safety: &SafetySettings,
        progress: &dyn Progress,
    ) -> Result<Adopted> {
        let names = match server {
            None => self.backend.unregistered_storage(like).await?,
            Some(server) => self.backend.unregistered_storage_on(server, like).await?,
        };
        let mut adopted = Adopted::default();
        let valid: Vec<(TenantName, String)> = names
            .into_iter()
            .filter_map(|storage| match TenantName::new(storage.as_str()) {
                Ok(name) => Some((name, storage)),
                Err(_) => {
                    adopted.invalid.push(storage);
                    None
                }
            })
            .collect();
        progress.start(valid.len() as u64);
        for (name, storage) in valid {
            let tenant = Tenant {
                name,
                storage,
                server: server.cloned(),
            };
            match self.adopt_one(&tenant, baseline, safety).await {
                Ok(()) => {
                    progress.tenant_done(&tenant.name, Ok(baseline.len()));
                    adopted.tenants.push(tenant);
                }
                Err(e) if self.backend.classify(&e) == ErrorClass::UniqueViolation => {
                    // Another `tenant adopt` registered it first: it is adopted.
                    progress.warning(&format!(
                        "tenant {}: already adopted by another run",
                        tenant.name
                    ));
                    adopted.taken.push(tenant.name);
                }
                Err(error) => {
                    progress.tenant_done(&tenant.name, Err(&error));
                    return Err(error);
                }
            }
        }
        Ok(adopted)
    }

    async fn adopt_one(
        &self,
        tenant: &Tenant,
        baseline: &[&'static Migration],
        safety: &SafetySettings,
    ) -> Result<()> {
        let target = Target::Tenant(tenant);
        let marks = baseline.iter().map(|&migration| Record::Marked {
            migration,
            status: MigrationStatus::Completed,
        });
        let registry = self
            .caps_for(Target::Tenant(tenant))
            .registry_in_target_transaction
            .then_some(Record::Registry {
                clear_failure: true,
            });
        let applied_order = baseline.iter().map(|m| m.order()).max();
        if self.caps_for(Target::Tenant(tenant)).transactional_storage {
            let mut records = vec![Record::Register {
                state: TenantState::Active,
            }];
            records.extend(marks);
            records.extend(registry);
            let mut conn = self.backend.connect(target).await?;
            let result = async {
                lock_waiting(&mut *conn, target, safety).await?;
                if let Err(error) = conn.commit(&records, None).await {
                    conn.rollback().await;
                    return Err(error);
                }
                Ok(())
            }
            .await;
            conn.release().await;
            return result;
        }
        let mut records: Vec<Record<'_>> = marks.collect();
        records.extend(registry);
        // The lock before the registry row, as in every other command: registered first,
        // the tenant would be open to a fleet run before its baseline is recorded, and
        // that run would apply the baseline's migrations to storage that reflects them.
        let mut conn = self.backend.connect(target).await?;
        let result = async {
            lock_waiting(&mut *conn, target, safety).await?;
            self.backend
                .register(tenant, TenantState::Active, applied_order)
                .await?;
            let recorded = async {
                let _: TargetState = conn.read().await?;
                if !records.is_empty() {
                    if let Err(error) = conn.commit(&records, None).await {
                        conn.rollback().await;
                        return Err(error);
                    }
                }
                Ok(())
            }
            .await;
            if let Err(error) = recorded {
                let _ = self.backend.unregister(tenant, false).await;
                return Err(error);
            }
            if !self
                .caps_for(Target::Tenant(tenant))
                .registry_in_target_transaction
            {
                self.backend
                    .write_registry(
                        tenant,
                        RegistryRow {
                            applied_order,
                            failure: None,
                        },
                    )
                    .await?;
            }
            Ok(())
        }
        .await;
        conn.release().await;
        result
    }
}
