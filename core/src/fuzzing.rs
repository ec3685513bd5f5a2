//! Fuzzing harnesses (feature `fuzzing`; the `fuzz/` targets are one line each). Each one
//! takes arbitrary bytes where the network or the store gives input and checks the one
//! rule: no panic, whatever the bytes.
//!
//! The machines live for the whole fuzzing process (creating an account per input would
//! make fuzzing slow); they start with random keys, so an input means the same thing in
//! every run but the ciphertexts differ.

// Harness code: a setup step that fails is a broken harness, not an input to survive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, OnceLock};

use ruma::OwnedUserId;
use serde_json::{Value, json};

use crate::crypto::tests::{FakeServer, Peer, olm_event_raw, olm_identity, room_event};
use crate::crypto::{KeysQueryResponse, OlmMachine, OutgoingKind, SyncChanges};
use crate::store::{Changes, ClientStore, CryptoStore, MemoryStore, SqliteStore, Store, StoreKey};
use crate::test_ids::{did, rid, uid};

const ROOM: &str = "!fuzz:localhost";

/// alice and bob with an Olm channel both ways and a Megolm session of alice's in [`ROOM`].
struct Pair {
    alice: Peer,
    bob: Peer,
}

fn pair() -> &'static Mutex<Pair> {
    static PAIR: OnceLock<Mutex<Pair>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let mut server = FakeServer::default();
        let alice = Peer::new("@alice:localhost", "ALICE");
        let bob = Peer::new("@bob:localhost", "BOB");
        server.drive(&alice);
        server.drive(&bob);
        let members = vec![alice.user(), bob.user()];
        server.share(&alice, &rid(ROOM), &members);
        server.sync(&bob);
        server.establish(&bob, &members);
        Mutex::new(Pair { alice, bob })
    })
}

/// To-device events. First byte 0: the rest is a JSON list of events, fed as they are.
/// 1: the rest is an Olm plaintext (any bytes), encrypted by alice over her Olm session with
/// bob and delivered. Otherwise: the rest is a JSON object whose identity fields (sender,
/// recipient, keys) are set right, so that what it carries (room keys, forwarded keys, key
/// requests) is looked at.
pub fn to_device(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let pair = pair().lock().unwrap_or_else(|e| e.into_inner());
    let events = match mode {
        0 => match serde_json::from_slice::<Vec<Value>>(rest) {
            Ok(events) => events.into_iter().map(dated_now).collect(),
            Err(_) => return,
        },
        1 => vec![olm_event_raw(&pair.alice, &pair.bob, rest)],
        _ => {
            let Ok(Value::Object(mut payload)) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            if let Value::Object(identity) = olm_identity(&pair.alice, &pair.bob) {
                for field in [
                    "sender",
                    "sender_device",
                    "recipient",
                    "recipient_keys",
                    "keys",
                ] {
                    if let Some(value) = identity.get(field) {
                        payload.insert(field.to_owned(), value.clone());
                    }
                }
            }
            let plaintext = Value::Object(payload).to_string();
            vec![olm_event_raw(&pair.alice, &pair.bob, plaintext.as_bytes())]
        }
    };
    let _ = pair.bob.machine.receive_sync_changes(SyncChanges {
        to_device_events: events,
        ..Default::default()
    });
}

/// A verification request dated 0 is dated now: the fuzzer cannot guess a fresh timestamp,
/// and a stale request is ignored before anything else is looked at.
fn dated_now(mut event: Value) -> Value {
    if event["content"]["timestamp"] == 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        event["content"]["timestamp"] = json!(u64::try_from(now).unwrap_or(0));
    }
    event
}

/// Room events. First byte 0: the rest is the event's JSON. Otherwise the rest is a Megolm
/// plaintext (any bytes) encrypted with alice's session, which bob has.
pub fn room_event_decryption(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let pair = pair().lock().unwrap_or_else(|e| e.into_inner());
    let event = if *mode == 0 {
        match serde_json::from_slice::<Value>(rest) {
            Ok(event) => event,
            Err(_) => return,
        }
    } else {
        let content = crate::crypto::tests::megolm_raw(&pair.alice, &rid(ROOM), rest);
        room_event(ROOM, pair.alice.user(), "$fuzz", content)
    };
    let _ = pair.bob.machine.decrypt_room_event(&rid(ROOM), &event);
}

