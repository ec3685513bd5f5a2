//! The public calls of [`OlmMachine`] that belong to a sub-machine: each locks the state
//! (when it changes anything) and hands over to the sub-machine of its responsibility
//! (device tracking, Olm sessions, group sessions, key requests, room-event decryption).

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use super::decrypt_batch::DecryptBatch;
use super::devices::Device;
use super::error::CryptoError;
use super::machine::OlmMachine;
use super::megolm::RotationSettings;
use super::outcomes::{ClaimOutcome, DecryptedRoomEvent, QueryOutcome, SyncChanges, SyncOutcome};
use super::requests::OutgoingRequest;
use super::responses::{KeysClaimResponse, KeysQueryResponse};
use super::sync_batch::SyncBatch;
use crate::store::{Changes, CryptoChanges, LocalTrust, TrackingState};

impl OlmMachine {
    /// Ask our other devices for the key of a session we miss, and tell the session's
    /// sending device (`sender`: user and device id, when the event names them). The
    /// sender does not answer another user's request, but if it does not know this device
    /// yet, its device list of us is stale: the request makes it re-query, and it
    /// shares its current room key with us, so its next messages decrypt. Returns `false` if
    /// it was asked already (one request per session). The request goes out with
    /// [`Self::outgoing_requests`].
    pub fn request_room_key(
        &self,
        room_id: &RoomId,
        session_id: &str,
        sender_key: &str,
        sender: Option<(&UserId, &DeviceId)>,
    ) -> Result<bool, CryptoError> {
        let mut state = self.lock()?;
        self.key_requests()
            .request_room_key(&mut state, room_id, session_id, sender_key, sender)
    }

    /// The server answered a `/keys/query`.
    pub fn mark_keys_query_sent(
        &self,
        request_id: &str,
        response: &KeysQueryResponse,
    ) -> Result<QueryOutcome, CryptoError> {
        let mut state = self.lock()?;
        self.tracker()
            .mark_keys_query_sent(&mut state, request_id, response)
    }

