//! The keys of a link between zones in different processes, derived from the link
//! credential's secret: one AES-256-GCM key that wraps material versions in transit, one
//! HMAC-SHA256 key that authenticates the receiving zone's answers.
//!
//! Both come from HKDF-SHA256 (RFC 5869) with the credential's secret as input keying
//! material, [`LINK_SALT`] as salt and a label of [`LINK_LABELS`] as `info`: the two processes
//! at the ends of a link hold the same secret (the sender in its peer credentials, the receiver
//! in its credentials file), so they derive the same keys, and no one without the secret can
//! unwrap the material or forge an answer. A wrapped version is
//! `nonce (12) | ciphertext (32) | tag (16)`; its associated data names the key, the version
//! and both zones, so a wrapped blob moved to another key, version or pair of
//! zones does not open.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::aead::{Cipher, NONCE_LEN, TAG_LEN};
use super::seal::MaterialKey;
use super::secret::{KEY_LEN, KeyBytes, fill_from_os};
use crate::core::{Error, KeyId};

type HmacSha256 = Hmac<Sha256>;

/// HKDF salt of the link keys (distinct from the root key's [`super::derive::SALT`]).
pub const LINK_SALT: &[u8] = b"keylife/link/hkdf-salt/v1";

/// Label of the key that wraps material versions in transit.
pub const WRAP_LABEL: &str = "keylife/v1/link/wrap";
/// Label of the key that authenticates a receiving zone's answers.
pub const ANSWER_LABEL: &str = "keylife/v1/link/answer-mac";

/// `info` of each key derived from a link credential's secret (docs/design.md, "Keys derived
/// from the root key", which lists these too). Never reused for another purpose, and distinct
/// from every root-key label ([`super::derive::LABELS`]).
pub const LINK_LABELS: [(&str, &str); 2] = [
    ("material wrapping in transit", WRAP_LABEL),
    ("answer MAC", ANSWER_LABEL),
];

/// Length of a wrapped material version.
pub const WRAPPED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

/// Length of an answer's MAC.
pub const ANSWER_MAC_LEN: usize = 32;

/// Prefix of the associated data of a wrapped material version.
const WRAP_AAD: &[u8] = b"keylife/link/material/v1";

/// The keys of one link credential. Wiped on drop; `Debug` shows nothing of them.
pub struct LinkKey {
    wrap: Cipher,
    answer: HmacSha256,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(<redacted>)")
    }
}

