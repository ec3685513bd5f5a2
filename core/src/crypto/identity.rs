//! Users' cross-signing identities from `/keys/query` answers: the master key, the
//! self-signing key it signs and (own user only) the user-signing key; pinning on first
//! use, changes, and whether a device is cross-signed by its owner.

use ruma::UserId;
use serde_json::{Value, json};
use vodozemac::Ed25519PublicKey;

use super::signing::{SigningError, verify_json};
use crate::store::{DeviceRecord, UserIdentityRecord};

/// Why a user's cross-signing keys were refused (the stored identity, if any, is kept).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A key is not a cross-signing key object of this user for this usage.
    #[error("malformed {usage} key: {reason}")]
    Malformed {
        /// `master`, `self_signing` or `user_signing`.
        usage: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A subkey is not signed by the master key: evidence of tampering.
    #[error("the {usage} key is not signed by the master key")]
    BadSignature {
        /// `self_signing` or `user_signing`.
        usage: &'static str,
    },
}

/// One parsed cross-signing key.
struct CrossSigningKey {
    /// Base64 public key (the key id is `ed25519:` followed by it).
    public: String,
    key: Ed25519PublicKey,
}

/// Parse `json` as `user_id`'s cross-signing key for `usage`: the user matches, the usage
/// is listed, and it holds exactly one Ed25519 key whose id names it.
fn parse_key(
    user_id: &UserId,
    usage: &'static str,
    json: &Value,
) -> Result<CrossSigningKey, IdentityError> {
    let bad = |reason: &str| IdentityError::Malformed {
        usage,
        reason: reason.to_owned(),
    };
    if json.get("user_id").and_then(Value::as_str) != Some(user_id.as_str()) {
        return Err(bad("user_id does not match"));
    }
    let usages = json.get("usage").and_then(Value::as_array);
    if !usages.is_some_and(|u| u.iter().any(|v| v.as_str() == Some(usage))) {
        return Err(bad("usage not listed"));
    }
    let keys = json
        .get("keys")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no keys"))?;
    let [(id, value)] = keys.iter().collect::<Vec<_>>()[..] else {
        return Err(bad("not exactly one key"));
    };
    let public = value.as_str().ok_or_else(|| bad("key is not a string"))?;
    if id.strip_prefix("ed25519:") != Some(public) {
        return Err(bad("key id does not name the key"));
    }
    let key = Ed25519PublicKey::from_base64(public).map_err(|e| bad(&e.to_string()))?;
    Ok(CrossSigningKey {
        public: public.to_owned(),
        key,
    })
}

/// Check that `json` carries a valid signature of `signer` (a key of `user_id`).
fn signed_by(json: &Value, user_id: &UserId, signer: &CrossSigningKey) -> bool {
    verify_json(
        json,
        user_id.as_str(),
        &format!("ed25519:{}", signer.public),
        &signer.key,
    )
    .is_ok()
}

/// The keys one answer gives for a user.
pub(crate) struct AnsweredKeys<'a> {
    pub master: &'a Value,
    pub self_signing: Option<&'a Value>,
    pub user_signing: Option<&'a Value>,
}

/// Verify a user's cross-signing keys and build their identity record, keeping what we
/// pinned and verified before (`stored`). The subkeys must be signed by the master key;
/// a user-signing key is kept only for the own user. `verified_by_us` says whether the
/// master key carries a valid signature of our own trusted user-signing key.
pub(crate) fn identity_from_answer(
    user_id: &UserId,
    keys: &AnsweredKeys<'_>,
    stored: Option<&UserIdentityRecord>,
    own_user: bool,
    verified_by_us: impl Fn(&Value) -> bool,
) -> Result<UserIdentityRecord, IdentityError> {
    let master = parse_key(user_id, "master", keys.master)?;
    let self_signing_json = keys.self_signing.ok_or(IdentityError::Malformed {
        usage: "self_signing",
        reason: "missing".into(),
    })?;
    let self_signing = parse_key(user_id, "self_signing", self_signing_json)?;
    if !signed_by(self_signing_json, user_id, &master) {
        return Err(IdentityError::BadSignature {
            usage: "self_signing",
        });
    }
    let user_signing = match keys.user_signing.filter(|_| own_user) {
        Some(json) => {
            let key = parse_key(user_id, "user_signing", json)?;
            if !signed_by(json, user_id, &master) {
                return Err(IdentityError::BadSignature {
                    usage: "user_signing",
                });
            }
            Some(key.public)
        }
        None => None,
    };
    let mut verified_master_key = stored.and_then(|s| s.verified_master_key.clone());
    if verified_by_us(keys.master) {
        verified_master_key = Some(master.public.clone());
    }
    let keys_json = json!({
        "master": keys.master,
        "self_signing": self_signing_json,
        "user_signing": keys.user_signing.filter(|_| own_user),
    });
    Ok(UserIdentityRecord {
        user_id: user_id.to_owned(),
        pinned_master_key: stored
            .map_or_else(|| master.public.clone(), |s| s.pinned_master_key.clone()),
        master_key: master.public,
        self_signing_key: self_signing.public,
        user_signing_key: user_signing,
        keys_json: keys_json.to_string(),
        verified_master_key,
    })
}

