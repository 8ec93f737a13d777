//! The HTTP server (`keylife::server`) driven over loopback with signed requests: every
//! operation of lifecycle.md with its JSON, every error with its HTTP status and problem
//! document, authentication, malformed requests, body limits, and random requests that must
//! never break the server. Each test starts its own server on free ports, with in-memory zones
//! on a manual clock.

mod http_support;

use http_support::{key_path, seq};

use std::cell::RefCell;
use std::time::Duration;

use hyper::header::HeaderValue;
use keylife::Limits;
use keylife::server::auth;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

use http_support::{
    Client, Reply, SIGNED_STATUSES, TestServer, ZONE_A, ZONE_B, b64, bad_request, check_shape,
    days, ok, options, problem, problem_error, raw_exchange, raw_status, start_time, ts, unb64,
    unix_now,
};

/// A well-formed UUID that names no key.
const NO_SUCH_KEY: &str = "0190b6a4-2a3c-7d4e-8f00-112233445566";

async fn create(client: &mut Client, body: Value) -> Value {
    let reply = client.post("/v2/kms-key", body).await;
    let created = ok(&reply).clone();
    check_shape("create-kms-key", &created);
    created
}

async fn create_id(client: &mut Client, name: &str) -> String {
    let created = create(client, json!({ "name": name })).await;
    created["id"].as_str().unwrap().to_owned()
}

async fn create_multi_zone(client: &mut Client, name: &str) -> String {
    let created = create(client, json!({ "name": name, "multi-zone": true })).await;
    created["id"].as_str().unwrap().to_owned()
}

async fn get_key(client: &mut Client, id: &str) -> Value {
    let reply = client.get(&key_path(id, "")).await;
    let key = ok(&reply).clone();
    check_shape("get-kms-key", &key);
    key
}

async fn list_keys(client: &mut Client) -> Vec<Value> {
    let reply = client.get("/v2/kms-key").await;
    let list = ok(&reply).clone();
    check_shape("list-kms-keys", &list);
    list["kms-keys"].as_array().unwrap().clone()
}

async fn rotations(client: &mut Client, id: &str) -> Vec<Value> {
    let reply = client.get(&key_path(id, "list-key-rotations")).await;
    let list = ok(&reply).clone();
    check_shape("list-kms-key-rotations", &list);
    list["rotations"].as_array().unwrap().clone()
}

/// The `status` of a success-response, checked against the spec.
async fn success(client: &mut Client, id: &str, operation: &str, body: Option<Value>) -> String {
    let reply = client
        .call("POST", &key_path(id, operation), body.as_ref())
        .await;
    let answer = ok(&reply).clone();
    check_shape("enable-kms-key", &answer);
    answer["status"].as_str().unwrap().to_owned()
}

async fn encrypt(
    client: &mut Client,
    id: &str,
    plaintext: &[u8],
    context: Option<&[u8]>,
) -> String {
    let mut body = json!({ "plaintext": b64(plaintext) });
    if let Some(context) = context {
        body["encryption-context"] = json!(b64(context));
    }
    let reply = client.post(&key_path(id, "encrypt"), body).await;
    let answer = ok(&reply).clone();
    check_shape("encrypt", &answer);
    answer["ciphertext"].as_str().unwrap().to_owned()
}

async fn decrypt(client: &mut Client, id: &str, ciphertext: &str, context: Option<&[u8]>) -> Reply {
    let mut body = json!({ "ciphertext": ciphertext });
    if let Some(context) = context {
        body["encryption-context"] = json!(b64(context));
    }
    client.post(&key_path(id, "decrypt"), body).await
}

async fn decrypts_to(
    client: &mut Client,
    id: &str,
    ciphertext: &str,
    context: Option<&[u8]>,
    plaintext: &[u8],
) {
    let reply = decrypt(client, id, ciphertext, context).await;
    let answer = ok(&reply).clone();
    check_shape("decrypt", &answer);
    assert_eq!(unb64(&answer["plaintext"]), plaintext);
}

/// Sends a request that must be refused with `status` and `code`, and checks that key `id`
/// (as get-kms-key shows it) did not change. Returns the problem's detail.
async fn refused(
    client: &mut Client,
    id: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
    code: &str,
) -> String {
    refused_with(client, id, method, path, body, |reply| {
        problem(reply, status, code)
    })
    .await
}

/// How a refusal must read, for a table's row: checks the answer, returns the problem's detail.
type Check = fn(&Reply) -> String;

/// [`refused`], with `check` saying how the answer must read (it returns the detail).
async fn refused_with(
    client: &mut Client,
    id: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    check: impl FnOnce(&Reply) -> String,
) -> String {
    let sent = body
        .as_ref()
        .map_or_else(|| "(no body)".to_owned(), Value::to_string);
    let _row = Row::new(format!("{method} {path} {sent}"));
    let before = get_key(client, id).await;
    let reply = client.call(method, path, body.as_ref()).await;
    let detail = check(&reply);
    let after = get_key(client, id).await;
    assert_eq!(
        before, after,
        "{method} {path} was refused but changed the key"
    );
    detail
}

/// Sends `{ field: value }` to `operation` of key `id` for each `(value, mentions)` row: each
/// must be a bad request naming `field` and mentioning every one of `mentions`, and leave the
/// key as it was.
async fn refused_values(
    client: &mut Client,
    id: &str,
    operation: &str,
    field: &str,
    rows: &[(Value, &[&str])],
) {
    for (value, mentions) in rows {
        refused_with(
            client,
            id,
            "POST",
            &key_path(id, operation),
            Some(json!({ field: value })),
            |reply| bad_request(reply, field, mentions),
        )
        .await;
    }
}

/// While alive, names a table's row if the test fails: the one loop that checks every row
/// says which row it was checking (on the failed test's output, after the panic message).
struct Row(String);

impl Row {
    fn new(label: impl Into<String>) -> Row {
        Row(label.into())
    }
}

impl Drop for Row {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the failing row: {}", self.0);
        }
    }
}

/// The body of a re-encryption of `ciphertext` from key `source` (sealed with `context`) to
/// key `destination` (sealed with `destination_context`).
fn re_encrypt_body(
    source: &str,
    ciphertext: &str,
    context: Option<&[u8]>,
    destination: &str,
    destination_context: Option<&[u8]>,
) -> Value {
    let mut body = json!({
        "source": { "key": source, "ciphertext": ciphertext },
        "destination": { "key": destination },
    });
    if let Some(context) = context {
        body["source"]["encryption-context"] = json!(b64(context));
    }
    if let Some(context) = destination_context {
        body["destination"]["encryption-context"] = json!(b64(context));
    }
    body
}

/// The request (method, path, body) that re-encrypts `ciphertext` of key `source` into key
/// `destination`, without contexts.
fn re_encrypt_into(
    source: &str,
    ciphertext: &str,
    destination: &str,
) -> (&'static str, String, Option<Value>) {
    (
        "POST",
        key_path(source, "re-encrypt"),
        Some(re_encrypt_body(source, ciphertext, None, destination, None)),
    )
}

/// Every operation on key `id`, each with a body it accepts: (method, path, body).
/// `other` is another key (re-encrypt's destination), `ciphertext` any base64.
fn operations_on(
    id: &str,
    other: &str,
    ciphertext: &str,
) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", key_path(id, ""), None),
        ("GET", key_path(id, "list-key-rotations"), None),
        ("POST", key_path(id, "enable"), None),
        ("POST", key_path(id, "disable"), None),
        ("POST", key_path(id, "rotate"), None),
        (
            "POST",
            key_path(id, "enable-key-rotation"),
            Some(json!({ "rotation-period": 100 })),
        ),
        ("POST", key_path(id, "disable-key-rotation"), None),
        (
            "POST",
            key_path(id, "schedule-deletion"),
            Some(json!({ "delay-days": 7 })),
        ),
        ("POST", key_path(id, "cancel-deletion"), None),
        (
            "POST",
            key_path(id, "replicate"),
            Some(json!({ "zone": ZONE_B })),
        ),
        (
            "POST",
            key_path(id, "encrypt"),
            Some(json!({ "plaintext": b64(b"x") })),
        ),
        (
            "POST",
            key_path(id, "decrypt"),
            Some(json!({ "ciphertext": ciphertext })),
        ),
        re_encrypt_into(id, ciphertext, other),
        (
            "POST",
            key_path(id, "generate-data-key"),
            Some(json!({ "bytes-count": 16 })),
        ),
    ]
}

