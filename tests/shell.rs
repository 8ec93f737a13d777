//! The shell's promises under concurrency: nothing is written once `not-durable` was reported,
//! a zone reached through any of its handles stays reachable, and a panic in a background run
//! of what is due is reported and does not stop the runs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use keylife::store::{Backend, Entries, MemoryBackend, Table, Write};
use keylife::{
    Ack, Caller, CreateKey, DueRun, Error, KeyId, Kms, KmsOptions, Link, LocalLink, ReplicaUpdate,
};

use common::gate::Gate;
use common::root;

/// A memory backend that can be told to apply its next commit and answer `not-durable`, or to
/// hold it until released first; it counts the commits made after that failure.
#[derive(Default)]
struct Latch {
    inner: MemoryBackend,
    fail_next: AtomicBool,
    hold_next: AtomicBool,
    held: Mutex<bool>,
    changed: Condvar,
    failed: AtomicBool,
    commits_after_failure: AtomicUsize,
}

impl Latch {
    /// Waits until a commit is held, then lets it through.
    fn release_held(&self) {
        let mut held = self.held.lock().unwrap();
        while !*held {
            held = self.changed.wait(held).unwrap();
        }
        *held = false;
        self.changed.notify_all();
    }
}

impl Backend for Latch {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get(table, key)
    }

    fn scan(&self, t: Table, s: &[u8], e: Option<&[u8]>, l: usize) -> Result<Entries, Error> {
        self.inner.scan(t, s, e, l)
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        if self.failed.load(Ordering::SeqCst) {
            self.commits_after_failure.fetch_add(1, Ordering::SeqCst);
        }
        if self.hold_next.swap(false, Ordering::SeqCst) {
            let mut held = self.held.lock().unwrap();
            *held = true;
            self.changed.notify_all();
            while *held {
                held = self.changed.wait(held).unwrap();
            }
            self.fail_next.store(true, Ordering::SeqCst);
        }
        self.inner.commit(batch)?;
        if self.fail_next.swap(false, Ordering::SeqCst) {
            self.failed.store(true, Ordering::SeqCst);
            return Err(Error::NotDurable {
                detail: "injected".to_owned(),
            });
        }
        Ok(())
    }
}

#[test]
fn a_delivery_under_way_writes_nothing_once_not_durable_was_reported() {
    let gate = Arc::new(Gate::default());
    let backend = Arc::new(Latch::default());
    let options = |zone: &str| KmsOptions::new(zone).link(gate.clone());
    let a = Arc::new(Kms::with_backend(backend.clone(), root(1), options("a")).unwrap());
    let b = Arc::new(Kms::open_in_memory(root(2), options("b")).unwrap());
    gate.inner.attach(&a);
    gate.inner.attach(&b);
    let key = a.create_key(&CreateKey::new("k").multi_zone(true)).unwrap();
    let other = a.create_key(&CreateKey::new("other")).unwrap();
    a.replicate_key(key.id, "b", None).unwrap();
    a.sync().unwrap();
    // The delivery of a change waits at the gate while another change fails.
    gate.set_closed(true);
    a.disable_key(key.id, None).unwrap();
    assert_eq!(gate.wait_held(1), 1, "the delivery waits at the gate");
    backend.fail_next.store(true, Ordering::SeqCst);
    assert_eq!(
        a.disable_key(other.id, None).unwrap_err().code(),
        "not-durable"
    );
    assert_eq!(a.get_key(key.id).unwrap_err().code(), "not-durable");
    gate.set_closed(false);
    a.wait_for_deliveries();
    assert!(
        !gate.timed_out(),
        "the change did not wait for its delivery"
    );
    assert_eq!(
        backend.commits_after_failure.load(Ordering::SeqCst),
        0,
        "the delivery recorded its answer after not-durable"
    );
}

