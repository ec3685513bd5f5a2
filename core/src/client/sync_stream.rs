//! Reading a `/sync` answer as a stream, keeping only what Newt uses.
//!
//! The answer is never held whole: invites' stripped state, presence, account data and
//! ephemeral events are skipped as they are read, and the events kept (state, timelines,
//! to-device) count against a budget; once it is used up, further events are left out
//! (logged). So an answer made huge by others (hundreds of invites with bloated state, say)
//! still yields its `next_batch`, and the sync moves on. Parts of the wrong shape are
//! skipped, never fatal; only broken JSON or a missing `next_batch` is.

use std::cell::Cell;
use std::fmt;
use std::io::Read;

use ruma::{OwnedRoomId, OwnedUserId};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use tracing::warn;

use super::ClientError;
use super::sync_response::{JoinedRoom, SyncResponse, event_within_limits};

/// Bytes of events one answer may leave us holding.
pub(super) const MAX_KEPT_BYTES: usize = 32 * 1024 * 1024;

impl SyncResponse {
    /// Parse a `/sync` answer body held in memory (tests; the sync loop reads the answer
    /// as a stream).
    #[cfg(test)]
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ClientError> {
        read(body, MAX_KEPT_BYTES)
    }
}

/// Accept any JSON value where `Self::Value::default()` will do: a part of the wrong shape
/// is skipped (maps and lists drained without keeping anything).
macro_rules! anything_else_is_empty {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

/// Drain a map without keeping anything.
fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Drain a list without keeping anything.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The budget of bytes of kept events, shared by the parts of one answer.
struct Budget {
    left: Cell<usize>,
    warned: Cell<bool>,
}

impl Budget {
    /// Whether `bytes` more may be kept (and if so, they are counted).
    fn take(&self, bytes: usize) -> bool {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                true
            }
            None => {
                if !self.warned.replace(true) {
                    warn!("a sync answer holds more events than Newt keeps; the rest is left out");
                }
                false
            }
        }
    }
}

/// `{"events": [...]}`: the events, within the size limits and the budget.
struct Events<'b>(&'b Budget, &'static str);

impl<'de> DeserializeSeed<'de> for Events<'_> {
    type Value = Vec<Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Events<'_> {
    type Value = Vec<Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with events")
    }
    anything_else_is_empty!();
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Vec::new())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "events" {
                events = map.next_value_seed(EventList(self.0, self.1))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(events)
    }
}

/// `[...]` of events.
struct EventList<'b>(&'b Budget, &'static str);

impl<'de> DeserializeSeed<'de> for EventList<'_> {
    type Value = Vec<Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EventList<'_> {
    type Value = Vec<Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of events")
    }
    anything_else_is_empty!();
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        skip_map(map)?;
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::new();
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            let json = raw.get();
            if self.0.take(json.len()) {
                events.extend(event_within_limits(json, self.1));
            }
        }
        Ok(events)
    }
}

/// A small part (device lists, key counts, a token) as a JSON value; `Null` if it is not
/// valid or does not fit the budget (read without recursing, so deep nesting is harmless).
fn small<'de, A: MapAccess<'de>>(map: &mut A, budget: &Budget) -> Result<Value, A::Error> {
    let raw = map.next_value::<Box<RawValue>>()?;
    if !budget.take(raw.get().len()) {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_str(raw.get()).unwrap_or(Value::Null))
}

/// A joined room's part of the answer.
struct Joined<'b>(&'b Budget, OwnedRoomId);

impl<'de> DeserializeSeed<'de> for Joined<'_> {
    type Value = JoinedRoom;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Joined<'_> {
    fn empty(self) -> JoinedRoom {
        JoinedRoom {
            room_id: self.1,
            state: Vec::new(),
            timeline: Vec::new(),
            limited: false,
            prev_batch: None,
        }
    }
}