/// Waits (a little) until `check` holds for the key as zone `client` shows it: replication is
/// asynchronous by contract, even if the local link delivers at once.
async fn eventually(
    client: &mut Client,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..100 {
        let reply = client.get(&key_path(id, "")).await;
        if reply.status == 200 && check(&reply.json) {
            return reply.json;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = client.get(&key_path(id, "")).await;
    panic!("{what}: not after 2 s; the key is {reply}");
}

// ----- create, get, list -------------------------------------------------------------------

#[tokio::test]
async fn create_get_and_list_show_the_defaults() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let now = start_time();

    let created = create(
        &mut c,
        json!({ "name": "payments", "description": "cards" }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(uuid.get_version_num(), 7, "ids are UUID v7: {id}");
    assert_eq!(created["name"], "payments");
    assert_eq!(created["description"], "cards");
    assert_eq!(created["usage"], "encrypt-decrypt");
    assert_eq!(created["source"], "exoscale-kms");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["multi-zone"], false);
    assert_eq!(created["origin-zone"], ZONE_A);
    assert_eq!(ts(&created["created-at"]), now);
    assert_eq!(ts(&created["status-since"]), now);
    assert_eq!(ts(&created["revision"]["at"]), now);
    assert!(seq(&created) >= 1);

    let key = get_key(&mut c, &id).await;
    for (name, value) in created.as_object().unwrap() {
        assert_eq!(
            &key[name], value,
            "get-kms-key shows `{name}` unlike create"
        );
    }
    assert_eq!(
        key["material"],
        json!({ "version": 1, "created-at": created["created-at"], "automatic": false })
    );
    assert_eq!(key["rotation"]["automatic"], true);
    assert_eq!(key["rotation"]["rotation-period"], 365);
    assert_eq!(key["rotation"]["manual-count"], 0);
    assert_eq!(ts(&key["rotation"]["next-at"]), now + days(365));
    assert_eq!(key["replicas"], json!([]));
    assert!(
        key.get("replicas-status").is_none() || key["replicas-status"] == json!([]),
        "{key}"
    );
    assert!(
        key.get("delete-at").is_none(),
        "delete-at only while pending: {key}"
    );

    // multi-zone and usage can be given; null is the same as absent.
    let multi = create(
        &mut c,
        json!({ "name": "orders", "multi-zone": true, "usage": "encrypt-decrypt", "description": null }),
    )
    .await;
    assert_eq!(multi["multi-zone"], true);
    assert!(multi.get("description").is_none(), "{multi}");

    let listed = list_keys(&mut c).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let entry = listed
        .iter()
        .find(|entry| entry["id"] == id.as_str())
        .unwrap();
    let mut shown = key.clone();
    shown.as_object_mut().unwrap().remove("replicas-status");
    assert_eq!(entry, &shown, "the list shows the key as get-kms-key does");
    assert!(listed.iter().any(|entry| entry["id"] == multi["id"]));
}

#[tokio::test]
async fn create_refusals_name_the_field_and_create_nothing() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    create_id(&mut c, "taken").await;
    let before = list_keys(&mut c).await;

    let cases: Vec<(Value, &str, Vec<&str>)> = vec![
        (json!({}), "name", vec!["required"]),
        (json!({ "name": null }), "name", vec!["required"]),
        (json!({ "name": "" }), "name", vec!["1", "256"]),
        (
            json!({ "name": "n".repeat(257) }),
            "name",
            vec!["1", "256", "257"],
        ),
        (json!({ "name": 7 }), "name", vec![]),
        (
            json!({ "name": "d", "description": "d".repeat(1025) }),
            "description",
            vec!["1024", "1025"],
        ),
        (
            json!({ "name": "d", "description": 5 }),
            "description",
            vec![],
        ),
        (
            json!({ "name": "u", "usage": "sign-verify" }),
            "usage",
            vec!["encrypt-decrypt"],
        ),
        (
            json!({ "name": "m", "multi-zone": "yes" }),
            "multi-zone",
            vec![],
        ),
        (
            json!({ "name": "m", "multi-zone": 1 }),
            "multi-zone",
            vec![],
        ),
    ];
    for (body, field, mentions) in cases {
        let _row = Row::new(body.to_string());
        let reply = c.post("/v2/kms-key", body).await;
        bad_request(&reply, field, &mentions);
    }
    // An absent body is `{}`: the name is missing.
    bad_request(&c.post_empty("/v2/kms-key").await, "name", &["required"]);
    // An unknown field is refused, naming it; a taken name is a conflict, naming it.
    for (body, status, code, named) in [
        (
            json!({ "name": "x", "colour": "blue" }),
            400,
            "bad-request",
            "colour",
        ),
        (json!({ "name": "taken" }), 409, "name-conflict", "taken"),
    ] {
        let _row = Row::new(body.to_string());
        let detail = problem(&c.post("/v2/kms-key", body).await, status, code);
        assert!(detail.contains(named), "{code}: {detail}");
    }
    assert_eq!(
        list_keys(&mut c).await,
        before,
        "a refused create created something"
    );

    // The bounds themselves are allowed (counted in characters, not bytes).
    create(
        &mut c,
        json!({ "name": "é".repeat(256), "description": "ü".repeat(1024) }),
    )
    .await;
    create(&mut c, json!({ "name": "n" })).await;
}

#[tokio::test]
async fn the_quota_counts_the_zones_own_keys_not_replicas() {
    let limits = Limits {
        key_quota: 2,
        ..Limits::default()
    };
    let server = TestServer::start_with(&[ZONE_A, ZONE_B], limits, options(1 << 20)).await;
    let mut a = server.client(0).await;
    let mut b = server.client(1).await;
    for name in ["a1", "a2"] {
        let id = create_multi_zone(&mut a, name).await;
        assert_eq!(
            success(&mut a, &id, "replicate", Some(json!({ "zone": ZONE_B }))).await,
            "target-registered"
        );
    }
    let detail = problem(
        &a.post("/v2/kms-key", json!({ "name": "a3" })).await,
        400,
        "quota-exceeded",
    );
    assert!(detail.contains('2'), "{detail}");
    assert_eq!(list_keys(&mut a).await.len(), 2);
    // Zone B holds two replicas, which do not count: two keys of its own fit.
    for key in list_keys(&mut a).await {
        let id = key["id"].as_str().unwrap().to_owned();
        eventually(&mut b, &id, "the replica arrives", |k| {
            k["origin-zone"] == ZONE_A
        })
        .await;
    }
    create_id(&mut b, "b1").await;
    create_id(&mut b, "b2").await;
    problem(
        &b.post("/v2/kms-key", json!({ "name": "b3" })).await,
        400,
        "quota-exceeded",
    );
    assert_eq!(
        list_keys(&mut b).await.len(),
        4,
        "two keys and two replicas"
    );
}

// ----- status transitions ------------------------------------------------------------------

#[tokio::test]
async fn enable_and_disable_answer_already_applied_without_a_new_revision() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let fresh = get_key(&mut c, &id).await;

    assert_eq!(
        success(&mut c, &id, "enable", None).await,
        "already-applied"
    );
    assert_eq!(
        get_key(&mut c, &id).await,
        fresh,
        "already-applied changed the key"
    );

    server.clock.advance_days(1);
    assert_eq!(success(&mut c, &id, "disable", None).await, "success");
    let disabled = get_key(&mut c, &id).await;
    assert_eq!(disabled["status"], "disabled");
    assert_eq!(ts(&disabled["status-since"]), start_time() + days(1));
    assert_eq!(seq(&disabled), seq(&fresh) + 1);
    assert_eq!(ts(&disabled["revision"]["at"]), start_time() + days(1));

    server.clock.advance_days(1);
    assert_eq!(
        success(&mut c, &id, "disable", Some(json!({}))).await,
        "already-applied"
    );
    assert_eq!(
        get_key(&mut c, &id).await,
        disabled,
        "already-applied changed the key"
    );

    assert_eq!(
        success(&mut c, &id, "enable", Some(json!({}))).await,
        "success"
    );
    let enabled = get_key(&mut c, &id).await;
    assert_eq!(enabled["status"], "enabled");
    assert_eq!(ts(&enabled["status-since"]), start_time() + days(2));
    assert_eq!(seq(&enabled), seq(&fresh) + 2);

    // Operations without fields refuse fields.
    let detail = refused(
        &mut c,
        &id,
        "POST",
        &key_path(&id, "disable"),
        Some(json!({ "force": true })),
        400,
        "bad-request",
    )
    .await;
    assert!(detail.contains("force"), "{detail}");
    // Cancel on a key that is not pending deletion: enabled (enabling it again is
    // already-applied), then disabled.
    for (operation, status) in [("enable", "enabled"), ("disable", "disabled")] {
        success(&mut c, &id, operation, None).await;
        assert_eq!(get_key(&mut c, &id).await["status"], status);
        refused(
            &mut c,
            &id,
            "POST",
            &key_path(&id, "cancel-deletion"),
            None,
            400,
            "not-pending-deletion",
        )
        .await;
    }
}

#[tokio::test]
async fn schedule_and_cancel_deletion() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let other = create_id(&mut c, "other").await;
    let ciphertext = encrypt(&mut c, &id, b"kept", None).await;
    server.clock.advance_days(2);
    let now = start_time() + days(2);

    // Bounds of delay-days, and values that are not a whole number.
    refused_values(
        &mut c,
        &id,
        "schedule-deletion",
        "delay-days",
        &[
            (json!(6), &["7", "30", "6"]),
            (json!(31), &["7", "30", "31"]),
            (json!(-1), &["7", "30", "-1"]),
            (json!(0), &["7", "30", "0"]),
            (json!("7"), &[]),
            (json!(7.5), &[]),
            (json!(true), &[]),
        ],
    )
    .await;

    let before = get_key(&mut c, &id).await;
    let reply = c
        .post(
            &key_path(&id, "schedule-deletion"),
            json!({ "delay-days": 7 }),
        )
        .await;
    let scheduled = ok(&reply).clone();
    check_shape("schedule-kms-key-deletion", &scheduled);
    assert_eq!(ts(&scheduled["delete-at"]), now + days(7));
    let pending = get_key(&mut c, &id).await;
    assert_eq!(pending["status"], "pending-deletion");
    assert_eq!(ts(&pending["status-since"]), now);
    assert_eq!(pending["delete-at"], scheduled["delete-at"]);
    assert_eq!(seq(&pending), seq(&before) + 1);

    // In pending deletion: every change but cancel, and every cryptographic operation, is
    // refused; reads work. A ciphertext of another key cannot be re-encrypted into it either.
    let theirs = encrypt(&mut c, &other, b"theirs", None).await;
    for (method, path, body) in operations_on(&id, &other, &ciphertext)
        .into_iter()
        .chain([re_encrypt_into(&other, &theirs, &id)])
    {
        let _row = Row::new(format!("{method} {path}"));
        let operation = path.rsplit('/').next().unwrap();
        match operation {
            _ if method == "GET" => {
                ok(&c.call(method, &path, body.as_ref()).await);
            }
            "cancel-deletion" | "replicate" => {}
            _ => {
                refused(
                    &mut c,
                    &id,
                    method,
                    &path,
                    body,
                    400,
                    "key-pending-deletion",
                )
                .await;
            }
        }
    }
    assert_eq!(rotations(&mut c, &id).await, Vec::<Value>::new());

    server.clock.advance_days(3);
    assert_eq!(
        success(&mut c, &id, "cancel-deletion", None).await,
        "success"
    );
    let cancelled = get_key(&mut c, &id).await;
    assert_eq!(
        cancelled["status"], "disabled",
        "cancel leaves the key disabled"
    );
    assert_eq!(ts(&cancelled["status-since"]), now + days(3));
    assert!(cancelled.get("delete-at").is_none(), "{cancelled}");
    assert_eq!(seq(&cancelled), seq(&pending) + 1);
    refused(
        &mut c,
        &id,
        "POST",
        &key_path(&id, "cancel-deletion"),
        None,
        400,
        "not-pending-deletion",
    )
    .await;

    // A disabled key can be scheduled too; the default delay is 30 days; the material
    // survives a cancelled deletion.
    let reply = c.post_empty(&key_path(&id, "schedule-deletion")).await;
    assert_eq!(ts(&ok(&reply)["delete-at"]), now + days(3) + days(30));
    success(&mut c, &id, "cancel-deletion", None).await;
    success(&mut c, &id, "enable", None).await;
    decrypts_to(&mut c, &id, &ciphertext, None, b"kept").await;
}

#[tokio::test]
async fn a_due_deletion_answers_key_not_found_to_every_call() {
    let server = TestServer::start(&[ZONE_A, ZONE_B]).await;
    let mut c = server.client(0).await;
    let id = create_multi_zone(&mut c, "doomed").await;
    let other = create_id(&mut c, "other").await;
    let ciphertext = encrypt(&mut c, &id, b"secret", None).await;
    let reply = c
        .post(
            &key_path(&id, "schedule-deletion"),
            json!({ "delay-days": 7 }),
        )
        .await;
    let delete_at = ts(&ok(&reply)["delete-at"]);

    // One second before: still there.
    server.clock.advance_days(7);
    server.clock.advance(jiff::SignedDuration::from_secs(-1));
    assert_eq!(get_key(&mut c, &id).await["status"], "pending-deletion");
    // At delete-at: gone, for every operation, and as the destination of a re-encryption.
    server.clock.set(delete_at);
    let theirs = encrypt(&mut c, &other, b"theirs", None).await;
    for (method, path, body) in operations_on(&id, &other, &ciphertext)
        .into_iter()
        .chain([re_encrypt_into(&other, &theirs, &id)])
    {
        let _row = Row::new(format!("{method} {path}"));
        let reply = c.call(method, &path, body.as_ref()).await;
        let detail = problem(&reply, 404, "key-not-found");
        assert!(detail.contains(&id), "{method} {path}: {detail}");
    }
    let listed = list_keys(&mut c).await;
    assert!(
        listed.iter().all(|key| key["id"] != id.as_str()),
        "{listed:?}"
    );
    // The other key is untouched.
    decrypts_to(&mut c, &other, &theirs, None, b"theirs").await;
}

