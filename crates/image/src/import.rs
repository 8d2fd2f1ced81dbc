//! Imports: an OCI image layout directory, an OCI archive (a tar of a layout), or a
//! `docker save` tarball (either format of docker's: `manifest.json` with `<id>/layer.tar`
//! files, or with `blobs/sha256/...`). Archives are extracted under the store's `tmp/`
//! first (gzip or zstd compressed ones too). Every blob is checked against its digest.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use oci_client::Reference;
use serde::Deserialize;
use tracing::info;

use crate::layer::file_digest;
use crate::layout::RefRecord;
use crate::manifest::{self, Compression, Descriptor, Manifest};
use crate::{reference, BlobSource, Image, ImageError, ImageStore, NewImage};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// An image found in a layout or archive, its blobs not yet read.
struct Found {
    name: Reference,
    manifest_bytes: Vec<u8>,
    digest: String,
    config: Descriptor,
    config_bytes: Vec<u8>,
    layers: Vec<(Descriptor, PathBuf)>,
}

pub(crate) async fn import(
    store: &ImageStore,
    path: &Path,
    wanted: Option<Reference>,
) -> Result<Image, ImageError> {
    let inner = Arc::clone(&store.inner);
    let shown = path.display().to_string();
    let meta = fs::metadata(path)
        .map_err(|e| ImageError::InvalidImage(format!("cannot import {shown}: {e}")))?;
    let tmp_root = inner.layout.tmp();
    let path = path.to_path_buf();
    let (found, extracted) = tokio::task::spawn_blocking(move || -> Result<_, ImageError> {
        let (dir, guard) = if meta.is_dir() {
            (path, None)
        } else {
            let tmp = tempfile::Builder::new()
                .prefix("import-")
                .tempdir_in(&tmp_root)
                .map_err(|e| ImageError::io("cannot create a temporary directory", e))?;
            extract(&path, tmp.path()).map_err(|e| e.into_image_error(&shown))?;
            (tmp.path().to_path_buf(), Some(tmp))
        };
        let found = read_image(&dir, wanted.as_ref()).map_err(|e| e.into_image_error(&shown))?;
        Ok((found, guard))
    })
    .await
    .map_err(|e| ImageError::io("import failed", io::Error::other(e.to_string())))??;

    let name = reference::normalized(&found.name);
    // No collection between the first layer and the reference.
    let _adding = inner.gc.read().await;
    let rec = inner
        .store_image(NewImage {
            name: name.clone(),
            source_name: format!("{}/{}", found.name.registry(), found.name.repository()),
            digest: found.digest.clone(),
            manifest: found.manifest_bytes,
            config: found.config,
            config_bytes: found.config_bytes,
            layers: found
                .layers
                .into_iter()
                .map(|(desc, path)| (desc, BlobSource::File(path)))
                .collect(),
            local: true,
        })
        .await?;
    drop(extracted);
    inner.layout.put_reference(&RefRecord {
        reference: name.clone(),
        digest: found.digest.clone(),
        resolved: found.digest,
        local: true,
    })?;
    info!(reference = %name, digest = %rec.digest, layers = rec.layers.len(), "image imported");
    Ok(inner.image_from(&rec, &found.name, true))
}

/// Import failures: the input's fault, or ours.
enum Fault {
    Bad(String),
    Io(String, io::Error),
}

impl Fault {
    fn into_image_error(self, path: &str) -> ImageError {
        match self {
            Fault::Bad(why) => ImageError::InvalidImage(format!("cannot import {path}: {why}")),
            Fault::Io(ctx, e) => ImageError::io(ctx, e),
        }
    }
}

impl From<ImageError> for Fault {
    fn from(e: ImageError) -> Fault {
        match e {
            ImageError::Io { context, source } => Fault::Io(context, source),
            other => Fault::Bad(other.to_string()),
        }
    }
}

fn bad(why: impl Into<String>) -> Fault {
    Fault::Bad(why.into())
}

