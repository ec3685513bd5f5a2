//! The own Olm account: identity keys, device keys, one-time and fallback keys.

use std::collections::BTreeMap;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Value, json};
use vodozemac::olm::{Account, AccountPickle};
use zeroize::Zeroizing;

use super::error::CryptoError;
use super::signing::sign_json_with;
use crate::store::{AccountRecord, SecretBlob};

/// Olm algorithm name.
pub const OLM_ALGORITHM: &str = "m.olm.v1.curve25519-aes-sha2";
/// Megolm algorithm name.
pub const MEGOLM_ALGORITHM: &str = "m.megolm.v1.aes-sha2";
/// One-time key algorithm.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// The account plus the bookkeeping that is persisted with it.
pub(crate) struct OwnAccount {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub inner: Account,
    pub device_keys_uploaded: bool,
    pub server_one_time_key_count: u64,
    pub fallback_key_created_ms: u64,
}

impl OwnAccount {
    /// A fresh account with a fallback key, nothing published yet.
    pub(crate) fn new(user_id: &UserId, device_id: &DeviceId, now: u64) -> Self {
        let mut inner = Account::new();
        inner.generate_fallback_key();
        Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            inner,
            device_keys_uploaded: false,
            server_one_time_key_count: 0,
            fallback_key_created_ms: now,
        }
    }

    pub(crate) fn from_record(record: &AccountRecord) -> Result<Self, CryptoError> {
        let pickle: AccountPickle = serde_json::from_slice(record.pickle.as_bytes())
            .map_err(|e| CryptoError::CorruptState(format!("account pickle: {e}")))?;
        Ok(Self {
            user_id: record.user_id.clone(),
            device_id: record.device_id.clone(),
            inner: Account::from_pickle(pickle),
            device_keys_uploaded: record.device_keys_uploaded,
            server_one_time_key_count: record.server_one_time_key_count,
            fallback_key_created_ms: record.fallback_key_created_ms,
        })
    }

    pub(crate) fn to_record(&self) -> Result<AccountRecord, CryptoError> {
        let json = Zeroizing::new(
            serde_json::to_vec(&self.inner.pickle())
                .map_err(|e| CryptoError::CorruptState(format!("account pickle: {e}")))?,
        );
        Ok(AccountRecord {
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            pickle: SecretBlob::new(json.to_vec()),
            device_keys_uploaded: self.device_keys_uploaded,
            server_one_time_key_count: self.server_one_time_key_count,
            fallback_key_created_ms: self.fallback_key_created_ms,
        })
    }

    pub(crate) fn curve25519(&self) -> String {
        self.inner.curve25519_key().to_base64()
    }

    pub(crate) fn ed25519(&self) -> String {
        self.inner.ed25519_key().to_base64()
    }

    pub(super) fn sign(&self, value: &mut Value) -> Result<(), CryptoError> {
        let key_id = format!("ed25519:{}", self.device_id);
        sign_json_with(value, self.user_id.as_str(), &key_id, |bytes| {
            self.inner.sign(bytes)
        })?;
        Ok(())
    }

    /// Signed device keys as published with `/keys/upload`.
    pub(crate) fn device_keys(&self) -> Result<Value, CryptoError> {
        let mut keys = json!({
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": [OLM_ALGORITHM, MEGOLM_ALGORITHM],
            "keys": {
                format!("curve25519:{}", self.device_id): self.curve25519(),
                format!("ed25519:{}", self.device_id): self.ed25519(),
            },
        });
        self.sign(&mut keys)?;
        Ok(keys)
    }

    fn signed_key(&self, key: String, fallback: bool) -> Result<Value, CryptoError> {
        let mut value = if fallback {
            json!({"key": key, "fallback": true})
        } else {
            json!({"key": key})
        };
        self.sign(&mut value)?;
        Ok(value)
    }

    /// Unpublished one-time keys, signed, by key id (`signed_curve25519:ID`).
    pub(crate) fn unpublished_one_time_keys(&self) -> Result<BTreeMap<String, Value>, CryptoError> {
        self.inner
            .one_time_keys()
            .into_iter()
            .map(|(id, key)| {
                Ok((
                    format!("{SIGNED_CURVE25519}:{}", id.to_base64()),
                    self.signed_key(key.to_base64(), false)?,
                ))
            })
            .collect()
    }

    /// The unpublished fallback key, signed, by key id.
    pub(crate) fn unpublished_fallback_keys(&self) -> Result<BTreeMap<String, Value>, CryptoError> {
        self.inner
            .fallback_key()
            .into_iter()
            .map(|(id, key)| {
                Ok((
                    format!("{SIGNED_CURVE25519}:{}", id.to_base64()),
                    self.signed_key(key.to_base64(), true)?,
                ))
            })
            .collect()
    }

    /// Whether something must be uploaded.
    pub(crate) fn needs_upload(&self) -> bool {
        !self.device_keys_uploaded
            || !self.inner.one_time_keys().is_empty()
            || !self.inner.fallback_key().is_empty()
    }

    /// React to the server's one-time key count. Returns true if new keys were generated
    /// (the caller must persist the account before uploading them).
    pub(crate) fn update_one_time_key_count(&mut self, count: u64) -> bool {
        self.server_one_time_key_count = count;
        let max = self.inner.max_number_of_one_time_keys() as u64;
        // Keys generated earlier and not yet confirmed are re-uploaded as they are; generating
        // more now would replace keys the server may already hold.
        if count >= max / 2 || !self.inner.one_time_keys().is_empty() {
            return false;
        }
        self.inner.generate_one_time_keys((max - count) as usize);
        true
    }

    /// React to the server's list of unused fallback key algorithms. Returns true if a new
    /// fallback key was generated.
    pub(crate) fn update_unused_fallback_keys(&mut self, unused: &[String], now: u64) -> bool {
        if unused.iter().any(|a| a == SIGNED_CURVE25519) || !self.inner.fallback_key().is_empty() {
            return false;
        }
        // Our published fallback key was used: publish a new one. vodozemac keeps the previous
        // private key for messages still in flight.
        self.inner.generate_fallback_key();
        self.fallback_key_created_ms = now;
        true
    }

    /// The server accepted the keys that were pending.
    pub(crate) fn mark_keys_as_published(&mut self, one_time_key_count: u64) {
        self.inner.mark_keys_as_published();
        self.device_keys_uploaded = true;
        self.server_one_time_key_count = one_time_key_count;
    }
}
