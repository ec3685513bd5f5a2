//! The `rooms` table (invites of rooms we were never in are bounded) and room `members`.

use rusqlite::{Connection, Row, Transaction};

use super::super::{Changes, MemberRecord, RoomRecord, StoreError};
use super::sql::{col, each, json_list, query_all, query_opt};

/// A room we are invited to and were never in (no encryption setting kept): what
/// [`quota::MAX_INVITES`](super::super::quota::MAX_INVITES) bounds.
pub(super) const INVITE: &str = "own_membership = 'invite' AND encryption IS NULL";

pub(super) fn room(conn: &Connection, room_id: &str) -> Result<Option<RoomRecord>, StoreError> {
    query_opt(
        conn,
        "SELECT room_id, encryption, history_visibility, members_synced, own_membership
         FROM rooms WHERE room_id = ?1",
        [room_id],
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
    user_ids: &[&str],
) -> Result<Vec<String>, StoreError> {
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
        |r| col(r, 0),
    )
}

pub(super) fn members(conn: &Connection, room_id: &str) -> Result<Vec<MemberRecord>, StoreError> {
    query_all(
        conn,
        "SELECT room_id, user_id, membership FROM members WHERE room_id = ?1
         ORDER BY user_id",
        [room_id],
        member_from_row,
    )
}

pub(super) fn member(
    conn: &Connection,
    room_id: &str,
    user_id: &str,
) -> Result<Option<MemberRecord>, StoreError> {
    query_opt(
        conn,
        "SELECT room_id, user_id, membership FROM members WHERE room_id = ?1 AND user_id = ?2",
        [room_id, user_id],
        member_from_row,
    )
}

/// Rooms, then member lists replaced by a full answer, then members.
pub(super) fn write(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    each(
        tx,
        "INSERT OR REPLACE INTO rooms (room_id, encryption, history_visibility,
            members_synced, own_membership)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        &changes.rooms,
        |r| {
            Ok((
                r.room_id.clone(),
                r.encryption.clone(),
                r.history_visibility.clone(),
                r.members_synced,
                r.own_membership.clone(),
            ))
        },
    )?;
    each(
        tx,
        "DELETE FROM members WHERE room_id = ?1",
        &changes.replaced_member_lists,
        |room_id| Ok([room_id.clone()]),
    )?;
    each(
        tx,
        "INSERT OR REPLACE INTO members (room_id, user_id, membership) VALUES (?1, ?2, ?3)",
        &changes.members,
        |m| Ok([m.room_id.clone(), m.user_id.clone(), m.membership.clone()]),
    )
}

fn room_from_row(r: &Row<'_>) -> Result<RoomRecord, StoreError> {
    Ok(RoomRecord {
        room_id: col(r, 0)?,
        encryption: col(r, 1)?,
        history_visibility: col(r, 2)?,
        members_synced: col(r, 3)?,
        own_membership: col(r, 4)?,
    })
}

fn member_from_row(r: &Row<'_>) -> Result<MemberRecord, StoreError> {
    Ok(MemberRecord {
        room_id: col(r, 0)?,
        user_id: col(r, 1)?,
        membership: col(r, 2)?,
    })
}
