//! Capacity admission is one reservation: machines starting at once never together pass the
//! host's memory capacity, whichever order their requests arrive in.

mod common;

use common::{host, left, open};
use hangar_testkit::Call;
use hangar_types::MachineState;

#[tokio::test]
async fn concurrent_starts_never_pass_the_capacity() {
    let mut h = host().await;
    // Each machine has the default 256 MB: room for exactly three.
    h.capacity_mb = 3 * 256;
    let ids: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    for id in &ids {
        left(&h, id, MachineState::Stopped, None, false);
    }
    let agent = open(&h).await;
    let starts = ids.iter().map(|id| {
        let agent = agent.clone();
        let id = id.clone();
        tokio::spawn(async move { agent.start_machine("app", &id, None).await })
    });
    let mut admitted = 0;
    let mut refused = 0;
    for start in starts {
        match start.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(hangar_agent::AgentError::InsufficientCapacity(msg)) => {
                assert!(msg.contains("MB"), "{msg}");
                refused += 1;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!((admitted, refused), (3, 9));
    let booted = h
        .runtime
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Boot(_)))
        .count();
    assert_eq!(booted, 3, "only admitted machines boot");
}
