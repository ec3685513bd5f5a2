//! Interoperability checker: Newt (newt-core) <-> matrix-sdk-crypto 0.18 (Element X).
//!
//!   interop element-to-newt [DIR]  A: matrix-sdk-crypto writes fixtures into DIR (default
//!                                  out/), then Newt reads them back from disk (A1-A3)
//!   interop verify [DIR]           A with Newt only: check existing fixtures in DIR
//!   interop newt-to-element        B: Newt writes, matrix-sdk-crypto reads (B1-B3)
//!   interop all [DIR]              both (default)

use std::io::Cursor;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

const MSC_VERSION: &str = "matrix-sdk-crypto 0.18.0";
const PASSPHRASE: &str = "interop passphrase";
const ROUNDS: u32 = 1000;

type R<T> = Result<T, String>;

fn e<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |err| format!("{what}: {err:?}")
}

struct Report {
    results: Vec<(String, bool, String)>,
}

impl Report {
    fn record(&mut self, name: &str, r: R<String>) {
        match r {
            Ok(detail) => {
                println!("PASS {name}: {detail}");
                self.results.push((name.into(), true, detail));
            }
            Err(why) => {
                println!("FAIL {name}: {why}");
                self.results.push((name.into(), false, why));
            }
        }
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> R<()> {
    if cond { Ok(()) } else { Err(msg()) }
}

// ---------------------------------------------------------------------------------------
// A. matrix-sdk-crypto -> files
// ---------------------------------------------------------------------------------------

mod element {
    use super::*;
    use matrix_sdk_crypto::backups::MegolmV1BackupKey;
    use matrix_sdk_crypto::olm::ExportedRoomKey;
    use matrix_sdk_crypto::secret_storage::SecretStorageKey;
    use matrix_sdk_crypto::store::types::BackupDecryptionKey;
    use matrix_sdk_crypto::{EncryptionSettings, OlmMachine, encrypt_room_key_export};
    use ruma16::events::secret::request::SecretName;
    use ruma16::serde::Raw;
    use ruma16::{OwnedRoomId, RoomId, UserId};

    pub(crate) struct Sent {
        pub room_id: OwnedRoomId,
        pub sender: String,
        pub sender_key: String,
        pub sender_ed25519: String,
        pub session_id: String,
        pub content: Value,
        pub plaintext: Value,
    }

    async fn send(machine: &OlmMachine, room: &RoomId, body: &str) -> R<Sent> {
        let no_users: Vec<&UserId> = Vec::new();
        machine
            .share_room_key(room, no_users.into_iter(), EncryptionSettings::default())
            .await
            .map_err(e("share_room_key"))?;
        let content = json!({"msgtype": "m.text", "body": body});
        let raw = Raw::new(&content).map_err(e("raw"))?.cast_unchecked();
        let result = machine
            .encrypt_room_event_raw(room, "m.room.message", &raw)
            .await
            .map_err(e("encrypt_room_event_raw"))?;
        let content: Value =
            serde_json::from_str(result.content.json().get()).map_err(e("content json"))?;
        let session_id = content["session_id"]
            .as_str()
            .ok_or("no session_id in content")?
            .to_owned();
        let keys = machine.identity_keys();
        Ok(Sent {
            room_id: room.to_owned(),
            sender: machine.user_id().to_string(),
            sender_key: keys.curve25519.to_base64(),
            sender_ed25519: keys.ed25519.to_base64(),
            session_id,
            content,
            plaintext: json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}, "room_id": room.as_str()}),
        })
    }

    fn event_json(s: &Sent, n: usize) -> Value {
        json!({
            "type": "m.room.encrypted",
            "event_id": format!("$element-event-{n}"),
            "sender": s.sender,
            "origin_server_ts": 1_700_000_000_000u64 + n as u64,
            "room_id": s.room_id.as_str(),
            "content": s.content,
        })
    }

    fn session_json(s: &Sent, n: usize) -> Value {
        json!({
            "room_id": s.room_id.as_str(),
            "session_id": s.session_id,
            "sender": s.sender,
            "sender_key": s.sender_key,
            "sender_ed25519": s.sender_ed25519,
            "event": event_json(s, n),
            "expected_plaintext": s.plaintext,
        })
    }

    pub(crate) async fn generate(dir: &Path) -> R<()> {
        std::fs::create_dir_all(dir).map_err(e("mkdir"))?;
        let alice = OlmMachine::new(
            <&UserId>::try_from("@alice:example.org").map_err(e("uid"))?,
            "ALICEDEVICE".into(),
        )
        .await;
        let bob = OlmMachine::new(
            <&UserId>::try_from("@bob:example.org").map_err(e("uid"))?,
            "BOBDEVICE".into(),
        )
        .await;
        let room1 = <&RoomId>::try_from("!room1:example.org").map_err(e("rid"))?;
        let room2 = <&RoomId>::try_from("!room2:example.org").map_err(e("rid"))?;
        let sent = vec![
            send(&alice, room1, "hello from alice in room 1").await?,
            send(&alice, room2, "hello from alice in room 2").await?,
            send(&bob, room2, "hello from bob in room 2").await?,
        ];
        write_export(dir, &alice, &bob, &sent).await?;
        write_devices(dir, &alice, &bob).await?;
        let decryption_key = write_backup(dir, &alice, &sent[0]).await?;
        write_secret_storage(dir, &decryption_key)
    }

    /// A1: the export file of alice's and bob's sessions, and what they encrypted.
    async fn write_export(
        dir: &Path,
        alice: &OlmMachine,
        bob: &OlmMachine,
        sent: &[Sent],
    ) -> R<()> {
        let mut keys: Vec<ExportedRoomKey> = alice
            .store()
            .export_room_keys(|_| true)
            .await
            .map_err(e("export alice"))?;
        keys.extend(
            bob.store()
                .export_room_keys(|_| true)
                .await
                .map_err(e("export bob"))?,
        );
        ensure(keys.len() == 3, || format!("{} keys exported", keys.len()))?;
        let file = encrypt_room_key_export(&keys, PASSPHRASE, ROUNDS).map_err(e("export"))?;
        std::fs::write(dir.join("element-export.txt"), &file).map_err(e("write"))?;
        let meta = json!({
            "produced_by": format!("{MSC_VERSION}: OlmMachine::share_room_key + encrypt_room_event_raw, Store::export_room_keys, encrypt_room_key_export"),
            "what": "element-export.txt is a key export file (spec 'Key exports') of the Megolm sessions below; each event was encrypted with its session at index 0",
            "export_file": "element-export.txt",
            "passphrase": PASSPHRASE,
            "rounds": ROUNDS,
            "sessions": sent.iter().enumerate().map(|(n, s)| session_json(s, n)).collect::<Vec<_>>(),
        });
        write_json(&dir.join("element-export.json"), &meta)
    }

    /// The senders' devices as /keys/query answers them (signed by each device).
    async fn write_devices(dir: &Path, alice: &OlmMachine, bob: &OlmMachine) -> R<()> {
        let mut device_keys = serde_json::Map::new();
        for m in [alice, bob] {
            let device = m
                .get_device(m.user_id(), m.device_id(), None)
                .await
                .map_err(e("get_device"))?
                .ok_or("own device not stored")?;
            let keys = serde_json::to_value(device.as_device_keys()).map_err(e("device keys"))?;
            device_keys.insert(
                m.user_id().to_string(),
                json!({ m.device_id().as_str(): keys }),
            );
        }
        let query = json!({
            "produced_by": format!("{MSC_VERSION}: OlmMachine::get_device(own).as_device_keys"),
            "what": "a /keys/query answer with the devices of the senders above (alice's and bob's, each signed by itself)",
            "device_keys": device_keys,
            "failures": {},
        });
        write_json(&dir.join("keys-query.json"), &query)
    }

    /// A2: a key backup entry of alice's room 1 session; the backup's key.
    async fn write_backup(dir: &Path, alice: &OlmMachine, s: &Sent) -> R<BackupDecryptionKey> {
        let decryption_key = BackupDecryptionKey::new();
        let backup_key: MegolmV1BackupKey = decryption_key.megolm_v1_public_key();
        backup_key.set_version("1".to_owned());
        let session = alice
            .store()
            .get_inbound_group_session(&s.room_id, &s.session_id)
            .await
            .map_err(e("get session"))?
            .ok_or("session not in store")?;
        let data = backup_key
            .encrypt(session)
            .await
            .map_err(e("backup encrypt"))?;
        let backup = json!({
            "produced_by": format!("{MSC_VERSION}: BackupDecryptionKey::new/to_base58, MegolmV1BackupKey::encrypt"),
            "what": "a key backup (m.megolm_backup.v1.curve25519-aes-sha2) entry of one session; recovery_key decodes to the private key of public_key; key_backup_data is the KeyBackupData of PUT /room_keys/keys/{room_id}/{session_id}",
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "recovery_key": decryption_key.to_base58(),
            "public_key": backup_key.to_base64(),
            "room_id": s.room_id.as_str(),
            "session_id": s.session_id,
            "key_backup_data": serde_json::to_value(&data).map_err(e("kbd json"))?,
            "event": event_json(s, 0),
            "expected_plaintext": s.plaintext,
        });
        write_json(&dir.join("backup.json"), &backup)?;
        Ok(decryption_key)
    }

    /// A3: a secret storage key, its description, and the backup key stored as a secret.
    fn write_secret_storage(dir: &Path, decryption_key: &BackupDecryptionKey) -> R<()> {
        let ssss = SecretStorageKey::new();
        let secret = decryption_key.to_base64();
        let name = SecretName::from("m.megolm_backup.v1");
        let encrypted = ssss.encrypt(secret.as_bytes().to_vec(), &name);
        let key_id = ssss.key_id().to_owned();
        let ss = json!({
            "produced_by": format!("{MSC_VERSION}: secret_storage::SecretStorageKey::new/event_content/to_base58/encrypt"),
            "what": "secret storage (m.secret_storage.v1.aes-hmac-sha2): the key description (account data m.secret_storage.key.<key_id>), the key as a recovery key, and the secret m.megolm_backup.v1 (account data of that type) encrypted with it",
            "key_id": key_id,
            "key_description_type": ssss.event_type().to_string(),
            "key_description": serde_json::to_value(ssss.event_content()).map_err(e("desc json"))?,
            "recovery_key": ssss.to_base58(),
            "secret_name": "m.megolm_backup.v1",
            "encrypted_secret": { "encrypted": { key_id.clone(): serde_json::to_value(&encrypted).map_err(e("secret json"))? } },
            "expected_secret": secret,
        });
        write_json(&dir.join("secret-storage.json"), &ss)
    }

    fn write_json(path: &Path, v: &Value) -> R<()> {
        let text = serde_json::to_string_pretty(v).map_err(e("json"))? + "\n";
        std::fs::write(path, text).map_err(e("write"))
    }
}

