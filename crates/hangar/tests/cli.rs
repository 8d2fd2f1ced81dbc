//! The first cut of the `hangar` command line, driven as a user would, against a real server.

mod common;

use std::process::Command;

use common::{hangar, hangar_ok, World, APP};

fn fails(w: &World, args: &[&str]) -> String {
    let out = hangar(&w.server, args);
    assert!(!out.status.success(), "hangar {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line of error, no stack trace: {err}"
    );
    err
}

#[test]
fn apps_and_machines_end_to_end() {
    let w = World::new();
    assert!(hangar_ok(&w.server, &["apps", "create", "cli-app"]).contains("cli-app"));
    assert!(hangar_ok(&w.server, &["apps", "list"]).contains("cli-app"));

    let out = hangar_ok(
        &w.server,
        &[
            "machine",
            "run",
            &w.image,
            "-a",
            "cli-app",
            "--name",
            "web",
            "-e",
            "COLOR=blue",
            "--",
            "sh",
            "-c",
            "sleep 1000",
        ],
    );
    assert!(out.contains("is started"), "{out}");
    let id = hangar_ok(&w.server, &["machine", "list", "-a", "cli-app", "-q"])
        .trim()
        .to_string();
    assert_eq!(id.len(), 14, "{id}");
    let table = hangar_ok(&w.server, &["m", "list", "-a", "cli-app"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("web") && table.contains("started"),
        "{table}"
    );

    let out = hangar(
        &w.server,
        &[
            "machine",
            "exec",
            &id,
            "-a",
            "cli-app",
            "--",
            "sh",
            "-c",
            "echo $COLOR; exit 3",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "blue\n");
    assert_eq!(
        out.status.code(),
        Some(3),
        "exec passes the exit code through"
    );

    let status = hangar_ok(&w.server, &["machine", "status", &id, "-a", "cli-app"]);
    assert!(
        status.contains("started") && status.contains("launch"),
        "{status}"
    );

    hangar_ok(
        &w.server,
        &[
            "machine", "stop", &id, "-a", "cli-app", "--signal", "SIGKILL",
        ],
    );
    w.server.wait_state("cli-app", &id, "stopped");
    hangar_ok(&w.server, &["machine", "start", &id, "-a", "cli-app"]);
    w.server.wait_state("cli-app", &id, "started");
    let err = fails(&w, &["machine", "destroy", &id, "-a", "cli-app"]);
    assert!(err.contains("force"), "{err}");
    hangar_ok(
        &w.server,
        &["machine", "destroy", &id, "-a", "cli-app", "--force"],
    );
    assert!(w.server.leftovers(&id).is_empty());
    hangar_ok(&w.server, &["apps", "destroy", "cli-app"]);
    assert!(!hangar_ok(&w.server, &["apps", "list"]).contains("cli-app"));
}

#[test]
fn errors_are_one_clear_line() {
    let w = World::new();
    let err = fails(&w, &["machine", "list", "-a", "ghost"]);
    assert!(err.contains("ghost") && err.contains("not found"), "{err}");
    let err = fails(
        &w,
        &["machine", "run", &w.image, "-a", APP, "-e", "NOEQUALS"],
    );
    assert!(err.contains("NAME=VALUE"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["apps", "list"])
        .env("HANGAR_API_URL", "http://127.0.0.1:1")
        .env("HANGAR_API_TOKEN", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hangar server"),
        "hints at starting the server: {err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["apps", "list"])
        .env("HANGAR_API_URL", w.server.url())
        .env("HANGAR_API_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
    let out = hangar(&w.server, &["machine", "frobnicate"]);
    assert!(!out.status.success(), "unknown subcommands fail");
}

#[test]
fn image_import_from_a_layout_directory() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    hangar_testkit::image::ImageBuilder::busybox()
        .env("LAYOUT", "1")
        .write_oci_layout(&layout, "layout-img:1");
    let out = hangar_ok(
        &w.server,
        &["image", "import", layout.to_str().unwrap(), "layout-img:1"],
    );
    assert!(out.contains("layout-img"), "{out}");
    assert!(hangar_ok(&w.server, &["image", "list"]).contains("layout-img"));
    let out = hangar_ok(
        &w.server,
        &[
            "machine",
            "run",
            "layout-img:1",
            "-a",
            APP,
            "--",
            "sleep",
            "100",
        ],
    );
    assert!(out.contains("is started"), "{out}");
    let err = fails(&w, &["image", "import", "/nonexistent/path"]);
    assert!(err.contains("/nonexistent/path"), "{err}");
}
