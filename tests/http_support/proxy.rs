//! A TCP proxy the test owns (tests/replication_binary.rs): it listens on a loopback port
//! chosen when it is made, so a `keylife serve --peer ZONE=URL` can name it before the process
//! behind it starts, and keeps naming it when that process comes back on another port.
//!
//! Each connection it accepts is handled by the mode set at that moment:
//! - [`Mode::Forward`]: connected to the current target (closed at once if there is none or
//!   it cannot be reached); every request that passes is recorded, raw, as it went by;
//! - [`Mode::Refuse`]: closed at once, unread (the peer looks down);
//! - [`Mode::Hold`]: accepted and never answered, until the mode changes (then closed).
//!
//! Requests are read as HTTP/1.1 with `Content-Length` (what the link sends): head up to the
//! blank line, then that many bytes of body. Std threads and blocking sockets: the tests'
//! tokio has no `io-util`.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the proxy does with a connection it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Passes it to the target, recording each request.
    Forward,
    /// Closes it at once.
    Refuse,
    /// Keeps it open and never answers, until the mode changes.
    Hold,
}

/// One request that went through, as its bytes came.
#[derive(Clone)]
pub struct Recorded {
    /// The whole request: head and body.
    pub bytes: Vec<u8>,
    /// Where the body starts (the length of the head with its blank line).
    pub body_at: usize,
}

impl Recorded {
    fn head(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.body_at]).expect("an ASCII request head")
    }

    /// The method.
    pub fn method(&self) -> &str {
        self.head().split(' ').next().unwrap()
    }

    /// The request target (path and query).
    pub fn path(&self) -> &str {
        self.head().split(' ').nth(1).unwrap()
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(self.head(), name)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_at..]
    }
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({} body bytes)",
            self.method(),
            self.path(),
            self.body().len()
        )
    }
}

/// The value of header `name` in `head` (case-insensitive name), if present.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field
            .trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    target: Option<SocketAddr>,
    recorded: Vec<Recorded>,
    /// The connections held (mode `Hold`), closed when the mode changes.
    held: Vec<TcpStream>,
    /// How many connections were held in all.
    held_count: usize,
    /// How many connections were refused in all.
    refused_count: usize,
}

struct Shared {
    state: Mutex<State>,
    stopped: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The proxy; stops (and closes what it holds) when dropped.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on a free loopback port, in mode `mode`, without target yet.
    pub fn start(mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Some(mode),
                ..State::default()
            }),
            stopped: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                accept(&accepting, stream);
            }
        });
        Proxy { addr, shared }
    }

    /// The URL a `--peer` names for it: `http://ADDR/v2`, as `keylife serve` prints its own.
    pub fn url(&self) -> String {
        format!("http://{}/v2", self.addr)
    }

    /// Forwards from now on to `target`.
    pub fn set_target(&self, target: SocketAddr) {
        self.shared.state().target = Some(target);
    }

    /// Handles the connections accepted from now on by `mode`. Leaving [`Mode::Hold`] closes
    /// the connections held: their requests end without an answer.
    pub fn set_mode(&self, mode: Mode) {
        let mut state = self.shared.state();
        state.mode = Some(mode);
        if mode != Mode::Hold {
            for stream in state.held.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Every request forwarded so far, in the order they came.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.state().recorded.clone()
    }

    /// How many connections were held so far.
    pub fn held_count(&self) -> usize {
        self.shared.state().held_count
    }

    /// How many connections were refused so far.
    pub fn refused_count(&self) -> usize {
        self.shared.state().refused_count
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        for stream in self.shared.state().held.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wakes the accepting thread, which then sees `stopped`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn accept(shared: &Arc<Shared>, stream: TcpStream) {
    let mut state = shared.state();
    match state.mode.unwrap_or(Mode::Refuse) {
        Mode::Refuse => {
            state.refused_count += 1;
            let _ = stream.shutdown(Shutdown::Both);
        }
        Mode::Hold => {
            state.held_count += 1;
            state.held.push(stream);
        }
        Mode::Forward => {
            let target = state.target;
            drop(state);
            let shared = Arc::clone(shared);
            std::thread::spawn(move || forward(&shared, stream, target));
        }
    }
}

/// Passes `client`'s requests to `target` (recording each) and its answers back.
fn forward(shared: &Shared, mut client: TcpStream, target: Option<SocketAddr>) {
    let Some(mut server) =
        target.and_then(|target| TcpStream::connect_timeout(&target, Duration::from_secs(5)).ok())
    else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = server.set_nodelay(true);
    let (Ok(mut answers_from), Ok(mut answers_to)) = (server.try_clone(), client.try_clone())
    else {
        return;
    };
    let answers = std::thread::spawn(move || {
        let _ = std::io::copy(&mut answers_from, &mut answers_to);
        let _ = answers_to.shutdown(Shutdown::Write);
    });
    while let Some(request) = read_request(&mut client) {
        shared.state().recorded.push(request.clone());
        if server.write_all(&request.bytes).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
    let _ = answers.join();
}

/// Reads one HTTP/1.1 request (head, then `Content-Length` bytes of body); `None` at the end
/// of the stream or on a malformed head.
fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let (bytes, body_at) = read_message(stream)?;
    Some(Recorded { bytes, body_at })
}

/// Reads one HTTP/1.1 message with `Content-Length` (0 if absent) from `stream`: its bytes
/// and where its body starts.
fn read_message(stream: &mut TcpStream) -> Option<(Vec<u8>, usize)> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let body_at = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..n]);
    };
    let head = std::str::from_utf8(&bytes[..body_at]).ok()?;
    let length: usize = header(head, "content-length").map_or(Some(0), |v| v.parse().ok())?;
    while bytes.len() < body_at + length {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..n]);
    }
    // One connection per request: bytes past the body would be a pipelined next request,
    // which the link does not send.
    bytes.truncate(body_at + length);
    Some((bytes, body_at))
}

/// An answer read raw by [`send_raw`].
pub struct RawAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The response head.
    pub head: String,
    /// The body.
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }
}

impl std::fmt::Debug for RawAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body)
                .chars()
                .take(500)
                .collect::<String>()
        )
    }
}

/// Sends `bytes` (one whole HTTP/1.1 request) to `addr` on a new connection, exactly as they
/// are, and reads the answer (head and `Content-Length` body) within 10 s.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawAnswer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    stream.write_all(bytes).unwrap();
    let (answer, body_at) = read_message(&mut stream)
        .unwrap_or_else(|| panic!("no whole answer within 10 s ({:?})", started.elapsed()));
    let head = String::from_utf8(answer[..body_at].to_vec()).unwrap();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {head}"));
    RawAnswer {
        status,
        head,
        body: answer[body_at..].to_vec(),
    }
}

/// `request` with `authorization` in place of its `Authorization` header value.
pub fn with_authorization(request: &Recorded, authorization: &str) -> Vec<u8> {
    let head = std::str::from_utf8(&request.bytes[..request.body_at]).unwrap();
    let mut out = String::new();
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        match line.split_once(':') {
            Some((name, _)) if name.trim().eq_ignore_ascii_case("authorization") => {
                out.push_str(&format!("{name}: {authorization}\r\n"));
            }
            _ => {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(request.body());
    bytes
}
