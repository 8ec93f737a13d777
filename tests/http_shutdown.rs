//! The `keylife serve` binary as a process: SIGTERM and Ctrl-C (SIGINT) under load stop
//! accepting, finish the requests in flight and exit 0 with every acknowledged change on disk;
//! a bad configuration stops it before it serves, with a clear message.

mod http_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use http_support::{Client, Failure, KEY, SECRET, b64, ok, unb64};

const BINARY: &str = env!("CARGO_BIN_EXE_keylife");
const ZONE: &str = "ch-gva-2";

/// A data directory with a root key file and a credentials file beside it.
struct Setup {
    dir: tempfile::TempDir,
    root_key: PathBuf,
    credentials: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root_key = dir.path().join("root.key");
        write_root_key(&root_key);
        let credentials = dir.path().join("credentials");
        std::fs::write(
            &credentials,
            format!(
                "# test credentials\n{KEY} {}\n",
                String::from_utf8_lossy(SECRET)
            ),
        )
        .unwrap();
        Setup {
            dir,
            root_key,
            credentials,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `keylife serve` on this setup, with `root_key` and `credentials` as given (`None`: the
    /// option is left out) and no `KEYLIFE_*` variables.
    fn command(&self, root_key: Option<&Path>, credentials: Option<&Path>) -> Command {
        let mut command = Command::new(BINARY);
        command
            .arg("serve")
            .arg("--data")
            .arg(self.data())
            .args(["--zone", &format!("{ZONE}=127.0.0.1:0")])
            .env_remove("KEYLIFE_ROOT_KEY")
            .env_remove("KEYLIFE_CREDENTIALS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(root_key) = root_key {
            command.arg("--root-key-file").arg(root_key);
        }
        if let Some(credentials) = credentials {
            command.arg("--credentials-file").arg(credentials);
        }
        command
    }

    fn start(&self) -> Served {
        Served::start(self.command(Some(&self.root_key), Some(&self.credentials)))
    }
}

fn write_root_key(path: &Path) {
    let generated = Command::new(BINARY)
        .args(["root-key", "generate"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    std::fs::write(path, &generated.stdout).unwrap();
}

/// A running server process.
struct Served {
    child: Child,
    addr: SocketAddr,
    /// Kept open: the server may still write to its standard output.
    _stdout: BufReader<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
}

impl Served {
    fn start(mut command: Command) -> Served {
        let mut child = command.spawn().expect("start keylife serve");
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix(&format!("keylife: zone {ZONE} serving http://"))
            .and_then(|rest| rest.strip_suffix("/v2"))
            .and_then(|addr| addr.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "unexpected first line {line:?}; stderr: {}",
                stderr.join().unwrap()
            );
        };
        Served {
            child,
            addr,
            _stdout: stdout,
            stderr: Some(stderr),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit (at most `timeout`; then kills it and fails); returns its
    /// status and its standard error.
    fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = wait_for(&mut self.child, timeout);
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, stderr)
    }

    /// Stops the server with SIGTERM and checks that it exits 0.
    fn stop(self) {
        self.signal("TERM");
        let (status, stderr) = self.wait(Duration::from_secs(10));
        assert!(status.success(), "exit {status}; stderr: {stderr}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_for(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An acknowledged create, and what was acknowledged on that key since.
struct Acked {
    id: String,
    /// Acknowledged manual rotations.
    rotations: u32,
    /// Acknowledged encryptions: (plaintext, ciphertext).
    sealed: Vec<(Vec<u8>, String)>,
}

/// What one client saw: acknowledged keys, and everything else.
#[derive(Default)]
struct Seen {
    /// Acknowledged creates, by name.
    keys: BTreeMap<String, Acked>,
    /// Creates sent that got no response at all (the connection closed first).
    unanswered_creates: Vec<String>,
    /// Rotations sent that got no response, by key name.
    unanswered_rotations: Vec<String>,
    /// Answers that are not a complete 200: truncated, or another status.
    violations: Vec<String>,
    /// 200 answers received after the signal was sent.
    answered_after_signal: usize,
}

enum Outcome {
    Answered(Value),
    NoResponse,
    Refused,
}

/// One request of the load: a complete 200 answer, no response, or a refused connection.
/// Anything else is a violation.
async fn request(
    client: &mut Client,
    path: &str,
    body: &Value,
    seen: &mut Seen,
    signalled: &AtomicBool,
) -> Outcome {
    let bytes = body.to_string().into_bytes();
    match client.try_signed("POST", path, &bytes).await {
        Ok(reply) if reply.status == 200 && reply.json.is_object() => {
            if signalled.load(Ordering::SeqCst) {
                seen.answered_after_signal += 1;
            }
            Outcome::Answered(reply.json)
        }
        Ok(reply) => {
            seen.violations.push(format!("POST {path}: {reply}"));
            Outcome::NoResponse
        }
        Err(Failure::Connect(_)) => Outcome::Refused,
        Err(Failure::Handshake(_) | Failure::NoResponse(_)) => Outcome::NoResponse,
        Err(Failure::Truncated { status, error }) => {
            seen.violations
                .push(format!("POST {path}: truncated {status} answer: {error}"));
            Outcome::NoResponse
        }
    }
}

/// Creates keys, rotates each once or twice and encrypts under it, until the server refuses
/// connections (or `deadline`).
async fn load(addr: SocketAddr, client_index: usize, signalled: Arc<AtomicBool>) -> Seen {
    let mut client = Client::new(addr);
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(15);
    for round in 0.. {
        if Instant::now() > deadline {
            seen.violations
                .push("still served 15 s after the start".to_owned());
            break;
        }
        let name = format!("client {client_index} key {round}");
        let created = match request(
            &mut client,
            "/v2/kms-key",
            &json!({ "name": name }),
            &mut seen,
            &signalled,
        )
        .await
        {
            Outcome::Answered(created) => created,
            Outcome::NoResponse => {
                seen.unanswered_creates.push(name);
                continue;
            }
            Outcome::Refused => break,
        };
        let id = created["id"].as_str().unwrap().to_owned();
        seen.keys.insert(
            name.clone(),
            Acked {
                id: id.clone(),
                rotations: 0,
                sealed: Vec::new(),
            },
        );
        for rotation in 0..(1 + round % 2) {
            match request(
                &mut client,
                &format!("/v2/kms-key/{id}/rotate"),
                &json!({}),
                &mut seen,
                &signalled,
            )
            .await
            {
                Outcome::Answered(answer) => {
                    let entry = seen.keys.get_mut(&name).unwrap();
                    entry.rotations += 1;
                    assert_eq!(
                        answer["rotation"]["manual-count"], entry.rotations,
                        "{answer}"
                    );
                }
                Outcome::NoResponse => seen.unanswered_rotations.push(name.clone()),
                Outcome::Refused => return seen,
            }
            let plaintext = format!("{name} after rotation {rotation}").into_bytes();
            match request(
                &mut client,
                &format!("/v2/kms-key/{id}/encrypt"),
                &json!({ "plaintext": b64(&plaintext) }),
                &mut seen,
                &signalled,
            )
            .await
            {
                Outcome::Answered(answer) => {
                    let ciphertext = answer["ciphertext"].as_str().unwrap().to_owned();
                    seen.keys
                        .get_mut(&name)
                        .unwrap()
                        .sealed
                        .push((plaintext, ciphertext));
                }
                Outcome::NoResponse => {}
                Outcome::Refused => return seen,
            }
        }
    }
    seen
}

/// Load from several clients, `signal` in the middle of it, then a restart that must show
/// every acknowledged change and nothing that was not answered.
fn stop_under_load(signal: &str) {
    const CLIENTS: usize = 6;
    let setup = Setup::new();
    let server = setup.start();
    let runtime = runtime();
    let signalled = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|index| runtime.spawn(load(server.addr, index, Arc::clone(&signalled))))
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    signalled.store(true, Ordering::SeqCst);
    server.signal(signal);
    let (status, stderr) = server.wait(Duration::from_secs(10));
    assert!(
        status.success(),
        "kill -{signal}: exit {status}; stderr: {stderr}"
    );
    assert!(stderr.contains("stopped"), "{stderr}");
    let seen: Vec<Seen> = runtime.block_on(async {
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(
                tokio::time::timeout(Duration::from_secs(20), task)
                    .await
                    .expect("a client stops once the server is gone")
                    .expect("a client task panicked"),
            );
        }
        seen
    });

    let violations: Vec<&String> = seen.iter().flat_map(|s| &s.violations).collect();
    assert!(violations.is_empty(), "{violations:#?}");
    let acknowledged: usize = seen.iter().map(|s| s.keys.len()).sum();
    let after_signal: usize = seen.iter().map(|s| s.answered_after_signal).sum();
    assert!(
        acknowledged >= CLIENTS,
        "too little load to test anything: {acknowledged} keys"
    );
    eprintln!(
        "kill -{signal}: {acknowledged} keys acknowledged, {after_signal} answers after the \
         signal, {} creates and {} rotations unanswered",
        seen.iter()
            .map(|s| s.unanswered_creates.len())
            .sum::<usize>(),
        seen.iter()
            .map(|s| s.unanswered_rotations.len())
            .sum::<usize>(),
    );

    // Restart on the same data: every acknowledged change is there, and a request that got
    // no answer was not applied either (a request in flight is answered, not dropped).
    let server = setup.start();
    runtime.block_on(async {
        let mut client = Client::connect(server.addr).await;
        let listed = ok(&client.get("/v2/kms-key").await)["kms-keys"]
            .as_array()
            .unwrap()
            .clone();
        let names: Vec<&str> = listed
            .iter()
            .map(|key| key["name"].as_str().unwrap())
            .collect();
        for seen in &seen {
            for (
                name,
                Acked {
                    id,
                    rotations,
                    sealed,
                },
            ) in &seen.keys
            {
                let reply = client.get(&format!("/v2/kms-key/{id}")).await;
                let key = ok(&reply);
                assert_eq!(key["name"], name.as_str());
                assert_eq!(key["status"], "enabled");
                let unanswered = seen
                    .unanswered_rotations
                    .iter()
                    .filter(|n| *n == name)
                    .count();
                assert_eq!(
                    key["rotation"]["manual-count"], *rotations,
                    "{name}: {rotations} rotations acknowledged, {unanswered} unanswered: {key}"
                );
                assert_eq!(key["material"]["version"], 1 + *rotations, "{key}");
                for (plaintext, ciphertext) in sealed {
                    let reply = client
                        .post(
                            &format!("/v2/kms-key/{id}/decrypt"),
                            json!({ "ciphertext": ciphertext }),
                        )
                        .await;
                    assert_eq!(&unb64(&ok(&reply)["plaintext"]), plaintext);
                }
            }
            for name in &seen.unanswered_creates {
                assert!(
                    !names.contains(&name.as_str()),
                    "{name} was created but its create got no answer"
                );
            }
        }
        assert_eq!(listed.len(), acknowledged, "{names:?}");
    });
    server.stop();
}

#[test]
fn sigterm_finishes_requests_in_flight_and_keeps_every_acknowledged_change() {
    stop_under_load("TERM");
}

#[test]
fn ctrl_c_finishes_requests_in_flight_and_keeps_every_acknowledged_change() {
    stop_under_load("INT");
}

/// Starts `command`, which must fail before serving: non-zero exit, nothing on standard
/// output, and a message on standard error. Returns the message.
fn refuses_to_start(mut command: Command) -> String {
    let mut child = command.spawn().unwrap();
    let status = wait_for(&mut child, Duration::from_secs(10));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "it started: {stdout} {stderr}");
    assert!(!stdout.contains("serving"), "{stdout}");
    assert!(stderr.starts_with("keylife: "), "{stderr:?}");
    stderr
}

#[test]
fn the_server_refuses_to_start_without_a_usable_root_key() {
    let setup = Setup::new();
    let credentials = Some(setup.credentials.as_path());

    let stderr = refuses_to_start(setup.command(None, credentials));
    assert!(
        stderr.contains("no root key") && stderr.contains("KEYLIFE_ROOT_KEY"),
        "{stderr}"
    );

    let missing = setup.dir.path().join("no-such.key");
    let stderr = refuses_to_start(setup.command(Some(&missing), credentials));
    assert!(stderr.contains("no-such.key"), "{stderr}");

    let short = setup.dir.path().join("short.key");
    std::fs::write(&short, format!("{}\n", b64(&[7; 16]))).unwrap();
    let stderr = refuses_to_start(setup.command(Some(&short), credentials));
    assert!(stderr.contains("32 bytes"), "{stderr}");
    assert!(stderr.contains("short.key"), "{stderr}");

    let garbage = setup.dir.path().join("garbage.key");
    std::fs::write(&garbage, "this is not base64!\n").unwrap();
    let stderr = refuses_to_start(setup.command(Some(&garbage), credentials));
    assert!(stderr.contains("base64"), "{stderr}");
    assert!(
        !stderr.contains("this is not"),
        "the key file's text is repeated: {stderr}"
    );
}

#[test]
fn the_server_refuses_to_start_with_bad_credentials() {
    let setup = Setup::new();
    let root_key = Some(setup.root_key.as_path());

    let stderr = refuses_to_start(setup.command(root_key, None));
    assert!(
        stderr.contains("no credentials") && stderr.contains("KEYLIFE_CREDENTIALS"),
        "{stderr}"
    );

    let missing = setup.dir.path().join("no-such-credentials");
    let stderr = refuses_to_start(setup.command(root_key, Some(&missing)));
    assert!(stderr.contains("no-such-credentials"), "{stderr}");

    // A credentials file others can read is used, with a warning.
    let loose = setup.dir.path().join("loose-credentials");
    std::fs::write(&loose, "EXOa x\n").unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let server = Served::start(setup.command(root_key, Some(&loose)));
    server.signal("TERM");
    let (status, stderr) = server.wait(Duration::from_secs(20));
    assert!(status.success(), "exit {status}; stderr: {stderr}");
    assert!(
        stderr.contains("warning: the credentials file") && stderr.contains("has mode 644"),
        "{stderr}"
    );

    for (text, expected) in [
        ("", "no `KEY SECRET`"),
        ("# only a comment\n", "no `KEY SECRET`"),
        ("EXOa\n", "line 1"),
        ("EXOa secret\nEXOb\n", "line 2"),
        ("EXOa alpha beta\n", "line 1"),
        ("EXOa secret\nEXOa other\n", "twice"),
    ] {
        let file = setup.dir.path().join("bad-credentials");
        std::fs::write(&file, text).unwrap();
        let stderr = refuses_to_start(setup.command(root_key, Some(&file)));
        assert!(
            stderr.contains(expected) && stderr.contains("bad-credentials"),
            "{text:?}: {stderr}"
        );
        for secret in ["secret", "alpha", "beta", "other"] {
            assert!(!stderr.contains(secret), "{text:?}: a secret in {stderr}");
        }
    }
}

#[test]
fn the_server_refuses_to_start_with_another_root_key_for_an_existing_store() {
    let setup = Setup::new();
    let server = setup.start();
    let runtime = runtime();
    let id = runtime.block_on(async {
        let mut client = Client::connect(server.addr).await;
        let reply = client.post("/v2/kms-key", json!({ "name": "kept" })).await;
        ok(&reply)["id"].as_str().unwrap().to_owned()
    });
    server.stop();

    let other = setup.dir.path().join("other.key");
    write_root_key(&other);
    let stderr = refuses_to_start(setup.command(Some(&other), Some(&setup.credentials)));
    assert!(stderr.contains("root key"), "{stderr}");
    assert!(
        stderr.contains(ZONE),
        "the message names the zone: {stderr}"
    );

    // The store is untouched: the right key opens it, with its key.
    let server = setup.start();
    runtime.block_on(async {
        let mut client = Client::connect(server.addr).await;
        let reply = client.get(&format!("/v2/kms-key/{id}")).await;
        assert_eq!(ok(&reply)["name"], "kept");
    });
    server.stop();
}

#[test]
fn a_stalled_client_does_not_keep_the_server_from_exiting() {
    let setup = Setup::new();
    // A signed request whose body never arrives in full: its headers pass the checks that
    // need no body, so it is in flight while the server waits for the rest.
    let body = br#"{"name":"stalled"}"#;
    let authorization = keylife::server::auth::sign(
        KEY,
        SECRET,
        "POST",
        "/v2/kms-key",
        body,
        http_support::unix_now() + 300,
    );
    let signed_stall = format!(
        "POST /v2/kms-key HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n\
         Content-Length: {}\r\n\r\n{{",
        body.len()
    );
    // (what the client sends and stops at, whether a request is then in flight)
    for (stall, in_flight) in [
        (&b"POST /v2/kms-key HTTP/1.1\r\nHost: x\r\n"[..], false),
        (signed_stall.as_bytes(), true),
    ] {
        let mut command = setup.command(Some(&setup.root_key), Some(&setup.credentials));
        command.args(["--shutdown-grace", "1"]);
        let server = Served::start(command);
        let mut stalled = std::net::TcpStream::connect(server.addr).unwrap();
        stalled.write_all(stall).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let signalled = Instant::now();
        server.signal("TERM");
        // Fails (and kills the server) if it has not exited 20 s later.
        let (status, stderr) = server.wait(Duration::from_secs(20));
        assert!(status.success(), "exit {status}; stderr: {stderr}");
        let waited = signalled.elapsed();
        if in_flight {
            // A request whose body is still coming is given the grace period (1 s), then its
            // connection is dropped.
            assert!(
                waited >= Duration::from_millis(900),
                "exited after {waited:?}"
            );
            assert!(stderr.contains("dropped"), "stderr: {stderr}");
        } else {
            // Unfinished headers are no request in flight: the connection closes at once.
            assert!(waited < Duration::from_secs(5), "exited after {waited:?}");
        }
        drop(stalled);
    }
}
