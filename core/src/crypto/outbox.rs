//! To-device messages we send: stored first, then sent in batches of at most
//! [`TO_DEVICE_BATCH`] devices, each batch one transaction id for every attempt.

use std::collections::BTreeMap;

use ruma::api::client::to_device::send_event_to_device;
use ruma::events::ToDeviceEventType;
use ruma::to_device::DeviceIdOrAllDevices;
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, TransactionId};
use serde_json::Value;

use super::error::CryptoError;
use super::requests::{OutgoingKind, OutgoingRequest, raw};
use crate::store::{Changes, DeviceRecord, PendingToDevice};

/// Recipient devices per `/sendToDevice` request.
pub(crate) const TO_DEVICE_BATCH: usize = 250;

/// Build the ruma request for a stored pending to-device message.
pub(crate) fn to_device_request(pending: &PendingToDevice) -> Result<OutgoingRequest, CryptoError> {
    let messages: BTreeMap<String, BTreeMap<String, Value>> =
        serde_json::from_str(&pending.messages_json)
            .map_err(|e| CryptoError::CorruptState(format!("pending to-device: {e}")))?;
    let mut typed: send_event_to_device::v3::Messages = BTreeMap::new();
    for (user, devices) in messages {
        let user = OwnedUserId::try_from(user)
            .map_err(|e| CryptoError::CorruptState(format!("pending to-device user: {e}")))?;
        let entry = typed.entry(user).or_default();
        for (device, content) in devices {
            let device = if device == "*" {
                DeviceIdOrAllDevices::AllDevices
            } else {
                DeviceIdOrAllDevices::DeviceId(OwnedDeviceId::from(device))
            };
            entry.insert(device, raw(&content)?);
        }
    }
    let txn_id: OwnedTransactionId = pending.txn_id.as_str().into();
    let request =
        send_event_to_device::v3::Request::new_raw(pending.event_type.clone(), txn_id, typed);
    Ok(OutgoingRequest {
        id: pending.txn_id.clone(),
        kind: OutgoingKind::ToDevice(request),
    })
}

/// `messages` of a `/sendToDevice` body: the same content for each `(user, device)`.
pub(crate) fn messages_json(
    targets: &[(&OwnedUserId, &OwnedDeviceId)],
    content: Value,
) -> Result<String, CryptoError> {
    let mut messages: BTreeMap<&OwnedUserId, BTreeMap<&OwnedDeviceId, Value>> = BTreeMap::new();
    for (user, device) in targets {
        messages
            .entry(*user)
            .or_default()
            .insert(*device, content.clone());
    }
    serde_json::to_string(&messages).map_err(|e| CryptoError::CorruptState(e.to_string()))
}

/// Collects to-device messages of one event type into stored requests of at most
/// [`TO_DEVICE_BATCH`] devices each.
pub(crate) struct ToDeviceBatcher {
    event_type: ToDeviceEventType,
    chunks: Vec<BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Value>>>,
    in_chunk: usize,
    /// The room and session whose key the messages carry, if they do.
    room_key: Option<(OwnedRoomId, String)>,
}

impl ToDeviceBatcher {
    pub(crate) fn new(event_type: ToDeviceEventType) -> Self {
        Self {
            event_type,
            chunks: Vec::new(),
            in_chunk: TO_DEVICE_BATCH,
            room_key: None,
        }
    }

    /// Batches of room keys of `session_id` in `room_id`.
    pub(crate) fn room_keys(room_id: &RoomId, session_id: &str) -> Self {
        Self {
            room_key: Some((room_id.to_owned(), session_id.to_owned())),
            ..Self::new(ToDeviceEventType::RoomEncrypted)
        }
    }

    pub(crate) fn push(&mut self, device: &DeviceRecord, content: Value) {
        if self.in_chunk == TO_DEVICE_BATCH {
            self.chunks.push(BTreeMap::new());
            self.in_chunk = 0;
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk
                .entry(device.user_id.clone())
                .or_default()
                .insert(device.device_id.clone(), content);
            self.in_chunk += 1;
        }
    }

    /// Store the requests in `changes` (sent until confirmed) and return them.
    pub(crate) fn finish(self, changes: &mut Changes) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let mut requests = Vec::new();
        for chunk in self.chunks {
            let pending = PendingToDevice {
                txn_id: TransactionId::new().to_string(),
                event_type: self.event_type.clone(),
                messages_json: serde_json::to_string(&chunk)
                    .map_err(|e| CryptoError::CorruptState(e.to_string()))?,
                room_key: self.room_key.clone(),
            };
            requests.push(to_device_request(&pending)?);
            changes.crypto.pending_to_device.push(pending);
        }
        Ok(requests)
    }
}
