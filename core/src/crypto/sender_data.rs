//! Sender data (seed 003): who sent each inbound Megolm session and how far they were
//! trusted, recorded when the session arrives and completed later.
//!
//! Three speeds. *Fast*: the sending device and its owner's identity are in the store, so
//! the data is complete when the session is stored. *Slow*: the device is unknown; the
//! session is stored at once (the sync loop never waits), its sender is re-queried, and the
//! answer completes the data ([`SenderDataMachine::reevaluate`]). *Background retry*: the
//! answer did not list the device; the session is given a persisted retry time and
//! [`SenderDataMachine::retry_due`] (run by the background scheduler) re-queries its
//! sender with a growing delay. Data only ever improves ([`SenderData::improves_on`]).

use std::collections::{BTreeSet, HashMap};

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use tracing::debug;

use super::context::sub_machine;
use super::devices::Device;
use super::error::CryptoError;
use super::identity::{DeviceSignature, SignatureCache};
use super::state::State;
use crate::store::{
    Changes, CryptoChanges, CryptoStore, DeviceRecord, InboundGroupSessionRecord, LocalTrust,
    SenderData, SenderDataRetry, SenderDataUpdate, SenderTrust, SessionSender, TrackedUser,
    TrackingState, UserIdentityRecord,
};

/// First delay of the background retry of an unknown sending device.
const RETRY_BASE_MS: u64 = 60_000;
/// Longest delay between retries.
const RETRY_MAX_MS: u64 = 24 * 3_600_000;
/// Retries before giving up (the session stays "unknown device"; a later device-list
/// change of the sender still re-evaluates it).
const MAX_RETRIES: u32 = 12;
/// Sessions retried per background run.
const RETRY_BATCH: usize = 500;

/// The devices and identities of some users, from the store overlaid with records not
/// committed yet: what sender data is computed from.
pub(crate) struct TrustView<'c> {
    /// Devices by owner and Curve25519 key (a deleted device may share its key).
    devices: HashMap<(OwnedUserId, String), Vec<DeviceRecord>>,
    identities: HashMap<OwnedUserId, UserIdentityRecord>,
    /// Cross-signing signature checks already made (one Ed25519 verification per device
    /// and signed keys, however many sessions it sent or rooms it is in).
    signatures: &'c SignatureCache,
}

impl<'c> TrustView<'c> {
    /// Load `users`' devices and identities; `pending` records win over stored ones.
    pub(crate) fn load(
        store: &dyn CryptoStore,
        signatures: &'c SignatureCache,
        users: &[&UserId],
        pending: &CryptoChanges,
    ) -> Result<Self, CryptoError> {
        let wanted: BTreeSet<&UserId> = users.iter().copied().collect();
        let fresh = pending
            .devices
            .iter()
            .filter(|d| wanted.contains(&*d.user_id));
        // Later records (the pending ones) replace stored ones of the same device.
        let by_id: HashMap<(OwnedUserId, OwnedDeviceId), DeviceRecord> = store
            .devices(users)?
            .into_iter()
            .chain(fresh.cloned())
            .map(|d| ((d.user_id.clone(), d.device_id.clone()), d))
            .collect();
        let mut devices: HashMap<(OwnedUserId, String), Vec<DeviceRecord>> = HashMap::new();
        for d in by_id.into_values() {
            devices
                .entry((d.user_id.clone(), d.curve25519.clone()))
                .or_default()
                .push(d);
        }
        Self::with_devices(store, signatures, devices, users, pending)
    }

    /// The view needed to judge one event: the one device of `user` owning `sender_key`
    /// (not all their devices) and `user`'s identity.
    pub(crate) fn for_sender(
        store: &dyn CryptoStore,
        signatures: &'c SignatureCache,
        user: &UserId,
        sender_key: &str,
        pending: &CryptoChanges,
    ) -> Result<Self, CryptoError> {
        let fresh = pending
            .devices
            .iter()
            .rev()
            .find(|d| d.user_id == user && d.curve25519 == sender_key)
            .cloned();
        let device = match fresh {
            Some(d) => Some(d),
            None => store.device_by_curve25519(user, sender_key)?,
        };
        let devices = HashMap::from([(
            (user.to_owned(), sender_key.to_owned()),
            device.into_iter().collect(),
        )]);
        Self::with_devices(store, signatures, devices, &[user], pending)
    }

