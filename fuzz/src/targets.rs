//! The logic of keylife's fuzz targets: one `pub fn(&[u8])` per target.
//!
//! Plain Rust over keylife's public API and jiff, nothing else: no libFuzzer, no `arbitrary`
//! (the fuzz bytes are decoded by hand with [`Reader`]). Two places use this file:
//! - the cargo-fuzz binaries (`fuzz/fuzz_targets/*.rs`, through the fuzz crate's lib);
//! - the main crate's `tests/fuzz_corpus.rs` (through `#[path]`), which replays every file of
//!   `fuzz/corpus/<target>/`, so `cargo test` exercises the targets without cargo-fuzz.
//!
//! A target panics only on a finding: a panic inside keylife, or one of the target's own
//! assertions (an oracle or the reference model disagreeing with keylife). Errors that
//! keylife returns are not findings when they are the ones the oracle expects.
//!
//! - [`decrypt`]: `Kms::decrypt` of arbitrary, header-spliced or edited real ciphertexts, with
//!   an oracle for the exact outcome.
//! - [`envelope`]: `Header::parse` on arbitrary bytes, and the parse/encode round trip.
//! - [`record`]: every stored-record decoder on arbitrary bytes, the encode/decode round trip,
//!   and every command applied to whatever decodes.
//! - [`lifecycle`]: command sequences with clock jumps against the pure core and a reference
//!   model written from `lifecycle.md`.
//! - [`backup`]: the backup file reader on arbitrary bytes, with and without a valid MAC, and
//!   the read/write round trip.
//! - [`link`]: the wire decoders of the link between processes on arbitrary bytes, and the
//!   update's decode/encode round trip.

use std::sync::OnceLock;

use jiff::{SignedDuration, Timestamp};
use keylife::core::limits::MAX_MANUAL_ROTATIONS;
use keylife::core::{
    self, Command, CreateContext, CreateKey, DeletionDelay, Event, KeyRecord, Role, RotationPeriod,
    Status, Transition,
};
use keylife::crypto::{FORMAT_V1, HEADER_LEN, Header, OVERHEAD, ParseError};
use keylife::store::codec;
use keylife::{KeyId, Kms, KmsOptions, ManualClock, RootKey};

/// Reads fuzz bytes front to back. Past the end every read gives zeros, so every input
/// decodes to something.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&byte, rest)) => {
                self.data = rest;
                byte
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }

    /// Up to `n` bytes (fewer at the end).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Exactly `N` bytes, zero-padded at the end.
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let bytes = self.take(N);
        out[..bytes.len()].copy_from_slice(bytes);
        out
    }

    fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// The start of every clock here: 2026-01-01T00:00:00Z.
fn start() -> Timestamp {
    Timestamp::from_second(1_767_225_600).expect("2026-01-01 is a valid time")
}

// ----- decrypt --------------------------------------------------------------------------

/// The plaintext of every real ciphertext of the decrypt fixture.
const PLAINTEXT: &[u8] = b"keylife fuzz: the plaintext of the real ciphertexts";
/// The context the fixture's version-1 ciphertext was made with (version 2: none).
const CONTEXT_V1: &[u8] = b"keylife fuzz: context";

/// An in-memory `Kms`, built once per process, with an enabled key of two material versions
/// and a disabled key.
struct DecryptFixture {
    kms: Kms,
    enabled: KeyId,
    disabled: KeyId,
    /// Real ciphertexts of `enabled` with their contexts: version 1, then version 2.
    real: [(Vec<u8>, &'static [u8]); 2],
}

fn decrypt_fixture() -> &'static DecryptFixture {
    static FIXTURE: OnceLock<DecryptFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let options = KmsOptions::new("fuzz-zone").clock(ManualClock::new(start()));
        let root = RootKey::from_bytes(&mut [0x5a; 32]);
        let kms = Kms::open_in_memory(root, options).expect("an in-memory Kms opens");
        let enabled = kms
            .create_key(&CreateKey::new("fuzz-enabled"))
            .expect("create")
            .id;
        let v1 = kms
            .encrypt(enabled, PLAINTEXT, Some(CONTEXT_V1))
            .expect("encrypt under version 1")
            .ciphertext;
        kms.rotate_key(enabled, None).expect("rotate");
        let v2 = kms
            .encrypt(enabled, PLAINTEXT, None)
            .expect("encrypt under version 2")
            .ciphertext;
        let disabled = kms
            .create_key(&CreateKey::new("fuzz-disabled"))
            .expect("create")
            .id;
        kms.disable_key(disabled, None).expect("disable");
        DecryptFixture {
            kms,
            enabled,
            disabled,
            real: [(v1, CONTEXT_V1), (v2, &[])],
        }
    })
}

