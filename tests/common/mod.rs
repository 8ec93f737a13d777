//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod failing;
pub mod fault;
pub mod gate;

use std::sync::Arc;

use jiff::Timestamp;
use keylife::store::{Backend, MemoryBackend};
use keylife::{Kms, KmsOptions, Limits, ManualClock, RootKey};

/// The start of every manual clock.
pub fn start() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// A fixed root key derived from `byte`.
pub fn root(byte: u8) -> RootKey {
    RootKey::from_bytes(&mut [byte; 32])
}

/// A Kms over a fresh in-memory store with a manual clock.
pub fn memory_kms() -> (Kms, ManualClock) {
    let clock = ManualClock::new(start());
    let kms =
        Kms::open_in_memory(root(1), KmsOptions::new("ch-gva-2").clock(clock.clone())).unwrap();
    (kms, clock)
}

/// A Kms over `backend` with `limits` and `clock`.
pub fn kms_on(backend: Arc<dyn Backend>, clock: &ManualClock, limits: Limits) -> Kms {
    Kms::with_backend(
        backend,
        root(1),
        KmsOptions::new("ch-gva-2")
            .clock(clock.clone())
            .limits(limits),
    )
    .unwrap()
}

/// A read view, through the authenticated layer under `root(1)`, of a store a `Kms` (opened
/// with `root(1)`) wrote to `backend`. For reads only: a second writer would undo the first.
pub fn view(backend: &Arc<dyn Backend>) -> keylife::store::Store {
    let (authenticated, _) =
        keylife::store::AuthenticatedBackend::open(backend.clone(), &root(1)).unwrap();
    keylife::store::Store::new(Arc::new(authenticated))
}

/// A fresh in-memory backend.
pub fn memory() -> Arc<dyn Backend> {
    Arc::new(MemoryBackend::new())
}

/// Zones of one test, connected by a link, sharing one manual clock.
pub struct Zones {
    /// The shared clock.
    pub clock: ManualClock,
    /// The link they share.
    pub link: Arc<dyn keylife::Link>,
    /// The zones, in the order given.
    pub kms: Vec<Arc<Kms>>,
}

impl Zones {
    /// In-memory zones named `names`, connected by a [`keylife::LocalLink`]; each zone's root
    /// key differs.
    pub fn memory(names: &[&str]) -> Zones {
        let local = keylife::LocalLink::new();
        Zones::on(names, local.clone(), |kms| local.attach(kms))
    }

    /// In-memory zones connected by a [`fault::FaultLink`], returned with them.
    pub fn faulty(names: &[&str]) -> (Zones, Arc<fault::FaultLink>) {
        let faulty = fault::FaultLink::new(keylife::LocalLink::new());
        let zones = Zones::on(names, faulty.clone(), |kms| faulty.inner().attach(kms));
        (zones, faulty)
    }

    /// In-memory zones connected by a [`fault::FaultLink`] whose `Kms` use `limits`.
    pub fn faulty_with(names: &[&str], limits: Limits) -> (Zones, Arc<fault::FaultLink>) {
        let faulty = fault::FaultLink::new(keylife::LocalLink::new());
        let zones = Zones::on_with(names, faulty.clone(), limits, |kms| {
            faulty.inner().attach(kms);
        });
        (zones, faulty)
    }

    /// In-memory zones connected by `link`, each attached with `attach`.
    pub fn on(names: &[&str], link: Arc<dyn keylife::Link>, attach: impl Fn(&Arc<Kms>)) -> Zones {
        Zones::on_with(names, link, Limits::default(), attach)
    }

    /// In-memory zones connected by `link` whose `Kms` use `limits`, each attached with
    /// `attach`.
    pub fn on_with(
        names: &[&str],
        link: Arc<dyn keylife::Link>,
        limits: Limits,
        attach: impl Fn(&Arc<Kms>),
    ) -> Zones {
        let clock = ManualClock::new(start());
        let kms = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let kms = Arc::new(
                    Kms::open_in_memory(
                        root(10 + u8::try_from(i).unwrap()),
                        KmsOptions::new(*name)
                            .clock(clock.clone())
                            .limits(limits)
                            .link(Arc::clone(&link)),
                    )
                    .unwrap(),
                );
                attach(&kms);
                kms
            })
            .collect();
        Zones { clock, link, kms }
    }

    /// Zone number `i`.
    pub fn zone(&self, i: usize) -> &Kms {
        &self.kms[i]
    }
}

/// The JSON lines of the file at `path` (an audit log), each parsed.
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Copies directory `from` (a closed store, for example) to `to`, recursively.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
