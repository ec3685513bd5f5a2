//! Identifiers from the app, parsed where they cross into Rust: the core takes ruma's
//! types only, so an invalid id is refused here, as `NewtError::InvalidInput`.

use newt_core::ruma::{OwnedDeviceId, OwnedRoomId, OwnedRoomOrAliasId, OwnedUserId};

use crate::error::NewtError;

fn invalid(what: &str, e: impl std::fmt::Display) -> NewtError {
    NewtError::InvalidInput {
        message: format!("{what}: {e}"),
    }
}

/// A user id (`@name:server`).
pub(crate) fn user_id(id: &str) -> Result<OwnedUserId, NewtError> {
    OwnedUserId::try_from(id).map_err(|e| invalid("user id", e))
}

/// User ids; the first invalid one is the error.
pub(crate) fn user_ids(ids: &[String]) -> Result<Vec<OwnedUserId>, NewtError> {
    ids.iter().map(|id| user_id(id)).collect()
}

/// A room id (`!opaque:server`).
pub(crate) fn room_id(id: &str) -> Result<OwnedRoomId, NewtError> {
    OwnedRoomId::try_from(id).map_err(|e| invalid("room id", e))
}

/// A room id or a room alias (`#alias:server`).
pub(crate) fn room_or_alias(id: &str) -> Result<OwnedRoomOrAliasId, NewtError> {
    OwnedRoomOrAliasId::try_from(id).map_err(|e| invalid("room id or alias", e))
}

pub(crate) fn event_id(id: &str) -> Result<newt_core::ruma::OwnedEventId, NewtError> {
    newt_core::ruma::OwnedEventId::try_from(id).map_err(|e| invalid("event id", e))
}

/// A device id: any non-empty string (the spec gives device ids no grammar).
pub(crate) fn device_id(id: &str) -> Result<OwnedDeviceId, NewtError> {
    if id.is_empty() {
        return Err(invalid("device id", "empty"));
    }
    Ok(OwnedDeviceId::from(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_ids_are_invalid_input() {
        for result in [
            user_id("bob").map(|_| ()),
            room_id("#alias:x").map(|_| ()),
            room_or_alias("room").map(|_| ()),
            device_id("").map(|_| ()),
            user_ids(&["@a:x".into(), "nope".into()]).map(|_| ()),
        ] {
            assert!(
                matches!(result, Err(NewtError::InvalidInput { .. })),
                "{result:?}"
            );
        }
        assert_eq!(user_id("@a:x").unwrap().as_str(), "@a:x");
        assert_eq!(room_or_alias("#a:x").unwrap().as_str(), "#a:x");
        assert_eq!(device_id("DEV").unwrap().as_str(), "DEV");
    }
}
