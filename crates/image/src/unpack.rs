//! Unpacks one layer tar into an empty directory in overlayfs lower-dir format. Layers are
//! stacked by overlayfs, not flattened, so OCI whiteouts become what overlayfs understands:
//! `.wh.NAME` a 0:0 character device named NAME, `.wh..wh..opq` the xattr
//! `trusted.overlay.opaque=y` on its directory.
//!
//! Every entry's path is validated here rather than trusting the tar crate's `unpack`: no
//! absolute paths, no `..`, nothing written through a symlink, no hardlink or relative
//! symlink leading out of the layer, no device nodes. The directory is fresh and private to
//! this unpack, so what it holds is exactly what `Tree` recorded; we check that record
//! instead of the disk, and open files with O_NOFOLLOW | O_EXCL as a second guard.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tracing::warn;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping (`.wh..wh.plnk`...) with no meaning here.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

#[derive(Debug)]
pub(crate) enum UnpackError {
    /// The layer is bad: the message says which entry and why.
    Invalid(String),
    /// Writing the layer to disk failed.
    Io { context: String, source: io::Error },
}

impl UnpackError {
    fn io(context: impl Into<String>, source: io::Error) -> UnpackError {
        UnpackError::Io {
            context: context.into(),
            source,
        }
    }
}

type Result<T> = std::result::Result<T, UnpackError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    Symlink,
    Other,
}

/// What this unpack has created, by path relative to the layer root.
struct Tree<'a> {
    root: &'a Path,
    kinds: BTreeMap<PathBuf, Kind>,
}

impl Tree<'_> {
    /// Creates the missing ancestors of `rel` as 0755 root-owned directories; fails if one
    /// of them is a symlink or not a directory.
    fn ensure_parents(&mut self, rel: &Path, raw: &Path) -> Result<()> {
        let mut prefix = PathBuf::new();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            prefix.push(c);
            match self.kinds.get(&prefix) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(UnpackError::Invalid(format!(
                        "entry {} would be written through the symlink {}",
                        show(raw),
                        show(&prefix)
                    )))
                }
                Some(Kind::Other) => {
                    return Err(UnpackError::Invalid(format!(
                        "entry {} is below {}, which is not a directory",
                        show(raw),
                        show(&prefix)
                    )))
                }
                None => {
                    let path = self.root.join(&prefix);
                    make_dir(&path)?;
                    set_mode(&path, 0o755)?;
                    self.kinds.insert(prefix.clone(), Kind::Dir);
                }
            }
        }
        Ok(())
    }

    /// Makes room for a new entry at `rel` (a later entry of a tar replaces an earlier one).
    /// Returns true when `rel` is an existing directory and the new entry is one too: then
    /// the directory and its contents stay, and only its metadata changes.
    fn make_room(&mut self, rel: &Path, new_is_dir: bool) -> Result<bool> {
        let Some(&kind) = self.kinds.get(rel) else {
            return Ok(false);
        };
        if kind == Kind::Dir && new_is_dir {
            return Ok(true);
        }
        let path = self.root.join(rel);
        let removed = if kind == Kind::Dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| UnpackError::io(format!("cannot replace {}", path.display()), e))?;
        let doomed: Vec<PathBuf> = self
            .kinds
            .range(rel.to_path_buf()..)
            .map(|(p, _)| p.clone())
            .take_while(|p| p.starts_with(rel))
            .collect();
        for p in doomed {
            self.kinds.remove(&p);
        }
        Ok(false)
    }
}

