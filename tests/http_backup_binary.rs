//! `keylife backup --url` against real `keylife serve` processes: the backup of a running
//! zone, fetched with an admin credential, restores (`keylife restore`) to a store that serves
//! the same keys and decrypts what was encrypted before; a credential without `admin` is
//! refused with its problem and leaves no file; the request is audited; HTTPS with --ca-file.

#![cfg(unix)]

mod http_support;

use std::path::Path;
use std::process::{Command, Output};

use http_support::{BINARY, KEY, SECRET, ServeFiles, ServeProcess, b64, ok, unb64};
use serde_json::{Value, json};

const ZONE: &str = "ch-gva-2";

/// `EXOtest` may do everything, backups included; `EXOplain` every API operation only.
fn write_credentials(files: &ServeFiles) {
    std::fs::write(
        &files.credentials,
        format!(
            "{KEY} {} operations=all,admin\nEXOplain plain-secret\n",
            String::from_utf8_lossy(SECRET)
        ),
    )
    .unwrap();
}

/// `keylife backup --url URL --out OUT [extra]`, signed as `credential` (key, secret), with no
/// `KEYLIFE_*` variable.
fn backup_url(url: &str, out: &Path, credential: Option<(&str, &str)>, extra: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args(["backup", "--url", url, "--out"])
        .arg(out)
        .args(extra)
        .env_remove("KEYLIFE_ROOT_KEY")
        .env_remove("KEYLIFE_DATA")
        .env_remove("KEYLIFE_ZONE")
        .env_remove("EXOSCALE_API_KEY")
        .env_remove("EXOSCALE_API_SECRET");
    if let Some((key, secret)) = credential {
        command
            .env("EXOSCALE_API_KEY", key)
            .env("EXOSCALE_API_SECRET", secret);
    }
    command.output().unwrap()
}

fn keylife(args: &[&str], files: &ServeFiles) -> Output {
    Command::new(BINARY)
        .args(args)
        .arg("--root-key-file")
        .arg(&files.root_key)
        .env_remove("KEYLIFE_ROOT_KEY")
        .env_remove("KEYLIFE_DATA")
        .output()
        .unwrap()
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Exit status 1; returns standard error.
#[track_caller]
fn failed(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr)
        .trim_end()
        .to_owned();
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("keylife: "), "{stderr}");
    stderr
}

/// The files of `dir` whose names start with `.keylife-backup-` (a backup being written).
fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".keylife-backup-"))
        .collect()
}

/// Every key of the zone as the API shows it (list, get, list-key-rotations), each
/// `revision.seq` moved `down`.
async fn served_keys(addr: std::net::SocketAddr, down: u64) -> Vec<Value> {
    let mut client = http_support::Client::new(addr);
    let list = client.get("/v2/kms-key").await;
    let mut keys = Vec::new();
    for key in ok(&list)["kms-keys"].as_array().unwrap() {
        let id = key["id"].as_str().unwrap();
        let mut got = ok(&client.get(&format!("/v2/kms-key/{id}")).await).clone();
        let rotations = client
            .get(&format!("/v2/kms-key/{id}/list-key-rotations"))
            .await;
        got["rotations"] = ok(&rotations).clone();
        let seq = got["revision"]["seq"].as_u64().unwrap();
        got["revision"]["seq"] = Value::from(seq - down);
        keys.push(got);
    }
    keys
}