/// Fuzzes `Kms::decrypt` against a real key: arbitrary bytes must give an error, never a
/// panic, and the outcome must be exactly the one [`decrypt_oracle`] predicts.
///
/// Input: a flags byte (bit 0: decrypt with the disabled key; bits 1-2: mode; bit 6: pass an
/// empty context as `None`), a context length byte and that many context bytes, then by mode:
/// - 0: the ciphertext, as is;
/// - 1: a valid header of the enabled key (version: 1, 2, 3, or a u32 of the input; nonce: 12
///   bytes of the input) followed by the rest of the input, to get past the header checks;
/// - 2: a real ciphertext (a byte selects version 1 or 2) and its real context followed by the
///   context bytes, then edits until the end: xor a byte at a position, truncate, append,
///   insert.
pub fn decrypt(data: &[u8]) {
    let fixture = decrypt_fixture();
    let mut input = Reader::new(data);
    let flags = input.u8();
    let key = if flags & 1 == 0 {
        fixture.enabled
    } else {
        fixture.disabled
    };
    let context_len = usize::from(input.u8());
    let mut context = input.take(context_len).to_vec();
    let ciphertext = match (flags >> 1) & 3 {
        1 => {
            let version = match input.u8() % 4 {
                0 => 1,
                1 => 2,
                2 => 3,
                _ => input.u32(),
            };
            let header = Header {
                key_id: fixture.enabled,
                version,
                nonce: input.array(),
            };
            let mut ciphertext = header.encode().to_vec();
            ciphertext.extend_from_slice(input.rest());
            ciphertext
        }
        2 => {
            let (real, real_context) = &fixture.real[usize::from(input.u8() & 1)];
            context = [real_context, &context[..]].concat();
            let mut ciphertext = real.clone();
            while !input.is_empty() {
                match input.u8() % 4 {
                    0 => {
                        let at = usize::from(input.u16());
                        let mask = input.u8();
                        if !ciphertext.is_empty() {
                            let at = at % ciphertext.len();
                            ciphertext[at] ^= mask;
                        }
                    }
                    1 => {
                        let len = usize::from(input.u16()) % (ciphertext.len() + 1);
                        ciphertext.truncate(len);
                    }
                    2 => ciphertext.push(input.u8()),
                    _ => {
                        let at = usize::from(input.u16()) % (ciphertext.len() + 1);
                        ciphertext.insert(at, input.u8());
                    }
                }
            }
            ciphertext
        }
        _ => input.rest().to_vec(),
    };
    let context_arg = if context.is_empty() && flags & 0x40 != 0 {
        None
    } else {
        Some(&context[..])
    };
    let expected = decrypt_oracle(fixture, key, &ciphertext, &context);
    match (fixture.kms.decrypt(key, &ciphertext, context_arg), expected) {
        (Ok(opened), Ok(plaintext)) => assert_eq!(opened.plaintext.as_bytes(), plaintext),
        (Err(error), Err(code)) => assert_eq!(error.code(), code, "decrypt: {error}"),
        (got, want) => panic!(
            "decrypt gave {:?}, the oracle expected {want:?}",
            got.map(|opened| opened.plaintext.len())
        ),
    }
}

/// What decrypt must give, from the contract alone: the size limits, the key's status, the
/// format byte and length of the v1 layout, the key id in bytes 1..17, and then only the real
/// ciphertexts with their contexts open (nobody forges an AES-GCM tag).
fn decrypt_oracle(
    fixture: &DecryptFixture,
    key: KeyId,
    ciphertext: &[u8],
    context: &[u8],
) -> Result<&'static [u8], &'static str> {
    let limits = fixture.kms.limits();
    if ciphertext.len() > limits.max_plaintext_bytes + OVERHEAD
        || context.len() > limits.max_context_bytes
    {
        return Err("bad-request");
    }
    if key == fixture.disabled {
        return Err("key-disabled");
    }
    if ciphertext.len() < 1 + 16 + 4 + 12 + 16 || ciphertext[0] != 0x01 {
        return Err("invalid-ciphertext");
    }
    if ciphertext[1..17] != key.as_bytes()[..] {
        return Err("incorrect-key");
    }
    if fixture
        .real
        .iter()
        .any(|(real, real_context)| real == ciphertext && *real_context == context)
    {
        Ok(PLAINTEXT)
    } else {
        Err("invalid-ciphertext")
    }
}

// ----- envelope -------------------------------------------------------------------------

