//! Users and groups, resolved against the machine's own `/etc/passwd` and `/etc/group`.
//!
//! Init is a static glibc binary, which cannot use NSS (`getpwnam` and friends would try to
//! load shared modules), so it reads the files itself, as runc and Docker do.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Who a process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary group first.
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct UserError(pub String);

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `name:password:uid:gid:gecos:home:shell` lines; comments and malformed lines are skipped,
/// as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).map(|h| h.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// `name:password:gid:member,member` lines.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members,
            })
        })
        .collect()
}

fn numeric(s: &str) -> Option<Result<u32, UserError>> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        Some(
            s.parse()
                .map_err(|_| UserError(format!("id {s} is out of range"))),
        )
    } else {
        None
    }
}

/// Resolves `""`/`root`, `name`, `uid`, `name:group`, `uid:gid` (and the mixed forms) the way
/// Docker does: a numeric uid need not exist in `/etc/passwd` (its group is then 0 and its home
/// `/`), a name must.
pub fn resolve(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<User, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let entry = match numeric(user_part) {
        Some(uid) => {
            let uid = uid?;
            passwd
                .iter()
                .find(|p| p.uid == uid)
                .cloned()
                .unwrap_or(PasswdEntry {
                    name: String::new(),
                    uid,
                    gid: 0,
                    home: if uid == 0 { "/root".into() } else { "/".into() },
                })
        }
        None => passwd
            .iter()
            .find(|p| p.name == user_part)
            .cloned()
            .ok_or_else(|| UserError(format!("user \"{user_part}\" not found in /etc/passwd")))?,
    };

    let gid = match group_part {
        None => entry.gid,
        Some("") => return Err(UserError(format!("user \"{spec}\": empty group"))),
        Some(g) => match numeric(g) {
            Some(gid) => gid?,
            None => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError(format!("group \"{g}\" not found in /etc/group")))?,
        },
    };

    let mut all = vec![gid];
    if !entry.name.is_empty() {
        for g in groups.iter().filter(|g| g.members.contains(&entry.name)) {
            if !all.contains(&g.gid) {
                all.push(g.gid);
            }
        }
    }
    let home = if entry.home.is_empty() {
        "/".to_string()
    } else {
        entry.home
    };
    Ok(User {
        uid: entry.uid,
        gid,
        groups: all,
        home,
    })
}

/// Reads the machine's files and resolves `spec`. Missing files are empty databases (a
/// `FROM scratch` image has none), so numeric users still work.
pub fn resolve_in_root(spec: &str) -> Result<User, UserError> {
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(UserError(format!("reading {path}: {e}"))),
    };
    resolve(
        spec,
        &parse_passwd(&read("/etc/passwd")?),
        &parse_group(&read("/etc/group")?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line
app:x:1000:1000:App,,,:/home/app:/bin/sh
nohome:x:1001:1001::
";
    const GROUP: &str = "\
root:x:0:
staff:x:50:app,other
app:x:1000:
audio:x:29: app
video:x:44:other
";

    fn r(spec: &str) -> Result<User, UserError> {
        resolve(spec, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn parses_passwd_skipping_junk() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 4);
        assert_eq!(
            p[2],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/app".into()
            }
        );
        assert_eq!(p[3].home, "");
    }

    #[test]
    fn parses_group_members() {
        let g = parse_group(GROUP);
        assert_eq!(g[1].members, vec!["app", "other"]);
        assert_eq!(g[3].members, vec!["app"]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn root_by_default() {
        let u = r("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(r("root").unwrap(), u);
        assert_eq!(r("0").unwrap(), u);
    }

    #[test]
    fn name_gets_primary_and_supplementary_groups() {
        let u = r("app").unwrap();
        assert_eq!(
            u,
            User {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 50, 29],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn uid_resolves_through_passwd_when_listed() {
        assert_eq!(r("1000").unwrap(), r("app").unwrap());
    }

    #[test]
    fn unknown_uid_gets_group_zero_and_root_home() {
        let u = r("4242").unwrap();
        assert_eq!(
            u,
            User {
                uid: 4242,
                gid: 0,
                groups: vec![0],
                home: "/".into()
            }
        );
    }

    #[test]
    fn explicit_group_by_name_or_id() {
        let u = r("app:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert_eq!(u.groups, vec![50, 29]);
        let u = r("1000:44").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 44));
        let u = r("4242:4243").unwrap();
        assert_eq!((u.uid, u.gid, u.groups.clone()), (4242, 4243, vec![4243]));
    }

    #[test]
    fn empty_home_falls_back_to_root_dir() {
        assert_eq!(r("nohome").unwrap().home, "/");
    }

    #[test]
    fn clear_errors() {
        assert_eq!(
            r("nobody").unwrap_err().0,
            "user \"nobody\" not found in /etc/passwd"
        );
        assert_eq!(
            r("app:wheel").unwrap_err().0,
            "group \"wheel\" not found in /etc/group"
        );
        assert!(r("app:").unwrap_err().0.contains("empty group"));
        assert!(r("99999999999").unwrap_err().0.contains("out of range"));
    }

    #[test]
    fn empty_databases_still_allow_numeric_users() {
        let u = resolve("1234:5678", &[], &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1234, 5678));
        assert!(resolve("app", &[], &[]).is_err());
    }
}
