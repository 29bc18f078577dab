//! Housekeeping on a timer for a shared structure, for as long as it lives.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Calls `tick` on `target` every `period` (the first time one period from now) on the current
/// tokio runtime, for as long as `target` lives: the task holds it weakly and ends once it is
/// gone. Outside a runtime nothing is started (`None`).
pub fn every<T>(target: &Arc<T>, period: Duration, tick: fn(&T)) -> Option<JoinHandle<()>>
where
    T: Send + Sync + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let target = Arc::downgrade(target);
    Some(runtime.spawn(async move {
        let start = tokio::time::Instant::now() + period;
        let mut ticks = tokio::time::interval_at(start, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match target.upgrade() {
                Some(target) => tick(&target),
                None => return,
            }
        }
    }))
}
