//! `/v1/openapi.json`: Fly's Machines API v1 schema (kept verbatim in `openapi/`, the contract
//! clients are written against) with Hangar's view of it layered on: the server is this
//! installation, operations it does not offer are marked `x-hangar-unsupported`, and the
//! paths it adds are marked `x-hangar-extension`.

use std::sync::OnceLock;

use serde_json::{json, Value};

const FLY_SPEC: &str = include_str!("../openapi/fly-machines-v1.json");

/// Path prefixes (below `/apps/{app_name}` or at the root) that answer 404 "not supported".
pub(crate) const UNSUPPORTED: &[&str] = &[
    "/apps/{app_name}/certificates",
    "/apps/{app_name}/deploy_token",
    "/apps/{app_name}/ip_assignments",
    "/apps/{app_name}/secretkeys",
    "/apps/{app_name}/volumes",
    "/apps/{app_name}/machines/{machine_id}/memory",
    "/orgs/{org_slug}/volumes",
    "/platform/placements",
    "/tokens",
];

fn extensions() -> Value {
    let op = |id: &str, summary: &str, params: &[(&str, &str)]| {
        let parameters: Vec<Value> = params
            .iter()
            .map(|(name, place)| json!({ "name": name, "in": place, "schema": { "type": "string" } }))
            .collect();
        json!({
            "summary": summary,
            "operationId": id,
            "x-hangar-extension": true,
            "parameters": parameters,
            "responses": { "200": { "description": "See docs/api.md" } }
        })
    };
    let app = ("app_name", "path");
    let machine = ("machine_id", "path");
    json!({
        "/apps/{app_name}/logs": {
            "get": op("Hangar_logs", "The machines' stdout and stderr; follow=true streams NDJSON",
                &[app, ("instance", "query"), ("lines", "query"), ("follow", "query")])
        },
        "/apps/{app_name}/machines/{machine_id}/exec/ws": {
            "get": op("Hangar_exec_session", "An interactive exec over WebSocket (see docs/api.md)",
                &[app, machine, ("command", "query"), ("tty", "query"), ("rows", "query"), ("cols", "query")])
        },
        "/apps/{app_name}/machines/{machine_id}/egress_ips": {
            "get": op("Hangar_egress_ips_list", "The machine's static egress IPs", &[app, machine]),
            "post": op("Hangar_egress_ips_allocate", "Give the machine an egress IP from the server's pool (201; 409 when the pool is exhausted)", &[app, machine])
        },
        "/apps/{app_name}/machines/{machine_id}/egress_ips/{ip}": {
            "delete": op("Hangar_egress_ips_release", "Return one of the machine's egress IPs to the pool (204)", &[app, machine, ("ip", "path")])
        },
        "/images": {
            "get": op("Hangar_images_list", "List the images on this host", &[]),
            "delete": op("Hangar_images_remove", "Remove an image no machine uses", &[("ref", "query")])
        },
        "/images/import": {
            "post": op("Hangar_images_import", "Import an OCI archive or docker-save tarball sent as the body", &[("ref", "query")])
        },
        "/images/inspect": {
            "get": op("Hangar_images_inspect", "An image's config, layers and sizes", &[("ref", "query")])
        },
        "/images/pull": {
            "post": op("Hangar_images_pull", "Pull an image into the host's store", &[])
        },
        "/images/pulls": {
            "get": op("Hangar_images_pulls", "Pulls under way, with bytes per layer", &[])
        },
        "/images/prune": {
            "post": op("Hangar_images_prune", "Remove every image and layer no machine uses", &[])
        },
        "/platform/runtime": {
            "get": op("Hangar_platform_runtime", "The host's runtimes: the default, and for microvm the accelerator in use and why", &[])
        },
        "/openapi.json": {
            "get": op("Hangar_openapi", "This document", &[])
        }
    })
}

pub(crate) fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc: Value = serde_json::from_str(FLY_SPEC).expect("the embedded spec is JSON");
        doc["info"]["title"] = json!("Hangar Machines API");
        doc["info"]["description"] = json!(
            "Fly.io's Machines API v1 as served by Hangar. Operations marked x-hangar-unsupported answer 404; paths marked x-hangar-extension are Hangar's own."
        );
        doc["servers"] = json!([{ "url": "/v1" }]);
        if let Some(paths) = doc["paths"].as_object_mut() {
            for (path, item) in paths.iter_mut() {
                if UNSUPPORTED.iter().any(|p| path.starts_with(p)) {
                    if let Some(ops) = item.as_object_mut() {
                        for op in ops.values_mut() {
                            op["x-hangar-unsupported"] = json!(true);
                        }
                    }
                }
            }
            if let Value::Object(ext) = extensions() {
                paths.extend(ext);
            }
        }
        doc.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_marks_extensions_and_unsupported() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        assert_eq!(
            doc["paths"]["/images"]["get"]["x-hangar-extension"],
            json!(true)
        );
        assert_eq!(
            doc["paths"]["/apps/{app_name}/volumes"]["get"]["x-hangar-unsupported"],
            json!(true)
        );
        assert!(doc["paths"]["/apps/{app_name}/machines"]["get"]
            .get("x-hangar-unsupported")
            .is_none());
    }
}
