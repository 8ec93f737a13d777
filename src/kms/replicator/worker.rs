//! Deliveries off the caller's thread: a change is answered once it is durable, and its
//! replicas are handed to a queue that one background thread per zone works through. A slow or
//! unreachable zone delays no answer. The queue is only a hint: what it holds is also in the
//! store's outbox, where `Kms::sync` and `Kms::run_due` find it, so nothing is lost if the
//! thread never gets to it.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle, ThreadId};

use crate::core::KeyId;
use crate::kms::shared::lock;

thread_local! {
    /// Whether this thread is a delivery thread (of any zone).
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// One delivery to make: key, replica zone.
type Pair = (KeyId, String);

/// What the thread does with each pair: one delivery (its outcome is recorded by it).
pub(crate) type Deliver = dyn Fn(KeyId, &str) + Send + Sync;

/// The queue of one zone's deliveries and the thread that works through it, started on the
/// first delivery. Dropping it ends the thread after the delivery under way, if any: what is
/// still queued stays owed in the outbox.
pub(crate) struct Dispatcher {
    queue: Arc<Queue>,
    deliver: Arc<Deliver>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Deliveries to make, in order, each with its ticket.
    pending: VecDeque<(u64, Pair)>,
    /// The pairs in `pending` (a pair queued twice is delivered once).
    queued: HashSet<Pair>,
    /// The ticket of the last delivery queued.
    issued: u64,
    /// Every delivery up to this ticket is done (delivered, failed and recorded, or given up
    /// at close): the thread takes them in ticket order, one at a time.
    done: u64,
    /// Set when the dispatcher is dropped: the thread ends after the delivery under way.
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

impl State {
    /// Forgets every queued delivery (they stay owed in the outbox) and counts them done.
    fn give_up(&mut self) {
        self.pending.clear();
        self.queued.clear();
        self.done = self.issued;
    }
}

impl Dispatcher {
    /// A dispatcher whose thread hands each queued pair to `deliver`.
    pub(crate) fn new(deliver: Arc<Deliver>) -> Dispatcher {
        Dispatcher {
            queue: Arc::default(),
            deliver,
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
            if state.queued.insert(pair.clone()) {
                state.issued += 1;
                let ticket = state.issued;
                state.pending.push_back((ticket, pair));
            }
        }
        if state.worker.is_none() {
            self.start(&mut state);
        }
        drop(state);
        self.queue.changed.notify_all();
    }

    /// Waits until the deliveries queued before this call are done (at once on the
    /// dispatcher's own thread, which would otherwise wait for itself). Deliveries queued
    /// meanwhile are not waited for.
    pub(crate) fn wait_idle(&self) {
        let target = self.queue.lock().issued;
        self.wait_until(target);
    }

    /// Waits until every delivery up to ticket `target` is done.
    fn wait_until(&self, target: u64) {
        let mut state = self.queue.lock();
        if state.worker == Some(thread::current().id()) {
            return;
        }
        while state.done < target {
            state = self.queue.wait(state);
        }
    }

    fn start(&self, state: &mut State) {
        let queue = Arc::clone(&self.queue);
        let deliver = Arc::clone(&self.deliver);
        let spawned = thread::Builder::new()
            .name("keylife-deliver".to_owned())
            .spawn(move || work(&queue, &*deliver));
        match spawned {
            Ok(handle) => {
                state.worker = Some(handle.thread().id());
                *lock(&self.worker) = Some(handle);
            }
            // No thread: the deliveries stay in the outbox, where `Kms::sync` and
            // `Kms::run_due` find them. Forget the queue so that nobody waits for it.
            Err(_) => state.give_up(),
        }
    }
}

/// The delivery thread: one (key, zone) pair at a time, in ticket order, until the dispatcher
/// closes.
fn work(queue: &Queue, deliver: &Deliver) {
    ON_WORKER.with(|on| on.set(true));
    let mut state = queue.lock();
    loop {
        if state.closed {
            state.give_up();
            queue.changed.notify_all();
            return;
        }
        let Some((ticket, pair)) = state.pending.pop_front() else {
            state = queue.wait(state);
            continue;
        };
        state.queued.remove(&pair);
        drop(state);
        let under_way = UnderWay { queue, ticket };
        deliver(pair.0, &pair.1);
        drop(under_way);
        state = queue.lock();
    }
}

/// The delivery under way; counts it done even if it panicked, and then lets the next push
/// start a new thread rather than queue for a dead one.
struct UnderWay<'a> {
    queue: &'a Queue,
    ticket: u64,
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.done = state.done.max(self.ticket);
        if thread::panicking() {
            state.give_up();
            state.worker = None;
        }
        drop(state);
        self.queue.changed.notify_all();
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
        // close a circle of threads waiting for each other: the thread then ends alone, after
        // its delivery under way, holding the zone's store until then.
        if !ON_WORKER.with(Cell::get) {
            // A panic in the thread already ended it; nothing more to do.
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A delivery function that records each pair and blocks until given a permit.
    #[derive(Default)]
    struct Gate {
        permits: Mutex<usize>,
        changed: Condvar,
        entered: AtomicUsize,
        delivered: Mutex<Vec<String>>,
    }

    impl Gate {
        fn deliver(&self, zone: &str) {
            let mut permits = lock(&self.permits);
            self.entered.fetch_add(1, Ordering::SeqCst);
            self.changed.notify_all();
            while *permits == 0 {
                permits = self.changed.wait(permits).unwrap();
            }
            *permits -= 1;
            lock(&self.delivered).push(zone.to_owned());
        }

        fn permit(&self, n: usize) {
            *lock(&self.permits) += n;
            self.changed.notify_all();
        }

        /// Waits until `n` deliveries have started.
        fn wait_entered(&self, n: usize) {
            let mut permits = lock(&self.permits);
            while self.entered.load(Ordering::SeqCst) < n {
                permits = self.changed.wait(permits).unwrap();
            }
        }
    }

    fn dispatcher(gate: &Arc<Gate>) -> Dispatcher {
        let gate = Arc::clone(gate);
        Dispatcher::new(Arc::new(move |_, zone: &str| gate.deliver(zone)))
    }

    fn id() -> KeyId {
        KeyId::from_bytes([1; 16])
    }

    #[test]
    fn a_pair_queued_twice_is_delivered_once() {
        let gate = Arc::new(Gate::default());
        let dispatcher = dispatcher(&gate);
        dispatcher.push(id(), vec!["a".to_owned()]);
        gate.wait_entered(1);
        // "a" is under way (not queued): queued again; "b" twice: once.
        dispatcher.push(id(), vec!["a".to_owned(), "b".to_owned()]);
        dispatcher.push(id(), vec!["b".to_owned()]);
        gate.permit(10);
        dispatcher.wait_idle();
        assert_eq!(*lock(&gate.delivered), ["a", "a", "b"]);
    }

    #[test]
    fn waiting_waits_for_what_was_queued_before_and_not_after() {
        let gate = Arc::new(Gate::default());
        let dispatcher = Arc::new(dispatcher(&gate));
        dispatcher.push(id(), vec!["before".to_owned()]);
        gate.wait_entered(1);
        // What a wait that starts now waits for: "before", not what is queued after.
        let target = dispatcher.queue.lock().issued;
        dispatcher.push(id(), vec!["after".to_owned()]);
        let (returned, waited) = std::sync::mpsc::channel();
        thread::spawn({
            let dispatcher = Arc::clone(&dispatcher);
            move || {
                dispatcher.wait_until(target);
                let _ = returned.send(());
            }
        });
        gate.permit(1);
        gate.wait_entered(2);
        // "after" is under way and blocked: the waiter returns all the same.
        waited
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the wait returned once what was queued before it was done");
        assert_eq!(*lock(&gate.delivered), ["before"]);
        gate.permit(1);
        dispatcher.wait_idle();
        assert_eq!(*lock(&gate.delivered), ["before", "after"]);
    }

    #[test]
    fn a_wait_returns_while_deliveries_keep_coming() {
        // Each delivery queues the next before it ends: the queue is never idle, yet a wait
        // returns once what was queued before it started is done.
        use std::sync::atomic::AtomicBool;
        use std::sync::{OnceLock, Weak};
        let slot: Arc<OnceLock<Weak<Dispatcher>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let deliver = {
            let (slot, stop) = (Arc::clone(&slot), Arc::clone(&stop));
            move |id, zone: &str| {
                let next = slot.get().and_then(Weak::upgrade);
                if let Some(dispatcher) = next.filter(|_| !stop.load(Ordering::SeqCst)) {
                    dispatcher.push(id, vec![zone.to_owned()]);
                }
            }
        };
        let dispatcher = Arc::new(Dispatcher::new(Arc::new(deliver)));
        slot.set(Arc::downgrade(&dispatcher)).unwrap();
        dispatcher.push(id(), vec!["stream".to_owned()]);
        let (returned, waited) = std::sync::mpsc::channel();
        thread::spawn({
            let dispatcher = Arc::clone(&dispatcher);
            move || {
                dispatcher.wait_idle();
                let _ = returned.send(());
            }
        });
        let outcome = waited.recv_timeout(std::time::Duration::from_secs(10));
        stop.store(true, Ordering::SeqCst);
        dispatcher.wait_idle();
        outcome.expect("the wait returned while the stream went on");
    }

    #[test]
    fn closing_ends_the_thread_after_the_delivery_under_way() {
        let gate = Arc::new(Gate::default());
        let dispatcher = dispatcher(&gate);
        let queue = Arc::clone(&dispatcher.queue);
        let zones = ["1", "2", "3", "4"].map(str::to_owned).to_vec();
        dispatcher.push(id(), zones);
        gate.wait_entered(1);
        let dropper = thread::spawn(move || drop(dispatcher));
        while !queue.lock().closed {
            thread::yield_now();
        }
        gate.permit(1);
        dropper.join().unwrap();
        // The rest stays owed in the outbox; nobody waits for it.
        assert_eq!(*lock(&gate.delivered), ["1"]);
        let state = queue.lock();
        assert!(state.pending.is_empty() && state.done == state.issued);
    }
}
