//! Replication between two `keylife serve` processes over loopback HTTP: the release binary
//! twice, each process with its own data directory, root key and port, zone ch-gva-2 (the
//! origin) in one and de-fra-1 (the replica) in the other, each naming the other with `--peer`
//! and signing its deliveries with a link credential that the other grants `replicate` for
//! its zone only. Everything goes over real sockets: the clients' requests and the
//! processes' deliveries.
//!
//! Two measurements:
//!
//! - **(a) change to replica.** `REPL_KEYS` multi-zone keys (default 50) are created on the
//!   origin and replicated; then each key gets 10 manual rotations and 10 rotation-setting
//!   changes (disable-key-rotation and enable-key-rotation in turn), one change at a time:
//!   20 × 50 = 1,000 changes. After each change is answered, one client polls the replica's
//!   get-kms-key on a keep-alive connection, back to back, until it shows that change (the
//!   rotation's material version, or the rotation setting). The latency is from the origin's
//!   answer to the answer of the first poll that shows the change: an upper bound, too high by
//!   at most one poll round trip (reported as `poll_p50_us`). The poller shares the two CPUs
//!   with both servers.
//! - **(b) convergence.** New multi-zone keys are created and replicated (8 clients at once),
//!   as many as bring the origin zone to `REPL_PENDING` keys (default 1,000, which is also a
//!   zone's key quota): 950 by default. Then the replica process is killed with SIGKILL and,
//!   from 8 clients at once, each new key is rotated (an update with new material) and each key
//!   of (a) gets its rotation disabled (its 10 manual rotations are spent): 1,000 changes, each
//!   leaving an update owed to the replica. The replica stays down `REPL_OUTAGE_SECS` more
//!   (default 0), then is started again on the same data directory and port. The times are
//!   from the replica's "serving" line until its list-kms-keys (polled every 20 ms) shows the
//!   first change, a quarter, half, three quarters and all of them, and then until the
//!   origin's replicas-status shows every replica's watermark at the key's revision (the
//!   acknowledgements). The origin retries each replica 1 s after its first failure, doubling
//!   to 5 minutes (`keylife serve` runs due work every second): `REPL_OUTAGE_SECS` shows what
//!   a longer outage adds.
//!
//! After (a), a ciphertext made in each zone under every key of (a) must decrypt in the other.
//!
//! Run: `cargo bench --bench replication_link` (the lines starting `replication_latency:` and
//! `replication_convergence:` are the summary). `cargo test --bench replication_link` is a
//! smoke run on the debug binary (3 keys, 60 changes; 17 new keys, 20 pending changes).

use std::io::{BufRead, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

mod signed_client;

use signed_client::{Client, KEY, SECRET};

const ORIGIN: &str = "ch-gva-2";
const REPLICA: &str = "de-fra-1";
/// How long any wait of the bench may last before it gives up (and fails).
const DEADLINE: Duration = Duration::from_secs(600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A free loopback port: bound, read, released (the process that binds it next is started
/// right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Writes `bytes` to a new file readable by its owner only, as keylife wants its root key and
/// credentials files.
fn write_private(path: &Path, bytes: &[u8]) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path).expect("create file"), bytes)
        .expect("write file");
}

