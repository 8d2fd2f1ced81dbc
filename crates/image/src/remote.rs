//! One registry, spoken to through oci-client: anonymous or bearer-token auth (oci-client
//! follows the WWW-Authenticate challenge), plain HTTP for loopback and insecure registries.

use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::manifest::{Descriptor, ACCEPTED};
use crate::ImageError;

pub(crate) struct Remote {
    client: Client,
    /// The registry as references name it (`docker.io`, `127.0.0.1:5000`), for messages.
    registry: String,
}

/// A config larger than this is not an image config.
const MAX_CONFIG_BYTES: usize = 8 << 20;

impl Remote {
    pub fn new(registry: &str, plain_http: bool) -> Remote {
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

    /// The manifest or index `r` names, and its digest (checked against `r`'s digest if it
    /// has one).
    pub async fn manifest(&self, r: &Reference) -> Result<(Vec<u8>, String), ImageError> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(r, &RegistryAuth::Anonymous, ACCEPTED)
            .await
            .map_err(self.err(r, r.digest()))?;
        Ok((bytes.to_vec(), digest))
    }

    /// The digest `r` resolves to now: a HEAD request (a GET when the registry sends no
    /// digest header).
    pub async fn resolve(&self, r: &Reference) -> Result<String, ImageError> {
        self.client
            .fetch_manifest_digest(r, &RegistryAuth::Anonymous)
            .await
            .map_err(self.err(r, None))
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
        self.fetch_blob(r, &desc.digest, MAX_CONFIG_BYTES as u64, &mut out)
            .await?;
        Ok(out)
    }

    /// Streams a blob into `file`, hashing as it goes. On a digest mismatch the caller must
    /// discard the file (it is a temporary file, deleted when dropped).
    pub async fn download(
        &self,
        r: &Reference,
        desc: &Descriptor,
        file: &mut tokio::fs::File,
    ) -> Result<u64, ImageError> {
        let limit = u64::try_from(desc.size).unwrap_or(0);
        let n = self.fetch_blob(r, &desc.digest, limit, file).await?;
        file.flush()
            .await
            .map_err(|e| ImageError::io("cannot write a downloaded blob", e))?;
        Ok(n)
    }

    /// The one blob transfer loop: oci-client's stream, our own sha256 check (so a mismatch
    /// is told apart from a broken connection), and a size bound from the descriptor (a
    /// registry cannot make us write more than the manifest announced).
    async fn fetch_blob<W: AsyncWrite + Unpin>(
        &self,
        r: &Reference,
        digest: &str,
        limit: u64,
        out: &mut W,
    ) -> Result<u64, ImageError> {
        let mismatch = || ImageError::DigestMismatch {
            digest: digest.to_string(),
            registry: self.registry.clone(),
        };
        let mut stream = self
            .client
            .pull_blob_stream(r, digest)
            .await
            .map_err(self.err(r, Some(digest)))?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // oci-client verifies too, at the end of the stream; ours is the same check.
                Err(e)
                    if e.get_ref()
                        .is_some_and(|i| i.is::<oci_client::errors::DigestError>()) =>
                {
                    return Err(mismatch())
                }
                Err(e) => return Err(self.err(r, Some(digest))(e.into())),
            };
            total += chunk.len() as u64;
            if limit > 0 && total > limit {
                return Err(mismatch());
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| ImageError::io(format!("cannot store blob {digest}"), e))?;
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            return Err(mismatch());
        }
        Ok(total)
    }
}
