//! Hangar's image store: resolves references against OCI registries, imports image archives,
//! and keeps every layer unpacked once per digest, ready to be an overlayfs lower directory.
//!
//! On-disk layout and crash safety: see `layout.rs`. Concurrency: pulls are single-flight per
//! reference, layer fetches per diff id, so concurrent requests for one image do its work once.

mod error;
mod flight;
mod import;
mod layer;
mod layout;
mod manifest;
mod reference;
mod remote;
mod unpack;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::join_all;
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use error::ImageError;

use flight::Flights;
use layer::{unpack_blob, LayerSpec};
use layout::{ImageRecord, LayerRecord, Layout, RefRecord};
use manifest::{Descriptor, Manifest};
use remote::Remote;

/// Options of an image store.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Registries (`host[:port]`; a bare host covers all its ports) spoken to over plain HTTP,
    /// in addition to loopback hosts, which always are.
    pub insecure_registries: Vec<String>,
}

/// A local image, ready to run.
#[derive(Clone, Debug)]
pub struct Image {
    /// Normalized reference, e.g. `127.0.0.1:5000/busybox:latest`, `docker.io/library/alpine:3`.
    pub reference: String,
    /// Manifest digest (of the manifest for this host's platform).
    pub digest: String,
    pub image_ref: hangar_types::ImageRef,
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first: overlayfs lower directories.
    pub layers: Vec<PathBuf>,
    /// Bytes of file content, all layers together.
    pub size: u64,
    /// Imported, not pulled: never re-resolved against a registry.
    pub local: bool,
}

/// What the image says to run, from its config. Applying it is the caller's business.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
}

/// The image store. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    options: StoreOptions,
    /// One client per registry host, keeping its auth tokens.
    remotes: Mutex<HashMap<String, Arc<Remote>>>,
    pulls: Flights<Image>,
    layers: Flights<LayerRecord>,
}

/// Where a layer's blob comes from.
enum BlobSource {
    Registry {
        remote: Arc<Remote>,
        reference: Reference,
    },
    /// A file of an import, already checked against its digest.
    File(PathBuf),
}

/// An image about to be stored: its manifest and config, and where each layer's blob is.
struct NewImage {
    /// Normalized reference (for messages).
    name: String,
    /// `registry/repository` it comes from.
    source_name: String,
    /// Manifest digest.
    digest: String,
    manifest: Vec<u8>,
    config: Descriptor,
    config_bytes: Vec<u8>,
    layers: Vec<(Descriptor, BlobSource)>,
    local: bool,
}

struct LayerJob {
    image: String,
    desc: Descriptor,
    diff_id: String,
    source: BlobSource,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, removing work a crash left behind.
    pub fn open(root: impl Into<PathBuf>, options: StoreOptions) -> Result<ImageStore, ImageError> {
        let layout = Layout::open(&root.into())?;
        Ok(ImageStore {
            inner: Arc::new(Inner {
                layout,
                options,
                remotes: Mutex::new(HashMap::new()),
                pulls: Flights::new(),
                layers: Flights::new(),
            }),
        })
    }

    /// Resolves a reference to a local image, pulling from its registry what is missing.
    /// A tag present locally is re-resolved with one cheap request (and the local image used
    /// if the registry is unreachable); a digest present locally, or an imported image, needs
    /// no network. Concurrent calls for the same reference share one pull.
    pub async fn pull(&self, reference: &str) -> Result<Image, ImageError> {
        let r = reference::parse(reference)?;
        if r.digest().is_some() {
            if let Some(image) = self.inner.local(&r)? {
                return Ok(image);
            }
        }
        let name = reference::normalized(&r);
        let inner = Arc::clone(&self.inner);
        self.inner
            .pulls
            .join(&name, move || async move { inner.pull(r).await })
            .await
    }

    /// Imports an OCI image layout directory, an OCI archive (a tar of a layout) or a
    /// `docker save` tarball. `reference` names the image; without it the archive's own name
    /// is used (the layout's `org.opencontainers.image.ref.name`, docker's `RepoTags`).
    pub async fn import(&self, path: &Path, reference: Option<&str>) -> Result<Image, ImageError> {
        let wanted = reference.map(reference::parse).transpose()?;
        import::import(self, path, wanted).await
    }

    /// A local image by reference or by manifest digest (`sha256:...`), without network.
    pub fn get(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        if let Some(digest) = reference::as_bare_digest(reference.trim()) {
            let Some(rec) = self.inner.layout.image(digest)? else {
                return Ok(None);
            };
            let name = format!("{}@{}", rec.name, rec.digest);
            let r = reference::parse(&name)?;
            return Ok(Some(self.inner.image_from(&rec, &r, rec.local)));
        }
        self.inner.local(&reference::parse(reference)?)
    }

