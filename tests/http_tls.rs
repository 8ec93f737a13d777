//! HTTPS: with `ServeOptions::tls` (or `keylife serve --tls-cert --tls-key`) every zone serves
//! HTTP/1.1 over TLS and nothing else; the handshake has a timeout; bad certificate or key
//! files stop the binary before it serves, naming the file.

mod http_support;

use std::time::{Duration, Instant};

use http_support::{
    ServeFiles, ServeProcess, TestCa, TestServer, TlsClient, ZONE_A, ZONE_B, closed_by_server, ok,
    options, raw_status,
};
use keylife::Limits;
use keylife::server::{DEFAULT_MAX_BODY_BYTES, ServeOptions, Tls};

fn tls_options(ca: &TestCa) -> ServeOptions {
    ServeOptions {
        tls: Some(ca.tls()),
        ..options(DEFAULT_MAX_BODY_BYTES)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_zone_serves_https_with_alpn_http_1_1() {
    let ca = TestCa::new();
    let server =
        TestServer::start_with(&[ZONE_A, ZONE_B], Limits::default(), tls_options(&ca)).await;
    for zone in 0..2 {
        let mut client = TlsClient::connect(server.addrs[zone], &ca).await.unwrap();
        assert_eq!(client.alpn.as_deref(), Some(&b"http/1.1"[..]));
        let created = client
            .request("POST", "/v2/kms-key", br#"{"name":"over-tls"}"#, true)
            .await
            .unwrap();
        let id = ok(&created)["id"].as_str().unwrap().to_owned();
        // The same connection stays usable (keep-alive over TLS).
        let sealed = client
            .request(
                "POST",
                &format!("/v2/kms-key/{id}/encrypt"),
                br#"{"plaintext":"aGVsbG8="}"#,
                true,
            )
            .await
            .unwrap();
        assert!(ok(&sealed)["ciphertext"].is_string(), "{sealed}");
        let health = client
            .request("GET", "/keylife/v1/health", b"", false)
            .await
            .unwrap();
        assert_eq!(
            ok(&health)["zones"],
            serde_json::json!([ZONE_A, ZONE_B]),
            "{health}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let ca = TestCa::new();
    let server = TestServer::start_with(&[ZONE_A], Limits::default(), tls_options(&ca)).await;
    let request = b"GET /keylife/v1/health HTTP/1.1\r\nhost: x\r\n\r\n";
    let answer = closed_by_server(server.addrs[0], request, Duration::from_secs(10))
        .await
        .expect("the server closes a connection that does not speak TLS");
    assert_eq!(raw_status(&answer), None, "{answer:?}");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "an HTTP answer on the TLS port: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // A TLS client still gets served afterwards.
    let mut client = TlsClient::connect(server.addrs[0], &ca).await.unwrap();
    let listed = client
        .request("GET", "/v2/kms-key", b"", true)
        .await
        .unwrap();
    ok(&listed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_completes_its_handshake_is_dropped_after_the_timeout() {
    let ca = TestCa::new();
    let server = TestServer::start_with(
        &[ZONE_A],
        Limits::default(),
        ServeOptions {
            tls_handshake_timeout: Duration::from_secs(1),
            ..tls_options(&ca)
        },
    )
    .await;
    let started = Instant::now();
    // Connects and says nothing: without the handshake timeout it would stay open.
    let read = closed_by_server(server.addrs[0], b"", Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert!(
        read.is_ok(),
        "still open after 15 s without a handshake (timeout 1 s)"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed before the timeout: {took:?}"
    );
    server.stop().await;
}

#[test]
fn bad_certificate_or_key_files_are_refused_naming_the_file() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.write(dir.path());
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let missing = dir.path().join("missing.pem");

    assert!(Tls::from_pem_files(&cert, &key).is_ok());
    let error = |cert: &std::path::Path, key: &std::path::Path| {
        Tls::from_pem_files(cert, key).unwrap_err().to_string()
    };
    let text = error(&missing, &key);
    assert!(text.contains(&missing.display().to_string()), "{text}");
    let text = error(&garbage, &key);
    assert!(
        text.contains(&garbage.display().to_string()) && text.contains("no certificate"),
        "{text}"
    );
    let text = error(&cert, &garbage);
    assert!(
        text.contains(&garbage.display().to_string()) && text.contains("no private key"),
        "{text}"
    );
    // A key in the certificate's place, a certificate in the key's.
    let text = error(&key, &cert);
    assert!(text.contains(&key.display().to_string()), "{text}");
    let text = error(&cert, &other_key);
    assert!(
        text.contains("does not hold the private key")
            && text.contains(&cert.display().to_string()),
        "{text}"
    );
    // No error quotes the key.
    let body_line = ca.key_pem.lines().nth(1).unwrap();
    for text in [
        error(&cert, &other_key),
        error(&key, &cert),
        error(&cert, &garbage),
    ] {
        assert!(!text.contains(body_line), "{text}");
    }
    assert!(!format!("{:?}", ca.tls()).contains(body_line));
}

/// `keylife serve` with TLS flags as given; its exit status and standard error (it must not
/// serve).
fn refused(files: &ServeFiles, extra: &[&str]) -> (i32, String) {
    let output = files
        .command(&["ch-gva-2=127.0.0.1:0"], extra)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.stdout.is_empty(),
        "it served: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_serves_https_with_both_flags_and_refuses_one_or_bad_files() {
    let ca = TestCa::new();
    let files = ServeFiles::new();
    let (cert, key) = ca.write(files.dir.path());
    // A key file others may read: served, with a warning.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    let (code, stderr) = refused(&files, &["--tls-cert", cert]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let (code, stderr) = refused(&files, &["--tls-key", key]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let garbage = files.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "nothing\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    let (code, stderr) = refused(&files, &["--tls-cert", cert, "--tls-key", garbage]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("the TLS key file {garbage}")),
        "{stderr}"
    );

    let mut served = ServeProcess::start(
        files.command(
            &["ch-gva-2=127.0.0.1:0", "de-fra-1=127.0.0.1:0"],
            &["--tls-cert", cert, "--tls-key", key],
        ),
        2,
    );
    #[cfg(unix)]
    {
        let warning = served.wait_for_stderr("warning", Duration::from_secs(10));
        assert!(
            warning.contains(&format!("the TLS key file {key} has mode 644")),
            "{warning}"
        );
    }
    for url in &served.urls {
        assert!(
            url.starts_with("https://127.0.0.1:") && url.ends_with("/v2"),
            "{url}"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for zone in 0..2 {
            let mut client = TlsClient::connect(served.addr(zone), &ca).await.unwrap();
            ok(&client
                .request("POST", "/v2/kms-key", br#"{"name":"k"}"#, true)
                .await
                .unwrap());
            let request = b"GET /v2/kms-key HTTP/1.1\r\nhost: x\r\n\r\n";
            let answer = closed_by_server(served.addr(zone), request, Duration::from_secs(10))
                .await
                .expect("plain HTTP is closed");
            assert_eq!(raw_status(&answer), None, "{answer:?}");
        }
    });
    served.stop();
}
