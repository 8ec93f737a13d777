//! The sending side of the link between processes ([`PeerLink`]), in one test process: an
//! origin `Kms` delivers over real loopback HTTP to a replica zone served by
//! `keylife::server::serve`, and to a fake peer that answers what an attacker on the path
//! could: an acknowledgement under another secret, one made for another request (a replayed
//! answer), garbage, a refusal. Only the answer MAC'd under the link key over this request's
//! signature clears the outbox. The same flows between two `keylife serve` processes are in
//! `tests/replication_binary.rs`.

mod http_support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use keylife::crypto::LinkKey;
use keylife::server::auth::{Credentials, signature_of};
use keylife::server::client::ApiCredential;
use keylife::server::peer::{Peer, PeerLink, PeerOptions};
use keylife::server::{Keyring, ServeOptions};
use keylife::{Ack, CreateKey, KeyId, Kms, KmsOptions, LocalLink, RootKey, wire};

const ORIGIN: &str = "ch-gva-2";
const REPLICA: &str = "de-fra-1";
const LINK_KEY: &str = "EXOlink";
const LINK_SECRET: &str = "link-secret";
/// The byte of the replica's root key in [`Pair`].
const REPLICA_ROOT: u8 = 7;

/// An origin zone in memory whose link reaches `REPLICA` at `url`, signing with the link
/// credential.
fn origin(url: &str) -> Kms {
    linked_zone(ORIGIN, url, (LINK_KEY, LINK_SECRET), PeerOptions::default())
}

/// Zone `zone` in memory whose link reaches `REPLICA` at `url`, signing with `credential`
/// (key, secret).
fn linked_zone(zone: &str, url: &str, credential: (&str, &str), options: PeerOptions) -> Kms {
    let local = LocalLink::new();
    let link = PeerLink::new(
        Arc::clone(&local),
        vec![Peer {
            zone: REPLICA.to_owned(),
            url: url.to_owned(),
            credential: ApiCredential::new(credential.0, credential.1),
        }],
        options,
    )
    .unwrap();
    let kms = Kms::open_in_memory(
        RootKey::generate().unwrap(),
        KmsOptions::new(zone).link(link),
    )
    .unwrap();
    local.attach(&kms);
    kms
}

/// A replicated key of `kms`, its first delivery attempted (in the background) and done.
fn replicated_key(kms: &Kms) -> KeyId {
    let key = kms
        .create_key(&CreateKey::new("orders").multi_zone(true))
        .unwrap();
    kms.replicate_key(key.id, REPLICA, None).unwrap();
    kms.wait_for_deliveries();
    key.id
}

/// The replica's state at the origin: (confirmed watermark, last failure's error).
fn replica_state(kms: &Kms, id: KeyId) -> (u64, Option<String>) {
    let details = kms.get_key(id).unwrap();
    let state = &details.replicas_status[0];
    (
        state.last_applied_watermark,
        state.last_failure.as_ref().map(|f| f.error.clone()),
    )
}

#[test]
fn an_origin_delivers_to_a_served_replica_and_ciphertexts_cross() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let replica = Arc::new(
        Kms::open_in_memory(RootKey::generate().unwrap(), KmsOptions::new(REPLICA)).unwrap(),
    );
    let credentials = Credentials::parse(&format!(
        "{LINK_KEY} {LINK_SECRET} operations=replicate zones={ORIGIN}"
    ))
    .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = runtime.spawn(keylife::server::serve(
        vec![(Arc::clone(&replica), listener)],
        Arc::new(Keyring::new(credentials)),
        ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let kms = origin(&format!("http://{addr}/v2"));
    let id = replicated_key(&kms);
    kms.rotate_key(id, None).unwrap();
    kms.sync().unwrap();
    let seq = kms.get_key(id).unwrap().key.revision.seq;
    assert_eq!(replica_state(&kms, id), (seq, None));
    let held = replica.get_key(id).unwrap();
    assert_eq!(held.key.origin_zone, ORIGIN);
    assert_eq!(held.key.material.version, 2);
    let sealed = kms.encrypt(id, b"from the origin", None).unwrap();
    assert_eq!(
        replica
            .decrypt(id, &sealed.ciphertext, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"from the origin"
    );
    let sealed = replica.encrypt(id, b"from the replica", None).unwrap();
    assert_eq!(
        kms.decrypt(id, &sealed.ciphertext, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"from the replica"
    );
    drop(kms);
    let _ = stop.send(());
    runtime.block_on(served).unwrap().unwrap();
}

/// What the fake peer answers a delivery.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// The right answer: the ack, MAC'd under the link key over the request's signature.
    Genuine,
    /// An ack MAC'd under another secret.
    OtherSecret,
    /// An ack MAC'd over another request's signature: a recorded answer replayed.
    OtherRequest,
    /// 200 with bytes that are no answer.
    Garbage,
    /// 200 with the ack and no MAC.
    Unauthenticated,
}

/// A peer on loopback that reads each request and answers it as `answer` says, claiming to
/// hold revision `claim` of the key. Returns its address.
fn fake_peer(answer: Arc<Mutex<Answer>>, claim: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let (mut length, mut signature) = (0usize, Vec::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "authorization" => signature = signature_of(value.trim()).unwrap(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let key = LinkKey::derive(LINK_SECRET.as_bytes());
            let ack = Ack {
                applied_seq: claim,
                versions: 1,
            };
            let bytes = match *answer.lock().unwrap() {
                Answer::Genuine => wire::encode_ack(&ack, &signature, &key),
                Answer::OtherSecret => {
                    wire::encode_ack(&ack, &signature, &LinkKey::derive(b"another secret"))
                }
                Answer::OtherRequest => wire::encode_ack(&ack, b"an earlier request", &key),
                Answer::Garbage => b"{\"status\":\"ok\"}".to_vec(),
                Answer::Unauthenticated => {
                    wire::encode_ack(&ack, &signature, &key)[..wire::ACK_LEN - 32].to_vec()
                }
            };
            let mut stream = reader.into_inner();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&bytes);
        }
    });
    addr
}

