//! Shared by the HTTP tests (`tests/http_api.rs`, `tests/http_shutdown.rs`): an in-process
//! server on free loopback ports, and a small HTTP/1.1 client that keeps one connection alive
//! and signs its requests with `EXO2-HMAC-SHA256`.
#![allow(dead_code)]

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use jiff::{SignedDuration, Timestamp};
use keylife::server::auth::{self, Credentials};
use keylife::server::{Keyring, ServeOptions};
use keylife::{Kms, KmsOptions, Limits, LocalLink, ManualClock, RootKey};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The API key every test server accepts.
pub const KEY: &str = "EXOtest";
/// Its secret.
pub const SECRET: &[u8] = b"test-secret";
/// The first zone of a test server.
pub const ZONE_A: &str = "ch-gva-2";
/// The second zone of a two-zone test server.
pub const ZONE_B: &str = "de-fra-1";

/// The statuses the server may answer to any request that is signed.
pub const SIGNED_STATUSES: [u16; 7] = [200, 400, 403, 404, 405, 409, 413];

/// Where every manual clock starts.
pub fn start_time() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// `days` whole days.
pub fn days(days: i64) -> SignedDuration {
    SignedDuration::from_hours(days * 24)
}

/// The system's UNIX time (the server checks signatures against it, not the manual clock).
pub fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Base64 of `bytes`.
pub fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// The bytes of a base64 JSON string.
pub fn unb64(value: &Value) -> Vec<u8> {
    BASE64
        .decode(
            value
                .as_str()
                .unwrap_or_else(|| panic!("not a string: {value}")),
        )
        .unwrap_or_else(|error| panic!("not base64 ({error}): {value}"))
}

/// A timestamp of the JSON.
pub fn ts(value: &Value) -> Timestamp {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp string: {value}"))
        .parse()
        .unwrap_or_else(|error| panic!("not RFC 3339 ({error}): {value}"))
}

/// Server options for tests: `max_body_bytes`, and background due work that never runs after
/// the start (tests call `Kms::run_due` themselves, after moving the clock).
pub fn options(max_body_bytes: usize) -> ServeOptions {
    ServeOptions {
        max_body_bytes,
        due_interval: Duration::from_secs(24 * 3600),
        ..ServeOptions::default()
    }
}

/// A server of in-memory zones sharing one manual clock and one `LocalLink`, each on its own
/// free loopback port, run by `keylife::server::serve` on the test's runtime.
pub struct TestServer {
    /// The address of each zone, in the order given.
    pub addrs: Vec<SocketAddr>,
    /// Each zone's `Kms`.
    pub kms: Vec<Arc<Kms>>,
    /// The clock every zone reads.
    pub clock: ManualClock,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Zones `zones` with the default limits and options.
    pub async fn start(zones: &[&str]) -> TestServer {
        TestServer::start_with(
            zones,
            Limits::default(),
            options(keylife::server::DEFAULT_MAX_BODY_BYTES),
        )
        .await
    }

    /// Zones `zones` with `limits` and `options`.
    pub async fn start_with(zones: &[&str], limits: Limits, options: ServeOptions) -> TestServer {
        let credentials = Credentials::new().with(KEY, SECRET);
        TestServer::start_with_credentials(zones, limits, options, credentials).await
    }

    /// Zones `zones` with `limits` and `options`, accepting `credentials`.
    pub async fn start_with_credentials(
        zones: &[&str],
        limits: Limits,
        options: ServeOptions,
        credentials: Credentials,
    ) -> TestServer {
        let clock = ManualClock::new(start_time());
        let link = LocalLink::new();
        let mut kms = Vec::new();
        for (index, zone) in zones.iter().enumerate() {
            let byte = 10 + u8::try_from(index).unwrap();
            let zone_kms = Arc::new(
                Kms::open_in_memory(
                    RootKey::from_bytes(&mut [byte; 32]),
                    KmsOptions::new(*zone)
                        .clock(clock.clone())
                        .limits(limits)
                        .link(link.clone()),
                )
                .unwrap(),
            );
            link.attach(&zone_kms);
            kms.push(zone_kms);
        }
        TestServer::serve_zones(kms, clock, credentials, options).await
    }

