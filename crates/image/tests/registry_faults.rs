//! Registries that want credentials (basic auth, and the bearer-token flow through a token
//! server), and registries that fail mid-pull: against a real docker-registry on loopback,
//! with a small HTTP front written here (common/proxy.rs) for tokens and broken transfers.

mod common;

use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::proxy::{Fault, Proxy};
use common::{assert_empty, layer_dirs, noise, root, store, store_with};
use hangar_image::{CredentialSources, Credentials, ImageError, PullOptions, StoreOptions};
use hangar_testkit::{Compression, ImageBuilder, Layer, Registry};

fn with(c: Credentials) -> PullOptions {
    PullOptions {
        credentials: Some(c),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_from_the_request_a_docker_config_or_the_env_form() {
    let registry = Registry::start_with_auth();
    let (user, pass) = registry.credentials().unwrap();
    ImageBuilder::busybox()
        .label("private", "yes")
        .push_async(&registry, "private:1")
        .await;
    let reference = format!("{}/private:1", registry.host());

    // Without credentials, or with wrong ones: refused, naming the registry; nothing stored.
    let (dir, store) = store();
    for opts in [
        PullOptions::default(),
        with(Credentials::new(&user, "wrong")),
    ] {
        let err = store.pull_with(&reference, &opts).await.unwrap_err();
        assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
        assert!(err.to_string().contains(&registry.host()), "{err}");
        assert!(
            !err.to_string().contains(&pass),
            "the password never shows: {err}"
        );
        assert_empty(&root(&dir));
    }

    // The request's own credentials.
    let image = store
        .pull_with(&reference, &with(Credentials::new(&user, &pass)))
        .await
        .unwrap();
    assert_eq!(image.config.labels["private"], "yes");

    // A docker config file (`auth` = base64 of user:password).
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("config.json");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    fs::write(
        &cfg,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let (_d2, from_file) = store_with(StoreOptions {
        credentials: CredentialSources {
            files: vec![cfg_dir.path().join("missing.json"), cfg.clone()],
            ..Default::default()
        },
        ..Default::default()
    });
    assert_eq!(
        from_file.pull(&reference).await.unwrap().digest,
        image.digest
    );

    // HANGAR_REGISTRY_AUTH's form, scoped to the registry.
    let (_d3, from_env) = store_with(StoreOptions {
        credentials: CredentialSources {
            env_value: Some(format!(
                "other.example=x:y {}={user}:{pass}",
                registry.host()
            )),
            ..Default::default()
        },
        ..Default::default()
    });
    assert_eq!(
        from_env.pull(&reference).await.unwrap().digest,
        image.digest
    );

    // A malformed credentials file is a clear error naming it.
    fs::write(&cfg, "{not json").unwrap();
    let (d4, broken) = store_with(StoreOptions {
        credentials: CredentialSources {
            files: vec![cfg.clone()],
            ..Default::default()
        },
        ..Default::default()
    });
    let err = broken.pull(&reference).await.unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    assert_empty(&root(&d4));
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_come_from_the_token_server_and_are_reused() {
    let registry = Registry::start();
    ImageBuilder::busybox()
        .label("tag", "1")
        .push_async(&registry, "secret:1")
        .await;
    ImageBuilder::busybox()
        .label("tag", "2")
        .layer(Layer::new().file("two", "2", 0o644))
        .push_async(&registry, "secret:2")
        .await;
    let proxy = Proxy::start(&registry.host(), Some(("robot", "s3cret"))).await;
    let reference = |tag: &str| format!("{}/secret:{tag}", proxy.host());
    let (dir, store) = store();

    // The token server refuses anonymous and wrong credentials: a clear error, nothing stored.
    for opts in [
        PullOptions::default(),
        with(Credentials::new("robot", "nope")),
    ] {
        let err = store.pull_with(&reference("1"), &opts).await.unwrap_err();
        assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
        assert!(err.to_string().contains(&proxy.host()), "{err}");
        assert_empty(&root(&dir));
    }

    let good = with(Credentials::new("robot", "s3cret"));
    let tokens_before = proxy.token_requests();
    let seen_before = proxy.seen().len();
    let one = store.pull_with(&reference("1"), &good).await.unwrap();
    let two = store.pull_with(&reference("2"), &good).await.unwrap();
    assert_eq!(one.config.labels["tag"], "1");
    assert_eq!(two.config.labels["tag"], "2");
    assert_eq!(
        proxy.token_requests() - tokens_before,
        1,
        "one token for the repository, cached for the second pull"
    );
    let fetched: Vec<_> = proxy.seen()[seen_before..]
        .iter()
        .filter(|s| s.path.contains("/blobs/") || s.path.contains("/manifests/"))
        .cloned()
        .collect();
    assert!(fetched.len() >= 4, "{fetched:?}");
    assert!(
        fetched.iter().all(|s| s.bearer),
        "every manifest and blob request carried the token: {fetched:?}"
    );
}

/// An image of one layer of `mib` MiB of incompressible data.
fn big(seed: u64, mib: usize) -> (ImageBuilder, Vec<u8>) {
    let data = noise(seed, mib << 20);
    let image = ImageBuilder::new()
        .layer(
            Layer::new()
                .file("big", data.clone(), 0o644)
                .compression(Compression::Gzip),
        )
        .cmd(&["/big"]);
    (image, data)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_broken_off_resumes_where_it_stopped() {
    let registry = Registry::start();
    let (image, data) = big(1, 4);
    image.push_async(&registry, "big:1").await;
    let blob = image.build().layers[0].digest.clone();
    let proxy = Proxy::start(&registry.host(), None).await;
    proxy.set_fault(Some(Fault::Cut {
        bytes: 1 << 20,
        times: 2,
    }));
    let (dir, store) = store();
    let pulled = store
        .pull(&format!("{}/big:1", proxy.host()))
        .await
        .unwrap();
    assert_eq!(fs::read(pulled.layers[0].join("big")).unwrap(), data);
    let ranges: Vec<Option<String>> = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(&blob))
        .map(|s| s.range.clone())
        .collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=1048576-".to_string()),
            Some("bytes=2097152-".to_string())
        ],
        "each retry asks only for what is missing"
    );
    assert_eq!(layer_dirs(&root(&dir)).len(), 1);
    assert!(fs::read_dir(root(&dir).join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_killed_mid_pull_is_a_clear_error_and_leaves_no_layer() {
    let mut registry = Registry::start();
    let (image, data) = big(2, 6);
    image.push_async(&registry, "big:2").await;
    let blob = image.build().layers[0].clone();
    let proxy = Proxy::start(&registry.host(), None).await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    proxy.set_fault(Some(Fault::Hold {
        bytes: 2 << 20,
        release: Arc::clone(&release),
    }));
    let (dir, store) = store();
    let reference = format!("{}/big:2", proxy.host());
    let pull = tokio::spawn({
        let (store, reference) = (store.clone(), reference.clone());
        async move { store.pull(&reference).await }
    });

    // Progress shows the layer's bytes while it streams.
    let deadline = Instant::now() + Duration::from_secs(60);
    let layer = loop {
        let p = store.progress();
        if let Some(l) = p
            .iter()
            .find(|p| p.reference == reference)
            .and_then(|p| p.layers.iter().find(|l| l.digest == blob.digest))
        {
            if l.received >= 2 << 20 {
                break l.clone();
            }
        }
        assert!(Instant::now() < deadline, "no progress reported: {p:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(layer.size, blob.bytes.len() as u64);
    assert!(!layer.done);

    registry.stop();
    release.add_permits(1);
    let err = pull.await.unwrap().unwrap_err();
    assert!(matches!(err, ImageError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains(&proxy.host()), "{err}");
    assert_empty(&root(&dir));
    assert!(store.progress().is_empty(), "{:?}", store.progress());

    // Back up: the next pull starts over and succeeds.
    registry.restart();
    let pulled = store.pull(&reference).await.unwrap();
    assert_eq!(fs::read(pulled.layers[0].join("big")).unwrap(), data);
}
