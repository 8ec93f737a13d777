//! The audit chain across a root-key rotation, with the binary: `keylife root-key rotate` on a
//! zone whose store recorded the log's head, then a log opened under the new key continues the
//! chain from the last line; `keylife audit verify` passes with both keys (oldest first) and
//! is refused with either one alone or with the keys in the wrong order. The rotate command
//! itself: its report, a second run that finds the zone already rotated, a wrong old key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use keylife::server::audit_log::{AuditLine, AuditLog, verify_across};
use keylife::{Kms, KmsOptions, RootKey};

const BIN: &str = env!("CARGO_BIN_EXE_keylife");
const ZONE: &str = "ch-gva-2";

fn key(byte: u8) -> RootKey {
    RootKey::from_bytes(&mut [byte; 32])
}

fn key_file(dir: &Path, byte: u8) -> PathBuf {
    let file = dir.join(format!("root-{byte}.key"));
    std::fs::write(&file, BASE64.encode([byte; 32]) + "\n").unwrap();
    file
}

fn line(n: u64) -> AuditLine {
    AuditLine {
        time: Timestamp::from_second(1_800_000_000).unwrap(),
        zone: ZONE.to_owned(),
        operation: "encrypt".to_owned(),
        key: None,
        outcome: "ok".to_owned(),
        status: 200,
        revision: Some(n),
        actor: Some("EXOlocal0000".to_owned()),
        auth: None,
    }
}

/// Opens the log under root key `byte` with the zone's store, writes `lines` lines, closes.
fn write(data: &Path, log: &Path, byte: u8, lines: u64) {
    let kms = Arc::new(Kms::open(data.join(ZONE), key(byte), KmsOptions::new(ZONE)).unwrap());
    let audit = AuditLog::open(log, &key(byte), vec![kms]).unwrap();
    for n in 0..lines {
        audit.wait_synced(audit.append(line(n)).unwrap()).unwrap();
    }
}

fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("KEYLIFE_ROOT_KEY")
        .env_remove("KEYLIFE_DATA")
        .env_remove("KEYLIFE_ZONE")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// `keylife audit verify` of `log` with `keys`, and `--data` if given.
fn verify(data: Option<&Path>, log: &Path, keys: &[&PathBuf]) -> (i32, String, String) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["audit".as_ref(), "verify".as_ref()];
    for key in keys {
        args.push("--root-key-file".as_ref());
        args.push(key.as_os_str());
    }
    if let Some(data) = data {
        args.extend(["--data".as_ref(), data.as_os_str()]);
    }
    args.push(log.as_os_str());
    run(&args)
}

#[test]
fn a_log_spanning_a_rotation_verifies_with_both_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("audit.log"));
    let (old, new, third) = (
        key_file(dir.path(), 1),
        key_file(dir.path(), 2),
        key_file(dir.path(), 3),
    );
    write(&data, &log, 1, 3);

    let rotate = |from: &Path, to: &Path| {
        run(&[
            "root-key".as_ref(),
            "rotate".as_ref(),
            "--data".as_ref(),
            data.as_os_str(),
            "--root-key-file".as_ref(),
            from.as_os_str(),
            "--new-root-key-file".as_ref(),
            to.as_os_str(),
        ])
    };
    let (code, stdout, stderr) = rotate(&old, &new);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("zone {ZONE} (")) && stdout.contains("root key rotated"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the old root key file was left as it is"),
        "{stdout}"
    );
    assert!(old.exists());
    // Run again: the zone is already under the new key; a key that opens neither way is
    // refused.
    let (code, stdout, _) = rotate(&old, &new);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("already under the new root key"),
        "{stdout}"
    );
    let (code, _, stderr) = rotate(&third, &old);
    assert_eq!(code, 1);
    assert!(stderr.contains("[wrong-root-key]"), "{stderr}");

    // The log goes on under the new key, from the head the store recorded.
    write(&data, &log, 2, 2);
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), 1 + 3 + 1 + 2);

    let (code, stdout, stderr) = verify(Some(&data), &log, &[&old, &new]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("lines 1 to 7 (7 lines), the chain verifies"),
        "{stdout}"
    );
    assert!(
        stdout.contains("from line 5: the chain goes on under root key 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("recorded line 7 as the head: found"),
        "{stdout}"
    );
    for keys in [&[&old][..], &[&new], &[&new, &old]] {
        // Without --data: the stores open only with the newest key.
        let (code, stdout, stderr) = verify(None, &log, keys);
        assert_eq!(code, 1, "{keys:?}: {stdout}");
        assert!(stderr.contains("was changed"), "{keys:?}: {stderr}");
    }
    // Through the library: line 5 is where the second key took over.
    let verified = verify_across(&[key(1), key(2)], std::slice::from_ref(&log), &[]).unwrap();
    assert_eq!(verified.key_changes, vec![(5, 1)]);
}

#[test]
fn a_log_under_another_key_continues_only_from_the_recorded_head() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("audit.log"));
    write(&data, &log, 1, 2);
    keylife::rotate_root_key(data.join(ZONE), key(1), key(2)).unwrap();
    // Without the store that recorded the head, the last line is only a line that does not
    // verify.
    let refused = AuditLog::open(&log, &key(2), Vec::new()).unwrap_err();
    assert!(refused.to_string().contains("does not verify"), "{refused}");
    // One more line under the old key, after the recorded head: refused too.
    let mut text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap().to_owned();
    text.push_str(&last.replace("\"seq\":3", "\"seq\":4"));
    text.push('\n');
    std::fs::write(&log, text).unwrap();
    let kms = Arc::new(Kms::open(data.join(ZONE), key(2), KmsOptions::new(ZONE)).unwrap());
    let refused = AuditLog::open(&log, &key(2), vec![kms]).unwrap_err();
    assert!(refused.to_string().contains("does not verify"), "{refused}");
}
