//! The static `hangar-init` every test server needs, built on demand.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (this crate lives in `crates/testkit`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// Path of a static `hangar-init`: `$HANGAR_INIT` if set, else the one `make init` builds,
/// building it first when it is missing (cargo's own lock serialises concurrent builds).
pub fn init_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("HANGAR_INIT") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "HANGAR_INIT={} does not exist", p.display());
            return p;
        }
        let root = workspace_root();
        let target = "x86_64-unknown-linux-gnu";
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args([
                "build",
                "--quiet",
                "-p",
                "hangar-init",
                "--release",
                "--target",
                target,
                "--target-dir",
            ])
            .arg(root.join("target/init"))
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the static hangar-init failed (try `make init`)"
        );
        root.join("target/init")
            .join(target)
            .join("release/hangar-init")
    })
    .clone()
}
