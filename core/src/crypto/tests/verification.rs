//! Interactive verification (SAS) between machines on the fake server: two users, two
//! devices of one user, the user declining or seeing a mismatch, and what an attacker in
//! the middle (a forged key or MAC, a stranger's messages, stale requests) achieves.

use ruma::OwnedTransactionId;

use super::*;
use crate::time::Clock;

/// alice and bob, cross-signed, each knowing the other's devices and identity.
fn acquainted_pair() -> (FakeServer, Peer, Peer) {
    let (mut server, alice, bob) = setup_pair();
    server.publish_cross_signing(&alice);
    server.publish_cross_signing(&bob);
    for (peer, other) in [(&alice, &bob), (&bob, &alice)] {
        peer.machine
            .update_tracked_users(&[peer.user(), other.user()])
            .unwrap();
        server.drive(peer);
    }
    (server, alice, bob)
}

/// Deliver what both sent until nothing moves; the last state of each flow on each side.
fn pump(server: &mut FakeServer, a: &Peer, b: &Peer) -> (Vec<Verification>, Vec<Verification>) {
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        server.drive(a);
        server.drive(b);
        let waiting = |p: &Peer| server.inbox.get(&p.id()).is_some_and(|i| !i.is_empty());
        if !waiting(a) && !waiting(b) {
            return (on_a, on_b);
        }
        on_a.extend(server.sync(a).verifications);
        on_b.extend(server.sync(b).verifications);
    }
    panic!("the peers never stopped talking")
}

fn state_of(peer: &Peer, id: &OwnedTransactionId) -> VerificationState {
    peer.machine.verification(id).unwrap().expect("flow").state
}

fn sas_of(peer: &Peer, id: &OwnedTransactionId) -> ShortAuthString {
    match state_of(peer, id) {
        VerificationState::CompareSas(sas) => sas,
        other => panic!("not comparing: {other:?}"),
    }
}

/// `a` asks `b` (one device, or all of `b`'s user's); `b` accepts; both reach the strings.
fn up_to_comparison(
    server: &mut FakeServer,
    a: &Peer,
    b: &Peer,
    device: Option<&ruma::DeviceId>,
) -> OwnedTransactionId {
    let flow = a.machine.request_verification(&b.user(), device).unwrap();
    assert_eq!(flow.state, VerificationState::Requested);
    let (_, on_b) = pump(server, a, b);
    let incoming = on_b.last().expect("request arrived");
    assert_eq!(incoming.state, VerificationState::Incoming);
    assert_eq!(
        incoming.other_device.as_deref(),
        Some(a.machine.device_id())
    );
    assert!(!incoming.we_requested);
    b.machine.accept_verification(&flow.flow_id).unwrap();
    pump(server, a, b);
    let id = flow.flow_id;
    assert_eq!(
        sas_of(a, &id),
        sas_of(b, &id),
        "both sides show the same string"
    );
    id
}

fn device_of(peer: &Peer, other: &Peer) -> Device {
    peer.machine
        .devices(&other.user())
        .unwrap()
        .into_iter()
        .find(|d| d.device_id == other.device())
        .unwrap()
}

#[test]
fn two_users_verify_devices_and_identities_by_emoji() {
    let (mut server, alice, bob) = acquainted_pair();
    let id = up_to_comparison(&mut server, &alice, &bob, Some(&bob.device()));
    assert_eq!(sas_of(&alice, &id).emoji.len(), 7);
    alice.machine.confirm_verification(&id).unwrap();
    assert_eq!(state_of(&alice, &id), VerificationState::Confirmed);
    pump(&mut server, &alice, &bob);
    // bob holds alice's MAC until his user confirms too: nothing is verified yet.
    assert!(!device_of(&bob, &alice).verified);
    bob.machine.confirm_verification(&id).unwrap();
    let (on_alice, _) = pump(&mut server, &alice, &bob);
    let done = VerificationState::Done {
        identity_verified: true,
    };
    assert_eq!(state_of(&bob, &id), done);
    assert_eq!(on_alice.last().unwrap().state, done);
    assert_eq!(device_of(&alice, &bob).local_trust, LocalTrust::Verified);
    assert_eq!(device_of(&bob, &alice).local_trust, LocalTrust::Verified);
    assert!(
        alice
            .machine
            .identity(&bob.user())
            .unwrap()
            .unwrap()
            .verified
    );
    assert!(
        bob.machine
            .identity(&alice.user())
            .unwrap()
            .unwrap()
            .verified
    );
}

