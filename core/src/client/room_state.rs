//! Room state from a `/sync` answer: encryption, history visibility and memberships, as
//! room and member records for the sync's transaction. State events are checked where they
//! enter: a member event whose `state_key` is not a user id, or with an unknown membership,
//! is skipped. Invites carry only stripped state, which anyone who can invite us writes: it
//! is not used for anything but our own membership.

use ruma::events::room::history_visibility::RoomHistoryVisibilityEventContent;
use ruma::events::room::member::MembershipState;
use std::collections::HashSet;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::Value;
use tracing::debug;

use super::sync_response::SyncResponse;
use crate::store::{Changes, MemberRecord, RoomEncryption, RoomRecord, Store, StoreError};

/// Apply one state event to the room and member records being built.
pub(crate) fn apply_state(
    room: &mut RoomRecord,
    members: &mut Vec<MemberRecord>,
    event: &Value,
    own_user: &UserId,
) {
    let event_type = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(state_key) = event.get("state_key").and_then(Value::as_str) else {
        return;
    };
    let content = event.get("content").unwrap_or(&Value::Null);
    match event_type {
        // Encryption can never be turned off; the first setting stays.
        "m.room.encryption" if room.encryption.is_none() && state_key.is_empty() => {
            room.encryption = RoomEncryption::from_content(content);
        }
        "m.room.history_visibility" if state_key.is_empty() => {
            room.history_visibility = RoomHistoryVisibilityEventContent::deserialize(content)
                .ok()
                .map(|c| c.history_visibility);
        }
        "m.room.member" => apply_member(room, members, state_key, content, own_user),
        _ => {}
    }
}

/// The part of `m.room.member` content that counts here. Only `membership` is read: a
/// malformed display name or avatar must not make a member's `leave` go unseen.
#[derive(Deserialize)]
struct MemberContent {
    membership: MembershipState,
}

/// A member event: skipped unless its `state_key` is a user id and its content has a
/// membership the spec defines.
fn apply_member(
    room: &mut RoomRecord,
    members: &mut Vec<MemberRecord>,
    state_key: &str,
    content: &Value,
    own_user: &UserId,
) {
    let membership = MemberContent::deserialize(content).map(|c| c.membership);
    let (Ok(membership), Ok(user)) = (membership, OwnedUserId::try_from(state_key)) else {
        debug!("skipping a member event without a valid user id or membership");
        return;
    };
    if !is_known(&membership) {
        debug!("skipping a member event with an unknown membership");
        return;
    }
    if user == own_user {
        room.own_membership = Some(membership.clone());
    }
    members.retain(|m| m.user_id != user);
    members.push(MemberRecord {
        room_id: room.room_id.clone(),
        user_id: user,
        membership,
    });
}

/// The memberships the spec defines (not a custom value another server made up).
fn is_known(membership: &MembershipState) -> bool {
    matches!(
        membership,
        MembershipState::Join
            | MembershipState::Invite
            | MembershipState::Leave
            | MembershipState::Ban
            | MembershipState::Knock
    )
}

/// The stored record of `room_id` with our membership set to `membership`. When it changes,
/// the member list must be loaded again (we may have missed changes while not joined).
pub(crate) fn with_membership(
    store: &dyn Store,
    room_id: &RoomId,
    membership: MembershipState,
) -> Result<RoomRecord, StoreError> {
    let mut room = store
        .room(room_id)?
        .unwrap_or_else(|| RoomRecord::new(room_id.to_owned()));
    if room.own_membership.as_ref() != Some(&membership) {
        room.members_synced = false;
    }
    room.own_membership = Some(membership);
    Ok(room)
}

/// What a sync answer changes in the rooms.
pub(crate) struct RoomChanges {
    /// Room and member records, and the queued messages whose echo came back.
    pub(crate) changes: Changes,
    /// The encrypted joined rooms.
    pub(crate) encrypted: Vec<OwnedRoomId>,
    /// Queued messages whose echo came back: `(room, transaction id, event id)`.
    pub(crate) echoed: Vec<(OwnedRoomId, String, OwnedEventId)>,
}

/// Room and member records from the answer; joined rooms' timelines are read for state
/// too (after `state`), and for the echoes of our queued messages.
pub(crate) fn room_changes(
    store: &dyn Store,
    sync: &SyncResponse,
    own_user: &UserId,
) -> Result<RoomChanges, StoreError> {
    let mut changes = Changes::default();
    // A room listed in several sections: invite, then leave, then join win in this order.
    for room_id in &sync.invited {
        changes
            .client
            .rooms
            .push(with_membership(store, room_id, MembershipState::Invite)?);
    }
    for room_id in &sync.left {
        if store.room(room_id)?.is_some() {
            changes
                .client
                .rooms
                .push(with_membership(store, room_id, MembershipState::Leave)?);
        }
    }
    let mut encrypted = Vec::new();
    let mut echoed = Vec::new();
    // Read once, and only if the answer has echoes of our own.
    let mut queued: Option<HashSet<String>> = None;
    for joined in &sync.joined {
        let mut room = with_membership(store, &joined.room_id, MembershipState::Join)?;
        let mut members = Vec::new();
        let state = joined.state.iter().chain(&joined.timeline);
        for event in state.filter(|e| e.get("state_key").is_some()) {
            apply_state(&mut room, &mut members, event, own_user);
        }
        if room.encryption.is_some() {
            encrypted.push(room.room_id.clone());
        }
        changes.client.members.extend(members);
        changes.client.rooms.push(room);
        for (txn_id, event_id) in own_echoes(&joined.timeline, own_user) {
            if queued.is_none() {
                let txns = store.queued_sends()?.into_iter().map(|q| q.txn_id);
                queued = Some(txns.collect());
            }
            if queued.as_ref().is_some_and(|q| q.contains(&txn_id)) {
                changes.client.finished_sends.push(txn_id.clone());
                changes
                    .client
                    .sent_events
                    .push((txn_id.clone(), event_id.clone()));
                echoed.push((joined.room_id.clone(), txn_id, event_id));
            }
        }
    }
    Ok(RoomChanges {
        changes,
        encrypted,
        echoed,
    })
}

/// Transaction ids of our own events in a timeline (the server adds them for the device
/// that sent them), with their event ids: those messages are on the server, and leave the
/// send queue even if the answer to their `PUT` never came back, so that they are not sent
/// again (and the queued messages relating to them learn their event id).
fn own_echoes<'a>(
    timeline: &'a [Value],
    own_user: &'a UserId,
) -> impl Iterator<Item = (String, OwnedEventId)> + 'a {
    timeline
        .iter()
        .filter(move |e| e.get("sender").and_then(Value::as_str) == Some(own_user.as_str()))
        .filter_map(|e| {
            let txn_id = e.get("unsigned")?.get("transaction_id")?.as_str()?;
            let event_id = OwnedEventId::try_from(e.get("event_id")?.as_str()?).ok()?;
            (!txn_id.is_empty()).then(|| (txn_id.to_owned(), event_id))
        })
}