    /// Serves the zones `kms` (whose clock is `clock`), accepting `credentials`, each on a
    /// free loopback port.
    pub async fn serve_zones(
        kms: Vec<Arc<Kms>>,
        clock: ManualClock,
        credentials: Credentials,
        options: ServeOptions,
    ) -> TestServer {
        let mut served = Vec::new();
        let mut addrs = Vec::new();
        for zone_kms in &kms {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            served.push((Arc::clone(zone_kms), listener));
        }
        let credentials = Arc::new(Keyring::new(credentials));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keylife::server::serve(
            served,
            credentials,
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addrs,
            kms,
            clock,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client of zone number `zone`.
    pub async fn client(&self, zone: usize) -> Client {
        Client::connect(self.addrs[zone]).await
    }

    /// Whether the server task is still running.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Stops the server and checks that it ended cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server stops within 10 s")
            .expect("the server task did not panic");
        result.expect("serve returns Ok");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An answer.
#[derive(Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Every header.
    pub headers: hyper::HeaderMap,
    /// The raw body.
    pub body: Bytes,
    /// The body as JSON, `Null` if it is not JSON.
    pub json: Value,
}

impl Reply {
    /// Reads `response` whole; a body cut off is its status and the error.
    pub async fn read(
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Reply, (u16, hyper::Error)> {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| (status, error))?
            .to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            content_type,
            headers,
            body,
            json,
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) {}",
            self.status,
            self.content_type.as_deref().unwrap_or("no content-type"),
            String::from_utf8_lossy(&self.body)
        )
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a request got no complete answer.
#[derive(Debug)]
pub enum Failure {
    /// The TCP connection could not be made.
    Connect(std::io::Error),
    /// The HTTP/1.1 handshake failed.
    Handshake(hyper::Error),
    /// The request was not answered: the connection closed (or failed) before a response
    /// head arrived.
    NoResponse(hyper::Error),
    /// A response head arrived but its body did not arrive whole: a truncated answer.
    Truncated { status: u16, error: hyper::Error },
}

/// One keep-alive HTTP/1.1 connection to a zone, reopened when the server closes it.
pub struct Client {
    addr: SocketAddr,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
    /// The API key it signs with.
    pub key: String,
    /// The secret it signs with.
    pub secret: Vec<u8>,
    /// How many connections it opened.
    pub connections: usize,
}

impl Client {
    /// Connects to `addr`; panics if it cannot.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut client = Client::new(addr);
        client.open().await.expect("connect to the server");
        client
    }

    /// A client of `addr` that connects on first use.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            sender: None,
            key: KEY.to_owned(),
            secret: SECRET.to_vec(),
            connections: 0,
        }
    }

    async fn open(&mut self) -> Result<(), Failure> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(Failure::Handshake)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.sender = Some(sender);
        self.connections += 1;
        Ok(())
    }

    /// The `Authorization` of this client's credentials for a request, valid five minutes.
    pub fn authorization(&self, method: &str, path: &str, body: &[u8]) -> String {
        auth::sign(
            &self.key,
            &self.secret,
            method,
            path,
            body,
            unix_now() + 300,
        )
    }

    /// Sends `method uri` with `headers` and `body` as given (no signature added), on the
    /// kept-alive connection, reconnecting first if the server closed it.
    pub async fn try_send(
        &mut self,
        method: &str,
        uri: &str,
        headers: &[(&str, HeaderValue)],
        body: Vec<u8>,
    ) -> Result<Reply, Failure> {
        let usable = match self.sender.as_mut() {
            Some(sender) => !sender.is_closed() && sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.open().await?;
        }
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", self.addr.to_string());
        for (name, value) in headers {
            request = request.header(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let sender = self.sender.as_mut().unwrap();
        let response = sender
            .send_request(request)
            .await
            .map_err(Failure::NoResponse)?;
        Reply::read(response)
            .await
            .map_err(|(status, error)| Failure::Truncated { status, error })
    }

    /// [`Client::try_send`], panicking on a failure.
    pub async fn send(
        &mut self,
        method: &str,
        uri: &str,
        headers: &[(&str, HeaderValue)],
        body: Vec<u8>,
    ) -> Reply {
        match self.try_send(method, uri, headers, body).await {
            Ok(reply) => reply,
            Err(failure) => panic!("{method} {uri}: no answer: {failure:?}"),
        }
    }

    /// `method path` with the raw `body`, signed; a failure is returned.
    pub async fn try_signed(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Reply, Failure> {
        let authorization = self.authorization(method, path, body);
        self.try_send(
            method,
            path,
            &[
                (
                    "authorization",
                    HeaderValue::from_str(&authorization).unwrap(),
                ),
                ("content-type", HeaderValue::from_static("application/json")),
            ],
            body.to_vec(),
        )
        .await
    }

    /// `method path` with the raw `body`, signed.
    pub async fn signed(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        match self.try_signed(method, path, body).await {
            Ok(reply) => reply,
            Err(failure) => panic!("{method} {path}: no answer: {failure:?}"),
        }
    }

    /// `method path` with `body` as JSON (no body if `None`), signed.
    pub async fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let bytes = body.map(|body| body.to_string().into_bytes());
        self.signed(method, path, bytes.as_deref().unwrap_or_default())
            .await
    }

    /// A signed `GET path` without body.
    pub async fn get(&mut self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    /// A signed `POST path` with JSON `body`.
    pub async fn post(&mut self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(&body)).await
    }

    /// A signed `POST path` without body.
    pub async fn post_empty(&mut self, path: &str) -> Reply {
        self.call("POST", path, None).await
    }
}

/// Checks that `reply` is an answer of status 200 with a JSON object, and returns the object.
#[track_caller]
pub fn ok(reply: &Reply) -> &Value {
    assert_eq!(reply.status, 200, "expected 200, got {reply}");
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/json"),
        "{reply}"
    );
    assert!(reply.json.is_object(), "not a JSON object: {reply}");
    &reply.json
}

