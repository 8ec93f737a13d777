//! Ciphertext format v1.
//!
//! ```text
//! offset  length  field
//!      0       1  format, 0x01
//!      1      16  key id (UUID bytes)
//!     17       4  material version, big-endian
//!     21      12  nonce (random)
//!     33       n  AES-256-GCM ciphertext of the n-byte plaintext
//!   33+n      16  tag
//! ```
//!
//! The associated data is the whole 33-byte header followed by the encryption context, so a
//! header cannot be changed without the tag failing, and the context is bound to the message.

use zeroize::Zeroizing;

use super::aead::{Cipher, NONCE_LEN, TAG_LEN};
use super::secret::SecretBytes;
use crate::core::{Error, KeyId};

/// The format byte of this layout.
pub const FORMAT_V1: u8 = 0x01;
/// Length of the header: format, key id, version, nonce.
pub const HEADER_LEN: usize = 1 + 16 + 4 + NONCE_LEN;
/// Bytes a ciphertext adds to its plaintext: header and tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// The parsed header of a v1 ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The key that encrypted.
    pub key_id: KeyId,
    /// The material version that encrypted.
    pub version: u32,
    /// The message's nonce.
    pub nonce: [u8; NONCE_LEN],
}

/// Why bytes are not a v1 ciphertext. Decrypt reports both as
/// [`Error::InvalidCiphertext`]; the distinction is for tests and fuzzing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header and a tag.
    TooShort,
    /// The first byte is not a known format.
    UnknownFormat(u8),
}

impl Header {
    /// The 33 header bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[0] = FORMAT_V1;
        out[1..17].copy_from_slice(self.key_id.as_bytes());
        out[17..21].copy_from_slice(&self.version.to_be_bytes());
        out[21..].copy_from_slice(&self.nonce);
        out
    }

    /// Splits a ciphertext into its header and the rest (AEAD ciphertext and tag). Checks only
    /// the length and the format byte: whether the key and version are right is the caller's
    /// business, and whether the bytes are authentic is the tag's.
    pub fn parse(ciphertext: &[u8]) -> Result<(Header, &[u8]), ParseError> {
        if ciphertext.len() < OVERHEAD {
            return Err(ParseError::TooShort);
        }
        let (head, body) = ciphertext.split_at(HEADER_LEN);
        if head[0] != FORMAT_V1 {
            return Err(ParseError::UnknownFormat(head[0]));
        }
        let mut id = [0; 16];
        id.copy_from_slice(&head[1..17]);
        let mut version = [0; 4];
        version.copy_from_slice(&head[17..21]);
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&head[21..]);
        Ok((
            Header {
                key_id: KeyId::from_bytes(id),
                version: u32::from_be_bytes(version),
                nonce,
            },
            body,
        ))
    }
}

/// Runs `f` with the associated data of a message: the header, then the context. Without a
/// context the header is used as it is, with no allocation.
fn with_aad<T>(header: &[u8], context: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    if context.is_empty() {
        f(header)
    } else {
        // The context may be sensitive (it names what the data is): wiped after use.
        let mut aad = Zeroizing::new(Vec::with_capacity(header.len() + context.len()));
        aad.extend_from_slice(header);
        aad.extend_from_slice(context);
        f(&aad)
    }
}

/// Encrypts `plaintext` under `cipher` into a v1 ciphertext with `header`.
pub(crate) fn seal(
    cipher: &Cipher,
    header: &Header,
    plaintext: &[u8],
    context: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(plaintext);
    let (head, body) = out.split_at_mut(HEADER_LEN);
    let tag = with_aad(head, context, |aad| {
        cipher.seal_in_place(&header.nonce, aad, body)
    })
    .map_err(|_| Error::BadRequest {
        field: "plaintext",
        reason: "is beyond AES-GCM's message limit".to_owned(),
    })?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts the body of a parsed v1 ciphertext. `ciphertext` is the whole message (header
/// included). Every failure is [`Error::InvalidCiphertext`].
pub(crate) fn open(
    cipher: &Cipher,
    header: &Header,
    ciphertext: &[u8],
    context: &[u8],
) -> Result<SecretBytes, Error> {
    let (head, rest) = ciphertext
        .split_at_checked(HEADER_LEN)
        .ok_or(Error::InvalidCiphertext)?;
    let body_len = rest
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(Error::InvalidCiphertext)?;
    let (body, tag) = rest.split_at(body_len);
    let mut tag_bytes = [0; TAG_LEN];
    tag_bytes.copy_from_slice(tag);
    let mut plaintext = SecretBytes::new(body.to_vec());
    with_aad(head, context, |aad| {
        cipher.open_in_place(&header.nonce, aad, plaintext.as_mut_slice(), &tag_bytes)
    })
    .map_err(|_| Error::InvalidCiphertext)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_at_the_documented_offsets() {
        let header = Header {
            key_id: KeyId::from_bytes([7; 16]),
            version: 0x0102_0304,
            nonce: [9; NONCE_LEN],
        };
        let bytes = header.encode();
        assert_eq!(bytes.len(), 33);
        assert_eq!(bytes[0], 0x01);
        assert_eq!(&bytes[1..17], &[7; 16]);
        assert_eq!(&bytes[17..21], &[1, 2, 3, 4]);
        assert_eq!(&bytes[21..33], &[9; 12]);
        let mut message = bytes.to_vec();
        message.extend_from_slice(&[0; TAG_LEN]);
        let (parsed, body) = Header::parse(&message).unwrap();
        assert_eq!(parsed, header);
        assert_eq!(body.len(), TAG_LEN);
    }

    #[test]
    fn parse_refuses_short_and_unknown_formats() {
        assert_eq!(Header::parse(&[1; OVERHEAD - 1]), Err(ParseError::TooShort));
        assert_eq!(Header::parse(&[]), Err(ParseError::TooShort));
        assert_eq!(
            Header::parse(&[2; OVERHEAD]),
            Err(ParseError::UnknownFormat(2))
        );
    }
}
