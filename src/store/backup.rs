//! The backup file: a header, every entry of a store as of one commit, and a MAC over all of
//! it under a key derived from the root key. Material stays sealed under the root key as it
//! was stored; entries carry no store tags (a restore writes them into a new store, which tags
//! them under its own id).
//!
//! Layout (integers big-endian; docs/design.md, "Backup and restore"):
//!
//! ```text
//! magic       8 bytes  "KLBACKUP"
//! format      u8       1
//! store fmt   u8       the store format of the entries (2)
//! zone        u16 length + UTF-8
//! engine      u8 length + ASCII (the engine the backup was taken from)
//! commit seq  u64      the commit the image is of
//! taken at    i64 seconds + i32 nanoseconds since the Unix epoch (jiff's parts)
//! keys        u64      entries of the keys table
//! entries     u64      entries that follow
//! store id    16 bytes the backed-up store's id
//! root check  u16 length + the root key's check value
//! entries     each: table u8 (position in Table::ALL), key u16 length + bytes,
//!                   value u32 length + bytes
//! mac         32 bytes HMAC-SHA256 of every byte before it (label keylife/v1/backup/mac)
//! ```

use std::io::Write;

use jiff::Timestamp;

use super::Table;
use crate::core::Error;
use crate::crypto::derive::TAG_LEN;
use crate::crypto::{MacKey, MacStream};

/// The first bytes of every backup file.
pub const BACKUP_MAGIC: &[u8; 8] = b"KLBACKUP";
/// The backup file format written by this version.
pub const BACKUP_FORMAT_V1: u8 = 1;
/// Largest entry key a backup may hold, in bytes.
pub const MAX_BACKUP_KEY: usize = u16::MAX as usize;
/// Largest entry value a backup may hold, in bytes.
pub const MAX_BACKUP_VALUE: usize = 16 << 20;

/// What a backup says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupHeader {
    /// The store format of the entries.
    pub store_format: u8,
    /// The zone of the backed-up store.
    pub zone: String,
    /// The engine the backup was taken from.
    pub engine: String,
    /// The commit sequence the image is of.
    pub seq: u64,
    /// When the image was taken (the zone's clock).
    pub taken_at: Timestamp,
    /// Entries of the keys table: the zone's keys, replicas included.
    pub keys: u64,
    /// Entries in the file.
    pub entries: u64,
    /// The backed-up store's id.
    pub store_id: [u8; 16],
    /// The root key's check value: a restore under another root key is refused as
    /// `wrong-root-key` before anything else.
    pub root_check: Vec<u8>,
}

/// One entry of a backup: table, key, value.
pub type BackupEntry = (Table, Vec<u8>, Vec<u8>);

/// Writes a backup file to `out`: `header` (whose `entries` must be `entries.len()`), the
/// entries, and the MAC under `mac`. Returns the bytes written.
pub fn write_backup(
    out: &mut dyn Write,
    header: &BackupHeader,
    entries: &[BackupEntry],
    mac: &MacKey,
) -> Result<u64, Error> {
    let mut out = MacWriter {
        out: std::io::BufWriter::with_capacity(1 << 16, out),
        mac: mac.stream(),
        written: 0,
    };
    let io = |error: std::io::Error| Error::Storage {
        detail: format!("cannot write the backup: {error}"),
    };
    let mut head = Vec::with_capacity(128);
    head.extend_from_slice(BACKUP_MAGIC);
    head.push(BACKUP_FORMAT_V1);
    head.push(header.store_format);
    put_len16(&mut head, "zone", header.zone.as_bytes())?;
    let engine = header.engine.as_bytes();
    let engine_len = u8::try_from(engine.len()).map_err(|_| too_long("engine", 255))?;
    head.push(engine_len);
    head.extend_from_slice(engine);
    head.extend_from_slice(&header.seq.to_be_bytes());
    head.extend_from_slice(&header.taken_at.as_second().to_be_bytes());
    head.extend_from_slice(&header.taken_at.subsec_nanosecond().to_be_bytes());
    head.extend_from_slice(&header.keys.to_be_bytes());
    head.extend_from_slice(&header.entries.to_be_bytes());
    head.extend_from_slice(&header.store_id);
    put_len16(&mut head, "root check", &header.root_check)?;
    out.put(&head).map_err(io)?;
    for (table, key, value) in entries {
        let key_len =
            u16::try_from(key.len()).map_err(|_| too_long("entry key", MAX_BACKUP_KEY))?;
        if value.len() > MAX_BACKUP_VALUE {
            return Err(too_long("entry value", MAX_BACKUP_VALUE));
        }
        let value_len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        let mut frame = [0u8; 7];
        frame[0] = u8::try_from(table.index()).unwrap_or(u8::MAX);
        frame[1..3].copy_from_slice(&key_len.to_be_bytes());
        out.put(&frame[..3]).map_err(io)?;
        out.put(key).map_err(io)?;
        frame[3..7].copy_from_slice(&value_len.to_be_bytes());
        out.put(&frame[3..7]).map_err(io)?;
        out.put(value).map_err(io)?;
    }
    let tag = out.mac.clone().finish();
    out.out.write_all(&tag).map_err(io)?;
    out.out.flush().map_err(io)?;
    Ok(out.written + TAG_LEN as u64)
}

