//! The own cross-signing keys: the master key, the self-signing key (signs own devices) and
//! the user-signing key (signs other users' master keys). Generated once, kept encrypted in
//! the store, never logged.

use std::fmt;

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vodozemac::Ed25519SecretKey;
use zeroize::Zeroizing;

use super::error::CryptoError;
use super::signing::sign_json;
use crate::store::{CryptoStore, SecretBlob};

/// Secret storage names of the three private keys.
pub const MASTER_SECRET: &str = "m.cross_signing.master";
/// See [`MASTER_SECRET`].
pub const SELF_SIGNING_SECRET: &str = "m.cross_signing.self_signing";
/// See [`MASTER_SECRET`].
pub const USER_SIGNING_SECRET: &str = "m.cross_signing.user_signing";

/// The three private keys as secret storage keeps them, by secret name.
pub type Secrets = [(&'static str, Zeroizing<String>); 3];

/// The three private keys.
pub(crate) struct OwnCrossSigning {
    master: Ed25519SecretKey,
    self_signing: Ed25519SecretKey,
    user_signing: Ed25519SecretKey,
}

impl fmt::Debug for OwnCrossSigning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnCrossSigning")
            .field("master", &self.master_public())
            .finish_non_exhaustive()
    }
}

/// The stored form: base64 private keys (wiped after use).
#[derive(Serialize, Deserialize)]
struct Stored {
    master: String,
    self_signing: String,
    user_signing: String,
}

impl Drop for Stored {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.master.zeroize();
        self.self_signing.zeroize();
        self.user_signing.zeroize();
    }
}

impl OwnCrossSigning {
    /// Three fresh keys.
    pub(crate) fn generate() -> Self {
        Self {
            master: Ed25519SecretKey::new(),
            self_signing: Ed25519SecretKey::new(),
            user_signing: Ed25519SecretKey::new(),
        }
    }

    /// The stored form.
    pub(crate) fn to_secret(&self) -> Result<SecretBlob, CryptoError> {
        let stored = Stored {
            master: self.master.to_base64(),
            self_signing: self.self_signing.to_base64(),
            user_signing: self.user_signing.to_base64(),
        };
        let bytes = Zeroizing::new(
            serde_json::to_vec(&stored)
                .map_err(|e| CryptoError::CorruptState(format!("cross-signing keys: {e}")))?,
        );
        Ok(SecretBlob::new(bytes.to_vec()))
    }

    /// Read the stored form back.
    pub(crate) fn from_secret(secret: &SecretBlob) -> Result<Self, CryptoError> {
        let bad =
            |e: &dyn fmt::Display| CryptoError::CorruptState(format!("cross-signing keys: {e}"));
        let stored: Stored = serde_json::from_slice(secret.as_bytes()).map_err(|e| bad(&e))?;
        let key = |b64: &str| Ed25519SecretKey::from_base64(b64).map_err(|e| bad(&e));
        Ok(Self {
            master: key(&stored.master)?,
            self_signing: key(&stored.self_signing)?,
            user_signing: key(&stored.user_signing)?,
        })
    }

    /// The private keys as secret storage keeps them (unpadded base64 of each seed), by
    /// secret name.
    pub(crate) fn secrets(&self) -> Secrets {
        [
            (MASTER_SECRET, Zeroizing::new(self.master.to_base64())),
            (
                SELF_SIGNING_SECRET,
                Zeroizing::new(self.self_signing.to_base64()),
            ),
            (
                USER_SIGNING_SECRET,
                Zeroizing::new(self.user_signing.to_base64()),
            ),
        ]
    }

    /// The keys from their secret storage form.
    pub(crate) fn from_secrets(
        master: &str,
        self_signing: &str,
        user_signing: &str,
    ) -> Result<Self, CryptoError> {
        let key = |b64: &str| {
            Ed25519SecretKey::from_base64(b64)
                .map_err(|e| CryptoError::InvalidInput(format!("cross-signing secret: {e}")))
        };
        Ok(Self {
            master: key(master)?,
            self_signing: key(self_signing)?,
            user_signing: key(user_signing)?,
        })
    }

    pub(crate) fn master_public(&self) -> String {
        self.master.public_key().to_base64()
    }

    pub(crate) fn self_signing_public(&self) -> String {
        self.self_signing.public_key().to_base64()
    }

