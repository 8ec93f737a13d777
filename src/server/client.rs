//! A client of a keylife server: requests signed with `EXO2-HMAC-SHA256` as the server
//! verifies them ([`auth::sign`], the server's own code), over HTTP or HTTPS, with the answer's
//! body streamed.
//!
//! The URL is a zone's API URL as `keylife serve` prints it, `http://ADDR/v2` or
//! `https://ADDR/v2`; a request names an absolute path on that address (`/v2/kms-key`,
//! [`BACKUP_PATH`](super::BACKUP_PATH)). HTTPS trusts the CA certificates given
//! ([`ClientOptions::ca_pem`], `--ca-file`) and nothing else: keylife reads no platform root
//! store (choice, docs/design.md "Backup over HTTP"). Each request opens its own connection.
//!
//! ```no_run
//! # async fn run() -> Result<(), keylife::server::client::ClientError> {
//! use keylife::server::client::{ApiCredential, Client, ClientOptions};
//!
//! let credential = ApiCredential::new("EXOadmin", "secret");
//! let client = Client::new("http://127.0.0.1:8080/v2", credential, ClientOptions::default())?;
//! let answer = client.send("POST", keylife::server::BACKUP_PATH, Vec::new()).await?;
//! let mut file = std::fs::File::create("zone.backup").map_err(|source| {
//!     keylife::server::client::ClientError::Write { source }
//! })?;
//! let bytes = answer.success().await?.copy_to(&mut file).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use super::auth;

/// How long a connection (and its TLS handshake) may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an answer may make no progress by default (its head, then each piece of its
/// body) before the request fails.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a signature is valid by default: 5 minutes (the server accepts up to its
/// `--max-signature-validity`, 15 minutes by default).
pub const DEFAULT_SIGNATURE_VALIDITY: Duration = Duration::from_secs(300);

/// The most bytes of a refusal's body read for its problem document.
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

/// An API key and its secret, as in `EXOSCALE_API_KEY` and `EXOSCALE_API_SECRET`. The secret
/// is wiped on drop and never shown by `Debug`.
pub struct ApiCredential {
    key: String,
    secret: Zeroizing<Vec<u8>>,
}

impl ApiCredential {
    /// The credential `key`, `secret`.
    pub fn new(key: impl Into<String>, secret: impl AsRef<[u8]>) -> ApiCredential {
        ApiCredential {
            key: key.into(),
            secret: Zeroizing::new(secret.as_ref().to_vec()),
        }
    }

    /// The API key.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The secret, for deriving a link's keys from it.
    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for ApiCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiCredential")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A zone's address, from its API URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl {
    secure: bool,
    host: String,
    port: u16,
}

impl ApiUrl {
    /// Parses `http://HOST[:PORT][/v2]` or `https://HOST[:PORT][/v2]` (a trailing `/`
    /// allowed; HOST a name, an IPv4 address or a bracketed IPv6 address; the port 80 or 443
    /// by default). Any other path, a query, a fragment or user information is refused.
    pub fn parse(url: &str) -> Result<ApiUrl, ClientError> {
        let refuse = |reason: &str| ClientError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (secure, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(refuse("it must start with http:// or https://"));
        };
        if rest.contains(['?', '#']) {
            return Err(refuse("it must have no query or fragment"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !matches!(path, "" | "/" | "/v2" | "/v2/") {
            return Err(refuse(
                "its path must be /v2 (the zone's API URL as `keylife serve` prints it)",
            ));
        }
        if authority.contains('@') {
            return Err(refuse("it must have no user information"));
        }
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| refuse("its IPv6 address has no closing `]`"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(refuse("the address in brackets is not an IPv6 address"));
            }
            match after {
                "" => (host, None),
                port => (
                    host,
                    Some(port.strip_prefix(':').ok_or_else(|| refuse("bad port"))?),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(':') && !authority.starts_with('[') {
            return Err(refuse(
                "it names no host (an IPv6 address goes in brackets)",
            ));
        }
        let port = match port {
            None => default_port,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| refuse("its port must be a number from 1 to 65535"))?,
        };
        Ok(ApiUrl {
            secure,
            host: host.to_owned(),
            port,
        })
    }

    /// Whether it is `https://`.
    #[must_use]
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// `HOST:PORT` (`[IPv6]:PORT`), as the `Host` header and messages give it.
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "https" } else { "http" };
        write!(f, "{scheme}://{}/v2", self.authority())
    }
}

/// How a [`Client`] connects and signs.
#[derive(Clone)]
pub struct ClientOptions {
    /// PEM text of the CA certificates an `https://` server's certificate must chain to:
    /// required for HTTPS, unused for HTTP.
    pub ca_pem: Option<Vec<u8>>,
    /// How long a connection and its TLS handshake may take. Default
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// How long an answer may make no progress. Default [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// How long each signature is valid. Default [`DEFAULT_SIGNATURE_VALIDITY`].
    pub signature_validity: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            ca_pem: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            signature_validity: DEFAULT_SIGNATURE_VALIDITY,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "..."))
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("signature_validity", &self.signature_validity)
            .finish()
    }
}