#[test]
fn a_change_waiting_for_the_key_lock_writes_nothing_once_not_durable_was_reported() {
    let backend = Arc::new(Latch::default());
    let kms = Arc::new(Kms::with_backend(backend.clone(), root(1), KmsOptions::new("z")).unwrap());
    let key = kms.create_key(&CreateKey::new("k")).unwrap().id;
    backend.hold_next.store(true, Ordering::SeqCst);
    // The first change holds the key's lock while its commit waits, then fails.
    let first = thread::spawn({
        let kms = Arc::clone(&kms);
        move || kms.disable_key(key, None)
    });
    let second = thread::spawn({
        let kms = Arc::clone(&kms);
        move || {
            // Most likely past its first check and waiting for the lock when the first fails.
            thread::sleep(Duration::from_millis(50));
            kms.schedule_key_deletion(key, None, None)
        }
    });
    thread::sleep(Duration::from_millis(100));
    backend.release_held();
    assert_eq!(first.join().unwrap().unwrap_err().code(), "not-durable");
    assert_eq!(second.join().unwrap().unwrap_err().code(), "not-durable");
    assert_eq!(backend.commits_after_failure.load(Ordering::SeqCst), 0);
}

#[test]
fn a_zone_stays_reachable_through_any_of_its_handles() {
    let local = LocalLink::new();
    let a =
        Arc::new(Kms::open_in_memory(root(1), KmsOptions::new("a").link(local.clone())).unwrap());
    let b =
        Arc::new(Kms::open_in_memory(root(2), KmsOptions::new("b").link(local.clone())).unwrap());
    local.attach(&a);
    local.attach(&b);
    // The handle given to the link goes; another keeps zone b open.
    let b_app = b.as_caller(Caller::new("app"));
    drop(b);
    let key = a.create_key(&CreateKey::new("k").multi_zone(true)).unwrap();
    a.replicate_key(key.id, "b", None).unwrap();
    let report = a.sync().unwrap();
    assert_eq!(report.failed, vec![]);
    assert_eq!(b_app.get_key(key.id).unwrap().key.origin_zone, "a");
    // Once every handle is gone, the zone is closed to the link.
    drop(b_app);
    a.rotate_key(key.id, None).unwrap();
    let report = a.sync().unwrap();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].2.code(), "zone-unreachable");
}

/// A link whose deliveries panic, as a buggy link might; it counts them.
#[derive(Debug, Default)]
struct Panicking {
    deliveries: AtomicUsize,
}

impl Link for Panicking {
    fn knows(&self, _: &str) -> bool {
        true
    }

    fn deliver(&self, _: &str, _: &ReplicaUpdate) -> Result<Ack, Error> {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        panic!("the link broke")
    }

    fn request_rotation(&self, _: &str, _: KeyId, _: u32) -> Result<(), Error> {
        panic!("the link broke")
    }
}

#[test]
fn a_run_of_what_is_due_that_panics_is_reported_and_the_zone_goes_on() {
    let link = Arc::new(Panicking::default());
    let deliveries = || link.deliveries.load(Ordering::SeqCst);
    let kms = Kms::open_in_memory(root(1), KmsOptions::new("a").link(link.clone())).unwrap();
    let key = kms
        .create_key(&CreateKey::new("k").multi_zone(true))
        .unwrap()
        .id;
    kms.replicate_key(key, "b", None).unwrap();
    // The background delivery panicked on its thread; the change stands and the zone works.
    kms.wait_for_deliveries();
    assert_eq!(deliveries(), 1);
    assert_eq!(kms.get_key(key).unwrap().key.replicas, ["b"]);
    for _ in 0..2 {
        match DueRun::of(&kms) {
            DueRun::Panicked(message) => assert_eq!(message, "the link broke"),
            DueRun::Ran(result) => panic!("expected a panic, got {result:?}"),
        }
    }
    let sealed = kms.encrypt(key, b"still works", None).unwrap();
    let opened = kms.decrypt(key, &sealed.ciphertext, None).unwrap();
    assert_eq!(opened.plaintext.as_bytes(), b"still works");
    assert_eq!(deliveries(), 3, "each run tried the delivery once");
    // A new change queues a delivery again: a new delivery thread makes it (and panics).
    kms.disable_key(key, None).unwrap();
    let (done, waited) = std::sync::mpsc::channel();
    let waiter = kms.clone();
    std::thread::spawn(move || {
        waiter.wait_for_deliveries();
        let _ = done.send(());
    });
    waited
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the wait ends: the dead thread is not waited for");
    assert_eq!(deliveries(), 4);
}
