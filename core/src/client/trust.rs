//! Sender trust in the client: publishing the own cross-signing keys (with the password
//! through the prompt handler when the server asks), users' identities (pin, verify), and
//! re-evaluating kept messages when the policy or a sender's trust changes.

use std::collections::HashSet;
use std::sync::Arc;

use ruma::api::client::keys::{upload_signatures, upload_signing_keys};
use ruma::api::client::uiaa::{AuthData, MatrixUserIdentifier, Password, UserIdentifier};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;
use tracing::{info, warn};

use super::late_keys::Retry;
use super::{Client, ClientError, Prompt, PromptAnswer};
use crate::crypto::{
    CrossSigningUpload, IdentityChange, OlmMachine, SharingPolicy, UserIdentity, raw_json,
};
use crate::http::HttpError;
use crate::store::LocalTrust;

impl Client {
    /// Set up cross-signing: make the own master, self-signing and user-signing keys (or
    /// reuse the ones made by an earlier attempt), publish them, and sign this device with
    /// them. When the server asks for the password (user-interactive auth), it comes from
    /// the prompt handler ([`Prompt::Password`]). Afterwards other users' clients see this
    /// device as cross-signed.
    pub async fn bootstrap_cross_signing(&self) -> Result<(), ClientError> {
        let machine = self.machine()?;
        // What the server has now: an identity made elsewhere must not be replaced here.
        self.identity(machine.user_id()).await?;
        let m = Arc::clone(&machine);
        let upload = self
            .blocking(move |_| Ok(m.bootstrap_cross_signing()?))
            .await?;
        self.publish_cross_signing(&machine, upload).await
    }

