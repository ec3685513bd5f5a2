//! The verification sub-machine: what arrives (parsed and routed to its flow), what the app
//! asks (request, accept, confirm, cancel), what we send (queued as stored to-device
//! messages), and the trust a completed verification establishes.

use ruma::events::key::verification::VerificationMethod;
use ruma::events::key::verification::accept::ToDeviceKeyVerificationAcceptEventContent as AcceptContent;
use ruma::events::key::verification::cancel::ToDeviceKeyVerificationCancelEventContent as CancelContent;
use ruma::events::key::verification::done::ToDeviceKeyVerificationDoneEventContent as DoneContent;
use ruma::events::key::verification::key::ToDeviceKeyVerificationKeyEventContent as KeyContent;
use ruma::events::key::verification::mac::ToDeviceKeyVerificationMacEventContent as MacContent;
use ruma::events::key::verification::ready::ToDeviceKeyVerificationReadyEventContent as ReadyContent;
use ruma::events::key::verification::request::ToDeviceKeyVerificationRequestEventContent as RequestContent;
use ruma::events::key::verification::start::ToDeviceKeyVerificationStartEventContent as StartContent;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedTransactionId, OwnedUserId, TransactionId,
    UInt, UserId,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::flow::{self, Out, Own, Step};
use super::{CancelCode, FUTURE_SKEW_MS, Flow, TIMEOUT_MS, Verification, VerificationState};
use crate::crypto::context::sub_machine;
use crate::crypto::error::CryptoError;
use crate::crypto::identities::Identities;
use crate::crypto::keys_query::DeviceTracker;
use crate::crypto::outbox::messages_json;
use crate::crypto::state::State;
use crate::store::{Changes, LocalTrust, PendingToDevice};

/// A received verification message, parsed.
enum Incoming {
    Request(RequestContent),
    Ready(ReadyContent),
    /// With its content in canonical JSON, as received (the commitment covers it).
    Start(StartContent, String),
    Accept(AcceptContent),
    Key(KeyContent),
    Mac(MacContent),
    Done(DoneContent),
    Cancel(CancelContent),
}

impl Incoming {
    fn parse(event_type: &str, content: &Value) -> Result<(OwnedTransactionId, Self), String> {
        fn typed<T: DeserializeOwned>(content: &Value) -> Result<T, String> {
            serde_json::from_value(content.clone()).map_err(|e| e.to_string())
        }
        let message = match event_type {
            "m.key.verification.request" => Self::Request(typed(content)?),
            "m.key.verification.ready" => Self::Ready(typed(content)?),
            "m.key.verification.start" => {
                // The commitment covers the content as the specification defines it (what
                // ruma's type holds), not fields a sender's transport may have added.
                let start: StartContent = typed(content)?;
                let value = serde_json::to_value(&start).map_err(|e| e.to_string())?;
                let canonical =
                    crate::crypto::signing::canonical_json(&value).map_err(|e| e.to_string())?;
                Self::Start(start, canonical)
            }
            "m.key.verification.accept" => Self::Accept(typed(content)?),
            "m.key.verification.key" => Self::Key(typed(content)?),
            "m.key.verification.mac" => Self::Mac(typed(content)?),
            "m.key.verification.done" => Self::Done(typed(content)?),
            "m.key.verification.cancel" => Self::Cancel(typed(content)?),
            other => return Err(format!("not a verification message: {other}")),
        };
        Ok((message.transaction_id().to_owned(), message))
    }

    fn transaction_id(&self) -> &TransactionId {
        match self {
            Self::Request(c) => &c.transaction_id,
            Self::Ready(c) => &c.transaction_id,
            Self::Start(c, _) => &c.transaction_id,
            Self::Accept(c) => &c.transaction_id,
            Self::Key(c) => &c.transaction_id,
            Self::Mac(c) => &c.transaction_id,
            Self::Done(c) => &c.transaction_id,
            Self::Cancel(c) => &c.transaction_id,
        }
    }
}