/// Extracts an archive: directories, regular files and symlinks that stay inside; nothing is
/// ever written through a symlink.
fn extract(archive: &Path, dest: &Path) -> Result<(), Fault> {
    let file = File::open(archive).map_err(|e| bad(e.to_string()))?;
    let mut buffered = BufReader::new(file);
    let head = buffered.fill_buf().map_err(|e| bad(e.to_string()))?;
    let reader: Box<dyn Read> = match manifest::sniff_compression(head) {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(|e| bad(e.to_string()))?,
        ),
        Compression::None => Box::new(buffered),
    };
    let not_tar = |e: io::Error| bad(format!("not a tar archive ({e})"));
    let mut tar = tar::Archive::new(reader);
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    let mut count = 0usize;
    for entry in tar.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let raw = entry.path().map_err(not_tar)?.into_owned();
        let rel =
            clean(&raw).ok_or_else(|| bad(format!("archive entry {raw:?} leaves the archive")))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let mut prefix = PathBuf::new();
        for c in rel.parent().into_iter().flat_map(Path::components) {
            prefix.push(c);
            if symlinks.contains(&prefix) {
                return Err(bad(format!(
                    "archive entry {raw:?} is below the symlink {prefix:?}"
                )));
            }
        }
        let out = dest.join(&rel);
        let io_err = |e: io::Error| Fault::Io(format!("cannot extract {}", out.display()), e);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(io_err)?;
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => fs::create_dir_all(&out).map_err(io_err)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if symlinks.remove(&rel) || out.is_file() {
                    fs::remove_file(&out).map_err(io_err)?;
                }
                let mut f = File::create_new(&out).map_err(io_err)?;
                io::copy(&mut entry, &mut f)
                    .map_err(|e| bad(format!("archive entry {raw:?} cannot be read: {e}")))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(not_tar)?
                    .ok_or_else(|| bad(format!("symlink {raw:?} has no target")))?;
                let depth = rel.components().count() as i64 - 1;
                if !stays_inside(depth, &target) {
                    return Err(bad(format!(
                        "symlink {raw:?} -> {target:?} leaves the archive"
                    )));
                }
                std::os::unix::fs::symlink(&target, &out).map_err(io_err)?;
                symlinks.insert(rel);
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(bad(format!(
                    "archive entry {raw:?} has unexpected type {other:?}"
                )))
            }
        }
        count += 1;
    }
    if count == 0 {
        return Err(bad("the archive is empty"));
    }
    Ok(())
}

/// A path made relative: Normal components only (`.` dropped); None if it has `..` or a root.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Whether a relative symlink target, at directory depth `depth`, stays inside (absolute
/// targets never do, in an archive).
fn stays_inside(mut depth: i64, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// `rel` (a path named by the archive's own metadata) under `dir`, following symlinks only
/// as far as `dir` itself.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, Fault> {
    let cleaned = clean(Path::new(rel))
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| bad(format!("it names an invalid path {rel:?}")))?;
    let base = dir
        .canonicalize()
        .map_err(|e| Fault::Io(format!("cannot resolve {}", dir.display()), e))?;
    let full = base
        .join(cleaned)
        .canonicalize()
        .map_err(|_| bad(format!("{rel} is missing")))?;
    if !full.starts_with(&base) {
        return Err(bad(format!("{rel} points outside the archive")));
    }
    Ok(full)
}

fn read_verified(dir: &Path, digest: &str, what: &str) -> Result<(PathBuf, Vec<u8>), Fault> {
    let hex = reference::digest_hex(digest)
        .ok_or_else(|| bad(format!("{what} has an unsupported digest {digest:?}")))?;
    let path = inside(dir, &format!("blobs/sha256/{hex}"))?;
    let bytes =
        fs::read(&path).map_err(|e| Fault::Io(format!("cannot read {}", path.display()), e))?;
    let got = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
    );
    if got != digest {
        return Err(bad(format!(
            "{what} {digest} does not match its content ({got})"
        )));
    }
    Ok((path, bytes))
}

fn read_image(dir: &Path, wanted: Option<&Reference>) -> Result<Found, Fault> {
    if dir.join("manifest.json").is_file() {
        read_docker(dir, wanted)
    } else if dir.join("index.json").is_file() {
        read_oci(dir, wanted)
    } else {
        Err(bad("it is neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)"))
    }
}

fn parse_name(name: &str) -> Result<Reference, Fault> {
    reference::parse(name).map_err(|e| {
        bad(format!(
            "it names its image {name:?}, which is not a valid reference ({e}); pass a reference"
        ))
    })
}