/// Fuzzes the ciphertext header: `Header::parse` on arbitrary bytes says exactly why it
/// refuses, and what parses encodes to the same bytes and parses back to the same header.
/// Then a header made of the input's bytes encodes and parses back.
pub fn envelope(data: &[u8]) {
    match Header::parse(data) {
        Ok((header, body)) => {
            assert!(data.len() >= OVERHEAD, "parsed {} bytes", data.len());
            assert_eq!(data[0], FORMAT_V1);
            assert_eq!(body, &data[HEADER_LEN..]);
            assert_eq!(header.key_id.as_bytes()[..], data[1..17]);
            assert_eq!(header.version.to_be_bytes()[..], data[17..21]);
            assert_eq!(header.nonce[..], data[21..33]);
            let encoded = header.encode();
            assert_eq!(encoded[..], data[..HEADER_LEN]);
            let again = [&encoded[..], body].concat();
            let (reparsed, rebody) = Header::parse(&again).expect("an encoded header parses");
            assert_eq!(reparsed, header);
            assert_eq!(rebody, body);
        }
        Err(ParseError::TooShort) => assert!(data.len() < OVERHEAD, "{} bytes", data.len()),
        Err(ParseError::UnknownFormat(format)) => {
            assert!(data.len() >= OVERHEAD);
            assert_eq!(format, data[0]);
            assert_ne!(format, FORMAT_V1);
        }
    }
    let mut input = Reader::new(data);
    let header = Header {
        key_id: KeyId::from_bytes(input.array()),
        version: input.u32(),
        nonce: input.array(),
    };
    let body_len = OVERHEAD - HEADER_LEN + usize::from(input.u8());
    let mut message = header.encode().to_vec();
    message.resize(HEADER_LEN + body_len, 0);
    let (parsed, body) = Header::parse(&message).expect("an encoded header parses");
    assert_eq!(parsed, header);
    assert_eq!(body.len(), body_len);
}

// ----- record ---------------------------------------------------------------------------

/// Fuzzes every decoder of stored bytes: `decode_record` (under the id the bytes hold, and
/// under another), `decode_delivery`, `split_zone_key` and `due_key_id`. Errors are fine
/// (always `corrupt-record`), panics are not; what decodes re-encodes to something that
/// decodes to the same value. A decoded record then goes through every command of the core
/// at a few times: a record read from a damaged store must not make the core panic either.
/// Last, the due index's byte order must be time order for times made of the input.
pub fn record(data: &[u8]) {
    let embedded = data
        .get(1..17)
        .map(|id| KeyId::from_bytes(id.try_into().expect("16 bytes")));
    let other = KeyId::from_bytes([0xee; 16]);
    for id in embedded.into_iter().chain([other]) {
        match codec::decode_record(id, data) {
            Ok(record) => {
                assert_eq!(
                    data.get(1..17),
                    Some(&id.as_bytes()[..]),
                    "decoded as the record of a key it does not name"
                );
                check_record_invariants(&record);
                assert_round_trips(&record);
                apply_everything(&record);
            }
            Err(error) => assert_eq!(error.code(), "corrupt-record", "{error}"),
        }
    }

    // With the seal ids of its versions (record format 3): they round-trip with the record.
    for id in embedded.into_iter().chain([other]) {
        match codec::decode_record_sealed(id, data) {
            Ok((record, seal_ids)) => {
                assert_eq!(seal_ids.len(), record.materials().len());
                let bytes = codec::encode_record_sealed(&record, &seal_ids)
                    .expect("a decoded record encodes");
                let again = codec::decode_record_sealed(id, &bytes).expect("and decodes");
                assert_eq!(again, (record, seal_ids));
            }
            Err(error) => assert_eq!(error.code(), "corrupt-record", "{error}"),
        }
    }

    let id = embedded.unwrap_or(other);
    match codec::decode_delivery(id, "de-fra-1", data) {
        Ok(delivery) => {
            let bytes = codec::encode_delivery(&delivery).expect("a decoded delivery encodes");
            let again = codec::decode_delivery(id, "de-fra-1", &bytes).expect("and decodes");
            assert_eq!(again, delivery);
        }
        Err(error) => assert_eq!(error.code(), "corrupt-record", "{error}"),
    }

    match codec::split_zone_key(data) {
        Some((id, zone)) => assert_eq!(codec::zone_key(id, &zone), data),
        None => assert!(data.len() < 16 || std::str::from_utf8(&data[16..]).is_err()),
    }

    match codec::due_key_id(data) {
        Some(id) => assert_eq!(data.get(12..28), Some(&id.as_bytes()[..])),
        None => assert!(data.len() < 28, "{} bytes", data.len()),
    }

    let mut input = Reader::new(data);
    let (a, b) = (time_from(&mut input), time_from(&mut input));
    if let (Some(a), Some(b)) = (a, b) {
        let key_a = codec::due_key(a, id);
        assert_eq!(codec::due_key_id(&key_a), Some(id));
        assert_eq!(
            codec::due_prefix(a).cmp(&codec::due_prefix(b)),
            a.cmp(&b),
            "due index order of {a:?} and {b:?}"
        );
    }
}

