//! Health checks of started machines (`config.checks` and `services[].checks`). Each check
//! runs from inside the machine through init, so it needs no route from the host; results
//! live in memory and appear in the machine's `checks` field.

use std::sync::Arc;

use hangar_proto::{CheckSpec, HttpCheck};
use hangar_runtime::Guest;
use hangar_store::MachineRecord;
use hangar_types::{CheckStatus, MachineCheck};
use tokio::task::JoinHandle;

use crate::events::{now_ms, rfc3339};
use crate::Inner;

/// A check as it will run: its name in the `checks` field and what to probe.
struct Probe {
    name: String,
    check: MachineCheck,
    port: u16,
}

fn probes(rec: &MachineRecord) -> Vec<Probe> {
    let mut out: Vec<Probe> = rec
        .config
        .checks
        .iter()
        .filter_map(|(name, check)| {
            Some(Probe {
                name: name.clone(),
                check: check.clone(),
                port: check.port?,
            })
        })
        .collect();
    for (i, service) in rec.config.services.iter().enumerate() {
        for check in &service.checks {
            let Some(port) = check.port.or(service.internal_port) else {
                continue;
            };
            let kind = check.kind.as_deref().unwrap_or("tcp");
            out.push(Probe {
                name: format!("servicecheck-{i:02}-{kind}-{port}"),
                check: check.clone(),
                port,
            });
        }
    }
    out
}

/// Starts the checks of a freshly started machine; `None` when it has none.
pub(crate) fn spawn(
    inner: Arc<Inner>,
    rec: &MachineRecord,
    guest: Guest,
) -> Option<JoinHandle<()>> {
    let probes = probes(rec);
    if probes.is_empty() {
        return None;
    }
    let id = rec.id.clone();
    // Until a check has run it is a warning, as in Fly.
    for p in &probes {
        inner.set_check(
            &id,
            status(&p.name, "warning", "waiting for the first check"),
        );
    }
    let tasks: Vec<_> = probes
        .into_iter()
        .map(|p| tokio::spawn(run(inner.clone(), id.clone(), guest.clone(), p)))
        .collect();
    Some(tokio::spawn(async move {
        // Aborting this task aborts every check with it.
        struct AbortAll(Vec<JoinHandle<()>>);
        impl Drop for AbortAll {
            fn drop(&mut self) {
                for t in &self.0 {
                    t.abort();
                }
            }
        }
        let _all = AbortAll(tasks);
        std::future::pending::<()>().await
    }))
}

async fn run(inner: Arc<Inner>, id: String, guest: Guest, p: Probe) {
    tokio::time::sleep(p.check.grace_period()).await;
    let mut ticker = tokio::time::interval(p.check.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(&guest, &p).await;
        inner.set_check(&id, result);
    }
}

async fn probe(guest: &Guest, p: &Probe) -> CheckStatus {
    if p.check.protocol.as_deref() == Some("https") {
        return status(
            &p.name,
            "warning",
            "https checks are not supported by this installation; use http",
        );
    }
    let http = p.check.is_http().then(|| HttpCheck {
        method: p.check.method.clone().unwrap_or_else(|| "GET".into()),
        path: p.check.path.clone().unwrap_or_else(|| "/".into()),
        headers: p
            .check
            .headers
            .iter()
            .flat_map(|h| h.values.iter().map(|v| (h.name.clone(), v.clone())))
            .collect(),
    });
    let spec = CheckSpec {
        port: p.port,
        http,
        timeout_ms: p.check.timeout().as_millis() as u64,
    };
    match guest.check(spec).await {
        Ok((true, output)) => status(&p.name, "passing", &output),
        Ok((false, output)) => status(&p.name, "critical", &output),
        Err(e) => status(
            &p.name,
            "critical",
            &format!("the check could not run: {e}"),
        ),
    }
}

fn status(name: &str, state: &str, output: &str) -> CheckStatus {
    CheckStatus {
        name: name.to_string(),
        status: state.to_string(),
        output: output.chars().take(512).collect(),
        updated_at: rfc3339(now_ms()),
    }
}
