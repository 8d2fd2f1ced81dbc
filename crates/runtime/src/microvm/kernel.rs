//! The guest kernel and the initramfs Hangar builds for it.
//!
//! The kernel is Debian's `linux-image-cloud-amd64` unpacked (not installed) by the project's
//! setup: `boot/vmlinuz-VERSION` and `lib/modules/VERSION/`. That kernel builds virtio as
//! modules, so the initramfs carries `hangar-init` as `/init` and the modules it loads (and, in
//! a second list, those it loads for a machine with a network), in dependency order (read from each module's `.modinfo`, as depmod would). It is built once
//! per kernel and init binary and cached; each boot appends a small archive holding its
//! launch spec.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use super::error::{KernelError, ModinfoError};

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
    KernelError::io(context)
}

/// The modules every machine needs: the block and serial devices over virtio-mmio, and
/// overlayfs.
pub const WANTED_MODULES: [&str; 4] = ["virtio_mmio", "virtio_blk", "virtio_console", "overlay"];

/// The modules a machine on a network needs besides (virtio_net brings net_failover and
/// failover). Init loads them only for such a machine: under TCG they cost some 40 ms a boot.
pub const NETWORK_MODULES: [&str; 1] = ["virtio_net"];
#[derive(Clone, Debug)]
pub struct Kernel {
    pub image: PathBuf,
    /// `lib/modules/VERSION` of this kernel.
    pub modules: PathBuf,
    pub version: String,
}

/// Finds the kernel in an unpacked Debian kernel package (`DIR/boot/vmlinuz-*`).
pub fn find_in(dir: &Path) -> Result<Kernel, KernelError> {
    let boot = dir.join("boot");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&boot)
        .map_err(io(boot.display().to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    let image = found
        .pop()
        .ok_or_else(|| KernelError::NoKernel(boot.clone()))?;
    let version = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let modules = dir.join("lib/modules").join(&version);
    Ok(Kernel {
        image,
        modules,
        version,
    })
}

/// A kernel given by path, its modules in `modules` (`lib/modules/VERSION`).
pub fn explicit(image: &Path, modules: &Path) -> Kernel {
    let version = modules
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Kernel {
        image: image.to_path_buf(),
        modules: modules.to_path_buf(),
        version,
    }
}

/// The NUL-separated `key=value` strings of an ELF object's `.modinfo` section.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, ModinfoError> {
    let u16_at = |o: usize| -> Option<u64> {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
    };
    let u32_at = |o: usize| -> Option<u64> {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
    };
    let u64_at = |o: usize| -> Option<u64> {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(ModinfoError::NotElf64);
    }
    let bad = ModinfoError::Truncated;
    let shoff = u64_at(0x28).ok_or(bad)? as usize;
    let shentsize = u16_at(0x3A).ok_or(bad)? as usize;
    let shnum = u16_at(0x3C).ok_or(bad)? as usize;
    let shstrndx = u16_at(0x3E).ok_or(bad)? as usize;
    let section = |i: usize| -> Option<(u64, usize, usize)> {
        let h = shoff + i * shentsize;
        Some((
            u32_at(h)?,
            u64_at(h + 0x18)? as usize,
            u64_at(h + 0x20)? as usize,
        ))
    };
    let (_, str_off, str_size) = section(shstrndx).ok_or(bad)?;
    let names = elf.get(str_off..str_off + str_size).ok_or(bad)?;
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or(bad)?;
        let name = names.get(name as usize..).unwrap_or_default();
        if name.starts_with(b".modinfo\0") {
            let data = elf.get(off..off + size).ok_or(bad)?;
            return Ok(data
                .split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = std::str::from_utf8(kv).ok()?;
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect());
        }
    }
    Err(ModinfoError::NoModinfo)
}

/// The module files under `dir` by module name (`virtio-blk` and `virtio_blk` are one name).
fn index_modules(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.strip_suffix(".ko") {
                    out.insert(stem.replace('-', "_"), path);
                }
            }
        }
    }
    out
}

/// The module files to load for `wanted`, each after the modules it depends on. A module
/// built into the kernel (absent from `dir` but listed in `modules.builtin`) is skipped.
pub fn load_order(dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, KernelError> {
    let index = index_modules(dir);
    let builtin: HashSet<String> = std::fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(|f| f.strip_suffix(".ko"))
        .map(|s| s.replace('-', "_"))
        .collect();
    let mut order = Vec::new();
    let mut done = HashSet::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &HashSet<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<PathBuf>,
        depth: usize,
    ) -> Result<(), KernelError> {
        let name = name.replace('-', "_");
        if done.contains(&name) || builtin.contains(&name) {
            return Ok(());
        }
        if depth > 32 {
            return Err(KernelError::TooDeep(name));
        }
        let path = index
            .get(&name)
            .ok_or_else(|| KernelError::MissingModule(name.clone()))?;
        let bytes = std::fs::read(path).map_err(io(path.display().to_string()))?;
        let info = modinfo(&bytes).map_err(|why| KernelError::BadModule {
            path: path.clone(),
            why,
        })?;
        for (k, v) in &info {
            if k == "depends" {
                for dep in v.split(',').filter(|d| !d.is_empty()) {
                    visit(dep, index, builtin, done, order, depth + 1)?;
                }
            }
        }
        done.insert(name);
        order.push(path.clone());
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &builtin, &mut done, &mut order, 0)?;
    }
    Ok(order)
}

