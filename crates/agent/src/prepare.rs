//! One path from a machine's config to what boots: its identity (the `FLY_*` variables), the
//! launch spec init runs, and the runtime's boot spec. Create and update build the launch to
//! refuse what could never boot; every boot builds it again from the record. All three go
//! through [`Inner::launch`], so they cannot disagree.

use hangar_image::Image;
use hangar_proto::LaunchSpec;
use hangar_runtime::{BootSpec, Resources};
use hangar_store::MachineRecord;
use hangar_types::MachineConfig;

use crate::error::AgentError;
use crate::launch::{self, Identity};
use crate::Inner;

/// Who a machine is, before or after it is recorded.
pub(crate) struct Draft<'a> {
    pub app: &'a str,
    pub machine_id: &'a str,
    pub region: &'a str,
    pub instance_id: &'a str,
    pub config: &'a MachineConfig,
}

impl<'a> Draft<'a> {
    pub(crate) fn of(rec: &'a MachineRecord) -> Draft<'a> {
        Draft {
            app: &rec.app,
            machine_id: &rec.id,
            region: &rec.region,
            instance_id: &rec.instance_id,
            config: &rec.config,
        }
    }
}

/// `FLY_IMAGE_REF`: the config's reference, normalized as the image store names what it
/// pulled. Never rebuilt from the resolved parts: a digest reference has no tag.
fn image_reference(configured: &str, image: &Image) -> String {
    hangar_image::normalize_reference(configured).unwrap_or_else(|_| image.reference.clone())
}

impl Inner {
    /// The checks of a config that need this host: the config's own validity, what the
    /// private network allows, and whether a runtime here serves it.
    pub(crate) fn check_config(&self, config: &MachineConfig) -> Result<(), AgentError> {
        config
            .validate()
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        if let Some(net) = &self.network {
            net.check_config(config)?;
        }
        let kind = config
            .effective_guest()
            .runtime_kind()
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        if let Some(kind) = kind {
            if !self.runtime.provides(kind) {
                return Err(AgentError::Unprocessable(format!(
                    "runtime {:?} is not available on this host (it runs {:?})",
                    kind.as_str(),
                    self.runtime.default_kind().as_str()
                )));
            }
        }
        Ok(())
    }

    /// What init runs for machine `m` booted from `image`. `private_ip` is `None` until the
    /// machine boots (create and update only check that the launch can be built).
    pub(crate) fn launch(
        &self,
        m: &Draft<'_>,
        image: &Image,
        private_ip: Option<&str>,
    ) -> Result<LaunchSpec, AgentError> {
        let secrets = self.secrets_for(m.app)?;
        let image_ref = image_reference(&m.config.image, image);
        let who = Identity {
            app: m.app,
            machine_id: m.machine_id,
            region: m.region,
            instance_id: m.instance_id,
            image_ref: &image_ref,
            private_ip,
            secrets: &secrets,
        };
        launch::launch_spec(m.config, &image.config, &who).map_err(AgentError::InvalidArgument)
    }

    /// Everything the runtime needs to boot the machine as recorded. The image is the one
    /// recorded (by digest); pulled again only when the host's image store dropped it.
    pub(crate) async fn boot_spec(&self, rec: &MachineRecord) -> Result<BootSpec, AgentError> {
        let image = match self.images.get(&rec.image_ref.digest)? {
            Some(image) => image,
            None => self.images.pull(&rec.config.image).await.map_err(|e| {
                AgentError::Unavailable(format!(
                    "image {} is no longer on this host and could not be pulled: {e}",
                    rec.config.image
                ))
            })?,
        };
        let private_ip = self.network.as_ref().and_then(|n| n.private_ip(&rec.id));
        let launch = self.launch(&Draft::of(rec), &image, private_ip.as_deref())?;
        let guest = rec.config.effective_guest();
        Ok(BootSpec {
            machine_id: rec.id.clone(),
            layers: image.layers,
            launch,
            resources: Resources {
                cpus: guest.cpus,
                memory_mb: guest.memory_mb,
            },
            log_path: self.log_path(&rec.id),
            // Checked at create and update: a stored config names a known runtime.
            runtime: guest.runtime_kind().ok().flatten(),
            rootfs_size_gb: rec
                .config
                .extra
                .get("rootfs")
                .and_then(|r| r.get("size_gb"))
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok()),
            netns: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_reference_is_the_configured_one_normalized() {
        let image = Image {
            reference: "127.0.0.1:5000/app:v1".into(),
            digest: String::new(),
            image_ref: Default::default(),
            config: Default::default(),
            layers: Vec::new(),
            size: 0,
            local: false,
        };
        assert_eq!(
            image_reference("127.0.0.1:5000/app:v1", &image),
            "127.0.0.1:5000/app:v1"
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let by_digest = image_reference(&format!("127.0.0.1:5000/app@{digest}"), &image);
        assert!(by_digest.ends_with(&digest), "{by_digest}");
        assert!(!by_digest.contains(":@") && !by_digest.ends_with(':'));
        assert_eq!(
            image_reference("busybox", &image),
            "docker.io/library/busybox:latest"
        );
    }
}