/// Like `anything_else_is_empty!`, for visitors whose value has no `Default`.
macro_rules! anything_else_is {
    ($empty:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($empty(self))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($empty(self))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($empty(self))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($empty(self))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($empty(self))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($empty(self))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq)?;
            Ok($empty(self))
        }
    };
}

impl<'de> Visitor<'de> for Joined<'_> {
    type Value = JoinedRoom;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a joined room")
    }
    anything_else_is!(Joined::empty);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let budget = self.0;
        let mut room = self.empty();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "state" => room.state = map.next_value_seed(Events(budget, "state"))?,
                "timeline" => {
                    let timeline = map.next_value_seed(Timeline(budget))?;
                    (room.timeline, room.limited, room.prev_batch) = timeline;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(room)
    }
}

/// `timeline`: its events, `limited` and `prev_batch`.
struct Timeline<'b>(&'b Budget);

type TimelineParts = (Vec<Value>, bool, Option<String>);

impl<'de> DeserializeSeed<'de> for Timeline<'_> {
    type Value = TimelineParts;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Timeline<'_> {
    type Value = TimelineParts;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a timeline")
    }
    anything_else_is_empty!();
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Default::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parts = TimelineParts::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "events" => parts.0 = map.next_value_seed(EventList(self.0, "timeline"))?,
                "limited" => parts.1 = small(&mut map, self.0)?.as_bool().unwrap_or(false),
                "prev_batch" => parts.2 = small(&mut map, self.0)?.as_str().map(str::to_owned),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(parts)
    }
}

/// A section of `rooms`: joined rooms are read, the others (invites with their stripped
/// state, left rooms) only named.
struct Section<'b>(&'b Budget, bool);

type SectionParts = (Vec<JoinedRoom>, Vec<OwnedRoomId>);

impl<'de> DeserializeSeed<'de> for Section<'_> {
    type Value = SectionParts;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Section<'_> {
    type Value = SectionParts;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rooms by id")
    }
    anything_else_is_empty!();
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Default::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parts = SectionParts::default();
        while let Some(id) = map.next_key::<String>()? {
            let Ok(room_id) = OwnedRoomId::try_from(id) else {
                warn!("skipping a room with an invalid id");
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if self.1 {
                parts.0.push(map.next_value_seed(Joined(self.0, room_id))?);
            } else {
                map.next_value::<IgnoredAny>()?;
                parts.1.push(room_id);
            }
        }
        Ok(parts)
    }
}

/// `rooms`: `join`, `invite`, `leave`.
struct Rooms<'b>(&'b Budget);

type RoomsParts = (Vec<JoinedRoom>, Vec<OwnedRoomId>, Vec<OwnedRoomId>);

impl<'de> DeserializeSeed<'de> for Rooms<'_> {
    type Value = RoomsParts;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Rooms<'_> {
    type Value = RoomsParts;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rooms")
    }
    anything_else_is_empty!();
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Default::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parts = RoomsParts::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "join" => parts.0 = map.next_value_seed(Section(self.0, true))?.0,
                "invite" => parts.1 = map.next_value_seed(Section(self.0, false))?.1,
                "leave" => parts.2 = map.next_value_seed(Section(self.0, false))?.1,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(parts)
    }
}

/// The whole answer.
struct Answer<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Answer<'_> {
    type Value = Option<SyncResponse>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Answer<'_> {
    type Value = Option<SyncResponse>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sync answer")
    }
    anything_else_is_empty!();
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut sync = SyncResponse::default();
        let mut device_lists = Value::Null;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "next_batch" => {
                    sync.next_batch = small(&mut map, self.0)?
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                }
                "rooms" => {
                    (sync.joined, sync.invited, sync.left) = map.next_value_seed(Rooms(self.0))?;
                }
                "to_device" => sync.to_device = map.next_value_seed(Events(self.0, "to_device"))?,
                "device_lists" => device_lists = small(&mut map, self.0)?,
                "device_one_time_keys_count" => {
                    sync.one_time_key_counts = small(&mut map, self.0)?.as_object().map(|counts| {
                        counts
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                            .collect()
                    });
                }
                "device_unused_fallback_key_types" => {
                    sync.unused_fallback_key_types =
                        small(&mut map, self.0)?.as_array().map(|types| {
                            types
                                .iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        });
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        sync.changed_users = user_ids(&device_lists["changed"]);
        sync.left_users = user_ids(&device_lists["left"]);
        Ok((!sync.next_batch.is_empty()).then_some(sync))
    }
}