    fn with_devices(
        store: &dyn CryptoStore,
        signatures: &'c SignatureCache,
        devices: HashMap<(OwnedUserId, String), Vec<DeviceRecord>>,
        users: &[&UserId],
        pending: &CryptoChanges,
    ) -> Result<Self, CryptoError> {
        let mut identities: HashMap<OwnedUserId, UserIdentityRecord> = store
            .user_identities(users)?
            .into_iter()
            .map(|i| (i.user_id.clone(), i))
            .collect();
        for i in &pending.user_identities {
            if users.contains(&&*i.user_id) {
                identities.insert(i.user_id.clone(), i.clone());
            }
        }
        Ok(Self {
            devices,
            identities,
            signatures,
        })
    }

    /// The device's cross-signing state (checked once per device and signed keys).
    fn signature(&self, device: &DeviceRecord) -> DeviceSignature {
        self.signatures
            .check(device, self.identity(&device.user_id))
    }

    /// A device as the app sees it, with its cross-signing and verification state.
    pub(crate) fn app_device(&self, record: &DeviceRecord) -> Device {
        let (signature, owner_verified) = self.standing(record);
        let cross_signed = signature == DeviceSignature::CrossSigned;
        let by_hand = record.local_trust == LocalTrust::Verified;
        Device {
            cross_signed,
            verified: by_hand || (cross_signed && owner_verified),
            ..Device::from(record)
        }
    }

    /// Whether a device counts as verified: by hand, or (while the user has not decided
    /// otherwise about it) cross-signed by an identity the user verified.
    pub(crate) fn is_verified(&self, record: &DeviceRecord) -> bool {
        match record.local_trust {
            LocalTrust::Verified => true,
            LocalTrust::Unset => self.app_device(record).verified,
            LocalTrust::Blacklisted | LocalTrust::Ignored => false,
        }
    }

    /// A device's cross-signing state and whether the user verified its owner's identity
    /// (what a sharing policy decides by).
    pub(crate) fn standing(&self, device: &DeviceRecord) -> (DeviceSignature, bool) {
        let owner = self.identity(&device.user_id);
        (
            self.signature(device),
            owner.is_some_and(|i| i.is_verified()),
        )
    }

    /// The device of `user` owning `sender_key` and claiming `signing_key`.
    fn device(&self, user: &UserId, sender_key: &str, signing_key: &str) -> Option<&DeviceRecord> {
        self.devices
            .get(&(user.to_owned(), sender_key.to_owned()))?
            .iter()
            .find(|d| d.ed25519 == signing_key)
    }

    /// The identity of `user`, if known.
    pub(crate) fn identity(&self, user: &UserId) -> Option<&UserIdentityRecord> {
        self.identities.get(user)
    }

    /// Sender data of a session sent by `user` from the device with these keys.
    pub(crate) fn sender_data(
        &self,
        user: &UserId,
        sender_key: &str,
        signing_key: &str,
        legacy: bool,
    ) -> SenderData {
        let Some(device) = self.device(user, sender_key, signing_key) else {
            return SenderData::unknown(legacy);
        };
        let identity = self.identity(user);
        let (trust, master_key) = match self.signature(device) {
            DeviceSignature::Tampered => (SenderTrust::Tampered, None),
            DeviceSignature::Unsigned => (SenderTrust::DeviceOnly, None),
            DeviceSignature::CrossSigned => {
                let identity = identity.filter(|i| i.user_id == user);
                let trust = match identity {
                    Some(i) if i.has_verification_violation() => SenderTrust::VerificationViolation,
                    Some(i) if i.is_verified() => SenderTrust::Verified,
                    _ => SenderTrust::CrossSigned,
                };
                (trust, identity.map(|i| i.master_key.clone()))
            }
        };
        SenderData {
            trust,
            master_key,
            legacy,
            retry: None,
        }
    }

