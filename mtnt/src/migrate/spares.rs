//! Spare storages, where the engine renames a storage in a transaction
//! ([`Capabilities::storage_spares`](crate::Capabilities::storage_spares): PostgreSQL
//! schema per tenant): `migrate` keeps a few schemas with every enabled tenant migration
//! applied, and `tenant create` takes one, renaming it to the tenant's schema in the
//! transaction that registers the tenant and records its migrations, instead of replaying
//! them. Off unless asked for ([`MigratorBuilder::spares`](crate::MigratorBuilder::spares)).
//!
//! A spare is named for the migrations it holds (`mtnt_spare_<fingerprint>_<random>`), is
//! never registered, and has no tracking rows: the take writes them. Its name starts with
//! `mtnt`, which no tenant's does. A spare is made in one transaction, under a name of its
//! own (`mtnt_build_<random>`), then renamed to its spare name: so that no half-made spare
//! is ever taken, and so that what a rename leaves behind (a definition that names its
//! schema, which renaming does not rewrite) is seen, by describing the catalog before and
//! after, before any tenant is made from it.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Instrument;

use super::claim::lock_waiting;
use super::journal::{self, TenantSpecific};
use super::protocol::{invoke, migration_span, wrap, Protocol};
use super::template::{key_of, own_storage, template_tenant, TemplateChange};
use super::SafetySettings;
use crate::backend::{Direction, ErrorClass, Record, Target};
use crate::{Migration, MigrationStatus, Result, Tenant, TenantState};

/// How the names of spares start.
const SPARE: &str = "mtnt_spare_";
/// How the names of spares being made start.
const BUILD: &str = "mtnt_build_";

/// How the names of the spares of the migrations with fingerprint `key` start.
fn prefix_of(key: &str) -> String {
    format!("{SPARE}{}_", &key[..16])
}

/// 16 random hex digits (the standard library's per-process random hash keys).
fn random_suffix() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", hasher.finish())
}

