//! The public calls of [`OlmMachine`] about sender trust: users' identities (pin, verify),
//! the own cross-signing keys, and the background retry of incomplete sender data.

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Value, json};

use super::cross_signing::{self, OwnCrossSigning};
use super::error::CryptoError;
use super::identities::Identities;
use super::machine::OlmMachine;
use super::sender_data::SenderDataMachine;
use crate::store::{
    Changes, CryptoChanges, SharingPolicy, TrackedUser, TrackingState, UserIdentityRecord,
};

/// A user's cross-signing identity as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserIdentity {
    /// The user.
    pub user_id: ruma::OwnedUserId,
    /// Current master key (base64): what a user compares out of band.
    pub master_key: String,
    /// The current identity is verified.
    pub verified: bool,
    /// It changed since it was pinned, and was never verified: tell the user, then
    /// [`OlmMachine::pin_identity`].
    pub pin_violation: bool,
    /// We had verified an earlier identity: verify again, or withdraw with
    /// [`OlmMachine::pin_identity`].
    pub verification_violation: bool,
}

impl From<&UserIdentityRecord> for UserIdentity {
    fn from(r: &UserIdentityRecord) -> Self {
        Self {
            user_id: r.user_id.clone(),
            master_key: r.master_key.clone(),
            verified: r.is_verified(),
            pin_violation: r.has_pin_violation(),
            verification_violation: r.has_verification_violation(),
        }
    }
}

/// What to send to publish the own cross-signing keys.
#[derive(Clone, Debug)]
pub struct CrossSigningUpload {
    /// Body of `POST /keys/device_signing/upload` (without `auth`).
    pub keys: Value,
    /// Body of `POST /keys/signatures/upload`: the own device signed by the self-signing
    /// key.
    pub signatures: Value,
}

impl OlmMachine {
    /// A user's cross-signing identity, if known.
    pub fn identity(&self, user_id: &UserId) -> Result<Option<UserIdentity>, CryptoError> {
        let identities = Identities::new(self.ctx());
        Ok(identities
            .identity(user_id)?
            .as_ref()
            .map(UserIdentity::from))
    }

    /// Acknowledge a user's changed identity (clears a pin violation), or withdraw the
    /// verification of their earlier one (clears a verification violation). Returns
    /// whether the user has an identity.
    pub fn pin_identity(&self, user_id: &UserId) -> Result<bool, CryptoError> {
        let mut state = self.lock()?;
        Identities::new(self.ctx()).pin_identity(&mut state, user_id)
    }

    /// The user verified `user_id`'s current identity (compared its master key or emoji):
    /// their cross-signed devices become verified. Returns whether the user has an
    /// identity.
    pub fn verify_identity(&self, user_id: &UserId) -> Result<bool, CryptoError> {
        let mut state = self.lock()?;
        Identities::new(self.ctx()).verify_identity(&mut state, user_id)
    }

    /// The signature to upload (`POST /keys/signatures/upload`) that tells the user's other
    /// devices and other users that we verified `user_id`: their master key signed by our
    /// user-signing key. `None` without own cross-signing keys, for the own user, or unless
    /// the user's current identity is the one we verified (a master key that changed since
    /// is never signed).
    pub fn identity_signature(&self, user_id: &UserId) -> Result<Option<Value>, CryptoError> {
        let Some(keys) = cross_signing::stored(&*self.store)? else {
            return Ok(None);
        };
        let identities = Identities::new(self.ctx());
        let Some(identity) = identities
            .identity(user_id)?
            .filter(|i| user_id != self.user_id && i.is_verified())
        else {
            return Ok(None);
        };
        let stored: Value = serde_json::from_str(&identity.keys_json)
            .map_err(|e| CryptoError::CorruptState(format!("identity keys: {e}")))?;
        let mut master = stored["master"].clone();
        if let Some(object) = master.as_object_mut() {
            object.remove("signatures");
            object.remove("unsigned");
        }
        keys.sign_user(&self.user_id, &mut master)?;
        Ok(Some(
            json!({ user_id.as_str(): { identity.master_key: master } }),
        ))
    }

