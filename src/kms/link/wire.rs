//! The wire format of a link between zones in different processes, version 1: a
//! [`ReplicaUpdate`] (origin → replica), the replica's [`Ack`], a replica's request for a new
//! version ([`RotationRequest`], replica → origin) and its answer. docs/design.md
//! ("Replication", "The wire") describes the same bytes.
//!
//! Every message starts with four magic bytes and a format byte. An update and a rotation
//! request then hold one [postcard](https://postcard.jamesmunns.com/wire-format) value (the
//! layouts below: integers as LEB128 varints, strings and lists prefixed by their length as a
//! varint, options by a 0/1 byte, fixed arrays as their bytes), with nothing after it. An
//! answer is fixed-length and big-endian. Material versions travel wrapped under the link key
//! ([`LinkKey::wrap`]): never in clear, with or without TLS. Each update and request carries 16
//! random bytes of its own, so that no two have the same body (and signature).
//!
//! Decoding is as strict as reading a stored record: the length is bounded first, the format
//! must be known, every byte must be used, every time must have its one encoding, the
//! snapshot must be one an origin could have made (versions numbered 1, 2, 3...; names and
//! descriptions within the API's limits), the update must be addressed to the receiving zone,
//! and every wrapped version must unwrap. Every refusal is [`Error::BadRequest`] on
//! [`FIELD`], saying what is wrong and never echoing a secret.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ReplicaUpdate;
use crate::core::limits::{
    DESCRIPTION_MAX_CHARS, NAME_MAX_CHARS, ROTATION_PERIOD_MAX_DAYS, ROTATION_PERIOD_MIN_DAYS,
};
use crate::core::replication::delivery::Ack;
use crate::core::replication::{LiveKey, Snapshot, SnapshotBody};
use crate::core::{Error, KeyId, KeySource, KeyUsage, MaterialMeta, ReplicaZone, RotationConfig};
use crate::crypto::link::{ANSWER_MAC_LEN, LinkKey, WRAPPED_LEN};
use crate::crypto::{KEY_LEN, fill_from_os};

/// The field every refusal of a message names.
pub const FIELD: &str = "replica-update";

/// The format byte of every message of this version.
pub const FORMAT_V1: u8 = 1;

/// Magic bytes of an update.
pub const UPDATE_MAGIC: &[u8; 4] = b"KLRU";
/// Magic bytes of an update's answer.
pub const ACK_MAGIC: &[u8; 4] = b"KLAK";
/// Magic bytes of a rotation request.
pub const ROTATION_MAGIC: &[u8; 4] = b"KLRR";
/// Magic bytes of a rotation request's answer.
pub const ROTATION_DONE_MAGIC: &[u8; 4] = b"KLRA";

/// The largest update accepted: 4 MiB, room for about 50,000 material versions.
pub const MAX_UPDATE_BYTES: usize = 4 * 1024 * 1024;

/// The largest rotation request accepted.
pub const MAX_ROTATION_BYTES: usize = 1024;

/// The longest zone name on the wire, in bytes.
pub const MAX_ZONE_BYTES: usize = 255;

/// Length of an update's answer: magic, format, applied revision (u64 BE), versions held
/// (u32 BE), MAC.
pub const ACK_LEN: usize = 4 + 1 + 8 + 4 + ANSWER_MAC_LEN;

/// Length of a rotation request's answer: magic, format, MAC.
pub const ROTATION_DONE_LEN: usize = 4 + 1 + ANSWER_MAC_LEN;

const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

#[derive(Serialize, Deserialize)]
struct TimeV1 {
    second: i64,
    nanosecond: i32,
}

#[derive(Serialize, Deserialize)]
struct MaterialV1 {
    created_at: TimeV1,
    automatic: bool,
}

#[derive(Serialize, Deserialize)]
struct RotationV1 {
    automatic: bool,
    period_days: u32,
    next_at: TimeV1,
    manual_count: u32,
}

#[derive(Serialize, Deserialize)]
struct ReplicaV1 {
    zone: String,
    since_seq: u64,
}

