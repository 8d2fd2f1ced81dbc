//! `hangar-mkimage`, run as `make run` runs it.

use std::fs;
use std::path::Path;
use std::process::Command;

fn mkimage(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar-mkimage"))
        .args(args)
        .output()
        .expect("hangar-mkimage runs")
}

fn tar_names(bytes: &[u8]) -> Vec<String> {
    tar::Archive::new(bytes)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string())
        .collect()
}

#[test]
fn writes_a_docker_archive_with_busybox() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("hello.tar");
    let out = mkimage(&[
        "--docker-archive",
        archive.to_str().unwrap(),
        "--tag",
        "hello:latest",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = fs::read(&archive).unwrap();
    let mut manifest = None;
    let mut layers = Vec::new();
    for entry in tar::Archive::new(bytes.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if name == "manifest.json" {
            manifest = Some(serde_json::from_slice::<serde_json::Value>(&data).unwrap());
        } else if name.ends_with("/layer.tar") {
            layers.push(data);
        }
    }
    let manifest = manifest.expect("manifest.json");
    assert_eq!(manifest[0]["RepoTags"][0], "hello:latest");
    assert_eq!(layers.len(), 1);
    let names = tar_names(&layers[0]);
    for want in [
        "bin/busybox",
        "bin/sh",
        "bin/sleep",
        "etc/passwd",
        "etc/group",
        "tmp",
        "home/app",
        "proc",
    ] {
        assert!(
            names.iter().any(|n| n.trim_end_matches('/') == want),
            "{want} missing from {names:?}"
        );
    }
}

#[test]
fn writes_an_oci_layout_and_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let out = mkimage(&["--oci", layout.to_str().unwrap(), "--ref", "hello:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "hello:1"
    );
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    assert!(Path::new(&layout.join("blobs/sha256").join(&digest[7..])).is_file());

    let out = mkimage(&[
        "--docker-archive",
        dir.path().join("x.tar").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tag"));
    assert_eq!(mkimage(&["--bogus"]).status.code(), Some(2));
}
