//! Interactive verification (`m.key.verification.*` over to-device messages, SAS with
//! emoji and decimals): with our own other devices and with other users' devices.
//!
//! - `flow.rs`: one verification as a state machine over typed messages, no I/O.
//! - `sas.rs`: the commitment, the short authentication string and the MACs (vodozemac).
//! - `verifier.rs`: the sub-machine: parses what arrives, keeps the flows in memory
//!   (bounded), queues what we send, and records the trust a completed flow established.
//!
//! Verifications live in memory only: one that a restart interrupts times out on the other
//! side and is started again, as with every other client.

mod emoji;
mod flow;
mod sas;
mod verifier;

use std::collections::HashMap;

pub use ruma::events::key::verification::cancel::CancelCode;
use ruma::{OwnedDeviceId, OwnedTransactionId, OwnedUserId};

pub(crate) use flow::{Flow, Out, Own};
pub(crate) use verifier::FlowKeys;
pub(crate) use verifier::Verifier;

/// A flow with no message for this long is cancelled (`m.timeout`), as is a request sent
/// longer ago than this.
pub(crate) const TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// A request dated this far in the future is ignored.
const FUTURE_SKEW_MS: u64 = 5 * 60 * 1000;

/// Flows kept in memory, finished ones included (the oldest finished go first).
const MAX_FLOWS: usize = 48;

/// Unfinished flows with one other user at a time.
const MAX_FLOWS_PER_USER: usize = 4;

/// Requests of others nobody here accepted yet: strangers can send them, so they may take
/// only part of the room, and flows our user starts or accepts always find some.
const MAX_UNANSWERED_REQUESTS: usize = 16;

/// One emoji of the short authentication string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SasEmoji {
    /// The emoji itself.
    pub symbol: String,
    /// Its English name from the specification (apps may translate it).
    pub description: String,
}

/// What the users compare: seven emoji, or three four-digit numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortAuthString {
    /// Seven emoji.
    pub emoji: Vec<SasEmoji>,
    /// Three numbers between 1000 and 9191.
    pub decimals: [u16; 3],
}

/// Where a verification stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerificationState {
    /// We asked; waiting for the other device to accept.
    Requested,
    /// The other device asked; waiting for our user to accept or decline.
    Incoming,
    /// Both accepted; the devices agree on keys.
    Negotiating,
    /// Show the string and ask the user whether the other device shows the same.
    CompareSas(ShortAuthString),
    /// Our user confirmed; waiting for the other side's confirmation.
    Confirmed,
    /// Verified: the other device, and its owner's identity if `identity_verified`.
    Done {
        /// The other user's master key was verified too.
        identity_verified: bool,
    },
    /// Cancelled by `by_us` (our user, or a check that failed here) or by the other side.
    Cancelled {
        /// Why (`m.user`, `m.mismatched_sas`, `m.key_mismatch`, `m.timeout`, ...).
        code: CancelCode,
        /// The reason as given (at most 200 characters from the other side).
        reason: String,
        /// We cancelled.
        by_us: bool,
    },
}

/// One verification as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Its id (the transaction id of its messages).
    pub flow_id: OwnedTransactionId,
    /// The user being verified (our own for another of our devices).
    pub other_user: OwnedUserId,
    /// The device being verified, once known.
    pub other_device: Option<OwnedDeviceId>,
    /// We sent the request.
    pub we_requested: bool,
    /// Where it stands.
    pub state: VerificationState,
}

/// The flows in memory.
#[derive(Default)]
pub(crate) struct Verifications {
    flows: HashMap<OwnedTransactionId, Flow>,
}

impl Verifications {
    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Flow> {
        self.flows.get_mut(id)
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Flow> {
        self.flows.get(id)
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values()
    }

    pub(crate) fn all_mut(&mut self) -> impl Iterator<Item = &mut Flow> {
        self.flows.values_mut()
    }

    /// Some flow is still in progress (and may time out).
    pub(crate) fn any_unfinished(&self) -> bool {
        self.flows.values().any(|f| !f.is_finished())
    }

    /// What we answered may not have been stored: every flow in progress is given up (the
    /// other side times out), rather than waiting for messages that were never sent.
    pub(crate) fn abandon_unfinished(&mut self) -> Vec<Verification> {
        self.flows
            .values_mut()
            .filter(|f| !f.is_finished())
            .map(|f| {
                f.abandon();
                f.snapshot()
            })
            .collect()
    }

    /// Keep `flow` if there is room: finished flows make room, oldest first; unfinished
    /// ones never do. Returns whether it was kept.
    pub(crate) fn insert(&mut self, flow: Flow) -> bool {
        if self.flows.contains_key(&flow.id) {
            return false;
        }
        let with_user = self
            .flows
            .values()
            .filter(|f| !f.is_finished() && f.other_user == flow.other_user)
            .count();
        let unanswered = self.flows.values().filter(|f| f.is_unanswered()).count();
        if with_user >= MAX_FLOWS_PER_USER
            || (flow.is_unanswered() && unanswered >= MAX_UNANSWERED_REQUESTS)
        {
            return false;
        }
        while self.flows.len() >= MAX_FLOWS {
            let oldest = self
                .flows
                .values()
                .filter(|f| f.is_finished())
                .min_by_key(|f| f.touched_ms)
                .map(|f| f.id.clone());
            match oldest {
                Some(id) => self.flows.remove(&id),
                None => return false,
            };
        }
        self.flows.insert(flow.id.clone(), flow);
        true
    }
}