    /// The signature to upload (`POST /keys/signatures/upload`) that cross-signs one of our
    /// own other devices with the self-signing key, once the user verified it: other users'
    /// clients then see it as cross-signed, and ours as verified. `None` without own
    /// cross-signing keys, for another user's device, or an unknown one.
    pub fn device_signature(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
    ) -> Result<Option<Value>, CryptoError> {
        if user_id != self.user_id || device_id == self.device_id {
            return Ok(None);
        }
        let Some(keys) = cross_signing::stored(&*self.store)? else {
            return Ok(None);
        };
        let device = self
            .store
            .devices(&[user_id])?
            .into_iter()
            .find(|d| d.device_id == device_id && !d.deleted);
        let Some(device) = device else {
            return Ok(None);
        };
        let mut signed: Value = serde_json::from_str(&device.keys_json)
            .map_err(|e| CryptoError::CorruptState(format!("device keys: {e}")))?;
        if let Some(object) = signed.as_object_mut() {
            object.remove("signatures");
            object.remove("unsigned");
        }
        keys.sign_device(&self.user_id, &mut signed)?;
        Ok(Some(
            json!({ user_id.as_str(): { device_id.as_str(): signed } }),
        ))
    }

    /// The background retry of sender data: sessions whose sending device the server did
    /// not list yet are looked up again (their senders re-queried). Returns the sessions
    /// whose sender data improved.
    pub fn retry_sender_data(&self) -> Result<Vec<(OwnedRoomId, String)>, CryptoError> {
        let mut state = self.lock()?;
        SenderDataMachine::new(self.ctx()).retry_due(&mut state)
    }

    /// When the next background retry of sender data is due (Unix millis), if one is.
    pub fn next_sender_data_retry(&self) -> Result<Option<u64>, CryptoError> {
        Ok(self.store.next_sender_data_retry()?)
    }

    /// In how many milliseconds the next background retry of sender data is due (`0` if
    /// overdue), if one is scheduled.
    pub fn next_sender_data_retry_in(&self) -> Result<Option<u64>, CryptoError> {
        let now = self.lock()?.now_ms();
        Ok(self
            .store
            .next_sender_data_retry()?
            .map(|at| at.saturating_sub(now)))
    }

