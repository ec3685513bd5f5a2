//! A fault-injecting HTTP proxy on loopback, for tests that need a homeserver that fails,
//! delays or holds back some requests.
//!
//! Plain HTTP/1.1 only, one request per connection (`Connection: close` on both sides), a
//! thread per connection. Good enough for a test client talking to a test Synapse.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What to do with requests whose path contains `path_contains`.
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer with this status and a Matrix error body, without forwarding.
    Fail(u16),
    /// Answer 429 `M_LIMIT_EXCEEDED` with this `retry_after_ms`, without forwarding.
    RateLimit(u64),
    /// One of these actions (`None`: forward as it is), picked at random by weight for each
    /// request, from a seeded generator (the same seed gives the same sequence).
    Random(Arc<Mutex<RandomActions>>),
    /// Forward after this delay.
    Delay(Duration),
    /// Close the connection without answering (a network failure).
    Drop,
    /// Forward, let the server handle the request, then close the connection without passing
    /// the answer on (the response is lost on the way back).
    ForwardThenDrop,
    /// Forward with the request body replaced by what the function makes of it (e.g. a
    /// homeserver that loses part of an upload).
    RewriteRequest(Rewrite),
    /// Forward, then pass the answer on with its body replaced by what the function makes of
    /// it (a hostile or broken homeserver). The function gets the body with any chunked
    /// transfer encoding removed; the answer keeps its status line and headers, with a
    /// `Content-Length` for the new body.
    RewriteResponse(Rewrite),
}

/// Weighted actions for [`Action::Random`].
#[derive(Debug)]
pub struct RandomActions {
    choices: Vec<(u32, Option<Action>)>,
    state: u64,
}

impl RandomActions {
    /// `choices` by weight, drawn from a generator seeded with `seed`.
    pub fn action(seed: u64, choices: Vec<(u32, Option<Action>)>) -> Action {
        let state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Action::Random(Arc::new(Mutex::new(RandomActions { choices, state })))
    }

    fn pick(&mut self) -> Option<Action> {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
        let total: u64 = self.choices.iter().map(|(w, _)| u64::from(*w)).sum();
        let mut at = r % total.max(1);
        for (weight, action) in &self.choices {
            if at < u64::from(*weight) {
                return action.clone();
            }
            at -= u64::from(*weight);
        }
        None
    }
}

/// A function from a body to the body to pass on.
pub type RewriteFn = dyn Fn(&[u8]) -> Vec<u8> + Send + Sync;

/// A body rewrite for [`Action::RewriteRequest`] and [`Action::RewriteResponse`].
#[derive(Clone)]
pub struct Rewrite(pub Arc<RewriteFn>);

impl Rewrite {
    /// A rewrite of JSON bodies: `f` edits the parsed value in place. A body that is not
    /// JSON is passed on unchanged.
    pub fn json(f: impl Fn(&mut serde_json::Value) + Send + Sync + 'static) -> Rewrite {
        Rewrite(Arc::new(move |body: &[u8]| {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(mut value) => {
                    f(&mut value);
                    serde_json::to_vec(&value).expect("serialise a JSON value")
                }
                Err(_) => body.to_vec(),
            }
        }))
    }
}

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rewrite(..)")
    }
}