#[test]
fn only_the_peers_authenticated_answer_to_this_request_clears_the_outbox() {
    let answer = Arc::new(Mutex::new(Answer::OtherSecret));
    // The fake peer claims revision 2: replicate-key's revision, what the key is at.
    let addr = fake_peer(Arc::clone(&answer), 2);
    let kms = origin(&format!("http://{addr}/v2"));
    let id = replicated_key(&kms);
    assert_eq!(kms.get_key(id).unwrap().key.revision.seq, 2);
    for forged in [
        Answer::OtherSecret,
        Answer::OtherRequest,
        Answer::Garbage,
        Answer::Unauthenticated,
    ] {
        *answer.lock().unwrap() = forged;
        let report = kms.sync().unwrap();
        assert_eq!(report.failed.len(), 1, "{forged:?}: {report:?}");
        assert_eq!(report.failed[0].2.code(), "zone-refused", "{forged:?}");
        let (watermark, failure) = replica_state(&kms, id);
        assert_eq!(watermark, 0, "{forged:?} moved the watermark");
        let failure = failure.unwrap_or_else(|| panic!("{forged:?}: no failure recorded"));
        assert!(
            failure.contains(&format!("zone {REPLICA} refused")) && failure.contains("answer"),
            "{forged:?}: {failure}"
        );
    }
    // The genuine answer, the one control that differs: it is accepted.
    *answer.lock().unwrap() = Answer::Genuine;
    let report = kms.sync().unwrap();
    assert_eq!(report.delivered.len(), 1, "{report:?}");
    assert_eq!(replica_state(&kms, id), (2, None));
    assert!(
        kms.sync().unwrap().delivered.is_empty(),
        "nothing owed any more"
    );
}

#[test]
fn an_unreachable_peer_is_recorded_and_only_known_zones_are_accepted() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let kms = origin(&format!("http://{addr}/v2"));
    let id = replicated_key(&kms);
    let (watermark, failure) = replica_state(&kms, id);
    assert_eq!(watermark, 0);
    let failure = failure.unwrap();
    assert!(
        failure.starts_with(&format!("zone {REPLICA} is unreachable:")),
        "{failure}"
    );
    // Neither a peer nor the link shows the secret.
    let peer = Peer {
        zone: REPLICA.to_owned(),
        url: format!("http://{addr}/v2"),
        credential: ApiCredential::new(LINK_KEY, LINK_SECRET),
    };
    assert!(!format!("{peer:?}").contains(LINK_SECRET), "{peer:?}");
    let link = PeerLink::new(LocalLink::new(), vec![peer], PeerOptions::default()).unwrap();
    assert!(!format!("{link:?}").contains(LINK_SECRET), "{link:?}");
    // The link knows the peer zone (replicate-key accepted it) and no other.
    assert_eq!(
        kms.replicate_key(id, "at-vie-1", None).unwrap_err().code(),
        "invalid-argument"
    );
}

