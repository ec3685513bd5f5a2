//! [`Ctx`]: what every sub-machine works with (the own identity and the store) and the one
//! way they persist what they changed.

use ruma::{DeviceId, UserId};

use super::account::OwnAccount;
use super::error::CryptoError;
use super::identity::SignatureCache;
use super::state::State;
use crate::store::{Changes, LeaseFence, Store};

/// The own user and device and the store; copied into each sub-machine.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub user_id: &'a UserId,
    pub device_id: &'a DeviceId,
    pub store: &'a dyn Store,
    /// Cross-signing signature checks already made.
    pub signatures: &'a SignatureCache,
}

impl Ctx<'_> {
    /// Persist `changes` and remember the resulting generation as our own.
    pub(crate) fn save(&self, state: &mut State, mut changes: Changes) -> Result<(), CryptoError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Refused if another process took the lease since; renews it otherwise.
        changes.lease = state.lease.clone().map(|fence| LeaseFence {
            renew_until_ms: state.now_ms().saturating_add(super::lease::LEASE_MS),
            ..fence
        });
        match self.store.save_changes(changes) {
            Ok(generation) => {
                state.generation = generation;
                Ok(())
            }
            Err(e) => {
                // Nothing was stored: drop in-memory changes too (e.g. a one-time key
                // consumed by a message whose batch failed), so a retry sees exactly the
                // stored state.
                if let Ok(Some(record)) = self.store.account()
                    && let Ok(account) = OwnAccount::from_record(&record)
                {
                    state.account = account;
                }
                Err(e.into())
            }
        }
    }
}

/// A sub-machine: a view of the identity and the store, with the methods of one
/// responsibility. Made by the facade (`OlmMachine`) for each call.
macro_rules! sub_machine {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub(crate) struct $name<'a> {
            ctx: $crate::crypto::context::Ctx<'a>,
        }

        impl<'a> $name<'a> {
            pub(crate) fn new(ctx: $crate::crypto::context::Ctx<'a>) -> Self {
                Self { ctx }
            }
        }
    };
}
pub(crate) use sub_machine;
