//! The host's local images (Hangar's `/v1/images` extension). The image store is the
//! agent's, shared with every boot, so its routes come here rather than around the agent.

use std::path::Path;

use hangar_image::{Image, ImageDetails, PruneReport, PullOptions, PullProgress};

use crate::error::AgentError;
use crate::Agent;

impl Agent {
    pub fn list_images(&self) -> Result<Vec<Image>, AgentError> {
        Ok(self.inner.images.list()?)
    }

    /// Config, layers and sizes of a local image; `None` when there is none of that name.
    pub fn inspect_image(&self, reference: &str) -> Result<Option<ImageDetails>, AgentError> {
        Ok(self.inner.images.inspect(reference)?)
    }

    pub async fn pull_image(
        &self,
        reference: &str,
        options: &PullOptions,
    ) -> Result<Image, AgentError> {
        Ok(self.inner.images.pull_with(reference, options).await?)
    }

    /// The pulls under way, with bytes received per layer.
    pub fn image_pulls(&self) -> Vec<PullProgress> {
        self.inner.images.progress()
    }

    /// Removes a local image no machine uses; `None` when there is none of that name.
    pub async fn remove_image(&self, reference: &str) -> Result<Option<PruneReport>, AgentError> {
        Ok(self.inner.images.remove(reference).await?)
    }

    /// Removes every image no machine uses.
    pub async fn prune_images(&self) -> Result<PruneReport, AgentError> {
        Ok(self.inner.images.prune().await?)
    }

    /// Imports an image archive or layout from a path on this host.
    pub async fn import_image(
        &self,
        path: &Path,
        reference: Option<&str>,
    ) -> Result<Image, AgentError> {
        Ok(self.inner.images.import(path, reference).await?)
    }
}
