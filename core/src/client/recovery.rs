//! Recovery through secret storage (`m.secret_storage.v1.aes-hmac-sha2`): the backup's key
//! and the own cross-signing keys kept encrypted in the user's account data under a key
//! only the user has, shown once as the recovery key. A new device turns the recovery key
//! into the backup key (and takes the cross-signing keys, if they are the published
//! identity's); a recovery key of a backup set up without secret storage (`enable_backup`)
//! works too.

use std::collections::BTreeMap;

use base64::Engine;
use ruma::api::client::config::{get_global_account_data, set_global_account_data};
use ruma::serde::Raw;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{Client, ClientError};
use crate::backup::{
    BACKUP_SECRET, BackupError, BackupKey, EncryptedSecret, KeyDescription, SecretStorageError,
    SecretStorageKey,
};
use crate::crypto::{MASTER_SECRET, SELF_SIGNING_SECRET, USER_SIGNING_SECRET};
use crate::store::{ClientChanges, SecretBlob};

/// Account data naming the default secret storage key.
pub(super) const DEFAULT_KEY: &str = "m.secret_storage.default_key";
/// Secret store values: the secret storage key this device knows, and its id.
const KEY_RECOVERY: &str = "recovery.key";
const KEY_RECOVERY_ID: &str = "recovery.key_id";

#[derive(Serialize, Deserialize)]
pub(super) struct DefaultKey {
    pub(super) key: String,
}

/// An encrypted secret's account data: one encryption per storage key.
#[derive(Serialize, Deserialize)]
pub(super) struct SecretContent {
    pub(super) encrypted: BTreeMap<String, EncryptedSecret>,
}