/// A backup file read and authenticated.
#[derive(Debug)]
pub struct Backup {
    /// Its header.
    pub header: BackupHeader,
    /// Its entries, in file order.
    pub entries: Vec<BackupEntry>,
}

/// Reads the backup file `bytes` under MAC key `key`. The MAC over the whole file is checked
/// before any entry is read: a file changed anywhere (or under another key) is
/// [`Error::Corrupt`] on record `backup file`.
pub fn read_backup(bytes: &[u8], key: &MacKey) -> Result<Backup, Error> {
    let mut reader = Reader { bytes, at: 0 };
    let header = reader.header()?;
    let body_len = bytes
        .len()
        .checked_sub(TAG_LEN)
        .ok_or_else(|| corrupt("it is shorter than its MAC"))?;
    let (body, tag) = bytes.split_at(body_len);
    let mut mac = key.stream();
    mac.update(body);
    if !mac.verify(tag) {
        return Err(corrupt(
            "its MAC does not verify under the root key: the file was changed or cut short",
        ));
    }
    let mut reader = Reader {
        bytes: body,
        at: reader.at,
    };
    let count = usize::try_from(header.entries).map_err(|_| corrupt("its entry count"))?;
    let mut entries = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        entries.push(reader.entry()?);
    }
    if reader.at != body.len() {
        return Err(corrupt("bytes follow its last entry"));
    }
    Ok(Backup { header, entries })
}

/// The header of the backup file that starts with `bytes`, as it reads: nothing is verified
/// (the MAC needs the root key, [`read_backup`]). For a client that fetched a backup and has
/// no root key, to say what it received.
pub fn read_header(bytes: &[u8]) -> Result<BackupHeader, Error> {
    Reader { bytes, at: 0 }.header()
}

/// Writes through a MAC, counting bytes.
struct MacWriter<W: Write> {
    out: W,
    mac: MacStream,
    written: u64,
}