/// Unpacks the tar read from `reader` into `dest` (an existing, empty directory). Returns the
/// number of bytes of file content written. Reads only up to the tar's end-of-archive
/// marker; the caller drains the rest if it hashes the whole stream.
pub(crate) fn unpack<R: Read>(reader: &mut R, dest: &Path) -> Result<u64> {
    // The layer root becomes the container's `/` where this layer is on top; a tempdir's 0700
    // would lock every other user out.
    set_mode(dest, 0o755)?;
    let mut archive = tar::Archive::new(reader);
    let mut tree = Tree {
        root: dest,
        kinds: BTreeMap::new(),
    };
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let mut size = 0u64;
    let entries = archive.entries().map_err(bad_tar)?;
    for entry in entries {
        let mut entry = entry.map_err(bad_tar)?;
        let raw = entry.path().map_err(bad_tar)?.into_owned();
        let rel = clean(&raw)
            .map_err(|why| UnpackError::Invalid(format!("entry {} {why}", show(&raw))))?;
        let header = entry.header();
        let ty = header.entry_type();
        let mode = header.mode().map_err(bad_tar)? & 0o7777;
        let uid = header.uid().map_err(bad_tar)?;
        let gid = header.gid().map_err(bad_tar)?;
        let mtime = header.mtime().map_err(bad_tar)?;
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) => (u, g),
            _ => {
                return Err(UnpackError::Invalid(format!(
                    "entry {} has an out-of-range owner {uid}:{gid}",
                    show(&raw)
                )))
            }
        };
        let xattrs = xattrs_of(&mut entry, &raw)?;

        let name = rel.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            whiteout(&mut tree, &rel, &raw, name)?;
            continue;
        }
        let path = dest.join(&rel);
        if rel.as_os_str().is_empty() {
            // "./": the layer root itself.
            if !ty.is_dir() {
                return Err(UnpackError::Invalid(format!(
                    "entry {} replaces the layer root with a non-directory",
                    show(&raw)
                )));
            }
            chown(&path, uid, gid)?;
            set_mode(&path, mode)?;
            set_xattrs(&path, &xattrs)?;
            dir_times.push((rel, mtime));
            continue;
        }
        tree.ensure_parents(&rel, &raw)?;
        match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                tree.make_room(&rel, false)?;
                let expected = entry.size();
                let written = write_file(&mut entry, &path, &raw, uid, gid, mode, mtime)?;
                if written != expected {
                    return Err(UnpackError::Invalid(format!(
                        "entry {} is truncated ({written} of {expected} bytes)",
                        show(&raw)
                    )));
                }
                size += written;
                set_xattrs(&path, &xattrs)?;
                tree.kinds.insert(rel, Kind::Other);
            }
            tar::EntryType::Directory => {
                if !tree.make_room(&rel, true)? {
                    make_dir(&path)?;
                    tree.kinds.insert(rel.clone(), Kind::Dir);
                }
                chown(&path, uid, gid)?;
                set_mode(&path, mode)?;
                set_xattrs(&path, &xattrs)?;
                // Set last: creating children changes a directory's mtime.
                dir_times.push((rel, mtime));
            }
            tar::EntryType::Symlink => {
                let target = link_target(&entry, &raw)?;
                check_symlink_target(&rel, &target).map_err(|why| {
                    UnpackError::Invalid(format!(
                        "symlink {} -> {} {why}",
                        show(&raw),
                        show(&target)
                    ))
                })?;
                tree.make_room(&rel, false)?;
                std::os::unix::fs::symlink(&target, &path).map_err(|e| {
                    UnpackError::io(format!("cannot create symlink {}", path.display()), e)
                })?;
                chown(&path, uid, gid)?;
                set_time_nofollow(&path, mtime)?;
                tree.kinds.insert(rel, Kind::Symlink);
            }
            tar::EntryType::Link => {
                let raw_target = link_target(&entry, &raw)?;
                let target = clean(&raw_target).map_err(|why| {
                    UnpackError::Invalid(format!(
                        "hardlink {} -> {}: the target {why}",
                        show(&raw),
                        show(&raw_target)
                    ))
                })?;
                match tree.kinds.get(&target) {
                    Some(Kind::Other | Kind::Symlink) if target != rel => {}
                    Some(Kind::Dir) => {
                        return Err(UnpackError::Invalid(format!(
                            "hardlink {} -> {} points at a directory",
                            show(&raw),
                            show(&raw_target)
                        )))
                    }
                    _ => {
                        return Err(UnpackError::Invalid(format!(
                            "hardlink {} -> {} points at nothing earlier in the layer",
                            show(&raw),
                            show(&raw_target)
                        )))
                    }
                }
                tree.make_room(&rel, false)?;
                // linkat(2) without AT_SYMLINK_FOLLOW: a link to a symlink is a link to the symlink itself.
                fs::hard_link(dest.join(&target), &path).map_err(|e| {
                    UnpackError::io(format!("cannot create hardlink {}", path.display()), e)
                })?;
                tree.kinds.insert(rel, Kind::Other);
            }
            tar::EntryType::Fifo => {
                tree.make_room(&rel, false)?;
                nix::sys::stat::mknod(&path, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
                    .map_err(|e| {
                        UnpackError::io(format!("cannot create fifo {}", path.display()), e.into())
                    })?;
                chown(&path, uid, gid)?;
                set_mode(&path, mode)?;
                set_time_nofollow(&path, mtime)?;
                tree.kinds.insert(rel, Kind::Other);
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(UnpackError::Invalid(format!(
                    "entry {} is a device node, which an image may not contain",
                    show(&raw)
                )))
            }
            tar::EntryType::XGlobalHeader => {}
            other => {
                return Err(UnpackError::Invalid(format!(
                    "entry {} has unsupported tar type {other:?}",
                    show(&raw)
                )))
            }
        }
    }
    for (rel, mtime) in dir_times {
        // A later entry may have replaced the directory (or one above it).
        if rel.as_os_str().is_empty() || tree.kinds.get(&rel) == Some(&Kind::Dir) {
            set_time_nofollow(&dest.join(rel), mtime)?;
        }
    }
    Ok(size)
}

