//! Sender trust records: users' identities, the sender data of inbound sessions (updated in
//! place, selected for re-evaluation and for the background retry), the own cross-signing
//! keys, and the sharing policies.

use super::super::*;
use super::fixtures::*;
use crate::test_ids::{rid, uid};

pub(crate) fn identity(user: &str, master: &str) -> UserIdentityRecord {
    UserIdentityRecord {
        user_id: uid(user),
        master_key: master.into(),
        self_signing_key: format!("ssk-of-{master}"),
        user_signing_key: None,
        keys_json: "{}".into(),
        pinned_master_key: master.into(),
        verified_master_key: None,
    }
}

fn session(
    sender: &str,
    id: &str,
    trust: SenderTrust,
    retry_at: Option<u64>,
) -> InboundGroupSessionRecord {
    InboundGroupSessionRecord {
        sender_user: Some(uid(sender)),
        sender_data: SenderData {
            trust,
            master_key: None,
            legacy: false,
            retry: retry_at.map(|next_ms| SenderDataRetry {
                attempts: 1,
                next_ms,
            }),
        },
        ..inbound("!r:x", id)
    }
}

fn save_crypto<S: Store>(s: &S, crypto: CryptoChanges) {
    s.save_changes(Changes::from(crypto)).unwrap();
}

pub(crate) fn user_identities_by_user<S: Store>(s: &S) {
    assert!(s.user_identities(&[&uid("@a:x")]).unwrap().is_empty());
    let mut own = identity("@me:x", "M0");
    own.user_signing_key = Some("usk".into());
    own.verified_master_key = Some("M0".into());
    save_crypto(
        s,
        CryptoChanges {
            user_identities: vec![identity("@b:x", "M1"), own.clone(), identity("@a:x", "M2")],
            ..Default::default()
        },
    );
    let got = s
        .user_identities(&[&uid("@me:x"), &uid("@b:x"), &uid("@nobody:x")])
        .unwrap();
    assert_eq!(got, vec![identity("@b:x", "M1"), own]);
    // Replaced as a whole.
    let mut changed = identity("@b:x", "M3");
    changed.pinned_master_key = "M1".into();
    save_crypto(
        s,
        CryptoChanges {
            user_identities: vec![changed.clone()],
            ..Default::default()
        },
    );
    assert_eq!(s.user_identities(&[&uid("@b:x")]).unwrap(), vec![changed]);
}

pub(crate) fn sender_data_updated_in_place<S: Store>(s: &S) {
    let first = session("@a:x", "S1", SenderTrust::UnknownDevice, None);
    let second = session("@a:x", "S2", SenderTrust::UnknownDevice, None);
    save_crypto(
        s,
        CryptoChanges {
            inbound_group_sessions: vec![first.clone(), second],
            ..Default::default()
        },
    );
    let better = SenderData {
        trust: SenderTrust::CrossSigned,
        master_key: Some("M".into()),
        legacy: true,
        retry: None,
    };
    save_crypto(
        s,
        CryptoChanges {
            sender_data: vec![
                SenderDataUpdate {
                    room_id: rid("!r:x"),
                    session_id: "S1".into(),
                    sender_data: better.clone(),
                },
                // A session that is not stored: ignored.
                SenderDataUpdate {
                    room_id: rid("!r:x"),
                    session_id: "gone".into(),
                    sender_data: better.clone(),
                },
            ],
            ..Default::default()
        },
    );
    let stored = s
        .inbound_group_session(&rid("!r:x"), "S1")
        .unwrap()
        .unwrap();
    assert_eq!(stored.sender_data, better);
    assert_eq!(stored.pickle, first.pickle, "the ratchet is untouched");
    assert_eq!(s.inbound_group_session(&rid("!r:x"), "gone").unwrap(), None);
    assert_eq!(s.counts().unwrap().inbound_group_sessions, 2);
}

pub(crate) fn sessions_to_reevaluate_by_sender_and_level<S: Store>(s: &S) {
    use SenderTrust::*;
    let mut unknown_origin = session("@a:x", "S0", UnknownDevice, None);
    unknown_origin.sender_user = None;
    save_crypto(
        s,
        CryptoChanges {
            inbound_group_sessions: vec![
                session("@a:x", "S5", Verified, None),
                session("@a:x", "S4", CrossSigned, None),
                session("@a:x", "S3", DeviceOnly, None),
                session("@a:x", "S2", Tampered, None),
                session("@a:x", "S1", UnknownDevice, Some(9)),
                session("@b:x", "S6", VerificationViolation, None),
                session("@c:x", "S7", UnknownDevice, None),
                unknown_origin,
            ],
            ..Default::default()
        },
    );
    let ids = |senders: &[&UserId]| -> Vec<String> {
        s.sessions_to_reevaluate(senders)
            .unwrap()
            .into_iter()
            .map(|x| x.session_id)
            .collect()
    };
    assert_eq!(ids(&[&uid("@a:x"), &uid("@b:x")]), ["S1", "S3", "S4", "S6"]);
    assert!(ids(&[]).is_empty());
    let one = &s.sessions_to_reevaluate(&[&uid("@a:x")]).unwrap()[0];
    assert_eq!(one.sender_user, uid("@a:x"));
    assert_eq!(one.sender_key, "curve-of-S1");
    assert_eq!(one.signing_key, "ed-of-S1");
    assert_eq!(one.sender_data.retry.map(|r| r.next_ms), Some(9));
}

