//! A `/sync` answer as Newt uses it, and the size limits of its events.
//!
//! It is read leniently at the edge ([`super::sync_stream`]): whatever does not have the
//! expected shape (an invalid room or user id, an event that is not an object or is larger
//! than the spec allows, a count that is not a number) is left out with a log line, and the
//! rest is kept. Only broken JSON or a missing `next_batch` is refused: everything else
//! advances the sync.

use std::collections::BTreeMap;

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::Value;
use tracing::warn;

/// Largest event we look at, in bytes of JSON (the spec's limit for a whole event), not
/// counting `unsigned` (which the server adds: a thread's latest event, edits).
pub const MAX_EVENT_BYTES: usize = 65_536;

/// Largest event read at all, `unsigned` included.
const MAX_RAW_EVENT_BYTES: usize = 4 * MAX_EVENT_BYTES;

/// Longest transaction id kept from an event's `unsigned` (ours are 20-odd characters).
const MAX_TXN_ID_BYTES: usize = 255;

/// An event of an answer as JSON, if it is an object within the size limits. `unsigned` is
/// left out but for `transaction_id` (our own events carry it back to the device that sent
/// them: the send queue forgets them then).
pub(crate) fn event_within_limits(raw: &str, what: &str) -> Option<Value> {
    if raw.len() > MAX_RAW_EVENT_BYTES {
        warn!(
            field = what,
            bytes = raw.len(),
            "skipping an oversized event"
        );
        return None;
    }
    let Ok(Value::Object(mut event)) = serde_json::from_str::<Value>(raw) else {
        warn!(field = what, "skipping an event that is not an object");
        return None;
    };
    let txn_id = event
        .get("unsigned")
        .and_then(|u| u.get("transaction_id"))
        .and_then(Value::as_str)
        .filter(|t| t.len() <= MAX_TXN_ID_BYTES)
        .map(str::to_owned);
    event.remove("unsigned");
    if let Some(txn_id) = txn_id {
        event.insert(
            "unsigned".into(),
            serde_json::json!({"transaction_id": txn_id}),
        );
    }
    let event = Value::Object(event);
    // Measured again only when the raw size is over the limit (`unsigned` may be why).
    if raw.len() > MAX_EVENT_BYTES && event.to_string().len() > MAX_EVENT_BYTES {
        warn!(
            field = what,
            bytes = raw.len(),
            "skipping an oversized event"
        );
        return None;
    }
    Some(event)
}

/// A joined room's part of the answer.
#[derive(Debug)]
pub(crate) struct JoinedRoom {
    pub room_id: OwnedRoomId,
    /// `state.events`, in order.
    pub state: Vec<Value>,
    /// `timeline.events`, in order.
    pub timeline: Vec<Value>,
    pub limited: bool,
    pub prev_batch: Option<String>,
}

/// The parts of a `/sync` answer Newt uses.
#[derive(Debug, Default)]
pub(crate) struct SyncResponse {
    pub next_batch: String,
    pub joined: Vec<JoinedRoom>,
    pub invited: Vec<OwnedRoomId>,
    pub left: Vec<OwnedRoomId>,
    pub to_device: Vec<Value>,
    pub changed_users: Vec<OwnedUserId>,
    pub left_users: Vec<OwnedUserId>,
    pub one_time_key_counts: Option<BTreeMap<String, u64>>,
    pub unused_fallback_key_types: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_parts_are_left_out_and_the_rest_is_kept() {
        let big = "x".repeat(MAX_EVENT_BYTES);
        let body = serde_json::json!({
            "next_batch": "s2",
            "rooms": {
                "join": {
                    "!ok:x": {"timeline": {"events": [
                        {"type": "m.room.message", "event_id": "$1"}, 3, {"content": big}
                    ], "limited": "yes", "prev_batch": "p1"}, "state": {"events": "no"}},
                    "not-a-room": {"timeline": {"events": []}},
                },
                "invite": {"!inv:x": {"invite_state": {"events": [{"state_key": ""}]}}},
                "leave": [],
            },
            "to_device": {"events": [{"type": "m.dummy"}, "x"]},
            "device_lists": {"changed": ["@a:x", "nope", 5], "left": "@b:x"},
            "device_one_time_keys_count": {"signed_curve25519": 12, "x": "y"},
            "device_unused_fallback_key_types": ["signed_curve25519", 1],
        })
        .to_string();
        let sync = SyncResponse::parse(body.as_bytes()).unwrap();
        assert_eq!(sync.next_batch, "s2");
        assert_eq!(sync.joined.len(), 1);
        let room = &sync.joined[0];
        assert_eq!(room.room_id.as_str(), "!ok:x");
        assert_eq!(room.timeline.len(), 1, "the number and the oversized event");
        assert!(room.state.is_empty());
        assert!(!room.limited);
        assert_eq!(room.prev_batch.as_deref(), Some("p1"));
        assert_eq!(sync.invited.len(), 1);
        assert!(sync.left.is_empty());
        assert_eq!(sync.to_device.len(), 1);
        assert_eq!(sync.changed_users.len(), 1);
        assert!(sync.left_users.is_empty());
        assert_eq!(
            sync.one_time_key_counts,
            Some(BTreeMap::from([("signed_curve25519".to_owned(), 12)]))
        );
        assert_eq!(
            sync.unused_fallback_key_types,
            Some(vec!["signed_curve25519".to_owned()])
        );
    }

    #[test]
    fn only_a_short_transaction_id_is_kept_of_unsigned() {
        let raw = |txn: &str| {
            serde_json::json!({"type": "m.room.message", "event_id": "$1",
                "unsigned": {"transaction_id": txn, "age": 5}})
            .to_string()
        };
        let kept = event_within_limits(&raw("txn1"), "test").unwrap();
        assert_eq!(
            kept["unsigned"],
            serde_json::json!({"transaction_id": "txn1"})
        );
        let long = "t".repeat(MAX_TXN_ID_BYTES + 1);
        let kept = event_within_limits(&raw(&long), "test").unwrap();
        assert!(kept.get("unsigned").is_none());
    }

    #[test]
    fn unsigned_does_not_count_towards_an_events_size() {
        let thread = "x".repeat(MAX_EVENT_BYTES);
        let event = serde_json::json!({"type": "m.room.message", "event_id": "$1", "content": {"body": "hi"},
                           "unsigned": {"m.relations": {"m.thread": {"latest_event": thread}}}});
        let kept = event_within_limits(&event.to_string(), "test").expect("kept");
        assert!(kept.get("unsigned").is_none());
        let big = serde_json::json!({"type": "m.room.message", "content": {"body": "x".repeat(MAX_EVENT_BYTES)}});
        assert!(event_within_limits(&big.to_string(), "test").is_none());
    }

    #[test]
    fn only_an_answer_without_a_token_is_refused() {
        for body in [&b"[]"[..], b"{}", b"{\"next_batch\": 5}", b"\xff", b""] {
            assert!(SyncResponse::parse(body).is_err(), "{body:?}");
        }
        let sync = SyncResponse::parse(br#"{"next_batch": "t", "rooms": null}"#).unwrap();
        assert!(sync.joined.is_empty() && sync.one_time_key_counts.is_none());
    }
}
