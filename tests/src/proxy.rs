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
}

/// A function from a request body to the body to forward.
pub type RewriteFn = dyn Fn(&[u8]) -> Vec<u8> + Send + Sync;

/// A request-body rewrite for [`Action::RewriteRequest`].
#[derive(Clone)]
pub struct Rewrite(pub Arc<RewriteFn>);

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rewrite(..)")
    }
}

#[derive(Clone, Debug)]
struct Rule {
    path_contains: String,
    action: Action,
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    log: Vec<String>,
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
        self.state.lock().unwrap().rules.push(Rule {
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
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn action_for(state: &Mutex<State>, path: &str) -> Option<Action> {
    let mut state = state.lock().unwrap();
    let rule = state
        .rules
        .iter_mut()
        .find(|r| path.contains(&r.path_contains) && r.remaining.is_none_or(|n| n > 0))?;
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
    let mut client = client;
    let status = match action_for(state, &path) {
        Some(Action::Fail(status)) => {
            let body = r#"{"errcode":"M_UNKNOWN","error":"injected failure"}"#;
            write!(
                client,
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            status.to_string()
        }
        Some(Action::Drop) => {
            let _ = client.shutdown(Shutdown::Both);
            "dropped".to_owned()
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
                let _ = client.shutdown(Shutdown::Both);
                state
                    .lock()
                    .unwrap()
                    .log
                    .push(format!("{method} {path} answer dropped"));
                return Ok(());
            }
            client.write_all(&response)?;
            String::from_utf8_lossy(&response)
                .split(' ')
                .nth(1)
                .unwrap_or("?")
                .to_owned()
        }
    };
    state
        .lock()
        .unwrap()
        .log
        .push(format!("{method} {path} {status}"));
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