fn read_oci(dir: &Path, wanted: Option<&Reference>) -> Result<Found, Fault> {
    let index_bytes = fs::read(dir.join("index.json"))
        .map_err(|e| Fault::Io("cannot read index.json".into(), e))?;
    let entries = match manifest::parse_manifest(&index_bytes)
        .map_err(|why| bad(format!("its index.json {why}")))?
    {
        Manifest::Index(entries) => entries,
        Manifest::Image { .. } => return Err(bad("its index.json is a manifest, not an index")),
    };
    let name_of = |d: &Descriptor| {
        let a = d.annotations.as_ref()?;
        a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME)).cloned()
    };
    let names: Vec<String> = entries.iter().filter_map(name_of).collect();
    let candidates: Vec<&Descriptor> = match (wanted, entries.len()) {
        (_, 0) => return Err(bad("its index.json lists no images")),
        (_, 1) => vec![&entries[0]],
        (Some(w), _) => {
            let w_name = reference::normalized(w);
            entries
                .iter()
                .filter(|d| {
                    let a = d.annotations.as_ref();
                    let full = name_of(d)
                        .and_then(|n| reference::parse(&n).ok())
                        .map(|r| reference::normalized(&r));
                    full.as_deref() == Some(w_name.as_str())
                        || a.and_then(|a| a.get(REF_NAME)).map(String::as_str) == w.tag()
                })
                .collect()
        }
        (None, _) => entries.iter().collect(),
    };
    let chosen: &Descriptor = match candidates.as_slice() {
        [one] => one,
        [] => {
            return Err(bad(format!(
                "it has no image named {}; it has: {}",
                wanted.map(Reference::whole).unwrap_or_default(),
                names.join(", ")
            )))
        }
        many if many.iter().all(|d| d.platform.is_some()) => {
            let owned: Vec<Descriptor> = many.iter().map(|d| (*d).clone()).collect();
            let pick = manifest::select_platform(&owned, manifest::host_arch())
                .map_err(bad)?
                .digest
                .clone();
            many.iter()
                .find(|d| d.digest == pick)
                .copied()
                .ok_or_else(|| bad("platform selection failed"))?
        }
        many => {
            return Err(bad(format!(
                "it holds {} images ({}); pass a reference to choose one",
                many.len(),
                if names.is_empty() {
                    "unnamed".to_string()
                } else {
                    names.join(", ")
                }
            )))
        }
    };
    let name =
        match (wanted, name_of(chosen)) {
            (Some(w), _) => w.clone(),
            (None, Some(n)) => parse_name(&n)?,
            (None, None) => return Err(bad(
                "its image has no org.opencontainers.image.ref.name annotation; pass a reference",
            )),
        };
    let (_, mut manifest_bytes) = read_verified(dir, &chosen.digest, "manifest")?;
    let mut digest = chosen.digest.clone();
    let parsed = match manifest::parse_manifest(&manifest_bytes)
        .map_err(|why| bad(format!("its manifest {why}")))?
    {
        Manifest::Image { config, layers } => (config, layers),
        Manifest::Index(inner) => {
            let pick =
                manifest::select_platform(&inner, manifest::host_arch()).map_err(|detail| {
                    Fault::from(ImageError::UnsupportedPlatform {
                        reference: name.whole(),
                        detail,
                    })
                })?;
            digest = pick.digest.clone();
            manifest_bytes = read_verified(dir, &digest, "manifest")?.1;
            match manifest::parse_manifest(&manifest_bytes)
                .map_err(|why| bad(format!("its manifest {why}")))?
            {
                Manifest::Image { config, layers } => (config, layers),
                Manifest::Index(_) => return Err(bad("it nests an index inside an index")),
            }
        }
    };
    let (config, layer_descs) = parsed;
    let (_, config_bytes) = read_verified(dir, &config.digest, "config")?;
    let mut layers = Vec::new();
    for d in layer_descs {
        let hex = reference::digest_hex(&d.digest)
            .ok_or_else(|| bad(format!("layer {} has an unsupported digest", d.digest)))?;
        let path = inside(dir, &format!("blobs/sha256/{hex}"))?;
        layers.push((d, path));
    }
    Ok(Found {
        name,
        manifest_bytes,
        digest,
        config,
        config_bytes,
        layers,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn read_docker(dir: &Path, wanted: Option<&Reference>) -> Result<Found, Fault> {
    let bytes = fs::read(dir.join("manifest.json"))
        .map_err(|e| Fault::Io("cannot read manifest.json".into(), e))?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("its manifest.json is invalid: {e}")))?;
    let tags_of = |e: &DockerEntry| e.repo_tags.clone().unwrap_or_default();
    let all_tags: Vec<String> = entries.iter().flat_map(tags_of).collect();
    let matches = |e: &DockerEntry, w: &Reference| {
        tags_of(e).iter().any(|t| {
            reference::parse(t)
                .map(|r| reference::normalized(&r) == reference::normalized(w))
                .unwrap_or(false)
        })
    };
    let entry = match (wanted, entries.as_slice()) {
        (_, []) => return Err(bad("its manifest.json lists no images")),
        (_, [one]) => one,
        (Some(w), many) => many.iter().find(|e| matches(e, w)).ok_or_else(|| {
            bad(format!(
                "it has no image tagged {}; it has: {}",
                w.whole(),
                all_tags.join(", ")
            ))
        })?,
        (None, many) => {
            return Err(bad(format!(
                "it holds {} images ({}); pass a reference to choose one",
                many.len(),
                all_tags.join(", ")
            )))
        }
    };
    let name = match (wanted, tags_of(entry).first()) {
        (Some(w), _) => w.clone(),
        (None, Some(t)) => parse_name(t)?,
        (None, None) => return Err(bad("its image has no RepoTags; pass a reference")),
    };
    let config_path = inside(dir, &entry.config)?;
    let config_bytes = fs::read(&config_path)
        .map_err(|e| Fault::Io(format!("cannot read {}", config_path.display()), e))?;
    let config_digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&config_bytes))
    );
    let mut layers = Vec::new();
    let mut layer_json = Vec::new();
    for rel in &entry.layers {
        let path = inside(dir, rel)?;
        let digest = file_digest(&path)
            .map_err(|e| Fault::Io(format!("cannot read {}", path.display()), e))?;
        let size = fs::metadata(&path)
            .map_err(|e| Fault::Io(format!("cannot read {}", path.display()), e))?
            .len();
        let mut head = [0u8; 4];
        let n = File::open(&path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|e| Fault::Io(format!("cannot read {}", path.display()), e))?;
        let media_type = match manifest::sniff_compression(&head[..n]) {
            Compression::Gzip => manifest::DOCKER_LAYER_GZIP,
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => manifest::DOCKER_LAYER_TAR,
        };
        layer_json
            .push(serde_json::json!({ "mediaType": media_type, "size": size, "digest": digest }));
        layers.push((
            Descriptor {
                media_type: media_type.to_string(),
                digest,
                size: size as i64,
                platform: None,
                annotations: None,
            },
            path,
        ));
    }
    // docker save has no registry manifest: make the schema 2 manifest a registry would hold,
    // deterministically (sorted keys), so the same archive always gets the same digest.
    let manifest_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::DOCKER_MANIFEST,
        "config": { "mediaType": manifest::DOCKER_CONFIG, "size": config_bytes.len(), "digest": config_digest },
        "layers": layer_json,
    }))
    .map_err(|e| Fault::Io("cannot encode a manifest".into(), e.into()))?;
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest_bytes))
    );
    let config = Descriptor {
        media_type: manifest::DOCKER_CONFIG.into(),
        digest: config_digest,
        size: config_bytes.len() as i64,
        platform: None,
        annotations: None,
    };
    Ok(Found {
        name,
        manifest_bytes,
        digest,
        config,
        config_bytes,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_symlinks_must_stay_inside() {
        assert!(stays_inside(1, Path::new("../abc/layer.tar")));
        assert!(!stays_inside(0, Path::new("../x")));
        assert!(!stays_inside(1, Path::new("../../x")));
        assert!(!stays_inside(3, Path::new("/etc/passwd")));
        assert!(stays_inside(0, Path::new("a/../b")));
    }

    #[test]
    fn paths_named_by_metadata_cannot_leave_the_directory() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("ok"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("out")).unwrap();
        assert!(inside(d.path(), "ok").is_ok());
        assert!(matches!(inside(d.path(), "../ok"), Err(Fault::Bad(_))));
        assert!(matches!(
            inside(d.path(), "/etc/hostname"),
            Err(Fault::Bad(_))
        ));
        assert!(matches!(inside(d.path(), "out"), Err(Fault::Bad(m)) if m.contains("outside")));
        assert!(matches!(inside(d.path(), "missing"), Err(Fault::Bad(m)) if m.contains("missing")));
    }

    #[test]
    fn extraction_refuses_writes_through_symlinks() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "a", ".").unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "a/l", "../x").unwrap();
        let archive = tempfile::NamedTempFile::new().unwrap();
        fs::write(archive.path(), b.into_inner().unwrap()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        match extract(archive.path(), dest.path()) {
            Err(Fault::Bad(m)) => assert!(m.contains("below the symlink"), "{m}"),
            _ => panic!("expected a refusal"),
        }
    }
}