/// Whether `reply` is a valid RFC 9457 problem document for its own status: media type
/// `application/problem+json`, members `type`, `title` and `detail` non-empty strings and
/// `status` equal to the HTTP status.
pub fn problem_error(reply: &Reply) -> Option<String> {
    if reply.content_type.as_deref() != Some("application/problem+json") {
        return Some(format!("not application/problem+json: {reply}"));
    }
    let Some(document) = reply.json.as_object() else {
        return Some(format!("not a JSON object: {reply}"));
    };
    for member in ["type", "title", "detail"] {
        if document
            .get(member)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Some(format!("member `{member}` missing or empty: {reply}"));
        }
    }
    if document.get("status").and_then(Value::as_u64) != Some(u64::from(reply.status)) {
        return Some(format!(
            "member `status` is not the HTTP status {}: {reply}",
            reply.status
        ));
    }
    None
}

/// Checks that `reply` is a problem document of HTTP status `status` and machine code `code`
/// (the `code` member, which the `type` URI ends with); returns its `detail`.
#[track_caller]
pub fn problem(reply: &Reply, status: u16, code: &str) -> String {
    assert_eq!(
        reply.status, status,
        "expected {status} {code}, got {reply}"
    );
    if let Some(error) = problem_error(reply) {
        panic!("{error}");
    }
    assert_eq!(reply.json["code"], code, "{reply}");
    let type_ = reply.json["type"].as_str().unwrap();
    assert!(
        type_.ends_with(&format!(":{code}")),
        "type {type_:?} does not name code {code}"
    );
    reply.json["detail"].as_str().unwrap().to_owned()
}

/// Checks that `reply` is a 400 bad request whose detail names `field` and contains every
/// one of `mentions` (bounds, ...); returns the detail.
#[track_caller]
pub fn bad_request(reply: &Reply, field: &str, mentions: &[&str]) -> String {
    let detail = problem(reply, 400, "bad-request");
    assert!(
        detail.contains(&format!("`{field}`")),
        "the detail does not name `{field}`: {detail}"
    );
    for mention in mentions {
        assert!(
            detail.contains(mention),
            "the detail does not mention {mention:?}: {detail}"
        );
    }
    detail
}

