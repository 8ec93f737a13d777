//! Root-key rotation: a stopped store moved from one root key to another in one engine commit.
//!
//! Every material version is opened under the old root key and sealed again under the new one
//! (same key id, version and seal id in the associated data, a fresh nonce), and every entry is
//! tagged again under the keys derived from the new root key, with the new root-key check value
//! and the state record, by [`AuthenticatedBackend`]'s `rekey` (which says why a crash at any
//! instant leaves a store that opens with exactly one of the two keys). docs/design.md,
//! "Root-key rotation", records the choices.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::backend::{Backend, Table};
use super::codec::{SealId, decode_record_sealed};
use super::{AuthenticatedBackend, Engine, META_FORMAT, META_ZONE, Opened, STORE_FORMAT_V2};
use crate::core::{Error, KeyId};
use crate::crypto::{RootKey, RootSealer};

/// What [`rotate_root_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RootKeyRotation {
    /// The zone the store serves.
    pub zone: String,
    /// The store's engine (`sled`, `redb`, `memory`, or a backend's own name).
    pub engine: &'static str,
    /// Entries authenticated again under the new root key (every entry of the store but its
    /// state record, which is written anew).
    pub entries: usize,
    /// Material versions sealed again under the new root key.
    pub materials: usize,
    /// The sequence of the store's commit that made the rotation (the store's state from then
    /// on opens only with the new root key).
    pub commit_seq: u64,
}

/// Moves the store in directory `path` (stopped: nobody else may have it open) from the root
/// key `old` to `new`, in one durable commit, and reports what it did. Both keys are wiped when
/// this returns.
///
/// The store is first opened under `old` with every check of an open (each entry's tag, the
/// state digest, the witness): a store sealed under another key is [`Error::WrongRootKey`] and
/// is left untouched, one in use is [`Error::StoreInUse`], a damaged one [`Error::Corrupt`].
/// A directory holding no store, or `new` equal to `old`, is [`Error::InvalidArgument`].
///
/// Killed at any instant, the store opens afterwards with exactly one of the two keys, whole
/// (the other is refused with `wrong-root-key`); once this returns `Ok`, only `new` opens it.
/// After [`Error::NotDurable`], open it with either key to see which one holds it.
///
/// ```
/// use keylife::{CreateKey, Kms, KmsOptions, RootKey};
///
/// # fn main() -> Result<(), keylife::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let (old, new) = ([1; 32], [2; 32]);
/// let kms = Kms::open(dir.path(), RootKey::from_bytes(&mut old.clone()), KmsOptions::new("z"))?;
/// let key = kms.create_key(&CreateKey::new("payments"))?;
/// let sealed = kms.encrypt(key.id, b"card 4242", None)?;
/// drop(kms);
///
/// let done = keylife::rotate_root_key(
///     dir.path(),
///     RootKey::from_bytes(&mut old.clone()),
///     RootKey::from_bytes(&mut new.clone()),
/// )?;
/// assert_eq!(done.materials, 1);
///
/// let refused = Kms::open(dir.path(), RootKey::from_bytes(&mut old.clone()), KmsOptions::new("z"));
/// assert_eq!(refused.unwrap_err().code(), "wrong-root-key");
/// let kms = Kms::open(dir.path(), RootKey::from_bytes(&mut new.clone()), KmsOptions::new("z"))?;
/// assert_eq!(kms.decrypt(key.id, &sealed.ciphertext, None)?.plaintext.as_bytes(), b"card 4242");
/// # Ok(())
/// # }
/// ```
pub fn rotate_root_key(
    path: impl AsRef<Path>,
    old: RootKey,
    new: RootKey,
) -> Result<RootKeyRotation, Error> {
    let path = path.as_ref();
    if Engine::detect(path).is_none() {
        return Err(Error::InvalidArgument {
            field: "path",
            reason: format!("{} holds no keylife store", path.display()),
        });
    }
    rotate_root_key_of(Engine::open(path, None)?, old, new)
}