    /// A query failed; its users go back to pending download and are offered again. When
    /// the server refused it for good (`permanent`), its users are queried alone from then
    /// on (one of them may be why), and a user refused alone is backed off.
    pub fn mark_query_failed(&self, request_id: &str, permanent: bool) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        self.tracker()
            .mark_query_failed(&mut state, request_id, permanent)
    }

    /// Start tracking these users' devices: users not tracked yet (or no longer) become
    /// pending download; the others keep their state.
    pub fn update_tracked_users(&self, users: &[OwnedUserId]) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        self.tracker().update_tracked_users(&mut state, users)
    }

    /// Users whose device lists must be downloaded before encrypting for them.
    pub fn outdated_users(&self, users: &[OwnedUserId]) -> Result<Vec<OwnedUserId>, CryptoError> {
        self.tracker().outdated_users(users)
    }

    /// The tracking state of a user's device list.
    pub fn tracking_state(&self, user_id: &UserId) -> Result<TrackingState, CryptoError> {
        self.tracker().tracking_state(user_id)
    }

    /// Known devices of a user (including our own other devices).
    pub fn devices(&self, user_id: &UserId) -> Result<Vec<Device>, CryptoError> {
        self.tracker().devices(user_id)
    }

    /// Record the user's decision about a device (verify, blacklist, ignore).
    pub fn set_local_trust(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        trust: LocalTrust,
    ) -> Result<bool, CryptoError> {
        let mut state = self.lock()?;
        self.tracker()
            .set_local_trust(&mut state, user_id, device_id, trust)
    }

    /// Own devices that asked for room keys while nobody had decided whether to trust them,
    /// not reported before. The app may ask the user ([`LocalTrust::Verified`] answers the
    /// held requests through [`Self::set_local_trust`]).
    pub fn take_key_share_prompts(&self) -> Result<Vec<Device>, CryptoError> {
        let mut state = self.lock()?;
        self.key_requests().take_key_share_prompts(&mut state)
    }

    /// A `/keys/claim` request for every device of `users` we have no Olm session with, or
    /// `None` if there is none. All devices go into one request.
    pub fn missing_sessions(
        &self,
        users: &[OwnedUserId],
    ) -> Result<Option<OutgoingRequest>, CryptoError> {
        let mut state = self.lock()?;
        self.olm_sessions().missing_sessions(&mut state, users)
    }

    /// Create Olm sessions from a `/keys/claim` answer. Each key's signature is checked
    /// against the device's ed25519 key; a device whose key fails gets no session.
    pub fn mark_keys_claim_sent(
        &self,
        response: &KeysClaimResponse,
    ) -> Result<ClaimOutcome, CryptoError> {
        let mut state = self.lock()?;
        self.olm_sessions()
            .mark_keys_claim_sent(&mut state, response)
    }

    /// A `/keys/claim` for devices we need a new Olm session with: those whose Olm messages
    /// we could not decrypt (a wedged session; at most once per device per hour; the new
    /// session sends an `m.dummy` so the other side switches to it), and own devices whose
    /// key requests we want to answer but have no session with (answered when the claim is).
    pub fn session_repair_request(&self) -> Result<Option<OutgoingRequest>, CryptoError> {
        let mut state = self.lock()?;
        self.olm_sessions().session_repair_request(&mut state)
    }

    /// Share the room's current outbound session with every eligible device of `users` that
    /// does not have it yet, creating or rotating the session as needed. Returns the
    /// to-device requests (at most [`super::outbox::TO_DEVICE_BATCH`] devices each); they are also stored and
    /// returned by [`Self::outgoing_requests`] until reported sent, with the same transaction
    /// ids. Devices left out on purpose get an `m.room_key.withheld` notice instead, once per
    /// session: blacklisted ones (`m.blacklisted`), unverified ones when sharing with verified
    /// devices only (`m.unverified`), and those we have no Olm session with (`m.no_olm`; call
    /// [`Self::missing_sessions`] first).
    pub fn share_room_key(
        &self,
        room_id: &RoomId,
        users: &[OwnedUserId],
        settings: RotationSettings,
    ) -> Result<Vec<OutgoingRequest>, CryptoError> {
        self.refuse_in_notifications()?;
        let mut state = self.lock()?;
        self.group_sessions()
            .share_room_key(&mut state, room_id, users, settings)
    }

    /// Encrypt a room event with the room's outbound session (share it first). The advanced
    /// session is stored before the ciphertext is returned, so an index is never reused.
    pub fn encrypt_room_event(
        &self,
        room_id: &RoomId,
        event_type: &str,
        content: &Value,
    ) -> Result<Value, CryptoError> {
        self.encrypt_room_event_with(room_id, event_type, content, |_| Ok(Default::default()))
    }

    /// Like [`OlmMachine::encrypt_room_event`], storing what `with` makes of the ciphertext
    /// in the same transaction as the advanced session: either both are stored or neither
    /// (e.g. the app's send queue keeps the ciphertext, so that a resend never ratchets the
    /// session again). An error from `with`, or from storing its changes, leaves the session
    /// where it was.
    pub fn encrypt_room_event_with(
        &self,
        room_id: &RoomId,
        event_type: &str,
        content: &Value,
        with: impl FnOnce(&Value) -> Result<crate::store::ClientChanges, CryptoError>,
    ) -> Result<Value, CryptoError> {
        self.refuse_in_notifications()?;
        let mut state = self.lock()?;
        self.group_sessions()
            .encrypt_room_event(&mut state, room_id, event_type, content, with)
    }

    /// A to-device request was refused for good (the server will never accept it): it is
    /// dropped, so that it does not hold up the others. If it carried a room key, its
    /// recipients no longer count as having it: the next share sends it again (from the
    /// session's index then).
    pub fn mark_to_device_failed(&self, txn_id: &str) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        self.group_sessions()
            .mark_to_device_failed(&mut state, txn_id)
    }

    /// A to-device request was accepted by the server.
    pub fn mark_to_device_sent(&self, txn_id: &str) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        self.group_sessions()
            .mark_to_device_sent(&mut state, txn_id)
    }

    /// Devices of the room's current outbound session that were sent `m.no_olm` instead of
    /// the key (no Olm session could be made: no one-time key and no fallback key) and
    /// have not received it since: `(user id, device id)`. Sharing again retries them.
    pub fn devices_without_olm(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<(OwnedUserId, OwnedDeviceId)>, CryptoError> {
        self.group_sessions().devices_without_olm(room_id)
    }

    /// Forget the room's outbound session; the next share creates a new one.
    pub fn discard_room_key(&self, room_id: &RoomId) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        self.group_sessions().discard_room_key(&mut state, room_id)
    }

    /// Decrypt an `m.room.encrypted` room event received in `room_id`. The message index is
    /// recorded (replay detection) before the plaintext is returned. To decrypt several,
    /// [`OlmMachine::begin_decrypt`] commits their records in one transaction.
    pub fn decrypt_room_event(
        &self,
        room_id: &RoomId,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, CryptoError> {
        let pending = Changes::default();
        let (decrypted, index) = self.decryptor().decrypt_with(room_id, event, &pending)?;
        if let Some(index) = index {
            let mut state = self.lock()?;
            let changes = CryptoChanges {
                megolm_indices: vec![index],
                ..Default::default()
            };
            self.save(&mut state, changes.into())?;
        }
        Ok(decrypted)
    }

    /// Feed one sync response. Everything it carried is stored in one transaction together
    /// with `next_batch`, so a crash never skips a to-device event or room key.
    pub fn receive_sync_changes(&self, sync: SyncChanges) -> Result<SyncOutcome, CryptoError> {
        self.begin_sync(sync)?.commit()
    }

    /// Process the crypto part of a sync response without storing it yet: the caller may
    /// decrypt the timeline and add its own records, then [`SyncBatch::commit`]s it all.
    pub fn begin_sync(&self, sync: SyncChanges) -> Result<SyncBatch<'_>, CryptoError> {
        SyncBatch::begin(self, sync)
    }

    /// Start decrypting room events whose replay records are committed together.
    pub fn begin_decrypt(&self) -> DecryptBatch<'_> {
        DecryptBatch::new(self)
    }
}