/// Sends raw `bytes` on a new connection and reads what comes back until the server closes
/// the connection (or `wait` passes). Returns the bytes read. (Blocking sockets on a blocking
/// thread: the tests' tokio has no `io-util`.)
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(wait)).unwrap();
        // The server may answer and close before reading everything: a failed write is fine.
        let _ = stream.write_all(&bytes);
        let mut answer = Vec::new();
        let deadline = std::time::Instant::now() + wait;
        let mut buffer = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
        answer
    })
    .await
    .unwrap()
}

/// The status code of a raw HTTP/1.1 answer, if it starts like one.
pub fn raw_status(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Exoscale's KMS API spec (the copy under `tests/spec`).
pub fn spec() -> &'static Value {
    static SPEC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        serde_json::from_str(include_str!("../spec/exoscale-kms-openapi.json"))
            .expect("the spec is JSON")
    })
}

fn resolve(schema: &'static Value) -> &'static Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            resolve(&spec()["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn shape(schema: &'static Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(schema);
    if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    let kind = schema.get("type").and_then(Value::as_str);
    match kind {
        Some("object") => {
            let Some(object) = value.as_object() else {
                errors.push(format!("{at}: not an object"));
                return;
            };
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap();
                if !object.contains_key(name) {
                    errors.push(format!("{at}: required `{name}` missing"));
                }
            }
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, member) in object {
                    match properties.get(name) {
                        Some(property) => shape(property, member, &format!("{at}.{name}"), errors),
                        None => errors.push(format!("{at}: `{name}` is not in the spec")),
                    }
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (index, item) in items.iter().enumerate() {
                    shape(&schema["items"], item, &format!("{at}[{index}]"), errors);
                }
            }
            None => errors.push(format!("{at}: not an array")),
        },
        Some("string") => match value.as_str() {
            Some(text) => {
                if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
                    && !allowed.iter().any(|a| a == value)
                {
                    errors.push(format!("{at}: {text:?} is not one of {allowed:?}"));
                }
                match schema.get("format").and_then(Value::as_str) {
                    Some("date-time")
                        if text.parse::<Timestamp>().is_err() || !text.ends_with('Z') =>
                    {
                        errors.push(format!("{at}: {text:?} is not an RFC 3339 UTC time"));
                    }
                    Some("byte") if BASE64.decode(text).is_err() => {
                        errors.push(format!("{at}: {text:?} is not base64"));
                    }
                    Some("uuid") if uuid::Uuid::try_parse(text).is_err() => {
                        errors.push(format!("{at}: {text:?} is not a UUID"));
                    }
                    _ => {}
                }
            }
            None => errors.push(format!("{at}: not a string")),
        },
        Some("integer") if !(value.is_i64() || value.is_u64()) => {
            errors.push(format!("{at}: not an integer"));
        }
        Some("boolean") if !value.is_boolean() => errors.push(format!("{at}: not a boolean")),
        _ => {}
    }
}

