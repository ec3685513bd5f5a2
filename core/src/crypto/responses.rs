//! The homeserver's answers to the machine's requests, parsed leniently at the edge: an entry
//! that is not valid (a user id that does not parse, a device whose keys are not an object,
//! a count that is not a number) is left out and logged, so one bad entry never fails the
//! whole answer (and with it every user or device in the same batch).

use std::collections::{BTreeMap, BTreeSet};

use ruma::OwnedUserId;
use ruma::api::client::keys::{claim_keys, get_keys, upload_keys};
use serde_json::Value;
use serde_json::value::RawValue;
use tracing::warn;

use super::error::CryptoError;
use super::requests::json_of;
use crate::lenient::{Object, object, top, value};

/// A `/keys/query` answer.
#[derive(Clone, Debug, Default)]
pub struct KeysQueryResponse {
    /// Signed device keys by user and device id, as received (the device id is checked by
    /// the machine, which says why it refuses one).
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    /// Master cross-signing keys by user, as received.
    pub master_keys: BTreeMap<OwnedUserId, Value>,
    /// Self-signing keys by user, as received.
    pub self_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// User-signing keys by user (the server gives only our own), as received.
    pub user_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// Servers that could not be reached.
    pub failures: BTreeSet<String>,
}

/// A `/keys/claim` answer.
#[derive(Clone, Debug, Default)]
pub struct KeysClaimResponse {
    /// Claimed keys by user and device id: `(key id, signed key)`.
    pub one_time_keys: BTreeMap<OwnedUserId, BTreeMap<String, Vec<(String, Value)>>>,
}

/// A `/keys/upload` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysUploadResponse {
    /// Unused one-time keys the server holds, by algorithm.
    pub one_time_key_counts: BTreeMap<String, u64>,
}

/// Largest signed device keys kept (a device lists a few keys and signatures; its display
/// name is in there too).
const MAX_DEVICE_KEYS_BYTES: usize = 16 * 1024;

/// Largest claimed one-time key kept.
const MAX_ONE_TIME_KEY_BYTES: usize = 4 * 1024;

/// The top-level object of an answer; anything else is an error (nothing to salvage).
fn answer<'a>(body: &'a [u8], what: &str) -> Result<Object<'a>, CryptoError> {
    top(body).ok_or_else(|| CryptoError::InvalidResponse(format!("{what}: not a JSON object")))
}

/// Entries keyed by user id; entries whose key is not a user id are left out.
fn by_user<'a>(map: Object<'a>) -> impl Iterator<Item = (OwnedUserId, Object<'a>)> {
    map.into_iter().filter_map(|(user, value)| {
        let user = OwnedUserId::try_from(user)
            .map_err(|e| warn!(error = %e, "ignoring an entry for an invalid user id"))
            .ok()?;
        Some((user, object(Some(value), "entries of a user")?))
    })
}

/// A JSON object of at most `max` bytes, or `None` (logged).
fn small_object(raw: &RawValue, max: usize, what: &str) -> Option<Value> {
    if raw.get().len() > max {
        warn!(
            field = what,
            bytes = raw.get().len(),
            "ignoring an oversized entry"
        );
        return None;
    }
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(value @ Value::Object(_)) => Some(value),
        _ => {
            warn!(field = what, "ignoring a malformed entry");
            None
        }
    }
}

impl KeysQueryResponse {
    /// Parse the body of a `/keys/query` answer.
    pub fn from_json(body: &[u8]) -> Result<Self, CryptoError> {
        let top = answer(body, "keys query")?;
        let mut out = Self::default();
        let users = object(top.get("device_keys").copied(), "device_keys").unwrap_or_default();
        for (user, devices) in by_user(users) {
            let devices = devices
                .into_iter()
                .filter_map(|(id, keys)| {
                    Some((
                        id,
                        small_object(keys, MAX_DEVICE_KEYS_BYTES, "device keys")?,
                    ))
                })
                .collect();
            out.device_keys.insert(user, devices);
        }
        for (name, map) in [
            ("master_keys", &mut out.master_keys),
            ("self_signing_keys", &mut out.self_signing_keys),
            ("user_signing_keys", &mut out.user_signing_keys),
        ] {
            *map = cross_signing_keys(top.get(name).copied(), name);
        }
        let failures = object(top.get("failures").copied(), "failures").unwrap_or_default();
        out.failures = failures.into_keys().collect();
        Ok(out)
    }
}

/// Cross-signing keys by user (entries that are not small objects are left out).
fn cross_signing_keys(raw: Option<&RawValue>, what: &str) -> BTreeMap<OwnedUserId, Value> {
    let users = object(raw, what).unwrap_or_default();
    users
        .into_iter()
        .filter_map(|(user, key)| {
            let user = OwnedUserId::try_from(user)
                .map_err(|e| warn!(error = %e, "ignoring a key of an invalid user id"))
                .ok()?;
            Some((user, small_object(key, MAX_DEVICE_KEYS_BYTES, what)?))
        })
        .collect()
}

/// Cross-signing keys of a typed answer as JSON.
fn keys_as_json<T>(
    keys: &BTreeMap<OwnedUserId, ruma::serde::Raw<T>>,
) -> BTreeMap<OwnedUserId, Value> {
    keys.iter()
        .filter_map(|(user, key)| Some((user.clone(), json_of(key)?)))
        .collect()
}

