//! The media repository: uploads (the body streamed in chunks, so that progress can be
//! reported as it goes out) and downloads (bounded, through the authenticated endpoint of
//! Matrix 1.11, or the older one for servers without it).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use ruma::api::client::authenticated_media::get_content as authenticated;
use ruma::api::client::media::{create_content, get_content};
use ruma::{MxcUri, OwnedMxcUri};
use serde_json::Value;

use super::{ERROR_BODY_BYTES, HttpClient, HttpError, Outgoing, read_body};

/// Called with `(bytes sent, total bytes)` as an upload goes out.
pub type UploadProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Bytes handed to the connection at a time (and between two progress reports).
const CHUNK: usize = 64 * 1024;

/// Time allowed for an upload: a minute, plus a second per 32 KiB (a slow mobile link).
fn upload_timeout(len: usize) -> Duration {
    Duration::from_secs(60 + (len / (32 * 1024)) as u64)
}

impl HttpClient {
    /// Upload `data` to the media repository; returns its `mxc://` URI.
    pub async fn upload(
        &self,
        data: Bytes,
        content_type: &str,
        progress: UploadProgress,
    ) -> Result<OwnedMxcUri, HttpError> {
        let mut request = create_content::v3::Request::new(Vec::new());
        request.content_type = Some(content_type.to_owned());
        let outgoing = Outgoing {
            timeout: Some(upload_timeout(data.len())),
            body: Some(reqwest::Body::wrap(ProgressBody {
                data,
                sent: 0,
                progress,
            })),
        };
        let response = self.start_with(request, outgoing).await?;
        let answer = read_body(response, ERROR_BODY_BYTES).await?;
        let uri = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v.get("content_uri")?.as_str().map(OwnedMxcUri::from))
            .filter(|uri| uri.is_valid());
        uri.ok_or_else(|| HttpError::Response("no valid content_uri in the answer".into()))
    }

    /// Download the media at `uri`, refused if larger than `limit` bytes.
    pub async fn download(&self, uri: &MxcUri, limit: usize) -> Result<Bytes, HttpError> {
        let request = authenticated::v1::Request::from_uri(uri)
            .map_err(|e| HttpError::Request(format!("media URI: {e}")))?;
        match self.send_raw(request, limit).await {
            // A server from before Matrix 1.11.
            Err(HttpError::Server {
                status: 404,
                ref errcode,
                ..
            }) if errcode == "M_UNRECOGNIZED" => {
                #[allow(deprecated)]
                let request = get_content::v3::Request::from_url(uri)
                    .map_err(|e| HttpError::Request(format!("media URI: {e}")))?;
                self.send_raw(request, limit).await
            }
            other => other,
        }
    }
}

/// An upload's body: `data` in chunks of [`CHUNK`], reporting progress as each is taken.
struct ProgressBody {
    data: Bytes,
    sent: usize,
    progress: UploadProgress,
}

impl http_body::Body for ProgressBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let total = self.data.len();
        if self.sent >= total {
            return Poll::Ready(None);
        }
        let end = (self.sent + CHUNK).min(total);
        let chunk = self.data.slice(self.sent..end);
        self.sent = end;
        (self.progress)(end as u64, total as u64);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http_body::Body;

    use super::*;

    #[test]
    fn a_body_goes_out_in_chunks_reporting_progress() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let data = Bytes::from(vec![7u8; CHUNK * 2 + 10]);
        let mut body = ProgressBody {
            data: data.clone(),
            sent: 0,
            progress: Arc::new(move |sent, total| s.lock().unwrap().push((sent, total))),
        };
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
            out.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert!(body.is_end_stream());
        assert_eq!(out, data);
        let total = data.len() as u64;
        let expected = [
            (CHUNK as u64, total),
            (2 * CHUNK as u64, total),
            (total, total),
        ];
        assert_eq!(*seen.lock().unwrap(), expected);
    }
}
