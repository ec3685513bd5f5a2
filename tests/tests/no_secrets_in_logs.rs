//! A full encrypted exchange at the most verbose log level leaks no secret into the logs.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use newt_core::client::{Client, ClientConfig};
use newt_core::ruma::{OwnedRoomOrAliasId, OwnedUserId, RoomId};
use newt_core::store::StoreKey;
use newt_e2e_tests::Synapse;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const PASSPHRASE: &str = "correct horse battery staple 7f3a";
const SECRET_TEXT: &str = "the eagle lands at midnight 91c2";

/// The room key of `client`'s current outbound session in `room`, as `m.room_key` carries
/// it over Olm (from the session's current index).
fn session_key_of(client: &Client, room: &RoomId) -> String {
    let record = client
        .store()
        .unwrap()
        .outbound_group_session(room)
        .unwrap()
        .expect("outbound session");
    let pickle: vodozemac::megolm::GroupSessionPickle =
        serde_json::from_slice(record.pickle.as_bytes()).unwrap();
    vodozemac::megolm::GroupSession::from_pickle(pickle)
        .session_key()
        .to_base64()
}

/// `client`'s inbound copy of `session_id` in `room`, exported from its first index (what a
/// key forward or export would carry).
fn exported_key_of(client: &Client, room: &RoomId, session_id: &str) -> String {
    let record = client
        .store()
        .unwrap()
        .inbound_group_session(room, session_id)
        .unwrap()
        .expect("inbound session");
    let pickle: vodozemac::megolm::InboundGroupSessionPickle =
        serde_json::from_slice(record.pickle.as_bytes()).unwrap();
    vodozemac::megolm::InboundGroupSession::from_pickle(pickle)
        .export_at_first_known_index()
        .to_base64()
}

/// Every 32- and 64-byte array in a pickle (private keys, ratchet secrets), base64 encoded
/// as Matrix encodes keys.
fn key_material(pickle: &[u8]) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Array(items) => {
                let bytes: Option<Vec<u8>> = items
                    .iter()
                    .map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect();
                match bytes {
                    Some(bytes) if bytes.len() == 32 || bytes.len() == 64 => {
                        out.push(vodozemac::base64_encode(&bytes));
                    }
                    _ => items.iter().for_each(|v| walk(v, out)),
                }
            }
            serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::from_slice(pickle).unwrap(), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_exchange_at_trace_level_logs_no_secrets() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .init();

    let hs = Synapse::start();
    hs.register("alice", "alice-pw");
    hs.register("bob", "bob-pw");
    let dirs = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        Arc::new(
            Client::new(ClientConfig {
                homeserver: hs.base_url.clone(),
                store_dir: dirs.path().join(name),
                store_key: StoreKey::from_passphrase(PASSPHRASE),
            })
            .unwrap(),
        )
    };
    let alice = open("alice");
    let bob = open("bob");
    alice
        .login_password("alice", "alice-pw", None)
        .await
        .unwrap();
    bob.login_password("bob", "bob-pw", None).await.unwrap();
    let room = alice
        .create_encrypted_room(None, &[OwnedUserId::try_from("@bob:localhost").unwrap()])
        .await
        .unwrap();
    bob.sync_once(Duration::ZERO).await.unwrap();
    bob.join(&OwnedRoomOrAliasId::from(room.clone()))
        .await
        .unwrap();
    alice.sync_once(Duration::ZERO).await.unwrap();
    let mut rx = bob.subscribe_timeline();
    // The room key as it goes to bob over Olm: the session at index 0, before any message.
    alice.prepare_room_key(&room).await.unwrap();
    let shared_key = session_key_of(&alice, &room);
    alice.send_text(&room, SECRET_TEXT).await.unwrap();
    let mut received = None;
    for _ in 0..20 {
        bob.sync_once(Duration::from_secs(1)).await.unwrap();
        if let Ok(event) = rx.try_recv() {
            received = Some(event);
            break;
        }
    }
    let received = received.expect("bob received the message");
    assert_eq!(
        received.body.as_deref(),
        Some(SECRET_TEXT),
        "the exchange itself worked"
    );

    let session_id = alice
        .store()
        .unwrap()
        .outbound_group_session(&room)
        .unwrap()
        .unwrap()
        .session_id;
    let mut secrets = vec![
        ("store passphrase", PASSPHRASE.to_owned()),
        ("message plaintext", SECRET_TEXT.to_owned()),
        ("room key shared over Olm (index 0)", shared_key.clone()),
        (
            "room key at the current index",
            session_key_of(&alice, &room),
        ),
        (
            "bob's copy of the room key",
            exported_key_of(&bob, &room, &session_id),
        ),
    ];
    assert_ne!(
        shared_key,
        session_key_of(&alice, &room),
        "the message moved the session on: the two keys are different secrets"
    );
    for (who, client) in [("alice", &alice), ("bob", &bob)] {
        let token = client
            .store()
            .unwrap()
            .secret_value("session.access_token")
            .unwrap()
            .expect("token stored");
        secrets.push((
            if who == "alice" {
                "alice's access token"
            } else {
                "bob's access token"
            },
            String::from_utf8(token.as_bytes().to_vec()).unwrap(),
        ));
    }
    for (who, client) in [("alice", &alice), ("bob", &bob)] {
        let account = client.store().unwrap().account().unwrap().expect("account");
        let keys = key_material(account.pickle.as_bytes());
        assert!(keys.len() >= 3, "{who}'s identity and one-time keys found");
        for key in keys {
            secrets.push(("a private key of an Olm account", key));
        }
        let own_key = client.fingerprint().unwrap();
        assert!(
            !secrets.iter().any(|(_, s)| s == &own_key),
            "public keys are not secrets"
        );
    }
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.len() > 10_000,
        "trace logging captured too little ({} bytes) to mean anything",
        logs.len()
    );
    assert!(logs.contains("@alice:localhost"), "logs name users");
    assert!(
        logs.contains("keys uploaded") && logs.contains("newt_core"),
        "Newt's own events were captured"
    );
    for (what, secret) in &secrets {
        assert!(!logs.contains(secret.as_str()), "{what} found in the logs");
    }
}