sub_machine! {
    /// Interactive verification (SAS).
    Verifier
}

impl Verifier<'_> {
    fn own(&self) -> Own<'_> {
        Own {
            user: self.ctx.user_id,
            device: self.ctx.device_id,
        }
    }

    /// Handle the verification messages of one sync response. Returns the flows whose
    /// state changed, as they are now.
    pub(crate) fn handle_events(
        &self,
        state: &mut State,
        events: &[Value],
        changes: &mut Changes,
    ) -> Result<Vec<Verification>, CryptoError> {
        let mut changed = self.expire(state, changes)?;
        for event in events {
            let sender = event
                .get("sender")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let event_type = event
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let content = event.get("content").unwrap_or(&Value::Null);
            let Ok(sender) = OwnedUserId::try_from(sender) else {
                debug!(event_type, "verification message without a valid sender");
                continue;
            };
            match Incoming::parse(event_type, content) {
                Ok((id, message)) => {
                    if let Some(update) = self.receive(state, &sender, &id, message, changes)? {
                        changed.retain(|v| v.flow_id != update.flow_id);
                        changed.push(update);
                    }
                }
                Err(e) => debug!(%sender, event_type, error = e, "invalid verification message"),
            }
        }
        Ok(changed)
    }

    /// Cancel (`m.timeout`) the flows nobody touched for [`TIMEOUT_MS`].
    fn expire(
        &self,
        state: &mut State,
        changes: &mut Changes,
    ) -> Result<Vec<Verification>, CryptoError> {
        let now = state.now_ms();
        let mut expired = Vec::new();
        let mut outs = Vec::new();
        for flow in state.verifications.all_mut() {
            if !flow.is_finished() && flow.created_ms.saturating_add(TIMEOUT_MS) < now {
                let code = CancelCode::Timeout;
                outs.push((
                    flow.other_user.clone(),
                    flow.cancel(code.clone(), flow::reason_of(&code)),
                ));
                expired.push(flow.snapshot());
            }
        }
        for (user, out) in outs {
            queue(&user, out, changes)?;
        }
        Ok(expired)
    }

    /// One message. Returns the flow's new state if it changed.
    fn receive(
        &self,
        state: &mut State,
        sender: &UserId,
        id: &TransactionId,
        message: Incoming,
        changes: &mut Changes,
    ) -> Result<Option<Verification>, CryptoError> {
        if let Incoming::Request(request) = message {
            return Ok(self.receive_request(state, sender, request));
        }
        let now = state.now_ms();
        let keys = match message {
            Incoming::Mac(_) => self.flow_keys(state, id)?,
            _ => FlowKeys::default(),
        };
        let own = self.own();
        let Some(flow) = state
            .verifications
            .get_mut(id.as_str())
            .filter(|f| f.other_user == sender)
        else {
            debug!(%sender, %id, "verification message for an unknown transaction");
            return Ok(None);
        };
        if flow.is_finished() {
            return Ok(None);
        }
        let before = flow.snapshot().state;
        flow.touched_ms = now;
        let step: Step = match message {
            Incoming::Request(_) => Ok(Vec::new()),
            Incoming::Ready(ready) => flow.on_ready(&ready, &own),
            Incoming::Start(start, canonical) => flow.on_start(&start, &canonical, &own),
            Incoming::Accept(accept) => flow.on_accept(&accept),
            Incoming::Key(key) => flow.on_key(&key, &own),
            Incoming::Mac(mac) => flow.on_mac(mac, &own, keys.theirs()),
            Incoming::Done(_) => flow.on_done(),
            Incoming::Cancel(cancel) => Ok(flow.on_cancel(&cancel)),
        };
        self.after_step(state, id, before, step, changes)
    }

    /// Queue what a step produced (or the cancel its error calls for) and record the trust
    /// a completed flow established. Returns the flow's new state if it changed.
    fn after_step(
        &self,
        state: &mut State,
        id: &TransactionId,
        before: VerificationState,
        step: Step,
        changes: &mut Changes,
    ) -> Result<Option<Verification>, CryptoError> {
        let Some(flow) = state.verifications.get_mut(id.as_str()) else {
            return Ok(None);
        };
        let outs = match step {
            Ok(outs) => outs,
            Err(code) => {
                warn!(flow = %id, user = %flow.other_user, ?code, "verification cancelled");
                flow.cancel(code.clone(), flow::reason_of(&code))
            }
        };
        queue(&flow.other_user.clone(), outs, changes)?;
        let now = flow.snapshot();
        if now.state == before {
            return Ok(None);
        }
        if let VerificationState::Done { identity_verified } = now.state {
            self.record_trust(state, &now, identity_verified)?;
        }
        Ok(Some(now))
    }

    /// A new request: kept if it is recent, offers SAS, and there is room.
    fn receive_request(
        &self,
        state: &mut State,
        sender: &UserId,
        request: RequestContent,
    ) -> Option<Verification> {
        let now = state.now_ms();
        let sent = u64::from(request.timestamp.get());
        let fresh = sent.saturating_add(TIMEOUT_MS) >= now && sent <= now + FUTURE_SKEW_MS;
        let from_self = sender == self.ctx.user_id && request.from_device == self.ctx.device_id;
        if !fresh || from_self || !request.methods.contains(&VerificationMethod::SasV1) {
            debug!(%sender, fresh, "verification request ignored");
            return None;
        }
        let flow = Flow::incoming(
            request.transaction_id,
            sender.to_owned(),
            request.from_device,
            now,
        );
        let snapshot = flow.snapshot();
        if !state.verifications.insert(flow) {
            debug!(%sender, "verification request ignored: too many verifications");
            return None;
        }
        info!(%sender, flow = %snapshot.flow_id, "verification requested");
        Some(snapshot)
    }

    /// The keys the MACs of flow `id` are about: ours, and those we hold for the other side.
    fn flow_keys(&self, state: &State, id: &TransactionId) -> Result<FlowKeys, CryptoError> {
        let ours = self.own_master_key()?;
        let own_device_key = state.account.ed25519();
        let Some(flow) = state.verifications.get(id.as_str()) else {
            return Ok(FlowKeys::default());
        };
        let Some(device) = flow.other_device.clone() else {
            return Ok(FlowKeys::default());
        };
        let user: &UserId = &flow.other_user;
        let their_device_key = self
            .ctx
            .store
            .devices(&[user])?
            .into_iter()
            .find(|d| d.device_id == device && !d.deleted)
            .map(|d| d.ed25519);
        let their_master = Identities::new(self.ctx)
            .identity(user)?
            .map(|i| i.master_key);
        Ok(FlowKeys {
            own: flow::own_keys(self.ctx.device_id, own_device_key, ours),
            device: Some(device),
            their_device_key,
            their_master,
        })
    }

    /// Our master key, if we vouch for it: we hold the private keys, or verified it.
    fn own_master_key(&self) -> Result<Option<String>, CryptoError> {
        let identities = Identities::new(self.ctx);
        if let Some(keys) = identities.own_cross_signing()? {
            return Ok(Some(keys.master_public()));
        }
        Ok(identities
            .identity(self.ctx.user_id)?
            .filter(|i| i.is_verified())
            .map(|i| i.master_key))
    }

    /// A completed flow: the device is verified, and the identity if its key was vouched for.
    fn record_trust(
        &self,
        state: &mut State,
        done: &Verification,
        identity_verified: bool,
    ) -> Result<(), CryptoError> {
        let Some(device) = &done.other_device else {
            return Ok(());
        };
        info!(user = %done.other_user, %device, identity_verified, "verification done");
        DeviceTracker::new(self.ctx).set_local_trust(
            state,
            &done.other_user,
            device,
            LocalTrust::Verified,
        )?;
        if identity_verified {
            Identities::new(self.ctx).verify_identity(state, &done.other_user)?;
        }
        Ok(())
    }
}

