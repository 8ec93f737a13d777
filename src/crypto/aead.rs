//! The AEAD seam: the only file of keylife that imports an AEAD implementation.
//!
//! Everything else sees [`Cipher`]: AES-256-GCM with a 96-bit nonce and a 16-byte tag, sealing
//! and opening in place. Two implementations exist, chosen at build time:
//! - default: RustCrypto's `aes-gcm` (pure Rust; its key schedule is wiped on drop);
//! - feature `ring`: ring's AES-256-GCM (assembly, several times faster on x86-64 and
//!   aarch64; ring does not wipe its key schedule on drop).
//!
//! Both produce the same bytes for the same key, nonce, associated data and message, so the
//! ciphertext format does not depend on the choice (tested below when both are built).

use std::fmt;

use super::secret::KeyBytes;

/// Nonce length in bytes (96 bits).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length in bytes.
pub const TAG_LEN: usize = 16;

/// The tag did not verify: wrong key, wrong associated data, or damaged bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenFailed;

/// The message or associated data is beyond AES-GCM's limits (64 GiB of message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealFailed;

/// RustCrypto's AES-256-GCM (built with `ring` only for the cross-backend test).
#[cfg(any(not(feature = "ring"), test))]
mod rustcrypto {
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};

    use super::{KeyBytes, NONCE_LEN, OpenFailed, SealFailed, TAG_LEN};

    /// Its round keys are wiped on drop (aes-gcm's `zeroize` feature).
    pub(crate) struct Gcm(Aes256Gcm);

    impl Gcm {
        pub(crate) fn new(key: &KeyBytes) -> Gcm {
            // Borrowed as an array reference: no copy of the key is left on the stack.
            let key: &Key<Aes256Gcm> = key.expose().into();
            Gcm(Aes256Gcm::new(key))
        }

        #[inline]
        pub(crate) fn seal_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buffer: &mut [u8],
        ) -> Result<[u8; TAG_LEN], SealFailed> {
            let nonce = Nonce::from(*nonce);
            self.0
                .encrypt_inout_detached(&nonce, aad, buffer.into())
                .map(Into::into)
                .map_err(|_| SealFailed)
        }

        #[inline]
        pub(crate) fn open_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buffer: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), OpenFailed> {
            let nonce = Nonce::from(*nonce);
            let tag = Tag::from(*tag);
            self.0
                .decrypt_inout_detached(&nonce, aad, buffer.into(), &tag)
                .map_err(|_| OpenFailed)
        }
    }
}

/// ring's AES-256-GCM.
#[cfg(feature = "ring")]
mod ring_gcm {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

    use super::{KeyBytes, NONCE_LEN, OpenFailed, SealFailed, TAG_LEN};

    /// ring keeps no copy of the key bytes, but does not wipe its key schedule on drop.
    pub(crate) struct Gcm(LessSafeKey);

    impl Gcm {
        pub(crate) fn new(key: &KeyBytes) -> Gcm {
            // A 32-byte key always fits AES-256-GCM: `new` fails only on a wrong length.
            let unbound = UnboundKey::new(&AES_256_GCM, key.expose())
                .unwrap_or_else(|_| unreachable!("AES-256-GCM takes 32-byte keys"));
            Gcm(LessSafeKey::new(unbound))
        }

        #[inline]
        pub(crate) fn seal_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buffer: &mut [u8],
        ) -> Result<[u8; TAG_LEN], SealFailed> {
            let tag = self
                .0
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*nonce),
                    Aad::from(aad),
                    buffer,
                )
                .map_err(|_| SealFailed)?;
            let mut out = [0; TAG_LEN];
            out.copy_from_slice(tag.as_ref());
            Ok(out)
        }

        #[inline]
        pub(crate) fn open_in_place(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buffer: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), OpenFailed> {
            let opened = self.0.open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                Tag::from(*tag),
                buffer,
                0..,
            );
            match opened {
                Ok(_) => Ok(()),
                Err(_) => {
                    // ring leaves the buffer unspecified on failure: hold no plaintext.
                    buffer.fill(0);
                    Err(OpenFailed)
                }
            }
        }
    }
}