    /// Every image that a reference names, by reference.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut out = Vec::new();
        for rec in self.inner.layout.references()? {
            let Some(image) = self.inner.layout.image(&rec.digest)? else {
                warn!(reference = %rec.reference, digest = %rec.digest, "reference to a missing image record");
                continue;
            };
            let Ok(r) = reference::parse(&rec.reference) else {
                continue;
            };
            out.push(self.inner.image_from(&image, &r, rec.local));
        }
        Ok(out)
    }
}

impl Inner {
    fn image_from(&self, rec: &ImageRecord, r: &Reference, local: bool) -> Image {
        Image {
            reference: reference::normalized(r),
            digest: rec.digest.clone(),
            image_ref: hangar_types::ImageRef {
                registry: r.registry().to_string(),
                repository: r.repository().to_string(),
                tag: r.tag().unwrap_or_default().to_string(),
                digest: rec.digest.clone(),
                labels: rec.config.labels.clone(),
            },
            config: rec.config.clone(),
            layers: rec
                .layers
                .iter()
                .map(|l| self.layout.root().join(&l.dir))
                .collect(),
            size: rec.size,
            local,
        }
    }

    /// The local image `r` names: by its reference record, else (digest references) by its
    /// manifest digest.
    fn local(&self, r: &Reference) -> Result<Option<Image>, ImageError> {
        let name = reference::normalized(r);
        if let Some(rec) = self.layout.reference(&name)? {
            if let Some(image) = self.layout.image(&rec.digest)? {
                return Ok(Some(self.image_from(&image, r, rec.local)));
            }
        }
        if let Some(digest) = r.digest() {
            if let Some(image) = self.layout.image(digest)? {
                return Ok(Some(self.image_from(&image, r, image.local)));
            }
        }
        Ok(None)
    }

    fn remote(&self, r: &Reference) -> Arc<Remote> {
        let host = r.resolve_registry().to_string();
        let mut remotes = self.remotes.lock().unwrap_or_else(PoisonError::into_inner);
        let plain = reference::is_plain_http(&host, &self.options.insecure_registries);
        Arc::clone(
            remotes
                .entry(host)
                .or_insert_with(|| Arc::new(Remote::new(r.registry(), plain))),
        )
    }

