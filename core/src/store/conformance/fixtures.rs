//! Record builders and whole-store assertions shared by the conformance suite and the
//! SQLite-specific tests.

use ruma::EventEncryptionAlgorithm;
use ruma::events::room::history_visibility::HistoryVisibility;
use ruma::events::room::member::MembershipState;
use ruma::events::room_key::withheld::RoomKeyWithheldCode;

use super::super::*;
use crate::test_ids::{did, eid, rid, uid};

pub(crate) fn blob(bytes: &[u8]) -> SecretBlob {
    SecretBlob::new(bytes.to_vec())
}

pub(crate) fn account(user: &str, device: &str, pickle: &[u8]) -> AccountRecord {
    AccountRecord {
        user_id: uid(user),
        device_id: did(device),
        pickle: blob(pickle),
        device_keys_uploaded: true,
        server_one_time_key_count: 50,
        fallback_key_created_ms: 1_700_000_000_000,
    }
}

pub(crate) fn olm(sender_key: &str, session_id: &str, pickle: &[u8]) -> OlmSessionRecord {
    OlmSessionRecord {
        sender_key: sender_key.into(),
        session_id: session_id.into(),
        pickle: blob(pickle),
        created_ms: 10,
        last_used_ms: 20,
    }
}

pub(crate) fn inbound(room: &str, session_id: &str) -> InboundGroupSessionRecord {
    InboundGroupSessionRecord {
        room_id: rid(room),
        session_id: session_id.into(),
        sender_key: format!("curve-of-{session_id}"),
        signing_key: format!("ed-of-{session_id}"),
        sender_user: Some(uid("@alice:example.org")),
        sender_device: Some(did("ALICEDEV")),
        pickle: blob(format!("inbound pickle {room} {session_id}").as_bytes()),
        first_known_index: 3,
        sender_data: SenderData {
            trust: SenderTrust::CrossSigned,
            master_key: Some(format!("master-of-{session_id}")),
            legacy: false,
            retry: None,
        },
        imported: false,
        backed_up: false,
    }
}

pub(crate) fn outbound(room: &str, session_id: &str) -> OutboundGroupSessionRecord {
    OutboundGroupSessionRecord {
        room_id: rid(room),
        session_id: session_id.into(),
        pickle: blob(format!("outbound pickle {room} {session_id}").as_bytes()),
        created_ms: 1234,
        message_count: 7,
        shared_with: vec![
            ShareRecipient {
                user_id: uid("@bob:example.org"),
                device_id: did("BOBDEV"),
                curve25519: "bobcurve".into(),
                index: 0,
                withheld: None,
            },
            ShareRecipient {
                user_id: uid("@carol:example.org"),
                device_id: did("CAROLDEV"),
                curve25519: "carolcurve".into(),
                index: 5,
                withheld: None,
            },
        ],
    }
}

pub(crate) fn device(user: &str, device_id: &str, curve: &str) -> DeviceRecord {
    DeviceRecord {
        user_id: uid(user),
        device_id: did(device_id),
        curve25519: curve.into(),
        ed25519: format!("ed-{curve}"),
        algorithms: vec![
            EventEncryptionAlgorithm::OlmV1Curve25519AesSha2,
            EventEncryptionAlgorithm::MegolmV1AesSha2,
        ],
        display_name: Some(format!("{device_id} phone")),
        keys_json: format!("{{\"device_id\":\"{device_id}\"}}"),
        local_trust: LocalTrust::Unset,
        deleted: false,
    }
}

pub(crate) fn tracked(user: &str, state: TrackingState, sequence: u64) -> TrackedUser {
    TrackedUser {
        user_id: uid(user),
        state,
        sequence,
    }
}

pub(crate) fn megolm(
    sender_key: &str,
    session_id: &str,
    index: u32,
    event: &str,
) -> MegolmIndexRecord {
    MegolmIndexRecord {
        session_id: session_id.into(),
        sender_key: sender_key.into(),
        index,
        event_id: eid(event),
        origin_ts: 99,
    }
}

pub(crate) fn room(room_id: &str) -> RoomRecord {
    RoomRecord {
        room_id: rid(room_id),
        encryption: Some(RoomEncryption {
            algorithm: EventEncryptionAlgorithm::MegolmV1AesSha2,
            rotation_period_ms: None,
            rotation_period_msgs: None,
        }),
        history_visibility: Some(HistoryVisibility::Shared),
        members_synced: true,
        own_membership: Some(MembershipState::Join),
    }
}

