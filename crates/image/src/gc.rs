//! Garbage collection: `remove` (one reference or image), `prune` (every image no machine
//! uses) and automatic collection when the store passes its size limit, least recently used
//! first. Images that machines use, stopped ones included, are never removed.
//!
//! Collection holds the store's lock exclusively, so it never runs while a pull or import is
//! adding layers it has not yet recorded in an image. It removes records before content (a
//! reference, then the image, then a layer's record, then its directory), so a crash half way
//! leaves only unreferenced content, which the next collection removes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use crate::layout::ImageRecord;
use crate::manifest::{self, Manifest};
use crate::{reference, ImageError, ImageStore, Inner};

/// What a removal or collection took away.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PruneReport {
    /// Manifest digests of the images removed.
    pub images: Vec<String>,
    /// References removed.
    pub references: Vec<String>,
    /// Unpacked layers removed.
    pub layers: usize,
    /// Bytes of unpacked content (and ext4 images) removed.
    pub freed_bytes: u64,
}

const DEFAULT_GRACE: Duration = Duration::from_secs(300);

impl ImageStore {
    /// Removes every image that no machine uses, and every layer and blob no image left uses.
    pub async fn prune(&self) -> Result<PruneReport, ImageError> {
        let inner = &self.inner;
        let _lock = inner.gc.write().await;
        let in_use = inner.in_use()?;
        let doomed: Vec<String> = inner
            .layout
            .images()?
            .into_iter()
            .map(|i| i.digest)
            .filter(|d| !in_use.contains(d))
            .collect();
        let report = inner.sweep(&doomed)?;
        info!(
            images = report.images.len(),
            layers = report.layers,
            freed = report.freed_bytes,
            "images pruned"
        );
        Ok(report)
    }

    /// Removes a reference (or, given a manifest digest, every reference to that image). The
    /// image goes too once no reference names it, unless a machine uses it: then nothing is
    /// removed and the error says so. None: no such local image.
    pub async fn remove(&self, reference: &str) -> Result<Option<PruneReport>, ImageError> {
        let inner = &self.inner;
        let _lock = inner.gc.write().await;
        let refs = inner.layout.references()?;
        let (digest, named): (String, Vec<String>) =
            if let Some(d) = reference::as_bare_digest(reference.trim()) {
                if inner.layout.image(d)?.is_none() {
                    return Ok(None);
                }
                let named = refs
                    .iter()
                    .filter(|r| r.digest == d)
                    .map(|r| r.reference.clone())
                    .collect();
                (d.to_string(), named)
            } else {
                let name = reference::normalized(&reference::parse(reference)?);
                let Some(rec) = refs.iter().find(|r| r.reference == name) else {
                    return Ok(None);
                };
                (rec.digest.clone(), vec![name])
            };
        let others = refs
            .iter()
            .filter(|r| r.digest == digest && !named.contains(&r.reference))
            .count();
        if others > 0 {
            // Only an untag: the image stays under its other names.
            for r in &named {
                inner.layout.remove_reference(r)?;
            }
            return Ok(Some(PruneReport {
                references: named,
                ..PruneReport::default()
            }));
        }
        if inner.in_use()?.contains(&digest) {
            return Err(ImageError::InUse(format!(
                "image {} ({digest}) is used by a machine on this host; destroy the machine first",
                named
                    .first()
                    .map(String::as_str)
                    .unwrap_or(reference.trim())
            )));
        }
        let report = inner.sweep(std::slice::from_ref(&digest))?;
        info!(reference, digest = %digest, layers = report.layers, freed = report.freed_bytes, "image removed");
        Ok(Some(report))
    }

    /// Bytes the store holds: unpacked layers and built ext4 images.
    pub fn disk_usage(&self) -> Result<u64, ImageError> {
        self.inner.usage()
    }
}

impl Inner {
    pub(crate) fn in_use(&self) -> Result<HashSet<String>, ImageError> {
        match &self.options.in_use {
            Some(f) => f.get(),
            None => Ok(HashSet::new()),
        }
    }

    fn usage(&self) -> Result<u64, ImageError> {
        let layers: u64 = self.layout.layers()?.iter().map(|l| l.size).sum();
        let ext4: u64 = self.layout.ext4_images()?.iter().map(|(_, s)| s).sum();
        Ok(layers + ext4)
    }