#[derive(Clone, Debug)]
struct Rule {
    /// Only requests of this method (all if `None`).
    method: Option<String>,
    path_contains: String,
    action: Action,
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    log: Vec<String>,
    /// `(path, body)` of every request, as the client sent it.
    requests: Vec<(String, Vec<u8>)>,
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT` to give to clients.
    pub base_url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Proxy to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let base_url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (st, upstream) = (st.clone(), upstream.clone());
                        thread::spawn(move || {
                            let _ = handle(client, &upstream, &st);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            base_url,
            state,
            stop,
        }
    }

    /// Apply `action` to the next `times` requests whose path contains `path_contains`
    /// (`None`: until cleared).
    pub fn rule(&self, path_contains: &str, action: Action, times: Option<usize>) {
        self.push_rule(None, path_contains, action, times);
    }

    /// [`FaultProxy::rule`] for the requests of `method` (`PUT`, say) only.
    pub fn method_rule(
        &self,
        method: &str,
        path_contains: &str,
        action: Action,
        times: Option<usize>,
    ) {
        self.push_rule(Some(method), path_contains, action, times);
    }

    fn push_rule(
        &self,
        method: Option<&str>,
        path_contains: &str,
        action: Action,
        times: Option<usize>,
    ) {
        self.state.lock().unwrap().rules.push(Rule {
            method: method.map(str::to_owned),
            path_contains: path_contains.to_owned(),
            action,
            remaining: times,
        });
    }

    /// Remove all rules.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// `METHOD path status` of every request seen so far.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// The bodies of the requests whose path contains `path_contains`, as the client sent
    /// them (before any rewrite), oldest first.
    pub fn bodies(&self, path_contains: &str) -> Vec<Vec<u8>> {
        let requests = self.requests(path_contains).into_iter();
        requests.map(|(_, body)| body).collect()
    }

    /// `(path, body)` of the requests whose path contains `path_contains`, oldest first.
    pub fn requests(&self, path_contains: &str) -> Vec<(String, Vec<u8>)> {
        let state = self.state.lock().unwrap();
        let matching = state
            .requests
            .iter()
            .filter(|(p, _)| p.contains(path_contains));
        matching.cloned().collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn action_for(state: &Mutex<State>, method: &str, path: &str) -> Option<Action> {
    let mut state = state.lock().unwrap();
    let rule = state.rules.iter_mut().find(|r| {
        r.method.as_deref().is_none_or(|m| m == method)
            && path.contains(&r.path_contains)
            && r.remaining.is_none_or(|n| n > 0)
    })?;
    if let Some(n) = rule.remaining.as_mut() {
        *n -= 1;
    }
    Some(rule.action.clone())
}

fn handle(client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut content_length = 0usize;
    let mut request_line = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if request_line.is_empty() {
            request_line = line.trim_end().to_owned();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
        // Both sides close after one exchange; the length is written when forwarding.
        if !lower.starts_with("connection:") && !lower.starts_with("content-length:") {
            head.extend_from_slice(line.as_bytes());
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let request = (path.clone(), body.clone());
    state.lock().unwrap().requests.push(request);
    let mut client = client;
    let mut action = action_for(state, &method, &path);
    if let Some(Action::Random(choices)) = &action {
        let picked = choices.lock().unwrap().pick();
        action = picked;
    }
    match action {
        Some(Action::RateLimit(retry_after_ms)) => {
            log(state, format!("{method} {path} 429"));
            answer_rate_limit(&mut client, retry_after_ms)?;
        }
        Some(Action::Fail(status)) => {
            log(state, format!("{method} {path} {status}"));
            answer_failure(&mut client, status)?;
        }
        Some(Action::Drop) => {
            log(state, format!("{method} {path} dropped"));
        }
        other => {
            match &other {
                Some(Action::Delay(d)) => thread::sleep(*d),
                Some(Action::RewriteRequest(Rewrite(f))) => body = f(&body),
                _ => {}
            }
            let mut up = TcpStream::connect(upstream)?;
            up.write_all(&head)?;
            if content_length > 0 || !body.is_empty() {
                write!(up, "Content-Length: {}\r\n", body.len())?;
            }
            up.write_all(b"Connection: close\r\n\r\n")?;
            up.write_all(&body)?;
            let mut response = Vec::new();
            up.read_to_end(&mut response)?;
            if matches!(other, Some(Action::ForwardThenDrop)) {
                log(state, format!("{method} {path} answer dropped"));
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            let rewritten = match &other {
                Some(Action::RewriteResponse(Rewrite(f))) => {
                    response = rewrite_response(&response, f.as_ref())?;
                    true
                }
                _ => false,
            };
            let status = String::from_utf8_lossy(&response[..response.len().min(64)])
                .split(' ')
                .nth(1)
                .unwrap_or("?")
                .to_owned();
            log(state, format!("{method} {path} {status}"));
            match client.write_all(&response) {
                Ok(()) => {}
                // A client may hang up early on a rewritten body it refuses (e.g. one too
                // large to read): that exchange is logged all the same.
                Err(_) if rewritten => {}
                Err(e) => return Err(e),
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// An injected rate-limit answer.
fn answer_rate_limit(client: &mut TcpStream, retry_after_ms: u64) -> std::io::Result<()> {
    let body = format!(
        r#"{{"errcode":"M_LIMIT_EXCEEDED","error":"injected","retry_after_ms":{retry_after_ms}}}"#
    );
    write!(
        client,
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An injected Matrix error with `status`.
fn answer_failure(client: &mut TcpStream, status: u16) -> std::io::Result<()> {
    let body = r#"{"errcode":"M_UNKNOWN","error":"injected failure"}"#;
    write!(
        client,
        "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Records one exchange. Always called before the client can see the answer (or the hang-up):
/// a test that reads the log right after its request returned then finds the line there.
fn log(state: &Mutex<State>, line: String) {
    state.lock().unwrap().log.push(line);
}

/// `response` (a whole HTTP/1.x answer) with its body replaced by `f(body)`: the same status
/// line and headers, without `Content-Length`, `Transfer-Encoding` and `Connection`, then a
/// `Content-Length` for the new body and `Connection: close`. A chunked body is decoded
/// before `f` sees it.
fn rewrite_response(response: &[u8], f: &RewriteFn) -> std::io::Result<Vec<u8>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("answer without a complete head"))?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let raw_body = &response[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut kept = Vec::new();
    let mut chunked = false;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") {
            chunked |= lower.contains("chunked");
        } else if !lower.starts_with("content-length:") && !lower.starts_with("connection:") {
            kept.push(line);
        }
    }
    let body = if chunked {
        decode_chunked(raw_body).ok_or_else(|| invalid("malformed chunked body"))?
    } else {
        raw_body.to_vec()
    };
    let new_body = f(&body);
    let mut out = Vec::with_capacity(new_body.len() + head.len() + 64);
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    for line in kept {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            new_body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&new_body);
    Ok(out)
}

/// The payload of a `Transfer-Encoding: chunked` body (chunk extensions and trailers are
/// dropped), or `None` if it is malformed or cut short.
fn decode_chunked(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size_hex = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line; nothing in them is kept.
            return Some(body);
        }
        if raw.len() < size + 2 || &raw[size..size + 2] != b"\r\n" {
            return None;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_answers_are_decoded_and_reframed() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let out = rewrite_response(answer, &|body: &[u8]| {
            assert_eq!(body, b"{\"a\":1}");
            b"{}".to_vec()
        })
        .unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
    }

    #[test]
    fn plain_answers_get_a_new_length() {
        let answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\nhello";
        let out = rewrite_response(answer, &|body: &[u8]| [body, b" world"].concat()).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nX-Kept: yes\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"
        );
    }

    /// An upstream that answers every connection with `answer` and closes.
    fn upstream(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let _ = conn.write_all(answer);
            }
        });
        url
    }

    /// One request through the proxy, read as an HTTP client does: the answer's length is
    /// known, so the client goes on as soon as it has it (or the hang-up), not at the close.
    fn request(proxy: &FaultProxy, path: &str, expected: &[u8]) {
        let mut conn = TcpStream::connect(proxy.base_url.trim_start_matches("http://")).unwrap();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = vec![0; expected.len()];
        let mut read = 0;
        while read < got.len() {
            match conn.read(&mut got[read..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    }

    /// CI once saw 3 of 4 "answer dropped" lines: the proxy hung up first and logged after,
    /// and the test read the log in between. Every line must be there when the client has
    /// its answer or its hang-up.
    #[test]
    fn each_exchange_is_logged_before_the_client_sees_its_outcome() {
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let proxy = FaultProxy::start(&upstream(ANSWER));
        for i in 0..200 {
            let (path, action) = match i % 4 {
                0 => ("/lost", Some(Action::ForwardThenDrop)),
                1 => ("/drop", Some(Action::Drop)),
                2 => ("/fail", Some(Action::Fail(502))),
                _ => ("/ok", None),
            };
            if let Some(action) = action {
                proxy.rule(path, action, Some(1));
            }
            request(&proxy, path, ANSWER);
            assert_eq!(
                proxy.log().len(),
                i + 1,
                "exchange {i} ({path}) not logged yet"
            );
        }
    }

    #[test]
    fn cut_chunked_bodies_are_refused() {
        assert!(decode_chunked(b"5\r\nab").is_none());
        assert!(decode_chunked(b"zz\r\n").is_none());
        assert_eq!(decode_chunked(b"0\r\n\r\n"), Some(Vec::new()));
    }
}
