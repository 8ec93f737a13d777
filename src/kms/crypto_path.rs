//! The crypto path: encrypt, decrypt, re-encrypt and generate-data-key over the cached key
//! states, with the encryption budget of each key's newest version and its durable
//! reservations. Once a key is in memory it reads no store and builds no cipher; it writes only
//! to extend a reservation (once per [`RESERVATION_BLOCK`](super::RESERVATION_BLOCK)
//! encryptions) and to retire a version whose budget is spent.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::cache::{Cache, KeyState};
use super::lifecycle::Lifecycle;
use super::options::Limits;
use super::replicator::Replicator;
use super::shared::{Shared, lock};
use crate::api::{Ciphertext, DataKey, Plaintext};
use crate::core::{self, Command, ConflictReason, DataKeySpec, Error, KeyId, Role};
use crate::crypto::{self, Header, OVERHEAD, SecretBytes, envelope};

/// The cryptographic operations of one zone.
pub(super) struct CryptoPath {
    shared: Arc<Shared>,
    cache: Arc<Cache>,
    lifecycle: Arc<Lifecycle>,
    replicator: Arc<Replicator>,
}

impl CryptoPath {
    pub(super) fn new(
        shared: Arc<Shared>,
        cache: Arc<Cache>,
        lifecycle: Arc<Lifecycle>,
        replicator: Arc<Replicator>,
    ) -> CryptoPath {
        CryptoPath {
            shared,
            cache,
            lifecycle,
            replicator,
        }
    }

    /// encrypt (see [`Kms::encrypt`](crate::Kms::encrypt)).
    pub(super) fn encrypt(
        &self,
        id: KeyId,
        plaintext: &[u8],
        context: Option<&[u8]>,
    ) -> Result<Ciphertext, Error> {
        let (state, context) = self.begin(id, context, || self.check_plaintext(plaintext))?;
        let ciphertext = self.seal(state, plaintext, context)?;
        Ok(Ciphertext { ciphertext })
    }

    /// decrypt (see [`Kms::decrypt`](crate::Kms::decrypt)).
    pub(super) fn decrypt(
        &self,
        id: KeyId,
        ciphertext: &[u8],
        context: Option<&[u8]>,
    ) -> Result<Plaintext, Error> {
        let (state, context) = self.begin(id, context, || self.check_ciphertext(ciphertext))?;
        let plaintext = open(&state, ciphertext, context)?;
        Ok(Plaintext { plaintext })
    }