    /// Upload the own keys (the password from the prompt handler when the server asks),
    /// sign this device with them, and download the own identity again.
    async fn publish_cross_signing(
        &self,
        machine: &Arc<OlmMachine>,
        upload: CrossSigningUpload,
    ) -> Result<(), ClientError> {
        let keys = |name: &str| raw_json(&upload.keys[name]).map(Some);
        let mut request = upload_signing_keys::v3::Request::new();
        request.master_key = keys("master_key")?;
        request.self_signing_key = keys("self_signing_key")?;
        request.user_signing_key = keys("user_signing_key")?;
        let first = self.inner.http.send(request.clone()).await;
        match first {
            Ok(_) => {}
            Err(HttpError::AuthRequired { session, flows })
                if flows.iter().any(|f| f == "m.login.password") =>
            {
                request.auth = Some(
                    self.password_auth(machine, session, "set up cross-signing")
                        .await?,
                );
                self.inner.http.send(request).await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.upload_signatures(&upload.signatures).await?;
        let m = Arc::clone(machine);
        self.blocking(move |_| Ok(m.mark_cross_signing_uploaded()?))
            .await?;
        info!("cross-signing keys published");
        self.send_outgoing().await
    }

    /// Replace the own cross-signing keys (they were lost or may be compromised): new keys
    /// are made and published (the server asks for the password, through the prompt
    /// handler). Other users see the identity change; those who had verified it must
    /// verify again.
    pub async fn reset_cross_signing(&self) -> Result<(), ClientError> {
        let machine = self.machine()?;
        let m = Arc::clone(&machine);
        let upload = self.blocking(move |_| Ok(m.reset_cross_signing()?)).await?;
        self.publish_cross_signing(&machine, upload).await
    }

    /// The password for user-interactive auth, from the prompt handler.
    pub(crate) async fn password_auth(
        &self,
        machine: &OlmMachine,
        session: Option<String>,
        reason: &str,
    ) -> Result<AuthData, ClientError> {
        let answer = self
            .prompt(Prompt::Password {
                user_id: machine.user_id().to_owned(),
                reason: reason.to_owned(),
            })
            .await;
        let PromptAnswer::Password(password) = answer else {
            return Err(ClientError::PromptDismissed);
        };
        let identifier =
            UserIdentifier::Matrix(MatrixUserIdentifier::new(machine.user_id().to_string()));
        let mut auth = Password::new(identifier, password.to_string());
        auth.session = session;
        Ok(AuthData::Password(auth))
    }

    /// `POST /keys/signatures/upload` of a body the machine made; refused signatures are
    /// an error.
    pub(super) async fn upload_signatures(&self, body: &Value) -> Result<(), ClientError> {
        let signed = serde_json::from_value(body.clone())
            .map_err(|e| ClientError::InvalidInput(format!("signatures: {e}")))?;
        let response = self
            .inner
            .http
            .send(upload_signatures::v3::Request::new(signed))
            .await?;
        if !response.failures.is_empty() {
            let users: Vec<String> = response.failures.keys().map(|u| u.to_string()).collect();
            return Err(ClientError::InvalidResponse(format!(
                "the server refused signatures for {users:?}"
            )));
        }
        Ok(())
    }

    /// The global sharing policy: which devices of a room's members get its key (rooms
    /// without their own). With [`SharingPolicy::AskMe`] sending asks the prompt handler
    /// about devices nobody decided about ([`Prompt::NewDevices`]) and stops with
    /// [`ClientError::UnknownDevices`] until each one is verified, blacklisted or ignored.
    pub fn set_sharing_policy(&self, policy: SharingPolicy) -> Result<(), ClientError> {
        Ok(self.machine()?.set_sharing_policy(policy)?)
    }

    /// A room's own sharing policy (`None`: the room follows the global one again).
    pub fn set_room_sharing_policy(
        &self,
        room_id: &RoomId,
        policy: Option<SharingPolicy>,
    ) -> Result<(), ClientError> {
        Ok(self.machine()?.set_room_sharing_policy(room_id, policy)?)
    }

    /// The sharing policy of a room: its own, or the global one.
    pub fn sharing_policy_for(&self, room_id: &RoomId) -> Result<SharingPolicy, ClientError> {
        Ok(self.machine()?.sharing_policy_for(room_id)?)
    }

    /// The user verified a device by hand (compared its fingerprint): recorded, and for one
    /// of our own devices, when this device holds the cross-signing keys, also cross-signed
    /// and published, so other users' clients see it as cross-signed. Hidden messages that
    /// show now are delivered again. Returns whether the device is known.
    pub async fn verify_device(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
    ) -> Result<bool, ClientError> {
        let (user, device) = (user_id.to_owned(), device_id.to_owned());
        let (known, signature) = self
            .blocking(move |c| {
                let known = c.set_device_trust(&user, &device, LocalTrust::Verified)?;
                Ok((known, c.machine()?.device_signature(&user, &device)?))
            })
            .await?;
        if let Some(signature) = signature.filter(|_| known)
            && let Err(e) = self.upload_signatures(&signature).await
        {
            warn!(error = %e, "publishing the device's cross-signing signature failed");
        }
        Ok(known)
    }

    /// A user's cross-signing identity, downloaded first if our copy is missing or stale.
    pub async fn identity(&self, user_id: &UserId) -> Result<Option<UserIdentity>, ClientError> {
        // Downloading the devices downloads the identity with them.
        self.devices(user_id).await?;
        let machine = self.machine()?;
        let user_id = user_id.to_owned();
        self.blocking(move |_| Ok(machine.identity(&user_id)?))
            .await
    }

    /// The user verified `user_id`'s identity (compared its master key or emoji): their
    /// cross-signed devices count as verified, and messages hidden by a policy that needs
    /// verified senders are delivered again. With own cross-signing keys the verification
    /// is also published (signed with the user-signing key), so the user's other devices
    /// learn it. Returns whether the user has an identity.
    pub async fn verify_identity(&self, user_id: &UserId) -> Result<bool, ClientError> {
        let machine = self.machine()?;
        let user = user_id.to_owned();
        let known = self
            .blocking(move |_| Ok(machine.verify_identity(&user)?))
            .await?;
        self.publish_identity_verification(user_id).await?;
        Ok(known)
    }

    /// Publish that we verified `user_id`'s identity (signed with the user-signing key, if
    /// we hold it, and only while their current identity is the one we verified), and
    /// deliver the messages that show now.
    pub(crate) async fn publish_identity_verification(
        &self,
        user_id: &UserId,
    ) -> Result<(), ClientError> {
        let machine = self.machine()?;
        let user = user_id.to_owned();
        let signature = self
            .blocking(move |_| Ok(machine.identity_signature(&user)?))
            .await?;
        if let Some(signature) = signature
            && let Err(e) = self.upload_signatures(&signature).await
        {
            warn!(error = %e, "publishing the verification failed; it is kept locally");
        }
        self.refresh_trust().await
    }

    /// Acknowledge `user_id`'s changed identity (or withdraw the verification of their
    /// earlier one). Returns whether the user has an identity.
    pub async fn pin_identity(&self, user_id: &UserId) -> Result<bool, ClientError> {
        let machine = self.machine()?;
        let user = user_id.to_owned();
        let known = self
            .blocking(move |_| Ok(machine.pin_identity(&user)?))
            .await?;
        self.refresh_trust().await?;
        Ok(known)
    }

    /// Decide again about every kept message that the trust policy hid, with the current
    /// policies and trust: those now shown are delivered as updates (`is_update`). Call it
    /// after changing what the [`TrustPolicyProvider`](super::TrustPolicyProvider) answers.
    pub async fn refresh_trust(&self) -> Result<(), ClientError> {
        let machine = self.machine()?;
        self.blocking(move |c| c.recheck_kept_events(&machine, None))
            .await
    }

    /// Kept events of `sessions` (all kept sessions if `None`) that are shown now are
    /// delivered again. Store and crypto I/O: on a blocking thread.
    pub(crate) fn recheck_kept_events(
        &self,
        machine: &OlmMachine,
        sessions: Option<Vec<(OwnedRoomId, String)>>,
    ) -> Result<(), ClientError> {
        let sessions = match sessions {
            Some(sessions) => sessions,
            None => self.store()?.undecryptable_sessions()?,
        };
        if sessions.is_empty() {
            return Ok(());
        }
        let retry = Retry {
            sessions,
            only_if_decrypted: true,
        };
        self.retry_kept_events(machine, retry, &HashSet::new())
    }

    /// The background retry of sender data (sessions whose sending device the server did
    /// not list): due ones are looked up again and messages that show now are delivered
    /// again; with `schedule`, a wake-up is asked for the next one. Returns how many
    /// sessions improved.
    pub(crate) async fn retry_sender_data(&self, schedule: bool) -> Result<u32, ClientError> {
        let machine = self.machine()?;
        let m = Arc::clone(&machine);
        let (ran, improved, next) = self
            .blocking(move |c| {
                if m.next_sender_data_retry_in()? != Some(0) {
                    // Nothing due (the usual case after a sync): no store writes, no requests.
                    return Ok((false, 0, m.next_sender_data_retry_in()?));
                }
                let improved = m.retry_sender_data()?;
                let count = improved.len() as u32;
                if !improved.is_empty() {
                    c.recheck_kept_events(&m, Some(improved))?;
                }
                Ok((true, count, m.next_sender_data_retry_in()?))
            })
            .await?;
        if ran {
            // Senders re-queried by the retry.
            self.send_outgoing().await?;
        }
        if let Some(in_ms) = next.filter(|_| schedule) {
            let delay = std::time::Duration::from_millis(in_ms.max(1_000));
            self.schedule_wakeup(delay, "sender data of received room keys");
        }
        Ok(improved)
    }

    /// Tell the app about changed identities ([`Prompt::IdentityChanged`]); answering
    /// [`PromptAnswer::Confirmed`] acknowledges the change ([`Client::pin_identity`]).
    pub(crate) fn report_identity_changes(&self, changes: Vec<IdentityChange>) {
        for change in changes {
            let (user_id, verification_violation): (OwnedUserId, bool) = match change {
                IdentityChange::PinViolation(u) => (u, false),
                IdentityChange::VerificationViolation(u) => (u, true),
            };
            warn!(%user_id, verification_violation, "a user's cross-signing identity changed");
            let client = self.handle();
            self.spawn_abortable(async move {
                let prompt = Prompt::IdentityChanged {
                    user_id: user_id.clone(),
                    verification_violation,
                };
                if matches!(client.prompt(prompt).await, PromptAnswer::Confirmed)
                    && let Err(e) = client.pin_identity(&user_id).await
                {
                    warn!(error = %e, "acknowledging an identity change failed");
                }
            });
        }
    }
}