// ---------------------------------------------------------------------------------------
// A. Newt reads the files
// ---------------------------------------------------------------------------------------

mod newt_reads {
    use super::*;
    use newt_core::backup::{
        BackupKey, EncryptedSecret, KeyDescription, SecretStorageKey, decrypt_session,
    };
    use newt_core::key_export;
    use newt_core::ruma::api::client::backup::EncryptedSessionData;
    use newt_core::ruma::{OwnedRoomId, RoomId};
    use vodozemac::megolm::{
        ExportedSessionKey, InboundGroupSession, MegolmMessage, SessionConfig,
    };

    fn read_json(path: &Path) -> R<Value> {
        let text = std::fs::read_to_string(path).map_err(|x| format!("{}: {x}", path.display()))?;
        serde_json::from_str(&text).map_err(e("json"))
    }

    fn s<'a>(v: &'a Value, k: &str) -> R<&'a str> {
        v[k].as_str().ok_or_else(|| format!("missing string {k}"))
    }

    /// Decrypt `event`'s Megolm ciphertext with `session_key` and compare with `expected`.
    fn decrypt_event(session_key: &str, event: &Value, expected: &Value) -> R<()> {
        let key = ExportedSessionKey::from_base64(session_key).map_err(e("session key"))?;
        let mut inbound = InboundGroupSession::import(&key, SessionConfig::version_1());
        let content = &event["content"];
        ensure(content["algorithm"] == "m.megolm.v1.aes-sha2", || {
            format!("algorithm {}", content["algorithm"])
        })?;
        ensure(inbound.session_id() == s(content, "session_id")?, || {
            "session id differs".into()
        })?;
        let msg = MegolmMessage::from_base64(s(content, "ciphertext")?).map_err(e("ciphertext"))?;
        let out = inbound.decrypt(&msg).map_err(e("megolm decrypt"))?;
        let got: Value = serde_json::from_slice(&out.plaintext).map_err(e("plaintext json"))?;
        ensure(&got == expected, || {
            format!("plaintext {got} != {expected}")
        })
    }

    pub(crate) fn a1(dir: &Path) -> R<String> {
        let meta = read_json(&dir.join("element-export.json"))?;
        let text =
            std::fs::read_to_string(dir.join(s(&meta, "export_file")?)).map_err(e("read"))?;
        let keys = key_export::decrypt(&text, s(&meta, "passphrase")?)
            .map_err(e("newt key_export::decrypt"))?;
        let sessions = meta["sessions"].as_array().ok_or("no sessions")?;
        ensure(keys.len() == sessions.len(), || {
            format!("{} keys, {} sessions", keys.len(), sessions.len())
        })?;
        let mut rooms = std::collections::BTreeSet::new();
        for sess in sessions {
            let sid = s(sess, "session_id")?;
            let room: OwnedRoomId = s(sess, "room_id")?.try_into().map_err(e("room id"))?;
            let k = keys
                .iter()
                .find(|k| k.session_id == sid && k.room_id == room)
                .ok_or_else(|| format!("session {sid} not in export"))?;
            ensure(k.algorithm == "m.megolm.v1.aes-sha2", || {
                format!("algorithm {}", k.algorithm)
            })?;
            ensure(k.sender_key == s(sess, "sender_key")?, || {
                "sender_key differs".into()
            })?;
            ensure(
                k.sender_claimed_keys.get("ed25519").map(String::as_str)
                    == Some(s(sess, "sender_ed25519")?),
                || format!("sender_claimed_keys {:?}", k.sender_claimed_keys),
            )?;
            ensure(k.forwarding_curve25519_key_chain.is_empty(), || {
                "forwarding chain not empty".into()
            })?;
            decrypt_event(&k.session_key, &sess["event"], &sess["expected_plaintext"])?;
            rooms.insert(room);
        }
        Ok(format!(
            "{} keys in {} rooms read, {} events decrypted",
            keys.len(),
            rooms.len(),
            sessions.len()
        ))
    }

    pub(crate) fn a2(dir: &Path) -> R<String> {
        let b = read_json(&dir.join("backup.json"))?;
        let key =
            BackupKey::from_recovery_key(s(&b, "recovery_key")?).map_err(e("from_recovery_key"))?;
        ensure(key.public_key_base64() == s(&b, "public_key")?, || {
            format!(
                "public key {} != {}",
                key.public_key_base64(),
                b["public_key"]
            )
        })?;
        let theirs: String = s(&b, "recovery_key")?.split_whitespace().collect();
        let ours: String = key.to_recovery_key().split_whitespace().collect();
        ensure(ours == theirs, || "re-encoded recovery key differs".into())?;
        let data: EncryptedSessionData =
            serde_json::from_value(b["key_backup_data"]["session_data"].clone())
                .map_err(e("session_data"))?;
        let room: &RoomId = s(&b, "room_id")?.try_into().map_err(e("room id"))?;
        let k = decrypt_session(&key, room, s(&b, "session_id")?, &data)
            .map_err(e("decrypt_session"))?;
        ensure(k.algorithm == "m.megolm.v1.aes-sha2", || {
            format!("algorithm {}", k.algorithm)
        })?;
        ensure(
            k.sender_key == s(&b["event"]["content"], "sender_key").unwrap_or(&k.sender_key),
            || "sender_key differs".into(),
        )?;
        decrypt_event(&k.session_key, &b["event"], &b["expected_plaintext"])?;
        Ok(
            "recovery key decoded, public key matches, session_data decrypted, event decrypted"
                .into(),
        )
    }

    pub(crate) fn a3(dir: &Path) -> R<String> {
        let j = read_json(&dir.join("secret-storage.json"))?;
        let id = s(&j, "key_id")?;
        let key = SecretStorageKey::from_recovery_key(id, s(&j, "recovery_key")?)
            .map_err(e("from_recovery_key"))?;
        ensure(*key.to_recovery_key() == *s(&j, "recovery_key")?, || {
            "re-encoded recovery key differs".into()
        })?;
        let desc: KeyDescription =
            serde_json::from_value(j["key_description"].clone()).map_err(e("KeyDescription"))?;
        key.check(&desc).map_err(e("check"))?;
        // A wrong key must fail the check.
        let wrong = SecretStorageKey::new();
        ensure(wrong.check(&desc).is_err(), || {
            "a wrong key passed the check".into()
        })?;
        let name = s(&j, "secret_name")?;
        let enc: EncryptedSecret =
            serde_json::from_value(j["encrypted_secret"]["encrypted"][id].clone())
                .map_err(e("EncryptedSecret"))?;
        let secret = key.decrypt(name, &enc).map_err(e("decrypt"))?;
        ensure(*secret == *s(&j, "expected_secret")?, || {
            "secret differs".into()
        })?;
        ensure(key.decrypt("m.other", &enc).is_err(), || {
            "decrypted under another name".into()
        })?;
        Ok(
            "recovery key decoded, description check passes (wrong key refused), secret decrypted"
                .into(),
        )
    }
}

