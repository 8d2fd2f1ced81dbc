//! The store on disk. Everything is content-addressed and written crash-safe: to a temporary
//! name under `tmp/` (same filesystem), then renamed into place, so a reader never sees a
//! partly written file or layer.
//!
//! ```text
//! root/blobs/sha256/<hex>     manifests and configs, as fetched (layer blobs are deleted once
//!                             unpacked: the layer directory is what machines use)
//! root/l/<16 hex>/            an unpacked layer, named by the first 16 hex digits of its
//!                             diff id: overlayfs joins many of these paths into one mount
//!                             option string limited to a page, so they are kept short
//! root/l/<16 hex>.json        that layer's full diff id and size; written before the
//!                             directory is renamed into place, which is the commit
//! root/images/<hex>.json      an image record, by manifest digest
//! root/refs/<sha256(ref)>     reference -> manifest digest (one small file per reference)
//! root/ext4/<hex>.img         an image's root filesystem as ext4 (microVMs), built on demand
//! root/tmp/                   work in progress; emptied by open()
//! ```
//!
//! One process owns a store at a time (the host agent).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::reference::digest_hex;
use crate::{ImageConfig, ImageError};

/// Length of the diff-id prefix that names a layer directory (64 bits).
const LAYER_NAME_LEN: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub diff_id: String,
    /// Relative to the store root.
    pub dir: String,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    /// Manifest digest.
    pub digest: String,
    /// `registry/repository` it first came from (for images looked up by bare digest).
    pub name: String,
    pub config: ImageConfig,
    /// Lowest first.
    pub layers: Vec<LayerRecord>,
    pub size: u64,
    pub local: bool,
    /// When it was stored, and last handed out by a pull (Unix ms): garbage collection
    /// removes the least recently used first.
    #[serde(default)]
    pub created_ms: u64,
    #[serde(default)]
    pub last_used_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RefRecord {
    /// Normalized reference.
    pub reference: String,
    /// Manifest digest of the image for this host.
    pub digest: String,
    /// What the registry resolved the reference to: the index digest for multi-platform
    /// images, else the manifest digest. Compared when a tag is re-resolved.
    pub resolved: String,
    /// Imported, never re-resolved against a registry.
    pub local: bool,
}

pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Creates the directories and empties `tmp/` (what is there was left by a crash).
    pub fn open(root: &Path) -> Result<Layout, ImageError> {
        fs::create_dir_all(root).map_err(|e| {
            ImageError::io(format!("cannot create image store {}", root.display()), e)
        })?;
        let root = root.canonicalize().map_err(|e| {
            ImageError::io(
                format!("cannot resolve image store path {}", root.display()),
                e,
            )
        })?;
        let layout = Layout { root };
        let tmp = layout.tmp();
        if tmp.exists() {
            fs::remove_dir_all(&tmp)
                .map_err(|e| ImageError::io(format!("cannot clean {}", tmp.display()), e))?;
        }
        for dir in [
            tmp,
            layout.root.join("blobs/sha256"),
            layout.root.join("l"),
            layout.root.join("images"),
            layout.root.join("refs"),
            layout.root.join("ext4"),
        ] {
            fs::create_dir_all(&dir)
                .map_err(|e| ImageError::io(format!("cannot create {}", dir.display()), e))?;
        }
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    fn layer_name(diff_id: &str) -> Result<String, ImageError> {
        Ok(format!("l/{}", &hex_of(diff_id)?[..LAYER_NAME_LEN]))
    }

    /// The layer with this diff id, if it is fully unpacked.
    pub fn layer(&self, diff_id: &str) -> Result<Option<LayerRecord>, ImageError> {
        let name = Self::layer_name(diff_id)?;
        if !self.root.join(&name).is_dir() {
            return Ok(None);
        }
        let Some(rec) = read_json::<LayerRecord>(&self.root.join(format!("{name}.json")))? else {
            return Ok(None);
        };
        if rec.diff_id != diff_id {
            return Err(ImageError::io(
                format!(
                    "layers {} and {diff_id} share the directory name {name}",
                    rec.diff_id
                ),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        Ok(Some(rec))
    }

    /// Moves an unpacked layer into place. `dir` must be under `tmp/`.
    pub fn commit_layer(
        &self,
        dir: tempfile::TempDir,
        diff_id: &str,
        size: u64,
    ) -> Result<LayerRecord, ImageError> {
        let name = Self::layer_name(diff_id)?;
        let rec = LayerRecord {
            diff_id: diff_id.to_string(),
            dir: name.clone(),
            size,
        };
        self.write_json(&self.root.join(format!("{name}.json")), &rec)?;
        let dest = self.root.join(&name);
        if dest.exists() {
            // Left by a crash between the record and the rename, or by an older unpack of the
            // same content whose record was lost: move it aside, then delete it.
            let aside = tempfile::Builder::new()
                .prefix("stale-")
                .tempdir_in(self.tmp())
                .map_err(|e| ImageError::io("cannot create a temporary directory", e))?;
            fs::rename(&dest, aside.path().join("x"))
                .map_err(|e| ImageError::io(format!("cannot move aside {}", dest.display()), e))?;
        }
        let src = dir.keep();
        fs::rename(&src, &dest).map_err(|e| {
            let _ = fs::remove_dir_all(&src);
            ImageError::io(format!("cannot move layer into {}", dest.display()), e)
        })?;
        Ok(rec)
    }

    pub fn image(&self, digest: &str) -> Result<Option<ImageRecord>, ImageError> {
        read_json(
            &self
                .root
                .join("images")
                .join(format!("{}.json", hex_of(digest)?)),
        )
    }

    pub fn put_image(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        self.write_json(
            &self
                .root
                .join("images")
                .join(format!("{}.json", hex_of(&rec.digest)?)),
            rec,
        )
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(hex::encode(Sha256::digest(reference.as_bytes())))
    }

    pub fn reference(&self, reference: &str) -> Result<Option<RefRecord>, ImageError> {
        let rec: Option<RefRecord> = read_json(&self.ref_path(reference))?;
        // The file name is a hash: make sure it is this reference's record.
        Ok(rec.filter(|r| r.reference == reference))
    }

    pub fn put_reference(&self, rec: &RefRecord) -> Result<(), ImageError> {
        self.write_json(&self.ref_path(&rec.reference), rec)
    }

    pub fn references(&self) -> Result<Vec<RefRecord>, ImageError> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        let entries = fs::read_dir(&dir)
            .map_err(|e| ImageError::io(format!("cannot list {}", dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| ImageError::io(format!("cannot list {}", dir.display()), e))?;
            if let Some(rec) = read_json::<RefRecord>(&entry.path())? {
                out.push(rec);
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    pub fn remove_reference(&self, reference: &str) -> Result<(), ImageError> {
        remove_file(&self.ref_path(reference))
    }

    /// Every image record.
    pub fn images(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in read_dir(&dir)? {
            if entry.extension().is_some_and(|e| e == "json") {
                if let Some(rec) = read_json::<ImageRecord>(&entry)? {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// Removes an image record (its layers and blobs are collected separately).
    pub fn remove_image(&self, digest: &str) -> Result<(), ImageError> {
        remove_file(
            &self
                .root
                .join("images")
                .join(format!("{}.json", hex_of(digest)?)),
        )
    }

    /// Every committed layer record, with the directory names that have no record (left by
    /// a crash) as records of size 0 and an empty diff id.
    pub fn layers(&self) -> Result<Vec<LayerRecord>, ImageError> {
        let dir = self.root.join("l");
        let mut out = Vec::new();
        for entry in read_dir(&dir)? {
            let name = entry
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if let Some(stem) = name.strip_suffix(".json") {
                match read_json::<LayerRecord>(&entry) {
                    Ok(Some(rec)) => out.push(rec),
                    _ => out.push(LayerRecord {
                        diff_id: String::new(),
                        dir: format!("l/{stem}"),
                        size: 0,
                    }),
                }
            } else if !dir.join(format!("{name}.json")).exists() {
                out.push(LayerRecord {
                    diff_id: String::new(),
                    dir: format!("l/{name}"),
                    size: 0,
                });
            }
        }
        Ok(out)
    }

    /// Removes a layer: its record first (so a crash half way leaves a directory without a
    /// record, which is never used and is collected next time), then its directory, moved
    /// into tmp/ and deleted there.
    pub fn remove_layer(&self, dir: &str) -> Result<(), ImageError> {
        let path = self.root.join(dir);
        if !dir.starts_with("l/") || dir[2..].contains('/') || dir.len() <= 2 {
            return Err(ImageError::io(
                format!("refusing to remove {dir}: not a layer directory"),
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        remove_file(&self.root.join(format!("{dir}.json")))?;
        if path.exists() {
            let aside = tempfile::Builder::new()
                .prefix("gone-")
                .tempdir_in(self.tmp())
                .map_err(|e| ImageError::io("cannot create a temporary directory", e))?;
            fs::rename(&path, aside.path().join("x"))
                .map_err(|e| ImageError::io(format!("cannot remove {}", path.display()), e))?;
            // Dropping `aside` deletes it (and the layer) recursively.
        }
        Ok(())
    }

    /// Digests of every stored small blob.
    pub fn blob_digests(&self) -> Result<Vec<String>, ImageError> {
        Ok(read_dir(&self.root.join("blobs/sha256"))?
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| format!("sha256:{}", n.to_string_lossy()))
            .collect())
    }

    pub fn remove_blob(&self, digest: &str) -> Result<(), ImageError> {
        remove_file(&self.blob_path(digest)?)
    }

    /// Where the ext4 root filesystem of the image with this manifest digest is kept.
    pub fn ext4_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self
            .root
            .join("ext4")
            .join(format!("{}.img", hex_of(digest)?)))
    }

    /// Sizes on disk of the built ext4 images, by manifest digest.
    pub fn ext4_images(&self) -> Result<Vec<(String, u64)>, ImageError> {
        let mut out = Vec::new();
        for p in read_dir(&self.root.join("ext4"))? {
            let Some(name) = p.file_name().map(|n| n.to_string_lossy().to_string()) else {
                continue;
            };
            let Some(hex) = name.strip_suffix(".img") else {
                continue;
            };
            let size = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            out.push((format!("sha256:{hex}"), size));
        }
        Ok(out)
    }

    /// A stored small blob, if present and intact.
    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, ImageError> {
        let path = self.blob_path(digest)?;
        match fs::read(&path) {
            Ok(bytes) if format!("sha256:{}", hex::encode(Sha256::digest(&bytes))) == digest => {
                Ok(Some(bytes))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    /// Stores a small blob (manifest, config) unless present.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        self.write_atomic(&path, bytes)
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| ImageError::io(format!("cannot encode {}", path.display()), e.into()))?;
        self.write_atomic(path, &bytes)
    }

    /// Writes to a temporary file beside nothing else, flushes it to disk, renames it over
    /// `path`: readers see the old content or the new, never a mix.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        let ctx = || format!("cannot write {}", path.display());
        let mut tmp =
            tempfile::NamedTempFile::new_in(self.tmp()).map_err(|e| ImageError::io(ctx(), e))?;
        tmp.write_all(bytes).map_err(|e| ImageError::io(ctx(), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io(ctx(), e))?;
        tmp.persist(path)
            .map_err(|e| ImageError::io(ctx(), e.error))?;
        Ok(())
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| ImageError::io(format!("cannot list {}", dir.display()), e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| ImageError::io(format!("cannot list {}", dir.display()), e))?;
        out.push(entry.path());
    }
    Ok(out)
}

fn remove_file(path: &Path) -> Result<(), ImageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(
            format!("cannot remove {}", path.display()),
            e,
        )),
    }
}

fn hex_of(digest: &str) -> Result<&str, ImageError> {
    digest_hex(digest).ok_or_else(|| {
        ImageError::InvalidImage(format!(
            "unsupported digest {digest:?} (only sha256 is supported)"
        ))
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ImageError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            ImageError::io(
                format!("corrupt store record {}", path.display()),
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ImageError::io(format!("cannot read {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn open_cleans_tmp_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        fs::write(layout.tmp().join("leftover"), b"crash").unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(layout.tmp()).unwrap().count(), 0);

        let r = RefRecord {
            reference: "a/b:c".into(),
            digest: digest('1'),
            resolved: digest('2'),
            local: false,
        };
        layout.put_reference(&r).unwrap();
        assert_eq!(
            layout.reference("a/b:c").unwrap().unwrap().resolved,
            digest('2')
        );
        assert!(layout.reference("a/b:d").unwrap().is_none());
        assert_eq!(layout.references().unwrap().len(), 1);
        assert_eq!(
            fs::read_dir(layout.tmp()).unwrap().count(),
            0,
            "temporary files renamed away"
        );
    }

    #[test]
    fn a_layer_counts_only_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let id = digest('a');
        assert!(layout.layer(&id).unwrap().is_none());
        // A crash after the record but before the rename: the layer is absent.
        fs::write(
            layout.root().join("l/aaaaaaaaaaaaaaaa.json"),
            serde_json::to_vec(&LayerRecord {
                diff_id: id.clone(),
                dir: "l/aaaaaaaaaaaaaaaa".into(),
                size: 1,
            })
            .unwrap(),
        )
        .unwrap();
        assert!(layout.layer(&id).unwrap().is_none());
        // A stale directory without its record is replaced on commit.
        fs::create_dir(layout.root().join("l/aaaaaaaaaaaaaaaa")).unwrap();
        fs::write(layout.root().join("l/aaaaaaaaaaaaaaaa/stale"), b"").unwrap();
        let fresh = tempfile::Builder::new().tempdir_in(layout.tmp()).unwrap();
        fs::write(fresh.path().join("new"), b"").unwrap();
        let rec = layout.commit_layer(fresh, &id, 7).unwrap();
        assert_eq!(rec.dir, "l/aaaaaaaaaaaaaaaa");
        assert!(layout.root().join("l/aaaaaaaaaaaaaaaa/new").exists());
        assert!(!layout.root().join("l/aaaaaaaaaaaaaaaa/stale").exists());
        assert_eq!(layout.layer(&id).unwrap().unwrap().size, 7);
        // Another diff id with the same 16-digit prefix is refused, not confused.
        let twin = format!("sha256:{}{}", "a".repeat(16), "b".repeat(48));
        assert!(layout.layer(&twin).is_err());
    }
}
