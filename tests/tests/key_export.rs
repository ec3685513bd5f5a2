//! Key export files against Synapse: a new device of alice reads her history from the file
//! her first device wrote; a wrong passphrase, a file cut short or changed import nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use newt_core::client::{ClientError, KeyTransferProgress, TimelineEvent};
use newt_core::key_export::KeyExportError;
use newt_e2e_tests::clients::{World, receive};

/// Events re-delivered (`is_update`) in `room` until `n` distinct ones are decrypted.
async fn decrypted_updates(
    rx: &mut tokio::sync::broadcast::Receiver<TimelineEvent>,
    n: usize,
) -> Vec<TimelineEvent> {
    let mut got: Vec<TimelineEvent> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} updates: {got:?}",
            got.len()
        );
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Ok(e))
                if e.is_update && e.decrypted && !got.iter().any(|g| g.event_id == e.event_id) =>
            {
                got.push(e)
            }
            _ => {}
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_reads_history_from_the_key_file_of_another() {
    let w = World::new(&["alice", "bob"]);
    let (alice, bob, room) = w.alice_and_bob().await;
    // Three messages over two Megolm sessions.
    bob.send_text(&room, "one").await.unwrap();
    bob.discard_room_key(&room).unwrap();
    bob.send_text(&room, "two").await.unwrap();
    bob.send_text(&room, "three").await.unwrap();
    receive(&alice, &room, 3).await;

    let file = w.dir("files").join("alice-keys.txt");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<KeyTransferProgress>::new()));
    let sink = seen.clone();
    let written = alice
        .export_room_keys(&file, "correct horse", None, move |p| {
            sink.lock().unwrap().push(p)
        })
        .await
        .unwrap();
    assert!(written >= 2, "bob's two sessions at least: {written}");
    let last = *seen.lock().unwrap().last().unwrap();
    assert_eq!((last.done, last.total), (written, written));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("-----BEGIN MEGOLM SESSION DATA-----\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only the user reads the file: {mode:o}");
    }

    // alice's new device: bob's messages came in its first sync, undecryptable.
    let tablet = w.login("alice", "alice-tablet").await;
    let store = tablet.store().unwrap();
    let before = store.inbound_group_session_count().unwrap();
    assert!(store.undecryptable_event_count().unwrap() >= 3);
    let mut rx = tablet.subscribe_timeline();

    let wrong = tablet.import_room_keys(&file, "wrong horse", |_| {}).await;
    assert!(
        matches!(
            wrong,
            Err(ClientError::KeyExport(
                KeyExportError::WrongPassphraseOrTampered
            ))
        ),
        "{wrong:?}"
    );
    let cut = w.dir("files").join("cut.txt");
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    let cut_result = tablet.import_room_keys(&cut, "correct horse", |_| {}).await;
    assert!(
        matches!(
            cut_result,
            Err(ClientError::KeyExport(KeyExportError::NotAnExport(_)))
        ),
        "{cut_result:?}"
    );
    let mut bytes = text.clone().into_bytes();
    bytes[200] = if bytes[200] == b'A' { b'B' } else { b'A' };
    let changed = w.dir("files").join("changed.txt");
    std::fs::write(&changed, &bytes).unwrap();
    let changed_result = tablet
        .import_room_keys(&changed, "correct horse", |_| {})
        .await;
    assert!(
        matches!(
            changed_result,
            Err(ClientError::KeyExport(
                KeyExportError::WrongPassphraseOrTampered
            ))
        ),
        "{changed_result:?}"
    );
    assert_eq!(
        store.inbound_group_session_count().unwrap(),
        before,
        "nothing imported"
    );

    let summary = tablet
        .import_room_keys(&file, "correct horse", |_| {})
        .await
        .unwrap();
    assert_eq!(summary.total, written);
    assert_eq!(summary.refused, 0);
    assert_eq!(summary.imported + summary.already_known, written);
    let mut bodies: Vec<String> = decrypted_updates(&mut rx, 3)
        .await
        .into_iter()
        .map(|e| e.body.unwrap_or_default())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["one", "three", "two"]);
    assert_eq!(store.undecryptable_event_count().unwrap(), 0);

    // Imported again: all known, nothing re-delivered.
    let again = tablet
        .import_room_keys(&file, "correct horse", |_| {})
        .await
        .unwrap();
    assert_eq!(again.imported, 0);
    assert_eq!(again.already_known, written);
}
