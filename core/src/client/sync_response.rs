//! A `/sync` answer, parsed leniently at the edge.
//!
//! The answer is taken apart level by level; whatever does not have the expected shape (an
//! invalid room or user id, an event that is not an object or is larger than the spec
//! allows, a count that is not a number) is left out with a log line, and the rest is kept.
//! Only an answer that is not a JSON object or has no `next_batch` is refused: everything
//! else advances the sync.

use std::collections::BTreeMap;

use ruma::{OwnedRoomId, OwnedUserId};
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use tracing::warn;

use super::ClientError;

/// Largest event we look at, in bytes of JSON (the spec's limit for a whole event).
pub const MAX_EVENT_BYTES: usize = 65_536;

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

type Object<'a> = BTreeMap<String, &'a RawValue>;

/// `raw` as an object of raw members, or `None` (logged) if it is something else.
fn object<'a>(raw: Option<&'a RawValue>, what: &str) -> Option<Object<'a>> {
    let raw = raw?;
    match serde_json::from_str::<Object<'a>>(raw.get()) {
        Ok(map) => Some(map),
        Err(_) if raw.get() == "null" => None,
        Err(e) => {
            warn!(field = what, error = %e, "ignoring a malformed part of the sync answer");
            None
        }
    }
}

/// `raw` parsed as `T`, or `None` (logged).
fn value<T: DeserializeOwned>(raw: Option<&RawValue>, what: &str) -> Option<T> {
    let raw = raw?;
    match serde_json::from_str(raw.get()) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(field = what, error = %e, "ignoring a malformed part of the sync answer");
            None
        }
    }
}

/// The events of `container.events`: objects of at most [`MAX_EVENT_BYTES`], in order.
fn events(container: Option<&RawValue>, what: &str) -> Vec<Value> {
    let Some(events) = object(container, what).and_then(|c| c.get("events").copied()) else {
        return Vec::new();
    };
    let Ok(list) = serde_json::from_str::<Vec<&RawValue>>(events.get()) else {
        warn!(field = what, "ignoring a malformed event list");
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|raw| {
            if raw.get().len() > MAX_EVENT_BYTES {
                warn!(
                    field = what,
                    bytes = raw.get().len(),
                    "skipping an oversized event"
                );
                return None;
            }
            match serde_json::from_str::<Value>(raw.get()) {
                Ok(event @ Value::Object(_)) => Some(event),
                _ => {
                    warn!(field = what, "skipping an event that is not an object");
                    None
                }
            }
        })
        .collect()
}

/// Valid ids of a list; the others are left out.
fn ids<T: TryFrom<String>>(raw: Option<&RawValue>, what: &str) -> Vec<T> {
    value::<Vec<Value>>(raw, what)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| match v {
            Value::String(s) => T::try_from(s).ok(),
            _ => None,
        })
        .collect()
}

/// The rooms of a section (`join`, `invite`, `leave`) with a valid room id.
fn rooms<'a>(section: Option<&'a RawValue>, what: &str) -> Vec<(OwnedRoomId, &'a RawValue)> {
    object(section, what)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, room)| match OwnedRoomId::try_from(id) {
            Ok(id) => Some((id, room)),
            Err(e) => {
                warn!(section = what, error = %e, "skipping a room with an invalid id");
                None
            }
        })
        .collect()
}

fn joined_room(room_id: OwnedRoomId, raw: &RawValue) -> JoinedRoom {
    let room = object(Some(raw), "joined room").unwrap_or_default();
    let timeline = object(room.get("timeline").copied(), "timeline").unwrap_or_default();
    JoinedRoom {
        room_id,
        state: events(room.get("state").copied(), "state"),
        timeline: events(room.get("timeline").copied(), "timeline"),
        limited: value(timeline.get("limited").copied(), "limited").unwrap_or(false),
        prev_batch: value(timeline.get("prev_batch").copied(), "prev_batch"),
    }
}

impl SyncResponse {
    /// Parse a `/sync` answer body.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ClientError> {
        let invalid = |why: &str| ClientError::InvalidResponse(format!("sync: {why}"));
        let text = std::str::from_utf8(body).map_err(|_| invalid("not UTF-8"))?;
        let top: Object<'_> =
            serde_json::from_str(text).map_err(|_| invalid("not a JSON object"))?;
        let next_batch = value::<String>(top.get("next_batch").copied(), "next_batch")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("no next_batch"))?;
        let rooms_section = object(top.get("rooms").copied(), "rooms").unwrap_or_default();
        let section = |name: &str| rooms(rooms_section.get(name).copied(), name);
        let device_lists =
            object(top.get("device_lists").copied(), "device_lists").unwrap_or_default();
        let counts: Option<BTreeMap<String, Value>> = value(
            top.get("device_one_time_keys_count").copied(),
            "device_one_time_keys_count",
        );
        let fallback: Option<Vec<Value>> = value(
            top.get("device_unused_fallback_key_types").copied(),
            "device_unused_fallback_key_types",
        );
        Ok(Self {
            next_batch,
            joined: section("join")
                .into_iter()
                .map(|(id, raw)| joined_room(id, raw))
                .collect(),
            invited: section("invite").into_iter().map(|(id, _)| id).collect(),
            left: section("leave").into_iter().map(|(id, _)| id).collect(),
            to_device: events(top.get("to_device").copied(), "to_device"),
            changed_users: ids(device_lists.get("changed").copied(), "changed"),
            left_users: ids(device_lists.get("left").copied(), "left"),
            one_time_key_counts: counts.map(|c| {
                c.into_iter()
                    .filter_map(|(k, v)| Some((k, v.as_u64()?)))
                    .collect()
            }),
            unused_fallback_key_types: fallback.map(|f| {
                f.into_iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            }),
        })
    }
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
    fn only_an_answer_without_a_token_is_refused() {
        for body in [&b"[]"[..], b"{}", b"{\"next_batch\": 5}", b"\xff", b""] {
            assert!(SyncResponse::parse(body).is_err(), "{body:?}");
        }
        let sync = SyncResponse::parse(br#"{"next_batch": "t", "rooms": null}"#).unwrap();
        assert!(sync.joined.is_empty() && sync.one_time_key_counts.is_none());
    }
}
