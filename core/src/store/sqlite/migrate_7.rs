//! Schema migration 7 (data only): rows an earlier version stored with a user, room or event
//! id that does not parse are removed. Since ids are read back through ruma's parsers, such
//! a row would make every read that meets it fail (`StoreError::Decode`); none of them was
//! usable before either (nothing can be sent to, shared with or decrypted for an invalid id).
//! Also run before migration 5's data step, which reads every device.

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use rusqlite::{OptionalExtension, Transaction, params};
use tracing::warn;

use super::super::StoreError;
use super::sql::{col, db, query_all};

/// What a column holds.
#[derive(Clone, Copy)]
enum Id {
    User,
    Room,
    Event,
}

impl Id {
    fn is_valid(self, value: &str) -> bool {
        match self {
            Id::User => OwnedUserId::try_from(value).is_ok(),
            Id::Room => OwnedRoomId::try_from(value).is_ok(),
            Id::Event => OwnedEventId::try_from(value).is_ok(),
        }
    }
}

/// `(table, column, kind)` of every id column a row must not hold an invalid value in.
/// `""` in `inbound_group_sessions.sender_user` means "unknown" and stays.
const COLUMNS: &[(&str, &str, Id)] = &[
    ("devices", "user_id", Id::User),
    ("tracked_users", "user_id", Id::User),
    ("rooms", "room_id", Id::Room),
    ("members", "room_id", Id::Room),
    ("members", "user_id", Id::User),
    ("inbound_group_sessions", "room_id", Id::Room),
    ("inbound_group_sessions", "sender_user", Id::User),
    ("outbound_group_sessions", "room_id", Id::Room),
    ("megolm_indices", "event_id", Id::Event),
    ("undecryptable_events", "room_id", Id::Room),
    ("undecryptable_events", "event_id", Id::Event),
    ("withheld_notices", "room_id", Id::Room),
    ("withheld_notices", "sender", Id::User),
    ("key_requests", "room_id", Id::Room),
    ("no_olm_room_keys", "room_id", Id::Room),
    ("send_queue", "room_id", Id::Room),
];

/// Remove the rows holding an invalid id (in the tables this schema version has), and forget
/// an invalid room named by a pending to-device message (the message itself is still sent).
pub(super) fn drop_rows_with_invalid_ids(tx: &Transaction<'_>) -> Result<(), StoreError> {
    for &(table, column, kind) in COLUMNS {
        if !has_table(tx, table)? {
            continue;
        }
        let values: Vec<String> = query_all(
            tx,
            &format!("SELECT DISTINCT {column} FROM {table} WHERE {column} != ''"),
            [],
            |r| col(r, 0),
        )?;
        for value in values.iter().filter(|v| !kind.is_valid(v)) {
            let removed = tx
                .execute(&format!("DELETE FROM {table} WHERE {column} = ?1"), [value])
                .map_err(db)?;
            warn!(table, column, removed, "removed rows holding an invalid id");
        }
    }
    if has_table(tx, "pending_to_device")? {
        let rooms: Vec<String> = query_all(
            tx,
            "SELECT DISTINCT room_id FROM pending_to_device WHERE room_id IS NOT NULL",
            [],
            |r| col(r, 0),
        )?;
        for room in rooms.iter().filter(|r| !Id::Room.is_valid(r)) {
            tx.execute(
                "UPDATE pending_to_device SET room_id = NULL, session_id = NULL
                 WHERE room_id = ?1",
                params![room],
            )
            .map_err(db)?;
        }
    }
    Ok(())
}

fn has_table(tx: &Transaction<'_>, name: &str) -> Result<bool, StoreError> {
    tx.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .map_err(db)
}
