//! Seed files through the binary: `keylife key import --file FILE` end to end, and two
//! `keylife serve --seed FILE` processes (separate stores, separate root keys) that decrypt
//! each other's ciphertexts; a bad seed stops the start, naming the key.

#![cfg(unix)]

mod http_support;

use std::path::PathBuf;
use std::process::Command;

use http_support::{BINARY, Client, ServeFiles, ServeProcess, b64, ok, unb64};
use serde_json::{Value, json};

const PAYMENTS: &str = "019b5a2e-7c00-7000-8000-00000000f001";
const ORDERS: &str = "019b5a2e-7c00-7000-8000-00000000f002";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/seed")
        .join(name)
}

/// Runs the binary; (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr], root_key: &std::path::Path) -> (i32, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .arg("--root-key-file")
        .arg(root_key)
        .env_remove("KEYLIFE_ROOT_KEY")
        .env_remove("KEYLIFE_DATA")
        .env_remove("KEYLIFE_ZONE")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn os(text: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(text)
}

#[test]
fn key_import_creates_then_leaves_alone_and_the_fixture_decrypts() {
    let files = ServeFiles::new();
    let data = files.dir.path().join("data");
    let seed = fixture("seed.json");
    let import = |json: bool| {
        let mut args = vec![
            os("key"),
            os("import"),
            os("--file"),
            seed.as_os_str(),
            os("--data"),
            data.as_os_str(),
        ];
        if json {
            args.push(os("--json"));
        }
        run(&args, &files.root_key)
    };
    let (code, stdout, stderr) = import(false);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "Key {PAYMENTS} (\"fixture-payments\") in zone local: created.\n\
             Key {ORDERS} (\"fixture-orders\") in zone local: created.\n"
        )
    );
    let (code, stdout, stderr) = import(true);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report,
        json!({"keys": [
            {"zone": "local", "id": PAYMENTS, "name": "fixture-payments", "outcome": "already-present"},
            {"zone": "local", "id": ORDERS, "name": "fixture-orders", "outcome": "already-present"},
        ]})
    );
    // The committed fixture decrypts through `keylife decrypt`.
    let fixtures: Value =
        serde_json::from_slice(&std::fs::read(fixture("ciphertexts.json")).unwrap()).unwrap();
    let first = &fixtures[0];
    let ciphertext_file = files.dir.path().join("ciphertext");
    std::fs::write(&ciphertext_file, first["ciphertext"].as_str().unwrap()).unwrap();
    let context = String::from_utf8(unb64(&first["context"])).unwrap();
    let (code, stdout, stderr) = run(
        &[
            os("decrypt"),
            os("--key"),
            os("fixture-payments"),
            os("--context"),
            os(&context),
            os("--base64"),
            os("--input"),
            ciphertext_file.as_os_str(),
            os("--data"),
            data.as_os_str(),
        ],
        &files.root_key,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.as_bytes(), unb64(&first["plaintext"]).as_slice());

    // A file with one bad key: refused before any store is touched, naming the key.
    let bad = files.dir.path().join("bad.json");
    let mut file: Value = serde_json::from_slice(&std::fs::read(&seed).unwrap()).unwrap();
    file["keys"][1]["versions"][0] = json!({"material": b64(&[1; 31])});
    std::fs::write(&bad, file.to_string()).unwrap();
    let fresh = files.dir.path().join("fresh");
    let (code, stdout, stderr) = run(
        &[
            os("key"),
            os("import"),
            os("--file"),
            bad.as_os_str(),
            os("--data"),
            fresh.as_os_str(),
        ],
        &files.root_key,
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("keys[1].versions[0].material") && stderr.contains("[invalid-seed]"),
        "{stderr}"
    );
    assert!(!fresh.exists(), "a store was created for a bad file");
}

/// A signed request on zone 0 of `served`.
async fn post(served: &ServeProcess, path: &str, body: Value) -> Value {
    let mut client = Client::new(served.addr(0));
    ok(&client.post(path, body).await).clone()
}

#[test]
fn two_servers_seeded_from_one_file_decrypt_each_other_s_ciphertexts() {
    let seed = fixture("seed.json");
    let seed_arg = seed.to_str().unwrap();
    let (one, two) = (ServeFiles::new(), ServeFiles::new());
    let first = ServeProcess::start(
        one.command(&["ch-gva-2=127.0.0.1:0"], &["--seed", seed_arg]),
        1,
    );
    let second = ServeProcess::start(
        two.command(
            &["ch-gva-2=127.0.0.1:0"],
            &["--seed", seed_arg, "--engine", "redb"],
        ),
        1,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for key in [PAYMENTS, ORDERS] {
            let sealed = post(
                &first,
                &format!("/v2/kms-key/{key}/encrypt"),
                json!({"plaintext": b64(b"one to two"), "encryption-context": b64(b"ctx")}),
            )
            .await;
            let opened = post(
                &second,
                &format!("/v2/kms-key/{key}/decrypt"),
                json!({"ciphertext": sealed["ciphertext"], "encryption-context": b64(b"ctx")}),
            )
            .await;
            assert_eq!(unb64(&opened["plaintext"]), b"one to two");
            let sealed = post(
                &second,
                &format!("/v2/kms-key/{key}/encrypt"),
                json!({"plaintext": b64(b"two to one")}),
            )
            .await;
            let opened = post(
                &first,
                &format!("/v2/kms-key/{key}/decrypt"),
                json!({"ciphertext": sealed["ciphertext"]}),
            )
            .await;
            assert_eq!(unb64(&opened["plaintext"]), b"two to one");
        }
        let mut client = Client::new(first.addr(0));
        let details = ok(&client.get(&format!("/v2/kms-key/{PAYMENTS}")).await).clone();
        assert_eq!(details["source"], "exoscale-kms");
        assert_eq!(details["keylife-imported-versions"], 2);
    });
    let lines = first.stop();
    drop(second);
    assert!(
        lines.iter().all(|line| !line.contains("DSB2OC2f")),
        "{lines:?}"
    );

    // Started again with the same seed: already present, it serves.
    let again = ServeProcess::start(
        one.command(&["ch-gva-2=127.0.0.1:0"], &["--seed", seed_arg]),
        1,
    );
    let mut again = again;
    let line = again.wait_for_stderr("keys created", std::time::Duration::from_secs(10));
    assert!(line.contains("0 keys created, 2 already present"), "{line}");
    again.stop();

    // A seed whose key conflicts with the store stops the start, naming the key.
    let mut file: Value = serde_json::from_slice(&std::fs::read(&seed).unwrap()).unwrap();
    file["keys"][1]["versions"][0]["derive"] = json!("other material");
    let conflicting = one.dir.path().join("conflicting.json");
    std::fs::write(&conflicting, file.to_string()).unwrap();
    let output = one
        .command(
            &["ch-gva-2=127.0.0.1:0"],
            &["--seed", conflicting.to_str().unwrap()],
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(ORDERS) && stderr.contains("[conflict]"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "it served");
}
