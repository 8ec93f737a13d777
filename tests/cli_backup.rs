//! `keylife backup`, `keylife backup inspect` and `keylife restore`, run as processes.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keylife");
const ZONE: &str = "ch-gva-2";

fn run(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .env_remove("KEYLIFE_ROOT_KEY")
        .env_remove("KEYLIFE_DATA")
        .env_remove("KEYLIFE_ZONE");
    match stdin {
        None => command.output().unwrap(),
        Some(input) => {
            use std::io::Write as _;
            let mut child = command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            child.wait_with_output().unwrap()
        }
    }
}

#[track_caller]
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Exit status 1 with one `keylife: ... [CODE]` line.
#[track_caller]
fn refused(output: &Output, code: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_owned();
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with("keylife: ") && stderr.ends_with(&format!("[{code}]")),
        "{stderr}"
    );
    stderr
}

/// The zone's keys as `key list --json` shows them, each revision's seq moved `down`.
fn keys(dir: &Path, data: &str, down: u64) -> Vec<Value> {
    let text = ok(&run(
        dir,
        &[
            "key",
            "list",
            "--data",
            data,
            "--root-key-file",
            "root.key",
            "--json",
        ],
        None,
    ));
    let mut list: Value = serde_json::from_str(&text).unwrap();
    let keys = list["kms-keys"].as_array_mut().unwrap();
    for key in keys.iter_mut() {
        let seq = key["revision"]["seq"].as_u64().unwrap();
        key["revision"]["seq"] = Value::from(seq - down);
    }
    keys.clone()
}

#[test]
fn backup_inspect_and_restore_from_the_command_line() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let key = ok(&run(dir, &["root-key", "generate"], None));
    std::fs::write(dir.join("root.key"), key).unwrap();
    let other = ok(&run(dir, &["root-key", "generate"], None));
    std::fs::write(dir.join("other.key"), other).unwrap();
    let store = ["--data", "d", "--zone", ZONE, "--root-key-file", "root.key"];
    for name in ["alpha", "beta", "gamma"] {
        let mut args = vec!["key", "create", "--name", name];
        args.extend(store);
        ok(&run(dir, &args, None));
    }
    let mut args = vec!["key", "rotate", "beta"];
    args.extend(store);
    ok(&run(dir, &args, None));
    let mut args = vec!["encrypt", "--key", "beta", "--output", "ct"];
    args.extend(store);
    ok(&run(dir, &args, Some(b"kept secret")));

    let mut args = vec!["backup", "--out", "zone.bak"];
    args.extend(store);
    let said = ok(&run(dir, &args, None));
    assert!(said.contains("zone ch-gva-2, 3 keys"), "{said}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("zone.bak"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "a backup is readable by its owner only: {mode:o}"
        );
    }
    let inspect = |key: &str| {
        run(
            dir,
            &["backup", "inspect", "--root-key-file", key, "zone.bak"],
            None,
        )
    };
    let said = ok(&inspect("root.key"));
    assert!(
        said.contains("verifies") && said.contains("3 keys"),
        "{said}"
    );
    refused(&inspect("other.key"), "wrong-root-key");

    let restore = |data: &str, engine: &str| {
        run(
            dir,
            &[
                "restore",
                "--from",
                "zone.bak",
                "--data",
                data,
                "--root-key-file",
                "root.key",
                "--engine",
                engine,
            ],
            None,
        )
    };
    let said = ok(&restore("r", "redb"));
    assert!(said.contains("with redb: 3 keys"), "{said}");
    assert_eq!(
        keys(dir, "r", 1 << 32),
        keys(dir, "d", 0),
        "every key comes back, each 2^32 revisions up"
    );
    let plain = ok(&run(
        dir,
        &[
            "decrypt",
            "--data",
            "r",
            "--root-key-file",
            "root.key",
            "--key",
            "beta",
            "--input",
            "ct",
        ],
        None,
    ));
    assert_eq!(plain, "kept secret");
    let message = refused(&restore("r", "sled"), "bad-request");
    assert!(message.contains("not empty"), "{message}");

    // One changed byte: refused, and nothing is built.
    let mut bytes = std::fs::read(dir.join("zone.bak")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(dir.join("zone.bak"), &bytes).unwrap();
    refused(&inspect("root.key"), "corrupt-record");
    refused(&restore("s", "sled"), "corrupt-record");
    assert!(!dir.join("s").join(ZONE).exists());
}