#[test]
fn a_new_own_device_verifies_with_the_one_holding_the_cross_signing_keys() {
    let mut server = FakeServer::default();
    let (old, new) = (
        Peer::new("@alice:localhost", "OLD"),
        Peer::new("@alice:localhost", "NEW"),
    );
    server.drive(&old);
    server.publish_cross_signing(&old);
    server.drive(&new);
    for peer in [&old, &new] {
        peer.machine.update_tracked_users(&[peer.user()]).unwrap();
        server.drive(peer);
    }
    assert!(!new.machine.identity(&new.user()).unwrap().unwrap().verified);
    // The new device asks all the user's other devices (here: the old one).
    let id = up_to_comparison(&mut server, &new, &old, None);
    new.machine.confirm_verification(&id).unwrap();
    old.machine.confirm_verification(&id).unwrap();
    pump(&mut server, &new, &old);
    // The old device vouched for the master key; the new one cannot (it neither holds the
    // keys nor trusted the identity before).
    let done = |identity_verified| VerificationState::Done { identity_verified };
    assert_eq!(state_of(&new, &id), done(true));
    assert_eq!(state_of(&old, &id), done(false));
    // The new device now trusts the own identity, and the old one the new device.
    assert!(new.machine.identity(&new.user()).unwrap().unwrap().verified);
    assert!(device_of(&old, &new).verified);
    assert!(device_of(&new, &old).verified);
}

#[test]
fn a_declined_request_is_cancelled_on_both_sides() {
    let (mut server, alice, bob) = acquainted_pair();
    let flow = alice
        .machine
        .request_verification(&bob.user(), None)
        .unwrap();
    pump(&mut server, &alice, &bob);
    let cancelled = bob.machine.cancel_verification(&flow.flow_id).unwrap();
    assert!(matches!(
        cancelled.state,
        VerificationState::Cancelled {
            code: CancelCode::User,
            by_us: true,
            ..
        }
    ));
    let (on_alice, _) = pump(&mut server, &alice, &bob);
    assert!(matches!(
        &on_alice.last().unwrap().state,
        VerificationState::Cancelled {
            code: CancelCode::User,
            by_us: false,
            ..
        }
    ));
    assert_eq!(device_of(&alice, &bob).local_trust, LocalTrust::Unset);
}

#[test]
fn a_mismatch_cancels_and_verifies_nothing() {
    let (mut server, alice, bob) = acquainted_pair();
    let id = up_to_comparison(&mut server, &alice, &bob, None);
    alice.machine.confirm_verification(&id).unwrap();
    bob.machine.sas_mismatch(&id).unwrap();
    let (on_alice, _) = pump(&mut server, &alice, &bob);
    assert!(matches!(
        &on_alice.last().unwrap().state,
        VerificationState::Cancelled {
            code: CancelCode::MismatchedSas,
            by_us: false,
            ..
        }
    ));
    assert!(!device_of(&alice, &bob).verified);
    assert!(!device_of(&bob, &alice).verified);
    assert!(
        !alice
            .machine
            .identity(&bob.user())
            .unwrap()
            .unwrap()
            .verified
    );
    // A late call of the app on a cancelled flow changes nothing.
    assert!(bob.machine.confirm_verification(&id).is_err());
    assert!(!device_of(&bob, &alice).verified);
}