/// Two zones, each served on loopback by `keylife::server::serve` (in this process) and each
/// reaching the other through a `PeerLink` to its URL, with `limits`. The origin's server also
/// accepts `EXOlinkXX`, a link credential that speaks for `at-vie-1` only, and the replica's
/// `EXOlinkZZ`, one that speaks for the zones `zz-*`.
struct Pair {
    runtime: tokio::runtime::Runtime,
    origin: Arc<Kms>,
    replica: Arc<Kms>,
    origin_url: String,
    replica_url: String,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    served: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Pair {
    fn start(limits: keylife::Limits) -> Pair {
        Pair::start_with(limits, None, None)
    }

    /// With `tls`, each zone serves HTTPS with the CA's server certificate and each link
    /// trusts that CA.
    /// With `audit`, the replica's server writes its audit log there (its root key is
    /// [`REPLICA_ROOT`]).
    fn start_with(
        limits: keylife::Limits,
        tls: Option<&http_support::TestCa>,
        audit: Option<&std::path::Path>,
    ) -> Pair {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let bind = || {
            runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap()
        };
        let (origin_listener, replica_listener) = (bind(), bind());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = |listener: &tokio::net::TcpListener| {
            format!("{scheme}://{}/v2", listener.local_addr().unwrap())
        };
        let (origin_url, replica_url) = (url(&origin_listener), url(&replica_listener));
        let zone = |name: &str, peer: &str, peer_url: &str, sign_as: &str| {
            let local = LocalLink::new();
            let link = PeerLink::new(
                Arc::clone(&local),
                vec![Peer {
                    zone: peer.to_owned(),
                    url: peer_url.to_owned(),
                    credential: ApiCredential::new(sign_as, format!("{sign_as}-secret")),
                }],
                PeerOptions {
                    ca_pem: tls.map(|ca| ca.ca_pem.clone().into_bytes()),
                    ..PeerOptions::default()
                },
            )
            .unwrap();
            let mut options = KmsOptions::new(name).link(link);
            options.limits = limits;
            let root = if name == REPLICA {
                RootKey::from_bytes(&mut [REPLICA_ROOT; 32])
            } else {
                RootKey::generate().unwrap()
            };
            let kms = Arc::new(Kms::open_in_memory(root, options).unwrap());
            local.attach(&kms);
            kms
        };
        let origin = zone(ORIGIN, REPLICA, &replica_url, "EXOlinkAB");
        let replica = zone(REPLICA, ORIGIN, &origin_url, "EXOlinkBA");
        let mut pair = Pair {
            runtime,
            origin: Arc::clone(&origin),
            replica: Arc::clone(&replica),
            origin_url,
            replica_url,
            stops: Vec::new(),
            served: Vec::new(),
        };
        let replica_audit = audit.map(|path| {
            keylife::server::audit_log::AuditLog::open(
                path,
                &RootKey::from_bytes(&mut [REPLICA_ROOT; 32]),
                vec![Arc::clone(&replica)],
            )
            .unwrap()
        });
        for (kms, listener, credentials, audit) in [
            (
                origin,
                origin_listener,
                format!(
                    "EXOlinkBA EXOlinkBA-secret operations=replicate zones={REPLICA}\n\
                     EXOlinkXX EXOlinkXX-secret operations=replicate zones=at-vie-1"
                ),
                None,
            ),
            (
                replica,
                replica_listener,
                format!(
                    "EXOlinkAB EXOlinkAB-secret operations=replicate zones={ORIGIN}\n\
                     EXOlinkZZ EXOlinkZZ-secret operations=replicate zones=zz-*"
                ),
                replica_audit,
            ),
        ] {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            pair.stops.push(stop);
            pair.served.push(pair.runtime.spawn(keylife::server::serve(
                vec![(kms, listener)],
                Arc::new(Keyring::new(Credentials::parse(&credentials).unwrap())),
                ServeOptions {
                    tls: tls.map(http_support::TestCa::tls),
                    audit,
                    ..ServeOptions::default()
                },
                async {
                    let _ = stopped.await;
                },
            )));
        }
        pair
    }

    fn stop(mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for served in self.served.drain(..) {
            self.runtime.block_on(served).unwrap().unwrap();
        }
    }
}

#[test]
fn a_replica_that_spends_its_budget_asks_its_origin_across_the_link() {
    let pair = Pair::start(keylife::Limits {
        max_encryptions_per_version: 2,
        ..keylife::Limits::default()
    });
    let (origin, replica) = (&pair.origin, &pair.replica);
    let id = replicated_key(origin);
    assert_eq!(replica.get_key(id).unwrap().key.material.version, 1);
    let version = |ciphertext: &[u8]| {
        keylife::crypto::Header::parse(ciphertext)
            .unwrap()
            .0
            .version
    };
    // The third encryption at the replica spent version 1's budget there: the replica asked
    // its origin (POST /keylife/v1/replication/rotation), which made version 2 and delivered
    // it before answering.
    let sealed: Vec<_> = (0..3u8)
        .map(|i| replica.encrypt(id, &[i], None).unwrap().ciphertext)
        .collect();
    assert_eq!(
        sealed.iter().map(|c| version(c)).collect::<Vec<_>>(),
        [1, 1, 2]
    );
    let at_origin = origin.get_key(id).unwrap();
    assert_eq!(at_origin.key.material.version, 2);
    assert!(at_origin.key.material.automatic);
    for (i, ciphertext) in sealed.iter().enumerate() {
        assert_eq!(
            origin
                .decrypt(id, ciphertext, None)
                .unwrap()
                .plaintext
                .as_bytes(),
            [i as u8]
        );
    }

    // A link credential that speaks for no replica zone of the key may not ask.
    let client = keylife::server::client::Client::new(
        &pair.origin_url,
        ApiCredential::new("EXOlinkXX", "EXOlinkXX-secret"),
        keylife::server::client::ClientOptions::default(),
    )
    .unwrap();
    let body = wire::encode_rotation(&wire::RotationRequest {
        origin: ORIGIN.to_owned(),
        id,
        version: 2,
    })
    .unwrap();
    let refused = pair.runtime.block_on(async {
        let (answer, _) = client
            .send_signed(
                "POST",
                keylife::server::REPLICATION_ROTATION_PATH,
                "application/octet-stream",
                body,
            )
            .await
            .unwrap();
        answer.success().await.unwrap_err().to_string()
    });
    assert!(refused.contains("403"), "{refused}");
    assert_eq!(origin.get_key(id).unwrap().key.material.version, 2);
    pair.stop();
}

#[test]
fn the_link_runs_over_https_trusting_the_peer_ca_only() {
    let ca = http_support::TestCa::new();
    let pair = Pair::start_with(keylife::Limits::default(), Some(&ca), None);
    assert!(pair.origin_url.starts_with("https://"));
    let (origin, replica) = (&pair.origin, &pair.replica);
    let id = replicated_key(origin);
    assert_eq!(replica_state(origin, id), (2, None));
    let sealed = replica.encrypt(id, b"over TLS", None).unwrap();
    assert_eq!(
        origin
            .decrypt(id, &sealed.ciphertext, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"over TLS"
    );
    // A link without the CA is refused when it is made; one trusting another CA cannot reach
    // the peer (the handshake fails) and says so.
    let peer = || Peer {
        zone: REPLICA.to_owned(),
        url: pair.origin_url.clone(),
        credential: ApiCredential::new(LINK_KEY, LINK_SECRET),
    };
    let error = PeerLink::new(LocalLink::new(), vec![peer()], PeerOptions::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("CA"), "{error}");
    let other = http_support::TestCa::new();
    let kms = linked_zone(
        ORIGIN,
        &pair.origin_url,
        (LINK_KEY, LINK_SECRET),
        PeerOptions {
            ca_pem: Some(other.ca_pem.into_bytes()),
            ..PeerOptions::default()
        },
    );
    let id = replicated_key(&kms);
    let (_, failure) = replica_state(&kms, id);
    let failure = failure.unwrap();
    assert!(
        failure.contains("is unreachable") && failure.contains("TLS"),
        "{failure}"
    );
    pair.stop();
}

#[test]
fn a_peer_cannot_take_over_a_replica_of_another_origins_key() {
    let pair = Pair::start(keylife::Limits::default());
    let id = replicated_key(&pair.origin);
    let before = pair.replica.get_key(id).unwrap();
    assert_eq!(before.key.origin_zone, ORIGIN);
    // zz-evil-1, which EXOlinkZZ may speak for, holds a key with the same id (imported with a
    // fixed id, material of its choosing) and replicates it to the replica's zone.
    let evil = linked_zone(
        "zz-evil-1",
        &pair.replica_url,
        ("EXOlinkZZ", "EXOlinkZZ-secret"),
        PeerOptions::default(),
    );
    let mut key = keylife::ImportKey::new(id, "taken-over", 1);
    key.multi_zone = true;
    evil.import_key(&keylife::KeyImport {
        key,
        materials: vec![keylife::MaterialKey::from_bytes(&mut [9; 32])],
    })
    .unwrap();
    evil.rotate_key(id, None).unwrap();
    evil.replicate_key(id, REPLICA, None).unwrap();
    evil.wait_for_deliveries();
    let (watermark, failure) = replica_state(&evil, id);
    assert_eq!(watermark, 0);
    let failure = failure.unwrap();
    assert!(
        failure.contains("409 conflict") && failure.contains("another zone than the key's origin"),
        "{failure}"
    );
    // The replica still follows its own origin, with its own material.
    let after = pair.replica.get_key(id).unwrap();
    assert_eq!(after.key, before.key);
    let sealed = pair.origin.encrypt(id, b"still ours", None).unwrap();
    assert_eq!(
        pair.replica
            .decrypt(id, &sealed.ciphertext, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"still ours"
    );
    pair.stop();
}

#[test]
fn a_peer_cannot_speak_for_a_zone_this_process_serves() {
    // One server for de-fra-1 and zz-served-1; its link credential's glob matches
    // zz-served-1, which it serves itself.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let zone = |name: &str| {
        Arc::new(Kms::open_in_memory(RootKey::generate().unwrap(), KmsOptions::new(name)).unwrap())
    };
    let (replica, served) = (zone(REPLICA), zone("zz-served-1"));
    let bind = || {
        runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
    };
    let (first, second) = (bind(), bind());
    let url = format!("http://{}/v2", first.local_addr().unwrap());
    let credentials =
        Credentials::parse("EXOlinkZZ EXOlinkZZ-secret operations=replicate zones=zz-*").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(keylife::server::serve(
        vec![(Arc::clone(&replica), first), (Arc::clone(&served), second)],
        Arc::new(Keyring::new(credentials)),
        ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    // Another process claiming to be zz-served-1 replicates a key to de-fra-1.
    let impostor = linked_zone(
        "zz-served-1",
        &url,
        ("EXOlinkZZ", "EXOlinkZZ-secret"),
        PeerOptions::default(),
    );
    let id = replicated_key(&impostor);
    let (watermark, failure) = replica_state(&impostor, id);
    assert_eq!(watermark, 0);
    let failure = failure.unwrap();
    assert!(failure.contains("403 permission-denied"), "{failure}");
    assert_eq!(replica.get_key(id).unwrap_err().code(), "key-not-found");
    let _ = stop.send(());
    runtime.block_on(serving).unwrap().unwrap();
}

#[test]
fn a_peer_that_answers_a_byte_at_a_time_is_cut_off_at_the_message_deadline() {
    // Each byte comes well within the read timeout, the whole answer never within the
    // deadline: the delivery ends as out of reach when the deadline passes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buffer = [0; 4096];
                let _ = stream.read(&mut buffer);
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 49\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(head.as_bytes());
                for _ in 0..49 {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    if stream.write_all(b"x").is_err() {
                        return;
                    }
                }
            });
        }
    });
    let kms = linked_zone(
        ORIGIN,
        &format!("http://{addr}/v2"),
        (LINK_KEY, LINK_SECRET),
        PeerOptions {
            timeout: std::time::Duration::from_secs(1),
            ..PeerOptions::default()
        },
    );
    let id = replicated_key(&kms);
    let (watermark, failure) = replica_state(&kms, id);
    assert_eq!(watermark, 0);
    let failure = failure.unwrap();
    assert!(
        failure.contains("is unreachable") && failure.contains("no whole answer within 1s"),
        "{failure}"
    );
}

