//! Environments, executable lookup and `/etc/hosts`: the pure parts of starting a process.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn key(entry: &str) -> Option<&str> {
    entry
        .split_once('=')
        .map(|(k, _)| k)
        .filter(|k| !k.is_empty())
}

/// The environment a process gets: `given` in order with later entries winning (each key keeps
/// the position of its first occurrence), entries without `=` dropped, then `PATH` and `HOME`
/// (and `TERM` for a terminal) added only when absent.
pub fn build_env(given: &[String], home: &str, tty: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(given.len() + 3);
    for entry in given {
        let Some(k) = key(entry) else { continue };
        match out.iter_mut().find(|e| key(e) == Some(k)) {
            Some(existing) => *existing = entry.clone(),
            None => out.push(entry.clone()),
        }
    }
    let has = |out: &[String], k: &str| out.iter().any(|e| key(e) == Some(k));
    if !has(&out, "PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&out, "HOME") {
        out.push(format!("HOME={home}"));
    }
    if tty && !has(&out, "TERM") {
        out.push("TERM=xterm".into());
    }
    out
}

pub fn lookup_var<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

/// Why a program could not be found; the exit code follows the shell's convention.
#[derive(Debug, PartialEq, Eq)]
pub struct LookupError {
    pub code: i32,
    pub message: String,
}

fn is_executable_file(p: &Path) -> Result<bool, ()> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(m.permissions().mode() & 0o111 != 0),
        Ok(_) => Err(()),
        Err(_) => Err(()),
    }
}

/// Finds `program` in `path` (a `PATH` value) the way a shell does: a name containing `/` is
/// used as given (relative to `cwd`); otherwise the first executable regular file wins.
pub fn find_program(program: &str, path: &str, cwd: &Path) -> Result<PathBuf, LookupError> {
    if program.is_empty() {
        return Err(LookupError {
            code: 127,
            message: "empty command".into(),
        });
    }
    if program.contains('/') {
        // Left to execve, whose errno gives the precise reason.
        return Ok(PathBuf::from(program));
    }
    let mut seen_unexecutable = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(dir)
        };
        let candidate = if dir.is_absolute() {
            dir.join(program)
        } else {
            cwd.join(dir).join(program)
        };
        match is_executable_file(&candidate) {
            Ok(true) => return Ok(candidate),
            Ok(false) => {
                seen_unexecutable.get_or_insert(candidate);
            }
            Err(()) => {}
        }
    }
    Err(match seen_unexecutable {
        Some(p) => LookupError {
            code: 126,
            message: format!("{}: permission denied (not executable)", p.display()),
        },
        None => LookupError {
            code: 127,
            message: format!("\"{program}\": executable file not found in $PATH ({path})"),
        },
    })
}

/// `/etc/hosts` with `127.0.0.1 localhost` and a line for `hostname`, or `None` when it has
/// both already.
pub fn hosts_with(existing: &str, hostname: &str) -> Option<String> {
    let names = |addr: &str| -> Vec<String> {
        existing
            .lines()
            .filter_map(|l| {
                let l = l.split('#').next().unwrap_or("");
                let mut f = l.split_whitespace();
                (f.next() == Some(addr)).then(|| f.map(String::from).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    };
    let v4 = names("127.0.0.1");
    let has_localhost = v4.iter().any(|n| n == "localhost");
    let has_host = hostname.is_empty()
        || existing.lines().any(|l| {
            let l = l.split('#').next().unwrap_or("");
            l.split_whitespace().skip(1).any(|n| n == hostname)
        });
    if has_localhost && has_host {
        return None;
    }
    let mut out = existing.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !has_localhost {
        out.push_str("127.0.0.1\tlocalhost\n");
    }
    if !has_host {
        out.push_str(&format!("127.0.0.1\t{hostname}\n"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn env_adds_path_and_home_only_when_absent() {
        assert_eq!(
            build_env(&s(&["A=1"]), "/home/app", false),
            s(&["A=1", &format!("PATH={DEFAULT_PATH}"), "HOME=/home/app"])
        );
        assert_eq!(
            build_env(&s(&["PATH=/x", "HOME=/h"]), "/home/app", false),
            s(&["PATH=/x", "HOME=/h"])
        );
    }

    #[test]
    fn later_entries_win_in_first_position() {
        let env = build_env(&s(&["A=1", "B=2", "A=3", "NOEQ", "=bad", "C="]), "/", false);
        assert_eq!(&env[..3], &s(&["A=3", "B=2", "C="])[..]);
        assert_eq!(lookup_var(&env, "A"), Some("3"));
        assert_eq!(lookup_var(&env, "C"), Some(""));
        assert_eq!(lookup_var(&env, "NOEQ"), None);
    }

    #[test]
    fn term_for_terminals() {
        assert!(build_env(&[], "/", true).contains(&"TERM=xterm".to_string()));
        assert!(!build_env(&[], "/", false)
            .iter()
            .any(|e| e.starts_with("TERM=")));
        assert_eq!(
            lookup_var(&build_env(&s(&["TERM=vt100"]), "/", true), "TERM"),
            Some("vt100")
        );
    }

    #[test]
    fn finds_programs_in_path() {
        let dir = std::env::temp_dir().join(format!("hangar-init-test-{}", std::process::id()));
        let a = dir.join("a");
        let b = dir.join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::set_permissions(a.join("tool"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", a.display(), b.display());

        assert_eq!(
            find_program("tool", &path, Path::new("/")).unwrap(),
            b.join("tool")
        );
        let only_a = a.display().to_string();
        assert_eq!(
            find_program("tool", &only_a, Path::new("/"))
                .unwrap_err()
                .code,
            126
        );
        let missing = find_program("nope", &path, Path::new("/")).unwrap_err();
        assert_eq!(missing.code, 127);
        assert!(
            missing.message.contains("executable file not found"),
            "{}",
            missing.message
        );
        // Relative PATH entries are relative to the working directory.
        assert_eq!(
            find_program("tool", "b", &dir).unwrap(),
            dir.join("b").join("tool")
        );
        assert_eq!(
            find_program("./x/y", &path, Path::new("/")).unwrap(),
            PathBuf::from("./x/y")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hosts_gets_localhost_and_hostname() {
        assert_eq!(
            hosts_with("", "m1").unwrap(),
            "127.0.0.1\tlocalhost\n127.0.0.1\tm1\n"
        );
        assert_eq!(
            hosts_with("127.0.0.1 localhost\n::1 localhost", "m1").unwrap(),
            "127.0.0.1 localhost\n::1 localhost\n127.0.0.1\tm1\n"
        );
        assert_eq!(
            hosts_with("127.0.0.1 localhost\n10.0.0.1 m1 # me\n", "m1"),
            None
        );
        assert_eq!(
            hosts_with("# 127.0.0.1 localhost m1\n", "m1").unwrap(),
            "# 127.0.0.1 localhost m1\n127.0.0.1\tlocalhost\n127.0.0.1\tm1\n"
        );
    }
}
