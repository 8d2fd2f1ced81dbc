//! Hangar's image store: resolves references against OCI registries, imports image archives,
//! and keeps every layer unpacked once per digest, ready to be an overlayfs lower directory.
//!
//! On-disk layout and crash safety: see `layout.rs`. Concurrency: pulls are single-flight per
//! reference, layer fetches per diff id, so concurrent requests for one image do its work once.

mod auth;
mod error;
mod flight;
mod gc;
mod import;
mod layer;
mod layout;
mod manifest;
mod reference;
mod remote;
mod rootfs;
mod unpack;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use auth::{docker_config_path, CredentialSources, Credentials};
pub use error::ImageError;
pub use gc::PruneReport;

use flight::Flights;
use layer::{unpack_blob, unpack_stream, ChannelReader, LayerSpec};
use layout::{ImageRecord, LayerRecord, Layout, RefRecord};
use manifest::{Descriptor, Manifest};
use remote::Remote;

/// Options of an image store.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Registries (`host[:port]`; a bare host covers all its ports) spoken to over plain HTTP,
    /// in addition to loopback hosts, which always are.
    pub insecure_registries: Vec<String>,
    /// Where credentials for registries are found when a pull brings none of its own.
    pub credentials: CredentialSources,
    /// Past this many bytes of unpacked layers (and built ext4 images), unused images are
    /// removed, least recently used first, after each pull or import. None: no limit.
    pub max_bytes: Option<u64>,
    /// Layers downloaded at once per store (0: the default, 6).
    pub max_parallel_downloads: usize,
    /// How long an image handed out by a pull is kept from automatic collection even when no
    /// machine uses it yet (it is about to be recorded as a machine's). None: 5 minutes.
    pub gc_grace: Option<Duration>,
    /// The manifest digests that machines on this host use (stopped ones included): never
    /// removed. Without it, automatic collection is off and `prune` removes nothing.
    pub in_use: Option<InUse>,
}

/// Tells the store which manifest digests are in use. Errors stop a collection.
#[derive(Clone)]
pub struct InUse(Arc<dyn Fn() -> Result<HashSet<String>, String> + Send + Sync>);

impl InUse {
    pub fn new(f: impl Fn() -> Result<HashSet<String>, String> + Send + Sync + 'static) -> InUse {
        InUse(Arc::new(f))
    }

    fn get(&self) -> Result<HashSet<String>, ImageError> {
        (self.0)().map_err(|e| {
            ImageError::io(
                "cannot tell which images machines use",
                std::io::Error::other(e),
            )
        })
    }
}

impl fmt::Debug for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InUse(..)")
    }
}

/// Per-pull options.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Credentials for this pull's registry, before any configured ones.
    pub credentials: Option<Credentials>,
}

