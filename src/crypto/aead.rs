//! The AEAD seam: the only file of keylife that imports an AEAD implementation.
//!
//! Everything else sees [`Cipher`]: AES-256-GCM with a 96-bit nonce and a 16-byte tag, sealing
//! and opening in place. A second backend (issue 4) plugs in here, behind a cargo feature,
//! with the same wire format.

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};

use super::secret::KeyBytes;

/// Nonce length in bytes (96 bits).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length in bytes.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key schedule, built once per key and reused for every message. Its round
/// keys are wiped on drop (aes-gcm's `zeroize` feature).
pub(crate) struct Cipher(Aes256Gcm);

/// The tag did not verify: wrong key, wrong associated data, or damaged bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenFailed;

/// The message or associated data is beyond AES-GCM's limits (64 GiB of message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealFailed;

impl Cipher {
    /// Builds the key schedule of `key`.
    pub(crate) fn new(key: &KeyBytes) -> Cipher {
        // Borrowed as an array reference: no copy of the key is left on the stack.
        let key: &Key<Aes256Gcm> = key.expose().into();
        Cipher(Aes256Gcm::new(key))
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
        let nonce = Nonce::from(*nonce);
        self.0
            .encrypt_inout_detached(&nonce, aad, buffer.into())
            .map(Into::into)
            .map_err(|_| SealFailed)
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
        let nonce = Nonce::from(*nonce);
        let tag = Tag::from(*tag);
        self.0
            .decrypt_inout_detached(&nonce, aad, buffer.into(), &tag)
            .map_err(|_| OpenFailed)
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(AES-256-GCM, key redacted)")
    }
}
