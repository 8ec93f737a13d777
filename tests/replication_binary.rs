//! Replication between two `keylife serve` processes (issue 14): zone A (`ch-gva-2`) and zone
//! B (`de-fra-1`), each with its own data directory and root key, on loopback ports, each
//! naming the other with `--peer` through a proxy the test owns (tests/http_support/proxy.rs),
//! which can refuse, hold or forward the link's connections and records what passes.
//!
//! What is checked: the lifecycle across processes (replicate, rotate, schedule and cancel
//! deletion, enable and disable, crypto in both zones); convergence after the target is
//! killed (SIGKILL) while its origin keeps changing keys; refusals of deliveries that are not
//! the link's (wrong credential, tampered, replayed) that change nothing, and an old delivery
//! re-signed that is harmless; a held link that never delays the origin's own answers; the
//! outbox across a restart of the origin; configuration errors; a key both zones hold as an
//! origin. Waits poll with a deadline; nothing asserts on a duration.

#![cfg(unix)]

mod http_support;

use http_support::{key_path, seq};

use std::time::{Duration, Instant};

use http_support::proxy::{self, Mode, Recorded};
use http_support::{
    Client, KEY, LINK_AB, PeerPair, SECRET, ServeFiles, ZONE_A, ZONE_B, b64, ok, problem, unb64,
    unix_now,
};
use keylife::server::auth;
use serde_json::{Value, json};

/// How long any wait for replication may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long one request to the origin may take before the test fails (test 4).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// The route of deliveries.
const UPDATE_ROUTE: &str = "/keylife/v1/replication/update";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn create_multi_zone(client: &mut Client, name: &str) -> String {
    let reply = client
        .post("/v2/kms-key", json!({ "name": name, "multi-zone": true }))
        .await;
    ok(&reply)["id"].as_str().unwrap().to_owned()
}

async fn get_key(client: &mut Client, id: &str) -> Value {
    ok(&client.get(&key_path(id, "")).await).clone()
}

/// The answer (200, JSON) to `operation` on key `id`.
async fn change(client: &mut Client, id: &str, operation: &str, body: Option<Value>) -> Value {
    let reply = client
        .call("POST", &key_path(id, operation), body.as_ref())
        .await;
    ok(&reply).clone()
}

async fn replicate(client: &mut Client, id: &str) {
    let answer = change(client, id, "replicate", Some(json!({ "zone": ZONE_B }))).await;
    assert_eq!(answer, json!({ "status": "target-registered" }));
}

async fn encrypt(client: &mut Client, id: &str, plaintext: &[u8], context: &[u8]) -> String {
    let reply = client
        .post(
            &key_path(id, "encrypt"),
            json!({ "plaintext": b64(plaintext), "encryption-context": b64(context) }),
        )
        .await;
    ok(&reply)["ciphertext"].as_str().unwrap().to_owned()
}

async fn decrypts_to(
    client: &mut Client,
    id: &str,
    ciphertext: &str,
    context: &[u8],
    plaintext: &[u8],
) {
    let reply = client
        .post(
            &key_path(id, "decrypt"),
            json!({ "ciphertext": ciphertext, "encryption-context": b64(context) }),
        )
        .await;
    assert_eq!(
        unb64(&ok(&reply)["plaintext"]),
        plaintext,
        "key {id}: another plaintext"
    );
}

/// A zone as the API shows it: the list, and each key's get-kms-key and list-key-rotations.
async fn zone_state(client: &mut Client) -> Value {
    let list = ok(&client.get("/v2/kms-key").await).clone();
    let mut keys = Vec::new();
    for key in list["kms-keys"].as_array().unwrap() {
        let id = key["id"].as_str().unwrap();
        let details = get_key(client, id).await;
        let rotations = ok(&client.get(&key_path(id, "list-key-rotations")).await).clone();
        keys.push(json!({ "key": details, "rotations": rotations }));
    }
    json!({ "list": list, "keys": keys })
}

/// Calls `probe` every 50 ms until it gives `Ok`, for at most [`PATIENCE`]; then fails with
/// `what` and the last `Err`.
async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within {PATIENCE:?}; last: {last}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The `replicas-status` entry of zone B in origin key `origin`.
fn status_of_b(origin: &Value) -> Result<&Value, String> {
    origin["replicas-status"]
        .as_array()
        .and_then(|all| all.iter().find(|status| status["zone"] == ZONE_B))
        .ok_or_else(|| format!("no replicas-status for {ZONE_B}: {origin}"))
}