#[tokio::test]
async fn a_due_deletion_is_applied_by_run_due_too() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "doomed").await;
    c.post(
        &key_path(&id, "schedule-deletion"),
        json!({ "delay-days": 30 }),
    )
    .await;
    server.clock.advance_days(31);
    server.kms[0].run_due().unwrap();
    assert!(list_keys(&mut c).await.is_empty());
    problem(&c.get(&key_path(&id, "")).await, 404, "key-not-found");
    // The zone goes on working (whether the name is free again the contract does not say).
    create_id(&mut c, "after").await;
}

// ----- rotation ----------------------------------------------------------------------------

#[tokio::test]
async fn manual_rotation_adds_versions_up_to_the_limit() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let created = get_key(&mut c, &id).await;
    let next_at = created["rotation"]["next-at"].clone();
    let mut ciphertexts = vec![encrypt(&mut c, &id, b"version 1", None).await];

    for n in 1..=10u32 {
        server.clock.advance_days(1);
        let now = start_time() + days(i64::from(n));
        let before = get_key(&mut c, &id).await;
        let reply = c.post_empty(&key_path(&id, "rotate")).await;
        let answer = ok(&reply).clone();
        check_shape("rotate-kms-key", &answer);
        assert_eq!(answer["rotation"]["manual-count"], n);
        assert_eq!(
            answer["rotation"]["next-at"], next_at,
            "rotate leaves next-at"
        );
        assert_eq!(answer["rotation"]["automatic"], true);
        assert_eq!(answer["rotation"]["rotation-period"], 365);
        let after = get_key(&mut c, &id).await;
        assert_eq!(after["rotation"], answer["rotation"]);
        assert_eq!(
            after["material"],
            json!({ "version": n + 1, "created-at": now.to_string(), "automatic": false })
        );
        assert_eq!(seq(&after), seq(&before) + 1);
        ciphertexts.push(encrypt(&mut c, &id, format!("version {}", n + 1).as_bytes(), None).await);
    }
    // The 11th manual rotation is refused.
    let detail = refused(
        &mut c,
        &id,
        "POST",
        &key_path(&id, "rotate"),
        None,
        400,
        "manual-rotation-limit",
    )
    .await;
    assert!(detail.contains("10"), "{detail}");

    let listed = rotations(&mut c, &id).await;
    let expected: Vec<Value> = (2..=11u32)
        .map(|version| {
            json!({
                "version": version,
                "rotated-at": (start_time() + days(i64::from(version) - 1)).to_string(),
                "automatic": false,
            })
        })
        .collect();
    assert_eq!(listed, expected, "versions 2 and up, oldest first");
    // Every version still decrypts; the newest encrypts (the header names the version).
    for (index, ciphertext) in ciphertexts.iter().enumerate() {
        let plaintext = format!("version {}", index + 1);
        decrypts_to(&mut c, &id, ciphertext, None, plaintext.as_bytes()).await;
    }
}

#[tokio::test]
async fn rotation_settings_conflicts_and_bounds() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let created = get_key(&mut c, &id).await;

    // Automatic rotation is on by default: enabling it again is a conflict.
    refused(
        &mut c,
        &id,
        "POST",
        &key_path(&id, "enable-key-rotation"),
        None,
        409,
        "conflict",
    )
    .await;
    server.clock.advance_days(5);
    let reply = c.post_empty(&key_path(&id, "disable-key-rotation")).await;
    let answer = ok(&reply).clone();
    check_shape("disable-kms-key-rotation", &answer);
    assert_eq!(answer["rotation"]["automatic"], false);
    assert_eq!(
        answer["rotation"]["next-at"],
        created["rotation"]["next-at"]
    );
    let off = get_key(&mut c, &id).await;
    assert_eq!(seq(&off), seq(&created) + 1);
    assert_eq!(off["rotation"], answer["rotation"]);
    refused(
        &mut c,
        &id,
        "POST",
        &key_path(&id, "disable-key-rotation"),
        None,
        409,
        "conflict",
    )
    .await;

    // Bounds of rotation-period, and values that are not a whole number.
    refused_values(
        &mut c,
        &id,
        "enable-key-rotation",
        "rotation-period",
        &[
            (json!(89), &["90", "2560", "89"]),
            (json!(2561), &["90", "2560", "2561"]),
            (json!(0), &["90", "2560", "0"]),
            (json!(-90), &["90", "2560", "-90"]),
            (json!("90"), &[]),
            (json!(90.5), &[]),
            (json!([90]), &[]),
        ],
    )
    .await;
    assert_eq!(get_key(&mut c, &id).await, off, "refusals changed the key");

    let now = start_time() + days(5);
    for period in [90, 2560] {
        let reply = c
            .post(
                &key_path(&id, "enable-key-rotation"),
                json!({ "rotation-period": period }),
            )
            .await;
        let answer = ok(&reply).clone();
        check_shape("enable-kms-key-rotation", &answer);
        assert_eq!(answer["rotation"]["automatic"], true);
        assert_eq!(answer["rotation"]["rotation-period"], period);
        assert_eq!(ts(&answer["rotation"]["next-at"]), now + days(period));
        assert_eq!(answer["rotation"]["manual-count"], 0);
        c.post_empty(&key_path(&id, "disable-key-rotation")).await;
    }
    // Without a body, the period is 365.
    let reply = c.post_empty(&key_path(&id, "enable-key-rotation")).await;
    assert_eq!(ok(&reply)["rotation"]["rotation-period"], 365);
    assert_eq!(ts(&reply.json["rotation"]["next-at"]), now + days(365));
    assert_eq!(seq(&get_key(&mut c, &id).await), seq(&off) + 5);
}

#[tokio::test]
async fn automatic_rotation_when_due() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "auto").await;
    let sleeper = create_id(&mut c, "disabled").await;
    let manual = create_id(&mut c, "manual").await;
    success(&mut c, &sleeper, "disable", None).await;
    c.post_empty(&key_path(&manual, "disable-key-rotation"))
        .await;
    let old = encrypt(&mut c, &id, b"v1", None).await;
    let before = get_key(&mut c, &id).await;

    server.clock.advance_days(364);
    server.kms[0].run_due().unwrap();
    assert_eq!(get_key(&mut c, &id).await, before, "rotated before next-at");

    server.clock.advance_days(1);
    let now = start_time() + days(365);
    server.kms[0].run_due().unwrap();
    let after = get_key(&mut c, &id).await;
    assert_eq!(
        after["material"],
        json!({ "version": 2, "created-at": now.to_string(), "automatic": true })
    );
    assert_eq!(ts(&after["rotation"]["next-at"]), now + days(365));
    assert_eq!(after["rotation"]["manual-count"], 0);
    assert_eq!(seq(&after), seq(&before) + 1);
    assert_eq!(
        rotations(&mut c, &id).await,
        vec![json!({ "version": 2, "rotated-at": now.to_string(), "automatic": true })]
    );
    decrypts_to(&mut c, &id, &old, None, b"v1").await;
    // Not rotated: a disabled key, and a key whose automatic rotation is off.
    assert_eq!(get_key(&mut c, &sleeper).await["material"]["version"], 1);
    assert_eq!(get_key(&mut c, &manual).await["material"]["version"], 1);

    // Enabled again, the disabled key's next-at is past: it is rotated when due next.
    server.clock.advance_days(10);
    let later = now + days(10);
    success(&mut c, &sleeper, "enable", None).await;
    server.kms[0].run_due().unwrap();
    let woken = get_key(&mut c, &sleeper).await;
    assert_eq!(
        woken["material"],
        json!({ "version": 2, "created-at": later.to_string(), "automatic": true })
    );
    assert_eq!(ts(&woken["rotation"]["next-at"]), later + days(365));
    // Running again at the same time rotates nothing more.
    server.kms[0].run_due().unwrap();
    assert_eq!(get_key(&mut c, &sleeper).await, woken);
    assert_eq!(get_key(&mut c, &manual).await["material"]["version"], 1);
}

#[tokio::test]
async fn a_disabled_key_refuses_rotation_and_cryptography() {
    let server = TestServer::start(&[ZONE_A, ZONE_B]).await;
    let mut c = server.client(0).await;
    let id = create_multi_zone(&mut c, "k").await;
    let other = create_id(&mut c, "other").await;
    let ciphertext = encrypt(&mut c, &id, b"x", None).await;
    let theirs = encrypt(&mut c, &other, b"theirs", None).await;
    success(&mut c, &id, "disable", None).await;

    // Rotation and its settings, and every cryptographic operation.
    let mut cases: Vec<(&str, String, Option<Value>)> =
        ["rotate", "enable-key-rotation", "disable-key-rotation"]
            .into_iter()
            .map(|operation| ("POST", key_path(&id, operation), None))
            .collect();
    cases.extend(
        operations_on(&id, &other, &ciphertext)
            .into_iter()
            .filter(|(_, path, _)| {
                let operation = path.rsplit('/').next().unwrap();
                ["encrypt", "decrypt", "re-encrypt", "generate-data-key"].contains(&operation)
            }),
    );
    // Replication is refused while disabled (as AWS).
    cases.push((
        "POST",
        key_path(&id, "replicate"),
        Some(json!({ "zone": ZONE_B })),
    ));
    // A disabled destination refuses a re-encryption.
    cases.push(re_encrypt_into(&other, &theirs, &id));
    for (method, path, body) in cases {
        let detail = refused(&mut c, &id, method, &path, body, 400, "key-disabled").await;
        assert!(detail.contains(&id), "{method} {path}: {detail}");
    }
    // Reads work; enabling brings everything back.
    assert_eq!(rotations(&mut c, &id).await, Vec::<Value>::new());
    success(&mut c, &id, "enable", None).await;
    decrypts_to(&mut c, &id, &ciphertext, None, b"x").await;
}

// ----- ids ---------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_ids_are_404_and_ids_that_are_not_uuids_400() {
    let server = TestServer::start(&[ZONE_A, ZONE_B]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let ciphertext = encrypt(&mut c, &id, b"x", None).await;
    // Every operation on an unknown key, and an unknown destination of re-encrypt.
    for (method, path, body) in operations_on(NO_SUCH_KEY, &id, &ciphertext)
        .into_iter()
        .chain([re_encrypt_into(&id, &ciphertext, NO_SUCH_KEY)])
    {
        let _row = Row::new(format!("{method} {path}"));
        let detail = problem(
            &c.call(method, &path, body.as_ref()).await,
            404,
            "key-not-found",
        );
        assert!(detail.contains(NO_SUCH_KEY), "{method} {path}: {detail}");
    }
    for bad in [
        "not-a-uuid",
        "0190b6a4",
        "0190b6a4-2a3c-7d4e-8f00-11223344556g",
        "1",
    ] {
        for (method, path, body) in operations_on(bad, &id, &ciphertext) {
            let _row = Row::new(format!("{method} {path}"));
            let reply = c.call(method, &path, body.as_ref()).await;
            bad_request(&reply, "id", &[]);
        }
    }
}