/// [`rotate_root_key`] on the store in `engine` (a backend of the caller's, or an engine opened
/// by hand), which nothing else may be using meanwhile.
pub fn rotate_root_key_of(
    engine: Arc<dyn Backend>,
    old: RootKey,
    new: RootKey,
) -> Result<RootKeyRotation, Error> {
    let (backend, opened) = AuthenticatedBackend::open(engine, &old)?;
    if opened == Opened::New {
        return Err(Error::InvalidArgument {
            field: "path",
            reason: "holds no keylife store".to_owned(),
        });
    }
    let format = backend.get(Table::Meta, META_FORMAT)?;
    if format.as_deref() != Some(&[STORE_FORMAT_V2][..]) {
        return Err(Error::Corrupt {
            record: "store header".to_owned(),
            detail: "its format is missing or unknown".to_owned(),
        });
    }
    let zone = backend
        .get(Table::Meta, META_ZONE)?
        .and_then(|zone| String::from_utf8(zone).ok())
        .ok_or_else(|| Error::Corrupt {
            record: "store header".to_owned(),
            detail: "its zone is missing or not UTF-8".to_owned(),
        })?;
    let old_sealer = RootSealer::new(&old);
    let new_sealer = RootSealer::new(&new);
    drop(old);
    refuse_same_key(&backend, &new_sealer)?;
    let seal_ids = seal_ids(&backend)?;
    let engine = backend.engine();
    let mut materials = 0;
    let rekeyed = backend.rekey(&new, |table, key, value| {
        if table == Table::Meta && key == super::META_AUDIT_HEAD && value.len() == 40 {
            // Its line was chained under the old root key: marked for the audit log.
            let mut marked = value.to_vec();
            marked.push(super::AUDIT_HEAD_ROTATED);
            return Ok(Some(marked));
        }
        if table != Table::Materials {
            return Ok(None);
        }
        let (id, version) = material_key(key)?;
        let seal_id = seal_ids
            .get(&id)
            .and_then(|ids| {
                usize::try_from(version)
                    .ok()?
                    .checked_sub(1)
                    .map(|i| ids.get(i))
            })
            .flatten()
            .ok_or_else(|| Error::Corrupt {
                record: format!("material {id}/v{version}"),
                detail: "its key's record has no such version".to_owned(),
            })?;
        let material = old_sealer.open_material(id, version, seal_id, value)?;
        let sealed = new_sealer.seal_material(id, version, seal_id, &material)?;
        materials += 1;
        Ok(Some(sealed))
    })?;
    Ok(RootKeyRotation {
        zone,
        engine,
        entries: rekeyed.entries,
        materials,
        commit_seq: rekeyed.seq,
    })
    // `new` and both sealers are wiped here.
}

/// Refuses a new root key that is the store's current one: its check value opens under it.
fn refuse_same_key(backend: &AuthenticatedBackend, new: &RootSealer) -> Result<(), Error> {
    let check = backend
        .get(Table::Meta, super::META_ROOT_CHECK)?
        .ok_or_else(|| Error::Corrupt {
            record: "store header".to_owned(),
            detail: "its root-key check value is missing".to_owned(),
        })?;
    if new.verify_check_value(&check) {
        return Err(Error::InvalidArgument {
            field: "new-root-key",
            reason: "is the store's current root key".to_owned(),
        });
    }
    Ok(())
}

/// The seal id of each material version of each key, from the records.
fn seal_ids(backend: &AuthenticatedBackend) -> Result<HashMap<KeyId, Vec<SealId>>, Error> {
    let mut ids = HashMap::new();
    let mut start = Vec::new();
    loop {
        let page = backend.scan(Table::Keys, &start, None, 4096)?;
        let Some((last, _)) = page.last() else { break };
        start.clone_from(last);
        start.push(0);
        for (key, value) in page {
            let id = super::codec::keys_entry_id(&key)?;
            ids.insert(id, decode_record_sealed(id, &value)?.1);
        }
    }
    Ok(ids)
}

/// The key id and version of a material entry's key.
fn material_key(key: &[u8]) -> Result<(KeyId, u32), Error> {
    let corrupt = || Error::Corrupt {
        record: "material table entry".to_owned(),
        detail: format!("a key of {} bytes is not an id and a version", key.len()),
    };
    let (id, version) = key.split_at_checked(16).ok_or_else(corrupt)?;
    let id = KeyId::from_bytes(id.try_into().map_err(|_| corrupt())?);
    let version = u32::from_be_bytes(version.try_into().map_err(|_| corrupt())?);
    Ok((id, version))
}
