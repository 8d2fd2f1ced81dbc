//! `hangar image`: the host's local images.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::output;

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
                res.get("reference").and_then(Value::as_str).unwrap_or("?"),
                res.get("digest").and_then(Value::as_str).unwrap_or("?")
            );
        }
        ImageCommand::List => {
            let images: Vec<Value> = api.get("/images").await?;
            let rows = images
                .iter()
                .map(|i| {
                    let s = |k: &str| {
                        i.get(k)
                            .map(|v| {
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string())
                            })
                            .unwrap_or_default()
                    };
                    let digest = s("digest");
                    vec![
                        s("reference"),
                        digest.chars().take(19).collect(),
                        output::bytes(i.get("size").and_then(Value::as_u64).unwrap_or(0)),
                    ]
                })
                .collect();
            output::table(&["REFERENCE", "DIGEST", "SIZE"], rows);
        }
    }
    Ok(ExitCode::SUCCESS)
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

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