    /// What encrypt and decrypt check first, in this order: the zone works, the message's
    /// length (`check`), the context's; then the key's state, if it may be used.
    fn begin<'a>(
        &self,
        id: KeyId,
        context: Option<&'a [u8]>,
        check: impl FnOnce() -> Result<(), Error>,
    ) -> Result<(Arc<KeyState>, &'a [u8]), Error> {
        self.shared.live()?;
        check()?;
        let context = self.context(context)?;
        Ok((self.usable(id)?, context))
    }

    /// re-encrypt (see [`Kms::re_encrypt`](crate::Kms::re_encrypt)).
    pub(super) fn re_encrypt(
        &self,
        source: (KeyId, Option<&[u8]>),
        ciphertext: &[u8],
        destination: (KeyId, Option<&[u8]>),
    ) -> Result<Ciphertext, Error> {
        self.shared.live()?;
        self.check_ciphertext(ciphertext)?;
        let source_context = self.context(source.1)?;
        let destination_context = self.context(destination.1)?;
        let source_state = self.usable(source.0)?;
        let destination_state = self.usable(destination.0)?;
        let plaintext = open(&source_state, ciphertext, source_context)?;
        let ciphertext = self.seal(destination_state, plaintext.as_bytes(), destination_context)?;
        Ok(Ciphertext { ciphertext })
    }

    /// generate-data-key (see [`Kms::generate_data_key`](crate::Kms::generate_data_key)).
    pub(super) fn generate_data_key(
        &self,
        id: KeyId,
        spec: DataKeySpec,
        context: Option<&[u8]>,
    ) -> Result<DataKey, Error> {
        self.shared.live()?;
        let spec = spec.checked()?;
        let context = self.context(context)?;
        // Refuse before generating anything if the key cannot be used.
        let state = self.usable(id)?;
        let mut plaintext = SecretBytes::new(vec![0; spec.byte_len()]);
        crypto::fill_from_os(plaintext.as_mut_slice())?;
        let ciphertext = self.seal(state, plaintext.as_bytes(), context)?;
        Ok(DataKey {
            plaintext,
            ciphertext,
        })
    }

    fn check_plaintext(&self, plaintext: &[u8]) -> Result<(), Error> {
        let max = self.shared.limits().max_plaintext_bytes;
        Limits::check_len("plaintext", plaintext, max)
    }

    fn check_ciphertext(&self, ciphertext: &[u8]) -> Result<(), Error> {
        let max = self.shared.limits().max_plaintext_bytes;
        Limits::check_len("ciphertext", ciphertext, max.saturating_add(OVERHEAD))
    }

    fn context<'a>(&self, context: Option<&'a [u8]>) -> Result<&'a [u8], Error> {
        let context = context.unwrap_or_default();
        let max = self.shared.limits().max_context_bytes;
        Limits::check_len("encryption-context", context, max)?;
        Ok(context)
    }

    /// The cached state of key `id` if the key may be used for cryptography. A key pending
    /// deletion whose `delete-at` has passed is destroyed now and is not found.
    fn usable(&self, id: KeyId) -> Result<Arc<KeyState>, Error> {
        let state = self.cache.state(id)?;
        match core::check_crypto(id, state.status) {
            Ok(()) => Ok(state),
            Err(refusal @ Error::KeyPendingDeletion { delete_at, .. })
                if delete_at <= self.shared.now() =>
            {
                // Destroys the key if its deletion is due (not for a replica).
                self.lifecycle.reap_or_load(id)?;
                Err(refusal)
            }
            Err(refusal) => Err(refusal),
        }
    }

    /// Encrypts under the newest version of a usable key (`state`, from
    /// [`CryptoPath::usable`]), counting the encryption against the version's budget and
    /// retiring the version when the budget is spent.
    fn seal(
        &self,
        mut state: Arc<KeyState>,
        plaintext: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let id = state.id;
        let max = self.shared.limits().max_encryptions_per_version;
        // Each pass either encrypts or makes a new version; more than a few passes happen only
        // when concurrent calls spend each new version's budget first.
        const PASSES: usize = 8;
        for _ in 0..PASSES {
            let budget = &state.budget;
            let count = budget.used.fetch_add(1, Ordering::Relaxed);
            if count >= max {
                self.retire(id, budget.version)?;
                state = self.usable(id)?;
                continue;
            }
            // Acquire pairs with the Release below: a reservation seen is durable.
            if count >= budget.reserved.load(Ordering::Acquire) {
                self.extend_reservation(&state, count)?;
            }
            let header = Header {
                key_id: id,
                version: budget.version,
                nonce: crypto::message_nonce()?,
            };
            return envelope::seal(&state.newest, &header, plaintext, context);
        }
        Err(Error::Conflict {
            id,
            reason: ConflictReason::BudgetRace,
        })
    }

    /// Makes encryption number `count` (0-based) of the newest version durable before it
    /// happens, reserving a block at a time.
    #[cold]
    fn extend_reservation(&self, state: &KeyState, count: u64) -> Result<(), Error> {
        let budget = &state.budget;
        let _extend = lock(&budget.extend);
        let reserved = budget.reserved.load(Ordering::Acquire);
        if count < reserved {
            return Ok(());
        }
        let _key = self.shared.lock_key(state.id);
        if self.cache.get(state.id).is_none() {
            // Deleted meanwhile: do not write an entry for a key that is gone.
            return Err(Error::KeyNotFound { id: state.id });
        }
        let limits = self.shared.limits();
        let next = count
            .saturating_add(limits.reservation_block())
            .min(limits.max_encryptions_per_version);
        self.shared
            .write(|store| store.reserve(state.id, budget.version, next))?;
        budget.reserved.store(next, Ordering::Release);
        Ok(())
    }

    /// Version `version` of key `id` used its encryption budget in this zone. An origin key
    /// gets a new version at once. A replica asks its origin through the link, which makes
    /// the version and delivers it (with [`LocalLink`](crate::LocalLink), before answering);
    /// if it has not arrived, the answer is [`Error::RotationPending`].
    #[cold]
    fn retire(&self, id: KeyId, version: u32) -> Result<(), Error> {
        let record = self.lifecycle.reap_or_load(id)?;
        if record.role() == Role::Origin {
            self.lifecycle
                .change(id, Command::RetireExhausted { version }, None)?;
            return Ok(());
        }
        // Whatever went wrong on the way, the caller's answer is the same: not yet.
        if self
            .replicator
            .request_rotation(record.origin_zone(), id, version)
            .is_err()
            || self.usable(id)?.budget.version <= version
        {
            return Err(Error::RotationPending {
                id,
                version,
                origin_zone: record.origin_zone().to_owned(),
            });
        }
        Ok(())
    }
}

/// Opens `ciphertext` with a key state: parse, check the key id, pick the version, open.
fn open(state: &KeyState, ciphertext: &[u8], context: &[u8]) -> Result<SecretBytes, Error> {
    let (header, _) = Header::parse(ciphertext).map_err(|_| Error::InvalidCiphertext)?;
    if header.key_id != state.id {
        return Err(Error::IncorrectKey { id: state.id });
    }
    let cipher = state
        .cipher(header.version)
        .ok_or(Error::InvalidCiphertext)?;
    envelope::open(cipher, &header, ciphertext, context)
}
