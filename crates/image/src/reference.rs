//! Image references, normalized the way docker does it (`busybox` is
//! `docker.io/library/busybox:latest`), and which registries are spoken to over plain HTTP.

use std::net::IpAddr;

use oci_client::Reference;

use crate::ImageError;

/// Parses and normalizes a reference. A bare manifest digest (`sha256:<hex>`) is not a
/// reference; callers that accept one check for it first.
pub(crate) fn parse(reference: &str) -> Result<Reference, ImageError> {
    let trimmed = reference.trim();
    if trimmed.is_empty() {
        return Err(ImageError::InvalidReference(
            "image reference is empty".into(),
        ));
    }
    let r = trimmed.parse::<Reference>().map_err(|e| {
        ImageError::InvalidReference(format!("invalid image reference {trimmed:?}: {e}"))
    })?;
    // The parser lets `UPPER/x` through as a repository (its first part looks like a host
    // but is not one); docker refuses it, and so do we.
    if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ImageError::InvalidReference(format!(
            "invalid image reference {trimmed:?}: repository name must be lowercase"
        )));
    }
    Ok(r)
}

/// The normalized text of a reference: `registry/repository[:tag][@digest]`.
pub(crate) fn normalized(r: &Reference) -> String {
    r.whole()
}

/// `sha256:<64 hex>`: a manifest digest on its own.
pub(crate) fn as_bare_digest(s: &str) -> Option<&str> {
    let hex = s.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(s)
}

/// The hex part of a `sha256:` digest, validated (it becomes a file name).
pub(crate) fn digest_hex(digest: &str) -> Option<&str> {
    as_bare_digest(digest).map(|d| &d[7..])
}

/// Whether `registry` (host[:port] as written in references) is reached over plain HTTP:
/// loopback hosts always, and the configured insecure registries (an entry without a port
/// covers every port of that host).
pub(crate) fn is_plain_http(registry: &str, insecure: &[String]) -> bool {
    let (host, _port) = split_host_port(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        if ip.is_loopback() {
            return true;
        }
    }
    insecure.iter().any(|entry| {
        let entry = entry.trim();
        if entry.eq_ignore_ascii_case(registry) {
            return true;
        }
        let (ehost, eport) = split_host_port(entry);
        eport.is_none() && ehost.eq_ignore_ascii_case(host)
    })
}

/// Splits `host[:port]`, `[v6]` and `[v6]:port`; the host comes back without brackets.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
        return (s, None);
    }
    match s.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address, no port.
        Some((host, _)) if host.contains(':') => (s, None),
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        normalized(&parse(s).unwrap())
    }

    #[test]
    fn docker_style_normalization() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("alpine:3"), "docker.io/library/alpine:3");
        assert_eq!(norm("library/alpine:3"), "docker.io/library/alpine:3");
        assert_eq!(norm("flyio/app:v1"), "docker.io/flyio/app:v1");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("127.0.0.1:5000/busybox"),
            "127.0.0.1:5000/busybox:latest"
        );
        assert_eq!(norm("localhost/team/app:1.2"), "localhost/team/app:1.2");
        assert_eq!(
            norm("registry.fly.io/my-app:deployment-01H"),
            "registry.fly.io/my-app:deployment-01H"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            norm(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        let r = parse(&format!("127.0.0.1:5000/x:1@{d}")).unwrap();
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "x");
        assert_eq!(
            parse("docker.io/library/busybox")
                .unwrap()
                .resolve_registry(),
            "index.docker.io"
        );
    }

    #[test]
    fn malformed_references_are_rejected_with_the_reference_named() {
        for bad in [
            "",
            "  ",
            "Busybox",
            "busybox:",
            "a b",
            "busybox@sha256:abc",
            "-x",
            "x//y",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(
                matches!(err, ImageError::InvalidReference(_)),
                "{bad}: {err}"
            );
        }
        let msg = parse("UPPER/case").unwrap_err().to_string();
        assert!(msg.contains("\"UPPER/case\""), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn bare_digests() {
        let d = format!("sha256:{}", "0f".repeat(32));
        assert_eq!(as_bare_digest(&d), Some(d.as_str()));
        assert_eq!(digest_hex(&d), Some(&d[7..]));
        assert_eq!(as_bare_digest("sha256:abc"), None);
        assert_eq!(as_bare_digest(&format!("sha256:{}", "0F".repeat(32))), None);
        assert_eq!(
            as_bare_digest(&format!("sha256:{}/..", "0".repeat(61))),
            None
        );
        assert_eq!(as_bare_digest("busybox"), None);
    }

    #[test]
    fn plain_http_for_loopback_and_insecure_registries() {
        let none: Vec<String> = vec![];
        assert!(is_plain_http("127.0.0.1:5000", &none));
        assert!(is_plain_http("127.3.2.1", &none));
        assert!(is_plain_http("localhost:5000", &none));
        assert!(is_plain_http("[::1]:5000", &none));
        assert!(!is_plain_http("docker.io", &none));
        assert!(!is_plain_http("index.docker.io", &none));
        assert!(!is_plain_http("10.0.0.1:5000", &none));
        assert!(!is_plain_http("localhost.example.com", &none));
        let insecure = vec!["10.0.0.1:5000".to_string(), "registry.lan".to_string()];
        assert!(is_plain_http("10.0.0.1:5000", &insecure));
        assert!(!is_plain_http("10.0.0.1:5001", &insecure));
        assert!(is_plain_http("registry.lan:443", &insecure));
        assert!(is_plain_http("registry.lan", &insecure));
        assert!(!is_plain_http("other.lan", &insecure));
    }
}