/// Whether a device carries its owner's cross-signing signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSignature {
    /// No signature of the owner's current self-signing key (or no identity).
    Unsigned,
    /// Signed by the owner's current self-signing key.
    CrossSigned,
    /// A signature under the self-signing key's id that does not verify: tampering.
    Tampered,
}

/// Results of [`device_signature`], kept for the machine's lifetime: checking a device's
/// cross-signing signature is an Ed25519 verification, and sharing a room key decides about
/// every device of the room on every send. An entry is used only for exactly the same
/// device keys and self-signing key; at most [`SignatureCache::MAX`] are kept.
#[derive(Default)]
pub(crate) struct SignatureCache {
    checked: std::sync::Mutex<std::collections::HashMap<SignatureKey, DeviceSignature>>,
}

/// What a cached check covers: the device, its signed keys as stored, the signer's key.
type SignatureKey = (ruma::OwnedUserId, ruma::OwnedDeviceId, String, String);

impl SignatureCache {
    /// Entries kept before the cache starts over.
    const MAX: usize = 10_000;

    /// [`device_signature`], from the cache when the same check was made before.
    pub(crate) fn check(
        &self,
        device: &DeviceRecord,
        identity: Option<&UserIdentityRecord>,
    ) -> DeviceSignature {
        let Some(ssk) = identity
            .filter(|i| i.user_id == device.user_id)
            .map(|i| i.self_signing_key.clone())
        else {
            return DeviceSignature::Unsigned;
        };
        let key = (
            device.user_id.clone(),
            device.device_id.clone(),
            device.keys_json.clone(),
            ssk,
        );
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = checked.get(&key) {
            return *known;
        }
        let result = device_signature(device, identity);
        if checked.len() >= Self::MAX {
            checked.clear();
        }
        checked.insert(key, result);
        result
    }
}

/// Check `device`'s keys against its owner's current self-signing key.
pub(crate) fn device_signature(
    device: &DeviceRecord,
    identity: Option<&UserIdentityRecord>,
) -> DeviceSignature {
    let Some(identity) = identity.filter(|i| i.user_id == device.user_id) else {
        return DeviceSignature::Unsigned;
    };
    let Ok(ssk) = Ed25519PublicKey::from_base64(&identity.self_signing_key) else {
        return DeviceSignature::Unsigned;
    };
    let Ok(keys) = serde_json::from_str::<Value>(&device.keys_json) else {
        return DeviceSignature::Unsigned;
    };
    let key_id = format!("ed25519:{}", identity.self_signing_key);
    match verify_json(&keys, device.user_id.as_str(), &key_id, &ssk) {
        Ok(()) => DeviceSignature::CrossSigned,
        Err(SigningError::MissingSignature { .. }) => DeviceSignature::Unsigned,
        Err(_) => DeviceSignature::Tampered,
    }
}

