//! The server against strangers and against its own credentials: one answer for every
//! authentication failure, bodies of unverified requests that hold no memory they have not
//! sent, replays refused with `refuse_replays`, and permissions per credential.

mod http_support;

use http_support::key_path;

use std::time::{Duration, Instant};

use http_support::{
    Client, KEY, SECRET, TestServer, ZONE_A, ZONE_B, b64, ok, options, problem, unix_now,
};
use hyper::header::HeaderValue;
use keylife::Limits;
use keylife::server::ServeOptions;
use keylife::server::auth::{self, Credentials};
use serde_json::{Value, json};

async fn create(client: &mut Client, name: &str, multi_zone: bool) -> String {
    let reply = client
        .post(
            "/v2/kms-key",
            json!({"name": name, "multi-zone": multi_zone}),
        )
        .await;
    ok(&reply)["id"].as_str().unwrap().to_owned()
}

/// Sends `method path` with `body` and the given `Authorization`.
async fn send_with(
    client: &mut Client,
    method: &str,
    path: &str,
    authorization: &str,
    body: &[u8],
) -> http_support::Reply {
    let header = [(
        "authorization",
        HeaderValue::from_str(authorization).unwrap(),
    )];
    client.send(method, path, &header, body.to_vec()).await
}

// ----- one answer ---------------------------------------------------------------------------

