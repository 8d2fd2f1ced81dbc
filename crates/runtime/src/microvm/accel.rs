//! Choosing the accelerator: KVM only where it really works. A `/dev/kvm` can exist and still
//! be useless (nested virtualization without hardware support boots for minutes, then dies
//! with an emulation failure), so the check is a real boot of the guest kernel to `/init`
//! under a short deadline.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::{info, warn};

use super::error::AccelError;
use super::kernel::Kernel;

/// What a working KVM boots to `/init` well within.
const PROBE_DEADLINE: Duration = Duration::from_secs(8);
/// What init prints when it runs without a launch spec (see hangar-init's `vm.rs`).
const PROBE_MARK: &str = "hangar-init: reached /init";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM if the probe boot works, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    pub fn parse(s: &str) -> Option<Accel> {
        match s {
            "auto" => Some(Accel::Auto),
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

/// The accelerator machines run under, and why it was chosen.
#[derive(Clone, Debug)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Boots the kernel and initramfs with no machine: init announces itself on the console and
/// powers off. Returns the time until the announcement.
pub async fn boot_to_init(
    qemu: &Path,
    accel: Accel,
    kernel: &Kernel,
    initramfs: &Path,
    deadline: Duration,
) -> Result<Duration, AccelError> {
    let mut cmdline = String::from("console=ttyS0 quiet panic=-1 pci=off reboot=t");
    let accel_args: Vec<String> = match accel {
        Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
        _ => {
            cmdline.push_str(&format!(
                " tsc_early_khz={} tsc=reliable",
                super::host_tsc_khz()
            ));
            vec![
                "-accel".into(),
                "tcg,thread=multi,tb-size=64".into(),
                "-cpu".into(),
                "max".into(),
            ]
        }
    };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(qemu)
        .args([
            "-M",
            "microvm,acpi=on,x-option-roms=off,rtc=on",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-m",
            "128",
            "-smp",
            "1",
        ])
        .args(&accel_args)
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &cmdline, "-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| AccelError::Spawn {
            qemu: qemu.to_path_buf(),
            source,
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut console = Vec::new();
    let found = tokio::time::timeout(deadline, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(PROBE_MARK) {
                return Some(started.elapsed());
            }
            console.push(line);
        }
        None
    })
    .await;
    let result = match found {
        Ok(Some(elapsed)) => Ok(elapsed),
        Ok(None) => {
            let _ = child.start_kill();
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut stderr))
                    .await;
            }
            let last = stderr
                .lines()
                .chain(console.iter().map(String::as_str))
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .to_string();
            Err(AccelError::EndedEarly { last })
        }
        Err(_) => Err(AccelError::Silent {
            secs: deadline.as_secs(),
        }),
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

/// Picks the accelerator for `wanted`.
pub async fn choose(
    wanted: Accel,
    qemu: &Path,
    kernel: &Kernel,
    initramfs: &Path,
    _state_dir: &Path,
) -> Result<AccelChoice, AccelError> {
    if wanted == Accel::Tcg {
        return Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: "--accel tcg".into(),
        });
    }
    let usable = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Err(e) => Err(AccelError::NoKvm(e)),
        Ok(_) => boot_to_init(qemu, Accel::Kvm, kernel, initramfs, PROBE_DEADLINE)
            .await
            .map_err(|e| AccelError::KvmProbe(Box::new(e))),
    };
    match (wanted, usable) {
        (_, Ok(took)) => {
            let reason = format!("a probe guest booted to /init under KVM in {took:.0?}");
            info!(%reason, "using KVM");
            Ok(AccelChoice {
                accel: Accel::Kvm,
                reason,
            })
        }
        (Accel::Kvm, Err(why)) => Err(AccelError::KvmRequired(Box::new(why))),
        (_, Err(why)) => {
            warn!(%why, "KVM is unusable; falling back to TCG (software emulation)");
            Ok(AccelChoice {
                accel: Accel::Tcg,
                reason: format!("KVM unusable ({why}); using TCG"),
            })
        }
    }
}
