//! Pulls from a real docker-registry on loopback, serving images built by the testkit.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{assert_empty, get_xattr, layer_dirs, root, store, Mounted};
use hangar_image::ImageError;
use hangar_testkit::{Compression, ImageBuilder, Layer, Registry};

/// busybox, then a layer adding files, then one deleting and hiding some of them.
fn three_layers() -> ImageBuilder {
    ImageBuilder::busybox()
        .layer(
            Layer::new()
                .file("etc/motd", "welcome\n", 0o644)
                .dir("var/cache", 0o755)
                .file("var/cache/old-a", "a", 0o644)
                .file("var/cache/old-b", "b", 0o644)
                .owner(1000, 1000)
                .file("home/app/data", "mine", 0o600)
                .owner(0, 0)
                .file("usr/bin/tool", "#!/bin/sh\necho tool\n", 0o4755)
                .hardlink("usr/bin/tool-again", "usr/bin/tool")
                .symlink("usr/bin/t", "tool"),
        )
        .layer(
            Layer::new()
                .whiteout("etc/motd")
                .opaque("var/cache")
                .file("var/cache/new", "n", 0o644)
                .compression(Compression::Zstd),
        )
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo hi"])
        .env("GREETING", "hello")
        .workdir("/home/app")
        .user("app")
        .label("team", "hangar")
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_a_multi_layer_image_into_overlayfs_lower_dirs() {
    let registry = Registry::start();
    let pushed = three_layers().push_async(&registry, "busybox:multi").await;
    let (dir, store) = store();
    let reference = format!("{}/busybox:multi", registry.host());
    let image = store.pull(&reference).await.unwrap();

    assert_eq!(image.reference, reference);
    assert_eq!(image.digest, pushed);
    assert!(!image.local);
    assert_eq!(image.image_ref.registry, registry.host());
    assert_eq!(image.image_ref.repository, "busybox");
    assert_eq!(image.image_ref.tag, "multi");
    assert_eq!(image.image_ref.digest, pushed);
    assert_eq!(
        image.image_ref.labels.get("team").map(String::as_str),
        Some("hangar")
    );
    assert_eq!(image.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.config.cmd, ["echo hi"]);
    assert!(image.config.env.contains(&"GREETING=hello".to_string()));
    assert_eq!(image.config.working_dir, "/home/app");
    assert_eq!(image.config.user, "app");
    assert_eq!(image.layers.len(), 3);
    let busybox_len = fs::metadata("/bin/busybox").unwrap().len();
    assert!(
        image.size > busybox_len,
        "size {} counts the busybox binary",
        image.size
    );
    for l in &image.layers {
        assert!(l.starts_with(root(&dir).canonicalize().unwrap()), "{l:?}");
        assert!(l.as_os_str().len() < 120, "layer paths stay short: {l:?}");
    }

    // Bottom layer: busybox, applets, users, modes.
    let base = &image.layers[0];
    assert_eq!(
        fs::read(base.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(base.join("usr/bin/env")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(fs::read_to_string(base.join("etc/passwd"))
        .unwrap()
        .contains("app:x:1000:1000"));
    assert_eq!(
        fs::metadata(base.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(fs::metadata(base.join("home/app")).unwrap().uid(), 1000);
    assert_eq!(fs::metadata(base).unwrap().mode() & 0o777, 0o755);

    // Middle layer: owners, setuid, hardlinks, symlinks.
    let mid = &image.layers[1];
    let data = fs::metadata(mid.join("home/app/data")).unwrap();
    assert_eq!(
        (data.uid(), data.gid(), data.mode() & 0o7777),
        (1000, 1000, 0o600)
    );
    let tool = fs::metadata(mid.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(
        tool.ino(),
        fs::metadata(mid.join("usr/bin/tool-again")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(mid.join("usr/bin/t")).unwrap(),
        Path::new("tool")
    );

    // Top layer: whiteout device and opaque directory.
    let top = &image.layers[2];
    let wh = fs::symlink_metadata(top.join("etc/motd")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    assert_eq!(
        get_xattr(&top.join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );

    // What a machine sees: overlayfs applies the whiteout and the opaque directory.
    let m = Mounted::new(&image);
    assert!(!m.root.join("etc/motd").exists(), "whited out");
    assert!(m.root.join("etc/passwd").exists());
    let mut cache: Vec<String> = fs::read_dir(m.root.join("var/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    cache.sort();
    assert_eq!(
        cache,
        ["new"],
        "the opaque directory hides the lower layer's files"
    );
    assert_eq!(
        fs::read_to_string(m.root.join("usr/bin/tool")).unwrap(),
        "#!/bin/sh\necho tool\n"
    );
    drop(m);

    // Found again without network, by reference and by digest; listed.
    let by_ref = store.get(&reference).unwrap().unwrap();
    assert_eq!(by_ref.layers, image.layers);
    let by_digest = store.get(&pushed).unwrap().unwrap();
    assert_eq!(by_digest.layers, image.layers);
    assert_eq!(
        by_digest.reference,
        format!("{}/busybox@{pushed}", registry.host())
    );
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reference, reference);
    assert!(store
        .get(&format!("{}/busybox:other", registry.host()))
        .unwrap()
        .is_none());
    assert!(
        fs::read_dir(root(&dir).join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no temporary files left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_arch_index_yields_the_amd64_image() {
    let registry = Registry::start();
    let amd64 = ImageBuilder::busybox().label("arch", "amd64");
    let arm64 = ImageBuilder::new()
        .layer(Layer::new().file("arch", "arm64", 0o644))
        .label("arch", "arm64")
        .architecture("arm64", Some("v8"));
    let arm64_layer = arm64.build().layers[0].digest.clone();
    let index =
        ImageBuilder::push_index_async(&registry, "multi:latest", &[arm64.clone(), amd64.clone()])
            .await;
    let (_dir, store) = store();
    let image = store
        .pull(&format!("{}/multi", registry.host()))
        .await
        .unwrap();
    assert_eq!(image.reference, format!("{}/multi:latest", registry.host()));
    assert_eq!(
        image.config.labels.get("arch").map(String::as_str),
        Some("amd64")
    );
    assert_eq!(
        image.digest,
        amd64.build().manifest.digest,
        "the platform manifest's digest, not the index's"
    );
    assert_ne!(image.digest, index);
    assert!(
        !registry.blob_fetches().contains(&arm64_layer),
        "the arm64 layer is never fetched"
    );

    // By the index digest: the same image.
    let by_index = store
        .pull(&format!("{}/multi@{index}", registry.host()))
        .await
        .unwrap();
    assert_eq!(by_index.digest, image.digest);

    // An index without linux/amd64 is refused, saying what it offers.
    ImageBuilder::push_index_async(&registry, "armonly:latest", &[arm64]).await;
    let err = store
        .pull(&format!("{}/armonly", registry.host()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedPlatform { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("armonly") && msg.contains("linux/arm64/v8") && msg.contains("linux/amd64"),
        "{msg}"
    );

    // A single-platform image built for another architecture is refused too.
    ImageBuilder::new()
        .layer(Layer::new().file("x", "x", 0o644))
        .architecture("arm64", None)
        .push_async(&registry, "armsingle")
        .await;
    let err = store
        .pull(&format!("{}/armsingle", registry.host()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedPlatform { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_zstd_and_plain_layers_and_docker_media_types() {
    let registry = Registry::start();
    let layer = |name: &str| Layer::new().file(&format!("data/{name}"), name.repeat(1000), 0o644);
    let oci = ImageBuilder::new()
        .layer(layer("gzip").compression(Compression::Gzip))
        .layer(layer("zstd").compression(Compression::Zstd))
        .layer(layer("plain").compression(Compression::None));
    oci.push_async(&registry, "mixed:oci").await;
    let docker = oci.clone().docker_media_types();
    let docker_manifest: serde_json::Value =
        serde_json::from_slice(&docker.build().manifest.bytes).unwrap();
    assert_eq!(
        docker_manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    docker.push_async(&registry, "mixed:docker").await;
    let (dir, store) = store();

    let image = store
        .pull(&format!("{}/mixed:oci", registry.host()))
        .await
        .unwrap();
    for (layer, name) in image.layers.iter().zip(["gzip", "zstd", "plain"]) {
        assert_eq!(
            fs::read_to_string(layer.join("data").join(name)).unwrap(),
            name.repeat(1000)
        );
    }
    let before = registry.blob_fetches().len();
    let d = store
        .pull(&format!("{}/mixed:docker", registry.host()))
        .await
        .unwrap();
    assert_eq!(d.layers, image.layers, "the same layers, unpacked once");
    assert_eq!(
        registry.blob_fetches().len(),
        before,
        "same config and layers: nothing fetched but the manifest"
    );

    // The same tar compressed differently is the same layer (one diff id): not fetched again.
    let regzipped = ImageBuilder::new()
        .layer(layer("zstd").compression(Compression::Gzip))
        .label("v", "2");
    let blob = regzipped.build().layers[0].digest.clone();
    regzipped.push_async(&registry, "mixed:regzipped").await;
    let r = store
        .pull(&format!("{}/mixed:regzipped", registry.host()))
        .await
        .unwrap();
    assert_eq!(r.layers[0], image.layers[1]);
    assert!(!registry.blob_fetches().contains(&blob));
    assert_eq!(layer_dirs(&root(&dir)).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_blob_is_a_digest_mismatch_and_nothing_is_stored() {
    let registry = Registry::start();
    let image = ImageBuilder::busybox().layer(Layer::new().file("hello", "hello", 0o644));
    let built = image.build();
    image.push_async(&registry, "corrupt:latest").await;
    // The registry verified the upload; corrupt its stored copy behind its back, keeping the
    // size (so the transfer itself is well-formed).
    let victim = &built.layers[1];
    let path = registry.blob_path(&victim.digest);
    let mut bytes = fs::read(&path).unwrap();
    assert_eq!(bytes, victim.bytes);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, &bytes).unwrap();

    let (dir, store) = store();
    let err = store
        .pull(&format!("{}/corrupt", registry.host()))
        .await
        .unwrap_err();
    match &err {
        ImageError::DigestMismatch {
            digest,
            registry: r,
        } => {
            assert_eq!(digest, &victim.digest);
            assert_eq!(r, &registry.host());
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&victim.digest) && msg.contains(&registry.host()) && !msg.contains('\n'),
        "{msg}"
    );
    // The other layer may have been unpacked concurrently (it is sound and content-addressed);
    // the image itself, its reference, and any temporary file are not.
    assert!(fs::read_dir(root(&dir).join("images"))
        .unwrap()
        .next()
        .is_none());
    assert!(fs::read_dir(root(&dir).join("refs"))
        .unwrap()
        .next()
        .is_none());
    assert!(fs::read_dir(root(&dir).join("tmp"))
        .unwrap()
        .next()
        .is_none());
    assert!(layer_dirs(&root(&dir)).len() <= 1);
    assert!(store
        .get(&format!("{}/corrupt", registry.host()))
        .unwrap()
        .is_none());
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_manifest_or_config_is_refused() {
    let registry = Registry::start();
    let image = ImageBuilder::new().layer(Layer::new().file("x", "x", 0o644));
    let built = image.build();
    image.push_async(&registry, "badcfg:latest").await;
    let path = registry.blob_path(&built.config.digest);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let (dir, store) = store();
    let err = store
        .pull(&format!("{}/badcfg", registry.host()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { digest, .. } if *digest == built.config.digest),
        "{err:?}"
    );
    assert_empty(&root(&dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_tags_and_repositories_are_not_found() {
    let registry = Registry::start();
    ImageBuilder::busybox()
        .push_async(&registry, "busybox:latest")
        .await;
    let (dir, store) = store();
    for reference in [
        format!("{}/busybox:nope", registry.host()),
        format!("{}/nothing-here:latest", registry.host()),
    ] {
        let err = store.pull(&reference).await.unwrap_err();
        assert!(
            matches!(err, ImageError::NotFound { .. }),
            "{reference}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&reference) && msg.contains(&registry.host()) && !msg.contains('\n'),
            "{msg}"
        );
    }
    let err = store.pull("Not A Reference").await.unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference(_)), "{err:?}");
    assert_empty(&root(&dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_is_down_is_unavailable() {
    let mut registry = Registry::start();
    let host = registry.host();
    registry.stop();
    let (dir, store) = store();
    let err = store
        .pull(&format!("{host}/busybox:latest"))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unavailable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("registry {host} is unreachable: connection refused")
    );
    assert_empty(&root(&dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_pulls_download_once() {
    let registry = Registry::start();
    let image = three_layers();
    let built = image.build();
    let digest = image.push_async(&registry, "busybox:concurrent").await;
    let (dir, store) = store();
    let before = registry.requests().len();
    let reference = format!("{}/busybox:concurrent", registry.host());
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let (store, reference) = (store.clone(), reference.clone());
            tokio::spawn(async move { store.pull(&reference).await })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap().unwrap().digest, digest);
    }
    let requests: Vec<_> = registry.requests().into_iter().skip(before).collect();
    let mut fetches: HashMap<String, usize> = HashMap::new();
    for r in &requests {
        if let Some(d) = r.blob_fetch() {
            *fetches.entry(d.to_string()).or_default() += 1;
        }
    }
    let mut expected: Vec<&String> = built
        .layers
        .iter()
        .map(|b| &b.digest)
        .chain([&built.config.digest])
        .collect();
    expected.sort();
    let mut got: Vec<&String> = fetches.keys().collect();
    got.sort();
    assert_eq!(got, expected, "every blob fetched");
    assert!(
        fetches.values().all(|&n| n == 1),
        "each blob fetched once: {fetches:?}"
    );
    let manifest_gets = requests
        .iter()
        .filter(|r| r.is_manifest() && r.method == "GET")
        .count();
    assert_eq!(manifest_gets, 1, "one manifest request: {requests:?}");
    assert_eq!(layer_dirs(&root(&dir)).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_tag_is_re_resolved_cheaply() {
    let mut registry = Registry::start();
    let first = ImageBuilder::busybox().label("v", "1");
    first.push_async(&registry, "app:live").await;
    let (_dir, store) = store();
    let reference = format!("{}/app:live", registry.host());
    let v1 = store.pull(&reference).await.unwrap();

    // Unchanged tag: one HEAD of the manifest, no blob, no manifest body.
    let before = registry.requests().len();
    let again = store.pull(&reference).await.unwrap();
    assert_eq!(again.digest, v1.digest);
    let new: Vec<_> = registry.requests().into_iter().skip(before).collect();
    assert!(
        new.iter().all(|r| r.blob_fetch().is_none()),
        "no blob fetched: {new:?}"
    );
    let manifests: Vec<_> = new.iter().filter(|r| r.is_manifest()).collect();
    assert_eq!(manifests.len(), 1, "{new:?}");
    assert_eq!(manifests[0].method, "HEAD");

    // A digest reference present locally: no request at all.
    let before = registry.requests().len();
    let by_digest = store
        .pull(&format!("{}/app@{}", registry.host(), v1.digest))
        .await
        .unwrap();
    assert_eq!(by_digest.layers, v1.layers);
    assert_eq!(registry.requests().len(), before);

    // The tag moves: the new image is pulled (its new config blob fetched, the shared busybox
    // layer not).
    let second = ImageBuilder::busybox().label("v", "2");
    let v2_digest = second.push_async(&registry, "app:live").await;
    let before = registry.requests().len();
    let v2 = store.pull(&reference).await.unwrap();
    assert_eq!(v2.digest, v2_digest);
    assert_eq!(v2.config.labels.get("v").map(String::as_str), Some("2"));
    assert_eq!(v2.layers, v1.layers);
    let fetched: Vec<String> = registry
        .requests()
        .into_iter()
        .skip(before)
        .filter_map(|r| r.blob_fetch().map(str::to_string))
        .collect();
    assert_eq!(fetched, [second.build().config.digest]);

    // Registry down: the local image, not an error.
    registry.stop();
    let offline = store.pull(&reference).await.unwrap();
    assert_eq!(offline.digest, v2_digest);
    // A tag never pulled cannot be served offline.
    let err = store
        .pull(&format!("{}/app:other", registry.host()))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unavailable { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_layer_is_refused_and_leaves_nothing() {
    let registry = Registry::start();
    // A tar whose entry climbs out of the layer, written byte by byte (tar writers refuse to).
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(4);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    let name = b"../../../../tmp/hangar-escaped";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&header, &b"evil"[..]).unwrap();
    let evil = b.into_inner().unwrap();
    ImageBuilder::new()
        .layer(Layer::new().file("fine", "ok", 0o644))
        .layer(Layer::from_tar(evil))
        .push_async(&registry, "evil")
        .await;
    let (dir, store) = store();
    let err = store
        .pull(&format!("{}/evil", registry.host()))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::InvalidImage(_)), "{err:?}");
    assert!(msg.contains("evil") && msg.contains("`..`"), "{msg}");
    assert!(!Path::new("/tmp/hangar-escaped").exists());
    assert!(fs::read_dir(root(&dir).join("images"))
        .unwrap()
        .next()
        .is_none());
    assert!(
        fs::read_dir(root(&dir).join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the partial layer is gone"
    );
    assert!(
        layer_dirs(&root(&dir)).len() <= 1,
        "at most the sound layer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_wants_credentials_is_unauthorized() {
    let registry = Registry::start_with_auth();
    assert!(registry.credentials().is_some());
    ImageBuilder::busybox()
        .push_async(&registry, "private:latest")
        .await;
    let (dir, store) = store();
    let err = store
        .pull(&format!("{}/private", registry.host()))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&registry.host()) && msg.contains("private") && !msg.contains('\n'),
        "{msg}"
    );
    assert_empty(&root(&dir));
}