/// Nothing of key `id` reached B yet: the origin shows no applied revision, B does not hold it.
async fn not_replicated_yet(a: &mut Client, b: &mut Client, id: &str) {
    let origin = get_key(a, id).await;
    assert_eq!(
        status_of_b(&origin).unwrap()["last-applied-watermark"],
        0,
        "{origin}"
    );
    problem(&b.get(&key_path(id, "")).await, 404, "key-not-found");
}

/// Waits until zone B holds key `id` at its origin's latest revision: A's `replicas-status`
/// shows B's watermark at the key's `revision.seq` without failure, and B serves the key.
/// Returns (origin, replica).
async fn converged(a: &mut Client, b: &mut Client, id: &str) -> (Value, Value) {
    until(&format!("key {id} reaches {ZONE_B}"), async || {
        let origin = get_key(a, id).await;
        let status = status_of_b(&origin)?;
        if status["last-applied-watermark"] != origin["revision"]["seq"]
            || status.get("last-failure").is_some()
        {
            return Err(format!("origin {origin}"));
        }
        let replica = b.get(&key_path(id, "")).await;
        if replica.status != 200 {
            return Err(format!("replica {replica}"));
        }
        Ok((origin, replica.json))
    })
    .await
}

/// Checks that `replica` follows `origin` (lifecycle.md, "Multi-zone replication"): same id,
/// material versions, rotation settings, deletion date; `origin-zone` the origin's zone.
#[track_caller]
fn follows(origin: &Value, replica: &Value) {
    for field in [
        "id",
        "name",
        "description",
        "multi-zone",
        "usage",
        "source",
        "created-at",
        "material",
        "rotation",
        "delete-at",
        "replicas",
    ] {
        assert_eq!(
            replica.get(field),
            origin.get(field),
            "`{field}` differs\norigin  {origin}\nreplica {replica}"
        );
    }
    assert_eq!(replica["origin-zone"], origin["origin-zone"], "{replica}");
    assert_ne!(replica["origin-zone"], Value::Null);
}

// ----- 0. The proxy the other tests rely on ----------------------------------------------------

#[test]
fn the_proxy_forwards_and_records_refuses_and_holds() {
    let files = ServeFiles::new();
    let zone = format!("{ZONE_A}=127.0.0.1:0");
    let served = http_support::ServeProcess::start(files.command(&[&zone], &[]), 1);
    let proxy = proxy::Proxy::start(Mode::Forward);
    runtime().block_on(async {
        // No target yet: closed at once.
        let mut client = Client::new(proxy.addr);
        assert!(client.try_signed("GET", "/v2/kms-key", b"").await.is_err());
        proxy.set_target(served.addr(0));
        let mut client = Client::new(proxy.addr);
        let created = client
            .post("/v2/kms-key", json!({ "name": "through the proxy" }))
            .await;
        let id = ok(&created)["id"].as_str().unwrap().to_owned();
        let recorded = proxy.recorded();
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0].path(), "/v2/kms-key");
        assert_eq!(
            serde_json::from_slice::<Value>(recorded[0].body()).unwrap(),
            json!({ "name": "through the proxy" })
        );
        // What was recorded, sent again as it is, is the same request.
        let again = proxy::send_raw(served.addr(0), &recorded[0].bytes);
        refused_raw(&again, 409, "name-conflict");
        let resigned = proxy::send_raw(served.addr(0), &resigned(&recorded[0], KEY, SECRET));
        refused_raw(&resigned, 409, "name-conflict");

        proxy.set_mode(Mode::Refuse);
        let mut refused = Client::new(proxy.addr);
        assert!(refused.try_signed("GET", "/v2/kms-key", b"").await.is_err());
        assert_eq!(proxy.refused_count(), 1);

        proxy.set_mode(Mode::Hold);
        let mut held = Client::new(proxy.addr);
        let path = key_path(&id, "");
        let waiting = held.try_signed("GET", &path, b"");
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut waiting)
                .await
                .is_err(),
            "a held connection was answered"
        );
        assert_eq!(proxy.held_count(), 1);
        // Leaving hold closes it: the request ends without an answer.
        proxy.set_mode(Mode::Forward);
        assert!(waiting.await.is_err());
        assert_eq!(proxy.recorded().len(), 1, "a held request was forwarded");
        let mut client = Client::new(proxy.addr);
        ok(&client.get(&path).await);
    });
    served.stop();
}