/// Replace the content of the first queued message of `event_type` to `peer`.
fn tamper(server: &mut FakeServer, peer: &Peer, event_type: &str, f: impl Fn(&mut Value)) {
    let inbox = server.inbox.get_mut(&peer.id()).expect("messages queued");
    let event = inbox
        .iter_mut()
        .find(|e| e["type"] == event_type)
        .expect("message of that type");
    f(&mut event["content"]);
}

/// Step until `event_type` waits in `to`'s inbox (sent by `from`).
fn step_until(server: &mut FakeServer, from: &Peer, to: &Peer, event_type: &str) {
    for _ in 0..10 {
        server.drive(from);
        if server
            .inbox
            .get(&to.id())
            .is_some_and(|i| i.iter().any(|e| e["type"] == event_type))
        {
            return;
        }
        server.sync(from);
        server.drive(to);
        server.sync(to);
    }
    panic!("{event_type} never sent");
}

#[test]
fn a_key_swapped_in_transit_breaks_the_commitment() {
    let (mut server, alice, bob) = acquainted_pair();
    let flow = alice
        .machine
        .request_verification(&bob.user(), None)
        .unwrap();
    pump(&mut server, &alice, &bob);
    bob.machine.accept_verification(&flow.flow_id).unwrap();
    // alice starts, bob commits to his key, alice sends hers, bob answers with his key:
    // the server swaps it for one of its own.
    step_until(&mut server, &bob, &alice, "m.key.verification.key");
    let forged = vodozemac::sas::Sas::new().public_key().to_base64();
    tamper(&mut server, &alice, "m.key.verification.key", |c| {
        c["key"] = json!(forged)
    });
    pump(&mut server, &alice, &bob);
    let cancelled = VerificationState::Cancelled {
        code: CancelCode::MismatchedCommitment,
        reason: "the key did not match the commitment".into(),
        by_us: true,
    };
    assert_eq!(state_of(&alice, &flow.flow_id), cancelled);
    assert!(matches!(
        state_of(&bob, &flow.flow_id),
        VerificationState::Cancelled {
            code: CancelCode::MismatchedCommitment,
            by_us: false,
            ..
        }
    ));
}

#[test]
fn a_forged_mac_is_a_key_mismatch_and_verifies_nothing() {
    let (mut server, alice, bob) = acquainted_pair();
    let id = up_to_comparison(&mut server, &alice, &bob, None);
    alice.machine.confirm_verification(&id).unwrap();
    bob.machine.confirm_verification(&id).unwrap();
    server.drive(&bob);
    let other_mac = vodozemac::sas::Mac::from_slice(&[7; 32]).to_base64();
    let device_key_id = format!("ed25519:{}", bob.device());
    tamper(&mut server, &alice, "m.key.verification.mac", |c| {
        c["mac"][&device_key_id] = json!(other_mac)
    });
    pump(&mut server, &alice, &bob);
    assert!(matches!(
        state_of(&alice, &id),
        VerificationState::Cancelled {
            code: CancelCode::KeyMismatch,
            by_us: true,
            ..
        }
    ));
    assert!(!device_of(&alice, &bob).verified);
    assert!(
        !alice
            .machine
            .identity(&bob.user())
            .unwrap()
            .unwrap()
            .verified
    );
}

#[test]
fn a_mac_without_the_device_key_verifies_nothing() {
    let (mut server, alice, bob) = acquainted_pair();
    let id = up_to_comparison(&mut server, &alice, &bob, None);
    alice.machine.confirm_verification(&id).unwrap();
    bob.machine.confirm_verification(&id).unwrap();
    server.drive(&bob);
    // Dropping a key from the MAC map no longer matches the MAC of the key list.
    let device_key_id = format!("ed25519:{}", bob.device());
    tamper(&mut server, &alice, "m.key.verification.mac", |c| {
        c["mac"].as_object_mut().unwrap().remove(&device_key_id);
    });
    pump(&mut server, &alice, &bob);
    assert!(matches!(
        state_of(&alice, &id),
        VerificationState::Cancelled {
            code: CancelCode::KeyMismatch,
            ..
        }
    ));
    assert!(!device_of(&alice, &bob).verified);
}

