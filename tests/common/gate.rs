//! A link that holds deliveries at a gate until the test opens it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use keylife::{Ack, Error, KeyId, Link, LocalLink, ReplicaUpdate};

#[derive(Debug, Default)]
struct State {
    closed: bool,
    /// Deliveries that found the gate closed.
    held: usize,
}

/// A [`Link`] over a [`LocalLink`] whose deliveries wait while the gate is closed (10 s at
/// most: then it records that it gave up waiting, and delivers).
#[derive(Debug, Default)]
pub struct Gate {
    /// The link the deliveries go through once the gate lets them.
    pub inner: Arc<LocalLink>,
    state: Mutex<State>,
    changed: Condvar,
    timed_out: AtomicBool,
}

impl Gate {
    /// Closes or opens the gate.
    pub fn set_closed(&self, closed: bool) {
        self.state.lock().unwrap().closed = closed;
        self.changed.notify_all();
    }

    /// Waits (10 s at most) until `n` deliveries found the gate closed; how many did.
    pub fn wait_held(&self, n: usize) -> usize {
        self.wait_until(|s| s.held >= n).held
    }

    /// Whether a delivery gave up waiting at the closed gate (something waited for it).
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::SeqCst)
    }

    fn wait_until(&self, done: impl Fn(&State) -> bool) -> std::sync::MutexGuard<'_, State> {
        let state = self.state.lock().unwrap();
        self.changed
            .wait_timeout_while(state, Duration::from_secs(10), |s| !done(s))
            .unwrap()
            .0
    }
}

impl Link for Gate {
    fn knows(&self, zone: &str) -> bool {
        self.inner.knows(zone)
    }

    fn deliver(&self, zone: &str, update: &ReplicaUpdate) -> Result<Ack, Error> {
        let mut state = self.state.lock().unwrap();
        if state.closed {
            state.held += 1;
        }
        self.changed.notify_all();
        let (state, waited) = self
            .changed
            .wait_timeout_while(state, Duration::from_secs(10), |s| s.closed)
            .unwrap();
        if waited.timed_out() {
            self.timed_out.store(true, Ordering::SeqCst);
        }
        drop(state);
        self.inner.deliver(zone, update)
    }

    fn request_rotation(&self, zone: &str, id: KeyId, version: u32) -> Result<(), Error> {
        self.inner.request_rotation(zone, id, version)
    }
}