/// Checks `value` against the spec's schema of the 200 answer of operation `operation_id`:
/// required members present, no member the spec does not list, JSON types, enums and string
/// formats.
#[track_caller]
pub fn check_shape(operation_id: &str, value: &Value) {
    let operation = spec()["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .find(|operation| operation["operationId"] == operation_id)
        .unwrap_or_else(|| panic!("no operation {operation_id} in the spec"));
    let schema = operation
        .pointer("/responses/200/content/application~1json/schema")
        .unwrap_or_else(|| panic!("{operation_id} has no 200 JSON schema"));
    let mut errors = Vec::new();
    shape(schema, value, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "{operation_id}: the answer does not follow the spec: {errors:?}\n{value}"
    );
}

// ---- HTTPS and `keylife serve` processes (tests/http_tls.rs, tests/http_limits.rs,
// tests/http_reload.rs) ----

/// A test certificate authority and a server certificate it signed for `127.0.0.1` and
/// `localhost`, made with rcgen (no openssl needed).
pub struct TestCa {
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    /// The server's certificate, PEM.
    pub cert_pem: String,
    /// The server's private key, PEM (PKCS#8).
    pub key_pem: String,
    ca_der: rustls_pki::CertificateDer<'static>,
}

use tokio_rustls::rustls::pki_types as rustls_pki;

impl TestCa {
    /// A new CA and server certificate.
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keylife test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            cert_pem: server_cert.pem(),
            key_pem: server_key.serialize_pem(),
            ca_der: ca_cert.der().clone(),
        }
    }

    /// The server's [`keylife::server::Tls`].
    pub fn tls(&self) -> keylife::server::Tls {
        keylife::server::Tls::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes()).unwrap()
    }

    /// Writes the server's certificate and key into `dir`; returns their paths.
    pub fn write(&self, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// A TLS client configuration that trusts this CA only and offers ALPN `http/1.1`.
    pub fn client_config(&self) -> Arc<tokio_rustls::rustls::ClientConfig> {
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        #[allow(deprecated)] // ring's provider, as the server's
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// One keep-alive HTTPS connection to a zone, signing its requests as [`Client`] does.
pub struct TlsClient {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
    /// The API key it signs with.
    pub key: String,
    /// The secret it signs with.
    pub secret: Vec<u8>,
}

impl TlsClient {
    /// A TLS handshake with `addr` as server name `127.0.0.1`, trusting `ca` only.
    pub async fn connect(addr: SocketAddr, ca: &TestCa) -> Result<TlsClient, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let _ = stream.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(ca.client_config());
        let name = rustls_pki::ServerName::try_from("127.0.0.1").unwrap();
        let stream = connector
            .connect(name, stream)
            .await
            .map_err(|error| format!("TLS handshake: {error}"))?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("HTTP handshake: {error}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(TlsClient {
            sender,
            host: addr.to_string(),
            alpn,
            key: KEY.to_owned(),
            secret: SECRET.to_vec(),
        })
    }

    /// `method path` with `body`, signed unless `signed` is false.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        signed: bool,
    ) -> Result<Reply, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        if signed {
            let authorization = auth::sign(
                &self.key,
                &self.secret,
                method,
                path,
                body,
                unix_now() + 300,
            );
            request = request.header("authorization", authorization);
        }
        let request = request.body(Full::new(Bytes::from(body.to_vec()))).unwrap();
        self.sender
            .ready()
            .await
            .map_err(|error| format!("connection: {error}"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|error| format!("no answer: {error}"))?;
        Reply::read(response)
            .await
            .map_err(|(_, error)| format!("truncated answer: {error}"))
    }
}

/// Connects to `addr`, sends `bytes` (may be empty) and waits up to `wait` for the server to
/// close the connection. `Ok(bytes read)` when it closed it (end of stream or reset), `Err`
/// with what was read when it was still open after `wait`.
pub async fn closed_by_server(
    addr: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> Result<Vec<u8>, Vec<u8>> {
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let _ = stream.write_all(&bytes);
        let deadline = std::time::Instant::now() + wait;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(answer);
            }
            stream.set_read_timeout(Some(left)).unwrap();
            match stream.read(&mut buffer) {
                Ok(0) => return Ok(answer),
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(answer);
                }
                Err(_) => return Ok(answer),
            }
        }
    })
    .await
    .unwrap()
}

/// The `keylife` binary.
pub const BINARY: &str = env!("CARGO_BIN_EXE_keylife");

/// A `keylife serve` process whose standard error is read line by line as it comes.
pub struct ServeProcess {
    child: std::process::Child,
    /// The URL of each zone, from its "serving" line, in the order printed.
    pub urls: Vec<String>,
    _stdout: std::io::BufReader<std::process::ChildStdout>,
    stderr: std::sync::mpsc::Receiver<String>,
    /// Every standard error line received so far.
    pub stderr_seen: Vec<String>,
}

impl ServeProcess {
    /// Runs `command` (a `keylife serve` with piped stdout and stderr) and reads `zones`
    /// "serving" lines; panics with its standard error if it exits first.
    pub fn start(mut command: std::process::Command, zones: usize) -> ServeProcess {
        use std::io::BufRead as _;
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("start keylife serve");
        let (lines, stderr) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut urls = Vec::new();
        for _ in 0..zones {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            match line.trim().split_once(" serving ") {
                Some((_, url)) => urls.push(url.to_owned()),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text: Vec<String> = stderr.try_iter().collect();
                    panic!("unexpected line {line:?}; stderr: {}", text.join("\n"));
                }
            }
        }
        ServeProcess {
            child,
            urls,
            _stdout: stdout,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// The address of zone number `zone` (its URL without scheme and `/v2`).
    pub fn addr(&self, zone: usize) -> SocketAddr {
        let url = &self.urls[zone];
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        rest.trim_end_matches("/v2").parse().unwrap()
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `wait` for a new standard error line containing `text`; returns it.
    pub fn wait_for_stderr(&mut self, text: &str, wait: Duration) -> String {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {text:?} within {wait:?}; seen: {:#?}",
                    self.stderr_seen
                ),
            }
        }
    }