/// A time anywhere in jiff's range, from 12 bytes, or `None` where jiff refuses the pair.
fn time_from(input: &mut Reader<'_>) -> Option<Timestamp> {
    let (min, max) = (Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    let span = u64::try_from(max - min + 1).expect("MAX is after MIN");
    let second = min + i64::try_from(input.u64() % span).expect("below the span");
    let nanosecond = i32::try_from(input.u32() % 1_999_999_999).expect("in range") - 999_999_999;
    Timestamp::new(second, nanosecond).ok()
}

/// What the decoder promises: at least one version, versions numbered 1, 2, 3, ...
fn check_record_invariants(record: &KeyRecord) {
    assert!(!record.materials().is_empty(), "a record without material");
    for (index, material) in record.materials().iter().enumerate() {
        assert_eq!(usize::try_from(material.version).ok(), Some(index + 1));
    }
}

/// Encoding `record` and decoding it gives it back; encoding that gives the same bytes.
fn assert_round_trips(record: &KeyRecord) {
    let bytes = codec::encode_record(record).expect("a record encodes");
    let again = codec::decode_record(record.id(), &bytes).expect("an encoded record decodes");
    assert_eq!(&again, record);
    assert_eq!(codec::encode_record(&again).expect("encodes"), bytes);
}

/// Every command at a few times, on a record that may break every rule of the core (decoded
/// from arbitrary bytes): errors are fine, panics are not, and a change is one revision.
fn apply_everything(record: &KeyRecord) {
    let commands = [
        Command::Enable,
        Command::Disable,
        Command::ScheduleDeletion {
            delay: DeletionDelay::default(),
        },
        Command::CancelDeletion,
        Command::Rotate,
        Command::EnableRotation {
            period: RotationPeriod::default(),
        },
        Command::DisableRotation,
        Command::Replicate {
            zone: "de-fra-1".to_owned(),
            known: true,
        },
        Command::RunDue,
        Command::RetireExhausted {
            version: record.newest_material().version,
        },
    ];
    let times = [
        record.revision().at,
        record.rotation().next_at,
        Timestamp::MIN,
        Timestamp::MAX,
        start(),
    ];
    let _ = core::next_due(record);
    for now in times {
        let _ = core::deletion_due(record, now);
        for command in &commands {
            if let Ok(Transition::Changed { record: next, .. }) =
                core::apply(record, command, now, None)
            {
                assert_eq!(
                    Some(next.revision().seq),
                    record.revision().seq.checked_add(1)
                );
                assert_eq!(next.revision().at, now);
                assert_round_trips(&next);
            }
        }
    }
}

// ----- lifecycle ------------------------------------------------------------------------

/// The zone of the fuzzed key, and the zones it may be replicated to (the first is its own).
const ZONES: [&str; 3] = ["fuzz-zone", "de-fra-1", "at-vie-1"];
/// Commands run per input at most.
const MAX_OPS: usize = 2000;

/// Fuzzes the pure core: a key created from the input, then a sequence of commands and clock
/// jumps decoded from it. Each outcome (changed, unchanged, deleted, or the error's code) must
/// be the [`Model`]'s, the record must match the model field by field after every step, and
/// the invariants hold: `revision.seq` + 1 per change, materials numbered 1..n, at most 10
/// manual rotations, and the record round-trips through the store's codec.
///
/// Input: a flags byte (bit 0: multi-zone; bit 1: the name is taken; bit 2: the quota is
/// full; bit 3: the name is made of a 2-byte character; bit 4: with a description), a u16
/// name length, a u16 description length when bit 4 is set; then operations until the end.
/// An operation is a byte: the low nibble picks the operation (see [`Op::read`]), bits 4-5
/// the expected revision (0, 1: none; 2: the key's; 3: a wrong one); some read arguments.
pub fn lifecycle(data: &[u8]) {
    let mut input = Reader::new(data);
    let flags = input.u8();
    let name_len = usize::from(input.u16() % 300);
    let name = if flags & 8 == 0 { "k" } else { "é" }.repeat(name_len);
    let description = (flags & 16 != 0).then(|| "d".repeat(usize::from(input.u16() % 1100)));
    let request = CreateKey {
        name,
        description,
        multi_zone: flags & 1 != 0,
        ..CreateKey::default()
    };
    let mut now = start();
    let ctx = CreateContext {
        id: KeyId::from_bytes([0x42; 16]),
        zone: ZONES[0],
        now,
        origin_keys: if flags & 4 != 0 { 1000 } else { 3 },
        quota: 1000,
        name_taken: flags & 2 != 0,
    };
    let (mut model, mut record) = match (
        Model::create(&request, &ctx),
        core::create_key(&request, &ctx),
    ) {
        (Ok(model), Ok(record)) => (model, record),
        (Err(code), Err(error)) => {
            assert_eq!(error.code(), code, "create: {error}");
            return;
        }
        (want, got) => panic!(
            "create gave {:?}, the model expected {:?}",
            got.map(|_| "a key"),
            want.map(|_| "a key")
        ),
    };
    model.check(&record, now);

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let byte = input.u8();
        let expected_seq = match (byte >> 4) & 3 {
            2 => Some(model.seq),
            3 => Some(model.seq ^ (1 + u64::from(input.u8()))),
            _ => None,
        };
        let command = match Op::read(byte & 0x0f, &mut input, &model, now) {
            Op::Command(command) => command,
            Op::Clock(to) => {
                now = to;
                continue;
            }
            Op::Refused => continue,
        };
        let want = model.apply(&command, now, expected_seq);
        let got = core::apply(&record, &command, now, expected_seq);
        let context = || format!("{command:?} at {now} (expected seq {expected_seq:?})");
        match (got, want) {
            (Ok(Transition::Deleted), Outcome::Deleted) => return,
            (Ok(Transition::Unchanged), Outcome::Unchanged) => {}
            (
                Ok(Transition::Changed {
                    record: next,
                    event,
                }),
                Outcome::Changed(want),
            ) => {
                assert_eq!(event, want, "{}", context());
                assert_eq!(next.revision().seq, record.revision().seq + 1);
                record = *next;
            }
            (Err(error), Outcome::Error(code)) => {
                assert_eq!(error.code(), code, "{}: {error}", context());
            }
            (got, want) => panic!("{}: the core gave {got:?}, the model {want:?}", context()),
        }
        model.check(&record, now);
        assert_round_trips(&record);
    }
}

