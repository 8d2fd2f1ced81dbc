//! The registry harness itself: start, push (from sync and async code), access log, stop.

use hangar_testkit::{ImageBuilder, Layer, Registry};

#[test]
fn pushes_from_sync_code_land_in_the_registry_and_its_log() {
    let mut registry = Registry::start();
    let image = ImageBuilder::busybox().label("pushed", "sync");
    let digest = image.push(&registry, "team/app:v1");
    assert_eq!(digest, image.build().manifest.digest);
    let body = reqwest::blocking::Client::new()
        .get(format!(
            "http://{}/v2/team/app/manifests/v1",
            registry.host()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(body.status().as_u16(), 200);
    assert_eq!(
        body.bytes().unwrap().as_ref(),
        image.build().manifest.bytes.as_slice()
    );
    let requests = registry.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "PUT" && r.path == "/v2/team/app/manifests/v1" && r.status == 201),
        "{requests:?}"
    );
    assert!(registry
        .blob_path(&image.build().layers[0].digest)
        .is_file());

    registry.stop();
    assert!(reqwest::blocking::get(format!("http://{}/v2/", registry.host())).is_err());
    registry.restart();
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.path == "/v2/team/app/manifests/v1"),
        "the log survives a restart"
    );
}

#[tokio::test]
async fn pushes_work_inside_a_runtime_too() {
    let registry = Registry::start();
    let small = ImageBuilder::new().layer(Layer::new().file("x", "x", 0o644));
    let blocking = small.push(&registry, "small:1");
    let awaited = small.push_async(&registry, "small:2").await;
    assert_eq!(blocking, awaited);
}
