//! The crypto side of a push-notification extension: a second process on the app's store
//! that catches up on to-device messages to find a room key, and hands over to the app what
//! it consumed.
//!
//! - Olm-encrypted to-device events it decrypts are processed (room keys stored, with their
//!   sender data) and their digest recorded: their Olm step is used up, so when the app's
//!   own sync brings the same event again it skips it (`take_handoff`).
//! - Every other event (in clear: verification, key requests; decrypted verification
//!   messages) is deferred: stored for the app, whose next sync handles it first. The
//!   extension may ask the server past these events, which then never come again.
//! - It never uploads keys, never creates an outbound session, never answers key requests
//!   and never marks a device wedged (an event it cannot decrypt may be one the app already
//!   decrypted).

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::batch::Batch;
use super::context::sub_machine;
use super::error::CryptoError;
use super::machine::OlmMachine;
use super::outcomes::{DecryptedRoomEvent, RoomKeyInfo};
use super::state::State;
use super::to_device::ToDeviceHandler;
use crate::store::{Changes, Store};

/// What handling a notification extension's to-device events did.
#[derive(Debug, Default)]
pub struct NotificationToDevice {
    /// Room keys stored.
    pub room_keys: Vec<RoomKeyInfo>,
    /// Encrypted events decrypted here (the app will skip them).
    pub consumed: usize,
    /// Events left for the app.
    pub deferred: usize,
}

/// The digest an event is recognised by when it comes again (its JSON as received).
pub(crate) fn digest(event: &Value) -> String {
    let json = serde_json::to_string(event).unwrap_or_default();
    STANDARD_NO_PAD.encode(Sha256::digest(json.as_bytes()))
}

fn is_encrypted(event: &Value) -> bool {
    event.get("type").and_then(Value::as_str) == Some("m.room.encrypted")
}

/// The app's side: the events a notification extension left for it come first, and the
/// encrypted ones it already decrypted are skipped (their digests forgotten). Runs under
/// the lease, in the sync's transaction.
pub(crate) fn take_handoff(
    store: &dyn Store,
    events: Vec<Value>,
    changes: &mut Changes,
) -> Result<Vec<Value>, CryptoError> {
    let deferred = store.deferred_to_device()?;
    changes.crypto.take_deferred_to_device = !deferred.is_empty();
    let mut out: Vec<Value> = deferred
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    let digests: Vec<Option<String>> = events
        .iter()
        .map(|e| is_encrypted(e).then(|| digest(e)))
        .collect();
    let refs: Vec<&str> = digests.iter().flatten().map(String::as_str).collect();
    let consumed: HashSet<String> = store.consumed_to_device(&refs)?.into_iter().collect();
    for (event, digest) in events.into_iter().zip(digests) {
        match digest {
            Some(d) if consumed.contains(&d) => changes.crypto.forgotten_to_device.push(d),
            _ => out.push(event),
        }
    }
    Ok(out)
}

sub_machine! {
    /// A notification extension's to-device handling.
    NotificationHandler
}

impl NotificationHandler<'_> {
    /// The extension's side (see the module documentation).
    pub(crate) fn handle_for_notification(
        &self,
        state: &mut State,
        events: &[Value],
        changes: &mut Changes,
    ) -> Result<NotificationToDevice, CryptoError> {
        let digests: Vec<String> = events.iter().map(digest).collect();
        let refs: Vec<&str> = digests.iter().map(String::as_str).collect();
        let seen: HashSet<String> = self
            .ctx
            .store
            .consumed_to_device(&refs)?
            .into_iter()
            .collect();
        let mut batch = Batch::for_events(self.ctx.store, events)?;
        let own_curve = state.account.curve25519();
        let mut out = NotificationToDevice::default();
        for (event, digest) in events.iter().zip(digests) {
            if seen.contains(&digest) {
                continue;
            }
            if !is_encrypted(event) {
                changes.crypto.deferred_to_device.push(event.to_string());
                continue;
            }
            let rk = &mut out.room_keys;
            let handler = ToDeviceHandler::new(self.ctx);
            match handler.handle_encrypted(state, &mut batch, event, &own_curve, rk, changes)? {
                Ok(_) => changes.crypto.consumed_to_device.push(digest),
                Err(e) => debug!(error = %e, "not decrypted here (the app may have it already)"),
            }
        }
        // Verification messages that came over Olm go to the app as they were decrypted.
        for event in batch.verification.drain(..) {
            changes.crypto.deferred_to_device.push(event.to_string());
        }
        out.consumed = changes.crypto.consumed_to_device.len();
        out.deferred = changes.crypto.deferred_to_device.len();
        self.finish_notification_batch(state, batch, changes)?;
        Ok(out)
    }

    fn finish_notification_batch(
        &self,
        state: &mut State,
        batch: Batch,
        changes: &mut Changes,
    ) -> Result<(), CryptoError> {
        if batch.account_changed {
            changes.crypto.account = Some(state.account.to_record()?);
        }
        batch.finish(self.ctx.store, self.ctx.signatures, changes)
    }
}

impl OlmMachine {
    /// In a notification extension: handle to-device events from a catch-up sync (see the
    /// module documentation). Stores what they carried; the sync token is not touched.
    pub fn receive_notification_to_device(
        &self,
        events: &[Value],
    ) -> Result<NotificationToDevice, CryptoError> {
        let mut state = self.lock()?;
        let mut changes = Changes::default();
        let out = NotificationHandler::new(self.ctx()).handle_for_notification(
            &mut state,
            events,
            &mut changes,
        )?;
        self.save(&mut state, changes)?;
        Ok(out)
    }

    /// Decrypt a room event for a notification without recording anything (the app records
    /// the event's replay record when its own sync brings it). Takes no lease.
    pub fn decrypt_for_notification(
        &self,
        room_id: &ruma::RoomId,
        event: &Value,
    ) -> Result<DecryptedRoomEvent, CryptoError> {
        let (decrypted, _index) =
            self.decryptor()
                .decrypt_with(room_id, event, &Changes::default())?;
        Ok(decrypted)
    }
}