/// Whether `master_json` (another user's master key) is signed by our user-signing key.
pub(crate) fn signed_by_user_signing_key(
    master_json: &Value,
    own_user: &UserId,
    user_signing_key: &str,
) -> bool {
    let Ok(key) = Ed25519PublicKey::from_base64(user_signing_key) else {
        return false;
    };
    let key_id = format!("ed25519:{user_signing_key}");
    verify_json(master_json, own_user.as_str(), &key_id, &key).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::cross_signing::OwnCrossSigning;
    use crate::test_ids::uid;

    fn published(user: &UserId) -> Value {
        OwnCrossSigning::generate().public_keys(user).unwrap()
    }

    fn answer<'a>(keys: &'a Value) -> AnsweredKeys<'a> {
        AnsweredKeys {
            master: &keys["master_key"],
            self_signing: Some(&keys["self_signing_key"]),
            user_signing: Some(&keys["user_signing_key"]),
        }
    }

    type Edit = Box<dyn Fn(&mut Value)>;

    /// Every way a server can mangle a master key is a typed refusal, never a panic.
    #[test]
    fn malformed_cross_signing_keys_are_refused() {
        let user = uid("@a:x");
        let good = published(&user);
        let other_key = published(&user)["master_key"]["keys"].clone();
        let edits: Vec<(&str, Edit)> = vec![
            (
                "another user",
                Box::new(|k| k["master_key"]["user_id"] = "@b:x".into()),
            ),
            (
                "no usage",
                Box::new(|k| k["master_key"]["usage"] = json!([])),
            ),
            (
                "usage not a list",
                Box::new(|k| k["master_key"]["usage"] = "master".into()),
            ),
            ("no keys", Box::new(|k| k["master_key"]["keys"] = json!({}))),
            (
                "two keys",
                Box::new(move |k| {
                    let (id, v) = other_key.as_object().unwrap().iter().next().unwrap();
                    k["master_key"]["keys"][id] = v.clone();
                }),
            ),
            (
                "key id naming another key",
                Box::new(|k| {
                    let keys = k["master_key"]["keys"].as_object_mut().unwrap();
                    let (_, v) = keys
                        .iter()
                        .next()
                        .map(|(a, b)| (a.clone(), b.clone()))
                        .unwrap();
                    keys.clear();
                    keys.insert("ed25519:other".into(), v);
                }),
            ),
            (
                "key not base64",
                Box::new(|k| {
                    k["master_key"]["keys"] = json!({"ed25519:!!": "!!"});
                }),
            ),
            (
                "key not a string",
                Box::new(|k| {
                    let keys = k["master_key"]["keys"].as_object_mut().unwrap();
                    for v in keys.values_mut() {
                        *v = json!(1);
                    }
                }),
            ),
            (
                "not an object",
                Box::new(|k| k["master_key"] = json!([1, 2])),
            ),
        ];
        for (what, edit) in edits {
            let mut keys = good.clone();
            edit(&mut keys);
            let got = identity_from_answer(&user, &answer(&keys), None, false, |_| false);
            assert!(
                matches!(
                    got,
                    Err(IdentityError::Malformed {
                        usage: "master",
                        ..
                    })
                ),
                "{what}: {got:?}"
            );
        }
        let mut no_ssk = answer(&good);
        no_ssk.self_signing = None;
        assert!(matches!(
            identity_from_answer(&user, &no_ssk, None, false, |_| false),
            Err(IdentityError::Malformed {
                usage: "self_signing",
                ..
            })
        ));
        // The own user's user-signing key must be signed by the master key too.
        let mut keys = good.clone();
        keys["user_signing_key"]["signatures"] = json!({});
        assert_eq!(
            identity_from_answer(&user, &answer(&keys), None, true, |_| false),
            Err(IdentityError::BadSignature {
                usage: "user_signing"
            })
        );
        assert!(identity_from_answer(&user, &answer(&good), None, true, |_| false).is_ok());
    }

    #[test]
    fn a_new_master_key_keeps_the_pin_and_the_verification_of_the_old_one() {
        let user = uid("@a:x");
        let first = published(&user);
        let old = identity_from_answer(&user, &answer(&first), None, false, |_| false).unwrap();
        let mut verified = old.clone();
        verified.verified_master_key = Some(old.master_key.clone());
        let second = published(&user);
        let new = identity_from_answer(&user, &answer(&second), Some(&verified), false, |_| false)
            .unwrap();
        assert_eq!(new.pinned_master_key, old.master_key);
        assert!(new.has_verification_violation());
        // Signed by our own user-signing key: verified again, no violation.
        let signed =
            identity_from_answer(&user, &answer(&second), Some(&verified), false, |_| true)
                .unwrap();
        assert!(signed.is_verified() && !signed.has_verification_violation());
    }
}