    pub(crate) fn user_signing_public(&self) -> String {
        self.user_signing.public_key().to_base64()
    }

    /// The public key objects for `/keys/device_signing/upload`: `master_key` (signed by
    /// `sign_master`, the own device, when given), `self_signing_key` and `user_signing_key`
    /// (signed by the master key).
    pub(crate) fn public_keys(&self, user_id: &UserId) -> Result<Value, CryptoError> {
        let master = key_object(user_id, "master", &self.master_public());
        let mut self_signing = key_object(user_id, "self_signing", &self.self_signing_public());
        let mut user_signing = key_object(user_id, "user_signing", &self.user_signing_public());
        for subkey in [&mut self_signing, &mut user_signing] {
            self.sign_with_master(user_id, subkey)?;
        }
        Ok(json!({
            "master_key": master,
            "self_signing_key": self_signing,
            "user_signing_key": user_signing,
        }))
    }

    /// Sign `value` with the master key.
    pub(crate) fn sign_with_master(
        &self,
        user_id: &UserId,
        value: &mut Value,
    ) -> Result<(), CryptoError> {
        let key_id = format!("ed25519:{}", self.master_public());
        sign_json(value, user_id.as_str(), &key_id, &self.master).map_err(CryptoError::from)
    }

    /// Sign an own device's keys with the self-signing key.
    pub(crate) fn sign_device(
        &self,
        user_id: &UserId,
        device_keys: &mut Value,
    ) -> Result<(), CryptoError> {
        let key_id = format!("ed25519:{}", self.self_signing_public());
        sign_json(device_keys, user_id.as_str(), &key_id, &self.self_signing)
            .map_err(CryptoError::from)
    }

    /// Sign another user's master key object with the user-signing key.
    pub(crate) fn sign_user(
        &self,
        own_user: &UserId,
        master_key: &mut Value,
    ) -> Result<(), CryptoError> {
        let key_id = format!("ed25519:{}", self.user_signing_public());
        sign_json(master_key, own_user.as_str(), &key_id, &self.user_signing)
            .map_err(CryptoError::from)
    }
}

/// The own keys kept in `store`, if any (a reset leaves an empty value: none).
pub(crate) fn stored(store: &dyn CryptoStore) -> Result<Option<OwnCrossSigning>, CryptoError> {
    store
        .cross_signing_keys()?
        .filter(|secret| !secret.as_bytes().is_empty())
        .map(|secret| OwnCrossSigning::from_secret(&secret))
        .transpose()
}

/// A cross-signing public key object.
pub(crate) fn key_object(user_id: &UserId, usage: &str, public: &str) -> Value {
    json!({
        "user_id": user_id,
        "usage": [usage],
        "keys": { format!("ed25519:{public}"): public },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::{AnsweredKeys, identity_from_answer};
    use crate::test_ids::uid;

    #[test]
    fn stored_keys_round_trip_and_never_print() {
        let keys = OwnCrossSigning::generate();
        let back = OwnCrossSigning::from_secret(&keys.to_secret().unwrap()).unwrap();
        assert_eq!(back.master_public(), keys.master_public());
        assert_eq!(back.user_signing_public(), keys.user_signing_public());
        let printed = format!("{keys:?}");
        assert!(!printed.contains(&keys.master.to_base64()));
        assert!(OwnCrossSigning::from_secret(&SecretBlob::new(b"{}".to_vec())).is_err());
    }

    #[test]
    fn published_keys_form_a_valid_identity() {
        let user = uid("@a:x");
        let keys = OwnCrossSigning::generate();
        let public = keys.public_keys(&user).unwrap();
        let answered = AnsweredKeys {
            master: &public["master_key"],
            self_signing: Some(&public["self_signing_key"]),
            user_signing: Some(&public["user_signing_key"]),
        };
        let identity = identity_from_answer(&user, &answered, None, true, |_| false).unwrap();
        assert_eq!(identity.master_key, keys.master_public());
        assert_eq!(identity.pinned_master_key, keys.master_public());
        assert_eq!(
            identity.user_signing_key.as_deref(),
            Some(keys.user_signing_public().as_str())
        );
        // Another user's identity never keeps a user-signing key.
        let theirs = identity_from_answer(&user, &answered, None, false, |_| false).unwrap();
        assert_eq!(theirs.user_signing_key, None);
    }
}