impl ClientOptions {
    /// The defaults, trusting the CA certificates in the PEM file `path`.
    pub fn with_ca_file(path: &Path) -> Result<ClientOptions, ClientError> {
        let pem = std::fs::read(path).map_err(|error| ClientError::CaFile {
            path: path.display().to_string(),
            detail: format!("cannot be read: {error}"),
        })?;
        Ok(ClientOptions {
            ca_pem: Some(pem),
            ..ClientOptions::default()
        })
    }
}

/// A client of one zone's address, signing with one credential.
pub struct Client {
    url: ApiUrl,
    credential: ApiCredential,
    tls: Option<TlsConnector>,
    options: ClientOptions,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url.to_string())
            .field("key", &self.credential.key)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the zone at `url` ([`ApiUrl::parse`]) signing with `credential`. An
    /// `https://` URL needs [`ClientOptions::ca_pem`], with at least one certificate.
    pub fn new(
        url: &str,
        credential: ApiCredential,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let url = ApiUrl::parse(url)?;
        let tls = if url.secure {
            let pem = options
                .ca_pem
                .as_deref()
                .ok_or_else(|| ClientError::NeedsCa {
                    url: url.to_string(),
                })?;
            Some(connector(pem)?)
        } else {
            None
        };
        Ok(Client {
            url,
            credential,
            tls,
            options,
        })
    }

    /// The zone's address.
    #[must_use]
    pub fn url(&self) -> &ApiUrl {
        &self.url
    }

    /// Sends `method path` (an absolute path, without query) with `body`, signed, on a new
    /// connection, and returns the answer once its head has arrived, whatever its status
    /// ([`Answer::success`] turns a refusal into [`ClientError::Refused`]); the body is read
    /// as it comes.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Answer, ClientError> {
        self.send_signed(method, path, "application/json", body)
            .await
            .map(|(answer, _)| answer)
    }

    /// [`Client::send`] with the body's `content_type`, returning the request's signature
    /// too (the bytes of its `signature=`): a link's answer is authenticated over it.
    pub async fn send_signed(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(Answer, Vec<u8>), ClientError> {
        if !path.starts_with('/') || path.contains(['?', '#']) {
            return Err(ClientError::Url {
                url: path.to_owned(),
                reason: "a request's path must be absolute, without query or fragment".to_owned(),
            });
        }
        let authority = self.url.authority();
        let http = |detail: String| ClientError::Http {
            addr: authority.clone(),
            detail,
        };
        let expires = unix_now().saturating_add(
            i64::try_from(self.options.signature_validity.as_secs()).unwrap_or(i64::MAX),
        );
        let authorization = auth::sign(
            &self.credential.key,
            &self.credential.secret,
            method,
            path,
            &body,
            expires,
        );
        let signature = auth::signature_of(&authorization).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::AUTHORIZATION, authorization)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| http(format!("cannot make the request: {error}")))?;
        let mut sender = self.connect().await?;
        let response =
            tokio::time::timeout(self.options.idle_timeout, sender.send_request(request))
                .await
                .map_err(|_| ClientError::Timeout {
                    addr: authority.clone(),
                    waited: self.options.idle_timeout,
                })?
                .map_err(|error| http(format!("no answer: {error}")))?;
        let (head, body) = response.into_parts();
        let answer = Answer {
            status: head.status.as_u16(),
            headers: head.headers,
            body,
            addr: authority,
            idle_timeout: self.options.idle_timeout,
        };
        Ok((answer, signature))
    }

    /// A new HTTP/1.1 connection (over TLS for `https://`), driven by a task of its own.
    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, ClientError> {
        let authority = self.url.authority();
        let timeout = self.options.connect_timeout;
        let timed_out = || ClientError::Timeout {
            addr: authority.clone(),
            waited: timeout,
        };
        let stream = tokio::time::timeout(
            timeout,
            TcpStream::connect((self.url.host.as_str(), self.url.port)),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| ClientError::Connect {
            addr: authority.clone(),
            source,
        })?;
        // Best effort: without it, only slower.
        let _ = stream.set_nodelay(true);
        let handshake_failed = |detail: String| ClientError::Http {
            addr: authority.clone(),
            detail: format!("HTTP/1.1 handshake: {detail}"),
        };
        match &self.tls {
            None => {
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|error| handshake_failed(error.to_string()))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(sender)
            }
            Some(connector) => {
                let name =
                    ServerName::try_from(self.url.host.clone()).map_err(|_| ClientError::Url {
                        url: self.url.to_string(),
                        reason: "its host is not a valid TLS server name".to_owned(),
                    })?;
                let stream = tokio::time::timeout(timeout, connector.connect(name, stream))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|error| ClientError::Tls {
                        addr: authority.clone(),
                        detail: error.to_string(),
                    })?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|error| handshake_failed(error.to_string()))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(sender)
            }
        }
    }
}

