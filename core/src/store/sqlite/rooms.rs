//! The `rooms` table (invites of rooms we were never in are bounded) and room `members`.

use ruma::{OwnedRoomId, RoomId, UserId};
use rusqlite::{Connection, Row, Transaction};

use super::super::{ClientChanges, MemberRecord, RoomEncryption, RoomRecord, StoreError};
use super::sql::{col, each, json_list, parsed, parsed_opt, query_all, query_opt};

/// A room we are invited to and were never in (no encryption setting kept): what
/// [`quota::MAX_INVITES`](super::super::quota::MAX_INVITES) bounds.
pub(super) const INVITE: &str = "own_membership = 'invite' AND encryption IS NULL";

pub(super) fn room(conn: &Connection, room_id: &RoomId) -> Result<Option<RoomRecord>, StoreError> {
    query_opt(
        conn,
        "SELECT room_id, encryption, history_visibility, members_synced, own_membership
         FROM rooms WHERE room_id = ?1",
        [room_id.as_str()],
        room_from_row,
    )
}

pub(super) fn all(conn: &Connection) -> Result<Vec<RoomRecord>, StoreError> {
    query_all(
        conn,
        "SELECT room_id, encryption, history_visibility, members_synced, own_membership
         FROM rooms ORDER BY room_id",
        [],
        room_from_row,
    )
}

/// The encrypted rooms in which any of these users is joined or invited.
pub(super) fn encrypted_with(
    conn: &Connection,
    user_ids: &[&UserId],
) -> Result<Vec<OwnedRoomId>, StoreError> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    // members_by_user (user_id, room_id) answers the lookup; rooms by primary key.
    query_all(
        conn,
        "SELECT DISTINCT m.room_id FROM members m JOIN rooms r ON r.room_id = m.room_id
         WHERE m.user_id IN (SELECT value FROM json_each(?1))
           AND m.membership IN ('join', 'invite') AND r.encryption IS NOT NULL
         ORDER BY m.room_id",
        [json_list(user_ids)?],
        |r| parsed(r, 0),
    )
}

pub(super) fn members(
    conn: &Connection,
    room_id: &RoomId,
) -> Result<Vec<MemberRecord>, StoreError> {
    query_all(
        conn,
        "SELECT room_id, user_id, membership FROM members WHERE room_id = ?1
         ORDER BY user_id",
        [room_id.as_str()],
        member_from_row,
    )
}

pub(super) fn member(
    conn: &Connection,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Option<MemberRecord>, StoreError> {
    query_opt(
        conn,
        "SELECT room_id, user_id, membership FROM members WHERE room_id = ?1 AND user_id = ?2",
        [room_id.as_str(), user_id.as_str()],
        member_from_row,
    )
}

/// Rooms, then member lists replaced by a full answer, then members.
pub(super) fn write(tx: &Transaction<'_>, changes: &ClientChanges) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT OR REPLACE INTO rooms (room_id, encryption, history_visibility,
            members_synced, own_membership)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        &changes.rooms,
        |r| {
            Ok((
                r.room_id.as_str(),
                r.encryption.as_ref().map(|e| e.to_content().to_string()),
                r.history_visibility.as_ref().map(|v| v.as_str()),
                r.members_synced,
                r.own_membership.as_ref().map(|m| m.as_str()),
            ))
        },
    )?;
    each(
        tx,
        "DELETE FROM members WHERE room_id = ?1",
        &changes.replaced_member_lists,
        |room_id| Ok([room_id.as_str()]),
    )?;
    each(
        tx,
        "INSERT OR REPLACE INTO members (room_id, user_id, membership) VALUES (?1, ?2, ?3)",
        &changes.members,
        |m| {
            Ok([
                m.room_id.as_str(),
                m.user_id.as_str(),
                m.membership.as_str(),
            ])
        },
    )
}

/// The stored setting: JSON content, read as [`RoomEncryption::from_content`] does.
fn encryption_from_column(raw: Option<String>) -> Result<Option<RoomEncryption>, StoreError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let content: serde_json::Value = serde_json::from_str(&raw)
        .map_err(|e| StoreError::Decode(format!("room encryption: {e}")))?;
    RoomEncryption::from_content(&content)
        .map(Some)
        .ok_or_else(|| StoreError::Decode("room encryption without an algorithm".into()))
}

fn room_from_row(r: &Row<'_>) -> Result<RoomRecord, StoreError> {
    Ok(RoomRecord {
        room_id: parsed(r, 0)?,
        encryption: encryption_from_column(col(r, 1)?)?,
        history_visibility: parsed_opt(r, 2)?,
        members_synced: col(r, 3)?,
        own_membership: parsed_opt(r, 4)?,
    })
}

fn member_from_row(r: &Row<'_>) -> Result<MemberRecord, StoreError> {
    Ok(MemberRecord {
        room_id: parsed(r, 0)?,
        user_id: parsed(r, 1)?,
        membership: parsed(r, 2)?,
    })
}