/// Writes a `newc` cpio archive (what the kernel unpacks as an initramfs).
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
}

pub enum Entry<'a> {
    Dir,
    File(&'a [u8], u32),
    CharDev(u32, u32),
}

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Cpio { out, ino: 1 }
    }

    pub fn add(&mut self, name: &str, entry: Entry<'_>) -> std::io::Result<()> {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir => (0o040755, &[], (0, 0)),
            Entry::File(data, perm) => (0o100000 | (perm & 0o7777), data, (0, 0)),
            Entry::CharDev(maj, min) => (0o020600, &[], (maj, min)),
        };
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        let pad = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad])
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.add("TRAILER!!!", Entry::File(&[], 0))?;
        Ok(self.out)
    }
}

/// The cached initramfs for this kernel and init: built on first use.
pub fn initramfs(cache: &Path, kernel: &Kernel, init: &Path) -> Result<PathBuf, KernelError> {
    let init_bytes = std::fs::read(init).map_err(io(format!("reading {}", init.display())))?;
    let modules =
        load_order(&kernel.modules, &WANTED_MODULES).map_err(|e| KernelError::Modules {
            dir: kernel.modules.clone(),
            source: Box::new(e),
        })?;
    // A kernel without virtio_net still runs machines without a network; one with a network
    // reports in the guest that no device appeared.
    let network_modules: Vec<PathBuf> = load_order(&kernel.modules, &NETWORK_MODULES)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !modules.contains(m))
        .collect();
    let mut hash = Sha256::new();
    hash.update(&init_bytes);
    hash.update(kernel.version.as_bytes());
    for m in modules.iter().chain(&network_modules) {
        hash.update(m.to_string_lossy().as_bytes());
    }
    let key = hex::encode(&hash.finalize()[..8]);
    let path = cache.join(format!("initramfs-{}-{key}.cpio", kernel.version));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache).map_err(io(format!("creating {}", cache.display())))?;
    let mut cpio = Cpio::new(Vec::with_capacity(init_bytes.len() + (4 << 20)));
    let io = |e: std::io::Error| io("building the initramfs")(e);
    for dir in ["dev", "proc", "sys", "hangar", "hangar/modules.d"] {
        cpio.add(dir, Entry::Dir).map_err(io)?;
    }
    cpio.add("dev/console", Entry::CharDev(5, 1)).map_err(io)?;
    cpio.add("init", Entry::File(&init_bytes, 0o755))
        .map_err(io)?;
    let mut i = 0;
    for (set, list_name) in [
        (&modules, "hangar/modules"),
        (&network_modules, "hangar/modules.net"),
    ] {
        let mut list = String::new();
        for m in set {
            let bytes = std::fs::read(m).map_err(KernelError::io(m.display().to_string()))?;
            let name = format!(
                "hangar/modules.d/{i:02}-{}",
                m.file_name().unwrap_or_default().to_string_lossy()
            );
            i += 1;
            cpio.add(&name, Entry::File(&bytes, 0o644)).map_err(io)?;
            list.push_str(&format!("/{name}\n"));
        }
        cpio.add(list_name, Entry::File(list.as_bytes(), 0o644))
            .map_err(io)?;
    }
    let bytes = cpio.finish().map_err(io)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(KernelError::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(KernelError::io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// A boot's initramfs: the cached one followed by an archive holding this boot's files, the
/// launch spec (`hangar/launch.json`) and the network's (`hangar/network.json`), as
/// `(path, contents)` (the kernel unpacks concatenated archives in order).
pub fn boot_initrd(base: &Path, files: &[(&str, &[u8])], out: &Path) -> Result<(), KernelError> {
    let mut bytes = std::fs::read(base).map_err(io(format!("reading {}", base.display())))?;
    let mut cpio = Cpio::new(&mut bytes);
    for (name, contents) in files {
        cpio.add(name, Entry::File(contents, 0o600))
            .map_err(io("building the boot's initramfs"))?;
    }
    cpio.finish().map_err(io("building the boot's initramfs"))?;
    std::fs::write(out, &bytes).map_err(io(format!("writing {}", out.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.add("a", Entry::File(b"hello", 0o644)).unwrap();
        let out = cpio.finish().unwrap();
        assert!(out.starts_with(b"070701"));
        // header (110) + "a\0" padded to 112, "hello" padded to 8, then the trailer
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..117], b"hello");
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn modinfo_of_a_non_elf_is_an_error() {
        assert!(modinfo(b"not an elf").is_err());
        assert!(modinfo(b"\x7fELF\x02\x01").is_err());
    }
}
