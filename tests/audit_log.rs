//! The chained audit log file (`keylife::server::audit_log`): lines chained by MACs and synced in
//! groups, the head recorded in every zone's store, the chain continued across restarts and
//! reopens, a cut-off file refused at open, a torn last line cut away, and a write failure
//! failing closed until a reopen.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use jiff::Timestamp;
use keylife::server::audit_log::{AuditError, AuditLine, AuditLog, Damage, VerifyError, verify};
use keylife::{AuditSink, Caller, CreateKey, Kms, KmsOptions};

use common::failing::Failing;
use common::{json_lines, root};

fn line(n: u64) -> AuditLine {
    AuditLine {
        time: Timestamp::from_second(1_800_000_000).unwrap(),
        zone: "ch-gva-2".to_owned(),
        operation: "encrypt".to_owned(),
        key: None,
        outcome: "ok".to_owned(),
        status: 200,
        revision: Some(n),
        actor: Some("EXOlocal0000".to_owned()),
        auth: None,
    }
}

fn zone(dir: &Path) -> Arc<Kms> {
    Arc::new(Kms::open(dir.join("ch-gva-2"), root(1), KmsOptions::new("ch-gva-2")).unwrap())
}

fn check(files: &[&Path]) -> Result<keylife::server::audit_log::Verified, VerifyError> {
    let files: Vec<PathBuf> = files.iter().map(|file| file.to_path_buf()).collect();
    verify(&root(1), &files, &[])
}

/// Runs a future to its end on this thread (the tests have no runtime).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn lines_are_chained_synced_and_their_head_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let kms = zone(dir.path());
    let log = AuditLog::open(&path, &root(1), vec![Arc::clone(&kms)]).unwrap();
    assert!(log.is_healthy());
    // The line of a call, from its event.
    let seen = Arc::new(Mutex::new(None));
    let keep = Arc::clone(&seen);
    let handle = kms
        .as_caller(Caller::new("EXOlocal0000"))
        .with_audit(AuditSink::new(move |event| {
            *keep.lock().unwrap() = Some(event.clone());
        }));
    let key = handle.create_key(&CreateKey::new("k")).unwrap();
    let event = seen.lock().unwrap().take().unwrap();
    let first = log.append(AuditLine::from_event(&event, 200)).unwrap();
    assert_eq!(first.seq(), 2, "line 1 is the log's own `audit-open`");
    block_on(log.synced(first)).unwrap();
    let second = log.append(line(2)).unwrap();
    log.wait_synced(second).unwrap();
    assert_eq!(kms.audit_head().unwrap().unwrap().seq, 3);
    // One writer per file.
    let error = AuditLog::open(&path, &root(1), vec![]).unwrap_err();
    assert!(
        matches!(&error, AuditError::Open { detail } if detail.contains("locked")),
        "{error}"
    );
    drop(log);

    let lines = json_lines(&path);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["operation"], "audit-open");
    assert_eq!(
        lines[0]["prev"],
        "A".repeat(43) + "=",
        "line 1 names the zero MAC"
    );
    // Every field, in its order, `mac` last.
    let text = std::fs::read_to_string(&path).unwrap();
    let second_line = text.lines().nth(1).unwrap();
    let expected_start = format!(
        "{{\"seq\":2,\"time\":\"{}\",\"zone\":\"ch-gva-2\",\"operation\":\"create-kms-key\",\
         \"key\":\"{}\",\"outcome\":\"ok\",\"status\":200,\"revision\":1,\
         \"actor\":\"EXOlocal0000\",\"mac\":\"",
        event.time, key.id
    );
    assert!(second_line.starts_with(&expected_start), "{second_line}");
    assert_eq!(lines[2]["seq"], 3);
    assert_eq!(lines[2]["revision"], 2);

    let verified = check(&[&path]).unwrap();
    assert_eq!((verified.first, verified.last, verified.lines), (1, 3, 3));
    // Another root key: line 1 does not verify.
    let error = verify(&root(2), &[path], &[]).unwrap_err();
    assert!(
        matches!(
            error,
            VerifyError::Line {
                line: 1,
                damage: Damage::Changed,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn concurrent_lines_share_syncs_and_keep_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let kms = zone(dir.path());
    let log = AuditLog::open(&path, &root(1), vec![kms]).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for n in 0..25 {
                    let ticket = log.append(line(t * 100 + n)).unwrap();
                    log.wait_synced(ticket).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let groups = log.groups();
    drop(log);
    let verified = check(&[&path]).unwrap();
    assert_eq!(verified.last, 201);
    assert!(
        groups < 201,
        "{groups} groups for 201 lines: no sync was shared"
    );
}

#[test]
fn a_restart_continues_the_file_and_a_reopen_continues_the_chain_in_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let kms = zone(dir.path());
    let log = AuditLog::open(&path, &root(1), vec![Arc::clone(&kms)]).unwrap();
    log.wait_synced(log.append(line(1)).unwrap()).unwrap();
    drop(log);
    // A restart: the same file goes on (an `audit-open` line without `prev`).
    let log = AuditLog::open(&path, &root(1), vec![Arc::clone(&kms)]).unwrap();
    log.wait_synced(log.append(line(2)).unwrap()).unwrap();
    // A reopen with the file still in place: it goes on.
    log.reopen().unwrap();
    log.wait_synced(log.append(line(3)).unwrap()).unwrap();
    let lines = json_lines(&path);
    let operations: Vec<_> = lines.iter().map(|l| l["operation"].clone()).collect();
    assert_eq!(
        operations,
        [
            "audit-open",
            "encrypt",
            "audit-open",
            "encrypt",
            "audit-reopen",
            "encrypt"
        ]
    );
    assert!(lines[2].get("prev").is_none() && lines[4].get("prev").is_none());

    // logrotate moves the file away; the reopen starts a new one with `prev`.
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    log.append(line(4)).unwrap(); // appended before the reopen: goes to the old file
    log.reopen().unwrap();
    log.wait_synced(log.append(line(5)).unwrap()).unwrap();
    drop(log);
    let old = json_lines(&rotated);
    let new = json_lines(&path);
    assert_eq!(old.last().unwrap()["seq"], 7);
    assert_eq!(new[0]["seq"], 8);
    assert_eq!(new[0]["operation"], "audit-reopen");
    assert_eq!(new[0]["prev"], old.last().unwrap()["mac"]);
    assert_eq!(kms.audit_head().unwrap().unwrap().seq, 9);

    // Both files in order, and the new one alone, verify; in the wrong order they do not.
    assert_eq!(check(&[&rotated, &path]).unwrap().last, 9);
    assert_eq!(check(&[&path]).unwrap().first, 8);
    let error = check(&[&path, &rotated]).unwrap_err();
    assert!(matches!(error, VerifyError::Line { .. }), "{error}");
    // Checked against the store's head: found.
    let head = kms.audit_head().unwrap().unwrap();
    let verified = verify(&root(1), &[path], &[("ch-gva-2".to_owned(), head)]).unwrap();
    assert_eq!(verified.heads, [("ch-gva-2".to_owned(), 9)]);
}

#[test]
fn a_cut_file_is_refused_at_open_and_a_new_file_continues_from_the_stores_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let kms = zone(dir.path());
    let log = AuditLog::open(&path, &root(1), vec![Arc::clone(&kms)]).unwrap();
    for n in 0..3 {
        log.wait_synced(log.append(line(n)).unwrap()).unwrap();
    }
    drop(log);
    let text = std::fs::read_to_string(&path).unwrap();
    let cut: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&path, cut.join("\n") + "\n").unwrap();
    let error = AuditLog::open(&path, &root(1), vec![Arc::clone(&kms)]).unwrap_err();
    assert!(
        matches!(&error, AuditError::Open { detail } if detail.contains("ends at line 3 but zone ch-gva-2 recorded line 4")),
        "{error}"
    );
    // Moved away: a new file continues the chain from the recorded head.
    std::fs::rename(&path, dir.path().join("audit.log.cut")).unwrap();
    let log = AuditLog::open(&path, &root(1), vec![Arc::clone(&kms)]).unwrap();
    drop(log);
    let lines = json_lines(&path);
    assert_eq!(lines[0]["seq"], 5);
    assert!(lines[0]["prev"].is_string());
    assert_eq!(check(&[&path]).unwrap().first, 5);
}