/// `usage` and `source` are one-value enums today: 0 is `encrypt-decrypt` and
/// `exoscale-kms`, anything else is refused.
#[derive(Serialize, Deserialize)]
struct LiveV1 {
    name: String,
    description: Option<String>,
    usage: u8,
    source: u8,
    created_at: TimeV1,
    /// Versions 1, 2, 3... in order.
    materials: Vec<MaterialV1>,
    rotation: RotationV1,
    delete_at: Option<TimeV1>,
    last_cancel_seq: u64,
    replicas: Vec<ReplicaV1>,
    imported_versions: u32,
}

/// A wrapped material version: [`LinkKey::wrap`]'s nonce, ciphertext and tag.
#[derive(Serialize, Deserialize)]
struct WrappedV1 {
    version: u32,
    nonce: [u8; NONCE_BYTES],
    sealed: [u8; KEY_LEN],
    tag: [u8; TAG_BYTES],
}

#[derive(Serialize, Deserialize)]
struct UpdateV1 {
    /// Random: no two updates have the same bytes.
    request: [u8; 16],
    origin: String,
    target: String,
    id: [u8; 16],
    seq: u64,
    /// `None`: the key was destroyed at its origin.
    body: Option<LiveV1>,
    /// Strictly increasing versions, each one of the snapshot's.
    materials: Vec<WrappedV1>,
}

#[derive(Serialize, Deserialize)]
struct RotationRequestV1 {
    request: [u8; 16],
    origin: String,
    id: [u8; 16],
    version: u32,
}

/// A replica's request to its origin zone for a new version of key `id`, because `version`
/// spent its encryption budget there ([`Link::request_rotation`](super::Link::request_rotation)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRequest {
    /// The key's origin zone, which receives the request.
    pub origin: String,
    /// The key.
    pub id: KeyId,
    /// The version whose budget is spent.
    pub version: u32,
}

fn refused(reason: impl Into<String>) -> Error {
    Error::BadRequest {
        field: FIELD,
        reason: reason.into(),
    }
}

