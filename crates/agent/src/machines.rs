//! Machines as records: create, read, list, their events and names. What a machine does
//! once it exists is asked of its actor (`verbs.rs`, `machine/`).

use hangar_store::{MachineRecord, StoreError};
use hangar_types::{
    new_instance_id, new_machine_id, CheckStatus, CreateMachineRequest, Machine, MachineEvent,
    MachineState,
};
use tracing::info;

use crate::error::AgentError;
use crate::events::{self, now_ms, rfc3339, Source};
use crate::leases;
use crate::machine::Command;
use crate::prepare::Draft;
use crate::Agent;

/// Events returned inline with a machine, as Fly does.
const INLINE_EVENTS: usize = 10;

impl Agent {
    /// Creates a machine: validates the config, pulls its image, records it, and (unless
    /// `skip_launch`) starts it. Nothing is left when any step before the start is admitted
    /// fails.
    pub async fn create_machine(
        &self,
        app: &str,
        req: CreateMachineRequest,
    ) -> Result<Machine, AgentError> {
        let app_rec = self.app_record(app)?;
        self.require_secrets_version(app, req.min_secrets_version)?;
        if let Some(ttl) = req.lease_ttl {
            leases::valid_ttl(ttl)?;
        }
        let config = req.config;
        self.inner.check_config(&config)?;
        if let Some(region) = req.region.as_deref().filter(|r| !r.is_empty()) {
            if region != self.inner.region {
                return Err(AgentError::InvalidArgument(format!(
                    "region {region:?} is not served by this installation (its regions: {})",
                    self.inner.region
                )));
            }
        }
        let name = match req.name.filter(|n| !n.is_empty()) {
            Some(n) => {
                valid_machine_name(&n)?;
                n
            }
            None => self.unused_name(app)?,
        };

        let pull_started = std::time::Instant::now();
        let image = self.inner.images.pull(&config.image).await?;
        let pull_ms = pull_started.elapsed().as_millis() as u64;
        let id = new_machine_id();
        let instance_id = new_instance_id();
        // Refuse now what could never boot, rather than record a machine doomed to fail.
        let draft = Draft {
            app,
            machine_id: &id,
            region: &self.inner.region,
            instance_id: &instance_id,
            config: &config,
        };
        self.inner.launch(&draft, &image, None)?;
        if !req.skip_launch {
            self.inner.admit(&id, config.effective_guest().memory_mb)?;
        }

        let now = now_ms();
        let record = MachineRecord {
            id: id.clone(),
            app: app_rec.name,
            name,
            region: self.inner.region.clone(),
            state: MachineState::Created,
            instance_id,
            config,
            image_ref: image.image_ref.clone(),
            restart_count: 0,
            flow: None,
            cordoned: false,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let mut launch_event = events::event("launch", MachineState::Created, Source::User);
        // What the create's pull took, for `machine status` and event consumers.
        launch_event.request = Some(serde_json::json!({
            "image": image.reference,
            "digest": image.digest,
            "layers": image.layers.len(),
            "bytes": image.size,
            "pull_ms": pull_ms,
        }));
        self.inner
            .store
            .insert_machine(&record, &launch_event)
            .map_err(|e| match e {
                StoreError::Exists(_) => AgentError::Conflict(format!(
                    "a machine named {:?} already exists in app {app:?}",
                    record.name
                )),
                other => other.into(),
            })?;
        info!(app, machine = %id, image = %image.reference, "machine created");
        self.inner.spawn_actor(&id, false);
        self.inner.notify(&id);
        let nonce = match req.lease_ttl {
            Some(ttl) => Some(self.acquire_lease(app, &id, None, Some(ttl), None)?.nonce),
            None => None,
        };
        if !req.skip_launch {
            let started = self
                .command(&id, |reply| Command::Start {
                    source: Source::User,
                    reply,
                })
                .await;
            if let Err(e @ AgentError::InsufficientCapacity(_)) = started {
                // Another machine took the memory since the check above: the create fails
                // whole, as if it had been refused then.
                let _ = self
                    .command(&id, |reply| Command::Destroy { force: true, reply })
                    .await;
                return Err(e);
            }
            started?;
        }
        let mut machine = self.get_machine(app, &id)?;
        machine.nonce = nonce;
        Ok(machine)
    }

    /// A generated name no live machine of the app has yet.
    fn unused_name(&self, app: &str) -> Result<String, AgentError> {
        let taken: std::collections::HashSet<String> = self
            .inner
            .store
            .list_machines(app, false)?
            .into_iter()
            .map(|m| m.name)
            .collect();
        Ok((0..20)
            .map(|_| generated_name())
            .find(|n| !taken.contains(n))
            .unwrap_or_else(|| format!("machine-{}", new_machine_id())))
    }

    pub fn get_machine(&self, app: &str, id: &str) -> Result<Machine, AgentError> {
        let rec = self.machine_record(app, id)?;
        let events = self.inner.store.events(id, INLINE_EVENTS)?;
        let checks = self.inner.checks_of(id);
        Ok(self.with_private_ip(to_api(rec, events, checks)))
    }

    pub fn list_machines(
        &self,
        app: &str,
        include_deleted: bool,
        region: Option<&str>,
        states: &[MachineState],
        summary: bool,
    ) -> Result<Vec<Machine>, AgentError> {
        self.app_record(app)?;
        let mut out = Vec::new();
        for rec in self.inner.store.list_machines(app, include_deleted)? {
            if region.is_some_and(|r| r != rec.region)
                || (!states.is_empty() && !states.contains(&rec.state))
            {
                continue;
            }
            let (events, checks) = if summary {
                (Vec::new(), Vec::new())
            } else {
                (
                    self.inner.store.events(&rec.id, INLINE_EVENTS)?,
                    self.inner.checks_of(&rec.id),
                )
            };
            out.push(self.with_private_ip(to_api(rec, events, checks)));
        }
        Ok(out)
    }

    /// A machine's events, newest first.
    pub fn machine_events(
        &self,
        app: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MachineEvent>, AgentError> {
        self.machine_record(app, id)?;
        Ok(self.inner.store.events(id, limit)?)
    }

    fn with_private_ip(&self, mut m: Machine) -> Machine {
        if m.state != MachineState::Destroyed {
            m.private_ip = self.private_ip(&m.id);
        }
        m
    }
}

pub(crate) fn to_api(
    rec: MachineRecord,
    events: Vec<MachineEvent>,
    checks: Vec<CheckStatus>,
) -> Machine {
    Machine {
        version: rec.instance_id.clone(),
        instance_id: rec.instance_id,
        id: rec.id,
        name: rec.name,
        state: rec.state,
        region: rec.region,
        private_ip: String::new(),
        config: rec.config,
        image_ref: rec.image_ref,
        created_at: rfc3339(rec.created_at_ms),
        updated_at: rfc3339(rec.updated_at_ms),
        events,
        checks,
        host_status: "ok".into(),
        incomplete_config: None,
        nonce: None,
        cordoned: rec.cordoned,
    }
}

pub(crate) fn valid_machine_name(name: &str) -> Result<(), AgentError> {
    let ok = name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "name: {name:?} must be at most 63 letters, digits, dashes, dots or underscores"
        )))
    }
}

/// Fly-style names: an adjective, a noun and a number.
fn generated_name() -> String {
    use rand::seq::IndexedRandom;
    use rand::Rng;
    const ADJECTIVES: &[&str] = &[
        "quiet", "bold", "brave", "calm", "crimson", "dawn", "eager", "fancy", "gentle", "hidden",
        "icy", "jolly", "lively", "misty", "nimble", "odd", "proud", "quick", "rapid", "silent",
        "sunny", "tiny", "vivid", "wild",
    ];
    const NOUNS: &[&str] = &[
        "field", "river", "forest", "meadow", "harbor", "canyon", "glacier", "island", "lake",
        "moon", "ocean", "pine", "ridge", "star", "thunder", "valley", "wave", "willow", "breeze",
        "comet", "delta", "ember",
    ];
    let mut rng = rand::rng();
    format!(
        "{}-{}-{}",
        ADJECTIVES.choose(&mut rng).unwrap_or(&"quiet"),
        NOUNS.choose(&mut rng).unwrap_or(&"field"),
        rng.random_range(1000..10000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_machine_name("web-1").is_ok());
        assert!(valid_machine_name("has space").is_err());
        let n = generated_name();
        assert_eq!(n.split('-').count(), 3, "{n}");
    }
}
