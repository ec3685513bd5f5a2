//! A homeserver in the way: bloated sync answers, requests refused for good, gaps that never fill.

use super::support::*;

/// 6. One `/sync` answer made huge by others: 60 invites whose stripped state carries seven
///    60 KB events each, and padding the client does not use (over 35 MB in all, more than
///    an answer used to be allowed to be). It is read as a stream without being held: the
///    sync takes it, advances, and delivers the message it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_answer_bloated_by_others_is_read_without_holding_it() {
    let s = scene(&["alice", "bob"], |_| {}).await;
    let before = before(&s.bob, &s.alice).await;
    let bloat = "x".repeat(60_000);
    let rewrite = Rewrite::json(move |sync| {
        for i in 0..60 {
            let state: Vec<Value> = (0..7)
                .map(|_| {
                    json!({"type": "m.room.topic", "state_key": "", "sender": "@x:evil",
                                "content": {"topic": bloat}})
                })
                .collect();
            *entry(sync, &["rooms", "invite", &format!("!bloat{i}:evil")]) =
                json!({"invite_state": {"events": state}});
        }
        sync["padding"] = "y".repeat(10 * 1024 * 1024).into();
    });
    s.proxy
        .rule("/sync", Action::RewriteResponse(rewrite), Some(1));
    let missed = poke(&s.alice, &s.room).await;
    let token_before = token(&s.bob);
    let mut rx = s.bob.subscribe_timeline();
    s.bob
        .sync_once(Duration::ZERO)
        .await
        .expect("the bloated answer is taken");
    assert_ne!(token(&s.bob), token_before, "the sync advanced");
    let got = std::iter::from_fn(|| rx.try_recv().ok()).find(|e| e.event_id == missed);
    assert!(
        got.is_some_and(|e| e.decrypted),
        "the message it carried arrived"
    );
    assert_eq!(s.bob.store().unwrap().counts().unwrap().invites, 60);
    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
}

/// 7. The server refuses bob's first to-device request for good (400): it is dropped, not
///    retried forever, and does not hold up what bob sends later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_device_request_refused_for_good_is_dropped_and_later_sends_get_through() {
    let s = scene(&["alice", "bob"], |_| {}).await;
    let before = before(&s.bob, &s.alice).await;
    s.proxy.rule("/sendToDevice", Action::Fail(400), Some(1));

    // bob's first to-device request is the room key for his first message.
    s.bob
        .send_text(&s.room, "its room key is refused")
        .await
        .expect("the message itself still goes out");
    let refused: Vec<String> = s
        .proxy
        .log()
        .into_iter()
        .filter(|l| l.contains("/sendToDevice/") && l.ends_with(" 400"))
        .collect();
    assert_eq!(refused.len(), 1, "{:?}", s.proxy.log());
    let refused_path = refused[0].split(' ').nth(1).unwrap().to_owned();
    assert!(
        refused_path.contains("/sendToDevice/m.room.encrypted/"),
        "the refused request is the Olm-encrypted room key: {refused_path}"
    );
    assert!(
        s.bob
            .store()
            .unwrap()
            .pending_to_device()
            .unwrap()
            .is_empty(),
        "the refused request is kept for a retry"
    );

    // bob's next message: alice must be able to read it (the refused key must not leave
    // her without the session for good).
    let later = s
        .bob
        .send_text(&s.room, "sent after the refusal")
        .await
        .expect("a later send");
    let got = receive_event(&s.alice, &s.room, &later).await;
    assert!(
        got.decrypted,
        "alice cannot read bob's message sent after the refusal: the refused room key was \
         never shared again ({:?})",
        got.error
    );
    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
    let log = s.proxy.log();
    assert_eq!(
        log.iter()
            .filter(|l| l.split(' ').nth(1) == Some(refused_path.as_str()))
            .count(),
        1,
        "the refused request was sent again: {log:?}"
    );
}

/// 8. bob's sync answers say the room's timeline is `limited` (with a `prev_batch`), and every
///    back-fill (`/messages`) fails: the gap stays, but sync advances and messages arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_whose_backfill_always_fails_does_not_hold_up_sync() {
    let s = scene(&["alice", "bob"], |_| {}).await;
    let before = before(&s.bob, &s.alice).await;
    let (room, limited) = (s.room.clone(), counter());
    let l = limited.clone();
    let rewrite = Rewrite::json(move |sync| {
        let Some(timeline) = sync
            .get_mut("rooms")
            .and_then(|r| r.get_mut("join"))
            .and_then(|j| j.get_mut(room.as_str()))
            .and_then(|r| r.get_mut("timeline"))
            .filter(|t| t.is_object())
        else {
            return;
        };
        timeline["limited"] = true.into();
        if !timeline["prev_batch"].is_string() {
            timeline["prev_batch"] = "hostile-prev-batch".into();
        }
        l.fetch_add(1, Ordering::SeqCst);
    });
    s.proxy.rule("/messages", Action::Fail(500), None);
    s.proxy
        .rule("/sync", Action::RewriteResponse(rewrite), None);

    let token_before = token(&s.bob);
    let sent = s
        .alice
        .send_text(&s.room, "across a gap that cannot be filled")
        .await
        .unwrap();
    let got = receive_event(&s.bob, &s.room, &sent).await;
    assert!(got.decrypted, "{got:?}");
    assert_ne!(token(&s.bob), token_before);
    let marked = count(&limited);
    assert!(marked >= 1, "no sync answer was marked limited");
    let failed = s
        .proxy
        .log()
        .iter()
        .filter(|l| l.contains("/messages") && l.ends_with(" 500"))
        .count();
    assert!(
        failed >= 1,
        "the gap was never back-filled: {:?}",
        s.proxy.log()
    );

    // With the gaps and failures still there.
    assert_still_works(&s.bob, &s.alice, &s.room, &before).await;
    let (marked, failed) = (
        count(&limited),
        s.proxy
            .log()
            .iter()
            .filter(|l| l.contains("/messages") && l.ends_with(" 500"))
            .count(),
    );
    println!("{marked} sync answers marked limited, {failed} back-fill requests failed");
    assert!(
        failed <= 4 * marked,
        "{failed} back-fill attempts for {marked} gaps: retried without bound"
    );
}
