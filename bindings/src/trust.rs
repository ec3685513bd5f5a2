//! `NewtClient`'s sender-trust calls: cross-signing set-up, users' identities, and
//! re-evaluating messages a trust policy hid.

use crate::client::{NewtClient, run};
use crate::error::NewtError;
use crate::ids;
use crate::types::{SharingPolicy, UserIdentityInfo};

#[uniffi::export]
impl NewtClient {
    /// Set up cross-signing for this account and sign this device (asks the
    /// `PromptHandler` for the password if the server wants it). Other clients then show
    /// this device as cross-signed.
    pub async fn bootstrap_cross_signing(&self) -> Result<(), NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.bootstrap_cross_signing().await?) }).await
    }

    /// A user's cross-signing identity (downloaded if needed); `null` if they have none.
    pub async fn identity(&self, user_id: String) -> Result<Option<UserIdentityInfo>, NewtError> {
        let client = self.client()?;
        let user_id = ids::user_id(&user_id)?;
        run(async move { Ok(client.identity(&user_id).await?.map(UserIdentityInfo::from)) }).await
    }

    /// The user verified this user's identity (compared its master key): their
    /// cross-signed devices count as verified, and hidden messages that show now are
    /// delivered as `Updated`. Returns whether the user has an identity.
    pub async fn verify_identity(&self, user_id: String) -> Result<bool, NewtError> {
        let client = self.client()?;
        let user_id = ids::user_id(&user_id)?;
        run(async move { Ok(client.verify_identity(&user_id).await?) }).await
    }

    /// Acknowledge a changed identity (or withdraw the verification of an earlier one).
    /// Returns whether the user has an identity.
    pub async fn pin_identity(&self, user_id: String) -> Result<bool, NewtError> {
        let client = self.client()?;
        let user_id = ids::user_id(&user_id)?;
        run(async move { Ok(client.pin_identity(&user_id).await?) }).await
    }

    /// The global sharing policy (rooms without their own).
    pub fn set_sharing_policy(&self, policy: SharingPolicy) -> Result<(), NewtError> {
        Ok(self.client()?.set_sharing_policy(policy.into())?)
    }

    /// A room's own sharing policy; `null` makes it follow the global one again.
    pub fn set_room_sharing_policy(
        &self,
        room_id: String,
        policy: Option<SharingPolicy>,
    ) -> Result<(), NewtError> {
        let room_id = ids::room_id(&room_id)?;
        Ok(self
            .client()?
            .set_room_sharing_policy(&room_id, policy.map(Into::into))?)
    }

    /// The sharing policy a room's key is shared by: its own, or the global one.
    pub fn sharing_policy(&self, room_id: String) -> Result<SharingPolicy, NewtError> {
        let room_id = ids::room_id(&room_id)?;
        Ok(self.client()?.sharing_policy_for(&room_id)?.into())
    }

    /// Decide again about the messages the trust policy hid: call after the
    /// `TrustPolicyProvider` changed its answers. Those shown now arrive as `Updated`.
    pub async fn refresh_trust(&self) -> Result<(), NewtError> {
        let client = self.client()?;
        run(async move { Ok(client.refresh_trust().await?) }).await
    }
}
