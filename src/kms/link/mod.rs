//! The [`Link`] between zones, the message it carries ([`ReplicaUpdate`]), and that message's
//! encoding between processes ([`wire`]).

pub mod wire;

use std::fmt;

use crate::core::replication::Snapshot;
use crate::core::replication::delivery::Ack;
use crate::core::{Error, KeyId};
use crate::crypto::MaterialKey;

/// Carries replication updates from one zone to the others.
///
/// keylife ships [`LocalLink`](crate::LocalLink), which connects `Kms` instances of one
/// process, and (feature `server`) `server::peer::PeerLink`, which reaches zones served by
/// other processes over HTTP(S) in the [`wire`] format. Another link implements the same three
/// methods: [`Link::deliver`] ends in [`Kms::receive`](crate::Kms::receive) on the other side
/// and [`Link::request_rotation`] in [`Kms::retire_version`](crate::Kms::retire_version); a
/// [`ReplicaUpdate`] crosses processes as [`wire::encode_update`] /
/// [`wire::decode_update`], its material wrapped under the link's key.
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
    /// [`Kms::retire_version`](crate::Kms::retire_version). The new version reaches this zone
    /// as a normal update.
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
