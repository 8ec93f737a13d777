//! `keylife serve --audit-log` end to end: requests to two zones write chained lines, SIGHUP
//! after logrotate moved the file continues the chain in a new file, and after SIGTERM
//! `keylife audit verify --data` accepts both files and catches the newer one cut short.

#![cfg(unix)]

mod http_support;

use std::time::Duration;

use http_support::{ServeFiles, ServeProcess, b64, ok};
use serde_json::json;

fn verify(files: &ServeFiles, logs: &[&std::path::Path]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keylife"))
        .args(["audit", "verify", "--root-key-file"])
        .arg(&files.root_key)
        .arg("--data")
        .arg(files.dir.path().join("data"))
        .args(logs)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn serve_audits_every_request_reopens_at_sighup_and_verify_checks_it() {
    let files = ServeFiles::new();
    let log = files.dir.path().join("audit.log");
    let rotated = files.dir.path().join("audit.log.1");
    let log_arg = log.display().to_string();
    let command = files.command(
        &["ch-gva-2=127.0.0.1:0", "de-fra-1=127.0.0.1:0"],
        &["--audit-log", &log_arg],
    );
    let mut served = ServeProcess::start(command, 2);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (a, b) = (served.addr(0), served.addr(1));
    runtime.block_on(async {
        let mut c = http_support::Client::new(a);
        let created = c.post("/v2/kms-key", json!({"name": "k"})).await;
        let id = ok(&created)["id"].as_str().unwrap().to_owned();
        ok(&c
            .post(
                &format!("/v2/kms-key/{id}/encrypt"),
                json!({"plaintext": b64(b"x")}),
            )
            .await);
        ok(&http_support::Client::new(b).get("/v2/kms-key").await);
    });
    // logrotate: the file moves away, SIGHUP makes the server continue in a new one.
    std::fs::rename(&log, &rotated).unwrap();
    served.signal("HUP");
    let line = served.wait_for_stderr("audit log", Duration::from_secs(10));
    assert!(line.contains("reopened"), "{line}");
    runtime.block_on(async {
        let mut c = http_support::Client::new(a);
        ok(&c
            .post("/v2/kms-key", json!({"name": "after-rotation"}))
            .await);
        ok(&c.get("/v2/kms-key").await);
    });
    served.stop();

    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log).unwrap();
    let operations = |text: &str| -> Vec<String> {
        text.lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .map(|line| {
                format!(
                    "{} {}",
                    line["zone"].as_str().unwrap_or("-"),
                    line["operation"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        operations(&old),
        [
            "- audit-open",
            "ch-gva-2 create-kms-key",
            "ch-gva-2 encrypt",
            "de-fra-1 list-kms-keys"
        ]
    );
    assert_eq!(
        operations(&new),
        [
            "- audit-reopen",
            "ch-gva-2 create-kms-key",
            "ch-gva-2 list-kms-keys"
        ]
    );
    let (good, text) = verify(&files, &[&rotated, &log]);
    assert!(good, "{text}");
    // The newer file cut short: the stores' recorded head says so.
    let kept: String = new
        .lines()
        .take(2)
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&log, kept).unwrap();
    let (good, text) = verify(&files, &[&rotated, &log]);
    assert!(!good && text.contains("cut off"), "{text}");
}
