//! Key identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::error::Error;

/// The identifier of a key: a UUID (version 7 for the keys keylife creates), written in its
/// hyphenated lowercase form in JSON and messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Uuid);

impl KeyId {
    /// Wraps a UUID.
    #[must_use]
    pub const fn from_uuid(uuid: Uuid) -> KeyId {
        KeyId(uuid)
    }

    /// Builds an id from its 16 bytes, as they appear in a ciphertext header.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> KeyId {
        KeyId(Uuid::from_bytes(bytes))
    }

    /// The UUID.
    #[must_use]
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The 16 bytes of the UUID.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Parses the text form of a UUID. Anything else is [`Error::BadRequest`] on field `id`.
    pub fn parse(text: &str) -> Result<KeyId, Error> {
        Uuid::try_parse(text)
            .map(KeyId)
            .map_err(|_| Error::BadRequest {
                field: "id",
                reason: format!("must be a UUID, got {}", Error::quote(text)),
            })
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0.hyphenated())
    }
}

impl FromStr for KeyId {
    type Err = Error;

    fn from_str(s: &str) -> Result<KeyId, Error> {
        KeyId::parse(s)
    }
}

impl From<Uuid> for KeyId {
    fn from(uuid: Uuid) -> KeyId {
        KeyId(uuid)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeyId, D::Error> {
        Uuid::deserialize(deserializer).map(KeyId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_hyphenated() {
        let text = "0190b6a4-2a3c-7d4e-8f00-112233445566";
        let id = KeyId::parse(text).unwrap();
        assert_eq!(id.to_string(), text);
        assert_eq!(KeyId::from_bytes(*id.as_bytes()), id);
    }

    #[test]
    fn rejects_non_uuid_naming_the_field() {
        let err = KeyId::parse("not-a-uuid").unwrap_err();
        assert!(
            matches!(err, Error::BadRequest { field: "id", .. }),
            "{err:?}"
        );
        let long = "x".repeat(10_000);
        let message = KeyId::parse(&long).unwrap_err().to_string();
        assert!(
            message.len() < 200,
            "message quotes all the input: {} bytes",
            message.len()
        );
    }
}
