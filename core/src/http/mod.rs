//! The connection to the homeserver: reqwest (rustls) carrying ruma's typed requests.
//!
//! Answers are read with a size limit ([`MAX_BODY_BYTES`]): a server cannot make us hold an
//! arbitrarily large body in memory.

mod media;
mod retry;
mod stream;

pub use media::UploadProgress;
pub(crate) use retry::with_retry;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::path_builder::PathBuilder;
use ruma::api::{IncomingResponseExt, OutgoingRequestExt};
use ruma::api::{OutgoingRequest, SupportedVersions};
use serde_json::Value;
use tracing::{debug, warn};
use zeroize::Zeroizing;

/// Failures talking to the homeserver.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The server could not be reached or the connection broke.
    #[error("network error: {0}")]
    Network(String),
    /// The server answered with an error.
    #[error("server error {status} {errcode}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Matrix `errcode`, e.g. `M_FORBIDDEN` (`M_UNKNOWN` if absent).
        errcode: String,
        /// Matrix `error` text.
        message: String,
        /// `retry_after_ms` of a rate-limit answer.
        retry_after_ms: Option<u64>,
    },
    /// The server requires user-interactive authentication for this request.
    #[error("the server asks for authentication")]
    AuthRequired {
        /// UIA session id to continue with.
        session: Option<String>,
        /// Stage types of the offered flows, e.g. `m.login.password`.
        flows: Vec<String>,
    },
    /// The request could not be built.
    #[error("could not build the request: {0}")]
    Request(String),
    /// The answer could not be parsed. The server accepted the request (2xx).
    #[error("could not parse the server's answer: {0}")]
    Response(String),
    /// The answer is larger than we accept; it was not read.
    #[error("the server's answer is larger than {limit} bytes")]
    TooLarge {
        /// the limit, in bytes
        limit: usize,
    },
}

/// Largest answer body read, in bytes (a `/sync` of a large account fits; a phone's memory
/// is not at the server's mercy).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Largest error body read (`errcode`, `error`, `retry_after_ms`, UIA flows).
const ERROR_BODY_BYTES: usize = 64 * 1024;
/// The time an exchange may take, unless the request says otherwise.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl HttpError {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            HttpError::Network(_) => true,
            HttpError::Server { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether the server refused the request for good: a 4xx other than 429 (rate limit)
    /// and 401 (a token that expired or was logged out: the request is fine, the session is
    /// not), a request that cannot be built, or an answer that is not usable. Network
    /// failures, 5xx and those two 4xx may go away.
    pub fn is_permanent(&self) -> bool {
        match self {
            HttpError::Network(_) => false,
            HttpError::Server { status, .. } => {
                (400..500).contains(status) && *status != 429 && *status != 401
            }
            HttpError::AuthRequired { .. }
            | HttpError::Request(_)
            | HttpError::Response(_)
            | HttpError::TooLarge { .. } => true,
        }
    }

    /// The Matrix error code, if the server gave one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            HttpError::Server { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
}

/// One homeserver connection. The access token never appears in `Debug` or logs.
pub struct HttpClient {
    inner: reqwest::Client,
    homeserver: String,
    access_token: RwLock<Option<Zeroizing<String>>>,
    versions: SupportedVersions,
    /// The longest wait for the next chunk of a streamed answer.
    stall: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("homeserver", &self.homeserver)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for `homeserver` (e.g. `http://127.0.0.1:8008`).
    pub fn new(homeserver: &str) -> Result<Self, HttpError> {
        Self::with_times(homeserver, REQUEST_TIMEOUT, stream::STALL)
    }

    /// [`HttpClient::new`] allowing each exchange `timeout` and a streamed answer `stall`
    /// between chunks.
    fn with_times(homeserver: &str, timeout: Duration, stall: Duration) -> Result<Self, HttpError> {
        Self::check_homeserver(homeserver)?;
        let inner = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let versions: Vec<String> = (1..=11).map(|minor| format!("v1.{minor}")).collect();
        Ok(Self {
            inner,
            homeserver: homeserver.trim_end_matches('/').to_owned(),
            access_token: RwLock::new(None),
            versions: SupportedVersions::from_parts(&versions, &BTreeMap::new()),
            stall,
        })
    }