#[tokio::test]
async fn an_id_that_is_not_utf8_is_a_problem_naming_id() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    for (method, path) in [
        ("GET", "/v2/kms-key/%FF"),
        ("POST", "/v2/kms-key/%C3%28/enable"),
    ] {
        let _row = Row::new(format!("{method} {path}"));
        let reply = c.signed(method, path, b"").await;
        bad_request(&reply, "id", &[]);
    }
}

// ----- cryptography ------------------------------------------------------------------------

#[tokio::test]
async fn encrypt_and_decrypt_with_an_encryption_context() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;

    let ciphertext = encrypt(&mut c, &id, b"card 4242", Some(b"order 17")).await;
    decrypts_to(&mut c, &id, &ciphertext, Some(b"order 17"), b"card 4242").await;
    // Two encryptions of one plaintext differ.
    let again = encrypt(&mut c, &id, b"card 4242", Some(b"order 17")).await;
    assert_ne!(again, ciphertext);
    // A wrong or missing context: invalid ciphertext.
    for context in [Some(&b"order 18"[..]), None, Some(b"")] {
        problem(
            &decrypt(&mut c, &id, &ciphertext, context).await,
            400,
            "invalid-ciphertext",
        );
    }
    // Absent and empty contexts are the same.
    let bare = encrypt(&mut c, &id, b"bare", None).await;
    decrypts_to(&mut c, &id, &bare, Some(b""), b"bare").await;
    let empty = encrypt(&mut c, &id, b"empty", Some(b"")).await;
    decrypts_to(&mut c, &id, &empty, None, b"empty").await;
    let reply = c
        .post(
            &key_path(&id, "decrypt"),
            json!({ "ciphertext": empty, "encryption-context": null }),
        )
        .await;
    assert_eq!(unb64(&ok(&reply)["plaintext"]), b"empty");
    // An empty plaintext and a binary one.
    let nothing = encrypt(&mut c, &id, b"", None).await;
    decrypts_to(&mut c, &id, &nothing, None, b"").await;
    let binary: Vec<u8> = (0..=255).collect();
    let sealed = encrypt(&mut c, &id, &binary, Some(&binary)).await;
    decrypts_to(&mut c, &id, &sealed, Some(&binary), &binary).await;
}

#[tokio::test]
async fn damaged_ciphertexts_are_one_opaque_error_and_other_keys_incorrect_key() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let other = create_id(&mut c, "other").await;
    let good = unb64(&json!(
        encrypt(&mut c, &id, b"attack at dawn", Some(b"ctx")).await
    ));

    // (bytes, whether the damage is in the header's key id, bytes 1 to 16)
    let mut damaged: Vec<(Vec<u8>, bool)> = Vec::new();
    for index in [0, 1, 16, 17, 21, good.len() / 2, good.len() - 1] {
        let mut copy = good.clone();
        copy[index] ^= 0x01;
        damaged.push((copy, (1..17).contains(&index)));
    }
    for len in [0, 1, 5, 20, good.len() / 2, good.len() - 1] {
        damaged.push((good[..len].to_vec(), false));
    }
    let mut longer = good.clone();
    longer.push(0);
    damaged.push((longer, false));
    damaged.push((vec![0xAB; good.len()], false));
    let mut forged = good.clone();
    for byte in &mut forged[21..] {
        *byte = 0x5A;
    }
    damaged.push((forged, false));

    let mut documents = Vec::new();
    let mut details = Vec::new();
    let before = get_key(&mut c, &id).await;
    for (bytes, in_key_id) in &damaged {
        let reply = decrypt(&mut c, &id, &b64(bytes), Some(b"ctx")).await;
        // A damaged key id names another key: the contract's "incorrect key" fits that too.
        if *in_key_id && reply.json["code"] == "incorrect-key" {
            problem(&reply, 400, "incorrect-key");
            continue;
        }
        details.push(problem(&reply, 400, "invalid-ciphertext"));
        documents.push(reply.json);
    }
    // A wrong context is the same opaque answer.
    let reply = decrypt(&mut c, &id, &b64(&good), Some(b"other")).await;
    details.push(problem(&reply, 400, "invalid-ciphertext"));
    documents.push(reply.json);
    documents.dedup();
    assert_eq!(
        documents.len(),
        1,
        "the invalid-ciphertext answers differ: {documents:?}"
    );
    details.dedup();
    assert!(!details[0].contains("attack"), "{details:?}");
    assert_eq!(get_key(&mut c, &id).await, before);

    // Another key's ciphertext: incorrect key, distinct from a damaged ciphertext.
    let reply = decrypt(&mut c, &other, &b64(&good), Some(b"ctx")).await;
    let detail = problem(&reply, 400, "incorrect-key");
    assert_ne!(detail, details[0]);
    // The good one still works.
    decrypts_to(&mut c, &id, &b64(&good), Some(b"ctx"), b"attack at dawn").await;
}

#[tokio::test]
async fn re_encrypt_moves_a_ciphertext_to_another_key() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let source = create_id(&mut c, "source").await;
    let destination = create_id(&mut c, "destination").await;
    let ciphertext = encrypt(&mut c, &source, b"payload", Some(b"a")).await;
    // The destination's newest material encrypts.
    c.post_empty(&key_path(&destination, "rotate")).await;

    let reply = c
        .post(
            &key_path(&source, "re-encrypt"),
            re_encrypt_body(&source, &ciphertext, Some(b"a"), &destination, Some(b"b")),
        )
        .await;
    let answer = ok(&reply).clone();
    check_shape("re-encrypt", &answer);
    assert!(
        answer.get("plaintext").is_none(),
        "the plaintext left the call: {answer}"
    );
    let moved = answer["ciphertext"].as_str().unwrap().to_owned();
    decrypts_to(&mut c, &destination, &moved, Some(b"b"), b"payload").await;
    problem(
        &decrypt(&mut c, &source, &moved, Some(b"b")).await,
        400,
        "incorrect-key",
    );
    // The destination's version 2 sealed it: it still decrypts after version 2 is old.
    c.post_empty(&key_path(&destination, "rotate")).await;
    decrypts_to(&mut c, &destination, &moved, Some(b"b"), b"payload").await;

    // (what is wrong, the key of the path, the body, how the answer must read)
    let refusals: [(&str, &str, Value, Check); 3] = [
        (
            "the source context must match",
            &source,
            re_encrypt_body(&source, &ciphertext, Some(b"x"), &destination, None),
            |reply| problem(reply, 400, "invalid-ciphertext"),
        ),
        (
            "a ciphertext of another key than the source: incorrect key",
            &destination,
            re_encrypt_body(&destination, &ciphertext, Some(b"a"), &source, None),
            |reply| problem(reply, 400, "incorrect-key"),
        ),
        (
            "the path names the source: source.key must agree",
            &destination,
            re_encrypt_body(&source, &ciphertext, Some(b"a"), &destination, None),
            |reply| bad_request(reply, "source.key", &[]),
        ),
    ];
    for (what, path_key, body, check) in refusals {
        let _row = Row::new(what);
        check(&c.post(&key_path(path_key, "re-encrypt"), body).await);
    }
    // Re-encrypting into the same key works too.
    let reply = c
        .post(
            &key_path(&source, "re-encrypt"),
            re_encrypt_body(&source, &ciphertext, Some(b"a"), &source, None),
        )
        .await;
    let same = ok(&reply)["ciphertext"].as_str().unwrap().to_owned();
    decrypts_to(&mut c, &source, &same, None, b"payload").await;
}

#[tokio::test]
async fn generate_data_key_sizes_and_its_ciphertext() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let path = key_path(&id, "generate-data-key");

    let cases: Vec<(Option<Value>, usize)> = vec![
        (None, 32),
        (Some(json!({})), 32),
        (Some(json!({ "key-spec": "AES-256" })), 32),
        (Some(json!({ "bytes-count": 1 })), 1),
        (Some(json!({ "bytes-count": 1024 })), 1024),
        (
            Some(json!({ "bytes-count": 48, "encryption-context": b64(b"file 9") })),
            48,
        ),
        (Some(json!({ "key-spec": null, "bytes-count": 7 })), 7),
    ];
    let mut seen = Vec::new();
    for (body, size) in cases {
        let _row = Row::new(format!("{body:?}"));
        let reply = c.call("POST", &path, body.as_ref()).await;
        let answer = ok(&reply).clone();
        check_shape("generate-data-key", &answer);
        let plaintext = unb64(&answer["plaintext"]);
        assert_eq!(plaintext.len(), size, "{body:?}");
        let context = body
            .as_ref()
            .and_then(|body| body.get("encryption-context"))
            .map(unb64);
        decrypts_to(
            &mut c,
            &id,
            answer["ciphertext"].as_str().unwrap(),
            context.as_deref(),
            &plaintext,
        )
        .await;
        assert!(!seen.contains(&plaintext), "a data key came twice");
        seen.push(plaintext);
    }
    for (body, field, mentions) in [
        (
            json!({ "bytes-count": 0 }),
            "bytes-count",
            vec!["1", "1024", "0"],
        ),
        (
            json!({ "bytes-count": 1025 }),
            "bytes-count",
            vec!["1", "1024", "1025"],
        ),
        (json!({ "bytes-count": -3 }), "bytes-count", vec!["1024"]),
        (json!({ "bytes-count": "32" }), "bytes-count", vec![]),
        (
            json!({ "key-spec": "AES-128" }),
            "key-spec",
            vec!["AES-256"],
        ),
        (json!({ "key-spec": 256 }), "key-spec", vec![]),
        (
            json!({ "key-spec": "AES-256", "bytes-count": 32 }),
            "key-spec",
            vec!["bytes-count"],
        ),
        (
            json!({ "encryption-context": "%%" }),
            "encryption-context",
            vec![],
        ),
    ] {
        let _row = Row::new(body.to_string());
        let reply = c.post(&path, body).await;
        bad_request(&reply, field, &mentions);
    }
}

#[tokio::test]
async fn plaintexts_over_the_zones_limit_are_bad_requests() {
    let limits = Limits {
        max_plaintext_bytes: 100,
        max_context_bytes: 10,
        ..Limits::default()
    };
    let server = TestServer::start_with(&[ZONE_A], limits, options(1 << 20)).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    encrypt(&mut c, &id, &[7; 100], Some(&[1; 10])).await;
    for (body, field, mentions) in [
        (
            json!({ "plaintext": b64(&[7; 101]) }),
            "plaintext",
            ["100", "101"],
        ),
        (
            json!({ "plaintext": b64(b"x"), "encryption-context": b64(&[1; 11]) }),
            "encryption-context",
            ["10", "11"],
        ),
    ] {
        let _row = Row::new(field);
        let reply = c.post(&key_path(&id, "encrypt"), body).await;
        bad_request(&reply, field, &mentions);
    }
}

// ----- replication -------------------------------------------------------------------------

