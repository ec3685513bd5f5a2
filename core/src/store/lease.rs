//! The cross-process lease on the crypto state: the app and a push-notification extension
//! (two processes, one store) must not both read the Olm account or a Megolm session, change
//! it and write it back, or both would use the same ratchet step or one-time key id.
//!
//! One lease row: its holder, a fencing token (bumped each time another holder takes it)
//! and an expiry (so a process killed or suspended while holding it does not block the
//! others for ever). A machine takes it before touching its state and gives it back after;
//! every write it makes carries the holder and token ([`LeaseFence`]) and is refused
//! ([`StoreError::LeaseLost`](super::StoreError::LeaseLost)) if the lease passed to someone
//! else meanwhile, and renews it otherwise.

/// What a write made under the lease carries: who holds it, the token it was taken with,
/// and how long the write extends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFence {
    /// The holder (one id per machine instance).
    pub holder: String,
    /// The token the lease was taken with.
    pub token: u64,
    /// The lease is extended to at least this time (milliseconds since the epoch).
    pub renew_until_ms: u64,
}

/// The answer to [`Store::acquire_lease`](super::Store::acquire_lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAttempt {
    /// Held now, with this token (the same one while the holder keeps it).
    Acquired {
        /// Fencing token.
        token: u64,
    },
    /// Another holder has it until this time (milliseconds since the epoch), unless it gives
    /// it back sooner.
    HeldByOther {
        /// When it expires.
        until_ms: u64,
    },
}

/// The lease as stored: holder (`""`: nobody), token, expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub holder: String,
    pub token: u64,
    pub expires_ms: u64,
}

impl LeaseRow {
    /// `holder` asks for the lease at `now_ms` until `until_ms`: the new row, or who has it.
    pub(crate) fn acquire(
        &self,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<LeaseRow, LeaseAttempt> {
        let free = self.holder.is_empty() || self.expires_ms <= now_ms;
        if self.holder != holder && !free {
            return Err(LeaseAttempt::HeldByOther {
                until_ms: self.expires_ms,
            });
        }
        let token = if self.holder == holder && self.expires_ms > now_ms {
            self.token
        } else {
            self.token + 1
        };
        Ok(LeaseRow {
            holder: holder.to_owned(),
            token,
            expires_ms: until_ms,
        })
    }

    /// The row after `holder` gave the lease back (unchanged if it is not theirs).
    pub(crate) fn released(&self, holder: &str) -> LeaseRow {
        if self.holder != holder {
            return self.clone();
        }
        LeaseRow {
            holder: String::new(),
            ..self.clone()
        }
    }

    /// A write under `fence` is allowed if the lease is still the fence's (even expired:
    /// nobody took it since); it renews the lease.
    pub(crate) fn fenced(&self, fence: &LeaseFence) -> Option<LeaseRow> {
        (self.holder == fence.holder && self.token == fence.token).then(|| LeaseRow {
            expires_ms: self.expires_ms.max(fence.renew_until_ms),
            ..self.clone()
        })
    }
}