#[test]
fn a_stranger_cannot_cancel_or_answer_someone_elses_verification() {
    let (mut server, alice, bob) = acquainted_pair();
    let id = up_to_comparison(&mut server, &alice, &bob, None);
    let forged = |event_type: &str, content: Value| json!({"type": event_type, "sender": "@mallory:localhost", "content": content});
    let events = vec![
        forged(
            "m.key.verification.cancel",
            json!({"transaction_id": id, "code": "m.user", "reason": "no"}),
        ),
        forged(
            "m.key.verification.mac",
            json!({"transaction_id": id, "mac": {}, "keys": "AAAA"}),
        ),
    ];
    let outcome = alice
        .machine
        .receive_sync_changes(SyncChanges {
            to_device_events: events,
            ..Default::default()
        })
        .unwrap();
    assert!(outcome.verifications.is_empty());
    assert!(matches!(
        state_of(&alice, &id),
        VerificationState::CompareSas(_)
    ));
}

fn request_from(sender: &Peer, id: &str, timestamp: u64) -> Value {
    json!({
        "type": "m.key.verification.request",
        "sender": sender.user(),
        "content": {
            "from_device": sender.device(),
            "transaction_id": id,
            "methods": ["m.sas.v1"],
            "timestamp": timestamp,
        },
    })
}

fn receive(peer: &Peer, events: Vec<Value>) -> Vec<Verification> {
    peer.machine
        .receive_sync_changes(SyncChanges {
            to_device_events: events,
            ..Default::default()
        })
        .unwrap()
        .verifications
}

#[test]
fn stale_future_malformed_and_excess_requests_are_ignored() {
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let (_server, alice, bob) = setup_pair_with_clock(&clock);
    let now = clock.now_ms();
    let stale = request_from(&bob, "stale", now - TIMEOUT_FOR_TESTS - 1);
    let future = request_from(&bob, "future", now + 6 * 60 * 1000);
    let mut malformed = request_from(&bob, "bad", now);
    malformed["content"]["methods"] = json!("m.sas.v1");
    assert!(receive(&alice, vec![stale, future, malformed]).is_empty());
    // One user holds at most four requests at a time.
    let many: Vec<Value> = (0..10)
        .map(|i| request_from(&bob, &format!("r{i}"), now))
        .collect();
    assert_eq!(receive(&alice, many).len(), 4);
    assert_eq!(alice.machine.verifications().unwrap().len(), 4);
}

const TIMEOUT_FOR_TESTS: u64 = 10 * 60 * 1000;

#[test]
fn a_silent_flow_times_out() {
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let (_server, alice, bob) = setup_pair_with_clock(&clock);
    let now = clock.now_ms();
    assert_eq!(receive(&alice, vec![request_from(&bob, "t", now)]).len(), 1);
    assert!(receive(&alice, Vec::new()).is_empty(), "nothing due yet");
    clock.advance(TIMEOUT_FOR_TESTS + 1);
    let expired = receive(&alice, Vec::new());
    assert!(matches!(
        &expired[0].state,
        VerificationState::Cancelled {
            code: CancelCode::Timeout,
            by_us: true,
            ..
        }
    ));
}

/// Three devices of alice (a new one, a phone, a tablet), each knowing the others.
fn own_devices() -> (FakeServer, Vec<Peer>) {
    let mut server = FakeServer::default();
    let peers: Vec<Peer> = ["NEW", "PHONE", "TABLET"]
        .iter()
        .map(|d| Peer::new("@alice:localhost", d))
        .collect();
    for peer in &peers {
        server.drive(peer);
    }
    for peer in &peers {
        peer.machine.update_tracked_users(&[peer.user()]).unwrap();
        server.drive(peer);
    }
    (server, peers)
}

