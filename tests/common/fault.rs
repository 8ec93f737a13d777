//! A link that loses, repeats, delays and reorders replication messages, and cuts zones off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use keylife::{Ack, Error, Link, LocalLink, ReplicaUpdate};

/// What happens to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The message never arrives; the sender sees an unreachable zone.
    Drop,
    /// The message arrives and is applied, but the answer is lost.
    LoseAnswer,
    /// The message arrives twice.
    Duplicate,
    /// The message is held back (the sender sees an unreachable zone) and arrives when
    /// released, after later messages: late and out of order.
    Delay,
}

/// How many messages met each fate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Delivered untouched.
    pub passed: usize,
    /// Dropped.
    pub dropped: usize,
    /// Applied with the answer lost.
    pub answers_lost: usize,
    /// Delivered twice.
    pub duplicated: usize,
    /// Held back.
    pub delayed: usize,
    /// Held messages delivered late.
    pub released: usize,
    /// Refused because the zone was cut off.
    pub cut_off: usize,
}

#[derive(Default)]
struct State {
    script: HashMap<String, VecDeque<Fault>>,
    cut: HashSet<String>,
    held: Vec<(String, ReplicaUpdate)>,
    counts: Counts,
}

/// A [`Link`] over a [`LocalLink`] that applies scripted faults: each zone has a queue of
/// faults, one per message sent to it; a message with no fault queued passes.
#[derive(Debug)]
pub struct FaultLink {
    inner: Arc<LocalLink>,
    state: Mutex<State>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("cut", &self.cut)
            .field("held", &self.held.len())
            .field("counts", &self.counts)
            .finish()
    }
}

fn unreachable(zone: &str, detail: &str) -> Error {
    Error::ZoneUnreachable {
        zone: zone.to_owned(),
        detail: detail.to_owned(),
    }
}

impl FaultLink {
    /// A faulty link over `inner`.
    pub fn new(inner: Arc<LocalLink>) -> Arc<FaultLink> {
        Arc::new(FaultLink {
            inner,
            state: Mutex::new(State::default()),
        })
    }

    /// The link underneath (to attach zones).
    pub fn inner(&self) -> &LocalLink {
        &self.inner
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The next message to `zone` without a fault yet queued meets `fault`.
    pub fn script(&self, zone: &str, fault: Fault) {
        self.state()
            .script
            .entry(zone.to_owned())
            .or_default()
            .push_back(fault);
    }

    /// Cuts `zone` off: every message to it fails until [`FaultLink::heal`].
    pub fn cut(&self, zone: &str) {
        self.state().cut.insert(zone.to_owned());
    }

    /// Reconnects `zone`.
    pub fn heal(&self, zone: &str) {
        self.state().cut.remove(zone);
    }

    /// Reconnects every zone and forgets the faults not yet used.
    pub fn heal_all(&self) {
        let mut state = self.state();
        state.cut.clear();
        state.script.clear();
    }

    /// Messages held back.
    pub fn held(&self) -> usize {
        self.state().held.len()
    }

    /// Forgets held messages (as a crash of the network would).
    pub fn lose_held(&self) {
        self.state().held.clear();
    }

    /// Delivers the held messages to zones not cut off, in the order given by `order` (a
    /// permutation seed: the held messages are rotated by it and reversed when odd), and
    /// returns how many were delivered. Their answers go nowhere.
    pub fn release(&self, order: usize) -> usize {
        let mut batch = {
            let mut state = self.state();
            let held = std::mem::take(&mut state.held);
            let (go, stay): (Vec<_>, Vec<_>) = held
                .into_iter()
                .partition(|(zone, _)| !state.cut.contains(zone));
            state.held = stay;
            go
        };
        if !batch.is_empty() {
            let len = batch.len();
            batch.rotate_left(order % len);
            if order % 2 == 1 {
                batch.reverse();
            }
        }
        let released = batch.len();
        for (zone, update) in batch {
            let _ = self.inner.deliver(&zone, &update);
        }
        self.state().counts.released += released;
        released
    }

    /// How many messages met each fate so far.
    pub fn counts(&self) -> Counts {
        self.state().counts
    }
}

impl Link for FaultLink {
    fn knows(&self, zone: &str) -> bool {
        self.inner.knows(zone)
    }

    fn deliver(&self, zone: &str, update: &ReplicaUpdate) -> Result<Ack, Error> {
        let fault = {
            let mut state = self.state();
            if state.cut.contains(zone) {
                state.counts.cut_off += 1;
                return Err(unreachable(zone, "cut off"));
            }
            let fault = state.script.get_mut(zone).and_then(VecDeque::pop_front);
            match fault {
                None => state.counts.passed += 1,
                Some(Fault::Drop) => state.counts.dropped += 1,
                Some(Fault::LoseAnswer) => state.counts.answers_lost += 1,
                Some(Fault::Duplicate) => state.counts.duplicated += 1,
                Some(Fault::Delay) => {
                    state.counts.delayed += 1;
                    state.held.push((zone.to_owned(), update.clone()));
                }
            }
            fault
        };
        match fault {
            None => self.inner.deliver(zone, update),
            Some(Fault::Drop) => Err(unreachable(zone, "message dropped")),
            Some(Fault::LoseAnswer) => {
                let _ = self.inner.deliver(zone, update);
                Err(unreachable(zone, "answer lost"))
            }
            Some(Fault::Duplicate) => {
                let _ = self.inner.deliver(zone, update);
                self.inner.deliver(zone, update)
            }
            Some(Fault::Delay) => Err(unreachable(zone, "message delayed")),
        }
    }

    fn request_rotation(&self, zone: &str, id: keylife::KeyId, version: u32) -> Result<(), Error> {
        if self.state().cut.contains(zone) {
            return Err(unreachable(zone, "cut off"));
        }
        self.inner.request_rotation(zone, id, version)
    }
}