impl LinkKey {
    /// The keys of the link credential whose secret is `secret`.
    #[must_use]
    pub fn derive(secret: &[u8]) -> LinkKey {
        let hkdf = Hkdf::<Sha256>::new(Some(LINK_SALT), secret);
        let mut wrap = Zeroizing::new([0u8; KEY_LEN]);
        let mut answer = Zeroizing::new([0u8; KEY_LEN]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: these cannot fail.
        let _ = hkdf.expand(WRAP_LABEL.as_bytes(), wrap.as_mut());
        let _ = hkdf.expand(ANSWER_LABEL.as_bytes(), answer.as_mut());
        let answer = match HmacSha256::new_from_slice(answer.as_ref()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts a 32-byte key"),
        };
        LinkKey {
            wrap: Cipher::new(&KeyBytes::take(&mut wrap)),
            answer,
        }
    }

    /// Wraps `material`, version `version` of key `id`, for the trip from `origin` to
    /// `target`, under a fresh nonce from the operating system.
    pub fn wrap(
        &self,
        material: &MaterialKey,
        id: KeyId,
        version: u32,
        origin: &str,
        target: &str,
    ) -> Result<[u8; WRAPPED_LEN], Error> {
        let mut nonce = [0; NONCE_LEN];
        fill_from_os(&mut nonce)?;
        let mut out = [0u8; WRAPPED_LEN];
        out[..NONCE_LEN].copy_from_slice(&nonce);
        let body = &mut out[NONCE_LEN..NONCE_LEN + KEY_LEN];
        body.copy_from_slice(material.bytes());
        let aad = wrap_aad(id, version, origin, target);
        let tag = self
            .wrap
            .seal_in_place(&nonce, &aad, body)
            .map_err(|_| Error::BadRequest {
                field: "material",
                reason: "is beyond AES-GCM's message limit".to_owned(),
            })?;
        out[NONCE_LEN + KEY_LEN..].copy_from_slice(&tag);
        Ok(out)
    }

    /// Unwraps `wrapped` as version `version` of key `id` sent from `origin` to `target`;
    /// `None` when it does not authenticate (another secret, key, version or pair of zones, or
    /// altered bytes).
    #[must_use]
    pub fn unwrap(
        &self,
        wrapped: &[u8; WRAPPED_LEN],
        id: KeyId,
        version: u32,
        origin: &str,
        target: &str,
    ) -> Option<MaterialKey> {
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[..NONCE_LEN]);
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&wrapped[NONCE_LEN + KEY_LEN..]);
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&wrapped[NONCE_LEN..NONCE_LEN + KEY_LEN]);
        let aad = wrap_aad(id, version, origin, target);
        self.wrap
            .open_in_place(&nonce, &aad, bytes.as_mut(), &tag)
            .ok()?;
        Some(MaterialKey::from_bytes(&mut bytes))
    }

    /// The MAC of an answer: over the request's signature and the answer's bytes, each
    /// preceded by its length (u32, big-endian).
    #[must_use]
    pub fn answer_mac(&self, signature: &[u8], answer: &[u8]) -> [u8; ANSWER_MAC_LEN] {
        self.answer_state(signature, answer)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `mac` is the MAC of `answer` to the request signed `signature`, compared in
    /// constant time.
    #[must_use]
    pub fn verify_answer(&self, signature: &[u8], answer: &[u8], mac: &[u8]) -> bool {
        self.answer_state(signature, answer)
            .verify_slice(mac)
            .is_ok()
    }

    /// The answer key's HMAC over the length-prefixed signature and answer.
    fn answer_state(&self, signature: &[u8], answer: &[u8]) -> HmacSha256 {
        let mut mac = self.answer.clone();
        for part in [signature, answer] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            mac.update(&len.to_be_bytes());
            mac.update(part);
        }
        mac
    }
}

