//! The tenant template, where the engine can copy a storage whole
//! ([`Capabilities::storage_templates`](crate::Capabilities::storage_templates)): a storage
//! named [`TEMPLATE_STORAGE`], never registered, that holds every enabled tenant migration
//! applied. `tenant create` copies it instead of replaying the migrations, and `migrate`
//! keeps it current.
//!
//! A copy is the same tenant a replay makes only if no migration's result depends on the
//! tenant. A migration that asks for its tenant ([`Ctx::tenant`](crate::Ctx::tenant))
//! while the template is built makes the template unusable: it is dropped, the journal
//! keeps which migration it was, and tenants are created by replay until the migrations
//! change. The template is not used either where tenant hooks are registered (they run
//! around each tenant's migrations).

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::claim::lock_waiting;
use super::journal::{self, TenantSpecific};
use super::protocol::{wrap, Completed, Protocol};
use super::SafetySettings;
use crate::backend::{Connection, Direction, ErrorClass, Target, TEMPLATE_STORAGE};
use crate::{fingerprint, Migration, MigrationStatus, Result, Tenant, TenantName};

/// What keeping the tenant template current did ([`MigrateReport::template`]).
///
/// [`MigrateReport::template`]: crate::MigrateReport::template
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TemplateChange {
    /// Built with `migrations` applied: there was none, or its tracking rows no longer
    /// matched the code's migrations (`rebuilt`).
    Built {
        /// How many migrations it holds.
        migrations: usize,
        /// Whether a template that did not match the code was dropped first.
        rebuilt: bool,
    },
    /// Advanced by `migrations` new ones.
    Advanced {
        /// How many were applied to it.
        migrations: usize,
    },
    /// Not usable: `migration` asks for its tenant, so every tenant replays it; the
    /// template (or spare) is dropped and tenants are created by replay.
    Unusable {
        /// The migration's name.
        migration: String,
    },
    /// The spares (PostgreSQL schema per tenant) were brought up to date: `built` made,
    /// `dropped` removed (made for other migrations, or left half-way by a crash).
    Spares {
        /// Spares made.
        built: usize,
        /// Spares dropped.
        dropped: usize,
    },
    /// No spares: `migration` runs outside a transaction, and a spare is made in one, so
    /// that no half-made spare is ever taken.
    OutsideTransaction {
        /// The migration's name.
        migration: String,
    },
    /// No spares: an object of a spare names the spare's schema in its definition (a
    /// function body, say), which renaming the spare to the tenant's schema leaves as it is.
    NameInDefinitions,
}

impl std::fmt::Display for TemplateChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        match self {
            TemplateChange::Built {
                migrations,
                rebuilt,
            } => write!(
                f,
                "tenant template {}: {migrations} migration{} applied to it",
                if *rebuilt {
                    "rebuilt (it no longer matched the migrations)"
                } else {
                    "built"
                },
                plural(*migrations)
            ),
            TemplateChange::Advanced { migrations } => write!(
                f,
                "tenant template advanced: {migrations} new migration{} applied to it",
                plural(*migrations)
            ),
            TemplateChange::Unusable { migration } => write!(
                f,
                "tenant template not used: migration {migration} asks for its tenant, so new tenants replay every migration"
            ),
            TemplateChange::Spares { built, dropped } => write!(
                f,
                "spare schemas: {built} made, {dropped} dropped (made for other migrations or left half-way)"
            ),
            TemplateChange::OutsideTransaction { migration } => write!(
                f,
                "spare schemas not used: migration {migration} runs outside a transaction, so new tenants replay every migration"
            ),
            TemplateChange::NameInDefinitions => f.write_str(
                "spare schemas not used: a definition names its own schema, which renaming a spare would leave behind, so new tenants replay every migration"
            ),
        }
    }
}

/// Whether the template can be copied, and what bringing it up to date did.
pub(crate) struct TemplateStatus {
    pub(crate) usable: bool,
    pub(crate) change: Option<TemplateChange>,
    /// A migration failed on the template, which is dropped again.
    pub(crate) failure: Option<crate::Error>,
}

/// A storage of mtnt's own (the template, a spare) as a target of the protocol.
pub(crate) fn own_storage(name: impl Into<String>) -> Tenant {
    let name = name.into();
    Tenant {
        name: TenantName::reserved(name.clone()),
        storage: name,
        // On the control database's server, like everything of mtnt's own.
        server: None,
    }
}

/// The template as a target of the protocol.
pub(crate) fn template_tenant() -> Tenant {
    own_storage(TEMPLATE_STORAGE)
}

