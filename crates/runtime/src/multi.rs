//! Several runtimes on one host behind one [`Runtime`]: a default, and the others a machine
//! may ask for with `config.guest.runtime`. A boot goes to the runtime its spec names; every
//! other operation goes to the runtime that has the machine.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{BootSpec, Guest, NetAttachKind, Remains, Runtime, RuntimeError};

pub struct Runtimes {
    /// The default first.
    all: Vec<Arc<dyn Runtime>>,
}

impl Runtimes {
    /// `default` serves machines that name no runtime; `others` those that name theirs.
    pub fn new(default: Arc<dyn Runtime>, others: Vec<Arc<dyn Runtime>>) -> Runtimes {
        let default_kind = default.kind();
        let mut all = vec![default];
        all.extend(others.into_iter().filter(|r| r.kind() != default_kind));
        Runtimes { all }
    }

    fn by_kind(&self, kind: Option<&str>) -> Result<&Arc<dyn Runtime>, RuntimeError> {
        match kind {
            None => Ok(&self.all[0]),
            Some(k) => self.all.iter().find(|r| r.kind() == k).ok_or_else(|| {
                RuntimeError::Unavailable(format!(
                    "runtime {k:?} is not available on this host (it runs {})",
                    self.kinds().join(", ")
                ))
            }),
        }
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.all.iter().map(|r| r.kind()).collect()
    }

    /// The runtime that has the machine; the default when none does.
    fn owner(&self, machine_id: &str) -> &Arc<dyn Runtime> {
        self.all
            .iter()
            .find(|r| r.has(machine_id))
            .unwrap_or(&self.all[0])
    }
}

#[async_trait]
impl Runtime for Runtimes {
    fn kind(&self) -> &'static str {
        self.all[0].kind()
    }

    fn provides(&self, kind: &str) -> bool {
        self.all.iter().any(|r| r.provides(kind))
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "default": self.kind(),
            "runtimes": self.all.iter().map(|r| r.status()).collect::<Vec<_>>(),
        })
    }

    fn has(&self, machine_id: &str) -> bool {
        self.all.iter().any(|r| r.has(machine_id))
    }

    /// The runtime that will boot it decides (an unknown runtime fails the boot anyway).
    fn net_attach(&self, runtime: Option<&str>) -> NetAttachKind {
        self.by_kind(runtime)
            .map(|r| r.net_attach(runtime))
            .unwrap_or(NetAttachKind::Netns)
    }

    fn net_attach_of(&self, machine_id: &str) -> NetAttachKind {
        self.owner(machine_id).net_attach_of(machine_id)
    }

    async fn boot(&self, spec: &BootSpec) -> Result<Guest, RuntimeError> {
        let runtime = self.by_kind(spec.runtime.as_deref())?;
        // A machine that switched runtimes (an update) may have left a boot in the other.
        for other in &self.all {
            if !Arc::ptr_eq(other, runtime) && other.has(&spec.machine_id) {
                other.teardown(&spec.machine_id).await?;
            }
        }
        runtime.boot(spec).await
    }

    async fn attach(&self, machine_id: &str) -> Result<Option<Guest>, RuntimeError> {
        self.owner(machine_id).attach(machine_id).await
    }

    async fn teardown(&self, machine_id: &str) -> Result<Remains, RuntimeError> {
        let mut remains = Remains::default();
        for r in &self.all {
            if r.has(machine_id) || Arc::ptr_eq(r, &self.all[0]) {
                let got = r.teardown(machine_id).await?;
                remains.oom_killed |= got.oom_killed;
                remains.reason = remains.reason.or(got.reason);
            }
        }
        Ok(remains)
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let mut ids = Vec::new();
        for r in &self.all {
            ids.extend(r.list().await?);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn suspend(&self, machine_id: &str) -> Result<(), RuntimeError> {
        self.owner(machine_id).suspend(machine_id).await
    }

    async fn resume(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        self.owner(machine_id).resume(machine_id).await
    }
}
