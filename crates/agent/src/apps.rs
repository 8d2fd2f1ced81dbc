//! Apps: the named groups machines belong to, each in an organization and on a network.

use hangar_store::{AppRecord, StoreError};
use hangar_types::{new_machine_id, valid_app_name, App, AppOrganization, CreateAppRequest};
use tracing::info;

use crate::error::AgentError;
use crate::events::now_ms;
use crate::machine::Command;
use crate::Agent;

impl Agent {
    pub fn create_app(&self, req: CreateAppRequest) -> Result<App, AgentError> {
        valid_app_name(&req.name).map_err(AgentError::InvalidArgument)?;
        let org = req
            .org_slug
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "personal".into());
        let record = AppRecord {
            id: format!("app_{}", new_machine_id()),
            name: req.name.clone(),
            numeric_id: 0,
            org_slug: org,
            network: req
                .network
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            created_at_ms: now_ms(),
        };
        let record = self.inner.store.create_app(&record).map_err(|e| match e {
            StoreError::Exists(_) => {
                AgentError::NameTaken(format!("app name {:?} is already taken", req.name))
            }
            other => other.into(),
        })?;
        self.app(record)
    }

    pub fn get_app(&self, name: &str) -> Result<App, AgentError> {
        let record = self.app_record(name)?;
        self.app(record)
    }

    pub fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<App>, AgentError> {
        self.inner
            .store
            .list_apps(org_slug)?
            .into_iter()
            .map(|a| self.app(a))
            .collect()
    }

    /// Destroys an app with all of its machines, running or not.
    pub async fn delete_app(&self, name: &str) -> Result<(), AgentError> {
        self.app_record(name)?;
        for m in self.inner.store.list_machines(name, false)? {
            match self
                .command(&m.id, |reply| Command::Destroy { force: true, reply })
                .await
            {
                Ok(()) | Err(AgentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.store.delete_app(name)?;
        info!(app = name, "app deleted");
        Ok(())
    }

    fn app(&self, a: AppRecord) -> Result<App, AgentError> {
        let machines = self.inner.store.live_machine_count(&a.name)?;
        Ok(App {
            id: a.id,
            name: a.name,
            internal_numeric_id: a.numeric_id,
            machine_count: machines,
            volume_count: 0,
            network: a.network,
            organization: AppOrganization {
                name: a.org_slug.clone(),
                slug: a.org_slug,
                internal_numeric_id: 1,
            },
            status: "deployed".into(),
        })
    }
}
