//! `POST /keylife/v1/backup` and its client: who may take a backup, that the answer is
//! streamed (it comes through a body budget smaller than itself, in chunks), that it restores
//! to the served state, and the signed client's errors. The command line (`keylife backup
//! --url`) against real `keylife serve` processes is in `tests/http_backup_binary.rs`.

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use http_support::{Client, KEY, SECRET, TestServer, ZONE_A, ZONE_B, b64, ok, problem};
use hyper::header::HeaderValue;
use keylife::server::BACKUP_PATH;
use keylife::server::ServeOptions;
use keylife::server::auth::Credentials;
use keylife::server::client::{self, ApiCredential, ClientError, ClientOptions};
use keylife::{CreateKey, Kms, KmsOptions, Limits, RestoreOptions, RootKey};
use serde_json::{Value, json};

/// The root key of a test server's first zone (`http_support` gives zone `i` `[10 + i; 32]`).
fn root_a() -> RootKey {
    RootKey::from_bytes(&mut [10; 32])
}

/// `EXOtest` may do everything, backups included; `EXOplain` every API operation but not
/// backups; `EXOother` backups of zone B only.
fn credentials() -> Credentials {
    Credentials::parse(&format!(
        "{KEY} {} operations=all,admin\n\
         EXOplain plain-secret\n\
         EXOother other-secret operations=admin zones={ZONE_B}\n",
        String::from_utf8_lossy(SECRET)
    ))
    .unwrap()
}

fn client_as(server: &TestServer, zone: usize, key: &str, secret: &str) -> Client {
    let mut client = Client::new(server.addrs[zone]);
    client.key = key.to_owned();
    client.secret = secret.as_bytes().to_vec();
    client
}

/// The zone's keys as the API lists them, each revision moved `down` (a restore moves its
/// origin keys 2^32 up).
fn listed(kms: &Kms, down: u64) -> Vec<Value> {
    let list = serde_json::to_value(kms.list_keys().unwrap()).unwrap();
    let mut keys = list["kms-keys"].as_array().unwrap().clone();
    for key in &mut keys {
        let seq = key["revision"]["seq"].as_u64().unwrap();
        key["revision"]["seq"] = Value::from(seq - down);
    }
    keys
}

/// Restores `backup` into a new directory and opens it, with the server's clock.
fn restored(server: &TestServer, backup: &[u8]) -> (tempfile::TempDir, Kms) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(ZONE_A);
    let options = RestoreOptions::default().clock(server.clock.clone());
    Kms::restore(&mut &backup[..], &path, root_a(), &options).unwrap();
    let kms = Kms::open(
        &path,
        root_a(),
        KmsOptions::new(ZONE_A).clock(server.clock.clone()),
    )
    .unwrap();
    (dir, kms)
}