/// Unknown key, wrong signature, expired, too far ahead: the same 403, byte for byte.
#[tokio::test]
async fn the_four_authentication_failures_are_one_answer_byte_for_byte() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let (method, path, body) = ("POST", "/v2/kms-key", br#"{"name":"x"}"#);
    let now = unix_now();
    let cases = [
        (
            "unknown key",
            auth::sign("EXOnobody", SECRET, method, path, body, now + 60),
        ),
        (
            "wrong signature",
            auth::sign(KEY, b"not-the-secret", method, path, body, now + 60),
        ),
        (
            "expired",
            auth::sign(KEY, SECRET, method, path, body, now - 5),
        ),
        (
            "too far ahead",
            auth::sign(KEY, SECRET, method, path, body, now + 901),
        ),
    ];
    let mut answers = Vec::new();
    for (what, authorization) in &cases {
        let reply = send_with(&mut c, method, path, authorization, body).await;
        let detail = problem(&reply, 403, "forbidden");
        assert_eq!(detail, auth::FORBIDDEN_DETAIL, "{what}");
        let mut headers: Vec<(String, Vec<u8>)> = reply
            .headers
            .iter()
            .filter(|(name, _)| *name != "date")
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        headers.sort();
        answers.push((what, reply.status, headers, reply.body.clone()));
    }
    for answer in &answers[1..] {
        assert_eq!(
            (answer.1, &answer.2, &answer.3),
            (answers[0].1, &answers[0].2, &answers[0].3),
            "{} and {} differ",
            answer.0,
            answers[0].0
        );
    }
    // Within the default window (15 minutes) a known key signs fine; nothing was created.
    let reply = send_with(
        &mut c,
        method,
        path,
        &auth::sign(KEY, SECRET, method, path, body, now + 899),
        body,
    )
    .await;
    ok(&reply);
    assert_eq!(
        ok(&c.get("/v2/kms-key").await)["kms-keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn the_signature_validity_is_the_servers_option() {
    let options = ServeOptions {
        max_signature_validity: Duration::from_secs(60),
        ..options(keylife::server::DEFAULT_MAX_BODY_BYTES)
    };
    let server = TestServer::start_with(&[ZONE_A], Limits::default(), options).await;
    let mut c = server.client(0).await;
    let now = unix_now();
    for (ahead, status) in [(30, 200), (120, 403)] {
        let authorization = auth::sign(KEY, SECRET, "GET", "/v2/kms-key", b"", now + ahead);
        let reply = send_with(&mut c, "GET", "/v2/kms-key", &authorization, b"").await;
        assert_eq!(reply.status, status, "{ahead} s ahead: {reply}");
    }
}

// ----- strangers ----------------------------------------------------------------------------

/// The stall of the issue: 64 connections that know a key id, send a bogus signature and
/// announce 8 MiB they never send. They hold no memory, so signed requests (small, and one of
/// 1 MiB that needs the shared budget) are answered at once, none failing. Before, each such
/// connection reserved its 8 MiB of the 64 MiB budget and signed requests waited ~30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_announcing_large_bodies_do_not_stall_signed_requests() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create(&mut c, "k", false).await;
    let path = key_path(&id, "encrypt");
    let expires = unix_now() + 600;
    let mut strangers = Vec::new();
    for _ in 0..64 {
        use std::io::Write as _;
        let mut stream = std::net::TcpStream::connect(server.addrs[0]).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {} credential={KEY},expires={expires},signature=AAAA\r\nContent-Length: 8388608\r\n\r\n",
            auth::SCHEME
        );
        stream.write_all(head.as_bytes()).unwrap();
        strangers.push(stream);
    }
    // Let the server read every stranger's head.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let small = json!({"plaintext": b64(b"hello")}).to_string();
    let large = json!({"plaintext": b64(&vec![7u8; 1 << 20])}).to_string();
    let (mut latencies, mut large_max) = (Vec::new(), Duration::ZERO);
    for round in 0..404 {
        let is_large = round % 100 == 0;
        let body = if is_large { &large } else { &small };
        let started = Instant::now();
        let reply = c
            .try_signed("POST", &path, body.as_bytes())
            .await
            .unwrap_or_else(|failure| panic!("round {round}: {failure:?}"));
        let took = started.elapsed();
        if is_large {
            large_max = large_max.max(took);
        } else {
            latencies.push(took);
        }
        assert_eq!(reply.status, 200, "round {round}: {reply}");
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    let max = (*latencies.last().unwrap()).max(large_max);
    println!(
        "with 64 stalling strangers: {} small encrypts p50 {:?}, p99 {p99:?}; 1 MiB encrypts max {large_max:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    // The measured figure is printed; the bound here is far above it (a debug build on a shared
    // machine) and far below the stall it guards against (the 30 s body timeout).
    assert!(
        max < Duration::from_secs(5),
        "a signed request waited {max:?}"
    );
    drop(strangers);
}

// ----- replays ------------------------------------------------------------------------------

async fn replay_server(zones: &[&str]) -> TestServer {
    let options = ServeOptions {
        refuse_replays: true,
        ..options(keylife::server::DEFAULT_MAX_BODY_BYTES)
    };
    TestServer::start_with(zones, Limits::default(), options).await
}

fn rotation_count(reply: &http_support::Reply) -> usize {
    ok(reply)["rotations"].as_array().unwrap().len()
}

/// One captured rotate, replayed eleven times: one rotation, ten refusals.
#[tokio::test]
async fn a_replayed_rotate_is_refused() {
    let server = replay_server(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create(&mut c, "k", false).await;
    let path = key_path(&id, "rotate");
    let captured = c.authorization("POST", &path, b"");
    ok(&send_with(&mut c, "POST", &path, &captured, b"").await);
    for replay in 0..11 {
        let reply = send_with(&mut c, "POST", &path, &captured, b"").await;
        let detail = problem(&reply, 403, "request-replayed");
        assert!(detail.contains("next second"), "replay {replay}: {detail}");
    }
    assert_eq!(
        rotation_count(&c.get(&key_path(&id, "list-key-rotations")).await),
        1
    );
}

/// A captured schedule-deletion, replayed after the owner cancelled and re-enabled: refused,
/// the key stays enabled.
#[tokio::test]
async fn a_replayed_schedule_deletion_after_cancel_is_refused() {
    let server = replay_server(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create(&mut c, "k", false).await;
    let path = key_path(&id, "schedule-deletion");
    let body = br#"{"delay-days":7}"#;
    let captured = c.authorization("POST", &path, body);
    ok(&send_with(&mut c, "POST", &path, &captured, body).await);
    ok(&c.post_empty(&key_path(&id, "cancel-deletion")).await);
    // A second apart, so that enable's signature is not cancel's (same body, same second).
    ok(&c.post_empty(&key_path(&id, "enable")).await);
    let reply = send_with(&mut c, "POST", &path, &captured, body).await;
    problem(&reply, 403, "request-replayed");
    let key = c.get(&key_path(&id, "")).await;
    assert_eq!(ok(&key)["status"], "enabled", "{key}");
}

/// A disable signed for one zone and sent to the other (the signature does not cover the
/// host): the replay cache is the process's, so the second zone refuses it.
#[tokio::test]
async fn a_disable_replayed_to_another_zone_is_refused() {
    let server = replay_server(&[ZONE_A, ZONE_B]).await;
    let mut a = server.client(0).await;
    let mut b = server.client(1).await;
    let id = create(&mut a, "k", true).await;
    ok(&a
        .post(&key_path(&id, "replicate"), json!({"zone": ZONE_B}))
        .await);
    let path = key_path(&id, "disable");
    let captured = a.authorization("POST", &path, b"");
    ok(&send_with(&mut a, "POST", &path, &captured, b"").await);
    let reply = send_with(&mut b, "POST", &path, &captured, b"").await;
    problem(&reply, 403, "request-replayed");
}

/// Without `refuse_replays` (the default), identical signatures are accepted: Exoscale's clients
/// send them for identical calls in the same second. Crypto calls are never refused as replays.
#[tokio::test]
async fn identical_signatures_pass_by_default_and_crypto_is_never_a_replay() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create(&mut c, "k", false).await;
    let path = key_path(&id, "disable");
    let captured = c.authorization("POST", &path, b"");
    ok(&send_with(&mut c, "POST", &path, &captured, b"").await);
    let again = send_with(&mut c, "POST", &path, &captured, b"").await;
    assert_eq!(ok(&again)["status"], "already-applied");
    drop(server);

    let server = replay_server(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create(&mut c, "k", false).await;
    let path = key_path(&id, "encrypt");
    let body = json!({"plaintext": b64(b"x")}).to_string();
    let captured = c.authorization("POST", &path, body.as_bytes());
    for _ in 0..3 {
        ok(&send_with(&mut c, "POST", &path, &captured, body.as_bytes()).await);
    }
}

// ----- permissions --------------------------------------------------------------------------

async fn permission_server() -> TestServer {
    let credentials = Credentials::parse(&format!(
        "{KEY} {}\n\
         EXOread r operations=read\n\
         EXOapp a names=app-*\n\
         EXOfra f zones=de-*\n\
         EXOgva g zones=ch-*\n\
         EXOrepl p operations=replicate zones=ch-gva-2\n\
         EXOcrypto c operations=crypto names=app-*\n",
        std::str::from_utf8(SECRET).unwrap()
    ))
    .unwrap();
    TestServer::start_with_credentials(
        &[ZONE_A, ZONE_B],
        Limits::default(),
        options(keylife::server::DEFAULT_MAX_BODY_BYTES),
        credentials,
    )
    .await
}

async fn as_key(server: &TestServer, zone: usize, key: &str, secret: &[u8]) -> Client {
    let mut client = server.client(zone).await;
    client.key = key.to_owned();
    client.secret = secret.to_vec();
    client
}

fn denied(reply: &http_support::Reply, operation: &str) -> String {
    let detail = problem(reply, 403, "permission-denied");
    assert!(detail.contains(operation), "{detail}");
    detail
}

#[tokio::test]
async fn operations_are_granted_per_credential() {
    let server = permission_server().await;
    let mut admin = server.client(0).await;
    let id = create(&mut admin, "app-a", false).await;
    let mut read = as_key(&server, 0, "EXOread", b"r").await;
    ok(&read.get(&key_path(&id, "")).await);
    ok(&read.get("/v2/kms-key").await);
    denied(
        &read
            .post(&key_path(&id, "encrypt"), json!({"plaintext": b64(b"x")}))
            .await,
        "encrypt",
    );
    denied(
        &read.post_empty(&key_path(&id, "rotate")).await,
        "rotate-kms-key",
    );
    // Refused before anything else is checked: a body that would be a 400 is a 403.
    let bad = json!({"rotation-period": 1});
    denied(
        &read.post(&key_path(&id, "enable-key-rotation"), bad).await,
        "enable-kms-key-rotation",
    );
    // `replicate` is not an API operation: such a credential can do nothing under /v2.
    let mut repl = as_key(&server, 0, "EXOrepl", b"p").await;
    denied(&repl.get("/v2/kms-key").await, "list-kms-keys");
    denied(&repl.get(&key_path(&id, "")).await, "get-kms-key");
    // Nothing changed: no rotation happened.
    assert_eq!(
        rotation_count(&admin.get(&key_path(&id, "list-key-rotations")).await),
        0
    );
}

#[tokio::test]
async fn names_and_zones_restrict_keys() {
    let server = permission_server().await;
    let mut admin = server.client(0).await;
    let app = create(&mut admin, "app-a", false).await;
    let db = create(&mut admin, "db", false).await;
    let mut c = as_key(&server, 0, "EXOapp", b"a").await;
    // create checks the requested name.
    denied(
        &c.post("/v2/kms-key", json!({"name": "db-2"})).await,
        "create-kms-key",
    );
    let created = create(&mut c, "app-b", false).await;
    // list shows only the matching keys.
    let listed = ok(&c.get("/v2/kms-key").await)["kms-keys"].clone();
    let mut names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["app-a", "app-b"]);
    ok(&c.get(&key_path(&app, "")).await);
    ok(&c.get(&key_path(&created, "")).await);
    // A key it may not use and a key that does not exist: the same refusal (not 404).
    let missing = "019b0000-0000-7000-8000-000000000000";
    let on_db = denied(&c.get(&key_path(&db, "")).await, "get-kms-key");
    let on_missing = denied(&c.get(&key_path(missing, "")).await, "get-kms-key");
    assert_eq!(on_db.replace(&db, "ID"), on_missing.replace(missing, "ID"));
    denied(
        &c.post_empty(&key_path(&db, "disable")).await,
        "disable-kms-key",
    );
    // Refused before the body's fields are read: an out-of-range period is a 403 here too, for
    // a key it may not use and for a key that does not exist.
    for id in [db.as_str(), missing] {
        let bad = json!({"rotation-period": 1});
        let path = key_path(id, "enable-key-rotation");
        denied(&c.post(&path, bad).await, "enable-kms-key-rotation");
    }
    let bad = json!({"rotation-period": 1});
    problem(
        &c.post(&key_path(&app, "enable-key-rotation"), bad).await,
        400,
        "bad-request",
    );
    // re-encrypt needs both keys.
    let mut crypto = as_key(&server, 0, "EXOcrypto", b"c").await;
    let ciphertext = ok(&crypto
        .post(&key_path(&app, "encrypt"), json!({"plaintext": b64(b"x")}))
        .await)["ciphertext"]
        .clone();
    let re_encrypt = |to: &str| json!({"source": {"key": app, "ciphertext": ciphertext}, "destination": {"key": to}});
    denied(
        &crypto
            .post(&key_path(&app, "re-encrypt"), re_encrypt(&db))
            .await,
        "re-encrypt",
    );
    ok(&crypto
        .post(&key_path(&app, "re-encrypt"), re_encrypt(&created))
        .await);
    // zones: a credential for de-* may not act in ch-gva-2, and may in de-fra-1.
    let mut fra_in_gva = as_key(&server, 0, "EXOfra", b"f").await;
    denied(&fra_in_gva.get("/v2/kms-key").await, "list-kms-keys");
    let mut fra = as_key(&server, 1, "EXOfra", b"f").await;
    ok(&fra.get("/v2/kms-key").await);
    // A credential of ch-* may not make a key live in de-fra-1.
    let mut gva = as_key(&server, 0, "EXOgva", b"g").await;
    let multi = create(&mut gva, "multi", true).await;
    let replicate = json!({"zone": ZONE_B});
    denied(
        &gva.post(&key_path(&multi, "replicate"), replicate).await,
        "replicate-kms-key",
    );
    // HEAD is GET's operation (axum answers it with the GET handler), not a 500.
    assert_eq!(gva.signed("HEAD", "/v2/kms-key", b"").await.status, 200);
    assert_eq!(
        fra_in_gva.signed("HEAD", "/v2/kms-key", b"").await.status,
        403
    );
    // The admin credential still sees and uses everything.
    let all: Vec<Value> = ok(&admin.get("/v2/kms-key").await)["kms-keys"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(all.len(), 4);
    ok(&admin.post_empty(&key_path(&db, "disable")).await);
}

/// An answer nobody reads holds its share of the body budget until it is sent or its
/// connection goes: with an 8 MiB budget, one unread 4 MiB decrypt answer (5.6 MiB of JSON)
/// leaves too little for another, which is answered 503 `server-busy` after the budget
/// timeout; small requests still pass; once the reader goes away the budget is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_answers_hold_their_share_of_the_body_budget() {
    let options = ServeOptions {
        body_budget_bytes: 8 << 20,
        budget_timeout: Duration::from_millis(300),
        ..options(keylife::server::DEFAULT_MAX_BODY_BYTES)
    };
    let server = TestServer::start_with(&[ZONE_A], Limits::default(), options).await;
    let mut c = server.client(0).await;
    let id = create(&mut c, "k", false).await;
    let plaintext = vec![1u8; 4 << 20];
    let sealed = c
        .post(
            &key_path(&id, "encrypt"),
            json!({"plaintext": b64(&plaintext)}),
        )
        .await;
    let decrypt_body = json!({"ciphertext": ok(&sealed)["ciphertext"]}).to_string();
    let path = key_path(&id, "decrypt");

    // A client that asks for the plaintext and never reads it, with a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stalled = socket.connect(server.addrs[0]).await.unwrap();
    let mut stalled = stalled.into_std().unwrap();
    stalled.set_nonblocking(false).unwrap();
    let authorization = auth::sign(
        KEY,
        SECRET,
        "POST",
        &path,
        decrypt_body.as_bytes(),
        unix_now() + 300,
    );
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\nContent-Length: {}\r\n\r\n",
        decrypt_body.len()
    );
    {
        use std::io::Write as _;
        stalled.write_all(head.as_bytes()).unwrap();
        stalled.write_all(decrypt_body.as_bytes()).unwrap();
    }
    // Wait until its answer is made and holds the budget: then a second decrypt is refused.
    // A refusal mid-body closes the connection: each try is on a connection of its own, and a
    // try whose body the server stopped reading (a broken pipe before the answer was read) is
    // tried again until a 503 is read.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the unread answer never held the budget"
        );
        let mut c = server.client(0).await;
        let Ok(reply) = c.try_signed("POST", &path, decrypt_body.as_bytes()).await else {
            continue;
        };
        if reply.status == 503 {
            let detail = problem(&reply, 503, "server-busy");
            assert!(detail.contains("300 ms"), "{detail}");
            assert_eq!(reply.headers.get("retry-after").unwrap(), "1");
            break;
        }
        // The stalled answer was not made yet: this one went through.
        ok(&reply);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Small requests do not need the budget.
    let mut c = server.client(0).await;
    ok(&c
        .post(&key_path(&id, "encrypt"), json!({"plaintext": b64(b"x")}))
        .await);
    // The stalled reader goes: its answer is dropped and the budget is free again.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the budget was not given back");
        let mut c = server.client(0).await;
        let Ok(reply) = c.try_signed("POST", &path, decrypt_body.as_bytes()).await else {
            continue;
        };
        if reply.status == 200 {
            assert_eq!(http_support::unb64(&reply.json["plaintext"]), plaintext);
            break;
        }
        problem(&reply, 503, "server-busy");
    }
}
