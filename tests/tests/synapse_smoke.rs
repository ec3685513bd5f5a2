//! Smoke test of the Synapse harness: start, register, query, stop.

use newt_e2e_tests::{Synapse, process_alive};

#[test]
fn synapse_starts_registers_and_stops() {
    let hs = Synapse::start();
    assert!(
        hs.base_url.starts_with("http://127.0.0.1:"),
        "{}",
        hs.base_url
    );
    let pid = hs.pid().expect("synapse.pid written");
    assert!(process_alive(pid), "Synapse pid {pid} not running");

    let (status, body) = hs.get("/_matrix/client/versions");
    assert_eq!(status, 200, "GET /versions: {body}");
    let versions: serde_json::Value = serde_json::from_str(&body).expect("versions is JSON");
    let list = versions["versions"].as_array().expect("versions array");
    assert!(
        list.iter().any(|v| v == "v1.11"),
        "server should support v1.11: {body}"
    );

    let alice = hs.register("alice", "alice-password");
    let bob = hs.register("bob", "bob-password");
    assert_eq!(alice, "@alice:localhost");
    assert_eq!(bob, "@bob:localhost");
    // Registering again is not an error.
    assert_eq!(hs.register("alice", "alice-password"), "@alice:localhost");

    let dir = hs.dir().to_path_buf();
    drop(hs);
    assert!(
        !process_alive(pid),
        "Synapse pid {pid} still running after drop"
    );
    assert!(!dir.exists(), "temp dir {} not removed", dir.display());
}

#[test]
fn two_servers_run_side_by_side() {
    let a = Synapse::start();
    let b = Synapse::start();
    assert_ne!(a.base_url, b.base_url);
    assert_eq!(a.get("/_matrix/client/versions").0, 200);
    assert_eq!(b.get("/_matrix/client/versions").0, 200);
    let (pa, pb) = (a.pid().unwrap(), b.pid().unwrap());
    a.stop();
    a.stop(); // idempotent
    assert!(!process_alive(pa));
    assert!(process_alive(pb));
    drop(b);
    assert!(!process_alive(pb));
}

#[test]
fn server_is_stopped_when_a_test_panics() {
    let pid = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let hs = Synapse::start();
        *pid.lock().unwrap() = hs.pid();
        panic!("deliberate panic while the server runs");
    });
    assert!(result.is_err());
    let pid = pid.lock().unwrap().expect("pid recorded");
    assert!(!process_alive(pid), "Synapse pid {pid} survived a panic");
}