impl Protocol<'_> {
    /// Whether `tenant create` takes spares and `migrate` keeps them.
    pub(crate) fn uses_spares(&self) -> bool {
        self.spares > 0 && self.caps.storage_spares && !self.has_tenant_hooks()
    }

    /// Brings the spares in line with the enabled tenant migrations, under the template's
    /// lock: drops those made for other migrations (and those a crash left half-made),
    /// then makes spares until there are as many as asked for. `None`: nothing changed.
    pub(crate) async fn refresh_spares(
        &self,
        safety: &SafetySettings,
    ) -> Result<Option<TemplateChange>> {
        let all = self.enabled_tenant_migrations();
        if all.is_empty() {
            return Ok(None);
        }
        let key = key_of(&all);
        if self.known_unusable(&key).await? {
            return Ok(None);
        }
        let template = template_tenant();
        let target = Target::Tenant(&template);
        let mut guard = self.backend.connect(target).await?;
        let result = async {
            lock_waiting(&mut *guard, target, safety).await?;
            let current = prefix_of(&key);
            let mut kept = 0;
            let mut dropped = 0;
            for name in self.backend.spare_storages("mtnt_").await? {
                if name.starts_with(&current) {
                    kept += 1;
                } else if name.starts_with(SPARE) || name.starts_with(BUILD) {
                    self.backend.drop_storage(&own_storage(name)).await?;
                    dropped += 1;
                }
            }
            let unusable = all
                .iter()
                .find(|m| !(self.caps.transactional_ddl && m.is_transactional()))
                .map(|m| TemplateChange::OutsideTransaction {
                    migration: m.to_string(),
                });
            let mut built = 0;
            let mut why = unusable;
            while why.is_none() && kept + built < self.spares {
                why = self.make_spare(&all, &current).await?;
                if why.is_none() {
                    built += 1;
                }
            }
            if let Some(why) = why {
                journal::record_tenant_specific(
                    self.backend,
                    &TenantSpecific {
                        migrations: key,
                        why: why.clone(),
                    },
                )
                .await?;
                tracing::info!("{why}");
                return Ok(Some(why));
            }
            Ok((built + dropped > 0).then_some(TemplateChange::Spares { built, dropped }))
        }
        .await;
        guard.release().await;
        result
    }

    /// Makes one spare named `prefix` and a random suffix with `all` applied; what makes
    /// spares unusable instead, if it is found (the half-made spare is gone then).
    async fn make_spare(
        &self,
        all: &[&'static Migration],
        prefix: &str,
    ) -> Result<Option<TemplateChange>> {
        let suffix = random_suffix();
        let build = own_storage(format!("{BUILD}{suffix}"));
        let spare = own_storage(format!("{prefix}{suffix}"));
        let target = Target::Tenant(&build);
        let asked = AtomicBool::new(false);
        let mut conn = self.backend.connect(target).await?;
        let made = async {
            let mut timeouts = self.timeouts_of(all[0]);
            conn.begin(timeouts).await?;
            conn.write(&[Record::CreateStorage]).await?;
            for &migration in all {
                let wanted = self.timeouts_of(migration);
                if wanted != timeouts {
                    conn.set_timeouts(wanted).await?;
                    timeouts = wanted;
                }
                let function = migration.function(Direction::Up, target)?;
                invoke(function, &mut conn.ctx().watched(Some(&asked)))
                    .instrument(migration_span(target, migration, Direction::Up))
                    .await
                    .map_err(|e| wrap(target, migration, Direction::Up, e))?;
                if asked.load(Ordering::Relaxed) {
                    return Ok(Some(TemplateChange::Unusable {
                        migration: migration.to_string(),
                    }));
                }
            }
            conn.commit(&[], None).await?;
            Ok::<_, crate::Error>(None)
        }
        .await;
        if !matches!(made, Ok(None)) {
            conn.rollback().await;
        }
        conn.release().await;
        if let Some(why) = made? {
            return Ok(Some(why));
        }
        let result = async {
            let before = self.backend.describe(std::slice::from_ref(&build)).await?;
            let mut conn = self.backend.connect(Target::Tenant(&spare)).await?;
            let renamed = conn
                .commit(
                    &[Record::TakeStorage {
                        from: &build.storage,
                    }],
                    None,
                )
                .await;
            if renamed.is_err() {
                conn.rollback().await;
            }
            conn.release().await;
            renamed?;
            let after = self.backend.describe(std::slice::from_ref(&spare)).await?;
            match (before.into_iter().next(), after.into_iter().next()) {
                (Some(Ok(before)), Some(Ok(after))) if before == after => Ok(None),
                (Some(Ok(_)), Some(Ok(_))) => {
                    self.backend.drop_storage(&spare).await?;
                    Ok(Some(TemplateChange::NameInDefinitions))
                }
                (_, Some(Err(e))) | (Some(Err(e)), _) => Err(e),
                _ => Err(crate::Error::Corrupt(format!(
                    "the catalog did not describe the spare {}",
                    spare.storage
                ))),
            }
        }
        .await;
        if result.is_err() {
            for made in [&build, &spare] {
                if let Err(cleanup) = self.backend.drop_storage(made).await {
                    tracing::warn!(
                        "could not drop the half-made spare {}: {cleanup}",
                        made.storage
                    );
                }
            }
        }
        result
    }

    /// Registers `tenant` with a spare of `all` as its storage, renamed to the tenant's,
    /// and `all` recorded completed, in one transaction under the tenant's lock; false when
    /// there is no spare of these migrations (every one taken).
    pub(crate) async fn take_spare(
        &self,
        tenant: &Tenant,
        all: &[&'static Migration],
        safety: &SafetySettings,
    ) -> Result<bool> {
        let spares = self
            .backend
            .spare_storages(&prefix_of(&key_of(all)))
            .await?;
        if spares.is_empty() {
            return Ok(false);
        }
        let target = Target::Tenant(tenant);
        let mut conn = self.backend.connect(target).await?;
        let result = async {
            lock_waiting(&mut *conn, target, safety).await?;
            for spare in &spares {
                let mut records = vec![
                    Record::Register {
                        state: TenantState::Active,
                    },
                    Record::TakeStorage { from: spare },
                ];
                records.extend(all.iter().map(|&migration| Record::Marked {
                    migration,
                    status: MigrationStatus::Completed,
                }));
                records.push(Record::Registry {
                    clear_failure: true,
                });
                match conn.commit(&records, None).await {
                    Ok(()) => return Ok(true),
                    Err(error) => {
                        conn.rollback().await;
                        // Another create took it first.
                        if self.backend.classify(&error) != ErrorClass::StorageMissing {
                            return Err(self.creation_error(tenant, error));
                        }
                    }
                }
            }
            Ok(false)
        }
        .await;
        conn.release().await;
        result
    }
}