// ----- 1. The lifecycle across two processes ------------------------------------------------

#[test]
fn a_key_replicated_to_another_process_follows_its_origin_and_shares_ciphertexts() {
    let pair = PeerPair::start();
    runtime().block_on(async {
        let (mut a, mut b) = (pair.a.client(), pair.b.client());
        let id = create_multi_zone(&mut a, "orders").await;
        problem(&b.get(&key_path(&id, "")).await, 404, "key-not-found");
        let before = get_key(&mut a, &id).await;
        replicate(&mut a, &id).await;
        let (origin, replica) = converged(&mut a, &mut b, &id).await;
        assert_eq!(seq(&origin), seq(&before) + 1, "replicate is a change");
        assert_eq!(origin["replicas"], json!([ZONE_B]));
        assert_eq!(replica["origin-zone"], ZONE_A);
        assert_eq!(replica["status"], "enabled");
        assert_eq!(
            replica["replicas-status"]
                .as_array()
                .map_or(0, |all| all.len()),
            0,
            "a replica keeps no delivery bookkeeping: {replica}"
        );
        follows(&origin, &replica);

        // Ciphertexts made in either zone decrypt in both.
        let from_a = encrypt(&mut a, &id, b"made in a", b"ctx-a").await;
        let from_b = encrypt(&mut b, &id, b"made in b", b"ctx-b").await;
        decrypts_to(&mut b, &id, &from_a, b"ctx-a", b"made in a").await;
        decrypts_to(&mut a, &id, &from_b, b"ctx-b", b"made in b").await;
        let data_key = ok(&b.post_empty(&key_path(&id, "generate-data-key")).await).clone();
        let ciphertext = data_key["ciphertext"].as_str().unwrap();
        let reply = a
            .post(
                &key_path(&id, "decrypt"),
                json!({ "ciphertext": ciphertext }),
            )
            .await;
        assert_eq!(ok(&reply)["plaintext"], data_key["plaintext"]);

        // Rotation and its settings follow the origin; a replica refuses them itself.
        assert_eq!(
            change(&mut a, &id, "rotate", None).await["rotation"]["manual-count"],
            1
        );
        change(&mut a, &id, "disable-key-rotation", None).await;
        let (origin, replica) = converged(&mut a, &mut b, &id).await;
        follows(&origin, &replica);
        assert_eq!(replica["material"]["version"], 2);
        assert_eq!(replica["rotation"]["automatic"], false);
        assert_eq!(
            ok(&b.get(&key_path(&id, "list-key-rotations")).await),
            ok(&a.get(&key_path(&id, "list-key-rotations")).await)
        );
        problem(
            &b.post_empty(&key_path(&id, "rotate")).await,
            400,
            "not-on-replica",
        );
        let v2_from_b = encrypt(&mut b, &id, b"v2 in b", b"").await;
        decrypts_to(&mut a, &id, &v2_from_b, b"", b"v2 in b").await;
        decrypts_to(&mut b, &id, &from_a, b"ctx-a", b"made in a").await;

        // Enable and disable are each zone's own; the origin's advance the watermark only.
        let origin = get_key(&mut a, &id).await;
        assert_eq!(
            change(&mut b, &id, "disable", None).await["status"],
            "success"
        );
        assert_eq!(get_key(&mut b, &id).await["status"], "disabled");
        assert_eq!(get_key(&mut a, &id).await, origin, "B's disable changed A");
        assert_eq!(
            change(&mut b, &id, "enable", None).await["status"],
            "success"
        );
        assert_eq!(
            change(&mut a, &id, "disable", None).await["status"],
            "success"
        );
        let (origin, replica) = converged(&mut a, &mut b, &id).await;
        assert_eq!(origin["status"], "disabled");
        assert_eq!(replica["status"], "enabled", "A's disable travelled");
        change(&mut a, &id, "enable", None).await;

        // Scheduled deletion follows; the replica then refuses cryptography.
        let scheduled = ok(&a
            .post(
                &key_path(&id, "schedule-deletion"),
                json!({ "delay-days": 7 }),
            )
            .await)
        .clone();
        let (origin, replica) = converged(&mut a, &mut b, &id).await;
        follows(&origin, &replica);
        assert_eq!(replica["status"], "pending-deletion");
        assert_eq!(replica["delete-at"], scheduled["delete-at"]);
        problem(
            &b.post(&key_path(&id, "encrypt"), json!({ "plaintext": b64(b"x") }))
                .await,
            400,
            "key-pending-deletion",
        );
        problem(
            &b.post_empty(&key_path(&id, "cancel-deletion")).await,
            400,
            "not-on-replica",
        );

        // Cancelled at the origin: both disabled (lifecycle.md), then enabled, each its own.
        change(&mut a, &id, "cancel-deletion", None).await;
        let (origin, replica) = converged(&mut a, &mut b, &id).await;
        follows(&origin, &replica);
        assert_eq!(origin["status"], "disabled");
        assert_eq!(replica["status"], "disabled");
        change(&mut a, &id, "enable", None).await;
        change(&mut b, &id, "enable", None).await;
        converged(&mut a, &mut b, &id).await;
        decrypts_to(&mut b, &id, &v2_from_b, b"", b"v2 in b").await;
        decrypts_to(&mut a, &id, &from_b, b"ctx-b", b"made in b").await;

        // The other direction: a key of zone B replicated to zone A.
        let other = create_multi_zone(&mut b, "invoices").await;
        let answer = change(&mut b, &other, "replicate", Some(json!({ "zone": ZONE_A }))).await;
        assert_eq!(answer["status"], "target-registered");
        let in_a = until("B's key reaches A", async || {
            let origin = get_key(&mut b, &other).await;
            let entry = origin["replicas-status"][0].clone();
            let replica = a.get(&key_path(&other, "")).await;
            if entry["zone"] == ZONE_A
                && entry["last-applied-watermark"] == origin["revision"]["seq"]
                && replica.status == 200
            {
                Ok(replica.json)
            } else {
                Err(format!("origin {origin}, replica {replica}"))
            }
        })
        .await;
        assert_eq!(in_a["origin-zone"], ZONE_B);
        let sealed = encrypt(&mut a, &other, b"a to b", b"").await;
        decrypts_to(&mut b, &other, &sealed, b"", b"a to b").await;
    });
}