#[tokio::test]
async fn a_replica_shares_material_and_ciphertexts_with_its_origin() {
    let server = TestServer::start(&[ZONE_A, ZONE_B]).await;
    let mut a = server.client(0).await;
    let mut b = server.client(1).await;
    let id = create_multi_zone(&mut a, "orders").await;
    let before = get_key(&mut a, &id).await;
    problem(&b.get(&key_path(&id, "")).await, 404, "key-not-found");

    let reply = a
        .post(&key_path(&id, "replicate"), json!({ "zone": ZONE_B }))
        .await;
    check_shape("replicate-kms-key", ok(&reply));
    assert_eq!(reply.json, json!({ "status": "target-registered" }));
    let origin = get_key(&mut a, &id).await;
    assert_eq!(origin["replicas"], json!([ZONE_B]));
    assert_eq!(seq(&origin), seq(&before) + 1);

    let replica = eventually(&mut b, &id, "the replica arrives", |key| {
        key["id"] == id.as_str()
    })
    .await;
    check_shape("get-kms-key", &replica);
    for field in [
        "id",
        "name",
        "multi-zone",
        "origin-zone",
        "material",
        "rotation",
        "usage",
        "source",
        "created-at",
    ] {
        assert_eq!(
            replica[field], origin[field],
            "`{field}` differs on the replica"
        );
    }
    assert_eq!(replica["origin-zone"], ZONE_A);
    assert_eq!(replica["status"], "enabled");
    let origin = eventually(
        &mut a,
        &id,
        "the watermark reaches the origin's revision",
        |key| key["replicas-status"][0]["last-applied-watermark"] == key["revision"]["seq"],
    )
    .await;
    assert_eq!(origin["replicas-status"][0]["zone"], ZONE_B);
    assert!(
        origin["replicas-status"][0].get("last-failure").is_none(),
        "{origin}"
    );
    assert!(
        list_keys(&mut b)
            .await
            .iter()
            .any(|key| key["id"] == id.as_str())
    );

    // A ciphertext made in one zone decrypts in the other, both ways.
    let from_a = encrypt(&mut a, &id, b"from a", Some(b"ctx")).await;
    decrypts_to(&mut b, &id, &from_a, Some(b"ctx"), b"from a").await;
    let from_b = encrypt(&mut b, &id, b"from b", None).await;
    decrypts_to(&mut a, &id, &from_b, None, b"from b").await;
    let reply = b.post_empty(&key_path(&id, "generate-data-key")).await;
    let data_key = ok(&reply).clone();
    decrypts_to(
        &mut a,
        &id,
        data_key["ciphertext"].as_str().unwrap(),
        None,
        &unb64(&data_key["plaintext"]),
    )
    .await;

    // Rotation and rotation settings follow the origin.
    a.post_empty(&key_path(&id, "rotate")).await;
    a.post_empty(&key_path(&id, "disable-key-rotation")).await;
    let origin = get_key(&mut a, &id).await;
    let replica = eventually(&mut b, &id, "the rotation arrives", |key| {
        key["material"] == origin["material"] && key["rotation"] == origin["rotation"]
    })
    .await;
    assert_eq!(replica["material"]["version"], 2);
    assert_eq!(replica["rotation"]["automatic"], false);
    let v2 = encrypt(&mut a, &id, b"v2", None).await;
    decrypts_to(&mut b, &id, &v2, None, b"v2").await;
    decrypts_to(&mut b, &id, &from_a, Some(b"ctx"), b"from a").await;
    assert_eq!(rotations(&mut b, &id).await, rotations(&mut a, &id).await);
    eventually(&mut a, &id, "the watermark follows", |key| {
        key["replicas-status"][0]["last-applied-watermark"] == key["revision"]["seq"]
    })
    .await;

    // The replica's status is its own for enable and disable.
    let origin = get_key(&mut a, &id).await;
    assert_eq!(success(&mut b, &id, "disable", None).await, "success");
    assert_eq!(get_key(&mut b, &id).await["status"], "disabled");
    assert_eq!(
        get_key(&mut a, &id).await,
        origin,
        "disabling the replica changed the origin"
    );
    problem(
        &b.post(&key_path(&id, "encrypt"), json!({ "plaintext": b64(b"x") }))
            .await,
        400,
        "key-disabled",
    );
    encrypt(&mut a, &id, b"origin still works", None).await;
    assert_eq!(
        success(&mut b, &id, "disable", None).await,
        "already-applied"
    );
    assert_eq!(success(&mut b, &id, "enable", None).await, "success");
    decrypts_to(&mut b, &id, &v2, None, b"v2").await;

    // Names are unique among the zone's keys, replicas included.
    problem(
        &b.post("/v2/kms-key", json!({ "name": "orders" })).await,
        409,
        "name-conflict",
    );

    // An automatic rotation of the origin reaches the replica; the replica does not rotate
    // by itself.
    a.post(
        &key_path(&id, "enable-key-rotation"),
        json!({ "rotation-period": 90 }),
    )
    .await;
    server.clock.advance_days(90);
    server.kms[1].run_due().unwrap();
    assert_eq!(get_key(&mut b, &id).await["material"]["version"], 2);
    server.kms[0].run_due().unwrap();
    let origin = get_key(&mut a, &id).await;
    assert_eq!(origin["material"]["version"], 3);
    assert_eq!(origin["material"]["automatic"], true);
    eventually(&mut b, &id, "the automatic rotation arrives", |key| {
        key["material"] == origin["material"] && key["rotation"] == origin["rotation"]
    })
    .await;
    let v3 = encrypt(&mut b, &id, b"v3", None).await;
    decrypts_to(&mut a, &id, &v3, None, b"v3").await;
}

#[tokio::test]
async fn replicate_refusals_and_what_a_replica_may_not_do() {
    let server = TestServer::start(&[ZONE_A, ZONE_B]).await;
    let mut a = server.client(0).await;
    let mut b = server.client(1).await;
    let id = create_multi_zone(&mut a, "mz").await;
    let single = create_id(&mut a, "single").await;
    let replicate = key_path(&id, "replicate");

    // Zones that cannot be used, and bodies that name none: each detail names the zone
    // refused (quoted) or the field.
    let refusals: [(Option<Value>, Check, &str); 6] = [
        (
            Some(json!({ "zone": ZONE_A })),
            |reply| problem(reply, 400, "invalid-argument"),
            "\"ch-gva-2\" is the key's own zone",
        ),
        (
            Some(json!({ "zone": "xx-nowhere-1" })),
            |reply| problem(reply, 400, "invalid-argument"),
            "\"xx-nowhere-1\" is not a known zone",
        ),
        (
            Some(json!({ "zone": "" })),
            |reply| problem(reply, 400, "invalid-argument"),
            "\"\" is not a known zone",
        ),
        (
            None,
            |reply| bad_request(reply, "zone", &["required"]),
            "zone",
        ),
        (
            Some(json!({ "zone": 5 })),
            |reply| bad_request(reply, "zone", &[]),
            "zone",
        ),
        (
            Some(json!({ "zones": [ZONE_B] })),
            |reply| bad_request(reply, "body", &["zones"]),
            "zones",
        ),
    ];
    for (body, check, mention) in refusals {
        let label = format!("{body:?}");
        let detail = refused_with(&mut a, &id, "POST", &replicate, body, check).await;
        assert!(detail.contains(mention), "{label}: {detail}");
    }
    refused(
        &mut a,
        &single,
        "POST",
        &key_path(&single, "replicate"),
        Some(json!({ "zone": ZONE_B })),
        400,
        "not-multi-zone",
    )
    .await;

    success(&mut a, &id, "replicate", Some(json!({ "zone": ZONE_B }))).await;
    // The first delivery runs in the background; its bookkeeping (replicas-status) must not
    // land between the two reads of the refusal below.
    server.kms[0].wait_for_deliveries();
    refused(
        &mut a,
        &id,
        "POST",
        &replicate,
        Some(json!({ "zone": ZONE_B })),
        409,
        "conflict",
    )
    .await;
    eventually(&mut b, &id, "the replica arrives", |key| {
        key["id"] == id.as_str()
    })
    .await;

    // On the replica: only the origin rotates, changes rotation settings, schedules or
    // cancels deletion, and replicates.
    for (operation, body) in [
        ("rotate", None),
        (
            "enable-key-rotation",
            Some(json!({ "rotation-period": 100 })),
        ),
        ("disable-key-rotation", None),
        ("schedule-deletion", None),
        ("cancel-deletion", None),
        ("replicate", Some(json!({ "zone": ZONE_A }))),
    ] {
        let detail = refused(
            &mut b,
            &id,
            "POST",
            &key_path(&id, operation),
            body,
            400,
            "not-on-replica",
        )
        .await;
        assert!(detail.contains(ZONE_A), "{operation}: {detail}");
    }

    // While pending deletion, replication is refused.
    let other = create_multi_zone(&mut a, "pending").await;
    a.post_empty(&key_path(&other, "schedule-deletion")).await;
    refused(
        &mut a,
        &other,
        "POST",
        &key_path(&other, "replicate"),
        Some(json!({ "zone": ZONE_B })),
        400,
        "key-pending-deletion",
    )
    .await;
}

#[tokio::test]
async fn a_replica_follows_its_origin_through_deletion() {
    let server = TestServer::start(&[ZONE_A, ZONE_B]).await;
    let mut a = server.client(0).await;
    let mut b = server.client(1).await;
    let id = create_multi_zone(&mut a, "mz").await;
    success(&mut a, &id, "replicate", Some(json!({ "zone": ZONE_B }))).await;
    let ciphertext = encrypt(&mut a, &id, b"x", None).await;

    let reply = a
        .post(
            &key_path(&id, "schedule-deletion"),
            json!({ "delay-days": 10 }),
        )
        .await;
    let delete_at = ok(&reply)["delete-at"].clone();
    let replica = eventually(&mut b, &id, "the schedule arrives", |key| {
        key["status"] == "pending-deletion"
    })
    .await;
    assert_eq!(replica["delete-at"], delete_at);
    problem(
        &decrypt(&mut b, &id, &ciphertext, None).await,
        400,
        "key-pending-deletion",
    );

    assert_eq!(
        success(&mut a, &id, "cancel-deletion", None).await,
        "success"
    );
    assert_eq!(get_key(&mut a, &id).await["status"], "disabled");
    let replica = eventually(&mut b, &id, "the cancellation arrives", |key| {
        key["status"] == "disabled"
    })
    .await;
    assert!(replica.get("delete-at").is_none(), "{replica}");

    // Enable both (the replica's status is its own), then delete for good.
    success(&mut a, &id, "enable", None).await;
    success(&mut b, &id, "enable", None).await;
    decrypts_to(&mut b, &id, &ciphertext, None, b"x").await;
    a.post(
        &key_path(&id, "schedule-deletion"),
        json!({ "delay-days": 7 }),
    )
    .await;
    eventually(&mut b, &id, "the schedule arrives", |key| {
        key["status"] == "pending-deletion"
    })
    .await;
    server.clock.advance_days(7);
    problem(&a.get(&key_path(&id, "")).await, 404, "key-not-found");
    let mut gone = false;
    for _ in 0..100 {
        let reply = b.get(&key_path(&id, "")).await;
        if reply.status == 404 {
            problem(&reply, 404, "key-not-found");
            gone = true;
            break;
        }
        server.kms[0].run_due().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the replica outlived its origin's deletion");
    problem(
        &decrypt(&mut b, &id, &ciphertext, None).await,
        404,
        "key-not-found",
    );
    assert!(list_keys(&mut b).await.is_empty());
}

// ----- absent bodies -----------------------------------------------------------------------

#[tokio::test]
async fn an_absent_body_is_read_as_an_empty_object() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;

    // No body, no content type: the defaults apply.
    let path = key_path(&id, "generate-data-key");
    let authorization = c.authorization("POST", &path, b"");
    let reply = c
        .send(
            "POST",
            &path,
            &[(
                "authorization",
                HeaderValue::from_str(&authorization).unwrap(),
            )],
            Vec::new(),
        )
        .await;
    assert_eq!(unb64(&ok(&reply)["plaintext"]).len(), 32);
    // Whitespace only is no body either.
    let reply = c.signed("POST", &path, b" \r\n\t").await;
    assert_eq!(unb64(&ok(&reply)["plaintext"]).len(), 32);

    let reply = c.post_empty(&key_path(&id, "disable-key-rotation")).await;
    assert_eq!(ok(&reply)["rotation"]["automatic"], false);
    let reply = c.post_empty(&key_path(&id, "enable-key-rotation")).await;
    assert_eq!(ok(&reply)["rotation"]["rotation-period"], 365);
    let reply = c.post_empty(&key_path(&id, "schedule-deletion")).await;
    assert_eq!(ts(&ok(&reply)["delete-at"]), start_time() + days(30));
    assert_eq!(
        success(&mut c, &id, "cancel-deletion", None).await,
        "success"
    );
    assert_eq!(success(&mut c, &id, "enable", None).await, "success");
    // Required fields are still required.
    for (operation, field) in [
        ("encrypt", "plaintext"),
        ("decrypt", "ciphertext"),
        ("re-encrypt", "source"),
    ] {
        let _row = Row::new(operation);
        bad_request(
            &c.post_empty(&key_path(&id, operation)).await,
            field,
            &["required"],
        );
    }
}

