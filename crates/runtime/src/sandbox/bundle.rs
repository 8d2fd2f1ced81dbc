//! The OCI runtime bundle (`config.json`) of one sandbox boot.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, Capabilities,
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::Resources;

/// Where init finds itself, its launch spec and its control socket inside the machine.
pub const INIT_IN_GUEST: &str = "/.hangar/init";
pub const LAUNCH_IN_GUEST: &str = "/.hangar/launch.json";
pub const CTL_IN_GUEST: &str = "/.hangar/ctl";
pub const CONTROL_IN_GUEST: &str = "unix:/.hangar/ctl/control.sock";

const CFS_PERIOD_US: u64 = 100_000;
const PIDS_LIMIT: i64 = 16_384;

/// The host paths a bundle refers to.
pub struct BundlePaths<'a> {
    pub rootfs: &'a Path,
    pub init: &'a Path,
    pub launch: &'a Path,
    pub ctl: &'a Path,
}

/// Docker's default capability set: enough for init to switch users and for ordinary
/// programs, not enough to escape (no SYS_ADMIN, NET_ADMIN, SYS_PTRACE...).
fn default_capabilities() -> Capabilities {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

fn bind(
    source: &Path,
    destination: &str,
    options: &[&str],
) -> Result<Mount, oci_spec::OciSpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
}

pub fn cgroups_path(machine_id: &str) -> PathBuf {
    PathBuf::from(format!("/hangar/{machine_id}"))
}

/// The runtime spec: init as the process (it switches users itself), a fresh set of
/// namespaces with an empty network namespace (runc brings up its loopback), runc's default
/// mounts plus a /run tmpfs and init's three bind mounts, and the machine's limits.
pub fn spec(
    hostname: &str,
    machine_id: &str,
    paths: &BundlePaths<'_>,
    res: Resources,
    netns: Option<&Path>,
) -> Result<Spec, oci_spec::OciSpecError> {
    let caps = default_capabilities();
    // The container cannot raise its hard limit (no CAP_SYS_RESOURCE), so it gets the
    // server's; the soft limit is the conventional 1024 that select()-based programs expect.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass, which lives for the call.
    let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_max
    } else {
        1024
    };
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(vec![INIT_IN_GUEST.to_string(), LAUNCH_IN_GUEST.to_string()])
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ])
        .cwd("/")
        // Like Docker: setuid programs (sudo, ping) work inside the machine.
        .no_new_privileges(false)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(Capabilities::new())
                .ambient(Capabilities::new())
                .build()?,
        )
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(nofile.min(1024))
            .hard(nofile)
            .build()?])
        .build()?;

    let mut mounts = get_default_mounts();
    mounts.push(
        MountBuilder::default()
            .destination("/run")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".to_string(),
                "nodev".to_string(),
                "mode=755".to_string(),
            ])
            .build()?,
    );
    mounts.push(bind(
        paths.init,
        INIT_IN_GUEST,
        &["bind", "ro", "nosuid", "nodev"],
    )?);
    mounts.push(bind(
        paths.launch,
        LAUNCH_IN_GUEST,
        &["bind", "ro", "nosuid", "nodev", "noexec"],
    )?);
    mounts.push(bind(
        paths.ctl,
        CTL_IN_GUEST,
        &["bind", "rw", "nosuid", "nodev", "noexec"],
    )?);

    // A new network namespace has only a loopback. Networking (a veth or tap device) will add
    // a path to a prepared namespace here.
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|typ| match (typ, netns) {
        (LinuxNamespaceType::Network, Some(path)) => {
            LinuxNamespaceBuilder::default().typ(typ).path(path).build()
        }
        _ => LinuxNamespaceBuilder::default().typ(typ).build(),
    })
    .collect::<Result<Vec<_>, _>>()?;

    let memory = i64::from(res.memory_mb) * 1024 * 1024;
    let resources = LinuxResourcesBuilder::default()
        // Deny every device, then runc adds its standard allow-list (null, zero, tty, pts...).
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?])
        // Memory and memory+swap equal: no swap.
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory)
                .swap(memory)
                .build()?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota(i64::from(res.cpus) * CFS_PERIOD_US as i64)
                .period(CFS_PERIOD_US)
                .build()?,
        )
        .pids(LinuxPidsBuilder::default().limit(PIDS_LIMIT).build()?)
        .build()?;

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cgroups_path(machine_id))
        .resources(resources)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(paths.rootfs)
                .readonly(false)
                .build()?,
        )
        .hostname(hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_limits_binds_and_no_cgroup_namespace() {
        let paths = BundlePaths {
            rootfs: Path::new("/s/m1/rootfs"),
            init: Path::new("/opt/hangar-init"),
            launch: Path::new("/s/m1/launch.json"),
            ctl: Path::new("/s/m1/ctl"),
        };
        let spec = spec(
            "m1",
            "m1",
            &paths,
            Resources {
                cpus: 2,
                memory_mb: 256,
            },
            None,
        )
        .unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["hostname"], "m1");
        assert_eq!(json["root"]["path"], "/s/m1/rootfs");
        assert_eq!(
            json["process"]["args"],
            serde_json::json!(["/.hangar/init", "/.hangar/launch.json"])
        );
        let linux = &json["linux"];
        assert_eq!(linux["cgroupsPath"], "/hangar/m1");
        assert_eq!(linux["resources"]["memory"]["limit"], 256 << 20);
        assert_eq!(linux["resources"]["memory"]["swap"], 256 << 20);
        assert_eq!(linux["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(linux["resources"]["cpu"]["period"], 100_000);
        let ns: Vec<&str> = linux["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "mount", "uts", "ipc", "network"]);
        let mounts = json["mounts"].as_array().unwrap();
        let dest = |d: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == d)
                .unwrap_or_else(|| panic!("no mount at {d}"))
        };
        assert_eq!(dest("/.hangar/init")["source"], "/opt/hangar-init");
        assert!(dest("/.hangar/launch.json")["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into()));
        assert!(dest("/.hangar/ctl")["options"]
            .as_array()
            .unwrap()
            .contains(&"rw".into()));
        assert_eq!(dest("/run")["type"], "tmpfs");
        assert!(dest("/sys")["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into()));
        let caps = json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(caps.len(), 14);
        assert!(caps.contains(&"CAP_SETUID".into()));
        assert!(!caps.contains(&"CAP_SYS_ADMIN".into()));
    }
}
