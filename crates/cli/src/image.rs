//! `hangar image ...`: the host's local images over the REST extension endpoints
//! (`/v1/images...`, see docs/images.md).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{output, urlencode};

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI layout directory, OCI archive or `docker save` tarball
    Import {
        path: std::path::PathBuf,
        /// Reference to give the image (default: the name recorded in the archive)
        reference: Option<String>,
    },
    /// List the host's images
    #[command(visible_alias = "ls")]
    List,
    /// Pull an image from its registry into the host's store
    Pull {
        reference: String,
        /// Registry credentials as user:password
        #[arg(long, env = "HANGAR_REGISTRY_AUTH", hide_env_values = true)]
        auth: Option<String>,
    },
    /// Show an image's config, layers and sizes (JSON)
    Inspect { reference: String },
    /// Remove images (by reference or sha256: digest); refused for images machines use
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove every image no machine uses, and the layers only they used
    Prune,
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| x.to_string())
        })
        .unwrap_or_default()
}

pub async fn run(api: &Client, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Import { path, reference } => {
            let archive = archive_for_upload(&path)?;
            let file = tokio::fs::File::open(archive.path())
                .await
                .context("opening the archive")?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let query = reference
                .map(|r| format!("?ref={}", urlencode(&r)))
                .unwrap_or_default();
            let res: Value = api.upload(&format!("/images/import{query}"), body).await?;
            println!(
                "Imported {} ({})",
                text(&res, "reference"),
                text(&res, "digest")
            );
        }
        ImageCommand::List => {
            let images: Vec<Value> = api.get("/images").await?;
            let rows = images
                .iter()
                .map(|i| {
                    vec![
                        text(i, "reference"),
                        text(i, "digest").chars().take(19).collect(),
                        text(i, "layers"),
                        output::bytes(i.get("size").and_then(Value::as_u64).unwrap_or(0)),
                    ]
                })
                .collect();
            output::table(&["REFERENCE", "DIGEST", "LAYERS", "SIZE"], rows);
        }
        ImageCommand::Pull { reference, auth } => {
            let mut body = json!({ "image": reference });
            if let Some(a) = auth.filter(|a| !a.is_empty()) {
                let Some((user, password)) = a.split_once(':') else {
                    bail!("registry credentials (--auth or HANGAR_REGISTRY_AUTH) must be user:password");
                };
                body["auth"] = json!({ "username": user, "password": password });
            }
            let pull = api.post::<Value>("/images/pull", Some(body));
            let res = if std::io::stderr().is_terminal() {
                with_progress(api, &reference, pull).await?
            } else {
                pull.await?
            };
            println!(
                "Pulled {} ({})",
                text(&res, "reference"),
                text(&res, "digest")
            );
        }
        ImageCommand::Inspect { reference } => {
            let res: Value = api
                .get(&format!("/images/inspect?ref={}", urlencode(&reference)))
                .await?;
            println!("{}", serde_json::to_string_pretty(&res)?);
        }
        ImageCommand::Rm { references } => {
            let mut failed = false;
            for r in references {
                match api.delete(&format!("/images?ref={}", urlencode(&r))).await {
                    Ok(()) => println!("Removed {r}"),
                    Err(e) => {
                        eprintln!("Error: {r}: {}", output::one_line(&e));
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ImageCommand::Prune => {
            let res: Value = api.post("/images/prune", None).await?;
            let images = res
                .get("images")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let layers = res.get("layers").and_then(Value::as_u64).unwrap_or(0);
            let freed = res.get("freed_bytes").and_then(Value::as_u64).unwrap_or(0);
            println!(
                "Removed {images} image(s) and {layers} layer(s), freed {}",
                output::bytes(freed)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for `pull`, showing the bytes received so far on one terminal line.
async fn with_progress(
    api: &Client,
    reference: &str,
    pull: impl std::future::Future<Output = anyhow::Result<Value>>,
) -> anyhow::Result<Value> {
    tokio::pin!(pull);
    let mut shown = false;
    loop {
        tokio::select! {
            res = &mut pull => {
                if shown {
                    eprint!("\r\x1b[K");
                }
                return res;
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                let Ok(pulls) = api.get::<Vec<Value>>("/images/pulls").await else { continue };
                let Some(p) = pulls.iter().find(|p| text(p, "reference").contains(reference.trim_start_matches("docker.io/"))) else { continue };
                let layers = p.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
                let sum = |k: &str| layers.iter().filter_map(|l| l.get(k).and_then(Value::as_u64)).sum::<u64>();
                let done = layers.iter().filter(|l| l.get("done").and_then(Value::as_bool) == Some(true)).count();
                eprint!(
                    "\r\x1b[K{}: {} of {} ({done}/{} layers)",
                    text(p, "reference"),
                    output::bytes(sum("received")),
                    output::bytes(sum("size")),
                    layers.len()
                );
                shown = true;
            }
        }
    }
}

/// The file to upload: an archive as is, or a layout directory packed into a temporary tar.
enum Upload {
    File(std::path::PathBuf),
    Packed(tempfile::NamedTempFile),
}

impl Upload {
    fn path(&self) -> &std::path::Path {
        match self {
            Upload::File(p) => p,
            Upload::Packed(t) => t.path(),
        }
    }
}

fn archive_for_upload(path: &std::path::Path) -> anyhow::Result<Upload> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() {
        return Ok(Upload::File(path.to_path_buf()));
    }
    if !path.join("index.json").is_file() && !path.join("manifest.json").is_file() {
        bail!(
            "{} is neither an image archive nor an OCI layout directory (no index.json)",
            path.display()
        );
    }
    let tmp = tempfile::NamedTempFile::new().context("creating a temporary archive")?;
    let mut builder = tar::Builder::new(tmp.reopen()?);
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", path)
        .with_context(|| format!("packing {}", path.display()))?;
    builder.finish()?;
    Ok(Upload::Packed(tmp))
}
