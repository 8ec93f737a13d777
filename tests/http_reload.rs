//! SIGHUP makes `keylife serve` read its credentials file again: a good file is in force for
//! the next request (the old keys are refused), a bad one is refused with one log line and
//! the credentials in force are kept.

#![cfg(unix)]

mod http_support;

use std::time::{Duration, Instant};

use http_support::{Client, KEY, Reply, ServeFiles, ServeProcess, ok, problem};

/// A signed `GET /v2/kms-key` by `key`/`secret` on a new connection.
async fn list_as(addr: std::net::SocketAddr, key: &str, secret: &str) -> Reply {
    let mut client = Client::new(addr);
    client.key = key.to_owned();
    client.secret = secret.as_bytes().to_vec();
    client.get("/v2/kms-key").await
}

#[test]
fn sighup_reloads_the_credentials_and_keeps_them_when_the_file_is_bad() {
    let files = ServeFiles::new();
    let mut served = ServeProcess::start(files.command(&["ch-gva-2=127.0.0.1:0"], &[]), 1);
    let addr = served.addr(0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = String::from_utf8_lossy(http_support::SECRET).into_owned();
    runtime.block_on(async {
        ok(&list_as(addr, KEY, &secret).await);
        problem(
            &list_as(addr, "EXOnew", "new-secret").await,
            403,
            "forbidden",
        );
    });

    // A new file: the new key in, the old one out.
    std::fs::write(
        &files.credentials,
        "# rotated\nEXOnew new-secret\nEXOother other-secret\n",
    )
    .unwrap();
    let started = Instant::now();
    served.signal("HUP");
    let line = served.wait_for_stderr("SIGHUP", Duration::from_secs(10));
    assert!(
        line.contains("2 credential(s) loaded from")
            && line.contains(&files.credentials.display().to_string()),
        "{line}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    runtime.block_on(async {
        ok(&list_as(addr, "EXOnew", "new-secret").await);
        ok(&list_as(addr, "EXOother", "other-secret").await);
        problem(&list_as(addr, KEY, &secret).await, 403, "forbidden");
    });

    // A bad file: refused, the credentials in force are kept.
    std::fs::write(&files.credentials, "EXObroken\n").unwrap();
    served.signal("HUP");
    let line = served.wait_for_stderr("SIGHUP", Duration::from_secs(10));
    assert!(
        line.contains("the credentials are unchanged") && line.contains("line 1"),
        "{line}"
    );
    // A missing file too.
    std::fs::remove_file(&files.credentials).unwrap();
    served.signal("HUP");
    let line = served.wait_for_stderr("SIGHUP", Duration::from_secs(10));
    assert!(
        line.contains("the credentials are unchanged") && line.contains("cannot read"),
        "{line}"
    );
    runtime.block_on(async {
        ok(&list_as(addr, "EXOnew", "new-secret").await);
        problem(&list_as(addr, KEY, &secret).await, 403, "forbidden");
        problem(&list_as(addr, "EXObroken", "").await, 403, "forbidden");
    });
    // Still serving, and it stops cleanly.
    served.stop();
}
