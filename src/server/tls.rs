//! HTTPS: the server's certificate and private key ([`Tls`]), and the IO wrapper that drops a
//! connection whose writes make no progress ([`WriteDeadline`]).
//!
//! TLS is rustls with its `ring` provider (no C toolchain beyond what `ring` needs, no cmake),
//! TLS 1.2 and 1.3 with rustls's safe defaults, HTTP/1.1 only (ALPN `http/1.1`).

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use zeroize::{Zeroize as _, Zeroizing};

/// A server's TLS configuration. With one in [`ServeOptions::tls`](super::ServeOptions::tls),
/// every zone serves HTTPS.
///
/// Built from PEM ([`Tls::from_pem_files`], [`Tls::from_pem`]): the certificate chain (the
/// server's certificate first) and its private key (PKCS#8, PKCS#1 or SEC1). The private
/// key's DER and the PEM text read are wiped once loaded; the key pair rustls keeps (ring's)
/// is not wiped when dropped. `Debug` shows no key.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ServerConfig>,
}

/// Why a [`Tls`] could not be built. The message names the file (or "the TLS certificate",
/// "the TLS key" for bytes given directly) and never contains key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The ALPN protocols offered: HTTP/1.1 only (the server speaks no HTTP/2).
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

impl Tls {
    /// Reads the PEM certificate chain in `cert` and the PEM private key in `key`. An error
    /// names the file that is missing, unreadable or malformed, or says that the key does not
    /// belong to the certificate.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Tls, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let cert_name = format!("the TLS certificate file {}", cert.display());
        let key_name = format!("the TLS key file {}", key.display());
        let read = |path: &Path, name: &str| {
            std::fs::read(path)
                .map(Zeroizing::new)
                .map_err(|error| TlsError(format!("cannot read {name}: {error}")))
        };
        let cert_pem = read(cert, &cert_name)?;
        let key_pem = read(key, &key_name)?;
        Tls::build(&cert_pem, &key_pem, &cert_name, &key_name)
    }

    /// As [`Tls::from_pem_files`], from the PEM text of the chain and of the key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Tls, TlsError> {
        Tls::build(cert_pem, key_pem, "the TLS certificate", "the TLS key")
    }

    /// A configuration made elsewhere, used as it is (set its `alpn_protocols` to
    /// `http/1.1`: the server speaks HTTP/1.1 only).
    #[must_use]
    pub fn from_config(config: Arc<ServerConfig>) -> Tls {
        Tls { config }
    }

    /// The rustls configuration.
    #[must_use]
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    fn build(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_name: &str,
        key_name: &str,
    ) -> Result<Tls, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError(format!("{cert_name}: {}", pem_problem(&error))))?;
        if chain.is_empty() {
            return Err(TlsError(format!(
                "{cert_name} holds no certificate (expected PEM `BEGIN CERTIFICATE` sections)"
            )));
        }
        let mut key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| match error {
            pem::Error::NoItemsFound => TlsError(format!(
                "{key_name} holds no private key (expected a PEM `PRIVATE KEY`, \
                 `RSA PRIVATE KEY` or `EC PRIVATE KEY` section)"
            )),
            other => TlsError(format!("{key_name}: {}", pem_problem(&other))),
        })?;
        // rustls takes the key by reference here, so the DER is ours to wipe afterwards.
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key);
        key.zeroize();
        let signing_key = signing_key
            .map_err(|error| TlsError(format!("{key_name}: unusable private key: {error}")))?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified.keys_match().map_err(|error| {
            TlsError(format!(
                "{key_name} does not hold the private key of {cert_name}: {error}"
            ))
        })?;
        // ring (choice: no C build beyond ring's own, where aws-lc-rs needs a larger one).
        // rustls deprecates it for lacking post-quantum key exchange (X25519MLKEM768): the
        // key exchange is classical (X25519, P-256, P-384).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError(format!("TLS configuration: {error}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        Ok(Tls {
            config: Arc::new(config),
        })
    }
}

/// What is wrong with a PEM text, without quoting any of it (it may be a key).
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { .. } => "malformed PEM: a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM: a bad BEGIN line".into(),
        pem::Error::Base64Decode(_) => "malformed PEM: a section is not valid base64".into(),
        pem::Error::Io(error) => format!("cannot be read: {error}"),
        pem::Error::NoItemsFound => "no PEM section of the expected kind".into(),
        _ => "malformed PEM".into(),
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpn: Vec<String> = self
            .config
            .alpn_protocols
            .iter()
            .map(|protocol| String::from_utf8_lossy(protocol).into_owned())
            .collect();
        f.debug_struct("Tls")
            .field("alpn", &alpn)
            .finish_non_exhaustive()
    }
}

/// An IO stream whose writes fail with [`io::ErrorKind::TimedOut`] once one has made no
/// progress for `timeout`: a client that stops reading its answers cannot hold the
/// connection (and the answer's memory) for longer. hyper has no write timeout of its own.
/// Reads are passed through (hyper's header timeout and the body timeout bound them).
pub(crate) struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    /// Armed at the first write that could make no progress, disarmed by any progress.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub(crate) fn new(inner: T, timeout: Duration) -> WriteDeadline<T> {
        WriteDeadline {
            inner,
            timeout,
            timer: None,
        }
    }

    /// Passes a finished write through (disarming the timer); for one that must wait, arms
    /// the timer if it is not armed, and fails the write when it has expired.
    fn guard<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.timer = None;
            return poll;
        }
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing of its answer for {} s",
                    timeout.as_secs_f64()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_refused_with_a_message_that_quotes_none_of_it() {
        let secret_looking =
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBieXRlcw!!\n-----END PRIVATE KEY-----\n";
        let error = Tls::from_pem(b"", secret_looking).unwrap_err().to_string();
        assert!(
            error.contains("the TLS certificate holds no certificate"),
            "{error}"
        );
        let error = Tls::from_pem(b"not pem at all", b"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no certificate"), "{error}");
        let missing = Tls::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read the TLS certificate file /nonexistent/cert.pem"),
            "{missing}"
        );
    }
}