#[test]
fn a_running_zone_backed_up_over_http_restores_to_its_state() {
    let files = ServeFiles::new();
    write_credentials(&files);
    let dir = files.dir.path();
    let log = dir.join("audit.log");
    let log_arg = log.display().to_string();
    let zone_arg = format!("{ZONE}=127.0.0.1:0");
    let served = ServeProcess::start(files.command(&[&zone_arg], &["--audit-log", &log_arg]), 1);
    let addr = served.addr(0);
    let url = served.urls[0].clone();
    assert!(url.starts_with("http://") && url.ends_with("/v2"), "{url}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (before, beta, ciphertext) = runtime.block_on(async {
        let mut client = http_support::Client::new(addr);
        let mut ids = Vec::new();
        for name in ["alpha", "beta", "gamma"] {
            let created = client.post("/v2/kms-key", json!({"name": name})).await;
            ids.push(ok(&created)["id"].as_str().unwrap().to_owned());
        }
        ok(&client
            .post_empty(&format!("/v2/kms-key/{}/rotate", ids[1]))
            .await);
        ok(&client
            .post_empty(&format!("/v2/kms-key/{}/disable", ids[2]))
            .await);
        let encrypted = client
            .post(
                &format!("/v2/kms-key/{}/encrypt", ids[1]),
                json!({"plaintext": b64(b"made before the backup")}),
            )
            .await;
        let ciphertext = ok(&encrypted)["ciphertext"].as_str().unwrap().to_owned();
        (served_keys(addr, 0).await, ids[1].clone(), ciphertext)
    });

    // A credential without `admin`: refused with the server's problem, no file left.
    let refused_out = dir.join("refused.bak");
    let stderr = failed(&backup_url(
        &url,
        &refused_out,
        Some(("EXOplain", "plain-secret")),
        &[],
    ));
    assert!(
        stderr.contains("HTTP 403") && stderr.ends_with("[permission-denied]"),
        "{stderr}"
    );
    assert!(!stderr.contains("plain-secret"), "{stderr}");
    assert!(!refused_out.exists());
    // No credential in the environment: said so.
    let stderr = failed(&backup_url(&url, &refused_out, None, &[]));
    assert!(stderr.contains("EXOSCALE_API_KEY"), "{stderr}");

    let out = dir.join("zone.bak");
    let secret = String::from_utf8_lossy(SECRET).into_owned();
    let said = succeeded(&backup_url(&url, &out, Some((KEY, &secret)), &[]));
    assert!(said.contains("zone ch-gva-2, 3 keys"), "{said}");
    assert!(partial_files(dir).is_empty(), "{:?}", partial_files(dir));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
    }
    served.stop();

    // One line per backup request, with its actor and status.
    let backups: Vec<(String, u64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["operation"] == "backup")
        .map(|line| {
            assert_eq!(line["zone"], ZONE, "{line}");
            (
                line["actor"].as_str().unwrap().to_owned(),
                line["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        backups,
        [("EXOplain".to_owned(), 403), (KEY.to_owned(), 200)]
    );

    // The file verifies under the root key and restores into the data directory the server
    // then serves again: every key as it was (2^32 revisions up), the ciphertext decrypts.
    let said = succeeded(&keylife(
        &["backup", "inspect", out.to_str().unwrap()],
        &files,
    ));
    assert!(said.contains("verifies"), "{said}");
    let data = dir.join("data");
    std::fs::rename(&data, dir.join("data.before")).unwrap();
    succeeded(&keylife(
        &[
            "restore",
            "--from",
            out.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--engine",
            "redb",
        ],
        &files,
    ));
    let served = ServeProcess::start(files.command(&[&zone_arg], &[]), 1);
    let addr = served.addr(0);
    runtime.block_on(async {
        assert_eq!(served_keys(addr, 1 << 32).await, before);
        let mut client = http_support::Client::new(addr);
        let decrypted = client
            .post(
                &format!("/v2/kms-key/{beta}/decrypt"),
                json!({"ciphertext": ciphertext}),
            )
            .await;
        assert_eq!(
            unb64(&ok(&decrypted)["plaintext"]),
            b"made before the backup"
        );
    });
    served.stop();
}

#[test]
fn backup_url_over_https_trusts_the_ca_file_only() {
    let files = ServeFiles::new();
    write_credentials(&files);
    let dir = files.dir.path();
    let ca = http_support::TestCa::new();
    let (cert, key) = ca.write(dir);
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let stranger_file = dir.join("stranger.pem");
    std::fs::write(&stranger_file, http_support::TestCa::new().ca_pem).unwrap();
    let zone_arg = format!("{ZONE}=127.0.0.1:0");
    let served = ServeProcess::start(
        files.command(
            &[&zone_arg],
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        ),
        1,
    );
    let url = served.urls[0].clone();
    assert!(url.starts_with("https://"), "{url}");
    let secret = String::from_utf8_lossy(SECRET).into_owned();
    let credential = Some((KEY, secret.as_str()));
    let out = dir.join("zone.bak");

    let stderr = failed(&backup_url(&url, &out, credential, &[]));
    assert!(stderr.contains("--ca-file"), "{stderr}");
    let stranger = stranger_file.to_str().unwrap();
    let stderr = failed(&backup_url(
        &url,
        &out,
        credential,
        &["--ca-file", stranger],
    ));
    assert!(stderr.contains("TLS"), "{stderr}");
    assert!(!out.exists() && partial_files(dir).is_empty());

    let trusted = ca_file.to_str().unwrap();
    let said = succeeded(&backup_url(&url, &out, credential, &["--ca-file", trusted]));
    assert!(said.contains("zone ch-gva-2, 0 keys"), "{said}");
    served.stop();
    let said = succeeded(&keylife(
        &["backup", "inspect", out.to_str().unwrap()],
        &files,
    ));
    assert!(said.contains("verifies"), "{said}");
}
