//! OCI images built in memory for tests, from layers described file by file: pushed to a test
//! registry, written as an OCI layout or archive, or as a `docker save` archive. Builds are
//! deterministic (fixed mtimes, sorted JSON), so the same image always has the same digest.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::registry::Registry;

/// The mtime of every entry: fixed, so that builds are reproducible.
const MTIME: u64 = 1_700_000_000;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Busybox applets linked in `/bin` of [`ImageBuilder::busybox`].
const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "ls",
    "cat",
    "echo",
    "sleep",
    "true",
    "false",
    "env",
    "id",
    "ps",
    "mkdir",
    "rm",
    "rmdir",
    "touch",
    "test",
    "[",
    "grep",
    "hostname",
    "kill",
    "wc",
    "head",
    "tail",
    "date",
    "uname",
    "stat",
    "mount",
    "umount",
    "df",
    "du",
    "nproc",
    "printf",
    "tee",
    "yes",
    "seq",
    "basename",
    "dirname",
    "readlink",
    "chmod",
    "chown",
    "whoami",
    "pwd",
    "sync",
    "find",
    "xargs",
    "nc",
    "wget",
    "stty",
    "tty",
    "top",
    "free",
    "uptime",
    "cut",
    "tr",
    "sort",
    "uniq",
    "od",
    "hexdump",
    "cp",
    "mv",
    "ln",
    "sed",
    "awk",
    "vi",
    "less",
    "more",
    "dd",
    "md5sum",
    "sha256sum",
    "ip",
    "ifconfig",
    "ping",
    "netstat",
    "mknod",
    "timeout",
    "watch",
    "which",
    "expr",
    "realpath",
    "mktemp",
    "tar",
    "gzip",
    "gunzip",
    "base64",
    "diff",
    "cmp",
    "pidof",
    "killall",
    "su",
    "chroot",
    "setsid",
    "hwclock",
    "dmesg",
    "getty",
    "login",
    "poweroff",
    "reboot",
    "halt",
    "init",
    "sysctl",
    "usleep",
    "fold",
    "rev",
    "tac",
    "nl",
    "paste",
    "logger",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            // Docker has no zstd type of its own; registries and runtimes take OCI's.
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar).expect("gzip in memory");
                enc.finish().expect("gzip in memory")
            }
            Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd in memory"),
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    Fifo,
}

#[derive(Clone, Debug)]
struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// One layer, entry by entry, in order. Paths are relative to the image root (a leading `/`
/// is dropped).
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: Vec<Entry>,
    owner: (u64, u64),
    compression: Option<Compression>,
    raw: Option<Vec<u8>>,
}

fn rel(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    /// A layer whose tar is exactly these bytes (to build hostile layers).
    pub fn from_tar(tar: Vec<u8>) -> Layer {
        Layer {
            raw: Some(tar),
            ..Layer::default()
        }
    }

    /// Owner of the entries added after this call (0:0 before any).
    pub fn owner(mut self, uid: u32, gid: u32) -> Layer {
        self.owner = (uid.into(), gid.into());
        self
    }

    /// This layer's compression, instead of the image's.
    pub fn compression(mut self, c: Compression) -> Layer {
        self.compression = Some(c);
        self
    }

    fn push(mut self, path: &str, kind: Kind, mode: u32) -> Layer {
        let (uid, gid) = self.owner;
        self.entries.push(Entry {
            path: rel(path),
            kind,
            mode,
            uid,
            gid,
        });
        self
    }

    pub fn file(self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Layer {
        self.push(path, Kind::File(contents.into()), mode)
    }

    pub fn dir(self, path: &str, mode: u32) -> Layer {
        self.push(path, Kind::Dir, mode)
    }

    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.push(path, Kind::Symlink(target.to_string()), 0o777)
    }

    /// A hardlink to `target`, an earlier entry of this layer (path relative to the root).
    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        self.push(path, Kind::Hardlink(rel(target)), 0o644)
    }

    pub fn fifo(self, path: &str, mode: u32) -> Layer {
        self.push(path, Kind::Fifo, mode)
    }

    /// Deletes `path` of the layers below (an OCI whiteout, `.wh.NAME`).
    pub fn whiteout(self, path: &str) -> Layer {
        let p = rel(path);
        let wh = match p.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{p}"),
        };
        self.push(&wh, Kind::File(Vec::new()), 0o644)
    }

    /// Hides what the layers below have in `dir` (an OCI opaque whiteout, `.wh..wh..opq`).
    pub fn opaque(self, dir: &str) -> Layer {
        let d = rel(dir);
        let marker = if d.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            format!("{}/.wh..wh..opq", d.trim_end_matches('/'))
        };
        self.push(&marker, Kind::File(Vec::new()), 0o644)
    }

    /// The layer's uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(MTIME);
            h.set_size(0);
            let written = match &e.kind {
                Kind::File(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, &e.path, data.as_slice())
                }
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    b.append_data(&mut h, &e.path, io::empty())
                }
                Kind::Fifo => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    b.append_data(&mut h, &e.path, io::empty())
                }
                Kind::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, &e.path, target)
                }
                Kind::Hardlink(target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    b.append_link(&mut h, &e.path, target)
                }
            };
            written.unwrap_or_else(|err| panic!("layer entry {}: {err}", e.path));
        }
        b.into_inner().expect("tar in memory")
    }
}

