//! The send queue: order, re-queueing, stages.

use ruma::OwnedEventId;

use super::super::*;
use super::fixtures::*;

pub(crate) fn send_queue_in_order<S: Store>(s: &S) {
    save(
        s,
        Changes::from(ClientChanges {
            queued_sends: vec![
                queued("t2", "!r:x", b"{\"body\":\"two\"}"),
                queued("t1", "!r:x", b"{\"body\":\"one\"}"),
                queued("t3", "!other:x", b"{}"),
            ],
            ..Default::default()
        }),
    );
    let txns = |s: &S| -> Vec<String> {
        s.queued_sends()
            .unwrap()
            .into_iter()
            .map(|q| q.txn_id)
            .collect()
    };
    assert_eq!(txns(s), ["t2", "t1", "t3"], "oldest first");
    assert_eq!(
        s.queued_sends().unwrap()[1],
        queued("t1", "!r:x", b"{\"body\":\"one\"}")
    );
    // Re-queued (another attempt): same place, new content; finished ones leave.
    save(
        s,
        Changes::from(ClientChanges {
            queued_sends: vec![queued("t2", "!r:x", b"{\"body\":\"2\"}")],
            finished_sends: vec!["t1".into(), "unknown".into()],
            ..Default::default()
        }),
    );
    assert_eq!(txns(s), ["t2", "t3"]);
    assert_eq!(
        s.queued_sends().unwrap()[0].content,
        blob(b"{\"body\":\"2\"}")
    );
}

/// A queued message moved on to `Ready` keeps its place and comes back with its stage,
/// type and new content; moving on one that left the queue fails and writes nothing.
pub(crate) fn send_queue_stages<S: Store>(s: &S) {
    let q = |txn: &str| queued(txn, "!r:x", b"{\"body\":\"plain\"}");
    save(
        s,
        Changes::from(ClientChanges {
            queued_sends: vec![q("t1"), q("t2")],
            ..Default::default()
        }),
    );
    let ready = QueuedSend {
        stage: SendStage::Ready,
        event_type: "m.room.encrypted".into(),
        content: blob(b"{\"ciphertext\":\"...\"}"),
        echo: Some(blob(b"{\"body\":\"plain\"}")),
        ..q("t1")
    };
    save(
        s,
        Changes::from(ClientChanges {
            advanced_sends: vec![ready.clone()],
            ..Default::default()
        }),
    );
    assert_eq!(s.queued_sends().unwrap(), [ready.clone(), q("t2")]);
    // t2 finished meanwhile: moving it on fails, and nothing of the batch is written.
    save(
        s,
        Changes::from(ClientChanges {
            finished_sends: vec!["t2".into()],
            ..Default::default()
        }),
    );
    let gone = QueuedSend {
        stage: SendStage::Ready,
        ..q("t2")
    };
    let outcome = s.save_changes(Changes::from(ClientChanges {
        advanced_sends: vec![gone],
        queued_sends: vec![q("t3")],
        ..Default::default()
    }));
    assert!(
        matches!(outcome, Err(StoreError::NotQueued(ref t)) if t == "t2"),
        "{outcome:?}"
    );
    assert_eq!(s.queued_sends().unwrap(), [ready]);
}

/// A stuck message comes back stuck with its reason, keeps its place, and is un-stuck by
/// the app's retry (an UPDATE like any other move).
pub(crate) fn send_queue_stuck<S: Store>(s: &S) {
    let q = |txn: &str| queued(txn, "!r:x", b"{\"body\":\"plain\"}");
    save(
        s,
        Changes::from(ClientChanges {
            queued_sends: vec![q("t1"), q("t2")],
            ..Default::default()
        }),
    );
    for reason in [StuckReason::UnknownDevices, StuckReason::TooLarge] {
        let stuck = QueuedSend {
            stuck: Some(reason),
            ..q("t1")
        };
        save(
            s,
            Changes::from(ClientChanges {
                advanced_sends: vec![stuck.clone()],
                ..Default::default()
            }),
        );
        assert_eq!(s.queued_sends().unwrap(), [stuck, q("t2")]);
    }
    save(
        s,
        Changes::from(ClientChanges {
            advanced_sends: vec![q("t1")],
            ..Default::default()
        }),
    );
    assert_eq!(s.queued_sends().unwrap(), [q("t1"), q("t2")]);
}

/// The event ids of sent messages are found by transaction id; the newest
/// [`quota::MAX_SENT_EVENTS`] are kept.
pub(crate) fn sent_events_bounded<S: Store>(s: &S) {
    let event = |i: u64| OwnedEventId::try_from(format!("$e{i}:x")).unwrap();
    let max = quota::MAX_SENT_EVENTS;
    for chunk in (0..max + 10).collect::<Vec<_>>().chunks(100) {
        save(
            s,
            Changes::from(ClientChanges {
                sent_events: chunk.iter().map(|i| (format!("t{i}"), event(*i))).collect(),
                ..Default::default()
            }),
        );
    }
    assert_eq!(
        s.sent_event("t0").unwrap(),
        None,
        "the oldest are forgotten"
    );
    assert_eq!(s.sent_event("t9").unwrap(), None);
    assert_eq!(s.sent_event("t10").unwrap(), Some(event(10)));
    assert_eq!(
        s.sent_event(&format!("t{}", max + 9)).unwrap(),
        Some(event(max + 9))
    );
    assert_eq!(s.sent_event("unknown").unwrap(), None);
}
