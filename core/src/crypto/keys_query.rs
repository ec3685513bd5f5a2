//! `/keys/query` answers: verifying and storing other users' devices.
//!
//! Every device is checked on its own; one that fails (bad id, bad signature, changed keys,
//! a Curve25519 key another device already has) is refused with a reason and the rest of
//! the answer is stored. Only users we asked about are looked at, at most
//! [`MAX_DEVICES_PER_USER`] devices each.

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::api::client::keys::get_keys;
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::Value;
use tracing::warn;

use super::context::sub_machine;
use super::devices::Device;
use super::devices::verify_device_keys;
use super::error::{CryptoError, DeviceKeyError};
use super::identities::Identities;
use super::key_requests::KeyRequests;
use super::outcomes::QueryOutcome;
use super::requests::{OutgoingKind, OutgoingRequest};
use super::responses::KeysQueryResponse;
use super::sender_data::{SenderDataMachine, TrustView};
use super::state::{State, TrackerState};
use crate::store::quota::MAX_DEVICES_PER_USER;
use crate::store::{Changes, CryptoChanges, DeviceRecord, LocalTrust, TrackedUser, TrackingState};

/// First back-off of a server whose key queries fail.
const BACKOFF_BASE_MS: u64 = 15_000;
/// Longest back-off.
const BACKOFF_MAX_MS: u64 = 15 * 60_000;
/// Users per `/keys/query` request.
const QUERY_BATCH: usize = 250;

type DeviceKey = (OwnedUserId, OwnedDeviceId);

/// A device of the answer that passed its own checks, before the checks against others.
struct Candidate {
    record: DeviceRecord,
    /// We did not know this device (or it was deleted).
    new: bool,
}

sub_machine! {
    /// Device tracking: who is tracked, `/keys/query` requests and answers, local trust.
    DeviceTracker
}

