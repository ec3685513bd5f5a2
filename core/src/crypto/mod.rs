//! The crypto state machine: Olm account, device keys, Olm and Megolm sessions.
//!
//! [`OlmMachine`] does no I/O. The driver (the [`crate::client`]) feeds it sync data with
//! [`OlmMachine::receive_sync_changes`], sends what [`OlmMachine::outgoing_requests`],
//! [`OlmMachine::missing_sessions`] and [`OlmMachine::share_room_key`] return, and reports the
//! answers back with the `mark_*_sent` methods.

mod account;
mod backup;
mod batch;
mod context;
mod cross_signing;
mod decrypt_batch;
mod devices;
mod error;
mod facade;
mod facade_trust;
mod facade_verification;
mod identities;
mod identity;
mod key_requests;
mod keys_query;
mod lease;
mod machine;
mod megolm;
mod membership;
mod notification;
mod olm;
mod olm_sessions;
mod outbox;
mod outcomes;
mod requests;
mod responses;
mod room_events;
mod room_key_transfer;
mod sender_data;
mod sharing;
mod sharing_policy;
pub mod signing;
#[cfg(test)]
mod spec_vectors;
mod state;
mod sync_batch;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod tests;
mod to_device;
mod trust_policy;
mod verification;

pub use crate::store::SharingPolicy;
pub use account::{MEGOLM_ALGORITHM, OLM_ALGORITHM, SIGNED_CURVE25519};
pub use backup::BackupBatch;
pub use cross_signing::{MASTER_SECRET, SELF_SIGNING_SECRET, Secrets, USER_SIGNING_SECRET};
pub use decrypt_batch::DecryptBatch;
pub use devices::Device;
pub use error::{CryptoError, DeviceKeyError, MegolmError, OlmError, OneTimeKeyError};
pub use facade_trust::{CrossSigningUpload, UserIdentity};
pub use identity::{DeviceSignature, IdentityError};
pub use machine::OlmMachine;
pub use megolm::RotationSettings;
pub use notification::NotificationToDevice;
pub use outcomes::{
    ClaimOutcome, DecryptedRoomEvent, IdentityChange, QueryOutcome, RoomKeyInfo, SyncChanges,
    SyncOutcome, ToDeviceOutcome,
};
pub use requests::{OutgoingKind, OutgoingRequest, raw_json};
pub use responses::{KeysClaimResponse, KeysQueryResponse, KeysUploadResponse};
pub use room_key_transfer::{ImportedKeys, KeySource};
pub use sync_batch::SyncBatch;
pub use trust_policy::TrustPolicy;
pub use verification::{CancelCode, SasEmoji, ShortAuthString, Verification, VerificationState};
