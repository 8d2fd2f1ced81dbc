//! The runtimes of one host: a default, and the others a machine may ask for with
//! `config.guest.runtime`. A boot goes to the runtime its spec names; every other operation
//! goes to the runtime that has the machine. This is routing, not a backend: it is not a
//! [`Runtime`] itself, so a backend never has to answer for another.

use std::sync::Arc;

use hangar_types::RuntimeKind;

use crate::{BootSpec, Guest, NetAttachKind, Remains, Runtime, RuntimeError};

pub struct Runtimes {
    /// The default first; one of each kind.
    all: Vec<Arc<dyn Runtime>>,
}

impl Runtimes {
    /// `default` serves machines that name no runtime; `others` those that name theirs.
    pub fn new(default: Arc<dyn Runtime>, others: Vec<Arc<dyn Runtime>>) -> Runtimes {
        let mut all = vec![default];
        for other in others {
            if all.iter().all(|r| r.kind() != other.kind()) {
                all.push(other);
            }
        }
        Runtimes { all }
    }

    /// A host with one runtime.
    pub fn single(runtime: Arc<dyn Runtime>) -> Runtimes {
        Runtimes::new(runtime, Vec::new())
    }

    /// The kind machines that name none get.
    pub fn default_kind(&self) -> RuntimeKind {
        self.all[0].kind()
    }

    /// Whether machines can ask this host for runtime `kind`.
    pub fn provides(&self, kind: RuntimeKind) -> bool {
        self.all.iter().any(|r| r.kind() == kind)
    }

    /// The runtime that boots a machine asking for `kind` (`None`: the default).
    fn for_boot(&self, kind: Option<RuntimeKind>) -> Result<&Arc<dyn Runtime>, RuntimeError> {
        let Some(kind) = kind else {
            return Ok(&self.all[0]);
        };
        self.all.iter().find(|r| r.kind() == kind).ok_or_else(|| {
            let kinds: Vec<String> = self.all.iter().map(|r| r.kind().to_string()).collect();
            RuntimeError::Unavailable(format!(
                "runtime {kind:?} is not available on this host (it runs {})",
                kinds.join(", ")
            ))
        })
    }

    /// The runtime that has the machine; the default when none does.
    fn owner(&self, machine_id: &str) -> &Arc<dyn Runtime> {
        self.all
            .iter()
            .find(|r| r.has(machine_id))
            .unwrap_or(&self.all[0])
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "default": self.default_kind(),
            "runtimes": self.all.iter().map(|r| r.status()).collect::<Vec<_>>(),
        })
    }

    pub fn has(&self, machine_id: &str) -> bool {
        self.all.iter().any(|r| r.has(machine_id))
    }

    /// How a machine asking for `kind` will plug into a host network (an unknown runtime
    /// fails the boot anyway).
    pub fn net_attach(&self, kind: Option<RuntimeKind>) -> NetAttachKind {
        self.for_boot(kind)
            .map(|r| r.net_attach())
            .unwrap_or(NetAttachKind::Netns)
    }

    /// How machine `machine_id`, booted earlier, is plugged into a host network.
    pub fn net_attach_of(&self, machine_id: &str) -> NetAttachKind {
        self.owner(machine_id).net_attach()
    }

    pub async fn boot(&self, spec: &BootSpec) -> Result<Guest, RuntimeError> {
        let runtime = self.for_boot(spec.runtime)?;
        // A machine that switched runtimes (an update) may have left a boot in the other.
        for other in &self.all {
            if !Arc::ptr_eq(other, runtime) && other.has(&spec.machine_id) {
                other.teardown(&spec.machine_id).await?;
            }
        }
        runtime.boot(spec).await
    }

    pub async fn attach(&self, machine_id: &str) -> Result<Option<Guest>, RuntimeError> {
        self.owner(machine_id).attach(machine_id).await
    }

    /// Tears the machine down in every runtime that has anything of it (and the default,
    /// which cleans up a boot that failed before it left a trace `has` sees).
    pub async fn teardown(&self, machine_id: &str) -> Result<Remains, RuntimeError> {
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

    pub async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let mut ids = Vec::new();
        for r in &self.all {
            ids.extend(r.list().await?);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    pub async fn suspend(&self, machine_id: &str) -> Result<(), RuntimeError> {
        self.owner(machine_id).suspend(machine_id).await
    }

    pub async fn resume(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        self.owner(machine_id).resume(machine_id).await
    }
}