/// One zone's `keylife serve` process: its files, its port, and the process while it runs.
struct ZoneProcess {
    zone: &'static str,
    port: u16,
    peer: &'static str,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl ZoneProcess {
    /// The files of zone `zone` in `dir`: a root key of its own; the API credential plus the
    /// link credential `incoming` (granted `replicate` for `peer` only); the credential it
    /// signs its deliveries to `peer` with, `outgoing`.
    fn new(
        dir: PathBuf,
        (zone, port): (&'static str, u16),
        (peer, peer_port): (&'static str, u16),
        incoming: (&str, &str),
        outgoing: (&str, &str),
    ) -> ZoneProcess {
        std::fs::create_dir_all(&dir).expect("zone dir");
        let generated = Command::new(env!("CARGO_BIN_EXE_keylife"))
            .args(["root-key", "generate"])
            .output()
            .expect("keylife root-key generate");
        write_private(&dir.join("root.key"), &generated.stdout);
        write_private(
            &dir.join("credentials"),
            format!(
                "{KEY} {SECRET}\n{} {} operations=replicate zones={peer}\n",
                incoming.0, incoming.1
            )
            .as_bytes(),
        );
        write_private(
            &dir.join("peers"),
            format!("{peer} {} {}\n", outgoing.0, outgoing.1).as_bytes(),
        );
        ZoneProcess {
            zone,
            port,
            peer,
            peer_port,
            dir,
            child: None,
            starts: 0,
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the process and returns once it prints its "serving" line. Its stdout is read
    /// to the end by a thread, its stderr goes to a file of the run (printed if it fails).
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.zone);
        self.starts += 1;
        let stderr = std::fs::File::create(self.dir.join(format!("stderr-{}", self.starts)))
            .expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_keylife"))
            .arg("serve")
            .arg("--data")
            .arg(self.dir.join("data"))
            .arg("--zone")
            .arg(format!("{}={}", self.zone, self.address()))
            .arg("--peer")
            .arg(format!(
                "{}=http://127.0.0.1:{}/v2",
                self.peer, self.peer_port
            ))
            .arg("--peer-credentials-file")
            .arg(self.dir.join("peers"))
            .arg("--root-key-file")
            .arg(self.dir.join("root.key"))
            .arg("--credentials-file")
            .arg(self.dir.join("credentials"))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start keylife serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let expected = format!(
            "keylife: zone {} serving http://{}/v2",
            self.zone,
            self.address()
        );
        let mut line = String::new();
        loop {
            line.clear();
            let read = stdout
                .read_line(&mut line)
                .expect("read the server's stdout");
            if read == 0 {
                let status = child.wait().expect("wait");
                panic!(
                    "keylife serve for {} exited ({status}) before serving:\n{}",
                    self.zone,
                    self.stderr()
                );
            }
            if line.trim_end() == expected {
                break;
            }
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        self.child = Some(child);
    }

    /// SIGKILL, and waits for the process to be gone.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("the process runs");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    /// The last start's stderr.
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("stderr-{}", self.starts)))
            .unwrap_or_default()
    }
}