// ----- 2. The target killed while its origin changes keys ------------------------------------

/// How many keys test 2 changes.
const KEYS: usize = 50;

#[test]
fn a_target_killed_while_its_origin_changes_keys_converges_once_restarted() {
    let mut pair = PeerPair::start();
    let runtime = runtime();
    // Every key replicated; a ciphertext of each made in each zone: (key, ciphertext, context,
    // plaintext).
    let mut sealed: Vec<(String, String, Vec<u8>, Vec<u8>)> = Vec::new();
    let ids: Vec<String> = runtime.block_on(async {
        let (mut a, mut b) = (pair.a.client(), pair.b.client());
        let mut ids = Vec::new();
        for index in 0..KEYS {
            let id = create_multi_zone(&mut a, &format!("key-{index}")).await;
            replicate(&mut a, &id).await;
            ids.push(id);
        }
        for (index, id) in ids.iter().enumerate() {
            converged(&mut a, &mut b, id).await;
            for (zone, client) in [("a", &mut a), ("b", &mut b)] {
                let context = format!("context {index}").into_bytes();
                let plaintext =
                    format!("made in {zone} with version 1 of key {index}").into_bytes();
                let ciphertext = encrypt(client, id, &plaintext, &context).await;
                sealed.push((id.clone(), ciphertext, context, plaintext));
            }
        }
        ids
    });

    // Two rounds of changes of every key at the origin (rotate, schedule and cancel the
    // deletion, enable again); the target is killed halfway through the first.
    runtime.block_on(async {
        let mut a = pair.a.client();
        for round in 0..2 {
            for (index, id) in ids.iter().enumerate() {
                if round == 0 && index == KEYS / 2 {
                    pair.b.kill();
                }
                change(&mut a, id, "rotate", None).await;
                let scheduled = a
                    .post(
                        &key_path(id, "schedule-deletion"),
                        json!({ "delay-days": 7 }),
                    )
                    .await;
                ok(&scheduled);
                change(&mut a, id, "cancel-deletion", None).await;
                change(&mut a, id, "enable", None).await;
            }
        }
        for (index, id) in ids.iter().enumerate() {
            let context = format!("context {index}").into_bytes();
            let plaintext = format!("made in a with version 3 of key {index}").into_bytes();
            let ciphertext = encrypt(&mut a, id, &plaintext, &context).await;
            sealed.push((id.clone(), ciphertext, context, plaintext));
        }
        // While the target is down, its origin says so.
        let last = ids.last().unwrap();
        let failure = until("the origin records the failure", async || {
            let origin = get_key(&mut a, last).await;
            let status = status_of_b(&origin)?;
            match status.get("last-failure") {
                Some(failure) => Ok(failure.clone()),
                None => Err(format!("{origin}")),
            }
        })
        .await;
        let error = failure["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("zone {ZONE_B} is unreachable")),
            "{failure}"
        );
    });

    // Restarted on its data directory (on another port, behind the same proxy): every
    // replica at its origin's latest revision, with the same versions; every replica
    // disabled (each saw or missed a cancelled deletion), every origin enabled.
    pair.b.start();
    runtime.block_on(async {
        let (mut a, mut b) = (pair.a.client(), pair.b.client());
        for id in &ids {
            let (origin, replica) = converged(&mut a, &mut b, id).await;
            follows(&origin, &replica);
            assert_eq!(origin["material"]["version"], 3, "{origin}");
            assert_eq!(origin["status"], "enabled");
            assert_eq!(replica["status"], "disabled", "{replica}");
            assert_eq!(
                ok(&b.get(&key_path(id, "list-key-rotations")).await),
                ok(&a.get(&key_path(id, "list-key-rotations")).await)
            );
            change(&mut b, id, "enable", None).await;
        }
        for (id, ciphertext, context, plaintext) in &sealed {
            decrypts_to(&mut a, id, ciphertext, context, plaintext).await;
            decrypts_to(&mut b, id, ciphertext, context, plaintext).await;
        }
    });
}

