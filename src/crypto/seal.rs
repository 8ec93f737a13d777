//! Sealing at rest: material versions under the root key, and the root key's check value.
//!
//! A sealed blob is `format (1) | nonce (12) | ciphertext | tag (16)`. Its associated data
//! names what it is: a material blob carries the key id and version, so a blob moved to
//! another key or version does not open.

use super::aead::{Cipher, NONCE_LEN, TAG_LEN};
use super::secret::{KEY_LEN, KeyBytes, RootKey, fill_from_os};
use crate::core::{Error, KeyId};

const SEALED_FORMAT_V1: u8 = 0x01;
const MATERIAL_AAD: &[u8] = b"keylife/material/v1";
const CHECK_AAD: &[u8] = b"keylife/root-check/v1";
const CHECK_PLAINTEXT: &[u8; 32] = b"keylife root key check value v1.";

/// Length of a sealed material blob.
pub const SEALED_MATERIAL_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;

/// The material of one version of one key: 32 secret bytes, wiped on drop, never cloned,
/// printed or serialized.
#[derive(Debug)]
pub struct MaterialKey(KeyBytes);

impl MaterialKey {
    /// Fresh material from the operating system's random source.
    pub(crate) fn generate() -> Result<MaterialKey, Error> {
        KeyBytes::random().map(MaterialKey)
    }

    pub(crate) fn cipher(&self) -> Cipher {
        Cipher::new(&self.0)
    }

    /// A second wiping copy, for material in transit to a replica zone (a link may have to
    /// send it again). Nothing else copies material.
    pub(crate) fn duplicate(&self) -> MaterialKey {
        let mut bytes = *self.0.expose();
        MaterialKey(KeyBytes::take(&mut bytes))
    }
}

/// Seals and opens with the root key.
#[derive(Debug)]
pub(crate) struct RootSealer(Cipher);

impl RootSealer {
    pub(crate) fn new(root: &RootKey) -> RootSealer {
        RootSealer(Cipher::new(root.key()))
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0; NONCE_LEN];
        fill_from_os(&mut nonce)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(SEALED_FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place(&nonce, aad, &mut out[1 + NONCE_LEN..])
            .map_err(|_| Error::BadRequest {
                field: "material",
                reason: "is beyond AES-GCM's message limit".to_owned(),
            })?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens `blob` into `plaintext` (of the exact expected length); `false` when the blob is
    /// malformed or does not authenticate.
    fn open(&self, aad: &[u8], blob: &[u8], plaintext: &mut [u8]) -> bool {
        if blob.len() != 1 + NONCE_LEN + plaintext.len() + TAG_LEN || blob[0] != SEALED_FORMAT_V1 {
            return false;
        }
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&blob[1..1 + NONCE_LEN]);
        let (body, tag) = blob[1 + NONCE_LEN..].split_at(plaintext.len());
        let mut tag_bytes = [0; TAG_LEN];
        tag_bytes.copy_from_slice(tag);
        plaintext.copy_from_slice(body);
        self.0
            .open_in_place(&nonce, aad, plaintext, &tag_bytes)
            .is_ok()
    }

    /// The check value written when a store is created.
    pub(crate) fn check_value(&self) -> Result<Vec<u8>, Error> {
        self.seal(CHECK_AAD, CHECK_PLAINTEXT)
    }

    /// Whether `blob` is a check value sealed by this root key.
    pub(crate) fn verify_check_value(&self, blob: &[u8]) -> bool {
        let mut plaintext = [0; CHECK_PLAINTEXT.len()];
        self.open(CHECK_AAD, blob, &mut plaintext) && &plaintext == CHECK_PLAINTEXT
    }

    /// Seals `material` as version `version` of key `id`.
    pub(crate) fn seal_material(
        &self,
        id: KeyId,
        version: u32,
        material: &MaterialKey,
    ) -> Result<Vec<u8>, Error> {
        self.seal(&material_aad(id, version), material.0.expose())
    }

    /// Opens the sealed material of version `version` of key `id`.
    pub(crate) fn open_material(
        &self,
        id: KeyId,
        version: u32,
        blob: &[u8],
    ) -> Result<MaterialKey, Error> {
        let mut bytes = [0; KEY_LEN];
        if self.open(&material_aad(id, version), blob, &mut bytes) {
            Ok(MaterialKey(KeyBytes::take(&mut bytes)))
        } else {
            Err(Error::Corrupt {
                record: format!("material {id}/v{version}"),
                detail: "the sealed material does not authenticate under the root key".to_owned(),
            })
        }
    }
}

fn material_aad(id: KeyId, version: u32) -> [u8; MATERIAL_AAD.len() + 16 + 4] {
    let mut aad = [0; MATERIAL_AAD.len() + 16 + 4];
    aad[..MATERIAL_AAD.len()].copy_from_slice(MATERIAL_AAD);
    aad[MATERIAL_AAD.len()..MATERIAL_AAD.len() + 16].copy_from_slice(id.as_bytes());
    aad[MATERIAL_AAD.len() + 16..].copy_from_slice(&version.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> RootSealer {
        RootSealer::new(&RootKey::from_bytes(&mut [byte; KEY_LEN]))
    }

    #[test]
    fn check_value_opens_only_under_its_root_key() {
        let check = sealer(1).check_value().unwrap();
        assert!(sealer(1).verify_check_value(&check));
        assert!(!sealer(2).verify_check_value(&check));
    }

    #[test]
    fn sealed_material_is_bound_to_its_key_and_version() {
        let root = sealer(1);
        let id = KeyId::from_bytes([3; 16]);
        let material = MaterialKey::generate().unwrap();
        let blob = root.seal_material(id, 2, &material).unwrap();
        assert_eq!(blob.len(), SEALED_MATERIAL_LEN);
        let opened = root.open_material(id, 2, &blob).unwrap();
        assert_eq!(opened.0.expose(), material.0.expose());
        let moved_version = root.open_material(id, 3, &blob).unwrap_err();
        assert_eq!(moved_version.code(), "corrupt-record");
        let other_key = KeyId::from_bytes([4; 16]);
        assert!(root.open_material(other_key, 2, &blob).is_err());
        assert!(sealer(2).open_material(id, 2, &blob).is_err());
        let mut flipped = blob.clone();
        flipped[20] ^= 1;
        assert!(root.open_material(id, 2, &flipped).is_err());
        assert!(root.open_material(id, 2, &blob[..blob.len() - 1]).is_err());
    }
}