#[test]
fn when_two_own_devices_accept_the_first_is_verified_and_the_other_told() {
    let (mut server, peers) = own_devices();
    let (new, phone, tablet) = (&peers[0], &peers[1], &peers[2]);
    let flow = new.machine.request_verification(&new.user(), None).unwrap();
    for peer in [phone, tablet] {
        server.drive(new);
        assert_eq!(server.sync(peer).verifications.len(), 1, "both were asked");
    }
    // Both users tap "accept"; the phone's answer arrives first.
    phone.machine.accept_verification(&flow.flow_id).unwrap();
    tablet.machine.accept_verification(&flow.flow_id).unwrap();
    server.drive(phone);
    server.drive(tablet);
    server.sync(new);
    pump(&mut server, new, phone);
    server.drive(new);
    server.sync(tablet);
    assert!(matches!(
        state_of(tablet, &flow.flow_id),
        VerificationState::Cancelled {
            code: CancelCode::Accepted,
            by_us: false,
            ..
        }
    ));
    assert_eq!(sas_of(new, &flow.flow_id), sas_of(phone, &flow.flow_id));
    let verification = new.machine.verification(&flow.flow_id).unwrap().unwrap();
    assert_eq!(verification.other_device, Some(phone.device()));
}

#[test]
fn a_master_key_that_changed_after_the_verification_is_never_signed() {
    let (mut server, alice, bob) = acquainted_pair();
    let id = up_to_comparison(&mut server, &alice, &bob, None);
    alice.machine.confirm_verification(&id).unwrap();
    bob.machine.confirm_verification(&id).unwrap();
    pump(&mut server, &alice, &bob);
    assert!(
        alice
            .machine
            .identity_signature(&bob.user())
            .unwrap()
            .is_some()
    );
    // bob's identity is replaced (the server, say) and alice learns it before publishing.
    server.reset_cross_signing(&bob);
    alice
        .machine
        .receive_sync_changes(SyncChanges {
            changed_users: vec![bob.user()],
            ..Default::default()
        })
        .unwrap();
    server.drive(&alice);
    let identity = alice.machine.identity(&bob.user()).unwrap().unwrap();
    assert!(identity.verification_violation && !identity.verified);
    assert!(
        alice
            .machine
            .identity_signature(&bob.user())
            .unwrap()
            .is_none(),
        "the new key was not compared: it must not be signed"
    );
}

#[test]
fn a_ready_from_a_device_we_did_not_ask_is_ignored() {
    let (mut server, alice, bob) = acquainted_pair();
    let flow = alice
        .machine
        .request_verification(&bob.user(), Some(&bob.device()))
        .unwrap();
    let stray = json!({"type": "m.key.verification.ready", "sender": bob.user(),
        "content": {"from_device": "OTHERDEVICE", "methods": ["m.sas.v1"],
            "transaction_id": flow.flow_id}});
    assert!(receive(&alice, vec![stray]).is_empty());
    assert_eq!(
        state_of(&alice, &flow.flow_id),
        VerificationState::Requested
    );
    pump(&mut server, &alice, &bob);
    bob.machine.accept_verification(&flow.flow_id).unwrap();
    pump(&mut server, &alice, &bob);
    sas_of(&alice, &flow.flow_id);
}

#[test]
fn a_request_declined_on_one_device_is_withdrawn_from_the_others() {
    let (mut server, peers) = own_devices();
    let (new, phone, tablet) = (&peers[0], &peers[1], &peers[2]);
    let flow = new.machine.request_verification(&new.user(), None).unwrap();
    server.drive(new);
    server.sync(phone);
    server.sync(tablet);
    phone.machine.cancel_verification(&flow.flow_id).unwrap();
    server.drive(phone);
    server.sync(new);
    server.drive(new);
    let on_tablet = server.sync(tablet).verifications;
    assert!(matches!(
        &on_tablet[0].state,
        VerificationState::Cancelled {
            code: CancelCode::User,
            by_us: false,
            ..
        }
    ));
}