    /// The global sharing policy: which devices of a room's members get its key, for rooms
    /// without a policy of their own. Devices it leaves out get `m.room_key.withheld` once
    /// per session (`m.blacklisted`, `m.unverified`) and the key once they qualify; a
    /// stricter policy rotates the sessions devices it now leaves out had.
    pub fn set_sharing_policy(&self, policy: SharingPolicy) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        self.group_sessions()
            .set_sharing_policy(&mut state, None, Some(policy))
    }

    /// A room's own sharing policy; `None` makes it follow the global one again.
    pub fn set_room_sharing_policy(
        &self,
        room_id: &RoomId,
        policy: Option<SharingPolicy>,
    ) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        self.group_sessions()
            .set_sharing_policy(&mut state, Some(room_id), policy)
    }

    /// The sharing policy a room's key is shared by: its own, or the global one.
    pub fn sharing_policy_for(&self, room_id: &RoomId) -> Result<SharingPolicy, CryptoError> {
        self.group_sessions().sharing_policy_for(room_id)
    }

    /// The global sharing policy.
    pub fn sharing_policy(&self) -> Result<SharingPolicy, CryptoError> {
        Ok(self.store.sharing_policy()?)
    }

    /// Share room keys only with verified devices (`true`: [`SharingPolicy::VerifiedOnly`])
    /// or with all but blacklisted ones (`false`), globally.
    pub fn set_share_with_verified_only(&self, on: bool) -> Result<(), CryptoError> {
        self.set_sharing_policy(if on {
            SharingPolicy::VerifiedOnly
        } else {
            SharingPolicy::AllButBlacklisted
        })
    }

    /// Whether the global policy is [`SharingPolicy::VerifiedOnly`].
    pub fn shares_with_verified_only(&self) -> Result<bool, CryptoError> {
        Ok(self.sharing_policy()? == SharingPolicy::VerifiedOnly)
    }

    /// Whether this device holds the own cross-signing private keys.
    pub fn has_cross_signing_keys(&self) -> Result<bool, CryptoError> {
        Ok(cross_signing::stored(&*self.store)?.is_some())
    }

    /// The own cross-signing keys to publish, made (and stored, before anything is sent)
    /// on the first call and the same on every later one until [`Self::reset_cross_signing`].
    /// Refused (`InvalidInput`) when the account already has an identity whose keys this
    /// device does not hold (made by another device, or replaced since): publishing ours
    /// would silently replace it; [`Self::reset_cross_signing`] does that on purpose.
    pub fn bootstrap_cross_signing(&self) -> Result<CrossSigningUpload, CryptoError> {
        let held = cross_signing::stored(&*self.store)?.map(|k| k.master_public());
        let published = Identities::new(self.ctx()).identity(&self.user_id)?;
        if let Some(published) = published
            && held.as_deref() != Some(published.master_key.as_str())
        {
            return Err(CryptoError::InvalidInput(
                "the account's cross-signing identity was made by another device (or replaced): \
                 its keys are not here; reset_cross_signing replaces it"
                    .into(),
            ));
        }
        self.cross_signing_upload()
    }

    /// The upload of the stored own keys, made and stored first if there are none.
    fn cross_signing_upload(&self) -> Result<CrossSigningUpload, CryptoError> {
        let mut state = self.lock()?;
        let keys = match cross_signing::stored(&*self.store)? {
            Some(keys) => keys,
            None => {
                let keys = OwnCrossSigning::generate();
                let changes = Changes::from(CryptoChanges {
                    cross_signing_keys: Some(keys.to_secret()?),
                    ..Default::default()
                });
                self.ctx().save(&mut state, changes)?;
                keys
            }
        };
        let mut device_keys = state.account.device_keys()?;
        keys.sign_device(&self.user_id, &mut device_keys)?;
        Ok(CrossSigningUpload {
            keys: keys.public_keys(&self.user_id)?,
            signatures: json!({ self.user_id.as_str(): { self.device_id.as_str(): device_keys } }),
        })
    }

    /// New own cross-signing keys (the old ones were lost, compromised, or made by another
    /// device): stored, and returned to publish in place of the account's identity. Other
    /// users see the identity change.
    pub fn reset_cross_signing(&self) -> Result<CrossSigningUpload, CryptoError> {
        {
            let mut state = self.lock()?;
            let changes = Changes::from(CryptoChanges {
                cross_signing_keys: Some(crate::store::SecretBlob::new(Vec::new())),
                ..Default::default()
            });
            self.ctx().save(&mut state, changes)?;
        }
        self.cross_signing_upload()
    }

    /// The own cross-signing private keys, by secret storage name (unpadded base64), to
    /// keep in secret storage; `None` if this device does not hold them.
    pub fn cross_signing_secrets(&self) -> Result<Option<cross_signing::Secrets>, CryptoError> {
        Ok(cross_signing::stored(&*self.store)?.map(|keys| keys.secrets()))
    }

    /// Take the own cross-signing private keys from secret storage. Refused
    /// (`InvalidInput`) unless they are the keys of the published identity (secret storage
    /// is on the server: stale or planted keys are not taken). Returns the signature of
    /// this device by the self-signing key, to upload; then
    /// [`Self::mark_cross_signing_uploaded`].
    pub fn import_cross_signing_secrets(
        &self,
        master: &str,
        self_signing: &str,
        user_signing: &str,
    ) -> Result<Value, CryptoError> {
        let keys = OwnCrossSigning::from_secrets(master, self_signing, user_signing)?;
        let published = Identities::new(self.ctx()).identity(&self.user_id)?;
        let matches = published.is_some_and(|p| {
            p.master_key == keys.master_public()
                && p.self_signing_key == keys.self_signing_public()
                && p.user_signing_key.as_deref() == Some(keys.user_signing_public().as_str())
        });
        if !matches {
            return Err(CryptoError::InvalidInput(
                "the cross-signing keys in secret storage are not the account's identity".into(),
            ));
        }
        let mut state = self.lock()?;
        let changes = Changes::from(CryptoChanges {
            cross_signing_keys: Some(keys.to_secret()?),
            ..Default::default()
        });
        self.ctx().save(&mut state, changes)?;
        let mut device_keys = state.account.device_keys()?;
        keys.sign_device(&self.user_id, &mut device_keys)?;
        Ok(json!({ self.user_id.as_str(): { self.device_id.as_str(): device_keys } }))
    }

    /// The server accepted the own cross-signing keys: our own device list is queried
    /// again, so that the published identity is stored (and verified: we hold its keys).
    pub fn mark_cross_signing_uploaded(&self) -> Result<(), CryptoError> {
        let mut state = self.lock()?;
        let current = self.tracker().tracked_by_user()?;
        let sequence = current.get(&self.user_id).map_or(1, |t| t.sequence + 1);
        let changes = Changes::from(CryptoChanges {
            tracked_users: vec![TrackedUser {
                user_id: self.user_id.clone(),
                state: TrackingState::PendingDownload,
                sequence,
            }],
            ..Default::default()
        });
        self.ctx().save(&mut state, changes)
    }
}