impl Drop for ZoneProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Client {
    /// Sends a signed request; the status and the JSON body (`Null` if not JSON).
    async fn json(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body
            .map(|body| body.to_string().into_bytes())
            .unwrap_or_default();
        let (status, body) = self.call(method, path, body).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// A call that must answer 200.
    async fn ok(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.json(method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer
    }

    async fn get(&mut self, id: &str) -> Value {
        self.ok("GET", &format!("/v2/kms-key/{id}"), None).await
    }

    /// A new multi-zone key, replicated to the replica zone; its id.
    async fn replicated_key(&mut self, name: &str) -> String {
        let created = self
            .ok(
                "POST",
                "/v2/kms-key",
                Some(json!({"name": name, "multi-zone": true})),
            )
            .await;
        let id = created["id"].as_str().expect("id").to_owned();
        self.ok(
            "POST",
            &format!("/v2/kms-key/{id}/replicate"),
            Some(json!({"zone": REPLICA})),
        )
        .await;
        id
    }
}

/// Whether the origin's replicas-status says the replica applied the key's revision.
fn acknowledged(origin: &Value) -> bool {
    let revision = &origin["revision"]["seq"];
    origin["replicas-status"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|state| state["zone"] == REPLICA && &state["last-applied-watermark"] == revision)
}

/// Polls the origin until every key in `ids` is acknowledged by the replica.
async fn wait_acknowledged(origin: &mut Client, ids: &[String]) {
    let start = Instant::now();
    for id in ids {
        loop {
            let got = origin.get(id).await;
            if acknowledged(&got) {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the replica never acknowledged {id}: {got}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Creates and replicates `count` keys named `{prefix}-{n}` from `clients` connections at
/// once; their ids, in order.
async fn make_keys(address: SocketAddr, prefix: &str, count: usize, clients: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(address, None).await;
            let mut made = Vec::new();
            for n in (client_index..count).step_by(clients) {
                made.push((n, client.replicated_key(&format!("{prefix}-{n}")).await));
            }
            made
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.expect("client task"));
    }
    ids.sort_unstable();
    ids.into_iter().map(|(_, id)| id).collect()
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What a change must make the replica show.
enum Expect {
    Version(u64),
    Automatic(bool),
}

impl Expect {
    fn seen(&self, replica: &Value) -> bool {
        match self {
            Expect::Version(version) => replica["material"]["version"] == *version,
            Expect::Automatic(automatic) => replica["rotation"]["automatic"] == *automatic,
        }
    }
}

/// (a): 20 changes of each key, one at a time, each followed until the replica shows it.
async fn latency(
    origin_address: SocketAddr,
    replica_address: SocketAddr,
    keys: usize,
) -> Vec<String> {
    let mut origin = Client::connect(origin_address, None).await;
    let mut replica = Client::connect(replica_address, None).await;
    let ids = make_keys(origin_address, "latency", keys, 4).await;
    wait_acknowledged(&mut origin, &ids).await;

    let mut changes = Vec::new();
    for round in 0..10u64 {
        for id in &ids {
            changes.push((id, "rotate", Expect::Version(round + 2)));
        }
    }
    for _ in 0..5 {
        for id in &ids {
            changes.push((id, "disable-key-rotation", Expect::Automatic(false)));
            changes.push((id, "enable-key-rotation", Expect::Automatic(true)));
        }
    }
    let mut latencies = Vec::with_capacity(changes.len());
    let mut answers = Vec::with_capacity(changes.len());
    let mut polls = Vec::new();
    let measured = Instant::now();
    for (id, operation, expect) in &changes {
        let path = format!("/v2/kms-key/{id}/{operation}");
        let asked = Instant::now();
        origin.ok("POST", &path, None).await;
        let answered = Instant::now();
        answers.push(answered - asked);
        loop {
            let sent = Instant::now();
            let got = replica.get(id).await;
            let seen = Instant::now();
            polls.push(seen - sent);
            if expect.seen(&got) {
                latencies.push(seen - answered);
                break;
            }
            assert!(
                answered.elapsed() < DEADLINE,
                "the replica never showed {operation} of {id}: {got}"
            );
        }
    }
    let elapsed = measured.elapsed();
    wait_acknowledged(&mut origin, &ids).await;
    latencies.sort_unstable();
    answers.sort_unstable();
    polls.sort_unstable();
    let crossed = cross_decrypt(&mut origin, &mut replica, &ids).await;
    println!(
        "change to replica: {} changes (rotations and rotation settings) of {} keys in {:.2} s: \
         p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs after the origin's answer \
         (origin's answer p50 {:.0} µs; {} polls of the replica, each p50 {:.0} µs); \
         {crossed} ciphertexts made in one zone decrypt in the other",
        latencies.len(),
        ids.len(),
        elapsed.as_secs_f64(),
        micros(percentile(&latencies, 0.50)),
        micros(percentile(&latencies, 0.99)),
        micros(*latencies.last().expect("changes")),
        micros(percentile(&answers, 0.50)),
        polls.len(),
        micros(percentile(&polls, 0.50)),
    );
    println!(
        "replication_latency: changes={} keys={} p50_us={:.0} p99_us={:.0} max_us={:.0} \
         poll_p50_us={:.0} origin_answer_p50_us={:.0}",
        latencies.len(),
        ids.len(),
        micros(percentile(&latencies, 0.50)),
        micros(percentile(&latencies, 0.99)),
        micros(*latencies.last().expect("changes")),
        micros(percentile(&polls, 0.50)),
        micros(percentile(&answers, 0.50)),
    );
    ids
}

/// Encrypts under every key in each zone and decrypts in the other; the number that did.
async fn cross_decrypt(origin: &mut Client, replica: &mut Client, ids: &[String]) -> usize {
    let mut crossed = 0;
    for id in ids {
        for from_origin in [true, false] {
            let (from, to) = if from_origin {
                (&mut *origin, &mut *replica)
            } else {
                (&mut *replica, &mut *origin)
            };
            let plaintext = BASE64.encode(format!("made for {id}"));
            let made = from
                .ok(
                    "POST",
                    &format!("/v2/kms-key/{id}/encrypt"),
                    Some(json!({"plaintext": plaintext})),
                )
                .await;
            let opened = to
                .ok(
                    "POST",
                    &format!("/v2/kms-key/{id}/decrypt"),
                    Some(json!({"ciphertext": made["ciphertext"]})),
                )
                .await;
            assert_eq!(opened["plaintext"], plaintext.as_str(), "decrypt of {id}");
            crossed += 1;
        }
    }
    crossed
}

/// (b): with the replica process killed, `fresh` new keys are rotated and the keys of (a),
/// `earlier`, get their rotation disabled; then the replica is started again.
async fn convergence(
    origin_process: &ZoneProcess,
    replica_process: &mut ZoneProcess,
    earlier: &[String],
    fresh: usize,
    outage: Duration,
) {
    let origin_address = origin_process.address();
    let made = make_keys(origin_address, "pending", fresh, 8).await;
    let mut origin = Client::connect(origin_address, None).await;
    wait_acknowledged(&mut origin, &made).await;
    // The keys of (a) have made their 10 manual rotations (the limit): they change their
    // rotation setting instead (automatic after (a)).
    let changes: Vec<(String, &'static str, Expect)> = made
        .iter()
        .map(|id| (id.clone(), "rotate", Expect::Version(2)))
        .chain(
            earlier
                .iter()
                .map(|id| (id.clone(), "disable-key-rotation", Expect::Automatic(false))),
        )
        .collect();
    let ids: Vec<String> = changes.iter().map(|(id, _, _)| id.clone()).collect();

    replica_process.kill();
    let down = Instant::now();
    let mut tasks = Vec::new();
    let clients = 8;
    for client_index in 0..clients {
        let mine: Vec<(String, &'static str)> = changes
            .iter()
            .skip(client_index)
            .step_by(clients)
            .map(|(id, operation, _)| (id.clone(), *operation))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(origin_address, None).await;
            for (id, operation) in &mine {
                client
                    .ok("POST", &format!("/v2/kms-key/{id}/{operation}"), None)
                    .await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let changed = down.elapsed();
    // Every one of them is owed: none acknowledged at the new revision.
    let mut owed = 0;
    for id in &ids {
        owed += usize::from(!acknowledged(&origin.get(id).await));
    }
    assert_eq!(owed, ids.len(), "updates owed to the stopped replica");
    tokio::time::sleep(outage).await;
    // The server closes a connection idle for long: a new one for after the outage.
    let mut origin = Client::connect(origin_address, None).await;

    let restart = Instant::now();
    replica_process.start();
    let serving = Instant::now();
    let down_for = serving - down;
    let mut replica = Client::connect(replica_process.address(), None).await;
    let wanted: std::collections::HashMap<&str, &Expect> = changes
        .iter()
        .map(|(id, _, expect)| (id.as_str(), expect))
        .collect();
    let mut first_seen = None;
    // (time since the serving line, changes the replica shows), at each poll.
    let mut progress = Vec::new();
    let held = loop {
        let listed = replica.ok("GET", "/v2/kms-key", None).await;
        let applied = listed["kms-keys"]
            .as_array()
            .expect("kms-keys")
            .iter()
            .filter(|entry| {
                entry["id"]
                    .as_str()
                    .and_then(|id| wanted.get(id))
                    .is_some_and(|expect| expect.seen(entry))
            })
            .count();
        if applied > 0 && first_seen.is_none() {
            first_seen = Some(serving.elapsed());
        }
        progress.push((serving.elapsed(), applied));
        if applied == ids.len() {
            break serving.elapsed();
        }
        assert!(
            serving.elapsed() < DEADLINE,
            "the replica shows {applied} of the {} changes",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_acknowledged(&mut origin, &ids).await;
    let acknowledged_all = serving.elapsed();
    // When a quarter, half, three quarters of the changes were at the replica: a steady
    // climb is the delivery rate, a wait then a jump is the retry schedule.
    let quarters: Vec<String> = [1, 2, 3]
        .iter()
        .map(|quarter| {
            let reached = progress
                .iter()
                .find(|(_, applied)| *applied * 4 >= ids.len() * quarter)
                .map_or(held, |(at, _)| *at);
            format!("{:.2} s", reached.as_secs_f64())
        })
        .collect();
    println!(
        "convergence: {} changes on the origin ({} rotations of new keys, {} rotation settings \
         of the keys of (a)) in {:.2} s while the replica was down; replica down {:.2} s in all, \
         started in {:.2} s; from its serving line: first change at the replica after {:.2} s, \
         25/50/75% after {}, all {} after {:.2} s, all acknowledged at the origin after {:.2} s",
        ids.len(),
        made.len(),
        earlier.len(),
        changed.as_secs_f64(),
        down_for.as_secs_f64(),
        (serving - restart).as_secs_f64(),
        first_seen.unwrap_or(held).as_secs_f64(),
        quarters.join(" / "),
        ids.len(),
        held.as_secs_f64(),
        acknowledged_all.as_secs_f64(),
    );
    println!(
        "replication_convergence: pending={} outage_s={:.2} down_s={:.2} first_s={:.2} \
         held_s={:.2} acknowledged_s={:.2}",
        ids.len(),
        outage.as_secs_f64(),
        down_for.as_secs_f64(),
        first_seen.unwrap_or(held).as_secs_f64(),
        held.as_secs_f64(),
        acknowledged_all.as_secs_f64(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --bench replication_link` is a smoke run.
    let smoke = !std::env::args().any(|arg| arg == "--bench");
    let keys = env_usize("REPL_KEYS", if smoke { 3 } else { 50 });
    // A zone holds at most 1,000 keys (its quota): (b) makes as many new keys as (a) leaves
    // room for, and changes the keys of (a) too, 1,000 changes in all by default.
    let fresh = env_usize("REPL_PENDING", if smoke { 20 } else { 1000 }).saturating_sub(keys);
    let outage = Duration::from_secs(env_usize("REPL_OUTAGE_SECS", 0) as u64);
    let dir = tempfile::tempdir().expect("temp dir");
    let (origin_port, replica_port) = (free_port(), free_port());
    let mut origin = ZoneProcess::new(
        dir.path().join(ORIGIN),
        (ORIGIN, origin_port),
        (REPLICA, replica_port),
        ("EXOlinkReplicaToOrigin", "secret-replica-to-origin"),
        ("EXOlinkOriginToReplica", "secret-origin-to-replica"),
    );
    let mut replica = ZoneProcess::new(
        dir.path().join(REPLICA),
        (REPLICA, replica_port),
        (ORIGIN, origin_port),
        ("EXOlinkOriginToReplica", "secret-origin-to-replica"),
        ("EXOlinkReplicaToOrigin", "secret-replica-to-origin"),
    );
    origin.start();
    replica.start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let earlier = runtime.block_on(latency(origin.address(), replica.address(), keys));
    runtime.block_on(convergence(&origin, &mut replica, &earlier, fresh, outage));
}
