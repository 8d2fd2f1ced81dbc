//! The JSON documents of an image: manifests, indexes and the image config, read leniently
//! (Docker schema 2 and OCI use the same field names) and checked for what the store needs.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{reference, ImageConfig};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub(crate) const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What we ask registries for: the four manifest kinds we understand.
pub(crate) const ACCEPTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub(crate) struct PlatformSpec {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A manifest or an index: which one is told by `mediaType`, or by which fields are present.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: i64,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug)]
pub(crate) enum Manifest {
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    Index(Vec<Descriptor>),
}

/// Parses a manifest or index; the error is a phrase ("is not JSON: ...").
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("is not a valid manifest: {e}"))?;
    if raw.schema_version == 1 {
        return Err(
            "uses Docker schema 1, which is not supported (push it again with a current Docker)"
                .into(),
        );
    }
    if raw.schema_version != 2 {
        return Err(format!(
            "has unsupported schemaVersion {}",
            raw.schema_version
        ));
    }
    let is_index = match raw.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(format!("has unsupported media type {other}")),
        None => raw.manifests.is_some(),
    };
    if is_index {
        let manifests = raw.manifests.ok_or("is an index without manifests")?;
        return Ok(Manifest::Index(manifests));
    }
    let config = raw.config.ok_or("has no config")?;
    let layers = raw.layers.unwrap_or_default();
    if layers.is_empty() {
        return Err("has no layers".into());
    }
    for d in std::iter::once(&config).chain(&layers) {
        if reference::digest_hex(&d.digest).is_none() {
            return Err(format!(
                "names a blob by an unsupported digest {:?} (only sha256 is supported)",
                d.digest
            ));
        }
    }
    Ok(Manifest::Image { config, layers })
}

/// The GOARCH name of the architecture this binary runs on.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Picks the linux manifest for `arch` from an index. On arm64 an entry without a variant or
/// with variant v8 is preferred. Err lists what the index offers instead.
pub(crate) fn select_platform<'a>(
    entries: &'a [Descriptor],
    arch: &str,
) -> Result<&'a Descriptor, String> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .filter(|d| matches!(d.media_type.as_str(), "" | OCI_MANIFEST | DOCKER_MANIFEST))
        .collect();
    let preferred = candidates.iter().find(|d| {
        let variant = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        arch != "arm64" || matches!(variant, None | Some("v8"))
    });
    if let Some(d) = preferred.or(candidates.first()) {
        return Ok(d);
    }
    let offered: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| !(p.os == "unknown" && p.architecture == "unknown")) // build attestations
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    Err(if offered.is_empty() {
        format!("the index lists no linux/{arch} manifest")
    } else {
        format!(
            "no linux/{arch} manifest; the image is built for {}",
            offered.join(", ")
        )
    })
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: Option<RawRootfs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// What the store keeps of an image config.
#[derive(Debug)]
pub(crate) struct ParsedConfig {
    pub run: ImageConfig,
    pub diff_ids: Vec<String>,
    pub architecture: String,
    pub os: String,
}

/// Parses an image config and checks it suits `layer_count` layers; the error is a phrase.
pub(crate) fn parse_config(bytes: &[u8], layer_count: usize) -> Result<ParsedConfig, String> {
    let raw: RawConfig =
        serde_json::from_slice(bytes).map_err(|e| format!("has an invalid config: {e}"))?;
    let diff_ids = raw
        .rootfs
        .map(|r| r.diff_ids)
        .ok_or("has a config without rootfs.diff_ids")?;
    if diff_ids.len() != layer_count {
        return Err(format!(
            "has {} layers but its config lists {} diff_ids",
            layer_count,
            diff_ids.len()
        ));
    }
    if let Some(bad) = diff_ids.iter().find(|d| reference::digest_hex(d).is_none()) {
        return Err(format!(
            "has a config with an unsupported diff_id {bad:?} (only sha256 is supported)"
        ));
    }
    let c = raw.config.unwrap_or_default();
    Ok(ParsedConfig {
        run: ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
        },
        diff_ids,
        architecture: raw.architecture,
        os: raw.os,
    })
}

/// Rejects a single-platform image built for another platform (an empty field means unknown,
/// which is let through: old images often leave them out).
pub(crate) fn check_config_platform(config: &ParsedConfig, arch: &str) -> Result<(), String> {
    let os_ok = config.os.is_empty() || config.os == "linux";
    let arch_ok = config.architecture.is_empty() || config.architecture == arch;
    if os_ok && arch_ok {
        Ok(())
    } else {
        Err(format!(
            "the image is built for {}/{}, this host runs linux/{arch}",
            config.os, config.architecture
        ))
    }
}

/// How a layer blob is compressed, from its media type; None: look at its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(crate) fn layer_compression(media_type: &str) -> Result<Option<Compression>, String> {
    let m = media_type;
    if m.ends_with("+gzip") || m.ends_with(".tar.gzip") || m.ends_with(".tar.gz") {
        Ok(Some(Compression::Gzip))
    } else if m.ends_with("+zstd") || m.ends_with(".tar.zstd") {
        Ok(Some(Compression::Zstd))
    } else if m.ends_with(".tar") || m.ends_with(".v1.tar") {
        Ok(Some(Compression::None))
    } else if m.is_empty() {
        Ok(None)
    } else {
        Err(format!("has a layer of unsupported media type {m}"))
    }
}