impl From<&get_keys::v3::Response> for KeysQueryResponse {
    fn from(response: &get_keys::v3::Response) -> Self {
        let device_keys = response
            .device_keys
            .iter()
            .map(|(user, devices)| {
                let devices = devices
                    .iter()
                    .filter_map(|(id, keys)| Some((id.to_string(), json_of(keys)?)))
                    .collect();
                (user.clone(), devices)
            })
            .collect();
        Self {
            device_keys,
            master_keys: keys_as_json(&response.master_keys),
            self_signing_keys: keys_as_json(&response.self_signing_keys),
            user_signing_keys: keys_as_json(&response.user_signing_keys),
            failures: response.failures.keys().cloned().collect(),
        }
    }
}

impl KeysClaimResponse {
    /// Parse the body of a `/keys/claim` answer.
    pub fn from_json(body: &[u8]) -> Result<Self, CryptoError> {
        let top = answer(body, "keys claim")?;
        let mut out = Self::default();
        let users = object(top.get("one_time_keys").copied(), "one_time_keys").unwrap_or_default();
        for (user, devices) in by_user(users) {
            let devices = devices
                .into_iter()
                .filter_map(|(device, keys)| {
                    let keys = object(Some(keys), "one-time keys of a device")?
                        .into_iter()
                        .filter_map(|(id, key)| {
                            Some((
                                id,
                                small_object(key, MAX_ONE_TIME_KEY_BYTES, "one-time key")?,
                            ))
                        })
                        .collect();
                    Some((device, keys))
                })
                .collect();
            out.one_time_keys.insert(user, devices);
        }
        Ok(out)
    }
}

impl From<&claim_keys::v3::Response> for KeysClaimResponse {
    fn from(response: &claim_keys::v3::Response) -> Self {
        let one_time_keys = response
            .one_time_keys
            .iter()
            .map(|(user, devices)| {
                let devices = devices
                    .iter()
                    .map(|(device, keys)| {
                        let keys = keys
                            .iter()
                            .filter_map(|(id, key)| Some((id.to_string(), json_of(key)?)))
                            .collect();
                        (device.to_string(), keys)
                    })
                    .collect();
                (user.clone(), devices)
            })
            .collect();
        Self { one_time_keys }
    }
}

impl KeysUploadResponse {
    /// Parse the body of a `/keys/upload` answer (counts that are not numbers are left out).
    pub fn from_json(body: &[u8]) -> Result<Self, CryptoError> {
        let top = answer(body, "keys upload")?;
        let counts = object(
            top.get("one_time_key_counts").copied(),
            "one_time_key_counts",
        );
        let one_time_key_counts = counts
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(algorithm, count)| Some((algorithm, value::<u64>(Some(count), "count")?)))
            .collect();
        Ok(Self {
            one_time_key_counts,
        })
    }
}

impl From<&upload_keys::v3::Response> for KeysUploadResponse {
    fn from(response: &upload_keys::v3::Response) -> Self {
        Self {
            one_time_key_counts: response
                .one_time_key_counts
                .iter()
                .map(|(algorithm, count)| (algorithm.to_string(), u64::from(*count)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_entries_are_left_out_and_the_rest_is_kept() {
        let body = br#"{"device_keys": {"not-a-user": {"D": {}}, "@a:x": {"D": {"k": 1},
            "E": "not keys"}, "@b:x": []}, "failures": {"far.away": {}}, "extra": 1}"#;
        let r = KeysQueryResponse::from_json(body).unwrap();
        assert_eq!(r.device_keys.len(), 1);
        let a = &r.device_keys[&OwnedUserId::try_from("@a:x").unwrap()];
        assert_eq!(a.keys().collect::<Vec<_>>(), ["D"]);
        assert_eq!(r.failures, BTreeSet::from(["far.away".to_owned()]));

        let body = br#"{"one_time_keys": {"@a:x": {"D": {"signed_curve25519:AA": {}}, "E": 3},
            "bad": {}}}"#;
        let r = KeysClaimResponse::from_json(body).unwrap();
        assert_eq!(r.one_time_keys.len(), 1);

        let r = KeysUploadResponse::from_json(
            br#"{"one_time_key_counts": {"signed_curve25519": 20, "x": -1}}"#,
        )
        .unwrap();
        assert_eq!(r.one_time_key_counts.len(), 1);
        assert_eq!(r.one_time_key_counts["signed_curve25519"], 20);

        // Nested deeper than the JSON parser goes: that device alone is left out.
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        let body =
            format!(r#"{{"device_keys": {{"@a:x": {{"D": {{"k": 1}}, "E": {{"x": {deep}}}}}}}}}"#);
        let r = KeysQueryResponse::from_json(body.as_bytes()).unwrap();
        let a = &r.device_keys[&OwnedUserId::try_from("@a:x").unwrap()];
        assert_eq!(a.keys().collect::<Vec<_>>(), ["D"]);

        for body in [&b"[]"[..], b"null", b"{", b""] {
            assert!(KeysQueryResponse::from_json(body).is_err());
        }
        assert!(
            KeysQueryResponse::from_json(b"{}")
                .unwrap()
                .device_keys
                .is_empty()
        );
    }
}
