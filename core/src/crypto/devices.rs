//! Verification of other devices' published keys.

use ruma::{DeviceId, EventEncryptionAlgorithm, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::Value;
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey};

use super::error::DeviceKeyError;
use super::signing::verify_json;
use crate::store::{DeviceRecord, LocalTrust};

/// A device as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Owner.
    pub user_id: OwnedUserId,
    /// Device id.
    pub device_id: OwnedDeviceId,
    /// Curve25519 identity key.
    pub curve25519: String,
    /// Ed25519 fingerprint key.
    pub ed25519: String,
    /// Display name, if the owner set one.
    pub display_name: Option<String>,
    /// The user's decision about this device.
    pub local_trust: LocalTrust,
    /// The device was removed from its owner's list.
    pub deleted: bool,
    /// Its owner's self-signing key signed it.
    pub cross_signed: bool,
    /// Verified: by hand, or cross-signed by an identity the user verified.
    pub verified: bool,
}

impl From<&DeviceRecord> for Device {
    fn from(r: &DeviceRecord) -> Self {
        Self {
            user_id: r.user_id.clone(),
            device_id: r.device_id.clone(),
            curve25519: r.curve25519.clone(),
            ed25519: r.ed25519.clone(),
            display_name: r.display_name.clone(),
            local_trust: r.local_trust,
            deleted: r.deleted,
            cross_signed: false,
            verified: r.local_trust == LocalTrust::Verified,
        }
    }
}

fn str_member<'a>(value: &'a Value, name: &str) -> Result<&'a str, DeviceKeyError> {
    value
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| DeviceKeyError::Malformed(format!("missing string member {name}")))
}

/// Longest device id we accept, in bytes (the spec's limit for identifiers).
const MAX_DEVICE_ID_BYTES: usize = 255;

/// Whether we can address a device by this id: not empty, not the to-device wildcard `*`,
/// at most 255 bytes, no control characters.
pub(crate) fn check_device_id(device_id: &str) -> Result<(), DeviceKeyError> {
    let problem = if device_id.is_empty() {
        "empty"
    } else if device_id == "*" {
        "the wildcard *"
    } else if device_id.len() > MAX_DEVICE_ID_BYTES {
        "longer than 255 bytes"
    } else if device_id.chars().any(char::is_control) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(DeviceKeyError::InvalidDeviceId(problem.to_owned()))
}

/// Check device keys listed under `user_id`/`device_id` in a `/keys/query` response: the
/// device id is usable, the ids inside match, both keys parse, and the self-signature
/// verifies.
pub(crate) fn verify_device_keys(
    user_id: &UserId,
    device_id: &DeviceId,
    keys: &Value,
) -> Result<DeviceRecord, DeviceKeyError> {
    check_device_id(device_id.as_str())?;
    let inner_user = str_member(keys, "user_id")?;
    if inner_user != user_id {
        return Err(DeviceKeyError::UserIdMismatch {
            expected: user_id.to_string(),
            got: inner_user.to_owned(),
        });
    }
    let inner_device = str_member(keys, "device_id")?;
    if inner_device != device_id {
        return Err(DeviceKeyError::DeviceIdMismatch {
            expected: device_id.to_string(),
            got: inner_device.to_owned(),
        });
    }
    let key_map = keys
        .get("keys")
        .ok_or_else(|| DeviceKeyError::Malformed("missing keys".into()))?;
    let ed25519 = str_member(key_map, &format!("ed25519:{device_id}"))?;
    let curve25519 = str_member(key_map, &format!("curve25519:{device_id}"))?;
    let ed_key = Ed25519PublicKey::from_base64(ed25519)
        .map_err(|e| DeviceKeyError::Malformed(format!("ed25519 key: {e}")))?;
    Curve25519PublicKey::from_base64(curve25519)
        .map_err(|e| DeviceKeyError::Malformed(format!("curve25519 key: {e}")))?;
    verify_json(
        keys,
        user_id.as_str(),
        &format!("ed25519:{device_id}"),
        &ed_key,
    )
    .map_err(|e| DeviceKeyError::Signature(e.to_string()))?;
    let algorithms = keys
        .get("algorithms")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(EventEncryptionAlgorithm::from)
                .collect()
        })
        .unwrap_or_default();
    let display_name = keys
        .get("unsigned")
        .and_then(|u| u.get("device_display_name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(DeviceRecord {
        user_id: user_id.to_owned(),
        device_id: device_id.to_owned(),
        curve25519: curve25519.to_owned(),
        ed25519: ed25519.to_owned(),
        algorithms,
        display_name,
        keys_json: keys.to_string(),
        local_trust: LocalTrust::Unset,
        deleted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::account::OwnAccount;
    use crate::test_ids::{did, uid};

    #[test]
    fn own_device_keys_verify() {
        let account = OwnAccount::new(&uid("@a:x"), &did("DEV"), 0);
        let keys = account.device_keys().unwrap();
        let record = verify_device_keys(&uid("@a:x"), &did("DEV"), &keys).unwrap();
        assert_eq!(record.ed25519, account.ed25519());
        assert_eq!(record.curve25519, account.curve25519());
    }

    #[test]
    fn forged_device_keys_are_rejected() {
        let account = OwnAccount::new(&uid("@a:x"), &did("DEV"), 0);
        let keys = account.device_keys().unwrap();
        assert!(matches!(
            verify_device_keys(&uid("@b:x"), &did("DEV"), &keys),
            Err(DeviceKeyError::UserIdMismatch { .. })
        ));
        assert!(matches!(
            verify_device_keys(&uid("@a:x"), &did("OTHER"), &keys),
            Err(DeviceKeyError::DeviceIdMismatch { .. })
        ));
        let mut swapped = keys.clone();
        let other = OwnAccount::new(&uid("@a:x"), &did("DEV"), 0);
        swapped["keys"]["curve25519:DEV"] = other.curve25519().into();
        assert!(matches!(
            verify_device_keys(&uid("@a:x"), &did("DEV"), &swapped),
            Err(DeviceKeyError::Signature(_))
        ));
        let mut broken = keys;
        broken["keys"]["ed25519:DEV"] = "###".into();
        assert!(matches!(
            verify_device_keys(&uid("@a:x"), &did("DEV"), &broken),
            Err(DeviceKeyError::Malformed(_))
        ));
    }

    #[test]
    fn unaddressable_device_ids_are_refused_even_when_signed() {
        for id in ["", "*", "A\nB", &"D".repeat(256)] {
            let account = OwnAccount::new(&uid("@a:x"), &did(id), 0);
            let keys = account.device_keys().unwrap();
            assert!(
                matches!(
                    verify_device_keys(&uid("@a:x"), &did(id), &keys),
                    Err(DeviceKeyError::InvalidDeviceId(_))
                ),
                "{id:?}"
            );
        }
        assert!(check_device_id("ABCDEFGHIJ").is_ok());
    }
}
