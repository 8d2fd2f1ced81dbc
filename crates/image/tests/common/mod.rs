//! Shared by the integration tests: a fresh store, checks that it holds nothing, and a real
//! read-only overlayfs mount of an image's layers.

#![allow(dead_code)]

pub mod proxy;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use hangar_image::{Image, ImageStore, StoreOptions};

pub fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::Builder::new()
        .prefix("hangar-images")
        .tempdir()
        .unwrap();
    let store = ImageStore::open(dir.path().join("store"), StoreOptions::default()).unwrap();
    (dir, store)
}

pub fn root(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store")
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the store holds no layer, image, reference or temporary file.
pub fn assert_empty(root: &Path) {
    for sub in ["l", "images", "refs", "tmp"] {
        let left = entries(&root.join(sub));
        assert!(left.is_empty(), "{sub}/ should be empty, holds {left:?}");
    }
}

pub fn layer_dirs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = entries(&root.join("l"))
        .into_iter()
        .filter(|n| !n.ends_with(".json"))
        .collect();
    v.sort();
    v
}

pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 64];
    // SAFETY: valid C strings and a live buffer of the stated length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (rc >= 0).then(|| buf[..rc as usize].to_vec())
}

/// The image's layers stacked by overlayfs, read-only, as a machine would see them.
pub struct Mounted {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Mounted {
    pub fn new(image: &Image) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("merged");
        std::fs::create_dir(&root).unwrap();
        let mut lower: Vec<String> = image
            .layers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        lower.reverse(); // overlayfs lists the top layer first
        if lower.len() == 1 {
            // A single lower directory needs an upper; a second empty lower does the same job.
            let empty = dir.path().join("empty");
            std::fs::create_dir(&empty).unwrap();
            lower.push(empty.display().to_string());
        }
        let opts = format!("lowerdir={}", lower.join(":"));
        nix::mount::mount(
            Some("overlay"),
            &root,
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(opts.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount overlay {opts}: {e}"));
        Mounted { _dir: dir, root }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A fresh store with these options.
pub fn store_with(options: StoreOptions) -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::Builder::new()
        .prefix("hangar-images")
        .tempdir()
        .unwrap();
    let store = ImageStore::open(dir.path().join("store"), options).unwrap();
    (dir, store)
}

/// `len` bytes that do not compress (xorshift from `seed`).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
