//! One zone's shell, wired: the shared base, the key-state cache, and the three parts over
//! them. [`Kms`](super::Kms) handles point at one `Zone`; it closes when the last is dropped.

use std::sync::Arc;

use super::cache::Cache;
use super::caller::{Access, Caller, Operation, Target};
use super::crypto_path::CryptoPath;
use super::lifecycle::Lifecycle;
use super::options::KmsOptions;
use super::replicator::Replicator;
use super::shared::Shared;
use crate::core::{Error, KeyId};
use crate::crypto::RootKey;
use crate::store::Backend;

/// The parts of one zone.
pub(super) struct Zone {
    pub(super) shared: Arc<Shared>,
    cache: Arc<Cache>,
    pub(super) lifecycle: Arc<Lifecycle>,
    pub(super) replicator: Arc<Replicator>,
    pub(super) crypto: CryptoPath,
}

impl Zone {
    /// Opens the zone over `backend` (see [`Kms::with_backend`](super::Kms::with_backend)).
    pub(super) fn open(
        backend: Arc<dyn Backend>,
        root_key: RootKey,
        options: KmsOptions,
    ) -> Result<Zone, Error> {
        let shared = Arc::new(Shared::open(backend, root_key, &options)?);
        let delivering = Replicator::parts(&shared, options.link);
        let cache = Arc::new(Cache::new(Arc::clone(&shared)));
        let lifecycle = Arc::new(Lifecycle::new(
            Arc::clone(&shared),
            Arc::clone(&cache),
            Arc::clone(&delivering.1),
        ));
        let replicator = Arc::new(Replicator::new(
            Arc::clone(&shared),
            Arc::clone(&cache),
            delivering,
        ));
        let crypto = CryptoPath::new(
            Arc::clone(&shared),
            Arc::clone(&cache),
            Arc::clone(&lifecycle),
            Arc::clone(&replicator),
        );
        Ok(Zone {
            shared,
            cache,
            lifecycle,
            replicator,
            crypto,
        })
    }

    /// Asks `caller`'s check about `operation` on `target`.
    pub(super) fn admit(
        &self,
        caller: &Caller,
        operation: Operation,
        target: Target<'_>,
    ) -> Result<(), Error> {
        let zone = self.shared.zone();
        caller.admit(&Access {
            operation,
            zone,
            target,
        })
    }

    /// Asks `caller`'s check about `operation` on key `id`, with the key's name if this zone
    /// holds it (from memory, else the store). [`Kms`](super::Kms) asks only a caller with a
    /// check: for the others nothing is looked up.
    #[cold]
    pub(super) fn admit_key(
        &self,
        caller: &Caller,
        operation: Operation,
        id: KeyId,
    ) -> Result<(), Error> {
        let name: Result<Option<Arc<str>>, Error> = match self.cache.get(id) {
            Some(state) => Ok(Some(Arc::clone(&state.name))),
            None => (self.shared.store().load(id)).map(|r| r.map(|r| Arc::from(r.name()))),
        };
        match name {
            Ok(name) => self.admit(
                caller,
                operation,
                Target::Key {
                    id,
                    name: name.as_deref(),
                },
            ),
            // The check comes first: asked as for a key it cannot see, a refused caller learns
            // nothing of the record; an allowed one gets the store's error.
            Err(error) => {
                self.admit(caller, operation, Target::Key { id, name: None })?;
                Err(error)
            }
        }
    }
}
