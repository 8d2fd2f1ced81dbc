//! Machine metadata: labels that live in the config but change without a new version (no
//! restart), guarded by the version the caller last saw.

use std::collections::BTreeMap;

use hangar_types::{validate_metadata_entry, MetadataValue, UpdateMetadataRequest};

use crate::error::AgentError;
use crate::Agent;

/// How a request changes the metadata map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataChange {
    /// `PUT`: the request's map becomes the metadata.
    Replace,
    /// `PATCH`: the request's keys are set, null or empty values removed, the rest kept.
    Merge,
}

impl Agent {
    pub fn metadata(&self, app: &str, id: &str) -> Result<BTreeMap<String, String>, AgentError> {
        Ok(self.machine_record(app, id)?.config.metadata)
    }

    pub fn metadata_key(
        &self,
        app: &str,
        id: &str,
        key: &str,
    ) -> Result<MetadataValue, AgentError> {
        let rec = self.machine_record(app, id)?;
        rec.config
            .metadata
            .get(key)
            .map(|v| MetadataValue {
                value: v.clone(),
                updated_at: None,
            })
            .ok_or_else(|| {
                AgentError::NotFound(format!("machine {id} has no metadata key {key:?}"))
            })
    }

    pub fn update_metadata(
        &self,
        app: &str,
        id: &str,
        req: UpdateMetadataRequest,
        how: MetadataChange,
    ) -> Result<(), AgentError> {
        self.machine_record(app, id)?;
        for (k, v) in &req.metadata {
            validate_metadata_entry(k, v.as_deref().unwrap_or(""))
                .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        }
        let expected = req.machine_version.as_deref().filter(|v| !v.is_empty());
        self.inner
            .store
            .update_metadata(id, expected, |metadata| {
                if how == MetadataChange::Replace {
                    metadata.clear();
                }
                for (k, v) in req.metadata {
                    match v.filter(|v| !v.is_empty()) {
                        Some(v) => {
                            metadata.insert(k, v);
                        }
                        None => {
                            metadata.remove(&k);
                        }
                    }
                }
            })
            .map_err(|e| match e {
                hangar_store::StoreError::StaleVersion { expected, current } => {
                    AgentError::FailedPrecondition(format!(
                        "machine_version: {expected} is stale; machine {id} is at version {current}"
                    ))
                }
                other => other.into(),
            })?;
        self.inner.notify(id);
        Ok(())
    }

    pub fn set_metadata_key(
        &self,
        app: &str,
        id: &str,
        key: &str,
        value: String,
    ) -> Result<(), AgentError> {
        let mut metadata = BTreeMap::new();
        metadata.insert(key.to_string(), Some(value));
        let req = UpdateMetadataRequest {
            metadata,
            ..Default::default()
        };
        self.update_metadata(app, id, req, MetadataChange::Merge)
    }

    pub fn delete_metadata_key(&self, app: &str, id: &str, key: &str) -> Result<(), AgentError> {
        self.metadata_key(app, id, key)?;
        let mut metadata = BTreeMap::new();
        metadata.insert(key.to_string(), None);
        let req = UpdateMetadataRequest {
            metadata,
            ..Default::default()
        };
        self.update_metadata(app, id, req, MetadataChange::Merge)
    }
}
