//! `hangar-mkimage`: writes a busybox image (from the host's static /bin/busybox) as an OCI
//! image layout, an OCI archive or a `docker save` archive, so that a first machine needs no
//! registry and no internet.

use std::path::PathBuf;
use std::process::ExitCode;

use hangar_testkit::ImageBuilder;

const USAGE: &str = "usage: hangar-mkimage --oci DIR [--ref NAME]
       hangar-mkimage --oci-archive FILE [--ref NAME]
       hangar-mkimage --docker-archive FILE --tag NAME";

enum Output {
    Oci(PathBuf),
    OciArchive(PathBuf),
    Docker(PathBuf),
}

fn parse(args: &[String]) -> Result<(Output, Option<String>), String> {
    let mut output = None;
    let mut name = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--oci" => output = Some(Output::Oci(value()?.into())),
            "--oci-archive" => output = Some(Output::OciArchive(value()?.into())),
            "--docker-archive" => output = Some(Output::Docker(value()?.into())),
            "--ref" | "--tag" => name = Some(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let output = output.ok_or("say where to write the image")?;
    if matches!(output, Output::Docker(_)) && name.is_none() {
        return Err("--docker-archive needs --tag NAME".into());
    }
    Ok((output, name))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (output, name) = match parse(&args) {
        Ok(v) => v,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("hangar-mkimage: {msg}");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    if !std::path::Path::new("/bin/busybox").is_file() {
        eprintln!("hangar-mkimage: /bin/busybox is missing (install Debian's busybox-static)");
        return ExitCode::FAILURE;
    }
    let image = ImageBuilder::busybox();
    let result = match &output {
        Output::Oci(dir) => image
            .try_write_oci_layout(dir, name.as_deref().unwrap_or_default())
            .map(|d| format!("{} ({d})", dir.display())),
        Output::OciArchive(file) => image
            .try_write_oci_archive(file, name.as_deref().unwrap_or_default())
            .map(|d| format!("{} ({d})", file.display())),
        Output::Docker(file) => image
            .try_write_docker_archive(file, name.as_deref().unwrap_or_default())
            .map(|()| file.display().to_string()),
    };
    match result {
        Ok(what) => {
            println!("wrote {what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hangar-mkimage: cannot write the image: {e}");
            ExitCode::FAILURE
        }
    }
}