impl<W: Write> MacWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.mac.update(bytes);
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize, what: &str) -> Result<&[u8], Error> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| corrupt(&format!("it ends inside its {what}")))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn text(&mut self, len: usize, what: &str) -> Result<String, Error> {
        String::from_utf8(self.take(len, what)?.to_vec())
            .map_err(|_| corrupt(&format!("its {what} is not UTF-8")))
    }

    fn header(&mut self) -> Result<BackupHeader, Error> {
        if self.take(BACKUP_MAGIC.len(), "magic").ok() != Some(&BACKUP_MAGIC[..]) {
            return Err(corrupt("it is not a keylife backup (no KLBACKUP magic)"));
        }
        let format = self.u8("format")?;
        if format != BACKUP_FORMAT_V1 {
            return Err(corrupt(&format!(
                "its format is {format}; this version reads format {BACKUP_FORMAT_V1}"
            )));
        }
        let store_format = self.u8("store format")?;
        let zone_len = usize::from(self.u16("zone")?);
        let zone = self.text(zone_len, "zone")?;
        let engine_len = usize::from(self.u8("engine")?);
        let engine = self.text(engine_len, "engine")?;
        let seq = self.u64("commit sequence")?;
        let seconds = i64::from_be_bytes(self.array("time")?);
        let nanos = i32::from_be_bytes(self.array("time")?);
        // One encoding per time: jiff normalizes some pairs (a negative time with positive
        // nanoseconds), which would then write back otherwise.
        let taken_at = Timestamp::new(seconds, nanos)
            .ok()
            .filter(|at| at.as_second() == seconds && at.subsec_nanosecond() == nanos)
            .ok_or_else(|| corrupt("its time is out of range"))?;
        let keys = self.u64("key count")?;
        let entries = self.u64("entry count")?;
        let store_id = self.array("store id")?;
        let check_len = usize::from(self.u16("root check")?);
        let root_check = self.take(check_len, "root check")?.to_vec();
        Ok(BackupHeader {
            store_format,
            zone,
            engine,
            seq,
            taken_at,
            keys,
            entries,
            store_id,
            root_check,
        })
    }

    fn entry(&mut self) -> Result<BackupEntry, Error> {
        let index = usize::from(self.u8("entry")?);
        let table = *Table::ALL
            .get(index)
            .ok_or_else(|| corrupt(&format!("an entry names table {index}, which is unknown")))?;
        let key_len = usize::from(self.u16("entry key")?);
        let key = self.take(key_len, "entry key")?.to_vec();
        let value_len = usize::try_from(self.u32("entry value")?).unwrap_or(usize::MAX);
        if value_len > MAX_BACKUP_VALUE {
            return Err(corrupt(&format!(
                "an entry value of {value_len} bytes is over {MAX_BACKUP_VALUE}"
            )));
        }
        let value = self.take(value_len, "entry value")?.to_vec();
        Ok((table, key, value))
    }
}

fn put_len16(out: &mut Vec<u8>, what: &'static str, bytes: &[u8]) -> Result<(), Error> {
    let len = u16::try_from(bytes.len()).map_err(|_| too_long(what, u16::MAX.into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn too_long(what: &str, max: usize) -> Error {
    Error::Storage {
        detail: format!("cannot write a backup: its {what} is over {max} bytes"),
    }
}

fn corrupt(detail: &str) -> Error {
    Error::Corrupt {
        record: "backup file".to_owned(),
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Purpose, RootKey};

    fn key(byte: u8) -> MacKey {
        MacKey::derive(&RootKey::from_bytes(&mut [byte; 32]), Purpose::BackupMac)
    }

    fn sample() -> (BackupHeader, Vec<BackupEntry>) {
        let entries = vec![
            (Table::Keys, vec![1; 16], b"record".to_vec()),
            (Table::Materials, vec![2; 20], vec![9; 61]),
            (Table::Meta, b"zone".to_vec(), b"ch-gva-2".to_vec()),
        ];
        let header = BackupHeader {
            store_format: 2,
            zone: "ch-gva-2".to_owned(),
            engine: "sled".to_owned(),
            seq: 42,
            taken_at: Timestamp::new(1_765_000_000, 123).unwrap(),
            keys: 1,
            entries: 3,
            store_id: [5; 16],
            root_check: vec![7; 61],
        };
        (header, entries)
    }

    fn write(mac: &MacKey) -> Vec<u8> {
        let (header, entries) = sample();
        let mut out = Vec::new();
        let written = write_backup(&mut out, &header, &entries, mac).unwrap();
        assert_eq!(written, out.len() as u64);
        out
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let bytes = write(&key(1));
        let backup = read_backup(&bytes, &key(1)).unwrap();
        let (header, entries) = sample();
        assert_eq!(backup.header, header);
        assert_eq!(backup.entries, entries);
        assert_eq!(&bytes[..8], b"KLBACKUP");
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let bytes = write(&key(1));
        for at in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[at] ^= 0x20;
            assert!(
                read_backup(&changed, &key(1)).is_err(),
                "byte {at} of {} flipped",
                bytes.len()
            );
            assert!(read_backup(&bytes[..at], &key(1)).is_err(), "cut at {at}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_backup(&longer, &key(1)).is_err());
    }

    #[test]
    fn another_key_does_not_verify() {
        let bytes = write(&key(1));
        let error = read_backup(&bytes, &key(2)).unwrap_err();
        assert!(error.to_string().contains("MAC does not verify"), "{error}");
    }
}
