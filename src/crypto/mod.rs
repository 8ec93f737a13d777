//! Cryptography: secret containers, the AEAD seam, the ciphertext format and sealing at rest.
//!
//! Only `aead.rs` imports an AEAD implementation. No public function takes a nonce: every
//! nonce (of messages and of sealing), material and data key comes from the operating system
//! (`rand::rngs::SysRng`, `getrandom`), which stays safe across `fork` and VM snapshot restore
//! where a user-space generator would repeat itself.

pub(crate) mod aead;
pub mod derive;
pub mod envelope;
pub mod link;
mod seal;
mod secret;

pub use aead::BACKEND;
pub use derive::{MacKey, MacStream, Purpose};
pub use envelope::{FORMAT_V1, HEADER_LEN, Header, OVERHEAD, ParseError};
pub use link::LinkKey;
pub use seal::{MaterialKey, SEALED_MATERIAL_LEN, SEED_SALT};
pub use secret::{KEY_LEN, RootKey, SecretBytes, fill_from_os};

pub(crate) use aead::Cipher;
pub(crate) use seal::RootSealer;

use crate::core::Error;

/// A fresh message nonce from the operating system: one `getrandom` call per message. A
/// user-space generator (`rand::rng()`) is not reseeded when the process forks or its VM is
/// restored from a snapshot, and would then repeat nonces under the same material.
pub(crate) fn message_nonce() -> Result<[u8; aead::NONCE_LEN], Error> {
    let mut nonce = [0; aead::NONCE_LEN];
    fill_from_os(&mut nonce)?;
    Ok(nonce)
}