/// Encodes `update` for zone `target`, its material wrapped under `key`.
pub fn encode_update(
    update: &ReplicaUpdate,
    target: &str,
    key: &LinkKey,
) -> Result<Vec<u8>, Error> {
    let snapshot = update.snapshot();
    let origin = snapshot.origin_zone.as_str();
    check_zone(origin, "origin zone")?;
    check_zone(target, "target zone")?;
    let mut materials = Vec::with_capacity(update.materials.len());
    for (version, material) in &update.materials {
        let wrapped = key.wrap(material, snapshot.id, *version, origin, target)?;
        materials.push(split_wrapped(*version, &wrapped));
    }
    let layout = UpdateV1 {
        request: request_id()?,
        origin: origin.to_owned(),
        target: target.to_owned(),
        id: *snapshot.id.as_bytes(),
        seq: snapshot.seq,
        body: match &snapshot.body {
            SnapshotBody::Live(live) => Some(live_layout(live)),
            SnapshotBody::Deleted => None,
        },
        materials,
    };
    let bytes = frame(UPDATE_MAGIC, &layout)?;
    if bytes.len() > MAX_UPDATE_BYTES {
        return Err(refused(format!(
            "is {} bytes, over the limit of {MAX_UPDATE_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decodes an update sent to zone `zone`, unwrapping its material under `key`: the same as
/// [`read_update`] then [`SealedUpdate::open`].
pub fn decode_update(bytes: &[u8], zone: &str, key: &LinkKey) -> Result<ReplicaUpdate, Error> {
    read_update(bytes, zone)?.open(key)
}

/// An update whose bytes were checked ([`read_update`]), its material still wrapped: the
/// receiver can look at who sent it before it unwraps anything ([`SealedUpdate::open`]).
pub struct SealedUpdate {
    snapshot: Snapshot,
    target: String,
    wrapped: Vec<WrappedV1>,
}

impl fmt::Debug for SealedUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedUpdate")
            .field("snapshot", &self.snapshot)
            .field("target", &self.target)
            .field("wrapped_versions", &self.wrapped.len())
            .finish()
    }
}

impl SealedUpdate {
    /// The snapshot it carries (its origin zone, key and revision).
    #[must_use]
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The update, its material unwrapped under `key`; refused if a version does not unwrap
    /// (another secret, key, version or pair of zones, or altered bytes).
    pub fn open(self, key: &LinkKey) -> Result<ReplicaUpdate, Error> {
        let id = self.snapshot.id;
        let mut materials = Vec::with_capacity(self.wrapped.len());
        for wrapped in &self.wrapped {
            let version = wrapped.version;
            let material = key
                .unwrap(
                    &join_wrapped(wrapped),
                    id,
                    version,
                    &self.snapshot.origin_zone,
                    &self.target,
                )
                .ok_or_else(|| {
                    refused(format!(
                        "material version {version} does not unwrap under the link key for \
                         this key and these zones"
                    ))
                })?;
            materials.push((version, material));
        }
        Ok(ReplicaUpdate::new(self.snapshot, materials))
    }
}

/// Checks and decodes an update sent to zone `zone`, leaving its material wrapped.
pub fn read_update(bytes: &[u8], zone: &str) -> Result<SealedUpdate, Error> {
    if bytes.len() > MAX_UPDATE_BYTES {
        return Err(refused(format!(
            "is {} bytes, over the limit of {MAX_UPDATE_BYTES}",
            bytes.len()
        )));
    }
    let layout: UpdateV1 = unframe(UPDATE_MAGIC, bytes, "an update")?;
    check_zone(&layout.origin, "origin zone")?;
    check_zone(&layout.target, "target zone")?;
    if layout.target != zone {
        return Err(refused(format!(
            "is addressed to zone {}, and this is zone {}",
            Error::quote(&layout.target),
            Error::quote(zone)
        )));
    }
    if layout.origin == layout.target {
        return Err(refused("names the same zone as origin and target"));
    }
    if layout.seq == 0 {
        return Err(refused("revision 0 is no revision of a key"));
    }
    let (body, versions) = match layout.body {
        Some(live) => {
            let live = live_key(live)?;
            let versions = u32::try_from(live.materials.len()).unwrap_or(u32::MAX);
            (SnapshotBody::Live(live), versions)
        }
        None => (SnapshotBody::Deleted, 0),
    };
    let mut last = 0u32;
    for wrapped in &layout.materials {
        let version = wrapped.version;
        if version <= last || version > versions {
            return Err(refused(format!(
                "carries material version {version}: versions must increase and be among the \
                 key's 1 to {versions}"
            )));
        }
        last = version;
    }
    Ok(SealedUpdate {
        snapshot: Snapshot {
            id: KeyId::from_bytes(layout.id),
            origin_zone: layout.origin,
            seq: layout.seq,
            body,
        },
        target: layout.target,
        wrapped: layout.materials,
    })
}

/// The answer to an update signed `signature`: `ack`, authenticated under `key`.
#[must_use]
pub fn encode_ack(ack: &Ack, signature: &[u8], key: &LinkKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ACK_LEN);
    bytes.extend_from_slice(ACK_MAGIC);
    bytes.push(FORMAT_V1);
    bytes.extend_from_slice(&ack.applied_seq.to_be_bytes());
    bytes.extend_from_slice(&ack.versions.to_be_bytes());
    let mac = key.answer_mac(signature, &bytes);
    bytes.extend_from_slice(&mac);
    bytes
}

/// The [`Ack`] of an answer to the update signed `signature`, if the answer is one and its MAC
/// verifies under `key` (a forged, altered or replayed answer does not).
pub fn decode_ack(bytes: &[u8], signature: &[u8], key: &LinkKey) -> Result<Ack, Error> {
    if bytes.len() != ACK_LEN || &bytes[..4] != ACK_MAGIC || bytes[4] != FORMAT_V1 {
        return Err(refused(format!(
            "the answer is not an acknowledgement of format {FORMAT_V1} ({ACK_LEN} bytes)"
        )));
    }
    let (body, mac) = bytes.split_at(ACK_LEN - ANSWER_MAC_LEN);
    if !key.verify_answer(signature, body, mac) {
        return Err(refused(
            "the answer's MAC does not verify under the link key for this request: not \
             the replica's answer to it",
        ));
    }
    let mut seq = [0; 8];
    seq.copy_from_slice(&body[5..13]);
    let mut versions = [0; 4];
    versions.copy_from_slice(&body[13..17]);
    Ok(Ack {
        applied_seq: u64::from_be_bytes(seq),
        versions: u32::from_be_bytes(versions),
    })
}

/// Encodes a rotation request.
pub fn encode_rotation(request: &RotationRequest) -> Result<Vec<u8>, Error> {
    check_zone(&request.origin, "origin zone")?;
    frame(
        ROTATION_MAGIC,
        &RotationRequestV1 {
            request: request_id()?,
            origin: request.origin.clone(),
            id: *request.id.as_bytes(),
            version: request.version,
        },
    )
}

/// Decodes a rotation request sent to zone `zone`.
pub fn decode_rotation(bytes: &[u8], zone: &str) -> Result<RotationRequest, Error> {
    if bytes.len() > MAX_ROTATION_BYTES {
        return Err(refused(format!(
            "is {} bytes, over the limit of {MAX_ROTATION_BYTES}",
            bytes.len()
        )));
    }
    let layout: RotationRequestV1 = unframe(ROTATION_MAGIC, bytes, "a rotation request")?;
    check_zone(&layout.origin, "origin zone")?;
    if layout.origin != zone {
        return Err(refused(format!(
            "is addressed to zone {}, and this is zone {}",
            Error::quote(&layout.origin),
            Error::quote(zone)
        )));
    }
    if layout.version == 0 {
        return Err(refused("version 0 is no material version"));
    }
    Ok(RotationRequest {
        origin: layout.origin,
        id: KeyId::from_bytes(layout.id),
        version: layout.version,
    })
}

/// The answer to a rotation request signed `signature`: done, authenticated under `key`.
#[must_use]
pub fn encode_rotation_done(signature: &[u8], key: &LinkKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ROTATION_DONE_LEN);
    bytes.extend_from_slice(ROTATION_DONE_MAGIC);
    bytes.push(FORMAT_V1);
    let mac = key.answer_mac(signature, &bytes);
    bytes.extend_from_slice(&mac);
    bytes
}

/// Whether `bytes` is the authenticated answer "done" to the rotation request signed
/// `signature`.
pub fn decode_rotation_done(bytes: &[u8], signature: &[u8], key: &LinkKey) -> Result<(), Error> {
    if bytes.len() != ROTATION_DONE_LEN
        || &bytes[..4] != ROTATION_DONE_MAGIC
        || bytes[4] != FORMAT_V1
        || !key.verify_answer(signature, &bytes[..5], &bytes[5..])
    {
        return Err(refused(
            "the answer is not the origin's authenticated answer to this rotation request",
        ));
    }
    Ok(())
}

fn request_id() -> Result<[u8; 16], Error> {
    let mut request = [0; 16];
    fill_from_os(&mut request)?;
    Ok(request)
}

fn frame<T: Serialize>(magic: &[u8; 4], layout: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = magic.to_vec();
    bytes.push(FORMAT_V1);
    postcard::to_extend(layout, bytes).map_err(|error| Error::Storage {
        detail: format!("cannot encode a replication message: {error}"),
    })
}

fn unframe<'a, T: Deserialize<'a>>(
    magic: &[u8; 4],
    bytes: &'a [u8],
    what: &str,
) -> Result<T, Error> {
    if bytes.len() < 5 || &bytes[..4] != magic {
        return Err(refused(format!(
            "is not {what}: it does not start with {:?}",
            String::from_utf8_lossy(magic)
        )));
    }
    if bytes[4] != FORMAT_V1 {
        return Err(refused(format!(
            "has format {}; this version reads format {FORMAT_V1}",
            bytes[4]
        )));
    }
    let (layout, rest) = postcard::take_from_bytes::<T>(&bytes[5..])
        .map_err(|error| refused(format!("is not {what} of format {FORMAT_V1}: {error}")))?;
    if !rest.is_empty() {
        return Err(refused(format!("has {} bytes after {what}", rest.len())));
    }
    Ok(layout)
}

fn check_zone(zone: &str, what: &str) -> Result<(), Error> {
    if zone.is_empty() || zone.len() > MAX_ZONE_BYTES {
        return Err(refused(format!(
            "names an {what} of {} bytes; zone names are 1 to {MAX_ZONE_BYTES} bytes",
            zone.len()
        )));
    }
    // Shown by get-kms-key and written to logs: visible ASCII only, no space or control.
    if !zone.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refused(format!(
            "names an {what} with a character other than visible ASCII (no space or control \
             character)"
        )));
    }
    Ok(())
}