/// The valid user ids of a list.
fn user_ids(list: &Value) -> Vec<OwnedUserId> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| OwnedUserId::try_from(v.as_str()?).ok())
        .collect()
}

/// Read a `/sync` answer from `reader`, keeping at most `kept_bytes` of events.
pub(crate) fn read(reader: impl Read, kept_bytes: usize) -> Result<SyncResponse, ClientError> {
    let budget = Budget {
        left: Cell::new(kept_bytes),
        warned: Cell::new(false),
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = Answer(&budget)
        .deserialize(&mut de)
        .and_then(|sync| de.end().map(|()| sync));
    match parsed {
        Ok(Some(sync)) => Ok(sync),
        Ok(None) => Err(ClientError::InvalidResponse("sync: no next_batch".into())),
        Err(e) => Err(ClientError::InvalidResponse(format!("sync: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn invites_with_bloated_state_are_named_and_their_state_never_held() {
        let bloat = "x".repeat(60_000);
        let invites: serde_json::Map<String, Value> = (0..50)
            .map(|i| {
                let state: Vec<Value> = (0..7)
                    .map(|_| {
                        json!({"type": "m.room.topic", "state_key": "",
                                    "content": {"topic": bloat}})
                    })
                    .collect();
                (
                    format!("!inv{i}:x"),
                    json!({"invite_state": {"events": state}}),
                )
            })
            .collect();
        let body = json!({
            "rooms": {"invite": invites, "join": {"!j:x": {"timeline": {"events": [
                {"type": "m.room.message", "event_id": "$1", "sender": "@a:x", "content": {}}
            ]}}}},
            "next_batch": "s9",
        })
        .to_string();
        assert!(body.len() > 20_000_000);
        // A budget far below the answer's size: the invites cost nothing.
        let sync = read(body.as_bytes(), 1_000_000).unwrap();
        assert_eq!(sync.next_batch, "s9", "found after 20 MB of invites");
        assert_eq!(sync.invited.len(), 50);
        assert_eq!(sync.joined[0].timeline.len(), 1);
    }

    #[test]
    fn events_beyond_the_budget_are_left_out_and_the_token_still_read() {
        let event = json!({"type": "m.room.message", "event_id": "$1", "content": {"body": "x"}});
        let events: Vec<Value> = (0..100).map(|_| event.clone()).collect();
        let body = json!({"to_device": {"events": events}, "next_batch": "s2"}).to_string();
        let one = event.to_string().len();
        let sync = read(body.as_bytes(), one * 10 + 16).unwrap();
        assert_eq!(sync.to_device.len(), 10);
        assert_eq!(sync.next_batch, "s2");
        // Nested deeper than the JSON parser goes: that part is left out, nothing fails.
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let body = format!(r#"{{"device_lists": {{"changed": {deep}}}, "next_batch": "s3"}}"#);
        let sync = read(body.as_bytes(), MAX_KEPT_BYTES).unwrap();
        assert!(sync.changed_users.is_empty());
        assert_eq!(sync.next_batch, "s3");
    }

    #[test]
    fn broken_json_and_a_missing_token_are_refused() {
        for body in [
            &b"{\"next_batch\": \"s\""[..],
            b"{}",
            b"[]",
            b"{\"next_batch\": \"\"}",
            b"",
        ] {
            assert!(read(body, MAX_KEPT_BYTES).is_err(), "{body:?}");
        }
    }
}