// ----- 3. Deliveries that are not the link's -------------------------------------------------

/// A multi-zone key with fixed material, seeded in zone A (test 3 looks for its material on
/// the wire).
const SEEDED: &str = "019b5a2e-7c00-7000-8000-00000000e001";
/// Its material (version 1).
const SEEDED_MATERIAL: [u8; 32] = *b"fixed material of the seeded key";

/// Checks that `answer` is a problem of status `status` and code `code`.
#[track_caller]
fn refused_raw(answer: &proxy::RawAnswer, status: u16, code: &str) {
    assert_eq!(
        answer.status, status,
        "expected {status} {code}: {answer:?}"
    );
    assert_eq!(answer.json()["code"], code, "{answer:?}");
}

/// `request` signed afresh by `key` and `secret`, with an `expires` other than its own (the
/// link signs for 300 s: the same key, body and `expires` would be the same signature).
fn resigned(request: &Recorded, key: &str, secret: &[u8]) -> Vec<u8> {
    let original: Option<i64> = request.header("authorization").and_then(|value| {
        let (_, rest) = value.split_once("expires=")?;
        rest.split(',').next()?.trim().parse().ok()
    });
    let mut expires = unix_now() + 120;
    if Some(expires) == original {
        expires += 1;
    }
    let authorization = auth::sign(
        key,
        secret,
        request.method(),
        request.path(),
        request.body(),
        expires,
    );
    proxy::with_authorization(request, &authorization)
}