fn split_wrapped(version: u32, wrapped: &[u8; WRAPPED_LEN]) -> WrappedV1 {
    let mut nonce = [0; NONCE_BYTES];
    let mut sealed = [0; KEY_LEN];
    let mut tag = [0; TAG_BYTES];
    nonce.copy_from_slice(&wrapped[..NONCE_BYTES]);
    sealed.copy_from_slice(&wrapped[NONCE_BYTES..NONCE_BYTES + KEY_LEN]);
    tag.copy_from_slice(&wrapped[NONCE_BYTES + KEY_LEN..]);
    WrappedV1 {
        version,
        nonce,
        sealed,
        tag,
    }
}

fn join_wrapped(wrapped: &WrappedV1) -> [u8; WRAPPED_LEN] {
    let mut joined = [0; WRAPPED_LEN];
    joined[..NONCE_BYTES].copy_from_slice(&wrapped.nonce);
    joined[NONCE_BYTES..NONCE_BYTES + KEY_LEN].copy_from_slice(&wrapped.sealed);
    joined[NONCE_BYTES + KEY_LEN..].copy_from_slice(&wrapped.tag);
    joined
}

fn time(t: Timestamp) -> TimeV1 {
    TimeV1 {
        second: t.as_second(),
        nanosecond: t.subsec_nanosecond(),
    }
}

