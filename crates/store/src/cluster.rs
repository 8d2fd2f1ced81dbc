//! The state many hosts share, behind the contract a multi-host backend (etcd) implements.
//!
//! Shared: apps, which live machine holds which name in an app, which host each machine is
//! on, and machine leases — everything two hosts could race on. Host-local, and not here:
//! a machine's config, state and recorded flow, its versions and events, the schedule's
//! periods seen, sealed secrets. The SQLite [`Store`] implements this for one host, where
//! every machine is on [`Store::host_id`].
//!
//! Names and placements are claimed by the host that creates the machine. On one host the
//! claim is part of [`Store::insert_machine`] (the live-name index refuses a taken name),
//! a rename is part of an update's [`Store::transition`], and the transition to `destroyed`
//! frees the name. A backend where the claim lives elsewhere makes it first, as one
//! compare-and-set (etcd: a txn that creates `names/{app}/{name}` and `machines/{id}` only if
//! absent), writes the host-local record second, and drops the claim if that fails.
//!
//! IP and egress allocations are shared state too, but still live in `hangar-net`'s own
//! database (`attachments`: machine → org, IPv6, IPv4, each address unique; `egress_ips`:
//! address → machine). Their place here, once a second host hands out addresses:
//! `attach(&Attachment) -> Result<()>` (refused with `Exists` when an address is taken, so the
//! caller picks another), `attachment(machine_id)`, `org_of(ip)`, `add_egress(ip, machine_id)`,
//! `egress_of(machine_id)`, and `forget_addresses(machine_id)` when the machine is destroyed.
//! Each claim is a compare-and-set on the address's key (etcd: `ips/{ip}` created only if
//! absent), the uniqueness the SQLite tables' keys give today. The move is one migration that
//! copies the two tables from `net.db` into this database once, then `hangar-net` calls the
//! trait instead of its own connection.

use rusqlite::{params, OptionalExtension, Row};

use crate::{AppRecord, LeaseRecord, Result, Store};

/// Where a live machine is, and the name it holds in its app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub machine_id: String,
    pub app: String,
    pub name: String,
    pub host: String,
}

/// The cluster directory: what every host must agree on. Writes are compare-and-set; a
/// refusal ([`StoreError::Exists`](crate::StoreError::Exists),
/// [`StoreError::LeaseHeld`](crate::StoreError::LeaseHeld)) changes nothing.
pub trait ClusterState: Send + Sync {
    /// The host this handle speaks for.
    fn host_id(&self) -> &str;

    /// Creates an app, assigning its `numeric_id`; a taken name is `Exists`.
    fn create_app(&self, app: &AppRecord) -> Result<AppRecord>;
    fn get_app(&self, name: &str) -> Result<Option<AppRecord>>;
    /// Apps by name, of one organisation or all.
    fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>>;
    /// Forgets an app and its machines' claims; the caller has destroyed its machines.
    fn delete_app(&self, name: &str) -> Result<()>;

    /// A live (not destroyed) machine's placement.
    fn placement(&self, machine_id: &str) -> Result<Option<Placement>>;
    /// The live machine holding `name` in `app`.
    fn placement_by_name(&self, app: &str, name: &str) -> Result<Option<Placement>>;
    /// Every live machine on `host`, by id.
    fn placements_on(&self, host: &str) -> Result<Vec<Placement>>;

    /// The unexpired lease on a machine at `now_ms`.
    fn lease(&self, machine_id: &str, now_ms: i64) -> Result<Option<LeaseRecord>>;
    /// Takes a machine's lease, or refreshes it with `held_nonce`; another's is `LeaseHeld`.
    fn acquire_lease(
        &self,
        machine_id: &str,
        held_nonce: Option<&str>,
        lease: &LeaseRecord,
        now_ms: i64,
    ) -> Result<LeaseRecord>;
    /// Gives up the lease held with `nonce`; none is `NotFound`, another's is `LeaseHeld`.
    fn release_lease(&self, machine_id: &str, nonce: &str, now_ms: i64) -> Result<()>;
}

const PLACEMENT_COLUMNS: &str = "id, app, name, host";

fn placement_from_row(r: &Row<'_>) -> rusqlite::Result<Placement> {
    Ok(Placement {
        machine_id: r.get(0)?,
        app: r.get(1)?,
        name: r.get(2)?,
        host: r.get(3)?,
    })
}

impl ClusterState for Store {
    fn host_id(&self) -> &str {
        Store::host_id(self)
    }

    fn create_app(&self, app: &AppRecord) -> Result<AppRecord> {
        Store::create_app(self, app)
    }

    fn get_app(&self, name: &str) -> Result<Option<AppRecord>> {
        Store::get_app(self, name)
    }

    fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>> {
        Store::list_apps(self, org_slug)
    }

    fn delete_app(&self, name: &str) -> Result<()> {
        Store::delete_app(self, name)
    }

