//! What one batch of to-device events works on: the Olm sessions and devices of its
//! senders, loaded once, and the room keys it accepted, stored together at the end.

use std::collections::{HashMap, HashSet};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::error::CryptoError;
use super::olm::OlmSession;
use crate::store::{Changes, DeviceRecord, InboundGroupSessionRecord, Store};

/// Olm sessions and devices loaded once for a whole batch of to-device events.
#[derive(Default)]
pub(crate) struct Batch {
    /// Olm sessions by the peer's Curve25519 key.
    pub sessions: HashMap<String, Vec<OlmSession>>,
    /// Curve25519 keys whose sessions changed (decrypted, encrypted or created).
    pub dirty: HashSet<String>,
    /// Devices by (user id, Curve25519 key).
    devices: HashMap<(OwnedUserId, String), Option<DeviceRecord>>,
    /// Inbound Megolm sessions accepted by the batch, by (room id, session id).
    pub inbound: HashMap<(OwnedRoomId, String), InboundGroupSessionRecord>,
    /// Users whose device sent us an Olm message although we don't know that device: our
    /// copy of their device list is stale.
    pub unknown_senders: HashSet<OwnedUserId>,
    /// Known devices whose Olm messages none of our sessions decrypts.
    pub wedged: Vec<DeviceRecord>,
    /// A one-time key was consumed: the account must be stored with the batch.
    pub account_changed: bool,
    /// `m.key.verification.*` messages, in clear or out of Olm, in order, as events
    /// (`type`, `sender`, `content`): handled once the batch is committed.
    pub verification: Vec<serde_json::Value>,
}

impl Batch {
    /// A batch with the Olm sessions of every sender of `events` loaded (one store round
    /// trip).
    pub(crate) fn for_events(
        store: &dyn Store,
        events: &[serde_json::Value],
    ) -> Result<Self, CryptoError> {
        let sender_keys: std::collections::HashSet<&str> = events
            .iter()
            .filter_map(|e| e.get("content")?.get("sender_key")?.as_str())
            .collect();
        let keys: Vec<&str> = sender_keys.into_iter().collect();
        let mut batch = Batch::default();
        batch.load_sessions(store, &keys)?;
        Ok(batch)
    }

    /// The end of a batch: the sender data of the room keys it accepted is recorded (from
    /// the store and what `changes` already holds), then everything goes into `changes`.
    pub(crate) fn finish(
        mut self,
        store: &dyn Store,
        signatures: &super::identity::SignatureCache,
        changes: &mut Changes,
    ) -> Result<(), CryptoError> {
        super::sender_data::record_at_reception(
            store,
            signatures,
            self.inbound.values_mut(),
            &changes.crypto,
        )?;
        self.flush(changes)
    }

    /// Load the Olm sessions of these Curve25519 keys (one store round trip).
    pub(crate) fn load_sessions(
        &mut self,
        store: &dyn Store,
        keys: &[&str],
    ) -> Result<(), CryptoError> {
        for (key, records) in store.olm_sessions(keys)? {
            let sessions = records
                .iter()
                .map(OlmSession::from_record)
                .collect::<Result<Vec<_>, _>>()?;
            self.sessions.insert(key, sessions);
        }
        Ok(())
    }

    /// The device of `user` with this Curve25519 key (cached for the batch).
    pub(crate) fn device_for_key(
        &mut self,
        store: &dyn Store,
        user: &UserId,
        sender_key: &str,
    ) -> Result<Option<DeviceRecord>, CryptoError> {
        let id = (user.to_owned(), sender_key.to_owned());
        if let Some(d) = self.devices.get(&id) {
            return Ok(d.clone());
        }
        let device = store.device_by_curve25519(user, sender_key)?;
        self.devices.insert(id, device.clone());
        Ok(device)
    }

    /// The inbound session `session_id` of `room_id`: as this batch left it, or as stored.
    pub(crate) fn inbound_session(
        &self,
        store: &dyn Store,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<InboundGroupSessionRecord>, CryptoError> {
        match self
            .inbound
            .get(&(room_id.to_owned(), session_id.to_owned()))
        {
            Some(record) => Ok(Some(record.clone())),
            None => Ok(store.inbound_group_session(room_id, session_id)?),
        }
    }

    /// The sessions the batch advanced or created, and the room keys it accepted, into
    /// `changes`.
    pub(crate) fn flush(self, changes: &mut Changes) -> Result<(), CryptoError> {
        for key in &self.dirty {
            for session in self.sessions.get(key).into_iter().flatten() {
                changes.crypto.olm_sessions.push(session.to_record()?);
            }
        }
        changes
            .crypto
            .inbound_group_sessions
            .extend(self.inbound.into_values());
        Ok(())
    }
}