/// An operation of the lifecycle target.
enum Op {
    /// A command for the core.
    Command(Command),
    /// A command whose argument is out of range: refused (as the model expects) before the
    /// core is asked.
    Refused,
    /// A clock jump: the new time.
    Clock(Timestamp),
}

impl Op {
    /// Reads the operation `kind` (0 to 15) and its arguments, at time `now`.
    fn read(kind: u8, input: &mut Reader<'_>, model: &Model, now: Timestamp) -> Op {
        match kind {
            0 => Op::Command(Command::Enable),
            1 => Op::Command(Command::Disable),
            2 => {
                // 0: no delay given (the default, 30 days).
                let days = Some(u32::from(input.u8())).filter(|&days| days != 0);
                let valid = days.is_none_or(|days| (7..=30).contains(&days));
                match checked_argument(DeletionDelay::from_request(days), valid) {
                    Some(delay) => Op::Command(Command::ScheduleDeletion { delay }),
                    None => Op::Refused,
                }
            }
            3 => Op::Command(Command::CancelDeletion),
            4 => Op::Command(Command::Rotate),
            5 => {
                // 0: no period given (the default, 365 days).
                let days = Some(u32::from(input.u16())).filter(|&days| days != 0);
                let valid = days.is_none_or(|days| (90..=2560).contains(&days));
                match checked_argument(RotationPeriod::from_request(days), valid) {
                    Some(period) => Op::Command(Command::EnableRotation { period }),
                    None => Op::Refused,
                }
            }
            6 => Op::Command(Command::DisableRotation),
            7 => Op::Command(Command::RunDue),
            8 => {
                // 0: the newest version (the usual case), else that version.
                let version = match input.u8() {
                    0 => u32::try_from(model.versions.len()).expect("few versions"),
                    version => u32::from(version),
                };
                Op::Command(Command::RetireExhausted { version })
            }
            9 => {
                let choice = input.u8();
                Op::Command(Command::Replicate {
                    zone: ZONES[usize::from(choice % 3)].to_owned(),
                    known: choice & 0x80 == 0,
                })
            }
            // Whole days forward.
            10 => Op::Clock(jump(
                now,
                SignedDuration::from_hours(i64::from(input.u16()) * 24),
            )),
            // Up to 3 days forward, in seconds.
            11 => Op::Clock(jump(
                now,
                SignedDuration::from_secs(i64::from(input.u32() % (3 * 86_400))),
            )),
            // Up to 18 hours back, in seconds.
            12 => Op::Clock(jump(
                now,
                -SignedDuration::from_secs(i64::from(input.u16())),
            )),
            // To the model's next due time, give or take 128 seconds.
            13 => {
                let offset = SignedDuration::from_secs(i64::from(input.u8().cast_signed()));
                Op::Clock(model.next_due().map_or(now, |due| jump(due, offset)))
            }
            _ => Op::Command(Command::RunDue),
        }
    }
}

