//! Interactive verification (SAS) for the app: request, accept, compare, confirm or
//! cancel, with the UI prompt interface asking the user at each step. The machine runs the
//! protocol; this sends what it queued at once and publishes what a completed verification
//! established (cross-signing signatures).

use ruma::{DeviceId, OwnedUserId, TransactionId, UserId};
use tracing::warn;

use super::{Client, ClientError, Prompt, PromptAnswer};
use crate::crypto::{CancelCode, Verification, VerificationState};

impl Client {
    /// Ask `user_id` to verify with this device: one of their devices, or (`None`) all of
    /// them (for the own user: all our other devices; the first to accept is verified).
    /// The other side is asked through its prompt interface; here the prompt handler is
    /// asked to compare the emoji once both accepted ([`Prompt::CompareSas`]).
    pub async fn request_verification(
        &self,
        user_id: &UserId,
        device_id: Option<&DeviceId>,
    ) -> Result<Verification, ClientError> {
        self.devices(user_id).await?;
        let machine = self.machine()?;
        let (user, device) = (user_id.to_owned(), device_id.map(ToOwned::to_owned));
        let flow = self
            .blocking(move |_| Ok(machine.request_verification(&user, device.as_deref())?))
            .await?;
        self.send_verification_messages().await;
        Ok(flow)
    }

    /// Accept a request another device made ([`Prompt::VerificationRequest`] does it when
    /// answered [`PromptAnswer::Confirmed`]).
    pub async fn accept_verification(
        &self,
        flow_id: &TransactionId,
    ) -> Result<Verification, ClientError> {
        if let Some(flow) = self.verification(flow_id)? {
            // Their keys must be known to check their MAC at the end.
            self.devices(&flow.other_user).await?;
        }
        self.verification_step(flow_id, |m, id| m.accept_verification(id))
            .await
    }

    /// The user saw the same emoji or numbers on both devices.
    pub async fn confirm_verification(
        &self,
        flow_id: &TransactionId,
    ) -> Result<Verification, ClientError> {
        self.verification_step(flow_id, |m, id| m.confirm_verification(id))
            .await
    }

    /// The user saw different emoji or numbers: cancelled on both sides, nothing verified.
    pub async fn sas_mismatch(&self, flow_id: &TransactionId) -> Result<Verification, ClientError> {
        self.verification_step(flow_id, |m, id| m.sas_mismatch(id))
            .await
    }

    /// The user declines or stops a verification.
    pub async fn cancel_verification(
        &self,
        flow_id: &TransactionId,
    ) -> Result<Verification, ClientError> {
        self.verification_step(flow_id, |m, id| m.cancel_verification(id))
            .await
    }

    /// One verification of this session, if still known.
    pub fn verification(
        &self,
        flow_id: &TransactionId,
    ) -> Result<Option<Verification>, ClientError> {
        Ok(self.machine()?.verification(flow_id)?)
    }

    /// The verifications of this session, finished ones included.
    pub fn verifications(&self) -> Result<Vec<Verification>, ClientError> {
        Ok(self.machine()?.verifications()?)
    }

    async fn verification_step(
        &self,
        flow_id: &TransactionId,
        step: impl FnOnce(
            &crate::crypto::OlmMachine,
            &TransactionId,
        ) -> Result<Verification, crate::crypto::CryptoError>
        + Send
        + 'static,
    ) -> Result<Verification, ClientError> {
        let machine = self.machine()?;
        let id = flow_id.to_owned();
        let flow = self.blocking(move |_| Ok(step(&machine, &id)?)).await?;
        self.send_verification_messages().await;
        // What the step led to beyond the user's own decision (done; a MAC that failed).
        let decided_by_user = matches!(
            &flow.state,
            VerificationState::Cancelled {
                code: CancelCode::User | CancelCode::MismatchedSas,
                by_us: true,
                ..
            }
        );
        if !decided_by_user {
            self.report_verifications(vec![flow.clone()]);
        }
        Ok(flow)
    }

    async fn send_verification_messages(&self) {
        if let Err(e) = self.send_outgoing().await {
            warn!(error = %e, "sending verification messages failed; they go with the next sync");
        }
    }

    /// Tell the app where verifications stand, through the prompt handler: requests to
    /// accept, strings to compare, completions (after publishing the signatures they call
    /// for) and cancellations. Each prompt runs as its own task.
    pub(crate) fn report_verifications(&self, updates: Vec<Verification>) {
        for flow in updates {
            let client = self.handle();
            self.spawn_abortable(async move {
                if let Err(e) = client.report_verification(flow).await {
                    warn!(error = %e, "a verification step failed");
                }
            });
        }
    }

    async fn report_verification(&self, flow: Verification) -> Result<(), ClientError> {
        let (flow_id, user_id) = (flow.flow_id.clone(), flow.other_user.clone());
        if let VerificationState::Cancelled {
            code,
            reason,
            by_us,
        } = flow.state
        {
            let prompt = Prompt::VerificationCancelled {
                flow_id,
                user_id,
                code,
                reason,
                by_us,
            };
            self.prompt(prompt).await;
            return Ok(());
        }
        // Every other state comes after the other device is known.
        let Some(device_id) = flow.other_device.clone() else {
            return Ok(());
        };
        match flow.state {
            VerificationState::Incoming => {
                let prompt = Prompt::VerificationRequest {
                    flow_id: flow_id.clone(),
                    user_id,
                    device_id,
                };
                match self.prompt(prompt).await {
                    PromptAnswer::Confirmed => self.accept_verification(&flow_id).await?,
                    _ => self.cancel_verification(&flow_id).await?,
                };
            }
            VerificationState::CompareSas(sas) => {
                let prompt = Prompt::CompareSas {
                    flow_id: flow_id.clone(),
                    user_id,
                    device_id,
                    sas,
                };
                match self.prompt(prompt).await {
                    PromptAnswer::Confirmed => self.confirm_verification(&flow_id).await?,
                    PromptAnswer::Mismatch => self.sas_mismatch(&flow_id).await?,
                    _ => self.cancel_verification(&flow_id).await?,
                };
            }
            VerificationState::Done { identity_verified } => {
                self.publish_verification(&user_id, &device_id, identity_verified)
                    .await?;
                let prompt = Prompt::VerificationDone {
                    flow_id,
                    user_id,
                    device_id,
                    identity_verified,
                };
                self.prompt(prompt).await;
            }
            _ => {}
        }
        Ok(())
    }

    /// The machine recorded the verification (the identity with the master key the MAC
    /// covered); what others should learn of it is published (our own device cross-signed,
    /// another user's master key signed while it is still that key), and messages hidden
    /// for want of a verified sender are delivered again.
    async fn publish_verification(
        &self,
        user_id: &OwnedUserId,
        device_id: &DeviceId,
        identity_verified: bool,
    ) -> Result<(), ClientError> {
        self.verify_device(user_id, device_id).await?;
        if identity_verified {
            self.publish_identity_verification(user_id).await?;
        }
        Ok(())
    }
}
