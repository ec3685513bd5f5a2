//! Megolm room-key sharing: the room's outbound session, who has it, rotation, withheld
//! notices, and encrypting room events.

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::events::ToDeviceEventType;
use ruma::events::room_key::withheld::RoomKeyWithheldCode;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::account::{MEGOLM_ALGORITHM, OwnAccount};
use super::context::sub_machine;
use super::error::CryptoError;
use super::megolm::{InboundGroup, OutboundGroup, RoomKeyContent, RotationSettings};
use super::olm::{OlmPayload, OlmSession};
use super::outbox::ToDeviceBatcher;
use super::requests::OutgoingRequest;
use super::sender_data::TrustView;
use super::sharing_policy::left_out_because;
use super::state::State;
use crate::store::{
    Changes, CryptoChanges, DeviceRecord, InboundGroupSessionRecord, NoOlmRoomKey,
    OutboundGroupSessionRecord, PendingToDevice, SecretBlob, SenderTrust, ShareRecipient,
    SharingPolicy, Store,
};

sub_machine! {
    /// Outbound group sessions: sharing room keys and encrypting room events.
    GroupSessions
}

impl GroupSessions<'_> {
    fn is_own_device(&self, device: &DeviceRecord) -> bool {
        device.user_id == self.ctx.user_id && device.device_id == self.ctx.device_id
    }

    /// Share the room's current outbound session with every eligible device of `users` that
    /// does not have it yet, creating or rotating the session as needed. Returns the
    /// to-device requests (at most [`super::outbox::TO_DEVICE_BATCH`] devices each); they are also stored and
    /// returned by [`Self::outgoing_requests`] until reported sent, with the same transaction
    /// ids. Devices left out on purpose get an `m.room_key.withheld` notice instead, once per
    /// session: those the room's sharing policy leaves out (`m.blacklisted`, `m.unverified`;
    /// see [`left_out_because`]), and those we have no Olm session with (`m.no_olm`; call
    /// [`Self::missing_sessions`] first).
    pub(crate) fn share_room_key(
        &self,
        state: &mut State,
        room_id: &RoomId,
        users: &[OwnedUserId],
        settings: RotationSettings,
    ) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let members: HashSet<&UserId> = users.iter().map(|u| u.as_ref()).collect();
        let policy = self.sharing_policy_for(room_id)?;
        let (devices, left_out) = self.share_targets(&members, policy)?;
        let stored = self.ctx.store.outbound_group_session(room_id)?;
        let now = state.now_ms();
        let group = match stored.as_ref() {
            Some(record) => {
                let group = OutboundGroup::from_record(record)?;
                if group.expired(settings, now) || needs_rotation(&group, &members, &devices) {
                    info!(%room_id, "rotating the outbound Megolm session");
                    OutboundGroup::new(room_id, now)
                } else {
                    group
                }
            }
            None => OutboundGroup::new(room_id, now),
        };
        let mut changes = Changes::default();
        let mut share = Share::new(room_id, group, &state.account, now);
        if stored.as_ref().map(|r| r.session_id.as_str()) != Some(share.session_id.as_str()) {
            // A new session: keep an inbound copy so our own messages decrypt too.
            changes
                .crypto
                .inbound_group_sessions
                .push(share.own_inbound_copy(&state.account)?);
        }
        for (device, (code, reason)) in &left_out {
            share.withhold(device, code.clone(), reason);
        }
        // Devices that do not have the key yet (withheld ones get it once they can).
        let recipients = share.without_key(&devices);
        let mut sessions = self.newest_sessions(&recipients)?;
        for device in recipients {
            match sessions.get_mut(&device.curve25519) {
                Some(session) => share.send_key(self.ctx.store, &state.account, device, session)?,
                None => share.withhold(
                    device,
                    RoomKeyWithheldCode::NoOlm,
                    "Unable to establish a secure channel",
                ),
            }
        }
        let requests = share.finish(&mut changes)?;
        for session in sessions.values() {
            changes.crypto.olm_sessions.push(session.to_record()?);
        }
        // Sessions, journal and the messages themselves are stored before anything is sent.
        self.ctx.save(state, changes)?;
        Ok(requests)
    }

    /// The devices of `members` to share with, and those `policy` leaves out on purpose
    /// with the withheld code and reason they are sent.
    fn share_targets(
        &self,
        members: &HashSet<&UserId>,
        policy: SharingPolicy,
    ) -> Result<(Vec<DeviceRecord>, Vec<LeftOut>), CryptoError> {
        let refs: Vec<&UserId> = members.iter().copied().collect();
        let none = CryptoChanges::default();
        let view = TrustView::load(self.ctx.store, self.ctx.signatures, &refs, &none)?;
        let mut targets = Vec::new();
        let mut left_out = Vec::new();
        let candidates = self.ctx.store.devices(&refs)?.into_iter();
        for device in candidates
            .filter(|d| !d.deleted && !self.is_own_device(d))
            .filter(|d| super::devices::check_device_id(d.device_id.as_str()).is_ok())
        {
            let (signature, owner_verified) = view.standing(&device);
            match left_out_because(policy, &device, signature, owner_verified) {
                Some(why) => left_out.push((device, why)),
                None => targets.push(device),
            }
        }
        Ok((targets, left_out))
    }

    /// The sharing policy of a room: its own, or the global one.
    pub(crate) fn sharing_policy_for(
        &self,
        room_id: &RoomId,
    ) -> Result<SharingPolicy, CryptoError> {
        let store = self.ctx.store;
        Ok(match store.room_sharing_policy(room_id)? {
            Some(policy) => policy,
            None => store.sharing_policy()?,
        })
    }

    /// Set the global sharing policy (`None` for a room: it follows the global one again).
    /// Devices a stricter policy leaves out lose access from the next message on: the
    /// room's session is rotated when they had it.
    pub(crate) fn set_sharing_policy(
        &self,
        state: &mut State,
        room_id: Option<&RoomId>,
        policy: Option<SharingPolicy>,
    ) -> Result<(), CryptoError> {
        let mut crypto = CryptoChanges::default();
        match room_id {
            Some(room_id) => crypto
                .room_sharing_policies
                .push((room_id.to_owned(), policy)),
            None => crypto.sharing_policy = Some(policy.unwrap_or_default()),
        }
        self.ctx.save(state, Changes::from(crypto))
    }

    /// The newest Olm session with each of `devices`, by Curve25519 key.
    fn newest_sessions(
        &self,
        devices: &[&DeviceRecord],
    ) -> Result<HashMap<String, OlmSession>, CryptoError> {
        let keys: Vec<&str> = devices.iter().map(|d| d.curve25519.as_str()).collect();
        let mut sessions = HashMap::new();
        for (key, records) in self.ctx.store.olm_sessions(&keys)? {
            if let Some(newest) = records
                .iter()
                .max_by_key(|r| (r.last_used_ms, r.created_ms))
            {
                sessions.insert(key, OlmSession::from_record(newest)?);
            }
        }
        Ok(sessions)
    }

    /// Encrypt a room event with the room's outbound session (share it first). The advanced
    /// session is stored before the ciphertext is returned, so an index is never reused;
    /// what `with` makes of the ciphertext is stored in the same transaction.
    pub(crate) fn encrypt_room_event(
        &self,
        state: &mut State,
        room_id: &RoomId,
        event_type: &str,
        content: &Value,
        with: impl FnOnce(&Value) -> Result<crate::store::ClientChanges, CryptoError>,
    ) -> Result<Value, CryptoError> {
        let record = self
            .ctx
            .store
            .outbound_group_session(room_id)?
            .ok_or_else(|| CryptoError::RoomNotEncrypted(room_id.to_owned()))?;
        let mut group = OutboundGroup::from_record(&record)?;
        let own_curve = state.account.curve25519();
        let encrypted = group.encrypt(event_type, content, &own_curve, self.ctx.device_id)?;
        let mut changes = Changes::from(CryptoChanges {
            outbound_group_sessions: vec![group.to_record()?],
            ..Default::default()
        });
        changes.client = with(&encrypted)?;
        self.ctx.save(state, changes)?;
        Ok(encrypted)
    }

    /// A to-device request was refused for good (the server will never accept it): it is
    /// dropped, so that it does not hold up the others. If it carried a room key, its
    /// recipients no longer count as having it: the next share sends it again (from the
    /// session's index then).
    pub(crate) fn mark_to_device_failed(
        &self,
        state: &mut State,
        txn_id: &str,
    ) -> Result<(), CryptoError> {
        warn!(txn_id, "a to-device message was refused for good; dropped");
        let mut changes = Changes::from(CryptoChanges {
            sent_to_device: vec![txn_id.to_owned()],
            ..Default::default()
        });
        let refused = self
            .ctx
            .store
            .pending_to_device()?
            .into_iter()
            .find(|p| p.txn_id == txn_id);
        if let Some(record) = refused.map(|p| self.unshared(&p)).transpose()?.flatten() {
            info!(room_id = %record.room_id, "recipients of a refused room key get it again");
            changes.crypto.outbound_group_sessions.push(record);
        }
        self.ctx.save(state, changes)
    }

    /// The room's outbound session without the recipients of `refused`, if that request
    /// carried the room's current session.
    fn unshared(
        &self,
        refused: &PendingToDevice,
    ) -> Result<Option<OutboundGroupSessionRecord>, CryptoError> {
        let Some((room_id, session_id)) = &refused.room_key else {
            return Ok(None);
        };
        let Some(mut record) = self.ctx.store.outbound_group_session(room_id)? else {
            return Ok(None);
        };
        let targets: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Value>> =
            serde_json::from_str(&refused.messages_json).unwrap_or_default();
        if &record.session_id != session_id {
            return Ok(None);
        }
        record.shared_with.retain(|r| {
            !targets
                .get(&r.user_id)
                .is_some_and(|devices| devices.contains_key(&r.device_id))
        });
        Ok(Some(record))
    }

    /// A to-device request was accepted by the server.
    pub(crate) fn mark_to_device_sent(
        &self,
        state: &mut State,
        txn_id: &str,
    ) -> Result<(), CryptoError> {
        self.ctx.save(
            state,
            Changes::from(CryptoChanges {
                sent_to_device: vec![txn_id.to_owned()],
                ..Default::default()
            }),
        )
    }

    /// Devices of the room's current outbound session that were sent `m.no_olm` instead of
    /// the key (no Olm session could be made: no one-time key and no fallback key) and
    /// have not received it since: `(user id, device id)`. Sharing again retries them.
    pub(crate) fn devices_without_olm(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<(OwnedUserId, OwnedDeviceId)>, CryptoError> {
        Ok(self
            .ctx
            .store
            .outbound_group_session(room_id)?
            .map(|record| {
                record
                    .shared_with
                    .into_iter()
                    .filter(|r| r.withheld == Some(RoomKeyWithheldCode::NoOlm))
                    .map(|r| (r.user_id, r.device_id))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Forget the room's outbound session; the next share creates a new one.
    pub(crate) fn discard_room_key(
        &self,
        state: &mut State,
        room_id: &RoomId,
    ) -> Result<(), CryptoError> {
        self.ctx.save(
            state,
            Changes::from(CryptoChanges {
                discarded_outbound_sessions: vec![room_id.to_owned()],
                ..Default::default()
            }),
        )
    }
}

/// A device left out of a share, with the withheld code and reason it is sent.
type LeftOut = (DeviceRecord, (RoomKeyWithheldCode, &'static str));

/// Whether the recipients changed in a way that must cut them off from new messages: a
/// member left, or a device that got the key is gone, changed, blacklisted or (when sharing
/// with verified devices only) no longer verified.
fn needs_rotation(
    group: &OutboundGroup,
    members: &HashSet<&UserId>,
    devices: &[DeviceRecord],
) -> bool {
    let current: HashMap<(&UserId, &DeviceId), &str> = devices
        .iter()
        .map(|d| ((&*d.user_id, &*d.device_id), d.curve25519.as_str()))
        .collect();
    group
        .shared_with
        .iter()
        .filter(|r| r.withheld.is_none())
        .any(|r| {
            !members.contains(&*r.user_id)
                || current.get(&(&*r.user_id, &*r.device_id)) != Some(&r.curve25519.as_str())
        })
}

/// A device as the share journal names it: user, device and Curve25519 key.
type JournalKey = (OwnedUserId, OwnedDeviceId, String);

fn journal_key(device: &DeviceRecord) -> JournalKey {
    (
        device.user_id.clone(),
        device.device_id.clone(),
        device.curve25519.clone(),
    )
}

fn recipient_key(r: &ShareRecipient) -> JournalKey {
    (r.user_id.clone(), r.device_id.clone(), r.curve25519.clone())
}

/// One sharing of a room's outbound session: who had it before, and what goes out now.
struct Share<'a> {
    room_id: &'a RoomId,
    group: OutboundGroup,
    session_id: String,
    /// The session's current index: what new recipients get.
    index: u32,
    /// `m.room_key` content at `index`.
    room_key: Value,
    own_curve: String,
    /// The machine's time when the share began.
    now: u64,
    /// Devices told before this share: `true` if they got the key, `false` if withheld.
    journal: HashMap<JournalKey, bool>,
    keys_out: ToDeviceBatcher,
    notices: ToDeviceBatcher,
}

impl<'a> Share<'a> {
    fn new(room_id: &'a RoomId, group: OutboundGroup, account: &OwnAccount, now: u64) -> Self {
        let journal = group
            .shared_with
            .iter()
            .map(|r| (recipient_key(r), r.withheld.is_none()))
            .collect();
        let session_id = group.session.session_id();
        Self {
            room_id,
            index: group.session.message_index(),
            room_key: group.room_key_content(),
            keys_out: ToDeviceBatcher::room_keys(room_id, &session_id),
            notices: ToDeviceBatcher::new(ToDeviceEventType::RoomKeyWithheld),
            own_curve: account.curve25519(),
            now,
            session_id,
            group,
            journal,
        }
    }

    /// Our own inbound copy of a new session.
    fn own_inbound_copy(
        &self,
        account: &OwnAccount,
    ) -> Result<InboundGroupSessionRecord, CryptoError> {
        let key = RoomKeyContent::parse(&self.room_key)?;
        let own = InboundGroup::from_room_key(
            &key,
            &self.own_curve,
            &account.ed25519(),
            Some((&account.user_id, Some(&account.device_id))),
        )?;
        let mut record = own.record;
        // Our own device: nothing to look up.
        record.sender_data.trust = SenderTrust::Verified;
        Ok(record)
    }

    /// Those of `devices` that do not have the key yet.
    fn without_key<'d>(&self, devices: &'d [DeviceRecord]) -> Vec<&'d DeviceRecord> {
        devices
            .iter()
            .filter(|d| self.journal.get(&journal_key(d)) != Some(&true))
            .collect()
    }

    /// Tell `device` why it does not get the key, once per session.
    fn withhold(&mut self, device: &DeviceRecord, code: RoomKeyWithheldCode, reason: &str) {
        if self.journal.contains_key(&journal_key(device)) {
            return; // already told, once per session
        }
        self.notices.push(
            device,
            json!({
                "algorithm": MEGOLM_ALGORITHM, "room_id": self.room_id,
                "session_id": self.session_id, "sender_key": self.own_curve,
                "code": code.as_str(), "reason": reason,
            }),
        );
        self.group.shared_with.push(ShareRecipient {
            user_id: device.user_id.clone(),
            device_id: device.device_id.clone(),
            curve25519: device.curve25519.clone(),
            index: self.index,
            withheld: Some(code),
        });
    }

    /// Encrypt the key for `device` over `session`, and note that it has it.
    fn send_key(
        &mut self,
        store: &dyn Store,
        account: &OwnAccount,
        device: &DeviceRecord,
        session: &mut OlmSession,
    ) -> Result<(), CryptoError> {
        let (content, shared_at) = self.key_for(store, device)?;
        let payload = OlmPayload::to_device(account, device, "m.room_key", content);
        self.keys_out.push(
            device,
            session.encrypt(&self.own_curve, &payload, self.now)?,
        );
        self.group
            .shared_with
            .retain(|r| (&r.user_id, &r.device_id) != (&device.user_id, &device.device_id));
        self.group.shared_with.push(ShareRecipient {
            user_id: device.user_id.clone(),
            device_id: device.device_id.clone(),
            curve25519: device.curve25519.clone(),
            index: shared_at,
            withheld: None,
        });
        Ok(())
    }

    /// The room key `device` gets, and its index: a device that got `m.no_olm` gets the key
    /// from the index it was entitled to then (kept for this), so the messages it missed
    /// decrypt too.
    fn key_for(
        &self,
        store: &dyn Store,
        device: &DeviceRecord,
    ) -> Result<(Value, u32), CryptoError> {
        let id = journal_key(device);
        let earlier = self
            .group
            .shared_with
            .iter()
            .find(|r| {
                recipient_key(r) == id
                    && r.withheld == Some(RoomKeyWithheldCode::NoOlm)
                    && r.index < self.index
            })
            .map(|r| r.index);
        let Some(at) = earlier else {
            return Ok((self.room_key.clone(), self.index));
        };
        let kept = store.no_olm_room_key(self.room_id, &self.session_id, at)?;
        Ok(match kept {
            Some(kept) => {
                let mut content = self.room_key.clone();
                content["session_key"] = String::from_utf8_lossy(kept.session_key.as_bytes())
                    .into_owned()
                    .into();
                (content, at)
            }
            None => (self.room_key.clone(), self.index),
        })
    }

    /// The requests of this share, stored in `changes` with the session and its journal
    /// (and the key at this index, if a device got `m.no_olm` at it).
    fn finish(self, changes: &mut Changes) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let withheld_now = self
            .group
            .shared_with
            .iter()
            .any(|r| r.withheld == Some(RoomKeyWithheldCode::NoOlm) && r.index == self.index);
        if withheld_now && let Some(key) = self.room_key["session_key"].as_str() {
            // The session key at this index, encrypted at rest, for the retry.
            changes.crypto.no_olm_room_keys.push(NoOlmRoomKey {
                room_id: self.room_id.to_owned(),
                session_id: self.session_id.clone(),
                index: self.index,
                session_key: SecretBlob::new(key.as_bytes().to_vec()),
            });
        }
        let mut requests = self.keys_out.finish(changes)?;
        requests.extend(self.notices.finish(changes)?);
        changes
            .crypto
            .outbound_group_sessions
            .push(self.group.to_record()?);
        Ok(requests)
    }
}