/// The time `t` encodes, if it is a valid time in its one encoding.
fn timestamp(t: &TimeV1, what: &str) -> Result<Timestamp, Error> {
    Timestamp::new(t.second, t.nanosecond)
        .ok()
        .filter(|at| at.as_second() == t.second && at.subsec_nanosecond() == t.nanosecond)
        .ok_or_else(|| refused(format!("holds an invalid {what}")))
}

fn live_layout(live: &LiveKey) -> LiveV1 {
    LiveV1 {
        name: live.name.clone(),
        description: live.description.clone(),
        usage: match live.usage {
            KeyUsage::EncryptDecrypt => 0,
        },
        source: match live.source {
            KeySource::ExoscaleKms => 0,
        },
        created_at: time(live.created_at),
        materials: live
            .materials
            .iter()
            .map(|m| MaterialV1 {
                created_at: time(m.created_at),
                automatic: m.automatic,
            })
            .collect(),
        rotation: RotationV1 {
            automatic: live.rotation.automatic,
            period_days: live.rotation.period_days,
            next_at: time(live.rotation.next_at),
            manual_count: live.rotation.manual_count,
        },
        delete_at: live.delete_at.map(time),
        last_cancel_seq: live.last_cancel_seq,
        replicas: live
            .replicas
            .iter()
            .map(|r| ReplicaV1 {
                zone: r.zone.clone(),
                since_seq: r.since_seq,
            })
            .collect(),
        imported_versions: live.imported_versions,
    }
}

