//! A runtime wrapped so that each boot joins the private network: the machine's namespace and
//! veth pair, or its tap device, as the runtime says it plugs in, are made before the inner
//! runtime boots, and removed after it tears the machine down. Each backend of a host is
//! wrapped on its own; routing between them stays in `Runtimes`.

use std::sync::Arc;

use async_trait::async_trait;
use hangar_proto::FileSpec;
use hangar_runtime::{BootSpec, Guest, NetAttachKind, Remains, Runtime, RuntimeError, RuntimeKind};

use crate::Network;

pub struct Networked {
    inner: Arc<dyn Runtime>,
    net: Arc<Network>,
}

impl Networked {
    pub fn new(inner: Arc<dyn Runtime>, net: Arc<Network>) -> Networked {
        Networked { inner, net }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Network(Box::new(e)))
}

#[async_trait]
impl Runtime for Networked {
    fn kind(&self) -> RuntimeKind {
        self.inner.kind()
    }

    fn status(&self) -> serde_json::Value {
        self.inner.status()
    }

    fn has(&self, machine_id: &str) -> bool {
        self.inner.has(machine_id)
    }

    fn net_attach(&self) -> NetAttachKind {
        self.inner.net_attach()
    }

    async fn boot(&self, spec: &BootSpec) -> Result<Guest, RuntimeError> {
        let net = self.net.clone();
        let id = spec.machine_id.clone();
        let kind = self.inner.net_attach();
        let (attach, att) = blocking(move || net.plumb(&id, kind))
            .await?
            .map_err(|e| RuntimeError::Network(Box::new(e)))?;
        let mut spec = spec.clone();
        spec.netns = Some(attach);
        let dns = self.net.machine_dns(&spec.machine_id);
        let hostname = if spec.launch.hostname.is_empty() {
            spec.machine_id.clone()
        } else {
            spec.launch.hostname.clone()
        };
        // Init writes them (in both runtimes). The machine's own files come last, so a config
        // that writes these wins.
        let mut files = vec![
            FileSpec {
                path: "/etc/hosts".into(),
                contents: self.net.hosts_file(&att, &hostname).into_bytes(),
                mode: 0o644,
            },
            FileSpec {
                path: "/etc/resolv.conf".into(),
                contents: self.net.resolv_conf(dns.as_ref()).into_bytes(),
                mode: 0o644,
            },
        ];
        files.append(&mut spec.launch.files);
        spec.launch.files = files;
        match self.inner.boot(&spec).await {
            Ok(g) => Ok(g),
            Err(e) => {
                let net = self.net.clone();
                let id = spec.machine_id.clone();
                let _ = blocking(move || net.unplumb(&id)).await;
                Err(e)
            }
        }
    }

    async fn attach(&self, machine_id: &str) -> Result<Option<Guest>, RuntimeError> {
        self.inner.attach(machine_id).await
    }

    async fn teardown(&self, machine_id: &str) -> Result<Remains, RuntimeError> {
        let remains = self.inner.teardown(machine_id).await?;
        let net = self.net.clone();
        let id = machine_id.to_string();
        blocking(move || net.unplumb(&id)).await?;
        Ok(remains)
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let mut ids = self.inner.list().await?;
        for id in self.net.plumbed() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    async fn suspend(&self, machine_id: &str) -> Result<(), RuntimeError> {
        self.inner.suspend(machine_id).await
    }

    /// A suspended microVM's tap stays on the bridge; should it be gone (a host reboot), it is
    /// made again before QEMU reopens it. A sandbox's namespace lives as long as its processes.
    async fn resume(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        if self.inner.net_attach() == NetAttachKind::Tap {
            let net = self.net.clone();
            let id = machine_id.to_string();
            blocking(move || net.ensure_tap(&id))
                .await?
                .map_err(|e| RuntimeError::Network(Box::new(e)))?;
        }
        self.inner.resume(machine_id).await
    }
}
