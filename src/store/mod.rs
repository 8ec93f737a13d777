//! Storage: the [`Backend`] trait, its two implementations, and [`Store`], the typed layer
//! that encodes records and keeps the indexes.
//!
//! Every change of a key is one [`Backend::commit`]: the record, its new material, the name
//! index, the due-time index, the encryption reservation and the key counter together, made
//! durable before `Ok`. The store never sees a secret in the clear: material arrives sealed.

mod backend;
pub mod backup;
pub mod codec;
mod engine;
mod group;
mod lock;
mod memory;
mod redb;
mod rotate;
mod sled;
mod sync;
mod trust;

pub use self::backend::{Backend, CheckedEntries, Entries, Table, Write};
pub use self::engine::Engine;
pub use self::lock::{DirLock, LOCK_FILE, LOCK_WAIT};
pub use self::memory::MemoryBackend;
pub use self::redb::{REDB_FILE, RedbBackend};
pub use self::rotate::{RootKeyRotation, rotate_root_key, rotate_root_key_of};
pub use self::sled::{MARKER, SledBackend};
pub use self::sync::Syncs;
pub(crate) use self::sync::sync_dir;
pub use self::trust::{
    AuthenticatedBackend, META_STATE, META_STORE_ID, Opened, Snapshot, WITNESS_FILE,
};

use std::sync::Arc;

use jiff::Timestamp;

use self::backend::decode_counter;
use self::codec::{
    SealId, decode_delivery, decode_record, decode_record_sealed, due_key, due_key_id, due_prefix,
    encode_delivery, encode_record_sealed, split_zone_key, version_key, zone_key,
};
pub use crate::core::replication::delivery::{Delivery, DeliveryFailure};
use crate::core::{Error, KeyId, KeyRecord, Role, next_due};

/// Format of a whole store, in [`Table::Meta`] under `format`: the first, whose values carry
/// no tag. Opened through [`AuthenticatedBackend`], it is migrated to [`STORE_FORMAT_V2`].
pub const STORE_FORMAT_V1: u8 = 1;
/// Format of a store whose every value is authenticated ([`AuthenticatedBackend`]): written
/// by this version.
pub const STORE_FORMAT_V2: u8 = 2;
const META_ENGINE: &[u8] = b"engine";
const META_FORMAT: &[u8] = b"format";
const META_ROOT_CHECK: &[u8] = b"root-check";
const META_ORIGIN_KEYS: &[u8] = b"origin-keys";
const META_ZONE: &[u8] = b"zone";
const META_AUDIT_HEAD: &[u8] = b"audit-head";
/// The byte after an audit head that a root-key rotation marked.
const AUDIT_HEAD_ROTATED: u8 = 1;

/// What a store says about itself: written once, when it is initialized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHeader {
    /// The store format ([`STORE_FORMAT_V1`]).
    pub format: u8,
    /// The root key's check value.
    pub root_check: Vec<u8>,
    /// The zone the store serves.
    pub zone: String,
}

/// Due keys found by [`Store::due`].
#[derive(Debug, Default)]
pub struct Due {
    /// The due keys, earliest first.
    pub ids: Vec<KeyId>,
    /// Entries of the index that do not hold a key id (a damaged store): skipped.
    pub unreadable: Vec<Error>,
}

/// Replicas waiting for a delivery, found by [`Store::outbox`].
#[derive(Debug, Default)]
pub struct Outbox {
    /// (key, zone) pairs, in key order.
    pub entries: Vec<(KeyId, String)>,
    /// Entries that do not name a key and a zone (a damaged store): skipped.
    pub unreadable: Vec<Error>,
}

/// Sealed material of one new version, to be written with its record.
#[derive(Debug)]
pub struct NewMaterial {
    /// The version.
    pub version: u32,
    /// The material sealed under the root key.
    pub sealed: Vec<u8>,
    /// Encryptions reserved for it at once (see [`Store::reserve`]).
    pub reserved: u64,
    /// The random id bound into its sealing, kept in the key's record
    /// ([`Store::seal_id`]).
    pub seal_id: SealId,
}