/// The fingerprint of `all`, the enabled tenant migrations: what the template, the spares
/// and the journal's reason for using neither are made for.
pub(crate) fn key_of(all: &[&'static Migration]) -> String {
    fingerprint(all.iter().map(|m| (m.order(), m.checksum())))
}

/// Whether the template's tracking rows are those of the first of `all`, each completed
/// with the code's name and checksum: then the rest can be applied to it.
fn is_prefix(applied: &[crate::AppliedMigration], all: &[&'static Migration]) -> bool {
    applied.len() <= all.len()
        && applied.iter().zip(all).all(|(row, m)| {
            row.status == MigrationStatus::Completed
                && row.order == m.order()
                && row.name == m.name()
                && row.checksum == m.checksum()
        })
}

impl<'a> Protocol<'a> {
    /// Whether the journal says why neither a template nor spares can serve the
    /// migrations of fingerprint `key`.
    pub(crate) async fn known_unusable(&self, key: &str) -> Result<bool> {
        Ok(journal::tenant_specific(self.backend)
            .await?
            .is_some_and(|found| found.migrations == key))
    }

    /// Whether `tenant create` and `migrate` use a template on this engine at all.
    pub(crate) fn uses_template(&self) -> bool {
        self.templates && self.caps.storage_templates && !self.has_tenant_hooks()
    }

    /// Takes the template's lock and brings it up to date with `all` (the enabled tenant
    /// migrations); the lock is held, by the connection returned, until it is released,
    /// so that nothing changes the template while it is copied.
    pub(crate) async fn locked_template<'t>(
        &self,
        template: &'t Tenant,
        all: &[&'static Migration],
        safety: &SafetySettings,
    ) -> Result<(Box<dyn Connection + 't>, TemplateStatus)>
    where
        'a: 't,
    {
        let target = Target::Tenant(template);
        let mut guard = self.backend.connect(target).await?;
        let status = async {
            lock_waiting(&mut *guard, target, safety).await?;
            self.bring_template_current(template, all).await
        }
        .await;
        match status {
            Ok(status) => Ok((guard, status)),
            Err(error) => {
                guard.release().await;
                Err(error)
            }
        }
    }

    /// Under the template's lock: builds, advances or rebuilds it, unless the journal
    /// says one of `all` asks for its tenant.
    async fn bring_template_current(
        &self,
        template: &Tenant,
        all: &[&'static Migration],
    ) -> Result<TemplateStatus> {
        let key = key_of(all);
        if self.known_unusable(&key).await? {
            return Ok(TemplateStatus {
                usable: false,
                change: None,
                failure: None,
            });
        }
        let target = Target::Tenant(template);
        let mut rebuilt = false;
        loop {
            let built = match self.backend.create_storage(template).await {
                Ok(()) => true,
                Err(e) if self.backend.classify(&e) == ErrorClass::StorageExists => false,
                Err(e) => return Err(e),
            };
            // Unlocked: the caller's connection holds the template's lock.
            let mut conn = self.backend.connect(target).await?;
            let state = match conn.read().await {
                Ok(state) => state,
                Err(error) => {
                    conn.release().await;
                    return Err(error);
                }
            };
            if !is_prefix(&state.applied, all) {
                // Other migrations than the code's (changed, reverted, failed, or one
                // inserted before its newest): only a new template matches a replay.
                conn.release().await;
                self.backend.drop_storage(template).await?;
                if rebuilt {
                    return Err(crate::Error::Corrupt(format!(
                        "the tenant template {TEMPLATE_STORAGE} did not match the migrations \
                         right after it was rebuilt"
                    )));
                }
                rebuilt = true;
                continue;
            }
            let rest = &all[state.applied.len()..];
            let outcome = self
                .advance_template(&mut *conn, target, &state, rest)
                .await;
            conn.release().await;
            let change = match outcome {
                Ok(None) if rest.is_empty() => None,
                Ok(None) if built || rebuilt => Some(TemplateChange::Built {
                    migrations: all.len(),
                    rebuilt,
                }),
                Ok(None) => Some(TemplateChange::Advanced {
                    migrations: rest.len(),
                }),
                Ok(Some(specific)) => {
                    self.backend.drop_storage(template).await?;
                    journal::record_tenant_specific(
                        self.backend,
                        &TenantSpecific {
                            migrations: key,
                            why: TemplateChange::Unusable {
                                migration: specific.to_string(),
                            },
                        },
                    )
                    .await?;
                    tracing::info!(
                        migration = %specific,
                        "tenants are created by replaying their migrations: {specific} asks for its tenant, so a copy of the template would differ"
                    );
                    return Ok(TemplateStatus {
                        usable: false,
                        change: Some(TemplateChange::Unusable {
                            migration: specific.to_string(),
                        }),
                        failure: None,
                    });
                }
                Err(error) => {
                    // A template that failed half-way is rebuilt from nothing next time;
                    // `tenant create` replays meanwhile, so that a failure names the tenant.
                    if let Err(cleanup) = self.backend.drop_storage(template).await {
                        tracing::warn!("could not drop the failed tenant template: {cleanup}");
                    }
                    return Ok(TemplateStatus {
                        usable: false,
                        change: None,
                        failure: Some(error),
                    });
                }
            };
            return Ok(TemplateStatus {
                usable: true,
                change,
                failure: None,
            });
        }
    }

    /// Applies `rest` to the template one migration at a time (so that the one asking for
    /// its tenant is known), without a fleet run's id; the first migration that asks for
    /// its tenant stops it.
    async fn advance_template(
        &self,
        conn: &mut dyn Connection,
        target: Target<'_>,
        state: &crate::backend::TargetState,
        rest: &[&'static Migration],
    ) -> Result<Option<&'static Migration>> {
        let asked = AtomicBool::new(false);
        let protocol = Protocol {
            identity_read: Some(&asked),
            run_id: None,
            hook_failures: None,
            ..*self
        };
        let mut completed = Completed::of(state);
        for (i, &migration) in rest.iter().enumerate() {
            protocol
                .apply(conn, target, &mut completed, &rest[i..=i], Direction::Up)
                .await
                .map_err(|(_, e)| wrap(target, migration, Direction::Up, e))?;
            if asked.load(Ordering::Relaxed) {
                return Ok(Some(migration));
            }
        }
        Ok(None)
    }

    /// Brings the template, or the spares, up to date (what `migrate` does after the
    /// tenants): what it changed, or `None` where neither is used.
    pub(crate) async fn refresh_template(
        &self,
        safety: &SafetySettings,
    ) -> Result<Option<TemplateChange>> {
        if self.uses_spares() {
            return self.refresh_spares(safety).await;
        }
        if !self.uses_template() {
            return Ok(None);
        }
        let all = self.enabled_tenant_migrations();
        let template = template_tenant();
        let (guard, status) = self.locked_template(&template, &all, safety).await?;
        guard.release().await;
        match status.failure {
            Some(error) => Err(error),
            None => Ok(status.change),
        }
    }
}
