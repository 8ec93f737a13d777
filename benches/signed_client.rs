//! The signed keep-alive client of the HTTP benches (`http_load`, `replication_link`): one
//! connection, over TLS or not, signing every request with the benches' credential.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use keylife::server::auth::sign;
use tokio_rustls::rustls;

/// The API key the benches' servers accept.
pub const KEY: &str = "EXObench";
/// Its secret.
pub const SECRET: &str = "bench-secret";

/// One keep-alive connection that signs its requests.
pub struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Client {
    /// A keep-alive connection to `address`, over one TLS session with `tls`.
    pub async fn connect(address: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> Client {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let sender = match tls {
            None => {
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("handshake");
                tokio::spawn(connection);
                sender
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, stream)
                    .await
                    .expect("TLS handshake");
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("handshake");
                tokio::spawn(connection);
                sender
            }
        };
        Client {
            sender,
            host: address.to_string(),
        }
    }

    pub async fn call(&mut self, method: &str, path: &str, body: Vec<u8>) -> (u16, Bytes) {
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64
            + 600;
        let authorization = sign(KEY, SECRET.as_bytes(), method, path, &body, expires);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("authorization", authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(request).await.expect("send");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    }
}
