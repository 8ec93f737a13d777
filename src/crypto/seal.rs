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
/// Associated data of material sealed with a seal id (see [`RootSealer::seal_material`]).
const MATERIAL_AAD_V2: &[u8] = b"keylife/material/v2";
const CHECK_AAD: &[u8] = b"keylife/root-check/v1";
const CHECK_PLAINTEXT: &[u8; 32] = b"keylife root key check value v1.";

/// Length of a sealed material blob.
pub const SEALED_MATERIAL_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;

/// The material of one version of one key: 32 secret bytes, wiped on drop, never cloned,
/// printed or serialized. keylife generates it; an importer brings it
/// ([`MaterialKey::from_bytes`], [`MaterialKey::from_slice`]).
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

    /// The bytes, for wrapping in transit ([`super::link`]).
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        self.0.expose()
    }

    /// A second wiping copy, for material in transit to a replica zone (a link may have to
    /// send it again). Nothing else copies material.
    pub(crate) fn duplicate(&self) -> MaterialKey {
        let mut bytes = *self.0.expose();
        MaterialKey(KeyBytes::take(&mut bytes))
    }

    /// Material brought from outside (bring your own key): takes the 32 bytes and wipes the
    /// caller's array.
    #[must_use]
    pub fn from_bytes(bytes: &mut [u8; KEY_LEN]) -> MaterialKey {
        MaterialKey(KeyBytes::take(bytes))
    }

    /// Material brought from outside, from a slice that must be exactly 32 bytes long (the
    /// slice is borrowed, not wiped). Another length is a bad request on `material`, which
    /// says the length and nothing of the bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<MaterialKey, Error> {
        let mut array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| Error::BadRequest {
            field: "material",
            reason: format!("must be {KEY_LEN} bytes, got {}", bytes.len()),
        })?;
        Ok(MaterialKey::from_bytes(&mut array))
    }

    /// **For tests only: not secret.** Material derived from `phrase` for version `version`
    /// of key `id`, the `derive` of a seed file: HKDF-SHA256 (RFC 5869) with the phrase's
    /// UTF-8 bytes as input keying material, [`SEED_SALT`] as salt and the key id's 16 bytes
    /// followed by the version (4 bytes, big-endian) as `info`, 32 bytes. Fixed forever, so
    /// that a ciphertext fixture made under it decrypts on every machine and every version of
    /// keylife; whoever reads the phrase has the key.
    #[must_use]
    pub fn insecure_derive(phrase: &str, id: KeyId, version: u32) -> MaterialKey {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(SEED_SALT), phrase.as_bytes());
        let mut info = [0; 20];
        info[..16].copy_from_slice(id.as_bytes());
        info[16..].copy_from_slice(&version.to_be_bytes());
        let mut bytes = [0; KEY_LEN];
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: this cannot fail.
        let _ = hkdf.expand(&info, &mut bytes);
        MaterialKey::from_bytes(&mut bytes)
    }

    /// Whether `self` and `other` are the same material, compared in constant time.
    pub(crate) fn same_as(&self, other: &MaterialKey) -> bool {
        self.0
            .expose()
            .iter()
            .zip(other.0.expose())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// HKDF salt of [`MaterialKey::insecure_derive`] (seed files' `derive`): `keylife/seed/v1`.
/// Not derived from the root key, and not in [`crate::crypto::derive::LABELS`].
pub const SEED_SALT: &[u8] = b"keylife/seed/v1";

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

    /// Seals `material` as version `version` of key `id`, bound to `seal_id` (a random id
    /// kept in the key's record): the associated data is `"keylife/material/v2" | key id |
    /// version | seal id`, so a blob opens only for the record that names its seal id.
    pub(crate) fn seal_material(
        &self,
        id: KeyId,
        version: u32,
        seal_id: &[u8; 16],
        material: &MaterialKey,
    ) -> Result<Vec<u8>, Error> {
        self.seal(&material_aad(id, version, seal_id), material.0.expose())
    }

    /// Opens the sealed material of version `version` of key `id` under the seal id its
    /// record names; all zeros: a version sealed before seal ids (associated data
    /// `"keylife/material/v1" | key id | version`).
    pub(crate) fn open_material(
        &self,
        id: KeyId,
        version: u32,
        seal_id: &[u8; 16],
        blob: &[u8],
    ) -> Result<MaterialKey, Error> {
        let mut bytes = [0; KEY_LEN];
        if self.open(&material_aad(id, version, seal_id), blob, &mut bytes) {
            Ok(MaterialKey(KeyBytes::take(&mut bytes)))
        } else {
            Err(Error::Corrupt {
                record: format!("material {id}/v{version}"),
                detail: "the sealed material does not authenticate under the root key and its \
                         record's seal id"
                    .to_owned(),
            })
        }
    }
}