// ---------------------------------------------------------------------------------------
// B. Newt writes, matrix-sdk-crypto reads
// ---------------------------------------------------------------------------------------

mod newt_to_element {
    use super::*;
    use matrix_sdk_crypto::olm::ExportedRoomKey as TheirKey;
    use matrix_sdk_crypto::secret_storage::{
        AesHmacSha2EncryptedData, SecretStorageKey as TheirSsss,
    };
    use matrix_sdk_crypto::store::types::BackupDecryptionKey;
    use matrix_sdk_crypto::{
        DecryptionSettings, OlmMachine, TrustRequirement, decrypt_room_key_export,
    };
    use newt_core::backup::{BACKUP_SECRET, BackupKey, SecretStorageKey, encrypt_session};
    use newt_core::key_export::{self, ExportedRoomKey};
    use ruma16::events::EventContentFromType;
    use ruma16::events::secret::request::SecretName;
    use ruma16::events::secret_storage::key::SecretStorageKeyEventContent;
    use ruma16::serde::Raw;
    use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};

    pub(crate) struct NewtSession {
        pub key: ExportedRoomKey,
        pub event: Value,
        pub body: String,
    }

    fn sessions() -> R<Vec<NewtSession>> {
        sessions_in("")
    }

    fn sessions_in(suffix: &str) -> R<Vec<NewtSession>> {
        let account = vodozemac::olm::Account::new();
        let curve = account.curve25519_key().to_base64();
        let ed = account.ed25519_key().to_base64();
        let mut out = Vec::new();
        let rooms = [
            format!("!newt1{suffix}:example.org"),
            format!("!newt2:example.org"),
        ];
        for (n, room) in rooms.iter().enumerate() {
            let mut outbound = GroupSession::new(SessionConfig::version_1());
            let mut inbound =
                InboundGroupSession::new(&outbound.session_key(), SessionConfig::version_1());
            let session_key = inbound.export_at(0).ok_or("export_at(0)")?.to_base64();
            let body = format!("hello from newt in room {}", n + 1);
            let plaintext = json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}, "room_id": room});
            let ciphertext = outbound.encrypt(plaintext.to_string()).to_base64();
            let event = json!({
                "type": "m.room.encrypted",
                "event_id": format!("$newt-event-{n}"),
                "sender": "@newt:example.org",
                "origin_server_ts": 1_700_000_000_000u64 + n as u64,
                "room_id": room,
                "content": {
                    "algorithm": "m.megolm.v1.aes-sha2",
                    "sender_key": curve,
                    "device_id": "NEWTDEVICE",
                    "session_id": outbound.session_id(),
                    "ciphertext": ciphertext,
                },
            });
            out.push(NewtSession {
                key: ExportedRoomKey {
                    algorithm: "m.megolm.v1.aes-sha2".into(),
                    room_id: room.as_str().try_into().map_err(e("room id"))?,
                    sender_key: curve.clone(),
                    session_id: outbound.session_id(),
                    session_key,
                    sender_claimed_keys: [("ed25519".to_owned(), ed.clone())].into(),
                    forwarding_curve25519_key_chain: Vec::new(),
                },
                event,
                body,
            });
        }
        Ok(out)
    }

    async fn machine() -> OlmMachine {
        OlmMachine::new(
            <&ruma16::UserId>::try_from("@carol:example.org").unwrap_or_else(|_| unreachable!()),
            "CAROLDEVICE".into(),
        )
        .await
    }

    /// Their machine decrypts a Newt event (full decrypt_room_event path).
    async fn their_decrypt(m: &OlmMachine, s: &NewtSession) -> R<()> {
        let raw: Raw<matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent> =
            Raw::from_json_string(s.event.to_string()).map_err(e("raw event"))?;
        let room = <&ruma16::RoomId>::try_from(s.event["room_id"].as_str().unwrap_or_default())
            .map_err(e("rid"))?;
        let settings = DecryptionSettings {
            sender_device_trust_requirement: TrustRequirement::Untrusted,
        };
        let dec = m
            .decrypt_room_event(&raw, room, &settings)
            .await
            .map_err(e("decrypt_room_event"))?;
        let got: Value = serde_json::from_str(dec.event.json().get()).map_err(e("json"))?;
        ensure(got["content"]["body"] == s.body.as_str(), || {
            format!("decrypted {got}")
        })?;
        ensure(got["room_id"] == s.event["room_id"], || {
            format!("room id {}", got["room_id"])
        })
    }

    /// Run with three room id lengths, so that the export's base64 ends with each of 0, 1
    /// and 2 padding characters.
    pub(crate) async fn b1() -> R<String> {
        let mut pads = Vec::new();
        let mut detail = String::new();
        for suffix in ["", "x", "xx"] {
            let (d, pad) = b1_once(suffix).await?;
            pads.push(pad);
            detail = d;
        }
        pads.sort();
        Ok(format!(
            "{detail}; Newt's export body ended with {pads:?} '=' over 3 runs"
        ))
    }

    async fn b1_once(suffix: &str) -> R<(String, usize)> {
        let sessions = sessions_in(suffix)?;
        let keys: Vec<ExportedRoomKey> = sessions.iter().map(|s| s.key.clone()).collect();
        let text = key_export::encrypt(&keys, PASSPHRASE, ROUNDS).map_err(e("newt encrypt"))?;
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let pad = body.len() - body.trim_end_matches('=').len();
        let theirs: Vec<TheirKey> = decrypt_room_key_export(Cursor::new(text.clone()), PASSPHRASE)
            .map_err(e("decrypt_room_key_export"))?;
        ensure(theirs.len() == 2, || format!("{} keys", theirs.len()))?;
        for (t, s) in theirs.iter().zip(&sessions) {
            ensure(t.session_id == s.key.session_id, || "session id".into())?;
            ensure(t.room_id.as_str() == s.key.room_id.as_str(), || {
                "room id".into()
            })?;
            ensure(t.sender_key.to_base64() == s.key.sender_key, || {
                "sender key".into()
            })?;
            ensure(t.session_key.to_base64() == s.key.session_key, || {
                "session key".into()
            })?;
        }
        ensure(
            decrypt_room_key_export(Cursor::new(text), "wrong").is_err(),
            || "wrong passphrase accepted".into(),
        )?;
        let m = machine().await;
        let result = m
            .store()
            .import_exported_room_keys(theirs, |_, _| {})
            .await
            .map_err(e("import"))?;
        ensure(
            result.imported_count == 2 && result.total_count == 2,
            || format!("imported {}/{}", result.imported_count, result.total_count),
        )?;
        for s in &sessions {
            their_decrypt(&m, s).await?;
        }
        Ok(("decrypt_room_key_export read 2 keys (2 rooms), import_exported_room_keys imported 2/2, decrypt_room_event decrypted both Newt events".into(), pad))
    }

    pub(crate) async fn b2() -> R<String> {
        let sessions = sessions()?;
        let s = &sessions[0];
        let key = BackupKey::new();
        let data = encrypt_session(key.public_key(), &s.key).map_err(e("encrypt_session"))?;
        let data_json = serde_json::to_value(&data).map_err(e("json"))?;
        let recovery = key.to_recovery_key();
        let theirs = BackupDecryptionKey::from_base58(&recovery).map_err(e("from_base58"))?;
        ensure(
            theirs.megolm_v1_public_key().to_base64() == key.public_key_base64(),
            || "public key differs".into(),
        )?;
        ensure(
            theirs.to_base58() == recovery.split_whitespace().collect::<String>(),
            || "their base58 re-encoding differs".into(),
        )?;
        // Low level: decrypt_v1 on the three base64 strings.
        let plain = theirs
            .decrypt_v1(
                data_json["ephemeral"].as_str().ok_or("ephemeral")?,
                data_json["mac"].as_str().ok_or("mac")?,
                data_json["ciphertext"].as_str().ok_or("ciphertext")?,
            )
            .map_err(e("decrypt_v1"))?;
        let plain: Value = serde_json::from_str(&plain).map_err(e("plaintext json"))?;
        ensure(plain["session_key"] == s.key.session_key.as_str(), || {
            "session key differs (decrypt_v1)".into()
        })?;
        // Typed: decrypt_session_data -> BackedUpRoomKey, then import as from a backup and
        // decrypt the event.
        let sd: ruma16::api::client::backup::EncryptedSessionData =
            serde_json::from_value(data_json.clone()).map_err(e("their EncryptedSessionData"))?;
        let backed_up = theirs
            .decrypt_session_data(sd)
            .map_err(e("decrypt_session_data"))?;
        ensure(
            backed_up.session_key.to_base64() == s.key.session_key,
            || "session key differs".into(),
        )?;
        let exported = TheirKey::from_backed_up_room_key(
            s.key.room_id.as_str().try_into().map_err(e("rid"))?,
            s.key.session_id.clone(),
            backed_up,
        );
        let m = machine().await;
        let r = m
            .store()
            .import_room_keys(vec![exported], Some("1"), |_, _| {})
            .await
            .map_err(e("import"))?;
        ensure(r.imported_count == 1, || "not imported".into())?;
        their_decrypt(&m, s).await?;
        ensure(
            BackupDecryptionKey::new()
                .decrypt_session_data(serde_json::from_value(data_json).map_err(e("sd"))?)
                .is_err(),
            || "decrypted with another key".into(),
        )?;
        Ok("from_base58 accepts Newt's grouped recovery key, public key matches, decrypt_v1 and decrypt_session_data give the session key, event decrypted after import".into())
    }

    pub(crate) fn b3() -> R<String> {
        let key = SecretStorageKey::new();
        let desc = key.description();
        let desc_json = serde_json::to_value(&desc).map_err(e("json"))?;
        let backup_key = BackupKey::new();
        let secret = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            *backup_key.to_bytes(),
        );
        let enc = key.encrypt(BACKUP_SECRET, &secret);
        let enc_json = serde_json::to_value(&enc).map_err(e("json"))?;
        // As their client reads account data `m.secret_storage.key.<id>`.
        let raw = serde_json::value::to_raw_value(&desc_json).map_err(e("raw"))?;
        let content = SecretStorageKeyEventContent::from_parts(
            &format!("m.secret_storage.key.{}", key.id()),
            &raw,
        )
        .map_err(e("their SecretStorageKeyEventContent"))?;
        ensure(content.key_id == key.id(), || "key id".into())?;
        let theirs = TheirSsss::from_account_data(&key.to_recovery_key(), content.clone())
            .map_err(e("from_account_data"))?;
        ensure(theirs.to_base58() == *key.to_recovery_key(), || {
            "their base58 differs".into()
        })?;
        let other = SecretStorageKey::new();
        ensure(
            TheirSsss::from_account_data(&other.to_recovery_key(), content).is_err(),
            || "wrong key accepted".into(),
        )?;
        let data: AesHmacSha2EncryptedData =
            serde_json::from_value(enc_json).map_err(e("their AesHmacSha2EncryptedData"))?;
        let plain = theirs
            .decrypt(&data, &SecretName::from(BACKUP_SECRET))
            .map_err(e("decrypt"))?;
        ensure(plain == secret.as_bytes(), || "secret differs".into())?;
        // The backup key in it works for them.
        let their_backup =
            BackupDecryptionKey::from_base64(std::str::from_utf8(&plain).map_err(e("utf8"))?)
                .map_err(e("from_base64"))?;
        ensure(
            their_backup.megolm_v1_public_key().to_base64() == backup_key.public_key_base64(),
            || "backup key differs".into(),
        )?;
        Ok(format!(
            "from_account_data accepted Newt's description (wrong key refused), secret decrypted; description JSON {desc_json}"
        ))
    }
}

