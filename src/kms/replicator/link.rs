//! The [`Link`] between zones, the message it carries ([`ReplicaUpdate`]), and
//! [`LocalLink`], which connects the `Kms` instances of one process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, Weak};

use crate::Kms;
use crate::core::replication::Snapshot;
use crate::core::replication::delivery::Ack;
use crate::core::{Error, KeyId};
use crate::crypto::MaterialKey;

/// Carries replication updates from one zone to the others.
///
/// keylife ships [`LocalLink`], which connects `Kms` instances of one process. Another link
/// implements the same three methods: [`Link::deliver`] ends in [`Kms::receive`] on the other
/// side and [`Link::request_rotation`] in [`Kms::retire_version`]. A link outside this crate
/// can carry updates only between `Kms` instances of one process for now: a
/// [`ReplicaUpdate`] has no wire encoding and no public constructor yet.
pub trait Link: Send + Sync + fmt::Debug {
    /// Whether `zone` is a zone this link can carry updates to (reachable or not right now):
    /// replicate-key accepts only such zones.
    fn knows(&self, zone: &str) -> bool;

    /// Delivers `update` to zone `zone` and returns its answer. A zone that cannot be reached
    /// or does not answer is [`Error::ZoneUnreachable`]; the zone's own refusals come back as
    /// its errors.
    fn deliver(&self, zone: &str, update: &ReplicaUpdate) -> Result<Ack, Error>;

    /// Asks zone `zone`, the origin of key `id`, for a new material version because
    /// `version` used its encryption budget in this zone: the receiving side calls
    /// [`Kms::retire_version`]. The new version reaches this zone as a normal update.
    fn request_rotation(&self, zone: &str, id: KeyId, version: u32) -> Result<(), Error>;
}

/// One replication message: the replicated state of an origin key at one revision, and the
/// material versions the receiving replica may not hold yet, in wiping containers.
pub struct ReplicaUpdate {
    snapshot: Snapshot,
    materials: Vec<(u32, MaterialKey)>,
}

impl ReplicaUpdate {
    /// The replicated state carried.
    #[must_use]
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The material versions carried (not the material).
    #[must_use]
    pub fn material_versions(&self) -> Vec<u32> {
        self.materials.iter().map(|(version, _)| *version).collect()
    }

    /// An update of `snapshot` carrying `materials` (version, material).
    pub(super) fn new(snapshot: Snapshot, materials: Vec<(u32, MaterialKey)>) -> ReplicaUpdate {
        ReplicaUpdate {
            snapshot,
            materials,
        }
    }

    /// The material of `version`, if the update carries it.
    pub(super) fn material(&self, version: u32) -> Option<&MaterialKey> {
        self.materials
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, material)| material)
    }
}

impl Clone for ReplicaUpdate {
    /// Copies the material into new wiping containers: a link may have to send a message
    /// again.
    fn clone(&self) -> ReplicaUpdate {
        ReplicaUpdate {
            snapshot: self.snapshot.clone(),
            materials: self
                .materials
                .iter()
                .map(|(version, material)| (*version, material.duplicate()))
                .collect(),
        }
    }
}

impl fmt::Debug for ReplicaUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaUpdate")
            .field("snapshot", &self.snapshot)
            .field("material_versions", &self.material_versions())
            .finish()
    }
}

/// The in-process [`Link`]: connects `Kms` instances of one program by zone name.
///
/// A zone is known once [`LocalLink::attach`]ed, and stays known when its `Kms` is dropped
/// (it is then unreachable until a new `Kms` of that zone is attached). The link holds its
/// `Kms` weakly, so that dropping a `Kms` closes it.
///
/// ```
/// use std::sync::Arc;
/// use keylife::{CreateKey, Kms, KmsOptions, LocalLink, RootKey};
///
/// # fn main() -> Result<(), keylife::Error> {
/// let link = LocalLink::new();
/// let zone = |name: &str| -> Result<Arc<Kms>, keylife::Error> {
///     let kms = Arc::new(Kms::open_in_memory(
///         RootKey::generate()?,
///         KmsOptions::new(name).link(link.clone()),
///     )?);
///     link.attach(&kms);
///     Ok(kms)
/// };
/// let (gva, fra) = (zone("ch-gva-2")?, zone("de-fra-1")?);
/// let key = gva.create_key(&CreateKey::new("orders").multi_zone(true))?;
/// gva.replicate_key(key.id, "de-fra-1", None)?;
/// // Delivery is asynchronous; `sync` delivers what waits, now.
/// gva.sync()?;
/// let sealed = gva.encrypt(key.id, b"data", None)?;
/// assert_eq!(fra.decrypt(key.id, &sealed.ciphertext, None)?.plaintext.as_bytes(), b"data");
/// assert_eq!(fra.get_key(key.id)?.key.origin_zone, "ch-gva-2");
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct LocalLink {
    zones: RwLock<HashMap<String, Weak<Kms>>>,
}

impl LocalLink {
    /// A link with no zone.
    #[must_use]
    pub fn new() -> Arc<LocalLink> {
        Arc::new(LocalLink::default())
    }

    /// Connects `kms` under its zone name, replacing an earlier `Kms` of that zone.
    pub fn attach(&self, kms: &Arc<Kms>) {
        self.zones
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kms.zone().to_owned(), Arc::downgrade(kms));
    }

    fn zone(&self, zone: &str) -> Option<Option<Arc<Kms>>> {
        self.zones
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(zone)
            .map(Weak::upgrade)
    }
}

impl fmt::Debug for LocalLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let zones = self.zones.read().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<_> = zones.keys().collect();
        names.sort();
        f.debug_struct("LocalLink").field("zones", &names).finish()
    }
}

impl Link for LocalLink {
    fn knows(&self, zone: &str) -> bool {
        self.zone(zone).is_some()
    }

    fn deliver(&self, zone: &str, update: &ReplicaUpdate) -> Result<Ack, Error> {
        self.reach(zone)?.receive(update)
    }

    fn request_rotation(&self, zone: &str, id: KeyId, version: u32) -> Result<(), Error> {
        self.reach(zone)?.retire_version(id, version)
    }
}

impl LocalLink {
    fn reach(&self, zone: &str) -> Result<Arc<Kms>, Error> {
        let unreachable = |detail: &str| Error::ZoneUnreachable {
            zone: zone.to_owned(),
            detail: detail.to_owned(),
        };
        match self.zone(zone) {
            Some(Some(kms)) => Ok(kms),
            Some(None) => Err(unreachable("its Kms is closed")),
            None => Err(unreachable("no such zone on this link")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::replication::SnapshotBody;

    #[test]
    fn update_debug_shows_no_material() {
        let material = MaterialKey::generate().unwrap();
        let update = ReplicaUpdate {
            snapshot: Snapshot {
                id: KeyId::from_bytes([1; 16]),
                origin_zone: "a".to_owned(),
                seq: 3,
                body: SnapshotBody::Deleted,
            },
            materials: vec![(1, material)],
        };
        let shown = format!("{update:?}");
        assert!(shown.contains("material_versions: [1]"), "{shown}");
        assert!(!shown.contains("KeyBytes"), "{shown}");
    }
}
