//! One registry, spoken to through oci-client: anonymous, basic or bearer-token auth
//! (oci-client follows the `WWW-Authenticate` challenge and caches tokens until they expire),
//! plain HTTP for loopback and insecure registries.
//!
//! Every request is retried with backoff when the registry is unreachable or fails (5xx, a
//! connection broken off); a blob transfer that breaks off resumes where it stopped with a
//! `Range` request, or restarts and skips what it already has when the registry ignores the
//! range. Every blob is hashed as it arrives and refused if it does not match its digest.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, SizedStream};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::manifest::{Descriptor, ACCEPTED};
use crate::ImageError;

pub(crate) struct Remote {
    client: Client,
    /// The registry as references name it (`docker.io`, `127.0.0.1:5000`), for messages.
    registry: String,
    auth: RegistryAuth,
}

/// A config larger than this is not an image config.
const MAX_CONFIG_BYTES: usize = 8 << 20;
/// Tries of one request while the registry is unavailable.
const ATTEMPTS: u32 = 4;
/// The first pause between tries; each next one is three times longer.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Breaks of one blob transfer that made no progress since the previous break.
const BLOB_ATTEMPTS: u32 = 4;

/// Where a blob's bytes go.
pub(crate) enum Sink<'a> {
    Memory(&'a mut Vec<u8>),
    /// A layer unpacker reading on another thread. It may give up early (a bad tar): the
    /// transfer then goes on, hashing only, to tell a corrupt blob from a bad image.
    Channel(&'a mpsc::Sender<io::Result<Bytes>>),
}

/// Whether trying again may help.
fn transient(e: &ImageError) -> bool {
    matches!(e, ImageError::Unavailable { .. })
}

impl Remote {
    pub fn new(registry: &str, plain_http: bool, auth: RegistryAuth) -> Remote {
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            // We choose the platform ourselves, to say what the index offers when it fails.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            // Between two reads of a response, not for the whole of a large blob.
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("hangar/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        Remote {
            client: Client::new(config),
            registry: registry.to_string(),
            auth,
        }
    }

    fn err(
        &self,
        r: &Reference,
        digest: Option<&str>,
    ) -> impl Fn(oci_client::errors::OciDistributionError) -> ImageError + '_ {
        let reference = r.whole();
        let digest = digest.map(str::to_string);
        move |e| ImageError::from_registry(e, &reference, &self.registry, digest.as_deref())
    }

    /// Runs `op` until it succeeds, fails for good, or has failed transiently `ATTEMPTS` times.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, ImageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ImageError>>,
    {
        let mut pause = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if transient(&e) && attempt < ATTEMPTS => {
                    warn!(registry = %self.registry, what, attempt, error = %e, "retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 3;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Makes sure oci-client knows our credentials for this registry before a blob request
    /// (blob requests take them from its store, not as an argument).
    async fn ready(&self, r: &Reference) {
        self.client
            .store_auth_if_needed(r.resolve_registry(), &self.auth)
            .await;
    }

    /// The manifest or index `r` names, and its digest (checked against `r`'s digest if it
    /// has one).
    pub async fn manifest(&self, r: &Reference) -> Result<(Vec<u8>, String), ImageError> {
        self.retrying("manifest", || async {
            let (bytes, digest) = self
                .client
                .pull_manifest_raw(r, &self.auth, ACCEPTED)
                .await
                .map_err(self.err(r, r.digest()))?;
            Ok((bytes.to_vec(), digest))
        })
        .await
    }

    /// The digest `r` resolves to now: a HEAD request (a GET when the registry sends no
    /// digest header).
    pub async fn resolve(&self, r: &Reference) -> Result<String, ImageError> {
        self.retrying("resolve", || async {
            self.client
                .fetch_manifest_digest(r, &self.auth)
                .await
                .map_err(self.err(r, None))
        })
        .await
    }

    /// A small blob (the image config) into memory, verified.
    pub async fn small_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, ImageError> {
        if desc.size < 0 || desc.size as usize > MAX_CONFIG_BYTES {
            return Err(ImageError::InvalidImage(format!(
                "image {}: config blob {} has an implausible size {}",
                r.whole(),
                desc.digest,
                desc.size
            )));
        }
        let mut out = Vec::with_capacity(desc.size as usize);
        let progress = AtomicU64::new(0);
        self.fetch_blob(
            r,
            &desc.digest,
            MAX_CONFIG_BYTES as u64,
            &progress,
            Sink::Memory(&mut out),
        )
        .await?;
        Ok(out)
    }

    /// Streams a layer blob to an unpacker, counting bytes into `progress`. On any error the
    /// unpacker is sent an error before the channel closes, so it never commits a layer from
    /// a transfer that failed or did not match its digest.
    pub async fn download(
        &self,
        r: &Reference,
        desc: &Descriptor,
        progress: &AtomicU64,
        tx: mpsc::Sender<io::Result<Bytes>>,
    ) -> Result<u64, ImageError> {
        let limit = u64::try_from(desc.size).unwrap_or(0);
        let out = self
            .fetch_blob(r, &desc.digest, limit, progress, Sink::Channel(&tx))
            .await;
        if let Err(e) = &out {
            let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
        }
        out
    }

    /// Opens the blob's stream at `offset`. Returns the stream and how many of its first
    /// bytes to skip (a registry that ignores the range sends the whole blob again).
    async fn open_blob(
        &self,
        r: &Reference,
        digest: &str,
        offset: u64,
    ) -> Result<(SizedStream, u64), ImageError> {
        self.ready(r).await;
        if offset == 0 {
            let s = self
                .client
                .pull_blob_stream(r, digest)
                .await
                .map_err(self.err(r, Some(digest)))?;
            return Ok((s, 0));
        }
        match self
            .client
            .pull_blob_stream_partial(r, digest, offset, None)
            .await
            .map_err(self.err(r, Some(digest)))?
        {
            BlobResponse::Partial(s) => Ok((s, 0)),
            BlobResponse::Full(s) => Ok((s, offset)),
        }
    }

    /// The one blob transfer loop: our own sha256 check over the whole blob, however many
    /// requests it took; a size bound from the descriptor (a registry cannot make us write
    /// more than the manifest announced); resume after a break.
    async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &str,
        limit: u64,
        progress: &AtomicU64,
        mut sink: Sink<'_>,
    ) -> Result<u64, ImageError> {
        let mismatch = || ImageError::DigestMismatch {
            digest: digest.to_string(),
            registry: self.registry.clone(),
        };
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut sink_open = true;
        let mut breaks = 0u32;
        let mut pause = FIRST_BACKOFF;
        loop {
            let before = total;
            let opened = self.open_blob(r, digest, total).await;
            let broke: ImageError = match opened {
                Err(e) => e,
                Ok((mut stream, mut skip)) => {
                    let mut broke = None;
                    while let Some(chunk) = stream.next().await {
                        let mut chunk = match chunk {
                            Ok(c) => c,
                            // oci-client verifies full responses too, at their end; ours is
                            // the same check.
                            Err(e)
                                if e.get_ref()
                                    .is_some_and(|i| i.is::<oci_client::errors::DigestError>()) =>
                            {
                                return Err(mismatch())
                            }
                            Err(e) => {
                                broke = Some(self.err(r, Some(digest))(e.into()));
                                break;
                            }
                        };
                        if skip > 0 {
                            let n = skip.min(chunk.len() as u64);
                            skip -= n;
                            chunk = chunk.slice(n as usize..);
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        total += chunk.len() as u64;
                        if limit > 0 && total > limit {
                            return Err(mismatch());
                        }
                        hasher.update(&chunk);
                        progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        match &mut sink {
                            Sink::Memory(v) => v.extend_from_slice(&chunk),
                            Sink::Channel(tx) if sink_open => {
                                if tx.send(Ok(chunk)).await.is_err() {
                                    sink_open = false;
                                }
                            }
                            Sink::Channel(_) => {}
                        }
                    }
                    match broke {
                        None => {
                            let got = format!("sha256:{}", hex::encode(hasher.finalize()));
                            if got != digest {
                                return Err(mismatch());
                            }
                            return Ok(total);
                        }
                        Some(e) => e,
                    }
                }
            };
            if !transient(&broke) {
                return Err(broke);
            }
            if total > before {
                // Progress since the last break: the registry works, the line is flaky.
                breaks = 0;
                pause = FIRST_BACKOFF;
            }
            breaks += 1;
            if breaks >= BLOB_ATTEMPTS {
                return Err(broke);
            }
            debug!(registry = %self.registry, digest, offset = total, error = %broke, "blob transfer broke off; resuming");
            tokio::time::sleep(pause).await;
            pause *= 3;
        }
    }
}
