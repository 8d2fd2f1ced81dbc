//! Imports of OCI layouts, OCI archives and `docker save` tarballs written by the testkit.

mod common;

use std::fs;
use std::io::Write;

use common::{assert_empty, layer_dirs, root, store, Mounted};
use hangar_image::ImageError;
use hangar_testkit::{ImageBuilder, Layer};

fn app() -> ImageBuilder {
    ImageBuilder::busybox()
        .layer(
            Layer::new()
                .file("app/run.sh", "#!/bin/sh\necho app\n", 0o755)
                .whiteout("etc/hostname"),
        )
        .entrypoint(&["/app/run.sh"])
        .label("kind", "imported")
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_an_oci_layout_directory_named_by_its_annotation() {
    let layout = tempfile::tempdir().unwrap();
    let digest = app().write_oci_layout(layout.path(), "registry.example.com/team/app:v1");
    let (dir, store) = store();
    let image = store.import(layout.path(), None).await.unwrap();
    assert_eq!(image.reference, "registry.example.com/team/app:v1");
    assert_eq!(image.digest, digest);
    assert!(image.local);
    assert_eq!(image.image_ref.registry, "registry.example.com");
    assert_eq!(image.image_ref.repository, "team/app");
    assert_eq!(image.config.entrypoint, ["/app/run.sh"]);
    assert_eq!(image.layers.len(), 2);
    let m = Mounted::new(&image);
    assert_eq!(
        fs::read_to_string(m.root.join("app/run.sh")).unwrap(),
        "#!/bin/sh\necho app\n"
    );
    assert!(m.root.join("bin/busybox").is_file());
    assert!(
        !m.root.join("etc/hostname").exists(),
        "whited out by the top layer"
    );
    drop(m);

    // An imported image is never re-resolved: pulling it needs no registry (there is none
    // at registry.example.com from here).
    let pulled = store
        .pull("registry.example.com/team/app:v1")
        .await
        .unwrap();
    assert_eq!(pulled.digest, digest);
    assert!(pulled.local);
    assert_eq!(store.get(&digest).unwrap().unwrap().layers, image.layers);
    assert!(fs::read_dir(root(&dir).join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_an_oci_archive_with_or_without_a_name() {
    let work = tempfile::tempdir().unwrap();
    let unnamed = work.path().join("unnamed.tar");
    let digest = app().write_oci_archive(&unnamed, "");
    let (dir, store) = store();
    let err = store.import(&unnamed, None).await.unwrap_err();
    assert!(matches!(err, ImageError::InvalidImage(_)), "{err:?}");
    assert!(err.to_string().contains("pass a reference"), "{err}");
    assert_empty(&root(&dir));

    let image = store.import(&unnamed, Some("demo:1")).await.unwrap();
    assert_eq!(image.reference, "docker.io/library/demo:1");
    assert_eq!(image.digest, digest);

    let named = work.path().join("named.tar");
    app().write_oci_archive(&named, "localhost:5000/demo:2");
    let image = store.import(&named, None).await.unwrap();
    assert_eq!(image.reference, "localhost:5000/demo:2");
    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(
        layer_dirs(&root(&dir)).len(),
        2,
        "the two names share their layers"
    );
    assert!(
        fs::read_dir(root(&dir).join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "the extracted archive is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_a_docker_save_tarball() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("hello.tar");
    app().write_docker_archive(&archive, "hello:latest");
    let (dir, store) = store();
    let image = store.import(&archive, None).await.unwrap();
    assert_eq!(image.reference, "docker.io/library/hello:latest");
    assert!(image.local);
    assert_eq!(
        image.config.labels.get("kind").map(String::as_str),
        Some("imported")
    );
    assert!(image.layers[0].join("bin/busybox").is_file());
    assert!(image.layers[1].join("app/run.sh").is_file());

    // The same archive again: the same digest (the synthesized manifest is deterministic),
    // and no new layer.
    let again = store.import(&archive, Some("hello:copy")).await.unwrap();
    assert_eq!(again.digest, image.digest);
    assert_eq!(again.reference, "docker.io/library/hello:copy");
    assert_eq!(layer_dirs(&root(&dir)).len(), 2);

    // `docker save | gzip` works too.
    let gz = work.path().join("hello.tar.gz");
    let mut enc =
        flate2::write::GzEncoder::new(fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&fs::read(&archive).unwrap()).unwrap();
    enc.finish().unwrap();
    assert_eq!(store.import(&gz, None).await.unwrap().digest, image.digest);

    // What `make run` does: the image is then found by its short name, offline.
    let pulled = store.pull("hello:latest").await.unwrap();
    assert_eq!(pulled.digest, image.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_the_current_docker_save_format() {
    // Docker 25+ writes an OCI layout plus a manifest.json whose paths point into blobs/.
    let layout = tempfile::tempdir().unwrap();
    let image = app();
    image.write_oci_layout(layout.path(), "");
    let built = image.build();
    let path = |d: &str| format!("blobs/sha256/{}", &d["sha256:".len()..]);
    let manifest = serde_json::json!([{
        "Config": path(&built.config.digest),
        "RepoTags": ["modern:1"],
        "Layers": built.layers.iter().map(|l| path(&l.digest)).collect::<Vec<_>>(),
    }]);
    fs::write(
        layout.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let (_dir, store) = store();
    let imported = store.import(layout.path(), None).await.unwrap();
    assert_eq!(imported.reference, "docker.io/library/modern:1");
    assert!(imported.layers[1].join("app/run.sh").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_imports_are_refused_and_leave_nothing() {
    let work = tempfile::tempdir().unwrap();
    let (dir, store) = store();

    let missing = work.path().join("missing.tar");
    let err = store.import(&missing, Some("x:1")).await.unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidImage(_)) && err.to_string().contains("missing.tar"),
        "{err}"
    );

    let junk = work.path().join("junk.tar");
    fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let err = store.import(&junk, Some("x:1")).await.unwrap_err();
    assert!(matches!(err, ImageError::InvalidImage(_)), "{err:?}");
    assert!(
        err.to_string().contains("junk.tar") && !err.to_string().contains('\n'),
        "{err}"
    );
    assert_empty(&root(&dir));

    let bad_ref = store.import(&junk, Some("NOT VALID")).await.unwrap_err();
    assert!(
        matches!(bad_ref, ImageError::InvalidReference(_)),
        "{bad_ref:?}"
    );

    // A layout whose layer blob does not match its digest.
    let layout = work.path().join("layout");
    let image = app();
    image.write_oci_layout(&layout, "tampered:1");
    let victim = &image.build().layers[1].digest;
    let blob = layout.join("blobs/sha256").join(&victim["sha256:".len()..]);
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let err = store.import(&layout, None).await.unwrap_err();
    assert!(matches!(err, ImageError::InvalidImage(_)), "{err:?}");
    assert!(err.to_string().contains(victim.as_str()), "{err}");
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
    assert!(
        layer_dirs(&root(&dir)).len() <= 1,
        "at most the untouched busybox layer"
    );

    // A docker archive whose layer is a hostile tar.
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.as_old_mut().name[..4].copy_from_slice(b"link");
    header.as_old_mut().linkname[..5].copy_from_slice(b"../..");
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&header, std::io::empty()).unwrap();
    let evil = ImageBuilder::new().layer(Layer::from_tar(b.into_inner().unwrap()));
    let archive = work.path().join("evil.tar");
    evil.write_docker_archive(&archive, "evil:1");
    let err = store.import(&archive, None).await.unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidImage(_)) && err.to_string().contains("leads out"),
        "{err}"
    );
    assert!(fs::read_dir(root(&dir).join("tmp"))
        .unwrap()
        .next()
        .is_none());
}