// ----- malformed bodies --------------------------------------------------------------------

#[tokio::test]
async fn malformed_bodies_are_400_naming_the_field_and_change_nothing() {
    let server = TestServer::start(&[ZONE_A, ZONE_B]).await;
    let mut c = server.client(0).await;
    let id = create_multi_zone(&mut c, "k").await;
    let other = create_id(&mut c, "other").await;
    let ciphertext = encrypt(&mut c, &id, b"x", None).await;
    let before = list_keys(&mut c).await;
    let before_key = get_key(&mut c, &id).await;

    // Not JSON, or not an object: `body`.
    for raw in [
        &b"{"[..],
        b"[]",
        b"\"name\"",
        b"1",
        b"null",
        b"true",
        b"{\"name\":\"a\"}{",
        b"{\"name\":\"a\",}",
        b"\xff\xfe{}",
        b"{\"name\":\"\xff\"}",
    ] {
        for path in [
            "/v2/kms-key".to_owned(),
            key_path(&id, "encrypt"),
            key_path(&id, "enable"),
        ] {
            let _row = Row::new(format!("{path} {}", String::from_utf8_lossy(raw)));
            let reply = c.signed("POST", &path, raw).await;
            bad_request(&reply, "body", &[]);
        }
    }
    // Deeply nested JSON is refused, not a crash.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    bad_request(
        &c.signed("POST", "/v2/kms-key", deep.as_bytes()).await,
        "body",
        &[],
    );
    // A GET with fields.
    bad_request(
        &c.call("GET", &key_path(&id, ""), Some(&json!({ "x": 1 })))
            .await,
        "body",
        &["x"],
    );

    let encrypt_path = key_path(&id, "encrypt");
    let decrypt_path = key_path(&id, "decrypt");
    let re_encrypt_path = key_path(&id, "re-encrypt");
    let cases: Vec<(&str, Value, &str)> = vec![
        (&encrypt_path, json!({ "plaintext": 5 }), "plaintext"),
        (&encrypt_path, json!({ "plaintext": "%%%" }), "plaintext"),
        (
            &encrypt_path,
            json!({ "plaintext": "aGVsbG8" }),
            "plaintext",
        ),
        (
            &encrypt_path,
            json!({ "plaintext": ["aGVsbG8="] }),
            "plaintext",
        ),
        (
            &encrypt_path,
            json!({ "plaintext": "aGk=", "encryption-context": "!" }),
            "encryption-context",
        ),
        (
            &encrypt_path,
            json!({ "plaintext": "aGk=", "encryption-context": 1 }),
            "encryption-context",
        ),
        (
            &encrypt_path,
            json!({ "plaintext": "aGk=", "extra": 1 }),
            "body",
        ),
        (
            &decrypt_path,
            json!({ "ciphertext": "not base64!" }),
            "ciphertext",
        ),
        (&decrypt_path, json!({ "ciphertext": {} }), "ciphertext"),
        (
            &decrypt_path,
            json!({ "ciphertext": ciphertext, "encryption-context": "?" }),
            "encryption-context",
        ),
        (
            &re_encrypt_path,
            json!({ "source": 1, "destination": { "key": other } }),
            "source",
        ),
        (
            &re_encrypt_path,
            json!({ "source": { "key": id, "ciphertext": ciphertext } }),
            "destination",
        ),
        (
            &re_encrypt_path,
            json!({ "source": { "key": "nope", "ciphertext": ciphertext }, "destination": { "key": other } }),
            "source.key",
        ),
        (
            &re_encrypt_path,
            json!({ "source": { "key": id }, "destination": { "key": other } }),
            "source.ciphertext",
        ),
        (
            &re_encrypt_path,
            json!({ "source": { "key": id, "ciphertext": "@@" }, "destination": { "key": other } }),
            "source.ciphertext",
        ),
        (
            &re_encrypt_path,
            json!({ "source": { "key": id, "ciphertext": ciphertext, "encryption-context": 3 }, "destination": { "key": other } }),
            "source.encryption-context",
        ),
        (
            &re_encrypt_path,
            json!({ "source": { "key": id, "ciphertext": ciphertext }, "destination": { "key": 17 } }),
            "destination.key",
        ),
        (
            &re_encrypt_path,
            json!({ "source": { "key": id, "ciphertext": ciphertext }, "destination": { "key": other, "encryption-context": "#" } }),
            "destination.encryption-context",
        ),
        (
            &re_encrypt_path,
            json!({ "source": { "key": id, "ciphertext": ciphertext, "colour": 1 }, "destination": { "key": other } }),
            "source",
        ),
        (
            &re_encrypt_path,
            json!({ "source": { "key": id, "ciphertext": ciphertext }, "destination": { "key": other, "ciphertext": ciphertext } }),
            "destination",
        ),
    ];
    for (path, body, field) in cases {
        let _row = Row::new(format!("{path} {body}"));
        let reply = c.post(path, body).await;
        bad_request(&reply, field, &[]);
    }
    let detail = bad_request(
        &c.post(
            &re_encrypt_path,
            json!({ "source": { "key": id, "ciphertext": ciphertext, "colour": 1 }, "destination": { "key": other } }),
        )
        .await,
        "source",
        &["colour"],
    );
    assert!(detail.contains("source.colour"), "{detail}");
    assert_eq!(list_keys(&mut c).await, before);
    assert_eq!(get_key(&mut c, &id).await, before_key);
}

// ----- authentication ----------------------------------------------------------------------

#[tokio::test]
async fn missing_and_malformed_authorization_is_401() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let before = list_keys(&mut c).await;

    let body = br#"{"name":"intruder"}"#.to_vec();
    for (method, path, body) in [
        ("POST", "/v2/kms-key".to_owned(), body.clone()),
        ("GET", key_path(&id, ""), Vec::new()),
        // Unsigned, even with a malformed id: the signature is checked first.
        ("POST", "/v2/kms-key/nope/enable".to_owned(), Vec::new()),
    ] {
        let _row = Row::new(format!("{method} {path}"));
        let reply = c.send(method, &path, &[], body).await;
        problem(&reply, 401, "unauthorized");
        // RFC 9110 §11.6.1: a 401 names the scheme to authenticate with.
        assert_eq!(
            reply
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("EXO2-HMAC-SHA256"),
            "{method} {path}"
        );
    }

    let expires = unix_now() + 300;
    let good = auth::sign(
        http_support::KEY,
        http_support::SECRET,
        "POST",
        "/v2/kms-key",
        &body,
        expires,
    );
    let signature = good.rsplit("signature=").next().unwrap().to_owned();
    let malformed: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"Bearer abc".to_vec(),
        b"EXO2-HMAC-SHA256".to_vec(),
        b"EXO2-HMAC-SHA256 ".to_vec(),
        b"exo2-hmac-sha256 credential=EXOtest,expires=1,signature=abcd".to_vec(),
        format!("EXO2-HMAC-SHA256 credential=EXOtest,expires={expires}").into_bytes(),
        format!("EXO2-HMAC-SHA256 credential=EXOtest,signature={signature}").into_bytes(),
        format!("EXO2-HMAC-SHA256 expires={expires},signature={signature}").into_bytes(),
        format!("EXO2-HMAC-SHA256 credential=,expires={expires},signature={signature}").into_bytes(),
        format!("EXO2-HMAC-SHA256 credential=EXOtest,expires=soon,signature={signature}").into_bytes(),
        format!("EXO2-HMAC-SHA256 credential=EXOtest,expires={expires},signature=!!!").into_bytes(),
        format!("EXO2-HMAC-SHA256 credential=EXOtest,expires={expires},expires={expires},signature={signature}")
            .into_bytes(),
        format!("EXO2-HMAC-SHA256 credential=EXOtest,colour=blue,expires={expires},signature={signature}")
            .into_bytes(),
        format!("EXO2-HMAC-SHA256 credential=EXOtest;expires={expires};signature={signature}").into_bytes(),
        b"EXO2-HMAC-SHA256 credential=EXOtest,expires=1,signature=\xff\xfe".to_vec(),
    ];
    for header in malformed {
        let _row = Row::new(String::from_utf8_lossy(&header));
        let value = HeaderValue::from_bytes(&header).unwrap();
        let reply = c
            .send(
                "POST",
                "/v2/kms-key",
                &[("authorization", value)],
                body.clone(),
            )
            .await;
        let detail = problem(&reply, 401, "unauthorized");
        assert!(
            !detail.contains(&signature),
            "the detail repeats the signature: {detail}"
        );
    }
    assert_eq!(
        list_keys(&mut c).await,
        before,
        "an unauthenticated request created a key"
    );
}

