//! Keys derived from the root key, and the one table of their HKDF labels.
//!
//! Every key keylife derives comes from HKDF-SHA256 (RFC 5869) with the root key as input
//! keying material, [`SALT`] as salt, and one label of [`LABELS`] as `info`. A label is used
//! for one purpose only; a new purpose gets a new label here, never a reused one. The sealing
//! of material uses the root key itself as its AES-256-GCM key (as it did before any key was
//! derived), and nothing derived is ever used with AES-GCM under the root key's own name.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::secret::{KEY_LEN, RootKey};

type HmacSha256 = Hmac<Sha256>;

/// HKDF salt of every derivation from the root key.
pub const SALT: &[u8] = b"keylife/hkdf-salt/v1";

/// What a derived key is for: its position in [`LABELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The MAC of every stored value (store id, table, entry key, value).
    RecordMac,
    /// The pseudo-random function whose sum over every stored entry is the store's state
    /// digest.
    StateDigest,
    /// The MAC of the state record (commit sequence, digest).
    StateMac,
    /// The MAC of the witness file (store id, commit sequence).
    Witness,
    /// Reserved: the chain of the audit log.
    AuditChain,
    /// The MAC over a whole backup file.
    BackupMac,
}

/// `info` of each [`Purpose`], in the order of the enum. Written down in docs/design.md
/// ("Keys derived from the root key"). The zone link's wrapping key is derived from the link
/// credential's secret, not from the root key, with its own label where that is built. Seeded
/// keys' material is derived from the seed file's string, not from the root key
/// ([`crate::crypto::MaterialKey::insecure_derive`], salt [`crate::crypto::SEED_SALT`]): the
/// label once reserved for it is in [`RETIRED_LABELS`].
pub const LABELS: [(Purpose, &str); 6] = [
    (Purpose::RecordMac, "keylife/v1/store/record-mac"),
    (Purpose::StateDigest, "keylife/v1/store/state-digest"),
    (Purpose::StateMac, "keylife/v1/store/state-mac"),
    (Purpose::Witness, "keylife/v1/store/witness"),
    (Purpose::AuditChain, "keylife/v1/audit/chain"),
    (Purpose::BackupMac, "keylife/v1/backup/mac"),
];

/// Labels reserved once and never used: never to be given to another purpose.
/// `keylife/v1/seed` was reserved for seeded keys, whose material turned out not to come
/// from the root key (a seed must give the same material under every root key).
pub const RETIRED_LABELS: [&str; 1] = ["keylife/v1/seed"];

impl Purpose {
    /// The HKDF `info` of this purpose.
    #[must_use]
    pub fn label(self) -> &'static str {
        LABELS[self as usize].1
    }
}

/// An HMAC-SHA256 key derived from the root key for one [`Purpose`]. Its state is wiped on
/// drop (hmac's `zeroize` feature); `Debug` prints only the purpose.
#[derive(Clone)]
pub struct MacKey {
    purpose: Purpose,
    mac: HmacSha256,
}

/// Length of a tag made by a [`MacKey`].
pub const TAG_LEN: usize = 32;

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MacKey({:?}, <redacted>)", self.purpose)
    }
}

