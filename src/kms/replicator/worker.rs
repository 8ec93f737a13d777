//! Deliveries off the caller's thread: a change is answered once it is durable, and its
//! replicas are handed to a queue that one background thread per zone empties. A slow or
//! unreachable zone delays no answer; what the queue holds is also in the store's outbox, so
//! nothing is lost if the thread never gets to it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle, ThreadId};

use super::send::Sender;
use crate::core::KeyId;
use crate::kms::shared::lock;

thread_local! {
    /// Whether this thread is a delivery thread (of any zone).
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// The queue of one zone's deliveries and the thread that works through it, started on the
/// first delivery. Dropping it lets the thread finish the queue, then waits for it.
pub(crate) struct Dispatcher {
    queue: Arc<Queue>,
    sender: Arc<Sender>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// (key, zone) pairs to deliver, each at most once.
    pending: VecDeque<(KeyId, String)>,
    /// Whether the thread is delivering one.
    busy: bool,
    /// Set when the dispatcher is dropped: the thread ends once the queue is empty.
    closed: bool,
    /// The thread's id, once started.
    worker: Option<ThreadId>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of the state is completed before the lock is released.
        lock(&self.state)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Dispatcher {
    pub(crate) fn new(sender: Arc<Sender>) -> Dispatcher {
        Dispatcher {
            queue: Arc::default(),
            sender,
            worker: Mutex::new(None),
        }
    }

    /// Queues a delivery of key `id` to each of `zones` (a pair already queued is not queued
    /// twice) and returns at once.
    pub(crate) fn push(&self, id: KeyId, zones: Vec<String>) {
        if zones.is_empty() {
            return;
        }
        let mut state = self.queue.lock();
        for zone in zones {
            let pair = (id, zone);
            if !state.pending.contains(&pair) {
                state.pending.push_back(pair);
            }
        }
        if state.worker.is_none() {
            self.start(&mut state);
        }
        drop(state);
        self.queue.changed.notify_all();
    }

    /// Waits until the queue is empty and no delivery of it is under way (at once on the
    /// dispatcher's own thread, which would otherwise wait for itself).
    pub(crate) fn wait_idle(&self) {
        let mut state = self.queue.lock();
        if state.worker == Some(thread::current().id()) {
            return;
        }
        while !state.pending.is_empty() || state.busy {
            state = self.queue.wait(state);
        }
    }

    fn start(&self, state: &mut State) {
        let queue = Arc::clone(&self.queue);
        let sender = Arc::clone(&self.sender);
        let spawned = thread::Builder::new()
            .name("keylife-deliver".to_owned())
            .spawn(move || work(&queue, &sender));
        match spawned {
            Ok(handle) => {
                state.worker = Some(handle.thread().id());
                *lock(&self.worker) = Some(handle);
            }
            // No thread: the deliveries stay in the outbox, where `Kms::sync` and
            // `Kms::run_due` find them. Forget the queue so that nobody waits for it.
            Err(_) => state.pending.clear(),
        }
    }
}

/// The delivery thread: one (key, zone) pair at a time until the dispatcher closes and the
/// queue is empty.
fn work(queue: &Queue, sender: &Sender) {
    ON_WORKER.with(|on| on.set(true));
    let mut state = queue.lock();
    loop {
        let Some((id, zone)) = state.pending.pop_front() else {
            if state.closed {
                return;
            }
            state = queue.wait(state);
            continue;
        };
        state.busy = true;
        drop(state);
        let busy = Busy(queue);
        // The outcome is recorded in the store (or, if even that failed, the outbox entry
        // stays): `Kms::sync` and `Kms::run_due` retry from there.
        let _ = sender.deliver_until_current(id, &zone, false);
        drop(busy);
        state = queue.lock();
    }
}

/// The thread's delivery under way; ends it even if the delivery panicked, and then lets the
/// next push start a new thread rather than queue for a dead one.
struct Busy<'a>(&'a Queue);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.busy = false;
        if thread::panicking() {
            state.pending.clear();
            state.worker = None;
        }
        drop(state);
        self.0.changed.notify_all();
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.changed.notify_all();
        let Some(worker) = lock(&self.worker).take() else {
            return;
        };
        // On a delivery thread (a link's last handle on a zone dropped there), waiting could
        // close a circle of threads waiting for each other: let the thread finish alone.
        if !ON_WORKER.with(Cell::get) {
            // A panic in the thread already ended it; nothing more to do.
            let _ = worker.join();
        }
    }
}
