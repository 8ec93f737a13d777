//! The server's audit log (`ServeOptions::audit`): one chained line per request, refused
//! authentications included, state changes answered only once their line is synced, and
//! state changes refused while the log cannot be written.

mod common;
mod http_support;

use http_support::key_path;

use std::path::Path;
use std::sync::Arc;

use http_support::{Client, KEY, SECRET, TestServer, ZONE_A, ZONE_B, b64, ok, options, problem};
use hyper::header::HeaderValue;
use keylife::server::ServeOptions;
use keylife::server::audit_log::{AuditLog, verify};
use keylife::server::auth::{self, Credentials};
use keylife::{Kms, KmsOptions, LocalLink, ManualClock};
use serde_json::json;

use common::failing::Failing;
use common::{json_lines, root};

fn credentials() -> Credentials {
    Credentials::new().with(KEY, SECRET).with_grants(
        "EXOread",
        "r",
        Credentials::parse("EXOread r operations=read")
            .unwrap()
            .grants("EXOread")
            .unwrap()
            .clone(),
    )
}

/// Two zones of one process, audited by one log at `path`.
async fn audited_server(path: &Path) -> (TestServer, Arc<AuditLog>) {
    let clock = ManualClock::new(http_support::start_time());
    let link = LocalLink::new();
    let mut zones = Vec::new();
    for zone in [ZONE_A, ZONE_B] {
        let options = KmsOptions::new(zone)
            .clock(clock.clone())
            .link(link.clone());
        let kms = Arc::new(Kms::open_in_memory(root(3), options).unwrap());
        link.attach(&kms);
        zones.push(kms);
    }
    let log = AuditLog::open(path, &root(3), zones.clone()).unwrap();
    let options = ServeOptions {
        audit: Some(Arc::clone(&log)),
        ..options(keylife::server::DEFAULT_MAX_BODY_BYTES)
    };
    let server = TestServer::serve_zones(zones, clock, credentials(), options).await;
    (server, log)
}

/// What one audit line should say: operation, outcome, status, actor, auth reason class.
type Expected = (
    &'static str,
    &'static str,
    u16,
    Option<&'static str>,
    Option<&'static str>,
);

