//! Setting up recovery (a new secret storage key, a new backup whose key it keeps, the own
//! cross-signing keys), and taking up a set-up that stopped half-way (an answer lost, the
//! app stopped): its keys are kept on this device before the server hears of them.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::info;
use zeroize::Zeroizing;

use super::recovery::{DEFAULT_KEY, DefaultKey, SecretContent};
use super::{Client, ClientError};
use crate::backup::{BACKUP_SECRET, BackupKey, KeyDescription, SecretStorageKey};
use crate::store::ClientChanges;

/// Secret store value: the storage key of a set-up under way (empty when none).
pub(super) const KEY_PENDING_STORAGE: &str = "recovery.pending_key";
/// Store value: what the set-up under way found when it began ([`PendingSetup`], JSON).
const KEY_PENDING_SETUP: &str = "recovery.pending_setup";

/// A recovery set-up under way, as it began.
#[derive(Serialize, Deserialize)]
struct PendingSetup {
    /// The new storage key's id.
    id: String,
    /// The account's default storage key then (empty: none).
    previous_default: String,
    /// The backup version this device used then (empty: none).
    previous_version: String,
}

/// What to do with a set-up found under way.
enum Resume {
    /// The server has it as the default key: keep it.
    Remember,
    /// It stopped after its backup, before the server made it the default, and no one
    /// changed the default since: do the rest with this backup key.
    Finish(BackupKey),
    /// It never changed anything, or another set-up came after it: forget it.
    Forget,
}

impl Client {
    /// Set up recovery: a new secret storage key (the default one), a new backup whose key
    /// is kept in the secret storage, every session uploaded to it in the background.
    /// Returns the recovery key for the user to keep. If it fails half-way (an answer
    /// lost, the app stopped), the sync after takes it up: the set-up is finished if the
    /// server has its backup, else forgotten; `recovery_key()` shows the key then.
    pub async fn set_up_recovery_key(&self) -> Result<Zeroizing<String>, ClientError> {
        let _setting_up = self.inner.backup.setting_up.lock().await;
        let storage = SecretStorageKey::new();
        let previous_default = self.account_data::<DefaultKey>(DEFAULT_KEY).await?;
        let pending = PendingSetup {
            id: storage.id().to_owned(),
            previous_default: previous_default.map(|d| d.key).unwrap_or_default(),
            previous_version: self
                .blocking(|c| Ok(c.active()?.map(|a| a.version)))
                .await?
                .unwrap_or_default(),
        };
        let bytes = crate::backup::storage_key_bytes(&storage);
        self.blocking(move |c| c.keep_pending_setup(&bytes[..], &pending))
            .await?;
        let backup = self.create_backup_locked().await?;
        self.finish_recovery_setup(&storage, &backup).await?;
        info!("recovery set up: secret storage and key backup");
        Ok(storage.to_recovery_key())
    }

    /// The steps after the backup, each of which may be done again: the secrets (the
    /// backup's key, the own cross-signing keys when held) encrypted with `storage`, its
    /// description, then it as the default key; then this device keeps it.
    async fn finish_recovery_setup(
        &self,
        storage: &SecretStorageKey,
        backup: &BackupKey,
    ) -> Result<(), ClientError> {
        let secret = Zeroizing::new(STANDARD_NO_PAD.encode(backup.to_bytes().as_ref()));
        self.store_secret(storage, BACKUP_SECRET, &secret).await?;
        if let Some(secrets) = self.machine()?.cross_signing_secrets()? {
            for (name, secret) in secrets {
                self.store_secret(storage, name, &secret).await?;
            }
        }
        // The key itself last: the account's recovery changes when it is the default.
        let description = serde_json::to_value(storage.description())
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        let key_type = format!("m.secret_storage.key.{}", storage.id());
        self.set_account_data(&key_type, &description).await?;
        self.set_account_data(DEFAULT_KEY, &json!({ "key": storage.id() }))
            .await?;
        let kept = copy(storage);
        self.blocking(move |c| c.remember_storage_key(&kept)).await
    }

