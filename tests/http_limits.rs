//! What keeps an exposed server up: the connection limit across zones (one more connection is
//! closed at once, reported once per interval, not per connection), the write timeout (a
//! client that does not read its answers is dropped), and the unsigned health check.

mod common;
mod http_support;

use common::failing::Failing;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_support::{
    Client, KEY, SECRET, TestServer, ZONE_A, ZONE_B, closed_by_server, ok, options, problem,
    raw_status, unix_now,
};
use keylife::server::auth::{Credentials, sign};
use keylife::server::{DEFAULT_MAX_BODY_BYTES, Event, Events, Keyring, ServeOptions};
use keylife::{CreateKey, Kms, KmsOptions, Limits, RootKey};

/// The `ConnectionsRefused` reports a server made: (count, limit).
type Reports = Arc<Mutex<Vec<(u64, usize)>>>;

/// Events that record the `ConnectionsRefused` reports.
fn refusals() -> (Events, Reports) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let events = Events::new(move |event| {
        if let Event::ConnectionsRefused { count, limit } = event {
            sink.lock().unwrap().push((*count, *limit));
        }
    });
    (events, seen)
}

const HEALTH_CLOSE: &[u8] =
    b"GET /keylife/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

/// Whether a new connection to `addr` is served: a health check with `connection: close`
/// answered 200 (`true`), or the connection closed without an answer (`false`).
async fn served(addr: SocketAddr) -> bool {
    let answer = closed_by_server(addr, HEALTH_CLOSE, Duration::from_secs(5))
        .await
        .unwrap_or_else(|answer| panic!("neither served nor closed: {answer:?}"));
    match raw_status(&answer) {
        Some(200) => true,
        None if answer.is_empty() => false,
        _ => panic!("unexpected answer {:?}", String::from_utf8_lossy(&answer)),
    }
}