/// Every one of the 16 operations, a refused authentication of each kind that reaches the
/// server, a permission refusal and a not-found: one line each, in order, chained, with who
/// and what, and nothing of the request's secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_writes_one_chained_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (server, log) = audited_server(&path).await;
    let mut c = server.client(0).await;
    let plaintext = b"very secret plaintext";
    let context = b"secret context";

    // (operation, outcome, status, actor, auth) expected of each request, in order.
    let mut expected: Vec<Expected> = Vec::new();
    let mut call =
        |operation, outcome, status| expected.push((operation, outcome, status, Some(KEY), None));
    let created = c
        .post("/v2/kms-key", json!({"name": "k", "multi-zone": true}))
        .await;
    let id = ok(&created)["id"].as_str().unwrap().to_owned();
    call("create-kms-key", "ok", 200);
    let other = c.post("/v2/kms-key", json!({"name": "other"})).await;
    let other = ok(&other)["id"].as_str().unwrap().to_owned();
    call("create-kms-key", "ok", 200);
    ok(&c.get("/v2/kms-key").await);
    call("list-kms-keys", "ok", 200);
    ok(&c.get(&key_path(&id, "")).await);
    call("get-kms-key", "ok", 200);
    ok(&c.post_empty(&key_path(&id, "rotate")).await);
    call("rotate-kms-key", "ok", 200);
    ok(&c.get(&key_path(&id, "list-key-rotations")).await);
    call("list-kms-key-rotations", "ok", 200);
    ok(&c.post_empty(&key_path(&id, "disable-key-rotation")).await);
    call("disable-kms-key-rotation", "ok", 200);
    ok(&c
        .post(
            &key_path(&id, "enable-key-rotation"),
            json!({"rotation-period": 90}),
        )
        .await);
    call("enable-kms-key-rotation", "ok", 200);
    let sealed = c
        .post(
            &key_path(&id, "encrypt"),
            json!({"plaintext": b64(plaintext), "encryption-context": b64(context)}),
        )
        .await;
    let ciphertext = ok(&sealed)["ciphertext"].as_str().unwrap().to_owned();
    call("encrypt", "ok", 200);
    ok(&c
        .post(
            &key_path(&id, "decrypt"),
            json!({"ciphertext": ciphertext, "encryption-context": b64(context)}),
        )
        .await);
    call("decrypt", "ok", 200);
    let moved = json!({
        "source": {"key": id, "ciphertext": ciphertext, "encryption-context": b64(context)},
        "destination": {"key": other},
    });
    ok(&c.post(&key_path(&id, "re-encrypt"), moved).await);
    call("re-encrypt", "ok", 200);
    ok(&c
        .post(
            &key_path(&id, "generate-data-key"),
            json!({"key-spec": "AES-256"}),
        )
        .await);
    call("generate-data-key", "ok", 200);
    ok(&c
        .post(&key_path(&id, "replicate"), json!({"zone": ZONE_B}))
        .await);
    call("replicate-kms-key", "ok", 200);
    ok(&c.post_empty(&key_path(&id, "disable")).await);
    call("disable-kms-key", "ok", 200);
    ok(&c.post_empty(&key_path(&id, "enable")).await);
    call("enable-kms-key", "ok", 200);
    ok(&c
        .post(
            &key_path(&id, "schedule-deletion"),
            json!({"delay-days": 7}),
        )
        .await);
    call("schedule-kms-key-deletion", "ok", 200);
    ok(&c.post_empty(&key_path(&id, "cancel-deletion")).await);
    call("cancel-kms-key-deletion", "ok", 200);
    // A refusal by the lifecycle: its code.
    let missing = "019b0000-0000-7000-8000-000000000000";
    problem(&c.get(&key_path(missing, "")).await, 404, "key-not-found");
    call("get-kms-key", "key-not-found", 404);

    // Refused authentications: the key the header named and the reason class.
    let mut stranger = server.client(0).await;
    stranger.key = "EXOstranger".to_owned();
    problem(&stranger.get("/v2/kms-key").await, 403, "forbidden");
    expected.push((
        "list-kms-keys",
        "forbidden",
        403,
        Some("EXOstranger"),
        Some("unknown-key"),
    ));
    let mut wrong = server.client(0).await;
    wrong.secret = b"wrong".to_vec();
    problem(&wrong.get("/v2/kms-key").await, 403, "forbidden");
    expected.push((
        "list-kms-keys",
        "forbidden",
        403,
        Some(KEY),
        Some("bad-signature"),
    ));
    let expired = auth::sign(
        KEY,
        SECRET,
        "GET",
        "/v2/kms-key",
        b"",
        http_support::unix_now() - 10,
    );
    let header = [("authorization", HeaderValue::from_str(&expired).unwrap())];
    problem(
        &c.send("GET", "/v2/kms-key", &header, Vec::new()).await,
        403,
        "forbidden",
    );
    expected.push((
        "list-kms-keys",
        "forbidden",
        403,
        Some(KEY),
        Some("expired"),
    ));
    problem(
        &c.send("GET", "/v2/kms-key", &[], Vec::new()).await,
        401,
        "unauthorized",
    );
    expected.push(("list-kms-keys", "unauthorized", 401, None, Some("missing")));
    // A permission refusal: who was refused what.
    let mut reader = server.client(0).await;
    reader.key = "EXOread".to_owned();
    reader.secret = b"r".to_vec();
    problem(
        &reader.post_empty(&key_path(&id, "rotate")).await,
        403,
        "permission-denied",
    );
    expected.push((
        "rotate-kms-key",
        "permission-denied",
        403,
        Some("EXOread"),
        None,
    ));

    // Every line is on disk once the log's last line is synced (appended after ours).
    log.synced(log.append(filler()).unwrap()).await.unwrap();
    let lines = json_lines(&path);
    assert_eq!(lines[0]["operation"], "audit-open");
    let requests = &lines[1..lines.len() - 1];
    assert_eq!(requests.len(), expected.len(), "{requests:#?}");
    for (line, (operation, outcome, status, actor, auth)) in requests.iter().zip(&expected) {
        let what = format!("{line}");
        assert_eq!(line["operation"], *operation, "{what}");
        assert_eq!(line["outcome"], *outcome, "{what}");
        assert_eq!(line["status"], *status, "{what}");
        assert_eq!(line["actor"].as_str(), *actor, "{what}");
        assert_eq!(line["auth"].as_str(), *auth, "{what}");
        assert_eq!(line["zone"], ZONE_A, "{what}");
        if operation.ends_with("kms-key") && *outcome == "ok" && !operation.starts_with("list") {
            assert!(line["key"].is_string(), "{what}");
        }
    }
    // State changes carry the key's revision after them.
    let rotate = requests
        .iter()
        .find(|l| l["operation"] == "rotate-kms-key")
        .unwrap();
    assert!(rotate["revision"].as_u64().unwrap() >= 2, "{rotate}");
    // Nothing of what the requests carried.
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [
        b64(plaintext),
        b64(context),
        ciphertext.clone(),
        String::from_utf8_lossy(SECRET).into_owned(),
    ] {
        assert!(!text.contains(&secret), "the log holds {secret}");
    }
    // The chain verifies, with each zone's recorded head.
    let heads: Vec<(String, keylife::AuditHead)> = server
        .kms
        .iter()
        .map(|kms| (kms.zone().to_owned(), kms.audit_head().unwrap().unwrap()))
        .collect();
    let verified = verify(&root(3), std::slice::from_ref(&path), &heads).unwrap();
    assert_eq!(verified.lines, lines.len() as u64);
}