#[test]
fn deliveries_not_from_the_link_are_refused_and_change_nothing() {
    let mut pair = PeerPair::new();
    let seed = pair.a.files.dir.path().join("seed.json");
    let seed_file = json!({ "keys": [{
        "id": SEEDED,
        "name": "seeded",
        "multi-zone": true,
        "versions": [{ "material": b64(&SEEDED_MATERIAL) }],
    }]});
    std::fs::write(&seed, seed_file.to_string()).unwrap();
    pair.a
        .args
        .extend(["--seed".to_owned(), seed.display().to_string()]);
    pair.b
        .add_credential("EXOlinkOther other-link-secret operations=replicate zones=at-vie-1");
    pair.a.start();
    pair.b.start();
    let b_addr = pair.b.addr();
    runtime().block_on(async {
        let (mut a, mut b) = (pair.a.client(), pair.b.client());
        let id = SEEDED;
        replicate(&mut a, id).await;
        converged(&mut a, &mut b, id).await;
        change(&mut a, id, "rotate", None).await;
        converged(&mut a, &mut b, id).await;
        // A change without new material: its delivery carries no wrapped version.
        change(&mut a, id, "disable-key-rotation", None).await;
        converged(&mut a, &mut b, id).await;

        let deliveries: Vec<Recorded> = pair
            .b
            .proxy
            .recorded()
            .into_iter()
            .filter(|request| request.path() == UPDATE_ROUTE)
            .collect();
        assert!(deliveries.len() >= 2, "{deliveries:?}");
        for delivery in &deliveries {
            assert_eq!(delivery.method(), "POST");
            let authorization = delivery.header("authorization").unwrap_or_default();
            assert!(
                authorization.contains(&format!("credential={}", LINK_AB.0)),
                "signed with the link credential: {authorization}"
            );
        }
        // The seeded material crossed (the replica decrypts with it) but never in clear.
        let sealed_in_a = encrypt(&mut a, id, b"under version 2", b"").await;
        decrypts_to(&mut b, id, &sealed_in_a, b"", b"under version 2").await;
        let forms: [Vec<u8>; 3] = [
            SEEDED_MATERIAL.to_vec(),
            b64(&SEEDED_MATERIAL).into_bytes(),
            SEEDED_MATERIAL
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
                .into_bytes(),
        ];
        for request in pair
            .b
            .proxy
            .recorded()
            .iter()
            .chain(&pair.a.proxy.recorded())
        {
            for form in &forms {
                assert!(
                    !request
                        .bytes
                        .windows(form.len())
                        .any(|w| w == form.as_slice()),
                    "material in clear in {request:?}"
                );
            }
        }

        let (old, newest) = (&deliveries[0], deliveries.last().unwrap());
        let before = zone_state(&mut b).await;
        assert_eq!(before["keys"][0]["key"]["material"]["version"], 2);

        // Signed by a credential without `replicate` (the API credential).
        refused_raw(
            &proxy::send_raw(b_addr, &resigned(old, KEY, SECRET)),
            403,
            "permission-denied",
        );
        assert_eq!(zone_state(&mut b).await, before);
        // With `replicate`, but not for the update's origin zone: refused before any
        // material is unwrapped, with material (the first delivery) or without (the newest).
        let other = ("EXOlinkOther", b"other-link-secret".as_slice());
        for delivery in [newest, old] {
            refused_raw(
                &proxy::send_raw(b_addr, &resigned(delivery, other.0, other.1)),
                403,
                "permission-denied",
            );
            assert_eq!(zone_state(&mut b).await, before);
        }
        // One body byte flipped, sent with its original signature.
        let mut tampered = newest.bytes.clone();
        tampered[newest.body_at + newest.body().len() / 2] ^= 0x01;
        refused_raw(&proxy::send_raw(b_addr, &tampered), 403, "forbidden");
        assert_eq!(zone_state(&mut b).await, before);
        // Signed by the link credential, but the last byte of the body flipped: the tag of
        // the last wrapped material version (the update's last field, docs/design.md "The
        // wire"), which then does not unwrap.
        let mut forged = old.clone();
        *forged.bytes.last_mut().unwrap() ^= 0x01;
        let answer = proxy::send_raw(b_addr, &resigned(&forged, LINK_AB.0, LINK_AB.1.as_bytes()));
        refused_raw(&answer, 400, "bad-request");
        let detail = answer.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(detail.contains("`replica-update`"), "{answer:?}");
        assert_eq!(zone_state(&mut b).await, before);
        // The newest delivery again, byte for byte.
        refused_raw(
            &proxy::send_raw(b_addr, &newest.bytes),
            403,
            "request-replayed",
        );
        assert_eq!(zone_state(&mut b).await, before);
        // The first delivery signed afresh by the link credential: accepted, and harmless
        // (the replica holds a newer revision and ignores older ones).
        let answer = proxy::send_raw(b_addr, &resigned(old, LINK_AB.0, LINK_AB.1.as_bytes()));
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/octet-stream"),
            "{answer:?}"
        );
        assert_eq!(
            zone_state(&mut b).await,
            before,
            "an old delivery changed the replica"
        );

        // The link credential can do nothing under /v2.
        let mut link = pair.b.client();
        link.key = LINK_AB.0.to_owned();
        link.secret = LINK_AB.1.as_bytes().to_vec();
        problem(&link.get("/v2/kms-key").await, 403, "permission-denied");
        problem(
            &link.post_empty(&key_path(id, "disable")).await,
            403,
            "permission-denied",
        );
        assert_eq!(zone_state(&mut b).await, before);
    });
}

// ----- 4. A held link never delays the origin's own answers ---------------------------------

