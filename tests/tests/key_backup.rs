//! Server-side key backup against Synapse: set up, uploads, restore on a new device with
//! the recovery key (all keys, and an undecryptable event's key on its own), a backup
//! replaced elsewhere, and an upload cut off by a lost answer and a process end.

use std::time::{Duration, Instant};

use newt_core::backup::{BackupError, BackupKey, KeyDescription, SecretStorageKey};
use std::sync::Arc;

use newt_core::client::{
    BackupState, Client, ClientError, Prompt, PromptAnswer, PromptHandler, TimelineEvent,
};
use newt_core::key_export::{self, ExportedRoomKey};
use newt_core::ruma::RoomId;
use newt_core::store::{CryptoStore, SqliteStore, StoreKey};
use newt_e2e_tests::attacker::{Attacker, encode_segment};
use newt_e2e_tests::clients::{
    STORE_PASSPHRASE, World, login, open, receive, room_with, stdout_lines,
};
use newt_e2e_tests::proxy::{Action, FaultProxy};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

/// Events re-delivered (`is_update`) decrypted until `n` distinct ones; their bodies, sorted.
async fn decrypted_updates(
    rx: &mut tokio::sync::broadcast::Receiver<TimelineEvent>,
    room: &RoomId,
    n: usize,
) -> Vec<String> {
    let mut got: Vec<TimelineEvent> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} updates: {got:?}",
            got.len()
        );
        if let Ok(Ok(e)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
            && e.room_id == room
            && e.is_update
            && e.decrypted
            && !got.iter().any(|g| g.event_id == e.event_id)
        {
            got.push(e);
        }
    }
    let mut bodies: Vec<String> = got
        .into_iter()
        .map(|e| e.body.unwrap_or_default())
        .collect();
    bodies.sort();
    bodies
}

/// bob sends `bodies`, each in a session of its own; alice receives them.
async fn history(alice: &Client, bob: &Client, room: &RoomId, bodies: &[&str]) {
    for body in bodies {
        bob.discard_room_key(room).unwrap();
        bob.send_text(room, body).await.unwrap();
    }
    receive(alice, room, bodies.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_restores_its_history_with_the_recovery_key() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let recovery_key = alice.enable_backup().await.unwrap();
    history(&alice, &bob, &room, &["one", "two"]).await;
    alice.upload_backup().await.unwrap();
    let state = alice.backup_state().await.unwrap();
    let BackupState::Enabled { version, pending } = state else {
        panic!("{state:?}");
    };
    assert_eq!(pending, 0);
    let info = alice.backup_info().await.unwrap().unwrap();
    assert!(info.trusted && info.ours, "{info:?}");
    assert_eq!(info.version, version);
    let stored = alice
        .store()
        .unwrap()
        .inbound_group_session_count()
        .unwrap();
    assert_eq!(info.count, stored, "every session is in the backup");

    let tablet = w.login("alice", "alice-tablet").await;
    let mut rx = tablet.subscribe_timeline();
    let mistyped = recovery_key.replacen(|c: char| c.is_ascii_alphanumeric(), "1", 3);
    let err = tablet
        .restore_backup(&mistyped, None, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Backup(BackupError::InvalidRecoveryKey(_))),
        "{err:?}"
    );
    let other = BackupKey::new().to_recovery_key();
    let err = tablet
        .restore_backup(&other, None, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Backup(BackupError::WrongRecoveryKey)),
        "{err:?}"
    );
    assert_eq!(tablet.backup_state().await.unwrap(), BackupState::Disabled);

    let summary = tablet
        .restore_backup(&recovery_key, None, |_| {})
        .await
        .unwrap();
    assert_eq!(summary.total, stored);
    assert_eq!(summary.refused, 0);
    assert_eq!(decrypted_updates(&mut rx, &room, 2).await, ["one", "two"]);
    // The tablet backs up to the same backup now, and has nothing of its own to add.
    assert_eq!(
        tablet.backup_state().await.unwrap(),
        BackupState::Enabled {
            version,
            pending: 0
        }
    );
}