impl MacKey {
    /// Derives the key of `purpose` from `root`.
    #[must_use]
    pub fn derive(root: &RootKey, purpose: Purpose) -> MacKey {
        let hkdf = Hkdf::<Sha256>::new(Some(SALT), root.key().expose());
        let mut okm = Zeroizing::new([0u8; KEY_LEN]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: this cannot fail.
        let _ = hkdf.expand(purpose.label().as_bytes(), okm.as_mut());
        let mac = match HmacSha256::new_from_slice(okm.as_ref()) {
            Ok(mac) => mac,
            // HMAC takes keys of any length.
            Err(_) => unreachable!("HMAC accepts a 32-byte key"),
        };
        MacKey { purpose, mac }
    }

    /// The tag of `parts`, each preceded by its length (so that no two sequences of parts give
    /// the same input).
    #[must_use]
    pub fn tag<P: AsRef<[u8]>>(&self, parts: &[P]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        for part in parts {
            let part = part.as_ref();
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            mac.update(&len.to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `parts`, compared in constant time.
    #[must_use]
    pub fn verify<P: AsRef<[u8]>>(&self, parts: &[P], tag: &[u8]) -> bool {
        let expected = self.tag(parts);
        tag.len() == TAG_LEN
            && expected
                .iter()
                .zip(tag)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// An HMAC-SHA256 over a stream of bytes under a [`MacKey`] (no framing: the caller's format
/// frames its parts), for a whole file such as a backup. Wiped on drop like its key.
#[derive(Clone)]
pub struct MacStream {
    mac: HmacSha256,
}

impl std::fmt::Debug for MacStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacStream(<redacted>)")
    }
}

impl MacKey {
    /// A MAC over a stream of bytes under this key.
    #[must_use]
    pub fn stream(&self) -> MacStream {
        MacStream {
            mac: self.mac.clone(),
        }
    }
}

impl MacStream {
    /// Adds `bytes` to the MAC.
    pub fn update(&mut self, bytes: &[u8]) {
        self.mac.update(bytes);
    }

    /// The tag of every byte added.
    #[must_use]
    pub fn finish(self) -> [u8; TAG_LEN] {
        self.mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of every byte added, compared in constant time.
    #[must_use]
    pub fn verify(self, tag: &[u8]) -> bool {
        self.mac.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(byte: u8) -> RootKey {
        RootKey::from_bytes(&mut [byte; KEY_LEN])
    }

    #[test]
    fn labels_are_distinct_and_in_enum_order() {
        for (index, (purpose, label)) in LABELS.iter().enumerate() {
            assert_eq!(*purpose as usize, index);
            assert!(label.starts_with("keylife/v1/"));
            assert_eq!(LABELS.iter().filter(|(_, l)| l == label).count(), 1);
            assert!(!RETIRED_LABELS.contains(label), "{label} was retired");
        }
    }

    #[test]
    fn keys_differ_by_purpose_and_root_and_match_rfc5869() {
        let a = MacKey::derive(&root(1), Purpose::RecordMac);
        let b = MacKey::derive(&root(1), Purpose::StateMac);
        let c = MacKey::derive(&root(2), Purpose::RecordMac);
        let parts: &[&[u8]] = &[b"table", b"key", b"value"];
        assert_ne!(a.tag(parts), b.tag(parts));
        assert_ne!(a.tag(parts), c.tag(parts));
        assert!(a.verify(parts, &a.tag(parts)));
        assert!(!a.verify(parts, &c.tag(parts)));
        assert!(!a.verify(parts, &a.tag(parts)[..31]));
        // Lengths are framed: moving a byte between parts changes the tag.
        assert_ne!(a.tag(&[&b"ab"[..], b"c"]), a.tag(&[&b"a"[..], b"bc"]));

        // Computed independently: HKDF-SHA256 by hand from HMAC (RFC 5869, one block), then
        // HMAC of the framed parts.
        let prk = HmacSha256::new_from_slice(SALT)
            .unwrap()
            .chain_update([1u8; 32])
            .finalize()
            .into_bytes();
        let okm = HmacSha256::new_from_slice(&prk)
            .unwrap()
            .chain_update(Purpose::RecordMac.label().as_bytes())
            .chain_update([1u8])
            .finalize()
            .into_bytes();
        let expected: [u8; 32] = HmacSha256::new_from_slice(&okm)
            .unwrap()
            .chain_update(1u32.to_be_bytes())
            .chain_update(b"x")
            .finalize()
            .into_bytes()
            .into();
        assert_eq!(a.tag(&[b"x"]), expected);
    }

    #[test]
    fn debug_shows_no_key() {
        let key = MacKey::derive(&root(1), Purpose::Witness);
        assert_eq!(format!("{key:?}"), "MacKey(Witness, <redacted>)");
    }
}