    /// The standard error lines that arrive within `wait`.
    pub fn stderr_for(&mut self, wait: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + wait;
        let mut lines = Vec::new();
        while let Ok(line) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            self.stderr_seen.push(line.clone());
            lines.push(line);
        }
        lines
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then checks that it exits 0 within 10 s; returns the standard error lines
    /// not seen before.
    pub fn stop(mut self) -> Vec<String> {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}");
                return self.stderr_for(Duration::from_secs(2));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A directory with a root key file and a credentials file (`KEY SECRET`), for
/// `keylife serve` processes.
pub struct ServeFiles {
    /// The directory (the data directory is `data` in it).
    pub dir: tempfile::TempDir,
    /// The root key file.
    pub root_key: std::path::PathBuf,
    /// The credentials file.
    pub credentials: std::path::PathBuf,
}

impl ServeFiles {
    /// New files, with mode 0600 for the secrets.
    pub fn new() -> ServeFiles {
        let dir = tempfile::tempdir().unwrap();
        let root_key = dir.path().join("root.key");
        let generated = std::process::Command::new(BINARY)
            .args(["root-key", "generate"])
            .output()
            .unwrap();
        assert!(generated.status.success(), "{generated:?}");
        std::fs::write(&root_key, &generated.stdout).unwrap();
        let credentials = dir.path().join("credentials");
        std::fs::write(
            &credentials,
            format!("{KEY} {}\n", String::from_utf8_lossy(SECRET)),
        )
        .unwrap();
        #[cfg(unix)]
        for path in [&root_key, &credentials] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        ServeFiles {
            dir,
            root_key,
            credentials,
        }
    }

    /// `keylife serve` with these files, zones `zones` (`NAME=ADDR`) and `extra` arguments,
    /// without `KEYLIFE_*` variables.
    pub fn command(&self, zones: &[&str], extra: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(BINARY);
        command
            .arg("serve")
            .arg("--data")
            .arg(self.dir.path().join("data"))
            .arg("--root-key-file")
            .arg(&self.root_key)
            .arg("--credentials-file")
            .arg(&self.credentials)
            .env_remove("KEYLIFE_ROOT_KEY")
            .env_remove("KEYLIFE_CREDENTIALS")
            .env_remove("KEYLIFE_DATA");
        for zone in zones {
            command.args(["--zone", zone]);
        }
        command.args(extra);
        command
    }
}

// ---- Two `keylife serve` processes linked by `--peer` (tests/replication_binary.rs) ----

pub mod proxy;

/// The credential zone A's process signs its deliveries to zone B's with (in A's peer
/// credentials file), which B's credentials file grants `replicate` for zone A.
pub const LINK_AB: (&str, &str) = ("EXOlinkAB", "link-secret-a-to-b");
/// The credential of the other direction, B to A.
pub const LINK_BA: (&str, &str) = ("EXOlinkBA", "link-secret-b-to-a");

/// One `keylife serve` process of one zone, with its own data directory and root key, behind
/// a [`proxy::Proxy`] that the other process's `--peer` names (so the URL holds across
/// restarts on new ports).
pub struct PeerProcess {
    /// The zone it serves.
    pub zone: &'static str,
    /// Its root key, credentials file and data directory.
    pub files: ServeFiles,
    /// The proxy in front of it: what the other process delivers to.
    pub proxy: proxy::Proxy,
    /// Its peer credentials file (`ZONE KEY SECRET`).
    pub peer_credentials: std::path::PathBuf,
    /// The arguments of `keylife serve` after `--zone` (the `--peer` flags included).
    pub args: Vec<String>,
    process: Option<ServeProcess>,
}

impl PeerProcess {
    /// Files for zone `zone`, whose peer `peer_zone` is reached at `peer_url` and signed for
    /// with `link` (in the peer credentials file); `accepts` is the credential it accepts
    /// deliveries from, with `replicate` for `peer_zone`. Not started.
    fn new(
        zone: &'static str,
        peer_zone: &str,
        peer_url: &str,
        link: (&str, &str),
        accepts: (&str, &str),
    ) -> PeerProcess {
        let files = ServeFiles::new();
        let secret = String::from_utf8_lossy(SECRET);
        std::fs::write(
            &files.credentials,
            format!(
                "{KEY} {secret}\n{} {} operations=replicate zones={peer_zone}\n",
                accepts.0, accepts.1
            ),
        )
        .unwrap();
        let peer_credentials = files.dir.path().join("peer-credentials");
        std::fs::write(
            &peer_credentials,
            format!(
                "# the credential of each peer zone\n{peer_zone} {} {}\n",
                link.0, link.1
            ),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&peer_credentials, std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        let args = vec![
            "--peer".to_owned(),
            format!("{peer_zone}={peer_url}"),
            "--peer-credentials-file".to_owned(),
            peer_credentials.display().to_string(),
        ];
        PeerProcess {
            zone,
            files,
            proxy: proxy::Proxy::start(proxy::Mode::Forward),
            peer_credentials,
            args,
            process: None,
        }
    }

    /// Adds `line` to its credentials file (read at the next start).
    pub fn add_credential(&self, line: &str) {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.files.credentials)
            .unwrap();
        writeln!(file, "{line}").unwrap();
    }