fn whiteout(tree: &mut Tree<'_>, rel: &Path, raw: &Path, name: &[u8]) -> Result<()> {
    let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    tree.ensure_parents(rel, raw)?;
    if name == OPAQUE_MARKER.as_bytes() {
        let dir = tree.root.join(&parent);
        return set_xattr(&dir, b"trusted.overlay.opaque", b"y")
            .map_err(|e| UnpackError::io(format!("cannot mark {} opaque", dir.display()), e));
    }
    if name.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
        return Ok(());
    }
    let victim = &name[WHITEOUT_PREFIX.len()..];
    if victim.is_empty() || victim == b"." || victim == b".." {
        return Err(UnpackError::Invalid(format!(
            "whiteout {} names no file",
            show(raw)
        )));
    }
    let target = parent.join(OsStr::from_bytes(victim));
    tree.make_room(&target, false)?;
    let path = tree.root.join(&target);
    // A 0:0 character device is overlayfs's whiteout.
    nix::sys::stat::mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| {
        UnpackError::io(
            format!("cannot create whiteout {}", path.display()),
            e.into(),
        )
    })?;
    tree.kinds.insert(target, Kind::Other);
    Ok(())
}

/// A tar path made relative and checked: no root, no `..`; `.` components dropped. The
/// empty path is the layer root.
fn clean(raw: &Path) -> std::result::Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
            Component::ParentDir => return Err("has a `..` component"),
        }
    }
    Ok(out)
}

/// A relative symlink target must stay inside the layer when resolved (lexically) from the
/// link's directory. Absolute targets are normal in images: they are resolved inside the
/// machine's root, never by us.
fn check_symlink_target(rel: &Path, target: &Path) -> std::result::Result<(), &'static str> {
    if target.as_os_str().is_empty() {
        return Err("has an empty target");
    }
    if target.is_absolute() {
        return Ok(());
    }
    let mut depth = rel.parent().map(|p| p.components().count()).unwrap_or(0) as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err("leads out of the layer");
                }
            }
            Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    Ok(())
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, raw: &Path) -> Result<PathBuf> {
    entry
        .link_name()
        .map_err(bad_tar)?
        .map(|t| t.into_owned())
        .ok_or_else(|| UnpackError::Invalid(format!("link {} has no target", show(raw))))
}

