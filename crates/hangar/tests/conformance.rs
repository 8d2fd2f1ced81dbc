//! Conformance with Fly's published schema: schemathesis (from PyPI, installed by
//! `scripts/install-deps.sh`) generates requests for every operation Hangar implements and
//! checks that none gets a 5xx and every response validates against the spec's schemas.
//!
//! Out of scope, and excluded: certificates, IP assignments, volumes, secret keys (KMS),
//! tokens (OIDC/KMS), memory ballooning, deploy tokens and placements; they answer 404 "not
//! supported by this installation" (checked in `parity.rs`). App and machine deletion are
//! excluded too, so the generated requests keep a live app and machine to work on.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{World, APP};
use serde_json::json;

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("HANGAR_SCHEMATHESIS") {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("target/tools/schemathesis/bin/schemathesis");
    assert!(
        p.exists(),
        "schemathesis is not installed at {}: run scripts/install-deps.sh (make test does)",
        p.display()
    );
    p
}

const OUT_OF_SCOPE: &str = "/(certificates|ip_assignments|volumes|secretkeys|memory|deploy_token)|^/tokens|^/platform/placements";

#[test]
fn responses_conform_to_flys_schema_and_nothing_is_a_5xx() {
    let w = World::new();
    let id = w.run("sleep 1000", json!({}));
    // A second app whose name generated requests may not guess, to keep them off the first.
    let spec =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/openapi/fly-machines-v1.json");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
base-url = "{url}/v1"
headers = {{ Authorization = "Bearer {token}" }}
workers = 2
request-timeout = 30.0
seed = 1
generation.max-examples = 6
generation.database = "none"
checks.not_a_server_error.enabled = true
checks.response_schema_conformance.enabled = true
checks.status_code_conformance.enabled = false
checks.content_type_conformance.enabled = false
checks.negative_data_rejection.enabled = false
checks.positive_data_acceptance.enabled = false
checks.missing_required_header.enabled = false
checks.unsupported_method.enabled = false
checks.use_after_free.enabled = false
checks.ensure_resource_availability.enabled = false
checks.ignored_auth.enabled = false

[parameters]
"path.app_name" = "{APP}"
"path.machine_id" = "{id}"
"path.org_slug" = "personal"
# Waits answer within a second instead of holding each request for a minute.
"query.timeout" = 1
"#,
            url = w.server.url(),
            token = w.server.token(),
        ),
    )
    .unwrap();
    let out = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&spec)
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--exclude-path-regex", OUT_OF_SCOPE])
        .args(["--exclude-operation-id", "Apps_delete"])
        .args(["--exclude-operation-id", "Machines_delete"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(dir.path().join("junit.xml"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\nserver log tail:\n{}",
        w.server
            .log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // It really exercised the implemented operations: one test case per operation in the
    // report, none of them failed.
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    let operations = junit.matches("<testcase").count();
    assert!(
        operations >= 30,
        "only {operations} operations tested:\n{stdout}"
    );
    for op in [
        "/lease",
        "/metadata",
        "/secrets",
        "/wait",
        "/versions",
        "/suspend",
        "/orgs/",
    ] {
        assert!(
            junit.contains(op),
            "no operation on {op} was tested:\n{junit}"
        );
    }
    assert!(!junit.contains("<failure"), "{junit}");
}
