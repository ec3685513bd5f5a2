//! An attacker's toolkit: a raw Matrix client that speaks HTTP with [`crate::http_request`]
//! and does its own Olm with vodozemac, so that it can send what a well-behaved client never
//! would (squatted keys, forwarded keys nobody asked for, notices in clear).
//!
//! ```no_run
//! # use newt_e2e_tests::{Synapse, attacker::Attacker};
//! # let hs = Synapse::start();
//! let mut mallory = Attacker::register(&hs, "mallory");
//! mallory.publish_keys(10);
//! let bob = mallory.query_device("@bob:localhost", "BOBDEVICE");
//! mallory.open_olm_session(&bob);
//! mallory.send_olm(&bob, "m.dummy", serde_json::json!({}));
//! ```
//!
//! Everything here panics on failure: it is test code, and a failing attack step must stop
//! the test loudly rather than make a "nothing happened" assertion pass.

use std::collections::HashMap;

use newt_core::crypto::signing::sign_json_with;
use serde_json::{Value, json};
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, OlmMessage, PreKeyMessage, Session, SessionConfig};

use crate::{Synapse, http_request};

/// Olm algorithm name (`m.room.encrypted` to-device content).
pub const OLM: &str = "m.olm.v1.curve25519-aes-sha2";
/// Megolm algorithm name.
pub const MEGOLM: &str = "m.megolm.v1.aes-sha2";

/// A device of some user as published on the server: what an Olm message to it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDevice {
    /// Owner.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// Curve25519 identity key (base64).
    pub curve25519: String,
    /// Ed25519 fingerprint key (base64).
    pub ed25519: String,
}

/// A logged-in attacker device: an access token and its own Olm account.
pub struct Attacker {
    /// Homeserver base URL.
    pub base_url: String,
    /// `@name:localhost`.
    pub user_id: String,
    /// The device the login created (or asked for).
    pub device_id: String,
    access_token: String,
    /// The device's Olm account (identity keys and one-time keys).
    pub account: Account,
    /// Olm sessions by the other device's Curve25519 key, newest first.
    sessions: HashMap<String, Vec<Session>>,
    /// `next_batch` of the last `/sync`.
    since: Option<String>,
    /// Transaction ids are `txn-N`.
    txn: u64,
}

/// Percent-encode one path segment (ids contain `!`, `@`, `:`, `$`, `#`).
pub fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Signed device keys for `user_id`/`device_id` naming `curve25519` as the identity key and
/// `account`'s Ed25519 key, self-signed with that key (canonical JSON). `curve25519` need not
/// be the account's own: a squatter publishes someone else's.
pub fn signed_device_keys(
    account: &Account,
    user_id: &str,
    device_id: &str,
    curve25519: &str,
) -> Value {
    let mut keys = json!({
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": [OLM, MEGOLM],
        "keys": {
            format!("curve25519:{device_id}"): curve25519,
            format!("ed25519:{device_id}"): account.ed25519_key().to_base64(),
        },
    });
    sign_json_with(
        &mut keys,
        user_id,
        &format!("ed25519:{device_id}"),
        |bytes| account.sign(bytes),
    )
    .expect("sign device keys");
    keys
}

impl Attacker {
    /// Register `@name:localhost` (password `name-pw`) and log in on a new device.
    pub fn register(hs: &Synapse, name: &str) -> Attacker {
        let password = format!("{name}-pw");
        hs.register(name, &password);
        Attacker::login(&hs.base_url, name, &password, None)
    }