/// A line of the test's own, to wait for everything before it.
fn filler() -> keylife::server::audit_log::AuditLine {
    keylife::server::audit_log::AuditLine {
        time: jiff::Timestamp::now(),
        zone: ZONE_A.to_owned(),
        operation: "test-marker".to_owned(),
        key: None,
        outcome: "ok".to_owned(),
        status: 200,
        revision: None,
        actor: None,
        auth: None,
    }
}

/// A zone over a backend that can be made to fail, with an audit log at `path` and serve
/// options that write to it.
struct FailingZone {
    backend: Arc<Failing>,
    clock: ManualClock,
    kms: Arc<Kms>,
    log: Arc<AuditLog>,
    options: ServeOptions,
}

impl FailingZone {
    fn new(path: &std::path::Path) -> FailingZone {
        let backend = Arc::new(Failing::default());
        let clock = ManualClock::new(http_support::start_time());
        let kms = Arc::new(
            Kms::with_backend(
                backend.clone(),
                root(3),
                KmsOptions::new(ZONE_A).clock(clock.clone()),
            )
            .unwrap(),
        );
        let log = AuditLog::open(path, &root(3), vec![Arc::clone(&kms)]).unwrap();
        let options = ServeOptions {
            audit: Some(Arc::clone(&log)),
            ..options(keylife::server::DEFAULT_MAX_BODY_BYTES)
        };
        FailingZone {
            backend,
            clock,
            kms,
            log,
            options,
        }
    }
}