    /// After a pull or import: past the size limit, removes unused images least recently used
    /// first until back under it. Never removes `keep` (what was just pulled) nor images
    /// handed out within the grace period. Failures are logged: the pull itself succeeded.
    pub(crate) async fn collect_if_full(&self, keep: &str) {
        let Some(max) = self.options.max_bytes else {
            return;
        };
        // Cached images add nothing: measure only after something was stored.
        if !self.grown.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        match self.usage() {
            Ok(u) if u <= max => return,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "cannot measure the image store");
                return;
            }
        }
        let _lock = self.gc.write().await;
        if let Err(e) = self.collect_locked(max, keep) {
            warn!(error = %e, "automatic image collection failed");
        }
    }

    fn collect_locked(&self, max: u64, keep: &str) -> Result<(), ImageError> {
        let usage = self.usage()?;
        if usage <= max {
            return Ok(());
        }
        let in_use = self.in_use()?;
        let grace = self.options.gc_grace.unwrap_or(DEFAULT_GRACE);
        let pinned: HashSet<String> = {
            let mut pins = self
                .pins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pins.retain(|_, at| at.elapsed() < grace);
            pins.keys().cloned().collect()
        };
        let images = self.layout.images()?;
        let ext4: HashMap<String, u64> = self.layout.ext4_images()?.into_iter().collect();
        let mut users: HashMap<&str, usize> = HashMap::new();
        for i in &images {
            for l in &i.layers {
                *users.entry(l.dir.as_str()).or_default() += 1;
            }
        }
        let mut candidates: Vec<&ImageRecord> = images
            .iter()
            .filter(|i| {
                i.digest != keep && !in_use.contains(&i.digest) && !pinned.contains(&i.digest)
            })
            .collect();
        candidates.sort_by_key(|i| (i.last_used_ms, i.created_ms));
        let mut freed = 0u64;
        let mut doomed = Vec::new();
        for i in candidates {
            if usage.saturating_sub(freed) <= max {
                break;
            }
            for l in &i.layers {
                let n = users.entry(l.dir.as_str()).or_default();
                *n = n.saturating_sub(1);
                if *n == 0 {
                    freed += l.size;
                }
            }
            freed += ext4.get(&i.digest).copied().unwrap_or(0);
            doomed.push(i.digest.clone());
        }
        let report = self.sweep(&doomed)?;
        let left = self.usage()?;
        info!(
            images = report.images.len(),
            freed = report.freed_bytes,
            usage = left,
            max,
            "image store was over its limit; collected"
        );
        if left > max {
            warn!(
                usage = left,
                max,
                "the image store is over its limit, but what is left is in use or was just pulled"
            );
        }
        Ok(())
    }

    /// Removes the images `doomed` and the references naming them, then every layer, blob
    /// and ext4 image that no remaining image uses (a crash's leftovers included).
    /// The caller holds the gc lock exclusively.
    pub(crate) fn sweep(&self, doomed: &[String]) -> Result<PruneReport, ImageError> {
        let mut report = PruneReport::default();
        let doomed: HashSet<&str> = doomed.iter().map(String::as_str).collect();
        for r in self.layout.references()? {
            let gone =
                doomed.contains(r.digest.as_str()) || self.layout.image(&r.digest)?.is_none();
            if gone {
                self.layout.remove_reference(&r.reference)?;
                report.references.push(r.reference);
            }
        }
        for d in &doomed {
            if self.layout.image(d)?.is_some() {
                self.layout.remove_image(d)?;
                report.images.push(d.to_string());
            }
        }
        let remaining = self.layout.images()?;
        let mut live_layers: HashSet<String> = HashSet::new();
        let mut live_blobs: HashSet<String> = HashSet::new();
        for i in &remaining {
            live_layers.extend(i.layers.iter().map(|l| l.dir.clone()));
            live_blobs.insert(i.digest.clone());
            if let Some(bytes) = self.layout.blob(&i.digest)? {
                if let Ok(Manifest::Image { config, .. }) = manifest::parse_manifest(&bytes) {
                    live_blobs.insert(config.digest);
                }
            }
        }
        for l in self.layout.layers()? {
            if !live_layers.contains(&l.dir) {
                self.layout.remove_layer(&l.dir)?;
                report.layers += 1;
                report.freed_bytes += l.size;
            }
        }
        for b in self.layout.blob_digests()? {
            if reference::as_bare_digest(&b).is_some() && !live_blobs.contains(&b) {
                self.layout.remove_blob(&b)?;
            }
        }
        let live_images: HashSet<&str> = remaining.iter().map(|i| i.digest.as_str()).collect();
        for (d, size) in self.layout.ext4_images()? {
            if !live_images.contains(d.as_str()) {
                let path = self.layout.ext4_path(&d)?;
                std::fs::remove_file(&path)
                    .map_err(|e| ImageError::io(format!("cannot remove {}", path.display()), e))?;
                report.freed_bytes += size;
            }
        }
        report.images.sort();
        report.references.sort();
        Ok(report)
    }
}