#[tokio::test]
async fn bad_signatures_are_403_and_change_nothing() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let other = create_id(&mut c, "other").await;
    let keys = list_keys(&mut c).await;
    let disable = key_path(&id, "disable");
    let now = unix_now();

    /// A request as it is signed (or sent: its method, path and body).
    #[derive(Clone)]
    struct Signing {
        key: &'static str,
        secret: &'static [u8],
        method: &'static str,
        path: String,
        body: Vec<u8>,
        expires: i64,
    }
    impl Signing {
        /// A copy with `alter` applied.
        fn altered(&self, alter: impl FnOnce(&mut Signing)) -> Signing {
            let mut altered = self.clone();
            alter(&mut altered);
            altered
        }
        /// Its `Authorization`.
        fn sign(&self) -> String {
            auth::sign(
                self.key,
                self.secret,
                self.method,
                &self.path,
                &self.body,
                self.expires,
            )
        }
        /// A row: `what` is wrong, this request is sent, signed with `alter` applied.
        fn forged(
            &self,
            what: &'static str,
            alter: impl FnOnce(&mut Signing),
        ) -> (&'static str, Signing, String) {
            (what, self.clone(), self.altered(alter).sign())
        }
    }
    // The requests sent; each row signs one of them with one thing altered.
    let disable_it = Signing {
        key: http_support::KEY,
        secret: http_support::SECRET,
        method: "POST",
        path: disable.clone(),
        body: Vec::new(),
        expires: now + 300,
    };
    let create_one = disable_it.altered(|s| {
        s.path = "/v2/kms-key".to_owned();
        s.body = br#"{"name":"intruder"}"#.to_vec();
    });
    let with_query = disable_it.altered(|s| s.path = format!("{disable}?zone=x"));
    let cases = vec![
        disable_it.forged("unknown key", |s| s.key = "EXOnobody"),
        disable_it.forged("wrong secret", |s| s.secret = b"guess"),
        disable_it.forged("expired", |s| s.expires = now - 60),
        disable_it.forged("valid for too long", |s| s.expires = now + 2 * 3600),
        disable_it.forged("path altered: signed for another key", |s| {
            s.path = key_path(&other, "disable");
        }),
        disable_it.forged("path altered: signed for another operation", |s| {
            s.path = key_path(&id, "enable");
        }),
        disable_it.forged("method altered: signed for GET", |s| s.method = "GET"),
        create_one.forged("method altered: signed for PUT", |s| s.method = "PUT"),
        create_one.forged("body altered", |s| {
            s.body = br#"{"name":"innocent"}"#.to_vec();
        }),
        create_one.forged("body altered: signed without", |s| s.body = Vec::new()),
        (
            "expires altered after signing",
            disable_it.clone(),
            disable_it.sign().replace(
                &format!("expires={}", now + 300),
                &format!("expires={}", now + 301),
            ),
        ),
        with_query.forged("a query argument added to the signed path", |_| {}),
    ];
    for (what, sent, authorization) in cases {
        let _row = Row::new(what);
        let (method, path) = (sent.method, sent.path.as_str());
        let header = [(
            "authorization",
            HeaderValue::from_str(&authorization).unwrap(),
        )];
        let reply = c.send(method, path, &header, sent.body).await;
        let detail = problem(&reply, 403, "forbidden");
        assert!(!detail.contains("test-secret"), "{what}: {detail}");
        assert_eq!(
            list_keys(&mut c).await,
            keys,
            "{what}: {method} {path} with {authorization}: refused but changed a key"
        );
    }
    // The control: the right signature works.
    assert_eq!(success(&mut c, &id, "disable", None).await, "success");
}

#[tokio::test]
async fn signed_query_arguments() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    create_id(&mut c, "k").await;
    let expires = unix_now() + 300;
    let signed = auth::sign_with_query(
        http_support::KEY,
        http_support::SECRET,
        "GET",
        "/v2/kms-key",
        &[("zone", ZONE_A), ("limit", "5")],
        b"",
        expires,
    );
    assert!(signed.contains("signed-query-args=limit;zone"), "{signed}");
    let header = [("authorization", HeaderValue::from_str(&signed).unwrap())];
    for query in ["zone=ch-gva-2&limit=5", "limit=5&zone=ch-gva-2"] {
        let reply = c
            .send("GET", &format!("/v2/kms-key?{query}"), &header, Vec::new())
            .await;
        assert_eq!(ok(&reply)["kms-keys"].as_array().unwrap().len(), 1);
    }
    for query in [
        "zone=ch-gva-2&limit=6",
        "zone=de-fra-1&limit=5",
        "limit=5",
        "",
    ] {
        let reply = c
            .send("GET", &format!("/v2/kms-key?{query}"), &header, Vec::new())
            .await;
        problem(&reply, 403, "forbidden");
    }
}

// ----- routes, limits, garbage -------------------------------------------------------------

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_problems() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let before = get_key(&mut c, &id).await;
    for (method, path) in [
        ("GET", "/".to_owned()),
        ("GET", "/v2".to_owned()),
        ("GET", "/v2/kms-keys".to_owned()),
        ("GET", "/v1/kms-key".to_owned()),
        ("POST", key_path(&id, "explode")),
        ("POST", format!("{}/enable/again", key_path(&id, ""))),
        ("GET", format!("/v2/kms-key/{id}/")),
    ] {
        let detail = problem(&c.signed(method, &path, b"").await, 404, "not-found");
        assert!(detail.contains(method), "{detail}");
    }
    for (method, path, allowed) in [
        ("DELETE", "/v2/kms-key".to_owned(), "POST"),
        ("PUT", "/v2/kms-key".to_owned(), "GET"),
        ("DELETE", key_path(&id, ""), "GET"),
        ("POST", key_path(&id, ""), "GET"),
        ("GET", key_path(&id, "enable"), "POST"),
        ("GET", key_path(&id, "encrypt"), "POST"),
        ("PATCH", key_path(&id, "rotate"), "POST"),
        ("POST", key_path(&id, "list-key-rotations"), "GET"),
    ] {
        let reply = c.signed(method, &path, b"").await;
        let detail = problem(&reply, 405, "method-not-allowed");
        assert!(detail.contains(method), "{detail}");
        // RFC 9110: a 405 names the methods that are allowed.
        let allow = reply
            .headers
            .get("allow")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            allow.contains(allowed),
            "{method} {path}: Allow is {allow:?}"
        );
        assert!(
            !allow.contains(method),
            "{method} {path}: Allow is {allow:?}"
        );
    }
    assert_eq!(get_key(&mut c, &id).await, before);
}

/// What does not depend on the key is refused from the headers alone: no header, or a
/// signature outside its time window. The server does not wait for (or hold) a body they
/// announce. An unknown key is not told from a wrong signature: its body is read and HMAC'd.
#[tokio::test]
async fn unsigned_or_expired_requests_are_refused_before_their_body_is_read() {
    let server = TestServer::start(&[ZONE_A]).await;
    let header = |key: &str, expires: i64| {
        format!(
            "Authorization: {}\r\n",
            auth::sign(key, b"x", "POST", "/v2/kms-key", b"", expires)
        )
    };
    let request = |authorization: &str| {
        // 1000 bytes announced, none sent: an answer can only come from the headers.
        format!(
            "POST /v2/kms-key HTTP/1.1\r\nHost: x\r\n{authorization}Content-Length: 1000\r\n\r\n"
        )
    };
    for (authorization, expected) in [
        (String::new(), Some(401)),
        (header("nobody", unix_now() - 60), Some(403)),
        (header(http_support::KEY, unix_now() - 60), Some(403)),
        (header("nobody", unix_now() + 7200), Some(403)),
        // Within the window, an unknown key waits for its body, as a known one does.
        (header("nobody", unix_now() + 60), None),
        (header(http_support::KEY, unix_now() + 60), None),
    ] {
        let answer = raw_exchange(
            server.addrs[0],
            request(&authorization).as_bytes(),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(
            raw_status(&answer),
            expected,
            "{authorization}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_change_nothing() {
    const LIMIT: usize = 1024;
    let server = TestServer::start_with(&[ZONE_A], Limits::default(), options(LIMIT)).await;
    let mut c = server.client(0).await;

    // Exactly at the limit: read.
    let filler = LIMIT
        - json!({ "name": "fits", "description": "" })
            .to_string()
            .len();
    let at_limit = json!({ "name": "fits", "description": "d".repeat(filler) }).to_string();
    assert_eq!(at_limit.len(), LIMIT);
    let reply = c.signed("POST", "/v2/kms-key", at_limit.as_bytes()).await;
    ok(&reply);
    let before = list_keys(&mut c).await;

    // One byte over, and far over (with Content-Length).
    for extra in [1, 3000, 200_000] {
        let filler = LIMIT + extra
            - json!({ "name": "big", "description": "" })
                .to_string()
                .len();
        let body = json!({ "name": "big", "description": "d".repeat(filler) }).to_string();
        assert_eq!(body.len(), LIMIT + extra);
        let mut fresh = server.client(0).await;
        let reply = fresh.signed("POST", "/v2/kms-key", body.as_bytes()).await;
        let detail = problem(&reply, 413, "payload-too-large");
        assert!(detail.contains(&LIMIT.to_string()), "{detail}");
    }
    // Chunked, without Content-Length.
    let body = json!({ "name": "chunked", "description": "d".repeat(3 * LIMIT) }).to_string();
    let authorization = c.authorization("POST", "/v2/kms-key", body.as_bytes());
    let mut request = format!(
        "POST /v2/kms-key HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(500) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(server.addrs[0], &request, Duration::from_secs(5)).await;
    assert_eq!(
        raw_status(&answer),
        Some(413),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(
        text.contains("content-type: application/problem+json"),
        "{text}"
    );
    // A small chunked body is fine.
    let small = br#"{"name":"small chunked"}"#;
    let authorization = c.authorization("POST", "/v2/kms-key", small);
    let mut request = format!(
        "POST /v2/kms-key HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        small.len()
    )
    .into_bytes();
    request.extend_from_slice(small);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = raw_exchange(server.addrs[0], &request, Duration::from_secs(5)).await;
    assert_eq!(
        raw_status(&answer),
        Some(200),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let after = list_keys(&mut c).await;
    assert_eq!(
        after.len(),
        before.len() + 1,
        "only the small chunked key is new"
    );
    assert!(
        after
            .iter()
            .all(|key| key["name"] != "big" && key["name"] != "chunked")
    );
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_stop_the_server() {
    let server = TestServer::start(&[ZONE_A]).await;
    let mut c = server.client(0).await;
    let id = create_id(&mut c, "k").await;
    let garbage: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03\r\n\r\n".to_vec(),
        b"HELLO\r\n\r\n".to_vec(),
        b"GET /v2/kms-key HTTP/9.9\r\n\r\n".to_vec(),
        b"POST /v2/kms-key HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
        b"POST /v2/kms-key HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        b"POST /v2/kms-key HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"na".to_vec(),
        format!("GET /v2/kms-key HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000)).into_bytes(),
        b"GET /v2/kms-key/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..=255u8).cycle().take(10_000).collect(),
    ];
    for bytes in garbage {
        let answer = raw_exchange(server.addrs[0], &bytes, Duration::from_secs(2)).await;
        if let Some(status) = raw_status(&answer) {
            assert!(
                (400..500).contains(&status),
                "garbage answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    assert!(server.is_running());
    assert_eq!(get_key(&mut c, &id).await["status"], "enabled");
    create_id(&mut c, "still works").await;
}

// ----- random requests ---------------------------------------------------------------------

/// The operations a random request may aim at (`@collection` for the paths without a key).
const OPERATIONS: [&str; 16] = [
    "",
    "list-key-rotations",
    "enable",
    "disable",
    "rotate",
    "enable-key-rotation",
    "disable-key-rotation",
    "schedule-deletion",
    "cancel-deletion",
    "replicate",
    "encrypt",
    "decrypt",
    "re-encrypt",
    "generate-data-key",
    "explode",
    "@collection",
];

/// Every field name of the API, for random objects.
const FIELDS: [&str; 15] = [
    "name",
    "description",
    "usage",
    "multi-zone",
    "rotation-period",
    "delay-days",
    "zone",
    "plaintext",
    "ciphertext",
    "encryption-context",
    "key-spec",
    "bytes-count",
    "source",
    "destination",
    "key",
];

/// The fields of operation `operation`'s body.
fn fields_of(operation: &str) -> &'static [&'static str] {
    match operation {
        "enable-key-rotation" => &["rotation-period"],
        "schedule-deletion" => &["delay-days"],
        "replicate" => &["zone"],
        "encrypt" => &["plaintext", "encryption-context"],
        "decrypt" => &["ciphertext", "encryption-context"],
        "re-encrypt" => &["source", "destination"],
        "generate-data-key" => &["key-spec", "bytes-count", "encryption-context"],
        "@collection" => &["name", "description", "usage", "multi-zone"],
        _ => &[],
    }
}

#[derive(Debug, Clone)]
enum Target {
    /// One of the keys made before the run.
    Key(usize),
    /// A UUID that names no key.
    Unknown,
    /// A path segment that is not a UUID.
    Segment(String),
}

#[derive(Debug, Clone)]
enum Body {
    Empty,
    Bytes(Vec<u8>),
    Json(Value),
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    target: Target,
    operation: &'static str,
    collection: &'static str,
    body: Body,
}

/// Keys and ciphertexts of the run, for values that may be valid.
#[derive(Clone)]
struct Known {
    keys: Vec<String>,
    ciphertexts: Vec<String>,
}

/// Any JSON value, with a fair share of the run's keys and ciphertexts.
fn json_value(known: &Known) -> impl Strategy<Value = Value> + use<> {
    let mut interesting = vec![json!(""), json!(NO_SUCH_KEY), json!(b64(b"hello"))];
    interesting.extend(known.keys.iter().map(|key| json!(key)));
    interesting.extend(known.ciphertexts.iter().map(|c| json!(c)));
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-10i64..3000).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| { serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number) }),
        "[ -~]{0,24}".prop_map(Value::from),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| Value::from(b64(&bytes))),
        proptest::sample::select(interesting),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(FIELDS.to_vec()), inner), 0..4)
                .prop_map(|members| {
                    Value::Object(
                        members
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect(),
                    )
                }),
        ]
    })
}