/// `batches` × 40 entries of about 100 KB each that no key decrypts, added to `room` in
/// alice's backup `version` by someone holding her password (or by the server).
fn pad_backup(w: &World, room: &RoomId, version: &str, batches: usize) {
    let other = Attacker::login(&w.hs.base_url, "alice", "alice-pw", None);
    let filler = "A".repeat(100_000);
    let path = format!(
        "/room_keys/keys/{}?version={version}",
        encode_segment(room.as_str())
    );
    for batch in 0..batches {
        let sessions: Map<String, Value> = (0..40)
            .map(|i| {
                let entry = json!({
                    "first_message_index": 0,
                    "forwarded_count": 0,
                    "is_verified": false,
                    "session_data": {"ephemeral": "AAAA", "ciphertext": filler, "mac": "AAAA"},
                });
                (format!("filler-{batch}-{i}"), entry)
            })
            .collect();
        other.api("PUT", &path, Some(&json!({ "sessions": sessions })));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_larger_than_any_one_answer_may_be_is_restored_at_once() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let recovery_key = alice.enable_backup().await.unwrap();
    history(&alice, &bob, &room, &["one", "two"]).await;
    alice.upload_backup().await.unwrap();
    let BackupState::Enabled { version, .. } = alice.backup_state().await.unwrap() else {
        panic!("enabled");
    };
    // 48 MB: more than an answer read whole may be (32 MiB); and another room's entries
    // (the room's restore counts its own).
    pad_backup(&w, &room, &version, 12);
    pad_backup(
        &w,
        RoomId::parse("!other:localhost").unwrap().as_ref(),
        &version,
        1,
    );
    let stored = alice
        .store()
        .unwrap()
        .inbound_group_session_count()
        .unwrap();

    let tablet = w.login("alice", "alice-tablet").await;
    let mut rx = tablet.subscribe_timeline();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let summary = tablet
        .restore_backup(&recovery_key, Some(&room), move |p| {
            record.lock().unwrap().push(p)
        })
        .await
        .unwrap();
    assert_eq!((summary.refused, summary.total), (480, 480 + stored));
    assert_eq!(summary.imported, stored);
    assert_eq!(decrypted_updates(&mut rx, &room, 2).await, ["one", "two"]);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "progress per batch: {seen:?}");
    assert!(seen.windows(2).all(|p| p[0].done < p[1].done), "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!((last.done, last.total), (summary.total, summary.total));

    // The whole backup, read the same way.
    let summary = tablet
        .restore_backup(&recovery_key, None, |_| {})
        .await
        .unwrap();
    assert_eq!((summary.refused, summary.already_known), (520, stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecryptable_event_whose_key_is_in_the_backup_comes_again_decrypted() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let recovery_key = alice.enable_backup().await.unwrap();
    history(&alice, &bob, &room, &["only in the backup"]).await;
    alice.upload_backup().await.unwrap();
    // Another encrypted room, with no messages: restoring it brings nothing.
    let quiet = room_with(&alice, &[]).await;

    let tablet = w.login("alice", "alice-tablet").await;
    let mut rx = tablet.subscribe_timeline();
    let summary = tablet
        .restore_backup(&recovery_key, Some(&quiet), |_| {})
        .await
        .unwrap();
    assert_eq!(summary.total, 0);
    // The kept event's session is looked up in the backup on its own.
    assert_eq!(
        decrypted_updates(&mut rx, &room, 1).await,
        ["only in the backup"]
    );
    // Newt asked for it, not the user: counted like any session, and not uploaded again.
    let sessions = tablet
        .store()
        .unwrap()
        .inbound_group_sessions_page(Some(&room), None, 100)
        .unwrap();
    assert!(!sessions.is_empty());
    assert!(
        sessions.iter().all(|s| !s.imported && s.backed_up),
        "{sessions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_replaced_by_another_device_is_detected_and_left_alone() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    alice.enable_backup().await.unwrap();
    let BackupState::Enabled { version: ours, .. } = alice.backup_state().await.unwrap() else {
        panic!("enabled");
    };
    let tablet = w.login("alice", "alice-tablet").await;
    let tablet_key = tablet.enable_backup().await.unwrap();
    let BackupState::Enabled {
        version: theirs, ..
    } = tablet.backup_state().await.unwrap()
    else {
        panic!("enabled");
    };
    assert_ne!(ours, theirs);
    history(&alice, &bob, &room, &["after the change"]).await;
    // The upload that finds it: this one, or the one the sync started in the background.
    let _ = alice.upload_backup().await;
    assert_eq!(
        alice.backup_state().await.unwrap(),
        BackupState::VersionChanged {
            ours,
            server: Some(theirs.clone())
        }
    );
    // Nothing more goes to a backup that is not ours any more.
    assert_eq!(alice.upload_backup().await.unwrap(), 0);
    // The tablet's backup is signed by a device alice never verified: not trusted by her.
    let info = alice.backup_info().await.unwrap().unwrap();
    assert_eq!(info.version, theirs);
    assert!(!info.trusted && !info.ours, "{info:?}");
    // With the new backup's key, alice backs up to it again.
    alice
        .restore_backup(&tablet_key, None, |_| {})
        .await
        .unwrap();
    let _ = alice.upload_backup().await.unwrap();
    assert_eq!(
        alice.backup_state().await.unwrap(),
        BackupState::Enabled {
            version: theirs,
            pending: 0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_is_finished_by_the_next_process_without_repeating_the_rest() {
    let w = World::new(&["alice", "bob"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let alice = login(&proxy.base_url, &w.dir("alice"), "alice").await;
    let bob = w.login("bob", "bob").await;
    let room = room_with(&alice, &[&bob]).await;
    // The server stores every upload, but its answers are lost: then the process ends.
    proxy.rule("/room_keys/keys", Action::ForwardThenDrop, None);
    alice.enable_backup().await.unwrap();
    history(&alice, &bob, &room, &["a", "b", "c"]).await;
    assert!(alice.upload_backup().await.is_err());
    let sessions = alice
        .store()
        .unwrap()
        .inbound_group_session_count()
        .unwrap();
    let version = alice.backup_info().await.unwrap().unwrap().version;
    assert_eq!(
        alice.backup_state().await.unwrap(),
        BackupState::Enabled {
            version,
            pending: sessions
        },
        "nothing marked without an answer"
    );
    alice.close().await;
    drop(alice);
    proxy.clear();
    let tries = proxy.requests("/room_keys/keys").len();
    assert!(tries >= 1);

    let alice = open(&proxy.base_url, &w.dir("alice"));
    assert!(alice.restore_session().unwrap());
    assert_eq!(
        alice.upload_backup().await.unwrap(),
        sessions,
        "the cut-off batch again"
    );
    assert_eq!(alice.upload_backup().await.unwrap(), 0, "and nothing more");
    let info = alice.backup_info().await.unwrap().unwrap();
    assert_eq!(info.count, sessions, "nothing lost");
    // A later process uploads nothing again.
    alice.close().await;
    drop(alice);
    let alice = open(&proxy.base_url, &w.dir("alice"));
    assert!(alice.restore_session().unwrap());
    assert_eq!(alice.upload_backup().await.unwrap(), 0);
    assert_eq!(proxy.requests("/room_keys/keys").len(), tries + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recovery_key_opens_the_backup_through_secret_storage_and_a_reset_replaces_it() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    let recovery_key = alice.set_up_recovery_key().await.unwrap();
    assert_eq!(
        alice.recovery_key().await.unwrap().unwrap().expose(),
        recovery_key.as_str()
    );
    history(&alice, &bob, &room, &["kept safe"]).await;
    alice.upload_backup().await.unwrap();
    // The recovery key is the secret storage's: not the backup's own key.
    let info = alice.backup_info().await.unwrap().unwrap();
    assert!(info.ours);

    let tablet = w.login("alice", "alice-tablet").await;
    let mut rx = tablet.subscribe_timeline();
    tablet
        .restore_backup(&recovery_key, None, |_| {})
        .await
        .unwrap();
    assert_eq!(decrypted_updates(&mut rx, &room, 1).await, ["kept safe"]);
    assert_eq!(
        tablet.recovery_key().await.unwrap().unwrap().expose(),
        recovery_key.as_str(),
        "the tablet can show the key again"
    );

    // Lost: reset. The old key opens nothing new, the new one does.
    let new_key = alice.set_up_recovery_key().await.unwrap();
    assert_ne!(new_key.as_str(), recovery_key.as_str());
    alice.upload_backup().await.unwrap();
    let phone = w.login("alice", "alice-phone").await;
    let err = phone
        .restore_backup(&recovery_key, None, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Backup(BackupError::WrongRecoveryKey)),
        "{err:?}"
    );
    let mut rx = phone.subscribe_timeline();
    let summary = phone.restore_backup(&new_key, None, |_| {}).await.unwrap();
    assert!(summary.imported >= 1, "{summary:?}");
    assert_eq!(decrypted_updates(&mut rx, &room, 1).await, ["kept safe"]);
}

/// Answers the password prompt of cross-signing set-up.
struct Password;

impl PromptHandler for Password {
    fn on_prompt(&self, prompt: Prompt) -> PromptAnswer {
        match prompt {
            Prompt::Password { .. } => PromptAnswer::Password(Zeroizing::new("alice-pw".into())),
            _ => PromptAnswer::Dismissed,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_takes_the_cross_signing_keys_from_secret_storage() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, _room) = w.alice_and_bob().await;
    alice.set_prompt_handler(Some(Arc::new(Password)));
    alice.bootstrap_cross_signing().await.unwrap();
    let recovery_key = alice.set_up_recovery_key().await.unwrap();
    let alice_id = alice.session().unwrap().user_id;

    let tablet = w.login("alice", "alice-tablet").await;
    let tablet_id = tablet.session().unwrap().device_id;
    let own = tablet.identity(&alice_id).await.unwrap().unwrap();
    assert!(!own.verified, "a new device holds no keys: {own:?}");
    tablet
        .restore_backup(&recovery_key, None, |_| {})
        .await
        .unwrap();
    let own = tablet.identity(&alice_id).await.unwrap().unwrap();
    assert!(own.verified, "the tablet took the keys: {own:?}");

    // The tablet signed itself: bob sees it cross-signed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        bob.sync_once(Duration::from_secs(1)).await.unwrap();
        let devices = bob.devices(&alice_id).await.unwrap();
        let tablet_seen = devices.iter().find(|d| d.device_id == tablet_id);
        if tablet_seen.is_some_and(|d| d.cross_signed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob never saw the tablet cross-signed: {devices:?}"
        );
    }
}

/// `alice` syncs until `done` holds (the set-up is taken up in the background after a sync).
async fn sync_until<F, Fut>(alice: &Client, what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        alice.sync_once(Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_up_whose_answer_was_lost_is_taken_up_after_the_next_sync() {
    let w = World::new(&["alice"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let alice = login(&proxy.base_url, &w.dir("alice"), "alice").await;
    // The server makes the backup version; its answer is lost (as if the app stopped).
    proxy.method_rule(
        "POST",
        "/room_keys/version",
        Action::ForwardThenDrop,
        Some(1),
    );
    assert!(alice.enable_backup().await.is_err());
    assert_eq!(alice.backup_state().await.unwrap(), BackupState::Disabled);
    let version = alice.backup_info().await.unwrap().expect("made").version;
    sync_until(&alice, "the backup made is used", || async {
        matches!(alice.backup_state().await.unwrap(),
            BackupState::Enabled { version: v, .. } if v == version)
    })
    .await;
    let key = alice.recovery_key().await.unwrap().expect("shown again");
    let tablet = w.login("alice", "alice-tablet").await;
    tablet
        .restore_backup(key.expose(), None, |_| {})
        .await
        .unwrap();
}

/// Whether `shown` is the account's default secret storage key now, as another device of
/// alice's (`reader`) finds it in the account data.
fn is_default_storage_key(reader: &Attacker, shown: &str) -> bool {
    let user = encode_segment("@alice:localhost");
    let data = |kind: &str| {
        let path = format!("/user/{user}/account_data/{kind}");
        reader.try_api("GET", &path, None).1
    };
    let Some(id) = data("m.secret_storage.default_key")["key"]
        .as_str()
        .map(str::to_owned)
    else {
        return false;
    };
    let key_type = format!("m.secret_storage.key.{id}");
    let Ok(description) = serde_json::from_value::<KeyDescription>(data(&key_type)) else {
        return false;
    };
    SecretStorageKey::from_recovery_key(&id, shown)
        .is_ok_and(|storage| storage.check(&description).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_set_up_cut_short_is_finished_or_forgotten_after_the_next_sync() {
    let w = World::new(&["alice"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let alice = login(&proxy.base_url, &w.dir("alice"), "alice").await;
    let reader = Attacker::login(&w.hs.base_url, "alice", "alice-pw", None);
    let first = alice.set_up_recovery_key().await.unwrap();
    assert!(is_default_storage_key(&reader, &first));
    let shown = || async { alice.recovery_key().await.unwrap().unwrap() };

    // The server makes the new key the default; that answer is lost: the key is kept.
    let default_key = "m.secret_storage.default_key";
    proxy.method_rule("PUT", default_key, Action::ForwardThenDrop, Some(1));
    assert!(alice.set_up_recovery_key().await.is_err());
    sync_until(
        &alice,
        "the key the server made the default is kept",
        || async {
            let key = shown().await;
            key.expose() != first.as_str() && is_default_storage_key(&reader, key.expose())
        },
    )
    .await;
    let second = shown().await;

    // Its secrets are stored, but making it the default fails: the sync after finishes it.
    // A sync ends while its backup is being made: the background work leaves the set-up
    // under way alone (it would find nothing changed yet, and forget it).
    proxy.method_rule("PUT", default_key, Action::Fail(500), Some(1));
    let slow = Action::Delay(Duration::from_millis(1_500));
    proxy.method_rule("POST", "/room_keys/version", slow, Some(1));
    let set_up = tokio::spawn({
        let alice = Arc::clone(&alice);
        async move { alice.set_up_recovery_key().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.sync_once(Duration::ZERO).await.unwrap();
    assert!(set_up.await.unwrap().is_err());
    sync_until(&alice, "the set-up is finished", || async {
        let key = shown().await;
        key.expose() != second.expose() && is_default_storage_key(&reader, key.expose())
    })
    .await;
    let third = shown().await;
    let phone = w.login("alice", "alice-phone").await;
    phone
        .restore_backup(third.expose(), None, |_| {})
        .await
        .unwrap();

    // Its backup cannot be made: nothing changed on the server; the set-up is forgotten,
    // not finished.
    proxy.method_rule("POST", "/room_keys/version", Action::Fail(500), Some(1));
    assert!(alice.set_up_recovery_key().await.is_err());
    for _ in 0..3 {
        alice.sync_once(Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(shown().await.expose(), third.expose());
    assert!(is_default_storage_key(&reader, third.expose()));
    let tablet = w.login("alice", "alice-tablet").await;
    tablet
        .restore_backup(third.expose(), None, |_| {})
        .await
        .unwrap();
}

/// `n` room keys of a stranger's sessions in `room`, as a key file at `path`.
fn key_file(path: &std::path::Path, room: &RoomId, n: usize) {
    use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig};
    let account = vodozemac::olm::Account::new();
    let keys: Vec<ExportedRoomKey> = (0..n)
        .map(|_| {
            let outbound = GroupSession::new(SessionConfig::version_1());
            let inbound =
                InboundGroupSession::new(&outbound.session_key(), SessionConfig::version_1());
            ExportedRoomKey {
                algorithm: "m.megolm.v1.aes-sha2".into(),
                room_id: room.to_owned(),
                sender_key: account.curve25519_key().to_base64(),
                session_id: outbound.session_id(),
                session_key: inbound.export_at_first_known_index().to_base64(),
                sender_claimed_keys: [("ed25519".into(), account.ed25519_key().to_base64())].into(),
                forwarding_curve25519_key_chain: Vec::new(),
            }
        })
        .collect();
    std::fs::write(path, key_export::encrypt(&keys, "pw", 1_000).unwrap()).unwrap();
}

/// `(room id, session id)` of every session in the backup uploads the proxy passed on.
fn uploaded_sessions(proxy: &FaultProxy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for body in proxy.bodies("/room_keys/keys") {
        let body: Value = serde_json::from_slice(&body).unwrap();
        for (room, sessions) in body["rooms"].as_object().unwrap() {
            for session in sessions["sessions"].as_object().unwrap().keys() {
                out.push((room.clone(), session.clone()));
            }
        }
    }
    out
}

/// Sessions of `dir`'s store not in the backup yet.
fn pending_uploads(dir: &std::path::Path) -> u64 {
    let key = StoreKey::from_passphrase(STORE_PASSPHRASE);
    let store = SqliteStore::open(dir, &key).unwrap();
    store.inbound_group_sessions_to_back_up_count().unwrap()
}

/// Three `send-process` runs uploading `dir`'s backup through `proxy`, each killed with
/// SIGKILL once the server answered one more upload, 0, 150 and 300 ms later: as the
/// answer arrives (before or after its mark), and while the next upload is on its way.
/// The sessions still to upload, from `pending` on, after each kill.
async fn kill_during_uploads(
    proxy: &FaultProxy,
    dir: &std::path::Path,
    room: &RoomId,
    pending: u64,
) -> Vec<u64> {
    let answered = || {
        let log = proxy.log();
        let puts = log
            .iter()
            .filter(|l| l.starts_with("PUT") && l.contains("/room_keys/keys"));
        puts.filter(|l| l.ends_with(" 200")).count()
    };
    let mut left = vec![pending];
    for kill_ms in [0, 150, 300] {
        let before = answered();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_send-process"))
            .args([&proxy.base_url, &*dir.to_string_lossy(), room.as_str()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start send-process");
        let lines = stdout_lines(&mut child);
        let first = lines.recv_timeout(Duration::from_secs(30)).ok();
        assert_eq!(first.as_deref(), Some("synced"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while answered() == before {
            assert!(Instant::now() < deadline, "no upload answered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(kill_ms)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        left.push(pending_uploads(dir));
    }
    left
}

/// The kill test: alice's client (a process of its own, `send-process` running its
/// due work) is killed with SIGKILL three times while it uploads 500 sessions in batches
/// of 100, every upload slowed down. Nothing is lost (the server ends with every session)
/// and at most the batch in flight at each kill is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_uploading_nothing_is_lost_and_only_the_batch_in_flight_is_sent_again() {
    const SESSIONS: usize = 500;
    let w = World::new(&["alice"]);
    let proxy = FaultProxy::start(&w.hs.base_url);
    let dir = w.dir("alice");
    let room = RoomId::parse("!history:localhost").unwrap();
    {
        let alice = login(&proxy.base_url, &dir, "alice").await;
        // Nothing uploaded before the kills.
        proxy.rule("/room_keys/keys", Action::Fail(503), None);
        alice.enable_backup().await.unwrap();
        let file = w.dir("keys.txt");
        key_file(&file, &room, SESSIONS);
        let summary = alice.import_room_keys(&file, "pw", |_| {}).await.unwrap();
        assert_eq!(summary.imported, SESSIONS as u64);
        alice.close().await;
    }
    proxy.clear();
    assert_eq!(pending_uploads(&dir), SESSIONS as u64);
    proxy.rule(
        "/room_keys/keys",
        Action::Delay(Duration::from_millis(400)),
        None,
    );
    let left = kill_during_uploads(&proxy, &dir, &room, SESSIONS as u64).await;
    // The kills came mid-way: some batches marked, some still to upload.
    assert!(left.windows(2).all(|w| w[1] <= w[0]), "{left:?}");
    let remaining = *left.last().unwrap();
    assert!(0 < remaining && remaining < SESSIONS as u64, "{left:?}");
    proxy.clear();
    let last = std::process::Command::new(env!("CARGO_BIN_EXE_send-process"))
        .args([&proxy.base_url, &*dir.to_string_lossy(), room.as_str()])
        .output()
        .unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    assert_eq!(pending_uploads(&dir), 0);

    let server = Attacker::login(&w.hs.base_url, "alice", "alice-pw", None);
    let info = server.api("GET", "/room_keys/version", None);
    assert_eq!(
        info["count"],
        json!(SESSIONS),
        "every session is on the server"
    );
    let sent = uploaded_sessions(&proxy);
    let distinct: std::collections::BTreeSet<_> = sent.iter().collect();
    assert_eq!(distinct.len(), SESSIONS);
    assert!(
        sent.len() <= SESSIONS + 3 * 100,
        "at most one batch again per kill: {} sent",
        sent.len()
    );
    eprintln!(
        "left after each kill: {left:?}; sessions sent: {}",
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_ends_a_restore_at_once() {
    let w = World::new(&["alice"]);
    let alice = w.login("alice", "alice").await;
    let recovery_key = alice.enable_backup().await.unwrap().as_str().to_owned();
    let proxy = FaultProxy::start(&w.hs.base_url);
    let tablet = login(&proxy.base_url, &w.dir("tablet"), "alice").await;
    // The backup's keys are slow to come.
    let slow = Action::Delay(Duration::from_secs(30));
    proxy.method_rule("GET", "/room_keys/keys", slow, None);
    let restore = tokio::spawn({
        let tablet = Arc::clone(&tablet);
        async move { tablet.restore_backup(&recovery_key, None, |_| {}).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.requests("/room_keys/keys").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the restore never asked for the keys"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closing = Instant::now();
    tablet.close().await;
    assert!(
        closing.elapsed() < Duration::from_secs(10),
        "closing waited {:?} for the restore",
        closing.elapsed()
    );
    let err = restore.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
}