/// A blob: its bytes, digest and media type.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: sha256(&bytes),
            bytes,
        }
    }

    fn json(media_type: &str, value: &Value) -> Blob {
        Blob::new(media_type, serde_json::to_vec(value).expect("json"))
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An image's blobs, as a registry would hold them.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest: Blob,
    pub config: Blob,
    /// Compressed as the builder said, lowest first.
    pub layers: Vec<Blob>,
    /// sha256 of each uncompressed layer tar.
    pub diff_ids: Vec<String>,
    /// The uncompressed tars (for docker archives).
    pub tars: Vec<Vec<u8>>,
}

/// Builds an image. Without `architecture`, it is linux/amd64.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    layers: Vec<Layer>,
    compression: Compression,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    workdir: String,
    user: String,
    labels: BTreeMap<String, String>,
    architecture: String,
    variant: Option<String>,
    docker_media_types: bool,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder::new()
    }
}

impl ImageBuilder {
    /// An image with no layers yet (add at least one).
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            layers: Vec::new(),
            compression: Compression::Gzip,
            entrypoint: None,
            cmd: None,
            env: Vec::new(),
            workdir: String::new(),
            user: String::new(),
            labels: BTreeMap::new(),
            architecture: "amd64".into(),
            variant: None,
            docker_media_types: false,
        }
    }

    /// A small Linux userland: the host's static `/bin/busybox` with its common applets,
    /// `/etc/passwd` and `/etc/group` (root, nobody, app:1000), `/tmp` 1777, `/home/app`
    /// owned by 1000, and the empty mount points `/proc /sys /dev /run`. Cmd is `sh`.
    pub fn busybox() -> ImageBuilder {
        ImageBuilder::new()
            .layer(busybox_layer().clone())
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .cmd(&["sh"])
    }

    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    /// Compression of the layers that do not choose their own (gzip unless told).
    pub fn compression(mut self, c: Compression) -> ImageBuilder {
        self.compression = c;
        self
    }

    pub fn entrypoint(mut self, args: &[&str]) -> ImageBuilder {
        self.entrypoint = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn cmd(mut self, args: &[&str]) -> ImageBuilder {
        self.cmd = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Sets `key=value`, replacing an earlier value of `key`.
    pub fn env(mut self, key: &str, value: &str) -> ImageBuilder {
        self.env
            .retain(|kv| kv.split_once('=').map(|(k, _)| k) != Some(key));
        self.env.push(format!("{key}={value}"));
        self
    }

    pub fn workdir(mut self, dir: &str) -> ImageBuilder {
        self.workdir = dir.to_string();
        self
    }

    pub fn user(mut self, user: &str) -> ImageBuilder {
        self.user = user.to_string();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> ImageBuilder {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// The platform it claims (`arm64`, `Some("v8")`...); the content stays what it is.
    pub fn architecture(mut self, arch: &str, variant: Option<&str>) -> ImageBuilder {
        self.architecture = arch.to_string();
        self.variant = variant.map(str::to_string);
        self
    }

    /// Docker schema 2 media types instead of OCI's.
    pub fn docker_media_types(mut self) -> ImageBuilder {
        self.docker_media_types = true;
        self
    }

    /// The image's blobs.
    pub fn build(&self) -> BuiltImage {
        assert!(!self.layers.is_empty(), "an image needs at least one layer");
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut tars = Vec::new();
        for l in &self.layers {
            let tar = l.tar();
            let c = l.compression.unwrap_or(self.compression);
            let media_type = if self.docker_media_types {
                c.docker_media_type()
            } else {
                c.oci_media_type()
            };
            diff_ids.push(sha256(&tar));
            layers.push(Blob::new(media_type, c.compress(&tar)));
            tars.push(tar);
        }
        let mut config = self.platform();
        config["config"] = json!({
            "Entrypoint": self.entrypoint,
            "Cmd": self.cmd,
            "Env": self.env,
            "WorkingDir": self.workdir,
            "User": self.user,
            "Labels": self.labels,
        });
        config["rootfs"] = json!({ "type": "layers", "diff_ids": diff_ids });
        config["history"] =
            json!([{ "created": "2023-11-14T22:13:20Z", "created_by": "hangar-testkit" }]);
        let config = Blob::json(
            if self.docker_media_types {
                DOCKER_CONFIG
            } else {
                OCI_CONFIG
            },
            &config,
        );
        let manifest_type = if self.docker_media_types {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        let manifest = Blob::json(
            manifest_type,
            &json!({
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": config.descriptor(),
                "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
            }),
        );
        BuiltImage {
            manifest,
            config,
            layers,
            diff_ids,
            tars,
        }
    }

    fn platform(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": "linux" });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }

    /// Pushes the image to `registry` as `name` (`repo[:tag]`); returns the manifest digest.
    /// Blocking: usable from sync tests and, on its own thread, from async ones too.
    pub fn push(&self, registry: &Registry, name: &str) -> String {
        block_on(self.push_async(registry, name))
    }

    pub async fn push_async(&self, registry: &Registry, name: &str) -> String {
        let (repo, tag) = split_name(name);
        let built = self.build();
        push_blobs(registry, repo, &built).await;
        registry.push_manifest(repo, tag, &built.manifest).await
    }

    /// Pushes a multi-platform index of `images` (each under its own platform) as `name`;
    /// returns the index digest. Blocking, like `push`.
    pub fn push_index(registry: &Registry, name: &str, images: &[ImageBuilder]) -> String {
        block_on(Self::push_index_async(registry, name, images))
    }

    pub async fn push_index_async(
        registry: &Registry,
        name: &str,
        images: &[ImageBuilder],
    ) -> String {
        let (repo, tag) = split_name(name);
        let mut entries = Vec::new();
        for image in images {
            let built = image.build();
            push_blobs(registry, repo, &built).await;
            registry
                .push_manifest(repo, &built.manifest.digest, &built.manifest)
                .await;
            let mut d = built.manifest.descriptor();
            d["platform"] = image.platform();
            entries.push(d);
        }
        let index = Blob::json(
            OCI_INDEX,
            &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries }),
        );
        registry.push_manifest(repo, tag, &index).await
    }

    /// Writes an OCI image layout into `dir` (created if needed); `ref_name` becomes the
    /// `org.opencontainers.image.ref.name` annotation (none if empty). Returns the manifest
    /// digest. Panics on I/O errors (see `try_write_oci_layout`).
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) -> String {
        self.try_write_oci_layout(dir, ref_name)
            .unwrap_or_else(|e| panic!("cannot write an OCI layout to {}: {e}", dir.display()))
    }

    pub fn try_write_oci_layout(&self, dir: &Path, ref_name: &str) -> io::Result<String> {
        let built = self.build();
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs)?;
        for b in built.layers.iter().chain([&built.config, &built.manifest]) {
            fs::write(blobs.join(&b.digest["sha256:".len()..]), &b.bytes)?;
        }
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut entry = built.manifest.descriptor();
        if !ref_name.is_empty() {
            entry["annotations"] = json!({ "org.opencontainers.image.ref.name": ref_name });
        }
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry] });
        fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(built.manifest.digest)
    }

    /// Writes an OCI archive: a tar of an OCI image layout (`ref_name` as for
    /// `write_oci_layout`). Returns the manifest digest. Panics on I/O errors.
    pub fn write_oci_archive(&self, path: &Path, ref_name: &str) -> String {
        self.try_write_oci_archive(path, ref_name)
            .unwrap_or_else(|e| panic!("cannot write an OCI archive to {}: {e}", path.display()))
    }

    pub fn try_write_oci_archive(&self, path: &Path, ref_name: &str) -> io::Result<String> {
        let dir = tempfile::tempdir()?;
        let digest = self.try_write_oci_layout(dir.path(), ref_name)?;
        let mut b = tar::Builder::new(fs::File::create(path)?);
        b.mode(tar::HeaderMode::Deterministic);
        b.append_dir_all(".", dir.path())?;
        b.into_inner()?.sync_all()?;
        Ok(digest)
    }

    /// Writes what `docker save` writes (its classic format): `manifest.json` naming the image
    /// `tag`, the config as `<hex>.json`, each layer as `<diff id hex>/layer.tar`,
    /// uncompressed. Panics on I/O errors.
    pub fn write_docker_archive(&self, path: &Path, tag: &str) {
        self.try_write_docker_archive(path, tag)
            .unwrap_or_else(|e| panic!("cannot write a docker archive to {}: {e}", path.display()))
    }

    pub fn try_write_docker_archive(&self, path: &Path, tag: &str) -> io::Result<()> {
        let built = self.build();
        let mut b = tar::Builder::new(fs::File::create(path)?);
        let mut add = |name: &str, bytes: &[u8]| -> io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_mtime(MTIME);
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, name, bytes)
        };
        let config_name = format!("{}.json", &built.config.digest["sha256:".len()..]);
        add(&config_name, &built.config.bytes)?;
        let mut layer_names = Vec::new();
        for (tar, diff_id) in built.tars.iter().zip(&built.diff_ids) {
            let name = format!("{}/layer.tar", &diff_id["sha256:".len()..]);
            add(&name, tar)?;
            layer_names.push(name);
        }
        let manifest = json!([{ "Config": config_name, "RepoTags": [tag], "Layers": layer_names }]);
        add("manifest.json", &serde_json::to_vec(&manifest)?)?;
        b.into_inner()?.sync_all()
    }
}

