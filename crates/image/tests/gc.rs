//! Garbage collection and the ext4 rootfs builder, on images pulled from a real
//! docker-registry on loopback. Which images machines use is what the test says.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_empty, layer_dirs, noise, root, store_with, Mounted};
use hangar_image::{ImageError, ImageStore, InUse, StoreOptions};
use hangar_testkit::{ImageBuilder, Layer, Registry};

type Used = Arc<Mutex<HashSet<String>>>;

fn gc_store(max_bytes: Option<u64>) -> (tempfile::TempDir, ImageStore, Used) {
    let used: Used = Arc::default();
    let u = Arc::clone(&used);
    let (dir, store) = store_with(StoreOptions {
        in_use: Some(InUse::new(move || Ok(u.lock().unwrap().clone()))),
        gc_grace: Some(Duration::ZERO),
        max_bytes,
        ..Default::default()
    });
    (dir, store, used)
}

fn set(used: &Used, digests: &[&str]) {
    *used.lock().unwrap() = digests.iter().map(|d| d.to_string()).collect();
}

fn refs(store: &ImageStore) -> Vec<String> {
    store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_only_what_no_machine_uses() {
    let registry = Registry::start();
    let h = registry.host();
    let a = ImageBuilder::busybox().layer(Layer::new().file("a", "a", 0o644));
    let b = ImageBuilder::busybox().layer(Layer::new().file("b", "b", 0o644));
    let c = ImageBuilder::new().layer(Layer::new().file("c", "c", 0o644));
    a.push_async(&registry, "a:1").await;
    a.push_async(&registry, "a:again").await;
    b.push_async(&registry, "b:1").await;
    c.push_async(&registry, "c:1").await;
    let (dir, store, used) = gc_store(None);
    let ia = store.pull(&format!("{h}/a:1")).await.unwrap();
    store.pull(&format!("{h}/a:again")).await.unwrap();
    let ib = store.pull(&format!("{h}/b:1")).await.unwrap();
    let ic = store.pull(&format!("{h}/c:1")).await.unwrap();
    assert_eq!(layer_dirs(&root(&dir)).len(), 4, "busybox, a, b, c");

    set(&used, &[&ia.digest]);
    let report = store.prune().await.unwrap();
    let mut gone = vec![ib.digest.clone(), ic.digest.clone()];
    gone.sort();
    assert_eq!(report.images, gone);
    assert_eq!(report.references, [format!("{h}/b:1"), format!("{h}/c:1")]);
    assert_eq!(
        report.layers, 2,
        "b's and c's own layers; busybox is a's too"
    );
    assert_eq!(report.freed_bytes, 2);
    assert_eq!(refs(&store), [format!("{h}/a:1"), format!("{h}/a:again")]);
    let kept: Vec<String> = ia
        .layers
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    assert_eq!(layer_dirs(&root(&dir)), kept_sorted);
    assert_eq!(
        fs::read_dir(root(&dir).join("blobs/sha256"))
            .unwrap()
            .count(),
        2,
        "a's manifest and config"
    );
    let m = Mounted::new(&store.get(&format!("{h}/a:1")).unwrap().unwrap());
    assert_eq!(fs::read_to_string(m.root.join("a")).unwrap(), "a");
    assert!(m.root.join("bin/busybox").exists());
    drop(m);

    // A second prune finds nothing more to do.
    let again = store.prune().await.unwrap();
    assert!(again.images.is_empty() && again.layers == 0, "{again:?}");

    // What a crash leaves (a layer directory without its record) goes too.
    fs::create_dir(root(&dir).join("l/0123456789abcdef")).unwrap();
    fs::write(root(&dir).join("l/0123456789abcdef/half"), "x").unwrap();
    set(&used, &[]);
    let report = store.prune().await.unwrap();
    assert_eq!(report.images, std::slice::from_ref(&ia.digest));
    assert_eq!(report.layers, 3);
    assert_empty(&root(&dir));
    assert_eq!(
        fs::read_dir(root(&dir).join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    // Pulled again after pruning: fetched again and whole.
    let back = store.pull(&format!("{h}/a:1")).await.unwrap();
    assert_eq!(fs::read_to_string(back.layers[1].join("a")).unwrap(), "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_untags_refuses_images_in_use_and_says_what_is_unknown() {
    let registry = Registry::start();
    let h = registry.host();
    let app = ImageBuilder::busybox().label("app", "1");
    app.push_async(&registry, "app:1").await;
    app.push_async(&registry, "app:2").await;
    let (dir, store, used) = gc_store(None);
    let image = store.pull(&format!("{h}/app:1")).await.unwrap();
    store.pull(&format!("{h}/app:2")).await.unwrap();
    set(&used, &[&image.digest]);

    // Another name remains: only the name goes.
    let r = store.remove(&format!("{h}/app:2")).await.unwrap().unwrap();
    assert_eq!(r.references, [format!("{h}/app:2")]);
    assert!(r.images.is_empty());
    assert_eq!(refs(&store), [format!("{h}/app:1")]);

    // The last name of an image a machine uses: refused, nothing removed.
    let err = store.remove(&format!("{h}/app:1")).await.unwrap_err();
    assert!(matches!(err, ImageError::InUse(_)), "{err:?}");
    assert!(
        err.to_string().contains("app:1") && err.to_string().contains("machine"),
        "{err}"
    );
    assert_eq!(refs(&store), [format!("{h}/app:1")]);
    assert_eq!(layer_dirs(&root(&dir)).len(), 1);

    // Unknown, and malformed.
    assert!(store
        .remove(&format!("{h}/nope:1"))
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store.remove("Bad Ref").await.unwrap_err(),
        ImageError::InvalidReference(_)
    ));

    // Once unused, by digest: everything goes.
    set(&used, &[]);
    let r = store.remove(&image.digest).await.unwrap().unwrap();
    assert_eq!(r.images, std::slice::from_ref(&image.digest));
    assert_eq!(r.references, [format!("{h}/app:1")]);
    assert_empty(&root(&dir));
    assert!(store.remove(&image.digest).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn past_its_limit_the_store_drops_the_least_recently_used_unused_images() {
    let registry = Registry::start();
    let h = registry.host();
    let mib = 1u64 << 20;
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        ImageBuilder::new()
            .layer(Layer::new().file("data", noise(100 + i as u64, mib as usize), 0o644))
            .push_async(&registry, &format!("{name}:1"))
            .await;
    }
    let (dir, store, used) = gc_store(Some(mib * 5 / 2));
    let a = store.pull(&format!("{h}/a:1")).await.unwrap();
    set(&used, &[&a.digest]);
    store.pull(&format!("{h}/b:1")).await.unwrap();
    assert_eq!(refs(&store).len(), 2, "under the limit: nothing collected");
    store.pull(&format!("{h}/c:1")).await.unwrap();
    assert_eq!(
        refs(&store),
        [format!("{h}/a:1"), format!("{h}/c:1")],
        "b was the oldest unused"
    );
    let d = store.pull(&format!("{h}/d:1")).await.unwrap();
    assert_eq!(refs(&store), [format!("{h}/a:1"), format!("{h}/d:1")]);
    assert!(store.disk_usage().unwrap() <= mib * 5 / 2);
    assert_eq!(layer_dirs(&root(&dir)).len(), 2);

    // Everything in use: over the limit, but nothing a machine uses is removed.
    set(&used, &[&a.digest, &d.digest]);
    store.pull(&format!("{h}/e:1")).await.unwrap();
    assert_eq!(
        refs(&store),
        [format!("{h}/a:1"), format!("{h}/d:1"), format!("{h}/e:1")]
    );
    assert!(store.disk_usage().unwrap() > mib * 5 / 2);
}

fn debugfs_bytes(img: &std::path::Path, cmd: &str) -> Vec<u8> {
    Command::new("debugfs")
        .args(["-R", cmd])
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs)")
        .stdout
}

fn debugfs(img: &std::path::Path, cmd: &str) -> String {
    String::from_utf8_lossy(&debugfs_bytes(img, cmd)).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ext4_rootfs_is_built_once_with_whiteouts_applied() {
    let registry = Registry::start();
    let h = registry.host();
    ImageBuilder::busybox()
        .layer(
            Layer::new()
                .file("etc/motd", "hello\n", 0o644)
                .file("var/cache/old", "old", 0o644),
        )
        .layer(Layer::new().whiteout("etc/motd").opaque("var/cache").file(
            "var/cache/new",
            "new",
            0o644,
        ))
        .push_async(&registry, "vm:1")
        .await;
    let (dir, store, used) = gc_store(None);
    let image = store.pull(&format!("{h}/vm:1")).await.unwrap();
    let (p1, p2) = tokio::join!(store.ext4_rootfs(&image), store.ext4_rootfs(&image));
    let (p1, p2) = (p1.unwrap(), p2.unwrap());
    assert_eq!(p1, p2);
    let ino = fs::metadata(&p1).unwrap().ino();
    assert_eq!(
        fs::metadata(store.ext4_rootfs(&image).await.unwrap())
            .unwrap()
            .ino(),
        ino,
        "built once, then reused"
    );
    let etc = debugfs(&p1, "ls -p /etc");
    assert!(etc.contains("/passwd/"), "{etc}");
    assert!(!etc.contains("motd"), "the whiteout applies: {etc}");
    let cache = debugfs(&p1, "ls -p /var/cache");
    assert!(
        cache.contains("/new/") && !cache.contains("/old/"),
        "{cache}"
    );
    assert_eq!(debugfs(&p1, "cat /var/cache/new"), "new");
    assert!(
        debugfs_bytes(&p1, "cat /bin/busybox") == fs::read("/bin/busybox").unwrap(),
        "busybox is whole in the ext4 image"
    );
    assert!(store.disk_usage().unwrap() >= fs::metadata(&p1).unwrap().len());

    // Kept while in use, removed with the image.
    set(&used, &[&image.digest]);
    store.prune().await.unwrap();
    assert!(p1.exists());
    set(&used, &[]);
    let r = store.prune().await.unwrap();
    assert!(r.freed_bytes >= fs::metadata("/bin/busybox").unwrap().len());
    assert!(!p1.exists());
    assert_empty(&root(&dir));
}
