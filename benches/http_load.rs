//! A bounded load test of `keylife serve` on loopback: 16 concurrent signed clients, each on
//! its own keep-alive connection, doing 20,000 encrypt/decrypt pairs in all (40,000 requests)
//! against the release binary in its own process. It reports requests per second, p50/p99
//! latency and the server's CPU time per request (from /proc), then checks that every
//! ciphertext made during the run still decrypts to its plaintext.
//!
//! The baseline, measured in the same run with the same clients: signed requests to a path
//! that names no operation, answered 404 by the router without reading the store or the body.
//! It is the cost of HTTP, the router and the connection, so the difference is keylife's own.
//!
//! The same run then measures HTTPS: a second server process with `--tls-cert/--tls-key` (a
//! test CA and certificate made with rcgen), the same clients, each on one TLS session over its
//! keep-alive connection (the handshake is paid once per client, before the measured window).
//!
//! Last, plain HTTP again with `--audit-log` (one chained line per request, group-synced, the
//! head recorded in the store after each group).
//!
//! Run: `cargo bench --bench http_load` (the summary line starting `http_load:` is what
//! scripts/perf_report.py reads; `http_load_tls:` is the same over HTTPS, `http_load_audit:`
//! with the audit log). Environment: `LOAD_PAIRS` (default 20000), `LOAD_CLIENTS`
//! (16), `LOAD_CLIENT_THREADS` (client runtime threads, default 1), `LOAD_SERVER_THREADS`
//! (server workers, default: the server's own default, one per CPU).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tokio_rustls::rustls;

mod signed_client;

use signed_client::{Client, KEY, SECRET};

const CONTEXT: &[u8] = b"load-test";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The server process; killed if the bench stops early.
struct Server {
    child: Child,
    address: SocketAddr,
    /// The clients' TLS configuration when the server serves HTTPS.
    tls: Option<Arc<rustls::ClientConfig>>,
    _dir: tempfile::TempDir,
}

/// One server set-up to measure: the extra `keylife serve` arguments, written into the
/// server's temporary directory by `args` (which returns them and the clients' TLS
/// configuration, if any), and the prefix of its summary line.
///
struct Variant {
    /// The summary line's prefix: `http_load` (read by scripts/perf_report.py), ...
    summary: &'static str,
    /// What the human-readable lines say it is.
    label: &'static str,
    args: fn(&std::path::Path) -> ServerArgs,
}

/// The extra `keylife serve` arguments of a variant, and the clients' TLS configuration.
type ServerArgs = (Vec<OsString>, Option<Arc<rustls::ClientConfig>>);

/// Every variant, measured in this order, each on a server process of its own.
fn variants() -> Vec<Variant> {
    vec![
        Variant {
            summary: "http_load",
            label: "HTTP",
            args: |_| (Vec::new(), None),
        },
        Variant {
            summary: "http_load_tls",
            label: "HTTPS",
            args: tls_args,
        },
        Variant {
            summary: "http_load_audit",
            label: "HTTP with --audit-log",
            args: |dir| {
                let log = dir.join("audit.log").into_os_string();
                (vec!["--audit-log".into(), log], None)
            },
        },
    ]
}

/// A CA and a server certificate for 127.0.0.1 made with rcgen in `dir`: the server's
/// `--tls-cert`/`--tls-key`, and a client configuration that trusts the CA (ring, as the
/// server, ALPN http/1.1).
fn tls_args(dir: &std::path::Path) -> ServerArgs {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, server_cert.pem()).expect("write certificate");
    write_private(&key, server_key.serialize_pem().as_bytes()).expect("write key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).expect("trust the CA");
    #[allow(deprecated)] // ring's provider, as the server's
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let args = vec![
        "--tls-cert".into(),
        cert.into_os_string(),
        "--tls-key".into(),
        key.into_os_string(),
    ];
    (args, Some(Arc::new(config)))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `bytes` to a new file at `path` readable by its owner only (mode 0600 on unix), as
/// keylife wants its root key and credentials files.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, bytes)
}