#[cfg(not(feature = "ring"))]
use rustcrypto::Gcm as Backend;

#[cfg(feature = "ring")]
use ring_gcm::Gcm as Backend;

/// The name of the AEAD implementation this build uses: `aes-gcm` or `ring`.
pub const BACKEND: &str = if cfg!(feature = "ring") {
    "ring"
} else {
    "aes-gcm"
};

/// An AES-256-GCM key schedule, built once per key and reused for every message.
pub(crate) struct Cipher(Backend);

impl Cipher {
    /// Builds the key schedule of `key`.
    pub(crate) fn new(key: &KeyBytes) -> Cipher {
        Cipher(Backend::new(key))
    }

    /// Encrypts `buffer` in place under `nonce` with `aad` authenticated, and returns the tag.
    ///
    /// Fails only beyond AES-GCM's 64 GiB message limit; callers check limits of megabytes
    /// first.
    #[inline]
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SealFailed> {
        self.0.seal_in_place(nonce, aad, buffer)
    }

    /// Decrypts `buffer` in place if `tag` verifies for `nonce`, `aad` and `buffer`.
    /// On failure `buffer` holds no plaintext.
    #[inline]
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), OpenFailed> {
        self.0.open_in_place(nonce, aad, buffer, tag)
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cipher(AES-256-GCM via {BACKEND}, key redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyBytes {
        KeyBytes::take(&mut [7; 32])
    }

    /// NIST SP 800-38D / McGrew-Viega test case 16 (AES-256, 96-bit IV, with AAD).
    #[test]
    fn the_backend_in_use_matches_a_published_test_vector() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut key_bytes: [u8; 32] =
            hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
                .try_into()
                .unwrap();
        let cipher = Cipher::new(&KeyBytes::take(&mut key_bytes));
        let nonce: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let mut message = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let tag = cipher.seal_in_place(&nonce, &aad, &mut message).unwrap();
        assert_eq!(
            message,
            hex(
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
            )
        );
        assert_eq!(tag.to_vec(), hex("76fc6ece0f4e1768cddf8853bb2d551b"));
        cipher
            .open_in_place(&nonce, &aad, &mut message, &tag)
            .unwrap();
        let mut bad = tag;
        bad[0] ^= 1;
        assert_eq!(
            cipher.open_in_place(&nonce, &aad, &mut message.clone(), &bad),
            Err(OpenFailed)
        );
    }

    #[test]
    fn a_failed_open_leaves_no_plaintext() {
        let cipher = Cipher::new(&key());
        let nonce = [1; NONCE_LEN];
        let mut buffer = b"attack at dawn".to_vec();
        let tag = cipher.seal_in_place(&nonce, b"", &mut buffer).unwrap();
        let mut wrong_aad = buffer.clone();
        assert!(
            cipher
                .open_in_place(&nonce, b"x", &mut wrong_aad, &tag)
                .is_err()
        );
        assert_ne!(wrong_aad, b"attack at dawn");
    }

    /// With the `ring` feature both implementations are built: each opens what the other
    /// sealed, for every length around the block size and with and without associated data.
    #[cfg(feature = "ring")]
    #[test]
    fn ring_and_aes_gcm_open_each_others_ciphertexts() {
        let (a, b) = (rustcrypto::Gcm::new(&key()), ring_gcm::Gcm::new(&key()));
        for len in [0, 1, 15, 16, 17, 64, 1000, 4096 + 3] {
            for aad in [&b""[..], b"context"] {
                let message: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let nonce = [len as u8; NONCE_LEN];
                let mut by_a = message.clone();
                let tag_a = a.seal_in_place(&nonce, aad, &mut by_a).unwrap();
                let mut by_b = message.clone();
                let tag_b = b.seal_in_place(&nonce, aad, &mut by_b).unwrap();
                assert_eq!((&by_a, tag_a), (&by_b, tag_b), "same bytes, len {len}");
                b.open_in_place(&nonce, aad, &mut by_a, &tag_a).unwrap();
                a.open_in_place(&nonce, aad, &mut by_b, &tag_b).unwrap();
                assert_eq!(by_a, message);
                assert_eq!(by_b, message);
            }
        }
    }
}