    /// `secret` encrypted with `storage` into the account data `name`.
    async fn store_secret(
        &self,
        storage: &SecretStorageKey,
        name: &str,
        secret: &str,
    ) -> Result<(), ClientError> {
        let content = SecretContent {
            encrypted: BTreeMap::from([(storage.id().to_owned(), storage.encrypt(name, secret))]),
        };
        let content =
            serde_json::to_value(content).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        self.set_account_data(name, &content).await
    }

    /// Set-ups that stopped half-way: a backup version the server made, a recovery set-up
    /// (see [`Client::set_up_recovery_key`]). A set-up under way in this process is left
    /// alone. The recovery set-up is looked at only once the backup's is settled (it
    /// depends on which backup this device uses).
    pub(super) async fn resume_setups(&self) -> Result<(), ClientError> {
        let Ok(_setting_up) = self.inner.backup.setting_up.try_lock() else {
            return Ok(());
        };
        self.resume_backup_setup().await?;
        self.resume_recovery_setup().await
    }

    async fn resume_recovery_setup(&self) -> Result<(), ClientError> {
        let Some((storage, pending)) = self.blocking(|c| c.pending_setup()).await? else {
            return Ok(());
        };
        let default = self.account_data::<DefaultKey>(DEFAULT_KEY).await?;
        let default = default.map(|d| d.key).unwrap_or_default();
        let resume = if default == storage.id() {
            let key_type = format!("m.secret_storage.key.{}", storage.id());
            let description = self.account_data::<KeyDescription>(&key_type).await?;
            match description {
                Some(d) if storage.check(&d).is_ok() => Resume::Remember,
                _ => Resume::Forget,
            }
        } else {
            let active = self.blocking(|c| c.active()).await?;
            match active {
                Some(a)
                    if default == pending.previous_default
                        && a.version != pending.previous_version =>
                {
                    Resume::Finish(a.key)
                }
                _ => Resume::Forget,
            }
        };
        match resume {
            Resume::Remember => {
                info!("a recovery key set up before was found: kept");
                self.blocking(move |c| c.remember_storage_key(&storage))
                    .await
            }
            Resume::Finish(backup) => {
                info!("a recovery set-up that stopped half-way is finished");
                self.finish_recovery_setup(&storage, &backup).await
            }
            Resume::Forget => {
                self.blocking(|c| c.set_pending_key(KEY_PENDING_STORAGE, &[]))
                    .await
            }
        }
    }

    /// Keep the storage key of a set-up beginning, and what it found, in one transaction.
    fn keep_pending_setup(&self, key: &[u8], pending: &PendingSetup) -> Result<(), ClientError> {
        let mut changes = ClientChanges::default();
        changes.secret_values.insert(
            KEY_PENDING_STORAGE.into(),
            crate::store::SecretBlob::new(key.to_vec()),
        );
        let info =
            serde_json::to_string(pending).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        changes.values.insert(KEY_PENDING_SETUP.into(), info);
        self.store()?.save_changes(changes.into())?;
        Ok(())
    }

    /// The storage key of a set-up under way and what it found, if any.
    fn pending_setup(&self) -> Result<Option<(SecretStorageKey, PendingSetup)>, ClientError> {
        let Some(bytes) = self.pending_key(KEY_PENDING_STORAGE)? else {
            return Ok(None);
        };
        let Some(info) = self.store()?.value(KEY_PENDING_SETUP)? else {
            return Ok(None);
        };
        // Not what this version wrote: nothing to take up.
        let Ok(pending) = serde_json::from_str::<PendingSetup>(&info) else {
            return Ok(None);
        };
        let storage = SecretStorageKey::from_bytes(&pending.id, &bytes);
        Ok(Some((storage, pending)))
    }
}

/// Another handle on the same storage key.
fn copy(storage: &SecretStorageKey) -> SecretStorageKey {
    SecretStorageKey::from_bytes(storage.id(), &crate::backup::storage_key_bytes(storage))
}
