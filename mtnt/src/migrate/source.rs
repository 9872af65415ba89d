use async_trait::async_trait;

use crate::backend::Backend;
use crate::{Result, TenantName, TenantRecord};

/// Where the tenants to migrate come from, page by page, so that memory stays flat.
///
/// The default is the backend's own registry table ([`RegistrySource`]). Apps that keep
/// tenants elsewhere implement this; the tenants it yields must be registered
/// (`tenant create` or `tenant adopt`) so that their state can be tracked.
#[async_trait]
pub trait TenantSource: Send + Sync {
    /// Up to `limit` tenant names ordered by name, all after `after`.
    async fn page(&self, after: Option<&TenantName>, limit: usize) -> Result<Vec<TenantName>>;
}

/// The backend's tenant registry.
pub struct RegistrySource<'a>(pub &'a dyn Backend);

#[async_trait]
impl TenantSource for RegistrySource<'_> {
    async fn page(&self, after: Option<&TenantName>, limit: usize) -> Result<Vec<TenantName>> {
        Ok(self
            .0
            .tenant_page(after, limit)
            .await?
            .into_iter()
            .map(|r: TenantRecord| r.tenant.name)
            .collect())
    }
}
