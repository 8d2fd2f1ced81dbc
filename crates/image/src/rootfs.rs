//! Root filesystems for the runtimes. The sandbox stacks an image's layer directories with
//! overlayfs (`Image::layers`, lowest first). A microVM needs a block device: an ext4 image
//! of the merged layers, built once per image (by manifest digest) with e2fsprogs'
//! `mkfs.ext4 -d` from a read-only overlay mount of the layers, so whiteouts and opaque
//! directories apply exactly as they do in a sandbox. Kept until the image is removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tracing::info;

use crate::{Image, ImageError, ImageStore, Inner};

impl ImageStore {
    /// The ext4 image of `image`'s root filesystem, built on first use. Concurrent calls for
    /// one image build it once. Needs `mkfs.ext4` (e2fsprogs) and the right to mount.
    pub async fn ext4_rootfs(&self, image: &Image) -> Result<PathBuf, ImageError> {
        let path = self.inner.layout.ext4_path(&image.digest)?;
        if path.exists() {
            return Ok(path);
        }
        let inner = Arc::clone(&self.inner);
        let image = image.clone();
        let key = image.digest.clone();
        self.inner
            .ext4
            .join(&key, move || async move {
                // Reading layers: no collection meanwhile.
                let _reading = inner.gc.read().await;
                let inner2 = Arc::clone(&inner);
                tokio::task::spawn_blocking(move || build(&inner2, &image))
                    .await
                    .map_err(|e| {
                        ImageError::io("ext4 build failed", std::io::Error::other(e.to_string()))
                    })?
            })
            .await
    }
}

fn build(inner: &Inner, image: &Image) -> Result<PathBuf, ImageError> {
    let dest = inner.layout.ext4_path(&image.digest)?;
    if dest.exists() {
        return Ok(dest);
    }
    if image.layers.iter().any(|l| !l.is_dir()) {
        return Err(ImageError::InvalidImage(format!(
            "image {} is missing layers on this host; pull it again",
            image.reference
        )));
    }
    let work = tempfile::Builder::new()
        .prefix("ext4-")
        .tempdir_in(inner.layout.tmp())
        .map_err(|e| ImageError::io("cannot create a temporary directory", e))?;
    let merged = work.path().join("merged");
    let empty = work.path().join("empty");
    for d in [&merged, &empty] {
        std::fs::create_dir(d)
            .map_err(|e| ImageError::io(format!("cannot create {}", d.display()), e))?;
    }
    let mut lower: Vec<String> = image
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    // A read-only overlay needs two lower directories at least.
    lower.push(empty.display().to_string());
    let opts = format!("lowerdir={}", lower.join(":"));
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .map_err(|e| {
        ImageError::io(
            format!(
                "cannot mount the layers of {} to build its ext4 image",
                image.reference
            ),
            std::io::Error::from(e),
        )
    })?;
    let out = work.path().join("rootfs.img");
    let built = mkfs(&merged, &out, image.size);
    let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    built?;
    std::fs::rename(&out, &dest).map_err(|e| {
        ImageError::io(
            format!("cannot move the ext4 image to {}", dest.display()),
            e,
        )
    })?;
    info!(reference = %image.reference, path = %dest.display(), "ext4 root filesystem built");
    Ok(dest)
}

/// Makes an ext4 filesystem holding `from`, sized for `content` bytes plus room for metadata
/// and a little free space.
fn mkfs(from: &Path, out: &Path, content: u64) -> Result<(), ImageError> {
    let mib = 1u64 << 20;
    let size = (content + content / 4 + 64 * mib).div_ceil(mib) * mib;
    let output = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "hangar-root",
            "-i",
            "8192",
            "-d",
        ])
        .arg(from)
        .arg(out)
        .arg(format!("{}k", size / 1024))
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .map_err(|e| ImageError::io("cannot run mkfs.ext4 (install e2fsprogs)", e))?;
    if !output.status.success() {
        return Err(ImageError::io(
            format!(
                "mkfs.ext4 failed ({}): {}",
                output.status,
                crate::error::one_line(&String::from_utf8_lossy(&output.stderr))
            ),
            std::io::Error::other("mkfs.ext4"),
        ));
    }
    Ok(())
}
