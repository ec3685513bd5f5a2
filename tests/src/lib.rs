//! Harness for Newt's end-to-end tests against a real Synapse homeserver.
//!
//! [`Synapse::start`] runs `scripts/synapse.sh start <tempdir>`, which installs Synapse
//! into a cached venv on first use (`$NEWT_CACHE/synapse-venv`, default `<repo>/.cache`),
//! writes a test configuration (rate limits off, `bcrypt_rounds: 4`, no federation, …),
//! starts the server on a free `127.0.0.1` port and waits until it answers.
//!
//! ```no_run
//! let hs = newt_e2e_tests::Synapse::start();
//! let alice = hs.register("alice", "alice-password"); // "@alice:localhost"
//! // ... point a client at hs.base_url ...
//! drop(hs); // stops the server (also happens on panic)
//! ```
//!
//! # The server never outlives the test
//!
//! Three layers make sure of that:
//!
//! 1. `impl Drop for Synapse` runs `scripts/synapse.sh stop` (SIGTERM, then SIGKILL after
//!    10 s). Tests are built with `panic = "unwind"`, so a failing assertion still drops
//!    the value while unwinding; on panic the tail of the server log is printed too.
//! 2. The server is started with `NEWT_SYNAPSE_WATCH_PID` set to this test process: a
//!    small watcher stops the server as soon as the process is gone, even if it was
//!    killed, aborted, or exited without running destructors (e.g. a `static` server).
//! 3. cargo-nextest (the project's test runner, see `scripts/test.sh`) runs every test in
//!    its own process and process group; the server stays in that group, so nextest's
//!    timeout handling (`.config/nextest.toml`) kills it along with a hung test.
//!
//! Each `Synapse` is a separate server with its own SQLite database in a temporary
//! directory (about 2–3 s to start, ~120 MB RSS). User ids are `@name:localhost`; clients
//! must use [`Synapse::base_url`] (`http://127.0.0.1:PORT`), not the server name.

pub mod attacker;
pub mod clients;
pub mod proxy;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A running Synapse homeserver, stopped on drop.
pub struct Synapse {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base_url: String,
    dir: tempfile::TempDir,
}

/// Path of `scripts/synapse.sh` in this repository.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("synapse.sh")
}

fn run_script(args: &[&std::ffi::OsStr]) -> Output {
    let script = script_path();
    Command::new("bash")
        .arg(&script)
        .args(args)
        .env("NEWT_SYNAPSE_WATCH_PID", std::process::id().to_string())
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()))
}

impl Synapse {
    /// Starts a fresh homeserver in a new temporary directory. Panics (with the server's
    /// output) if it does not come up.
    pub fn start() -> Synapse {
        let dir = tempfile::Builder::new()
            .prefix("newt-synapse-")
            .tempdir()
            .expect("create temp dir for Synapse");
        let out = run_script(&["start".as_ref(), dir.path().as_os_str()]);
        if !out.status.success() {
            let log = tail(&dir.path().join("homeserver.log"), 60);
            let synapse_out = tail(&dir.path().join("synapse.out"), 30);
            // Best effort: make sure nothing half-started survives.
            let _ = run_script(&["stop".as_ref(), dir.path().as_os_str()]);
            panic!(
                "scripts/synapse.sh start failed ({}):\n--- stderr ---\n{}\n--- synapse.out ---\n{}\n--- homeserver.log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                synapse_out,
                log
            );
        }
        let base_url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            base_url.starts_with("http://127.0.0.1:") && !base_url.contains('\n'),
            "unexpected output from scripts/synapse.sh start: {base_url:?}"
        );
        Synapse { base_url, dir }
    }

    /// Registers `@user:localhost` with `password` through the admin shared-secret API
    /// and returns the user id. Registering an existing user returns its id as well.
    pub fn register(&self, user: &str, password: &str) -> String {
        let out = run_script(&[
            "register".as_ref(),
            self.dir.path().as_os_str(),
            user.as_ref(),
            password.as_ref(),
        ]);
        if !out.status.success() {
            panic!(
                "registering {user:?} failed ({}): {}\n--- homeserver.log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The server name (`localhost`): user ids are `@name:localhost`.
    pub fn server_name(&self) -> &'static str {
        "localhost"
    }

    /// The data directory (config, SQLite database, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("synapse.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The last `lines` lines of `homeserver.log`.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("homeserver.log"), lines)
    }

    /// Stops the server now (idempotent; `Drop` does the same).
    pub fn stop(&self) {
        let out = run_script(&["stop".as_ref(), self.dir.path().as_os_str()]);
        if !out.status.success() {
            eprintln!(
                "scripts/synapse.sh stop failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Starts the stopped server again with the same database, on the same port (so clients
    /// keep working with the same base URL). Errors if that port cannot be had.
    pub fn restart_same_port(&self) -> Result<(), String> {
        let port = self
            .base_url
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        let out = Command::new("bash")
            .arg(script_path())
            .arg("start")
            .arg(self.dir.path())
            .env("NEWT_SYNAPSE_WATCH_PID", std::process::id().to_string())
            .env("NEWT_SYNAPSE_PORT", &port)
            .output()
            .map_err(|e| e.to_string())?;
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || url != self.base_url {
            return Err(format!(
                "restart gave {url:?} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// A plain `GET` of `path` (e.g. `/_matrix/client/versions`) on this server, without
    /// any HTTP client crate. Returns the status code and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.base_url, path)
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- Synapse {} log tail (test panicked) ---\n{}",
                self.base_url,
                self.log_tail(40)
            );
        }
        self.stop();
    }
}

/// Whether process `pid` still exists (a zombie counts as gone: this machine's PID 1 may
/// not reap orphans promptly).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ..." — comm may contain spaces/parens, so split after the last ')'.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Minimal HTTP/1.0 `GET` against `base_url` (`http://host:port`), std only.
pub fn http_get(base_url: &str, path: &str) -> (u16, String) {
    http_request(base_url, "GET", path, None, None)
}

/// Minimal HTTP/1.0 request against `base_url` (`http://host:port`), std only: `method`
/// `path`, an optional bearer token and an optional JSON body. Returns the status code and
/// the body.
pub fn http_request(
    base_url: &str,
    method: &str,
    path: &str,
    access_token: Option<&str>,
    json_body: Option<&str>,
) -> (u16, String) {
    let authority = base_url
        .strip_prefix("http://")
        .expect("http_request: base_url must start with http://")
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)
        .unwrap_or_else(|e| panic!("http_request: connect to {authority}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set_read_timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some(token) = access_token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = json_body.unwrap_or_default();
    if json_body.is_some() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .expect("http_request: write request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("http_request: read response");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("http_request: malformed response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("http_request: malformed status line: {head:?}"));
    (status, body.to_owned())
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