pub(crate) fn member(room_id: &str, user: &str, membership: &str) -> MemberRecord {
    MemberRecord {
        room_id: rid(room_id),
        user_id: uid(user),
        membership: MembershipState::from(membership),
    }
}

pub(crate) fn pending(txn_id: &str, body: &str) -> PendingToDevice {
    PendingToDevice {
        txn_id: txn_id.into(),
        event_type: "m.room.encrypted".into(),
        messages_json: body.into(),
        room_key: Some((rid("!room:x"), format!("session-of-{txn_id}"))),
    }
}

pub(crate) fn queued(txn_id: &str, room_id: &str, content: &[u8]) -> QueuedSend {
    QueuedSend {
        txn_id: txn_id.into(),
        room_id: rid(room_id),
        stage: SendStage::Queued,
        event_type: "m.room.message".into(),
        content: blob(content),
        echo: None,
        stuck: None,
    }
}

pub(crate) fn notice(room: &str, session_id: &str, sender: &str) -> WithheldNotice {
    WithheldNotice {
        room_id: rid(room),
        session_id: session_id.into(),
        sender: uid(sender),
        sender_key: format!("curve-of-{sender}"),
        code: RoomKeyWithheldCode::Unverified,
        reason: Some(format!("reason {session_id}")),
    }
}

pub(crate) fn key_request(room: &str, session_id: &str) -> KeyRequestRecord {
    KeyRequestRecord {
        room_id: rid(room),
        session_id: session_id.into(),
        request_id: format!("req-{session_id}"),
    }
}

pub(crate) fn no_olm_key(room: &str, session_id: &str, index: u32) -> NoOlmRoomKey {
    NoOlmRoomKey {
        room_id: rid(room),
        session_id: session_id.into(),
        index,
        session_key: blob(format!("session key {room} {session_id} {index}").as_bytes()),
    }
}

pub(crate) fn unwedged(curve25519: &str, unwedged_ms: u64) -> UnwedgeRecord {
    UnwedgeRecord {
        curve25519: curve25519.into(),
        unwedged_ms,
    }
}

/// One record of every kind (and a sync token), keys derived from `tag`.
pub(crate) fn full_changes(tag: &str) -> Changes {
    let mut c = Changes {
        crypto: CryptoChanges {
            account: Some(account(&format!("@me-{tag}:x"), "MYDEV", tag.as_bytes())),
            olm_sessions: vec![olm(&format!("sk-{tag}"), "os1", b"olm pickle")],
            inbound_group_sessions: vec![inbound(&format!("!room-{tag}"), "igs1")],
            outbound_group_sessions: vec![outbound(&format!("!room-{tag}"), "ogs1")],
            no_olm_room_keys: vec![no_olm_key(&format!("!room-{tag}"), "ogs1", 2)],
            unwedge_records: vec![unwedged(&format!("curve-{tag}"), 1_700_000_000_000)],
            devices: vec![device(
                &format!("@u-{tag}:x"),
                "D1",
                &format!("curve-{tag}"),
            )],
            tracked_users: vec![tracked(
                &format!("@u-{tag}:x"),
                TrackingState::Downloading,
                4,
            )],
            megolm_indices: vec![megolm(&format!("sk-{tag}"), "igs1", 1, "$e")],
            pending_to_device: vec![pending(&format!("txn-{tag}"), "{}")],
            withheld_notices: vec![notice(&format!("!room-{tag}"), "wh1", "@w:x")],
            key_requests: vec![key_request(&format!("!room-{tag}"), "kr1")],
            ..Default::default()
        },
        client: ClientChanges {
            rooms: vec![room(&format!("!room-{tag}"))],
            members: vec![member(
                &format!("!room-{tag}"),
                &format!("@u-{tag}:x"),
                "join",
            )],
            queued_sends: vec![queued(
                &format!("send-{tag}"),
                &format!("!room-{tag}"),
                b"{}",
            )],
            ..Default::default()
        },
        sync_token: Some(format!("token-{tag}")),
        lease: None,
    };
    c.client.values.insert(format!("v-{tag}"), "plain".into());
    c.client
        .secret_values
        .insert(format!("s-{tag}"), blob(b"access token"));
    c
}

