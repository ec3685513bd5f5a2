//! The public calls of [`OlmMachine`] about interactive verification. What they send is
//! stored as to-device messages ([`OlmMachine::outgoing_requests`] hands them out); what
//! the other side answers arrives with the sync ([`super::SyncOutcome::verifications`]).

use ruma::{DeviceId, TransactionId, UserId};

use super::error::CryptoError;
use super::machine::OlmMachine;
use super::verification::{CancelCode, Verification};
use crate::store::Changes;

impl OlmMachine {
    /// Ask `user_id` to verify: one of their devices (`device_id`), or all of them that we
    /// know (for our own user: all our other devices); the first to accept is the one
    /// verified. Download the user's devices first.
    pub fn request_verification(
        &self,
        user_id: &UserId,
        device_id: Option<&DeviceId>,
    ) -> Result<Verification, CryptoError> {
        let mut state = self.lock()?;
        let devices = self.store.devices(&[user_id])?;
        let targets: Vec<_> = devices
            .into_iter()
            .filter(|d| !d.deleted && (d.user_id != self.user_id || d.device_id != self.device_id))
            .filter(|d| device_id.is_none_or(|wanted| d.device_id == wanted))
            .map(|d| d.device_id)
            .collect();
        let mut changes = Changes::default();
        let verification = self
            .verifier()
            .request(&mut state, user_id, targets, &mut changes)?;
        self.save_or_abandon(&mut state, &verification, changes)?;
        Ok(verification)
    }

    /// Our user accepts the other side's request.
    pub fn accept_verification(
        &self,
        flow_id: &TransactionId,
    ) -> Result<Verification, CryptoError> {
        self.verification_step(flow_id, |flow, own, _| flow.accept(own))
    }

    /// Our user saw the same emoji or numbers on both devices. The other side is verified
    /// once its own confirmation arrives ([`super::VerificationState::Done`]).
    pub fn confirm_verification(
        &self,
        flow_id: &TransactionId,
    ) -> Result<Verification, CryptoError> {
        self.verification_step(flow_id, |flow, own, keys| {
            flow.confirm(own, &keys.own, keys.theirs())
        })
    }

    /// Our user saw different emoji or numbers: cancelled with `m.mismatched_sas`.
    pub fn sas_mismatch(&self, flow_id: &TransactionId) -> Result<Verification, CryptoError> {
        self.verification_step(flow_id, |flow, _, _| flow.mismatch())
    }

    /// Our user declines or stops the verification (`m.user`).
    pub fn cancel_verification(
        &self,
        flow_id: &TransactionId,
    ) -> Result<Verification, CryptoError> {
        self.verification_step(flow_id, |_, _, _| Err(CancelCode::User))
    }

    /// One verification, if this machine still has it.
    pub fn verification(
        &self,
        flow_id: &TransactionId,
    ) -> Result<Option<Verification>, CryptoError> {
        let state = self.lock()?;
        Ok(state
            .verifications
            .get(flow_id.as_str())
            .map(|f| f.snapshot()))
    }

    /// Every verification in memory, finished ones included.
    pub fn verifications(&self) -> Result<Vec<Verification>, CryptoError> {
        let state = self.lock()?;
        Ok(state.verifications.all().map(|f| f.snapshot()).collect())
    }

    fn verification_step(
        &self,
        flow_id: &TransactionId,
        call: impl FnOnce(
            &mut super::verification::Flow,
            &super::verification::Own<'_>,
            super::verification::FlowKeys,
        ) -> Result<Vec<super::verification::Out>, CancelCode>,
    ) -> Result<Verification, CryptoError> {
        let mut state = self.lock()?;
        let mut changes = Changes::default();
        let verification = self
            .verifier()
            .act(&mut state, flow_id, &mut changes, call)?;
        self.save_or_abandon(&mut state, &verification, changes)?;
        Ok(verification)
    }

    /// Store what a step sends; if that fails the flow is given up (its messages would
    /// never go out).
    fn save_or_abandon(
        &self,
        state: &mut super::state::State,
        verification: &Verification,
        changes: Changes,
    ) -> Result<(), CryptoError> {
        let saved = self.save(state, changes);
        if saved.is_err()
            && let Some(flow) = state.verifications.get_mut(verification.flow_id.as_str())
        {
            flow.abandon();
        }
        saved
    }
}
