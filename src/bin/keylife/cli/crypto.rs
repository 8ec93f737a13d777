//! `keylife encrypt`, `decrypt` and `generate-data-key`.

use std::io::{self, IsTerminal as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keylife::{DataKeySpec, Error, KeyId};
use zeroize::Zeroizing;

use super::Failure;
use super::args::{CryptoArgs, DataKeyArgs, DecryptArgs, EncryptArgs};
use super::io::{is_stdio, json_text, read_input, write_output};
use super::table::fields;
use super::zones::{NewStore, Zones};

/// The zones of the command (none created), the key it names and its context's bytes.
fn open(args: &CryptoArgs) -> Result<(Zones, KeyId, Option<&[u8]>), Failure> {
    let zones = Zones::open(&args.store, NewStore::Never)?;
    let id = zones.key(&args.key)?;
    Ok((zones, id, args.context.as_deref().map(str::as_bytes)))
}

pub(super) fn encrypt(args: EncryptArgs) -> Result<(), Failure> {
    let json = args.crypto.store.json;
    let to_stdout = is_stdio(args.output.as_deref());
    if to_stdout && !json && !args.base64 && io::stdout().is_terminal() {
        return Err(Failure::Other(
            "refusing to write a binary ciphertext to a terminal: give --output FILE, --base64 \
             or --json"
                .to_owned(),
        ));
    }
    let (zones, id, context) = open(&args.crypto)?;
    let kms = zones.kms();
    let plaintext = read_input(
        args.input.as_deref(),
        kms.limits().max_plaintext_bytes,
        "plaintext",
    )?;
    let sealed = kms.encrypt(id, &plaintext, context)?;
    drop(plaintext);
    let bytes = if json {
        json_text(&sealed)?.into_bytes()
    } else if args.base64 {
        format!("{}\n", BASE64.encode(&sealed.ciphertext)).into_bytes()
    } else {
        sealed.ciphertext
    };
    write_output(args.output.as_deref(), &bytes, false)
}

pub(super) fn decrypt(args: DecryptArgs) -> Result<(), Failure> {
    let (zones, id, context) = open(&args.crypto)?;
    let kms = zones.kms();
    let largest = kms
        .limits()
        .max_plaintext_bytes
        .saturating_add(keylife::crypto::OVERHEAD);
    let ciphertext = if args.base64 {
        // Base64 takes 4 characters per 3 bytes; allow line breaks and spaces on top.
        let text = read_input(args.input.as_deref(), largest / 3 * 8 + 64, "ciphertext")?;
        let compact: Vec<u8> = text
            .iter()
            .copied()
            .filter(|byte| !byte.is_ascii_whitespace())
            .collect();
        BASE64.decode(compact).map_err(|_| Error::BadRequest {
            field: "ciphertext",
            reason: "is not valid base64 (--base64 was given)".to_owned(),
        })?
    } else {
        read_input(args.input.as_deref(), largest, "ciphertext")?.to_vec()
    };
    let opened = kms.decrypt(id, &ciphertext, context)?;
    if args.crypto.store.json {
        let text = Zeroizing::new(json_text(&opened)?);
        write_output(args.output.as_deref(), text.as_bytes(), true)
    } else {
        write_output(args.output.as_deref(), opened.plaintext.as_bytes(), true)
    }
}

pub(super) fn generate_data_key(args: DataKeyArgs) -> Result<(), Failure> {
    let (zones, id, context) = open(&args.crypto)?;
    let spec = args.bytes.map_or(DataKeySpec::Aes256, DataKeySpec::Bytes);
    let data_key = zones.kms().generate_data_key(id, spec, context)?;
    let text = if args.crypto.store.json {
        Zeroizing::new(json_text(&data_key)?)
    } else {
        let plaintext = Zeroizing::new(BASE64.encode(data_key.plaintext.as_bytes()));
        Zeroizing::new(fields(&[
            ("key", id.to_string()),
            ("bytes", data_key.plaintext.len().to_string()),
            ("plaintext", plaintext.to_string()),
            ("ciphertext", BASE64.encode(&data_key.ciphertext)),
        ]))
    };
    write_output(None, text.as_bytes(), true)
}