impl Client {
    /// The backup key a recovery key gives: through the secret storage when it is the
    /// storage's key, else the key itself (a backup set up without secret storage).
    pub(super) async fn backup_key_from_recovery_key(
        &self,
        text: &str,
    ) -> Result<BackupKey, ClientError> {
        let direct = BackupKey::from_recovery_key(text).map_err(BackupError::from)?;
        let Some(DefaultKey { key: id }) = self.account_data(DEFAULT_KEY).await? else {
            return Ok(direct);
        };
        let key_type = format!("m.secret_storage.key.{id}");
        let Some(description) = self.account_data::<KeyDescription>(&key_type).await? else {
            return Ok(direct);
        };
        let storage = SecretStorageKey::from_recovery_key(&id, text).map_err(storage_error)?;
        if storage.check(&description).is_err() {
            return Ok(direct);
        }
        let content = self.account_data::<SecretContent>(BACKUP_SECRET).await?;
        let Some(sealed) = content.as_ref().and_then(|c| c.encrypted.get(&id)) else {
            return Ok(direct);
        };
        let secret = storage
            .decrypt(BACKUP_SECRET, sealed)
            .map_err(storage_error)?;
        let bytes = Zeroizing::new(
            base64_any(&secret)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| storage_error(SecretStorageError::Malformed("backup key".into())))?,
        );
        if let Err(e) = self.recover_cross_signing(&storage).await {
            warn!(error = %e, "the cross-signing keys in secret storage could not be taken");
        }
        self.blocking(move |c| c.remember_storage_key(&storage))
            .await?;
        Ok(BackupKey::from_bytes(&bytes))
    }

    /// Take the own cross-signing keys from secret storage, if this device has none and
    /// they are there (and are the published identity's): this device is then
    /// cross-signed, and can verify others. `true` if taken.
    async fn recover_cross_signing(&self, storage: &SecretStorageKey) -> Result<bool, ClientError> {
        let machine = self.machine()?;
        if machine.has_cross_signing_keys()? {
            return Ok(false);
        }
        let mut secrets = Vec::new();
        for name in [MASTER_SECRET, SELF_SIGNING_SECRET, USER_SIGNING_SECRET] {
            let content = self.account_data::<SecretContent>(name).await?;
            let Some(sealed) = content.as_ref().and_then(|c| c.encrypted.get(storage.id())) else {
                return Ok(false);
            };
            secrets.push(storage.decrypt(name, sealed).map_err(storage_error)?);
        }
        // The published identity, to check the keys against.
        self.identity(machine.user_id()).await?;
        let m = machine.clone();
        let signatures = self
            .blocking(move |_| {
                Ok(m.import_cross_signing_secrets(&secrets[0], &secrets[1], &secrets[2])?)
            })
            .await?;
        self.upload_signatures(&signatures).await?;
        self.blocking(move |_| Ok(machine.mark_cross_signing_uploaded()?))
            .await?;
        info!("cross-signing keys taken from secret storage: this device is cross-signed");
        Ok(true)
    }

    /// Keep the storage key this device knows (to show it again).
    pub(super) fn remember_storage_key(
        &self,
        storage: &SecretStorageKey,
    ) -> Result<(), ClientError> {
        let mut changes = ClientChanges::default();
        let bytes = crate::backup::storage_key_bytes(storage);
        changes
            .secret_values
            .insert(KEY_RECOVERY.into(), SecretBlob::new(bytes.to_vec()));
        changes
            .values
            .insert(KEY_RECOVERY_ID.into(), storage.id().to_owned());
        // A set-up under way is over: this is the key now.
        changes.secret_values.insert(
            super::recovery_setup::KEY_PENDING_STORAGE.into(),
            SecretBlob::new(Vec::new()),
        );
        self.store()?.save_changes(changes.into())?;
        Ok(())
    }

    /// The recovery key of the storage key this device knows, if any.
    pub(super) fn stored_recovery_key(&self) -> Result<Option<Zeroizing<String>>, ClientError> {
        let store = self.store()?;
        let (Some(id), Some(secret)) = (
            store.value(KEY_RECOVERY_ID)?,
            store.secret_value(KEY_RECOVERY)?,
        ) else {
            return Ok(None);
        };
        let bytes: [u8; 32] = secret.as_bytes().try_into().map_err(|_| {
            crate::store::StoreError::Decode("the stored recovery key is not 32 bytes".into())
        })?;
        let bytes = Zeroizing::new(bytes);
        Ok(Some(
            SecretStorageKey::from_bytes(&id, &bytes).to_recovery_key(),
        ))
    }

    pub(super) async fn account_data<T: DeserializeOwned>(
        &self,
        event_type: &str,
    ) -> Result<Option<T>, ClientError> {
        let user_id = self.machine()?.user_id().to_owned();
        let request = get_global_account_data::v3::Request::new(user_id, event_type.into());
        match self.inner.http.send(request).await {
            Ok(response) => serde_json::from_str(response.account_data.json().get())
                .map(Some)
                .map_err(|e| ClientError::InvalidResponse(format!("{event_type}: {e}"))),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn set_account_data(
        &self,
        event_type: &str,
        content: &Value,
    ) -> Result<(), ClientError> {
        let user_id = self.machine()?.user_id().to_owned();
        let raw = Raw::from_json(
            serde_json::value::to_raw_value(content)
                .map_err(|e| ClientError::InvalidInput(e.to_string()))?,
        );
        let request =
            set_global_account_data::v3::Request::new_raw(user_id, event_type.into(), raw);
        self.inner.http.send(request).await?;
        Ok(())
    }
}

/// A secret storage failure as the app sees it: a typo, or another key.
fn storage_error(e: SecretStorageError) -> ClientError {
    match e {
        SecretStorageError::InvalidRecoveryKey(e) => BackupError::InvalidRecoveryKey(e).into(),
        SecretStorageError::WrongKey | SecretStorageError::BadMac => {
            BackupError::WrongRecoveryKey.into()
        }
        other => BackupError::SecretStorage(other).into(),
    }
}

/// Base64, padded or not.
fn base64_any(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::general_purpose::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
    .decode(text)
}