/// An image pull under way: bytes received per layer blob.
#[derive(Clone, Debug, Serialize)]
pub struct PullProgress {
    pub reference: String,
    pub layers: Vec<LayerProgress>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerProgress {
    pub digest: String,
    /// Bytes of the blob, as the manifest says.
    pub size: u64,
    pub received: u64,
    /// Unpacked and committed (or already present).
    pub done: bool,
}

/// Everything the store knows about a local image.
#[derive(Clone, Debug, Serialize)]
pub struct ImageDetails {
    /// The references naming it.
    pub references: Vec<String>,
    pub digest: String,
    pub config_digest: String,
    /// The image config as stored (JSON).
    pub config: serde_json::Value,
    pub layers: Vec<LayerDetails>,
    /// Bytes of file content, all layers together.
    pub size: u64,
    pub local: bool,
    pub created_ms: u64,
    pub last_used_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerDetails {
    /// The blob's digest, media type and size as the manifest lists them.
    pub digest: String,
    pub media_type: String,
    pub compressed_size: i64,
    pub diff_id: String,
    /// Bytes of file content once unpacked.
    pub size: u64,
    pub path: PathBuf,
}

/// A pull's layer blob: digest, size from the manifest, counters.
type TrackedBlob = (String, u64, Arc<BlobCounter>);

/// Counters of one blob being downloaded, shared by the pulls that want it.
#[derive(Default)]
struct BlobCounter {
    received: AtomicU64,
    done: AtomicBool,
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
    /// One client per registry host and credentials, keeping its auth tokens.
    remotes: Mutex<HashMap<String, Arc<Remote>>>,
    pulls: Flights<Image>,
    layers: Flights<LayerRecord>,
    ext4: Flights<PathBuf>,
    /// Held shared by whatever adds to the store (from its first layer to its reference), and
    /// exclusively by garbage collection, so that a layer is never collected between its
    /// commit and the record of the image that uses it.
    gc: tokio::sync::RwLock<()>,
    /// Bounds concurrent layer downloads.
    downloads: tokio::sync::Semaphore,
    /// Pulls under way, by reference: their layer blobs' counters.
    active: Mutex<HashMap<String, Vec<TrackedBlob>>>,
    counters: Mutex<HashMap<String, Arc<BlobCounter>>>,
    /// Manifest digests recently handed out by pulls, and when.
    pins: Mutex<HashMap<String, Instant>>,
    /// Set when an image is stored: only then can the store have passed its size limit.
    grown: AtomicBool,
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
    counter: Arc<BlobCounter>,
    image: String,
    desc: Descriptor,
    diff_id: String,
    source: BlobSource,
}

/// The normalized form of an image reference (`busybox` is `docker.io/library/busybox:latest`),
/// as [`Image::reference`] names a pulled image.
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    Ok(reference::normalized(&reference::parse(reference)?))
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, removing work a crash left behind.
    pub fn open(root: impl Into<PathBuf>, options: StoreOptions) -> Result<ImageStore, ImageError> {
        let layout = Layout::open(&root.into())?;
        let parallel = match options.max_parallel_downloads {
            0 => 6,
            n => n,
        };
        Ok(ImageStore {
            inner: Arc::new(Inner {
                layout,
                options,
                remotes: Mutex::new(HashMap::new()),
                pulls: Flights::new(),
                layers: Flights::new(),
                ext4: Flights::new(),
                gc: tokio::sync::RwLock::new(()),
                downloads: tokio::sync::Semaphore::new(parallel),
                active: Mutex::new(HashMap::new()),
                counters: Mutex::new(HashMap::new()),
                pins: Mutex::new(HashMap::new()),
                // The limit may have been lowered since the last run: measure once.
                grown: AtomicBool::new(true),
            }),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        self.inner.layout.root()
    }

    /// Resolves a reference to a local image, pulling from its registry what is missing.
    /// A tag present locally is re-resolved with one cheap request (and the local image used
    /// if the registry is unreachable); a digest present locally, or an imported image, needs
    /// no network. Concurrent calls for the same reference share one pull.
    pub async fn pull(&self, reference: &str) -> Result<Image, ImageError> {
        self.pull_with(reference, &PullOptions::default()).await
    }

    /// `pull`, with credentials of the caller's.
    pub async fn pull_with(
        &self,
        reference: &str,
        options: &PullOptions,
    ) -> Result<Image, ImageError> {
        let r = reference::parse(reference)?;
        if r.digest().is_some() {
            if let Some(image) = self.inner.local(&r)? {
                self.inner.used(&image.digest);
                return Ok(image);
            }
        }
        let name = reference::normalized(&r);
        let credentials = match &options.credentials {
            Some(c) => Some(c.clone()),
            None => self
                .inner
                .options
                .credentials
                .lookup(r.registry())
                .map_err(|detail| ImageError::Unauthorized {
                    registry: r.registry().to_string(),
                    detail,
                })?,
        };
        // Pulls with other credentials do not share a flight: each must prove its own.
        let key = match &credentials {
            Some(c) => format!("{name}\0{}", c.fingerprint()),
            None => name.clone(),
        };
        let inner = Arc::clone(&self.inner);
        let image = self
            .inner
            .pulls
            .join(
                &key,
                move || async move { inner.pull(r, credentials).await },
            )
            .await?;
        self.inner.used(&image.digest);
        self.inner.collect_if_full(&image.digest).await;
        Ok(image)
    }

    /// The pulls under way, with bytes received per layer.
    pub fn progress(&self) -> Vec<PullProgress> {
        let active = self
            .inner
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<PullProgress> = active
            .iter()
            .map(|(reference, layers)| PullProgress {
                reference: reference.clone(),
                layers: layers
                    .iter()
                    .map(|(digest, size, c)| LayerProgress {
                        digest: digest.clone(),
                        size: *size,
                        received: c.received.load(Ordering::Relaxed),
                        done: c.done.load(Ordering::Relaxed),
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        out
    }

    /// Everything about a local image (by reference or manifest digest), without network.
    pub fn inspect(&self, reference: &str) -> Result<Option<ImageDetails>, ImageError> {
        let Some(image) = self.get(reference)? else {
            return Ok(None);
        };
        let Some(rec) = self.inner.layout.image(&image.digest)? else {
            return Ok(None);
        };
        let bad = |why: &str| {
            ImageError::io(
                format!("stored image {} is damaged: {why}", image.digest),
                std::io::Error::from(std::io::ErrorKind::InvalidData),
            )
        };
        let manifest_bytes = self
            .inner
            .layout
            .blob(&rec.digest)?
            .ok_or_else(|| bad("its manifest is missing"))?;
        let Ok(Manifest::Image { config, layers }) = manifest::parse_manifest(&manifest_bytes)
        else {
            return Err(bad("its manifest is unreadable"));
        };
        let config_bytes = self
            .inner
            .layout
            .blob(&config.digest)?
            .ok_or_else(|| bad("its config is missing"))?;
        let config_json: serde_json::Value =
            serde_json::from_slice(&config_bytes).map_err(|_| bad("its config is unreadable"))?;
        let references = self
            .inner
            .layout
            .references()?
            .into_iter()
            .filter(|r| r.digest == rec.digest)
            .map(|r| r.reference)
            .collect();
        Ok(Some(ImageDetails {
            references,
            digest: rec.digest.clone(),
            config_digest: config.digest.clone(),
            config: config_json,
            layers: layers
                .iter()
                .zip(&rec.layers)
                .map(|(d, l)| LayerDetails {
                    digest: d.digest.clone(),
                    media_type: d.media_type.clone(),
                    compressed_size: d.size,
                    diff_id: l.diff_id.clone(),
                    size: l.size,
                    path: self.inner.layout.root().join(&l.dir),
                })
                .collect(),
            size: rec.size,
            local: rec.local,
            created_ms: rec.created_ms,
            last_used_ms: rec.last_used_ms,
        }))
    }

    /// Imports an OCI image layout directory, an OCI archive (a tar of a layout) or a
    /// `docker save` tarball. `reference` names the image; without it the archive's own name
    /// is used (the layout's `org.opencontainers.image.ref.name`, docker's `RepoTags`).
    pub async fn import(&self, path: &Path, reference: Option<&str>) -> Result<Image, ImageError> {
        let wanted = reference.map(reference::parse).transpose()?;
        let image = import::import(self, path, wanted).await?;
        self.inner.used(&image.digest);
        self.inner.collect_if_full(&image.digest).await;
        Ok(image)
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

    fn remote(&self, r: &Reference, credentials: Option<&Credentials>) -> Arc<Remote> {
        let host = r.resolve_registry().to_string();
        let key = match credentials {
            Some(c) => format!("{host}\0{}", c.fingerprint()),
            None => host.clone(),
        };
        let auth = match credentials {
            Some(c) => {
                oci_client::secrets::RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let mut remotes = self.remotes.lock().unwrap_or_else(PoisonError::into_inner);
        let plain = reference::is_plain_http(&host, &self.options.insecure_registries);
        Arc::clone(
            remotes
                .entry(key)
                .or_insert_with(|| Arc::new(Remote::new(r.registry(), plain, auth))),
        )
    }

    /// Marks an image as just handed out: kept from automatic collection for a while, and
    /// its last use recorded (at most every few seconds, it is a file write).
    fn used(&self, digest: &str) {
        self.pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest.to_string(), Instant::now());
        let now = now_ms();
        if let Ok(Some(mut rec)) = self.layout.image(digest) {
            if now.saturating_sub(rec.last_used_ms) > 5_000 {
                rec.last_used_ms = now;
                if let Err(e) = self.layout.put_image(&rec) {
                    warn!(digest, error = %e, "cannot record an image's last use");
                }
            }
        }
    }

    /// Registers a pull's layers for progress reports; unregistered when the guard drops.
    fn track(self: &Arc<Self>, name: &str, layers: &[Descriptor]) -> ProgressGuard {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let entries: Vec<_> = layers
            .iter()
            .map(|d| {
                let c = Arc::clone(counters.entry(d.digest.clone()).or_default());
                (d.digest.clone(), u64::try_from(d.size).unwrap_or(0), c)
            })
            .collect();
        drop(counters);
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), entries);
        ProgressGuard {
            inner: Arc::clone(self),
            name: name.to_string(),
        }
    }

    fn counter(&self, digest: &str) -> Arc<BlobCounter> {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(counters.entry(digest.to_string()).or_default())
    }

    /// The body of one pull flight.
    async fn pull(
        self: Arc<Self>,
        r: Reference,
        credentials: Option<Credentials>,
    ) -> Result<Image, ImageError> {
        let name = reference::normalized(&r);
        let remote = self.remote(&r, credentials.as_ref());
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
        // From here on the store grows: no collection until the reference is recorded.
        let _adding = self.gc.read().await;
        let _progress = self.track(&name, &layers);
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
                counter: self.counter(&desc.digest),
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
        let now = now_ms();
        let rec = ImageRecord {
            digest: new.digest,
            name: new.source_name,
            size: layers.iter().map(|l| l.size).sum(),
            config: parsed.run,
            layers,
            local: new.local,
            created_ms: now,
            last_used_ms: now,
        };
        self.layout.put_image(&rec)?;
        self.grown.store(true, Ordering::Relaxed);
        Ok(rec)
    }

    /// The layer with `job.diff_id`, fetched and unpacked unless present. One flight per
    /// diff id: a layer shared by images, or by several blobs (gzip and zstd of the same
    /// tar), is unpacked once.
    async fn ensure_layer(self: Arc<Self>, job: LayerJob) -> Result<LayerRecord, ImageError> {
        if let Some(rec) = self.layout.layer(&job.diff_id)? {
            job.counter.done.store(true, Ordering::Relaxed);
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
            job.counter.done.store(true, Ordering::Relaxed);
            return Ok(rec);
        }
        let compression = manifest::layer_compression(&job.desc.media_type).map_err(|why| {
            ImageError::InvalidImage(format!("invalid image {}: it {why}", job.image))
        })?;
        let counter = Arc::clone(&job.counter);
        let rec = match &job.source {
            BlobSource::Registry { remote, reference } => {
                let _slot = self.downloads.acquire().await.map_err(|_| {
                    ImageError::io("the store is closing", std::io::Error::other("closed"))
                })?;
                // Unpacked as it arrives: the download task feeds a blocking unpacker through
                // a small channel, so a layer never sits on disk twice.
                let (tx, rx) = tokio::sync::mpsc::channel(32);
                let this = Arc::clone(&self);
                let (image, blob_digest, diff_id) = (
                    job.image.clone(),
                    job.desc.digest.clone(),
                    job.diff_id.clone(),
                );
                let unpacker = tokio::task::spawn_blocking(move || {
                    let reader =
                        std::io::BufReader::with_capacity(256 * 1024, ChannelReader::new(rx));
                    let spec = LayerSpec {
                        image: &image,
                        blob_digest: &blob_digest,
                        diff_id: &diff_id,
                        compression,
                    };
                    unpack_stream(&this.layout, reader, &spec)
                });
                let started = Instant::now();
                let downloaded = remote
                    .download(reference, &job.desc, &counter.received, tx)
                    .await;
                let unpacked = unpacker.await.map_err(|e| {
                    ImageError::io(
                        "layer unpacking failed",
                        std::io::Error::other(e.to_string()),
                    )
                })?;
                match (downloaded, unpacked) {
                    // The transfer's own fault (unreachable, corrupt) explains a failed unpack.
                    (Err(e), Ok(_) | Err(_)) => return Err(e),
                    (Ok(bytes), Ok(rec)) => {
                        debug!(digest = %job.desc.digest, bytes, ms = started.elapsed().as_millis() as u64, "layer pulled");
                        rec
                    }
                    (Ok(_), Err(e)) => return Err(e),
                }
            }
            BlobSource::File(path) => {
                let (path, this) = (path.clone(), Arc::clone(&self));
                tokio::task::spawn_blocking(move || {
                    let got = layer::file_digest(&path).map_err(|e| {
                        ImageError::io(format!("cannot read {}", path.display()), e)
                    })?;
                    if got != job.desc.digest {
                        return Err(ImageError::InvalidImage(format!(
                            "invalid image {}: layer {} does not match its content ({got})",
                            job.image, job.desc.digest
                        )));
                    }
                    let spec = LayerSpec {
                        image: &job.image,
                        blob_digest: &job.desc.digest,
                        diff_id: &job.diff_id,
                        compression,
                    };
                    unpack_blob(&this.layout, &path, &spec)
                })
                .await
                .map_err(|e| {
                    ImageError::io(
                        "layer unpacking failed",
                        std::io::Error::other(e.to_string()),
                    )
                })??
            }
        };
        counter.done.store(true, Ordering::Relaxed);
        Ok(rec)
    }
}

/// Unregisters a pull's progress entry.
struct ProgressGuard {
    inner: Arc<Inner>,
    name: String,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        let entries = self
            .inner
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name);
        let mut counters = self
            .inner
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (digest, _, c) in entries.into_iter().flatten() {
            // Ours and the map's: nobody else is counting this blob.
            if Arc::strong_count(&c) <= 2 {
                counters.remove(&digest);
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
