//! Attachments against a real Synapse: encrypted (AES-256-CTR, SHA-256 of the ciphertext,
//! the key as a JWK in the event) in an encrypted room, as they are in a plain one; upload
//! progress published; downloads checked against the hash.

use std::sync::Arc;
use std::time::Duration;

use newt_core::attachment::AttachmentError;
use newt_core::client::{Attachment, ClientError, OutgoingMessage, SendState};
use newt_core::store::StuckReason;
use newt_e2e_tests::attacker::Attacker;
use newt_e2e_tests::clients::{self, SendLog, World};
use newt_e2e_tests::proxy::{Action, Rewrite};
use rand::RngCore;

/// A file of `len` random bytes in `dir`.
fn random_file(dir: &std::path::Path, name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn is_sent(s: &SendState) -> bool {
    matches!(s, SendState::Sent { event_id: Some(_) })
}

/// alice sends a 300 KB picture to bob: what goes to the media repository is ciphertext,
/// the progress goes up to the whole size, bob's event names the encrypted file and bob
/// downloads the picture; a download whose bytes were changed on the way is refused and
/// writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_attachment_round_trips_and_a_tampered_one_is_refused() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    let (path, picture) = random_file(w.dirs.path(), "newt.png", 300 * 1024);
    let file = Attachment {
        path,
        mimetype: "image/png".into(),
        name: "newt.png".into(),
    };
    let txn = alice.queue_attachment(&room, file).await.unwrap();
    let echoes = alice.local_echoes(&room).await.unwrap();
    assert_eq!(echoes[0].content["msgtype"], "m.image");
    log.until(&txn, is_sent).await;

    let progress: Vec<(u64, u64)> = log
        .states(&txn)
        .into_iter()
        .filter_map(|s| match s {
            SendState::Uploading {
                sent_bytes,
                total_bytes,
            } => Some((sent_bytes, total_bytes)),
            _ => None,
        })
        .collect();
    assert!(progress.len() >= 4, "{progress:?}");
    assert!(progress.windows(2).all(|p| p[0].0 < p[1].0), "{progress:?}");
    assert_eq!(
        progress.last().unwrap(),
        &(picture.len() as u64, picture.len() as u64)
    );
    let uploads = proxy.bodies("/media/v3/upload");
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].len(), picture.len());
    assert_ne!(uploads[0], picture, "the server got ciphertext");

    let got = clients::receive(&bob, &room, 1).await;
    let content = &got[0].content;
    assert_eq!(content["msgtype"], "m.image");
    assert_eq!(content["body"], "newt.png");
    assert_eq!(content["info"]["mimetype"], "image/png");
    assert_eq!(content["file"]["v"], "v2");
    assert!(content.get("url").is_none(), "{content}");
    assert!(!content.to_string().contains("local_file"), "{content}");
    let downloaded = bob.download_attachment(content, 1 << 20).await.unwrap();
    assert_eq!(downloaded, picture);

    // The same download through a server that changes one byte: refused, nothing written.
    let flip = Rewrite(Arc::new(|body: &[u8]| {
        let mut body = body.to_vec();
        body[100] ^= 1;
        body
    }));
    proxy.rule("/media/", Action::RewriteResponse(flip), None);
    let err = alice
        .download_attachment(content, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Attachment(AttachmentError::HashMismatch)),
        "{err}"
    );
    let out = w.dirs.path().join("downloaded.png");
    let err = alice.download_attachment_to(content, &out, 1 << 20).await;
    assert!(err.is_err() && !out.exists());
    // Too large for the caller's limit.
    proxy.clear();
    let err = alice.download_attachment(content, 1024).await.unwrap_err();
    assert!(matches!(err, ClientError::Http(_)), "{err}");
    let size = alice
        .download_attachment_to(content, &out, 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        (size, std::fs::read(&out).unwrap()),
        (picture.len() as u64, picture)
    );
    drop(w);
}

/// In a room without encryption the file is uploaded as it is and the event names its URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_room_gets_the_file_as_it_is() {
    let w = World::new(&["bob"]);
    let carol = Attacker::register(&w.hs, "carol");
    let bob = w.login("bob", "bob").await;
    let room_id = w.public_room(&carol, &bob).await;
    let room = room_id.to_string();
    let mut log = SendLog::new(&bob);
    let (path, data) = random_file(w.dirs.path(), "notes.txt", 5000);
    let file = Attachment {
        path,
        mimetype: "text/plain".into(),
        name: "notes.txt".into(),
    };
    let txn = bob.queue_attachment(&room_id, file).await.unwrap();
    log.until(&txn, is_sent).await;
    let events = carol.room_messages(&room);
    let event = events
        .iter()
        .find(|e| e["type"] == "m.room.message")
        .unwrap();
    assert_eq!(event["content"]["msgtype"], "m.file");
    assert!(event["content"].get("file").is_none(), "{event}");
    let downloaded = bob.download_attachment(&event["content"], 1 << 20).await;
    assert_eq!(downloaded.unwrap(), data);
    drop(w);
}