/// Everything of [`full_changes`]`(tag)` is in the store, except the account and the sync
/// token, which only hold the latest value.
pub(crate) fn assert_full_present<S: Store + ?Sized>(s: &S, tag: &str) {
    let c = full_changes(tag);
    let sk = format!("sk-{tag}");
    assert_eq!(s.olm_sessions(&[&sk]).unwrap()[&sk], c.crypto.olm_sessions);
    let room_id = rid(&format!("!room-{tag}"));
    assert_eq!(
        s.inbound_group_session(&room_id, "igs1").unwrap().as_ref(),
        c.crypto.inbound_group_sessions.first()
    );
    assert_eq!(
        s.outbound_group_session(&room_id).unwrap().as_ref(),
        c.crypto.outbound_group_sessions.first()
    );
    assert_eq!(
        s.no_olm_room_key(&room_id, "ogs1", 2).unwrap().as_ref(),
        c.crypto.no_olm_room_keys.first()
    );
    assert_eq!(
        s.unwedge_record(&format!("curve-{tag}")).unwrap().as_ref(),
        c.crypto.unwedge_records.first()
    );
    let user = uid(&format!("@u-{tag}:x"));
    assert_eq!(s.devices(&[&user]).unwrap(), c.crypto.devices);
    assert!(
        s.tracked_users()
            .unwrap()
            .contains(&c.crypto.tracked_users[0])
    );
    assert_eq!(
        s.megolm_index(&sk, "igs1", 1).unwrap().as_ref(),
        c.crypto.megolm_indices.first()
    );
    assert_eq!(s.room(&room_id).unwrap().as_ref(), c.client.rooms.first());
    assert_eq!(s.members(&room_id).unwrap(), c.client.members);
    assert!(
        s.pending_to_device()
            .unwrap()
            .contains(&c.crypto.pending_to_device[0])
    );
    assert!(
        s.queued_sends()
            .unwrap()
            .contains(&c.client.queued_sends[0])
    );
    assert_eq!(
        s.withheld_notice(&room_id, "wh1", &uid("@w:x"))
            .unwrap()
            .as_ref(),
        c.crypto.withheld_notices.first()
    );
    assert_eq!(
        s.key_request(&room_id, "kr1").unwrap().as_ref(),
        c.crypto.key_requests.first()
    );
    assert_eq!(
        s.value(&format!("v-{tag}")).unwrap().as_deref(),
        Some("plain")
    );
    assert_eq!(
        s.secret_value(&format!("s-{tag}")).unwrap(),
        Some(blob(b"access token"))
    );
}

/// Nothing of [`full_changes`]`(tag)` is in the store.
pub(crate) fn assert_full_absent<S: Store + ?Sized>(s: &S, tag: &str) {
    let sk = format!("sk-{tag}");
    let room_id = rid(&format!("!room-{tag}"));
    let user = uid(&format!("@u-{tag}:x"));
    assert_ne!(
        s.account().unwrap().map(|a| a.user_id),
        Some(uid(&format!("@me-{tag}:x")))
    );
    assert!(s.olm_sessions(&[&sk]).unwrap().is_empty());
    assert_eq!(s.inbound_group_session(&room_id, "igs1").unwrap(), None);
    assert_eq!(s.outbound_group_session(&room_id).unwrap(), None);
    assert_eq!(s.no_olm_room_key(&room_id, "ogs1", 2).unwrap(), None);
    assert_eq!(s.unwedge_record(&format!("curve-{tag}")).unwrap(), None);
    assert!(s.devices(&[&user]).unwrap().is_empty());
    assert!(
        s.devices_with_curve25519(&[&format!("curve-{tag}")])
            .unwrap()
            .is_empty()
    );
    assert!(!s.tracked_users().unwrap().iter().any(|u| u.user_id == user));
    assert_eq!(s.megolm_index(&sk, "igs1", 1).unwrap(), None);
    assert_eq!(s.room(&room_id).unwrap(), None);
    assert!(s.members(&room_id).unwrap().is_empty());
    assert_eq!(
        s.withheld_notice(&room_id, "wh1", &uid("@w:x")).unwrap(),
        None
    );
    assert_eq!(s.key_request(&room_id, "kr1").unwrap(), None);
    let txn = format!("txn-{tag}");
    assert!(
        !s.pending_to_device()
            .unwrap()
            .iter()
            .any(|p| p.txn_id == txn)
    );
    assert_eq!(s.value(&format!("v-{tag}")).unwrap(), None);
    assert_eq!(s.secret_value(&format!("s-{tag}")).unwrap(), None);
    assert_ne!(s.sync_token().unwrap(), Some(format!("token-{tag}")));
}

/// Save, panicking on error.
pub(crate) fn save<S: Store + ?Sized>(s: &S, c: Changes) {
    s.save_changes(c).unwrap();
}