    /// Refuse what [`HttpClient::new`] would refuse as a homeserver address, without
    /// building a client (which loads the platform's TLS set-up).
    pub fn check_homeserver(homeserver: &str) -> Result<(), HttpError> {
        let url = reqwest::Url::parse(homeserver)
            .map_err(|e| HttpError::Request(format!("homeserver URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::Request(
                "homeserver URL must be http or https".into(),
            ));
        }
        Ok(())
    }

    /// The homeserver base URL.
    pub fn homeserver(&self) -> &str {
        &self.homeserver
    }

    /// Use this access token from now on.
    pub fn set_access_token(&self, token: Option<Zeroizing<String>>) {
        *self.access_token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// Send a ruma request and parse its answer.
    pub async fn send<R>(&self, request: R) -> Result<R::IncomingResponse, HttpError>
    where
        R: OutgoingRequest,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = Cow<'a, SupportedVersions>>,
    {
        let (status, bytes) = self.send_raw_inner(request, MAX_BODY_BYTES).await?;
        let http_response = http::Response::builder()
            .status(status)
            .body(bytes.as_ref())
            .map_err(|e| HttpError::Response(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(http_response)
            .map_err(|e| HttpError::Response(e.to_string()))
    }

    /// Send a ruma request and return the body of a successful (2xx) answer as it is, read
    /// up to `limit` bytes, for the caller to parse leniently.
    pub async fn send_raw<R>(&self, request: R, limit: usize) -> Result<Bytes, HttpError>
    where
        R: OutgoingRequest,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = Cow<'a, SupportedVersions>>,
    {
        Ok(self.send_raw_inner(request, limit).await?.1)
    }

    /// Send a ruma request and hand the body of a successful answer to `read`, as a stream
    /// (on a blocking worker thread, while the body arrives): the body is never held whole.
    /// At most `limit` bytes are read. `timeout` replaces the client's time for the whole
    /// exchange (a large answer read as fast as `read` takes it); a body that stops coming
    /// for a minute fails whatever the timeout.
    pub async fn send_streaming<R, T>(
        &self,
        request: R,
        limit: usize,
        timeout: Option<Duration>,
        read: impl FnOnce(&mut dyn std::io::Read) -> T + Send + 'static,
    ) -> Result<T, HttpError>
    where
        R: OutgoingRequest,
        T: Send + 'static,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = Cow<'a, SupportedVersions>>,
    {
        let outgoing = Outgoing {
            timeout,
            ..Outgoing::default()
        };
        let mut response = self.start_with(request, outgoing).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let reader = tokio::task::spawn_blocking(move || read(&mut stream::ChannelReader::new(rx)));
        let fed = stream::feed(&mut response, &tx, limit, self.stall).await;
        drop(tx);
        let parsed = reader
            .await
            .map_err(|e| HttpError::Response(format!("reading the answer: {e}")))?;
        fed.map(|()| parsed)
    }

    /// Send the request; an error status becomes the typed error.
    async fn start<R>(&self, request: R) -> Result<reqwest::Response, HttpError>
    where
        R: OutgoingRequest,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = Cow<'a, SupportedVersions>>,
    {
        self.start_with(request, Outgoing::default()).await
    }

    /// [`HttpClient::start`] with the body replaced (an upload's streamed body) and the
    /// time allowed for the whole exchange changed.
    async fn start_with<R>(
        &self,
        request: R,
        outgoing: Outgoing,
    ) -> Result<reqwest::Response, HttpError>
    where
        R: OutgoingRequest,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = Cow<'a, SupportedVersions>>,
    {
        let token = self
            .access_token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let send_token = match &token {
            Some(t) => SendAccessToken::IfRequired(t.as_str()),
            None => SendAccessToken::None,
        };
        let http_request: http::Request<Vec<u8>> = request
            .try_into_http_request(&self.homeserver, send_token, Cow::Borrowed(&self.versions))
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let (parts, body) = http_request.into_parts();
        let path = parts.uri.path().to_owned();
        let mut builder = self
            .inner
            .request(parts.method.clone(), parts.uri.to_string());
        for (name, value) in parts.headers.iter() {
            builder = builder.header(name, value);
        }
        debug!(method = %parts.method, path = %redact_path(&path), "request");
        if let Some(timeout) = outgoing.timeout {
            builder = builder.timeout(timeout);
        }
        let body = outgoing.body.unwrap_or_else(|| body.into());
        let response = builder
            .body(body)
            .send()
            .await
            .map_err(|e| HttpError::Network(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        if status >= 400 {
            // An error body is only ever a small JSON object; a larger one is not read.
            let bytes = read_body(response, ERROR_BODY_BYTES)
                .await
                .unwrap_or_default();
            let error = server_error(status, &bytes);
            log_failure(&path, &error);
            return Err(error);
        }
        Ok(response)
    }

    async fn send_raw_inner<R>(&self, request: R, limit: usize) -> Result<(u16, Bytes), HttpError>
    where
        R: OutgoingRequest,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = Cow<'a, SupportedVersions>>,
    {
        let response = self.start(request).await?;
        let status = response.status().as_u16();
        Ok((status, read_body(response, limit).await?))
    }
}

/// How a request goes out, when not as ruma built it.
#[derive(Default)]
struct Outgoing {
    /// The body to send instead of ruma's.
    body: Option<reqwest::Body>,
    /// The time allowed for the whole exchange, instead of the client's.
    timeout: Option<Duration>,
}

/// The body, refused as soon as it is larger than `limit` (declared or actual).
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Bytes, HttpError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(HttpError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpError::Network(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(HttpError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// A failed request in the log: a warning, unless the server only said that what was
/// asked for does not exist (no backup yet, no such account data: an answer callers
/// expect, logged for debugging only).
fn log_failure(path: &str, error: &HttpError) {
    let path = redact_path(path);
    if error.errcode() == Some("M_NOT_FOUND") {
        debug!(%path, %error, "not found");
    } else {
        warn!(%path, %error, "request failed");
    }
}

/// Keep the endpoint, drop ids and transaction ids from log lines.
fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.starts_with('!') || s.starts_with('$') || s.starts_with('@') || s.len() > 24 {
                "…"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn server_error(status: u16, body: &[u8]) -> HttpError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // A 401 with flows and no errcode starts user-interactive auth; with an errcode (e.g. a
    // wrong password in a later stage) it is a plain error.
    if status == 401
        && json.get("errcode").is_none()
        && let Some(flows) = json.get("flows").and_then(Value::as_array)
    {
        return HttpError::AuthRequired {
            session: json
                .get("session")
                .and_then(Value::as_str)
                .map(str::to_owned),
            flows: flows
                .iter()
                .filter_map(|f| f.get("stages")?.as_array())
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        };
    }
    HttpError::Server {
        status,
        errcode: json
            .get("errcode")
            .and_then(Value::as_str)
            .unwrap_or("M_UNKNOWN")
            .to_owned(),
        message: json
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        retry_after_ms: json.get("retry_after_ms").and_then(Value::as_u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on 127.0.0.1 answering every request 200 with a chunked body: `chunks`
    /// spaces, each after `pause`, then `1` and the end, unless `end` is false (it then
    /// sends nothing more). Its address.
    fn slow_server(chunks: usize, pause: Duration, end: bool) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                Transfer-Encoding: chunked\r\n\r\n";
                    let _ = stream.write_all(head.as_bytes());
                    for _ in 0..chunks {
                        std::thread::sleep(pause);
                        if stream.write_all(b"1\r\n \r\n").is_err() {
                            return;
                        }
                    }
                    if end {
                        let _ = stream.write_all(b"1\r\n1\r\n0\r\n\r\n");
                    } else {
                        std::thread::sleep(Duration::from_secs(30));
                    }
                });
            }
        });
        url
    }

    /// `http`'s streamed answer to a backup request, as text.
    async fn streamed(http: &HttpClient, timeout: Option<Duration>) -> Result<String, HttpError> {
        use ruma::api::client::backup::get_backup_keys;
        http.set_access_token(Some(Zeroizing::new("token".into())));
        let request = get_backup_keys::v3::Request::new("1".into());
        let read = |body: &mut dyn std::io::Read| {
            let mut text = String::new();
            body.read_to_string(&mut text).map(|_| text)
        };
        let text = http.send_streaming(request, 1024, timeout, read).await?;
        text.map_err(|e| HttpError::Network(e.to_string()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streamed_answer_may_take_longer_than_an_exchange_when_allowed() {
        let url = slow_server(6, Duration::from_millis(300), true);
        let http =
            HttpClient::with_times(&url, Duration::from_secs(1), Duration::from_secs(5)).unwrap();
        let cut = streamed(&http, None).await.unwrap_err();
        assert!(matches!(cut, HttpError::Network(_)), "{cut:?}");
        let whole = streamed(&http, Some(Duration::from_secs(20)))
            .await
            .unwrap();
        assert_eq!(whole.trim(), "1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_streamed_answer_that_stops_coming_fails_within_the_stall_time() {
        let url = slow_server(1, Duration::from_millis(50), false);
        let stall = Duration::from_millis(500);
        let http = HttpClient::with_times(&url, Duration::from_secs(60), stall).unwrap();
        let started = std::time::Instant::now();
        let err = streamed(&http, Some(Duration::from_secs(60)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HttpError::Network(m) if m.contains("stalled")),
            "{err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    /// What `f` logs at WARN and above.
    fn warnings(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_missing_thing_is_not_a_warning_and_a_refusal_is() {
        let path = "/_matrix/client/v3/room_keys/version";
        let missing = server_error(404, br#"{"errcode":"M_NOT_FOUND","error":"No backup"}"#);
        assert_eq!(warnings(|| log_failure(path, &missing)), "");
        let refused = server_error(403, br#"{"errcode":"M_FORBIDDEN"}"#);
        let logged = warnings(|| log_failure(path, &refused));
        assert!(
            logged.contains("WARN") && logged.contains("M_FORBIDDEN"),
            "{logged}"
        );
    }

    #[test]
    fn server_errors_are_typed() {
        let e = server_error(
            403,
            br#"{"errcode":"M_FORBIDDEN","error":"Invalid password"}"#,
        );
        assert_eq!(e.errcode(), Some("M_FORBIDDEN"));
        assert!(!e.is_transient());
        let e = server_error(
            429,
            br#"{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":500}"#,
        );
        assert!(e.is_transient());
        assert!(matches!(
            e,
            HttpError::Server {
                retry_after_ms: Some(500),
                ..
            }
        ));
        let e = server_error(
            401,
            br#"{"session":"s1","flows":[{"stages":["m.login.password"]}]}"#,
        );
        assert_eq!(
            e,
            HttpError::AuthRequired {
                session: Some("s1".into()),
                flows: vec!["m.login.password".into()]
            }
        );
        let e = server_error(
            401,
            br#"{"errcode":"M_FORBIDDEN","error":"Invalid password","session":"s1","flows":[{"stages":["m.login.password"]}]}"#,
        );
        assert_eq!(e.errcode(), Some("M_FORBIDDEN"));
        let e = server_error(502, b"<html>bad gateway</html>");
        assert_eq!(e.errcode(), Some("M_UNKNOWN"));
        assert!(e.is_transient());
    }

    #[test]
    fn refusals_for_good_are_told_apart_from_what_may_go_away() {
        let server = |status| server_error(status, br#"{"errcode":"M_X"}"#);
        for status in [400, 403, 404, 413] {
            assert!(server(status).is_permanent(), "{status}");
        }
        // A rate limit, a logged-out token, a server failure: later.
        for status in [429, 401, 500, 502] {
            assert!(!server(status).is_permanent(), "{status}");
        }
        assert!(!HttpError::Network("down".into()).is_permanent());
        assert!(HttpError::TooLarge { limit: 1 }.is_permanent());
    }

    #[test]
    fn invalid_homeserver_urls_are_refused() {
        assert!(HttpClient::new("not a url").is_err());
        assert!(HttpClient::new("ftp://x").is_err());
        assert!(HttpClient::new("http://127.0.0.1:1").is_ok());
    }

    #[test]
    fn logged_paths_carry_no_ids() {
        let p = redact_path(
            "/_matrix/client/v3/rooms/!abc:x/send/m.room.message/txn123456789012345678901234",
        );
        assert!(!p.contains("!abc") && !p.contains("txn1234"));
    }
}