    /// Log in as `user` with `password` (`m.login.password`), on `device_id` if given (the
    /// server picks one otherwise). Any user's password will do: this is how an attacker
    /// who stole it adds a device to the victim's own account.
    pub fn login(base_url: &str, user: &str, password: &str, device_id: Option<&str>) -> Attacker {
        let mut body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        });
        if let Some(device) = device_id {
            body["device_id"] = device.into();
        }
        let (status, text) = http_request(
            base_url,
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(&body.to_string()),
        );
        assert_eq!(status, 200, "attacker login as {user}: {text}");
        let answer: Value = serde_json::from_str(&text).expect("login answer is JSON");
        let field = |name: &str| answer[name].as_str().expect(name).to_owned();
        Attacker {
            base_url: base_url.to_owned(),
            user_id: field("user_id"),
            device_id: field("device_id"),
            access_token: field("access_token"),
            account: Account::new(),
            sessions: HashMap::new(),
            since: None,
            txn: 0,
        }
    }

    /// A fresh transaction id.
    fn next_txn(&mut self) -> String {
        self.txn += 1;
        format!("attacker-txn-{}", self.txn)
    }

    /// `method` on `/_matrix/client/v3{path}` with the access token; panics unless 2xx.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, answer) = self.try_api(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path} answered {status}: {answer}"
        );
        answer
    }

    /// Like [`Self::api`], returning the status and the (JSON, or `null`) body.
    pub fn try_api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        let (status, text) = http_request(
            &self.base_url,
            method,
            &format!("/_matrix/client/v3{path}"),
            Some(&self.access_token),
            body.as_deref(),
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Our Curve25519 identity key.
    pub fn curve25519(&self) -> String {
        self.account.curve25519_key().to_base64()
    }

    /// Our Ed25519 fingerprint key.
    pub fn ed25519(&self) -> String {
        self.account.ed25519_key().to_base64()
    }

    /// Our device as others see it once published.
    pub fn as_device(&self) -> RemoteDevice {
        RemoteDevice {
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            curve25519: self.curve25519(),
            ed25519: self.ed25519(),
        }
    }

    /// Upload our honest device keys and `one_time_keys` signed one-time keys.
    pub fn publish_keys(&mut self, one_time_keys: usize) {
        let keys = signed_device_keys(
            &self.account,
            &self.user_id,
            &self.device_id,
            &self.curve25519(),
        );
        self.upload_keys(keys, one_time_keys);
    }

    /// Upload `device_keys` (whatever they say) and `one_time_keys` new signed one-time keys
    /// of our account.
    pub fn upload_keys(&mut self, device_keys: Value, one_time_keys: usize) {
        self.account.generate_one_time_keys(one_time_keys);
        let mut otks = serde_json::Map::new();
        for (id, key) in self.account.one_time_keys() {
            let mut signed = json!({"key": key.to_base64()});
            let key_id = format!("ed25519:{}", self.device_id);
            sign_json_with(&mut signed, &self.user_id, &key_id, |b| {
                self.account.sign(b)
            })
            .expect("sign a one-time key");
            otks.insert(format!("signed_curve25519:{}", id.to_base64()), signed);
        }
        let body = json!({"device_keys": device_keys, "one_time_keys": otks});
        self.api("POST", "/keys/upload", Some(&body));
        self.account.mark_keys_as_published();
    }

    /// The published keys of `user`'s `device` (`POST /keys/query`).
    pub fn query_device(&self, user: &str, device: &str) -> RemoteDevice {
        let answer = self.api(
            "POST",
            "/keys/query",
            Some(&json!({"device_keys": {user: []}})),
        );
        let keys = &answer["device_keys"][user][device]["keys"];
        let key = |algorithm: &str| {
            keys[format!("{algorithm}:{device}")]
                .as_str()
                .unwrap_or_else(|| panic!("{user}/{device} has no {algorithm} key: {answer}"))
                .to_owned()
        };
        RemoteDevice {
            user_id: user.to_owned(),
            device_id: device.to_owned(),
            curve25519: key("curve25519"),
            ed25519: key("ed25519"),
        }
    }

    /// All devices `user` published, as the server lists them (ids and raw keys).
    pub fn query_user(&self, user: &str) -> Value {
        let answer = self.api(
            "POST",
            "/keys/query",
            Some(&json!({"device_keys": {user: []}})),
        );
        answer["device_keys"][user].clone()
    }

    /// Claim one of `device`'s one-time keys (`POST /keys/claim`).
    pub fn claim_one_time_key(&self, device: &RemoteDevice) -> Curve25519PublicKey {
        let body =
            json!({"one_time_keys": {&device.user_id: {&device.device_id: "signed_curve25519"}}});
        let answer = self.api("POST", "/keys/claim", Some(&body));
        let keys = answer["one_time_keys"][&device.user_id][&device.device_id]
            .as_object()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| panic!("no one-time key for {device:?}: {answer}"));
        let key = keys.values().next().expect("one key")["key"]
            .as_str()
            .expect("a key string");
        Curve25519PublicKey::from_base64(key).expect("a Curve25519 one-time key")
    }

    /// Claim a one-time key of `device` and start an outbound Olm session with it; later
    /// [`Self::send_olm`] calls use it.
    pub fn open_olm_session(&mut self, device: &RemoteDevice) {
        let one_time_key = self.claim_one_time_key(device);
        let identity =
            Curve25519PublicKey::from_base64(&device.curve25519).expect("a Curve25519 key");
        let session = self
            .account
            .create_outbound_session(SessionConfig::version_1(), identity, one_time_key)
            .expect("create an outbound Olm session");
        self.sessions
            .entry(device.curve25519.clone())
            .or_default()
            .insert(0, session);
    }

    /// The plaintext of an honest Olm message from us to `device`: `{type, content, sender,
    /// sender_device, recipient, recipient_keys, keys}`. Callers may edit it before
    /// [`Self::send_olm_payload`].
    pub fn olm_payload(&self, device: &RemoteDevice, event_type: &str, content: Value) -> Value {
        json!({
            "type": event_type,
            "content": content,
            "sender": self.user_id,
            "sender_device": self.device_id,
            "recipient": device.user_id,
            "recipient_keys": {"ed25519": device.ed25519},
            "keys": {"ed25519": self.ed25519()},
        })
    }

    /// Send `event_type` with `content` to `device`, Olm-encrypted with an honest payload.
    pub fn send_olm(&mut self, device: &RemoteDevice, event_type: &str, content: Value) {
        let payload = self.olm_payload(device, event_type, content);
        self.send_olm_payload(device, &payload);
    }

    /// Encrypt `payload` (any JSON) over our newest Olm session with `device` and send it as
    /// an `m.room.encrypted` to-device event (`m.olm.v1.curve25519-aes-sha2`).
    pub fn send_olm_payload(&mut self, device: &RemoteDevice, payload: &Value) {
        let session = self
            .sessions
            .get_mut(&device.curve25519)
            .and_then(|s| s.first_mut())
            .unwrap_or_else(|| panic!("no Olm session with {device:?}: open_olm_session first"));
        let message = session
            .encrypt(payload.to_string())
            .expect("Olm encryption");
        let (message_type, body) = match message {
            OlmMessage::PreKey(m) => (0, m.to_base64()),
            OlmMessage::Normal(m) => (1, m.to_base64()),
        };
        let content = json!({
            "algorithm": OLM,
            "sender_key": self.curve25519(),
            "ciphertext": {&device.curve25519: {"type": message_type, "body": body}},
        });
        self.send_to_device(
            "m.room.encrypted",
            &device.user_id,
            &device.device_id,
            content,
        );
    }

    /// `PUT /sendToDevice/{event_type}/{txn}` with `content` for `user`'s `device` (`*`: all
    /// of them), in clear.
    pub fn send_to_device(&mut self, event_type: &str, user: &str, device: &str, content: Value) {
        let txn = self.next_txn();
        let path = format!(
            "/sendToDevice/{}/{}",
            encode_segment(event_type),
            encode_segment(&txn)
        );
        let body = json!({"messages": {user: {device: content}}});
        self.api("PUT", &path, Some(&body));
    }

    /// Join `room` (by id).
    pub fn join(&self, room: &str) {
        self.api(
            "POST",
            &format!("/join/{}", encode_segment(room)),
            Some(&json!({})),
        );
    }

    /// Send a raw room event of `event_type` with `content`; returns its event id.
    pub fn send_room_event(&mut self, room: &str, event_type: &str, content: Value) -> String {
        let txn = self.next_txn();
        let path = format!(
            "/rooms/{}/send/{}/{}",
            encode_segment(room),
            encode_segment(event_type),
            encode_segment(&txn)
        );
        let answer = self.api("PUT", &path, Some(&content));
        answer["event_id"].as_str().expect("an event id").to_owned()
    }

    /// The latest events of `room` the server shows us (`GET /messages`, newest first).
    pub fn room_messages(&self, room: &str) -> Vec<Value> {
        let path = format!("/rooms/{}/messages?dir=b&limit=50", encode_segment(room));
        let answer = self.api("GET", &path, None);
        answer["chunk"].as_array().cloned().unwrap_or_default()
    }

    /// All the events of a room the server gives this user, oldest first (paginated).
    pub fn all_room_messages(&self, room: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from = String::new();
        loop {
            let path = format!(
                "/rooms/{}/messages?dir=f&limit=100{from}",
                encode_segment(room)
            );
            let answer = self.api("GET", &path, None);
            let chunk = answer["chunk"].as_array().cloned().unwrap_or_default();
            if chunk.is_empty() {
                return events;
            }
            events.extend(chunk);
            match answer["end"].as_str() {
                Some(end) => from = format!("&from={}", encode_segment(end)),
                None => return events,
            }
        }
    }

    /// The Megolm `(session id, message index)` of each encrypted event `sender` sent in
    /// `room`, oldest first.
    pub fn megolm_indices(&self, room: &str, sender: &str) -> Vec<(String, u32)> {
        let events = self.all_room_messages(room);
        let ours = events.into_iter().filter(|e| e["sender"] == sender);
        let encrypted = ours.filter(|e| e["type"] == "m.room.encrypted");
        encrypted
            .map(|e| {
                let content = &e["content"];
                let ciphertext = content["ciphertext"].as_str().unwrap_or_default();
                let message = vodozemac::megolm::MegolmMessage::from_base64(ciphertext)
                    .expect("a Megolm message");
                let session = content["session_id"].as_str().unwrap_or_default();
                (session.to_owned(), message.message_index())
            })
            .collect()
    }

    /// Per Megolm session of `sender`'s events in `room`, the indices on the server are
    /// exactly 0, 1, 2, ...: none skipped (a ratchet wasted) or used twice.
    pub fn assert_each_index_used_once(&self, room: &str, sender: &str) {
        let mut by_session: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for (session, index) in self.megolm_indices(room, sender) {
            by_session.entry(session).or_default().push(index);
        }
        for (session, indices) in by_session {
            let expected: Vec<u32> = (0..indices.len() as u32).collect();
            assert_eq!(
                indices, expected,
                "session {session}: an index skipped or reused"
            );
        }
    }

    /// One `/sync` (no long-polling) from where the last one ended.
    pub fn sync(&mut self) -> Value {
        let path = match &self.since {
            Some(since) => format!("/sync?timeout=0&since={}", encode_segment(since)),
            None => "/sync?timeout=0".to_owned(),
        };
        let answer = self.api("GET", &path, None);
        self.since = answer["next_batch"].as_str().map(str::to_owned);
        answer
    }

    /// Sync once and decrypt the Olm to-device events addressed to us; returns their
    /// plaintext payloads (`{type, content, sender, ...}`). Others are left out.
    pub fn sync_olm_payloads(&mut self) -> Vec<Value> {
        let answer = self.sync();
        let events = answer["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        events
            .iter()
            .filter(|e| e["type"] == "m.room.encrypted")
            .filter_map(|e| self.decrypt_olm(&e["content"]))
            .collect()
    }

    /// Decrypt `m.room.encrypted` to-device content with our sessions (creating an inbound
    /// one from a pre-key message); `None` if it is not for us or does not decrypt.
    pub fn decrypt_olm(&mut self, content: &Value) -> Option<Value> {
        let sender_key = content["sender_key"].as_str()?.to_owned();
        let ours = &content["ciphertext"][self.curve25519()];
        let body = ours["body"].as_str()?;
        let message = match ours["type"].as_u64()? {
            0 => OlmMessage::PreKey(PreKeyMessage::from_base64(body).ok()?),
            1 => OlmMessage::Normal(vodozemac::olm::Message::from_base64(body).ok()?),
            _ => return None,
        };
        let sessions = self.sessions.entry(sender_key.clone()).or_default();
        for session in sessions.iter_mut() {
            if let Ok(plaintext) = session.decrypt(&message) {
                return serde_json::from_slice(&plaintext).ok();
            }
        }
        let OlmMessage::PreKey(pre_key) = message else {
            return None;
        };
        let identity = Curve25519PublicKey::from_base64(&sender_key).ok()?;
        let created = self
            .account
            .create_inbound_session(SessionConfig::version_1(), identity, &pre_key)
            .ok()?;
        // Newest first: replies go over the session the other side just started.
        self.sessions
            .entry(sender_key)
            .or_default()
            .insert(0, created.session);
        serde_json::from_slice(&created.plaintext).ok()
    }
}