#[test]
fn calls_at_the_wrong_moment_are_refused_and_change_nothing() {
    let (mut server, alice, bob) = acquainted_pair();
    let flow = alice
        .machine
        .request_verification(&bob.user(), None)
        .unwrap();
    pump(&mut server, &alice, &bob);
    // Nothing to compare yet: neither a mismatch nor a confirmation means anything.
    assert!(matches!(
        bob.machine.sas_mismatch(&flow.flow_id),
        Err(CryptoError::InvalidInput(_))
    ));
    assert!(bob.machine.confirm_verification(&flow.flow_id).is_err());
    assert!(alice.machine.accept_verification(&flow.flow_id).is_err());
    assert_eq!(state_of(&bob, &flow.flow_id), VerificationState::Incoming);
    assert_eq!(
        state_of(&alice, &flow.flow_id),
        VerificationState::Requested
    );
}

#[test]
fn only_decimals_are_shown_when_emoji_were_not_agreed() {
    let (mut server, alice, bob) = acquainted_pair();
    let flow = alice
        .machine
        .request_verification(&bob.user(), None)
        .unwrap();
    pump(&mut server, &alice, &bob);
    bob.machine.accept_verification(&flow.flow_id).unwrap();
    step_until(&mut server, &bob, &alice, "m.key.verification.accept");
    tamper(&mut server, &alice, "m.key.verification.accept", |c| {
        c["short_authentication_string"] = json!(["decimal"])
    });
    pump(&mut server, &alice, &bob);
    let (at_alice, at_bob) = (sas_of(&alice, &flow.flow_id), sas_of(&bob, &flow.flow_id));
    assert!(at_alice.emoji.is_empty());
    assert_eq!(at_alice.decimals, at_bob.decimals);
}

#[test]
fn strangers_requests_take_only_part_of_the_room() {
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let (mut server, alice, bob) = setup_pair_with_clock(&clock);
    let now = clock.now_ms();
    let requests: Vec<Value> = (0..40)
        .map(|i| {
            let mut r = request_from(&bob, &format!("s{i}"), now);
            r["sender"] = json!(format!("@stranger{i}:localhost"));
            r
        })
        .collect();
    assert_eq!(receive(&alice, requests).len(), 16);
    // Our own user can still start one.
    alice.machine.update_tracked_users(&[bob.user()]).unwrap();
    server.drive(&alice);
    assert!(
        alice
            .machine
            .request_verification(&bob.user(), None)
            .is_ok()
    );
}

#[test]
fn a_flow_ends_ten_minutes_after_it_began_however_busy() {
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let (_server, alice, bob) = setup_pair_with_clock(&clock);
    assert_eq!(
        receive(&alice, vec![request_from(&bob, "t", clock.now_ms())]).len(),
        1
    );
    clock.advance(6 * 60 * 1000);
    // A message of the flow's user that the flow ignores (another device's start).
    let start = json!({"type": "m.key.verification.start", "sender": bob.user(), "content": {
        "from_device": "OTHERDEVICE", "transaction_id": "t", "method": "m.sas.v1",
        "key_agreement_protocols": ["curve25519-hkdf-sha256"], "hashes": ["sha256"],
        "message_authentication_codes": ["hkdf-hmac-sha256.v2"],
        "short_authentication_string": ["decimal"]}});
    receive(&alice, vec![start]);
    clock.advance(5 * 60 * 1000);
    let expired = receive(&alice, Vec::new());
    assert!(matches!(
        &expired[0].state,
        VerificationState::Cancelled {
            code: CancelCode::Timeout,
            ..
        }
    ));
}

#[test]
fn a_request_sent_over_olm_is_taken_with_the_authenticated_sender() {
    let (mut server, alice, bob) = acquainted_pair();
    server.establish(&alice, &[bob.user()]);
    let mut payload = olm_identity(&alice, &bob);
    payload["type"] = json!("m.key.verification.request");
    let now = crate::time::SystemClock.now_ms();
    payload["content"] = request_from(&alice, "over-olm", now)["content"].clone();
    let event = olm_event_raw(&alice, &bob, payload.to_string().as_bytes());
    let updates = receive(&bob, vec![event]);
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].other_user, alice.user());
    assert_eq!(updates[0].state, VerificationState::Incoming);
}
