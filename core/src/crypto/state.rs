//! The machine's in-memory state, one part per responsibility. Everything durable is in
//! the store; what is here is either a cache of it (the account) or bookkeeping that may be
//! lost with the process (requests in flight, backoff, held key requests).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedServerName, OwnedUserId};

use super::account::OwnAccount;
use super::verification::Verifications;
use crate::store::{DeviceRecord, LeaseFence};
use crate::time::Clock;

/// Claims for a session to answer an own device's key requests before giving up on them.
pub(crate) const MAX_ANSWER_CLAIMS: u32 = 3;

/// At most one unwedging per device per this many milliseconds.
pub(crate) const UNWEDGE_INTERVAL_MS: u64 = 3600 * 1000;

/// Everything the machine keeps in memory, behind one lock.
pub(crate) struct State {
    /// The Olm account, as last stored (reloaded when another writer moved the store on).
    pub account: OwnAccount,
    /// The store generation `account` was read at or written as.
    pub generation: u64,
    /// A `/keys/upload` is in flight: no keys are generated until it is answered.
    pub upload_in_flight: bool,
    /// Ids of the requests the machine hands out.
    pub ids: RequestIds,
    /// Device-list queries in flight and their backoff (`keys_query.rs`).
    pub tracker: TrackerState,
    /// Olm sessions to replace (`to_device.rs` notes them, `sharing.rs` claims).
    pub unwedging: Unwedging,
    /// Key requests of own devices waiting for something (`key_requests.rs`).
    pub held: HeldKeyRequests,
    /// Interactive verifications in progress (`verification/`).
    pub verifications: Verifications,
    /// The cross-process lease while the state is locked (`lease.rs`): writes are fenced
    /// with it.
    pub lease: Option<LeaseFence>,
    /// Where the machine's time comes from.
    pub clock: Arc<dyn Clock>,
}

impl State {
    pub(crate) fn new(account: OwnAccount, generation: u64, clock: Arc<dyn Clock>) -> Self {
        Self {
            account,
            generation,
            upload_in_flight: false,
            ids: RequestIds::default(),
            tracker: TrackerState::default(),
            unwedging: Unwedging::default(),
            held: HeldKeyRequests::default(),
            verifications: Verifications::default(),
            lease: None,
            clock,
        }
    }

    /// Milliseconds since the Unix epoch, by the machine's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// Ids for outgoing requests, unique within the machine's lifetime.
#[derive(Default)]
pub(crate) struct RequestIds {
    last: u64,
}

impl RequestIds {
    /// A new id: `prefix-N`.
    pub(crate) fn next(&mut self, prefix: &str) -> String {
        self.last += 1;
        format!("{prefix}-{}", self.last)
    }
}

/// Device-list tracking: what is being asked, and who failed.
#[derive(Default)]
pub(crate) struct TrackerState {
    /// Queries in flight: request id → the users asked and their tracking sequence.
    pub queries_in_flight: HashMap<String, Vec<(OwnedUserId, u64)>>,
    /// Servers whose `/keys/query` failed: (consecutive failures, retry not before, ms).
    pub server_backoff: HashMap<OwnedServerName, (u32, u64)>,
    /// Users queried alone: they were in a query the server refused for good (one of them
    /// may be why), so each is asked about on its own until answered.
    pub solo_users: HashSet<OwnedUserId>,
    /// Users whose query alone was refused for good: (failures, retry not before, ms).
    pub user_backoff: HashMap<OwnedUserId, (u32, u64)>,
}

/// Devices whose Olm messages we could not decrypt, waiting for a new session + `m.dummy`,
/// by Curve25519 key.
#[derive(Default)]
pub(crate) struct Unwedging {
    pub wedged: HashMap<String, DeviceRecord>,
}

impl Unwedging {
    /// Queue a device for unwedging (deduplicated by identity key).
    pub(crate) fn note(&mut self, device: DeviceRecord) {
        self.wedged
            .entry(device.curve25519.clone())
            .or_insert(device);
    }
}

/// An `m.room_key_request` of one of our own devices, parsed where it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyRequest {
    /// The own device asking.
    pub requesting_device: OwnedDeviceId,
    /// `request_id` (two requests for one key are two requests).
    pub request_id: String,
    /// Room of the session asked for.
    pub room_id: OwnedRoomId,
    /// The session asked for.
    pub session_id: String,
}

/// Key requests held in memory per reason (and per device while awaiting a session), at most.
const MAX_HELD_REQUESTS: usize = 100;

/// Key requests of own devices that could not be answered when they came.
#[derive(Default)]
pub(crate) struct HeldKeyRequests {
    /// From own devices we did not know yet, retried once with the next sync.
    pub deferred: Vec<KeyRequest>,
    /// From own devices nobody decided about yet. Answered if the user verifies the
    /// device, dropped if it is blacklisted or ignored.
    pub undecided: Vec<KeyRequest>,
    /// Own devices whose held key requests the app was not asked about yet.
    pub prompts: BTreeSet<OwnedDeviceId>,
    /// Own devices the app was already asked about (key-share prompt), until decided.
    pub prompted: HashSet<OwnedDeviceId>,
    /// Requests we may answer but have no Olm session for, by the device's Curve25519 key:
    /// the device, the requests and the claims made so far. A session is claimed with the
    /// next repair claims, at most [`MAX_ANSWER_CLAIMS`] times.
    pub awaiting_session: HashMap<String, (DeviceRecord, Vec<KeyRequest>, u32)>,
}

impl HeldKeyRequests {
    /// The user decided about own device `device_id` (Curve25519 key `curve`): its held
    /// requests, to answer if `answer`, are returned; it is not prompted about any more.
    pub(crate) fn decided(
        &mut self,
        device_id: &DeviceId,
        curve: &str,
        answer: bool,
    ) -> Vec<KeyRequest> {
        let (held, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.undecided)
            .into_iter()
            .partition(|r| r.requesting_device == device_id);
        self.undecided = rest;
        self.prompts.remove(device_id);
        self.prompted.remove(device_id);
        if !answer {
            // No answers for it any more, so no session to claim for them either.
            self.awaiting_session.remove(curve);
            return Vec::new();
        }
        held
    }

    /// A request of an own device we do not know yet, answered once our device list is
    /// fresh.
    pub(crate) fn defer(&mut self, request: &KeyRequest) {
        if self.deferred.len() < MAX_HELD_REQUESTS {
            self.deferred.push(request.clone());
        }
    }

    /// A request of an undecided own device, held until the user decides; the app is
    /// prompted once per device.
    pub(crate) fn hold_undecided(&mut self, request: &KeyRequest) {
        let duplicate = self.undecided.contains(request);
        if duplicate || self.undecided.len() >= MAX_HELD_REQUESTS {
            return;
        }
        self.undecided.push(request.clone());
        let device = &request.requesting_device;
        if self.prompted.insert(device.clone()) {
            self.prompts.insert(device.clone());
        }
    }

    /// A request we may answer but have no Olm session with `device` for.
    pub(crate) fn await_session(&mut self, device: DeviceRecord, request: &KeyRequest) {
        let (_, waiting, _) = self
            .awaiting_session
            .entry(device.curve25519.clone())
            .or_insert_with(|| (device, Vec::new(), 0));
        if waiting.len() < MAX_HELD_REQUESTS && !waiting.contains(request) {
            waiting.push(request.clone());
        }
    }
}