#[test]
fn a_torn_last_line_is_cut_away_at_open_and_a_changed_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let kms = zone(dir.path());
    drop(AuditLog::open(&path, &root(1), vec![Arc::clone(&kms)]).unwrap());
    // A crash in the middle of a write leaves a line without its end.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"seq\":2,\"time\":\"2026-");
    std::fs::write(&path, &text).unwrap();
    assert!(matches!(
        check(&[&path]).unwrap_err(),
        VerifyError::Line {
            line: 2,
            damage: Damage::Malformed,
            ..
        }
    ));
    drop(AuditLog::open(&path, &root(1), vec![Arc::clone(&kms)]).unwrap());
    assert_eq!(check(&[&path]).unwrap().last, 2);

    // A last line changed: refused (the chain would go on from a forged line).
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "audit-open\",\"outcome\":\"ok",
            "audit-open\",\"outcome\":\"no",
        ),
    )
    .unwrap();
    let error = AuditLog::open(&path, &root(1), vec![kms]).unwrap_err();
    assert!(
        matches!(&error, AuditError::Open { detail } if detail.contains("does not verify")),
        "{error}"
    );
}

#[test]
fn a_failure_fails_closed_until_a_reopen_and_leaves_no_hole_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let backend = Arc::new(Failing::default());
    let kms =
        Arc::new(Kms::with_backend(backend.clone(), root(1), KmsOptions::new("ch-gva-2")).unwrap());
    let log = AuditLog::open(&path, &root(1), vec![Arc::clone(&kms)]).unwrap();
    log.wait_synced(log.append(line(1)).unwrap()).unwrap();

    // The head cannot be recorded: the group fails, and so does everything after it.
    backend.fail(true);
    let lost = log.append(line(2)).unwrap();
    let error = log.wait_synced(lost).unwrap_err();
    assert!(
        matches!(&error, AuditError::Failed { detail } if detail.contains("no space left")),
        "{error}"
    );
    assert!(!log.is_healthy());
    assert!(matches!(
        log.append(line(3)),
        Err(AuditError::Failed { .. })
    ));
    // A reopen while the store still fails: refused, still failed.
    assert!(log.reopen().is_err());
    assert!(!log.is_healthy());

    backend.fail(false);
    log.reopen().unwrap();
    assert!(log.is_healthy());
    let ticket = log.append(line(4)).unwrap();
    log.wait_synced(ticket).unwrap();
    // The lost line's ticket stays failed, though its number was given again.
    assert!(log.wait_synced(lost).is_err());
    drop(log);
    // The lines of the failed groups were cut away: one chain, no line twice.
    let verified = check(&[&path]).unwrap();
    assert_eq!(verified.last, 4);
    let lines = json_lines(&path);
    let operations: Vec<_> = lines.iter().map(|l| l["operation"].clone()).collect();
    assert_eq!(
        operations,
        ["audit-open", "encrypt", "audit-reopen", "encrypt"]
    );
    assert_eq!(lines[3]["revision"], 4);
    assert_eq!(kms.audit_head().unwrap().unwrap().seq, 4);
}
