//! `keylife audit verify`, run as a process on logs written by `keylife::server::audit_log::AuditLog`:
//! an intact log passes (also across a reopen into a new file); an edited, a deleted and two
//! swapped lines are each caught and named; a cut-off tail is caught with `--data`, where the
//! store recorded the chain's head.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use keylife::server::audit_log::{AuditLine, AuditLog};
use keylife::{Kms, KmsOptions, RootKey};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_keylife");
const ZONE: &str = "ch-gva-2";

fn root_bytes() -> [u8; 32] {
    [42; 32]
}

/// A data directory with one zone, a root key file, and the log path.
struct Setup {
    dir: TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("root.key"),
            BASE64.encode(root_bytes()) + "\n",
        )
        .unwrap();
        Setup { dir }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    fn root(&self) -> RootKey {
        RootKey::from_bytes(&mut root_bytes())
    }

    fn zone(&self) -> Arc<Kms> {
        let kms = Kms::open(self.data().join(ZONE), self.root(), KmsOptions::new(ZONE)).unwrap();
        Arc::new(kms)
    }

    /// Writes `lines` request lines (after the log's `audit-open` line) and closes the log
    /// and the store.
    fn write(&self, lines: u64) {
        let log = AuditLog::open(self.log(), &self.root(), vec![self.zone()]).unwrap();
        for n in 0..lines {
            log.wait_synced(log.append(line(n)).unwrap()).unwrap();
        }
    }

    /// `keylife audit verify` on `files`, with `--data` if `data`.
    fn verify(&self, files: &[&Path], data: bool) -> (i32, String, String) {
        let mut command = Command::new(BIN);
        command
            .args(["audit", "verify", "--root-key-file"])
            .arg(self.dir.path().join("root.key"))
            .env_remove("KEYLIFE_ROOT_KEY")
            .env_remove("KEYLIFE_DATA");
        if data {
            command.arg("--data").arg(self.data());
        }
        let output = command.args(files).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    }

    /// Asserts `verify` refuses the log, and returns its message.
    #[track_caller]
    fn refused(&self, data: bool) -> String {
        let (code, stdout, stderr) = self.verify(&[&self.log()], data);
        assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(stderr.starts_with("keylife: "), "{stderr}");
        stderr
    }

    /// The log's lines.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn rewrite(&self, lines: &[String]) {
        std::fs::write(self.log(), lines.join("\n") + "\n").unwrap();
    }
}

fn line(n: u64) -> AuditLine {
    AuditLine {
        time: Timestamp::from_second(1_800_000_000).unwrap(),
        zone: ZONE.to_owned(),
        operation: "rotate-kms-key".to_owned(),
        key: None,
        outcome: "ok".to_owned(),
        status: 200,
        revision: Some(n + 1),
        actor: Some("EXOlocal0000".to_owned()),
        auth: None,
    }
}

#[test]
fn an_intact_log_passes_with_and_without_the_store() {
    let setup = Setup::new();
    setup.write(5);
    let (code, stdout, stderr) = setup.verify(&[&setup.log()], false);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("lines 1 to 6 (6 lines), the chain verifies"),
        "{stdout}"
    );
    let (code, stdout, stderr) = setup.verify(&[&setup.log()], true);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("zone ch-gva-2: its store recorded line 6 as the head: found"),
        "{stdout}"
    );
}

#[test]
fn an_edited_line_is_caught_and_named() {
    let setup = Setup::new();
    setup.write(5);
    let mut lines = setup.lines();
    assert!(lines[2].contains("\"revision\":2"));
    lines[2] = lines[2].replace("\"revision\":2", "\"revision\":3");
    setup.rewrite(&lines);
    let message = setup.refused(false);
    assert!(
        message.contains("line 3: (line 3 of the log) was changed"),
        "{message}"
    );
    // Its MAC replaced by another line's: the same.
    let mut lines = setup.lines();
    lines[2] = lines[2].replace("\"revision\":3", "\"revision\":2");
    let other_mac = &lines[4][lines[4].len() - 46..];
    lines[2] = format!("{}{other_mac}", &lines[2][..lines[2].len() - 46]);
    setup.rewrite(&lines);
    let message = setup.refused(false);
    assert!(
        message.contains("line 3: (line 3 of the log) was changed"),
        "{message}"
    );
}

#[test]
fn a_deleted_line_is_caught_and_named() {
    let setup = Setup::new();
    setup.write(5);
    let mut lines = setup.lines();
    lines.remove(3);
    setup.rewrite(&lines);
    let message = setup.refused(false);
    assert!(
        message.contains("line 4: is line 5 of the log: line 4 was removed"),
        "{message}"
    );
    // The first line removed: the file no longer starts the chain.
    let mut lines = setup.lines();
    lines.remove(0);
    setup.rewrite(&lines);
    let message = setup.refused(false);
    assert!(
        message.contains("line 1: (line 2 of the log) starts the file but names no previous line"),
        "{message}"
    );
}

#[test]
fn two_swapped_lines_are_caught_and_named() {
    let setup = Setup::new();
    setup.write(5);
    let mut lines = setup.lines();
    lines.swap(2, 3);
    setup.rewrite(&lines);
    let message = setup.refused(false);
    assert!(
        message.contains(
            "line 3: is line 4 of the log where line 3 was due; line 3 is at line 4 of the file \
             (reordered)"
        ),
        "{message}"
    );
}

#[test]
fn a_cut_off_tail_is_caught_with_the_store() {
    let setup = Setup::new();
    setup.write(5);
    let mut lines = setup.lines();
    lines.truncate(4);
    setup.rewrite(&lines);
    // The file alone cannot tell: every line it has is intact.
    let (code, _, stderr) = setup.verify(&[&setup.log()], false);
    assert_eq!(code, 0, "{stderr}");
    let message = setup.refused(true);
    assert!(
        message.contains(
            "the log ends at line 4 but the store of zone ch-gva-2 recorded line 6 (cut off)"
        ),
        "{message}"
    );
}

#[test]
fn a_log_spanning_a_reopen_passes() {
    let setup = Setup::new();
    let kms = setup.zone();
    let log = AuditLog::open(setup.log(), &setup.root(), vec![Arc::clone(&kms)]).unwrap();
    log.wait_synced(log.append(line(0)).unwrap()).unwrap();
    let rotated = setup.dir.path().join("audit.log.1");
    std::fs::rename(setup.log(), &rotated).unwrap();
    log.reopen().unwrap();
    log.wait_synced(log.append(line(1)).unwrap()).unwrap();
    // The same file reopened in place: the chain goes on in it.
    log.reopen().unwrap();
    log.wait_synced(log.append(line(2)).unwrap()).unwrap();
    drop(log);
    drop(kms);
    let (code, stdout, stderr) = setup.verify(&[&rotated, &setup.log()], true);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("lines 1 to 6 (6 lines)"), "{stdout}");
    assert!(
        stdout.contains("recorded line 6 as the head: found"),
        "{stdout}"
    );
    // The new file alone verifies from where it starts.
    let (code, stdout, stderr) = setup.verify(&[&setup.log()], true);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("lines 3 to 6 (4 lines)"), "{stdout}");
    // The rotated file alone ends before the store's head: cut off, as far as it can tell.
    let (code, _, stderr) = setup.verify(&[&rotated], true);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the log ends at line 2 but the store"),
        "{stderr}"
    );
}

#[test]
fn a_running_server_s_store_is_named_as_in_use() {
    let setup = Setup::new();
    setup.write(1);
    let _kms = setup.zone();
    let message = setup.refused(true);
    assert!(
        message.contains("is in use: stop the server first"),
        "{message}"
    );
}