impl DeviceTracker<'_> {
    /// The server answered a `/keys/query`.
    pub(crate) fn mark_keys_query_sent(
        &self,
        state: &mut State,
        request_id: &str,
        response: &KeysQueryResponse,
    ) -> Result<QueryOutcome, CryptoError> {
        let requested = state
            .tracker
            .queries_in_flight
            .remove(request_id)
            .ok_or_else(|| CryptoError::UnknownRequest(request_id.to_owned()))?;
        let asked: HashSet<&UserId> = requested.iter().map(|(u, _)| u.as_ref()).collect();
        let answered: BTreeMap<&UserId, &BTreeMap<String, Value>> = response
            .device_keys
            .iter()
            .map(|(user, devices)| (user.as_ref(), devices))
            .filter(|(user, _)| asked.contains(user))
            .collect();
        let now = state.now_ms();
        state
            .tracker
            .back_off_failed_servers(&requested, now, |user| {
                let failed = response.failures.contains(user.server_name().as_str());
                failed || !answered.contains_key(user)
            });
        for user in answered.keys() {
            state.tracker.solo_users.remove(*user);
            state.tracker.user_backoff.remove(*user);
        }

        let users: Vec<&UserId> = answered.keys().copied().collect();
        let stored: HashMap<DeviceKey, DeviceRecord> = self
            .ctx
            .store
            .devices(&users)?
            .into_iter()
            .map(|d| ((d.user_id.clone(), d.device_id.clone()), d))
            .collect();
        let mut outcome = QueryOutcome::default();
        let mut candidates = Vec::new();
        for (user, devices) in &answered {
            candidates.extend(self.check_devices(user, devices, &stored, &mut outcome));
        }
        let own_curve = state.account.curve25519();
        let accepted = self.without_key_conflicts(candidates, &own_curve, &mut outcome)?;
        let mut changes = Changes::default();
        for candidate in accepted {
            if candidate.new {
                let id = (
                    candidate.record.user_id.clone(),
                    candidate.record.device_id.clone(),
                );
                outcome.new_devices.push(id);
            }
            outcome.updated_devices += 1;
            changes.crypto.devices.push(candidate.record);
        }
        for (user, devices) in &answered {
            removed_devices(user, devices, &stored, &mut changes, &mut outcome);
        }
        outcome.affected_rooms = self.rooms_affected_by(&outcome)?;
        Identities::new(self.ctx).update_identities(
            &users,
            response,
            &mut changes,
            &mut outcome,
        )?;
        outcome.improved_sessions =
            SenderDataMachine::new(self.ctx).reevaluate(state, &users, true, &mut changes)?;
        changes.crypto.tracked_users =
            self.settle_tracking(&requested, |user| answered.contains_key(user))?;
        self.ctx.save(state, changes)?;
        Ok(outcome)
    }

    /// The devices of one user that pass their own checks and changed, at most
    /// [`MAX_DEVICES_PER_USER`] (the known ones first).
    fn check_devices(
        &self,
        user: &UserId,
        devices: &BTreeMap<String, Value>,
        stored: &HashMap<DeviceKey, DeviceRecord>,
        outcome: &mut QueryOutcome,
    ) -> Vec<Candidate> {
        let known = |id: &OwnedDeviceId| stored.contains_key(&(user.to_owned(), id.clone()));
        let mut ids: Vec<(OwnedDeviceId, &Value)> = devices
            .iter()
            .map(|(id, keys)| (OwnedDeviceId::from(id.as_str()), keys))
            .collect();
        ids.sort_by_cached_key(|(id, _)| !known(id));
        let mut out = Vec::new();
        for (kept, (device_id, keys)) in ids.into_iter().enumerate() {
            if user == self.ctx.user_id && device_id == self.ctx.device_id {
                continue;
            }
            let verdict = if kept >= MAX_DEVICES_PER_USER {
                Err(DeviceKeyError::TooManyDevices(MAX_DEVICES_PER_USER))
            } else {
                verify_device_keys(user, &device_id, keys)
                    .and_then(|record| compare_with_stored(record, stored))
            };
            match verdict {
                Ok(Some(candidate)) => out.push(candidate),
                Ok(None) => {}
                Err(e) => refuse(outcome, user, &device_id, e),
            }
        }
        out
    }

    /// Refuse devices whose Curve25519 key is ours or already another live device's, and
    /// new devices that claim the same key as each other (we cannot tell which one has it).
    fn without_key_conflicts(
        &self,
        candidates: Vec<Candidate>,
        own_curve: &str,
        outcome: &mut QueryOutcome,
    ) -> Result<Vec<Candidate>, CryptoError> {
        let keys: Vec<&str> = candidates
            .iter()
            .map(|c| c.record.curve25519.as_str())
            .collect();
        let holders: HashMap<String, DeviceRecord> = self
            .ctx
            .store
            .devices_with_curve25519(&keys)?
            .into_iter()
            .filter(|d| !d.deleted)
            .map(|d| (d.curve25519.clone(), d))
            .collect();
        // Devices once caught squatting (blacklisted when a key's holder contradicted them)
        // do not contest a key: they lose it to any other claimant.
        let squatter =
            |c: &Candidate| c.record.deleted || c.record.local_trust == LocalTrust::Blacklisted;
        let mut claims: HashMap<String, usize> = HashMap::new();
        for c in candidates.iter().filter(|c| !squatter(c)) {
            *claims.entry(c.record.curve25519.clone()).or_default() += 1;
        }
        let claimed: HashSet<String> = claims.keys().cloned().collect();
        let contested: HashSet<String> = claims
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, _)| k)
            .collect();
        let mut accepted = Vec::new();
        for c in candidates {
            let (user, device, key) =
                (&c.record.user_id, &c.record.device_id, &c.record.curve25519);
            let taken = match holders.get(key) {
                Some(h) if (&h.user_id, &h.device_id) != (user, device) => Some(h.clone()),
                _ if key == own_curve => Some(self.own_device_record()),
                _ => None,
            };
            let lost = squatter(&c) && claimed.contains(key);
            let error = match taken {
                Some(holder) => Some(DeviceKeyError::Curve25519Taken {
                    user_id: holder.user_id,
                    device_id: holder.device_id,
                }),
                None if contested.contains(key) || lost => {
                    Some(DeviceKeyError::Curve25519Contested)
                }
                None => None,
            };
            match error {
                Some(e) => refuse(outcome, user, device, e),
                None => accepted.push(c),
            }
        }
        Ok(accepted)
    }

    /// A stand-in record naming our own device (for "the key is ours").
    fn own_device_record(&self) -> DeviceRecord {
        DeviceRecord {
            user_id: self.ctx.user_id.to_owned(),
            device_id: self.ctx.device_id.to_owned(),
            curve25519: String::new(),
            ed25519: String::new(),
            algorithms: Vec::new(),
            display_name: None,
            keys_json: String::new(),
            local_trust: Default::default(),
            deleted: false,
        }
    }

    /// Encrypted rooms shared with users whose devices were added or removed.
    fn rooms_affected_by(&self, outcome: &QueryOutcome) -> Result<Vec<OwnedRoomId>, CryptoError> {
        let churned: HashSet<&UserId> = outcome
            .new_devices
            .iter()
            .chain(&outcome.removed_devices)
            .map(|(u, _)| u.as_ref())
            .collect();
        if churned.is_empty() {
            return Ok(Vec::new());
        }
        let churned: Vec<&UserId> = churned.into_iter().collect();
        Ok(self.ctx.store.encrypted_rooms_with(&churned)?)
    }

    /// `/keys/query` requests for the tracked users whose device lists are outdated (at most
    /// 250 users each; users of a refused query alone), their states persisted as
    /// downloading. Users of backed-off servers, and users backed off alone, wait.
    pub(crate) fn key_queries(
        &self,
        state: &mut State,
    ) -> Result<Vec<OutgoingRequest>, CryptoError> {
        let in_flight: HashSet<OwnedUserId> = state
            .tracker
            .queries_in_flight
            .values()
            .flatten()
            .map(|(u, _)| u.clone())
            .collect();
        let now = state.now_ms();
        let waiting = |user: &UserId| {
            let server = state.tracker.server_backoff.get(user.server_name());
            let alone = state.tracker.user_backoff.get(user);
            server
                .into_iter()
                .chain(alone)
                .any(|(_, until)| *until > now)
        };
        // `Downloading` without a query in flight: the answer was lost with a restart.
        let outdated: Vec<TrackedUser> = self
            .ctx
            .store
            .tracked_users()?
            .into_iter()
            .filter(|u| {
                u.needs_download() && !in_flight.contains(&u.user_id) && !waiting(&u.user_id)
            })
            .map(|u| TrackedUser {
                state: TrackingState::Downloading,
                ..u
            })
            .collect();
        let changes = Changes::from(CryptoChanges {
            tracked_users: outdated.clone(),
            ..Default::default()
        });
        self.ctx.save(state, changes)?;
        let (solo, together): (Vec<TrackedUser>, Vec<TrackedUser>) = outdated
            .into_iter()
            .partition(|u| state.tracker.solo_users.contains(&u.user_id));
        let batches = solo
            .chunks(1)
            .chain(together.chunks(QUERY_BATCH))
            .map(<[TrackedUser]>::to_vec)
            .collect::<Vec<_>>();
        Ok(batches
            .into_iter()
            .map(|batch| {
                let id = state.ids.next("query");
                state.tracker.query_request(id, &batch)
            })
            .collect())
    }

    /// A query failed; its users go back to pending download and are offered again. When
    /// the server refused it for good (`permanent`), its users are queried alone from then
    /// on (one of them may be why), and a user refused alone is backed off.
    pub(crate) fn mark_query_failed(
        &self,
        state: &mut State,
        request_id: &str,
        permanent: bool,
    ) -> Result<(), CryptoError> {
        let Some(requested) = state.tracker.queries_in_flight.remove(request_id) else {
            return Ok(());
        };
        if permanent {
            match requested.as_slice() {
                [(user, _)] => {
                    let now = state.now_ms();
                    state.tracker.back_off_user(user, now);
                }
                users => {
                    let users: Vec<OwnedUserId> = users.iter().map(|(u, _)| u.clone()).collect();
                    state.tracker.solo_users.extend(users);
                }
            }
        }
        let changes = Changes::from(CryptoChanges {
            tracked_users: self.settle_tracking(&requested, |_| false)?,
            ..Default::default()
        });
        self.ctx.save(state, changes)
    }

    /// New states of the users of a query that ended: up to date if `answered` and nothing
    /// invalidated the user since the query left, pending again if not answered. Users
    /// invalidated or dropped meanwhile keep the state that says so.
    pub(crate) fn settle_tracking(
        &self,
        requested: &[(OwnedUserId, u64)],
        answered: impl Fn(&UserId) -> bool,
    ) -> Result<Vec<TrackedUser>, CryptoError> {
        let current = self.tracked_by_user()?;
        Ok(requested
            .iter()
            .filter_map(|(user, sequence)| {
                let t = current.get(user)?;
                if t.sequence != *sequence || t.state != TrackingState::Downloading {
                    return None;
                }
                let state = if answered(user) {
                    TrackingState::UpToDate
                } else {
                    TrackingState::PendingDownload
                };
                Some(TrackedUser { state, ..t.clone() })
            })
            .collect())
    }

    /// Start tracking these users' devices: users not tracked yet (or no longer) become
    /// pending download; the others keep their state.
    pub(crate) fn update_tracked_users(
        &self,
        state: &mut State,
        users: &[OwnedUserId],
    ) -> Result<(), CryptoError> {
        let changes = Changes::from(CryptoChanges {
            tracked_users: self.newly_tracked(users, &[])?,
            ..Default::default()
        });
        self.ctx.save(state, changes)
    }

    /// Records for the `users` that are not tracked yet, given the store and `pending`
    /// (not yet committed) tracking records.
    pub(crate) fn newly_tracked(
        &self,
        users: &[OwnedUserId],
        pending: &[TrackedUser],
    ) -> Result<Vec<TrackedUser>, CryptoError> {
        let mut tracked = self.tracked_by_user()?;
        for t in pending {
            tracked.insert(t.user_id.clone(), t.clone());
        }
        Ok(users
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter_map(|u| match tracked.get(u) {
                Some(t) if t.is_tracked() => None,
                other => Some(TrackedUser {
                    user_id: u.clone(),
                    state: TrackingState::PendingDownload,
                    sequence: other.map_or(1, |t| t.sequence + 1),
                }),
            })
            .collect())
    }

    /// Users whose device lists must be downloaded before encrypting for them.
    pub(crate) fn outdated_users(
        &self,
        users: &[OwnedUserId],
    ) -> Result<Vec<OwnedUserId>, CryptoError> {
        let wanted: HashSet<&OwnedUserId> = users.iter().collect();
        Ok(self
            .ctx
            .store
            .tracked_users()?
            .into_iter()
            .filter(|u| u.needs_download() && wanted.contains(&u.user_id))
            .map(|u| u.user_id)
            .collect())
    }

    /// Every tracked user's record, by user id.
    pub(crate) fn tracked_by_user(&self) -> Result<HashMap<OwnedUserId, TrackedUser>, CryptoError> {
        Ok(self
            .ctx
            .store
            .tracked_users()?
            .into_iter()
            .map(|u| (u.user_id.clone(), u))
            .collect())
    }

    /// The tracking state of a user's device list.
    pub(crate) fn tracking_state(&self, user_id: &UserId) -> Result<TrackingState, CryptoError> {
        Ok(self
            .ctx
            .store
            .tracked_users()?
            .into_iter()
            .find(|u| u.user_id == user_id)
            .map_or(TrackingState::NotTracked, |u| u.state))
    }

    /// Known devices of a user (including our own other devices).
    pub(crate) fn devices(&self, user_id: &UserId) -> Result<Vec<Device>, CryptoError> {
        let none = CryptoChanges::default();
        let view = TrustView::load(self.ctx.store, self.ctx.signatures, &[user_id], &none)?;
        Ok(self
            .ctx
            .store
            .devices(&[user_id])?
            .iter()
            .map(|record| view.app_device(record))
            .collect())
    }

    /// Record the user's decision about a device (verify, blacklist, ignore).
    pub(crate) fn set_local_trust(
        &self,
        state: &mut State,
        user_id: &UserId,
        device_id: &DeviceId,
        trust: LocalTrust,
    ) -> Result<bool, CryptoError> {
        let Some(mut device) = self
            .ctx
            .store
            .devices(&[user_id])?
            .into_iter()
            .find(|d| d.device_id == device_id)
        else {
            return Ok(false);
        };
        device.local_trust = trust;
        let curve = device.curve25519.clone();
        let mut changes = Changes::from(CryptoChanges {
            devices: vec![device],
            ..Default::default()
        });
        if user_id == self.ctx.user_id {
            // Key requests this own device made while undecided: answer or drop them now.
            let verified = trust == LocalTrust::Verified;
            let held = state.held.decided(device_id, &curve, verified);
            if !held.is_empty() {
                // Save the decision first: answering reads the device's trust from the store.
                self.ctx.save(state, std::mem::take(&mut changes))?;
                KeyRequests::new(self.ctx).answer_key_requests(state, held, &mut changes)?;
            }
        }
        self.ctx.save(state, changes)?;
        Ok(true)
    }
}