    fn placement(&self, machine_id: &str) -> Result<Option<Placement>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {PLACEMENT_COLUMNS} FROM machines WHERE id = ?1 AND state != 'destroyed'"
                ),
                [machine_id],
                placement_from_row,
            )
            .optional()?)
        })
    }

    fn placement_by_name(&self, app: &str, name: &str) -> Result<Option<Placement>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {PLACEMENT_COLUMNS} FROM machines
                     WHERE app = ?1 AND name = ?2 AND state != 'destroyed'"
                ),
                params![app, name],
                placement_from_row,
            )
            .optional()?)
        })
    }

    fn placements_on(&self, host: &str) -> Result<Vec<Placement>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {PLACEMENT_COLUMNS} FROM machines
                 WHERE host = ?1 AND state != 'destroyed' ORDER BY id"
            ))?;
            let rows = stmt.query_map([host], placement_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn lease(&self, machine_id: &str, now_ms: i64) -> Result<Option<LeaseRecord>> {
        Store::lease(self, machine_id, now_ms)
    }

    fn acquire_lease(
        &self,
        machine_id: &str,
        held_nonce: Option<&str>,
        lease: &LeaseRecord,
        now_ms: i64,
    ) -> Result<LeaseRecord> {
        Store::acquire_lease(self, machine_id, held_nonce, lease, now_ms)
    }

    fn release_lease(&self, machine_id: &str, nonce: &str, now_ms: i64) -> Result<()> {
        Store::release_lease(self, machine_id, nonce, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use hangar_types::ImageRef;
    use hangar_types::MachineState::*;

    use super::*;
    use crate::testutil::*;
    use crate::{NewVersion, StoreError, Transition};

    /// The tests speak only the trait, as the agent will.
    fn cluster(s: &Store) -> &dyn ClusterState {
        s
    }

    #[test]
    fn apps_through_the_directory() {
        let (_d, s) = store();
        let dir = cluster(&s);
        assert_eq!(dir.create_app(&app("a")).unwrap().numeric_id, 1);
        assert!(matches!(
            dir.create_app(&app("a")),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(dir.list_apps(None).unwrap().len(), 1);
        dir.delete_app("a").unwrap();
        assert!(dir.get_app("a").unwrap().is_none());
    }

    #[test]
    fn machines_are_placed_on_this_host_and_hold_their_name_while_live() {
        let (_d, s) = store();
        let dir = cluster(&s);
        let host = dir.host_id().to_string();
        assert_eq!(
            host.len(),
            14,
            "a host id looks like a machine id: {host:?}"
        );
        let m = machine("m1", "web");
        s.insert_machine(&m, &event("launch", "created")).unwrap();
        let placed = Placement {
            machine_id: "m1".into(),
            app: "app".into(),
            name: "web".into(),
            host: host.clone(),
        };
        assert_eq!(dir.placement("m1").unwrap(), Some(placed.clone()));
        assert_eq!(
            dir.placement_by_name("app", "web").unwrap(),
            Some(placed.clone())
        );
        assert_eq!(dir.placements_on(&host).unwrap(), [placed]);
        assert!(dir.placements_on("elsewhere").unwrap().is_empty());

        // A rename moves the claim.
        s.transition(
            "m1",
            Transition {
                version: Some(NewVersion {
                    instance_id: "v2",
                    config: &m.config,
                    image_ref: &ImageRef::default(),
                    name: Some("api"),
                }),
                ..change(Created, Updating)
            },
        )
        .unwrap();
        assert!(dir.placement_by_name("app", "web").unwrap().is_none());
        assert_eq!(
            dir.placement_by_name("app", "api")
                .unwrap()
                .unwrap()
                .machine_id,
            "m1"
        );

        // Destroying frees it.
        go(&s, "m1", Updating, Stopped);
        go(&s, "m1", Stopped, Destroying);
        go(&s, "m1", Destroying, Destroyed);
        assert!(dir.placement("m1").unwrap().is_none());
        assert!(dir.placement_by_name("app", "api").unwrap().is_none());
    }

    #[test]
    fn leases_through_the_directory() {
        let (_d, s) = store();
        s.insert_machine(&machine("m1", "web"), &event("launch", "created"))
            .unwrap();
        let dir = cluster(&s);
        let lease = LeaseRecord {
            nonce: "n".into(),
            owner: "me".into(),
            description: String::new(),
            expires_at_ms: 100,
            version: "v".into(),
        };
        dir.acquire_lease("m1", None, &lease, 0).unwrap();
        assert_eq!(dir.lease("m1", 50).unwrap(), Some(lease.clone()));
        assert!(matches!(
            dir.acquire_lease("m1", None, &lease, 50),
            Err(StoreError::LeaseHeld { .. })
        ));
        dir.release_lease("m1", "n", 60).unwrap();
        assert!(dir.lease("m1", 60).unwrap().is_none());
    }
}