/// The associated data of material: with a seal id (all zeros: none, the first layout).
fn material_aad(id: KeyId, version: u32, seal_id: &[u8; 16]) -> Vec<u8> {
    let legacy = seal_id == &[0; 16];
    let mut aad = Vec::with_capacity(MATERIAL_AAD_V2.len() + 16 + 4 + 16);
    aad.extend_from_slice(if legacy {
        MATERIAL_AAD
    } else {
        MATERIAL_AAD_V2
    });
    aad.extend_from_slice(id.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    if !legacy {
        aad.extend_from_slice(seal_id);
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> RootSealer {
        RootSealer::new(&RootKey::from_bytes(&mut [byte; KEY_LEN]))
    }

    #[test]
    fn seed_derivation_is_rfc_5869_written_out() {
        use hmac::{Hmac, KeyInit, Mac};
        type HmacSha256 = Hmac<sha2::Sha256>;
        let id = KeyId::parse("019b5a2e-0000-7000-8000-00000000abcd").unwrap();
        let derived = MaterialKey::insecure_derive("fixture one", id, 2);
        // RFC 5869, section 2: PRK = HMAC(salt, IKM); T(1) = HMAC(PRK, info | 0x01), which is
        // the whole 32-byte output.
        let prk = HmacSha256::new_from_slice(b"keylife/seed/v1")
            .unwrap()
            .chain_update(b"fixture one")
            .finalize()
            .into_bytes();
        let okm = HmacSha256::new_from_slice(&prk)
            .unwrap()
            .chain_update(id.as_bytes())
            .chain_update([0, 0, 0, 2])
            .chain_update([1])
            .finalize()
            .into_bytes();
        assert_eq!(derived.0.expose().as_slice(), okm.as_slice());
        assert!(!derived.same_as(&MaterialKey::insecure_derive("fixture one", id, 1)));
        assert!(!derived.same_as(&MaterialKey::insecure_derive("fixture two", id, 2)));
        assert!(derived.same_as(&MaterialKey::insecure_derive("fixture one", id, 2)));
        let printed = format!("{derived:?}");
        assert!(printed.contains("redacted"), "{printed}");
    }

    #[test]
    fn material_from_a_slice_must_be_32_bytes() {
        let error = MaterialKey::from_slice(&[7; 31]).unwrap_err();
        assert_eq!(
            error,
            Error::BadRequest {
                field: "material",
                reason: "must be 32 bytes, got 31".to_owned()
            }
        );
        let mut bytes = [7; KEY_LEN];
        let key = MaterialKey::from_bytes(&mut bytes);
        assert_eq!(bytes, [0; KEY_LEN], "the caller's copy is wiped");
        assert!(key.same_as(&MaterialKey::from_slice(&[7; 32]).unwrap()));
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
        let seal = [9; 16];
        let blob = root.seal_material(id, 2, &seal, &material).unwrap();
        assert_eq!(blob.len(), SEALED_MATERIAL_LEN);
        let opened = root.open_material(id, 2, &seal, &blob).unwrap();
        assert_eq!(opened.0.expose(), material.0.expose());
        let moved_version = root.open_material(id, 3, &seal, &blob).unwrap_err();
        assert_eq!(moved_version.code(), "corrupt-record");
        let other_key = KeyId::from_bytes([4; 16]);
        assert!(root.open_material(other_key, 2, &seal, &blob).is_err());
        assert!(sealer(2).open_material(id, 2, &seal, &blob).is_err());
        let mut flipped = blob.clone();
        flipped[20] ^= 1;
        assert!(root.open_material(id, 2, &seal, &flipped).is_err());
        assert!(
            root.open_material(id, 2, &seal, &blob[..blob.len() - 1])
                .is_err()
        );
        // Bound to its seal id: under another (a newer record's) or none, it does not open.
        assert!(root.open_material(id, 2, &[8; 16], &blob).is_err());
        assert!(root.open_material(id, 2, &[0; 16], &blob).is_err());
        // A blob sealed before seal ids (all zeros) opens as it was sealed.
        let legacy = root.seal_material(id, 2, &[0; 16], &material).unwrap();
        let mut aad = MATERIAL_AAD.to_vec();
        aad.extend_from_slice(id.as_bytes());
        aad.extend_from_slice(&2u32.to_be_bytes());
        let mut plain = [0; KEY_LEN];
        assert!(
            root.open(&aad, &legacy, &mut plain),
            "the first layout's AAD"
        );
        assert!(root.open_material(id, 2, &[0; 16], &legacy).is_ok());
        assert!(root.open_material(id, 2, &seal, &legacy).is_err());
    }
}
