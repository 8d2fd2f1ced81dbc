//! Views across an organisation and the installation: the org-wide machine list (paged by an
//! opaque cursor) and the regions this installation serves.

use base64::Engine;
use hangar_store::OrgCursor;
use hangar_types::{MachineState, OrgMachine, OrgMachinesResponse, Region, RegionsResponse};

use crate::error::AgentError;
use crate::events::rfc3339;
use crate::Agent;

/// Fly's advisory maximum page size.
pub const MAX_ORG_PAGE: usize = 1000;

/// The org-wide list's filters.
#[derive(Clone, Debug, Default)]
pub struct OrgQuery {
    pub cursor: Option<String>,
    /// Unix milliseconds; only machines updated after it.
    pub updated_after_ms: Option<i64>,
    pub limit: Option<usize>,
    pub include_deleted: bool,
    pub states: Vec<MachineState>,
    pub region: Option<String>,
    pub summary: bool,
}

fn encode_cursor(c: &OrgCursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{}", c.updated_at_ms, c.id))
}

fn decode_cursor(s: &str) -> Option<OrgCursor> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (ms, id) = raw.split_once(':')?;
    Some(OrgCursor {
        updated_at_ms: ms.parse().ok()?,
        id: id.to_string(),
    })
}

impl Agent {
    pub fn org_machines(&self, org: &str, q: OrgQuery) -> Result<OrgMachinesResponse, AgentError> {
        let cursor = match (&q.cursor, q.updated_after_ms) {
            (Some(c), _) => Some(decode_cursor(c).ok_or_else(|| {
                AgentError::InvalidArgument(format!(
                    "cursor: {c:?} is not a cursor this API returned"
                ))
            })?),
            // Machine ids are lowercase hex, so "~" sorts after all of them: the cursor
            // skips every machine updated at exactly that instant.
            (None, Some(ms)) => Some(OrgCursor {
                updated_at_ms: ms,
                id: "~".into(),
            }),
            (None, None) => None,
        };
        let limit = q.limit.unwrap_or(MAX_ORG_PAGE).clamp(1, MAX_ORG_PAGE);
        let page = self
            .inner
            .store
            .org_machines(org, cursor.as_ref(), q.include_deleted, limit)?;
        let next = (page.len() == limit)
            .then(|| page.last())
            .flatten()
            .map(|m| OrgCursor {
                updated_at_ms: m.updated_at_ms,
                id: m.id.clone(),
            });
        let last = page
            .last()
            .map(|m| (m.id.clone(), rfc3339(m.updated_at_ms)));
        let machines = page
            .into_iter()
            .filter(|m| q.states.is_empty() || q.states.contains(&m.state))
            .filter(|m| q.region.as_deref().is_none_or(|r| r == m.region))
            .map(|m| OrgMachine {
                version: m.instance_id.clone(),
                instance_id: m.instance_id,
                id: m.id,
                name: m.name,
                app_name: m.app,
                state: m.state,
                region: m.region,
                private_ip: String::new(),
                created_at: rfc3339(m.created_at_ms),
                updated_at: rfc3339(m.updated_at_ms),
                config: if q.summary {
                    None
                } else {
                    serde_json::to_value(&m.config).ok()
                },
            })
            .collect();
        Ok(OrgMachinesResponse {
            machines,
            next_cursor: next.as_ref().map(encode_cursor),
            last_machine_id: last.as_ref().map(|l| l.0.clone()),
            last_updated_at: last.map(|l| l.1),
            error_regions: Vec::new(),
        })
    }

    /// The regions this installation has: one per host region.
    pub fn regions(&self) -> RegionsResponse {
        let code = self.inner.region.clone();
        RegionsResponse {
            nearest: code.clone(),
            regions: vec![Region {
                name: if code == "local" {
                    "This host".into()
                } else {
                    code.clone()
                },
                code,
                latitude: 0.0,
                longitude: 0.0,
                gateway_available: true,
                requires_paid_plan: false,
                deprecated: false,
                geo_region: "local".into(),
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        let c = OrgCursor {
            updated_at_ms: 1_700_000_000_123,
            id: "0123456789abcd".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("not a cursor"), None);
    }
}