/// Waits up to `wait` for a new connection to `addr` to be served; how long it took.
async fn until_served(addr: SocketAddr, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < wait {
        if served(addr).await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once_and_reported_once() {
    let (events, seen) = refusals();
    let server = TestServer::start_with(
        &[ZONE_A, ZONE_B],
        Limits::default(),
        ServeOptions {
            max_connections: 4,
            events,
            ..options(DEFAULT_MAX_BODY_BYTES)
        },
    )
    .await;
    // Four connections, on both zones: the limit is the process's, not a zone's.
    let mut clients = Vec::new();
    for zone in [0, 1, 0, 1] {
        let mut client = server.client(zone).await;
        ok(&client.get("/v2/kms-key").await);
        clients.push(client);
    }
    // A fifth, on either zone, is closed at once without an answer.
    for zone in 0..2 {
        let started = Instant::now();
        assert!(
            !served(server.addrs[zone]).await,
            "a fifth connection served"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let mut fifth = Client::new(server.addrs[0]);
    assert!(fifth.try_signed("GET", "/v2/kms-key", b"").await.is_err());
    // The open connections still work.
    for client in &mut clients {
        ok(&client.get("/v2/kms-key").await);
    }
    // Three refusals, one report: the first, at once.
    assert_eq!(*seen.lock().unwrap(), [(1, 4)]);

    drop(clients);
    let waited = until_served(server.addrs[1], Duration::from_secs(10)).await;
    assert!(
        waited.is_some(),
        "no connection served after the four closed"
    );
    let mut client = Client::new(server.addrs[0]);
    ok(&client.get("/v2/kms-key").await);
    server.stop().await;
    // The rest is reported when the server stops (within 10 s of the first: no report between).
    let seen = seen.lock().unwrap().clone();
    let total: u64 = seen.iter().map(|(count, _)| count).sum();
    assert!(total >= 3, "{seen:?}");
    assert!(seen.len() <= 3, "one report per refusal? {seen:?}");
}

/// A signed HTTP/1.1 encrypt request of `plaintext_bytes` bytes for key `id`, raw.
fn encrypt_request(id: &str, plaintext_bytes: usize) -> Vec<u8> {
    use base64::Engine as _;
    let plaintext = vec![0x5a; plaintext_bytes];
    let body = serde_json::json!({
        "plaintext": base64::engine::general_purpose::STANDARD.encode(&plaintext),
    })
    .to_string();
    let path = format!("/v2/kms-key/{id}/encrypt");
    let authorization = sign(
        KEY,
        SECRET,
        "POST",
        &path,
        body.as_bytes(),
        unix_now() + 300,
    );
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: {authorization}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answers_is_dropped_after_the_write_timeout() {
    let write_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(
        &[ZONE_A],
        Limits::default(),
        ServeOptions {
            // One slot for the client below, one for the stalled connection: a new connection
            // is served only once the stalled one is gone.
            max_connections: 2,
            write_timeout,
            ..options(DEFAULT_MAX_BODY_BYTES)
        },
    )
    .await;
    let addr = server.addrs[0];
    let mut client = server.client(0).await;
    let created = client
        .post("/v2/kms-key", serde_json::json!({"name": "big"}))
        .await;
    let id = ok(&created)["id"].as_str().unwrap().to_owned();

    // Pipelined requests for about 8 MB of answers, on a socket with a small receive buffer
    // that is never read. It stays open (held here) until the end of the test.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stalled = socket.connect(addr).await.unwrap().into_std().unwrap();
    stalled.set_nonblocking(false).unwrap();
    stalled
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stalled.try_clone().unwrap();
    let requests: Vec<Vec<u8>> = (0..6).map(|_| encrypt_request(&id, 1 << 20)).collect();
    let started = Instant::now();
    let writing = std::thread::spawn(move || {
        use std::io::Write as _;
        for request in requests {
            // The server stops reading when it cannot write: this blocks, then fails when
            // the server drops the connection.
            if writer.write_all(&request).is_err() {
                break;
            }
        }
    });
    // While the stalled connection holds its slot, a new one is closed at once.
    assert!(
        !served(addr).await,
        "served while the stalled connection is open"
    );
    let waited = until_served(addr, Duration::from_secs(20)).await;
    assert!(
        waited.is_some(),
        "the connection that reads nothing still holds its slot {:?} after it started \
         (write timeout {write_timeout:?})",
        started.elapsed()
    );
    // The connection was dropped, not merely idle: its socket sees the end.
    use std::io::Read as _;
    let mut stalled = stalled;
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut drained = 0usize;
    let mut buffer = vec![0u8; 1 << 16];
    let closed = loop {
        match stalled.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => drained += n,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "the stalled connection is still open ({drained} bytes read)"
    );
    let _ = writing.join();
    ok(&client.get("/v2/kms-key").await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_unsigned_on_every_zone_and_lists_the_zones() {
    let server = TestServer::start(&[ZONE_A, ZONE_B]).await;
    for zone in 0..2 {
        let mut client = server.client(zone).await;
        let reply = client
            .send("GET", "/keylife/v1/health", &[], Vec::new())
            .await;
        assert_eq!(
            *ok(&reply),
            serde_json::json!({"status": "ok", "zones": [ZONE_A, ZONE_B]}),
            "{reply}"
        );
        assert_eq!(reply.headers["cache-control"], "no-store");
        let reply = client
            .send("POST", "/keylife/v1/health", &[], Vec::new())
            .await;
        problem(&reply, 405, "method-not-allowed");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_naming_a_zone_whose_store_failed() {
    let failing = Arc::new(Failing::default());
    let healthy = Arc::new(
        Kms::open_in_memory(RootKey::from_bytes(&mut [1; 32]), KmsOptions::new(ZONE_A)).unwrap(),
    );
    let broken = Arc::new(
        Kms::with_backend(
            failing.clone(),
            RootKey::from_bytes(&mut [2; 32]),
            KmsOptions::new(ZONE_B),
        )
        .unwrap(),
    );
    let mut zones = Vec::new();
    let mut addrs = Vec::new();
    for kms in [&healthy, &broken] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        zones.push((Arc::clone(kms), listener));
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(keylife::server::serve(
        zones,
        Arc::new(Keyring::new(Credentials::new().with(KEY, SECRET))),
        options(DEFAULT_MAX_BODY_BYTES),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = Client::connect(addrs[0]).await;
    let reply = client
        .send("GET", "/keylife/v1/health", &[], Vec::new())
        .await;
    ok(&reply);

    failing.fail_after_applying();
    let error = broken.create_key(&CreateKey::new("lost")).unwrap_err();
    assert_eq!(error.code(), "not-durable");
    for addr in &addrs {
        let mut client = Client::connect(*addr).await;
        let reply = client
            .send("GET", "/keylife/v1/health", &[], Vec::new())
            .await;
        let detail = problem(&reply, 503, "unavailable");
        assert_eq!(detail, format!("zone {ZONE_B} cannot serve"), "{reply}");
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