/// The associated data of a wrapped version: `"keylife/link/material/v1" | key id (16) |
/// version (u32 BE) | origin length (u8) | origin | target length (u8) | target`.
fn wrap_aad(id: KeyId, version: u32, origin: &str, target: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_AAD.len() + 16 + 4 + 2 + origin.len() + target.len());
    aad.extend_from_slice(WRAP_AAD);
    aad.extend_from_slice(id.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    for zone in [origin, target] {
        // Zone names are at most 255 bytes: the wire format refuses longer ones before it
        // wraps anything.
        aad.push(u8::try_from(zone.len()).unwrap_or(u8::MAX));
        aad.extend_from_slice(zone.as_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::derive::{LABELS, RETIRED_LABELS};

    fn material(byte: u8) -> MaterialKey {
        MaterialKey::from_bytes(&mut [byte; KEY_LEN])
    }

    #[test]
    fn link_labels_are_new_labels() {
        for (_, label) in LINK_LABELS {
            assert!(label.starts_with("keylife/v1/link/"));
            assert_eq!(LINK_LABELS.iter().filter(|(_, l)| *l == label).count(), 1);
            assert!(LABELS.iter().all(|(_, l)| *l != label), "{label}");
            assert!(!RETIRED_LABELS.contains(&label), "{label}");
        }
    }

    #[test]
    fn keys_are_rfc_5869_written_out() {
        // HKDF-SHA256 by hand: PRK = HMAC(salt, secret); OKM = HMAC(PRK, info | 0x01).
        let secret = b"link secret";
        let hmac = |key: &[u8], data: &[&[u8]]| {
            let mut mac = HmacSha256::new_from_slice(key).unwrap();
            data.iter().for_each(|d| mac.update(d));
            mac.finalize().into_bytes()
        };
        let prk = hmac(LINK_SALT, &[secret]);
        let answer_key = hmac(&prk, &[ANSWER_LABEL.as_bytes(), &[1]]);
        let key = LinkKey::derive(secret);
        let expected: [u8; 32] = hmac(
            &answer_key,
            &[&3u32.to_be_bytes(), b"sig", &2u32.to_be_bytes(), b"ok"],
        )
        .into();
        assert_eq!(key.answer_mac(b"sig", b"ok"), expected);
        // The wrapping key: what it wraps opens under AES-256-GCM with the hand-derived key.
        let wrap_key = hmac(&prk, &[WRAP_LABEL.as_bytes(), &[1]]);
        let id = KeyId::from_bytes([7; 16]);
        let wrapped = key.wrap(&material(9), id, 2, "a", "b").unwrap();
        let mut bytes: [u8; 32] = wrap_key.into();
        let cipher = Cipher::new(&KeyBytes::take(&mut bytes));
        let mut body = wrapped[NONCE_LEN..NONCE_LEN + KEY_LEN].to_vec();
        let nonce: [u8; NONCE_LEN] = wrapped[..NONCE_LEN].try_into().unwrap();
        let tag: [u8; TAG_LEN] = wrapped[NONCE_LEN + KEY_LEN..].try_into().unwrap();
        cipher
            .open_in_place(&nonce, &wrap_aad(id, 2, "a", "b"), &mut body, &tag)
            .unwrap();
        assert_eq!(body, [9; KEY_LEN]);
    }

    #[test]
    fn wrapped_material_opens_only_for_its_key_version_zones_and_secret() {
        let key = LinkKey::derive(b"secret");
        let id = KeyId::from_bytes([1; 16]);
        let wrapped = key
            .wrap(&material(5), id, 3, "ch-gva-2", "de-fra-1")
            .unwrap();
        // Not the material in clear.
        assert!(!wrapped.windows(KEY_LEN).any(|w| w == [5; KEY_LEN]));
        let opened = key.unwrap(&wrapped, id, 3, "ch-gva-2", "de-fra-1").unwrap();
        assert!(opened.same_as(&material(5)));
        let other = KeyId::from_bytes([2; 16]);
        assert!(
            key.unwrap(&wrapped, other, 3, "ch-gva-2", "de-fra-1")
                .is_none()
        );
        assert!(
            key.unwrap(&wrapped, id, 4, "ch-gva-2", "de-fra-1")
                .is_none()
        );
        assert!(
            key.unwrap(&wrapped, id, 3, "de-fra-1", "ch-gva-2")
                .is_none()
        );
        assert!(
            key.unwrap(&wrapped, id, 3, "ch-gva-2", "at-vie-1")
                .is_none()
        );
        assert!(
            LinkKey::derive(b"other")
                .unwrap(&wrapped, id, 3, "ch-gva-2", "de-fra-1")
                .is_none()
        );
        for position in 0..WRAPPED_LEN {
            let mut flipped = wrapped;
            flipped[position] ^= 1;
            assert!(
                key.unwrap(&flipped, id, 3, "ch-gva-2", "de-fra-1")
                    .is_none()
            );
        }
        // Two wraps of the same material differ (fresh nonces).
        assert_ne!(
            wrapped,
            key.wrap(&material(5), id, 3, "ch-gva-2", "de-fra-1")
                .unwrap()
        );
    }

    #[test]
    fn answer_macs_bind_the_signature_and_the_answer() {
        let key = LinkKey::derive(b"secret");
        let mac = key.answer_mac(b"signature", b"answer");
        assert!(key.verify_answer(b"signature", b"answer", &mac));
        assert!(!key.verify_answer(b"signaturf", b"answer", &mac));
        assert!(!key.verify_answer(b"signature", b"answes", &mac));
        assert!(!key.verify_answer(b"signatur", b"eanswer", &mac));
        assert!(!key.verify_answer(b"signature", b"answer", &mac[..31]));
        assert!(!LinkKey::derive(b"other").verify_answer(b"signature", b"answer", &mac));
        assert_eq!(format!("{key:?}"), "LinkKey(<redacted>)");
    }
}
