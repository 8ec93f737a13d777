//! Every bound of the contract, as named constants, and the checked types that carry them.
//!
//! A value of [`DeletionDelay`], [`RotationPeriod`] or [`DataKeySpec`] is always in range:
//! the range is checked once, where the value enters, and the error names the field and the
//! bound.

use super::error::Error;

/// Longest key name, in characters (Unicode scalar values). Names are at least 1 character.
pub const NAME_MAX_CHARS: usize = 256;
/// Longest key description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 1024;
/// Shortest deletion delay, in days.
pub const DELETION_DELAY_MIN_DAYS: u32 = 7;
/// Longest deletion delay, in days.
pub const DELETION_DELAY_MAX_DAYS: u32 = 30;
/// Deletion delay when none is given, in days.
pub const DELETION_DELAY_DEFAULT_DAYS: u32 = 30;
/// Shortest automatic rotation period, in days.
pub const ROTATION_PERIOD_MIN_DAYS: u32 = 90;
/// Longest automatic rotation period, in days.
pub const ROTATION_PERIOD_MAX_DAYS: u32 = 2560;
/// Automatic rotation period of a new key and of enable-key-rotation without a period, in days.
pub const ROTATION_PERIOD_DEFAULT_DAYS: u32 = 365;
/// Manual rotations allowed per key; the next one is refused.
pub const MAX_MANUAL_ROTATIONS: u32 = 10;
/// Keys a zone may hold by default, replicas not counted (configurable per `Kms`).
pub const DEFAULT_KEY_QUOTA: usize = 1000;
/// Smallest `bytes-count` of generate-data-key.
pub const DATA_KEY_MIN_BYTES: u32 = 1;
/// Largest `bytes-count` of generate-data-key.
pub const DATA_KEY_MAX_BYTES: u32 = 1024;
/// Size of an `AES-256` data key, in bytes.
pub const AES_256_KEY_BYTES: u32 = 32;
/// Largest plaintext accepted by encrypt by default, in bytes (configurable per `Kms`).
pub const DEFAULT_MAX_PLAINTEXT_BYTES: usize = 4 * 1024 * 1024;
/// Largest encryption context accepted by default, in bytes (configurable per `Kms`).
pub const DEFAULT_MAX_CONTEXT_BYTES: usize = 8 * 1024;
/// Encryptions allowed under one material version. With 96-bit random nonces, NIST SP 800-38D
/// (section 8.3) bounds the invocations of one AES-GCM key at 2^32; keylife rotates the key
/// automatically when its newest version reaches this count (see docs/design.md).
pub const MAX_ENCRYPTIONS_PER_VERSION: u64 = 1 << 32;

/// A checked deletion delay: whole days in
/// [`DELETION_DELAY_MIN_DAYS`]`..=`[`DELETION_DELAY_MAX_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeletionDelay(u32);

impl DeletionDelay {
    /// Checks `days`; out of range is [`Error::BadRequest`] on `delay-days`.
    pub fn new(days: u32) -> Result<DeletionDelay, Error> {
        if (DELETION_DELAY_MIN_DAYS..=DELETION_DELAY_MAX_DAYS).contains(&days) {
            Ok(DeletionDelay(days))
        } else {
            Err(Error::out_of_range(
                "delay-days",
                DELETION_DELAY_MIN_DAYS,
                DELETION_DELAY_MAX_DAYS,
                " days",
                days,
            ))
        }
    }

    /// The delay of a request: the default when absent, else checked.
    pub fn from_request(days: Option<u32>) -> Result<DeletionDelay, Error> {
        DeletionDelay::new(days.unwrap_or(DELETION_DELAY_DEFAULT_DAYS))
    }

    /// The delay in days.
    #[must_use]
    pub const fn days(self) -> u32 {
        self.0
    }
}

impl Default for DeletionDelay {
    fn default() -> DeletionDelay {
        DeletionDelay(DELETION_DELAY_DEFAULT_DAYS)
    }
}

/// A checked automatic rotation period: whole days in
/// [`ROTATION_PERIOD_MIN_DAYS`]`..=`[`ROTATION_PERIOD_MAX_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RotationPeriod(u32);