    /// Starts `keylife serve` (on a free port) and points its proxy at it.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.zone);
        let zone = format!("{}=127.0.0.1:0", self.zone);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let process = ServeProcess::start(self.files.command(&[&zone], &args), 1);
        self.proxy.set_target(process.addr(0));
        self.process = Some(process);
    }

    /// The running process.
    pub fn process(&mut self) -> &mut ServeProcess {
        self.process.as_mut().expect("the process is running")
    }

    /// Its address (not the proxy's).
    pub fn addr(&self) -> SocketAddr {
        self.process
            .as_ref()
            .expect("the process is running")
            .addr(0)
    }

    /// A client of it, signing with [`KEY`].
    pub fn client(&self) -> Client {
        Client::new(self.addr())
    }

    /// SIGKILL, and waits for the end.
    pub fn kill(&mut self) {
        let process = self.process.take().expect("the process is running");
        process.signal("KILL");
        drop(process);
    }

    /// SIGTERM; checks that it exits 0 within 10 s; returns its last standard error lines.
    pub fn stop(&mut self) -> Vec<String> {
        self.process.take().expect("the process is running").stop()
    }
}

/// Zone A ([`ZONE_A`]) and zone B ([`ZONE_B`]) in two `keylife serve` processes, each naming
/// the other with `--peer` (through the other's proxy), with the link credentials
/// [`LINK_AB`] and [`LINK_BA`].
pub struct PeerPair {
    /// The process of zone A.
    pub a: PeerProcess,
    /// The process of zone B.
    pub b: PeerProcess,
}

impl PeerPair {
    /// The files and proxies of both, not started (add arguments or credentials first).
    pub fn new() -> PeerPair {
        let mut a = PeerProcess::new(ZONE_A, ZONE_B, "", LINK_AB, LINK_BA);
        let mut b = PeerProcess::new(ZONE_B, ZONE_A, &a.proxy.url(), LINK_BA, LINK_AB);
        a.args[1] = format!("{ZONE_B}={}", b.proxy.url());
        b.args[1] = format!("{ZONE_A}={}", a.proxy.url());
        PeerPair { a, b }
    }

    /// Both started, with no other argument.
    pub fn start() -> PeerPair {
        let mut pair = PeerPair::new();
        pair.a.start();
        pair.b.start();
        pair
    }
}

/// The path of key `id`, or of `operation` on it (empty: the key itself).
pub fn key_path(id: &str, operation: &str) -> String {
    if operation.is_empty() {
        format!("/v2/kms-key/{id}")
    } else {
        format!("/v2/kms-key/{id}/{operation}")
    }
}

/// The `revision.seq` of a key's JSON.
pub fn seq(key: &Value) -> u64 {
    key["revision"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no revision.seq: {key}"))
}