/// A file gone before its turn leaves the message stuck (`FileUnreadable`); once it is
/// back, retrying sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_is_stuck_until_retried() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    // Offline: a text waits, and the file waits behind it (not read yet).
    proxy.rule("/_matrix/", Action::Drop, None);
    let first = OutgoingMessage::Text {
        body: "first".into(),
    };
    let first = alice.queue_message(&room, first).await.unwrap();
    log.until(&first, |s| matches!(s, SendState::WaitingToRetry { .. }))
        .await;
    let (path, data) = random_file(w.dirs.path(), "gone.bin", 1000);
    let file = Attachment {
        path: path.clone(),
        mimetype: "application/octet-stream".into(),
        name: "gone.bin".into(),
    };
    let txn = alice.queue_attachment(&room, file).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    proxy.clear();
    alice.sync_once(Duration::ZERO).await.unwrap();
    let stuck = SendState::Stuck {
        reason: StuckReason::FileUnreadable,
    };
    log.until(&txn, |s| *s == stuck).await;
    std::fs::write(&path, &data).unwrap();
    alice.retry_send(&txn).await.unwrap();
    log.until(&txn, is_sent).await;
    let got = clients::receive(&bob, &room, 2).await;
    assert_eq!(got[0].body.as_deref(), Some("first"));
    let downloaded = bob.download_attachment(&got[1].content, 1 << 20).await;
    assert_eq!(downloaded.unwrap(), data);
    drop(w);
}

/// The server refuses the upload as too large (413): the message is stuck with `TooLarge`
/// and nothing is retried by itself; retried by the app (the server's limit raised, say),
/// it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_server_refuses_as_too_large_is_stuck_until_retried() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    proxy.rule("/media/v3/upload", Action::Fail(413), Some(1));
    let (path, data) = random_file(w.dirs.path(), "big.bin", 2000);
    let file = Attachment {
        path,
        mimetype: "application/octet-stream".into(),
        name: "big.bin".into(),
    };
    let txn = alice.queue_attachment(&room, file).await.unwrap();
    let stuck = SendState::Stuck {
        reason: StuckReason::TooLarge,
    };
    log.until(&txn, |s| *s == stuck).await;
    alice.sync_once(Duration::ZERO).await.unwrap();
    assert_eq!(
        proxy.bodies("/media/v3/upload").len(),
        1,
        "not retried by itself"
    );
    alice.retry_send(&txn).await.unwrap();
    log.until(&txn, is_sent).await;
    let got = clients::receive(&bob, &room, 1).await;
    let downloaded = bob.download_attachment(&got[0].content, 1 << 20).await;
    assert_eq!(downloaded.unwrap(), data);
    drop(w);
}

/// The upload's answer has no `content_uri`: the message is not taken for sent (only the
/// send itself can deliver it); it is uploaded again and arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_answer_without_a_uri_is_not_taken_for_a_sent_message() {
    let w = World::new(&["alice", "bob"]);
    let (proxy, alice, bob, room) = w.alice_behind_a_proxy().await;
    let mut log = SendLog::new(&alice);
    let no_uri = Rewrite::json(|v| *v = serde_json::json!({}));
    proxy.rule("/media/v3/upload", Action::RewriteResponse(no_uri), Some(1));
    let (path, data) = random_file(w.dirs.path(), "photo.jpg", 3000);
    let file = Attachment {
        path,
        mimetype: "image/jpeg".into(),
        name: "photo.jpg".into(),
    };
    let txn = alice.queue_attachment(&room, file).await.unwrap();
    log.until(&txn, is_sent).await;
    assert!(
        !log.states(&txn)
            .contains(&SendState::Sent { event_id: None }),
        "{:?}",
        log.states(&txn)
    );
    assert_eq!(proxy.bodies("/media/v3/upload").len(), 2, "uploaded again");
    let got = clients::receive(&bob, &room, 1).await;
    let downloaded = bob.download_attachment(&got[0].content, 1 << 20).await;
    assert_eq!(downloaded.unwrap(), data);
    drop(w);
}