pub(crate) fn sender_data_retries_due_in_order<S: Store>(s: &S) {
    use SenderTrust::UnknownDevice;
    assert_eq!(s.next_sender_data_retry().unwrap(), None);
    let mut unknown_origin = session("@a:x", "S0", UnknownDevice, Some(1));
    unknown_origin.sender_user = None;
    save_crypto(
        s,
        CryptoChanges {
            inbound_group_sessions: vec![
                session("@a:x", "S1", UnknownDevice, Some(30)),
                session("@b:x", "S2", UnknownDevice, Some(10)),
                session("@a:x", "S3", UnknownDevice, Some(20)),
                session("@a:x", "S4", UnknownDevice, Some(10)),
                session("@a:x", "S5", UnknownDevice, None),
                unknown_origin,
            ],
            ..Default::default()
        },
    );
    let due = |now, limit| -> Vec<String> {
        s.sender_data_retries_due(now, limit)
            .unwrap()
            .into_iter()
            .map(|x| x.session_id)
            .collect()
    };
    assert!(due(9, 10).is_empty());
    assert_eq!(due(20, 10), ["S2", "S4", "S3"]);
    assert_eq!(due(100, 2), ["S2", "S4"]);
    assert_eq!(s.next_sender_data_retry().unwrap(), Some(10));
}

pub(crate) fn cross_signing_keys_are_a_reserved_secret<S: Store>(s: &S) {
    assert_eq!(s.cross_signing_keys().unwrap(), None);
    save_crypto(
        s,
        CryptoChanges {
            cross_signing_keys: Some(blob(b"private keys")),
            ..Default::default()
        },
    );
    assert_eq!(s.cross_signing_keys().unwrap(), Some(blob(b"private keys")));
    // The app's values cannot write (or read back as its own) the machine's keys.
    let mut c = ClientChanges::default();
    c.secret_values
        .insert(CROSS_SIGNING_KEY.to_owned(), blob(b"mine now"));
    assert!(matches!(
        s.save_changes(Changes::from(c)),
        Err(StoreError::InvalidRecord(_))
    ));
    assert_eq!(s.cross_signing_keys().unwrap(), Some(blob(b"private keys")));
}

pub(crate) fn sharing_policies<S: Store>(s: &S) {
    use SharingPolicy::*;
    let set = |policy: SharingPolicy| {
        Changes::from(CryptoChanges {
            sharing_policy: Some(policy),
            ..Default::default()
        })
    };
    assert_eq!(
        s.sharing_policy().unwrap(),
        AllButBlacklisted,
        "the default until set"
    );
    save(s, set(VerifiedOnly));
    assert_eq!(s.sharing_policy().unwrap(), VerifiedOnly);
    // Kept as a secret value (encrypted at rest in SQLite), under the key of the earlier
    // verified-only switch, whose values still read.
    assert_eq!(
        s.secret_value(VERIFIED_ONLY_KEY).unwrap(),
        Some(blob(b"verified_only"))
    );
    save(
        s,
        Changes::from(CryptoChanges {
            devices: vec![device("@u:x", "D", "c")],
            ..Default::default()
        }),
    );
    assert_eq!(
        s.sharing_policy().unwrap(),
        VerifiedOnly,
        "kept when not given"
    );
    save(s, set(CrossSignedOnly));
    assert_eq!(s.sharing_policy().unwrap(), CrossSignedOnly);
    assert_eq!(s.generation().unwrap(), 3);

    // Rooms' own policies: set, replaced, removed; other rooms follow the global one.
    let room = |policy: Option<SharingPolicy>| {
        Changes::from(CryptoChanges {
            room_sharing_policies: vec![(rid("!a:x"), policy)],
            ..Default::default()
        })
    };
    assert_eq!(s.room_sharing_policy(&rid("!a:x")).unwrap(), None);
    save(s, room(Some(AskMe)));
    save(s, room(Some(AllDevices)));
    assert_eq!(
        s.room_sharing_policy(&rid("!a:x")).unwrap(),
        Some(AllDevices)
    );
    assert_eq!(s.room_sharing_policy(&rid("!b:x")).unwrap(), None);
    save(s, room(None));
    assert_eq!(s.room_sharing_policy(&rid("!a:x")).unwrap(), None);
    assert_eq!(s.generation().unwrap(), 6);

    // The client's half cannot write the machine's settings, as secrets or plain values.
    let room_key = room_sharing_key(&rid("!a:x"));
    for (key, secret) in [
        (VERIFIED_ONLY_KEY, true),
        (VERIFIED_ONLY_KEY, false),
        (room_key.as_str(), true),
    ] {
        let mut client = ClientChanges::default();
        if secret {
            client
                .secret_values
                .insert(key.to_owned(), blob(b"all_devices"));
        } else {
            client
                .values
                .insert(key.to_owned(), "all_devices".to_owned());
        }
        let err = s.save_changes(client.clone().into()).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidRecord(_)),
            "{key}: {err:?}"
        );
        let mut dropped = Changes::from(client);
        assert_eq!(dropped.drop_invalid(), 1);
    }
    assert_eq!(s.sharing_policy().unwrap(), CrossSignedOnly);
    assert_eq!(s.room_sharing_policy(&rid("!a:x")).unwrap(), None);
    assert_eq!(s.generation().unwrap(), 6);
}