/// Compression told by magic bytes (for docker archives, whose layers carry no media type).
pub(crate) fn sniff_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: char, os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            size: 1,
            platform: Some(PlatformSpec {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        }
    }

    #[test]
    fn platform_selection_picks_linux_of_the_host_arch() {
        let idx = vec![
            entry('1', "linux", "arm64", Some("v8")),
            entry('2', "windows", "amd64", None),
            entry('3', "linux", "amd64", None),
            entry('4', "unknown", "unknown", None),
        ];
        assert_eq!(
            select_platform(&idx, "amd64").unwrap().digest,
            idx[2].digest
        );
        assert_eq!(
            select_platform(&idx, "arm64").unwrap().digest,
            idx[0].digest
        );
        let err = select_platform(&idx, "riscv64").unwrap_err();
        assert_eq!(err, "no linux/riscv64 manifest; the image is built for linux/arm64/v8, windows/amd64, linux/amd64");
    }

    #[test]
    fn platform_selection_prefers_arm64_v8_and_skips_nested_indexes() {
        let mut nested = entry('9', "linux", "amd64", None);
        nested.media_type = OCI_INDEX.into();
        let idx = vec![
            nested,
            entry('5', "linux", "arm64", Some("v9")),
            entry('6', "linux", "arm64", None),
        ];
        assert_eq!(
            select_platform(&idx, "arm64").unwrap().digest,
            idx[2].digest
        );
        assert!(select_platform(&idx, "amd64").is_err());
        let only_v9 = vec![entry('5', "linux", "arm64", Some("v9"))];
        assert_eq!(
            select_platform(&only_v9, "arm64").unwrap().digest,
            only_v9[0].digest
        );
        let no_platforms = vec![Descriptor {
            platform: None,
            ..entry('7', "", "", None)
        }];
        assert_eq!(
            select_platform(&no_platforms, "amd64").unwrap_err(),
            "the index lists no linux/amd64 manifest"
        );
    }

    #[test]
    fn host_arch_is_goarch() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host_arch(), "amd64");
    }

    #[test]
    fn manifests_and_indexes_are_told_apart() {
        let d = format!("sha256:{}", "a".repeat(64));
        let img = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{d}","size":3}},"layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","digest":"{d}","size":4}}]}}"#
        );
        match parse_manifest(img.as_bytes()).unwrap() {
            Manifest::Image { config, layers } => {
                assert_eq!(config.size, 3);
                assert_eq!(layers.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        assert!(
            matches!(parse_manifest(idx.as_bytes()).unwrap(), Manifest::Index(m) if m.len() == 1)
        );
        assert!(parse_manifest(br#"{"schemaVersion":1,"name":"x"}"#)
            .unwrap_err()
            .contains("schema 1"));
        assert!(parse_manifest(b"<html>")
            .unwrap_err()
            .contains("not a valid manifest"));
        let bad_digest = img.replace(&d, "md5:abc");
        assert!(parse_manifest(bad_digest.as_bytes())
            .unwrap_err()
            .contains("md5:abc"));
    }

    #[test]
    fn config_fields_and_diff_ids() {
        let d = format!("sha256:{}", "b".repeat(64));
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/bin/sh","-c"],"Cmd":null,"Env":["PATH=/bin"],"WorkingDir":"/app","User":"1000:1000","Labels":{{"a":"b"}}}},"rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#
        );
        let c = parse_config(json.as_bytes(), 1).unwrap();
        assert_eq!(c.run.entrypoint, ["/bin/sh", "-c"]);
        assert!(c.run.cmd.is_empty());
        assert_eq!(c.run.env, ["PATH=/bin"]);
        assert_eq!(c.run.working_dir, "/app");
        assert_eq!(c.run.user, "1000:1000");
        assert_eq!(c.run.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(c.diff_ids, std::slice::from_ref(&d));
        assert!(check_config_platform(&c, "amd64").is_ok());
        assert!(check_config_platform(&c, "arm64")
            .unwrap_err()
            .contains("linux/amd64"));
        assert!(parse_config(json.as_bytes(), 2)
            .unwrap_err()
            .contains("2 layers"));
        let no_config = format!(r#"{{"rootfs":{{"diff_ids":["{d}"]}}}}"#);
        assert_eq!(
            parse_config(no_config.as_bytes(), 1).unwrap().run,
            ImageConfig::default()
        );
    }

    #[test]
    fn compression_from_media_type_or_magic() {
        assert_eq!(
            layer_compression(DOCKER_LAYER_GZIP).unwrap(),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression(DOCKER_LAYER_TAR).unwrap(),
            Some(Compression::None)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Some(Compression::Zstd)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar").unwrap(),
            Some(Compression::None)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")
                .unwrap(),
            Some(Compression::Gzip)
        );
        assert!(layer_compression("application/vnd.wasm.content.layer.v1+wasm").is_err());
        assert_eq!(sniff_compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            sniff_compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(sniff_compression(b"bin/\0\0"), Compression::None);
    }
}
