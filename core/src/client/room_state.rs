//! Room state from a `/sync` answer: encryption, history visibility and memberships, as
//! room and member records for the sync's transaction. State events are checked where they
//! enter: a member event whose `state_key` is not a user id, or with an unknown membership,
//! is skipped. Invites carry only stripped state, which anyone who can invite us writes: it
//! is not used for anything but our own membership.

use serde_json::Value;
use tracing::debug;

use super::sync_response::SyncResponse;
use crate::store::{Changes, MemberRecord, RoomRecord, Store, StoreError};

/// Memberships a member event may carry.
const MEMBERSHIPS: [&str; 5] = ["join", "invite", "leave", "ban", "knock"];

/// Apply one state event to the room and member records being built.
pub(crate) fn apply_state(
    room: &mut RoomRecord,
    members: &mut Vec<MemberRecord>,
    event: &Value,
    own_user: &str,
) {
    let event_type = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(state_key) = event.get("state_key").and_then(Value::as_str) else {
        return;
    };
    let content = event.get("content").cloned().unwrap_or(Value::Null);
    match event_type {
        // Encryption can never be turned off; the first setting stays.
        "m.room.encryption"
            if room.encryption.is_none()
                && state_key.is_empty()
                && content.get("algorithm").is_some_and(Value::is_string) =>
        {
            room.encryption = Some(content.to_string());
        }
        "m.room.history_visibility" if state_key.is_empty() => {
            room.history_visibility = content
                .get("history_visibility")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        "m.room.member" => {
            let membership = content.get("membership").and_then(Value::as_str);
            let (Some(membership), Ok(user)) = (membership, ruma::UserId::parse(state_key)) else {
                debug!("skipping a member event without a valid user id or membership");
                return;
            };
            if !MEMBERSHIPS.contains(&membership) {
                debug!("skipping a member event with an unknown membership");
                return;
            }
            if user.as_str() == own_user {
                room.own_membership = Some(membership.to_owned());
            }
            members.retain(|m| m.user_id != user.as_str());
            members.push(MemberRecord {
                room_id: room.room_id.clone(),
                user_id: user.to_string(),
                membership: membership.to_owned(),
            });
        }
        _ => {}
    }
}

/// The stored record of `room_id` with our membership set to `membership`. When it changes,
/// the member list must be loaded again (we may have missed changes while not joined).
fn with_membership(
    store: &dyn Store,
    room_id: &str,
    membership: &str,
) -> Result<RoomRecord, StoreError> {
    let mut room = store.room(room_id)?.unwrap_or_else(|| RoomRecord {
        room_id: room_id.to_owned(),
        ..Default::default()
    });
    if room.own_membership.as_deref() != Some(membership) {
        room.members_synced = false;
    }
    room.own_membership = Some(membership.to_owned());
    Ok(room)
}

/// Room and member records from the answer; joined rooms' timelines are read for state
/// too (after `state`). Returns the changes and the ids of the encrypted joined rooms.
pub(crate) fn room_changes(
    store: &dyn Store,
    sync: &SyncResponse,
    own_user: &str,
) -> Result<(Changes, Vec<String>), StoreError> {
    let mut changes = Changes::default();
    // A room listed in several sections: invite, then leave, then join win in this order.
    for room_id in &sync.invited {
        changes
            .rooms
            .push(with_membership(store, room_id.as_str(), "invite")?);
    }
    for room_id in &sync.left {
        if store.room(room_id.as_str())?.is_some() {
            changes
                .rooms
                .push(with_membership(store, room_id.as_str(), "leave")?);
        }
    }
    let mut encrypted = Vec::new();
    for joined in &sync.joined {
        let mut room = with_membership(store, joined.room_id.as_str(), "join")?;
        let mut members = Vec::new();
        let state = joined.state.iter().chain(&joined.timeline);
        for event in state.filter(|e| e.get("state_key").is_some()) {
            apply_state(&mut room, &mut members, event, own_user);
        }
        if room.encryption.is_some() {
            encrypted.push(room.room_id.clone());
        }
        changes.members.extend(members);
        changes.rooms.push(room);
    }
    Ok((changes, encrypted))
}
