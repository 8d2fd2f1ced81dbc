//! `config.schedule`: a stopped machine with a schedule is started once per period, counted
//! from its creation, as Fly does for `hourly`, `daily`, `weekly` and `monthly` machines.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hangar_types::MachineState;
use tracing::{info, warn};

use crate::events::now_ms;
use crate::Inner;

/// How often the scheduler looks; a scheduled start is at most this late.
const TICK: Duration = Duration::from_secs(1);

/// Length of a schedule's period in hours.
pub(crate) fn period_hours(schedule: &str) -> Option<u64> {
    match schedule {
        "hourly" => Some(1),
        "daily" => Some(24),
        "weekly" => Some(24 * 7),
        "monthly" => Some(24 * 30),
        _ => None,
    }
}

/// Runs for the life of the agent. `hour` is one hour, except in tests, which shrink it.
pub(crate) async fn run(inner: Arc<Inner>, hour: Duration) {
    let hour_ms = hour.as_millis().max(1) as i64;
    // The period each machine was last seen in; a machine starts when it enters a new one.
    // Kept in the store: a restarted server neither starts a machine twice in one period nor
    // skips the period it was down in.
    let mut seen: HashMap<String, i64> = inner.store.schedule_seen().unwrap_or_else(|e| {
        warn!(error = %e, "scheduler could not read the periods seen");
        HashMap::new()
    });
    let mut ticker = tokio::time::interval(TICK.min(hour / 4).max(Duration::from_millis(50)));
    loop {
        ticker.tick().await;
        let machines = match inner.store.scheduled_machines() {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "scheduler could not list machines");
                continue;
            }
        };
        let now = now_ms();
        seen.retain(|id, _| machines.iter().any(|m| &m.id == id));
        for m in machines {
            let Some(hours) = m.config.schedule.as_deref().and_then(period_hours) else {
                continue;
            };
            let period = hour_ms * hours as i64;
            let slot = (now - m.created_at_ms).max(0) / period;
            let last = match seen.get(&m.id) {
                Some(last) => *last,
                None => {
                    // First sight of the machine: its current period counts as seen.
                    record_seen(&inner, &mut seen, &m.id, slot);
                    slot
                }
            };
            if slot <= last {
                continue;
            }
            record_seen(&inner, &mut seen, &m.id, slot);
            if matches!(
                m.state,
                MachineState::Stopped | MachineState::Created | MachineState::Failed
            ) {
                info!(machine = %m.id, schedule = ?m.config.schedule, "scheduled start");
                inner.start_on_its_own(&m.id);
            }
        }
    }
}

fn record_seen(inner: &Inner, seen: &mut HashMap<String, i64>, id: &str, period: i64) {
    seen.insert(id.to_string(), period);
    if let Err(e) = inner.store.set_schedule_seen(id, period) {
        warn!(machine = %id, error = %e, "could not record the schedule's period");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(period_hours("hourly"), Some(1));
        assert_eq!(period_hours("monthly"), Some(720));
        assert_eq!(period_hours("yearly"), None);
    }
}
