//! Encoding of stored records: a format-version byte, then postcard.
//!
//! The layout types here (`*V1`) are the stored format and change only with a new format
//! byte; the core's types can change freely. Decoding checks what postcard cannot (material
//! versions numbered from 1, the id matching the entry's key) and turns every failure into
//! [`Error::Corrupt`] naming the record.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::core::{
    Error, KeyId, KeyRecord, KeySource, KeyUsage, MaterialMeta, Revision, Role, RotationConfig,
    Status,
};

/// Format byte of key records written by this version.
pub const RECORD_FORMAT_V1: u8 = 1;

#[derive(Serialize, Deserialize)]
struct TimeV1 {
    second: i64,
    nanosecond: i32,
}

#[derive(Serialize, Deserialize)]
enum StatusV1 {
    Enabled,
    Disabled,
    PendingDeletion { delete_at: TimeV1 },
}

#[derive(Serialize, Deserialize)]
enum RoleV1 {
    Origin,
    Replica,
}

#[derive(Serialize, Deserialize)]
enum UsageV1 {
    EncryptDecrypt,
}

#[derive(Serialize, Deserialize)]
enum SourceV1 {
    ExoscaleKms,
}

#[derive(Serialize, Deserialize)]
struct MaterialV1 {
    created_at: TimeV1,
    automatic: bool,
}

#[derive(Serialize, Deserialize)]
struct RecordV1 {
    id: [u8; 16],
    name: String,
    description: Option<String>,
    usage: UsageV1,
    source: SourceV1,
    multi_zone: bool,
    origin_zone: String,
    role: RoleV1,
    status: StatusV1,
    status_since: TimeV1,
    created_at: TimeV1,
    revision_seq: u64,
    revision_at: TimeV1,
    /// Versions 1, 2, 3, ... in order: the version is the position.
    materials: Vec<MaterialV1>,
    rotation_automatic: bool,
    rotation_period_days: u32,
    rotation_next_at: TimeV1,
    rotation_manual_count: u32,
}

fn time(t: Timestamp) -> TimeV1 {
    TimeV1 {
        second: t.as_second(),
        nanosecond: t.subsec_nanosecond(),
    }
}

/// Encodes a key record.
pub fn encode_record(record: &KeyRecord) -> Result<Vec<u8>, Error> {
    let layout = RecordV1 {
        id: *record.id.as_bytes(),
        name: record.name.clone(),
        description: record.description.clone(),
        usage: match record.usage {
            KeyUsage::EncryptDecrypt => UsageV1::EncryptDecrypt,
        },
        source: match record.source {
            KeySource::ExoscaleKms => SourceV1::ExoscaleKms,
        },
        multi_zone: record.multi_zone,
        origin_zone: record.origin_zone.clone(),
        role: match record.role {
            Role::Origin => RoleV1::Origin,
            Role::Replica => RoleV1::Replica,
        },
        status: match record.status {
            Status::Enabled => StatusV1::Enabled,
            Status::Disabled => StatusV1::Disabled,
            Status::PendingDeletion { delete_at } => StatusV1::PendingDeletion {
                delete_at: time(delete_at),
            },
        },
        status_since: time(record.status_since),
        created_at: time(record.created_at),
        revision_seq: record.revision.seq,
        revision_at: time(record.revision.at),
        materials: record
            .materials
            .iter()
            .map(|m| MaterialV1 {
                created_at: time(m.created_at),
                automatic: m.automatic,
            })
            .collect(),
        rotation_automatic: record.rotation.automatic,
        rotation_period_days: record.rotation.period_days,
        rotation_next_at: time(record.rotation.next_at),
        rotation_manual_count: record.rotation.manual_count,
    };
    let mut out = vec![RECORD_FORMAT_V1];
    let body = postcard::to_stdvec(&layout).map_err(|e| Error::Storage {
        detail: format!("could not encode the record of key {}: {e}", record.id),
    })?;
    out.extend(body);
    Ok(out)
}

