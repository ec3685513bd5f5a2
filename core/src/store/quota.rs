//! Limits on what other users and the homeserver can make us store.
//!
//! Every kind of record a stranger can cause us to write without any action of ours is
//! bounded here. [`Store::save_changes`](super::Store::save_changes) enforces the limits in
//! the same transaction as the write that exceeds them, forgetting the oldest records first,
//! so both store implementations behave the same (checked by the conformance suite).
//!
//! Records that only our own actions create (rooms we joined, our outbound sessions and the
//! keys kept with them for devices sent `m.no_olm`, the send queue) and records bounded by them (members of rooms we joined, devices of users we
//! share rooms with, at most [`MAX_DEVICES_PER_USER`] each) are not limited here.

/// Undecryptable events kept for a retry when their key arrives (any room we are in).
pub const MAX_UNDECRYPTABLE_EVENTS: u64 = 2_000;

/// `m.room_key.withheld` notices kept (only from members of the room, for display).
pub const MAX_WITHHELD_NOTICES: u64 = 1_000;

/// Key requests remembered (one per session whose events we could not decrypt).
pub const MAX_KEY_REQUESTS: u64 = 1_000;

/// Inbound group sessions whose sender is not known as a member of the session's room (a
/// room key may arrive before the invite, the join or the member event that explains it;
/// a forwarded key of unknown origin names no sender). Sessions of members are not limited.
pub const MAX_SESSIONS_FROM_NON_MEMBERS: u64 = 500;

/// Inbound group sessions per sender per room, even for members (anyone can join a public
/// room): the oldest are forgotten. A legitimate sender reaches it after some 200,000
/// messages (a new session every 100).
pub const MAX_SESSIONS_PER_SENDER_PER_ROOM: u64 = 2_000;

/// Olm sessions per Curve25519 key (a device that keeps starting new sessions); the least
/// recently used are forgotten (a peer still using one unwedges it with a new session).
pub const MAX_OLM_SESSIONS_PER_KEY: u64 = 50;

/// Olm sessions with keys of no device we know: anyone can start them (with our fallback
/// key, any number of them); the least recently used are forgotten.
pub const MAX_OLM_SESSIONS_OF_UNKNOWN_DEVICES: u64 = 1_000;

/// Rooms we are invited to (anyone can invite us).
pub const MAX_INVITES: u64 = 200;

/// Digests of to-device events a notification extension decrypted, kept until the app
/// meets them again (anyone with an Olm channel to us can send events).
pub const MAX_CONSUMED_TO_DEVICE: u64 = 2_000;

/// To-device events a notification extension left for the app (anyone can send them).
pub const MAX_DEFERRED_TO_DEVICE: u64 = 500;

/// Event ids of sent messages kept for queued messages that refer to them (edits,
/// reactions, redactions); the server's echoes of our own messages can add them.
pub const MAX_SENT_EVENTS: u64 = 256;

/// Devices kept per user from a `/keys/query` answer (the ones we know first, then by
/// device id); checked by the crypto machine before anything is stored.
pub const MAX_DEVICES_PER_USER: usize = 1_000;

/// Unwedge records (one per device key; any device we know can make us unwedge it by
/// sending an Olm message we cannot decrypt): the oldest are forgotten.
pub const MAX_UNWEDGE_RECORDS: u64 = 1_000;

/// How long an unwedge record holds back the next unwedging of its device: a batch that
/// writes unwedge records forgets those older than this before the newest it wrote. At
/// least the crypto machine's unwedge interval (checked where it is defined).
pub const UNWEDGE_RECORD_LIFETIME_MS: u64 = 3_600_000;
