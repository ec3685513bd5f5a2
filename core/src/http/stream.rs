//! An answer's body as a `std::io::Read` on a blocking thread, fed chunk by chunk by the
//! task that receives it, with a limit on the bytes read.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

use super::HttpError;

type Chunk = Result<Bytes, io::Error>;

/// The most bytes passed to the reader at once.
const SLICE: usize = 16 * 1024;

/// The longest wait for the next chunk of an answer before it counts as a network failure
/// (unless the client was made with another).
pub(crate) const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// The reading end: blocks until the next chunk arrives (use on a blocking thread only).
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
}

impl ChannelReader {
    pub(super) fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Pass the body of `response` to `tx`, chunk by chunk, up to `limit` bytes. A body larger
/// than that, or a broken connection, ends the stream with an error for the reader too.
pub(super) async fn feed(
    response: &mut reqwest::Response,
    tx: &mpsc::Sender<Chunk>,
    limit: usize,
    stall: std::time::Duration,
) -> Result<(), HttpError> {
    let mut total = 0usize;
    loop {
        let next = tokio::time::timeout(stall, response.chunk()).await;
        let chunk = match next {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return fail(tx, HttpError::Network(e.without_url().to_string())).await,
            Err(_) => {
                let stalled = format!("the answer stalled for {} ms", stall.as_millis());
                return fail(tx, HttpError::Network(stalled)).await;
            }
        };
        total = total.saturating_add(chunk.len());
        if total > limit {
            let _ = tx.send(Err(io::Error::other("answer too large"))).await;
            return Err(HttpError::TooLarge { limit });
        }
        // Passed on in small copies: the channel holds 16 of them, not 16 of the
        // connection's chunks (which grow to hundreds of KiB when the reader is slower
        // than the network), and none keeps a whole chunk alive.
        for slice in chunk.chunks(SLICE) {
            if tx.send(Ok(Bytes::copy_from_slice(slice))).await.is_err() {
                // The reader stopped (it had what it needed, or failed): nothing more to do.
                return Ok(());
            }
        }
    }
}

/// End the stream with `error`, for the reader too.
async fn fail(tx: &mpsc::Sender<Chunk>, error: HttpError) -> Result<(), HttpError> {
    let _ = tx.send(Err(io::Error::other(error.to_string()))).await;
    Err(error)
}
