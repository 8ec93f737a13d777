//! `POST /keylife/v1/backup`: a backup of the zone ([`Kms::backup`](crate::Kms::backup)),
//! streamed as `application/octet-stream`, for credentials with the `admin` grant.
//!
//! The backup runs on the blocking pool and writes into a [`ChannelWriter`], whose chunks of
//! [`CHUNK_BYTES`] go through a channel of [`CHUNKS_QUEUED`] to the answer's body: the file is
//! never one answer in memory, and a client that reads slowly stops the writer (the image was
//! taken before the first byte, so the zone's writes do not wait for it). The answer's bytes in
//! flight take their share of the body budget like any large answer; the image itself (the
//! library's copy of the entries) is bounded by allowing one backup of a zone at a time.
//!
//! An error before the first byte (refused, the store failing) is a problem document like any
//! other; an error after it aborts the body, so the client sees a connection cut before the
//! end of the chunked answer (and a file cut short fails its MAC anyway).

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hyper::body::{Bytes, Frame};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::extract::{FREE_SHARE_BYTES, Signed, Zone, ok_no_store, take_share};
use super::problem::Problem;
use crate::Error;

/// The size of each chunk of a backup's answer.
const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks queued between the backup's writer and the answer: with the one being filled and the
/// one hyper is sending, at most `CHUNKS_QUEUED + 2` chunks of an answer are in memory.
const CHUNKS_QUEUED: usize = 4;

/// The bytes of an answer in flight at most (see [`CHUNKS_QUEUED`]): their share beyond the
/// free 64 KiB is taken from the body budget before the backup starts.
const IN_FLIGHT_BYTES: usize = (CHUNKS_QUEUED + 2) * CHUNK_BYTES;

/// What the backup's thread sends to the answer.
enum Piece {
    /// The next bytes of the file.
    Chunk(Bytes),
    /// The backup is complete: every byte was sent.
    Done,
    /// The backup failed.
    Failed(Error),
}

/// The handler: one backup of the zone at a time (another is answered 503 at once), its
/// bytes in flight within the body budget; the answer starts when the file's first chunk is
/// written (the image is taken by then), or is the problem of a backup that failed before.
pub(crate) async fn backup(State(zone): State<Arc<Zone>>, call: Signed) -> Response {
    match start(&zone, call).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn start(zone: &Arc<Zone>, call: Signed) -> Result<Response, Problem> {
    call.no_fields()?;
    let Ok(running) = Arc::clone(&zone.backups).try_acquire_owned() else {
        return Err(Problem::backup_running(zone.kms.zone()));
    };
    let mut share = None;
    take_share(
        &mut share,
        IN_FLIGHT_BYTES,
        &zone.body_budget,
        zone.budget_timeout,
    )
    .await?;
    let (sender, mut receiver) = mpsc::channel(CHUNKS_QUEUED);
    let kms = call.kms;
    // Not awaited: the task ends when the backup is written or its answer is dropped (the
    // writer's sends fail then).
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            sender: sender.clone(),
            chunk: Vec::with_capacity(CHUNK_BYTES),
        };
        let piece = match kms.backup(&mut writer).and_then(|_| {
            writer.send_chunk().map_err(|error| Error::Storage {
                detail: format!("cannot write the backup: {error}"),
            })
        }) {
            Ok(()) => Piece::Done,
            Err(error) => Piece::Failed(error),
        };
        let _ = sender.blocking_send(piece);
    });
    let first = match receiver.recv().await {
        Some(Piece::Chunk(bytes)) => Some(bytes),
        Some(Piece::Done) => None,
        Some(Piece::Failed(error)) => return Err(Problem::from(error)),
        None => return Err(Problem::internal("the backup failed unexpectedly")),
    };
    let body = Streamed {
        first,
        receiver,
        ended: false,
        _share: share,
        _running: running,
    };
    Ok(ok_no_store(
        axum::body::Body::new(body),
        "application/octet-stream",
    ))
}

/// A `Write` that cuts what it is given into chunks of [`CHUNK_BYTES`] and sends each to the
/// answer, waiting while the channel is full (the client reads slowly). A send fails once the
/// answer is dropped (the client went away): the backup stops with that error.
struct ChannelWriter {
    sender: mpsc::Sender<Piece>,
    chunk: Vec<u8>,
}

impl ChannelWriter {
    /// Sends the chunk being filled, if it holds anything.
    fn send_chunk(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES));
        self.sender
            .blocking_send(Piece::Chunk(Bytes::from(chunk)))
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the client is gone: its answer was dropped",
                )
            })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.chunk.len();
        let taken = bytes.len().min(room);
        self.chunk.extend_from_slice(&bytes[..taken]);
        if self.chunk.len() == CHUNK_BYTES {
            self.send_chunk()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_chunk()
    }
}

