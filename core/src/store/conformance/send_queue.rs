//! The send queue: order, re-queueing, stages.

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