/// The app's calls.
impl Verifier<'_> {
    /// Ask `targets` of `user` to verify with us.
    pub(crate) fn request(
        &self,
        state: &mut State,
        user: &UserId,
        targets: Vec<OwnedDeviceId>,
        changes: &mut Changes,
    ) -> Result<Verification, CryptoError> {
        if targets.is_empty() {
            return Err(CryptoError::InvalidInput(format!(
                "no device of {user} to verify"
            )));
        }
        let now = state.now_ms();
        let id = TransactionId::new();
        let flow = Flow::outgoing(id.clone(), user.to_owned(), targets.clone(), now);
        let snapshot = flow.snapshot();
        if !state.verifications.insert(flow) {
            return Err(CryptoError::InvalidInput(
                "too many verifications in progress".into(),
            ));
        }
        let timestamp = MilliSecondsSinceUnixEpoch(UInt::new_saturating(now));
        let outs = targets
            .into_iter()
            .map(|device| Out {
                device,
                content: RequestContent::new(
                    self.ctx.device_id.to_owned(),
                    id.clone(),
                    vec![VerificationMethod::SasV1],
                    timestamp,
                )
                .into(),
            })
            .collect();
        queue(user, outs, changes)?;
        Ok(snapshot)
    }

    /// Run an app call on flow `id`: `call` gets the flow, our ids and the keys.
    pub(crate) fn act(
        &self,
        state: &mut State,
        id: &TransactionId,
        changes: &mut Changes,
        call: impl FnOnce(&mut Flow, &Own<'_>, FlowKeys) -> Step,
    ) -> Result<Verification, CryptoError> {
        let keys = self.flow_keys(state, id)?;
        let own = self.own();
        let now = state.now_ms();
        let flow = state
            .verifications
            .get_mut(id.as_str())
            .ok_or_else(|| CryptoError::InvalidInput(format!("no verification {id}")))?;
        let before = flow.snapshot().state;
        let step = call(flow, &own, keys);
        if step
            .as_ref()
            .is_err_and(|c| *c == CancelCode::UnexpectedMessage)
        {
            // The app called at the wrong moment: an error for it, not a reason to cancel.
            return Err(CryptoError::InvalidInput(format!(
                "verification {id} is not waiting for that"
            )));
        }
        flow.touched_ms = now;
        self.after_step(state, id, before.clone(), step, changes)?;
        state
            .verifications
            .get(id.as_str())
            .map(Flow::snapshot)
            .ok_or_else(|| CryptoError::InvalidInput(format!("no verification {id}")))
    }
}

/// The keys a flow's MACs are about.
#[derive(Default)]
pub(crate) struct FlowKeys {
    /// What we vouch for: `(key id, public key)`.
    pub own: Vec<(String, String)>,
    device: Option<OwnedDeviceId>,
    their_device_key: Option<String>,
    their_master: Option<String>,
}

impl FlowKeys {
    /// Look-up of the keys we hold for the other side.
    pub(crate) fn theirs(&self) -> impl Fn(&str) -> Option<String> + use<> {
        flow::their_keys(
            self.device.as_deref(),
            self.their_device_key.clone(),
            self.their_master.clone(),
        )
    }
}

/// Store `outs` as to-device messages to `user`, one request each, in order.
fn queue(user: &UserId, outs: Vec<Out>, changes: &mut Changes) -> Result<(), CryptoError> {
    let user = user.to_owned();
    for out in outs {
        let content = serde_json::to_value(&out.content)
            .map_err(|e| CryptoError::CorruptState(e.to_string()))?;
        changes.crypto.pending_to_device.push(PendingToDevice {
            txn_id: TransactionId::new().to_string(),
            event_type: out.event_type(),
            messages_json: messages_json(&[(&user, &out.device)], content)?,
            room_key: None,
        });
    }
    Ok(())
}
