//! From a layer blob on disk to a committed layer directory: decompress, hash the tar stream
//! for its diff id, unpack, check the diff id against the image config, commit. Takes any
//! `Read`, so unpacking straight from the network stream needs no change here.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::layout::{LayerRecord, Layout};
use crate::manifest::{sniff_compression, Compression};
use crate::unpack::{unpack, UnpackError};
use crate::ImageError;

/// Hashes what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads to the end (so the digest covers everything) and returns `sha256:<hex>`.
    pub fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(format!("sha256:{}", hex::encode(self.hasher.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The sha256 digest of a file's content.
pub(crate) fn file_digest(path: &Path) -> io::Result<String> {
    HashingReader::new(File::open(path)?).finish()
}

/// What a layer is, for error messages and the commit.
pub(crate) struct LayerSpec<'a> {
    /// The image it belongs to (for messages).
    pub image: &'a str,
    pub blob_digest: &'a str,
    pub diff_id: &'a str,
    /// None: tell by the blob's first bytes.
    pub compression: Option<Compression>,
}

/// Unpacks the blob at `blob` into a new layer directory and commits it. On any error the
/// partly unpacked directory is removed.
pub(crate) fn unpack_blob(
    layout: &Layout,
    blob: &Path,
    spec: &LayerSpec<'_>,
) -> Result<LayerRecord, ImageError> {
    let file = File::open(blob)
        .map_err(|e| ImageError::io(format!("cannot open layer blob {}", blob.display()), e))?;
    unpack_stream(layout, BufReader::with_capacity(256 * 1024, file), spec)
}

/// Unpacks a layer blob read from `raw` (a file, or a download still under way) into a new
/// layer directory and commits it. `raw` is read to its very end before the commit, so a
/// source that ends in an error (a download that broke off or failed its digest check)
/// never yields a layer. On any error the partly unpacked directory is removed.
pub(crate) fn unpack_stream<R: BufRead>(
    layout: &Layout,
    mut raw: R,
    spec: &LayerSpec<'_>,
) -> Result<LayerRecord, ImageError> {
    let invalid = |msg: String| {
        ImageError::InvalidImage(format!(
            "invalid image {}: layer {}: {msg}",
            spec.image, spec.blob_digest
        ))
    };
    let compression = match spec.compression {
        Some(c) => c,
        None => sniff_compression(
            raw.fill_buf()
                .map_err(|e| ImageError::io("cannot read a layer blob", e))?,
        ),
    };
    let dir = tempfile::Builder::new()
        .prefix("layer-")
        .tempdir_in(layout.tmp())
        .map_err(|e| ImageError::io("cannot create a temporary layer directory", e))?;
    let (size, diff_id) = {
        let decompressed: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut raw),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut raw)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(&mut raw)
                    .map_err(|e| invalid(format!("cannot start zstd decompression: {e}")))?,
            ),
        };
        let mut tar_stream = HashingReader::new(decompressed);
        let size = unpack(&mut tar_stream, dir.path()).map_err(|e| match e {
            UnpackError::Invalid(msg) => invalid(msg),
            UnpackError::Io { context, source } => ImageError::Io { context, source },
        })?;
        let diff_id = tar_stream
            .finish()
            .map_err(|e| invalid(format!("cannot be decompressed: {e}")))?;
        (size, diff_id)
    };
    // Whatever follows the compressed stream, and above all the end of a download: an
    // error here is the transfer failing, which must stop the commit.
    io::copy(&mut raw, &mut io::sink())
        .map_err(|e| ImageError::io("the layer transfer failed", e))?;
    if diff_id != spec.diff_id {
        return Err(invalid(format!(
            "its uncompressed content is {diff_id}, but the image config says {}",
            spec.diff_id
        )));
    }
    layout.commit_layer(dir, spec.diff_id, size)
}

/// Reads what a download task sends over a channel, on a blocking thread.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl ChannelReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>) -> ChannelReader {
        ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