impl Server {
    fn start(threads: Option<usize>, variant: &Variant) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let (extra, tls) = (variant.args)(dir.path());
        let root_key = dir.path().join("root.key");
        let credentials = dir.path().join("credentials");
        let binary = env!("CARGO_BIN_EXE_keylife");
        let generated = Command::new(binary)
            .args(["root-key", "generate"])
            .output()
            .expect("keylife root-key generate");
        write_private(&root_key, &generated.stdout).expect("write root key");
        write_private(&credentials, format!("{KEY} {SECRET}\n").as_bytes())
            .expect("write credentials");
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(["--zone", "ch-gva-2=127.0.0.1:0"])
            .arg("--root-key-file")
            .arg(&root_key)
            .arg("--credentials-file")
            .arg(&credentials)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(threads) = threads {
            command.args(["--threads", &threads.to_string()]);
        }
        command.args(&extra);
        let mut child = command.spawn().expect("start keylife serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the serving line");
        let address = line
            .trim()
            .rsplit("://")
            .next()
            .and_then(|rest| rest.strip_suffix("/v2"))
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"));
        Server {
            child,
            address,
            tls,
            _dir: dir,
        }
    }

    /// User + system CPU time of the server process so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc/PID/stat (Linux only)");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat format")
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of stat(5); the list starts at field 3.
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
    }
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

impl Client {
    /// Decrypts `ciphertext` with `key` and the load test's context; whether the answer is a
    /// 200 with exactly `plaintext`.
    async fn decrypts_to(&mut self, key: &str, ciphertext: &str, plaintext: &[u8]) -> bool {
        let body = json!({
            "ciphertext": ciphertext,
            "encryption-context": BASE64.encode(CONTEXT),
        });
        let (status, answer) = self
            .call(
                "POST",
                &format!("/v2/kms-key/{key}/decrypt"),
                body.to_string().into_bytes(),
            )
            .await;
        let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        let opened = answer["plaintext"]
            .as_str()
            .and_then(|text| BASE64.decode(text).ok());
        status == 200 && opened.as_deref() == Some(plaintext)
    }
}

/// What one run measured.
struct Run {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    server_cpu: Duration,
    latencies: Vec<Duration>,
    /// (plaintext, ciphertext) pairs made, for the check afterwards.
    made: Vec<(Vec<u8>, String)>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }

    fn cpu_per_request(&self) -> Duration {
        self.server_cpu / self.requests as u32
    }
}

/// `clients` connections doing `pairs` encrypt/decrypt pairs in all with key `key`; with
/// `key` `None`, the same number of requests to a path with no operation (the baseline).
async fn drive(server: &Server, key: Option<&str>, pairs: usize, clients: usize) -> Run {
    let mut tasks = Vec::new();
    let cpu_before = server.cpu();
    let start = Instant::now();
    for client_index in 0..clients {
        let share = pairs / clients + usize::from(client_index < pairs % clients);
        let address = server.address;
        let tls = server.tls.clone();
        let key = key.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(address, tls.as_ref()).await;
            let mut latencies = Vec::with_capacity(share * 2);
            let mut made = Vec::with_capacity(share);
            let mut errors = 0;
            for pair in 0..share {
                let plaintext =
                    format!("client {client_index} pair {pair}: 32 bytes of data.").into_bytes();
                let Some(key) = &key else {
                    for _ in 0..2 {
                        let begun = Instant::now();
                        let (status, _) = client
                            .call("GET", "/v2/no-such-operation", Vec::new())
                            .await;
                        latencies.push(begun.elapsed());
                        errors += usize::from(status != 404);
                    }
                    continue;
                };
                let body = json!({
                    "plaintext": BASE64.encode(&plaintext),
                    "encryption-context": BASE64.encode(CONTEXT),
                });
                let begun = Instant::now();
                let (status, answer) = client
                    .call(
                        "POST",
                        &format!("/v2/kms-key/{key}/encrypt"),
                        body.to_string().into_bytes(),
                    )
                    .await;
                latencies.push(begun.elapsed());
                if status != 200 {
                    errors += 1;
                    continue;
                }
                let answer: Value = serde_json::from_slice(&answer).expect("encrypt JSON");
                let ciphertext = answer["ciphertext"]
                    .as_str()
                    .expect("ciphertext")
                    .to_owned();
                let begun = Instant::now();
                let opened = client.decrypts_to(key, &ciphertext, &plaintext).await;
                latencies.push(begun.elapsed());
                errors += usize::from(!opened);
                made.push((plaintext, ciphertext));
            }
            (latencies, made, errors)
        }));
    }
    let mut run = Run {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        server_cpu: Duration::ZERO,
        latencies: Vec::new(),
        made: Vec::new(),
    };
    for task in tasks {
        let (latencies, made, errors) = task.await.expect("client task");
        run.requests += latencies.len();
        run.latencies.extend(latencies);
        run.made.extend(made);
        run.errors += errors;
    }
    run.elapsed = start.elapsed();
    run.server_cpu = server.cpu().saturating_sub(cpu_before);
    run.latencies.sort_unstable();
    run
}