impl RotationPeriod {
    /// Checks `days`; out of range is [`Error::BadRequest`] on `rotation-period`.
    pub fn new(days: u32) -> Result<RotationPeriod, Error> {
        if (ROTATION_PERIOD_MIN_DAYS..=ROTATION_PERIOD_MAX_DAYS).contains(&days) {
            Ok(RotationPeriod(days))
        } else {
            Err(Error::out_of_range(
                "rotation-period",
                ROTATION_PERIOD_MIN_DAYS,
                ROTATION_PERIOD_MAX_DAYS,
                " days",
                days,
            ))
        }
    }

    /// The period of a request: the default when absent, else checked.
    pub fn from_request(days: Option<u32>) -> Result<RotationPeriod, Error> {
        RotationPeriod::new(days.unwrap_or(ROTATION_PERIOD_DEFAULT_DAYS))
    }

    /// The period in days.
    #[must_use]
    pub const fn days(self) -> u32 {
        self.0
    }
}

impl Default for RotationPeriod {
    fn default() -> RotationPeriod {
        RotationPeriod(ROTATION_PERIOD_DEFAULT_DAYS)
    }
}

/// What generate-data-key makes: an AES-256 key (32 bytes) or a number of bytes in
/// [`DATA_KEY_MIN_BYTES`]`..=`[`DATA_KEY_MAX_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DataKeySpec {
    /// A 32-byte key for AES-256. The default.
    #[default]
    Aes256,
    /// This many bytes (checked when the data key is generated).
    Bytes(u32),
}

impl DataKeySpec {
    /// The spec of a request with the API's two optional fields: `key-spec` (only `AES-256`)
    /// and `bytes-count`. Neither means AES-256; both is a bad request.
    pub fn from_request(
        key_spec: Option<&str>,
        bytes_count: Option<u32>,
    ) -> Result<DataKeySpec, Error> {
        match (key_spec, bytes_count) {
            (Some(_), Some(_)) => Err(Error::BadRequest {
                field: "key-spec",
                reason: "and `bytes-count` cannot both be given".to_owned(),
            }),
            (Some("AES-256"), None) | (None, None) => Ok(DataKeySpec::Aes256),
            (Some(other), None) => Err(Error::BadRequest {
                field: "key-spec",
                reason: format!("must be \"AES-256\", got {}", Error::quote(other)),
            }),
            (None, Some(count)) => DataKeySpec::Bytes(count).checked(),
        }
    }

    /// Checks the byte count; out of range is [`Error::BadRequest`] on `bytes-count`.
    pub fn checked(self) -> Result<DataKeySpec, Error> {
        match self {
            DataKeySpec::Bytes(count)
                if !(DATA_KEY_MIN_BYTES..=DATA_KEY_MAX_BYTES).contains(&count) =>
            {
                Err(Error::out_of_range(
                    "bytes-count",
                    DATA_KEY_MIN_BYTES,
                    DATA_KEY_MAX_BYTES,
                    " bytes",
                    count,
                ))
            }
            spec => Ok(spec),
        }
    }

    /// The data key's length in bytes.
    #[must_use]
    pub const fn byte_len(self) -> usize {
        match self {
            DataKeySpec::Aes256 => AES_256_KEY_BYTES as usize,
            DataKeySpec::Bytes(count) => count as usize,
        }
    }
}

/// Checks a key name: 1 to [`NAME_MAX_CHARS`] characters.
pub fn check_name(name: &str) -> Result<(), Error> {
    let chars = name.chars().count();
    if (1..=NAME_MAX_CHARS).contains(&chars) {
        Ok(())
    } else {
        Err(Error::out_of_range(
            "name",
            1,
            NAME_MAX_CHARS,
            " characters",
            chars,
        ))
    }
}

/// Checks a key description: at most [`DESCRIPTION_MAX_CHARS`] characters.
pub fn check_description(description: &str) -> Result<(), Error> {
    let chars = description.chars().count();
    if chars <= DESCRIPTION_MAX_CHARS {
        Ok(())
    } else {
        Err(Error::out_of_range(
            "description",
            0,
            DESCRIPTION_MAX_CHARS,
            " characters",
            chars,
        ))
    }
}
