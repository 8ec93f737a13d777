//! Secret containers: wiped on drop, never cloned, never printed.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::TryRng as _;
use serde::{Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::core::Error;

/// Length of every key keylife holds (root key, material versions), in bytes.
pub const KEY_LEN: usize = 32;

/// 32 secret bytes: wiped on drop; no `Clone`, no `Serialize`, and a `Debug` that prints
/// nothing of them.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct KeyBytes([u8; KEY_LEN]);

impl KeyBytes {
    /// 32 fresh bytes from the operating system's random source.
    pub(crate) fn random() -> Result<KeyBytes, Error> {
        let mut key = KeyBytes([0; KEY_LEN]);
        fill_from_os(&mut key.0)?;
        Ok(key)
    }

    /// Takes 32 bytes; the caller's array is wiped.
    pub(crate) fn take(bytes: &mut [u8; KEY_LEN]) -> KeyBytes {
        let key = KeyBytes(*bytes);
        bytes.zeroize();
        key
    }

    /// The bytes, for building a cipher or sealing.
    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes(<redacted>)")
    }
}

/// Fills `buffer` from the operating system's random source (`getrandom`), the one keylife
/// makes keys and nonces from.
pub fn fill_from_os(buffer: &mut [u8]) -> Result<(), Error> {
    rand::rngs::SysRng
        .try_fill_bytes(buffer)
        .map_err(|error| Error::RandomSource {
            detail: error.to_string(),
        })
}

/// The 32-byte root key of a store: every material version is sealed under it at rest.
///
/// Wiped on drop; no `Clone`, no `Serialize`, and `Debug` prints nothing of it. Keep it out of
/// the store's directory: whoever has both has every key.
pub struct RootKey(KeyBytes);

impl RootKey {
    /// Takes the root key from `bytes` and wipes the caller's array.
    #[must_use]
    pub fn from_bytes(bytes: &mut [u8; KEY_LEN]) -> RootKey {
        RootKey(KeyBytes::take(bytes))
    }

    /// Takes the root key from a slice that must be exactly 32 bytes long (the slice is not
    /// wiped: it is borrowed).
    pub fn from_slice(bytes: &[u8]) -> Result<RootKey, Error> {
        let mut array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| Error::BadRequest {
            field: "root-key",
            reason: format!("must be {KEY_LEN} bytes, got {}", bytes.len()),
        })?;
        Ok(RootKey::from_bytes(&mut array))
    }

    /// A new random root key from the operating system's random source.
    pub fn generate() -> Result<RootKey, Error> {
        KeyBytes::random().map(RootKey)
    }

    pub(crate) fn key(&self) -> &KeyBytes {
        &self.0
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

/// Bytes that are wiped when dropped: the plaintexts and data keys keylife returns.
///
/// `Debug` prints only the length. `Serialize` writes base64, for the API's response bodies
/// (the one place a plaintext must leave); nothing else prints the bytes.
#[derive(Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl PartialEq for SecretBytes {
    /// Compares in time that depends on the lengths only, not on where the bytes differ.
    fn eq(&self, other: &SecretBytes) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for SecretBytes {}

impl SecretBytes {
    /// Wraps `bytes`; they are wiped when the container drops.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// The bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The number of bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }

    /// The bytes in their own wiping container.
    #[must_use]
    pub fn into_zeroizing(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let encoded = Zeroizing::new(BASE64.encode(self.0.as_slice()));
        serializer.serialize_str(&encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_secret() {
        let mut bytes = [0x41; KEY_LEN];
        let root = RootKey::from_bytes(&mut bytes);
        assert_eq!(bytes, [0; KEY_LEN], "caller's copy is wiped");
        let printed = format!("{root:?}");
        assert!(
            !printed.contains("65") && !printed.contains('A'),
            "{printed}"
        );
        let secret = SecretBytes::new(b"hunter2".to_vec());
        let printed = format!("{secret:?}");
        assert!(
            !printed.contains("hunter2") && printed.contains("7 bytes"),
            "{printed}"
        );
    }

    #[test]
    fn root_key_from_slice_checks_length() {
        let err = RootKey::from_slice(&[0; 31]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadRequest {
                    field: "root-key",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(RootKey::from_slice(&[0; 32]).is_ok());
    }
}