/// The typed view of a [`Backend`].
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }

    /// The store's header, if the store was initialized.
    pub fn header(&self) -> Result<Option<StoreHeader>, Error> {
        let format = self.backend.get(Table::Meta, META_FORMAT)?;
        let check = self.backend.get(Table::Meta, META_ROOT_CHECK)?;
        let zone = self.backend.get(Table::Meta, META_ZONE)?;
        match (format, check, zone) {
            (None, None, None) => Ok(None),
            (Some(format), Some(root_check), Some(zone)) if format.len() == 1 => {
                let zone = String::from_utf8(zone).map_err(|_| Error::Corrupt {
                    record: "store header".to_owned(),
                    detail: "the zone name is not UTF-8".to_owned(),
                })?;
                Ok(Some(StoreHeader {
                    format: format[0],
                    root_check,
                    zone,
                }))
            }
            _ => Err(Error::Corrupt {
                record: "store header".to_owned(),
                detail: "the format byte, the root-key check value or the zone is missing or \
                         malformed"
                    .to_owned(),
            }),
        }
    }

    /// Initializes an empty store for `zone` with its format ([`STORE_FORMAT_V2`]), root-key
    /// check value and the backend's engine name. Refuses a store that holds keys but no
    /// header.
    pub fn initialize(&self, check_value: Vec<u8>, zone: &str) -> Result<(), Error> {
        if !self.backend.scan(Table::Keys, &[], None, 1)?.is_empty() {
            return Err(Error::Corrupt {
                record: "store header".to_owned(),
                detail: "the store holds keys but no header".to_owned(),
            });
        }
        self.backend.commit(&[
            Write::Put {
                table: Table::Meta,
                key: META_FORMAT.to_vec(),
                value: vec![STORE_FORMAT_V2],
            },
            Write::Put {
                table: Table::Meta,
                key: META_ENGINE.to_vec(),
                value: self.backend.engine().as_bytes().to_vec(),
            },
            Write::Put {
                table: Table::Meta,
                key: META_ROOT_CHECK.to_vec(),
                value: check_value,
            },
            Write::Put {
                table: Table::Meta,
                key: META_ZONE.to_vec(),
                value: zone.as_bytes().to_vec(),
            },
        ])
    }

    /// The engine recorded when the store was created (`None` for a store created before
    /// engines were recorded: sled).
    pub fn engine(&self) -> Result<Option<String>, Error> {
        self.backend
            .get(Table::Meta, META_ENGINE)?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| Error::Corrupt {
                    record: "store header".to_owned(),
                    detail: "the engine name is not UTF-8".to_owned(),
                })
            })
            .transpose()
    }

    /// The record of key `id`, if it exists.
    pub fn load(&self, id: KeyId) -> Result<Option<KeyRecord>, Error> {
        self.backend
            .get(Table::Keys, id.as_bytes())?
            .map(|bytes| decode_record(id, &bytes))
            .transpose()
    }

    /// The sealed material of version `version` of key `id`.
    pub fn load_material(&self, id: KeyId, version: u32) -> Result<Vec<u8>, Error> {
        self.backend
            .get(Table::Materials, &version_key(id, version))?
            .ok_or_else(|| Error::Corrupt {
                record: format!("material {id}/v{version}"),
                detail: "missing".to_owned(),
            })
    }

    /// The seal id of version `version` of key `id`, from its record (all zeros for a version
    /// sealed before seal ids existed).
    pub fn seal_id(&self, id: KeyId, version: u32) -> Result<SealId, Error> {
        let bytes = self
            .backend
            .get(Table::Keys, id.as_bytes())?
            .ok_or(Error::KeyNotFound { id })?;
        let (_, seal_ids) = decode_record_sealed(id, &bytes)?;
        let index = usize::try_from(version).unwrap_or(usize::MAX);
        index
            .checked_sub(1)
            .and_then(|index| seal_ids.get(index).copied())
            .ok_or_else(|| Error::Corrupt {
                record: format!("material {id}/v{version}"),
                detail: "its key's record has no such version".to_owned(),
            })
    }

    /// Encryptions reserved so far under version `version` of key `id` (0 if none).
    pub fn reserved(&self, id: KeyId, version: u32) -> Result<u64, Error> {
        match self.backend.get(Table::Usage, &version_key(id, version))? {
            None => Ok(0),
            Some(bytes) => {
                let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| Error::Corrupt {
                    record: format!("encryption count {id}/v{version}"),
                    detail: format!("expected 8 bytes, found {}", bytes.len()),
                })?;
                Ok(u64::from_be_bytes(array))
            }
        }
    }

    /// The id of the key named `name`, if any.
    pub fn id_by_name(&self, name: &str) -> Result<Option<KeyId>, Error> {
        self.backend
            .get(Table::Names, name.as_bytes())?
            .map(|bytes| {
                <[u8; 16]>::try_from(bytes.as_slice())
                    .map(KeyId::from_bytes)
                    .map_err(|_| Error::Corrupt {
                        record: format!("name index entry {name:?}"),
                        detail: format!("expected a 16-byte id, found {} bytes", bytes.len()),
                    })
            })
            .transpose()
    }

    /// How many keys this zone owns (replicas not counted).
    pub fn origin_keys(&self) -> Result<usize, Error> {
        match self.backend.get(Table::Meta, META_ORIGIN_KEYS)? {
            None => Ok(0),
            Some(bytes) => {
                let count = decode_counter(Table::Meta, META_ORIGIN_KEYS, &bytes)?;
                Ok(usize::try_from(count).unwrap_or(0))
            }
        }
    }

    /// Up to `limit` records in id order, starting after `after` (from the first when `None`).
    pub fn list(&self, after: Option<KeyId>, limit: usize) -> Result<Vec<KeyRecord>, Error> {
        let start = match after {
            None => Vec::new(),
            Some(id) => {
                let mut start = id.as_bytes().to_vec();
                start.push(0);
                start
            }
        };
        self.backend
            .scan(Table::Keys, &start, None, limit)?
            .into_iter()
            .map(|(key, value)| {
                let id = codec::keys_entry_id(&key)?;
                decode_record(id, &value)
            })
            .collect()
    }

    /// Up to `limit` keys whose due time is at or before `now`, earliest first. Reads only the
    /// due part of the index: the cost grows with the number of due keys.
    pub fn due(&self, now: Timestamp, limit: usize) -> Result<Due, Error> {
        // Every key with a due time <= now sorts before the prefix of `now` + 1 ns.
        let end = match now.checked_add(jiff::SignedDuration::from_nanos(1)) {
            Ok(after) => Some(due_prefix(after).to_vec()),
            Err(_) => None,
        };
        let mut due = Due::default();
        for (key, value) in self
            .backend
            .scan_each(Table::Due, &[], end.as_deref(), limit)?
        {
            match (due_key_id(&key), value) {
                (_, Err(error)) => due.unreadable.push(error),
                (Some(id), Ok(_)) => due.ids.push(id),
                (None, Ok(_)) => due.unreadable.push(Error::Corrupt {
                    record: "due index entry".to_owned(),
                    detail: format!("a key of {} bytes", key.len()),
                }),
            }
        }
        Ok(due)
    }

    /// Writes `record` (new when `old` is `None`, else replacing `old`, which must be the
    /// stored record) with its new material versions and every index, in one durable commit.
    /// For an origin key with replicas, the same commit marks the change as waiting to be
    /// delivered to each replica, and starts the delivery state of a replica just added.
    pub fn put(
        &self,
        old: Option<&KeyRecord>,
        record: &KeyRecord,
        materials: &[NewMaterial],
    ) -> Result<(), Error> {
        let batch = self.put_writes(old, record, materials)?;
        self.backend.commit(&batch)
    }

    /// Writes new keys (none of them stored yet), each with its material versions and every
    /// index, all in one durable commit: either every key is stored or none is.
    pub fn put_new(&self, keys: &[(&KeyRecord, &[NewMaterial])]) -> Result<(), Error> {
        let mut batch = Vec::new();
        for (record, materials) in keys {
            batch.extend(self.put_writes(None, record, materials)?);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.backend.commit(&batch)
    }

    /// The writes of [`Store::put`].
    fn put_writes(
        &self,
        old: Option<&KeyRecord>,
        record: &KeyRecord,
        materials: &[NewMaterial],
    ) -> Result<Vec<Write>, Error> {
        let id = record.id();
        let mut seal_ids = match old {
            // The stored record holds the seal ids of the versions made before.
            Some(_) => match self.backend.get(Table::Keys, id.as_bytes())? {
                Some(bytes) => decode_record_sealed(id, &bytes)?.1,
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        seal_ids.resize(record.materials().len(), [0; 16]);
        for material in materials {
            let slot = usize::try_from(material.version)
                .ok()
                .and_then(|version| version.checked_sub(1))
                .and_then(|index| seal_ids.get_mut(index))
                .ok_or_else(|| Error::Storage {
                    detail: format!(
                        "material version {} of key {id} is not in its record",
                        material.version
                    ),
                })?;
            *slot = material.seal_id;
        }
        let mut batch = Vec::with_capacity(6);
        batch.push(Write::Put {
            table: Table::Keys,
            key: id.as_bytes().to_vec(),
            value: encode_record_sealed(record, &seal_ids)?,
        });
        let old_due = old.and_then(next_due);
        let new_due = next_due(record);
        if old_due != new_due {
            if let Some(at) = old_due {
                batch.push(Write::Delete {
                    table: Table::Due,
                    key: due_key(at, id).to_vec(),
                });
            }
            if let Some(at) = new_due {
                batch.push(Write::Put {
                    table: Table::Due,
                    key: due_key(at, id).to_vec(),
                    value: Vec::new(),
                });
            }
        }
        if old.is_none() {
            // Names are set at creation and never change.
            batch.push(Write::Put {
                table: Table::Names,
                key: record.name().as_bytes().to_vec(),
                value: id.as_bytes().to_vec(),
            });
        }
        if old.is_none() && record.role() == Role::Origin {
            batch.push(Write::AddCounter {
                table: Table::Meta,
                key: META_ORIGIN_KEYS.to_vec(),
                delta: 1,
            });
        }
        for material in materials {
            batch.push(Write::Put {
                table: Table::Materials,
                key: version_key(id, material.version).to_vec(),
                value: material.sealed.clone(),
            });
            batch.push(reservation(id, material.version, material.reserved));
        }
        if record.role() == Role::Origin {
            let known = old.map(KeyRecord::replicas).unwrap_or_default();
            for zone in record.replicas().iter().map(|r| &r.zone) {
                if !known.iter().any(|r| &r.zone == zone) {
                    batch.push(Write::Put {
                        table: Table::Replicas,
                        key: zone_key(id, zone),
                        value: encode_delivery(&Delivery::default())?,
                    });
                }
                batch.push(outbox(id, zone));
            }
        }
        Ok(batch)
    }

    /// Destroys key `record` (the stored record): the record, every material version, every
    /// index entry and reservation, in one durable commit. With `gone`, the same commit
    /// remembers the key as gone since that origin revision; an origin key's replicas are then
    /// marked as waiting for the news.
    pub fn delete(&self, record: &KeyRecord, gone: Option<u64>) -> Result<(), Error> {
        let id = record.id();
        let mut batch = vec![
            Write::Delete {
                table: Table::Keys,
                key: id.as_bytes().to_vec(),
            },
            Write::Delete {
                table: Table::Names,
                key: record.name().as_bytes().to_vec(),
            },
        ];
        if let Some(at) = next_due(record) {
            batch.push(Write::Delete {
                table: Table::Due,
                key: due_key(at, id).to_vec(),
            });
        }
        for material in record.materials() {
            for table in [Table::Materials, Table::Usage] {
                batch.push(Write::Delete {
                    table,
                    key: version_key(id, material.version).to_vec(),
                });
            }
        }
        if record.role() == Role::Origin {
            batch.push(Write::AddCounter {
                table: Table::Meta,
                key: META_ORIGIN_KEYS.to_vec(),
                delta: -1,
            });
        }
        if let Some(seq) = gone {
            batch.push(Write::Put {
                table: Table::Gone,
                key: id.as_bytes().to_vec(),
                value: seq.to_be_bytes().to_vec(),
            });
            if record.role() == Role::Origin {
                batch.extend(record.replicas().iter().map(|r| outbox(id, &r.zone)));
            }
        }
        self.backend.commit(&batch)
    }

    /// Remembers that key `id`, which this zone does not hold, is gone since origin revision
    /// `seq` (a replica told of a deletion before it ever received the key).
    pub fn bury(&self, id: KeyId, seq: u64) -> Result<(), Error> {
        self.backend.commit(&[Write::Put {
            table: Table::Gone,
            key: id.as_bytes().to_vec(),
            value: seq.to_be_bytes().to_vec(),
        }])
    }

    /// The revision of key `id`'s final deletion, if it was replicated and is gone.
    pub fn gone(&self, id: KeyId) -> Result<Option<u64>, Error> {
        self.backend
            .get(Table::Gone, id.as_bytes())?
            .map(|bytes| {
                <[u8; 8]>::try_from(bytes.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| Error::Corrupt {
                        record: format!("tombstone of key {id}"),
                        detail: format!("expected 8 bytes, found {}", bytes.len()),
                    })
            })
            .transpose()
    }

    /// The delivery state of each replica of key `id`, by zone name.
    pub fn deliveries(&self, id: KeyId) -> Result<Vec<(String, Delivery)>, Error> {
        let start = id.as_bytes().to_vec();
        let end = u128::from_be_bytes(*id.as_bytes())
            .checked_add(1)
            .map(|next| next.to_be_bytes().to_vec());
        self.backend
            .scan(Table::Replicas, &start, end.as_deref(), usize::MAX)?
            .into_iter()
            .map(|(key, value)| {
                let (_, zone) = split_zone_key(&key).ok_or_else(|| Error::Corrupt {
                    record: format!("delivery state of key {id}"),
                    detail: "its zone name is not UTF-8".to_owned(),
                })?;
                let delivery = decode_delivery(id, &zone, &value)?;
                Ok((zone, delivery))
            })
            .collect()
    }

    /// The delivery state of key `id`'s replica in `zone`, if it has one.
    pub fn delivery(&self, id: KeyId, zone: &str) -> Result<Option<Delivery>, Error> {
        self.backend
            .get(Table::Replicas, &zone_key(id, zone))?
            .map(|bytes| decode_delivery(id, zone, &bytes))
            .transpose()
    }

    /// Up to `limit` (key, zone) pairs waiting for a delivery, in key order.
    pub fn outbox(&self, limit: usize) -> Result<Outbox, Error> {
        let mut outbox = Outbox::default();
        for (key, value) in self.backend.scan_each(Table::Outbox, &[], None, limit)? {
            match (split_zone_key(&key), value) {
                (_, Err(error)) => outbox.unreadable.push(error),
                (Some(entry), Ok(_)) => outbox.entries.push(entry),
                (None, Ok(_)) => outbox.unreadable.push(Error::Corrupt {
                    record: "outbox entry".to_owned(),
                    detail: format!("a key of {} bytes", key.len()),
                }),
            }
        }
        Ok(outbox)
    }

    /// Records the outcome of a delivery to key `id`'s replica in `zone`, in one commit:
    /// its new state (or, with `None`, forgets the replica: the key is gone and the replica
    /// knows), and whether a delivery is still owed (the outbox entry is set, else removed).
    pub fn settle(
        &self,
        id: KeyId,
        zone: &str,
        state: Option<&Delivery>,
        owed: bool,
    ) -> Result<(), Error> {
        let key = zone_key(id, zone);
        let mut batch = Vec::with_capacity(2);
        batch.push(match state {
            Some(state) => Write::Put {
                table: Table::Replicas,
                key: key.clone(),
                value: encode_delivery(state)?,
            },
            None => Write::Delete {
                table: Table::Replicas,
                key: key.clone(),
            },
        });
        batch.push(if owed {
            outbox(id, zone)
        } else {
            Write::Delete {
                table: Table::Outbox,
                key,
            }
        });
        self.backend.commit(&batch)
    }

    /// The head of the audit chain recorded by [`Store::put_audit_head`]: its last line's
    /// number and MAC.
    pub fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, Error> {
        let Some(bytes) = self.backend.get(Table::Meta, META_AUDIT_HEAD)? else {
            return Ok(None);
        };
        let corrupt = || Error::Corrupt {
            record: "audit head".to_owned(),
            detail: format!(
                "expected 40 bytes (41 marked by a rotation), found {}",
                bytes.len()
            ),
        };
        let bytes = match bytes.as_slice() {
            [head @ .., AUDIT_HEAD_ROTATED] if bytes.len() == 41 => head,
            head => head,
        };
        let (seq, mac) = bytes.split_at_checked(8).ok_or_else(corrupt)?;
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| corrupt())?);
        Ok(Some((seq, mac.try_into().map_err(|_| corrupt())?)))
    }

    /// Whether the recorded audit head was marked by a root-key rotation
    /// ([`rotate_root_key`]): its line was chained under the root key before the rotation.
    /// The next head recorded clears the mark.
    pub fn audit_head_rotated(&self) -> Result<bool, Error> {
        Ok(self
            .backend
            .get(Table::Meta, META_AUDIT_HEAD)?
            .is_some_and(|bytes| bytes.len() == 41 && bytes[40] == AUDIT_HEAD_ROTATED))
    }

    /// Durably records the head of the audit chain: line `seq`, whose MAC is `mac`.
    pub fn put_audit_head(&self, seq: u64, mac: &[u8; 32]) -> Result<(), Error> {
        let mut value = Vec::with_capacity(40);
        value.extend_from_slice(&seq.to_be_bytes());
        value.extend_from_slice(mac);
        self.backend.commit(&[Write::Put {
            table: Table::Meta,
            key: META_AUDIT_HEAD.to_vec(),
            value,
        }])
    }

    /// Durably records that up to `reserved` encryptions may have happened under version
    /// `version` of key `id`. After a crash, counting resumes from the last reservation, so the
    /// count never goes backwards.
    pub fn reserve(&self, id: KeyId, version: u32, reserved: u64) -> Result<(), Error> {
        self.backend.commit(&[reservation(id, version, reserved)])
    }
}

fn outbox(id: KeyId, zone: &str) -> Write {
    Write::Put {
        table: Table::Outbox,
        key: zone_key(id, zone),
        value: Vec::new(),
    }
}

fn reservation(id: KeyId, version: u32, reserved: u64) -> Write {
    Write::Put {
        table: Table::Usage,
        key: version_key(id, version).to_vec(),
        value: reserved.to_be_bytes().to_vec(),
    }
}