/// A value of `field` that is often valid.
fn good_value(field: &'static str, known: &Known) -> BoxedStrategy<Value> {
    let bytes = || {
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|bytes| json!(b64(&bytes)))
            .boxed()
    };
    match field {
        "name" => "[a-z]{1,12}".prop_map(Value::from).boxed(),
        "description" => "[ -~]{0,30}".prop_map(Value::from).boxed(),
        "usage" => Just(json!("encrypt-decrypt")).boxed(),
        "multi-zone" => any::<bool>().prop_map(Value::from).boxed(),
        "rotation-period" => (80u32..2600).prop_map(Value::from).boxed(),
        "delay-days" => (5u32..33).prop_map(Value::from).boxed(),
        "zone" => proptest::sample::select(vec![ZONE_A, ZONE_B, "xx-nowhere-1"])
            .prop_map(Value::from)
            .boxed(),
        "key-spec" => proptest::sample::select(vec!["AES-256", "AES-128"])
            .prop_map(Value::from)
            .boxed(),
        "bytes-count" => (0u32..1100).prop_map(Value::from).boxed(),
        "ciphertext" => prop_oneof![
            3 => proptest::sample::select(known.ciphertexts.clone()).prop_map(Value::from),
            1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(|bytes| json!(b64(&bytes))),
        ]
        .boxed(),
        "key" => {
            let mut keys = known.keys.clone();
            keys.push(NO_SUCH_KEY.to_owned());
            proptest::sample::select(keys).prop_map(Value::from).boxed()
        }
        "source" => object_of(&["key", "ciphertext", "encryption-context"], known),
        "destination" => object_of(&["key", "encryption-context"], known),
        _ => bytes(),
    }
}

/// An object with some of `fields`, mostly with valid values, sometimes an unknown member.
fn object_of(fields: &[&'static str], known: &Known) -> BoxedStrategy<Value> {
    let members: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .iter()
        .map(|&field| {
            proptest::option::weighted(
                0.8,
                prop_oneof![5 => good_value(field, known), 1 => json_value(known)],
            )
            .prop_map(move |value| value.map(|value| (field.to_owned(), value)))
            .boxed()
        })
        .collect();
    let extra = proptest::option::weighted(
        0.1,
        (proptest::sample::select(FIELDS.to_vec()), json_value(known)),
    );
    (members, extra)
        .prop_map(|(members, extra)| {
            let mut object: serde_json::Map<String, Value> =
                members.into_iter().flatten().collect();
            if let Some((name, value)) = extra {
                object.insert(name.to_owned(), value);
            }
            Value::Object(object)
        })
        .boxed()
}

fn cases(known: Known) -> impl Strategy<Value = Case> {
    let count = known.keys.len();
    proptest::sample::select(OPERATIONS.to_vec()).prop_flat_map(move |operation| {
        let natural = match operation {
            "" | "list-key-rotations" => vec!["GET"],
            "@collection" => vec!["GET", "POST", "POST"],
            _ => vec!["POST"],
        };
        let method = prop_oneof![
            5 => proptest::sample::select(natural),
            1 => proptest::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ];
        let target = prop_oneof![
            6 => (0..count).prop_map(Target::Key),
            1 => Just(Target::Unknown),
            1 => "[A-Za-z0-9._~-]{1,40}".prop_map(Target::Segment),
        ];
        let collection = prop_oneof![
            6 => Just("/v2/kms-key"),
            1 => proptest::sample::select(vec!["/v2/kms-keys", "/v2", "/"]),
        ];
        let body = prop_oneof![
            1 => Just(Body::Empty),
            1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Body::Bytes),
            1 => json_value(&known).prop_map(Body::Json),
            6 => object_of(fields_of(operation), &known).prop_map(Body::Json),
        ];
        (method, target, collection, body).prop_map(move |(method, target, collection, body)| {
            Case {
                method,
                target,
                operation,
                collection,
                body,
            }
        })
    })
}

/// The state of every key, for comparison before and after a refused request.
async fn snapshot(client: &mut Client, keys: &[String]) -> Vec<Reply> {
    let mut states = vec![client.get("/v2/kms-key").await];
    for key in keys {
        states.push(client.get(&key_path(key, "")).await);
    }
    states
}

#[test]
fn random_signed_requests_get_a_contract_status_and_never_break_the_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, client, keys, ciphertexts) = runtime.block_on(async {
        let server =
            TestServer::start_with(&[ZONE_A, ZONE_B], Limits::default(), options(2048)).await;
        let mut c = server.client(0).await;
        let keys = vec![
            create_id(&mut c, "plain").await,
            create_multi_zone(&mut c, "multi").await,
            create_id(&mut c, "third").await,
        ];
        let mut ciphertexts = Vec::new();
        for key in &keys {
            ciphertexts.push(encrypt(&mut c, key, b"random", None).await);
        }
        (server, c, keys, ciphertexts)
    });
    let client = RefCell::new(Some(client));
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = cases(Known {
        keys: keys.clone(),
        ciphertexts,
    });
    let result = runner.run(&strategy, |case| {
        // Taken out of the cell for the case (no cell borrow across awaits), then put back.
        let mut c = client
            .borrow_mut()
            .take()
            .expect("the client is in its cell");
        let outcome = runtime.block_on(async {
            let c = &mut c;
            let path = match &case.target {
                _ if case.operation == "@collection" => case.collection.to_owned(),
                Target::Key(index) => key_path(&keys[*index], case.operation),
                Target::Unknown => key_path(NO_SUCH_KEY, case.operation),
                Target::Segment(segment) => key_path(segment, case.operation),
            };
            let body = match &case.body {
                Body::Empty => Vec::new(),
                Body::Bytes(bytes) => bytes.clone(),
                Body::Json(value) => value.to_string().into_bytes(),
            };
            let before = snapshot(c, &keys).await;
            let reply = c.signed(case.method, &path, &body).await;
            prop_assert!(
                SIGNED_STATUSES.contains(&reply.status),
                "{} {path}: status {} is not one of {:?}: {reply}",
                case.method,
                reply.status,
                SIGNED_STATUSES
            );
            if reply.status == 200 {
                prop_assert_eq!(reply.content_type.as_deref(), Some("application/json"));
                prop_assert!(reply.json.is_object(), "{}", reply);
            } else {
                if let Some(error) = problem_error(&reply) {
                    return Err(TestCaseError::fail(error));
                }
                let after = snapshot(c, &keys).await;
                for (before, after) in before.iter().zip(&after) {
                    prop_assert_eq!(
                        &before.body,
                        &after.body,
                        "{} {} was refused ({}) but changed state",
                        case.method,
                        path,
                        reply
                    );
                }
            }
            Ok(())
        });
        *client.borrow_mut() = Some(c);
        outcome
    });
    let mut c = client
        .borrow_mut()
        .take()
        .expect("the client is in its cell");
    runtime.block_on(async {
        ok(&c.get("/v2/kms-key").await);
        assert!(server.is_running(), "the server stopped");
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    runtime.block_on(server.stop());
}

/// `serve` runs what is due in every zone once before any zone serves (what came due while
/// it was down), then every `due_interval`; each run is reported as an event.
#[tokio::test]
async fn what_is_due_runs_at_start_and_is_reported() {
    use keylife::DueRun;
    use keylife::server::{Event, Events};
    use std::sync::{Arc, Mutex};
    let runs: Arc<Mutex<Vec<String>>> = Arc::default();
    let options = keylife::server::ServeOptions {
        events: Events::new({
            let runs = Arc::clone(&runs);
            move |event: &Event<'_>| {
                if let Event::DueRun { zone, run } = event {
                    let outcome = match run {
                        DueRun::Ran(Ok(report)) => format!("ran, {} deleted", report.deleted.len()),
                        other => format!("{other:?}"),
                    };
                    runs.lock().unwrap().push(format!("{zone}: {outcome}"));
                }
            }
        }),
        ..http_support::options(keylife::server::DEFAULT_MAX_BODY_BYTES)
    };
    let server = TestServer::start_with(&[ZONE_A, ZONE_B], Limits::default(), options).await;
    let mut client = server.client(0).await;
    ok(&client.get("/v2/kms-key").await);
    let mut seen = runs.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        [
            format!("{ZONE_A}: ran, 0 deleted"),
            format!("{ZONE_B}: ran, 0 deleted")
        ],
        "one run per zone before any zone serves, none more within the (24 h) interval"
    );
    server.stop().await;
}