fn live_key(live: LiveV1) -> Result<LiveKey, Error> {
    let chars = live.name.chars().count();
    if chars == 0 || chars > NAME_MAX_CHARS {
        return Err(refused(format!(
            "holds a name of {chars} characters; names are 1 to {NAME_MAX_CHARS}"
        )));
    }
    if let Some(description) = &live.description {
        let chars = description.chars().count();
        if chars > DESCRIPTION_MAX_CHARS {
            return Err(refused(format!(
                "holds a description of {chars} characters, over {DESCRIPTION_MAX_CHARS}"
            )));
        }
    }
    if live.usage != 0 || live.source != 0 {
        return Err(refused("holds an unknown usage or source"));
    }
    if live.materials.is_empty() {
        return Err(refused("holds a key without material versions"));
    }
    let count = u32::try_from(live.materials.len())
        .map_err(|_| refused("holds too many material versions"))?;
    if live.imported_versions > count {
        return Err(refused(format!(
            "says {} versions were imported, of {count}",
            live.imported_versions
        )));
    }
    let period = live.rotation.period_days;
    if !(ROTATION_PERIOD_MIN_DAYS..=ROTATION_PERIOD_MAX_DAYS).contains(&period) {
        return Err(refused(format!(
            "holds a rotation period of {period} days, outside {ROTATION_PERIOD_MIN_DAYS} to \
             {ROTATION_PERIOD_MAX_DAYS}"
        )));
    }
    let mut materials = Vec::with_capacity(live.materials.len());
    for (version, material) in (1..=count).zip(&live.materials) {
        materials.push(MaterialMeta {
            version,
            created_at: timestamp(&material.created_at, "material time")?,
            automatic: material.automatic,
        });
    }
    let mut replicas = Vec::with_capacity(live.replicas.len());
    for replica in live.replicas {
        check_zone(&replica.zone, "replica zone")?;
        if replicas
            .iter()
            .any(|r: &ReplicaZone| r.zone == replica.zone)
        {
            return Err(refused("lists a replica zone twice"));
        }
        replicas.push(ReplicaZone {
            zone: replica.zone,
            since_seq: replica.since_seq,
        });
    }
    Ok(LiveKey {
        name: live.name,
        description: live.description,
        usage: KeyUsage::EncryptDecrypt,
        source: KeySource::ExoscaleKms,
        created_at: timestamp(&live.created_at, "creation time")?,
        materials,
        rotation: RotationConfig {
            automatic: live.rotation.automatic,
            period_days: period,
            next_at: timestamp(&live.rotation.next_at, "rotation time")?,
            manual_count: live.rotation.manual_count,
        },
        delete_at: live
            .delete_at
            .as_ref()
            .map(|at| timestamp(at, "deletion time"))
            .transpose()?,
        last_cancel_seq: live.last_cancel_seq,
        replicas,
        imported_versions: live.imported_versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MaterialKey;

    fn at(second: i64) -> Timestamp {
        Timestamp::new(second, 123).unwrap()
    }

    fn material(byte: u8) -> MaterialKey {
        MaterialKey::from_bytes(&mut [byte; KEY_LEN])
    }

    fn live(versions: u32) -> LiveKey {
        LiveKey {
            name: "orders".to_owned(),
            description: Some("the orders' key".to_owned()),
            usage: KeyUsage::EncryptDecrypt,
            source: KeySource::ExoscaleKms,
            created_at: at(1_700_000_000),
            materials: (1..=versions)
                .map(|version| MaterialMeta {
                    version,
                    created_at: at(1_700_000_000 + i64::from(version)),
                    automatic: version % 2 == 0,
                })
                .collect(),
            rotation: RotationConfig {
                automatic: true,
                period_days: 365,
                next_at: at(1_800_000_000),
                manual_count: 1,
            },
            delete_at: Some(at(1_750_000_000)),
            last_cancel_seq: 4,
            replicas: vec![ReplicaZone {
                zone: "de-fra-1".to_owned(),
                since_seq: 3,
            }],
            imported_versions: 1,
        }
    }

    fn update(body: SnapshotBody, materials: &[u32]) -> ReplicaUpdate {
        ReplicaUpdate::new(
            Snapshot {
                id: KeyId::from_bytes([7; 16]),
                origin_zone: "ch-gva-2".to_owned(),
                seq: 9,
                body,
            },
            materials
                .iter()
                .map(|&v| (v, material(u8::try_from(v).unwrap())))
                .collect(),
        )
    }

    fn same(a: &ReplicaUpdate, b: &ReplicaUpdate) -> bool {
        a.snapshot() == b.snapshot()
            && a.material_versions() == b.material_versions()
            && a.materials
                .iter()
                .zip(&b.materials)
                .all(|((_, x), (_, y))| x.same_as(y))
    }

    #[test]
    fn updates_round_trip_with_their_material_wrapped() {
        let key = LinkKey::derive(b"link secret");
        for sent in [
            update(SnapshotBody::Live(live(3)), &[2, 3]),
            update(SnapshotBody::Live(live(1)), &[]),
            update(SnapshotBody::Deleted, &[]),
        ] {
            let bytes = encode_update(&sent, "de-fra-1", &key).unwrap();
            assert_eq!(&bytes[..5], b"KLRU\x01");
            // The material never travels in clear.
            for (_, m) in &sent.materials {
                assert!(!bytes.windows(KEY_LEN).any(|w| w == m.bytes()));
            }
            let got = decode_update(&bytes, "de-fra-1", &key).unwrap();
            assert!(same(&sent, &got), "{got:?}");
            // Every message is unique (random request id, fresh nonces).
            assert_ne!(bytes, encode_update(&sent, "de-fra-1", &key).unwrap());
        }
    }

    #[test]
    fn an_update_for_another_zone_or_under_another_secret_is_refused() {
        let key = LinkKey::derive(b"link secret");
        let sent = update(SnapshotBody::Live(live(2)), &[1, 2]);
        let bytes = encode_update(&sent, "de-fra-1", &key).unwrap();
        let reason = |result: Result<ReplicaUpdate, Error>| match result {
            Err(Error::BadRequest { field, reason }) => {
                assert_eq!(field, FIELD);
                reason
            }
            other => panic!("{other:?}"),
        };
        assert!(reason(decode_update(&bytes, "at-vie-1", &key)).contains("addressed to zone"));
        let other = LinkKey::derive(b"another secret");
        assert!(reason(decode_update(&bytes, "de-fra-1", &other)).contains("does not unwrap"));
        // Every single flipped byte is refused or decodes to something other than what was
        // sent only where the format cannot tell (the random request id).
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x01;
            if let Ok(got) = decode_update(&flipped, "de-fra-1", &key) {
                assert!(
                    (5..21).contains(&position) || !same(&sent, &got),
                    "byte {position} flipped and nothing noticed"
                );
            }
        }
        assert!(
            reason(decode_update(&bytes[..bytes.len() - 1], "de-fra-1", &key))
                .contains("is not an update")
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(reason(decode_update(&longer, "de-fra-1", &key)).contains("bytes after"));
        let mut format = bytes.clone();
        format[4] = 2;
        assert!(reason(decode_update(&format, "de-fra-1", &key)).contains("format 2"));
        let huge = vec![0; MAX_UPDATE_BYTES + 1];
        assert!(reason(decode_update(&huge, "de-fra-1", &key)).contains("over the limit"));
    }

    #[test]
    fn a_snapshot_no_origin_could_make_is_refused() {
        let key = LinkKey::derive(b"k");
        let encode = |layout: &UpdateV1| frame(UPDATE_MAGIC, layout).unwrap();
        let base = || UpdateV1 {
            request: [0; 16],
            origin: "a".to_owned(),
            target: "b".to_owned(),
            id: [1; 16],
            seq: 1,
            body: Some(live_layout(&live(2))),
            materials: Vec::new(),
        };
        assert!(decode_update(&encode(&base()), "b", &key).is_ok());
        let refused_because = |change: &dyn Fn(&mut UpdateV1), why: &str| {
            let mut layout = base();
            change(&mut layout);
            match decode_update(&encode(&layout), "b", &key) {
                Err(Error::BadRequest { reason, .. }) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{why}: {other:?}"),
            }
        };
        refused_because(&|l| l.seq = 0, "revision 0");
        refused_because(&|l| l.target = "a".to_owned(), "addressed to");
        refused_because(&|l| l.origin = "b".to_owned(), "same zone");
        refused_because(&|l| l.origin = String::new(), "1 to 255");
        refused_because(
            &|l| l.origin = "a\nforged log line".to_owned(),
            "visible ASCII",
        );
        refused_because(
            &|l| {
                let replicas = &mut l.body.as_mut().unwrap().replicas;
                replicas.push(ReplicaV1 {
                    zone: "x y".to_owned(),
                    since_seq: 1,
                });
            },
            "visible ASCII",
        );
        refused_because(
            &|l| l.body.as_mut().unwrap().name = String::new(),
            "name of 0",
        );
        refused_because(
            &|l| l.body.as_mut().unwrap().name = "n".repeat(257),
            "name of 257",
        );
        refused_because(&|l| l.body.as_mut().unwrap().usage = 1, "unknown usage");
        refused_because(
            &|l| l.body.as_mut().unwrap().materials.clear(),
            "without material",
        );
        refused_because(
            &|l| l.body.as_mut().unwrap().imported_versions = 3,
            "imported",
        );
        refused_because(
            &|l| l.body.as_mut().unwrap().rotation.period_days = 89,
            "rotation period",
        );
        refused_because(
            &|l| l.body.as_mut().unwrap().created_at.nanosecond = 1_000_000_000,
            "invalid creation time",
        );
        // A negative nanosecond with a positive second is a second encoding of another time.
        refused_because(
            &|l| l.body.as_mut().unwrap().created_at.nanosecond = -1,
            "invalid creation time",
        );
        refused_because(
            &|l| {
                let replicas = &mut l.body.as_mut().unwrap().replicas;
                replicas.push(ReplicaV1 {
                    zone: "de-fra-1".to_owned(),
                    since_seq: 1,
                });
            },
            "twice",
        );
        let wrapped = |version: u32| {
            let w = key
                .wrap(&material(1), KeyId::from_bytes([1; 16]), version, "a", "b")
                .unwrap();
            split_wrapped(version, &w)
        };
        refused_because(
            &|l| l.materials = vec![wrapped(3)],
            "among the key's 1 to 2",
        );
        refused_because(
            &|l| l.materials = vec![wrapped(2), wrapped(1)],
            "must increase",
        );
        refused_because(
            &|l| l.materials = vec![wrapped(1), wrapped(1)],
            "must increase",
        );
        refused_because(
            &|l| {
                l.body = None;
                l.materials = vec![wrapped(1)];
            },
            "among the key's 1 to 0",
        );
        // A wrapped version moved to another version number does not unwrap.
        refused_because(
            &|l| {
                let mut moved = wrapped(1);
                moved.version = 2;
                l.materials = vec![moved];
            },
            "does not unwrap",
        );
    }

    #[test]
    fn answers_verify_only_for_their_request_and_link() {
        let key = LinkKey::derive(b"link secret");
        let ack = Ack {
            applied_seq: 0x0102_0304_0506_0708,
            versions: 9,
        };
        let bytes = encode_ack(&ack, b"signature one", &key);
        assert_eq!(bytes.len(), ACK_LEN);
        assert_eq!(
            &bytes[..17],
            b"KLAK\x01\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x09"
        );
        assert_eq!(decode_ack(&bytes, b"signature one", &key).unwrap(), ack);
        // The answer to another request (a replayed answer), under another secret, or altered.
        assert!(decode_ack(&bytes, b"signature two", &key).is_err());
        assert!(decode_ack(&bytes, b"signature one", &LinkKey::derive(b"x")).is_err());
        for position in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[position] ^= 0x80;
            assert!(
                decode_ack(&flipped, b"signature one", &key).is_err(),
                "{position}"
            );
        }
        assert!(decode_ack(&bytes[..ACK_LEN - 1], b"signature one", &key).is_err());

        let done = encode_rotation_done(b"sig", &key);
        assert!(decode_rotation_done(&done, b"sig", &key).is_ok());
        assert!(decode_rotation_done(&done, b"sih", &key).is_err());
        assert!(decode_rotation_done(&done[..ROTATION_DONE_LEN - 1], b"sig", &key).is_err());
    }

    #[test]
    fn rotation_requests_round_trip_and_name_their_origin() {
        let request = RotationRequest {
            origin: "ch-gva-2".to_owned(),
            id: KeyId::from_bytes([3; 16]),
            version: 4,
        };
        let bytes = encode_rotation(&request).unwrap();
        assert_eq!(&bytes[..5], b"KLRR\x01");
        assert_eq!(decode_rotation(&bytes, "ch-gva-2").unwrap(), request);
        assert!(decode_rotation(&bytes, "de-fra-1").is_err());
        let zero = RotationRequest {
            version: 0,
            ..request
        };
        assert!(decode_rotation(&encode_rotation(&zero).unwrap(), "ch-gva-2").is_err());
        assert!(decode_rotation(&[0; MAX_ROTATION_BYTES + 1], "ch-gva-2").is_err());
    }
}
