//! Debian's `ip` (iproute2) and `nft` (nftables), run synchronously.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::NetError;

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Command(format!("cannot run {program}: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| NetError::Command(format!("writing to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Command(format!("waiting for {program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

pub fn ip(args: &[&str]) -> Result<(), NetError> {
    run("ip", args, None)
}

/// Runs `ip` commands, one a line, in the server's own namespace.
pub fn ip_batch_host(batch: &str) -> Result<(), NetError> {
    run("ip", &["-batch", "-"], Some(batch))
}

/// The names of the links in the server's namespace (empty when `ip` fails).
pub fn link_names() -> Vec<String> {
    let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    // "3: name@peer: <FLAGS> ..."
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

pub fn nft(script: &str) -> Result<(), NetError> {
    run("nft", &["-f", "-"], Some(script))
}

/// Asks the kernel (in the calling thread's namespace), not `/sys/class/net`: sysfs shows the
/// namespace it was mounted in, which need not be the server's.
pub fn link_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

pub fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = std::path::Path::new("/proc/sys").join(key);
    std::fs::write(&path, value)
        .map_err(|e| NetError::Command(format!("cannot set {}: {e}", path.display())))
}
