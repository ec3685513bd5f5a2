//! Room membership as the machine needs it to judge what others send (a room key, a
//! withheld notice): from the store, overlaid with what the batch being processed adds.

use ruma::events::room::member::MembershipState;
use ruma::{RoomId, UserId};

use super::error::CryptoError;
use crate::store::{Changes, Store};

/// Whether `user_id` is joined to or invited into `room_id`, as the store and the `pending`
/// records of a batch (later ones win) know it.
pub(crate) fn is_member(
    store: &dyn Store,
    pending: &Changes,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<bool, CryptoError> {
    let replaced = pending
        .client
        .replaced_member_lists
        .iter()
        .any(|r| r == room_id);
    let membership = match pending
        .client
        .members
        .iter()
        .rev()
        .find(|m| m.room_id == room_id && m.user_id == user_id)
    {
        Some(m) => Some(m.membership.clone()),
        None if replaced => None,
        None => store.member(room_id, user_id)?.map(|m| m.membership),
    };
    Ok(matches!(
        membership,
        Some(MembershipState::Join | MembershipState::Invite)
    ))
}
