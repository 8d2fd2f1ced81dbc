//! What the runtimes need to know about the host: machine ids as host names, ELF binaries,
//! cgroup layouts and OOM counters, mounts, processes and memory. Both backends use it; neither
//! reaches into the other.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a binary cannot serve as init inside arbitrary images.
#[derive(Debug, PartialEq, Eq)]
pub enum ElfProblem {
    NotElf,
    Not64Bit,
    /// Dynamically linked: it needs this program interpreter, which an image may lack.
    Dynamic(String),
    Truncated,
}

/// Checks that `bytes` (the start of a file, enough to hold its program headers) are a
/// 64-bit little-endian ELF executable with no `PT_INTERP`, i.e. statically linked.
pub fn check_static_elf(
    bytes: &[u8],
    whole: impl Fn(u64, usize) -> Option<Vec<u8>>,
) -> Result<(), ElfProblem> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(ElfProblem::NotElf);
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(ElfProblem::Not64Bit);
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let phoff = u64::from_le_bytes(
        bytes[0x20..0x28]
            .try_into()
            .map_err(|_| ElfProblem::Truncated)?,
    );
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    if phentsize < 56 {
        return Err(ElfProblem::Truncated);
    }
    let table = whole(phoff, phentsize * phnum).ok_or(ElfProblem::Truncated)?;
    for ph in table.chunks_exact(phentsize) {
        let p_type = u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]);
        if p_type == PT_INTERP {
            let off = u64::from_le_bytes(ph[8..16].try_into().map_err(|_| ElfProblem::Truncated)?);
            let size =
                u64::from_le_bytes(ph[32..40].try_into().map_err(|_| ElfProblem::Truncated)?);
            let interp = whole(off, size.min(4096) as usize)
                .map(|b| {
                    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default())
                        .into_owned()
                })
                .unwrap_or_default();
            return Err(ElfProblem::Dynamic(interp));
        }
    }
    Ok(())
}

/// [`check_static_elf`] on a file.
pub fn check_static_elf_file(path: &Path) -> std::io::Result<Result<(), ElfProblem>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut head = vec![0u8; 64];
    let n = (&file).take(64).read(&mut head)?;
    head.truncate(n);
    let read_at = |off: u64, len: usize| {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, off).ok().map(|_| buf)
    };
    Ok(check_static_elf(&head, read_at))
}

/// Where the memory controller lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroups {
    /// Pure cgroup v2 (the unified hierarchy at this path).
    V2(PathBuf),
    /// v1 controllers (the memory one at this path), possibly beside a controller-less v2
    /// mount (hybrid).
    V1 { root: PathBuf, memory: PathBuf },
}

impl Cgroups {
    pub fn detect() -> Cgroups {
        let root = PathBuf::from("/sys/fs/cgroup");
        let is_v2 = nix::sys::statfs::statfs(&root)
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false);
        if is_v2 {
            Cgroups::V2(root)
        } else {
            let memory = root.join("memory");
            Cgroups::V1 { root, memory }
        }
    }

    /// How many processes the kernel's OOM killer killed in this cgroup (0 when the cgroup
    /// is gone or the counter unreadable).
    pub fn oom_kills(&self, cgroup: &Path) -> u64 {
        let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
        let (file, key) = match self {
            Cgroups::V2(root) => (root.join(rel).join("memory.events"), "oom_kill"),
            Cgroups::V1 { memory, .. } => (memory.join(rel).join("memory.oom_control"), "oom_kill"),
        };
        std::fs::read_to_string(file)
            .map(|s| parse_counter(&s, key))
            .unwrap_or(0)
    }

    /// Every directory this cgroup has in any hierarchy (v1 has one per controller).
    pub fn dirs(&self, cgroup: &Path) -> Vec<PathBuf> {
        let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
        match self {
            Cgroups::V2(root) => vec![root.join(rel)],
            Cgroups::V1 { root, .. } => std::fs::read_dir(root)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path().join(rel))
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The value of `key` in a `key value` per line file (memory.events, memory.oom_control).
pub fn parse_counter(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir` in `mountinfo`, deepest first (the order to unmount them).
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// A process's state letter from /proc (`Z` for a zombie), `None` when it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; the state follows it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Machine ids name directories, cgroups and QEMU processes: 1 to 64 letters, digits, `-`,
/// `_` or `.`, starting with a letter or digit.
pub(crate) fn is_valid_machine_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The host's RAM (MemTotal) in MB; very large when /proc/meminfo cannot be read.
pub fn host_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(u64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters() {
        assert_eq!(
            parse_counter("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            3
        );
        assert_eq!(
            parse_counter(
                "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n",
                "oom_kill"
            ),
            1
        );
        assert_eq!(parse_counter("", "oom_kill"), 0);
    }

    #[test]
    fn mounts_deepest_first() {
        let info = "\
22 1 0:21 / / rw - ext4 /dev/vda rw
90 22 0:50 / /var/lib/h/m1/rootfs rw - overlay overlay rw,lowerdir=/a
91 90 0:51 / /var/lib/h/m1/rootfs/proc rw - proc proc rw
92 22 0:52 / /var/lib/h/m10/rootfs rw - overlay overlay rw
93 22 0:53 / /var/lib/h/m1/with\\040space rw - tmpfs tmpfs rw
";
        assert_eq!(
            mounts_under(info, Path::new("/var/lib/h/m1")),
            vec![
                PathBuf::from("/var/lib/h/m1/rootfs/proc"),
                PathBuf::from("/var/lib/h/m1/rootfs"),
                PathBuf::from("/var/lib/h/m1/with space"),
            ]
        );
    }

    #[test]
    fn static_and_dynamic_binaries() {
        // This test binary is dynamically linked (the host's own toolchain).
        let me = std::env::current_exe().unwrap();
        match check_static_elf_file(&me).unwrap() {
            Err(ElfProblem::Dynamic(interp)) => assert!(interp.contains("ld-linux"), "{interp}"),
            other => panic!("expected a dynamic binary, got {other:?}"),
        }
        let shell_script = std::env::temp_dir().join(format!("hangar-elf-{}", std::process::id()));
        std::fs::write(&shell_script, "#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(
            check_static_elf_file(&shell_script).unwrap(),
            Err(ElfProblem::NotElf)
        );
        std::fs::remove_file(&shell_script).unwrap();
        // A minimal static 64-bit ELF header with one PT_LOAD program header.
        let mut elf = [0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        let whole = |off: u64, len: usize| {
            elf.get(off as usize..off as usize + len)
                .map(<[u8]>::to_vec)
        };
        assert_eq!(check_static_elf(&elf[..64], whole), Ok(()));
    }

    #[test]
    fn proc_state_of_self_and_gone() {
        assert!(matches!(
            proc_state(std::process::id() as i32),
            Some('R' | 'S')
        ));
        assert_eq!(proc_state(i32::MAX), None);
    }
}