fn write_file<R: Read>(
    entry: &mut R,
    path: &Path,
    raw: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
) -> Result<u64> {
    let io_err = |what: &str, e| UnpackError::io(format!("cannot {what} {}", path.display()), e);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io_err("create", e))?;
    let mut buf = vec![0u8; 128 * 1024];
    let mut written = 0u64;
    loop {
        // Read errors are the layer's fault (truncated or corrupt stream), write errors ours.
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(UnpackError::Invalid(format!(
                    "entry {} cannot be read: {e}",
                    show(raw)
                )))
            }
        };
        file.write_all(&buf[..n]).map_err(|e| io_err("write", e))?;
        written += n as u64;
    }
    // Owner before mode: chown clears setuid/setgid bits.
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| io_err("chown", e))?;
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|e| io_err("chmod", e))?;
    let t = UNIX_EPOCH + Duration::from_secs(mtime);
    file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
        .map_err(|e| io_err("set times of", e))?;
    Ok(written)
}

fn xattrs_of<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw: &Path,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(exts) = entry.pax_extensions().map_err(bad_tar)? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(bad_tar)?;
        let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        // trusted.* (overlay's own metadata among them) would let a layer forge whiteouts or
        // redirects; only the unprivileged and security namespaces are kept.
        if name.starts_with(b"user.") || name.starts_with(b"security.") {
            out.push((name.to_vec(), ext.value_bytes().to_vec()));
        } else {
            warn!(entry = %show(raw), xattr = %String::from_utf8_lossy(name), "ignoring an xattr outside user.* and security.*");
        }
    }
    Ok(out)
}

