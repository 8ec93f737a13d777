//! Cryptography: secret containers, the AEAD seam, the ciphertext format and sealing at rest.
//!
//! Only `aead.rs` imports an AEAD implementation. No public function takes a nonce: nonces of
//! messages come from a CSPRNG (`rand::rng()`, seeded from the OS), material, data keys and
//! sealing nonces from the operating system (`rand::rngs::SysRng`).

pub(crate) mod aead;
pub mod envelope;
mod seal;
mod secret;

pub use aead::BACKEND;
pub use envelope::{FORMAT_V1, HEADER_LEN, Header, OVERHEAD, ParseError};
pub use seal::{MaterialKey, SEALED_MATERIAL_LEN};
pub use secret::{KEY_LEN, RootKey, SecretBytes, fill_from_os};

pub(crate) use aead::Cipher;
pub(crate) use seal::RootSealer;

/// A fresh message nonce from the thread's CSPRNG.
pub(crate) fn message_nonce() -> [u8; aead::NONCE_LEN] {
    use rand::Rng as _;
    let mut nonce = [0; aead::NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    nonce
}