/// Decodes the record stored under `id`.
pub fn decode_record(id: KeyId, bytes: &[u8]) -> Result<KeyRecord, Error> {
    let corrupt = |detail: String| Error::Corrupt {
        record: format!("key {id}"),
        detail,
    };
    let (&format, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".to_owned()))?;
    if format != RECORD_FORMAT_V1 {
        return Err(corrupt(format!("unknown record format {format}")));
    }
    let (layout, rest): (RecordV1, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| corrupt(format!("does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} bytes after the record", rest.len())));
    }
    if layout.id != *id.as_bytes() {
        return Err(corrupt(format!(
            "holds the record of key {}",
            KeyId::from_bytes(layout.id)
        )));
    }
    if layout.materials.is_empty() {
        return Err(corrupt("has no material version".to_owned()));
    }
    let ts = |t: TimeV1| {
        Timestamp::new(t.second, t.nanosecond)
            .map_err(|e| corrupt(format!("holds an invalid time: {e}")))
    };
    let mut materials = Vec::with_capacity(layout.materials.len());
    for (index, m) in layout.materials.into_iter().enumerate() {
        let version = u32::try_from(index + 1)
            .map_err(|_| corrupt("has too many material versions".to_owned()))?;
        materials.push(MaterialMeta {
            version,
            created_at: ts(m.created_at)?,
            automatic: m.automatic,
        });
    }
    Ok(KeyRecord {
        id,
        name: layout.name,
        description: layout.description,
        usage: match layout.usage {
            UsageV1::EncryptDecrypt => KeyUsage::EncryptDecrypt,
        },
        source: match layout.source {
            SourceV1::ExoscaleKms => KeySource::ExoscaleKms,
        },
        multi_zone: layout.multi_zone,
        origin_zone: layout.origin_zone,
        role: match layout.role {
            RoleV1::Origin => Role::Origin,
            RoleV1::Replica => Role::Replica,
        },
        status: match layout.status {
            StatusV1::Enabled => Status::Enabled,
            StatusV1::Disabled => Status::Disabled,
            StatusV1::PendingDeletion { delete_at } => Status::PendingDeletion {
                delete_at: ts(delete_at)?,
            },
        },
        status_since: ts(layout.status_since)?,
        created_at: ts(layout.created_at)?,
        revision: Revision {
            seq: layout.revision_seq,
            at: ts(layout.revision_at)?,
        },
        materials,
        rotation: RotationConfig {
            automatic: layout.rotation_automatic,
            period_days: layout.rotation_period_days,
            next_at: ts(layout.rotation_next_at)?,
            manual_count: layout.rotation_manual_count,
        },
    })
}

/// Key of the due-time index: the time (so that entries sort by it), then the key id.
pub fn due_key(at: Timestamp, id: KeyId) -> [u8; 28] {
    let mut key = [0; 28];
    key[..12].copy_from_slice(&due_prefix(at));
    key[12..].copy_from_slice(id.as_bytes());
    key
}

/// The first 12 bytes of [`due_key`]: seconds with the sign bit flipped (so that byte order is
/// time order), then nanoseconds.
pub fn due_prefix(at: Timestamp) -> [u8; 12] {
    let mut key = [0; 12];
    let ordered = (at.as_second() as u64) ^ (1 << 63);
    key[..8].copy_from_slice(&ordered.to_be_bytes());
    // jiff gives the fraction the sign of the timestamp (-999_999_999..=999_999_999 ns);
    // shifted by 1e9 it is positive and still in time order within one `as_second` value.
    let nanos = u32::try_from(i64::from(at.subsec_nanosecond()) + 1_000_000_000).unwrap_or(0);
    key[8..].copy_from_slice(&nanos.to_be_bytes());
    key
}

/// The key id at the end of a due-index key.
pub fn due_key_id(key: &[u8]) -> Option<KeyId> {
    let id: [u8; 16] = key.get(12..28)?.try_into().ok()?;
    Some(KeyId::from_bytes(id))
}

/// Key of a per-version entry (materials, usage): key id then version, big-endian.
pub fn version_key(id: KeyId, version: u32) -> [u8; 20] {
    let mut key = [0; 20];
    key[..16].copy_from_slice(id.as_bytes());
    key[16..].copy_from_slice(&version.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{CreateContext, CreateKey, create_key};

    fn record() -> KeyRecord {
        let id = KeyId::from_bytes([5; 16]);
        create_key(
            &CreateKey::new("k").description("d"),
            &CreateContext {
                id,
                zone: "ch-gva-2",
                now: Timestamp::new(1_700_000_000, 123).unwrap(),
                origin_keys: 0,
                quota: 10,
                name_taken: false,
            },
        )
        .unwrap()
    }

    #[test]
    fn record_round_trips() {
        let record = record();
        let bytes = encode_record(&record).unwrap();
        assert_eq!(bytes[0], RECORD_FORMAT_V1);
        assert_eq!(decode_record(record.id, &bytes).unwrap(), record);
    }

    #[test]
    fn damaged_records_are_errors_naming_the_key() {
        let record = record();
        let bytes = encode_record(&record).unwrap();
        for cut in 0..bytes.len() {
            let err = decode_record(record.id, &bytes[..cut]).unwrap_err();
            assert_eq!(err.code(), "corrupt-record");
            assert!(err.to_string().contains(&record.id.to_string()), "{err}");
        }
        let mut wrong_format = bytes.clone();
        wrong_format[0] = 9;
        assert!(decode_record(record.id, &wrong_format).is_err());
        let other = KeyId::from_bytes([6; 16]);
        assert!(
            decode_record(other, &bytes).is_err(),
            "record under another id"
        );
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xff;
            // Any outcome but a panic is acceptable: some flips still decode (a name byte).
            let _ = decode_record(record.id, &flipped);
        }
    }

    #[test]
    fn due_keys_sort_by_time() {
        let id = KeyId::from_bytes([1; 16]);
        let times = [
            Timestamp::new(-10, -5).unwrap(),
            Timestamp::new(-10, 0).unwrap(),
            Timestamp::new(-1, 999_999_999).unwrap(),
            Timestamp::new(0, 0).unwrap(),
            Timestamp::new(0, 1).unwrap(),
            Timestamp::new(1_700_000_000, 0).unwrap(),
        ];
        let mut sorted = times;
        sorted.sort();
        assert_eq!(sorted, times, "fixture is in time order");
        let keys: Vec<_> = times.iter().map(|t| due_key(*t, id)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        assert_eq!(due_key_id(&keys[0]), Some(id));
    }
}