#[tokio::test]
async fn a_backup_needs_a_signature_and_the_admin_grant() {
    let options = ServeOptions {
        // A backup changes nothing: the replay check lets the same signature through twice.
        refuse_replays: true,
        ..http_support::options(keylife::server::DEFAULT_MAX_BODY_BYTES)
    };
    let server = TestServer::start_with_credentials(
        &[ZONE_A, ZONE_B],
        Limits::default(),
        options,
        credentials(),
    )
    .await;
    server.kms[0].create_key(&CreateKey::new("k")).unwrap();
    let mut admin = server.client(0).await;

    // Unsigned: 401; signed with a wrong secret: the one 403 of authentication.
    let unsigned = admin.send("POST", BACKUP_PATH, &[], Vec::new()).await;
    problem(&unsigned, 401, "unauthorized");
    let mut wrong = client_as(&server, 0, KEY, "not-the-secret");
    problem(&wrong.post_empty(BACKUP_PATH).await, 403, "forbidden");
    // Signed, but no admin grant, or admin for another zone: permission denied, naming the
    // operation, as every other refusal of a grant.
    let mut plain = client_as(&server, 0, "EXOplain", "plain-secret");
    ok(&plain.get("/v2/kms-key").await);
    let detail = problem(
        &plain.post_empty(BACKUP_PATH).await,
        403,
        "permission-denied",
    );
    assert!(detail.contains("backup"), "{detail}");
    let mut other = client_as(&server, 0, "EXOother", "other-secret");
    problem(
        &other.post_empty(BACKUP_PATH).await,
        403,
        "permission-denied",
    );
    let mut other_b = client_as(&server, 1, "EXOother", "other-secret");
    assert_eq!(other_b.post_empty(BACKUP_PATH).await.status, 200);
    // Only POST, and no fields.
    let get = admin.get(BACKUP_PATH).await;
    problem(&get, 405, "method-not-allowed");
    let with_field = admin.post(BACKUP_PATH, json!({"zone": ZONE_A})).await;
    problem(&with_field, 400, "bad-request");

    // The same signed request twice: both answered (the replay cache holds state changes).
    let authorization = admin.authorization("POST", BACKUP_PATH, b"");
    let headers = [(
        "authorization",
        HeaderValue::from_str(&authorization).unwrap(),
    )];
    for _ in 0..2 {
        let reply = admin.send("POST", BACKUP_PATH, &headers, Vec::new()).await;
        assert_eq!(reply.status, 200, "{reply}");
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(reply.headers["cache-control"], "no-store");
        let summary = Kms::inspect_backup(&mut &reply.body[..], root_a()).unwrap();
        assert_eq!((summary.zone.as_str(), summary.keys), (ZONE_A, 1));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_large_backup_is_streamed_through_a_small_body_budget_and_restores() {
    // The bytes in flight of a streamed backup take 320 KiB of budget; the backup is about
    // twice that. An answer built whole would need its full size and be refused 503.
    let options = ServeOptions {
        body_budget_bytes: 320 * 1024,
        budget_timeout: Duration::from_millis(500),
        ..http_support::options(keylife::server::DEFAULT_MAX_BODY_BYTES)
    };
    let limits = Limits {
        key_quota: 3000,
        ..Limits::default()
    };
    let server =
        TestServer::start_with_credentials(&[ZONE_A], limits, options, credentials()).await;
    let kms = Arc::clone(&server.kms[0]);
    let ciphertext = tokio::task::spawn_blocking(move || {
        let mut ciphertext = None;
        for index in 0..2000 {
            let key = kms
                .create_key(&CreateKey::new(format!("key-{index:04}")))
                .unwrap();
            if index % 100 == 0 {
                kms.rotate_key(key.id, None).unwrap();
                ciphertext = Some((key.id, kms.encrypt(key.id, b"before", None).unwrap()));
            }
        }
        ciphertext.unwrap()
    })
    .await
    .unwrap();
    let mut admin = server.client(0).await;
    let reply = admin.post_empty(BACKUP_PATH).await;
    assert_eq!(reply.status, 200, "{reply}");
    // Whole, it would need its size beyond the free 64 KiB from a budget of 320 KiB.
    assert!(
        reply.body.len() > 3 * 320 * 1024 / 2 + 64 * 1024,
        "the backup is much larger than the budget: {} bytes",
        reply.body.len()
    );
    // Streamed: chunked, with no length known in advance.
    assert_eq!(reply.headers["transfer-encoding"], "chunked");
    assert!(reply.headers.get("content-length").is_none());

    let (_dir, back) = restored(&server, &reply.body);
    assert_eq!(listed(&back, 1 << 32), listed(&server.kms[0], 0));
    let (id, ciphertext) = ciphertext;
    let plain = back.decrypt(id, &ciphertext.ciphertext, None).unwrap();
    assert_eq!(plain.plaintext.as_ref(), b"before");

    // The budget is given back once the answer is sent: another backup goes through.
    assert_eq!(admin.post_empty(BACKUP_PATH).await.status, 200);

    // A client that stops reading holds its backup (the server's writer waits: backpressure)
    // and the zone's one backup slot: another backup is 503 meanwhile. When it goes away, the
    // backup stops and the slot is free again.
    let stalled = stalled_backup(&admin, server.addrs[0]).await;
    let busy = admin.post_empty(BACKUP_PATH).await;
    let detail = problem(&busy, 503, "server-busy");
    assert!(detail.contains("a backup of zone ch-gva-2"), "{detail}");
    drop(stalled);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = admin.post_empty(BACKUP_PATH).await;
        if reply.status == 200 {
            break;
        }
        problem(&reply, 503, "server-busy");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot of a backup whose client went away is never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// A backup request on a connection with a small receive buffer whose answer is read no
/// further than its head: the server cannot send it all.
async fn stalled_backup(client: &Client, addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::io::{Read as _, Write as _};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    let authorization = client.authorization("POST", BACKUP_PATH, b"");
    let request = format!(
        "POST {BACKUP_PATH} HTTP/1.1\r\nhost: {addr}\r\nauthorization: {authorization}\r\n\
         content-length: 0\r\n\r\n"
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = [0u8; 64];
        let read = stream.read(&mut head).unwrap();
        assert!(
            head[..read].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head[..read])
        );
        stream
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_signed_client_fetches_a_backup_and_reports_refusals() {
    let server = TestServer::start_with_credentials(
        &[ZONE_A],
        Limits::default(),
        http_support::options(keylife::server::DEFAULT_MAX_BODY_BYTES),
        credentials(),
    )
    .await;
    let created = server.kms[0].create_key(&CreateKey::new("k")).unwrap();
    let url = format!("http://{}/v2", server.addrs[0]);
    let secret = String::from_utf8_lossy(SECRET).into_owned();
    let admin = client::Client::new(
        &url,
        ApiCredential::new(KEY, &secret),
        ClientOptions::default(),
    )
    .unwrap();

    let answer = admin.send("POST", BACKUP_PATH, Vec::new()).await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut file = Vec::new();
    let written = answer
        .success()
        .await
        .unwrap()
        .copy_to(&mut file)
        .await
        .unwrap();
    assert_eq!(written, file.len() as u64);
    let summary = Kms::inspect_backup(&mut &file[..], root_a()).unwrap();
    assert_eq!(summary.keys, 1);

    // The same client signs API calls the server accepts.
    let answer = admin
        .send("GET", &format!("/v2/kms-key/{}", created.id), Vec::new())
        .await
        .unwrap();
    let body = answer
        .success()
        .await
        .unwrap()
        .bytes(1 << 20)
        .await
        .unwrap();
    let key: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(key["name"], "k");
    let body = json!({"plaintext": b64(b"x")}).to_string().into_bytes();
    let answer = admin
        .send("POST", &format!("/v2/kms-key/{}/encrypt", created.id), body)
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // A refusal: the status, the problem's code and detail.
    let plain = client::Client::new(
        &url,
        ApiCredential::new("EXOplain", "plain-secret"),
        ClientOptions::default(),
    )
    .unwrap();
    let answer = plain.send("POST", BACKUP_PATH, Vec::new()).await.unwrap();
    let error = answer.success().await.unwrap_err();
    match &error {
        ClientError::Refused {
            status,
            code,
            detail,
            ..
        } => {
            assert_eq!(*status, 403);
            assert_eq!(code.as_deref(), Some("permission-denied"));
            assert!(detail.contains("backup"), "{detail}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("HTTP 403") && message.ends_with("[permission-denied]"),
        "{message}"
    );
    assert!(!format!("{plain:?}").contains("plain-secret"));
    server.stop().await;

    // Nobody listening: the error names the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let nobody = client::Client::new(
        &format!("http://{addr}/v2"),
        ApiCredential::new(KEY, "x"),
        ClientOptions::default(),
    )
    .unwrap();
    let error = nobody
        .send("POST", BACKUP_PATH, Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

#[tokio::test]
async fn the_client_speaks_https_to_a_server_of_the_ca_it_trusts() {
    let ca = http_support::TestCa::new();
    let options = ServeOptions {
        tls: Some(ca.tls()),
        ..http_support::options(keylife::server::DEFAULT_MAX_BODY_BYTES)
    };
    let server =
        TestServer::start_with_credentials(&[ZONE_A], Limits::default(), options, credentials())
            .await;
    server.kms[0].create_key(&CreateKey::new("k")).unwrap();
    let url = format!("https://{}/v2", server.addrs[0]);
    let secret = String::from_utf8_lossy(SECRET).into_owned();
    let trusting = ClientOptions {
        ca_pem: Some(ca.ca_pem.clone().into_bytes()),
        ..ClientOptions::default()
    };
    let admin = client::Client::new(&url, ApiCredential::new(KEY, &secret), trusting).unwrap();
    let answer = admin.send("POST", BACKUP_PATH, Vec::new()).await.unwrap();
    let bytes = answer
        .success()
        .await
        .unwrap()
        .bytes(16 << 20)
        .await
        .unwrap();
    assert_eq!(
        Kms::inspect_backup(&mut &bytes[..], root_a()).unwrap().keys,
        1
    );

    // A server whose certificate is of another CA is refused in the handshake.
    let stranger = ClientOptions {
        ca_pem: Some(http_support::TestCa::new().ca_pem.into_bytes()),
        ..ClientOptions::default()
    };
    let doubting = client::Client::new(&url, ApiCredential::new(KEY, &secret), stranger).unwrap();
    let error = doubting
        .send("POST", BACKUP_PATH, Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Tls { .. }), "{error}");
    server.stop().await;
}