/// A TLS connector trusting the certificates of `pem` only, with ring (as the server) and
/// ALPN `http/1.1`.
fn connector(pem: &[u8]) -> Result<TlsConnector, ClientError> {
    let failed = |detail: String| ClientError::CaFile {
        path: "the CA certificates".to_owned(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem) {
        let certificate = certificate.map_err(|error| failed(format!("malformed PEM: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| failed(format!("an unusable certificate: {error}")))?;
    }
    if roots.is_empty() {
        return Err(failed(
            "no certificate (expected PEM `BEGIN CERTIFICATE` sections)".to_owned(),
        ));
    }
    // ring, as the server (see tls.rs for why).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| failed(format!("TLS configuration: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// An answer: its status and headers, and its body to read as it comes.
pub struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Incoming,
    addr: String,
    idle_timeout: Duration,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Answer {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers.
    #[must_use]
    pub fn headers(&self) -> &hyper::HeaderMap {
        &self.headers
    }

    /// This answer if its status is 2xx; else [`ClientError::Refused`] with the status and
    /// what its problem document says (its first 64 KiB read).
    pub async fn success(self) -> Result<Answer, ClientError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let status = self.status;
        let addr = self.addr.clone();
        let body = self.bytes(MAX_PROBLEM_BYTES).await.unwrap_or_default();
        let document: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let text = |name: &str| {
            document
                .as_ref()
                .and_then(|document| document.get(name))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let detail = text("detail").unwrap_or_else(|| {
            String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(512)
                .collect()
        });
        Err(ClientError::Refused {
            addr,
            status,
            code: text("code"),
            detail,
        })
    }

    /// The next piece of the body, `None` at its end. A body cut short (the connection closed
    /// before its end) is [`ClientError::Truncated`].
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            let frame = tokio::time::timeout(self.idle_timeout, self.body.frame())
                .await
                .map_err(|_| ClientError::Timeout {
                    addr: self.addr.clone(),
                    waited: self.idle_timeout,
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(error)) => {
                    return Err(ClientError::Truncated {
                        addr: self.addr.clone(),
                        detail: error.to_string(),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Writes the whole body to `out` as it comes (blocking writes: a file, a pipe); returns
    /// the bytes written.
    pub async fn copy_to(mut self, out: &mut dyn Write) -> Result<u64, ClientError> {
        let mut written = 0u64;
        while let Some(data) = self.chunk().await? {
            out.write_all(&data)
                .map_err(|source| ClientError::Write { source })?;
            written += data.len() as u64;
        }
        out.flush()
            .map_err(|source| ClientError::Write { source })?;
        Ok(written)
    }

    /// The whole body, refused past `limit` bytes ([`ClientError::TooLarge`]).
    pub async fn bytes(mut self, limit: usize) -> Result<Vec<u8>, ClientError> {
        let mut bytes = Vec::new();
        while let Some(data) = self.chunk().await? {
            if bytes.len() + data.len() > limit {
                return Err(ClientError::TooLarge {
                    addr: self.addr.clone(),
                    limit,
                });
            }
            bytes.extend_from_slice(&data);
        }
        Ok(bytes)
    }
}

/// Why a request failed. No message carries a secret or a signature.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL (or a request's path) is not one the client can use.
    #[error("{url} is not a keylife API URL: {reason}")]
    Url {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `https://` URL without CA certificates to trust.
    #[error(
        "{url} is HTTPS: give the CA certificate its server's certificate chains to (--ca-file \
         PEM); keylife trusts no platform root store"
    )]
    NeedsCa {
        /// The URL.
        url: String,
    },
    /// The CA certificates could not be read or used.
    #[error("{path}: {detail}")]
    CaFile {
        /// The file (or "the CA certificates" for PEM given directly).
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// No TCP connection could be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `HOST:PORT`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (the certificate does not chain to the CA given, names
    /// another host, ...).
    #[error("TLS with {addr} failed: {detail}")]
    Tls {
        /// `HOST:PORT`.
        addr: String,
        /// Why.
        detail: String,
    },
    /// The HTTP exchange failed before an answer's head arrived.
    #[error("the request to {addr} failed: {detail}")]
    Http {
        /// `HOST:PORT`.
        addr: String,
        /// Why.
        detail: String,
    },
    /// The connection, or the answer, made no progress for `waited`.
    #[error("{addr} made no progress for {} s", waited.as_secs())]
    Timeout {
        /// `HOST:PORT`.
        addr: String,
        /// How long.
        waited: Duration,
    },
    /// The server answered with a status other than 2xx.
    #[error(
        "{addr} refused the request: HTTP {status}: {detail}{}",
        code.as_deref().map(|code| format!(" [{code}]")).unwrap_or_default()
    )]
    Refused {
        /// `HOST:PORT`.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The problem document's `code`, if the body was one.
        code: Option<String>,
        /// Its `detail`, else the start of the body.
        detail: String,
    },
    /// The answer's body ended before its end: the connection was cut (the server aborts a
    /// backup that fails midway this way).
    #[error("the answer from {addr} was cut short: {detail}")]
    Truncated {
        /// `HOST:PORT`.
        addr: String,
        /// What the HTTP layer said.
        detail: String,
    },
    /// The answer's body was larger than the caller's limit.
    #[error("the answer from {addr} is larger than {limit} bytes")]
    TooLarge {
        /// `HOST:PORT`.
        addr: String,
        /// The limit.
        limit: usize,
    },
    /// Writing the body out failed.
    #[error("cannot write the answer: {source}")]
    Write {
        /// Why.
        source: std::io::Error,
    },
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_as_keylife_serve_prints_them() {
        let parsed = |url: &str| ApiUrl::parse(url).map(|url| (url.secure, url.authority()));
        assert_eq!(
            parsed("http://127.0.0.1:8080/v2").unwrap(),
            (false, "127.0.0.1:8080".to_owned())
        );
        assert_eq!(
            parsed("https://kms.example.com/v2/").unwrap(),
            (true, "kms.example.com:443".to_owned())
        );
        assert_eq!(
            parsed("http://[::1]:9000").unwrap(),
            (false, "[::1]:9000".to_owned())
        );
        assert_eq!(
            parsed("http://localhost/").unwrap(),
            (false, "localhost:80".to_owned())
        );
        for bad in [
            "127.0.0.1:8080/v2",
            "ftp://host/v2",
            "http:///v2",
            "http://host:0/v2",
            "http://host:99999/v2",
            "http://host:x/v2",
            "http://host/v1",
            "http://host/v2/kms-key",
            "http://host/v2?x=1",
            "http://user@host/v2",
            "http://::1/v2",
            "http://[::1/v2",
            "http://[nope]/v2",
        ] {
            let error = ApiUrl::parse(bad).unwrap_err();
            assert!(
                matches!(&error, ClientError::Url { url, .. } if url == bad),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn https_needs_a_ca_and_the_secret_never_shows() {
        let credential = ApiCredential::new("EXOkey", "s3cr3t-value");
        assert!(!format!("{credential:?}").contains("s3cr3t"));
        let error = Client::new(
            "https://127.0.0.1:1/v2",
            credential,
            ClientOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(error, ClientError::NeedsCa { .. }), "{error}");
        let not_pem = ClientOptions {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..ClientOptions::default()
        };
        let error = Client::new(
            "https://127.0.0.1:1/v2",
            ApiCredential::new("EXOkey", "x"),
            not_pem,
        )
        .unwrap_err();
        assert!(matches!(error, ClientError::CaFile { .. }), "{error}");
        let client = Client::new(
            "http://127.0.0.1:1/v2",
            ApiCredential::new("EXOkey", "s3cr3t-value"),
            ClientOptions::default(),
        )
        .unwrap();
        assert!(!format!("{client:?}").contains("s3cr3t"));
    }
}