fn out_dir(arg: Option<String>) -> PathBuf {
    arg.map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("out"))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_else(|| "all".into());
    let dir = out_dir(args.next());
    let mut report = Report {
        results: Vec::new(),
    };
    if cmd == "element-to-newt" || cmd == "all" {
        if let Err(why) = element::generate(&dir).await {
            report.record("A generate (matrix-sdk-crypto)", Err(why));
        } else {
            println!("fixtures written to {}", dir.display());
        }
    }
    if cmd == "element-to-newt" || cmd == "verify" || cmd == "all" {
        report.record(
            "A1 key export matrix-sdk-crypto -> Newt",
            newt_reads::a1(&dir),
        );
        report.record("A2 backup matrix-sdk-crypto -> Newt", newt_reads::a2(&dir));
        report.record(
            "A3 secret storage matrix-sdk-crypto -> Newt",
            newt_reads::a3(&dir),
        );
    }
    if cmd == "newt-to-element" || cmd == "all" {
        report.record(
            "B1 key export Newt -> matrix-sdk-crypto",
            newt_to_element::b1().await,
        );
        report.record(
            "B2 backup Newt -> matrix-sdk-crypto",
            newt_to_element::b2().await,
        );
        report.record(
            "B3 secret storage Newt -> matrix-sdk-crypto",
            newt_to_element::b3(),
        );
    }
    let passed = report.results.iter().filter(|r| r.1).count();
    let failed = report.results.len() - passed;
    println!("{passed} passed, {failed} failed");
    if failed > 0 || report.results.is_empty() {
        std::process::exit(1);
    }
}
