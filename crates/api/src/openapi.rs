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
    let ok = |description: &str| json!({ "description": description });
    json!({
        "/images": {
            "get": {
                "summary": "List the images on this host",
                "tags": ["Images"],
                "operationId": "Hangar_images_list",
                "x-hangar-extension": true,
                "responses": { "200": ok("The host's images: reference, digest, size, layers") }
            }
        },
        "/images/import": {
            "post": {
                "summary": "Import an OCI layout or docker-save archive sent as the body",
                "tags": ["Images"],
                "operationId": "Hangar_images_import",
                "x-hangar-extension": true,
                "parameters": [{ "name": "reference", "in": "query", "schema": { "type": "string" } }],
                "responses": { "200": ok("The imported image") }
            }
        },
        "/platform/runtime": {
            "get": {
                "summary": "The host's runtimes: the default, and for microvm the accelerator in use and why",
                "tags": ["Platform"],
                "operationId": "Hangar_platform_runtime",
                "x-hangar-extension": true,
                "responses": { "200": ok("The runtimes of this host") }
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "Hangar_openapi",
                "x-hangar-extension": true,
                "responses": { "200": ok("The OpenAPI document of this installation") }
            }
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