/// While the log cannot be written (its head cannot be recorded: the store's disk is full),
/// state changes are refused before they run; reads and crypto are served; a reopen ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_fail_closed_while_the_log_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let FailingZone {
        backend,
        clock,
        kms,
        log,
        options,
    } = FailingZone::new(&path);
    let server = TestServer::serve_zones(vec![kms], clock, credentials(), options).await;
    let mut c: Client = server.client(0).await;
    let created = c.post("/v2/kms-key", json!({"name": "k"})).await;
    let id = ok(&created)["id"].as_str().unwrap().to_owned();

    // A read while the disk is full: answered, but its group cannot record the head.
    backend.fail(true);
    ok(&c.get(&key_path(&id, "")).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.is_healthy() {
        assert!(std::time::Instant::now() < deadline, "the log never failed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    backend.fail(false);
    // A state change is refused before it runs: nothing changes.
    let refused = c.post_empty(&key_path(&id, "rotate")).await;
    let detail = problem(&refused, 503, "audit-unavailable");
    assert!(detail.contains("nothing was changed"), "{detail}");
    let rotations = c.get(&key_path(&id, "list-key-rotations")).await;
    assert_eq!(ok(&rotations)["rotations"].as_array().unwrap().len(), 0);
    // Crypto is served.
    ok(&c
        .post(&key_path(&id, "encrypt"), json!({"plaintext": b64(b"x")}))
        .await);
    // Reopened (SIGHUP), the log takes state changes again.
    log.reopen().unwrap();
    ok(&c.post_empty(&key_path(&id, "rotate")).await);
    let rotations = c.get(&key_path(&id, "list-key-rotations")).await;
    assert_eq!(ok(&rotations)["rotations"].as_array().unwrap().len(), 1);
    verify(&root(3), &[path], &[]).unwrap();
}

/// A backup hands out the whole zone: it has its line, as its actor's, and while the log
/// cannot be written it is refused like a state change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_audited_and_refused_while_the_log_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let FailingZone {
        backend,
        clock,
        kms,
        log,
        options,
    } = FailingZone::new(&path);
    let admin = Credentials::parse(&format!(
        "{KEY} {} operations=all,admin",
        String::from_utf8_lossy(SECRET)
    ))
    .unwrap();
    let server = TestServer::serve_zones(vec![kms], clock, admin, options).await;
    let mut c: Client = server.client(0).await;
    let backup = keylife::server::BACKUP_PATH;
    assert_eq!(c.post_empty(backup).await.status, 200);

    backend.fail(true);
    ok(&c.get("/v2/kms-key").await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.is_healthy() {
        assert!(std::time::Instant::now() < deadline, "the log never failed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    backend.fail(false);
    let refused = c.post_empty(backup).await;
    let detail = problem(&refused, 503, "audit-unavailable");
    assert!(detail.contains("backups are refused"), "{detail}");
    log.reopen().unwrap();
    assert_eq!(c.post_empty(backup).await.status, 200);
    server.stop().await;

    let backups: Vec<String> = json_lines(&path)
        .iter()
        .filter(|line| line["operation"] == "backup")
        .map(|line| format!("{} {} {}", line["actor"], line["status"], line["outcome"]))
        .collect();
    assert_eq!(
        backups,
        [
            format!("\"{KEY}\" 200 \"ok\""),
            format!("\"{KEY}\" 200 \"ok\"")
        ],
        "the refused backup's line is lost with the log; the others are there"
    );
}

/// Clients that close their connection right after sending a change: the change is still
/// applied (it was handed to the store) and every applied change still has its line, since the
/// request and its line run in a task the connection does not cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_does_not_lose_the_line_of_its_change() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (server, log) = audited_server(&path).await;
    for n in 0..20 {
        let body = format!(r#"{{"name":"gone-{n}"}}"#);
        let authorization = auth::sign(
            KEY,
            SECRET,
            "POST",
            "/v2/kms-key",
            body.as_bytes(),
            http_support::unix_now() + 60,
        );
        let mut stream = std::net::TcpStream::connect(server.addrs[0]).unwrap();
        let request = format!(
            "POST /v2/kms-key HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        drop(stream);
    }
    // Wait until the changes settle, then for every line appended before a marker.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let created = loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let created = server.kms[0].list_keys().unwrap().kms_keys.len();
        let again = {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            server.kms[0].list_keys().unwrap().kms_keys.len()
        };
        // Under load the first creates can take longer than these two looks: zero is not
        // settled yet.
        if created == again && created > 0 {
            break created;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the creates never settled, or none reached the store ({created})"
        );
    };
    log.synced(log.append(filler()).unwrap()).await.unwrap();
    let lines = json_lines(&path);
    let create_lines = lines
        .iter()
        .filter(|line| line["operation"] == "create-kms-key" && line["outcome"] == "ok")
        .count();
    assert_eq!(create_lines, created, "every key made has its line");
}