/// Runs a future to completion on a runtime of its own, on a thread of its own, so that it
/// works whether or not the caller is inside a tokio runtime.
fn block_on<F: std::future::Future + Send>(fut: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

async fn push_blobs(registry: &Registry, repo: &str, built: &BuiltImage) {
    for blob in built.layers.iter().chain([&built.config]) {
        registry.push_blob(repo, blob).await;
    }
}

/// `repo[:tag]` → (repo, tag); the tag defaults to `latest`.
fn split_name(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    }
}

/// The busybox layer, built once per process (the binary is a couple of MiB).
fn busybox_layer() -> &'static Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER.get_or_init(|| {
        let busybox = fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static) is needed to build test images");
        let mut l = Layer::new()
            .dir("bin", 0o755)
            .file("bin/busybox", busybox, 0o755)
            .dir("etc", 0o755)
            .file(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n",
                0o644,
            )
            .file("etc/group", "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n", 0o644)
            .file("etc/hostname", "busybox\n", 0o644)
            .dir("root", 0o700)
            .dir("tmp", 0o1777)
            .dir("home", 0o755)
            .dir("proc", 0o555)
            .dir("sys", 0o555)
            .dir("dev", 0o755)
            .dir("run", 0o755)
            .dir("var", 0o755)
            .dir("usr", 0o755)
            .dir("usr/bin", 0o755)
            .symlink("usr/bin/env", "/bin/busybox")
            .owner(1000, 1000)
            .dir("home/app", 0o755)
            .owner(0, 0);
        for applet in APPLETS {
            l = l.symlink(&format!("bin/{applet}"), "busybox");
        }
        l
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_deterministic_and_consistent() {
        let a = ImageBuilder::busybox().label("x", "1").build();
        let b = ImageBuilder::busybox().label("x", "1").build();
        assert_eq!(a.manifest.digest, b.manifest.digest);
        assert_eq!(a.diff_ids.len(), 1);
        assert_eq!(a.diff_ids[0], sha256(&a.tars[0]));
        let config: Value = serde_json::from_slice(&a.config.bytes).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], json!(a.diff_ids[0]));
        assert_eq!(config["config"]["Labels"]["x"], json!("1"));
        assert_eq!(config["config"]["Cmd"], json!(["sh"]));
        let manifest: Value = serde_json::from_slice(&a.manifest.bytes).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], json!(a.layers[0].digest));
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            json!("application/vnd.oci.image.layer.v1.tar+gzip")
        );
    }

    #[test]
    fn whiteout_and_opaque_names() {
        let tar = Layer::new()
            .whiteout("/etc/motd")
            .whiteout("top")
            .opaque("var/cache/")
            .tar();
        let mut names = Vec::new();
        for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().to_string_lossy().to_string());
        }
        assert_eq!(names, ["etc/.wh.motd", ".wh.top", "var/cache/.wh..wh..opq"]);
    }

    #[test]
    fn names_split_into_repo_and_tag() {
        assert_eq!(split_name("busybox"), ("busybox", "latest"));
        assert_eq!(split_name("team/app:v1"), ("team/app", "v1"));
    }
}
