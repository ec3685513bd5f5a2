//! The homeserver's answers to the machine's requests, parsed leniently at the edge: an entry
//! that is not valid (a user id that does not parse, a device whose keys are not an object,
//! a count that is not a number) is left out and logged, so one bad entry never fails the
//! whole answer (and with it every user or device in the same batch).

use std::collections::{BTreeMap, BTreeSet};

use ruma::OwnedUserId;
use ruma::api::client::keys::{claim_keys, get_keys, upload_keys};
use serde_json::{Map, Value};
use tracing::warn;

use super::error::CryptoError;
use super::requests::json_of;

/// A `/keys/query` answer.
#[derive(Clone, Debug, Default)]
pub struct KeysQueryResponse {
    /// Signed device keys by user and device id, as received (the device id is checked by
    /// the machine, which says why it refuses one).
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
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

/// The top-level object of a JSON answer; anything else is an error (nothing to salvage).
fn object(body: &[u8], what: &str) -> Result<Map<String, Value>, CryptoError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CryptoError::InvalidResponse(format!(
            "{what}: not a JSON object"
        ))),
        Err(e) => Err(CryptoError::InvalidResponse(format!("{what}: {e}"))),
    }
}

/// The members of `value[name]` if it is an object (empty otherwise, logged if present).
fn members(value: &Map<String, Value>, name: &str) -> Map<String, Value> {
    match value.get(name) {
        Some(Value::Object(map)) => map.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => {
            warn!(
                field = name,
                "ignoring a malformed field of the server's answer"
            );
            Map::new()
        }
    }
}

/// Entries keyed by user id; entries whose key is not a user id are left out.
fn by_user(map: Map<String, Value>) -> impl Iterator<Item = (OwnedUserId, Value)> {
    map.into_iter()
        .filter_map(|(user, value)| match OwnedUserId::try_from(user) {
            Ok(user) => Some((user, value)),
            Err(e) => {
                warn!(error = %e, "ignoring an entry for an invalid user id");
                None
            }
        })
}

impl KeysQueryResponse {
    /// Parse the body of a `/keys/query` answer.
    pub fn from_json(body: &[u8]) -> Result<Self, CryptoError> {
        let top = object(body, "keys query")?;
        let mut out = Self::default();
        for (user, devices) in by_user(members(&top, "device_keys")) {
            let Value::Object(devices) = devices else {
                warn!(%user, "ignoring malformed device keys of a user");
                continue;
            };
            let devices = devices
                .into_iter()
                .filter(|(_, keys)| keys.is_object())
                .collect();
            out.device_keys.insert(user, devices);
        }
        out.failures = members(&top, "failures")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        Ok(out)
    }
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
            failures: response.failures.keys().cloned().collect(),
        }
    }
}

impl KeysClaimResponse {
    /// Parse the body of a `/keys/claim` answer.
    pub fn from_json(body: &[u8]) -> Result<Self, CryptoError> {
        let top = object(body, "keys claim")?;
        let mut out = Self::default();
        for (user, devices) in by_user(members(&top, "one_time_keys")) {
            let Value::Object(devices) = devices else {
                warn!(%user, "ignoring malformed one-time keys of a user");
                continue;
            };
            let devices = devices
                .into_iter()
                .filter_map(|(device, keys)| match keys {
                    Value::Object(keys) => Some((device, keys.into_iter().collect())),
                    _ => None,
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
        let top = object(body, "keys upload")?;
        let one_time_key_counts = members(&top, "one_time_key_counts")
            .into_iter()
            .filter_map(|(algorithm, count)| Some((algorithm, count.as_u64()?)))
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
