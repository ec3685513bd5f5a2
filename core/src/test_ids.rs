//! Identifiers for tests, fuzzing and benchmarks: string literals as ruma ids. A literal
//! that is not a valid id is a mistake in the test itself, so it panics.
#![allow(clippy::expect_used)]

use ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId};

/// A user id.
pub fn uid(id: &str) -> OwnedUserId {
    OwnedUserId::try_from(id).expect("a valid user id in a test")
}

/// A room id.
pub fn rid(id: &str) -> OwnedRoomId {
    OwnedRoomId::try_from(id).expect("a valid room id in a test")
}

/// An event id.
pub fn eid(id: &str) -> OwnedEventId {
    OwnedEventId::try_from(id).expect("a valid event id in a test")
}

/// A device id (any string is one, `""` included: the checks that refuse those are tested).
pub fn did(id: &str) -> OwnedDeviceId {
    OwnedDeviceId::from(id)
}