#[test]
fn the_link_routes_are_audited_at_the_receiving_side() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let pair = Pair::start_with(keylife::Limits::default(), None, Some(&log));
    let id = replicated_key(&pair.origin);
    pair.origin.rotate_key(id, None).unwrap();
    pair.origin.sync().unwrap();
    // A message of the link credential that does not decode: refused, and audited too.
    let client = keylife::server::client::Client::new(
        &pair.replica_url,
        ApiCredential::new("EXOlinkAB", "EXOlinkAB-secret"),
        keylife::server::client::ClientOptions::default(),
    )
    .unwrap();
    let status = pair.runtime.block_on(async {
        let (answer, _) = client
            .send_signed(
                "POST",
                keylife::server::REPLICATION_UPDATE_PATH,
                "application/octet-stream",
                b"not an update".to_vec(),
            )
            .await
            .unwrap();
        answer.status()
    });
    assert_eq!(status, 400);
    pair.stop();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let received: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["operation"] == "receive-update")
        .collect();
    // replicate-key's delivery and the rotation's, applied; the bad message, refused.
    let applied = received
        .iter()
        .filter(|line| line["outcome"] == "ok" && line["key"] == id.to_string())
        .count();
    assert_eq!(applied, 2, "{received:#?}");
    assert!(
        received
            .iter()
            .all(|line| line["actor"] == "EXOlinkAB" && line["zone"] == REPLICA),
        "{received:#?}"
    );
    assert!(
        received.iter().any(|line| line["status"] == 400),
        "{received:#?}"
    );
}