/// `operation` on key `id` of `client`, which must answer 200 within [`ANSWER_WITHIN`].
async fn answered(client: &mut Client, id: &str, operation: &str, body: Option<Value>) -> Value {
    let path = key_path(id, operation);
    match tokio::time::timeout(ANSWER_WITHIN, client.call("POST", &path, body.as_ref())).await {
        Ok(reply) => ok(&reply).clone(),
        Err(_) => panic!(
            "{operation}: no answer within {ANSWER_WITHIN:?}: the held link delays the origin"
        ),
    }
}

#[test]
fn a_held_link_never_delays_the_origin_s_answers() {
    let mut pair = PeerPair::new();
    pair.a
        .args
        .extend(["--peer-timeout".to_owned(), "300".to_owned()]);
    pair.a.start();
    pair.b.start();
    pair.b.proxy.set_mode(Mode::Hold);
    runtime().block_on(async {
        let (mut a, mut b) = (pair.a.client(), pair.b.client());
        let id = create_multi_zone(&mut a, "held").await;
        answered(&mut a, &id, "replicate", Some(json!({ "zone": ZONE_B }))).await;
        let mut sealed = Vec::new();
        let mut changes = 1;
        for round in 0..4 {
            for (operation, body) in [
                ("rotate", None),
                ("disable", None),
                ("enable", None),
                ("schedule-deletion", Some(json!({ "delay-days": 7 }))),
                ("cancel-deletion", None),
                ("enable", None),
            ] {
                answered(&mut a, &id, operation, body).await;
                changes += 1;
            }
            let plaintext = format!("round {round}").into_bytes();
            let reply = answered(
                &mut a,
                &id,
                "encrypt",
                Some(json!({ "plaintext": b64(&plaintext) })),
            )
            .await;
            let ciphertext = reply["ciphertext"].as_str().unwrap().to_owned();
            let reply = answered(
                &mut a,
                &id,
                "decrypt",
                Some(json!({ "ciphertext": ciphertext })),
            )
            .await;
            assert_eq!(unb64(&reply["plaintext"]), plaintext);
            answered(&mut a, &id, "generate-data-key", None).await;
            sealed.push((ciphertext, plaintext));
        }
        assert!(changes > 20, "{changes}");
        // The link was held, not merely slow: nothing applied, the replica unknown to B.
        assert!(
            pair.b.proxy.held_count() >= 1,
            "no delivery reached the proxy"
        );
        not_replicated_yet(&mut a, &mut b, &id).await;

        // Released: the replica converges.
        pair.b.proxy.set_mode(Mode::Forward);
        let (origin, replica) = converged(&mut a, &mut b, &id).await;
        follows(&origin, &replica);
        assert_eq!(replica["material"]["version"], 5);
        assert_eq!(
            replica["status"], "disabled",
            "a cancelled deletion disables it"
        );
        change(&mut b, &id, "enable", None).await;
        for (ciphertext, plaintext) in &sealed {
            decrypts_to(&mut b, &id, ciphertext, b"", plaintext).await;
        }
    });
}

// ----- 5. The outbox across a restart of the origin -----------------------------------------

#[test]
fn the_outbox_survives_a_restart_of_the_origin() {
    let mut pair = PeerPair::start();
    pair.b.proxy.set_mode(Mode::Refuse);
    let runtime = runtime();
    let (id, ciphertext) = runtime.block_on(async {
        let mut a = pair.a.client();
        let id = create_multi_zone(&mut a, "outbox").await;
        replicate(&mut a, &id).await;
        change(&mut a, &id, "rotate", None).await;
        change(&mut a, &id, "disable-key-rotation", None).await;
        let ciphertext = encrypt(&mut a, &id, b"before the restart", b"").await;
        let failure = until("the origin records the failure", async || {
            let origin = get_key(&mut a, &id).await;
            let status = status_of_b(&origin)?;
            match status.get("last-failure") {
                Some(failure) => Ok(failure.clone()),
                None => Err(format!("{origin}")),
            }
        })
        .await;
        let error = failure["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("zone {ZONE_B} is unreachable")),
            "{failure}"
        );
        (id, ciphertext)
    });
    assert!(pair.b.proxy.refused_count() >= 1);
    pair.a.stop();
    pair.a.start();
    runtime.block_on(async {
        let (mut a, mut b) = (pair.a.client(), pair.b.client());
        not_replicated_yet(&mut a, &mut b, &id).await;
        pair.b.proxy.set_mode(Mode::Forward);
        let (origin, replica) = converged(&mut a, &mut b, &id).await;
        follows(&origin, &replica);
        assert_eq!(replica["material"]["version"], 2);
        assert_eq!(replica["rotation"]["automatic"], false);
        decrypts_to(&mut b, &id, &ciphertext, b"", b"before the restart").await;
    });
}