impl TrackerState {
    /// One `/keys/query` for `users`, registered as in flight.
    pub(crate) fn query_request(&mut self, id: String, users: &[TrackedUser]) -> OutgoingRequest {
        let mut request = get_keys::v3::Request::new();
        for user in users {
            request.device_keys.insert(user.user_id.clone(), Vec::new());
        }
        let requested = users
            .iter()
            .map(|u| (u.user_id.clone(), u.sequence))
            .collect();
        self.queries_in_flight.insert(id.clone(), requested);
        OutgoingRequest {
            id,
            kind: OutgoingKind::KeysQuery(request),
        }
    }

    /// Back `user` off alone (15 s doubling to 15 min): a query of only them was refused.
    pub(crate) fn back_off_user(&mut self, user: &UserId, now: u64) {
        let (failures, _) = self.user_backoff.get(user).copied().unwrap_or((0, 0));
        let delay = (BACKOFF_BASE_MS << failures.min(6)).min(BACKOFF_MAX_MS);
        self.user_backoff
            .insert(user.to_owned(), (failures.saturating_add(1), now + delay));
    }

    /// Servers of the `requested` users for whom `failed` holds are backed off (15 s doubling to
    /// 15 min) without holding up the users of other servers; the others are forgiven.
    pub(crate) fn back_off_failed_servers(
        &mut self,
        requested: &[(OwnedUserId, u64)],
        now: u64,
        failed: impl Fn(&UserId) -> bool,
    ) {
        for (user, _) in requested {
            let server = user.server_name();
            if failed(user) {
                let (failures, _) = self.server_backoff.get(server).copied().unwrap_or((0, 0));
                let delay = (BACKOFF_BASE_MS << failures.min(6)).min(BACKOFF_MAX_MS);
                self.server_backoff
                    .insert(server.to_owned(), (failures.saturating_add(1), now + delay));
            } else {
                self.server_backoff.remove(server);
            }
        }
    }
}