/// The argument a checked type accepted, or `None` when it refused it; the model says whether
/// it is `valid` (in the range of lifecycle.md), and refusals are bad requests.
fn checked_argument<T: std::fmt::Debug>(
    checked: Result<T, keylife::Error>,
    valid: bool,
) -> Option<T> {
    match checked {
        Ok(argument) if valid => Some(argument),
        Err(error) if !valid => {
            assert_eq!(error.code(), "bad-request", "{error}");
            None
        }
        other => panic!("the argument gave {other:?}, the model says valid: {valid}"),
    }
}

/// `now` moved by `by`, saturating at the ends of time (as `ManualClock` does).
fn jump(now: Timestamp, by: SignedDuration) -> Timestamp {
    now.checked_add(by).unwrap_or(if by.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// `now` plus whole days, or `None` past the end of time.
fn plus_days(now: Timestamp, days: u32) -> Option<Timestamp> {
    now.checked_add(SignedDuration::from_hours(i64::from(days) * 24))
        .ok()
}

/// What a command did, in the model.
#[derive(Debug)]
enum Outcome {
    Changed(Event),
    Unchanged,
    Deleted,
    Error(&'static str),
}

/// A key's status in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelStatus {
    Enabled,
    Disabled,
    PendingDeletion(Timestamp),
}

/// The reference model of one origin key, written from `lifecycle.md` (its status
/// transitions, rotation and replication tables), independently of the core.
struct Model {
    multi_zone: bool,
    status: ModelStatus,
    status_since: Timestamp,
    seq: u64,
    revision_at: Timestamp,
    /// (created-at, automatic) of each material version, version 1 first.
    versions: Vec<(Timestamp, bool)>,
    automatic: bool,
    period_days: u32,
    next_at: Timestamp,
    manual_count: u32,
    /// (zone, the revision that added it).
    replicas: Vec<(String, u64)>,
    last_cancel_seq: u64,
}

impl Model {
    /// "Create" of lifecycle.md: the error code, or the new key.
    fn create(request: &CreateKey, ctx: &CreateContext<'_>) -> Result<Model, &'static str> {
        let name_chars = request.name.chars().count();
        if !(1..=256).contains(&name_chars) {
            return Err("bad-request");
        }
        if request
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1024)
        {
            return Err("bad-request");
        }
        if ctx.name_taken {
            return Err("name-conflict");
        }
        if ctx.origin_keys >= ctx.quota {
            return Err("quota-exceeded");
        }
        let now = ctx.now;
        Ok(Model {
            multi_zone: request.multi_zone,
            status: ModelStatus::Enabled,
            status_since: now,
            seq: 1,
            revision_at: now,
            versions: vec![(now, false)],
            automatic: true,
            period_days: 365,
            next_at: plus_days(now, 365).ok_or("bad-request")?,
            manual_count: 0,
            replicas: Vec::new(),
            last_cancel_seq: 0,
        })
    }

    /// When the key next has something due: its deletion, or its automatic rotation.
    fn next_due(&self) -> Option<Timestamp> {
        match self.status {
            ModelStatus::PendingDeletion(delete_at) => Some(delete_at),
            ModelStatus::Enabled if self.automatic => Some(self.next_at),
            _ => None,
        }
    }

    /// The refusal of an operation that needs an enabled key, if the key is not.
    fn refuse_unless_enabled(&self) -> Option<&'static str> {
        match self.status {
            ModelStatus::Enabled => None,
            ModelStatus::Disabled => Some("key-disabled"),
            ModelStatus::PendingDeletion(_) => Some("key-pending-deletion"),
        }
    }

    /// Applies `command` at `now`: what happened, and the model updated to match.
    fn apply(&mut self, command: &Command, now: Timestamp, expected_seq: Option<u64>) -> Outcome {
        // From delete-at on the key no longer exists, whatever is asked.
        if let ModelStatus::PendingDeletion(delete_at) = self.status
            && delete_at <= now
        {
            return Outcome::Deleted;
        }
        if expected_seq.is_some_and(|seq| seq != self.seq) {
            return Outcome::Error("revision-conflict");
        }
        let outcome = match command {
            Command::Enable => match self.status {
                ModelStatus::Enabled => return Outcome::Unchanged,
                ModelStatus::Disabled => self.set_status(ModelStatus::Enabled, now, Event::Enabled),
                ModelStatus::PendingDeletion(_) => Outcome::Error("key-pending-deletion"),
            },
            Command::Disable => match self.status {
                ModelStatus::Enabled => {
                    self.set_status(ModelStatus::Disabled, now, Event::Disabled)
                }
                ModelStatus::Disabled => return Outcome::Unchanged,
                ModelStatus::PendingDeletion(_) => Outcome::Error("key-pending-deletion"),
            },
            Command::ScheduleDeletion { delay } => match self.status {
                ModelStatus::PendingDeletion(_) => Outcome::Error("key-pending-deletion"),
                _ => match plus_days(now, delay.days()) {
                    None => Outcome::Error("bad-request"),
                    Some(delete_at) => self.set_status(
                        ModelStatus::PendingDeletion(delete_at),
                        now,
                        Event::DeletionScheduled { delete_at },
                    ),
                },
            },
            Command::CancelDeletion => match self.status {
                ModelStatus::PendingDeletion(_) => {
                    self.last_cancel_seq = self.seq + 1;
                    self.set_status(ModelStatus::Disabled, now, Event::DeletionCancelled)
                }
                _ => Outcome::Error("not-pending-deletion"),
            },
            Command::Rotate => {
                if let Some(refusal) = self.refuse_unless_enabled() {
                    Outcome::Error(refusal)
                } else if self.manual_count >= 10 {
                    Outcome::Error("manual-rotation-limit")
                } else {
                    self.manual_count += 1;
                    self.add_version(now, false)
                }
            }
            Command::EnableRotation { period } => {
                if let Some(refusal) = self.refuse_unless_enabled() {
                    Outcome::Error(refusal)
                } else if self.automatic {
                    Outcome::Error("conflict")
                } else if let Some(next_at) = plus_days(now, period.days()) {
                    self.automatic = true;
                    self.period_days = period.days();
                    self.next_at = next_at;
                    Outcome::Changed(Event::RotationEnabled)
                } else {
                    Outcome::Error("bad-request")
                }
            }
            Command::DisableRotation => {
                if let Some(refusal) = self.refuse_unless_enabled() {
                    Outcome::Error(refusal)
                } else if !self.automatic {
                    Outcome::Error("conflict")
                } else {
                    self.automatic = false;
                    Outcome::Changed(Event::RotationDisabled)
                }
            }
            Command::RunDue => {
                if self.status == ModelStatus::Enabled && self.automatic && self.next_at <= now {
                    match plus_days(now, self.period_days) {
                        None => Outcome::Error("bad-request"),
                        Some(next_at) => {
                            self.next_at = next_at;
                            self.add_version(now, true)
                        }
                    }
                } else {
                    return Outcome::Unchanged;
                }
            }
            Command::RetireExhausted { version } => {
                if let Some(refusal) = self.refuse_unless_enabled() {
                    Outcome::Error(refusal)
                } else if usize::try_from(*version).ok() != Some(self.versions.len()) {
                    return Outcome::Unchanged;
                } else {
                    self.add_version(now, true)
                }
            }
            Command::Replicate { zone, known } => {
                if !self.multi_zone {
                    Outcome::Error("not-multi-zone")
                } else if zone == ZONES[0] || !known {
                    Outcome::Error("invalid-argument")
                } else if self.replicas.iter().any(|(z, _)| z == zone) {
                    Outcome::Error("conflict")
                } else if let Some(refusal) = self.refuse_unless_enabled() {
                    Outcome::Error(refusal)
                } else {
                    self.replicas.push((zone.clone(), self.seq + 1));
                    Outcome::Changed(Event::ReplicaAdded)
                }
            }
        };
        if let Outcome::Changed(_) = outcome {
            self.seq += 1;
            self.revision_at = now;
        }
        outcome
    }

    fn set_status(&mut self, status: ModelStatus, now: Timestamp, event: Event) -> Outcome {
        self.status = status;
        self.status_since = now;
        Outcome::Changed(event)
    }

    fn add_version(&mut self, now: Timestamp, automatic: bool) -> Outcome {
        self.versions.push((now, automatic));
        Outcome::Changed(Event::Rotated {
            version: u32::try_from(self.versions.len()).expect("few versions"),
            automatic,
        })
    }

    /// The core's record matches the model field by field, and the invariants hold.
    fn check(&self, record: &KeyRecord, now: Timestamp) {
        let status = match record.status() {
            Status::Enabled => ModelStatus::Enabled,
            Status::Disabled => ModelStatus::Disabled,
            Status::PendingDeletion { delete_at } => ModelStatus::PendingDeletion(delete_at),
        };
        assert_eq!(status, self.status, "status");
        assert_eq!(record.status_since(), self.status_since, "status-since");
        assert_eq!(record.revision().seq, self.seq, "revision.seq");
        assert_eq!(record.revision().at, self.revision_at, "revision.at");
        assert_eq!(record.role(), Role::Origin);
        assert_eq!(record.origin_zone(), ZONES[0]);
        assert_eq!(record.multi_zone(), self.multi_zone);
        assert_eq!(record.materials().len(), self.versions.len(), "versions");
        for (index, (material, &(created_at, automatic))) in
            record.materials().iter().zip(&self.versions).enumerate()
        {
            assert_eq!(usize::try_from(material.version).ok(), Some(index + 1));
            assert_eq!(material.created_at, created_at, "version {}", index + 1);
            assert_eq!(material.automatic, automatic, "version {}", index + 1);
        }
        let rotation = record.rotation();
        assert_eq!(rotation.automatic, self.automatic, "rotation.automatic");
        assert_eq!(rotation.period_days, self.period_days, "rotation-period");
        assert_eq!(rotation.next_at, self.next_at, "next-at");
        assert_eq!(rotation.manual_count, self.manual_count, "manual-count");
        assert!(rotation.manual_count <= MAX_MANUAL_ROTATIONS);
        let replicas: Vec<_> = record
            .replicas()
            .iter()
            .map(|r| (r.zone.clone(), r.since_seq))
            .collect();
        assert_eq!(replicas, self.replicas, "replicas");
        assert_eq!(record.last_cancel_seq(), self.last_cancel_seq);
        assert_eq!(record.applied_watermark(), 0);
        assert_eq!(core::next_due(record), self.next_due(), "next due");
        let due = matches!(self.status, ModelStatus::PendingDeletion(at) if at <= now);
        assert_eq!(core::deletion_due(record, now), due, "deletion due");
        assert_eq!(
            core::check_crypto(record.id(), record.status()).map_err(|e| e.code()),
            self.refuse_unless_enabled().map_or(Ok(()), Err),
            "crypto allowed"
        );
    }
}

/// The backup file reader (`store::backup::read_backup`) on arbitrary bytes: as they are (the
/// MAC is checked before any entry is parsed, so they are refused), and with a valid MAC
/// appended, so that the header and entry parsers see every input. Errors are fine (always
/// `corrupt-record`), panics are not; what reads writes back to the same bytes.
pub fn backup(data: &[u8]) {
    use keylife::crypto::{MacKey, Purpose};
    use keylife::store::backup::{read_backup, write_backup};

    let key = MacKey::derive(&RootKey::from_bytes(&mut [7; 32]), Purpose::BackupMac);
    if let Err(error) = read_backup(data, &key) {
        assert_eq!(error.code(), "corrupt-record", "{error}");
    }
    let mut file = data.to_vec();
    let mut mac = key.stream();
    mac.update(data);
    file.extend_from_slice(&mac.finish());
    match read_backup(&file, &key) {
        Ok(backup) => {
            let mut again = Vec::new();
            write_backup(&mut again, &backup.header, &backup.entries, &key)
                .expect("what was read writes");
            assert_eq!(again, file, "read then written gives the same bytes");
        }
        Err(error) => assert_eq!(error.code(), "corrupt-record", "{error}"),
    }
}

/// The link's wire decoders (`keylife::wire`) on arbitrary bytes, as an update, a rotation
/// request and an answer, for zone `b` under a fixed link secret. Errors are fine (always
/// `bad-request` on `replica-update`), panics are not; an update that decodes encodes again
/// and decodes to the same snapshot and material versions, and the replica's rule
/// (`core::replication::follow`) takes it without panicking. No answer decodes: the fuzzer
/// cannot forge its MAC.
pub fn link(data: &[u8]) {
    use keylife::core::replication::{FollowContext, follow};
    use keylife::crypto::LinkKey;
    use keylife::wire;

    let key = LinkKey::derive(b"fuzz link secret");
    let refused = |error: keylife::Error| {
        assert_eq!(error.code(), "bad-request", "{error}");
    };
    match wire::decode_update(data, "b", &key) {
        Ok(update) => {
            let again = wire::encode_update(&update, "b", &key).expect("what decoded encodes");
            let back = wire::decode_update(&again, "b", &key).expect("what encoded decodes");
            assert_eq!(back.snapshot(), update.snapshot());
            assert_eq!(back.material_versions(), update.material_versions());
            let ctx = FollowContext {
                zone: "b",
                now: Timestamp::UNIX_EPOCH,
                name_taken: false,
            };
            let _ = follow(None, update.snapshot(), &ctx);
        }
        Err(error) => refused(error),
    }
    match wire::decode_rotation(data, "b") {
        Ok(request) => {
            let again = wire::encode_rotation(&request).expect("what decoded encodes");
            assert_eq!(
                wire::decode_rotation(&again, "b").expect("decodes"),
                request
            );
        }
        Err(error) => refused(error),
    }
    assert!(wire::decode_ack(data, b"signature", &key).is_err());
    assert!(wire::decode_rotation_done(data, b"signature", &key).is_err());
}