/// Decrypts every ciphertext of `run` again, one connection, after the measured window.
async fn check_all(server: &Server, key: &str, run: &Run) -> usize {
    let mut client = Client::connect(server.address, server.tls.as_ref()).await;
    let mut failures = 0;
    for (plaintext, ciphertext) in &run.made {
        failures += usize::from(!client.decrypts_to(key, ciphertext, plaintext).await);
    }
    failures
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it as a quick smoke test.
    let smoke = !std::env::args().any(|arg| arg == "--bench");
    let pairs = env_usize("LOAD_PAIRS", if smoke { 200 } else { 20_000 });
    let clients = env_usize("LOAD_CLIENTS", 16);
    let client_threads = env_usize("LOAD_CLIENT_THREADS", 1);
    let server_threads = std::env::var("LOAD_SERVER_THREADS")
        .ok()
        .and_then(|value| value.parse().ok());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .enable_all()
        .build()
        .expect("client runtime");
    for variant in variants() {
        let server = Server::start(server_threads, &variant);
        runtime.block_on(measure(&server, &variant, pairs, clients));
    }
}

/// Creates a key, warms up, measures the baseline then the encrypt/decrypt load on `server`,
/// checks every ciphertext, and prints the lines of `variant`.
async fn measure(server: &Server, variant: &Variant, pairs: usize, clients: usize) {
    let mut setup = Client::connect(server.address, server.tls.as_ref()).await;
    let (status, created) = setup
        .call("POST", "/v2/kms-key", br#"{"name":"load-test"}"#.to_vec())
        .await;
    assert_eq!(
        status,
        200,
        "create-kms-key: {}",
        String::from_utf8_lossy(&created)
    );
    let created: Value = serde_json::from_slice(&created).expect("create JSON");
    let key = created["id"].as_str().expect("id").to_owned();

    // Warm up both paths (connections, caches, the key's cipher) before measuring.
    drive(server, Some(&key), 200.min(pairs), clients).await;
    drive(server, None, 200.min(pairs), clients).await;

    let baseline = drive(server, None, pairs, clients).await;
    let load = drive(server, Some(&key), pairs, clients).await;
    let failures = check_all(server, &key, &load).await;

    let label = variant.label;
    for (name, run) in [
        ("baseline (404, no operation)", &baseline),
        ("encrypt/decrypt", &load),
    ] {
        println!(
            "{label} {name}: {} requests by {clients} clients in {:.2} s: {:.0} requests/s, \
             p50 {:.0} µs, p99 {:.0} µs, server CPU {:.1} µs/request, {} errors",
            run.requests,
            run.elapsed.as_secs_f64(),
            run.per_second(),
            micros(run.percentile(0.50)),
            micros(run.percentile(0.99)),
            micros(run.cpu_per_request()),
            run.errors,
        );
    }
    println!(
        "{label} afterwards: {} of {} ciphertexts decrypt to their plaintexts",
        load.made.len() - failures,
        load.made.len()
    );
    println!(
        "{}: pairs={pairs} clients={clients} requests={} rps={:.0} p50_us={:.0} \
         p99_us={:.0} cpu_us={:.1} errors={} undecryptable={failures} \
         baseline_rps={:.0} baseline_p50_us={:.0} baseline_p99_us={:.0} baseline_cpu_us={:.1}",
        variant.summary,
        load.requests,
        load.per_second(),
        micros(load.percentile(0.50)),
        micros(load.percentile(0.99)),
        micros(load.cpu_per_request()),
        load.errors,
        baseline.per_second(),
        micros(baseline.percentile(0.50)),
        micros(baseline.percentile(0.99)),
        micros(baseline.cpu_per_request()),
    );
    assert_eq!(load.errors, 0, "{label}: requests failed during the load");
    assert_eq!(baseline.errors, 0, "{label}: baseline requests failed");
    assert_eq!(failures, 0, "{label}: ciphertexts that no longer decrypt");
    assert_eq!(
        load.made.len(),
        pairs,
        "{label}: every pair made a ciphertext"
    );
}