/// A `/keys/query` answer, for a machine that asked about every user it names.
pub fn keys_query(data: &[u8]) {
    let Ok(response) = KeysQueryResponse::from_json(data) else {
        return;
    };
    static MACHINE: OnceLock<OlmMachine> = OnceLock::new();
    let machine = MACHINE.get_or_init(|| {
        OlmMachine::open(
            &uid("@me:localhost"),
            &did("ME"),
            Arc::new(MemoryStore::new()),
        )
        .expect("a machine on an empty store")
    });
    let users: Vec<OwnedUserId> = response.device_keys.keys().cloned().collect();
    if machine.update_tracked_users(&users).is_err() {
        return;
    }
    let Ok(requests) = machine.outgoing_requests() else {
        return;
    };
    for request in requests {
        if let OutgoingKind::KeysQuery(_) = request.kind {
            let _ = machine.mark_keys_query_sent(&request.id, &response);
        }
    }
}

/// Store rows: the first byte picks a column of a stored record, the rest is written into
/// it behind the store's back (a damaged or tampered file); then every read runs.
pub fn store_records(data: &[u8]) {
    let Some((which, value)) = data.split_first() else {
        return;
    };
    static STORE: OnceLock<(SqliteStore, tempfile_dir::Dir)> = OnceLock::new();
    static WRITTEN: OnceLock<Changes> = OnceLock::new();
    let (store, _dir) = STORE.get_or_init(|| {
        let dir = tempfile_dir::Dir::new();
        let store = SqliteStore::open(dir.path(), &StoreKey::from_bytes([9; 32]))
            .expect("a store in a fresh directory");
        (store, dir)
    });
    let written = WRITTEN.get_or_init(|| crate::store::conformance::full_changes("f"));
    let _ = store.save_changes(written.clone());
    let (table, column) = COLUMNS[usize::from(*which) % COLUMNS.len()];
    let Ok(conn) = rusqlite::Connection::open(store.path()) else {
        return;
    };
    let sql = format!("UPDATE {table} SET {column} = ?1");
    let _ = conn.execute(&sql, [value]);
    let _ = conn.execute(&sql, [String::from_utf8_lossy(value)]);
    read_everything(store, written);
}

/// Columns [`store_records`] writes into.
const COLUMNS: &[(&str, &str)] = &[
    ("account", "pickle"),
    ("account", "server_one_time_key_count"),
    ("olm_sessions", "pickle"),
    ("inbound_group_sessions", "pickle"),
    ("inbound_group_sessions", "sender_user"),
    ("inbound_group_sessions", "first_known_index"),
    ("outbound_group_sessions", "pickle"),
    ("outbound_group_sessions", "shared_with"),
    ("outbound_group_sessions", "message_count"),
    ("devices", "algorithms"),
    ("devices", "local_trust"),
    ("devices", "trust_tag"),
    ("devices", "deleted"),
    ("tracked_users", "state"),
    ("tracked_users", "sequence"),
    ("rooms", "members_synced"),
    ("members", "membership"),
    ("megolm_indices", "origin_ts"),
    ("pending_to_device", "messages_json"),
    ("send_queue", "content"),
    ("send_queue", "stage"),
    ("send_queue", "event_type"),
    ("send_queue", "echo"),
    ("send_queue", "stuck"),
    ("withheld_notices", "code"),
    ("key_requests", "request_id"),
    ("no_olm_room_keys", "session_key"),
    ("no_olm_room_keys", "message_index"),
    ("unwedged_devices", "unwedged_ms"),
    ("secret_values", "value"),
    ("meta", "value"),
];

/// Every read of `s`, for the records of `written` (the ids its rows are stored under).
fn read_everything(s: &SqliteStore, written: &Changes) {
    let room = &written.client.rooms[0].room_id;
    let user = &written.crypto.devices[0].user_id;
    let _ = s.account();
    let _ = s.generation();
    let _ = s.olm_sessions(&["sk-f"]);
    let _ = s.inbound_group_session(room, "igs1");
    let _ = s.outbound_group_session(room);
    let _ = s.devices(&[user]);
    let _ = s.devices_with_curve25519(&["curve-f"]);
    let _ = s.tracked_users();
    let _ = s.megolm_index("sk-f", "igs1", 1);
    let _ = s.rooms();
    let _ = s.members(room);
    let _ = s.pending_to_device();
    let _ = s.queued_sends();
    let _ = s.withheld_notice(room, "wh1", &written.crypto.withheld_notices[0].sender);
    let _ = s.key_request(room, "kr1");
    let _ = s.no_olm_room_key(room, "ogs1", 2);
    let _ = s.unwedge_record("curve-f");
    let _ = s.counts();
    let _ = s.secret_value("s-f");
    let _ = s.sharing_policy();
    let _ = s.sync_token();
}

