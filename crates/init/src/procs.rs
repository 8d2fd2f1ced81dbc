//! The machine's processes as `ps` shows them, read from `/proc`.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use hangar_proto::ProcessInfo;

/// Every process of the machine (PID 1 included), by pid.
pub fn list() -> Vec<ProcessInfo> {
    list_in(Path::new("/proc"))
}

fn list_in(proc_root: &Path) -> Vec<ProcessInfo> {
    let ticks = clock_ticks();
    let uptime_ms = fs::read_to_string(proc_root.join("uptime"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0);
    let page = page_size();
    let sockets = listening_sockets(&proc_root.join("net"));

    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(proc_root) else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // A process may exit while we read it: skip what vanished.
        let Some(stat) = fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue;
        };
        let command = match fs::read(dir.join("cmdline")) {
            Ok(raw) if !raw.is_empty() => raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            _ => format!("[{}]", stat.comm),
        };
        let cwd = fs::read_link(dir.join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut listening = Vec::new();
        if let Ok(fds) = fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                let Ok(target) = fs::read_link(fd.path()) else {
                    continue;
                };
                let target = target.to_string_lossy();
                let inode = target
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u64>().ok());
                if let Some(found) = inode.and_then(|i| sockets.get(&i)) {
                    if !listening.contains(found) {
                        listening.push(found.clone());
                    }
                }
            }
        }
        let started_ms = stat.starttime * 1000 / ticks;
        out.push(ProcessInfo {
            pid,
            command,
            cwd,
            utime: stat.utime,
            stime: stat.stime,
            rss_bytes: stat.rss_pages.max(0) as u64 * page,
            age_ms: uptime_ms.saturating_sub(started_ms),
            listening,
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

struct Stat {
    comm: String,
    utime: u64,
    stime: u64,
    starttime: u64,
    rss_pages: i64,
}

/// `/proc/PID/stat`: the command name is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(s: &str) -> Option<Stat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| rest.get(n - 3).copied();
    Some(Stat {
        comm,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        starttime: field(22)?.parse().ok()?,
        rss_pages: field(24)?.parse().ok()?,
    })
}

/// Listening TCP sockets and bound UDP sockets by inode, from `/proc/net/{tcp,tcp6,udp,udp6}`.
fn listening_sockets(net: &Path) -> HashMap<u64, (String, String)> {
    let mut out = HashMap::new();
    for (file, proto, v6, wanted_state) in [
        ("tcp", "tcp", false, "0A"),
        ("tcp6", "tcp", true, "0A"),
        ("udp", "udp", false, "07"),
        ("udp6", "udp", true, "07"),
    ] {
        let Ok(text) = fs::read_to_string(net.join(file)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != wanted_state {
                continue;
            }
            let (Some(address), Ok(inode)) = (parse_address(cols[1], v6), cols[9].parse::<u64>())
            else {
                continue;
            };
            out.insert(inode, (proto.to_string(), address));
        }
    }
    out
}

/// `0100007F:1F90` (little-endian words, hex port) → `127.0.0.1:8080`.
fn parse_address(s: &str, v6: bool) -> Option<String> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let bytes: Vec<u8> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<Vec<u32>>>()?
        .into_iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    if v6 {
        let octets: [u8; 16] = bytes.try_into().ok()?;
        Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(octets)))
    } else {
        let octets: [u8; 4] = bytes.try_into().ok()?;
        Some(format!("{}:{port}", std::net::Ipv4Addr::from(octets)))
    }
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .filter(|p| *p > 0)
        .unwrap_or(4096) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names() {
        let s = "42 (my (odd) prog) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 500 1000 25 18446744073709551615";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.comm, "my (odd) prog");
        assert_eq!(
            (st.utime, st.stime, st.starttime, st.rss_pages),
            (7, 3, 500, 25)
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn kernel_socket_addresses() {
        assert_eq!(
            parse_address("0100007F:1F90", false).unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(parse_address("00000000:0050", false).unwrap(), "0.0.0.0:80");
        assert_eq!(
            parse_address("00000000000000000000000001000000:0016", true).unwrap(),
            "[::1]:22"
        );
        assert!(parse_address("zz:1", false).is_none());
    }

    #[test]
    fn this_process_is_listed_with_its_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        let procs = list();
        let mine = procs
            .iter()
            .find(|p| p.pid == me)
            .expect("this test's process");
        assert!(mine.rss_bytes > 0);
        assert!(!mine.command.is_empty());
        assert!(
            mine.listening
                .contains(&("tcp".to_string(), format!("127.0.0.1:{port}"))),
            "{:?}",
            mine.listening
        );
    }
}