/// The answer's body: the first chunk, then what the channel brings; an error (the backup
/// failed midway, or its thread ended without saying it was done) aborts the body. It holds
/// the answer's share of the budget and the zone's backup slot until sent or dropped.
struct Streamed {
    first: Option<Bytes>,
    receiver: mpsc::Receiver<Piece>,
    ended: bool,
    _share: Option<OwnedSemaphorePermit>,
    _running: OwnedSemaphorePermit,
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let piece = std::task::ready!(self.receiver.poll_recv(context));
        match piece {
            Some(Piece::Chunk(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some(Piece::Done) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Some(Piece::Failed(error)) => {
                self.ended = true;
                Poll::Ready(Some(Err(std::io::Error::other(format!(
                    "the backup failed after its first bytes were sent: {error}"
                )))))
            }
            None => {
                self.ended = true;
                Poll::Ready(Some(Err(std::io::Error::other(
                    "the backup ended unexpectedly after its first bytes were sent",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.first.is_none()
    }
}

// The free share is what one connection's answer may hold without budget.
const _: () = assert!(IN_FLIGHT_BYTES > FREE_SHARE_BYTES);

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tokio::sync::Semaphore;

    use super::*;

    fn streamed() -> (mpsc::Sender<Piece>, Streamed) {
        let (sender, receiver) = mpsc::channel(CHUNKS_QUEUED);
        let running = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let body = Streamed {
            first: Some(Bytes::from_static(b"KLBACKUP")),
            receiver,
            ended: false,
            _share: None,
            _running: running,
        };
        (sender, body)
    }

    async fn data(body: &mut Streamed) -> Option<Result<Bytes, std::io::Error>> {
        Some(body.frame().await?.map(|frame| frame.into_data().unwrap()))
    }

    #[tokio::test]
    async fn a_backup_ends_cleanly_only_when_its_thread_says_it_is_done() {
        let (sender, mut body) = streamed();
        sender
            .send(Piece::Chunk(Bytes::from_static(b"rest")))
            .await
            .unwrap();
        sender.send(Piece::Done).await.unwrap();
        assert_eq!(&data(&mut body).await.unwrap().unwrap()[..], b"KLBACKUP");
        assert_eq!(&data(&mut body).await.unwrap().unwrap()[..], b"rest");
        assert!(data(&mut body).await.is_none());
        assert!(hyper::body::Body::is_end_stream(&body));

        // A failure after the first bytes, or a thread gone without a word: the body ends in
        // an error (hyper then cuts the connection before the chunked answer's end).
        let (sender, mut body) = streamed();
        sender
            .send(Piece::Failed(Error::Storage {
                detail: "disk gone".to_owned(),
            }))
            .await
            .unwrap();
        data(&mut body).await.unwrap().unwrap();
        let error = data(&mut body).await.unwrap().unwrap_err();
        assert!(error.to_string().contains("disk gone"), "{error}");
        assert!(data(&mut body).await.is_none());
        let (sender, mut body) = streamed();
        drop(sender);
        data(&mut body).await.unwrap().unwrap();
        assert!(data(&mut body).await.unwrap().is_err());
    }

    /// What hyper makes of a body that fails after its first bytes: the connection is cut
    /// before the chunked answer's last (empty) chunk, so no client takes it for complete.
    #[tokio::test]
    async fn hyper_cuts_the_answer_of_a_backup_that_fails_midway() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_request| async {
                let (sender, body) = streamed();
                tokio::spawn(async move {
                    let more = Piece::Chunk(Bytes::from_static(b"more"));
                    sender.send(more).await.unwrap();
                    // Most often after hyper has sent what came before (not needed to pass).
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    let failed = Piece::Failed(Error::Storage {
                        detail: "disk gone".to_owned(),
                    });
                    let _ = sender.send(failed).await;
                });
                Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .write_all(
                    b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                )
                .unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            String::from_utf8_lossy(&answer).into_owned()
        })
        .await
        .unwrap();
        server.await.unwrap();
        // Whatever was sent (hyper may have sent nothing yet), the answer is not complete.
        if !answer.is_empty() {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.contains("transfer-encoding: chunked"), "{answer}");
        }
        assert!(!answer.ends_with("0\r\n\r\n"), "{answer:?}");
    }

    #[test]
    fn the_writer_sends_whole_chunks_and_fails_once_the_answer_is_gone() {
        let (sender, mut receiver) = mpsc::channel(CHUNKS_QUEUED);
        let mut writer = ChannelWriter {
            sender,
            chunk: Vec::new(),
        };
        writer.write_all(&vec![7; CHUNK_BYTES + 10]).unwrap();
        writer.flush().unwrap();
        let sizes: Vec<usize> = std::iter::from_fn(|| match receiver.try_recv() {
            Ok(Piece::Chunk(bytes)) => Some(bytes.len()),
            _ => None,
        })
        .collect();
        assert_eq!(sizes, [CHUNK_BYTES, 10]);
        drop(receiver);
        writer.write_all(&[1]).unwrap();
        let error = writer.flush().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