/// A directory removed when the process ends (no `tempfile` in the library).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub(super) struct Dir(PathBuf);

    impl Dir {
        pub(super) fn new() -> Self {
            let path = std::env::temp_dir().join(format!("newt-fuzz-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Self(path)
        }

        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A `/keys/query` answer with a cross-signing identity and a device it signed (fresh keys).
pub fn cross_signed_query() -> String {
    let Ok(machine) = OlmMachine::open(
        &uid("@u:localhost"),
        &did("D"),
        Arc::new(MemoryStore::new()),
    ) else {
        return String::new();
    };
    let Ok(upload) = machine.bootstrap_cross_signing() else {
        return String::new();
    };
    let keys = &upload.keys;
    json!({"device_keys": {"@u:localhost": {"D": upload.signatures["@u:localhost"]["D"]}},
        "master_keys": {"@u:localhost": keys["master_key"]},
        "self_signing_keys": {"@u:localhost": keys["self_signing_key"]},
        "user_signing_keys": {"@u:localhost": keys["user_signing_key"]}})
    .to_string()
}

/// Inputs that reach each harness's interesting paths (also the fuzz corpus seeds).
pub fn seeds() -> Vec<Vec<u8>> {
    let payload = json!({"type": "m.room_key", "content": {"algorithm": "m.megolm.v1.aes-sha2",
        "room_id": ROOM, "session_id": "x", "session_key": "AAAA"}, "sender": "@alice:localhost",
        "sender_device": "ALICE", "recipient": "@bob:localhost",
        "recipient_keys": {"ed25519": "x"}, "keys": {"ed25519": "y"}});
    let events = json!([{"type": "m.room_key.withheld", "sender": "@alice:localhost",
        "content": {"room_id": ROOM, "session_id": "s", "code": "m.unverified"}}]);
    let verification = json!([
        {"type": "m.key.verification.request", "sender": "@alice:localhost", "content": {
            "from_device": "ALICE", "transaction_id": "t", "methods": ["m.sas.v1"],
            "timestamp": 0}},
        {"type": "m.key.verification.start", "sender": "@alice:localhost", "content": {
            "from_device": "ALICE", "transaction_id": "t", "method": "m.sas.v1",
            "key_agreement_protocols": ["curve25519-hkdf-sha256"], "hashes": ["sha256"],
            "message_authentication_codes": ["hkdf-hmac-sha256.v2"],
            "short_authentication_string": ["decimal", "emoji"]}},
        {"type": "m.key.verification.key", "sender": "@alice:localhost", "content": {
            "transaction_id": "t", "key": "AAAA"}},
        {"type": "m.key.verification.mac", "sender": "@alice:localhost", "content": {
            "transaction_id": "t", "mac": {"ed25519:ALICE": "AAAA"}, "keys": "AAAA"}},
        {"type": "m.key.verification.cancel", "sender": "@alice:localhost", "content": {
            "transaction_id": "t", "code": "m.user", "reason": "x"}}]);
    let decrypted = json!({"type": "m.room.message", "room_id": ROOM,
        "content": {"msgtype": "m.text", "body": "hi"}});
    let query = json!({"device_keys": {"@u:localhost": {"D": {"user_id": "@u:localhost",
        "device_id": "D", "keys": {}}}}, "failures": {"x": {}}});
    vec![
        cross_signed_query().into_bytes(),
        [&[1u8][..], payload.to_string().as_bytes()].concat(),
        [&[2u8][..], payload.to_string().as_bytes()].concat(),
        [&[0u8][..], events.to_string().as_bytes()].concat(),
        [&[0u8][..], verification.to_string().as_bytes()].concat(),
        [&[1u8][..], decrypted.to_string().as_bytes()].concat(),
        query.to_string().into_bytes(),
        [&[7u8][..], b"{\"not\": \"a pickle\"}"].concat(),
        vec![],
        vec![0],
    ]
}

#[cfg(test)]
mod tests {
    /// The harnesses run (and do not panic) on a few inputs of every mode; the fuzz
    /// corpus seeds come from the same shapes.
    #[test]
    fn harnesses_take_every_kind_of_input() {
        for data in super::seeds() {
            super::to_device(&data);
            super::room_event_decryption(&data);
            super::keys_query(&data);
            super::store_records(&data);
        }
    }
}