fn set_xattrs(path: &Path, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    for (name, value) in xattrs {
        set_xattr(path, name, value).map_err(|e| {
            UnpackError::io(
                format!(
                    "cannot set xattr {} on {}",
                    String::from_utf8_lossy(name),
                    path.display()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let n = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `p` and `n` are NUL-terminated and live across the call; `value` is a live
    // slice whose pointer and length are passed together. lsetxattr does not follow symlinks.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir(path)
        .map_err(|e| UnpackError::io(format!("cannot create directory {}", path.display()), e))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| UnpackError::io(format!("cannot chown {}", path.display()), e))
}

/// Only for paths known not to be symlinks (chmod follows them).
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|e| UnpackError::io(format!("cannot chmod {}", path.display()), e))
}

fn set_time_nofollow(path: &Path, mtime: u64) -> Result<()> {
    let ts = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &ts,
        &ts,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| UnpackError::io(format!("cannot set times of {}", path.display()), e.into()))
}

fn bad_tar(e: io::Error) -> UnpackError {
    UnpackError::Invalid(format!("is not a valid tar stream: {e}"))
}

fn show(p: &Path) -> String {
    format!("{:?}", p.as_os_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A tar entry whose name and link name are written raw, bypassing the tar crate's own
    /// path checks, so that hostile layers can be built.
    struct Raw<'a> {
        name: &'a str,
        ty: tar::EntryType,
        link: &'a str,
        data: &'a [u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    }

    fn e<'a>(name: &'a str, ty: tar::EntryType) -> Raw<'a> {
        Raw {
            name,
            ty,
            link: "",
            data: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
        }
    }

    fn file<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
        Raw {
            data,
            ..e(name, tar::EntryType::Regular)
        }
    }

    fn dir(name: &str) -> Raw<'_> {
        Raw {
            mode: 0o755,
            ..e(name, tar::EntryType::Directory)
        }
    }

    fn link<'a>(name: &'a str, ty: tar::EntryType, target: &'a str) -> Raw<'a> {
        Raw {
            link: target,
            mode: 0o777,
            ..e(name, ty)
        }
    }

    fn tar_of(entries: &[Raw<'_>]) -> Vec<u8> {
        tar_with(entries, &[])
    }

    /// `pax` adds PAX records before the entry of the same index.
    fn tar_with(entries: &[Raw<'_>], pax: &[(usize, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (i, r) in entries.iter().enumerate() {
            let recs: Vec<(&str, &[u8])> = pax
                .iter()
                .filter(|p| p.0 == i)
                .map(|p| (p.1, p.2))
                .collect();
            if !recs.is_empty() {
                b.append_pax_extensions(recs).unwrap();
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(r.ty);
            h.set_mode(r.mode);
            h.set_uid(r.uid);
            h.set_gid(r.gid);
            h.set_mtime(r.mtime);
            h.set_size(r.data.len() as u64);
            let old = h.as_old_mut();
            old.name[..r.name.len()].copy_from_slice(r.name.as_bytes());
            old.linkname[..r.link.len()].copy_from_slice(r.link.as_bytes());
            h.set_cksum();
            b.append(&h, r.data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack_into(entries: &[Raw<'_>]) -> (tempfile::TempDir, Result<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_of(entries);
        let r = unpack(&mut bytes.as_slice(), dir.path());
        (dir, r)
    }

    fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: valid C strings and a live buffer of the stated length.
        let rc =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (rc >= 0).then(|| buf[..rc as usize].to_vec())
    }

    #[test]
    fn files_dirs_owners_modes_and_times() {
        let (d, r) = unpack_into(&[
            dir("etc/"),
            Raw {
                uid: 1000,
                gid: 1001,
                mode: 0o600,
                ..file("etc/secret", b"hush")
            },
            Raw {
                mode: 0o4755,
                ..file("bin/su", b"#!")
            },
            Raw {
                mode: 0o1777,
                ..dir("tmp")
            },
            Raw {
                mode: 0o640,
                ..e("run/pipe", tar::EntryType::Fifo)
            },
            Raw {
                mode: 0o700,
                uid: 5,
                gid: 6,
                mtime: 1_234_567_890,
                ..dir("./home/x/")
            },
        ]);
        assert_eq!(r.unwrap(), 6);
        let root = d.path();
        let secret = fs::metadata(root.join("etc/secret")).unwrap();
        assert_eq!(
            (secret.uid(), secret.gid(), secret.mode() & 0o7777),
            (1000, 1001, 0o600)
        );
        assert_eq!(secret.mtime(), 1_600_000_000);
        assert_eq!(fs::read(root.join("etc/secret")).unwrap(), b"hush");
        assert_eq!(
            fs::metadata(root.join("bin/su")).unwrap().mode() & 0o7777,
            0o4755,
            "setuid kept"
        );
        assert_eq!(
            fs::metadata(root.join("bin")).unwrap().mode() & 0o7777,
            0o755,
            "implicit parent"
        );
        assert_eq!(
            fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        let fifo = fs::symlink_metadata(root.join("run/pipe")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o640);
        let home = fs::metadata(root.join("home/x")).unwrap();
        assert_eq!(
            (home.uid(), home.gid(), home.mode() & 0o7777, home.mtime()),
            (5, 6, 0o700, 1_234_567_890)
        );
        assert_eq!(
            fs::metadata(root).unwrap().mode() & 0o7777,
            0o755,
            "layer root is traversable"
        );
    }

    #[test]
    fn whiteouts_become_0_0_char_devices_and_opaque_dirs_get_the_xattr() {
        let (d, r) = unpack_into(&[
            dir("etc"),
            e("etc/.wh.motd", tar::EntryType::Regular),
            e("var/cache/.wh..wh..opq", tar::EntryType::Regular),
            e("var/.wh..wh.plnk", tar::EntryType::Regular),
            file("var/cache/new", b"n"),
        ]);
        r.unwrap();
        let wh = fs::symlink_metadata(d.path().join("etc/motd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!d.path().join("etc/.wh.motd").exists());
        assert_eq!(
            get_xattr(&d.path().join("var/cache"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert!(!d.path().join("var/cache/.wh..wh..opq").exists());
        assert!(!d.path().join("var/.wh..wh.plnk").exists());
        assert_eq!(fs::read(d.path().join("var/cache/new")).unwrap(), b"n");
        assert_eq!(
            get_xattr(&d.path().join("etc"), "trusted.overlay.opaque"),
            None
        );
    }

    #[test]
    fn opaque_marker_survives_a_later_entry_for_its_directory() {
        let (d, r) = unpack_into(&[
            e("data/.wh..wh..opq", tar::EntryType::Regular),
            Raw {
                mode: 0o750,
                ..dir("data")
            },
        ]);
        r.unwrap();
        assert_eq!(
            get_xattr(&d.path().join("data"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            fs::metadata(d.path().join("data")).unwrap().mode() & 0o7777,
            0o750
        );
    }

    #[test]
    fn symlinks_and_hardlinks() {
        let (d, r) = unpack_into(&[
            Raw {
                mode: 0o755,
                ..file("bin/busybox", b"ELF")
            },
            link("bin/sh", tar::EntryType::Symlink, "busybox"),
            link("usr/bin/env", tar::EntryType::Symlink, "/bin/busybox"),
            link("usr/lib/up", tar::EntryType::Symlink, "../../bin/busybox"),
            link("bin/ls", tar::EntryType::Link, "bin/busybox"),
            link("bin/cat", tar::EntryType::Link, "./bin/busybox"),
        ]);
        r.unwrap();
        let root = d.path();
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::read_link(root.join("usr/bin/env")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(
            fs::read_link(root.join("usr/lib/up")).unwrap(),
            Path::new("../../bin/busybox")
        );
        let bb = fs::metadata(root.join("bin/busybox")).unwrap();
        let ls = fs::metadata(root.join("bin/ls")).unwrap();
        assert_eq!((bb.ino(), bb.nlink()), (ls.ino(), 3));
        assert_eq!(fs::read(root.join("bin/cat")).unwrap(), b"ELF");
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let (d, r) = unpack_into(&[
            file("a", b"1"),
            file("a", b"2"),
            file("d/x", b"x"),
            file("d", b"now a file"),
            dir("p/q"),
            file("p", b"p replaced a tree"),
            dir("e"),
            file("e/kept", b"k"),
            dir("e"),
        ]);
        r.unwrap();
        assert_eq!(fs::read(d.path().join("a")).unwrap(), b"2");
        assert_eq!(fs::read(d.path().join("d")).unwrap(), b"now a file");
        assert_eq!(fs::read(d.path().join("p")).unwrap(), b"p replaced a tree");
        assert_eq!(fs::read(d.path().join("e/kept")).unwrap(), b"k");
    }

    #[test]
    fn xattrs_are_kept_in_safe_namespaces_only() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tar_with(
            &[file("bin/ping", b"p")],
            &[
                (0, "SCHILY.xattr.user.note", b"hello"),
                (0, "SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ],
        );
        unpack(&mut bytes.as_slice(), dir.path()).unwrap();
        assert_eq!(
            get_xattr(&dir.path().join("bin/ping"), "user.note").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            get_xattr(&dir.path().join("bin/ping"), "trusted.overlay.opaque"),
            None
        );
    }

    #[test]
    fn path_traversal_is_rejected_in_every_form() {
        use tar::EntryType::*;
        let cases: Vec<(Vec<Raw<'_>>, &str)> = vec![
            (vec![file("/etc/passwd", b"x")], "absolute path"),
            (vec![file("../escape", b"x")], "`..`"),
            (vec![file("a/../../escape", b"x")], "`..`"),
            (vec![file("./a/./../b", b"x")], "`..`"),
            (vec![link("evil", Link, "../outside")], "`..`"),
            (vec![link("evil", Link, "/etc/shadow")], "absolute path"),
            (vec![link("evil", Link, "nowhere")], "nothing earlier"),
            (vec![dir("d"), link("evil", Link, "d")], "directory"),
            (vec![link("up", Symlink, "..")], "leads out"),
            (vec![link("a/b/up", Symlink, "../../../etc")], "leads out"),
            (vec![link("a/x", Symlink, "b/../../../etc")], "leads out"),
            (
                vec![link("link", Symlink, "/etc"), file("link/passwd", b"x")],
                "through the symlink",
            ),
            (
                vec![link("l", Symlink, "sub"), dir("sub"), file("l/f", b"x")],
                "through the symlink",
            ),
            (
                vec![link("l", Symlink, "/tmp"), e("l/.wh.x", Regular)],
                "through the symlink",
            ),
            (
                vec![link("l", Symlink, "/tmp"), link("l/h", Link, "l")],
                "through the symlink",
            ),
            (
                vec![
                    link("l", Symlink, "/"),
                    file("x", b"1"),
                    link("y", Link, "l/x"),
                ],
                "nothing earlier",
            ),
            (vec![file("f", b"x"), file("f/g", b"y")], "not a directory"),
            (vec![e("dev/sda", Block)], "device node"),
            (vec![e("dev/null", Char)], "device node"),
            (vec![e(".wh..", Regular)], "names no file"),
            (vec![file("./", b"x")], "layer root"),
        ];
        for (entries, want) in cases {
            let names: Vec<&str> = entries.iter().map(|r| r.name).collect();
            let (d, r) = unpack_into(&entries);
            match r {
                Err(UnpackError::Invalid(msg)) => {
                    assert!(msg.contains(want), "{names:?}: {msg:?} lacks {want:?}")
                }
                other => panic!("{names:?}: expected Invalid containing {want:?}, got {other:?}"),
            }
            // Nothing was written outside the layer directory.
            assert!(d
                .path()
                .parent()
                .unwrap()
                .join("escape")
                .symlink_metadata()
                .is_err());
        }
    }

    #[test]
    fn relative_symlinks_that_stay_inside_are_fine() {
        assert!(check_symlink_target(Path::new("a/b/c"), Path::new("../../x")).is_ok());
        assert!(check_symlink_target(Path::new("a/b/c"), Path::new("../../../x")).is_err());
        assert!(check_symlink_target(Path::new("c"), Path::new("./x/../y")).is_ok());
        assert!(check_symlink_target(Path::new("c"), Path::new("x/../../y")).is_err());
        assert!(
            check_symlink_target(Path::new("c"), Path::new("/../../etc")).is_ok(),
            "absolute: resolved in the machine"
        );
        assert!(check_symlink_target(Path::new("c"), Path::new("")).is_err());
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let dir = tempfile::tempdir().unwrap();
        let junk = vec![0x55u8; 1024];
        match unpack(&mut junk.as_slice(), dir.path()) {
            Err(UnpackError::Invalid(msg)) => assert!(msg.contains("not a valid tar"), "{msg}"),
            other => panic!("{other:?}"),
        }
        // A truncated file body is the layer's fault, not an I/O error of ours.
        let mut bytes = tar_of(&[file("big", &[7u8; 4096])]);
        bytes.truncate(512 + 1000);
        match unpack(&mut bytes.as_slice(), tempfile::tempdir().unwrap().path()) {
            Err(UnpackError::Invalid(msg)) => assert!(msg.contains("big"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gnu_long_names_work() {
        let long = format!("{}/file", "d".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, &long, &b"hi"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack(&mut bytes.as_slice(), dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join(&long)).unwrap(), b"hi");
    }
}
