//! Timeline events as the app receives them.

use ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};
use serde::Serialize;
use serde_json::Value;
use tracing::debug;

use super::hooks::TrustPolicy;
use crate::crypto::{CryptoError, DecryptBatch, DecryptedRoomEvent, MegolmError, SyncBatch};
use crate::store::SenderTrust;

/// A received room message, decrypted where possible.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineEvent {
    /// Event id.
    pub event_id: OwnedEventId,
    /// Room.
    pub room_id: OwnedRoomId,
    /// Sender user.
    pub sender: OwnedUserId,
    /// Sending device, when the event was decrypted and the device is known.
    pub sender_device: Option<OwnedDeviceId>,
    /// Event type after decryption (`m.room.encrypted` if it could not be decrypted).
    pub event_type: String,
    /// Content after decryption (the encrypted content if it could not be decrypted).
    pub content: Value,
    /// `content.body` of a message, if any.
    pub body: Option<String>,
    /// Whether the event was end-to-end encrypted and decrypted.
    pub decrypted: bool,
    /// Why it could not be decrypted, if it could not, in words (for logs).
    pub error: Option<String>,
    /// Why it could not be decrypted, typed, when the reason is Megolm's (no key, withheld,
    /// unknown index, forged, replayed, ...): what an app switches on. `None` when
    /// decrypted, and for the other failures (a malformed signature: see `error`).
    #[serde(skip)]
    pub failure: Option<MegolmError>,
    /// Server timestamp.
    pub origin_server_ts: u64,
    /// The room's trust policy when the event was received (or re-evaluated).
    pub trust_policy: TrustPolicy,
    /// How far the sender of a decrypted event is trusted (`None` if not decrypted).
    pub sender_trust: Option<SenderTrust>,
    /// The session came from a key export, backup or forwarding (or predates sender data).
    pub legacy: bool,
    /// Decrypted, but the room's trust policy does not show this sender: `content` is the
    /// encrypted content and `body` is `None`; `sender_trust` says why. Kept and delivered
    /// again (`is_update`) when the policy or the sender's trust changes and it is shown.
    pub hidden_by_policy: bool,
    /// This event was delivered before (undecryptable) and is delivered again because a key
    /// for it arrived late: replace the earlier item with the same `event_id`. It is then
    /// decrypted, or still not, with the new reason (the key starts after this message).
    pub is_update: bool,
    /// Undecryptable for now, but a key may still arrive (it was not received, was withheld,
    /// starts at a later index, or its sending device is not downloaded yet: the sender
    /// retries `m.no_olm`, and our own devices may forward it): Newt retries when one does
    /// and then delivers the event again with `is_update`. `false` for decrypted events and
    /// for ones that can never be decrypted (forged, replayed, malformed).
    pub waiting_for_key: bool,
    /// Our own event's transaction id (the server gives it back to the device that sent
    /// it): the event replaces the local echo with this id.
    pub transaction_id: Option<String>,
}

/// Something that decrypts room events and commits their replay records later, together: a
/// sync batch (which also sees the keys of its own response before they are committed), or
/// a decryption batch outside a sync.
pub(crate) trait RoomDecryptor {
    fn decrypt(
        &mut self,
        room_id: &RoomId,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, CryptoError>;
}

impl RoomDecryptor for DecryptBatch<'_> {
    fn decrypt(
        &mut self,
        room_id: &RoomId,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, CryptoError> {
        self.decrypt_room_event(room_id, event)
    }
}

impl RoomDecryptor for SyncBatch<'_> {
    fn decrypt(
        &mut self,
        room_id: &RoomId,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, CryptoError> {
        self.decrypt_room_event(room_id, event)
    }
}

/// The ids every timeline event must have, checked at the edge.
struct Envelope {
    event_type: String,
    event_id: OwnedEventId,
    sender: OwnedUserId,
    origin_server_ts: u64,
}

impl Envelope {
    fn parse(event: &Value) -> Option<Self> {
        let str_of = |name: &str| event.get(name).and_then(Value::as_str);
        let parsed = (|| {
            Some(Self {
                event_type: str_of("type")?.to_owned(),
                event_id: OwnedEventId::try_from(str_of("event_id")?).ok()?,
                sender: OwnedUserId::try_from(str_of("sender")?).ok()?,
                origin_server_ts: event
                    .get("origin_server_ts")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            })
        })();
        if parsed.is_none() {
            debug!("skipping a timeline event without a valid type, event id or sender");
        }
        parsed
    }
}

impl TimelineEvent {
    /// Whether the app is shown this event's decrypted content.
    pub fn is_shown(&self) -> bool {
        self.decrypted && !self.hidden_by_policy
    }

    /// Whether this event must be kept to be delivered again later: its key may still come,
    /// or the trust policy hides it for now.
    pub(crate) fn may_change(&self) -> bool {
        self.waiting_for_key || self.hidden_by_policy
    }

    /// Turn a timeline event into what the app sees; `None` for events that are not messages
    /// or lack valid ids (a sender that is not a user id, say).
    pub(crate) fn from_sync(
        decryptor: &mut impl RoomDecryptor,
        room_id: &RoomId,
        event: &Value,
        trust_policy: TrustPolicy,
    ) -> Result<Option<Self>, CryptoError> {
        let Some(envelope) = Envelope::parse(event) else {
            return Ok(None);
        };
        let mut out = Self {
            event_id: envelope.event_id,
            room_id: room_id.to_owned(),
            sender: envelope.sender,
            sender_device: None,
            event_type: envelope.event_type.clone(),
            body: None,
            content: event.get("content").cloned().unwrap_or(Value::Null),
            decrypted: false,
            error: None,
            failure: None,
            origin_server_ts: envelope.origin_server_ts,
            trust_policy,
            sender_trust: None,
            legacy: false,
            hidden_by_policy: false,
            is_update: false,
            waiting_for_key: false,
            transaction_id: event
                .get("unsigned")
                .and_then(|u| u.get("transaction_id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        match envelope.event_type.as_str() {
            "m.room.encrypted" => match decryptor.decrypt(room_id, event) {
                Ok(d) => {
                    out.sender_device = d.sender_device;
                    out.decrypted = true;
                    out.sender_trust = Some(d.sender_trust);
                    out.legacy = d.legacy;
                    if trust_policy.allows(d.sender_trust, d.legacy) {
                        out.event_type = d.event_type;
                        out.content = d.content;
                    } else {
                        debug!(event_id = %out.event_id, trust = ?d.sender_trust, "hidden by the trust policy");
                        out.hidden_by_policy = true;
                    }
                }
                Err(CryptoError::Megolm(e)) => {
                    out.waiting_for_key = e.may_resolve_later();
                    out.error = Some(e.to_string());
                    out.failure = Some(e);
                }
                Err(CryptoError::Signing(e)) => out.error = Some(e.to_string()),
                Err(other) => return Err(other),
            },
            "m.room.message" | "m.reaction" | "m.room.redaction" => {}
            _ => return Ok(None),
        }
        out.body = out
            .content
            .get("body")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Some(out))
    }
}