/// A verified device against what we stored: `None` if nothing changed, an error if its keys
/// changed (the old ones are kept).
fn compare_with_stored(
    mut record: DeviceRecord,
    stored: &HashMap<DeviceKey, DeviceRecord>,
) -> Result<Option<Candidate>, DeviceKeyError> {
    let Some(old) = stored.get(&(record.user_id.clone(), record.device_id.clone())) else {
        return Ok(Some(Candidate { record, new: true }));
    };
    if old.ed25519 != record.ed25519 || old.curve25519 != record.curve25519 {
        return Err(DeviceKeyError::Ed25519Changed {
            user_id: record.user_id,
            device_id: record.device_id,
        });
    }
    record.local_trust = old.local_trust;
    if old == &record {
        return Ok(None);
    }
    // Back in the list after it was removed (e.g. a restored device id): new to us again.
    Ok(Some(Candidate {
        new: old.deleted,
        record,
    }))
}

/// Stored devices of `user` missing from the answer are marked deleted.
fn removed_devices(
    user: &UserId,
    listed: &BTreeMap<String, Value>,
    stored: &HashMap<DeviceKey, DeviceRecord>,
    changes: &mut Changes,
    outcome: &mut QueryOutcome,
) {
    let mut gone: Vec<&DeviceRecord> = stored
        .values()
        .filter(|d| d.user_id == user && !d.deleted && !listed.contains_key(d.device_id.as_str()))
        .collect();
    gone.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    for old in gone {
        changes.crypto.devices.push(DeviceRecord {
            deleted: true,
            ..old.clone()
        });
        outcome
            .removed_devices
            .push((old.user_id.clone(), old.device_id.clone()));
    }
}

fn refuse(
    outcome: &mut QueryOutcome,
    user_id: &UserId,
    device_id: &OwnedDeviceId,
    e: DeviceKeyError,
) {
    warn!(%user_id, %device_id, error = %e, "rejected device keys");
    outcome
        .rejected
        .push((user_id.to_owned(), device_id.clone(), e));
}
