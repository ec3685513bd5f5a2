//! Timeline events as the app receives them.

use serde::Serialize;
use serde_json::Value;

use super::hooks::TrustPolicy;
use crate::crypto::{CryptoError, MegolmError, OlmMachine};

/// A received room message, decrypted where possible.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineEvent {
    /// Event id.
    pub event_id: String,
    /// Room.
    pub room_id: String,
    /// Sender user.
    pub sender: String,
    /// Sending device, when the event was decrypted.
    pub sender_device: Option<String>,
    /// Event type after decryption (`m.room.encrypted` if it could not be decrypted).
    pub event_type: String,
    /// Content after decryption (the encrypted content if it could not be decrypted).
    pub content: Value,
    /// `content.body` of a message, if any.
    pub body: Option<String>,
    /// Whether the event was end-to-end encrypted and decrypted.
    pub decrypted: bool,
    /// Why it could not be decrypted, if it could not.
    pub error: Option<String>,
    /// Server timestamp.
    pub origin_server_ts: u64,
    /// The room's trust policy when the event was received.
    pub trust_policy: TrustPolicy,
    /// Whether that policy could be enforced (only `ShowAll` until sender trust exists).
    pub policy_enforced: bool,
    /// This event was delivered before (undecryptable) and is delivered again because a key
    /// for it arrived late: replace the earlier item with the same `event_id`. It is then
    /// decrypted, or still not, with the new reason (the key starts after this message).
    pub is_update: bool,
    /// Undecryptable for now, but a key may still arrive (it was not received, was withheld,
    /// or starts at a later index: the sender retries `m.no_olm`, and our own devices may
    /// forward it): Newt retries when one does and then delivers the event
    /// again with `is_update`. `false` for decrypted events and for ones that can never be
    /// decrypted (forged, replayed, malformed).
    pub waiting_for_key: bool,
}

impl TimelineEvent {
    /// Turn a timeline event into what the app sees; `None` for events that are not messages.
    pub(crate) fn from_sync(
        machine: &OlmMachine,
        room_id: &str,
        event: &Value,
        trust_policy: TrustPolicy,
    ) -> Result<Option<Self>, CryptoError> {
        let str_of = |name: &str| event.get(name).and_then(Value::as_str).map(str::to_owned);
        let (Some(event_type), Some(event_id), Some(sender)) =
            (str_of("type"), str_of("event_id"), str_of("sender"))
        else {
            return Ok(None);
        };
        let origin_server_ts = event
            .get("origin_server_ts")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let content = event.get("content").cloned().unwrap_or(Value::Null);
        let mut out = Self {
            event_id,
            room_id: room_id.to_owned(),
            sender,
            sender_device: None,
            event_type: event_type.clone(),
            body: None,
            content,
            decrypted: false,
            error: None,
            origin_server_ts,
            trust_policy,
            policy_enforced: trust_policy.enforceable(),
            is_update: false,
            waiting_for_key: false,
        };
        match event_type.as_str() {
            "m.room.encrypted" => match machine.decrypt_room_event(room_id, event) {
                Ok(d) => {
                    out.event_type = d.event_type;
                    out.content = d.content;
                    out.sender_device = Some(d.sender_device);
                    out.decrypted = true;
                }
                Err(CryptoError::Megolm(e)) => {
                    // The sender retries devices it had no Olm channel to; for the other
                    // withheld codes our own devices may still forward the key.
                    out.waiting_for_key = matches!(
                        e,
                        MegolmError::MissingSession { .. }
                            | MegolmError::UnknownIndex { .. }
                            | MegolmError::Withheld { .. }
                    );
                    out.error = Some(e.to_string());
                }
                Err(CryptoError::Signing(e)) => out.error = Some(e.to_string()),
                Err(other) => return Err(other),
            },
            "m.room.message" => {}
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