    /// The trust to judge a message by now: the recorded level, or what the store says of
    /// its device now when the record is still incomplete (the session came from a
    /// forwarded key of unknown origin, or its data is being completed), raised to
    /// [`SenderTrust::Verified`] when the user has since verified the identity that signed
    /// the device, or verified the device itself by hand. Tampering is final.
    pub(crate) fn effective(
        &self,
        user: &UserId,
        sender_key: &str,
        signing_key: &str,
        data: &SenderData,
    ) -> SenderTrust {
        let mut data = std::borrow::Cow::Borrowed(data);
        if matches!(
            data.trust,
            SenderTrust::UnknownDevice | SenderTrust::DeviceOnly
        ) {
            let live = self.sender_data(user, sender_key, signing_key, data.legacy);
            if live.improves_on(&data) {
                data = std::borrow::Cow::Owned(live);
            }
        }
        if data.trust == SenderTrust::Tampered {
            return SenderTrust::Tampered;
        }
        let device = self.device(user, sender_key, signing_key);
        if device.is_some_and(|d| d.local_trust == LocalTrust::Verified) {
            return SenderTrust::Verified;
        }
        let verified_now = self.identity(user).is_some_and(|i| {
            i.is_verified() && data.master_key.as_deref() == Some(i.master_key.as_str())
        });
        if data.trust == SenderTrust::CrossSigned && verified_now {
            return SenderTrust::Verified;
        }
        data.trust
    }
}

/// The fast lane: fill in the sender data of sessions a batch is about to store, from the
/// store and `pending`. A session whose device is unknown stays "unknown device" (its sender
/// is re-queried by the batch; the answer completes it).
pub(crate) fn record_at_reception<'r>(
    store: &dyn CryptoStore,
    signatures: &SignatureCache,
    sessions: impl IntoIterator<Item = &'r mut InboundGroupSessionRecord>,
    pending: &CryptoChanges,
) -> Result<(), CryptoError> {
    let sessions: Vec<&mut InboundGroupSessionRecord> = sessions
        .into_iter()
        .filter(|s| s.sender_user.is_some())
        .collect();
    if sessions.is_empty() {
        return Ok(());
    }
    let users: BTreeSet<&UserId> = sessions
        .iter()
        .filter_map(|s| s.sender_user.as_deref())
        .collect();
    let users: Vec<&UserId> = users.into_iter().collect();
    let view = TrustView::load(store, signatures, &users, pending)?;
    let computed: Vec<SenderData> = sessions
        .iter()
        .map(|s| {
            let user = s.sender_user.as_deref().unwrap_or(users[0]);
            view.sender_data(user, &s.sender_key, &s.signing_key, s.sender_data.legacy)
        })
        .collect();
    for (session, data) in sessions.into_iter().zip(computed) {
        session.sender_data = SenderData::merged(&session.sender_data, &data);
    }
    Ok(())
}

sub_machine! {
    /// Completing and improving the sender data of stored sessions.
    SenderDataMachine
}

