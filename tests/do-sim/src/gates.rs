//! Gates of the `hold` fault ([`crate::Fault::Hold`]): a held response waits
//! until its gate is released, and a test can wait until a request is held at a
//! gate. Together they pin a client at a chosen point of its flow (a request
//! the simulator has processed but not yet answered) without guessing timings.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::sync::watch;

/// What happened at one gate so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GateState {
    /// Responses held here (including those since let through).
    pub held: u64,
    /// Released: held responses go out, later ones are not held.
    pub released: bool,
}

/// Every gate by name. Gates exist from their first use (hold, wait or release).
#[derive(Debug)]
pub struct Gates {
    state: watch::Sender<BTreeMap<String, GateState>>,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            state: watch::Sender::new(BTreeMap::new()),
        }
    }
}

impl Gates {
    /// Hold the caller (a response) at `gate` until it is released.
    pub async fn hold(&self, gate: &str) {
        let mut changes = self.state.subscribe();
        self.state
            .send_modify(|gates| gates.entry(gate.to_owned()).or_default().held += 1);
        // An error means the sender is gone, i.e. the simulator itself: nothing to wait for.
        if changes
            .wait_for(|gates| gates.get(gate).is_some_and(|g| g.released))
            .await
            .is_err()
        {
            tracing::debug!("gate {gate}: the simulator stopped while a response was held");
        }
    }

    /// Let the responses held at `gate` go, and every later one through.
    pub fn release(&self, gate: &str) {
        self.state
            .send_modify(|gates| gates.entry(gate.to_owned()).or_default().released = true);
    }

    /// Return once at least `count` responses have been held at `gate`.
    pub async fn wait_held(&self, gate: &str, count: u64) {
        let mut changes = self.state.subscribe();
        if changes
            .wait_for(|gates| gates.get(gate).is_some_and(|g| g.held >= count))
            .await
            .is_err()
        {
            tracing::debug!("gate {gate}: the simulator stopped before a response was held");
        }
    }

    /// Every gate and its state.
    pub fn snapshot(&self) -> BTreeMap<String, GateState> {
        self.state.borrow().clone()
    }
}
