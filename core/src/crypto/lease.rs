//! The machine's side of the cross-process lease (`store/lease.rs`): [`OlmMachine::lock`]
//! takes it, waiting for another process to give it back or for its lease to expire, and
//! the [`StateGuard`] it returns gives it back when dropped. Every write made meanwhile is
//! fenced with it (`Ctx::save`), so a process paused past its lease cannot overwrite what
//! the one that took over wrote.

use std::ops::{Deref, DerefMut};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::account::OwnAccount;
use super::error::CryptoError;
use super::machine::OlmMachine;
use super::state::State;
use crate::store::{LeaseAttempt, LeaseFence, StoreError};

/// How long a lease lasts without a write renewing it. Long enough for the longest step
/// between two writes (decrypting one sync's timelines), short enough that a process
/// killed while holding it blocks the others only briefly.
pub(crate) const LEASE_MS: u64 = 10_000;

/// How long [`OlmMachine::lock`] waits for another process's lease before failing.
const LEASE_WAIT: Duration = Duration::from_secs(15);

/// The machine's state, locked in this process and leased across processes until dropped.
pub(crate) struct StateGuard<'m> {
    machine: &'m OlmMachine,
    state: MutexGuard<'m, State>,
}

impl Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if self.state.lease.take().is_some()
            && let Err(e) = self.machine.store.release_lease(&self.machine.holder)
        {
            // It expires on its own.
            warn!(error = %e, "could not give the crypto-state lease back");
        }
    }
}

impl OlmMachine {
    /// Lock the state: in this process (a mutex), and across processes sharing the store
    /// (the lease). If another writer moved the store on, the account is reloaded first.
    pub(crate) fn lock(&self) -> Result<StateGuard<'_>, CryptoError> {
        // A poisoned lock means a panic elsewhere; the state itself is still consistent with
        // the store because every change is persisted before it is used.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let token = self.take_lease(&state)?;
        state.lease = Some(LeaseFence {
            holder: self.holder.clone(),
            token,
            renew_until_ms: 0,
        });
        let mut guard = StateGuard {
            machine: self,
            state,
        };
        self.reload_if_moved(&mut guard)?;
        Ok(guard)
    }

    fn take_lease(&self, state: &State) -> Result<u64, CryptoError> {
        let deadline = Instant::now() + LEASE_WAIT;
        loop {
            let now = state.now_ms();
            let attempt =
                self.store
                    .acquire_lease(&self.holder, now, now.saturating_add(LEASE_MS))?;
            match attempt {
                LeaseAttempt::Acquired { token } => return Ok(token),
                LeaseAttempt::HeldByOther { until_ms } => {
                    if Instant::now() >= deadline {
                        return Err(CryptoError::Store(StoreError::LeaseBusy));
                    }
                    let wait = until_ms.saturating_sub(now).clamp(2, 20);
                    debug!(wait_ms = wait, "crypto state leased by another process");
                    std::thread::sleep(Duration::from_millis(wait));
                }
            }
        }
    }

    /// Another writer (a process, or a paused holder's successor) moved the store on: what
    /// this process holds in memory (the account) is read again.
    fn reload_if_moved(&self, state: &mut State) -> Result<(), CryptoError> {
        let generation = self.store.generation()?;
        if generation != state.generation {
            if let Some(record) = self.store.account()? {
                debug!("store changed by another writer; reloading the account");
                state.account = OwnAccount::from_record(&record)?;
            }
            state.generation = generation;
        }
        Ok(())
    }
}
