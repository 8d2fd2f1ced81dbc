//! A microVM's disks: the image as an ext4 file system built once per image (shared read-only
//! by every machine of it), and a sparse, freshly formatted scratch disk per boot that takes
//! the machine's writes (the blank slate). Both are made with e2fsprogs' `mkfs.ext4`, the image
//! one populated from the layers with `-d`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::error::{io, MicrovmError};

pub const GIB: u64 = 1 << 30;

/// Bytes and inodes a tree takes (each file rounded up to 4 KiB blocks).
fn tree_usage(root: &Path) -> (u64, u64) {
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            inodes += 1;
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
                bytes += 4096;
            } else {
                bytes += meta.size().div_ceil(4096) * 4096;
            }
        }
    }
    (bytes, inodes)
}

/// The cache key of an image: its layers (content-addressed directories), in order.
pub fn image_key(layers: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    for l in layers {
        h.update(l.as_os_str().as_encoded_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

async fn mkfs(args: &[&std::ffi::OsStr]) -> Result<(), MicrovmError> {
    let out = Command::new("mkfs.ext4")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| MicrovmError::Spawn {
            program: "mkfs.ext4".into(),
            hint: "; install e2fsprogs (Debian: apt-get install e2fsprogs)",
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MicrovmError::Tool {
            program: "mkfs.ext4",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The image's ext4 disk in `cache`, built from `layers` if it is not there yet. Fails when the
/// image does not fit `limit` bytes.
pub async fn image_disk(
    cache: &Path,
    layers: &[PathBuf],
    limit: u64,
) -> Result<PathBuf, MicrovmError> {
    let key = image_key(layers);
    let path = cache.join(format!("{key}.ext4"));
    if let Ok(meta) = std::fs::metadata(&path) {
        if meta.len() > limit {
            return Err(MicrovmError::ImageTooBig {
                size: meta.len(),
                limit,
            });
        }
        return Ok(path);
    }
    std::fs::create_dir_all(cache).map_err(io(format!("creating {}", cache.display())))?;
    let work = cache.join(format!("{key}.build{}", std::process::id()));
    let result = build_image(&work, layers, &path, limit).await;
    let _ = umount2(&work.join("tree"), MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| path)
}

async fn build_image(
    work: &Path,
    layers: &[PathBuf],
    out: &Path,
    limit: u64,
) -> Result<(), MicrovmError> {
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree).map_err(io(format!("creating {}", tree.display())))?;
    let source = match layers {
        [] => return Err(MicrovmError::Spec("the image has no layers".into())),
        [one] => one.clone(),
        many => {
            // A read-only overlay of the layers applies their whiteouts: what mkfs copies is
            // exactly the tree a sandbox sees.
            let lower: Vec<String> = many.iter().rev().map(|l| l.display().to_string()).collect();
            let data = format!("lowerdir={}", lower.join(":"));
            mount(
                Some("overlay"),
                &tree,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(data.as_str()),
            )
            .map_err(|e| io("stacking the image's layers")(e.into()))?;
            tree.clone()
        }
    };
    let (bytes, inodes) = tree_usage(&source);
    // Room for ext4's own metadata, and a little slack.
    let size = (bytes + inodes * 256 + bytes / 10 + (16 << 20)).div_ceil(1 << 20) * (1 << 20);
    if size > limit {
        return Err(MicrovmError::ImageTooBig { size, limit });
    }
    let tmp = work.join("image.ext4");
    std::fs::File::create(&tmp)
        .and_then(|f| f.set_len(size))
        .map_err(io(format!("creating {}", tmp.display())))?;
    let inode_count = (inodes + 1024).to_string();
    mkfs(&[
        "-q".as_ref(),
        "-F".as_ref(),
        "-O".as_ref(),
        "^has_journal".as_ref(),
        "-N".as_ref(),
        inode_count.as_ref(),
        "-E".as_ref(),
        "root_owner=0:0".as_ref(),
        "-L".as_ref(),
        "hangar-image".as_ref(),
        "-d".as_ref(),
        source.as_os_str(),
        tmp.as_os_str(),
    ])
    .await?;
    std::fs::rename(&tmp, out).map_err(io(format!("storing {}", out.display())))
}

/// A fresh, sparse, empty ext4 disk of `size` bytes for one boot's writes.
pub async fn scratch_disk(path: &Path, size: u64) -> Result<(), MicrovmError> {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .map_err(io(format!("creating {}", path.display())))?;
    mkfs(&[
        "-q".as_ref(),
        "-F".as_ref(),
        "-O".as_ref(),
        "^has_journal".as_ref(),
        "-E".as_ref(),
        "lazy_itable_init=1,root_owner=0:0".as_ref(),
        "-L".as_ref(),
        "hangar-scratch".as_ref(),
        path.as_os_str(),
    ])
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_keys_follow_the_layers() {
        let a = image_key(&[PathBuf::from("/l/a"), PathBuf::from("/l/b")]);
        let b = image_key(&[PathBuf::from("/l/b"), PathBuf::from("/l/a")]);
        let c = image_key(&[PathBuf::from("/l/ab")]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            image_key(&[PathBuf::from("/l/a"), PathBuf::from("/l/b")])
        );
    }
}
