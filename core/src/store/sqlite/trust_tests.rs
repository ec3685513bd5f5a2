//! The SQLite store's sender trust rows cannot be raised by editing the file.

use super::super::conformance::*;
use super::super::*;
use super::tests::{corrupted, open, sql, tamper};
use crate::test_ids::{rid, uid};

#[test]
fn sender_data_and_identities_cannot_be_edited_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = open(d);
    let mut c = full_changes("t");
    c.crypto
        .inbound_group_sessions
        .push(inbound("!room-t", "igs2"));
    c.crypto.user_identities.push(identity("@u-t:x", "M1"));
    s.save_changes(c).unwrap();
    let room = rid("!room-t");
    // Raising a session's trust in the file.
    tamper(
        d,
        sql(
            "UPDATE inbound_group_sessions SET sender_data = replace(sender_data, 'cross_signed', 'verified') WHERE session_id = 'igs1'",
        ),
        || s.inbound_group_session(&room, "igs1"),
        corrupted,
    );
    // Copying another session's (valid) data and tag onto this one.
    tamper(
        d,
        sql("UPDATE inbound_group_sessions SET (sender_data, sender_data_tag) =
             (SELECT sender_data, sender_data_tag FROM inbound_group_sessions WHERE session_id = 'igs1')
             WHERE session_id = 'igs2'"),
        || s.inbound_group_session(&room, "igs2"),
        corrupted,
    );
    // Marking an identity verified.
    tamper(
        d,
        sql(
            "UPDATE user_identities SET identity = json_set(identity, '$.verified_master_key', 'M1')",
        ),
        || s.user_identities(&[&uid("@u-t:x")]),
        corrupted,
    );
}