    /// The body of one pull flight.
    async fn pull(self: Arc<Self>, r: Reference) -> Result<Image, ImageError> {
        let name = reference::normalized(&r);
        let remote = self.remote(&r);
        if let Some(rec) = self.layout.reference(&name)? {
            if let Some(image) = self.layout.image(&rec.digest)? {
                let local = self.image_from(&image, &r, rec.local);
                if rec.local || r.digest().is_some() {
                    return Ok(local);
                }
                match remote.resolve(&r).await {
                    Ok(now) if now == rec.resolved => {
                        debug!(reference = %name, digest = %now, "tag unchanged");
                        return Ok(local);
                    }
                    Ok(now) => {
                        info!(reference = %name, was = %rec.resolved, now = %now, "tag moved; pulling")
                    }
                    Err(e @ ImageError::Unavailable { .. }) => {
                        warn!(reference = %name, error = %e, "cannot re-resolve the tag; using the local image");
                        return Ok(local);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let (bytes, resolved) = remote.manifest(&r).await?;
        let invalid = |why: String| {
            ImageError::InvalidImage(format!("invalid image {name}: its manifest {why}"))
        };
        let (manifest_bytes, digest, config_desc, layers) =
            match manifest::parse_manifest(&bytes).map_err(invalid)? {
                Manifest::Image { config, layers } => (bytes, resolved.clone(), config, layers),
                Manifest::Index(entries) => {
                    let entry = manifest::select_platform(&entries, manifest::host_arch())
                        .map_err(|detail| ImageError::UnsupportedPlatform {
                            reference: name.clone(),
                            detail,
                        })?;
                    let platform_ref = r.clone_with_digest(entry.digest.clone());
                    let (bytes, digest) = remote.manifest(&platform_ref).await?;
                    match manifest::parse_manifest(&bytes).map_err(invalid)? {
                        Manifest::Image { config, layers } => (bytes, digest, config, layers),
                        Manifest::Index(_) => {
                            return Err(invalid("is an index inside an index".into()))
                        }
                    }
                }
            };
        let rec = match self.layout.image(&digest)? {
            Some(rec) => rec,
            None => {
                let config_bytes = match self.layout.blob(&config_desc.digest)? {
                    Some(bytes) => bytes,
                    None => remote.small_blob(&r, &config_desc).await?,
                };
                let layers = layers
                    .into_iter()
                    .map(|desc| {
                        let source = BlobSource::Registry {
                            remote: Arc::clone(&remote),
                            reference: r.clone(),
                        };
                        (desc, source)
                    })
                    .collect();
                self.store_image(NewImage {
                    name: name.clone(),
                    source_name: format!("{}/{}", r.registry(), r.repository()),
                    digest: digest.clone(),
                    manifest: manifest_bytes,
                    config: config_desc,
                    config_bytes,
                    layers,
                    local: false,
                })
                .await?
            }
        };
        self.layout.put_reference(&RefRecord {
            reference: name.clone(),
            digest: digest.clone(),
            resolved,
            local: false,
        })?;
        info!(reference = %name, digest = %digest, layers = rec.layers.len(), "image pulled");
        Ok(self.image_from(&rec, &r, false))
    }

    /// Checks the config, brings in every layer (concurrently), then writes the blobs and the
    /// image record. Shared by pulls and imports.
    async fn store_image(self: &Arc<Self>, new: NewImage) -> Result<ImageRecord, ImageError> {
        let image = &new.name;
        let parsed = manifest::parse_config(&new.config_bytes, new.layers.len())
            .map_err(|why| ImageError::InvalidImage(format!("invalid image {image}: it {why}")))?;
        manifest::check_config_platform(&parsed, manifest::host_arch()).map_err(|detail| {
            ImageError::UnsupportedPlatform {
                reference: image.to_string(),
                detail,
            }
        })?;
        let jobs = new
            .layers
            .into_iter()
            .zip(&parsed.diff_ids)
            .map(|((desc, source), diff_id)| LayerJob {
                image: image.clone(),
                desc,
                diff_id: diff_id.clone(),
                source,
            });
        // Wait for every layer even when one fails, so that nothing is still being written
        // when the error reaches the caller.
        let results = join_all(jobs.map(|job| Arc::clone(self).ensure_layer(job))).await;
        let layers = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        self.layout
            .put_blob(&new.config.digest, &new.config_bytes)?;
        self.layout.put_blob(&new.digest, &new.manifest)?;
        let rec = ImageRecord {
            digest: new.digest,
            name: new.source_name,
            size: layers.iter().map(|l| l.size).sum(),
            config: parsed.run,
            layers,
            local: new.local,
        };
        self.layout.put_image(&rec)?;
        Ok(rec)
    }

    /// The layer with `job.diff_id`, fetched and unpacked unless present. One flight per
    /// diff id: a layer shared by images, or by several blobs (gzip and zstd of the same
    /// tar), is unpacked once.
    async fn ensure_layer(self: Arc<Self>, job: LayerJob) -> Result<LayerRecord, ImageError> {
        if let Some(rec) = self.layout.layer(&job.diff_id)? {
            return Ok(rec);
        }
        let key = job.diff_id.clone();
        let inner = Arc::clone(&self);
        self.layers
            .join(&key, move || async move { inner.fetch_layer(job).await })
            .await
    }

    async fn fetch_layer(self: Arc<Self>, job: LayerJob) -> Result<LayerRecord, ImageError> {
        if let Some(rec) = self.layout.layer(&job.diff_id)? {
            return Ok(rec);
        }
        let compression = manifest::layer_compression(&job.desc.media_type).map_err(|why| {
            ImageError::InvalidImage(format!("invalid image {}: it {why}", job.image))
        })?;
        // The downloaded blob lives in tmp/ until unpacked, then goes: the layer directory is
        // what machines use, and a blob would double the disk an image takes.
        let verify_file = matches!(job.source, BlobSource::File(_));
        let (blob_path, _tmp_guard) = match &job.source {
            BlobSource::Registry { remote, reference } => {
                let tmp = tempfile::Builder::new()
                    .prefix("blob-")
                    .tempfile_in(self.layout.tmp())
                    .map_err(|e| ImageError::io("cannot create a temporary file", e))?;
                let mut file = tokio::fs::File::from_std(
                    tmp.reopen()
                        .map_err(|e| ImageError::io("cannot open a temporary file", e))?,
                );
                let started = std::time::Instant::now();
                let bytes = remote.download(reference, &job.desc, &mut file).await?;
                debug!(digest = %job.desc.digest, bytes, ms = started.elapsed().as_millis() as u64, "layer downloaded");
                (tmp.path().to_path_buf(), Some(tmp))
            }
            BlobSource::File(path) => (path.clone(), None),
        };
        let this = Arc::clone(&self);
        tokio::task::spawn_blocking(move || {
            if verify_file {
                let got = layer::file_digest(&blob_path).map_err(|e| {
                    ImageError::io(format!("cannot read {}", blob_path.display()), e)
                })?;
                if got != job.desc.digest {
                    return Err(ImageError::InvalidImage(format!(
                        "invalid image {}: layer {} does not match its content ({got})",
                        job.image, job.desc.digest
                    )));
                }
            }
            let spec = LayerSpec {
                image: &job.image,
                blob_digest: &job.desc.digest,
                diff_id: &job.diff_id,
                compression,
            };
            unpack_blob(&this.layout, &blob_path, &spec)
        })
        .await
        .map_err(|e| {
            ImageError::io(
                "layer unpacking failed",
                std::io::Error::other(e.to_string()),
            )
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send>(_: &T) {}

    #[test]
    fn the_store_and_its_futures_cross_threads() {
        send_sync::<ImageStore>();
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), StoreOptions::default()).unwrap();
        send(&store.pull("busybox"));
        send(&store.import(Path::new("/nonexistent"), None));
    }
}