impl SenderDataMachine<'_> {
    /// Re-evaluate the stored sessions of `users` whose data may improve, against the store
    /// and `pending` (a `/keys/query` answer not committed yet), adding the improvements to
    /// `pending`. When `answered`, a device still unknown gets a background retry. Returns
    /// the sessions whose data improved.
    pub(crate) fn reevaluate(
        &self,
        state: &State,
        users: &[&UserId],
        answered: bool,
        pending: &mut Changes,
    ) -> Result<Vec<(OwnedRoomId, String)>, CryptoError> {
        let sessions = self.ctx.store.sessions_to_reevaluate(users)?;
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let view = TrustView::load(self.ctx.store, self.ctx.signatures, users, &pending.crypto)?;
        let now = state.now_ms();
        let mut improved = Vec::new();
        for s in sessions {
            let mut data = view.sender_data(
                &s.sender_user,
                &s.sender_key,
                &s.signing_key,
                s.sender_data.legacy,
            );
            if data.trust == SenderTrust::UnknownDevice && answered {
                data.retry = match s.sender_data.retry {
                    // Scheduled by the retry that asked this query: keep it.
                    Some(r) if r.next_ms > now => Some(r),
                    previous => next_retry(previous, now),
                };
            }
            if data.improves_on(&s.sender_data) {
                if data.trust > s.sender_data.trust {
                    improved.push((s.room_id.clone(), s.session_id.clone()));
                }
                pending.crypto.sender_data.push(SenderDataUpdate {
                    room_id: s.room_id,
                    session_id: s.session_id,
                    sender_data: data,
                });
            }
        }
        debug!(improved = improved.len(), "re-evaluated sender data");
        Ok(improved)
    }

    /// The background retry: sessions whose retry is due are re-evaluated from the store;
    /// the senders of those still unknown are re-queried (if tracked) and the sessions
    /// rescheduled. Returns the sessions whose data improved.
    pub(crate) fn retry_due(
        &self,
        state: &mut State,
    ) -> Result<Vec<(OwnedRoomId, String)>, CryptoError> {
        let now = state.now_ms();
        let due = self.ctx.store.sender_data_retries_due(now, RETRY_BATCH)?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let users: BTreeSet<&UserId> = due.iter().map(|s| s.sender_user.as_ref()).collect();
        let users: Vec<&UserId> = users.into_iter().collect();
        let view = TrustView::load(
            self.ctx.store,
            self.ctx.signatures,
            &users,
            &CryptoChanges::default(),
        )?;
        let mut changes = Changes::default();
        let mut improved = Vec::new();
        let mut requery = BTreeSet::new();
        for s in &due {
            let data = self.retried(&view, s, now);
            if data.trust > s.sender_data.trust {
                improved.push((s.room_id.clone(), s.session_id.clone()));
            } else if data.retry.is_some() {
                requery.insert(s.sender_user.clone());
            }
            changes.crypto.sender_data.push(SenderDataUpdate {
                room_id: s.room_id.clone(),
                session_id: s.session_id.clone(),
                sender_data: data,
            });
        }
        changes.crypto.tracked_users = self.requeried(&requery)?;
        self.ctx.save(state, changes)?;
        Ok(improved)
    }

    /// New data of one due session: better data if the store has it, else the next retry
    /// (none after [`MAX_RETRIES`]).
    fn retried(&self, view: &TrustView, s: &SessionSender, now: u64) -> SenderData {
        let old = &s.sender_data;
        let mut data = view.sender_data(&s.sender_user, &s.sender_key, &s.signing_key, old.legacy);
        if data.improves_on(old) && data.trust != SenderTrust::UnknownDevice {
            return data;
        }
        data = old.clone();
        data.retry = next_retry(old.retry, now);
        data
    }

    /// Tracked users among `users`, marked for a new `/keys/query`.
    fn requeried(&self, users: &BTreeSet<OwnedUserId>) -> Result<Vec<TrackedUser>, CryptoError> {
        Ok(self
            .ctx
            .store
            .tracked_users()?
            .into_iter()
            .filter(|t| users.contains(&t.user_id) && t.is_tracked())
            .map(|t| TrackedUser {
                state: TrackingState::PendingDownload,
                sequence: t.sequence + 1,
                ..t
            })
            .collect())
    }
}

/// The retry after `previous` (none once [`MAX_RETRIES`] were made).
fn next_retry(previous: Option<SenderDataRetry>, now: u64) -> Option<SenderDataRetry> {
    let attempts = previous.map_or(0, |r| r.attempts);
    if attempts >= MAX_RETRIES {
        return None;
    }
    let delay = (RETRY_BASE_MS << attempts.min(20)).min(RETRY_MAX_MS);
    Some(SenderDataRetry {
        attempts: attempts + 1,
        next_ms: now.saturating_add(delay),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_then_stop() {
        let mut retry = None;
        let mut delays = Vec::new();
        for _ in 0..MAX_RETRIES {
            retry = next_retry(retry, 1_000);
            delays.push(retry.unwrap().next_ms - 1_000);
        }
        assert_eq!(delays[0], RETRY_BASE_MS);
        assert_eq!(delays[1], 2 * RETRY_BASE_MS);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), RETRY_MAX_MS);
        assert_eq!(next_retry(retry, 1_000), None);
    }
}
