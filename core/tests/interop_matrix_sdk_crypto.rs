//! Data written by matrix-sdk-crypto 0.18 (the crypto crate of Element X), read by Newt: a
//! key export file, a key backup entry with its recovery key, and a secret storage key
//! with a secret. Made with `tests/interop-matrix-sdk-crypto` (which also checks the other
//! way: what Newt writes, matrix-sdk-crypto reads); see `core/tests/data/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use newt_core::backup::{
    BACKUP_SECRET, BackupKey, EncryptedSecret, KeyDescription, SecretStorageKey, decrypt_session,
};
use newt_core::crypto::{KeySource, KeysQueryResponse, OlmMachine, OutgoingKind};
use newt_core::key_export::{self, KeyExportError};
use newt_core::ruma::api::client::backup::KeyBackupData;
use newt_core::ruma::{OwnedRoomId, OwnedUserId, device_id, user_id};
use newt_core::store::MemoryStore;
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/matrix-sdk-crypto")
        .join(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(name)).unwrap()).unwrap()
}

/// A machine that knows the senders' devices (from a `/keys/query` answer): an imported
/// session is attributed to its sender only through a known device.
fn machine() -> OlmMachine {
    let store = Arc::new(MemoryStore::new());
    let machine =
        OlmMachine::open(user_id!("@newt:example.org"), device_id!("NEWT"), store).unwrap();
    let answer = std::fs::read(data("keys-query.json")).unwrap();
    let answer = KeysQueryResponse::from_json(&answer).unwrap();
    let users: Vec<OwnedUserId> = answer.device_keys.keys().cloned().collect();
    machine.update_tracked_users(&users).unwrap();
    let query = machine
        .outgoing_requests()
        .unwrap()
        .into_iter()
        .find(|r| matches!(r.kind, OutgoingKind::KeysQuery(_)))
        .expect("a keys query");
    let outcome = machine.mark_keys_query_sent(&query.id, &answer).unwrap();
    assert_eq!(outcome.updated_devices, 2, "both devices' signatures check");
    machine
}

/// `event` (an `m.room.encrypted` event of the fixtures) decrypts with `machine` to the
/// expected plaintext, as a legacy session of the named sender key.
fn assert_decrypts(machine: &OlmMachine, fixture: &Value) {
    let event = &fixture["event"];
    let room = OwnedRoomId::try_from(event["room_id"].as_str().unwrap()).unwrap();
    let decrypted = machine.decrypt_room_event(&room, event).unwrap();
    let expected = &fixture["expected_plaintext"];
    assert_eq!(decrypted.event_type, expected["type"].as_str().unwrap());
    assert_eq!(decrypted.content, expected["content"]);
    assert_eq!(
        decrypted.sender_curve25519,
        event["content"]["sender_key"].as_str().unwrap()
    );
    assert!(decrypted.legacy, "imported: not proven by its sender");
    // Attributed to the sender's device: its keys match a device the machine knows.
    assert_eq!(decrypted.sender.as_str(), event["sender"].as_str().unwrap());
    assert_eq!(
        decrypted.sender_device.as_ref().map(|d| d.as_str()),
        event["content"]["device_id"].as_str()
    );
}

#[test]
fn a_key_export_of_matrix_sdk_crypto_imports_and_its_events_decrypt() {
    let meta = json("element-export.json");
    let text = std::fs::read_to_string(data(meta["export_file"].as_str().unwrap())).unwrap();
    assert!(matches!(
        key_export::decrypt(&text, "not the passphrase"),
        Err(KeyExportError::WrongPassphraseOrTampered)
    ));
    let keys = key_export::decrypt(&text, meta["passphrase"].as_str().unwrap()).unwrap();
    let sessions = meta["sessions"].as_array().unwrap();
    assert_eq!(keys.len(), sessions.len());
    for (key, session) in keys.iter().zip(sessions) {
        assert_eq!(key.session_id, session["session_id"].as_str().unwrap());
        assert_eq!(key.sender_key, session["sender_key"].as_str().unwrap());
        assert_eq!(
            key.sender_claimed_keys["ed25519"],
            session["sender_ed25519"].as_str().unwrap()
        );
    }
    let machine = machine();
    let imported = machine.import_room_keys(&keys).unwrap();
    assert_eq!(imported.imported.len(), sessions.len());
    assert_eq!(imported.refused, 0);
    for session in sessions {
        assert_decrypts(&machine, session);
    }
}

#[test]
fn a_backup_entry_of_matrix_sdk_crypto_restores_with_its_recovery_key() {
    let backup = json("backup.json");
    // Its recovery key has no spaces: Newt reads it as well as its own grouped form.
    let key = BackupKey::from_recovery_key(backup["recovery_key"].as_str().unwrap()).unwrap();
    assert_eq!(
        key.public_key_base64(),
        backup["public_key"].as_str().unwrap()
    );
    let entry: KeyBackupData = serde_json::from_value(backup["key_backup_data"].clone()).unwrap();
    let room = OwnedRoomId::try_from(backup["room_id"].as_str().unwrap()).unwrap();
    let session_id = backup["session_id"].as_str().unwrap();
    assert!(decrypt_session(&BackupKey::new(), &room, session_id, &entry.session_data).is_err());
    let exported = decrypt_session(&key, &room, session_id, &entry.session_data).unwrap();
    let machine = machine();
    let imported = machine
        .import_room_keys_from(&[exported], KeySource::Backup)
        .unwrap();
    assert_eq!(imported.imported.len(), 1);
    assert_decrypts(&machine, &backup);
}

#[test]
fn a_secret_storage_key_of_matrix_sdk_crypto_opens_its_secrets() {
    let storage = json("secret-storage.json");
    let id = storage["key_id"].as_str().unwrap();
    let description: KeyDescription =
        serde_json::from_value(storage["key_description"].clone()).unwrap();
    let recovery_key = storage["recovery_key"].as_str().unwrap();
    let key = SecretStorageKey::from_recovery_key(id, recovery_key).unwrap();
    key.check(&description).unwrap();
    assert!(SecretStorageKey::new().check(&description).is_err());
    let name = storage["secret_name"].as_str().unwrap();
    assert_eq!(name, BACKUP_SECRET);
    let sealed: EncryptedSecret =
        serde_json::from_value(storage["encrypted_secret"]["encrypted"][id].clone()).unwrap();
    let secret = key.decrypt(name, &sealed).unwrap();
    assert_eq!(
        secret.as_str(),
        storage["expected_secret"].as_str().unwrap()
    );
    // Bound to its name.
    assert!(key.decrypt("m.cross_signing.master", &sealed).is_err());
}