// ----- 6. Configuration errors ----------------------------------------------------------------

/// `keylife serve` of zone A with `args`, which must stop before serving; returns (exit code,
/// standard error).
fn refused_start(files: &ServeFiles, args: &[&str]) -> (Option<i32>, String) {
    let zone = format!("{ZONE_A}=127.0.0.1:0");
    let output = files.command(&[&zone], args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(output.stdout.is_empty(), "it served: {stderr}");
    (output.status.code(), stderr)
}

#[test]
fn peers_that_contradict_the_zones_served_or_lack_a_credential_stop_the_start() {
    let files = ServeFiles::new();
    let write = |name: &str, zone: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        let path = files.dir.path().join(name);
        std::fs::write(&path, format!("{zone} {} {}\n", LINK_AB.0, LINK_AB.1)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    };
    let credentials = write("peer-credentials", ZONE_B);
    let credentials = credentials.as_str();
    let b_peer = format!("{ZONE_B}=http://127.0.0.1:9/v2");

    // A zone served here and named as a peer (its credential given: the zone is the error).
    let a_peer = format!("{ZONE_A}=http://127.0.0.1:9/v2");
    let own = write("own-zone-credentials", ZONE_A);
    let (code, stderr) = refused_start(
        &files,
        &["--peer", &a_peer, "--peer-credentials-file", &own],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(ZONE_A), "{stderr}");

    // A peer without a peer credentials file.
    let (_, stderr) = refused_start(&files, &["--peer", &b_peer]);
    assert!(stderr.contains("--peer-credentials-file"), "{stderr}");

    // A peer the credentials file does not name.
    let c_peer = "at-vie-1=http://127.0.0.1:9/v2";
    let (code, stderr) = refused_start(
        &files,
        &[
            "--peer",
            &b_peer,
            "--peer",
            c_peer,
            "--peer-credentials-file",
            credentials,
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("at-vie-1"), "{stderr}");
    assert!(
        !stderr.contains(LINK_AB.1),
        "a secret in the message: {stderr}"
    );

    // The same files start with the peer they name (so the refusals above are the flags').
    let zone = format!("{ZONE_A}=127.0.0.1:0");
    let served = http_support::ServeProcess::start(
        files.command(
            &[&zone],
            &["--peer", &b_peer, "--peer-credentials-file", credentials],
        ),
        1,
    );
    served.stop();
    assert!(!files.dir.path().join("data").join(ZONE_B).exists());
}

// ----- 7. A key both zones hold as an origin -----------------------------------------------

/// The multi-zone key of tests/fixtures/seed/seed.json.
const ORDERS: &str = "019b5a2e-7c00-7000-8000-00000000f002";

#[test]
fn a_key_the_target_holds_as_an_origin_key_is_not_replicated_onto_it() {
    let seed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed/seed.json");
    let seed = seed.to_str().unwrap();
    let mut pair = PeerPair::new();
    for side in [&mut pair.a, &mut pair.b] {
        side.args.extend(["--seed".to_owned(), seed.to_owned()]);
    }
    pair.a.start();
    pair.b.start();
    runtime().block_on(async {
        let (mut a, mut b) = (pair.a.client(), pair.b.client());
        let before = zone_state(&mut b).await;
        let in_b = get_key(&mut b, ORDERS).await;
        assert_eq!(in_b["origin-zone"], ZONE_B);
        assert_eq!(get_key(&mut a, ORDERS).await["origin-zone"], ZONE_A);

        replicate(&mut a, ORDERS).await;
        let failure = until("the refusal reaches the origin", async || {
            let origin = get_key(&mut a, ORDERS).await;
            let status = status_of_b(&origin)?;
            match status.get("last-failure") {
                Some(failure) => Ok(failure.clone()),
                None => Err(format!("{origin}")),
            }
        })
        .await;
        let error = failure["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("zone {ZONE_B} refused"))
                && error.contains("holds the key as an origin key"),
            "{failure}"
        );
        let origin = get_key(&mut a, ORDERS).await;
        assert_eq!(status_of_b(&origin).unwrap()["last-applied-watermark"], 0);
        assert_eq!(zone_state(&mut b).await, before, "B's key changed");
    });
}
